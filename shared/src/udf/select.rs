//! Choosing the upgrade path a device takes (device side, `iuk-apply select`): the newest
//! version offered, then the stacking kit, the cumulative kit or the full upgrade
//! (DESIGN.md, "Trust").

use std::cmp::Ordering;
use std::fmt;

use crate::udf::format::{PathType, Udf, Upgrade, UpgradePath};
use crate::version::compare;

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
/// the base version: cumulative), else the full upgrade. Where a path is offered as a FORMAT 2
/// and a FORMAT 3 kit (`kit-format: "3"`), the smaller download wins, except that a device past
/// its base takes the FORMAT 2 kit of a cumulative path (a FORMAT 3 kit carries only the boot
/// files its two releases differ in); kits of another `kit-format` are never taken; among equal
/// candidates the first listed wins. `max_layers_ok` is false when one more diff layer would exceed the device's
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
    // The incremental paths whose kit this iuk installs (FORMAT 2, or 3: `kit-format`), and
    // among those of one kind the smallest download (the first listed among equals).
    let smallest = |from: &dyn Fn(Option<&str>) -> bool, delta_ok: bool| {
        upgrade
            .upgrade_paths
            .iter()
            .filter(|p| p.kind == PathType::Incremental)
            .filter(|p| match p.kit_format.as_deref() {
                None | Some(crate::kit::FORMAT) => true,
                Some(crate::kit::FORMAT_DELTA) => delta_ok,
                Some(_) => false,
            })
            .filter(|p| from(p.from_version.as_deref()))
            .min_by_key(|p| {
                p.target_files
                    .iter()
                    .fold(0u64, |a, f| a.saturating_add(f.size))
            })
    };
    let stacking = smallest(&|f| f == Some(device.current_version), true);
    // A FORMAT 3 kit from the base carries only the boot files that change between the base
    // release and the new one: on a device past its base, whose boot files are another
    // release's, only the FORMAT 2 kit applies.
    let at_base = device.current_version == device.base_version;
    let cumulative = smallest(
        &|f| match f {
            None => true,
            Some(v) => v == device.base_version,
        },
        at_base,
    );
    let full = upgrade
        .upgrade_paths
        .iter()
        .find(|p| p.kind == PathType::Full);
    // On a device still at its base version, a kit from the base is a stacking kit (the stack
    // is empty): the applier appends its layer.
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
    use crate::udf::format::tests::{full, kit, sample, udf, up};

    fn device(current: &str) -> Device<'_> {
        Device {
            product: "Tails",
            build_target: "amd64",
            channel: "stable",
            base_version: "6.0",
            current_version: current,
        }
    }

    /// A path offered as a FORMAT 2 and a FORMAT 3 kit: the smaller download wins; a kit of a
    /// FORMAT this iuk does not install is never taken.
    #[test]
    fn the_smaller_kit_of_a_path_wins_and_unknown_formats_are_skipped() {
        let sized = |from: Option<&str>, format: Option<&str>, size: u64| {
            let mut k = kit(from, "6.10");
            k.kit_format = format.map(str::to_string);
            k.target_files[0].size = size;
            k
        };
        let u = udf(vec![up(
            "6.10",
            vec![
                sized(None, None, 500),
                sized(None, Some("3"), 200),
                sized(Some("6.9"), None, 300),
                sized(Some("6.9"), Some("3"), 100),
                sized(Some("6.9"), Some("4"), 10),
            ],
        )]);
        let s = select_path(&u, &device("6.9"), true);
        let Selection::Incremental { path, .. } = &s else {
            panic!("{s}")
        };
        assert_eq!(
            (path.from_version.as_deref(), path.kit_format.as_deref()),
            (Some("6.9"), Some("3"))
        );
        // At the base, the smaller kit from the base; past it, only the FORMAT 2 kit (the FORMAT
        // 3 kit carries only the boot files the base release and the new one differ in).
        for (current, size) in [("6.0", 200), ("6.8", 500)] {
            let s = select_path(&u, &device(current), true);
            let Selection::Incremental { path, .. } = &s else {
                panic!("{s}")
            };
            assert_eq!(
                (path.from_version.as_deref(), path.target_files[0].size),
                (None, size),
                "{current}"
            );
        }
        // A FORMAT 3 kit larger than its FORMAT 2 twin is not taken.
        let u = udf(vec![up(
            "6.10",
            vec![
                sized(Some("6.9"), None, 300),
                sized(Some("6.9"), Some("3"), 400),
            ],
        )]);
        let s = select_path(&u, &device("6.9"), true);
        let Selection::Incremental { path, .. } = &s else {
            panic!("{s}")
        };
        assert_eq!(path.kit_format, None);
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
