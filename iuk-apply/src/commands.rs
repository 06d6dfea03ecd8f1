//! The subcommands of `iuk-apply`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use iuk::delta::recipe::{KindTotals, SourceKind};
use iuk::medium::apply;
use iuk::medium::fsops::RealFs;
use iuk::medium::init::{self, InitOptions};
use iuk::medium::keyring::{self, KeyringInput};
use iuk::medium::plan::{self, ApplyOptions, Plan};
use iuk::medium::rebuild::LayerWrite;
use iuk::medium::recover::{self, Recovery};
use iuk::medium::signed_udf::{self, Outcome, SignedUdf};
use iuk::medium::{Medium, MediumError};
use iuk::progress::Bars;
use iuk::sign::{MAX_KEYRING, MAX_SIGNATURE};

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    Init(InitArgs),
    Adopt(AdoptArgs),
    /// Verify a kit against a medium and tell what applying it would do; writes nothing.
    ///
    /// On a medium with trusted keys, --udf and --signature are required: the upgrade
    /// description file must be signed by a trusted key, addressed to the medium (product,
    /// build target, initial-install version, channel), and list the kit (size and sha256) as
    /// an incremental upgrade to a newer version.
    Check(KitArgs),
    /// Verify a kit and stack it on the medium, crash-safely.
    ///
    /// Completes or discards an interrupted apply (or trust) first. On a medium with trusted
    /// keys, --udf and --signature are required: the upgrade description file must be signed by
    /// a trusted key, addressed to the medium (product, build target, initial-install version,
    /// channel), and list the kit (size and sha256) as an incremental upgrade to a newer
    /// version. Without trusted keys, the kit is applied with a warning. Everything is verified
    /// before the first byte is written.
    Apply(KitArgs),
    Select(SelectArgs),
    Trust(TrustArgs),
    /// Complete or discard an interrupted apply or trust (old or new, never in between).
    Recover(MediumArgs),
    /// Show the medium's versions, layers, trusted keys, free space and pending recovery.
    Status(StatusArgs),
    /// Check the medium against its state (names, sizes and each image's tables; --deep hashes
    /// every file and checks the base's and the stacked tree digests, in userspace).
    Verify(VerifyArgs),
}

/// Install a release (ISO image or extracted directory) onto an empty medium.
///
/// Writes the boot tree (isolinux/ renamed syslinux/, as Tails does), live/filesystem.squashfs,
/// the module file live/<PRODUCT>.module, and iuk's state, lock and staging directory. Product
/// and version default to the root filesystem's /etc/os-release.
///
/// With --keyring, the medium trusts the OpenPGP keys in it (stored as
/// live/iuk-keyring-<sha256>.asc): `apply` and `check` then require a signed upgrade
/// description file listing the kit. Without it, unsigned kits are applied with a warning.
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
    /// The OpenPGP keys the medium trusts (armored or binary; read whole, a pipe works)
    #[arg(long, value_name = "KEYS.asc")]
    keyring: Option<PathBuf>,
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
/// The trusted keys are those of --keyring, else those the previous state names (kept).
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
    /// The OpenPGP keys the medium trusts from now on [default: the keys it trusts now]
    #[arg(long, value_name = "KEYS.asc")]
    keyring: Option<PathBuf>,
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
    /// The signed upgrade description file listing the kit (upgrades.yml)
    #[arg(long, value_name = "FILE", requires = "signature")]
    udf: Option<PathBuf>,
    /// The UDF's detached OpenPGP signature (upgrades.yml.pgp)
    #[arg(long, value_name = "FILE", requires = "udf")]
    signature: Option<PathBuf>,
    /// Accept a kit made by Tails' own tooling (control.yml holds only delete_files). Such a
    /// kit does not say which release it was built against, so that cannot be checked: it is
    /// installed as Tails' installer does, as the one diff layer on the medium's base, its
    /// version read from the stacked /etc/os-release
    #[arg(long)]
    legacy_tails_kit: bool,
    /// First verify the stack the kit builds on as `verify --deep` does: hash every layer and
    /// boot file and read every image to check the base's and the stacked tree digests; and
    /// decode every block of the kit's layer. Costs about a minute per GB of images on the
    /// medium (measured: 8 s of CPU for a 186 MB xz image of 649 MB of files); without it,
    /// names, sizes and each image's superblock and tables are checked, and every table and
    /// metadata block of the kit's layer
    #[arg(long)]
    deep: bool,
    /// Print each phase's wall time on stderr (`iuk-apply: timing: <phase> <seconds> s`)
    #[arg(long)]
    timings: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

const SELECT_EXIT_CODES: &str = "\
Exit status:
  0  an upgrade applies: the path is printed (an incremental kit or a full upgrade)
  1  refused or failed (no trusted keys on the medium, a signature that does not verify, a UDF
     for another device, …); the message says what to do
  2  invalid command line
  3  no upgrade applies: no newer version is offered, or none by a path this device can take";

/// Tell which upgrade this device takes from a signed upgrade description file.
///
/// Verifies the UDF's signature with the medium's trusted keys and that it is addressed to the
/// medium, then picks, among the upgrades to versions newer than the current one, the newest:
/// the kit from the current version (stacking), else the kit from the base version
/// (cumulative), else the full upgrade. When one more diff layer would exceed --max-layers,
/// the cumulative kit is preferred. Prints the path's type, version, URL, size and sha256.
/// Read-only: never writes, and works (with a warning) while a recovery is pending.
#[derive(Args)]
#[command(after_help = SELECT_EXIT_CODES)]
pub struct SelectArgs {
    /// The medium (the mounted system partition)
    #[arg(long, value_name = "DIR")]
    medium: PathBuf,
    /// The upgrade description file (upgrades.yml)
    #[arg(long, value_name = "FILE")]
    udf: PathBuf,
    /// Its detached OpenPGP signature (upgrades.yml.pgp)
    #[arg(long, value_name = "FILE")]
    signature: PathBuf,
    /// Bound on diff layers [default: the medium's]
    #[arg(long, value_name = "N")]
    max_layers: Option<u32>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

/// Replace the medium's trusted keys (key rotation).
///
/// The new keyring must be signed (a detached signature over its bytes) by a key the medium
/// trusts now; it replaces the trusted keyring entirely, so revocations it carries take effect
/// at once and keys it lacks are no longer trusted. It must hold a key that can sign. Crash-safe
/// with the journal of `apply`; an interrupted rotation is completed or discarded by `recover`.
#[derive(Args)]
pub struct TrustArgs {
    /// The medium (the mounted system partition)
    #[arg(long, value_name = "DIR")]
    medium: PathBuf,
    /// The new keyring (armored or binary; read whole, a pipe works)
    #[arg(long, value_name = "NEW.asc")]
    keyring: PathBuf,
    /// A detached OpenPGP signature over the new keyring by a currently trusted key
    #[arg(long, value_name = "NEW.asc.sig")]
    signature: PathBuf,
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
    /// Also hash every layer and boot file, and read the base and every layer to check the
    /// base's tree digest and the stacked tree's digest against the state, without mounting:
    /// about a minute per GB of images (default: names, sizes, and each image's superblock and
    /// tables)
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
        Command::Select(a) => select_cmd(a),
        Command::Trust(a) => trust_cmd(a),
        Command::Recover(a) => recover_cmd(a),
        Command::Status(a) => status_cmd(a),
        Command::Verify(a) => verify_cmd(a),
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

/// Reads a whole input file of at most `limit` bytes (a pipe works: no stat, no mmap).
fn read_input(path: &Path, limit: usize, what: &str) -> Result<Vec<u8>> {
    iuk::io::read_capped(path, limit as u64)
        .with_context(|| format!("{}: cannot read the {what}", path.display()))
}

fn keyring_input(path: &Option<PathBuf>) -> Result<Option<KeyringInput>> {
    match path {
        None => Ok(None),
        Some(p) => Ok(Some(KeyringInput {
            name: p.display().to_string(),
            bytes: read_input(p, MAX_KEYRING, "keyring")?,
        })),
    }
}

fn signed_udf(udf: &Option<PathBuf>, signature: &Option<PathBuf>) -> Result<Option<SignedUdf>> {
    match (udf, signature) {
        (Some(u), Some(s)) => Ok(Some(SignedUdf {
            udf_name: u.display().to_string(),
            udf: iuk::udf::read_file(u)?,
            signature_name: s.display().to_string(),
            signature: read_input(s, MAX_SIGNATURE, "signature")?,
        })),
        (None, None) => Ok(None),
        _ => bail!("--udf and --signature go together"),
    }
}

/// Whether an interrupted apply or trust awaits `recover`: a journal, staged files, or a
/// keyring file the state does not name.
fn pending_recovery(m: &Medium) -> Result<bool, MediumError> {
    Ok(m.journal_pending()?
        || m.staging_pending()?
        || match m.read_state() {
            Ok((s, _, _)) => !keyring::stray_keyrings(m, &s)?.is_empty(),
            Err(_) => false,
        })
}

fn init_cmd(a: InitArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let opts = InitOptions {
        product: a.product,
        version: a.version,
        build_target: a.build_target,
        channel: a.channel,
        max_layers: a.max_layers,
        keyring: keyring_input(&a.keyring)?,
    };
    let r = init::init(&m, &a.iso, &opts, &mut RealFs::new(&m.root))?;
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
        if !r.key_fingerprints.is_empty() {
            println!("trusted keys: {}", r.key_fingerprints.join(", "));
        }
    }
    Ok(())
}

fn adopt_cmd(a: AdoptArgs) -> Result<()> {
    let keyring = keyring_input(&a.keyring)?;
    let m = Medium::new(&a.medium);
    let _lock = if m.kind(&m.live_file(iuk::medium::LOCK_FILE))?.is_some() {
        Some(m.lock()?)
    } else {
        None
    };
    let opts = iuk::medium::adopt::AdoptOptions {
        product: a.product,
        build_target: a.build_target,
        channel: a.channel,
        max_layers: a.max_layers,
        keyring,
    };
    let r = iuk::medium::adopt::adopt(&m, &opts, &mut RealFs::new(&m.root))?;
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
        if !r.key_fingerprints.is_empty() {
            println!("trusted keys: {}", r.key_fingerprints.join(", "));
        }
    }
    Ok(())
}

fn describe_plan(p: &Plan) -> serde_json::Value {
    serde_json::json!({
        "model": p.model,
        "product": p.product,
        "from_version": p.from_version,
        "to_version": p.to_version,
        "layer": p.layer_name,
        "legacy_tails_kit": p.legacy_tails_kit,
        "layers_after": p.new_state.layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
        "boot_files_to_write": p.writes.iter().map(|w| w.path.clone()).collect::<Vec<_>>(),
        "to_delete": p.deletes.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
        "payload_bytes": p.payload,
        "written_bytes": p.written,
        "allocated_bytes": p.allocated,
        "needed_bytes": p.needed,
        "free_bytes": p.free,
        "reinstall_bootloader": p.reinstall_bootloader,
        "warnings": p.warnings,
        "format": if matches!(p.layer, LayerWrite::Rebuild(_)) { "3" } else { "2" },
        "layer_sources": kinds_json(&p.layer_sources),
        "boot_sources": kinds_json(&p.boot_sources),
    })
}

/// Per source kind: `{"kind", "files", "bytes"}` (FORMAT 3 plans).
fn kinds_json(kinds: &[(SourceKind, KindTotals)]) -> serde_json::Value {
    kinds
        .iter()
        .map(|(k, t)| serde_json::json!({ "kind": k.name(), "files": t.files, "bytes": t.bytes }))
        .collect()
}

/// `copy 3838 files 62624946 bytes, zstd …` (FORMAT 3 plans).
fn kinds_text(kinds: &[(SourceKind, KindTotals)]) -> String {
    kinds
        .iter()
        .map(|(k, t)| format!("{} {} files {} bytes", k.name(), t.files, t.bytes))
        .collect::<Vec<_>>()
        .join(", ")
}

impl KitArgs {
    /// The options `check` and `apply` share.
    fn options(&self) -> Result<ApplyOptions> {
        Ok(ApplyOptions {
            max_layers: self.max_layers,
            kit_sha256: parse_sha(&self.sha256)?,
            udf: signed_udf(&self.udf, &self.signature)?,
            legacy_tails_kit: self.legacy_tails_kit,
            deep: self.deep,
            held_boot_max: None,
        })
    }
}

fn check_cmd(a: KitArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let opts = a.options()?;
    let plan = plan::plan(
        &m,
        &a.kit,
        &opts,
        &Bars::with_timings("iuk-apply", a.timings),
    )?;
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
                plan::Model::Stacking => "stack layer",
                plan::Model::Cumulative => "replace every diff layer with",
            },
            plan.layer_name,
            plan.from_version,
            plan.to_version,
            plan.writes.len(),
            plan.deletes.len(),
            plan.needed,
            plan.free.map(|f| format!(", {f} free")).unwrap_or_default()
        );
        if matches!(plan.layer, LayerWrite::Rebuild(_)) {
            println!(
                "FORMAT 3: the layer is rebuilt on this medium from {}",
                kinds_text(&plan.layer_sources)
            );
            if !plan.boot_sources.is_empty() {
                println!(
                    "boot files re-created from this medium's: {}",
                    kinds_text(&plan.boot_sources)
                );
            }
        }
        if plan.reinstall_bootloader {
            println!(
                "syslinux/ldlinux.c32 changes: the boot loader must be reinstalled afterwards"
            );
        }
    }
    Ok(())
}

fn recover_first(m: &Medium) -> Result<Recovery> {
    let r = recover::recover(m, &mut RealFs::new(&m.root))?;
    match r {
        Recovery::Completed => {
            eprintln!("iuk-apply: completed an interrupted apply (or trust) first")
        }
        Recovery::Discarded => {
            eprintln!("iuk-apply: discarded an interrupted apply (or trust) first")
        }
        Recovery::StaleJournalRemoved => eprintln!("iuk-apply: removed a stale journal first"),
        Recovery::Clean => {}
    }
    Ok(r)
}

fn apply_cmd(a: KitArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let opts = a.options()?;
    let _lock = m.lock()?;
    recover_first(&m)?;
    let bar = Bars::with_timings("iuk-apply", a.timings);
    let plan = plan::plan(&m, &a.kit, &opts, &bar)?;
    for w in &plan.warnings {
        eprintln!("iuk-apply: warning: {w}");
    }
    let r = apply::execute(&m, &plan, &mut RealFs::new(&m.root), &bar)
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
                plan::Model::Stacking => "stacked",
                plan::Model::Cumulative => "cumulative",
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

fn select_cmd(a: SelectArgs) -> Result<()> {
    let signed = SignedUdf {
        udf_name: a.udf.display().to_string(),
        udf: iuk::udf::read_file(&a.udf)?,
        signature_name: a.signature.display().to_string(),
        signature: read_input(&a.signature, MAX_SIGNATURE, "signature")?,
    };
    let m = Medium::new(&a.medium);
    let pending = pending_recovery(&m)?;
    if pending {
        eprintln!(
            "iuk-apply: warning: {}: an interrupted apply or trust is pending (run `iuk-apply \
             recover --medium {}`); selecting for the state as recorded now",
            a.medium.display(),
            a.medium.display()
        );
    }
    let s = signed_udf::select(&m, &signed, a.max_layers)?;
    if a.json {
        let mut v = serde_json::to_value(&s)?;
        v["pending_recovery"] = serde_json::Value::Bool(pending);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let medium = a.medium.display();
        let version = s.version.as_deref().unwrap_or("?");
        match s.outcome {
            Outcome::Incremental => println!(
                "{medium}: incremental upgrade {} -> {version} ({} kit from {})",
                s.current_version,
                s.model.as_deref().unwrap_or("?"),
                s.from_version.as_deref().unwrap_or("?")
            ),
            Outcome::Full => println!("{medium}: full upgrade {} -> {version}", s.current_version),
            Outcome::UpToDate => println!(
                "{medium}: no upgrade: {} is up to date ({})",
                s.current_version,
                s.reason.as_deref().unwrap_or("")
            ),
            Outcome::NoPath => println!(
                "{medium}: no upgrade: version {version} is offered, but no usable path ({})",
                s.reason.as_deref().unwrap_or("")
            ),
        }
        if matches!(s.outcome, Outcome::Incremental | Outcome::Full) {
            println!(
                "  type     {}",
                if s.outcome == Outcome::Full {
                    "full"
                } else {
                    "incremental"
                }
            );
            println!("  version  {version}");
            for f in &s.files {
                println!("  url      {}", f.url);
                println!("  size     {}", f.size);
                println!("  sha256   {}", f.sha256);
            }
            if let Some(d) = &s.details_url {
                println!("  details  {d}");
            }
            if let Some(r) = &s.reason {
                println!("  because  {r}");
            }
        }
        println!("  {}", s.signature);
    }
    if matches!(s.outcome, Outcome::UpToDate | Outcome::NoPath) {
        let _ = std::io::stdout().flush();
        std::process::exit(3);
    }
    Ok(())
}

fn trust_cmd(a: TrustArgs) -> Result<()> {
    let new = KeyringInput {
        name: a.keyring.display().to_string(),
        bytes: read_input(&a.keyring, MAX_KEYRING, "keyring")?,
    };
    let sig = read_input(&a.signature, MAX_SIGNATURE, "signature")?;
    let m = Medium::new(&a.medium);
    let _lock = m.lock()?;
    recover_first(&m)?;
    let r = keyring::rotate(
        &m,
        &new,
        &a.signature.display().to_string(),
        &sig,
        &mut RealFs::new(&m.root),
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if !r.changed {
        println!(
            "{}: {} is the keyring trusted already; nothing changed",
            a.medium.display(),
            a.keyring.display()
        );
    } else {
        println!(
            "{}: now trusts {} key(s) (live/{}), signed by {}",
            a.medium.display(),
            r.fingerprints.len(),
            r.new_keyring,
            r.signed_by
        );
        for f in &r.added {
            println!("  added    {f}");
        }
        for f in &r.removed {
            println!("  removed  {f}");
        }
    }
    Ok(())
}

fn recover_cmd(a: MediumArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let _lock = m.lock()?;
    let r = recover::recover(&m, &mut RealFs::new(&m.root))?;
    println!(
        "{}: {}",
        a.medium.display(),
        match r {
            Recovery::Clean => "nothing to recover",
            Recovery::Completed => "completed the interrupted apply or trust (new version)",
            Recovery::Discarded => "discarded the interrupted apply or trust (old version)",
            Recovery::StaleJournalRemoved => "removed a stale journal",
        }
    );
    Ok(())
}

fn status_cmd(a: StatusArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    let (s, _, _) = m.read_state()?;
    let pending = pending_recovery(&m)?;
    let free = plan::free_space(&a.medium)?;
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
            "keyring": s.keyring,
            "key_fingerprints": s.key_fingerprints,
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
    if s.key_fingerprints.is_empty() {
        println!("trusted keys     none: unsigned kits are accepted");
    } else {
        println!("trusted keys     {}", s.key_fingerprints.join(", "));
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
            "PENDING          an interrupted apply or trust: run `iuk-apply recover --medium {}`",
            a.medium.display()
        );
    }
    Ok(())
}

fn verify_cmd(a: VerifyArgs) -> Result<()> {
    let m = Medium::new(&a.medium);
    if pending_recovery(&m)? {
        return Err(MediumError::PendingRecovery(a.medium.clone()).into());
    }
    let (s, _, _) = m.read_state()?;
    m.check_consistent(&s, a.deep)?;
    if a.deep {
        iuk::medium::stack::verify_trees(&m, &s, &Bars::new("iuk-apply"))?;
    } else {
        iuk::medium::stack::check_images(&m, &s)?;
    }
    let keys = keyring::trusted_keyring(&m, &s)?;
    println!(
        "{}: {} {} verified ({} layers{}{})",
        a.medium.display(),
        s.product,
        s.current_version,
        s.layers.len(),
        if a.deep {
            ", every layer and boot file hashed, base and stacked tree digests"
        } else {
            ", names, sizes and image tables"
        },
        keys.map(|_| format!(", {} trusted key(s)", s.key_fingerprints.len()))
            .unwrap_or_default()
    );
    Ok(())
}
