//! Every check before a write (DESIGN.md, "Applying", step 1): [`plan`] verifies a kit against
//! a medium and computes what applying it would do — the trust and listing of a signed upgrade
//! description, the kit itself (`proposal`), the upgrade model, the boot
//! files to write, the entries to delete, the next state, the space — and writes nothing.
//! `check` prints the [`Plan`]; `apply` hands it to [`execute`](super::apply::execute).
//! The intent and journal an apply writes are computed here, from the plan alone.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::commit::CHUNK;
use super::journal::{Delete, Journal, Write, MAX_JOURNAL};
use super::proposal::{iuk_proposal, legacy_proposal, parse_hex, Proposal};
use super::rebuild::{self, KitLayer, LayerWrite};
use super::signed_udf::{self, Listed, SignedUdf, VerifiedUdf};
use super::stack::{check_images, verify_trees};
use super::state::{Layer, State};
use super::{io_err, refuse, safe_relative_path, Medium, MediumError, MAX_MEDIUM_FILE, STATE_FILE};
use crate::boot::{
    check_bootable, is_protected, loader_config_text, MAX_LOADER_CONFIG, MONITORED_DIRS,
};
use crate::delta::recipe::{
    boot_patch_path, per_kind, KindTotals, PatchedSource, SourceKind, MAX_PATCH_INPUT,
};
use crate::kit::{AnyKit, Kit, FORMAT, FORMAT_DELTA};
use crate::progress::Progress;
use crate::squashfs::archive::Archive;
use crate::squashfs::check;
use crate::tree::{hex, Content, ContentSource};
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
    /// Verify the stack the kit builds on as `verify --deep` does (hash every layer and boot
    /// file, read every image and check the base's and the stacked tree digests) before
    /// anything else is decided.
    pub deep: bool,
    /// The bytes of re-created boot files held from their check to their staging (None:
    /// [`HELD_BOOT_MAX`]); those beyond are re-created again when staged.
    pub held_boot_max: Option<u64>,
}

/// A boot file the apply writes.
#[derive(Clone, Debug)]
pub struct BootWrite {
    /// Installed path (as the kit names it).
    pub path: String,
    /// sha256 of the new content.
    pub sha256: [u8; 32],
    /// The new content: read from the kit, or (FORMAT 3) re-created from one of the medium's
    /// boot files when it is read, and checked then.
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
    /// The layer to write: copied from the kit, or rebuilt from its recipe (FORMAT 3).
    pub layer: LayerWrite,
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
    /// FORMAT 3: the layer's files and the bytes they make, per source kind (empty for a kit
    /// that carries the layer image).
    pub layer_sources: Vec<(SourceKind, KindTotals)>,
    /// FORMAT 3: boot files re-created from the medium's own, per source kind (copy, zstd,
    /// bsdiff; kinds without files left out).
    pub boot_sources: Vec<(SourceKind, KindTotals)>,
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
    Ok(Some(
        (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
    ))
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
    /// The written bytes; None when they add up to more than a u64 holds.
    fn bytes(&self) -> Option<u64> {
        self.0.iter().try_fold(0u64, |sum, (new, old)| {
            sum.checked_add(new.saturating_sub(*old))
        })
    }

    /// The written bytes in whole clusters: what many small files take on a medium with large
    /// clusters, beyond what the 1 MiB margin covers.
    /// None when they add up to more than a u64 holds.
    fn allocated(&self, cluster: u64) -> Option<u64> {
        let cluster = cluster.max(1);
        self.0
            .iter()
            .try_fold(0u64, |sum, (new, old)| {
                sum.checked_add(new.div_ceil(cluster).saturating_sub(old.div_ceil(cluster)))
            })?
            .checked_mul(cluster)
    }
}

/// What step 2 and the commit write: the layer, each staged copy, each boot file written
/// directly, the growth of boot files overwritten in place, and `others` (intent, journal,
/// state, module file).
fn space_written(layer_size: u64, writes: &[BootWrite], others: [(u64, u64); 4]) -> SpaceWritten {
    let mut files = vec![(layer_size, 0)];
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
pub fn intent_text(layer: &str, old_state: &[u8; 32], writes: &[BootWrite]) -> String {
    let mut t = format!("layer {layer}\nstate {}\n", hex(old_state));
    for w in writes.iter().filter(|w| w.direct) {
        t.push_str(&format!("direct {}\n", w.path));
    }
    t
}

/// The journal an apply commits: staged copies are named by their index in `writes`; boot files
/// written directly have no staged copy (an empty name).
pub fn plan_journal(
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
pub fn staged_name(i: usize) -> String {
    format!("{i:05}")
}

/// Where a new boot file can be written at its final name: its parent directory exists (found
/// case-insensitively) and nothing of that name is in it.
/// A link on the way is refused.
pub fn direct_target(medium: &Medium, rel: &str) -> Result<Option<PathBuf>, MediumError> {
    let (dir, name) = match rel.rsplit_once('/') {
        Some((d, n)) => match medium.find(d)? {
            Some(dir) => (dir, n),
            None => return Ok(None),
        },
        None => (medium.root.clone(), rel),
    };
    if !medium.is_dir(&dir)? || medium.find_child(&dir, name)?.is_some() {
        return Ok(None);
    }
    Ok(Some(dir.join(name)))
}

/// Verifies a kit against a medium and computes what applying it would do. Writes nothing.
///
/// The steps, in this order (the first refusal wins): trust, listing, the kit itself, the
/// model, the boot writes, the deletes, the next state, the space.
pub fn plan(
    medium: &Medium,
    kit_path: &Path,
    opts: &ApplyOptions,
    progress: &dyn Progress,
) -> Result<Plan, MediumError> {
    let kit_name = kit_path.display().to_string();
    let bad_kit = |what: String| refuse(format!("{kit_name}: {what}"));
    if medium.journal_pending()? || medium.staging_pending()? {
        return Err(MediumError::PendingRecovery(medium.root.clone()));
    }
    // live/ (layers, module files, state, keyrings, journal) and the staging directory hold no
    // link: the apply reads, writes and deletes there.
    medium.refuse_links_in(&medium.live())?;
    medium.refuse_links_in(&medium.staging())?;
    let (state, _, old_state_sha) = medium.read_state()?;
    let verified_udf = check_trust(medium, &state, opts, &kit_name)?;
    let listed = check_listing(
        kit_path,
        &state,
        opts,
        verified_udf.as_ref(),
        &bad_kit,
        progress,
    )?;
    let mut warnings = Vec::new();
    let c = read_kit(
        medium,
        &state,
        kit_path,
        opts,
        &bad_kit,
        &mut warnings,
        progress,
    )?;
    check_listed_versions(&c, verified_udf.as_ref(), &listed, &bad_kit)?;
    check_layer_image(&c, opts.deep, &bad_kit, progress)?;
    let model = check_model(medium, &state, &c, opts, &kit_name)?;
    let mut c = c;
    let boot_sources = per_kind(c.boot_sources.iter().map(|b| (b.kind, b.size, 0)))
        .into_iter()
        .filter(|(_, t, _)| t.files > 0)
        .map(|(k, t, _)| (k, t))
        .collect();
    let held_max = opts.held_boot_max.unwrap_or(HELD_BOOT_MAX);
    recreate_boot_files(medium, &state, &mut c, (&bad_kit, held_max), progress)?;
    kit_leaves_a_bootable_medium(medium, &c, &bad_kit)?;
    // The stack the layer goes on: every image opens with its tables (superblock, id, fragment,
    // export and xattr tables read and checked); with `deep`, its trees are read too (which
    // opens each image the same way) and their digests checked against the state.
    if opts.deep {
        verify_trees(medium, &state, progress)?;
    } else {
        check_images(medium, &state)?;
    }
    let layer_sources = match &c.layer_source {
        KitLayer::Image(..) => Vec::new(),
        KitLayer::Recipe(r) => r.recipe.totals(),
    };
    let layer = match &c.layer_source {
        KitLayer::Image(content, sha) => LayerWrite::Copy(content.clone(), *sha),
        KitLayer::Recipe(r) => LayerWrite::Rebuild(Box::new(rebuild::prepare(
            medium,
            &state,
            model == Model::Stacking,
            r,
            &bad_kit,
            progress,
        )?)),
    };
    let writes = boot_writes(medium, &state, &c, &bad_kit)?;
    let deletes = plan_deletes(medium, &state, &c, model, &writes)?;
    // Every path the commit will touch resolves without a link (a link is refused, naming it,
    // before anything is written).
    for rel in writes
        .iter()
        .map(|w| &w.path)
        .chain(deletes.iter().map(|d| &d.path))
    {
        medium.find(rel)?;
    }
    let new_state = next_state(&state, &c, &layer, model, opts);
    if state.keyring.is_none() {
        warnings.push(format!(
            "{}: no trusted keys on this medium: the kit's origin is not verified (give the \
             medium keys with `iuk-apply init --keyring` or `adopt --keyring`)",
            medium.root.display()
        ));
    }
    let space = check_space(
        medium,
        &state,
        old_state_sha,
        &c,
        layer.space(),
        &new_state,
        &writes,
        &deletes,
        &bad_kit,
        &mut warnings,
    )?;

    let reinstall_bootloader = writes
        .iter()
        .any(|w| w.path.eq_ignore_ascii_case("syslinux/ldlinux.c32"));
    Ok(Plan {
        module_file: state.module_file.clone(),
        legacy_tails_kit: c.old_tree_digest.is_none(),
        layer_rel: format!("live/{}.squashfs", c.layer),
        product: c.product,
        from_version: c.from_version,
        to_version: c.to_version,
        layer_name: c.layer,
        model,
        old_state_sha,
        new_state,
        layer,
        writes,
        deletes,
        payload: c.payload,
        written: space.written,
        allocated: space.allocated,
        needed: space.needed,
        free: space.free,
        warnings,
        reinstall_bootloader,
        layer_sources,
        boot_sources,
    })
}

/// A signed UDF that verified, with its file name for messages.
type VerifiedListing = (VerifiedUdf, String);

/// Trust: on a medium with keys, a signed UDF whose signature verifies with them and which is
/// addressed to the medium; on a medium without keys, none.
fn check_trust(
    medium: &Medium,
    state: &State,
    opts: &ApplyOptions,
    kit_name: &str,
) -> Result<Option<VerifiedListing>, MediumError> {
    match (&state.keyring, &opts.udf) {
        (Some(_), None) => Err(refuse(format!(
            "{}: this medium trusts signing keys: give the signed upgrade description file \
             listing {kit_name} (--udf FILE --signature FILE)",
            medium.root.display()
        ))),
        (None, Some(s)) => Err(refuse(format!(
            "{}: no trusted keys on this medium to verify {} with; give it keys with \
             `iuk-apply init --keyring` or `iuk-apply adopt --keyring`",
            medium.root.display(),
            s.udf_name
        ))),
        (None, None) => Ok(None),
        (Some(_), Some(s)) => {
            let v = signed_udf::verify_udf(medium, state, s)?;
            signed_udf::check_addressed(&v.udf, state, &s.udf_name)?;
            Ok(Some((v, s.udf_name.clone())))
        }
    }
}

/// Listing: the kit file has the sha256 asked for (`--sha256`), and the verified UDF lists its
/// size and sha256 as an incremental upgrade to a newer version. The kit is hashed only when
/// one of them asks.
fn check_listing(
    kit_path: &Path,
    state: &State,
    opts: &ApplyOptions,
    verified_udf: Option<&VerifiedListing>,
    bad_kit: &dyn Fn(String) -> MediumError,
    progress: &dyn Progress,
) -> Result<Vec<Listed>, MediumError> {
    let mut listed: Vec<Listed> = Vec::new();
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
        if let Some((v, udf_name)) = verified_udf {
            listed = signed_udf::listed_kits(&v.udf, state, size, &got);
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
    Ok(listed)
}

/// The kit: a FORMAT 2 kit read and verified as a kit of iuk, or (with `--legacy-tails-kit`)
/// of Tails' own tooling; its `delete_files` entries lie strictly inside a monitored boot
/// directory and name nothing protected.
fn read_kit(
    medium: &Medium,
    state: &State,
    kit_path: &Path,
    opts: &ApplyOptions,
    bad_kit: &dyn Fn(String) -> MediumError,
    warnings: &mut Vec<String>,
    progress: &dyn Progress,
) -> Result<Proposal, MediumError> {
    let kit_name = kit_path.display().to_string();
    let any = Kit::open_any(kit_path).map_err(|e| {
        let m = e.to_string();
        if m.starts_with(&kit_name) {
            refuse(m)
        } else {
            bad_kit(m)
        }
    })?;
    let (format, expected) = match &any {
        AnyKit::Iuk(k) => (&k.format, k.control.format()),
        AnyKit::Legacy(k) => (&k.format, FORMAT),
    };
    if format != FORMAT && format != FORMAT_DELTA {
        return Err(bad_kit(format!(
            "FORMAT {format:?} is not supported (this iuk-apply installs FORMAT 2 and 3 kits)"
        )));
    }
    if format != expected {
        return Err(bad_kit(format!(
            "FORMAT {format:?} does not match its control.yml (FORMAT 3 kits, and only they, \
             carry a recipe): a damaged kit"
        )));
    }
    let c = match &any {
        AnyKit::Iuk(kit) => iuk_proposal(kit, bad_kit, progress)?,
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
            legacy_proposal(medium, state, kit, bad_kit, progress)?
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
    Ok(c)
}

/// A file of the medium read through [`Medium::beneath`] (never through a link) each time it is
/// opened: the base of a boot file a FORMAT 3 kit re-creates.
struct MediumFile {
    medium: Medium,
    path: PathBuf,
}

impl ContentSource for MediumFile {
    fn open(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(self.medium.beneath().open(&self.path)?))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// The bytes of re-created boot files an apply holds from their check to their staging (an
/// initrd and a kernel take ~45 MB); boot files beyond it are re-created again when staged.
pub const HELD_BOOT_MAX: u64 = 128 << 20;

/// FORMAT 3, before any write: every boot file the kit re-creates from the medium's current boot
/// files gets its base — a boot file the state records with the kit's base sha256, found on the
/// medium (never through a link) with that sha256 — and is re-created once and checked against
/// its overlay entry (size, sha256); it then joins the proposal's overlay: the checked bytes
/// themselves while the re-created boot files held stay within `held_max` (an initrd's
/// repack is the apply's largest allocation and takes ~20 s: not done twice), else as content
/// re-created (and checked again) when the apply stages it; the staging checks what it writes
/// either way. A base the medium does not have is a refusal naming the medium and the file; a
/// patch that does not re-create the file names the kit.
fn recreate_boot_files(
    medium: &Medium,
    state: &State,
    c: &mut Proposal,
    (bad_kit, held_max): (&dyn Fn(String) -> MediumError, u64),
    progress: &dyn Progress,
) -> Result<(), MediumError> {
    let total: u64 = c.boot_sources.iter().map(|b| b.size).sum();
    progress.phase("checking boot files", total);
    let (mut done, mut held) = (0u64, 0u64);
    for b in std::mem::take(&mut c.boot_sources) {
        let other = |what: String| {
            refuse(format!(
                "{}: boot file {}: {what}: the kit was built against other boot files than this \
                 medium's (apply the FORMAT 2 kit of this upgrade); nothing was written",
                medium.root.display(),
                b.path
            ))
        };
        let want = hex(&b.base_sha256);
        match state
            .boot_files
            .iter()
            .find(|f| f.path.eq_ignore_ascii_case(&b.base))
        {
            Some(f) if f.sha256 == want => {}
            Some(f) => {
                return Err(other(format!(
                    "its base {} has sha256 {} in the state, the kit expects {want}",
                    b.base, f.sha256
                )))
            }
            None => {
                return Err(other(format!(
                    "its base {} is not a boot file of this medium",
                    b.base
                )))
            }
        }
        let path = match medium.find(&b.base)? {
            Some(p) if medium.is_file(&p)? => p,
            _ => return Err(other(format!("its base {} is not on the medium", b.base))),
        };
        let got = medium.sha_of(&path)?;
        if got != b.base_sha256 {
            return Err(other(format!(
                "the medium's {} has sha256 {}, the kit expects {want}",
                b.base,
                hex(&got)
            )));
        }
        let base = Content {
            size: medium.file_len(&path)?,
            source: Arc::new(MediumFile {
                medium: medium.clone(),
                path,
            }),
        };
        let content = match (&b.patch, b.kind) {
            (Some(patch), kind) if kind.is_patch() => {
                if base.size.saturating_add(b.size) > MAX_PATCH_INPUT {
                    return Err(bad_kit(format!(
                        "boot file {}: base {} and output of {} bytes exceed the \
                         {MAX_PATCH_INPUT} bytes a device re-creates in memory",
                        b.path,
                        b.base,
                        base.size.saturating_add(b.size)
                    )));
                }
                let source = PatchedSource {
                    path: format!("boot file {}", b.path),
                    kind,
                    patch: patch.clone(),
                    base,
                    size: b.size,
                    sha256: b.sha256,
                };
                let bytes = source.recreate().map_err(|e| {
                    bad_kit(format!(
                        "{}: {e}; nothing was written",
                        boot_patch_path(&b.path)
                    ))
                })?;
                let content = if held.saturating_add(b.size) <= held_max {
                    held += b.size;
                    Content::from_bytes(bytes)
                } else {
                    drop(bytes);
                    Content {
                        size: b.size,
                        source: Arc::new(source),
                    }
                };
                // What the re-creation freed goes back before the layer is rebuilt.
                crate::memory::release_free_heap();
                content
            }
            (None, SourceKind::Copy) if base.size == b.size => base,
            (None, SourceKind::Copy) => {
                return Err(other(format!(
                    "its base {} has {} bytes, the kit records {}",
                    b.base, base.size, b.size
                )))
            }
            (_, kind) => {
                return Err(bad_kit(format!(
                    "boot file {}: a {} source without its patch",
                    b.path,
                    kind.name()
                )))
            }
        };
        done = done.saturating_add(b.size);
        progress.position(done);
        c.overlay
            .insert(b.path.to_ascii_lowercase(), (content, b.sha256));
    }
    Ok(())
}

/// Refuses a kit whose boot tree would leave a medium that cannot boot ([`check_bootable`]:
/// empty, or without a kernel or initrd its boot-loader configuration names). Configurations
/// are read from the kit's overlay, else from the medium (a boot file the kit leaves as is).
fn kit_leaves_a_bootable_medium(
    medium: &Medium,
    c: &Proposal,
    bad_kit: &dyn Fn(String) -> MediumError,
) -> Result<(), MediumError> {
    let paths: Vec<&str> = c.boot_tree.iter().map(|e| e.path.as_str()).collect();
    check_bootable(&paths, |path| {
        if let Some((content, _)) = c.overlay.get(&path.to_ascii_lowercase()) {
            return loader_config_text(content);
        }
        let on_medium = medium
            .find(path)
            .map_err(|e| e.to_string())?
            .ok_or("neither in the kit nor on the medium")?;
        let bytes = medium
            .read_capped(&on_medium, MAX_LOADER_CONFIG)
            .map_err(|e| io_err(&on_medium, e).to_string())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
    .map_err(|e| bad_kit(format!("its boot tree: {e}")))
}

/// The kit's layer (FORMAT 3: its recipe image) is a valid SquashFS image: every table and metadata block checked
/// (`squashfs::check`, milliseconds); with `deep`, every data and fragment block decoded too.
/// A layer that would give the device a tree the kernel cannot read is refused before any
/// write, whatever control.yml's sha256 says.
fn check_layer_image(
    c: &Proposal,
    deep: bool,
    bad_kit: &dyn Fn(String) -> MediumError,
    progress: &dyn Progress,
) -> Result<(), MediumError> {
    let (name, content) = match &c.layer_source {
        KitLayer::Image(content, _) => (format!("overlay/live/{}.squashfs", c.layer), content),
        KitLayer::Recipe(r) => (crate::delta::recipe::RECIPE_IMAGE.to_string(), &r.image),
    };
    let image = content
        .source
        .random_access()
        .ok_or_else(|| bad_kit(format!("{name} cannot be opened in place")))?;
    let archive = Archive::from_image(image, name.clone()).map_err(|e| bad_kit(e.to_string()))?;
    if deep {
        progress.phase("checking layer", archive.superblock().bytes_used);
        check::check_deep(&archive, &|done, _| progress.position(done))
    } else {
        check::check(&archive)
    }
    .map_err(|e| bad_kit(e.to_string()))?;
    Ok(())
}

/// Listing, continued: the UDF lists the kit for the versions it upgrades between.
fn check_listed_versions(
    c: &Proposal,
    verified_udf: Option<&VerifiedListing>,
    listed: &[Listed],
    bad_kit: &dyn Fn(String) -> MediumError,
) -> Result<(), MediumError> {
    if let Some((_, udf_name)) = verified_udf {
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
    Ok(())
}

/// Model: the kit is for this medium's product and build target, upgrades to a newer version,
/// and stacks on its current tree (stacking) or replaces the layers on its base (cumulative);
/// the stack stays within its bound; the medium still matches its state; the layer name is free.
fn check_model(
    medium: &Medium,
    state: &State,
    c: &Proposal,
    opts: &ApplyOptions,
    kit_name: &str,
) -> Result<Model, MediumError> {
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
    if model == Model::Stacking && state.layers.len() as u64 + 1 > u64::from(max_layers) {
        return Err(refuse(format!(
            "{}: the medium already has {} diff layers (at most {max_layers}); apply a cumulative kit from {} or do a full upgrade",
            medium.root.display(),
            state.layers.len(),
            state.base_version
        )));
    }

    // The medium still matches its state; the layer name is free.
    medium.check_consistent(state, opts.deep)?;
    let layer_rel = format!("live/{}.squashfs", c.layer);
    if medium.find(&layer_rel)?.is_some()
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
    Ok(model)
}

/// Boot writes: every file of the new boot tree either is on the medium already (same sha256 in
/// the state) or in the kit, with the sha256 the boot tree records.
fn boot_writes(
    medium: &Medium,
    state: &State,
    c: &Proposal,
    bad_kit: &dyn Fn(String) -> MediumError,
) -> Result<Vec<BootWrite>, MediumError> {
    let mut writes = Vec::new();
    for e in &c.boot_tree {
        let want = parse_hex(&e.sha256, &e.path)?;
        if e.size > MAX_MEDIUM_FILE {
            return Err(bad_kit(format!(
                "boot file {} declares {} bytes, more than the {MAX_MEDIUM_FILE} bytes a FAT \
                 medium holds in one file",
                e.path, e.size
            )));
        }
        let current = state
            .boot_files
            .iter()
            .find(|f| f.path.eq_ignore_ascii_case(&e.path));
        let on_medium = match current {
            Some(f) if f.sha256 == e.sha256 => medium.find(&e.path)?,
            _ => None,
        };
        if let Some(p) = on_medium {
            // Kept as it is: the state will record the size the file has.
            let size = medium.file_len(&p)?;
            if size != e.size {
                return Err(bad_kit(format!(
                    "boot file {} declares {} bytes; the medium's copy, which the kit keeps, \
                     has {size}",
                    e.path, e.size
                )));
            }
            continue;
        }
        let (content, sha) = c.overlay.get(&e.path.to_ascii_lowercase()).ok_or_else(|| {
            let hint = match c.layer_source {
                KitLayer::Recipe(_) => {
                    " (a FORMAT 3 kit carries only the boot files its two releases differ in, \
                     and this medium's copy is another release's: apply the FORMAT 2 kit of \
                     this upgrade)"
                }
                KitLayer::Image(..) => "",
            };
            bad_kit(format!(
                "boot file {} changes but the kit does not carry it{hint}",
                e.path
            ))
        })?;
        if *sha != want || content.size != e.size {
            return Err(bad_kit(format!(
                "boot file {} differs from its overlay copy ({} bytes declared, {} carried, or \
                 another sha256)",
                e.path, e.size, content.size
            )));
        }
        let existing = medium.find(&e.path)?;
        let (old, old_size) = match &existing {
            Some(p) if medium.is_file(p)? => (Some(medium.sha_of(p)?), medium.file_len(p)?),
            _ => (None, 0),
        };
        let direct = existing.is_none() && direct_target(medium, &e.path)?.is_some();
        writes.push(BootWrite {
            path: e.path.clone(),
            sha256: want,
            content: content.clone(),
            old,
            old_size,
            direct,
        });
    }
    Ok(writes)
}

/// Deletes: the layers a cumulative kit supersedes, the boot files the new tree lacks (never
/// one the apply writes), and `delete_files` (never a file of the new boot tree); each path once.
fn plan_deletes(
    medium: &Medium,
    state: &State,
    c: &Proposal,
    model: Model,
    writes: &[BootWrite],
) -> Result<Vec<Delete>, MediumError> {
    let written: HashSet<String> = writes.iter().map(|w| w.path.to_ascii_lowercase()).collect();
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
        let Some(p) = medium.find(d)? else { continue };
        collect_deletes(medium, &p, &keep, &mut deletes)?;
    }
    let mut seen = HashSet::new();
    deletes.retain(|d| seen.insert(d.path.to_ascii_lowercase()));
    Ok(deletes)
}

/// Next state: the layer stacked (or replacing every diff layer), the new version, tree digest
/// and boot tree, the writer format and bound given.
/// A rebuilt layer (FORMAT 3) gets the builder's layer size and sha256 here; [`Plan::layer_written`]
/// puts in the device's own once the layer is written and checked.
fn next_state(
    state: &State,
    c: &Proposal,
    layer: &LayerWrite,
    model: Model,
    opts: &ApplyOptions,
) -> State {
    let mut new_state = state.clone();
    let (size, sha256) = match (layer, &c.layer_source) {
        (LayerWrite::Copy(content, sha), _) => (content.size, hex(sha)),
        (LayerWrite::Rebuild(r), KitLayer::Recipe(k)) => (r.size, k.recipe.layer_sha256.clone()),
        (LayerWrite::Rebuild(r), KitLayer::Image(_, sha)) => (r.size, hex(sha)),
    };
    let new_layer = Layer {
        name: c.layer.clone(),
        size,
        sha256,
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
    new_state
}

/// What the space check found (see [`Plan`]'s fields of the same names).
struct Space {
    written: u64,
    allocated: u64,
    needed: u64,
    free: Option<u64>,
}

/// Space: everything the apply writes before anything is freed fits in the medium's free space
/// (a warning where the filesystem does not report it); the journal it commits is one
/// `recover` accepts.
#[allow(clippy::too_many_arguments)]
fn check_space(
    medium: &Medium,
    state: &State,
    old_state_sha: [u8; 32],
    c: &Proposal,
    layer_size: u64,
    new_state: &State,
    writes: &[BootWrite],
    deletes: &[Delete],
    bad_kit: &dyn Fn(String) -> MediumError,
    warnings: &mut Vec<String>,
) -> Result<Space, MediumError> {
    let old_state_len = medium.file_len(&medium.live_file(STATE_FILE))?;
    let old_module_len = match medium.find(&format!("live/{}", state.module_file))? {
        Some(p) => medium.file_len(&p)?,
        None => 0,
    };
    let journal_len = plan_journal(old_state_sha, new_state, writes, deletes)
        .encode()
        .len();
    if journal_len > MAX_JOURNAL {
        return Err(bad_kit(format!(
            "its journal would be {journal_len} bytes, more than the {MAX_JOURNAL} bytes \
             `recover` accepts (too many boot files to write or entries to delete); do a full \
             upgrade instead"
        )));
    }
    let written_files = space_written(
        layer_size,
        writes,
        [
            (
                intent_text(&c.layer, &old_state_sha, writes).len() as u64,
                0,
            ),
            (journal_len as u64, 0),
            (new_state.to_yaml().len() as u64, old_state_len),
            (new_state.module_text().len() as u64, old_module_len),
        ],
    );
    let free = free_space(&medium.root)?;
    let cluster = cluster_size(&medium.root);
    let too_large = || {
        bad_kit(
            "the sizes of the files to write add up to more than 2^64 bytes (damaged kit)".into(),
        )
    };
    let written = written_files.bytes().ok_or_else(too_large)?;
    let allocated = written_files.allocated(cluster).ok_or_else(too_large)?;
    let needed = written
        .checked_add(SPACE_MARGIN)
        .zip(allocated.checked_add(CLUSTER_MARGIN))
        .map(|(a, b)| a.max(b))
        .ok_or_else(too_large)?;
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
    Ok(Space {
        written,
        allocated,
        needed,
        free,
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
    if medium.is_dir(path)? {
        for (name, _) in medium.read_dir(path)? {
            collect_deletes(medium, &path.join(name), written, deletes)?;
        }
        deletes.push(Delete {
            path: rel,
            old: None,
        });
    } else {
        deletes.push(Delete {
            path: rel,
            old: Some(medium.sha_of(path)?),
        });
    }
    Ok(())
}
