//! Rebuilding a published kit from the two releases and checking that the bytes are identical
//! (`iuk-build rebuild`; DESIGN.md, "Rebuilders").
//!
//! 1. Open the kit and read `FORMAT` and control.yml. Refuse what this program cannot
//!    reproduce: a FORMAT other than [`kit::FORMAT`], a `generator` other than `iuk`, a
//!    `writer-format` other than [`WRITER_FORMAT_VERSION`] (the writer format fixes the bytes;
//!    the program version does not matter).
//! 2. Check the inputs' identity: the sha256 of each ISO against the one control.yml records.
//!    A kit records both, so a kit built from other inputs can never be identical: on a
//!    mismatch nothing is rebuilt. A kit built from a directory records `null`: its identity
//!    cannot be checked, only the rebuilt bytes can.
//! 3. Build again with every parameter control.yml records (product, versions, build target,
//!    layer name, layer parameters, sort file, epoch) into a temporary directory (or `keep`),
//!    then compare the bytes; when they differ, [`compare::compare_files`] says where.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml_ng::Value;

use crate::build::{build, BuildError, BuildOptions};
use crate::compare::{self, CompareError, Comparison};
use crate::kit::{self, Control, KitError, GENERATOR, MAX_CONTROL};
use crate::progress::Progress;
use crate::release::{Release, ReleaseError};
use crate::squashfs::archive::Archive;
use crate::squashfs::write::WRITER_FORMAT_VERSION;
use crate::tree::hex;

/// Errors of a rebuild: the kit or an input cannot be read, or the kit is refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The kit is not a kit this program can rebuild, or the request is invalid.
    #[error("{0}")]
    Refused(String),
    /// The kit cannot be read.
    #[error("{path}: {source}")]
    Kit {
        /// The kit.
        path: String,
        /// The error.
        source: KitError,
    },
    /// An input release cannot be read.
    #[error("{0}")]
    Release(#[from] ReleaseError),
    /// The build failed.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The comparison failed.
    #[error("{0}")]
    Compare(#[from] CompareError),
    /// An I/O error on the kit or a temporary file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// How one input compares with what the kit records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputStatus {
    /// An ISO whose sha256 is the recorded one.
    Matches,
    /// An ISO whose sha256 is not the recorded one.
    Differs,
    /// A directory, and the kit was built from a directory (`iso-sha256: null`): not checkable.
    Unchecked,
    /// A directory where the kit was built from an ISO, or the reverse.
    WrongKind,
}

/// The identity check of one input.
#[derive(Clone, Debug, Serialize)]
pub struct InputCheck {
    /// `old` or `new`.
    pub role: &'static str,
    /// The input as given.
    pub path: String,
    /// What control.yml records (`None`: built from a directory).
    pub recorded_sha256: Option<String>,
    /// The input's sha256 (`None`: a directory).
    pub actual_sha256: Option<String>,
    /// The verdict.
    pub status: InputStatus,
    /// The verdict in words.
    pub message: String,
}

/// The outcome of a rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The rebuilt kit has the same bytes.
    Identical,
    /// The rebuilt kit differs (see the comparison).
    Different,
    /// The inputs are not the ones the kit was built from; nothing was rebuilt.
    WrongInputs,
}

/// What `rebuild` found, for the text output and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct RebuildReport {
    /// The kit checked.
    pub kit: String,
    /// Its sha256.
    pub kit_sha256: String,
    /// Product, from control.yml.
    pub product: String,
    /// Build target, from control.yml.
    pub build_target: String,
    /// From-version, from control.yml.
    pub from_version: String,
    /// To-version, from control.yml.
    pub to_version: String,
    /// Layer name, from control.yml.
    pub layer: String,
    /// Writer format version, from control.yml.
    pub writer_format: u32,
    /// The identity checks of both inputs.
    pub inputs: Vec<InputCheck>,
    /// The outcome.
    pub verdict: Verdict,
    /// sha256 of the rebuilt kit (absent when nothing was rebuilt).
    pub rebuilt_sha256: Option<String>,
    /// Where the rebuilt kit was kept (absent: it was a temporary file, now removed).
    pub kept: Option<String>,
    /// Where and why the bytes differ (only for [`Verdict::Different`]).
    pub comparison: Option<Comparison>,
}

/// What a rebuild needs besides the kit and the inputs.
#[derive(Clone, Debug, Default)]
pub struct RebuildOptions {
    /// Threads for hashing and compression; never changes the bytes.
    pub jobs: usize,
    /// Keep the rebuilt kit here (default: a temporary directory, removed afterwards).
    pub keep: Option<PathBuf>,
}

fn refuse(msg: impl Into<String>) -> RebuildError {
    RebuildError::Refused(msg.into())
}

/// A kit's FORMAT and control.yml, read without assuming they are valid.
struct KitFiles {
    format: Vec<u8>,
    control_text: String,
}

fn read_kit(path: &Path) -> Result<KitFiles, RebuildError> {
    let name = path.display().to_string();
    let kit_err = |e: KitError| RebuildError::Kit {
        path: name.clone(),
        source: e,
    };
    // Archive errors already name the file.
    let archive = Archive::open(path).map_err(|e| refuse(e.to_string()))?;
    let tree = archive.read_tree().map_err(|e| refuse(e.to_string()))?;
    let format = kit::small_file(&tree, "FORMAT", 64).map_err(kit_err)?;
    let control = kit::small_file(&tree, "control.yml", MAX_CONTROL).map_err(kit_err)?;
    let control_text = String::from_utf8(control)
        .map_err(|_| kit_err(KitError::Invalid("control.yml is not UTF-8".into())))?;
    Ok(KitFiles {
        format,
        control_text,
    })
}

/// Reads and checks what a rebuild needs from a kit's control.yml: refuses a FORMAT, generator
/// or writer format this program does not reproduce, with a message saying why.
pub fn rebuildable_control(kit_path: &Path) -> Result<Control, RebuildError> {
    let k = read_kit(kit_path)?;
    let name = kit_path.display();
    if k.format != kit::FORMAT.as_bytes() && k.format != kit::FORMAT_DELTA.as_bytes() {
        return Err(refuse(format!(
            "{name}: kit FORMAT {:?}: this iuk rebuilds FORMAT {} and {} kits only",
            String::from_utf8_lossy(&k.format),
            kit::FORMAT,
            kit::FORMAT_DELTA
        )));
    }
    let v: Value = crate::yaml::parse(&k.control_text)
        .map_err(|e| refuse(format!("{name}: control.yml: {e}")))?;
    match v.get("generator") {
        None => {
            return Err(refuse(format!(
                "{name}: control.yml has no generator key: the kit was not made by iuk \
                 (only kits made by iuk can be rebuilt)"
            )))
        }
        Some(g) if g.as_str() != Some(GENERATOR) => {
            let shown = g.as_str().map_or_else(
                || {
                    serde_yaml_ng::to_string(g)
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                },
                |s| format!("{s:?}"),
            );
            return Err(refuse(format!(
                "{name}: made by generator {shown}, not {GENERATOR:?}: only kits made by iuk \
                 can be rebuilt"
            )));
        }
        Some(_) => {}
    }
    match v.get("writer-format").map(|w| w.as_u64()) {
        None => {
            return Err(refuse(format!(
                "{name}: control.yml has no writer-format: cannot tell how its bytes were written"
            )))
        }
        Some(None) => {
            return Err(refuse(format!(
                "{name}: control.yml: writer-format is not a whole number"
            )))
        }
        Some(Some(w)) if w != WRITER_FORMAT_VERSION as u64 => {
            return Err(refuse(format!(
                "{name}: written with writer format {w}; this iuk implements writer format \
                 {WRITER_FORMAT_VERSION} only: rebuild it with an iuk that implements writer \
                 format {w}"
            )))
        }
        Some(Some(_)) => {}
    }
    let control = Control::from_yaml(&k.control_text).map_err(|e| RebuildError::Kit {
        path: name.to_string(),
        source: e,
    })?;
    if control.format().as_bytes() != k.format.as_slice() {
        return Err(refuse(format!(
            "{name}: FORMAT {:?} but control.yml {} a recipe: a damaged kit",
            String::from_utf8_lossy(&k.format),
            if control.recipe.is_some() {
                "has"
            } else {
                "has no"
            }
        )));
    }
    Ok(control)
}

fn check_input(
    role: &'static str,
    path: &Path,
    recorded: Option<&str>,
) -> Result<InputCheck, RebuildError> {
    let release = Release::open(path)?;
    let actual = release.iso_sha256()?.map(|h| hex(&h));
    let (status, message) = match (recorded, actual.as_deref()) {
        (Some(r), Some(a)) if r == a => (
            InputStatus::Matches,
            format!("sha256 {a}, as the kit records"),
        ),
        (Some(r), Some(a)) => (
            InputStatus::Differs,
            format!("sha256 {a}, but the kit was built from an ISO with sha256 {r}"),
        ),
        (None, None) => (
            InputStatus::Unchecked,
            "a directory, as the kit's input was (iso-sha256: null): its identity cannot be \
             checked, only the rebuilt bytes can"
                .to_string(),
        ),
        (Some(r), None) => (
            InputStatus::WrongKind,
            format!(
                "a directory, but the kit was built from an ISO with sha256 {r}: give that ISO"
            ),
        ),
        (None, Some(a)) => (
            InputStatus::WrongKind,
            format!(
                "an ISO (sha256 {a}), but the kit was built from a directory \
                 (iso-sha256: null): give the extracted directory it was built from"
            ),
        ),
    };
    Ok(InputCheck {
        role,
        path: path.display().to_string(),
        recorded_sha256: recorded.map(str::to_string),
        actual_sha256: actual,
        status,
        message,
    })
}

/// A private temporary directory, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for n in 0..1000u32 {
            let p = base.join(format!("iuk-rebuild-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no temporary directory name left")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha256_file(path: &Path) -> Result<String, RebuildError> {
    use sha2::{Digest, Sha256};
    let io_err = |e| RebuildError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(io_err)?;
    Ok(hex(&h.finalize()))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Rebuilds `kit_path` from `old` and `new` with the parameters its control.yml records and
/// reports whether the bytes are identical (see the module doc).
pub fn rebuild(
    kit_path: &Path,
    old: &Path,
    new: &Path,
    opts: &RebuildOptions,
    progress: &dyn Progress,
) -> Result<RebuildReport, RebuildError> {
    progress.phase("reading kit", 0);
    let control = rebuildable_control(kit_path)?;
    if let Some(k) = &opts.keep {
        for (what, p) in [("the kit", kit_path), ("--old", old), ("--new", new)] {
            if same_file(k, p) {
                return Err(refuse(format!(
                    "{}: --keep would overwrite {what}",
                    k.display()
                )));
            }
        }
    }
    let jobs = opts.jobs.max(1);
    let layer = control
        .layer_params
        .to_writer(jobs)
        .map_err(|e| RebuildError::Kit {
            path: kit_path.display().to_string(),
            source: e,
        })?;
    let kit_sha256 = sha256_file(kit_path)?;
    let mut report = RebuildReport {
        kit: kit_path.display().to_string(),
        kit_sha256: kit_sha256.clone(),
        product: control.product.clone(),
        build_target: control.build_target.clone(),
        from_version: control.from_version.clone(),
        to_version: control.to_version.clone(),
        layer: control.layer.clone(),
        writer_format: control.writer_format,
        inputs: Vec::new(),
        verdict: Verdict::WrongInputs,
        rebuilt_sha256: None,
        kept: None,
        comparison: None,
    };

    progress.phase("checking inputs", 0);
    report.inputs = vec![
        check_input("old", old, control.old_iso_sha256.as_deref())?,
        check_input("new", new, control.new_iso_sha256.as_deref())?,
    ];
    if report
        .inputs
        .iter()
        .any(|i| matches!(i.status, InputStatus::Differs | InputStatus::WrongKind))
    {
        return Ok(report);
    }

    let build_opts = BuildOptions {
        product: Some(control.product.clone()),
        from_version: Some(control.from_version.clone()),
        to_version: Some(control.to_version.clone()),
        build_target: control.build_target.clone(),
        layer_name: Some(control.layer.clone()),
        layer,
        sort_text: control.layer_params.sort_file.clone(),
        deltas: control.recipe.is_some(),
    };
    let temp;
    let out: PathBuf = match &opts.keep {
        Some(k) => k.clone(),
        None => {
            temp = TempDir::new().map_err(|e| RebuildError::Io {
                path: std::env::temp_dir(),
                source: e,
            })?;
            temp.0.join("rebuilt.iuk")
        }
    };
    let built = build(old, new, Some(&out), &build_opts, progress)?;
    report.rebuilt_sha256 = Some(built.kit_sha256.clone());
    if opts.keep.is_some() {
        report.kept = Some(out.display().to_string());
    }
    if built.kit_sha256 == kit_sha256 {
        report.verdict = Verdict::Identical;
        return Ok(report);
    }
    progress.phase("comparing", 0);
    report.verdict = Verdict::Different;
    let mut c = compare::compare_files(kit_path, &out)?;
    if opts.keep.is_none() {
        c.b.path = "<rebuilt kit, removed>".to_string();
    }
    report.comparison = Some(c);
    Ok(report)
}
