//! `iuk-build pack`: a directory or an existing SquashFS image in, a deterministic image out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use iuk::hostdir::{self, HostDirOptions};
use iuk::output::write_new_file;
use iuk::squashfs::archive::Archive;
use iuk::squashfs::write::{write_image, WriterParams};
use iuk::tree::Tree;

use crate::writer_args::{BcjName, CompressionName, WriterArgs, WriterDefaults};

/// Pack a directory (or repack a SquashFS image) into a deterministic SquashFS image.
///
/// The image keeps every entry exactly: types, permissions (setuid/setgid/sticky too), owners,
/// mtimes (whole seconds), symlink targets, device numbers, xattrs (user., trusted., security.;
/// others such as POSIX ACLs are skipped with a warning), hard links, sparse blocks. The same
/// source and parameters give the same bytes on any machine and with any --jobs.
///
/// Defaults: xz, level 6, 1 MiB blocks, dictionary = block size, no BCJ filter.
///
/// Repacking an image whose compressor, block size and compressor options (xz dictionary and
/// BCJ filter, zstd/gzip level as the image declares them) equal the output's copies its full
/// data blocks and its fragment blocks (tail ends) as they are instead of compressing them
/// again. --json counts copied and compressed blocks and copied fragment blocks.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    SOURCE_DATE_EPOCH=1700000000 iuk-build pack rootfs/ rootfs.squashfs\n  \
    iuk-build pack --source-date-epoch 0 --compression zstd --level 19 old.squashfs new.squashfs")]
pub struct PackArgs {
    /// Directory to pack, or an existing SquashFS image to repack (read directly, no mounting)
    pub source: PathBuf,
    /// Image to create; replaced if it exists (written under a temporary name, renamed when done)
    pub output: PathBuf,
    #[command(flatten)]
    pub writer: WriterArgs,
    /// Compression threads [default: number of CPUs]; never changes the output bytes
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
    /// Record every entry as owned by root (uid 0, gid 0)
    #[arg(long)]
    pub all_root: bool,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// What a pack source is.
enum Source {
    Dir,
    Image,
}

fn classify(path: &Path) -> Result<Source> {
    let md = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if md.is_dir() {
        return Ok(Source::Dir);
    }
    let mut magic = [0u8; 4];
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    use std::io::Read;
    if (&f).take(4).read(&mut magic).unwrap_or(0) == 4 && &magic == b"hsqs" {
        return Ok(Source::Image);
    }
    bail!(
        "{}: neither a directory nor a SquashFS image",
        path.display()
    )
}

/// Refuses an output that is the source or lies inside the source directory.
fn check_output(source: &Path, output: &Path) -> Result<()> {
    let src = std::fs::canonicalize(source).with_context(|| format!("{}", source.display()))?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(parent) = std::fs::canonicalize(&parent) else {
        bail!("{}: output directory does not exist", parent.display());
    };
    let out = parent.join(output.file_name().unwrap_or_default());
    if out == src {
        bail!("{}: output is the source itself", output.display());
    }
    if out.starts_with(&src) {
        bail!(
            "{}: output lies inside the source directory {}",
            output.display(),
            source.display()
        );
    }
    Ok(())
}

fn load(source: &Path, all_root: bool) -> Result<Tree> {
    match classify(source)? {
        Source::Dir => {
            let t = hostdir::read_dir_tree(source, &HostDirOptions { all_root })?;
            if !t.skipped_xattrs.is_empty() {
                eprintln!(
                    "iuk-build: warning: SquashFS cannot store these xattrs; skipped: {}",
                    t.skipped_xattrs.join(", ")
                );
            }
            Ok(t.tree)
        }
        Source::Image => {
            let archive = Archive::open(source).with_context(|| format!("{}", source.display()))?;
            let mut tree = archive
                .read_tree()
                .with_context(|| format!("{}", source.display()))?;
            if all_root {
                for i in 0..tree.inode_count() as u32 {
                    let m = &mut tree.inode_mut(iuk::tree::InodeId(i)).meta;
                    m.uid = 0;
                    m.gid = 0;
                }
            }
            Ok(tree)
        }
    }
}

/// Runs `pack`.
pub fn run(a: PackArgs) -> Result<()> {
    let start = Instant::now();
    let w = a.writer.resolve(&WriterDefaults {
        compression: CompressionName::Xz,
        xz_bcj: BcjName::None,
        block_size: 1 << 20,
    })?;
    check_output(&a.source, &a.output)?;
    let tree = load(&a.source, a.all_root)?;
    let total = tree.content_bytes();
    let mut params = WriterParams::new(w.compressor, w.block_size, w.epoch);
    params.sort = w.sort;
    if let Some(j) = a.jobs {
        params.jobs = j as usize;
    }
    let bar = iuk::progress::bytes_bar(total, "packing");
    let report = write_new_file(&a.output, |f| -> Result<_> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        let r = write_image(&tree, &params, &mut out, &|n| bar.set_position(n))?;
        out.into_inner().map_err(|e| e.into_error())?;
        Ok(r)
    })
    .with_context(|| format!("{}", a.output.display()))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = serde_json::json!((secs * 1000.0).round() / 1000.0);
        v["output"] = serde_json::json!(a.output.display().to_string());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let ratio = if report.bytes_in > 0 {
            100.0 * report.bytes_out as f64 / report.bytes_in as f64
        } else {
            0.0
        };
        println!(
            "{}: {} inodes, {} files ({} duplicates), {} bytes in, {} bytes out ({ratio:.1}%), {secs:.2} s",
            a.output.display(),
            report.inodes,
            report.files,
            report.duplicates,
            report.bytes_in,
            report.bytes_out
        );
        println!(
            "data blocks: {} copied from the source image, {} compressed; fragment blocks: {} \
             copied, {} packed",
            report.copied_blocks,
            report.compressed_blocks,
            report.copied_fragment_blocks,
            report.fragment_blocks - report.copied_fragment_blocks
        );
    }
    Ok(())
}
