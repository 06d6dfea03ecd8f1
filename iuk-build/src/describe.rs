//! `iuk-build describe`: the upgrade description file (Tails UDF v2) offering one version to
//! the devices first installed at another.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use iuk::output::{write_new_file, OutputError};
use iuk::udf::{describe, DescribeInput, Offered, PathType, UpgradeType};

/// An upgrade's type.
#[derive(Clone, Copy, ValueEnum)]
pub enum TypeName {
    /// A major release
    Major,
    /// A minor release
    Minor,
}

impl TypeName {
    /// The UDF's upgrade type.
    pub fn upgrade_type(self) -> UpgradeType {
        match self {
            TypeName::Major => UpgradeType::Major,
            TypeName::Minor => UpgradeType::Minor,
        }
    }
}

/// Write the upgrade description file (Tails UDF v2) for devices first installed at one version.
///
/// The UDF offers --version to devices whose initial-install version is
/// --initial-install-version, through the kits given (each --kit with its --kit-url, in the same
/// order) and the installation image (--iso with --iso-url). Each kit's product, build target
/// and versions are read from its control.yml; sizes and sha256 are computed from the files.
/// The kit from the initial-install version (cumulative: what Tails devices install) is listed
/// first, without from-version; kits from later versions (stacking) follow with from-version.
/// Refused: a kit to another version or for another product, incremental paths without the
/// kit from the initial-install version, or that kit in a format other than 2.
///
/// The UDF goes to --out, or to standard output. Sign it separately (a detached signature,
/// e.g. `gpg --armor --detach-sign upgrades.yml`, published as upgrades.yml.pgp).
#[derive(Args)]
#[command(after_help = "Example:\n  \
    iuk-build describe --product Tails --build-target amd64 --channel stable \\\n      \
    --initial-install-version 6.9 --version 6.11 \\\n      \
    --details-url https://example.org/news/version_6.11/ \\\n      \
    --kit Tails_amd64_6.9_to_6.11.iuk --kit-url https://example.org/Tails_amd64_6.9_to_6.11.iuk \\\n      \
    --kit Tails_amd64_6.10_to_6.11.iuk --kit-url https://example.org/Tails_amd64_6.10_to_6.11.iuk \\\n      \
    --out upgrade/v2/Tails/6.9/amd64/stable/upgrades.yml")]
pub struct DescribeArgs {
    /// Product name
    #[arg(long, value_name = "P")]
    pub product: String,
    /// Build target
    #[arg(long, value_name = "T", default_value = "amd64")]
    pub build_target: String,
    /// Channel
    #[arg(long, value_name = "C", default_value = "stable")]
    pub channel: String,
    /// The initial-install version of the devices the UDF is for
    #[arg(long, value_name = "I")]
    pub initial_install_version: String,
    /// The version offered
    #[arg(long, value_name = "V")]
    pub version: String,
    /// The upgrade's type
    #[arg(
        long = "type",
        value_enum,
        value_name = "TYPE",
        default_value = "minor"
    )]
    pub kind: TypeName,
    /// The release notes' URL
    #[arg(long, value_name = "URL")]
    pub details_url: Option<String>,
    /// A kit to the version offered (repeatable; each with a --kit-url)
    #[arg(long = "kit", value_name = "KIT")]
    pub kits: Vec<PathBuf>,
    /// Where devices download the kit of the same rank
    #[arg(long = "kit-url", value_name = "URL")]
    pub kit_urls: Vec<String>,
    /// The installation image of the version offered (a full upgrade path)
    #[arg(long, value_name = "ISO", requires = "iso_url")]
    pub iso: Option<PathBuf>,
    /// Where devices download the image
    #[arg(long, value_name = "URL", requires = "iso")]
    pub iso_url: Option<String>,
    /// File to write [default: standard output]
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `describe`.
pub fn run(a: DescribeArgs) -> Result<()> {
    if a.kits.len() != a.kit_urls.len() {
        bail!(
            "{} --kit and {} --kit-url: give one URL for each kit, in the same order",
            a.kits.len(),
            a.kit_urls.len()
        );
    }
    if a.details_url.is_none() {
        eprintln!(
            "iuk-build: warning: no --details-url: Tails' upgrader shows that link to its users"
        );
    }
    let input = DescribeInput {
        product: a.product,
        build_target: a.build_target,
        channel: a.channel,
        initial_install_version: a.initial_install_version,
        version: a.version,
        kind: a.kind.upgrade_type(),
        details_url: a.details_url,
        kits: a
            .kits
            .into_iter()
            .zip(a.kit_urls)
            .map(|(path, url)| Offered { path, url })
            .collect(),
        full: a
            .iso
            .zip(a.iso_url)
            .map(|(path, url)| Offered { path, url }),
    };
    let udf = describe(&input)?;
    let text = udf.to_yaml();
    match &a.out {
        Some(out) => {
            write_new_file(out, |f| {
                f.write_all(text.as_bytes())
                    .map_err(|source| OutputError::Io {
                        path: out.clone(),
                        source,
                    })
            })
            .with_context(|| format!("{}: cannot write", out.display()))?;
            let u = &udf.upgrades[0];
            let kits = u
                .upgrade_paths
                .iter()
                .filter(|p| p.kind == PathType::Incremental)
                .count();
            let full = u.upgrade_paths.iter().any(|p| p.kind == PathType::Full);
            println!(
                "{}: {} {} ({}, {}) -> {}: {kits} kit(s){}",
                out.display(),
                udf.product_name,
                udf.initial_install_version,
                udf.build_target,
                udf.channel,
                u.version,
                if full { " and a full upgrade" } else { "" }
            );
        }
        None => {
            let mut so = std::io::stdout().lock();
            so.write_all(text.as_bytes())
                .and_then(|()| so.flush())
                .context("standard output")?;
        }
    }
    Ok(())
}
