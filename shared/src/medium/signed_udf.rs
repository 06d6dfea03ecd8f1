//! Signed upgrade description files on the device side (DESIGN.md, "Trust").
//!
//! On a medium with keys, a kit is applied only when a signed upgrade description file (UDF)
//! lists it: [`verify_udf`] checks the detached signature against the stored keyring,
//! [`check_addressed`] that the UDF is for this device (product, build target, initial-install
//! version, channel), and [`listed_kits`] that the kit's size and sha256 are those of an
//! incremental target of a version newer than the current one. `plan` does all of this before
//! anything is written. [`select`] tells which upgrade path the device takes from a signed UDF
//! (read-only).

use std::cmp::Ordering;

use super::keyring::trusted_keyring;
use super::state::State;
use super::{refuse, Medium, MediumError};
use crate::sign::Verified;
use crate::tree::hex;
use crate::udf::{self, PathType, Selection, Udf};
use crate::version;

/// A signed UDF as given to `apply`, `check` or `select` (both files read whole).
#[derive(Clone, Debug)]
pub struct SignedUdf {
    /// The UDF's path, for messages.
    pub udf_name: String,
    /// The UDF's bytes.
    pub udf: Vec<u8>,
    /// The signature's path, for messages.
    pub signature_name: String,
    /// The detached signature's bytes.
    pub signature: Vec<u8>,
}

/// A UDF whose signature verified with a trusted key.
#[derive(Clone, Debug)]
pub struct VerifiedUdf {
    /// The UDF.
    pub udf: Udf,
    /// Who signed it, when.
    pub verified: Verified,
}

/// Verifies a signed UDF against the medium's trusted keys and parses it. Refused on a medium
/// without keys (nothing to verify with).
pub fn verify_udf(
    medium: &Medium,
    state: &State,
    signed: &SignedUdf,
) -> Result<VerifiedUdf, MediumError> {
    let trusted = trusted_keyring(medium, state)?.ok_or_else(|| {
        refuse(format!(
            "{}: no trusted keys on this medium to verify {} with; give it keys with \
             `iuk-apply init --keyring` or `iuk-apply adopt --keyring`",
            medium.root.display(),
            signed.udf_name
        ))
    })?;
    let verified = trusted
        .keyring
        .verify_detached(&signed.udf, &signed.signature)
        .map_err(|e| {
            refuse(format!(
                "{}: {}: {e}",
                signed.udf_name, signed.signature_name
            ))
        })?;
    let udf =
        Udf::from_bytes(&signed.udf).map_err(|e| refuse(format!("{}: {e}", signed.udf_name)))?;
    Ok(VerifiedUdf { udf, verified })
}

/// Checks that a UDF is addressed to this device: product, build target, initial-install
/// version (the base) and channel.
pub fn check_addressed(udf: &Udf, state: &State, udf_name: &str) -> Result<(), MediumError> {
    for (key, theirs, ours) in [
        ("product-name", &udf.product_name, &state.product),
        ("build-target", &udf.build_target, &state.build_target),
        (
            "initial-install-version",
            &udf.initial_install_version,
            &state.base_version,
        ),
        ("channel", &udf.channel, &state.channel),
    ] {
        if theirs != ours {
            return Err(refuse(format!(
                "{udf_name}: not for this medium: its {key} is {theirs:?}, the medium's is {ours:?}"
            )));
        }
    }
    Ok(())
}

/// An incremental target of a UDF that a kit matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The version the UDF offers through it.
    pub version: String,
    /// The version its kit upgrades from (`from-version`, else the initial-install version).
    pub from_version: String,
    /// Its URL.
    pub url: String,
}

/// The incremental targets of `udf` for versions newer than the medium's current one whose
/// size and sha256 are the kit's, in the file's order.
pub fn listed_kits(udf: &Udf, state: &State, size: u64, sha256: &[u8; 32]) -> Vec<Listed> {
    let sha = hex(sha256);
    let mut out = Vec::new();
    for u in &udf.upgrades {
        if version::compare(&u.version, &state.current_version) != Ordering::Greater {
            continue;
        }
        for p in u
            .upgrade_paths
            .iter()
            .filter(|p| p.kind == PathType::Incremental)
        {
            for t in &p.target_files {
                if t.size == size && t.sha256.eq_ignore_ascii_case(&sha) {
                    out.push(Listed {
                        version: u.version.clone(),
                        from_version: p
                            .from_version
                            .clone()
                            .unwrap_or_else(|| udf.initial_install_version.clone()),
                        url: t.url.clone(),
                    });
                }
            }
        }
    }
    out
}

/// What `select` found: the path this device takes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A kit.
    Incremental,
    /// A new installation image.
    Full,
    /// No version newer than the current one is offered.
    UpToDate,
    /// A newer version is offered, by no path this device can take.
    NoPath,
}

/// A file to download, as the UDF lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// URL.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 (lower-case hex).
    pub sha256: String,
}

/// The outcome of [`select`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Selected {
    /// What the device takes.
    pub outcome: Outcome,
    /// `stacking` or `cumulative` for a kit.
    pub model: Option<String>,
    /// The version offered.
    pub version: Option<String>,
    /// The upgrade's type (`major`, `minor`).
    pub upgrade_type: Option<String>,
    /// The release notes.
    pub details_url: Option<String>,
    /// For a kit: the version it upgrades from.
    pub from_version: Option<String>,
    /// What to download.
    pub files: Vec<Target>,
    /// Why this path (or none) was chosen, when not the obvious one.
    pub reason: Option<String>,
    /// The medium's current version.
    pub current_version: String,
    /// The medium's base (initial-install) version.
    pub base_version: String,
    /// The diff layers on the medium and the bound used.
    pub layers: usize,
    /// The bound on diff layers used.
    pub max_layers: u32,
    /// Fingerprint of the key that signed the UDF.
    pub signed_by: String,
    /// The signature, described.
    pub signature: String,
}

/// Chooses the upgrade path the device takes from a signed UDF (DESIGN.md, "Trust"): verifies
/// the signature with the medium's trusted keys, checks the UDF is addressed to the device,
/// then applies [`udf::select_path`] with the device's product, build target, channel, base and
/// current versions; the stack may grow when `layers + 1 <= max_layers` (`max_layers` overrides
/// the state's bound). Writes nothing.
pub fn select(
    medium: &Medium,
    signed: &SignedUdf,
    max_layers: Option<u32>,
) -> Result<Selected, MediumError> {
    let (state, _, _) = medium.read_state()?;
    if state.keyring.is_none() {
        return Err(refuse(format!(
            "{}: no trusted keys on this medium: an upgrade description cannot be verified; give \
             it keys with `iuk-apply init --keyring` or `iuk-apply adopt --keyring`",
            medium.root.display()
        )));
    }
    let v = verify_udf(medium, &state, signed)?;
    check_addressed(&v.udf, &state, &signed.udf_name)?;
    let max = max_layers.unwrap_or(state.max_layers);
    let device = udf::Device {
        product: &state.product,
        build_target: &state.build_target,
        channel: &state.channel,
        base_version: &state.base_version,
        current_version: &state.current_version,
    };
    // One more diff layer fits: layers + 1 <= max.
    let ok = (state.layers.len() as u64) < u64::from(max);
    let selection = udf::select_path(&v.udf, &device, ok);
    let mut out = Selected {
        outcome: Outcome::UpToDate,
        model: None,
        version: None,
        upgrade_type: None,
        details_url: None,
        from_version: None,
        files: Vec::new(),
        reason: None,
        current_version: state.current_version.clone(),
        base_version: state.base_version.clone(),
        layers: state.layers.len(),
        max_layers: max,
        signed_by: v.verified.fingerprint.clone(),
        signature: v.verified.to_string(),
    };
    let files = |p: &udf::UpgradePath| -> Vec<Target> {
        p.target_files
            .iter()
            .map(|t| Target {
                url: t.url.clone(),
                size: t.size,
                sha256: t.sha256.clone(),
            })
            .collect()
    };
    match &selection {
        Selection::Incremental {
            upgrade,
            path,
            model,
        } => {
            out.outcome = Outcome::Incremental;
            out.model = Some(
                match model {
                    udf::Model::Stacking => "stacking",
                    udf::Model::Cumulative => "cumulative",
                }
                .into(),
            );
            out.version = Some(upgrade.version.clone());
            out.upgrade_type = Some(upgrade.kind.as_str().to_string());
            out.details_url = upgrade.details_url.clone();
            out.from_version = Some(
                path.from_version
                    .clone()
                    .unwrap_or_else(|| state.base_version.clone()),
            );
            out.files = files(path);
            if *model == udf::Model::Cumulative && !ok {
                out.reason = Some(format!(
                    "the stack has {} diff layers, at most {max}: the cumulative kit replaces them",
                    state.layers.len()
                ));
            }
        }
        Selection::Full {
            upgrade,
            path,
            reason,
        } => {
            out.outcome = Outcome::Full;
            out.version = Some(upgrade.version.clone());
            out.upgrade_type = Some(upgrade.kind.as_str().to_string());
            out.details_url = upgrade.details_url.clone();
            out.files = files(path);
            out.reason = Some(reason.clone());
        }
        Selection::NotForDevice { reason } => {
            return Err(refuse(format!(
                "{}: not for this medium: {reason}",
                signed.udf_name
            )));
        }
        Selection::UpToDate => {
            out.reason = Some(format!(
                "no version newer than {} is offered",
                state.current_version
            ));
        }
        Selection::NoPath { version, reason } => {
            out.outcome = Outcome::NoPath;
            out.version = Some(version.to_string());
            out.reason = Some(reason.clone());
        }
    }
    Ok(out)
}
