//! What a kit would install, read and verified from the kit alone (DESIGN.md, "Applying",
//! step 1): for a kit of iuk, control.yml's parameters and every overlay file's size and sha256;
//! for a kit of Tails' own tooling (`--legacy-tails-kit`), its one layer stacked on this medium's
//! base, which gives the version it installs. [`plan`](super::plan) then checks the
//! [`Proposal`] against the medium.

use std::collections::{HashMap, HashSet};

use super::journal::parse_sha256;
use super::rebuild::{KitLayer, RecipeKit};
use super::stack::{hash_tree, read_image_tree, stack_layer};
use super::state::State;
use super::{refuse, safe_relative_path, Medium, MediumError, BASE, MAX_MEDIUM_FILE};
use crate::boot::is_protected;
use crate::delta::recipe::{
    boot_patch_path, BootFile, Recipe, SourceKind, BOOT_PATCHES, MAX_PATCH_INPUT, RECIPE_IMAGE,
};
use crate::diff::HashedTree;
use crate::kit::{FileEntry, Kit, LegacyKit, GENERATOR};
use crate::progress::Progress;
use crate::release;
use crate::squashfs::archive::Archive;
use crate::squashfs::write::WRITER_FORMAT_VERSION;
use crate::tree::{hex, Content, InodeKind};
use crate::version;

/// What a kit would install, read and verified from the kit alone.
pub struct Proposal {
    pub product: String,
    /// None: the kit does not say (kits of Tails' own tooling).
    pub build_target: Option<String>,
    pub from_version: String,
    pub to_version: String,
    pub layer: String,
    /// None: the kit does not say (kits of Tails' own tooling).
    pub old_tree_digest: Option<String>,
    pub new_tree_digest: String,
    /// The boot tree after the apply, sorted by path.
    pub boot_tree: Vec<FileEntry>,
    pub delete_files: Vec<String>,
    /// None: the kit does not say (kits of Tails' own tooling).
    pub writer_format: Option<u32>,
    /// The layer as the kit carries it: an image, or a recipe (FORMAT 3).
    pub layer_source: KitLayer,
    /// Every overlay file by lower-case path: content and sha256 (FORMAT 3: without the boot
    /// files the device re-creates, [`Proposal::boot_sources`], until the plan adds them).
    pub overlay: HashMap<String, (Content, [u8; 32])>,
    /// Bytes of every overlay file.
    pub payload: u64,
    /// FORMAT 3: the overlay files the device re-creates from its current boot files (not in
    /// `overlay` until [`plan`](super::plan) has checked them against the medium).
    pub boot_sources: Vec<KitBootSource>,
}

/// A boot file of a FORMAT 3 kit re-created from the medium's current boot files: the
/// recipe's `boot-files` record, checked against the kit (its overlay entry, its patch).
pub struct KitBootSource {
    /// Path on the medium (the overlay entry's).
    pub path: String,
    /// `copy`, `zstd` or `bsdiff`.
    pub kind: SourceKind,
    /// Path of the base boot file on the medium.
    pub base: String,
    /// sha256 of the base file.
    pub base_sha256: [u8; 32],
    /// Output size (the overlay entry's).
    pub size: u64,
    /// Output sha256 (the overlay entry's).
    pub sha256: [u8; 32],
    /// The patch in the kit (size and sha256 checked); None for a copy.
    pub patch: Option<Content>,
}

/// Checks paths a kit names: relative, FAT-safe, never a protected name (the layer aside).
fn check_kit_paths(
    overlay: &[&str],
    boot_tree: &[FileEntry],
    layer_rel: &str,
    bad_kit: &dyn Fn(String) -> MediumError,
) -> Result<(), MediumError> {
    for p in overlay
        .iter()
        .copied()
        .chain(boot_tree.iter().map(|e| e.path.as_str()))
    {
        if !safe_relative_path(p) {
            return Err(bad_kit(format!(
                "path {p:?} is not a safe relative path on a FAT medium"
            )));
        }
    }
    for e in boot_tree {
        if is_protected(&e.path) {
            return Err(bad_kit(format!(
                "boot file {:?} is a protected name",
                e.path
            )));
        }
    }
    for p in overlay {
        if is_protected(p) && !p.eq_ignore_ascii_case(layer_rel) {
            return Err(bad_kit(format!("overlay file {p:?} is a protected name")));
        }
    }
    Ok(())
}

/// A kit of iuk: control.yml's parameters checked, every overlay file's size and sha256
/// against control.yml, nothing unlisted in `overlay/`.
pub fn iuk_proposal(
    kit: &Kit,
    bad_kit: &dyn Fn(String) -> MediumError,
    progress: &dyn Progress,
) -> Result<Proposal, MediumError> {
    let c = &kit.control;
    if c.generator != GENERATOR {
        return Err(bad_kit(format!(
            "generator {:?}: not a kit made by iuk",
            c.generator
        )));
    }
    if c.writer_format > WRITER_FORMAT_VERSION {
        return Err(bad_kit(format!(
            "writer format {} is newer than this iuk-apply knows",
            c.writer_format
        )));
    }
    for (what, v) in [
        ("product", &c.product),
        ("from-version", &c.from_version),
        ("to-version", &c.to_version),
        ("layer", &c.layer),
    ] {
        if !version::is_safe_name(v) {
            return Err(bad_kit(format!("{what} {v:?} is not a safe name")));
        }
    }
    if c.layer.eq_ignore_ascii_case("filesystem") {
        return Err(bad_kit(
            "layer name \"filesystem\" would replace the base".into(),
        ));
    }
    let layer_rel = format!("live/{}.squashfs", c.layer);
    let overlay_paths: Vec<&str> = c.overlay.iter().map(|e| e.path.as_str()).collect();
    check_kit_paths(&overlay_paths, &c.boot_tree, &layer_rel, bad_kit)?;
    // FORMAT 3: the boot files re-created on the device, by lower-case path.
    let mut recreated: HashMap<String, &BootFile> = HashMap::new();
    if let Some(r) = &c.recipe {
        r.validate()
            .map_err(|e| bad_kit(format!("control.yml: {e}")))?;
        for b in &r.boot_files {
            if !safe_relative_path(&b.base) {
                return Err(bad_kit(format!(
                    "control.yml: boot file {}: base {:?} is not a safe relative path on a FAT \
                     medium",
                    b.path, b.base
                )));
            }
            recreated.insert(b.path.to_ascii_lowercase(), b);
        }
    }

    // Every overlay file is in the kit with the recorded size and sha256, and nothing else is.
    let payload = checked_sum(c.overlay.iter().map(|e| e.size)).ok_or_else(|| {
        bad_kit("control.yml: the overlay files' sizes add up to more than 2^64 bytes".into())
    })?;
    progress.phase("verifying kit", payload);
    let done = std::cell::Cell::new(0u64);
    let mut listed: HashSet<Vec<u8>> = HashSet::new();
    let mut layer: Option<(Content, [u8; 32])> = None;
    let mut overlay: HashMap<String, (Content, [u8; 32])> = HashMap::new();
    let mut boot_sources = Vec::new();
    for e in &c.overlay {
        if let Some(b) = recreated.remove(&e.path.to_ascii_lowercase()) {
            let s = boot_source(kit, e, b, &layer_rel, bad_kit)?;
            listed.extend(
                s.patch
                    .as_ref()
                    .map(|_| boot_patch_path(&e.path).into_bytes()),
            );
            boot_sources.push(s);
            continue;
        }
        let kit_path_in = format!("overlay/{}", e.path);
        listed.insert(kit_path_in.clone().into_bytes());
        let node = kit
            .tree
            .lookup(kit_path_in.as_bytes())
            .ok_or_else(|| bad_kit(format!("{kit_path_in} is missing")))?;
        let InodeKind::File(content) = &kit.tree.node_inode(node).kind else {
            return Err(bad_kit(format!("{kit_path_in} is not a regular file")));
        };
        if content.size != e.size {
            return Err(bad_kit(format!(
                "{kit_path_in} has {} bytes, control.yml says {}",
                content.size, e.size
            )));
        }
        if e.size > MAX_MEDIUM_FILE {
            return Err(bad_kit(format!(
                "{kit_path_in} has {} bytes, more than the {MAX_MEDIUM_FILE} bytes a FAT medium \
                 holds in one file",
                e.size
            )));
        }
        let want = parse_hex(&e.sha256, &kit_path_in)?;
        let got = content
            .sha256_with(|n| {
                done.set(done.get().saturating_add(n));
                progress.position(done.get());
            })
            .map_err(|err| bad_kit(format!("{kit_path_in}: {err}")))?;
        if got != want {
            return Err(bad_kit(format!(
                "{kit_path_in} does not have the sha256 control.yml records"
            )));
        }
        if e.path.eq_ignore_ascii_case(&layer_rel) {
            layer = Some((content.clone(), got));
        }
        overlay.insert(e.path.to_ascii_lowercase(), (content.clone(), got));
    }
    if let Some(b) = recreated.values().next() {
        return Err(bad_kit(format!(
            "control.yml: boot file {} of the recipe is not an overlay entry",
            b.path
        )));
    }
    for id in kit.tree.walk() {
        let p = kit.tree.path(id);
        if (p.starts_with(b"overlay/") || p.starts_with(format!("{BOOT_PATCHES}/").as_bytes()))
            && !matches!(kit.tree.node_inode(id).kind, InodeKind::Dir)
            && !listed.contains(&p)
        {
            return Err(bad_kit(format!(
                "{} is not listed in control.yml",
                String::from_utf8_lossy(&p)
            )));
        }
    }
    let layer_source = match &c.recipe {
        None => {
            let (content, sha) =
                layer.ok_or_else(|| bad_kit(format!("overlay/{layer_rel} is missing")))?;
            KitLayer::Image(content, sha)
        }
        Some(recipe) => {
            if layer.is_some() {
                return Err(bad_kit(format!(
                    "overlay/{layer_rel}: a FORMAT 3 kit carries a recipe, not the layer"
                )));
            }
            check_recipe(kit, recipe, bad_kit, progress)?
        }
    };
    Ok(Proposal {
        product: c.product.clone(),
        build_target: Some(c.build_target.clone()),
        from_version: c.from_version.clone(),
        to_version: c.to_version.clone(),
        layer: c.layer.clone(),
        old_tree_digest: Some(c.old_tree_digest.clone()),
        new_tree_digest: c.new_tree_digest.clone(),
        boot_tree: c.boot_tree.clone(),
        delete_files: c.delete_files.clone(),
        writer_format: Some(c.writer_format),
        layer_source,
        overlay,
        payload,
        boot_sources,
    })
}

/// FORMAT 3: a boot file re-created on the device, checked against the kit: never the layer; a
/// copy's base has the overlay entry's sha256; a patch is in the kit at
/// [`boot_patch_path`] with the recorded size and sha256, within the device's memory caps.
fn boot_source(
    kit: &Kit,
    e: &FileEntry,
    b: &BootFile,
    layer_rel: &str,
    bad_kit: &dyn Fn(String) -> MediumError,
) -> Result<KitBootSource, MediumError> {
    if e.path.eq_ignore_ascii_case(layer_rel) {
        return Err(bad_kit(format!(
            "control.yml: {layer_rel} is listed as a boot file"
        )));
    }
    if e.size > MAX_MEDIUM_FILE {
        return Err(bad_kit(format!(
            "boot file {} has {} bytes, more than the {MAX_MEDIUM_FILE} bytes a FAT medium \
             holds in one file",
            e.path, e.size
        )));
    }
    let sha256 = parse_hex(&e.sha256, &e.path)?;
    let base_sha256 = parse_hex(&b.base_sha256, &b.path)?;
    let patch = match b.source {
        SourceKind::Copy => {
            if base_sha256 != sha256 {
                return Err(bad_kit(format!(
                    "control.yml: boot file {}: a copy whose base has another sha256",
                    e.path
                )));
            }
            None
        }
        _ => {
            let at = boot_patch_path(&e.path);
            let node = kit
                .tree
                .lookup(at.as_bytes())
                .ok_or_else(|| bad_kit(format!("{at} is missing")))?;
            let InodeKind::File(content) = &kit.tree.node_inode(node).kind else {
                return Err(bad_kit(format!("{at} is not a regular file")));
            };
            let want_size = b.patch_size.unwrap_or(0);
            if content.size != want_size {
                return Err(bad_kit(format!(
                    "{at} has {} bytes, control.yml says {want_size}",
                    content.size
                )));
            }
            if content.size > MAX_PATCH_INPUT || e.size > MAX_PATCH_INPUT {
                return Err(bad_kit(format!(
                    "{at}: a patch of {} bytes making {} bytes exceeds the {MAX_PATCH_INPUT} \
                     bytes a device re-creates in memory",
                    content.size, e.size
                )));
            }
            let want = parse_hex(b.patch_sha256.as_deref().unwrap_or_default(), &at)?;
            let got = content
                .sha256()
                .map_err(|err| bad_kit(format!("{at}: {err}")))?;
            if got != want {
                return Err(bad_kit(format!(
                    "{at} does not have the sha256 control.yml records"
                )));
            }
            Some(content.clone())
        }
    };
    Ok(KitBootSource {
        path: e.path.clone(),
        kind: b.source,
        base: b.base.clone(),
        base_sha256,
        size: e.size,
        sha256,
        patch,
    })
}

/// FORMAT 3: the recipe is one this iuk reads, its image is in the kit with the recorded size
/// and sha256, and the layer it makes fits a FAT medium.
fn check_recipe(
    kit: &Kit,
    recipe: &Recipe,
    bad_kit: &dyn Fn(String) -> MediumError,
    progress: &dyn Progress,
) -> Result<KitLayer, MediumError> {
    recipe
        .validate()
        .map_err(|e| bad_kit(format!("control.yml: {e}")))?;
    if recipe.layer_size > MAX_MEDIUM_FILE {
        return Err(bad_kit(format!(
            "its layer would have {} bytes, more than the {MAX_MEDIUM_FILE} bytes a FAT medium              holds in one file",
            recipe.layer_size
        )));
    }
    let node = kit
        .tree
        .lookup(RECIPE_IMAGE.as_bytes())
        .ok_or_else(|| bad_kit(format!("{RECIPE_IMAGE} is missing")))?;
    let InodeKind::File(image) = &kit.tree.node_inode(node).kind else {
        return Err(bad_kit(format!("{RECIPE_IMAGE} is not a regular file")));
    };
    if image.size != recipe.image_size {
        return Err(bad_kit(format!(
            "{RECIPE_IMAGE} has {} bytes, control.yml says {}",
            image.size, recipe.image_size
        )));
    }
    let want = parse_hex(&recipe.image_sha256, RECIPE_IMAGE)?;
    progress.phase("verifying recipe", image.size);
    let got = image
        .sha256_with(|n| progress.position(n))
        .map_err(|e| bad_kit(format!("{RECIPE_IMAGE}: {e}")))?;
    if got != want {
        return Err(bad_kit(format!(
            "{RECIPE_IMAGE} does not have the sha256 control.yml records"
        )));
    }
    Ok(KitLayer::Recipe(Box::new(RecipeKit {
        recipe: recipe.clone(),
        image: image.clone(),
        params: kit.control.layer_params.clone(),
    })))
}

/// A kit of Tails' own tooling (`--legacy-tails-kit`), installed as Tails' installer does:
/// the overlay copied onto the medium, `delete_files` deleted, the module file = the base + the
/// kit's one diff layer. Nothing records what it was built against or its files' hashes, so:
/// every overlay file must be a regular file with a safe path; exactly one
/// `overlay/live/*.squashfs`; the new version and product come from `/etc/os-release` of this
/// medium's base with that layer stacked, and the new tree digest from the same stack.
pub fn legacy_proposal(
    medium: &Medium,
    state: &State,
    kit: &LegacyKit,
    bad_kit: &dyn Fn(String) -> MediumError,
    progress: &dyn Progress,
) -> Result<Proposal, MediumError> {
    let (files, layer_rel) = legacy_overlay(kit, bad_kit)?;
    let layer = layer_rel[5..layer_rel.len() - ".squashfs".len()].to_string();
    if !version::is_safe_name(&layer) || layer.eq_ignore_ascii_case("filesystem") {
        return Err(bad_kit(format!("layer name {layer:?} is not usable")));
    }
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    check_kit_paths(&paths, &[], &layer_rel, bad_kit)?;

    // Hash every overlay file.
    let payload = checked_sum(files.iter().map(|(_, c)| c.size))
        .ok_or_else(|| bad_kit("the overlay files' sizes add up to more than 2^64 bytes".into()))?;
    progress.phase("reading kit", payload);
    let done = std::cell::Cell::new(0u64);
    let mut overlay: HashMap<String, (Content, [u8; 32])> = HashMap::new();
    let mut carried: Vec<FileEntry> = Vec::new();
    for (rel, content) in &files {
        if content.size > MAX_MEDIUM_FILE {
            return Err(bad_kit(format!(
                "overlay/{rel} has {} bytes, more than the {MAX_MEDIUM_FILE} bytes a FAT medium \
                 holds in one file",
                content.size
            )));
        }
        let sha = content
            .sha256_with(|n| {
                done.set(done.get().saturating_add(n));
                progress.position(done.get());
            })
            .map_err(|e| bad_kit(format!("overlay/{rel}: {e}")))?;
        if overlay
            .insert(rel.to_ascii_lowercase(), (content.clone(), sha))
            .is_some()
        {
            return Err(bad_kit(format!(
                "overlay/{rel} is there twice in different case (a FAT medium cannot hold both)"
            )));
        }
        if *rel != layer_rel {
            carried.push(FileEntry {
                path: rel.clone(),
                size: content.size,
                sha256: hex(&sha),
            });
        }
    }
    let layer_content = overlay
        .get(&layer_rel.to_ascii_lowercase())
        .cloned()
        .ok_or_else(|| bad_kit(format!("overlay/{layer_rel} is missing")))?;

    // The new root: this medium's base with the kit's layer stacked.
    let (new_root, to_version, product) = legacy_new_root(
        medium,
        state,
        &layer_rel,
        &layer_content.0,
        bad_kit,
        progress,
    )?;

    // The boot tree after: the current one without delete_files, with the overlay copied on.
    let under = |p: &str, d: &str| {
        p.eq_ignore_ascii_case(d)
            || (p.len() > d.len()
                && p.as_bytes()[d.len()] == b'/'
                && p[..d.len()].eq_ignore_ascii_case(d))
    };
    let mut boot_tree: Vec<FileEntry> = state
        .boot_files
        .iter()
        .filter(|f| !kit.control.delete_files.iter().any(|d| under(&f.path, d)))
        .filter(|f| !carried.iter().any(|e| e.path.eq_ignore_ascii_case(&f.path)))
        .cloned()
        .collect();
    boot_tree.extend(carried);
    boot_tree.sort_by(|a, b| a.path.cmp(&b.path));
    check_kit_paths(&[], &boot_tree, &layer_rel, bad_kit)?;
    Ok(Proposal {
        product,
        build_target: None,
        from_version: state.base_version.clone(),
        to_version,
        layer,
        old_tree_digest: None,
        new_tree_digest: hex(&new_root.digest()),
        boot_tree,
        delete_files: kit.control.delete_files.clone(),
        writer_format: None,
        layer_source: KitLayer::Image(layer_content.0, layer_content.1),
        overlay,
        payload,
        boot_sources: Vec::new(),
    })
}

/// The files of a legacy kit's `overlay/` (each a regular file with a UTF-8 name) and the path
/// of its one diff layer (`live/*.squashfs`).
fn legacy_overlay(
    kit: &LegacyKit,
    bad_kit: &dyn Fn(String) -> MediumError,
) -> Result<(Vec<(String, Content)>, String), MediumError> {
    let mut files: Vec<(String, Content)> = Vec::new();
    for id in kit.tree.walk() {
        let p = kit.tree.path(id);
        let Some(rel) = p.strip_prefix(b"overlay/") else {
            continue;
        };
        let rel = String::from_utf8(rel.to_vec()).map_err(|_| {
            bad_kit(format!(
                "{} is not a UTF-8 name",
                String::from_utf8_lossy(&p)
            ))
        })?;
        match &kit.tree.node_inode(id).kind {
            InodeKind::Dir => {}
            InodeKind::File(content) => files.push((rel, content.clone())),
            other => {
                return Err(bad_kit(format!(
                    "overlay/{rel} is a {}: a FAT medium holds only regular files",
                    other.name()
                )))
            }
        }
    }
    let layers: Vec<&str> = files
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| {
            p.get(..5).is_some_and(|d| d.eq_ignore_ascii_case("live/"))
                && !p[5..].contains('/')
                && p.to_ascii_lowercase().ends_with(".squashfs")
        })
        .collect();
    let layer_rel = match layers.as_slice() {
        [one] => one.to_string(),
        [] => {
            return Err(bad_kit(
                "holds no diff layer (overlay/live/*.squashfs)".into(),
            ))
        }
        more => {
            return Err(bad_kit(format!(
                "holds {} diff layers in overlay/live/, a kit of Tails' own tooling has one",
                more.len()
            )))
        }
    };
    Ok((files, layer_rel))
}

/// The root a legacy kit makes: this medium's base with the kit's layer stacked; the version and
/// product its `/etc/os-release` names.
fn legacy_new_root(
    medium: &Medium,
    state: &State,
    layer_rel: &str,
    layer: &Content,
    bad_kit: &dyn Fn(String) -> MediumError,
    progress: &dyn Progress,
) -> Result<(HashedTree, String, String), MediumError> {
    let base_path = medium
        .find(BASE)?
        .ok_or_else(|| refuse(format!("{}: no {BASE}", medium.root.display())))?;
    let base = hash_tree(
        read_image_tree(medium, &base_path)?,
        "hashing base",
        progress,
    )?;
    let layer_name = format!("overlay/{layer_rel}");
    let image = layer
        .source
        .random_access()
        .ok_or_else(|| bad_kit(format!("{layer_name} cannot be opened in place")))?;
    // The reader's errors name the image.
    let upper = Archive::from_image(image, layer_name.clone())
        .and_then(|a| a.read_tree())
        .map_err(|e| bad_kit(e.to_string()))?;
    let upper = hash_tree(upper, "hashing layer", progress)?;
    let new_root = stack_layer(&base, &upper, &layer_name)?;
    let os = release::os_release(&new_root.tree).unwrap_or_default();
    let to_version = os.version.ok_or_else(|| {
        bad_kit(format!(
            "no version in /etc/os-release of this medium's base with {layer_name} stacked"
        ))
    })?;
    if !version::is_safe_name(&to_version) {
        return Err(bad_kit(format!(
            "version {to_version:?} in /etc/os-release is not a safe name"
        )));
    }
    let product = os.product.unwrap_or_else(|| state.product.clone());
    Ok((new_root, to_version, product))
}

/// Parses the sha256 `s` that `what` records; a refusal naming both when it is not one.
pub fn parse_hex(s: &str, what: &str) -> Result<[u8; 32], MediumError> {
    parse_sha256(s).ok_or_else(|| refuse(format!("{what}: {s:?} is not a sha256")))
}

/// The sum of `sizes`; None when it does not fit a u64 (sizes a hostile kit declares).
fn checked_sum(sizes: impl IntoIterator<Item = u64>) -> Option<u64> {
    sizes.into_iter().try_fold(0u64, u64::checked_add)
}
