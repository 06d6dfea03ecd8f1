//! `adopt`: takes over a medium that another installer made and upgraded (Tails' own installer
//! leaves the base plus one diff layer named in `live/<Product>.module`). Reads the module list
//! (`filesystem.<P>.module` first, as live-boot does), stacks the layers in userspace, reads the
//! base and current versions from the base's and the stacked tree's `/etc/os-release`, records
//! both tree digests, hashes the layers and the boot files (never installer-made files such as
//! `syslinux/ldlinux.sys`), then writes the state, the lock file and the staging directory.
//! An inconsistent medium is refused before anything is written. The trusted keys are those
//! given (`--keyring`), else those the old state names (which must still be intact).

use std::path::{Path, PathBuf};

use super::beneath::Kind;
use super::fsops::{write_file, MediumFs};
use super::keyring::{
    keyring_files, prepare_keyring, stray_keyrings, trusted_keyring, KeyringInput, NewKeyring,
};
use super::stack::{hash_tree, read_image_tree, stack_layer};
use super::state::{Layer, State, STATE_FORMAT};
use super::{
    io_err, read_module_text, refuse, Medium, MediumError, BASE, DEFAULT_MAX_LAYERS, LOCK_FILE,
    STAGING_DIR, STATE_FILE,
};
use crate::boot::is_protected;
use crate::kit::FileEntry;
use crate::progress::NoProgress;
use crate::release;
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

/// Takes over the medium.
pub fn adopt(
    medium: &Medium,
    opts: &AdoptOptions,
    fs: &mut dyn MediumFs,
) -> Result<AdoptReport, MediumError> {
    let root = medium.root.display().to_string();
    if medium.journal_pending()? {
        return Err(MediumError::PendingRecovery(medium.root.clone()));
    }
    // The trusted keys: the keyring given, else those of a readable state.
    let given = opts.keyring.as_ref().map(prepare_keyring).transpose()?;
    let keys = adopted_keys(medium, given.as_ref(), &root)?;
    let base_path = medium
        .find(BASE)?
        .ok_or_else(|| refuse(format!("{root}: no {BASE}: not an installed live system")))?;
    let base_tree = read_image_tree(medium, &base_path)?;
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
    let (module_name, module_path, text) = read_module(medium, &product, &root)?;
    let stack = stack_module(medium, base_tree, &module_path, &text, &base_version, &root)?;

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
        base_tree_digest: stack.base_digest,
        current_version: stack.current_version.clone(),
        current_tree_digest: stack.current_digest,
        module_file: module_name,
        max_layers: opts.max_layers.unwrap_or(DEFAULT_MAX_LAYERS),
        layers: stack.layers.clone(),
        boot_files,
        keyring: keys.as_ref().map(|k| k.0.clone()),
        key_fingerprints: keys.map(|k| k.1).unwrap_or_default(),
        writer_format: 0,
    };
    write_adopted(medium, &state, given.as_ref(), fs)?;
    Ok(AdoptReport {
        product,
        base_version,
        current_version: stack.current_version,
        layers: stack.layers.into_iter().map(|l| l.name).collect(),
        boot_files: state.boot_files.len(),
        keyring: state.keyring.clone(),
        key_fingerprints: state.key_fingerprints.clone(),
    })
}

/// The keys the adopted medium trusts (keyring file name and fingerprints): the keyring given,
/// else those the readable state names (which must be intact), else none — refused when a
/// keyring file is on the medium but no readable state names it.
fn adopted_keys(
    medium: &Medium,
    given: Option<&NewKeyring>,
    root: &str,
) -> Result<Option<(String, Vec<String>)>, MediumError> {
    Ok(match given {
        Some(k) => Some((k.file_name.clone(), k.fingerprints.clone())),
        None => match medium.read_state() {
            Ok((old, _, _)) => {
                trusted_keyring(medium, &old)?.map(|t| (t.file_name, t.keyring.fingerprints()))
            }
            Err(_) => {
                let found = keyring_files(medium, None)?;
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
    })
}

/// The module file, as live-boot looks for it (`filesystem.<P>.module`, else `<P>.module`):
/// its name as it exists, its path and its text.
fn read_module(
    medium: &Medium,
    product: &str,
    root: &str,
) -> Result<(String, PathBuf, String), MediumError> {
    let mut found = None;
    for n in [
        format!("filesystem.{product}.module"),
        format!("{product}.module"),
    ] {
        if let Some(p) = medium.find(&format!("live/{n}"))? {
            let name = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or(n);
            found = Some((name, p));
            break;
        }
    }
    let (module_name, module_path) = found.ok_or_else(|| {
        refuse(format!(
            "{root}: no live/filesystem.{product}.module or live/{product}.module"
        ))
    })?;
    let text = read_module_text(medium, &module_path)?;
    Ok((module_name, module_path, text))
}

/// What the module file's stack holds.
struct Stacked {
    /// The base's tree digest.
    base_digest: String,
    /// The diff layers, bottom first.
    layers: Vec<Layer>,
    /// The version the whole stack shows.
    current_version: String,
    /// The whole stack's tree digest.
    current_digest: String,
}

/// Stacks the layers the module file lists on the base, in userspace: each must be a usable
/// SquashFS image on the medium; the version each brings comes from the stacked
/// `/etc/os-release`.
fn stack_module(
    medium: &Medium,
    base_tree: Tree,
    module_path: &Path,
    text: &str,
    base_version: &str,
    root: &str,
) -> Result<Stacked, MediumError> {
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
    let mut merged = hash_tree(base_tree, "", &NoProgress)?;
    let base_digest = hex(&merged.digest());
    let mut layers = Vec::new();
    let mut current_version = base_version.to_string();
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
        let p = medium.find(&rel)?.ok_or_else(|| {
            refuse(format!(
                "{root}: the module file lists {rel}, which is missing"
            ))
        })?;
        let what = p.display().to_string();
        let layer = hash_tree(read_image_tree(medium, &p)?, "", &NoProgress)?;
        merged = stack_layer(&merged, &layer, &what)?;
        let v = release::os_release(&merged.tree)
            .unwrap_or_default()
            .version
            .ok_or_else(|| {
                refuse(format!(
                    "{root}: no version in /etc/os-release with {line} stacked"
                ))
            })?;
        let size = medium.file_len(&p)?;
        layers.push(Layer {
            name: name.to_string(),
            size,
            sha256: hex(&medium.sha_of(&p)?),
            version: v.clone(),
        });
        current_version = v;
    }
    Ok(Stacked {
        base_digest,
        layers,
        current_version,
        current_digest: hex(&merged.digest()),
    })
}

/// Writes what adopt makes: the lock file and the staging directory when missing, the keyring
/// given, the state; then deletes the keyrings trusted no more (an interrupted adopt leaves them
/// to `recover`).
fn write_adopted(
    medium: &Medium,
    state: &State,
    given: Option<&NewKeyring>,
    fs: &mut dyn MediumFs,
) -> Result<(), MediumError> {
    let live = medium.live();
    let lock = live.join(LOCK_FILE);
    if medium.kind(&lock)?.is_none() {
        write_file(fs, &lock, b"").map_err(|e| io_err(&lock, e))?;
    }
    let staging = live.join(STAGING_DIR);
    if !medium.is_dir(&staging)? {
        fs.mkdir(&staging).map_err(|e| io_err(&staging, e))?;
    }
    if let Some(k) = given {
        let p = live.join(&k.file_name);
        write_file(fs, &p, &k.bytes).map_err(|e| io_err(&p, e))?;
    }
    write_file(fs, &live.join(STATE_FILE), state.to_yaml().as_bytes())
        .map_err(|e| io_err(&live, e))?;
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    // Keyrings trusted no more (an interrupted adopt leaves them to `recover`).
    let strays = stray_keyrings(medium, state)?;
    for p in &strays {
        fs.unlink(p).map_err(|e| io_err(p, e))?;
    }
    if !strays.is_empty() {
        fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    }
    Ok(())
}

fn collect(medium: &Medium, dir: &Path, out: &mut Vec<FileEntry>) -> Result<(), MediumError> {
    for (name, kind) in medium.read_dir(dir)? {
        let p = dir.join(&name);
        let rel = p
            .strip_prefix(&medium.root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        match kind {
            // Adopt reads every file of the medium: a link anywhere is refused.
            Kind::Symlink => return Err(MediumError::Symlink(p)),
            Kind::Dir if !is_protected(&rel) => collect(medium, &p, out)?,
            Kind::File
                if !is_protected(&rel)
                    && !INSTALLER_FILES.iter().any(|f| f.eq_ignore_ascii_case(&rel)) =>
            {
                out.push(FileEntry {
                    path: rel,
                    size: medium.file_len(&p)?,
                    sha256: hex(&medium.sha_of(&p)?),
                });
            }
            _ => {}
        }
    }
    Ok(())
}
