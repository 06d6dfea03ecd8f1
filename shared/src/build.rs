//! The kit builder: two releases in, one FORMAT 2 kit out (DESIGN.md, "The kit").
//!
//! 1. Open both releases (ISO or extracted directory) and read both root filesystems straight
//!    from their `live/filesystem.squashfs` (no mounting).
//! 2. Product and versions from the flags, else from `/etc/os-release` inside the images
//!    (from-version from the old root, product and to-version from the new); the to-version must
//!    be newer in Debian order.
//! 3. Hash every file of both roots (in parallel), compute both tree digests, diff the roots
//!    into an overlay upper layer and write it with the declared layer parameters.
//! 4. Check the layer: read it back, stack it on the old root in userspace, and require the
//!    digest of the result to equal the new root's (invariant 1, before anything is published).
//! 5. Boot trees of both releases; the overlay holds the layer, every boot file that is new or
//!    changed, and `EFI/`, `syslinux/`, `utils/` whole; `delete_files` with Tails' rules.
//! 6. Write the container under a temporary name and rename it into place.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::boot::{self, BootError, BootFile, WHOLE_DIRS};
use crate::delta::boot::{choose_boot, BootChoice, BootInput, BootTrials};
use crate::delta::choose::{choose, ChoiceStats, LayerCompression};
use crate::delta::recipe::{boot_patch_path, per_kind, recipe_tree, Recipe, RECIPE_VERSION};
use crate::delta::DeltaError;
use crate::diff::{self, DiffError, DiffStats, HashedTree};
use crate::kit::{self, Control, FileEntry, KitError, LayerParams, OverlayFile, GENERATOR};
use crate::output::{write_new_file, OutputError};
use crate::progress::Progress;
use crate::release::{self, hex_opt, Release, ReleaseError};
use crate::squashfs::archive::Archive;
use crate::squashfs::blocks::BlockCache;
use crate::squashfs::write::{
    write_image, write_image_hashed, DataOrder, WriteReport, WriterParams, WRITER_FORMAT_VERSION,
};
use crate::squashfs::SqfsError;
use crate::tree::{hex, Content, Tree, TreeError};
use crate::version;

/// Errors of a build; every message names the input or output concerned.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A release could not be read.
    #[error("{0}")]
    Release(#[from] ReleaseError),
    /// A boot tree could not be computed.
    #[error("{0}")]
    Boot(#[from] BootError),
    /// A root filesystem's content could not be read.
    #[error("{0}")]
    Tree(#[from] TreeError),
    /// Writing or re-reading the layer or the kit failed.
    #[error("{0}")]
    Image(#[from] SqfsError),
    /// The kit could not be assembled.
    #[error("{0}")]
    Kit(#[from] KitError),
    /// The diff could not be built.
    #[error("{0}")]
    Diff(#[from] DiffError),
    /// The output could not be written.
    #[error("{0}")]
    Output(#[from] OutputError),
    /// A FORMAT 3 recipe could not be made.
    #[error("{0}")]
    Delta(#[from] DeltaError),
    /// The request is refused before any output is written.
    #[error("{0}")]
    Refused(String),
}

/// What a build needs besides the two releases.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Product name (default: the new root's os-release).
    pub product: Option<String>,
    /// From-version (default: the old root's os-release).
    pub from_version: Option<String>,
    /// To-version (default: the new root's os-release).
    pub to_version: Option<String>,
    /// Build target recorded in the kit.
    pub build_target: String,
    /// Layer name (default: `<product>_<from>_to_<to>`).
    pub layer_name: Option<String>,
    /// Writer parameters of the diff layer; `mod_time` is the declared epoch.
    pub layer: WriterParams,
    /// The sort file's text, recorded in control.yml.
    pub sort_text: Option<String>,
    /// Write a FORMAT 3 kit (the layer as a recipe of per-file sources) when it is smaller
    /// than the FORMAT 2 kit; FORMAT 2 otherwise.
    pub deltas: bool,
}

/// What a build produced, for the summary line and `--json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildReport {
    /// The kit written.
    pub output: String,
    /// sha256 of the kit.
    pub kit_sha256: String,
    /// Product name.
    pub product: String,
    /// From-version.
    pub from_version: String,
    /// To-version.
    pub to_version: String,
    /// Layer name.
    pub layer: String,
    /// Entries added/changed/metadata-only/removed and content bytes carried.
    pub diff: DiffStats,
    /// Size of the diff layer image.
    pub layer_bytes: u64,
    /// Data blocks of the layer copied verbatim from the new image (block sources).
    pub layer_copied_blocks: u64,
    /// Data blocks of the layer compressed by the build.
    pub layer_compressed_blocks: u64,
    /// Fragment blocks of the layer.
    pub layer_fragment_blocks: u64,
    /// Fragment blocks of the layer copied verbatim from the new image (fragment sources).
    pub layer_copied_fragments: u64,
    /// The kit's FORMAT: `2` (whole files) or `3` (a recipe of per-file sources).
    pub format: String,
    /// FORMAT 3: files, bytes re-created and bytes carried, per source kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceReport>,
    /// FORMAT 3: size of the recipe image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe_bytes: Option<u64>,
    /// FORMAT 3: the layer files tried that may hold compressed streams (repack candidates),
    /// what they cost whole and what the kit carries for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed_files: Option<ChoiceStats>,
    /// Size of the kit.
    pub kit_bytes: u64,
    /// Size of the new release (the ISO file, or the root filesystem image for a directory).
    pub new_image_bytes: u64,
    /// kit_bytes / new_image_bytes.
    pub ratio: f64,
    /// Files under overlay/.
    pub overlay_files: usize,
    /// Entries of delete_files.
    pub delete_files: usize,
    /// Digest of the old root.
    pub old_tree_digest: String,
    /// Digest of the new root.
    pub new_tree_digest: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Files and bytes of one source kind of a FORMAT 3 kit.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceReport {
    /// `copy`, `zstd`, `bsdiff` or `whole`.
    pub kind: String,
    /// Files of this kind.
    pub files: u64,
    /// Bytes they re-create.
    pub bytes: u64,
    /// Bytes the recipe image holds for them before its own compression (patches, whole
    /// contents; 0 for copies).
    pub payload_bytes: u64,
}

fn refuse(msg: impl Into<String>) -> BuildError {
    BuildError::Refused(msg.into())
}

/// Picks a value from a flag or os-release; warns when both exist and disagree.
fn pick(
    what: &str,
    flag: Option<&str>,
    found: Option<&str>,
    flag_name: &str,
    image: &Path,
    progress: &dyn Progress,
) -> Result<String, BuildError> {
    let v = match (flag, found) {
        (Some(f), _) => f,
        (None, Some(o)) => o,
        (None, None) => {
            return Err(refuse(format!(
                "{}: no {what} in /etc/os-release; pass {flag_name}",
                image.display()
            )))
        }
    };
    if !version::is_safe_name(v) {
        let origin = if flag.is_some() {
            flag_name.to_string()
        } else {
            format!("{}:/etc/os-release", image.display())
        };
        return Err(refuse(format!(
            "{what} {v:?} from {origin} may only hold letters, digits and . _ + ~ - (it becomes a file name on FAT)"
        )));
    }
    if let (Some(f), Some(o)) = (flag, found) {
        if f != o {
            progress.warn(&format!(
                "{flag_name} {f} differs from {o} in {}:/etc/os-release; using {f}",
                image.display()
            ));
        }
    }
    Ok(v.to_string())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), out_canonical(b)) {
        (Ok(x), Some(y)) => x == y,
        _ => false,
    }
}

fn out_canonical(out: &Path) -> Option<PathBuf> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(out.file_name()?))
}

/// Builds the kit upgrading `old` to `new` into `out` (default: [`default_kit_name`] in the
/// current directory). Nothing is left at the output path on failure. The same as
/// [`build_batch`] with one old release.
pub fn build(
    old_path: &Path,
    new_path: &Path,
    out: Option<&Path>,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    let old = OldRelease {
        path: old_path.to_path_buf(),
        from_version: opts.from_version.clone(),
        out: out.map(Path::to_path_buf),
    };
    let mut reports = build_batch(std::slice::from_ref(&old), new_path, None, opts, progress)?;
    reports.pop().ok_or_else(|| refuse("no kit was built"))
}

/// One old release of a batch: the kit upgrading it to the new release is written to `out`, else
/// under [`default_kit_name`] in the batch's output directory.
#[derive(Clone, Debug)]
pub struct OldRelease {
    /// An ISO image or a directory holding an extracted one.
    pub path: PathBuf,
    /// Its version (default: its root's os-release); replaces `BuildOptions::from_version`.
    pub from_version: Option<String>,
    /// The kit's path.
    pub out: Option<PathBuf>,
}

/// Builds one kit per old release, all to the same new release, which is read, hashed and
/// boot-scanned once (a release pipeline builds a kit from every supported earlier version).
/// Every kit is byte-identical to the one [`build`] makes for its pair: each is a pure function
/// of (its old release, the new release, the parameters). Names and outputs of every kit are
/// checked before the first one is built; kits go to `out`, else `out_dir` (default: the
/// current directory) under [`default_kit_name`].
///
/// The pipeline's steps: [`names`] for every kit (product, versions, layer and output names),
/// hashing the new root and scanning its boot tree once, then per kit: hashing the old root,
/// the diff, [`write_layer`], [`verify_layer`], [`overlay_files`], [`write_kit`].
///
/// Determinism (audited; invariant 2). What reaches the bytes: the two releases' content (root
/// filesystems, boot files and the mtimes the release records for them — for a directory input,
/// the host files' mtimes, so a rebuild from directories needs an extraction that keeps them, as
/// `osirrox -extract` does), the sha256 of the ISO files, and `opts` except `layer.jobs`. What
/// never does: the input and output paths (only sha256s are recorded), the clock (`Instant` only
/// times the report), the process id (only in temporary file names), thread count and
/// scheduling (hashes are collected by index, boot files sorted, blocks emitted in order),
/// readdir order (directory inputs are sorted), the user, host name, locale and time zone (ISO
/// timestamps use the offset the ISO records), the umask (kit entries get fixed modes), and the
/// other kits of a batch.
pub fn build_batch(
    olds: &[OldRelease],
    new_path: &Path,
    out_dir: Option<&Path>,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Vec<BuildReport>, BuildError> {
    let start = Instant::now();
    if olds.is_empty() {
        return Err(refuse("no old release given: pass --old at least once"));
    }
    let mut inputs: Vec<&Path> = olds.iter().map(|o| o.path.as_path()).collect();
    inputs.push(new_path);
    for out in olds.iter().filter_map(|o| o.out.as_deref()) {
        check_output(out, &inputs)?;
    }

    progress.phase("reading", 0);
    let new = Release::open(new_path)?;
    let new_fs = new.rootfs()?;
    let new_tree = read_root(&new, &new_fs)?;
    let mut kits = Vec::with_capacity(olds.len());
    for o in olds {
        let old = Release::open(&o.path)?;
        let old_tree = read_root(&old, &old.rootfs()?)?;
        let out = KitOutput {
            path: o.out.as_deref(),
            dir: out_dir,
            inputs: &inputs,
        };
        let names = names(&old, &new, &old_tree, &new_tree, o, out, opts, progress)?;
        kits.push((old, old_tree, names));
    }
    for (i, (_, _, a)) in kits.iter().enumerate() {
        if let Some((_, _, b)) = kits[..i]
            .iter()
            .find(|(_, _, b)| same_output(&a.out, &b.out))
        {
            return Err(refuse(format!(
                "{}: two kits ({} and {}) would be written to the same file",
                a.out.display(),
                b.from,
                a.from
            )));
        }
    }

    let new_side = NewSide::read(new, &new_fs, new_tree, kits.len(), progress)?;
    let mut reports = Vec::with_capacity(kits.len());
    let count = kits.len();
    // The kits of a batch share most fragment blocks and boot files: each is compressed once.
    let mut batch_opts;
    let opts = if count > 1 {
        batch_opts = opts.clone();
        batch_opts.layer.cache = Some(Arc::new(BlockCache::new(BlockCache::DEFAULT_CAP)));
        &batch_opts
    } else {
        opts
    };
    // Old roots hashed so far: a later old release's files stored as in an earlier one are
    // not decoded again.
    let mut earlier: Vec<HashedTree> = Vec::new();
    for (k, (old, old_tree, names)) in kits.into_iter().enumerate() {
        progress.items(k as u64, count as u64);
        let steps = KitSteps {
            label: if count > 1 {
                format!("kit {}/{count}: ", k + 1)
            } else {
                String::new()
            },
            opts,
            progress,
        };
        let (mut report, old_root) = steps.build(&old, old_tree, &new_side, &names, &earlier)?;
        report.seconds = start.elapsed().as_secs_f64();
        reports.push(report);
        if k + 1 < count {
            earlier.push(old_root);
        }
    }
    progress.items(count as u64, count as u64);
    Ok(reports)
}

/// The build options of the library's tests: Tails' layer settings (xz, BCJ x86, 1 MiB blocks
/// and dictionary), one thread, epoch 1,700,000,000, everything else from the releases.
#[cfg(test)]
pub(crate) fn fixture_options() -> BuildOptions {
    let mut layer = WriterParams::new(
        crate::squashfs::compress::Compressor::Xz {
            level: 6,
            dict_size: 1 << 20,
            bcj_x86: true,
        },
        1 << 20,
        1_700_000_000,
    );
    layer.jobs = 1;
    BuildOptions {
        product: None,
        from_version: None,
        to_version: None,
        build_target: "amd64".into(),
        layer_name: None,
        layer,
        sort_text: None,
        deltas: false,
    }
}

/// Reads a release's root filesystem tree.
fn read_root(release: &Release, fs: &Arc<Archive>) -> Result<Tree, BuildError> {
    fs.read_tree().map_err(|e| {
        BuildError::Release(ReleaseError::Rootfs {
            path: release.path().to_path_buf(),
            source: e,
        })
    })
}

/// True when two output paths name the same file (compared through their directories).
fn same_output(a: &Path, b: &Path) -> bool {
    a == b || matches!((out_canonical(a), out_canonical(b)), (Some(x), Some(y)) if x == y)
}

/// The new release as every kit of a batch needs it, read and hashed once.
struct NewSide {
    /// The release.
    release: Release,
    /// Its root with every file's sha256.
    root: HashedTree,
    /// The root's tree digest.
    digest: [u8; 32],
    /// Its boot tree (checked bootable).
    boot: boot::BootTree,
    /// sha256 of the ISO file (`None` for a directory), in hex.
    iso_sha256: Option<String>,
    /// Size of the new release (the ISO file, or the root filesystem image for a directory).
    image_bytes: u64,
    /// FORMAT 3: the boot files' patch trials, kept for the other kits of a batch.
    boot_trials: BootTrials,
}

impl NewSide {
    /// Hashes the new root and its boot tree; refuses a boot tree that cannot boot.
    fn read(
        release: Release,
        fs: &Archive,
        tree: Tree,
        kits: usize,
        progress: &dyn Progress,
    ) -> Result<NewSide, BuildError> {
        let label = if kits > 1 { "hashing new" } else { "hashing" };
        progress.phase(label, tree.content_bytes());
        let root = HashedTree::new(tree, &|n| progress.position(n))?;
        let digest = root.digest();
        progress.phase("boot files", 0);
        let boot = boot::boot_tree(&release)?;
        boot.check_bootable(&release.path().display().to_string())?;
        for s in &boot.skipped_symlinks {
            progress.warn(&format!(
                "{}: symlink {s} left out of the boot tree (FAT has no symlinks)",
                release.path().display()
            ));
        }
        let iso_sha256 = hex_opt(release.iso_sha256()?);
        let image_bytes = if release.is_iso() {
            std::fs::metadata(release.path())
                .map(|m| m.len())
                .unwrap_or(0)
        } else {
            fs.superblock().bytes_used
        };
        Ok(NewSide {
            release,
            root,
            digest,
            boot,
            iso_sha256,
            image_bytes,
            boot_trials: BootTrials::default(),
        })
    }
}

/// The per-kit steps of a batch, with the progress label of the kit (`kit 2/3: `).
struct KitSteps<'a> {
    label: String,
    opts: &'a BuildOptions,
    progress: &'a dyn Progress,
}

impl KitSteps<'_> {
    /// Starts a progress phase of this kit.
    fn phase(&self, name: &str, total: u64) {
        self.progress.phase(&format!("{}{name}", self.label), total);
    }

    /// Builds the kit upgrading `old` to the new release (steps 2–6); returns its report and
    /// the hashed old root. `earlier` are the old roots of the batch hashed before this one.
    fn build(
        &self,
        old: &Release,
        old_tree: Tree,
        new: &NewSide,
        names: &Names,
        earlier: &[HashedTree],
    ) -> Result<(BuildReport, HashedTree), BuildError> {
        let (opts, progress) = (self.opts, self.progress);
        let epoch = opts.layer.mod_time;
        let out = names.out.as_path();
        self.phase("hashing old", old_tree.content_bytes());
        // Files stored exactly as in the new image (or an earlier old image of the batch) are
        // not decoded again.
        let known: Vec<&HashedTree> = std::iter::once(&new.root).chain(earlier).collect();
        let old_root = HashedTree::new_reusing_any(old_tree, &known, &|n| progress.position(n))?;
        let old_digest = old_root.digest();

        self.phase("diffing", 0);
        let (layer, stats) = diff::diff_hashed(old_root.hashed(), new.root.hashed(), epoch)?;

        // The layer goes to a temporary file beside the output, removed whatever happens.
        let layer_tmp = TempFile(layer_temp_path(out));
        self.phase("compressing", stats.content_bytes);
        let written = write_layer(
            (&layer.tree, Some(&layer.hashes)),
            &opts.layer,
            &layer_tmp.0,
            progress,
        )?;
        self.phase("verifying", stats.content_bytes);
        let inputs = [old.path(), new.release.path()];
        let layer_read = verify_layer(
            &old_root,
            &new.root,
            &layer_tmp.0,
            &new.digest,
            inputs,
            progress,
        )?;

        self.phase("boot files", 0);
        let old_boot = boot::boot_tree(old)?;
        let Overlay {
            mut files,
            layer_bytes,
            layer_sha256,
        } = overlay_files(&old_boot, &new.boot, &layer_tmp.0, &names.layer_path)?;
        let delete_files = boot::delete_files(old, &new.release);
        let mut control = Control {
            delete_files: delete_files.clone(),
            generator: GENERATOR.to_string(),
            writer_format: WRITER_FORMAT_VERSION,
            product: names.product.clone(),
            build_target: opts.build_target.clone(),
            from_version: names.from.clone(),
            to_version: names.to.clone(),
            layer: names.layer.clone(),
            layer_params: LayerParams::from_writer(&opts.layer, opts.sort_text.clone()),
            old_iso_sha256: hex_opt(old.iso_sha256()?),
            new_iso_sha256: new.iso_sha256.clone(),
            old_tree_digest: hex(&old_digest),
            new_tree_digest: hex(&new.digest),
            overlay: files.iter().map(|(_, e)| e.clone()).collect(),
            boot_tree: new.boot.files.iter().map(BootFile::entry).collect(),
            recipe: None,
        };

        let recipe_tmp = TempFile(recipe_temp_path(out));
        let mut sources = Vec::new();
        let mut compressed_files = None;
        let mut recipe_image = None;
        let mut boot_patches: Vec<(String, Content)> = Vec::new();
        if opts.deltas {
            let made = self.recipe(
                &old_root,
                &layer_read,
                (layer_bytes, layer_sha256.clone()),
                &recipe_tmp.0,
            )?;
            // Only iuk applies FORMAT 3 kits, and it keeps every boot file whose content does
            // not change: unchanged files of EFI/, syslinux/ and utils/, which FORMAT 2 carries
            // whole for Tails' installer, are left out; the others are re-created from the
            // medium's boot files where that is smaller (copy, patch).
            let mut boot_files = files.clone();
            boot_files.retain(|(f, e)| {
                f.path != names.layer_path
                    && old_boot
                        .get(&f.path)
                        .is_none_or(|o| hex(&o.sha256) != e.sha256)
            });
            self.phase("choosing boot sources", 0);
            let boot = choose_boot_files(&old_boot, (&new.boot, &new.boot_trials), &boot_files)?;
            let boot_saved: u64 = boot.iter().map(|c| c.saved).sum();
            let mut recipe = made.recipe.clone();
            recipe.boot_files = boot.iter().map(|c| c.record.clone()).collect();
            // FORMAT 3 only when smaller: the recipe image and its control.yml records against
            // the layer and what the boot patches save (every other part of the two kits is
            // the same; the boot files FORMAT 3 leaves out are not counted).
            let mut with = control.clone();
            with.recipe = Some(recipe);
            let with_len = with.to_yaml().len() as u64;
            let grows = with_len - control.to_yaml().len() as u64;
            // Recipe paths are UTF-8 (lossy): a base whose name is not UTF-8 cannot be found on
            // the device, two such names may collide. Such a kit would be refused: FORMAT 2.
            let lossy = made.recipe.validate().is_err()
                || made.recipe.files.iter().any(|f| {
                    f.base
                        .as_deref()
                        .is_some_and(|b| b.contains(char::REPLACEMENT_CHARACTER))
                });
            if with_len > kit::MAX_CONTROL {
                progress.warn(&format!(
                    "{}: the recipe of {} files makes control.yml {with_len} bytes, more than \
                     the {} bytes a device reads: writing FORMAT 2",
                    out.display(),
                    made.recipe.files.len(),
                    kit::MAX_CONTROL
                ));
            } else if lossy {
                progress.warn(&format!(
                    "{}: a FORMAT 3 recipe cannot name files whose names are not UTF-8 (a base \
                     file, or two files that differ only there): writing FORMAT 2",
                    out.display()
                ));
            } else if made.recipe.image_size + grows < layer_bytes + boot_saved {
                with.overlay = boot_files.iter().map(|(_, e)| e.clone()).collect();
                // Re-created boot files are listed in overlay (what ends on the medium) but
                // not carried under overlay/; a patch is carried under boot-patches/.
                files = boot_files
                    .into_iter()
                    .filter(|(f, _)| !boot.iter().any(|c| c.record.path == f.path))
                    .collect();
                for c in boot {
                    if let Some(p) = c.patch {
                        boot_patches
                            .push((boot_patch_path(&c.record.path), Content::from_bytes(p)));
                    }
                }
                control = with;
                sources = made.sources;
                compressed_files = Some(made.stats);
                recipe_image = Some(made.image);
            } else {
                progress.warn(&format!(
                    "{}: a FORMAT 3 kit would not be smaller (recipe {} bytes + {grows} bytes of \
                     control.yml, layer {layer_bytes} bytes, boot patches save {boot_saved} \
                     bytes): writing FORMAT 2",
                    out.display(),
                    made.recipe.image_size
                ));
            }
        }
        let recipe_bytes = recipe_image.as_ref().map(|c: &Content| c.size);
        let files: Vec<OverlayFile> = files.into_iter().map(|(f, _)| f).collect();
        let kit_total: u64 = files.iter().map(|f| f.content.size).sum::<u64>()
            + recipe_bytes.unwrap_or(0)
            + boot_patches.iter().map(|(_, c)| c.size).sum::<u64>();
        self.phase("writing kit", kit_total);
        let kit_sha = write_kit(
            out,
            &control,
            &files,
            recipe_image,
            &boot_patches,
            (opts.layer.jobs, opts.layer.cache.clone()),
            progress,
        )?;

        let kit_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        let report = BuildReport {
            output: out.display().to_string(),
            kit_sha256: hex(&kit_sha),
            product: names.product.clone(),
            from_version: names.from.clone(),
            to_version: names.to.clone(),
            layer: names.layer.clone(),
            diff: stats,
            layer_bytes,
            layer_copied_blocks: written.copied_blocks,
            layer_compressed_blocks: written.compressed_blocks,
            layer_fragment_blocks: written.fragment_blocks,
            layer_copied_fragments: written.copied_fragment_blocks,
            format: control.format().to_string(),
            sources,
            recipe_bytes,
            compressed_files,
            kit_bytes,
            new_image_bytes: new.image_bytes,
            ratio: if new.image_bytes > 0 {
                kit_bytes as f64 / new.image_bytes as f64
            } else {
                0.0
            },
            overlay_files: files.len(),
            delete_files: delete_files.len(),
            old_tree_digest: hex(&old_digest),
            new_tree_digest: hex(&new.digest),
            seconds: 0.0,
        };
        Ok((report, old_root))
    }
}

/// Refuses an output path that is one of the inputs or whose directory does not exist.
fn check_output(out: &Path, inputs: &[&Path]) -> Result<(), BuildError> {
    for input in inputs {
        if same_file(input, out) {
            return Err(refuse(format!(
                "{}: output would overwrite an input",
                out.display()
            )));
        }
    }
    if out_canonical(out).is_none() {
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        return Err(BuildError::Output(OutputError::NoDirectory(dir)));
    }
    Ok(())
}

/// The names a kit carries and is written under, decided before anything is hashed.
struct Names {
    /// Product name.
    product: String,
    /// From-version.
    from: String,
    /// To-version.
    to: String,
    /// Layer name.
    layer: String,
    /// `live/<layer>.squashfs`.
    layer_path: String,
    /// The kit's output path.
    out: PathBuf,
}

/// Where a kit goes: its own path, else its default name in `dir` (default: the current
/// directory); never over one of `inputs`.
#[derive(Clone, Copy)]
struct KitOutput<'a> {
    path: Option<&'a Path>,
    dir: Option<&'a Path>,
    inputs: &'a [&'a Path],
}

/// Step 1: product and versions from the flags, else from each root's `/etc/os-release`; the
/// to-version newer in Debian order; safe build target and layer name; the output path checked.
#[allow(clippy::too_many_arguments)]
fn names(
    old: &Release,
    new: &Release,
    old_tree: &Tree,
    new_tree: &Tree,
    old_input: &OldRelease,
    output: KitOutput<'_>,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Names, BuildError> {
    let (old_path, new_path) = (old.path(), new.path());
    let old_os = release::os_release(old_tree).unwrap_or_default();
    let new_os = release::os_release(new_tree).unwrap_or_default();
    let product = pick(
        "product",
        opts.product.as_deref(),
        new_os.product.as_deref(),
        "--product",
        new_path,
        progress,
    )?;
    let from = pick(
        "version",
        old_input.from_version.as_deref(),
        old_os.version.as_deref(),
        "--from-version",
        old_path,
        progress,
    )?;
    let to = pick(
        "version",
        opts.to_version.as_deref(),
        new_os.version.as_deref(),
        "--to-version",
        new_path,
        progress,
    )?;
    match version::compare(&to, &from) {
        std::cmp::Ordering::Greater => {}
        std::cmp::Ordering::Equal => {
            return Err(refuse(format!(
                "old and new are both version {from}: nothing to upgrade"
            )))
        }
        std::cmp::Ordering::Less => {
            return Err(refuse(format!(
                "to-version {to} is older than from-version {from} (Debian version order)"
            )))
        }
    }
    if !version::is_safe_name(&opts.build_target) {
        return Err(refuse(format!(
            "build target {:?} may only hold letters, digits and . _ + ~ -",
            opts.build_target
        )));
    }
    let out: PathBuf = match (output.path, output.dir) {
        (Some(o), _) => o.to_path_buf(),
        (None, dir) => {
            let name = default_kit_name(&product, &opts.build_target, &from, &to);
            match dir {
                Some(d) => d.join(name),
                None => PathBuf::from(name),
            }
        }
    };
    check_output(&out, output.inputs)?;
    let layer = match &opts.layer_name {
        Some(n) => n.clone(),
        None => format!("{product}_{from}_to_{to}"),
    };
    if !version::is_safe_name(&layer) || layer.eq_ignore_ascii_case("filesystem") {
        return Err(refuse(format!(
            "layer name {layer:?} is not allowed (letters, digits and . _ + ~ - only; never \"filesystem\")"
        )));
    }
    let layer_path = format!("live/{layer}.squashfs");
    if new
        .files()
        .iter()
        .any(|f| String::from_utf8_lossy(&f.path).eq_ignore_ascii_case(&layer_path))
    {
        return Err(refuse(format!(
            "layer name {layer} collides with {layer_path} in the new release"
        )));
    }
    Ok(Names {
        product,
        from,
        to,
        layer,
        layer_path,
        out,
    })
}

/// A temporary file removed when dropped, whatever happens.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where the layer is written while the kit is built: a hidden name beside the output.
fn layer_temp_path(out: &Path) -> PathBuf {
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    out_dir.join(format!(
        ".{}.layer-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ))
}

/// Step 3: writes the diff layer with the declared parameters to `path`. Files the layer carries
/// are read from the new image: their blocks are copied from it when its compressor settings and
/// block size equal the layer's (block sources, see [`crate::squashfs::blocks`]). `hashes` are
/// the files' known sha256 (the new root's), when known. A diff layer (and a recipe, which has
/// its entries) has no export table and its files newest first ([`DataOrder::NewestFirst`]).
fn write_layer(
    (tree, hashes): (&Tree, Option<&[Option<[u8; 32]>]>),
    params: &WriterParams,
    path: &Path,
    progress: &dyn Progress,
) -> Result<WriteReport, BuildError> {
    let io = |e: std::io::Error| OutputError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let f = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    // A diff layer is never exported over NFS: no export table (as gensquashfs by default).
    let mut layer_params = params.clone();
    layer_params.exportable = false;
    layer_params.order = DataOrder::NewestFirst;
    let report = write_image_hashed(tree, hashes, &layer_params, &mut w, &|n| {
        progress.position(n)
    })?;
    w.into_inner().map_err(|e| io(e.into_error()))?;
    Ok(report)
}

/// Step 4: reads the layer back, stacks it on the old root in userspace and requires the
/// result's tree digest to equal the new root's (invariant 1, before anything is published).
/// Returns the layer as read back, with its content hashes.
/// A layer file whose stored blocks and tail are identical to a file of the new image (its
/// blocks were copied) has that file's content without being decoded; every other layer file
/// is decoded and hashed.
fn verify_layer(
    old_root: &HashedTree,
    new_root: &HashedTree,
    layer: &Path,
    new_digest: &[u8; 32],
    [old_path, new_path]: [&Path; 2],
    progress: &dyn Progress,
) -> Result<HashedTree, BuildError> {
    let layer_archive = Archive::open(layer)?;
    let layer_read = HashedTree::new_reusing(layer_archive.read_tree()?, new_root, &|n| {
        progress.position(n)
    })?;
    if &old_root.stack(&layer_read)?.digest() != new_digest {
        return Err(refuse(format!(
            "internal check failed: the layer stacked on {} does not give {} (please report this)",
            old_path.display(),
            new_path.display()
        )));
    }
    Ok(layer_read)
}

/// The kit's `overlay/` as [`overlay_files`] decides it.
struct Overlay {
    /// The files, sorted by path, each with its control.yml entry.
    files: Vec<(OverlayFile, FileEntry)>,
    /// Size of the diff layer image.
    layer_bytes: u64,
    /// Its sha256, in hex.
    layer_sha256: String,
}

/// Step 5: the files of the kit's `overlay/`: the layer, every boot file of the new release that
/// is new or changed, and the boot-loader directories whole.
fn overlay_files(
    old_boot: &boot::BootTree,
    new_boot: &boot::BootTree,
    layer_tmp: &Path,
    layer_path: &str,
) -> Result<Overlay, BuildError> {
    let io = |e: std::io::Error| OutputError::Io {
        path: layer_tmp.to_path_buf(),
        source: e,
    };
    let layer_content = release::host_content(layer_tmp.to_path_buf()).map_err(io)?;
    let layer_sha = layer_content.sha256().map_err(io)?;
    let mut overlay: Vec<(OverlayFile, FileEntry)> = vec![(
        OverlayFile {
            path: layer_path.to_string(),
            content: layer_content.clone(),
            mtime: None,
        },
        FileEntry {
            path: layer_path.to_string(),
            size: layer_content.size,
            sha256: hex(&layer_sha),
        },
    )];
    for f in &new_boot.files {
        let whole = WHOLE_DIRS
            .iter()
            .any(|d| f.path.starts_with(&format!("{d}/")));
        let changed = old_boot.get(&f.path).is_none_or(|o| o.sha256 != f.sha256);
        if whole || changed {
            overlay.push((
                OverlayFile {
                    path: f.path.clone(),
                    content: f.content.clone(),
                    mtime: f.mtime,
                },
                f.entry(),
            ));
        }
    }
    overlay.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    Ok(Overlay {
        files: overlay,
        layer_bytes: layer_content.size,
        layer_sha256: hex(&layer_sha),
    })
}

/// A FORMAT 3 recipe as the builder made it.
struct MadeRecipe {
    /// control.yml's `recipe`.
    recipe: Recipe,
    /// The recipe image (a temporary file).
    image: Content,
    /// Per source kind, for the report.
    sources: Vec<SourceReport>,
    /// What the choice found (compressed files), for the report.
    stats: ChoiceStats,
}

impl KitSteps<'_> {
    /// Step 5b (`--deltas`): chooses every layer file's source against the old root, writes the
    /// recipe image with the layer's parameters to `path` and records the recipe.
    fn recipe(
        &self,
        old_root: &HashedTree,
        layer: &HashedTree,
        (layer_bytes, layer_sha256): (u64, String),
        path: &Path,
    ) -> Result<MadeRecipe, BuildError> {
        let (opts, progress) = (self.opts, self.progress);
        self.phase("choosing sources", layer.tree.content_bytes());
        let done = std::sync::atomic::AtomicU64::new(0);
        let (chosen, stats) = choose(
            layer.hashed(),
            old_root.hashed(),
            LayerCompression {
                compressor: &opts.layer.compressor,
                block_size: opts.layer.block_size,
            },
            &|n| progress.position(done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n),
        )?;
        let tree = recipe_tree(&layer.tree, &chosen)?;
        self.phase("writing recipe", tree.content_bytes());
        write_layer((&tree, None), &opts.layer, path, progress)?;
        let io = |e: std::io::Error| OutputError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let image = release::host_content(path.to_path_buf()).map_err(io)?;
        let sha = image.sha256().map_err(io)?;
        let sources = per_kind(
            chosen
                .iter()
                .map(|c| (c.record.source, c.record.size, c.payload.size)),
        )
        .into_iter()
        .map(|(k, t, carried)| SourceReport {
            kind: k.name().to_string(),
            files: t.files,
            bytes: t.bytes,
            payload_bytes: carried,
        })
        .collect();
        Ok(MadeRecipe {
            recipe: Recipe {
                version: RECIPE_VERSION,
                layer_tree_digest: hex(&layer.digest()),
                layer_size: layer_bytes,
                layer_sha256,
                image_size: image.size,
                image_sha256: hex(&sha),
                files: chosen.into_iter().map(|c| c.record).collect(),
                boot_files: Vec::new(),
            },
            image,
            sources,
            stats,
        })
    }
}

/// FORMAT 3: the boot files of `carried` (new or changed) that the device re-creates from its
/// current boot files (the old release's), each kept only when what it saves exceeds the bytes
/// its record adds to control.yml (a patched loader configuration of a few lines would make the
/// kit larger), in path order.
fn choose_boot_files(
    old_boot: &boot::BootTree,
    (new_boot, trials): (&boot::BootTree, &BootTrials),
    carried: &[(OverlayFile, FileEntry)],
) -> Result<Vec<BootChoice>, BuildError> {
    let old: Vec<BootInput<'_>> = old_boot
        .files
        .iter()
        .map(|f| BootInput {
            path: &f.path,
            sha256: &f.sha256,
            content: &f.content,
        })
        .collect();
    let mut out = Vec::new();
    for (f, _) in carried {
        let Some(n) = new_boot.get(&f.path) else {
            continue;
        };
        let input = BootInput {
            path: &n.path,
            sha256: &n.sha256,
            content: &n.content,
        };
        if let Some(c) = choose_boot(&old, input, trials)? {
            if c.saved > c.record.yaml_len() {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// Where the recipe image is written while the kit is built: a hidden name beside the output.
fn recipe_temp_path(out: &Path) -> PathBuf {
    let mut p = layer_temp_path(out).into_os_string();
    p.push(".recipe");
    PathBuf::from(p)
}

/// Step 6: writes the kit container to `out` (through a temporary file renamed into place) and
/// returns its sha256.
fn write_kit(
    out: &Path,
    control: &Control,
    files: &[OverlayFile],
    recipe_image: Option<Content>,
    boot_patches: &[(String, Content)],
    (jobs, cache): (usize, Option<Arc<BlockCache>>),
    progress: &dyn Progress,
) -> Result<[u8; 32], BuildError> {
    let kit_tree = kit::container_tree_full(control, files, recipe_image, boot_patches)?;
    let mut params = kit::container_params(
        control.layer_params.source_date_epoch,
        jobs,
        &control.stored_path(),
    );
    params.cache = cache;
    write_new_file(out, |f| -> Result<[u8; 32], BuildError> {
        let io = |e: std::io::Error| OutputError::Io {
            path: out.to_path_buf(),
            source: e,
        };
        let mut w = BufWriter::with_capacity(1 << 20, &mut *f);
        write_image(&kit_tree, &params, &mut w, &|n| progress.position(n))?;
        w.into_inner().map_err(|e| io(e.into_error()))?;
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut h = Sha256::new();
        std::io::copy(f, &mut h).map_err(io)?;
        Ok(h.finalize().into())
    })
}

/// Default kit file name: `<product>_<target>_<from>_to_<to>.iuk` (Tails' naming).
pub fn default_kit_name(product: &str, target: &str, from: &str, to: &str) -> String {
    format!("{product}_{target}_{from}_to_{to}.iuk")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the overall items and the phases reported.
    #[derive(Default)]
    struct Recorder {
        items: Mutex<Vec<(u64, u64)>>,
        phases: Mutex<Vec<String>>,
    }

    impl Progress for Recorder {
        fn phase(&self, name: &str, _: u64) {
            self.phases.lock().unwrap().push(name.to_string());
        }
        fn position(&self, _: u64) {}
        fn warn(&self, _: &str) {}
        fn items(&self, done: u64, total: u64) {
            self.items.lock().unwrap().push((done, total));
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(name)
    }

    #[test]
    fn a_batch_reports_progress_per_kit_and_overall() {
        let dir = tempfile::tempdir().unwrap();
        let opts = fixture_options();
        let olds: Vec<OldRelease> = ["6.9", "6.10"]
            .iter()
            .map(|v| OldRelease {
                path: fixture(&format!("Tails-{v}.iso")),
                from_version: None,
                out: None,
            })
            .collect();
        let rec = Recorder::default();
        let reports = build_batch(
            &olds,
            &fixture("Tails-6.11.iso"),
            Some(dir.path()),
            &opts,
            &rec,
        )
        .unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(*rec.items.lock().unwrap(), vec![(0, 2), (1, 2), (2, 2)]);
        let phases = rec.phases.lock().unwrap();
        for k in ["kit 1/2: ", "kit 2/2: "] {
            assert!(
                phases.iter().any(|p| p.starts_with(k)),
                "no phase of {k}: {phases:?}"
            );
        }
    }
}
