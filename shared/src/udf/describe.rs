//! Making a UDF from kits (build side, `iuk-build describe`): each kit's product, build target
//! and versions come from its control.yml, its size and sha256 from its bytes; the paths are
//! ordered so that Tails' devices, which take the first incremental path, get the cumulative kit.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::kit::{Control, Kit, KitError};
use crate::tree::hex;
use crate::udf::format::{PathType, TargetFile, Udf, Upgrade, UpgradePath, UpgradeType};
use crate::version::{compare, is_safe_name};

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
    #[error("{}: cannot read: {source}", path.display())]
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

/// Refuses the kit `name` (its control.yml `c`) unless it is for the product and build target
/// of `input`, upgrades to its version, and from a version between its initial-install version
/// and that version; each message says which option or kit to change.
fn check_kit(input: &DescribeInput, name: &str, c: &Control) -> Result<(), DescribeError> {
    let refuse = |m: String| Err(DescribeError::Refused(m));
    if c.product != input.product {
        return refuse(format!(
            "{name}: a kit for product {}, not {}: give kits of {} or change --product",
            c.product, input.product, input.product
        ));
    }
    if c.build_target != input.build_target {
        return refuse(format!(
            "{name}: a kit for build target {}, not {}: give kits for {} or change \
             --build-target",
            c.build_target, input.build_target, input.build_target
        ));
    }
    if c.to_version != input.version {
        return refuse(format!(
            "{name}: a kit to version {}, not {}: give kits to {} or change --version",
            c.to_version, input.version, input.version
        ));
    }
    if compare(&c.from_version, &input.initial_install_version) == Ordering::Less {
        return refuse(format!(
            "{name}: a kit from version {}, older than the initial-install version {}: give \
             kits from {} or later",
            c.from_version, input.initial_install_version, input.initial_install_version
        ));
    }
    if compare(&c.from_version, &c.to_version) != Ordering::Less {
        return refuse(format!(
            "{name}: a kit from version {} to {} is no upgrade: a damaged kit; rebuild it",
            c.from_version, c.to_version
        ));
    }
    Ok(())
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
            "version {} is not newer than the initial-install version {}: check --version and \
             --initial-install-version",
            input.version, input.initial_install_version
        )));
    }
    if input.kits.is_empty() && input.full.is_none() {
        return Err(refuse(
            "nothing to offer: give --kit (with --kit-url) or --iso (with --iso-url)".into(),
        ));
    }
    // Per version upgraded from: the FORMAT 2 kit, and optionally a FORMAT 3 kit listed after it.
    let mut by_from: Vec<(String, Option<UpgradePath>, Option<UpgradePath>)> = Vec::new();
    for k in &input.kits {
        let kit = Kit::open(&k.path).map_err(|source| DescribeError::Kit {
            path: k.path.clone(),
            source,
        })?;
        let c = &kit.control;
        let name = k.path.display();
        check_kit(input, &name.to_string(), c)?;
        if k.url.is_empty() {
            return Err(refuse(format!("{name}: empty URL: give its --kit-url")));
        }
        let delta = match kit.format.as_str() {
            crate::kit::FORMAT => false,
            crate::kit::FORMAT_DELTA => true,
            other => {
                return Err(refuse(format!(
                    "{name}: FORMAT {other:?} cannot be offered (FORMAT 2 and 3 only)"
                )))
            }
        };
        let (size, sha256) = file_digest(&k.path)?;
        let from_base = c.from_version == input.initial_install_version;
        let path = UpgradePath {
            from_version: (!from_base).then(|| c.from_version.clone()),
            kit_format: delta.then(|| crate::kit::FORMAT_DELTA.to_string()),
            target_files: vec![TargetFile {
                sha256,
                size,
                url: k.url.clone(),
            }],
            kind: PathType::Incremental,
        };
        let slot = match by_from.iter_mut().find(|(f, _, _)| *f == c.from_version) {
            Some(s) => s,
            None => {
                by_from.push((c.from_version.clone(), None, None));
                by_from.last_mut().expect("just pushed")
            }
        };
        let place = if delta { &mut slot.2 } else { &mut slot.1 };
        if place.is_some() {
            return Err(refuse(format!(
                "{name}: a second FORMAT {} kit from version {}: give one kit per version \
                 upgraded from (and at most one FORMAT 3 kit beside it)",
                kit.format, c.from_version
            )));
        }
        *place = Some(path);
    }
    if let Some((from, _, _)) = by_from.iter().find(|(_, f2, _)| f2.is_none()) {
        return Err(refuse(format!(
            "the FORMAT 3 kit from {from} comes without the FORMAT 2 kit of the same path: \
             Tails' installer installs FORMAT 2 only, and devices of older iuk versions too; \
             offer both (the FORMAT 3 kit is listed after it)"
        )));
    }
    let base = &input.initial_install_version;
    if !by_from.is_empty() && !by_from.iter().any(|(f, _, _)| f == base) {
        return Err(refuse(format!(
            "no kit from the initial-install version {base}: Tails devices ignore from-version \
             and would install a stacking kit as if it were cumulative; add the kit from {base}"
        )));
    }
    // The cumulative kit first (Tails devices take the first incremental path), then the others
    // newest first; each FORMAT 3 kit right after the FORMAT 2 kit of its path.
    by_from.sort_by(|a, b| match (a.0 == *base, b.0 == *base) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => compare(&b.0, &a.0),
    });
    let mut paths: Vec<UpgradePath> = by_from
        .into_iter()
        .flat_map(|(_, f2, f3)| f2.into_iter().chain(f3))
        .collect();
    if let Some(f) = &input.full {
        if f.url.is_empty() {
            return Err(refuse(format!(
                "{}: empty URL: give its --iso-url",
                f.path.display()
            )));
        }
        let (size, sha256) = file_digest(&f.path)?;
        paths.push(UpgradePath {
            from_version: None,
            kit_format: None,
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
/// The UDFs of a release's kits (a batch build): for each kit's from-version `V`, the UDF for
/// devices first installed at `V` ([`describe`] of `common` with that initial-install version
/// and every kit from `V` or later), in the kits' order. `common.kits` is ignored.
pub fn describe_release(
    common: &DescribeInput,
    kits: &[(Offered, String)],
) -> Result<Vec<(String, Udf)>, DescribeError> {
    let mut out = Vec::with_capacity(kits.len());
    for (_, v) in kits {
        let input = DescribeInput {
            initial_install_version: v.clone(),
            kits: kits
                .iter()
                .filter(|(_, from)| compare(from, v) != Ordering::Less)
                .map(|(k, _)| k.clone())
                .collect(),
            ..common.clone()
        };
        out.push((v.clone(), describe(&input)?));
    }
    Ok(out)
}

/// Where a UDF lies below a download root, as Tails publishes them:
/// `upgrade/v2/<product>/<initial-install version>/<build target>/<channel>/upgrades.yml`.
pub fn udf_path(root: &Path, product: &str, initial: &str, target: &str, channel: &str) -> PathBuf {
    root.join("upgrade/v2")
        .join(product)
        .join(initial)
        .join(target)
        .join(channel)
        .join("upgrades.yml")
}
