//! `iuk-build build`: two releases in, one deterministic kit out (FORMAT 2, or 3 with --deltas).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use iuk::build::{build_batch, BuildOptions, BuildReport, OldRelease};
use iuk::output::{write_new_file, OutputError};
use iuk::squashfs::write::WriterParams;
use iuk::udf::describe::{describe_release, udf_path};
use iuk::udf::{DescribeInput, Offered};

use crate::describe::TypeName;
use crate::writer_args::{BcjName, CompressionName, WriterArgs, WriterDefaults};
use iuk::progress::Bars;

/// Build an incremental upgrade kit (FORMAT 2, installable by Tails' installer) from two releases.
///
/// OLD and NEW are live ISO images (or directories holding extracted ones). The kit holds
/// FORMAT, control.yml and overlay/: the diff layer live/<LAYER>.squashfs, every boot file that is
/// new or changed, and EFI/, syslinux/ (from isolinux/), utils/ whole. Stacked on the old root
/// filesystem with overlayfs, the layer gives exactly the new one (checked before the kit is
/// written). The kit's bytes depend only on the inputs and the declared parameters.
///
/// Product and versions default to /etc/os-release inside the images (TAILS_PRODUCT_NAME else
/// NAME; TAILS_VERSION_ID else VERSION_ID). Layer defaults: xz, BCJ x86, 1 MiB blocks and
/// dictionary (Tails' settings). When the new root filesystem has the layer's compressor, block
/// size and compressor options, the full data blocks of the files the layer carries are copied
/// from it instead of compressed again, and so is each of its fragment blocks whose every tail
/// the layer carries (the summary counts both); old-root files stored exactly as in the new
/// image are not decoded.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    SOURCE_DATE_EPOCH=1700000000 iuk-build build --old Tails-6.10.iso --new Tails-6.11.iso\n  \
    iuk-build build --old old/ --new new/ --product Tails --from-version 6.10 --to-version 6.11 \\\n      \
    --source-date-epoch 0 --out kit.iuk --json\n  \
    iuk-build build --new Tails-6.11.iso --old Tails-6.9.iso --old Tails-6.10.iso --out-dir kits/")]
pub struct BuildArgs {
    /// The release upgraded from: an ISO image or a directory holding an extracted one. Repeat
    /// it to build one kit from each (the new release is read and hashed once)
    #[arg(long, value_name = "OLD", required = true)]
    pub old: Vec<PathBuf>,
    /// The release upgraded to
    #[arg(long, value_name = "NEW")]
    pub new: PathBuf,
    /// Product name [default: from the new root's os-release]
    #[arg(long, value_name = "P")]
    pub product: Option<String>,
    /// Version upgraded from [default: from the old root's os-release]; with several --old,
    /// give it once per --old, in the same order
    #[arg(long, value_name = "A")]
    pub from_version: Vec<String>,
    /// Version upgraded to [default: from the new root's os-release]
    #[arg(long, value_name = "B")]
    pub to_version: Option<String>,
    /// Build target recorded in the kit and its default name
    #[arg(long, value_name = "T", default_value = "amd64")]
    pub build_target: String,
    /// Kit to write [default: <P>_<T>_<A>_to_<B>.iuk in the current directory]; one --old only
    #[arg(short, long, value_name = "PATH", conflicts_with = "out_dir")]
    pub out: Option<PathBuf>,
    /// Directory to write the kits into, under their default names
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Name of the diff layer (live/<NAME>.squashfs) [default: <P>_<A>_to_<B>]
    #[arg(long, value_name = "NAME")]
    pub layer_name: Option<String>,
    #[command(flatten)]
    pub writer: WriterArgs,
    /// Threads for hashing and compression [default: number of CPUs]; never changes the bytes
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
    /// Also write, for each kit's from-version V, the upgrade description file for devices
    /// first installed at V, with `describe`'s rules (the kit from V first, then the kits from
    /// later versions of this run), to DIR/upgrade/v2/<P>/<V>/<T>/<CHANNEL>/upgrades.yml (DIR =
    /// --out-dir). Sign each separately. No full-upgrade path is listed (use `describe`)
    #[arg(long, requires_all = ["out_dir", "kit_url_base"])]
    pub udf: bool,
    /// With --udf: the URL the kits are published under (a kit's URL is this, "/", its name)
    #[arg(long, value_name = "URL", requires = "udf")]
    pub kit_url_base: Option<String>,
    /// With --udf: the release notes' URL
    #[arg(long, value_name = "URL", requires = "udf")]
    pub details_url: Option<String>,
    /// With --udf: the channel of the devices addressed
    #[arg(long, value_name = "C", default_value = "stable")]
    pub channel: String,
    /// With --udf: the upgrade's type
    #[arg(
        long = "type",
        value_enum,
        value_name = "TYPE",
        default_value = "minor"
    )]
    pub kind: TypeName,
    /// Write a binary-delta kit (FORMAT 3) when it is smaller than the FORMAT 2 kit: the layer
    /// travels as a recipe — each file copied from an old file with the same content, patched
    /// from an old file (zstd patch-from or bsdiff, the smaller; files holding gzip, zip, xz,
    /// zstd or zlib streams in their decompressed content, the exact compressed bytes
    /// re-created: repack), or whole — and the device rebuilds the exact layer tree. Tails' installer reads only FORMAT 2: publish both. Costs
    /// build time (patch trials) and up to about 1 GiB of memory on large files
    #[arg(long)]
    pub deltas: bool,
    /// Print each phase's wall time on stderr (`iuk-build: timing: <phase> <seconds> s`)
    #[arg(long)]
    pub timings: bool,
    /// Print the summary as JSON on stdout (with --udf: {"kits": [...], "udfs": [...]})
    #[arg(long)]
    pub json: bool,
}

/// Runs `build`.
pub fn run(a: BuildArgs) -> Result<()> {
    let w = a.writer.resolve(&WriterDefaults {
        compression: CompressionName::Xz,
        xz_bcj: BcjName::X86,
        block_size: 1 << 20,
    })?;
    let jobs = crate::start_workers(a.jobs)?;
    let mut layer = WriterParams::new(w.compressor, w.block_size, w.epoch);
    layer.sort = w.sort;
    layer.jobs = jobs;
    if a.out.is_some() && a.old.len() > 1 {
        bail!(
            "--out names one kit but {} --old were given: use --out-dir",
            a.old.len()
        );
    }
    if !a.from_version.is_empty() && a.from_version.len() != a.old.len() {
        bail!(
            "{} --from-version for {} --old: give one per --old, in the same order",
            a.from_version.len(),
            a.old.len()
        );
    }
    let olds: Vec<OldRelease> = a
        .old
        .iter()
        .enumerate()
        .map(|(i, path)| OldRelease {
            path: path.clone(),
            from_version: a.from_version.get(i).cloned(),
            out: a.out.clone(),
        })
        .collect();
    let opts = BuildOptions {
        product: a.product.clone(),
        from_version: None,
        to_version: a.to_version.clone(),
        build_target: a.build_target.clone(),
        layer_name: a.layer_name.clone(),
        layer,
        sort_text: w.sort_text,
        deltas: a.deltas,
    };
    let bars = Bars::with_timings("iuk-build", a.timings);
    let reports = build_batch(&olds, &a.new, a.out_dir.as_deref(), &opts, &bars);
    bars.finish();
    let reports = reports?;
    let udfs = match (&a.out_dir, &a.kit_url_base) {
        (Some(dir), Some(base)) if a.udf => write_udfs(&a, dir, base, &reports)?,
        _ => Vec::new(),
    };
    if a.json && a.udf {
        let udfs: Vec<serde_json::Value> = udfs
            .iter()
            .map(|u| {
                serde_json::json!({
                    "initial_install_version": u.initial_install_version,
                    "path": u.path,
                })
            })
            .collect();
        let v = serde_json::json!({ "kits": reports, "udfs": udfs });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if a.json {
        if a.old.len() == 1 && a.out_dir.is_none() {
            println!("{}", serde_json::to_string_pretty(&reports[0])?);
        } else {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
    } else {
        for r in &reports {
            print_summary(r);
        }
        for u in &udfs {
            println!(
                "{}: upgrade description for devices first installed at {}",
                u.path, u.initial_install_version
            );
        }
    }
    Ok(())
}

/// A UDF written by `--udf`.
struct WrittenUdf {
    initial_install_version: String,
    path: String,
}

/// Writes the UDF of every kit's from-version under `dir` (see `--udf`).
fn write_udfs(
    a: &BuildArgs,
    dir: &Path,
    base: &str,
    reports: &[BuildReport],
) -> Result<Vec<WrittenUdf>> {
    let Some(first) = reports.first() else {
        return Ok(Vec::new());
    };
    let kits: Vec<(Offered, String)> = reports
        .iter()
        .map(|r| {
            let path = PathBuf::from(&r.output);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let url = format!("{}/{name}", base.trim_end_matches('/'));
            (Offered { path, url }, r.from_version.clone())
        })
        .collect();
    let common = DescribeInput {
        product: first.product.clone(),
        build_target: a.build_target.clone(),
        channel: a.channel.clone(),
        initial_install_version: String::new(),
        version: first.to_version.clone(),
        kind: a.kind.upgrade_type(),
        details_url: a.details_url.clone(),
        kits: Vec::new(),
        full: None,
    };
    let mut out = Vec::new();
    for (v, udf) in describe_release(&common, &kits)? {
        let path = udf_path(
            dir,
            &common.product,
            &v,
            &common.build_target,
            &common.channel,
        );
        let text = udf.to_yaml();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        write_new_file(&path, |f| {
            f.write_all(text.as_bytes())
                .map_err(|source| OutputError::Io {
                    path: path.clone(),
                    source,
                })
        })
        .with_context(|| format!("{}: cannot write", path.display()))?;
        out.push(WrittenUdf {
            initial_install_version: v,
            path: path.display().to_string(),
        });
    }
    Ok(out)
}

/// The three summary lines of a kit.
fn print_summary(r: &BuildReport) {
    let d = &r.diff;
    println!(
        "{}: {} {} -> {}, layer {}: {} added, {} changed, {} metadata-only, {} removed; \
         {} content bytes; layer {} bytes, kit {} bytes ({:.1}% of the new image), {:.2} s",
        r.output,
        r.product,
        r.from_version,
        r.to_version,
        r.layer,
        d.added,
        d.changed,
        d.metadata_only,
        d.removed,
        d.content_bytes,
        r.layer_bytes,
        r.kit_bytes,
        100.0 * r.ratio,
        r.seconds
    );
    println!(
        "layer data blocks: {} copied from the new image, {} compressed; fragment blocks: {} \
         copied, {} packed",
        r.layer_copied_blocks,
        r.layer_compressed_blocks,
        r.layer_copied_fragments,
        r.layer_fragment_blocks - r.layer_copied_fragments
    );
    if let Some(recipe) = r.recipe_bytes {
        let kinds: Vec<String> = r
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{} {} files ({} bytes, {} carried)",
                    s.kind, s.files, s.bytes, s.payload_bytes
                )
            })
            .collect();
        println!(
            "FORMAT 3: recipe {recipe} bytes instead of the layer; {}",
            kinds.join(", ")
        );
    }
    if let Some(c) = r.compressed_files.as_ref().filter(|c| c.compressed > 0) {
        println!(
            "compressed files: {} with a base, {} bytes whole, {} carried ({:.1}% saved)",
            c.compressed,
            c.compressed_whole_bytes,
            c.compressed_carried_bytes,
            100.0 * (1.0 - c.compressed_carried_bytes as f64 / c.compressed_whole_bytes as f64)
        );
    }
    println!("sha256 {}", r.kit_sha256);
}
