//! The subcommands of `iuk-apply`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use iuk::medium::apply::{self, ApplyOptions, ApplyProgress, Plan};
use iuk::medium::fsops::RealFs;
use iuk::medium::init::{self, InitOptions};
use iuk::medium::recover::{self, Recovery};
use iuk::medium::{Medium, MediumError};

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    Init(InitArgs),
    Adopt(AdoptArgs),
    Check(KitArgs),
    Apply(KitArgs),
    Recover(MediumArgs),
    Status(StatusArgs),
    Verify(VerifyArgs),
}

/// Install a release (ISO image or extracted directory) onto an empty medium.
///
/// Writes the boot tree (isolinux/ renamed syslinux/, as Tails does), live/filesystem.squashfs,
/// the module file live/<PRODUCT>.module, and iuk's state, lock and staging directory. Product
/// and version default to the root filesystem's /etc/os-release.
#[derive(Args)]
pub struct InitArgs {
    /// The medium: an empty or missing directory (the mounted system partition)
    #[arg(long, value_name = "DIR")]
    medium: PathBuf,
    /// The release to install
    #[arg(long, value_name = "ISO")]
    iso: PathBuf,
    /// Product name [default: from os-release]
    #[arg(long, value_name = "P")]
    product: Option<String>,
    /// Version [default: from os-release]
    #[arg(long, value_name = "V")]
    version: Option<String>,
    /// Build target [default: amd64]
    #[arg(long, value_name = "T")]
    build_target: Option<String>,
    /// Update channel [default: stable]
    #[arg(long, value_name = "C")]
    channel: Option<String>,
    /// Most diff layers the stack may hold [default: 8]
    #[arg(long, value_name = "N")]
    max_layers: Option<u32>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

/// Take over a medium another installer made and upgraded (Tails' own installer included).
///
/// Reads the module file (live/filesystem.<P>.module, else live/<P>.module, as live-boot does),
/// stacks the layers it lists in userspace, reads the base and current versions from
/// /etc/os-release, records both tree digests, hashes the layers and the boot files (never
/// installer-made ones such as syslinux/ldlinux.sys), then writes iuk's state and lock file.
/// An inconsistent medium (a listed layer missing or corrupt) is refused, nothing written.
#[derive(Args)]
pub struct AdoptArgs {
    /// The medium (the mounted system partition)
    #[arg(long, value_name = "DIR")]
    medium: PathBuf,
    /// Product name [default: from the base's os-release]
    #[arg(long, value_name = "P")]
    product: Option<String>,
    /// Build target [default: amd64]
    #[arg(long, value_name = "T")]
    build_target: Option<String>,
    /// Update channel [default: stable]
    #[arg(long, value_name = "C")]
    channel: Option<String>,
    /// Most diff layers the stack may hold [default: 8]
    #[arg(long, value_name = "N")]
    max_layers: Option<u32>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

/// A kit and a medium.
#[derive(Args)]
pub struct KitArgs {
    /// The kit (.iuk)
    kit: PathBuf,
    /// The medium (the mounted system partition)
    #[arg(long, value_name = "DIR")]
    medium: PathBuf,
    /// Bound on diff layers for this apply [default: the medium's, 8 unless set at init]
    #[arg(long, value_name = "N")]
    max_layers: Option<u32>,
    /// The kit file must have this sha256 (hex)
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

/// Just a medium.
#[derive(Args)]
pub struct MediumArgs {
    /// The medium (the mounted system partition)
    #[arg(long, value_name = "DIR")]
    medium: PathBuf,
}

/// Status of a medium.
#[derive(Args)]
pub struct StatusArgs {
    /// The medium (the mounted system partition)
    #[arg(long, value_name = "DIR")]
    medium: PathBuf,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Verification of a medium.
#[derive(Args)]
pub struct VerifyArgs {
    /// The medium (the mounted system partition)
    #[arg(long, value_name = "DIR")]
    medium: PathBuf,
    /// Also hash every layer and boot file (default: names and sizes only)
    #[arg(long)]
    deep: bool,
}

/// Runs a subcommand.
pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Init(a) => init_cmd(a),
        Command::Adopt(a) => adopt_cmd(a),
        Command::Check(a) => check_cmd(a),
        Command::Apply(a) => apply_cmd(a),
        Command::Recover(a) => recover_cmd(a),
        Command::Status(a) => status_cmd(a),
        Command::Verify(a) => verify_cmd(a),
    }
}

struct Bar(Mutex<Option<ProgressBar>>);

impl ApplyProgress for Bar {
    fn phase(&self, name: &str, total: u64) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        if let Ok(mut b) = self.0.lock() {
            if let Some(old) = b.take() {
                old.finish_and_clear();
            }
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg:14} [{bar:30}] {bytes}/{total_bytes} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(name.to_string());
            *b = Some(bar);
        }
    }
    fn position(&self, done: u64) {
        if let Ok(b) = self.0.lock() {
            if let Some(b) = b.as_ref() {
                b.set_position(done);
            }
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }
}

fn parse_sha(s: &Option<String>) -> Result<Option<[u8; 32]>> {
    match s {
        None => Ok(None),
        Some(h) => match iuk::medium::journal::parse_sha256(h.trim()) {
            Some(v) => Ok(Some(v)),
            None => bail!("--sha256 {h:?} is not 64 hex digits"),
        },
    }
}

fn init_cmd(a: InitArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let opts = InitOptions {
        product: a.product,
        version: a.version,
        build_target: a.build_target,
        channel: a.channel,
        max_layers: a.max_layers,
    };
    let r = init::init(&m, &a.iso, &opts, &mut RealFs::new())?;
    for s in &r.skipped_symlinks {
        eprintln!(
            "iuk-apply: warning: {}: symlink {s} not installed (FAT has no symlinks)",
            a.iso.display()
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: installed {} {} ({} boot files, {} bytes)",
            a.medium.display(),
            r.product,
            r.version,
            r.boot_files,
            r.bytes
        );
    }
    Ok(())
}

fn adopt_cmd(a: AdoptArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let _lock = if m.live_file(iuk::medium::LOCK_FILE).exists() {
        Some(m.lock()?)
    } else {
        None
    };
    let opts = iuk::medium::adopt::AdoptOptions {
        product: a.product,
        build_target: a.build_target,
        channel: a.channel,
        max_layers: a.max_layers,
    };
    let r = iuk::medium::adopt::adopt(&m, &opts, &mut RealFs::new())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: adopted {} {} on a {} base ({} diff layers, {} boot files)",
            a.medium.display(),
            r.product,
            r.current_version,
            r.base_version,
            r.layers.len(),
            r.boot_files
        );
    }
    Ok(())
}

fn describe_plan(p: &Plan) -> serde_json::Value {
    serde_json::json!({
        "model": p.model,
        "product": p.control.product,
        "from_version": p.control.from_version,
        "to_version": p.control.to_version,
        "layer": p.control.layer,
        "layers_after": p.new_state.layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
        "boot_files_to_write": p.writes.iter().map(|w| w.path.clone()).collect::<Vec<_>>(),
        "to_delete": p.deletes.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
        "payload_bytes": p.payload,
        "needed_bytes": p.needed,
        "free_bytes": p.free,
        "reinstall_bootloader": p.reinstall_bootloader,
        "warnings": p.warnings,
    })
}

fn check_cmd(a: KitArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let opts = ApplyOptions {
        max_layers: a.max_layers,
        kit_sha256: parse_sha(&a.sha256)?,
    };
    let plan = apply::plan(&m, &a.kit, &opts, &Bar(Mutex::new(None)))?;
    for w in &plan.warnings {
        eprintln!("iuk-apply: warning: {w}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&describe_plan(&plan))?);
    } else {
        println!(
            "{}: apply would {} {} {} -> {} ({} boot files to write, {} entries to delete, {} bytes needed{})",
            a.kit.display(),
            match plan.model {
                apply::Model::Stacking => "stack layer",
                apply::Model::Cumulative => "replace every diff layer with",
            },
            plan.control.layer,
            plan.control.from_version,
            plan.control.to_version,
            plan.writes.len(),
            plan.deletes.len(),
            plan.needed,
            plan.free.map(|f| format!(", {f} free")).unwrap_or_default()
        );
        if plan.reinstall_bootloader {
            println!(
                "syslinux/ldlinux.c32 changes: the boot loader must be reinstalled afterwards"
            );
        }
    }
    Ok(())
}

fn recover_first(m: &Medium) -> Result<Recovery> {
    let r = recover::recover(m, &mut RealFs::new())?;
    match r {
        Recovery::Completed => eprintln!("iuk-apply: completed an interrupted apply first"),
        Recovery::Discarded => eprintln!("iuk-apply: discarded an interrupted apply first"),
        Recovery::StaleJournalRemoved => eprintln!("iuk-apply: removed a stale journal first"),
        Recovery::Clean => {}
    }
    Ok(r)
}

fn apply_cmd(a: KitArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let _lock = m.lock()?;
    recover_first(&m)?;
    let opts = ApplyOptions {
        max_layers: a.max_layers,
        kit_sha256: parse_sha(&a.sha256)?,
    };
    let bar = Bar(Mutex::new(None));
    let plan = apply::plan(&m, &a.kit, &opts, &bar)?;
    for w in &plan.warnings {
        eprintln!("iuk-apply: warning: {w}");
    }
    let r = apply::execute(&m, &plan, &mut RealFs::new(), &bar)
        .with_context(|| format!("{}: applying {}", a.medium.display(), a.kit.display()))?;
    drop(bar);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: {} -> {} ({}, layer {}): {} bytes written, {} boot files, {} entries deleted",
            a.medium.display(),
            r.from_version,
            r.to_version,
            match r.model {
                apply::Model::Stacking => "stacked",
                apply::Model::Cumulative => "cumulative",
            },
            r.layer,
            r.bytes_written,
            r.boot_files_written,
            r.deleted
        );
        if r.reinstall_bootloader {
            println!("syslinux/ldlinux.c32 changed: reinstall the boot loader (syslinux and the MBR) to match");
        }
    }
    Ok(())
}

fn recover_cmd(a: MediumArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let _lock = m.lock()?;
    let r = recover::recover(&m, &mut RealFs::new())?;
    println!(
        "{}: {}",
        a.medium.display(),
        match r {
            Recovery::Clean => "nothing to recover",
            Recovery::Completed => "completed the interrupted apply (new version)",
            Recovery::Discarded => "discarded the interrupted apply (old version)",
            Recovery::StaleJournalRemoved => "removed a stale journal",
        }
    );
    Ok(())
}

fn status_cmd(a: StatusArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let (s, _, _) = m.read_state()?;
    let pending = m.journal_pending() || m.staging_pending();
    let free = apply::free_space(&a.medium)?;
    if a.json {
        let v = serde_json::json!({
            "product": s.product,
            "build_target": s.build_target,
            "channel": s.channel,
            "base_version": s.base_version,
            "current_version": s.current_version,
            "layers": s.layers,
            "max_layers": s.max_layers,
            "free_bytes": free,
            "pending_recovery": pending,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("medium           {}", a.medium.display());
    println!(
        "product          {} ({}, {})",
        s.product, s.build_target, s.channel
    );
    println!("base version     {}", s.base_version);
    println!("current version  {}", s.current_version);
    println!(
        "layers           {} of at most {}",
        s.layers.len(),
        s.max_layers
    );
    for l in &s.layers {
        println!("  {:<40} {:>12} bytes  -> {}", l.name, l.size, l.version);
    }
    println!(
        "free space       {}",
        free.map_or_else(
            || "not reported by the filesystem".to_string(),
            |f| format!("{f} bytes")
        )
    );
    if pending {
        println!(
            "PENDING          an interrupted apply: run `iuk-apply recover --medium {}`",
            a.medium.display()
        );
    }
    Ok(())
}

fn verify_cmd(a: VerifyArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    if m.journal_pending() || m.staging_pending() {
        return Err(MediumError::PendingRecovery(a.medium.clone()).into());
    }
    let (s, _, _) = m.read_state()?;
    m.check_consistent(&s, a.deep)?;
    println!(
        "{}: {} {} verified ({} layers{})",
        a.medium.display(),
        s.product,
        s.current_version,
        s.layers.len(),
        if a.deep {
            ", every layer and boot file hashed"
        } else {
            ", names and sizes"
        }
    );
    Ok(())
}
