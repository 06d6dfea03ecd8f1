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
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::boot::{self, BootError, BootFile, WHOLE_DIRS};
use crate::diff::{self, DiffError, DiffStats, HashedTree};
use crate::kit::{self, Control, FileEntry, KitError, LayerParams, OverlayFile, GENERATOR};
use crate::output::{write_new_file, OutputError};
use crate::progress::Progress;
use crate::release::{self, hex_opt, Release, ReleaseError};
use crate::squashfs::archive::Archive;
use crate::squashfs::write::{write_image, WriterParams, WRITER_FORMAT_VERSION};
use crate::squashfs::SqfsError;
use crate::tree::{hex, TreeError};
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
/// current directory). Nothing is left at the output path on failure.
///
/// Determinism (audited; invariant 2). What reaches the bytes: the two releases' content (root
/// filesystems, boot files and the mtimes the release records for them — for a directory input,
/// the host files' mtimes, so a rebuild from directories needs an extraction that keeps them, as
/// `osirrox -extract` does), the sha256 of the ISO files, and `opts` except `layer.jobs`. What
/// never does: the input and output paths (only sha256s are recorded), the clock (`Instant` only
/// times the report), the process id (only in temporary file names), thread count and
/// scheduling (hashes are collected by index, boot files sorted, blocks emitted in order),
/// readdir order (directory inputs are sorted), the user, host name, locale and time zone (ISO
/// timestamps use the offset the ISO records), the umask (kit entries get fixed modes).
pub fn build(
    old_path: &Path,
    new_path: &Path,
    out: Option<&Path>,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    let start = Instant::now();
    let check_out = |out: &Path| -> Result<(), BuildError> {
        for input in [old_path, new_path] {
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
    };
    if let Some(o) = out {
        check_out(o)?;
    }
    let epoch = opts.layer.mod_time;

    progress.phase("reading", 0);
    let old = Release::open(old_path)?;
    let new = Release::open(new_path)?;
    let old_fs = old.rootfs()?;
    let new_fs = new.rootfs()?;
    let rootfs_err = |r: &Release, e: SqfsError| ReleaseError::Rootfs {
        path: r.path().to_path_buf(),
        source: e,
    };
    let old_tree = old_fs.read_tree().map_err(|e| rootfs_err(&old, e))?;
    let new_tree = new_fs.read_tree().map_err(|e| rootfs_err(&new, e))?;

    let old_os = release::os_release(&old_tree).unwrap_or_default();
    let new_os = release::os_release(&new_tree).unwrap_or_default();
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
        opts.from_version.as_deref(),
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
    let out: PathBuf = match out {
        Some(o) => o.to_path_buf(),
        None => PathBuf::from(default_kit_name(&product, &opts.build_target, &from, &to)),
    };
    check_out(&out)?;
    let out = out.as_path();
    let layer_name = match &opts.layer_name {
        Some(n) => n.clone(),
        None => format!("{product}_{from}_to_{to}"),
    };
    if !version::is_safe_name(&layer_name) || layer_name.eq_ignore_ascii_case("filesystem") {
        return Err(refuse(format!(
            "layer name {layer_name:?} is not allowed (letters, digits and . _ + ~ - only; never \"filesystem\")"
        )));
    }

    let layer_path = format!("live/{layer_name}.squashfs");
    if new
        .files()
        .iter()
        .any(|f| String::from_utf8_lossy(&f.path).eq_ignore_ascii_case(&layer_path))
    {
        return Err(refuse(format!(
            "layer name {layer_name} collides with {layer_path} in the new release"
        )));
    }

    let old_sizes = old_tree.content_bytes();
    let total = old_sizes + new_tree.content_bytes();
    progress.phase("hashing", total);
    let old_root = HashedTree::new(old_tree, &|n| progress.position(n))?;
    let new_root = HashedTree::new(new_tree, &|n| progress.position(old_sizes + n))?;
    let old_digest = old_root.digest();
    let new_digest = new_root.digest();

    progress.phase("diffing", 0);
    let (layer_tree, stats) = diff::diff(old_root.hashed(), new_root.hashed(), epoch)?;

    // The layer goes to a temporary file beside the output, removed whatever happens.
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let layer_tmp = out_dir.join(format!(
        ".{}.layer-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _guard = Remove(&layer_tmp);
    progress.phase("compressing", stats.content_bytes);
    {
        let f = File::create(&layer_tmp).map_err(|e| OutputError::Io {
            path: layer_tmp.clone(),
            source: e,
        })?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        // A diff layer is never exported over NFS: no export table (as gensquashfs by default).
        let mut layer_params = opts.layer.clone();
        layer_params.exportable = false;
        write_image(&layer_tree, &layer_params, &mut w, &|n| {
            progress.position(n)
        })?;
        w.into_inner().map_err(|e| OutputError::Io {
            path: layer_tmp.clone(),
            source: e.into_error(),
        })?;
    }

    progress.phase("verifying", stats.content_bytes);
    let layer_archive = Archive::open(&layer_tmp)?;
    let layer_read = HashedTree::new(layer_archive.read_tree()?, &|n| progress.position(n))?;
    if old_root.stack(&layer_read)?.digest() != new_digest {
        return Err(refuse(format!(
            "internal check failed: the layer stacked on {} does not give {} (please report this)",
            old_path.display(),
            new_path.display()
        )));
    }

    progress.phase("boot files", 0);
    let old_boot = boot::boot_tree(&old)?;
    let new_boot = boot::boot_tree(&new)?;
    for s in &new_boot.skipped_symlinks {
        progress.warn(&format!(
            "{}: symlink {s} left out of the boot tree (FAT has no symlinks)",
            new_path.display()
        ));
    }
    let layer_content = release::host_content(layer_tmp.clone()).map_err(|e| OutputError::Io {
        path: layer_tmp.clone(),
        source: e,
    })?;
    let layer_sha = layer_content.sha256().map_err(|e| OutputError::Io {
        path: layer_tmp.clone(),
        source: e,
    })?;
    let mut overlay: Vec<(OverlayFile, FileEntry)> = vec![(
        OverlayFile {
            path: layer_path.clone(),
            content: layer_content.clone(),
            mtime: None,
        },
        FileEntry {
            path: layer_path.clone(),
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
    let delete_files = boot::delete_files(&old, &new);

    let control = Control {
        delete_files: delete_files.clone(),
        generator: GENERATOR.to_string(),
        writer_format: WRITER_FORMAT_VERSION,
        product: product.clone(),
        build_target: opts.build_target.clone(),
        from_version: from.clone(),
        to_version: to.clone(),
        layer: layer_name.clone(),
        layer_params: LayerParams::from_writer(&opts.layer, opts.sort_text.clone()),
        old_iso_sha256: hex_opt(old.iso_sha256()?),
        new_iso_sha256: hex_opt(new.iso_sha256()?),
        old_tree_digest: hex(&old_digest),
        new_tree_digest: hex(&new_digest),
        overlay: overlay.iter().map(|(_, e)| e.clone()).collect(),
        boot_tree: new_boot.files.iter().map(BootFile::entry).collect(),
    };
    let files: Vec<OverlayFile> = overlay.into_iter().map(|(f, _)| f).collect();
    let kit_tree = kit::container_tree(&control, &files)?;
    let params = kit::container_params(epoch, opts.layer.jobs, &layer_path);
    let kit_total: u64 = files.iter().map(|f| f.content.size).sum();
    progress.phase("writing kit", kit_total);
    let kit_sha = write_new_file(out, |f| -> Result<[u8; 32], BuildError> {
        let mut w = BufWriter::with_capacity(1 << 20, &mut *f);
        write_image(&kit_tree, &params, &mut w, &|n| progress.position(n))?;
        w.into_inner().map_err(|e| OutputError::Io {
            path: out.to_path_buf(),
            source: e.into_error(),
        })?;
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(0)).map_err(|e| OutputError::Io {
            path: out.to_path_buf(),
            source: e,
        })?;
        let mut h = Sha256::new();
        std::io::copy(f, &mut h).map_err(|e| OutputError::Io {
            path: out.to_path_buf(),
            source: e,
        })?;
        Ok(h.finalize().into())
    })?;
    let kit_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let new_image_bytes = if new.is_iso() {
        std::fs::metadata(new_path).map(|m| m.len()).unwrap_or(0)
    } else {
        new_fs.superblock().bytes_used
    };
    Ok(BuildReport {
        output: out.display().to_string(),
        kit_sha256: hex(&kit_sha),
        product,
        from_version: from,
        to_version: to,
        layer: layer_name,
        diff: stats,
        layer_bytes: layer_content.size,
        kit_bytes,
        new_image_bytes,
        ratio: if new_image_bytes > 0 {
            kit_bytes as f64 / new_image_bytes as f64
        } else {
            0.0
        },
        overlay_files: files.len(),
        delete_files: delete_files.len(),
        old_tree_digest: hex(&old_digest),
        new_tree_digest: hex(&new_digest),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Default kit file name: `<product>_<target>_<from>_to_<to>.iuk` (Tails' naming).
pub fn default_kit_name(product: &str, target: &str, from: &str, to: &str) -> String {
    format!("{product}_{target}_{from}_to_{to}.iuk")
}
