//! `adopt`: takes over a medium that another installer made and upgraded (Tails' own installer
//! leaves the base plus one diff layer named in `live/<Product>.module`). Reads the module list
//! (`filesystem.<P>.module` first, as live-boot does), stacks the layers in userspace, reads the
//! base and current versions from the base's and the stacked tree's `/etc/os-release`, records
//! both tree digests, hashes the layers and the boot files (never installer-made files such as
//! `syslinux/ldlinux.sys`), then writes the state, the lock file and the staging directory.
//! An inconsistent medium is refused before anything is written. The trusted keys are those
//! given (`--keyring`), else those the old state names (which must still be intact).

use std::fs;
use std::path::Path;

use super::fsops::{write_file, MediumFs};
use super::state::{Layer, State, STATE_FORMAT};
use super::trust::{keyring_files, prepare_keyring, stray_keyrings, trusted_keyring, KeyringInput};
use super::{
    io_err, sha_of, Medium, MediumError, BASE, DEFAULT_MAX_LAYERS, JOURNAL_FILE, LOCK_FILE,
    STAGING_DIR, STATE_FILE,
};
use crate::boot::is_protected;
use crate::diff::HashedTree;
use crate::kit::FileEntry;
use crate::progress::Progress;
use crate::release;
use crate::squashfs::archive::Archive;
use crate::tree::{hex, Tree};
use crate::version;

/// Files a boot-loader installer writes that no ISO has: never recorded as boot files.
pub const INSTALLER_FILES: [&str; 1] = ["syslinux/ldlinux.sys"];

/// What `adopt` needs besides the medium.
#[derive(Clone, Debug, Default)]
pub struct AdoptOptions {
    /// Product name (default: the base's os-release).
    pub product: Option<String>,
    /// Build target (default `amd64`).
    pub build_target: Option<String>,
    /// Channel (default `stable`).
    pub channel: Option<String>,
    /// Bound on diff layers (default 8).
    pub max_layers: Option<u32>,
    /// The keys the medium trusts from now on (stored as `live/iuk-keyring-<sha256>.asc`).
    /// Without it, the keys of a readable state are kept; a medium without them stays without.
    pub keyring: Option<KeyringInput>,
}

/// What `adopt` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdoptReport {
    /// Product.
    pub product: String,
    /// Base version.
    pub base_version: String,
    /// Current version.
    pub current_version: String,
    /// Diff layers, bottom first.
    pub layers: Vec<String>,
    /// Boot files recorded.
    pub boot_files: usize,
    /// The trusted keyring file in `live/`, if any.
    pub keyring: Option<String>,
    /// The fingerprints of the trusted keys.
    pub key_fingerprints: Vec<String>,
}

fn refuse(m: String) -> MediumError {
    MediumError::Refused(m)
}

/// Takes over the medium.
pub fn adopt(
    medium: &Medium,
    opts: &AdoptOptions,
    fs: &mut dyn MediumFs,
) -> Result<AdoptReport, MediumError> {
    let root = medium.root.display().to_string();
    if medium.live_file(JOURNAL_FILE).exists() {
        return Err(MediumError::PendingRecovery(medium.root.clone()));
    }
    // The trusted keys: the keyring given, else those of a readable state.
    let given = opts.keyring.as_ref().map(prepare_keyring).transpose()?;
    let keys: Option<(String, Vec<String>)> = match &given {
        Some(k) => Some((k.file_name.clone(), k.fingerprints.clone())),
        None => match medium.read_state() {
            Ok((old, _, _)) => {
                trusted_keyring(medium, &old)?.map(|t| (t.file_name, t.keyring.fingerprints()))
            }
            Err(_) => {
                let found = keyring_files(medium, None);
                if let Some(p) = found.first() {
                    return Err(refuse(format!(
                        "{root}: {} holds trusted keys but no readable state names them: pass \
                         --keyring to set the trusted keys (or delete it to adopt the medium \
                         without keys)",
                        p.display()
                    )));
                }
                None
            }
        },
    };
    let base_path = medium
        .find(BASE)
        .ok_or_else(|| refuse(format!("{root}: no {BASE}: not an installed live system")))?;
    let base_tree = read_image_tree(&base_path)?;
    let base_os = release::os_release(&base_tree).unwrap_or_default();
    let product = opts
        .product
        .clone()
        .or(base_os.product.clone())
        .ok_or_else(|| {
            refuse(format!(
                "{root}: no product in the base's /etc/os-release; pass --product"
            ))
        })?;
    if !version::is_safe_name(&product) {
        return Err(refuse(format!(
            "product {product:?} may only hold letters, digits and . _ + ~ -"
        )));
    }
    let base_version = base_os
        .version
        .clone()
        .ok_or_else(|| refuse(format!("{root}: no version in the base's /etc/os-release")))?;

    // The module file, as live-boot looks for it.
    let (module_name, module_path) = [
        format!("filesystem.{product}.module"),
        format!("{product}.module"),
    ]
    .into_iter()
    .find_map(|n| {
        medium.find(&format!("live/{n}")).map(|p| {
            (
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or(n),
                p,
            )
        })
    })
    .ok_or_else(|| {
        refuse(format!(
            "{root}: no live/filesystem.{product}.module or live/{product}.module"
        ))
    })?;
    let text = fs::read_to_string(&module_path).map_err(|e| io_err(&module_path, e))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines
        .first()
        .is_none_or(|l| !l.eq_ignore_ascii_case("filesystem.squashfs"))
    {
        return Err(refuse(format!(
            "{}: the first layer is not filesystem.squashfs",
            module_path.display()
        )));
    }
    let mut merged = HashedTree::new(base_tree, &|_| {}).map_err(|e| refuse(e.to_string()))?;
    let base_digest = hex(&merged.digest());
    let mut layers = Vec::new();
    let mut current_version = base_version.clone();
    for line in &lines[1..] {
        let Some(name) = line.strip_suffix(".squashfs") else {
            return Err(refuse(format!(
                "{}: layer {line:?} is not a SquashFS image",
                module_path.display()
            )));
        };
        if !version::is_safe_name(name) || name.eq_ignore_ascii_case("filesystem") {
            return Err(refuse(format!(
                "{}: layer name {name:?} is not usable",
                module_path.display()
            )));
        }
        let rel = format!("live/{line}");
        let p = medium.find(&rel).ok_or_else(|| {
            refuse(format!(
                "{root}: the module file lists {rel}, which is missing"
            ))
        })?;
        let what = p.display().to_string();
        let layer =
            HashedTree::new(read_image_tree(&p)?, &|_| {}).map_err(|e| refuse(e.to_string()))?;
        merged = merged
            .stack(&layer)
            .map_err(|e| refuse(format!("{what}: {e}")))?;
        let v = release::os_release(&merged.tree)
            .unwrap_or_default()
            .version
            .ok_or_else(|| {
                refuse(format!(
                    "{root}: no version in /etc/os-release with {line} stacked"
                ))
            })?;
        let size = fs::metadata(&p).map_err(|e| io_err(&p, e))?.len();
        layers.push(Layer {
            name: name.to_string(),
            size,
            sha256: hex(&sha_of(&p)?),
            version: v.clone(),
        });
        current_version = v;
    }
    let current_digest = hex(&merged.digest());

    // Boot files: every other file on the medium.
    let mut boot_files = Vec::new();
    collect(medium, &medium.root, &mut boot_files)?;
    boot_files.sort_by(|a, b| a.path.cmp(&b.path));

    let state = State {
        state_format: STATE_FORMAT,
        product: product.clone(),
        build_target: opts.build_target.clone().unwrap_or_else(|| "amd64".into()),
        channel: opts.channel.clone().unwrap_or_else(|| "stable".into()),
        base_version: base_version.clone(),
        base_tree_digest: base_digest,
        current_version: current_version.clone(),
        current_tree_digest: current_digest,
        module_file: module_name,
        max_layers: opts.max_layers.unwrap_or(DEFAULT_MAX_LAYERS),
        layers: layers.clone(),
        boot_files,
        keyring: keys.as_ref().map(|k| k.0.clone()),
        key_fingerprints: keys.map(|k| k.1).unwrap_or_default(),
        writer_format: 0,
    };
    let live = medium.live();
    let lock = live.join(LOCK_FILE);
    if !lock.exists() {
        write_file(fs, &lock, b"").map_err(|e| io_err(&lock, e))?;
    }
    let staging = live.join(STAGING_DIR);
    if !staging.is_dir() {
        fs.mkdir(&staging).map_err(|e| io_err(&staging, e))?;
    }
    if let Some(k) = &given {
        let p = live.join(&k.file_name);
        write_file(fs, &p, &k.bytes).map_err(|e| io_err(&p, e))?;
    }
    write_file(fs, &live.join(STATE_FILE), state.to_yaml().as_bytes())
        .map_err(|e| io_err(&live, e))?;
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    // Keyrings trusted no more (an interrupted adopt leaves them to `recover`).
    let strays = stray_keyrings(medium, &state);
    for p in &strays {
        fs.unlink(p).map_err(|e| io_err(p, e))?;
    }
    if !strays.is_empty() {
        fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    }
    Ok(AdoptReport {
        product,
        base_version,
        current_version,
        layers: layers.into_iter().map(|l| l.name).collect(),
        boot_files: state.boot_files.len(),
        keyring: state.keyring.clone(),
        key_fingerprints: state.key_fingerprints.clone(),
    })
}

/// The tree of the SquashFS image at `path` (the reader's errors name the image).
pub fn read_image_tree(path: &Path) -> Result<Tree, MediumError> {
    Archive::open(path)
        .and_then(|a| a.read_tree())
        .map_err(|e| refuse(e.to_string()))
}

/// Checks the trees the medium's layers stack to against the state, in userspace: the base's
/// tree digest and that of the whole stack (`verify --deep`).
pub fn verify_trees(
    medium: &Medium,
    state: &State,
    progress: &dyn Progress,
) -> Result<(), MediumError> {
    let changed = |what: String| {
        refuse(format!(
            "{}: {what}; the medium was changed by something else than iuk-apply (run \
             `iuk-apply adopt` to take it over again)",
            medium.root.display()
        ))
    };
    let open = |rel: &str| -> Result<HashedTree, MediumError> {
        let p = medium
            .find(rel)
            .ok_or_else(|| changed(format!("{rel} is missing")))?;
        let tree = read_image_tree(&p).map_err(|e| changed(e.to_string()))?;
        HashedTree::with_progress(tree, &format!("hashing {rel}"), progress)
            .map_err(|e| refuse(e.to_string()))
    };
    let mut stack = open(BASE)?;
    if hex(&stack.digest()) != state.base_tree_digest {
        return Err(changed(format!(
            "{BASE} does not hold the tree of {} the state records",
            state.base_version
        )));
    }
    for l in &state.layers {
        let rel = format!("live/{}.squashfs", l.name);
        stack = stack
            .stack(&open(&rel)?)
            .map_err(|e| refuse(format!("{rel}: {e}")))?;
    }
    if hex(&stack.digest()) != state.current_tree_digest {
        return Err(changed(format!(
            "the layers do not stack to the tree of {} the state records",
            state.current_version
        )));
    }
    Ok(())
}

fn collect(medium: &Medium, dir: &Path, out: &mut Vec<FileEntry>) -> Result<(), MediumError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p
            .strip_prefix(&medium.root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        let md = fs::symlink_metadata(&p).map_err(|e| io_err(&p, e))?;
        if md.is_dir() {
            if !is_protected(&rel) {
                collect(medium, &p, out)?;
            }
        } else if md.is_file()
            && !is_protected(&rel)
            && !INSTALLER_FILES.iter().any(|f| f.eq_ignore_ascii_case(&rel))
        {
            out.push(FileEntry {
                path: rel,
                size: md.len(),
                sha256: hex(&sha_of(&p)?),
            });
        }
    }
    Ok(())
}
