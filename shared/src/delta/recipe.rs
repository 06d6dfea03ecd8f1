//! The recipe of a FORMAT 3 kit (DESIGN.md, "Binary deltas (FORMAT 3)"): what the device needs to
//! rebuild the diff layer's tree exactly.
//!
//! A recipe has two parts:
//! - the **recipe image** (`recipe.squashfs` in the kit): the diff layer's tree — every entry with
//!   its full metadata, xattrs, hard-link groups and whiteouts, in the writer's order — written
//!   with the layer's parameters, where each regular file holds its content *source* instead of
//!   its content: the whole content (`whole`), the patch (`zstd`, `bsdiff`), or nothing (`copy`);
//! - the [`Recipe`] in control.yml: the recipe version, the layer tree digest, the size of the
//!   layer the builder wrote, the recipe image's size and sha256, and one [`RecipeFile`] per
//!   regular file of the layer (named by the path of its first node in walk order: a hard-link
//!   group is one file): its output size and sha256, its source kind, and the base file (a path
//!   of the old root, i.e. of the device's current stack) with that file's sha256.
//!
//! FORMAT 3 boot files: control.yml's `overlay` lists every boot file the kit puts on the medium
//! as it ends there (path, size, sha256); those the kit re-creates from the medium's current
//! boot files are listed again in the recipe's `boot-files` ([`BootFile`]: `copy` of another
//! boot file, or a `zstd`/`bsdiff` patch against the boot file at the same path, carried at
//! `boot-patches/<path>` in the kit, [`boot_patch_path`]) and are not under `overlay/`. The key
//! is written only when a kit has such files, so kits without them keep their bytes; a reader
//! from before it refuses such a kit when it parses control.yml (unknown field `boot-files`:
//! the recipe denies unknown fields), before any write, so the recipe version stays 1.
//!
//! [`recipe_tree`] makes the recipe image's tree from the layer's (builder); [`layer_tree`] makes
//! the layer's tree back from the recipe image's and the base files (device). The device checks
//! every base file ([`Recipe::check_bases`]) before any write and every re-created file's sha256
//! as it is read ([`PatchedSource`]); the layer it writes is accepted only when its tree digest
//! equals [`Recipe::layer_tree_digest`] — the tree, not the image bytes, is what must be equal.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::source::{reconstruct, Patch, ZSTD_MAX_TOTAL};
use super::DeltaError;
use crate::tree::{hex, Content, ContentSource, InodeId, InodeKind, Tree};
use crate::yaml::YamlWriter;

/// The recipe version this iuk writes and reads. A device refuses any other before any write.
pub const RECIPE_VERSION: u32 = 1;
/// The recipe image's path inside the kit.
pub const RECIPE_IMAGE: &str = "recipe.squashfs";
/// The directory of the kit holding the patches of boot files ([`boot_patch_path`]).
pub const BOOT_PATCHES: &str = "boot-patches";
/// The largest patch or base file the device reads into memory to re-create one file: the zstd
/// cap ([`ZSTD_MAX_TOTAL`]) bounds old + new, bsdiff's is lower.
pub const MAX_PATCH_INPUT: u64 = ZSTD_MAX_TOTAL;

/// Where a recipe file's content comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The base file, unchanged (same sha256): a metadata-only change, a move or a rename.
    Copy,
    /// A zstd frame compressed with the base file as its prefix.
    Zstd,
    /// A bsdiff 4 patch against the base file.
    Bsdiff,
    /// A patch between the plain contents of the base file and the file, which holds
    /// compressed streams, with what re-creates its exact compressed bytes
    /// ([`super::repack`]).
    Repack,
    /// The content itself, in the recipe image.
    Whole,
}

impl SourceKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [SourceKind; 5] = [
        SourceKind::Copy,
        SourceKind::Zstd,
        SourceKind::Bsdiff,
        SourceKind::Repack,
        SourceKind::Whole,
    ];

    /// The name control.yml and reports use.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Copy => "copy",
            SourceKind::Zstd => "zstd",
            SourceKind::Bsdiff => "bsdiff",
            SourceKind::Repack => "repack",
            SourceKind::Whole => "whole",
        }
    }

    /// The kind of a patch.
    pub fn of(patch: &Patch) -> SourceKind {
        match patch {
            Patch::Zstd(_) => SourceKind::Zstd,
            Patch::Bsdiff(_) => SourceKind::Bsdiff,
            Patch::Repack(_) => SourceKind::Repack,
        }
    }

    /// The patch of this kind with `bytes` (None for `copy` and `whole`, which are no patch).
    pub fn patch(self, bytes: Vec<u8>) -> Option<Patch> {
        match self {
            SourceKind::Zstd => Some(Patch::Zstd(bytes)),
            SourceKind::Bsdiff => Some(Patch::Bsdiff(bytes)),
            SourceKind::Repack => Some(Patch::Repack(bytes)),
            SourceKind::Copy | SourceKind::Whole => None,
        }
    }

    /// Whether the kind is a patch carried in the kit.
    pub fn is_patch(self) -> bool {
        matches!(
            self,
            SourceKind::Zstd | SourceKind::Bsdiff | SourceKind::Repack
        )
    }

    /// Whether the kind reads a base file.
    pub fn needs_base(self) -> bool {
        self != SourceKind::Whole
    }
}

/// One regular file of the layer: what it must be, and how it is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RecipeFile {
    /// Path in the layer of the file's first node in walk order.
    pub path: String,
    /// Size of the re-created content.
    pub size: u64,
    /// sha256 of the re-created content, lower-case hex.
    pub sha256: String,
    /// How it is made.
    pub source: SourceKind,
    /// The base file: a path of the old root (the device's current stack).
    #[serde(default)]
    pub base: Option<String>,
    /// sha256 of the base file, lower-case hex.
    #[serde(default)]
    pub base_sha256: Option<String>,
}

/// A boot file of the kit's `overlay` entries that the device re-creates from one of its current
/// boot files instead of taking it from the kit (see the module doc). Its output (size, sha256)
/// is the `overlay` entry of the same path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BootFile {
    /// Path on the medium (an `overlay` entry's path).
    pub path: String,
    /// `copy`, `zstd` or `bsdiff` (never `whole`: a whole boot file is under `overlay/`).
    pub source: SourceKind,
    /// The boot file it is made from: a path of the medium's current boot files.
    pub base: String,
    /// sha256 of the base file, lower-case hex.
    pub base_sha256: String,
    /// Size of the patch at [`boot_patch_path`] (patches only).
    #[serde(default)]
    pub patch_size: Option<u64>,
    /// sha256 of the patch, lower-case hex (patches only).
    #[serde(default)]
    pub patch_sha256: Option<String>,
}

impl BootFile {
    /// Writes the record as one item of the `boot-files` list (keys in field order).
    pub fn write_yaml(w: &mut YamlWriter, f: &BootFile) {
        w.string("path", &f.path);
        w.string("source", f.source.name());
        w.string("base", &f.base);
        w.string("base-sha256", &f.base_sha256);
        if let Some(n) = f.patch_size {
            w.number("patch-size", n);
        }
        if let Some(s) = &f.patch_sha256 {
            w.string("patch-sha256", s);
        }
    }

    /// The bytes the record adds to control.yml (about: as the only item of its list).
    pub fn yaml_len(&self) -> u64 {
        let mut w = YamlWriter::new();
        w.list(
            "boot-files",
            std::slice::from_ref(self),
            BootFile::write_yaml,
        );
        w.finish().len() as u64
    }
}

/// Where the kit carries the patch of the boot file at `path`.
pub fn boot_patch_path(path: &str) -> String {
    format!("{BOOT_PATCHES}/{path}")
}

/// control.yml's `recipe` mapping (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Recipe {
    /// [`RECIPE_VERSION`] of the writer.
    pub version: u32,
    /// Canonical tree digest of the diff layer (entries, metadata, whiteouts, content hashes).
    pub layer_tree_digest: String,
    /// Size of the layer image the builder wrote (the device's free-space estimate).
    pub layer_size: u64,
    /// sha256 of the layer image the builder wrote. A device's rebuilt layer has this sha256
    /// when it writes with the same writer format; it is accepted by its tree digest either way.
    pub layer_sha256: String,
    /// Size of the recipe image.
    pub image_size: u64,
    /// sha256 of the recipe image.
    pub image_sha256: String,
    /// Every regular file of the layer, in walk order.
    pub files: Vec<RecipeFile>,
    /// Boot files re-created from the medium's current ones, sorted by path (key written only
    /// when not empty).
    #[serde(default)]
    pub boot_files: Vec<BootFile>,
}

/// Files and bytes of one source kind (reports, `--json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindTotals {
    /// Recipe files of this kind.
    pub files: u64,
    /// Bytes they re-create.
    pub bytes: u64,
}

/// Per source kind, in [`SourceKind::ALL`] order: how many of `items` (kind, output bytes,
/// carried bytes) are of it, their output bytes and their carried bytes. Every per-kind report
/// (build, inspect, check) is this sum.
pub fn per_kind(
    items: impl IntoIterator<Item = (SourceKind, u64, u64)>,
) -> Vec<(SourceKind, KindTotals, u64)> {
    let mut out: Vec<(SourceKind, KindTotals, u64)> = SourceKind::ALL
        .iter()
        .map(|&k| (k, KindTotals::default(), 0))
        .collect();
    for (kind, bytes, carried) in items {
        if let Some(o) = out.iter_mut().find(|o| o.0 == kind) {
            o.1.files += 1;
            o.1.bytes += bytes;
            o.2 += carried;
        }
    }
    out
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Recipe {
    /// Writes the `recipe` mapping into control.yml (keys in field order).
    pub fn write_yaml(&self, w: &mut YamlWriter) {
        w.map("recipe", |w| {
            w.number("version", self.version);
            w.string("layer-tree-digest", &self.layer_tree_digest);
            w.number("layer-size", self.layer_size);
            w.string("layer-sha256", &self.layer_sha256);
            w.number("image-size", self.image_size);
            w.string("image-sha256", &self.image_sha256);
            w.list("files", &self.files, |w, f| {
                w.string("path", &f.path);
                w.number("size", f.size);
                w.string("sha256", &f.sha256);
                w.string("source", f.source.name());
                if let Some(b) = &f.base {
                    w.string("base", b);
                }
                if let Some(b) = &f.base_sha256 {
                    w.string("base-sha256", b);
                }
            });
            if !self.boot_files.is_empty() {
                w.list("boot-files", &self.boot_files, BootFile::write_yaml);
            }
        });
    }

    /// Refuses a recipe this iuk cannot use: another version, malformed digests, a file
    /// listed twice, a base missing where its kind needs one (or given where it does not), a
    /// `copy` whose base has another sha256 than its output.
    pub fn validate(&self) -> Result<(), DeltaError> {
        let bad = |m: String| DeltaError::Recipe(m);
        if self.version != RECIPE_VERSION {
            return Err(bad(format!(
                "recipe version {} is not supported (this iuk reads version {RECIPE_VERSION})",
                self.version
            )));
        }
        for (what, d) in [
            ("layer-tree-digest", &self.layer_tree_digest),
            ("layer-sha256", &self.layer_sha256),
            ("image-sha256", &self.image_sha256),
        ] {
            if !is_hex64(d) {
                return Err(bad(format!("{what} is not a sha256 in lower-case hex")));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.files {
            let name = &f.path;
            if !seen.insert(name.as_str()) {
                return Err(bad(format!("{name}: listed twice")));
            }
            if !is_hex64(&f.sha256) {
                return Err(bad(format!("{name}: sha256 is not lower-case hex")));
            }
            match (f.source.needs_base(), &f.base, &f.base_sha256) {
                (true, Some(b), Some(s)) => {
                    if b.is_empty() || b.starts_with('/') || b.split('/').any(|c| c == "..") {
                        return Err(bad(format!("{name}: base {b:?} is not a relative path")));
                    }
                    if !is_hex64(s) {
                        return Err(bad(format!("{name}: base-sha256 is not lower-case hex")));
                    }
                    if f.source == SourceKind::Copy && *s != f.sha256 {
                        return Err(bad(format!("{name}: a copy whose base has another sha256")));
                    }
                }
                (false, None, None) => {}
                (true, _, _) => {
                    return Err(bad(format!(
                        "{name}: a {} source needs base and base-sha256",
                        f.source.name()
                    )))
                }
                (false, _, _) => {
                    return Err(bad(format!("{name}: a whole source has no base")));
                }
            }
        }
        self.validate_boot_files()
    }

    /// The `boot-files` part of [`Recipe::validate`]: each path once (case-insensitively, as on
    /// FAT), a relative base, digests in lower-case hex, patch size and sha256 exactly for
    /// patches, never `whole`.
    fn validate_boot_files(&self) -> Result<(), DeltaError> {
        let bad = |m: String| DeltaError::Recipe(m);
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.boot_files {
            let name = &f.path;
            if !seen.insert(name.to_ascii_lowercase()) {
                return Err(bad(format!("boot file {name}: listed twice")));
            }
            let b = &f.base;
            if b.is_empty() || b.starts_with('/') || b.split('/').any(|c| c == "..") {
                return Err(bad(format!(
                    "boot file {name}: base {b:?} is not a relative path"
                )));
            }
            if !is_hex64(&f.base_sha256) {
                return Err(bad(format!(
                    "boot file {name}: base-sha256 is not lower-case hex"
                )));
            }
            match (f.source, f.patch_size, &f.patch_sha256) {
                (SourceKind::Copy, None, None) => {}
                (k, Some(_), Some(s)) if k.is_patch() && is_hex64(s) => {}
                (SourceKind::Whole, _, _) => {
                    return Err(bad(format!(
                        "boot file {name}: a whole boot file is carried under overlay/, not listed"
                    )))
                }
                (kind, _, _) => {
                    return Err(bad(format!(
                        "boot file {name}: a {} source {} patch-size and patch-sha256",
                        kind.name(),
                        if kind == SourceKind::Copy {
                            "has no"
                        } else {
                            "needs"
                        }
                    )))
                }
            }
        }
        Ok(())
    }

    /// Boot files and output bytes per source kind, in [`SourceKind::ALL`] order, with the
    /// patch bytes the kit carries for them; `size` gives a boot file's output size (its
    /// `overlay` entry). Whole boot files are not listed in the recipe: the caller counts them.
    pub fn boot_totals(&self, size: &dyn Fn(&str) -> u64) -> Vec<(SourceKind, KindTotals, u64)> {
        per_kind(
            self.boot_files
                .iter()
                .map(|f| (f.source, size(&f.path), f.patch_size.unwrap_or(0))),
        )
    }

    /// The layer tree digest as bytes.
    pub fn layer_digest(&self) -> Result<[u8; 32], DeltaError> {
        parse_sha(&self.layer_tree_digest, "layer-tree-digest")
    }

    /// Files and bytes per source kind, in [`SourceKind::ALL`] order.
    pub fn totals(&self) -> Vec<(SourceKind, KindTotals)> {
        per_kind(self.files.iter().map(|f| (f.source, f.size, 0)))
            .into_iter()
            .map(|(k, t, _)| (k, t))
            .collect()
    }

    /// Every base file once, with the sha256 the recipe expects, sorted by path.
    pub fn bases(&self) -> Result<BTreeMap<&str, &str>, DeltaError> {
        let mut out: BTreeMap<&str, &str> = BTreeMap::new();
        for f in &self.files {
            if let (Some(b), Some(s)) = (&f.base, &f.base_sha256) {
                if let Some(prev) = out.insert(b, s) {
                    if prev != s {
                        return Err(DeltaError::Recipe(format!(
                            "base {b} is listed with two different sha256"
                        )));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Checks every base file before anything is written: `base(path)` gives the file of the
    /// current stack at `path` (None: absent or not a regular file); its size must fit the caps
    /// of patch sources and its sha256 must equal the recipe's. `read` gets bytes hashed.
    pub fn check_bases(
        &self,
        base: &(dyn Fn(&str) -> Option<Content> + Sync),
        read: &(dyn Fn(u64) + Sync),
    ) -> Result<(), DeltaError> {
        use rayon::prelude::*;
        let bases = self.bases()?;
        let list: Vec<(&str, &str)> = bases.into_iter().collect();
        list.par_iter().try_for_each(|(path, want)| {
            let c = base(path).ok_or_else(|| {
                DeltaError::Base(format!(
                    "{path}: a base file of the recipe is not a file of this medium's stack"
                ))
            })?;
            let got = c
                .sha256_with(read)
                .map_err(|e| DeltaError::Base(format!("{path}: {e}")))?;
            if hex(&got) != *want {
                return Err(DeltaError::Base(format!(
                    "{path}: the medium's file has sha256 {}, the recipe expects {want}",
                    hex(&got)
                )));
            }
            Ok(())
        })
    }
}

/// The sources of the layer's regular files as the builder chose them, by inode of the layer
/// tree: the record for control.yml and what the recipe image holds for the file.
pub struct Chosen {
    /// The layer inode the source is for.
    pub inode: InodeId,
    /// The control.yml record.
    pub record: RecipeFile,
    /// The recipe image's content for the file: the whole content, the patch, or empty.
    pub payload: Content,
}

/// The recipe image's tree: the layer's tree with each regular file's content replaced by its
/// chosen payload. Every regular-file inode must have exactly one choice.
pub fn recipe_tree(layer: &Tree, chosen: &[Chosen]) -> Result<Tree, DeltaError> {
    let mut t = layer.clone();
    let mut done = vec![false; t.inode_count()];
    for c in chosen {
        let i = c.inode.0 as usize;
        if i >= done.len() {
            return Err(DeltaError::Recipe(format!(
                "{}: no such inode in the layer",
                c.record.path
            )));
        }
        let InodeKind::File(content) = &mut t.inode_mut(c.inode).kind else {
            return Err(DeltaError::Recipe(format!(
                "{}: not a regular file of the layer",
                c.record.path
            )));
        };
        if std::mem::replace(&mut done[i], true) {
            return Err(DeltaError::Recipe(format!(
                "{}: two sources for one file",
                c.record.path
            )));
        }
        *content = c.payload.clone();
    }
    if let Some(i) = (0..done.len())
        .find(|&i| matches!(t.inode(InodeId(i as u32)).kind, InodeKind::File(_)) && !done[i])
    {
        return Err(DeltaError::Recipe(format!(
            "inode {i} of the layer has no source"
        )));
    }
    Ok(t)
}

/// The path of each regular-file inode's first node in walk order (the name a recipe file has).
pub fn file_paths(tree: &Tree) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = vec![None; tree.inode_count()];
    for id in tree.walk() {
        let node = tree.node(id);
        let i = node.inode.0 as usize;
        if matches!(tree.inode(node.inode).kind, InodeKind::File(_)) && out[i].is_none() {
            out[i] = Some(String::from_utf8_lossy(&tree.path(id)).into_owned());
        }
    }
    out
}

/// The layer's tree from the recipe image's tree (device side): each regular file's content
/// becomes its source — the recipe image's content (`whole`), the base file (`copy`), or the
/// base file patched ([`PatchedSource`], re-created and sha256-checked when read). Every regular
/// file of the recipe image must have exactly one record and every record a file; sizes must
/// agree with the kinds (`whole`: the image's size; `copy`: the base's; a `copy` payload empty).
/// `base` is looked up as in [`Recipe::check_bases`], which the caller runs first.
pub fn layer_tree(
    recipe_image: &Tree,
    recipe: &Recipe,
    base: &dyn Fn(&str) -> Option<Content>,
) -> Result<LayerTree, DeltaError> {
    let bad = |m: String| DeltaError::Recipe(m);
    let mut records: BTreeMap<&str, &RecipeFile> = BTreeMap::new();
    for f in &recipe.files {
        records.insert(f.path.as_str(), f);
    }
    let paths = file_paths(recipe_image);
    let mut t = recipe_image.clone();
    let mut patched = Vec::new();
    let mut hashes = vec![None; t.inode_count()];
    let mut used = 0usize;
    for (i, path) in paths.iter().enumerate() {
        let Some(path) = path else { continue };
        let rec = records
            .get(path.as_str())
            .ok_or_else(|| bad(format!("{path}: a file of the recipe image has no record")))?;
        used += 1;
        let InodeKind::File(payload) = &mut t.inode_mut(InodeId(i as u32)).kind else {
            continue;
        };
        let sha = parse_sha(&rec.sha256, path)?;
        hashes[i] = Some(sha);
        let base_content = match &rec.base {
            Some(b) if rec.source.needs_base() => Some(base(b).ok_or_else(|| {
                DeltaError::Base(format!(
                    "{b}: a base file of the recipe is not a file of this medium's stack"
                ))
            })?),
            _ => None,
        };
        let new = match (rec.source, base_content) {
            (SourceKind::Whole, _) => {
                if payload.size != rec.size {
                    return Err(bad(format!(
                        "{path}: the recipe image holds {} bytes, the record says {}",
                        payload.size, rec.size
                    )));
                }
                payload.clone()
            }
            (SourceKind::Copy, Some(b)) => {
                if payload.size != 0 || b.size != rec.size {
                    return Err(bad(format!(
                        "{path}: a copy of {} bytes from a base of {} (recipe payload {})",
                        rec.size, b.size, payload.size
                    )));
                }
                b
            }
            (kind, Some(b)) if kind.is_patch() => {
                if payload.size > MAX_PATCH_INPUT
                    || b.size.saturating_add(rec.size) > MAX_PATCH_INPUT
                {
                    return Err(bad(format!(
                        "{path}: patch {} bytes, base {} bytes and output {} bytes exceed the \
                         {MAX_PATCH_INPUT} bytes a device re-creates in memory",
                        payload.size, b.size, rec.size
                    )));
                }
                let source = Arc::new(PatchedSource {
                    path: path.clone(),
                    kind,
                    patch: payload.clone(),
                    base: b,
                    size: rec.size,
                    sha256: sha,
                });
                patched.push(Arc::clone(&source));
                Content {
                    size: rec.size,
                    source,
                }
            }
            (kind, Some(_)) => {
                return Err(bad(format!("{path}: a {} source with a base", kind.name())))
            }
            (kind, None) => {
                return Err(bad(format!(
                    "{path}: a {} source without a base",
                    kind.name()
                )))
            }
        };
        *payload = new;
    }
    if used != recipe.files.len() {
        let known: std::collections::BTreeSet<&str> =
            paths.iter().flatten().map(String::as_str).collect();
        let missing = recipe
            .files
            .iter()
            .find(|f| !known.contains(f.path.as_str()))
            .map_or("?", |f| f.path.as_str());
        return Err(bad(format!(
            "{missing}: a record names no regular file of the recipe image"
        )));
    }
    Ok(LayerTree {
        tree: t,
        patched,
        hashes,
    })
}

/// The layer's tree as [`layer_tree`] makes it, with the files it re-creates from patches.
pub struct LayerTree {
    /// The layer's tree.
    pub tree: Tree,
    /// Every file re-created from a patch (also reachable through `tree`).
    pub patched: Vec<Arc<PatchedSource>>,
    /// Each regular file's recorded sha256, by inode of `tree` (what the writer checks each
    /// file against as it reads it, instead of hashing it in a pass of its own).
    pub hashes: Vec<Option<[u8; 32]>>,
}

impl LayerTree {
    /// Re-creates every patched file once and checks its size and sha256, before anything is
    /// written (the writer re-creates each again when it reads it). Files whose base and output
    /// together are at most [`PARALLEL_RECREATE_MAX`] run in parallel, larger ones one at a
    /// time, so memory stays within about twice [`MAX_PATCH_INPUT`]. `done` gets bytes made.
    pub fn check_patches(&self, done: &(dyn Fn(u64) + Sync)) -> Result<(), DeltaError> {
        use rayon::prelude::*;
        let (small, large): (Vec<_>, Vec<_>) = self
            .patched
            .iter()
            .partition(|p| p.base.size.saturating_add(p.size) <= parallel_max(p.kind));
        let one = |p: &&Arc<PatchedSource>| -> Result<(), DeltaError> {
            p.recreate().map_err(|e| DeltaError::Patch(e.to_string()))?;
            done(p.size);
            Ok(())
        };
        small.par_iter().try_for_each(one)?;
        large.iter().try_for_each(one)
    }
}

/// Patched files whose base and output together are at most this large are re-created in
/// parallel by [`LayerTree::check_patches`].
pub const PARALLEL_RECREATE_MAX: u64 = 32 << 20;
/// [`PARALLEL_RECREATE_MAX`] for `repack` patches: a repack holds its streams' plain content
/// (a gzip initrd's is four times its size) and preflate-rs's state (about three times a
/// deflate stream's plain content).
pub const PARALLEL_REPACK_MAX: u64 = 4 << 20;

/// The largest base and output a patch of `kind` is re-created in parallel with others.
pub fn parallel_max(kind: SourceKind) -> u64 {
    if kind == SourceKind::Repack {
        PARALLEL_REPACK_MAX
    } else {
        PARALLEL_RECREATE_MAX
    }
}

fn parse_sha(s: &str, path: &str) -> Result<[u8; 32], DeltaError> {
    let mut out = [0u8; 32];
    if !is_hex64(s) {
        return Err(DeltaError::Recipe(format!(
            "{path}: sha256 is not lower-case hex"
        )));
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| DeltaError::Recipe(format!("{path}: sha256 is not hex")))?;
    }
    Ok(out)
}

/// A file re-created from a patch and its base when opened: both are read into memory (bounded
/// by [`MAX_PATCH_INPUT`], checked by [`layer_tree`]), the patch applied, the output's size and
/// sha256 checked; a mismatch is an error naming the file, so a layer is never written from a
/// wrong file.
pub struct PatchedSource {
    /// The file's path in the layer (for messages).
    pub path: String,
    /// `zstd`, `bsdiff` or `repack`.
    pub kind: SourceKind,
    /// The patch (a file of the recipe image).
    pub patch: Content,
    /// The base file (a file of the current stack).
    pub base: Content,
    /// Output size.
    pub size: u64,
    /// Output sha256.
    pub sha256: [u8; 32],
}

impl PatchedSource {
    /// Re-creates the file.
    pub fn recreate(&self) -> io::Result<Vec<u8>> {
        let err = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let patch = self.patch.read_all()?;
        let base = self.base.read_all()?;
        let Some(patch) = self.kind.patch(patch) else {
            return Err(err(format!(
                "{}: {} is not a patch",
                self.path,
                self.kind.name()
            )));
        };
        reconstruct(&patch, &base, self.size, &self.sha256)
            .map_err(|e| err(format!("{}: {e}", self.path)))
    }
}

impl ContentSource for PatchedSource {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(io::Cursor::new(self.recreate()?)))
    }

    fn describe(&self) -> String {
        format!("{} ({} patch)", self.path, self.kind.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Inode, Metadata};

    fn meta() -> Metadata {
        Metadata {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: Vec::new(),
        }
    }

    fn file(t: &mut Tree, name: &[u8], bytes: &[u8]) -> InodeId {
        let root = t.root();
        let n = t
            .add(
                root,
                name,
                Inode {
                    meta: meta(),
                    kind: InodeKind::File(Content::from_bytes(bytes.to_vec())),
                },
            )
            .unwrap();
        t.node(n).inode
    }

    fn sha(b: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex(&Sha256::digest(b))
    }

    fn rec(path: &str, out: &[u8], source: SourceKind, base: Option<(&str, &[u8])>) -> RecipeFile {
        RecipeFile {
            path: path.into(),
            size: out.len() as u64,
            sha256: sha(out),
            source,
            base: base.map(|b| b.0.to_string()),
            base_sha256: base.map(|b| sha(b.1)),
        }
    }

    fn recipe(files: Vec<RecipeFile>) -> Recipe {
        Recipe {
            version: RECIPE_VERSION,
            layer_tree_digest: "0".repeat(64),
            layer_size: 0,
            layer_sha256: "0".repeat(64),
            image_size: 0,
            image_sha256: "0".repeat(64),
            files,
            boot_files: Vec::new(),
        }
    }

    /// Every kind round-trips: layer → recipe image tree → layer again, contents equal.
    #[test]
    fn recipe_and_layer_trees_round_trip() {
        let old_a = b"the old version of a, long enough to patch ".repeat(40);
        let new_a = {
            let mut v = old_a.clone();
            v[100] ^= 1;
            v
        };
        let moved = b"unchanged content of b".to_vec();
        let fresh = b"brand new file".to_vec();
        let mut layer = Tree::new(Metadata {
            perm: 0o755,
            ..meta()
        });
        let ia = file(&mut layer, b"a", &new_a);
        let ib = file(&mut layer, b"b2", &moved);
        let ic = file(&mut layer, b"c", &fresh);
        let za = super::super::source::zstd_patch(&old_a, &new_a).unwrap();
        let r = recipe(vec![
            rec("a", &new_a, SourceKind::Zstd, Some(("a", &old_a))),
            rec("b2", &moved, SourceKind::Copy, Some(("b", &moved))),
            rec("c", &fresh, SourceKind::Whole, None),
        ]);
        r.validate().unwrap();
        let chosen = vec![
            Chosen {
                inode: ia,
                record: r.files[0].clone(),
                payload: Content::from_bytes(za),
            },
            Chosen {
                inode: ib,
                record: r.files[1].clone(),
                payload: Content::from_bytes(Vec::new()),
            },
            Chosen {
                inode: ic,
                record: r.files[2].clone(),
                payload: Content::from_bytes(fresh.clone()),
            },
        ];
        let image = recipe_tree(&layer, &chosen).unwrap();
        let (oa, ob) = (old_a.clone(), moved.clone());
        let base = move |p: &str| match p {
            "a" => Some(Content::from_bytes(oa.clone())),
            "b" => Some(Content::from_bytes(ob.clone())),
            _ => None,
        };
        r.check_bases(&base, &|_| {}).unwrap();
        let back = layer_tree(&image, &r, &base).unwrap();
        back.check_patches(&|_| {}).unwrap();
        let back = back.tree;
        for (id, want) in [(ia, &new_a), (ib, &moved), (ic, &fresh)] {
            let InodeKind::File(c) = &back.inode(id).kind else {
                panic!()
            };
            assert_eq!(&c.read_all().unwrap(), want);
        }
    }

    /// A changed base is refused by the check; a corrupt patch fails when read, naming the file.
    #[test]
    fn changed_base_and_corrupt_patch_are_refused() {
        let old = b"base content ".repeat(100);
        let new = b"base content!".repeat(100);
        let r = recipe(vec![rec("f", &new, SourceKind::Zstd, Some(("f", &old)))]);
        let other = b"something else".to_vec();
        let e = r
            .check_bases(&|_| Some(Content::from_bytes(other.clone())), &|_| {})
            .unwrap_err();
        assert!(
            e.to_string().contains("f: the medium's file has sha256"),
            "{e}"
        );
        let e = r.check_bases(&|_| None, &|_| {}).unwrap_err();
        assert!(e.to_string().contains("not a file of this medium"), "{e}");

        let mut layer = Tree::new(meta());
        let i = file(&mut layer, b"f", &new);
        let mut patch = super::super::source::zstd_patch(&old, &new).unwrap();
        let last = patch.len() - 1;
        patch[last] ^= 0xff;
        let image = recipe_tree(
            &layer,
            &[Chosen {
                inode: i,
                record: r.files[0].clone(),
                payload: Content::from_bytes(patch),
            }],
        )
        .unwrap();
        let o = old.clone();
        let back = layer_tree(&image, &r, &move |_| Some(Content::from_bytes(o.clone()))).unwrap();
        let e = back.check_patches(&|_| {}).unwrap_err();
        assert!(e.to_string().contains("f: "), "{e}");
        let back = back.tree;
        let InodeKind::File(c) = &back.inode(i).kind else {
            panic!()
        };
        let e = c.read_all().unwrap_err();
        assert!(e.to_string().starts_with("f: "), "{e}");
    }

    /// Records and files must match one to one; kinds need their bases; versions are checked.
    #[test]
    fn malformed_recipes_are_refused() {
        let mut r = recipe(vec![rec("f", b"x", SourceKind::Whole, None)]);
        r.version = 2;
        assert!(r.validate().unwrap_err().to_string().contains("version 2"));
        let r = recipe(vec![rec("f", b"x", SourceKind::Zstd, None)]);
        assert!(r.validate().unwrap_err().to_string().contains("needs base"));
        let r = recipe(vec![rec("f", b"x", SourceKind::Copy, Some(("g", b"y")))]);
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("another sha256"));
        let r = recipe(vec![
            rec("f", b"x", SourceKind::Whole, None),
            rec("f", b"x", SourceKind::Whole, None),
        ]);
        assert!(r.validate().unwrap_err().to_string().contains("twice"));

        let mut layer = Tree::new(meta());
        file(&mut layer, b"f", b"x");
        let none = |_: &str| None;
        let r = recipe(vec![]);
        let e = layer_tree(&layer, &r, &none).err().unwrap();
        assert!(e.to_string().contains("has no record"), "{e}");
        let r = recipe(vec![
            rec("f", b"x", SourceKind::Whole, None),
            rec("g", b"x", SourceKind::Whole, None),
        ]);
        let e = layer_tree(&layer, &r, &none).err().unwrap();
        assert!(e.to_string().contains("g: a record names no"), "{e}");
        let r = recipe(vec![rec("f", b"xy", SourceKind::Whole, None)]);
        let e = layer_tree(&layer, &r, &none).err().unwrap();
        assert!(e.to_string().contains("holds 1 bytes"), "{e}");
    }

    /// The YAML the kit carries parses back to the same recipe.
    #[test]
    fn yaml_round_trips() {
        let r = recipe(vec![
            rec("a b", b"x", SourceKind::Whole, None),
            rec("c", b"y", SourceKind::Bsdiff, Some(("lib/c.so.1", b"z"))),
        ]);
        let mut w = YamlWriter::new();
        r.write_yaml(&mut w);
        #[derive(Deserialize)]
        struct Doc {
            recipe: Recipe,
        }
        let text = w.finish();
        assert!(
            !text.contains("boot-files"),
            "no key without boot files: {text}"
        );
        let d: Doc = crate::yaml::parse(&text).unwrap();
        assert_eq!(d.recipe, r);

        let mut r = r;
        r.boot_files = vec![
            boot(
                "EFI/BOOT/bootx64.efi",
                SourceKind::Bsdiff,
                "EFI/BOOT/bootx64.efi",
            ),
            boot(
                "EFI/BOOT/splash.bin",
                SourceKind::Copy,
                "syslinux/splash.bin",
            ),
        ];
        r.validate().unwrap();
        let mut w = YamlWriter::new();
        r.write_yaml(&mut w);
        let d: Doc = crate::yaml::parse(&w.finish()).unwrap();
        assert_eq!(d.recipe, r);
        assert_eq!(
            boot_patch_path("EFI/BOOT/bootx64.efi"),
            "boot-patches/EFI/BOOT/bootx64.efi"
        );
    }

    fn boot(path: &str, source: SourceKind, base: &str) -> BootFile {
        let patch = source != SourceKind::Copy;
        BootFile {
            path: path.into(),
            source,
            base: base.into(),
            base_sha256: sha(base.as_bytes()),
            patch_size: patch.then_some(10),
            patch_sha256: patch.then(|| sha(b"patch")),
        }
    }

    /// Boot-file records: each path once (case-insensitively), a relative base, patch fields
    /// exactly for patches, never whole.
    #[test]
    fn malformed_boot_files_are_refused() {
        let with = |files: Vec<BootFile>| {
            let mut r = recipe(vec![]);
            r.boot_files = files;
            r.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let ok = boot("a", SourceKind::Zstd, "a");
        assert_eq!(with(vec![ok.clone()]), "");
        let mut twice = ok.clone();
        twice.path = "A".into();
        assert!(with(vec![ok.clone(), twice]).contains("twice"));
        let mut abs = ok.clone();
        abs.base = "/etc/x".into();
        assert!(with(vec![abs]).contains("not a relative path"));
        let mut up = ok.clone();
        up.base = "a/../../x".into();
        assert!(with(vec![up]).contains("not a relative path"));
        let mut no_patch = ok.clone();
        no_patch.patch_sha256 = None;
        assert!(with(vec![no_patch]).contains("needs patch-size"));
        let mut copy_patch = boot("c", SourceKind::Copy, "d");
        copy_patch.patch_size = Some(1);
        assert!(with(vec![copy_patch]).contains("has no patch-size"));
        assert!(with(vec![boot("w", SourceKind::Whole, "w")]).contains("overlay/"));
        let mut bad_sha = ok;
        bad_sha.base_sha256 = "AB".repeat(32);
        assert!(with(vec![bad_sha]).contains("base-sha256"));
    }
}
