//! Upgrade description files (UDF), Tails' version 2 schema: reading, deterministic writing, and
//! choosing the upgrade path a device takes.
//!
//! A UDF is addressed by product, initial-install version, build target and channel
//! (`upgrade/v2/<product>/<initial-install-version>/<build-target>/<channel>/upgrades.yml`) and
//! lists upgrades, each with upgrade paths (`full`: an installation image; `incremental`: a kit)
//! and their target files (URL, size, sha256). Our one extension: an incremental path may carry
//! `from-version`, the version its kit upgrades from; without it the kit is cumulative from the
//! initial-install version (what Tails' devices take, since they ignore the key).
//!
//! Reading follows Tails' parser: unknown keys are ignored, versions are strings — a version
//! written as a YAML number (`version: 6.10`) keeps its text (`"6.10"`, never the float 6.1).
//! Writing is deterministic: keys in alphabetical order at every level (the order Tails' own
//! YAML dump gives), every string double-quoted ([`crate::kit::quote`]), numbers plain, lists in
//! block style.

use std::cmp::Ordering;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::kit::{quote, Kit, KitError};
use crate::tree::hex;
use crate::version::{compare, is_safe_name};

/// Largest UDF accepted when reading (Tails' real ones are well under 4 KiB).
pub const MAX_UDF: usize = 1 << 20;

/// Largest number of upgrades, of paths in one upgrade, and of files in one path.
pub const MAX_ENTRIES: usize = 1024;

/// Errors reading a UDF.
#[derive(Debug, thiserror::Error)]
pub enum UdfError {
    /// The text is not a valid UDF.
    #[error("upgrade description file: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> UdfError {
    UdfError::Invalid(msg.into())
}

/// An upgrade description file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udf {
    /// `build-target` (`amd64`).
    pub build_target: String,
    /// `channel` (`stable`, `alpha`, …).
    pub channel: String,
    /// `initial-install-version`: the devices this UDF is for were first installed at it.
    pub initial_install_version: String,
    /// `product-name` (`Tails`).
    pub product_name: String,
    /// `upgrades`, in the file's order.
    pub upgrades: Vec<Upgrade>,
}

/// One upgrade: a version offered, and the ways to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// `details-url`: the release notes.
    pub details_url: Option<String>,
    /// `type`.
    pub kind: UpgradeType,
    /// `upgrade-paths`, in the file's order.
    pub upgrade_paths: Vec<UpgradePath>,
    /// `version` upgraded to.
    pub version: String,
}

/// An upgrade's `type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeType {
    /// `major`.
    Major,
    /// `minor`.
    Minor,
    /// Any other value, kept as written.
    Other(String),
}

/// One way to reach an upgrade's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradePath {
    /// `from-version` (our extension, incremental paths only): the version the kit upgrades
    /// from; `None` for a kit cumulative from the initial-install version.
    pub from_version: Option<String>,
    /// `target-files`: what to download.
    pub target_files: Vec<TargetFile>,
    /// `type`.
    pub kind: PathType,
}

/// An upgrade path's `type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathType {
    /// `full`: a new installation image.
    Full,
    /// `incremental`: an upgrade kit.
    Incremental,
    /// Any other value, kept as written and never selected (Tails' parser ignores it too).
    Other(String),
}

/// A file to download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetFile {
    /// `sha256`, lower-case hex.
    pub sha256: String,
    /// `size` in bytes.
    pub size: u64,
    /// `url`.
    pub url: String,
}

impl UpgradeType {
    /// The value as written in a UDF.
    pub fn as_str(&self) -> &str {
        match self {
            UpgradeType::Major => "major",
            UpgradeType::Minor => "minor",
            UpgradeType::Other(s) => s,
        }
    }

    /// Parses a value (`major`, `minor`, anything else kept as [`UpgradeType::Other`]).
    pub fn parse(s: &str) -> UpgradeType {
        match s {
            "major" => UpgradeType::Major,
            "minor" => UpgradeType::Minor,
            other => UpgradeType::Other(other.to_string()),
        }
    }
}

impl PathType {
    /// The value as written in a UDF.
    pub fn as_str(&self) -> &str {
        match self {
            PathType::Full => "full",
            PathType::Incremental => "incremental",
            PathType::Other(s) => s,
        }
    }

    /// Parses a value (`full`, `incremental`, anything else kept as [`PathType::Other`]).
    pub fn parse(s: &str) -> PathType {
        match s {
            "full" => PathType::Full,
            "incremental" => PathType::Incremental,
            other => PathType::Other(other.to_string()),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Reading

// The raw shapes. Every string field is a `String`: serde_yaml_ng hands a `String` the scalar's
// own text whatever it looks like (`6.10` stays "6.10"), and unknown keys are skipped.

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawUdf {
    build_target: Option<String>,
    channel: Option<String>,
    initial_install_version: Option<String>,
    product_name: Option<String>,
    #[serde(default)]
    upgrades: Option<Vec<RawUpgrade>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawUpgrade {
    version: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    details_url: Option<String>,
    #[serde(default)]
    upgrade_paths: Option<Vec<RawPath>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawPath {
    #[serde(rename = "type")]
    kind: Option<String>,
    from_version: Option<String>,
    target_files: Option<Vec<RawFile>>,
}

#[derive(Deserialize)]
struct RawFile {
    url: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
}

fn required(v: Option<String>, what: &str) -> Result<String, UdfError> {
    v.ok_or_else(|| invalid(format!("{what} is missing")))
}

fn safe(v: String, what: &str) -> Result<String, UdfError> {
    if is_safe_name(&v) {
        Ok(v)
    } else {
        Err(invalid(format!(
            "{what} {v:?} is not a valid name (letters, digits and ._+~- only)"
        )))
    }
}

fn bounded<T>(list: Vec<T>, what: &str) -> Result<Vec<T>, UdfError> {
    if list.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "{what}: {} entries, more than {MAX_ENTRIES}",
            list.len()
        )));
    }
    Ok(list)
}

impl Udf {
    /// Parses a UDF's bytes (at most [`MAX_UDF`], UTF-8, YAML).
    pub fn from_bytes(bytes: &[u8]) -> Result<Udf, UdfError> {
        if bytes.len() > MAX_UDF {
            return Err(invalid(format!(
                "{} bytes, more than {MAX_UDF}",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8"))?;
        Udf::from_yaml(text)
    }

    /// Parses a UDF's text.
    pub fn from_yaml(text: &str) -> Result<Udf, UdfError> {
        if text.len() > MAX_UDF {
            return Err(invalid(format!(
                "{} bytes, more than {MAX_UDF}",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Err(invalid("empty"));
        }
        let raw: RawUdf = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut upgrades = Vec::new();
        for (i, u) in bounded(raw.upgrades.unwrap_or_default(), "upgrades")?
            .into_iter()
            .enumerate()
        {
            let at = format!("upgrades[{i}]");
            let version = safe(
                required(u.version, &format!("{at}: version"))?,
                &format!("{at}: version"),
            )?;
            let mut paths = Vec::new();
            for (j, p) in bounded(
                u.upgrade_paths.unwrap_or_default(),
                &format!("{at}: upgrade-paths"),
            )?
            .into_iter()
            .enumerate()
            {
                let at = format!("{at}: upgrade-paths[{j}]");
                let kind = PathType::parse(&required(p.kind, &format!("{at}: type"))?);
                let from_version = match p.from_version {
                    Some(v) => Some(safe(v, &format!("{at}: from-version"))?),
                    None => None,
                };
                if from_version.is_some() && kind != PathType::Incremental {
                    return Err(invalid(format!(
                        "{at}: from-version on a {} path (incremental paths only)",
                        kind.as_str()
                    )));
                }
                let mut files = Vec::new();
                let raw_files = p
                    .target_files
                    .ok_or_else(|| invalid(format!("{at}: target-files is missing")))?;
                for (k, f) in bounded(raw_files, &format!("{at}: target-files"))?
                    .into_iter()
                    .enumerate()
                {
                    let at = format!("{at}: target-files[{k}]");
                    let url = required(f.url, &format!("{at}: url"))?;
                    if url.is_empty() {
                        return Err(invalid(format!("{at}: url is empty")));
                    }
                    let size = f
                        .size
                        .ok_or_else(|| invalid(format!("{at}: size is missing")))?;
                    let sha256 = required(f.sha256, &format!("{at}: sha256"))?;
                    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(invalid(format!(
                            "{at}: sha256 {sha256:?} is not 64 hex digits"
                        )));
                    }
                    files.push(TargetFile {
                        sha256: sha256.to_ascii_lowercase(),
                        size,
                        url,
                    });
                }
                paths.push(UpgradePath {
                    from_version,
                    target_files: files,
                    kind,
                });
            }
            upgrades.push(Upgrade {
                details_url: u.details_url,
                kind: UpgradeType::parse(&u.kind.unwrap_or_default()),
                upgrade_paths: paths,
                version,
            });
        }
        Ok(Udf {
            build_target: safe(required(raw.build_target, "build-target")?, "build-target")?,
            channel: safe(required(raw.channel, "channel")?, "channel")?,
            initial_install_version: safe(
                required(raw.initial_install_version, "initial-install-version")?,
                "initial-install-version",
            )?,
            product_name: safe(required(raw.product_name, "product-name")?, "product-name")?,
            upgrades,
        })
    }

    // --------------------------------------------------------------------------------------------
    // Writing

    /// The deterministic YAML text (see the module doc).
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        y.push_str("build-target: ");
        y.push_str(&quote(&self.build_target));
        y.push_str("\nchannel: ");
        y.push_str(&quote(&self.channel));
        y.push_str("\ninitial-install-version: ");
        y.push_str(&quote(&self.initial_install_version));
        y.push_str("\nproduct-name: ");
        y.push_str(&quote(&self.product_name));
        y.push('\n');
        if self.upgrades.is_empty() {
            y.push_str("upgrades: []\n");
            return y;
        }
        y.push_str("upgrades:\n");
        for u in &self.upgrades {
            let mut first = true;
            let mut key = |y: &mut String, k: &str| {
                y.push_str(if first { "- " } else { "  " });
                first = false;
                y.push_str(k);
                y.push(':');
            };
            if let Some(d) = &u.details_url {
                key(&mut y, "details-url");
                y.push(' ');
                y.push_str(&quote(d));
                y.push('\n');
            }
            key(&mut y, "type");
            y.push(' ');
            y.push_str(&quote(u.kind.as_str()));
            y.push('\n');
            key(&mut y, "upgrade-paths");
            if u.upgrade_paths.is_empty() {
                y.push_str(" []\n");
            } else {
                y.push('\n');
                for p in &u.upgrade_paths {
                    let mut first = true;
                    let mut key = |y: &mut String, k: &str| {
                        y.push_str(if first { "  - " } else { "    " });
                        first = false;
                        y.push_str(k);
                        y.push(':');
                    };
                    if let Some(f) = &p.from_version {
                        key(&mut y, "from-version");
                        y.push(' ');
                        y.push_str(&quote(f));
                        y.push('\n');
                    }
                    key(&mut y, "target-files");
                    if p.target_files.is_empty() {
                        y.push_str(" []\n");
                    } else {
                        y.push('\n');
                        for f in &p.target_files {
                            y.push_str("    - sha256: ");
                            y.push_str(&quote(&f.sha256));
                            y.push_str("\n      size: ");
                            y.push_str(&f.size.to_string());
                            y.push_str("\n      url: ");
                            y.push_str(&quote(&f.url));
                            y.push('\n');
                        }
                    }
                    key(&mut y, "type");
                    y.push(' ');
                    y.push_str(&quote(p.kind.as_str()));
                    y.push('\n');
                }
            }
            key(&mut y, "version");
            y.push(' ');
            y.push_str(&quote(&u.version));
            y.push('\n');
        }
        y
    }
}

// ------------------------------------------------------------------------------------------------
// Describing (`iuk-build describe`)

/// Errors making a UDF from kits.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// A kit cannot be opened.
    #[error("{}: {source}", path.display())]
    Kit {
        /// The kit.
        path: PathBuf,
        /// The error.
        source: KitError,
    },
    /// A file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The inputs do not make a valid UDF.
    #[error("{0}")]
    Refused(String),
}

/// A file offered for download: its local copy and its URL.
#[derive(Clone, Debug)]
pub struct Offered {
    /// The local file (its size and sha256 are computed from it).
    pub path: PathBuf,
    /// Where devices download it.
    pub url: String,
}

/// What `iuk-build describe` makes a UDF from.
#[derive(Clone, Debug)]
pub struct DescribeInput {
    /// Product name.
    pub product: String,
    /// Build target.
    pub build_target: String,
    /// Channel.
    pub channel: String,
    /// The initial-install version of the devices addressed.
    pub initial_install_version: String,
    /// The version offered.
    pub version: String,
    /// The upgrade's type.
    pub kind: UpgradeType,
    /// The release notes' URL.
    pub details_url: Option<String>,
    /// Kits to the version offered.
    pub kits: Vec<Offered>,
    /// The installation image of the version offered (a full upgrade path).
    pub full: Option<Offered>,
}

fn file_digest(path: &Path) -> Result<(u64, String), DescribeError> {
    let io = |source| DescribeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex(&h.finalize())))
}

/// Makes the UDF for devices first installed at `initial_install_version`, offering `version`
/// (DESIGN.md, "Trust"). Each kit's product, build target and versions come from its
/// control.yml; size and sha256 from its bytes. The kit from the initial-install version (the
/// cumulative kit, FORMAT 2 only: Tails devices take the first incremental path) is listed first
/// without `from-version`; the stacking kits follow with their `from-version`, newest first;
/// then the full path. Refused: a kit for another product or build target, or to another
/// version; two kits from one version; incremental paths without a cumulative kit.
pub fn describe(input: &DescribeInput) -> Result<Udf, DescribeError> {
    let refuse = |m: String| DescribeError::Refused(m);
    for (what, v) in [
        ("product", &input.product),
        ("build target", &input.build_target),
        ("channel", &input.channel),
        ("initial-install version", &input.initial_install_version),
        ("version", &input.version),
    ] {
        if !is_safe_name(v) {
            return Err(refuse(format!(
                "{what} {v:?} is not a valid name (letters, digits and ._+~- only)"
            )));
        }
    }
    if compare(&input.version, &input.initial_install_version) != Ordering::Greater {
        return Err(refuse(format!(
            "version {} is not newer than the initial-install version {}",
            input.version, input.initial_install_version
        )));
    }
    if input.kits.is_empty() && input.full.is_none() {
        return Err(refuse(
            "nothing to offer: give --kit (with --kit-url) or --iso (with --iso-url)".into(),
        ));
    }
    let mut cumulative: Option<UpgradePath> = None;
    let mut stacking: Vec<(String, UpgradePath)> = Vec::new();
    for k in &input.kits {
        let kit = Kit::open(&k.path).map_err(|source| DescribeError::Kit {
            path: k.path.clone(),
            source,
        })?;
        let c = &kit.control;
        let name = k.path.display();
        if c.product != input.product {
            return Err(refuse(format!(
                "{name}: a kit for product {}, not {}",
                c.product, input.product
            )));
        }
        if c.build_target != input.build_target {
            return Err(refuse(format!(
                "{name}: a kit for build target {}, not {}",
                c.build_target, input.build_target
            )));
        }
        if c.to_version != input.version {
            return Err(refuse(format!(
                "{name}: a kit to version {}, not {}",
                c.to_version, input.version
            )));
        }
        if compare(&c.from_version, &input.initial_install_version) == Ordering::Less {
            return Err(refuse(format!(
                "{name}: a kit from version {}, older than the initial-install version {}",
                c.from_version, input.initial_install_version
            )));
        }
        if compare(&c.from_version, &c.to_version) != Ordering::Less {
            return Err(refuse(format!(
                "{name}: a kit from version {} to {} is no upgrade",
                c.from_version, c.to_version
            )));
        }
        if k.url.is_empty() {
            return Err(refuse(format!("{name}: empty URL")));
        }
        let (size, sha256) = file_digest(&k.path)?;
        let from_base = c.from_version == input.initial_install_version;
        let path = UpgradePath {
            from_version: (!from_base).then(|| c.from_version.clone()),
            target_files: vec![TargetFile {
                sha256,
                size,
                url: k.url.clone(),
            }],
            kind: PathType::Incremental,
        };
        let duplicate = || {
            refuse(format!(
                "{name}: a second kit from version {}",
                c.from_version
            ))
        };
        if from_base {
            if kit.format != crate::kit::FORMAT {
                return Err(refuse(format!(
                    "{name}: the kit from the initial-install version {} is FORMAT {:?}; Tails' \
                     installer, which takes it, supports FORMAT {} only",
                    c.from_version,
                    kit.format,
                    crate::kit::FORMAT
                )));
            }
            if cumulative.is_some() {
                return Err(duplicate());
            }
            cumulative = Some(path);
        } else {
            if stacking.iter().any(|(f, _)| *f == c.from_version) {
                return Err(duplicate());
            }
            stacking.push((c.from_version.clone(), path));
        }
    }
    let mut paths = Vec::new();
    match cumulative {
        Some(c) => paths.push(c),
        None if !stacking.is_empty() => {
            return Err(refuse(format!(
                "no kit from the initial-install version {}: Tails devices ignore from-version \
                 and would install a stacking kit as if it were cumulative; add the kit from {}",
                input.initial_install_version, input.initial_install_version
            )))
        }
        None => {}
    }
    stacking.sort_by(|a, b| compare(&b.0, &a.0));
    paths.extend(stacking.into_iter().map(|(_, p)| p));
    if let Some(f) = &input.full {
        if f.url.is_empty() {
            return Err(refuse(format!("{}: empty URL", f.path.display())));
        }
        let (size, sha256) = file_digest(&f.path)?;
        paths.push(UpgradePath {
            from_version: None,
            target_files: vec![TargetFile {
                sha256,
                size,
                url: f.url.clone(),
            }],
            kind: PathType::Full,
        });
    }
    Ok(Udf {
        build_target: input.build_target.clone(),
        channel: input.channel.clone(),
        initial_install_version: input.initial_install_version.clone(),
        product_name: input.product.clone(),
        upgrades: vec![Upgrade {
            details_url: input.details_url.clone(),
            kind: input.kind.clone(),
            upgrade_paths: paths,
            version: input.version.clone(),
        }],
    })
}

// ------------------------------------------------------------------------------------------------
// Selecting

/// What a device knows about itself (from its state), to choose an upgrade path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device<'a> {
    /// Product name.
    pub product: &'a str,
    /// Build target.
    pub build_target: &'a str,
    /// Channel.
    pub channel: &'a str,
    /// The initial-install (base) version.
    pub base_version: &'a str,
    /// The running version.
    pub current_version: &'a str,
}

/// How a selected kit is applied (DESIGN.md, "The medium").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// The kit upgrades from the current version: its layer is appended to the stack.
    Stacking,
    /// The kit upgrades from the base version: its layer replaces every diff layer.
    Cumulative,
}

/// The outcome of [`select_path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection<'a> {
    /// A kit to apply.
    Incremental {
        /// The upgrade offered (version, type, details URL).
        upgrade: &'a Upgrade,
        /// The path chosen.
        path: &'a UpgradePath,
        /// How it applies.
        model: Model,
    },
    /// No kit applies: a new installation image is offered instead.
    Full {
        /// The upgrade offered.
        upgrade: &'a Upgrade,
        /// The full path.
        path: &'a UpgradePath,
        /// Why no kit was chosen.
        reason: String,
    },
    /// The UDF is not addressed to this device (product, build target, channel or
    /// initial-install version differs).
    NotForDevice {
        /// What differs.
        reason: String,
    },
    /// No version newer than the current one is offered.
    UpToDate,
    /// A newer version is offered, but by no path this device can take.
    NoPath {
        /// The version offered.
        version: &'a str,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Selection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::Incremental {
                upgrade,
                path,
                model,
            } => {
                let from = path.from_version.as_deref().unwrap_or("the base version");
                let how = match model {
                    Model::Stacking => "stacking",
                    Model::Cumulative => "cumulative",
                };
                write!(
                    f,
                    "incremental upgrade to {} ({how} kit from {from})",
                    upgrade.version
                )
            }
            Selection::Full {
                upgrade, reason, ..
            } => write!(f, "full upgrade to {} ({reason})", upgrade.version),
            Selection::NotForDevice { reason } => {
                write!(
                    f,
                    "the upgrade description is not for this device: {reason}"
                )
            }
            Selection::UpToDate => write!(f, "no newer version offered: up to date"),
            Selection::NoPath { version, reason } => {
                write!(
                    f,
                    "version {version} offered, but no usable upgrade path: {reason}"
                )
            }
        }
    }
}

/// Chooses the upgrade path a device takes (DESIGN.md, "Trust").
///
/// The UDF must match the device's product, build target, channel and base (initial-install)
/// version. Among the upgrades to versions newer than the current one (Debian order), the
/// newest (the first listed among equals); within it, the incremental path whose `from-version`
/// equals the current version (stacking), else the one from the base (no `from-version`, or
/// the base version: cumulative), else the full upgrade; among equal candidates the first
/// listed wins. `max_layers_ok` is false when one more diff layer would exceed the device's
/// maximum: then the cumulative kit is preferred over the stacking one, and without it the
/// full upgrade.
pub fn select_path<'a>(udf: &'a Udf, device: &Device<'_>, max_layers_ok: bool) -> Selection<'a> {
    let checks = [
        ("product-name", &udf.product_name, device.product),
        ("build-target", &udf.build_target, device.build_target),
        ("channel", &udf.channel, device.channel),
        (
            "initial-install-version",
            &udf.initial_install_version,
            device.base_version,
        ),
    ];
    for (key, theirs, ours) in checks {
        if theirs != ours {
            return Selection::NotForDevice {
                reason: format!("{key} is {theirs:?}, the device's is {ours:?}"),
            };
        }
    }
    let mut newest: Option<&Upgrade> = None;
    for u in &udf.upgrades {
        if compare(&u.version, device.current_version) != Ordering::Greater {
            continue;
        }
        if newest.is_none_or(|n| compare(&u.version, &n.version) == Ordering::Greater) {
            newest = Some(u);
        }
    }
    let Some(upgrade) = newest else {
        return Selection::UpToDate;
    };
    let incremental = || {
        upgrade
            .upgrade_paths
            .iter()
            .filter(|p| p.kind == PathType::Incremental)
    };
    let stacking =
        incremental().find(|p| p.from_version.as_deref() == Some(device.current_version));
    let cumulative = incremental().find(|p| match p.from_version.as_deref() {
        None => true,
        Some(v) => v == device.base_version,
    });
    let full = upgrade
        .upgrade_paths
        .iter()
        .find(|p| p.kind == PathType::Full);
    // On a device still at its base version, a kit from the base is a stacking kit (the stack
    // is empty): the applier appends its layer.
    let at_base = device.current_version == device.base_version;
    let chosen = if at_base {
        stacking.or(cumulative).map(|p| (p, Model::Stacking))
    } else if max_layers_ok {
        let cumulative = cumulative.map(|p| (p, Model::Cumulative));
        stacking.map(|p| (p, Model::Stacking)).or(cumulative)
    } else {
        cumulative.map(|p| (p, Model::Cumulative))
    };
    if let Some((path, model)) = chosen {
        return Selection::Incremental {
            upgrade,
            path,
            model,
        };
    }
    let reason = if stacking.is_some() {
        "the stack is at its maximum of layers and no cumulative kit is offered".to_string()
    } else {
        format!(
            "no kit from the current version {} or the base version {}",
            device.current_version, device.base_version
        )
    };
    match full {
        Some(path) => Selection::Full {
            upgrade,
            path,
            reason,
        },
        None => Selection::NoPath {
            version: &upgrade.version,
            reason: format!("{reason}, and no full upgrade"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> TargetFile {
        TargetFile {
            sha256: format!("{:064x}", size),
            size,
            url: format!("https://example.org/{name}"),
        }
    }

    fn kit(from: Option<&str>, to: &str) -> UpgradePath {
        UpgradePath {
            from_version: from.map(str::to_string),
            target_files: vec![file(
                &format!("Tails_amd64_{}_to_{to}.iuk", from.unwrap_or("6.0")),
                100,
            )],
            kind: PathType::Incremental,
        }
    }

    fn full(to: &str) -> UpgradePath {
        UpgradePath {
            from_version: None,
            target_files: vec![file(&format!("tails-amd64-{to}.img"), 1000)],
            kind: PathType::Full,
        }
    }

    fn udf(upgrades: Vec<Upgrade>) -> Udf {
        Udf {
            build_target: "amd64".into(),
            channel: "stable".into(),
            initial_install_version: "6.0".into(),
            product_name: "Tails".into(),
            upgrades,
        }
    }

    fn up(version: &str, paths: Vec<UpgradePath>) -> Upgrade {
        Upgrade {
            details_url: Some(format!("https://example.org/news/version_{version}/")),
            kind: UpgradeType::Minor,
            upgrade_paths: paths,
            version: version.into(),
        }
    }

    fn device(current: &str) -> Device<'_> {
        Device {
            product: "Tails",
            build_target: "amd64",
            channel: "stable",
            base_version: "6.0",
            current_version: current,
        }
    }

    fn sample() -> Udf {
        udf(vec![up(
            "6.10",
            vec![kit(None, "6.10"), kit(Some("6.9"), "6.10"), full("6.10")],
        )])
    }

    #[test]
    fn roundtrip_is_deterministic_and_quoted() {
        let u = sample();
        let y = u.to_yaml();
        assert_eq!(Udf::from_yaml(&y).unwrap(), u);
        assert_eq!(Udf::from_bytes(y.as_bytes()).unwrap().to_yaml(), y);
        let h100 = format!("{:064x}", 100);
        let h1000 = format!("{:064x}", 1000);
        let expected = format!(
            "build-target: \"amd64\"\n\
             channel: \"stable\"\n\
             initial-install-version: \"6.0\"\n\
             product-name: \"Tails\"\n\
             upgrades:\n\
             - details-url: \"https://example.org/news/version_6.10/\"\n  \
               type: \"minor\"\n  \
               upgrade-paths:\n  \
               - target-files:\n    \
                 - sha256: \"{h100}\"\n      \
                   size: 100\n      \
                   url: \"https://example.org/Tails_amd64_6.0_to_6.10.iuk\"\n    \
                 type: \"incremental\"\n  \
               - from-version: \"6.9\"\n    \
                 target-files:\n    \
                 - sha256: \"{h100}\"\n      \
                   size: 100\n      \
                   url: \"https://example.org/Tails_amd64_6.9_to_6.10.iuk\"\n    \
                 type: \"incremental\"\n  \
               - target-files:\n    \
                 - sha256: \"{h1000}\"\n      \
                   size: 1000\n      \
                   url: \"https://example.org/tails-amd64-6.10.img\"\n    \
                 type: \"full\"\n  \
               version: \"6.10\"\n",
        );
        assert_eq!(y, expected);
        // Empty lists, no details URL, other types, odd characters.
        let odd = Udf {
            upgrades: vec![
                Upgrade {
                    details_url: None,
                    kind: UpgradeType::Other("weird".into()),
                    upgrade_paths: vec![],
                    version: "7.0~rc1".into(),
                },
                Upgrade {
                    details_url: Some("https://e.org/a \"b\"\\\n".into()),
                    kind: UpgradeType::Major,
                    upgrade_paths: vec![UpgradePath {
                        from_version: None,
                        target_files: vec![],
                        kind: PathType::Other("delta".into()),
                    }],
                    version: "7.0".into(),
                },
            ],
            ..sample()
        };
        let y = odd.to_yaml();
        assert!(y.contains("upgrade-paths: []\n"), "{y}");
        assert!(y.contains("target-files: []\n"), "{y}");
        assert_eq!(Udf::from_yaml(&y).unwrap(), odd, "{y}");
        assert_eq!(udf(vec![]).to_yaml().lines().last(), Some("upgrades: []"));
        assert_eq!(Udf::from_yaml(&udf(vec![]).to_yaml()).unwrap(), udf(vec![]));
    }

    /// A UDF as Tails writes it (YAML::Any's dump: plain scalars, `---`), with unknown keys.
    const TAILS_STYLE: &str = "---
build-target: amd64
channel: stable
initial-install-version: 6.0
product-name: Tails
some-future-key: {a: [1, 2]}
upgrades:
- details-url: https://tails.net/news/version_6.10/
  type: minor
  unknown: 1
  upgrade-paths:
  - target-files:
    - sha256: AB00000000000000000000000000000000000000000000000000000000000000
      size: 379076608
      url: http://dl.amnesia.boum.org/tails/stable/iuk/v2/Tails_amd64_6.0_to_6.10.iuk
      mirror: x
    type: incremental
  - target-files:
    - sha256: 0000000000000000000000000000000000000000000000000000000000000001
      size: 1546352640
      url: http://dl.amnesia.boum.org/tails/stable/tails-amd64-6.10/tails-amd64-6.10.img
    type: full
  version: 6.10
- type: minor
  version: 6.20
";

    #[test]
    fn reads_tails_style_numbers_as_text_and_ignores_unknown_keys() {
        let u = Udf::from_yaml(TAILS_STYLE).unwrap();
        assert_eq!(u.initial_install_version, "6.0");
        assert_eq!(u.upgrades[0].version, "6.10");
        assert_eq!(u.upgrades[1].version, "6.20");
        assert!(u.upgrades[1].upgrade_paths.is_empty());
        let p = &u.upgrades[0].upgrade_paths[0];
        assert_eq!(p.kind, PathType::Incremental);
        assert_eq!(p.from_version, None);
        assert_eq!(p.target_files[0].size, 379_076_608);
        assert!(p.target_files[0].sha256.starts_with("ab00"));
        assert_eq!(u.upgrades[0].kind, UpgradeType::Minor);
        // Written back, every version is a quoted string.
        let y = u.to_yaml();
        assert!(y.contains("version: \"6.10\""), "{y}");
        assert!(y.contains("initial-install-version: \"6.0\""), "{y}");
        // Quoted and plain are read alike.
        let q = TAILS_STYLE.replace("version: 6.10", "version: '6.10'");
        assert_eq!(Udf::from_yaml(&q).unwrap(), u);
    }

    #[test]
    fn refuses_malformed() {
        let bad = |text: &str, what: &str| {
            let e = Udf::from_yaml(text).unwrap_err().to_string();
            assert!(e.contains(what), "{e:?} should mention {what:?}");
        };
        bad("", "empty");
        bad("[1, 2]", "upgrade description file");
        bad(
            &TAILS_STYLE.replace("channel: stable\n", ""),
            "channel is missing",
        );
        bad(
            &TAILS_STYLE.replace("product-name: Tails", "product-name: a/b"),
            "not a valid name",
        );
        bad(
            &TAILS_STYLE.replace("  version: 6.10\n", ""),
            "upgrades[0]: version is missing",
        );
        bad(
            &TAILS_STYLE.replace("size: 379076608", "size: -1"),
            "upgrade description file",
        );
        bad(&TAILS_STYLE.replace("AB00", "XY00"), "not 64 hex digits");
        bad(
            &TAILS_STYLE.replace("    type: full", "    type: full\n    from-version: 6.9"),
            "from-version on a full path",
        );
        bad(&TAILS_STYLE.replace("      url: http://dl.amnesia.boum.org/tails/stable/tails-amd64-6.10/tails-amd64-6.10.img\n", ""), "upgrade-paths[1]: target-files[0]: url is missing");
        let big = format!("{TAILS_STYLE}#{}\n", "x".repeat(MAX_UDF));
        let e = Udf::from_bytes(big.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        assert!(Udf::from_bytes(b"\xff\xfe")
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }

    #[test]
    fn selects_stacking_then_cumulative_then_full() {
        let u = sample();
        // Stacking: the kit from the current version.
        let s = select_path(&u, &device("6.9"), true);
        let Selection::Incremental {
            path,
            model,
            upgrade,
        } = &s
        else {
            panic!("{s}")
        };
        assert_eq!(path.from_version.as_deref(), Some("6.9"));
        assert_eq!(*model, Model::Stacking);
        assert_eq!(upgrade.version, "6.10");
        // Cumulative from the base when no kit from the current version.
        let s = select_path(&u, &device("6.8"), true);
        let Selection::Incremental { path, model, .. } = &s else {
            panic!("{s}")
        };
        assert_eq!(path.from_version, None);
        assert_eq!(*model, Model::Cumulative);
        // At the base, the kit from the base appends to an empty stack.
        let s = select_path(&u, &device("6.0"), true);
        let Selection::Incremental { path, model, .. } = &s else {
            panic!("{s}")
        };
        assert_eq!(path.from_version, None);
        assert_eq!(*model, Model::Stacking);
        // An explicit from-version equal to the base counts as the cumulative kit.
        let explicit = udf(vec![up("6.10", vec![kit(Some("6.0"), "6.10")])]);
        let s = select_path(&explicit, &device("6.5"), true);
        assert!(
            matches!(
                s,
                Selection::Incremental {
                    model: Model::Cumulative,
                    ..
                }
            ),
            "{s}"
        );
        // Full upgrade when no kit fits.
        let only_stack = udf(vec![up(
            "6.10",
            vec![kit(Some("6.9"), "6.10"), full("6.10")],
        )]);
        let s = select_path(&only_stack, &device("6.8"), true);
        let Selection::Full { path, reason, .. } = &s else {
            panic!("{s}")
        };
        assert_eq!(path.kind, PathType::Full);
        assert!(
            reason.contains("no kit from the current version 6.8"),
            "{reason}"
        );
        // Nothing usable at all.
        let none = udf(vec![up("6.10", vec![kit(Some("6.9"), "6.10")])]);
        let s = select_path(&none, &device("6.8"), true);
        assert!(
            matches!(
                s,
                Selection::NoPath {
                    version: "6.10",
                    ..
                }
            ),
            "{s}"
        );
        assert!(s.to_string().contains("no full upgrade"), "{s}");
    }

    #[test]
    fn max_layers_prefers_cumulative() {
        let u = sample();
        let s = select_path(&u, &device("6.9"), false);
        let Selection::Incremental { path, model, .. } = &s else {
            panic!("{s}")
        };
        assert_eq!(path.from_version, None);
        assert_eq!(*model, Model::Cumulative);
        // No cumulative kit: the full upgrade.
        let no_cumul = udf(vec![up(
            "6.10",
            vec![kit(Some("6.9"), "6.10"), full("6.10")],
        )]);
        let s = select_path(&no_cumul, &device("6.9"), false);
        assert!(matches!(s, Selection::Full { .. }), "{s}");
        assert!(s.to_string().contains("maximum"), "{s}");
        // Neither: nothing.
        let neither = udf(vec![up("6.10", vec![kit(Some("6.9"), "6.10")])]);
        let s = select_path(&neither, &device("6.9"), false);
        assert!(matches!(s, Selection::NoPath { .. }), "{s}");
        // The limit does not matter with room left.
        let s = select_path(&no_cumul, &device("6.9"), true);
        assert!(
            matches!(
                s,
                Selection::Incremental {
                    model: Model::Stacking,
                    ..
                }
            ),
            "{s}"
        );
    }

    #[test]
    fn newest_newer_version_wins() {
        let u = udf(vec![
            up("6.9", vec![kit(None, "6.9")]),
            up("6.11", vec![kit(None, "6.11"), kit(Some("6.10"), "6.11")]),
            up("6.10", vec![kit(None, "6.10")]),
            up("6.11", vec![full("6.11")]),
        ]);
        let s = select_path(&u, &device("6.10"), true);
        let Selection::Incremental { upgrade, path, .. } = &s else {
            panic!("{s}")
        };
        assert_eq!(upgrade.version, "6.11");
        assert_eq!(path.from_version.as_deref(), Some("6.10"));
        // Debian order: 6.10 > 6.9, ~ before release.
        let u = udf(vec![
            up("7.0~rc1", vec![full("7.0~rc1")]),
            up("6.10", vec![full("6.10")]),
        ]);
        let s = select_path(&u, &device("6.9"), true);
        assert!(
            matches!(&s, Selection::Full { upgrade, .. } if upgrade.version == "7.0~rc1"),
            "{s}"
        );
        // The first of several incremental paths with the same from-version wins.
        let u = udf(vec![up(
            "6.10",
            vec![kit(None, "6.10"), {
                let mut k = kit(None, "6.10");
                k.target_files[0].url = "https://example.org/second".into();
                k
            }],
        )]);
        let Selection::Incremental { path, .. } = select_path(&u, &device("6.5"), true) else {
            panic!()
        };
        assert!(path.target_files[0]
            .url
            .ends_with("Tails_amd64_6.0_to_6.10.iuk"));
    }

    #[test]
    fn downgrades_and_other_devices_get_nothing() {
        let u = sample();
        assert_eq!(select_path(&u, &device("6.10"), true), Selection::UpToDate);
        assert_eq!(select_path(&u, &device("6.11"), true), Selection::UpToDate);
        assert_eq!(
            select_path(&udf(vec![]), &device("6.0"), true),
            Selection::UpToDate
        );
        let mut d = device("6.9");
        d.product = "Other";
        assert!(matches!(
            select_path(&u, &d, true),
            Selection::NotForDevice { .. }
        ));
        let mut d = device("6.9");
        d.build_target = "arm64";
        let s = select_path(&u, &d, true);
        assert!(s.to_string().contains("build-target is \"amd64\""), "{s}");
        let mut d = device("6.9");
        d.channel = "alpha";
        assert!(matches!(
            select_path(&u, &d, true),
            Selection::NotForDevice { .. }
        ));
        let mut d = device("6.9");
        d.base_version = "5.0";
        assert!(matches!(
            select_path(&u, &d, true),
            Selection::NotForDevice { .. }
        ));
    }
}
