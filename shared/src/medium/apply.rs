//! Applying a kit (DESIGN.md, "Applying"): [`plan`] verifies everything and writes nothing;
//! [`execute`] performs the seven steps through a [`MediumFs`]; [`finish`] is steps 4–7, shared
//! with `recover`.
//!
//! 1. Verify: FORMAT 2 kit made by iuk, every overlay file's size and sha256, product and
//!    build target, the upgrade model and the tree digest it requires, paths (relative, FAT-safe,
//!    never a protected name), the medium against its state, the layer name free, free space.
//! 2. Write `iuk-staging/intent`; write the layer at its final name (no module file lists it
//!    yet); stage a copy of every boot file whose content changes, except new boot files whose
//!    directory exists, which are written at their final names (nothing of the old release
//!    changes, and the intent names them for `recover`); fsync each file and every directory
//!    that gained an entry; re-read each from the device and check its sha256.
//! 3. Commit: write the journal, fsync it and `live/`.
//! 4. Boot files: clear what is in the way, overwrite each changed file in place from its staged
//!    copy; fsync each file and the directories that gained entries.
//! 5. Module file, then state, rewritten in place; fsync each.
//! 6. Delete superseded layers, removed boot files, `delete_files` and the staged copies.
//! 7. Zero the journal, fsync, unlink it, fsync `live/`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::adopt::read_image_tree;
use super::fsops::{drop_cache, parent_of, rewrite_file, write_file, MediumFs};
use super::journal::{self, Delete, Journal, Write};
use super::state::{Layer, State};
use super::trust::{self, SignedUdf};
use super::BASE;
use super::{
    find_child, io_err, safe_relative_path, sha_of, Medium, MediumError, INTENT_FILE, JOURNAL_FILE,
    STAGING_DIR,
};
use crate::boot::{is_protected, MONITORED_DIRS};
use crate::diff::HashedTree;
use crate::kit::{AnyKit, FileEntry, Kit, LegacyKit, FORMAT, GENERATOR};
use crate::progress::Progress;
use crate::release;
use crate::squashfs::archive::Archive;
use crate::squashfs::write::WRITER_FORMAT_VERSION;
use crate::tree::{hex, Content, InodeKind};
use crate::version;

/// How a kit relates to the medium.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// from-version = current: the layer goes on top of the stack.
    Stacking,
    /// from-version = base ≠ current: the layer replaces every diff layer.
    Cumulative,
}

/// Options of `check` and `apply`.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Overrides the state's bound on diff layers.
    pub max_layers: Option<u32>,
    /// The whole kit file must have this sha256 (from a signed UDF, or given by the user).
    pub kit_sha256: Option<[u8; 32]>,
    /// A signed upgrade description file listing the kit: required on a medium with trusted
    /// keys (its signature must verify with one of them, it must be addressed to the medium,
    /// and list the kit's size and sha256 as an incremental target of a newer version);
    /// refused on a medium without keys (nothing to verify it with).
    pub udf: Option<SignedUdf>,
    /// Accept a kit made by Tails' own tooling (control.yml with only `delete_files`), which
    /// does not say which release it was built against.
    pub legacy_tails_kit: bool,
}

/// A boot file the apply writes.
#[derive(Clone, Debug)]
pub struct BootWrite {
    /// Installed path (as the kit names it).
    pub path: String,
    /// sha256 of the new content.
    pub sha256: [u8; 32],
    /// The new content, read from the kit.
    pub content: Content,
    /// sha256 of the file it replaces, if one exists.
    pub old: Option<[u8; 32]>,
    /// Size of the file it replaces (0 when none).
    pub old_size: u64,
    /// Written at its final name in step 2 instead of staged: nothing is at the path (in any
    /// case spelling) and its directory exists, so no file of the old release changes and the
    /// intent names it for `recover` to delete if the apply is not committed.
    pub direct: bool,
}

/// Everything an apply will do, computed and verified without writing.
pub struct Plan {
    /// The kit's product.
    pub product: String,
    /// The version the kit upgrades from (for a kit of Tails' own tooling: the medium's base).
    pub from_version: String,
    /// The version it upgrades to.
    pub to_version: String,
    /// The layer's name (`live/<name>.squashfs`).
    pub layer_name: String,
    /// Made by Tails' own tooling: installed without checking what it was built against.
    pub legacy_tails_kit: bool,
    /// Stacking or cumulative.
    pub model: Model,
    /// The state the apply starts from, its text's sha256.
    pub old_state_sha: [u8; 32],
    /// The state after the apply.
    pub new_state: State,
    /// The module file name in `live/`.
    pub module_file: String,
    /// `live/<layer>.squashfs`.
    pub layer_rel: String,
    /// The layer's bytes in the kit, and their sha256.
    pub layer: (Content, [u8; 32]),
    /// Boot files to write.
    pub writes: Vec<BootWrite>,
    /// Files and directories to delete after the commit.
    pub deletes: Vec<Delete>,
    /// Bytes of every file the kit carries (its overlay).
    pub payload: u64,
    /// Bytes the apply writes before anything is freed: new files and the growth of files
    /// rewritten in place.
    pub written: u64,
    /// The same in whole allocation units of the medium's filesystem (clusters on FAT).
    pub allocated: u64,
    /// Free space the apply needs: `written` + 1 MiB, or `allocated` + 256 KiB when more.
    pub needed: u64,
    /// Free bytes on the medium (None where the filesystem does not say).
    pub free: Option<u64>,
    /// Things the user should know.
    pub warnings: Vec<String>,
    /// True when `syslinux/ldlinux.c32` changes: the boot loader must be reinstalled to match.
    pub reinstall_bootloader: bool,
}

fn refuse(msg: impl Into<String>) -> MediumError {
    MediumError::Refused(msg.into())
}

fn parse_hex(s: &str, what: &str) -> Result<[u8; 32], MediumError> {
    journal::parse_sha256(s).ok_or_else(|| refuse(format!("{what}: {s:?} is not a sha256")))
}

fn statvfs(path: &Path) -> Result<libc::statvfs, MediumError> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| refuse(format!("{}: path holds a NUL byte", path.display())))?;
    // SAFETY: a valid C string and a zeroed out-structure the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(io_err(path, std::io::Error::last_os_error()));
    }
    Ok(st)
}

/// Free bytes for an unprivileged writer, or None when the filesystem reports no size.
// statvfs's field types differ between targets (u32 on some 32-bit ones).
#[allow(clippy::unnecessary_cast)]
pub fn free_space(path: &Path) -> Result<Option<u64>, MediumError> {
    let st = statvfs(path)?;
    if st.f_blocks == 0 {
        return Ok(None);
    }
    Ok(Some(st.f_bavail as u64 * st.f_frsize as u64))
}

/// The filesystem's allocation unit (the cluster on FAT), 4096 when it does not say.
#[allow(clippy::unnecessary_cast)]
fn cluster_size(path: &Path) -> u64 {
    match statvfs(path) {
        Ok(st) if st.f_frsize > 0 => st.f_frsize as u64,
        _ => 4096,
    }
}

/// Space an apply takes before anything is freed (DESIGN.md: the written bytes + 1 MiB, nothing
/// replaced counted as freed): every file it creates and the growth of every file it rewrites in
/// place, as (new size, old size) pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SpaceWritten(Vec<(u64, u64)>);

/// Headroom beyond the written bytes.
const SPACE_MARGIN: u64 = 1 << 20;
/// Headroom left for directory entries when whole clusters are counted.
const CLUSTER_MARGIN: u64 = 256 << 10;

impl SpaceWritten {
    /// The written bytes.
    fn bytes(&self) -> u64 {
        self.0
            .iter()
            .map(|(new, old)| new.saturating_sub(*old))
            .sum()
    }

    /// The written bytes in whole clusters: what many small files take on a medium with large
    /// clusters, beyond what the 1 MiB margin covers.
    fn allocated(&self, cluster: u64) -> u64 {
        let cluster = cluster.max(1);
        self.0
            .iter()
            .map(|(new, old)| new.div_ceil(cluster).saturating_sub(old.div_ceil(cluster)))
            .sum::<u64>()
            * cluster
    }
}

/// What step 2 and the commit write: the layer, each staged copy, each boot file written
/// directly, the growth of boot files overwritten in place, and `others` (intent, journal,
/// state, module file).
fn space_written(layer: &Content, writes: &[BootWrite], others: [(u64, u64); 4]) -> SpaceWritten {
    let mut files = vec![(layer.size, 0)];
    for w in writes {
        files.push((w.content.size, 0));
        if !w.direct {
            files.push((w.content.size, w.old_size));
        }
    }
    files.extend(others);
    SpaceWritten(files)
}

/// The intent file of step 2: the layer, the state it starts from, and the boot files written
/// directly at their final names (which `recover` deletes when the apply was not committed).
fn intent_text(layer: &str, old_state: &[u8; 32], writes: &[BootWrite]) -> String {
    let mut t = format!("layer {layer}\nstate {}\n", hex(old_state));
    for w in writes.iter().filter(|w| w.direct) {
        t.push_str(&format!("direct {}\n", w.path));
    }
    t
}

/// The journal an apply commits: staged copies are named by their index in `writes`; boot files
/// written directly have no staged copy (an empty name).
fn plan_journal(
    old_state: [u8; 32],
    new_state: &State,
    writes: &[BootWrite],
    deletes: &[Delete],
) -> Journal {
    Journal {
        old_state,
        module_file: new_state.module_file.clone(),
        module_text: new_state.module_text(),
        state_text: new_state.to_yaml(),
        writes: writes
            .iter()
            .enumerate()
            .map(|(i, w)| Write {
                path: w.path.clone(),
                old: w.old,
                new: w.sha256,
                size: w.content.size,
                staged: if w.direct {
                    String::new()
                } else {
                    staged_name(i)
                },
            })
            .collect(),
        deletes: deletes.to_vec(),
    }
}

/// Name of the staged copy of the `i`-th boot write in `live/iuk-staging/`.
fn staged_name(i: usize) -> String {
    format!("{i:05}")
}

/// Where a new boot file can be written at its final name: its parent directory exists (found
/// case-insensitively) and nothing of that name is in it.
fn direct_target(medium: &Medium, rel: &str) -> Option<PathBuf> {
    let (dir, name) = match rel.rsplit_once('/') {
        Some((d, n)) => (medium.find(d)?, n),
        None => (medium.root.clone(), rel),
    };
    if !dir.is_dir() || find_child(&dir, name).is_some() {
        return None;
    }
    Some(dir.join(name))
}

/// Verifies a kit against a medium and computes what applying it would do. Writes nothing.
pub fn plan(
    medium: &Medium,
    kit_path: &Path,
    opts: &ApplyOptions,
    progress: &dyn Progress,
) -> Result<Plan, MediumError> {
    let kit_name = kit_path.display().to_string();
    let bad_kit = |what: String| refuse(format!("{kit_name}: {what}"));
    if medium.journal_pending() || medium.staging_pending() {
        return Err(MediumError::PendingRecovery(medium.root.clone()));
    }
    let (state, _, old_state_sha) = medium.read_state()?;

    // Trust: on a medium with keys, a signed UDF that lists the kit; without keys, none.
    let verified_udf = match (&state.keyring, &opts.udf) {
        (Some(_), None) => {
            return Err(refuse(format!(
                "{}: this medium trusts signing keys: give the signed upgrade description file \
                 listing {kit_name} (--udf FILE --signature FILE)",
                medium.root.display()
            )))
        }
        (None, Some(s)) => {
            return Err(refuse(format!(
                "{}: no trusted keys on this medium to verify {} with; give it keys with \
                 `iuk-apply init --keyring` or `iuk-apply adopt --keyring`",
                medium.root.display(),
                s.udf_name
            )))
        }
        (None, None) => None,
        (Some(_), Some(s)) => {
            let v = trust::verify_udf(medium, &state, s)?;
            trust::check_addressed(&v.udf, &state, &s.udf_name)?;
            Some((v, s.udf_name.clone()))
        }
    };
    let mut listed: Vec<trust::Listed> = Vec::new();
    if opts.kit_sha256.is_some() || verified_udf.is_some() {
        progress.phase(
            "hashing kit",
            fs::metadata(kit_path).map(|m| m.len()).unwrap_or(0),
        );
        let (size, got) = size_and_sha(kit_path)?;
        if let Some(want) = opts.kit_sha256 {
            if got != want {
                return Err(bad_kit(format!(
                    "sha256 is {}, expected {}",
                    hex(&got),
                    hex(&want)
                )));
            }
        }
        if let Some((v, udf_name)) = &verified_udf {
            listed = trust::listed_kits(&v.udf, &state, size, &got);
            if listed.is_empty() {
                return Err(bad_kit(format!(
                    "not listed in the signed upgrade description {udf_name}: no incremental \
                     upgrade to a version newer than {} has this kit's size ({size} bytes) and \
                     sha256 ({})",
                    state.current_version,
                    hex(&got)
                )));
            }
        }
    }
    let any = Kit::open_any(kit_path).map_err(|e| {
        let m = e.to_string();
        if m.starts_with(&kit_name) {
            refuse(m)
        } else {
            bad_kit(m)
        }
    })?;
    let format = match &any {
        AnyKit::Iuk(k) => &k.format,
        AnyKit::Legacy(k) => &k.format,
    };
    if format != FORMAT {
        return Err(bad_kit(format!(
            "FORMAT {format:?} is not supported (this iuk-apply installs FORMAT 2 kits)"
        )));
    }
    let mut warnings = Vec::new();
    let c = match &any {
        AnyKit::Iuk(kit) => iuk_proposal(kit, &bad_kit, progress)?,
        AnyKit::Legacy(kit) => {
            if !opts.legacy_tails_kit {
                return Err(bad_kit(
                    "made by Tails' own tooling (control.yml holds only delete_files): it does \
                     not say which release it was built against, so that cannot be checked; \
                     pass --legacy-tails-kit to install it anyway"
                        .into(),
                ));
            }
            warnings.push(format!(
                "{kit_name}: made by Tails' own tooling: the release it was built against cannot \
                 be checked; it is installed as a cumulative upgrade of this medium's base {}",
                state.base_version
            ));
            legacy_proposal(medium, &state, kit, &bad_kit, progress)?
        }
    };
    for d in &c.delete_files {
        let inside = MONITORED_DIRS
            .iter()
            .any(|m| d.starts_with(&format!("{m}/")));
        // Protected files live directly in live/ or in live/iuk-staging/, which is protected
        // itself: an entry strictly inside a monitored directory contains none of them.
        let is_monitored = MONITORED_DIRS.iter().any(|m| m.eq_ignore_ascii_case(d));
        if !safe_relative_path(d) || !inside || is_monitored || is_protected(d) {
            return Err(bad_kit(format!("delete_files entry {d:?} is not allowed")));
        }
    }
    if let Some((_, udf_name)) = &verified_udf {
        if !listed
            .iter()
            .any(|l| l.version == c.to_version && l.from_version == c.from_version)
        {
            let l = &listed[0];
            return Err(bad_kit(format!(
                "upgrades from {} to {}, but the signed upgrade description {udf_name} lists it \
                 as the kit from {} to {}",
                c.from_version, c.to_version, l.from_version, l.version
            )));
        }
    }
    let layer_rel = format!("live/{}.squashfs", c.layer);
    let layer = c.layer_content.clone();
    let overlay_content = &c.overlay;
    let payload = c.payload;

    // Product, target, model.
    if c.product != state.product {
        return Err(refuse(format!(
            "{kit_name} is for {}, this medium holds {}",
            c.product, state.product
        )));
    }
    if let Some(t) = c
        .build_target
        .as_ref()
        .filter(|t| **t != state.build_target)
    {
        return Err(refuse(format!(
            "{kit_name} is for build target {t}, this medium is {}",
            state.build_target
        )));
    }
    if version::compare(&c.to_version, &state.current_version) != std::cmp::Ordering::Greater {
        return Err(refuse(format!(
            "{kit_name} upgrades to {}, but the medium already runs {} (no downgrade, no replay)",
            c.to_version, state.current_version
        )));
    }
    let model = match &c.old_tree_digest {
        // A kit of Tails' own tooling: the base + its layer, whatever the medium stacks now.
        None if state.layers.is_empty() => Model::Stacking,
        None => Model::Cumulative,
        Some(digest) if c.from_version == state.current_version => {
            if *digest != state.current_tree_digest {
                return Err(refuse(format!(
                    "{kit_name} was built against another {} than the one on this medium (tree digests differ)",
                    c.from_version
                )));
            }
            Model::Stacking
        }
        Some(digest) if c.from_version == state.base_version => {
            if *digest != state.base_tree_digest {
                return Err(refuse(format!(
                    "{kit_name} was built against another {} than this medium's base (tree digests differ)",
                    c.from_version
                )));
            }
            Model::Cumulative
        }
        Some(_) => {
            return Err(refuse(format!(
                "{kit_name} upgrades from {}, but the medium runs {} on a {} base: this kit does not apply",
                c.from_version, state.current_version, state.base_version
            )))
        }
    };
    let max_layers = opts.max_layers.unwrap_or(state.max_layers);
    if model == Model::Stacking && state.layers.len() as u32 + 1 > max_layers {
        return Err(refuse(format!(
            "{}: the medium already has {} diff layers (at most {max_layers}); apply a cumulative kit from {} or do a full upgrade",
            medium.root.display(),
            state.layers.len(),
            state.base_version
        )));
    }

    // The medium still matches its state; the layer name is free.
    medium.check_consistent(&state, false)?;
    if medium.find(&layer_rel).is_some()
        || state
            .layers
            .iter()
            .any(|l| l.name.eq_ignore_ascii_case(&c.layer))
    {
        return Err(refuse(format!(
            "{}: {layer_rel} already exists (kit already applied?)",
            medium.root.display()
        )));
    }

    // Boot files: every file of the new boot tree either is on the medium already or in the kit.
    let mut writes = Vec::new();
    let mut written: HashSet<String> = HashSet::new();
    for e in &c.boot_tree {
        let want = parse_hex(&e.sha256, &e.path)?;
        let current = state
            .boot_files
            .iter()
            .find(|f| f.path.eq_ignore_ascii_case(&e.path));
        let on_medium_same = match current {
            Some(f) => f.sha256 == e.sha256 && medium.find(&e.path).is_some(),
            None => false,
        };
        if on_medium_same {
            continue;
        }
        let (content, sha) = overlay_content
            .get(&e.path.to_ascii_lowercase())
            .ok_or_else(|| {
                bad_kit(format!(
                    "boot file {} changes but the kit does not carry it",
                    e.path
                ))
            })?;
        if *sha != want {
            return Err(bad_kit(format!(
                "boot file {} differs from its overlay copy",
                e.path
            )));
        }
        let existing = medium.find(&e.path);
        let (old, old_size) = match &existing {
            Some(p) if p.is_file() => (
                Some(sha_of(p)?),
                fs::metadata(p).map_err(|e| io_err(p, e))?.len(),
            ),
            _ => (None, 0),
        };
        let direct = existing.is_none() && direct_target(medium, &e.path).is_some();
        written.insert(e.path.to_ascii_lowercase());
        writes.push(BootWrite {
            path: e.path.clone(),
            sha256: want,
            content: content.clone(),
            old,
            old_size,
            direct,
        });
    }

    // Deletions: superseded layers, boot files the new tree lacks, delete_files.
    let mut deletes: Vec<Delete> = Vec::new();
    if model == Model::Cumulative {
        for l in &state.layers {
            deletes.push(Delete {
                path: format!("live/{}.squashfs", l.name),
                old: Some(parse_hex(&l.sha256, &l.name)?),
            });
        }
    }
    for f in &state.boot_files {
        if !c
            .boot_tree
            .iter()
            .any(|e| e.path.eq_ignore_ascii_case(&f.path))
            && !written.contains(&f.path.to_ascii_lowercase())
        {
            deletes.push(Delete {
                path: f.path.clone(),
                old: Some(parse_hex(&f.sha256, &f.path)?),
            });
        }
    }
    // delete_files never removes a file of the new boot tree (a file Tails would copy back).
    let keep: HashSet<String> = c
        .boot_tree
        .iter()
        .map(|e| e.path.to_ascii_lowercase())
        .collect();
    for d in &c.delete_files {
        let Some(p) = medium.find(d) else { continue };
        collect_deletes(medium, &p, &keep, &mut deletes)?;
    }
    let mut seen = HashSet::new();
    deletes.retain(|d| seen.insert(d.path.to_ascii_lowercase()));

    let mut new_state = state.clone();
    let new_layer = Layer {
        name: c.layer.clone(),
        size: layer.0.size,
        sha256: hex(&layer.1),
        version: c.to_version.clone(),
    };
    match model {
        Model::Stacking => new_state.layers.push(new_layer),
        Model::Cumulative => new_state.layers = vec![new_layer],
    }
    new_state.current_version = c.to_version.clone();
    new_state.current_tree_digest = c.new_tree_digest.clone();
    new_state.boot_files = c.boot_tree.clone();
    if let Some(w) = c.writer_format {
        new_state.writer_format = w;
    }
    if let Some(m) = opts.max_layers {
        new_state.max_layers = m;
    }

    // Space: everything written before anything is freed.
    let old_state_len = fs::metadata(medium.live_file(super::STATE_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let old_module_len = medium
        .find(&format!("live/{}", state.module_file))
        .and_then(|p| fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let journal = plan_journal(old_state_sha, &new_state, &writes, &deletes);
    let written_files = space_written(
        &layer.0,
        &writes,
        [
            (
                intent_text(&c.layer, &old_state_sha, &writes).len() as u64,
                0,
            ),
            (journal.encode().len() as u64, 0),
            (new_state.to_yaml().len() as u64, old_state_len),
            (new_state.module_text().len() as u64, old_module_len),
        ],
    );
    let free = free_space(&medium.root)?;
    let cluster = cluster_size(&medium.root);
    let (written, allocated) = (written_files.bytes(), written_files.allocated(cluster));
    let needed = (written + SPACE_MARGIN).max(allocated + CLUSTER_MARGIN);
    if state.keyring.is_none() {
        warnings.push(format!(
            "{}: no trusted keys on this medium: the kit's origin is not verified (give the \
             medium keys with `iuk-apply init --keyring` or `adopt --keyring`)",
            medium.root.display()
        ));
    }
    match free {
        Some(f) if f < needed => {
            return Err(refuse(format!(
                "{}: {needed} bytes needed, {f} free; free some space or use a larger medium",
                medium.root.display()
            )))
        }
        None => warnings.push(format!(
            "{}: the filesystem does not report its free space; not checked",
            medium.root.display()
        )),
        _ => {}
    }

    let reinstall_bootloader = writes
        .iter()
        .any(|w| w.path.eq_ignore_ascii_case("syslinux/ldlinux.c32"));
    Ok(Plan {
        module_file: state.module_file.clone(),
        product: c.product,
        from_version: c.from_version,
        to_version: c.to_version,
        layer_name: c.layer,
        legacy_tails_kit: c.old_tree_digest.is_none(),
        model,
        old_state_sha,
        new_state,
        layer_rel,
        layer,
        writes,
        deletes,
        payload,
        written,
        allocated,
        needed,
        free,
        warnings,
        reinstall_bootloader,
    })
}

/// What a kit would install, read and verified from the kit alone.
struct Proposal {
    product: String,
    /// None: the kit does not say (kits of Tails' own tooling).
    build_target: Option<String>,
    from_version: String,
    to_version: String,
    layer: String,
    /// None: the kit does not say (kits of Tails' own tooling).
    old_tree_digest: Option<String>,
    new_tree_digest: String,
    /// The boot tree after the apply, sorted by path.
    boot_tree: Vec<FileEntry>,
    delete_files: Vec<String>,
    /// None: the kit does not say (kits of Tails' own tooling).
    writer_format: Option<u32>,
    /// The layer's content and sha256.
    layer_content: (Content, [u8; 32]),
    /// Every overlay file by lower-case path: content and sha256.
    overlay: HashMap<String, (Content, [u8; 32])>,
    /// Bytes of every overlay file.
    payload: u64,
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
fn iuk_proposal(
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

    // Every overlay file is in the kit with the recorded size and sha256, and nothing else is.
    let payload: u64 = c.overlay.iter().map(|e| e.size).sum();
    progress.phase("verifying kit", payload);
    let done = std::cell::Cell::new(0u64);
    let mut listed: HashSet<Vec<u8>> = HashSet::new();
    let mut layer: Option<(Content, [u8; 32])> = None;
    let mut overlay: HashMap<String, (Content, [u8; 32])> = HashMap::new();
    for e in &c.overlay {
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
        let want = parse_hex(&e.sha256, &kit_path_in)?;
        let got = content
            .sha256_with(|n| {
                done.set(done.get() + n);
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
    for id in kit.tree.walk() {
        let p = kit.tree.path(id);
        if p.starts_with(b"overlay/")
            && !matches!(kit.tree.node_inode(id).kind, InodeKind::Dir)
            && !listed.contains(&p)
        {
            return Err(bad_kit(format!(
                "{} is not listed in control.yml",
                String::from_utf8_lossy(&p)
            )));
        }
    }
    let layer_content = layer.ok_or_else(|| bad_kit(format!("overlay/{layer_rel} is missing")))?;
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
        layer_content,
        overlay,
        payload,
    })
}

/// A kit of Tails' own tooling (`--legacy-tails-kit`), installed as Tails' installer does:
/// the overlay copied onto the medium, `delete_files` deleted, the module file = the base + the
/// kit's one diff layer. Nothing records what it was built against or its files' hashes, so:
/// every overlay file must be a regular file with a safe path; exactly one
/// `overlay/live/*.squashfs`; the new version and product come from `/etc/os-release` of this
/// medium's base with that layer stacked, and the new tree digest from the same stack.
fn legacy_proposal(
    medium: &Medium,
    state: &State,
    kit: &LegacyKit,
    bad_kit: &dyn Fn(String) -> MediumError,
    progress: &dyn Progress,
) -> Result<Proposal, MediumError> {
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
    let layer = layer_rel[5..layer_rel.len() - ".squashfs".len()].to_string();
    if !version::is_safe_name(&layer) || layer.eq_ignore_ascii_case("filesystem") {
        return Err(bad_kit(format!("layer name {layer:?} is not usable")));
    }
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    check_kit_paths(&paths, &[], &layer_rel, bad_kit)?;

    // Hash every overlay file.
    let payload: u64 = files.iter().map(|(_, c)| c.size).sum();
    progress.phase("reading kit", payload);
    let done = std::cell::Cell::new(0u64);
    let mut overlay: HashMap<String, (Content, [u8; 32])> = HashMap::new();
    let mut carried: Vec<FileEntry> = Vec::new();
    for (rel, content) in &files {
        let sha = content
            .sha256_with(|n| {
                done.set(done.get() + n);
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
    let base_path = medium
        .find(BASE)
        .ok_or_else(|| refuse(format!("{}: no {BASE}", medium.root.display())))?;
    let base = HashedTree::with_progress(read_image_tree(&base_path)?, "hashing base", progress)
        .map_err(|e| refuse(e.to_string()))?;
    let layer_name = format!("overlay/{layer_rel}");
    let image = layer_content
        .0
        .source
        .random_access()
        .ok_or_else(|| bad_kit(format!("{layer_name} cannot be opened in place")))?;
    // The reader's errors name the image.
    let upper = Archive::from_image(image, layer_name.clone())
        .and_then(|a| a.read_tree())
        .map_err(|e| bad_kit(e.to_string()))?;
    let upper = HashedTree::with_progress(upper, "hashing layer", progress)
        .map_err(|e| refuse(e.to_string()))?;
    let new_root = base
        .stack(&upper)
        .map_err(|e| refuse(format!("{layer_name}: {e}")))?;
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
        layer_content,
        overlay,
        payload,
    })
}

/// The size and sha256 of a file, read once.
fn size_and_sha(path: &Path) -> Result<(u64, [u8; 32]), MediumError> {
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, h.finalize().into()))
}

/// Adds the files (with their sha256) and directories below `path` to `deletes`, deepest first,
/// leaving out protected names and files the apply writes.
fn collect_deletes(
    medium: &Medium,
    path: &Path,
    written: &HashSet<String>,
    deletes: &mut Vec<Delete>,
) -> Result<(), MediumError> {
    let rel = path
        .strip_prefix(&medium.root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned();
    if is_protected(&rel) || written.contains(&rel.to_ascii_lowercase()) {
        return Ok(());
    }
    let md = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
    if md.is_dir() {
        let mut children: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        children.sort();
        for ch in children {
            collect_deletes(medium, &ch, written, deletes)?;
        }
        deletes.push(Delete {
            path: rel,
            old: None,
        });
    } else {
        deletes.push(Delete {
            path: rel,
            old: Some(sha_of(path)?),
        });
    }
    Ok(())
}

/// What an apply did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApplyReport {
    /// Stacking or cumulative.
    pub model: Model,
    /// Version before.
    pub from_version: String,
    /// Version after.
    pub to_version: String,
    /// Layer added.
    pub layer: String,
    /// Bytes written (layer + staged copies + boot files).
    pub bytes_written: u64,
    /// Boot files written.
    pub boot_files_written: usize,
    /// Files and directories deleted.
    pub deleted: usize,
    /// The boot loader must be reinstalled (syslinux/ldlinux.c32 changed).
    pub reinstall_bootloader: bool,
}

const CHUNK: usize = 1 << 20;

/// Copies `content` into a new file at `path` through `fs`, fsyncs and closes it; returns the
/// sha256 of what was written.
pub(super) fn copy_in(
    fs: &mut dyn MediumFs,
    path: &Path,
    content: &Content,
    progress: &dyn Progress,
    done: &mut u64,
) -> Result<[u8; 32], MediumError> {
    let h = fs.create(path).map_err(|e| io_err(path, e))?;
    let mut r = content.source.open().map_err(|e| io_err(path, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    let mut sha = Sha256::new();
    loop {
        let n = r.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        fs.write_at(h, off, &buf[..n])
            .map_err(|e| io_err(path, e))?;
        off += n as u64;
        *done += n as u64;
        progress.position(*done);
    }
    fs.fsync(h).map_err(|e| io_err(path, e))?;
    fs.close(h).map_err(|e| io_err(path, e))?;
    Ok(sha.finalize().into())
}

/// Re-reads a file from the device (page cache dropped first) and checks its sha256.
fn verify_written(path: &Path, want: &[u8; 32]) -> Result<(), MediumError> {
    drop_cache(path);
    if sha_of(path)? != *want {
        return Err(refuse(format!(
            "{}: read back with another sha256 than written (failing medium?)",
            path.display()
        )));
    }
    Ok(())
}

/// Performs a verified plan (steps 2 to 7). The caller holds the medium's lock.
pub fn execute(
    medium: &Medium,
    plan: &Plan,
    fs: &mut dyn MediumFs,
    progress: &dyn Progress,
) -> Result<ApplyReport, MediumError> {
    let live = medium.live();
    let staging = medium.staging();
    if !staging.is_dir() {
        fs.mkdir(&staging).map_err(|e| io_err(&staging, e))?;
        fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    }
    // Step 2: intent, layer, staged copies and new boot files; every file and directory entry
    // made durable; each re-read from the device.
    let intent = staging.join(INTENT_FILE);
    let intent_text = intent_text(&plan.layer_name, &plan.old_state_sha, &plan.writes);
    write_file(fs, &intent, intent_text.as_bytes()).map_err(|e| io_err(&intent, e))?;
    fs.fsync_dir(&staging).map_err(|e| io_err(&staging, e))?;

    let total = plan.layer.0.size + plan.writes.iter().map(|w| w.content.size).sum::<u64>();
    progress.phase("staging", total);
    let mut done = 0u64;
    let layer_path = medium.root.join(&plan.layer_rel);
    let sha = copy_in(fs, &layer_path, &plan.layer.0, progress, &mut done)?;
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    if sha != plan.layer.1 {
        return Err(refuse(format!(
            "{}: the kit changed while it was being applied",
            plan.layer_rel
        )));
    }
    let journal = plan_journal(
        plan.old_state_sha,
        &plan.new_state,
        &plan.writes,
        &plan.deletes,
    );
    let mut written = vec![layer_path];
    let mut touched = Vec::new();
    for (w, jw) in plan.writes.iter().zip(&journal.writes) {
        let p = if w.direct {
            let p = direct_target(medium, &w.path).ok_or_else(|| {
                refuse(format!(
                    "{}: {} appeared while the kit was being applied",
                    medium.root.display(),
                    w.path
                ))
            })?;
            touched.push(parent_of(&p));
            p
        } else {
            touched.push(staging.clone());
            staging.join(&jw.staged)
        };
        let sha = copy_in(fs, &p, &w.content, progress, &mut done)?;
        if sha != w.sha256 {
            return Err(refuse(format!(
                "{}: the kit changed while it was being applied",
                w.path
            )));
        }
        written.push(p);
    }
    sync_dirs(fs, &mut touched)?;
    progress.phase("verifying", total);
    verify_written(&written[0], &plan.layer.1)?;
    for (p, w) in written[1..].iter().zip(&plan.writes) {
        verify_written(p, &w.sha256)?;
    }

    // Step 3: the commit point.
    let jpath = medium.live_file(JOURNAL_FILE);
    write_file(fs, &jpath, &journal.encode()).map_err(|e| io_err(&jpath, e))?;
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;

    // Steps 4 to 7.
    let deleted = finish(medium, &journal, fs)?;
    Ok(ApplyReport {
        model: plan.model,
        from_version: plan.from_version.clone(),
        to_version: plan.to_version.clone(),
        layer: plan.layer_name.clone(),
        bytes_written: total
            + plan
                .writes
                .iter()
                .filter(|w| !w.direct)
                .map(|w| w.content.size)
                .sum::<u64>(),
        boot_files_written: plan.writes.len(),
        deleted,
        reinstall_bootloader: plan.reinstall_bootloader,
    })
}

/// Removes a file or a directory tree through `fs`; notes the parent directories touched.
fn remove_tree(
    fs: &mut dyn MediumFs,
    path: &Path,
    touched: &mut Vec<PathBuf>,
) -> Result<(), MediumError> {
    let md = std::fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
    if md.is_dir() {
        let mut children: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        children.sort();
        for c in children {
            remove_tree(fs, &c, touched)?;
        }
        fs.rmdir(path).map_err(|e| io_err(path, e))?;
    } else {
        fs.unlink(path).map_err(|e| io_err(path, e))?;
    }
    touched.push(parent_of(path));
    Ok(())
}

/// Makes sure the directory holding `rel` exists as a directory, clearing files in the way;
/// returns the full path of `rel` (the existing spelling of its components where they exist).
fn prepare_parent(
    medium: &Medium,
    rel: &str,
    fs: &mut dyn MediumFs,
    touched: &mut Vec<PathBuf>,
) -> Result<PathBuf, MediumError> {
    let comps: Vec<&str> = rel.split('/').collect();
    let mut cur = medium.root.clone();
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let existing = find_child(&cur, comp);
        let path = existing.clone().unwrap_or_else(|| cur.join(comp));
        let md = existing
            .as_ref()
            .and_then(|p| std::fs::symlink_metadata(p).ok());
        if last {
            if md.as_ref().is_some_and(|m| m.is_dir()) {
                remove_tree(fs, &path, touched)?;
            }
            return Ok(path);
        }
        match md {
            Some(m) if m.is_dir() => {}
            Some(_) => {
                fs.unlink(&path).map_err(|e| io_err(&path, e))?;
                fs.mkdir(&path).map_err(|e| io_err(&path, e))?;
                touched.push(cur.clone());
            }
            None => {
                fs.mkdir(&path).map_err(|e| io_err(&path, e))?;
                touched.push(cur.clone());
            }
        }
        cur = path;
    }
    Ok(cur)
}

fn sync_dirs(fs: &mut dyn MediumFs, dirs: &mut Vec<PathBuf>) -> Result<(), MediumError> {
    dirs.sort();
    dirs.dedup();
    for d in dirs.drain(..) {
        if d.is_dir() {
            fs.fsync_dir(&d).map_err(|e| io_err(&d, e))?;
        }
    }
    Ok(())
}

/// Steps 4 to 7 of a committed journal. Idempotent: each write and delete is decided by the
/// content sha256 the journal records, never by whether a name exists, so `recover` can run it
/// again from any point. Returns the number of entries deleted.
pub fn finish(medium: &Medium, j: &Journal, fs: &mut dyn MediumFs) -> Result<usize, MediumError> {
    let staging = medium.staging();
    let mut touched: Vec<PathBuf> = Vec::new();
    // Step 4: boot files in place from their staged copies.
    for w in &j.writes {
        let target = prepare_parent(medium, &w.path, fs, &mut touched)?;
        let exists = target.is_file();
        if exists && sha_of(&target)? == w.new {
            continue;
        }
        let staged = staging.join(&w.staged);
        if !staged.is_file() || sha_of(&staged)? != w.new {
            return Err(MediumError::Refused(format!(
                "{}: cannot complete the upgrade: the staged copy of {} is missing or damaged; run `iuk-apply adopt`",
                medium.root.display(),
                w.path
            )));
        }
        let mut src = File::open(&staged).map_err(|e| io_err(&staged, e))?;
        let h = if exists {
            fs.open_write(&target).map_err(|e| io_err(&target, e))?
        } else {
            touched.push(parent_of(&target));
            fs.create(&target).map_err(|e| io_err(&target, e))?
        };
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(|e| io_err(&staged, e))?;
            if n == 0 {
                break;
            }
            fs.write_at(h, off, &buf[..n])
                .map_err(|e| io_err(&target, e))?;
            off += n as u64;
        }
        fs.truncate(h, w.size).map_err(|e| io_err(&target, e))?;
        fs.fsync(h).map_err(|e| io_err(&target, e))?;
        fs.close(h).map_err(|e| io_err(&target, e))?;
    }
    sync_dirs(fs, &mut touched)?;

    // Step 5: module file, then state, in place.
    let module = medium.live().join(&j.module_file);
    let module = find_child(&medium.live(), &j.module_file).unwrap_or(module);
    if std::fs::read(&module).ok().as_deref() != Some(j.module_text.as_bytes()) {
        rewrite_file(fs, &module, j.module_text.as_bytes()).map_err(|e| io_err(&module, e))?;
    }
    let state = medium.live_file(super::STATE_FILE);
    if std::fs::read(&state).ok().as_deref() != Some(j.state_text.as_bytes()) {
        rewrite_file(fs, &state, j.state_text.as_bytes()).map_err(|e| io_err(&state, e))?;
    }

    // Step 6: deletions (never a file written in step 4), then the staged copies.
    let written: HashSet<String> = j
        .writes
        .iter()
        .map(|w| w.path.to_ascii_lowercase())
        .collect();
    // A keyring is deleted only when superseded: never the one the new state names (nor any
    // when the new state cannot be read).
    let new_keyring = State::from_yaml(&j.state_text)
        .ok()
        .and_then(|s| s.keyring)
        .map(|k| format!("live/{k}").to_ascii_lowercase());
    let superseded_keyring = |path: &str| {
        let p = path.to_ascii_lowercase();
        p.strip_prefix("live/").is_some_and(trust::is_keyring_name)
            && new_keyring.as_ref().is_some_and(|k| *k != p)
    };
    let mut deleted = 0;
    for d in &j.deletes {
        if written.contains(&d.path.to_ascii_lowercase())
            || (is_protected_keep(&d.path) && !superseded_keyring(&d.path))
        {
            continue;
        }
        let Some(p) = medium.find(&d.path) else {
            continue;
        };
        match d.old {
            Some(old) => {
                if p.is_file() && sha_of(&p)? == old {
                    fs.unlink(&p).map_err(|e| io_err(&p, e))?;
                    touched.push(parent_of(&p));
                    deleted += 1;
                }
            }
            None => {
                if p.is_dir()
                    && std::fs::read_dir(&p)
                        .map(|mut r| r.next().is_none())
                        .unwrap_or(false)
                {
                    fs.rmdir(&p).map_err(|e| io_err(&p, e))?;
                    touched.push(parent_of(&p));
                    deleted += 1;
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(&staging) {
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for p in names {
            if p.file_name().is_some_and(|n| n != INTENT_FILE) {
                fs.unlink(&p).map_err(|e| io_err(&p, e))?;
            }
        }
        let intent = staging.join(INTENT_FILE);
        if intent.exists() {
            fs.unlink(&intent).map_err(|e| io_err(&intent, e))?;
        }
        touched.push(staging.clone());
    }
    sync_dirs(fs, &mut touched)?;

    // Step 7: zero the journal, fsync it, unlink it, fsync live/.
    if medium.journal_pending() {
        discard_journal(medium, fs)?;
    }
    Ok(deleted)
}

/// Zeroes the journal, fsyncs it, unlinks it and fsyncs `live/`: a zeroed journal can never
/// come back valid, whatever a power cut keeps of the unlink.
pub fn discard_journal(medium: &Medium, fs: &mut dyn MediumFs) -> Result<(), MediumError> {
    let jpath = medium.live_file(JOURNAL_FILE);
    let len = std::fs::metadata(&jpath)
        .map_err(|e| io_err(&jpath, e))?
        .len();
    let h = fs.open_write(&jpath).map_err(|e| io_err(&jpath, e))?;
    fs.write_at(h, 0, &vec![0u8; len as usize])
        .map_err(|e| io_err(&jpath, e))?;
    fs.fsync(h).map_err(|e| io_err(&jpath, e))?;
    fs.close(h).map_err(|e| io_err(&jpath, e))?;
    fs.unlink(&jpath).map_err(|e| io_err(&jpath, e))?;
    let live = medium.live();
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))
}

/// Names a deletion must never touch: the base, module files, our own files.
fn is_protected_keep(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p == super::BASE
        || p.ends_with(".module")
        || p == format!("live/{}", super::STATE_FILE)
        || p == format!("live/{}", super::LOCK_FILE)
        || p == format!("live/{JOURNAL_FILE}")
        || p.starts_with(&format!("live/{STAGING_DIR}"))
        || (p.starts_with("live/iuk-keyring-") && p.ends_with(".asc"))
}
