//! The UDF file format, Tails' version 2 schema: the schema types, reading (parse and validate)
//! and deterministic writing.
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
//! YAML dump gives), every string double-quoted ([`crate::yaml::quote`]), numbers plain, lists in
//! block style.

use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::io::read_capped;
use crate::version::is_safe_name;
use crate::yaml::YamlWriter;

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
    /// The file cannot be read, or holds more than [`MAX_UDF`] bytes.
    #[error(
        "{}: cannot read the upgrade description file ({source}): check the path given",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The bytes of the UDF file at `path`: at most [`MAX_UDF`], refused before anything is
/// allocated when the file is larger (a pipe works too: the read stops after the cap).
pub fn read_file(path: &Path) -> Result<Vec<u8>, UdfError> {
    read_capped(path, MAX_UDF as u64).map_err(|source| UdfError::Read {
        path: path.to_path_buf(),
        source,
    })
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
    /// `kit-format` (our extension, incremental paths only): the kit's FORMAT when it is not 2
    /// (`3`: a binary-delta kit, which Tails' installer cannot install; it is always listed after
    /// the FORMAT 2 kit of the same path, so Tails devices, which take the first, never see it).
    pub kit_format: Option<String>,
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
    kit_format: Option<String>,
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
        let raw: RawUdf = crate::yaml::parse(text).map_err(|e| invalid(e.to_string()))?;
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
                let kit_format = match p.kit_format {
                    Some(v) => Some(safe(v, &format!("{at}: kit-format"))?),
                    None => None,
                };
                if kit_format.is_some() && kind != PathType::Incremental {
                    return Err(invalid(format!(
                        "{at}: kit-format on a {} path (incremental paths only)",
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
                    kit_format,
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

    /// The deterministic YAML text (see the module doc), written with [`crate::yaml`].
    pub fn to_yaml(&self) -> String {
        let mut w = YamlWriter::new();
        w.string("build-target", &self.build_target);
        w.string("channel", &self.channel);
        w.string("initial-install-version", &self.initial_install_version);
        w.string("product-name", &self.product_name);
        w.list("upgrades", &self.upgrades, |w, u| {
            if let Some(d) = &u.details_url {
                w.string("details-url", d);
            }
            w.string("type", u.kind.as_str());
            w.list("upgrade-paths", &u.upgrade_paths, |w, p| {
                if let Some(f) = &p.from_version {
                    w.string("from-version", f);
                }
                if let Some(f) = &p.kit_format {
                    w.string("kit-format", f);
                }
                w.list("target-files", &p.target_files, |w, f| {
                    w.string("sha256", &f.sha256);
                    w.number("size", f.size);
                    w.string("url", &f.url);
                });
                w.string("type", p.kind.as_str());
            });
            w.string("version", &u.version);
        });
        w.finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The format's tests, and the sample UDFs the other `udf` modules' tests build on.

    use super::*;

    fn file(name: &str, size: u64) -> TargetFile {
        TargetFile {
            sha256: format!("{:064x}", size),
            size,
            url: format!("https://example.org/{name}"),
        }
    }

    pub(crate) fn kit(from: Option<&str>, to: &str) -> UpgradePath {
        UpgradePath {
            from_version: from.map(str::to_string),
            kit_format: None,
            target_files: vec![file(
                &format!("Tails_amd64_{}_to_{to}.iuk", from.unwrap_or("6.0")),
                100,
            )],
            kind: PathType::Incremental,
        }
    }

    pub(crate) fn full(to: &str) -> UpgradePath {
        UpgradePath {
            from_version: None,
            kit_format: None,
            target_files: vec![file(&format!("tails-amd64-{to}.img"), 1000)],
            kind: PathType::Full,
        }
    }

    pub(crate) fn udf(upgrades: Vec<Upgrade>) -> Udf {
        Udf {
            build_target: "amd64".into(),
            channel: "stable".into(),
            initial_install_version: "6.0".into(),
            product_name: "Tails".into(),
            upgrades,
        }
    }

    pub(crate) fn up(version: &str, paths: Vec<UpgradePath>) -> Upgrade {
        Upgrade {
            details_url: Some(format!("https://example.org/news/version_{version}/")),
            kind: UpgradeType::Minor,
            upgrade_paths: paths,
            version: version.into(),
        }
    }

    pub(crate) fn sample() -> Udf {
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
                        kit_format: None,
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
        // A FORMAT 3 kit's path round-trips with its kit-format.
        let mut delta = kit(Some("6.9"), "6.10");
        delta.kit_format = Some("3".into());
        let with_delta = udf(vec![up("6.10", vec![kit(Some("6.9"), "6.10"), delta])]);
        let y3 = with_delta.to_yaml();
        assert!(y3.contains("  kit-format: \"3\"\n"), "{y3}");
        assert_eq!(Udf::from_yaml(&y3).unwrap(), with_delta, "{y3}");
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
    fn a_huge_file_given_as_a_udf_is_refused_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("control.yml");
        std::fs::File::create(&p).unwrap().set_len(1 << 30).unwrap();
        let t = std::time::Instant::now();
        let e = read_file(&p).unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        let UdfError::Read { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(source.kind(), io::ErrorKind::FileTooLarge);
        let m = e.to_string();
        assert!(m.contains(&p.display().to_string()), "{m}");
        assert!(m.contains("more than"), "{m}");
        std::fs::write(&p, TAILS_STYLE).unwrap();
        assert_eq!(
            Udf::from_bytes(&read_file(&p).unwrap()).unwrap(),
            Udf::from_yaml(TAILS_STYLE).unwrap()
        );
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
}
