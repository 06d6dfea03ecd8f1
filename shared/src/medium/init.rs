//! `init`: installs a release onto an empty medium as an installer does — the boot tree
//! (`isolinux/` → `syslinux/`), the base image, the module file `live/<Product>.module`, the
//! state, the lock file and the staging directory — and, given a keyring, the trusted keys as
//! `live/iuk-keyring-<sha256>.asc` (checked before anything is written). Files are written
//! plainly (no chmod, chown, symlink or link), so a FAT medium works.

use std::fs;
use std::path::Path;

use super::commit::copy_in;
use super::fsops::{write_file, MediumFs};
use super::keyring::{prepare_keyring, KeyringInput};
use super::state::{State, STATE_FORMAT};
use super::{
    io_err, refuse, Medium, MediumError, BASE, DEFAULT_MAX_LAYERS, LOCK_FILE, STAGING_DIR,
    STATE_FILE,
};
use crate::boot::{self, BootFile};
use crate::progress::NoProgress;
use crate::release::{self, Release, ROOTFS};
use crate::tree::{content_hashes, hex, tree_digest};
use crate::version;

/// What `init` needs besides the medium and the release.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Product name (default: the root's os-release).
    pub product: Option<String>,
    /// Version (default: the root's os-release).
    pub version: Option<String>,
    /// Build target (default `amd64`).
    pub build_target: Option<String>,
    /// Channel (default `stable`).
    pub channel: Option<String>,
    /// Bound on diff layers (default 8).
    pub max_layers: Option<u32>,
    /// The keys the medium trusts (stored as `live/iuk-keyring-<sha256>.asc`); without it the
    /// medium accepts unsigned kits.
    pub keyring: Option<KeyringInput>,
}

/// What `init` installed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InitReport {
    /// Product.
    pub product: String,
    /// Version installed.
    pub version: String,
    /// Boot files written.
    pub boot_files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Symlinks of the release left out (FAT has none).
    pub skipped_symlinks: Vec<String>,
    /// The keyring file stored in `live/`, if any.
    pub keyring: Option<String>,
    /// The fingerprints of the trusted keys.
    pub key_fingerprints: Vec<String>,
}

fn mkdirs(medium: &Medium, fs: &mut dyn MediumFs, rel: &str) -> Result<(), MediumError> {
    let mut cur = medium.root.clone();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        cur.push(comp);
        if !medium.is_dir(&cur)? {
            fs.mkdir(&cur).map_err(|e| io_err(&cur, e))?;
        }
    }
    Ok(())
}

/// `bytes + size`, refused when it does not fit a u64 (sizes a damaged ISO declares).
fn add_size(bytes: u64, size: u64, iso: &Path) -> Result<u64, MediumError> {
    bytes.checked_add(size).ok_or_else(|| {
        refuse(format!(
            "{}: its files' sizes add up to more than 2^64 bytes (a damaged image)",
            iso.display()
        ))
    })
}

/// Installs `release` onto the empty (or missing) directory `medium`.
pub fn init(
    medium: &Medium,
    iso: &Path,
    opts: &InitOptions,
    fs: &mut dyn MediumFs,
) -> Result<InitReport, MediumError> {
    let keyring = opts.keyring.as_ref().map(prepare_keyring).transpose()?;
    let missing = match fs::read_dir(&medium.root) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(refuse(format!("{}: not empty; init installs onto an empty medium (use `adopt` for an installed one)", medium.root.display())));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(io_err(&medium.root, e)),
    };
    let rel_err = |e: release::ReleaseError| refuse(e.to_string());
    let release = Release::open(iso).map_err(rel_err)?;
    let rootfs = release.rootfs().map_err(rel_err)?;
    let tree = rootfs
        .read_tree()
        .map_err(|e| refuse(format!("{}: {ROOTFS}: {e}", iso.display())))?;
    let os = release::os_release(&tree).unwrap_or_default();
    let product = opts.product.clone().or(os.product).ok_or_else(|| {
        refuse(format!(
            "{}: no product in /etc/os-release; pass --product",
            iso.display()
        ))
    })?;
    let version_s = opts.version.clone().or(os.version).ok_or_else(|| {
        refuse(format!(
            "{}: no version in /etc/os-release; pass --version",
            iso.display()
        ))
    })?;
    let target = opts.build_target.clone().unwrap_or_else(|| "amd64".into());
    let channel = opts.channel.clone().unwrap_or_else(|| "stable".into());
    for (what, v) in [
        ("product", &product),
        ("version", &version_s),
        ("build target", &target),
        ("channel", &channel),
    ] {
        if !version::is_safe_name(v) {
            return Err(refuse(format!(
                "{what} {v:?} may only hold letters, digits and . _ + ~ -"
            )));
        }
    }
    let hashes = content_hashes(&tree, &|_| {}).map_err(|e| refuse(e.to_string()))?;
    let digest = hex(&tree_digest(&tree, &hashes));
    let bt = boot::boot_tree(&release).map_err(|e| refuse(e.to_string()))?;

    // Everything is read and checked: only now is the medium created or written.
    if missing {
        fs::create_dir_all(&medium.root).map_err(|e| io_err(&medium.root, e))?;
    }
    let mut bytes = 0u64;
    mkdirs(medium, fs, "live")?;
    for f in &bt.files {
        if let Some((dir, _)) = f.path.rsplit_once('/') {
            mkdirs(medium, fs, dir)?;
        }
        let (sha, size) = copy_in(
            fs,
            &medium.root.join(&f.path),
            &f.content,
            &NoProgress,
            &mut 0,
        )?;
        // The state records what was written: the release's record must match it.
        if sha != f.sha256 || size != f.size {
            return Err(refuse(format!(
                "{}: {} changed while it was read ({size} bytes written, {} recorded; or                  another sha256); the medium is incomplete: run `iuk-apply init` again on an                  empty medium",
                iso.display(),
                f.path,
                f.size
            )));
        }
        bytes = add_size(bytes, f.size, iso)?;
    }
    let base = release.content(ROOTFS.as_bytes()).map_err(rel_err)?;
    copy_in(fs, &medium.root.join(BASE), &base, &NoProgress, &mut 0)?;
    bytes = add_size(bytes, base.size, iso)?;
    let module_file = format!("{product}.module");
    let state = State {
        state_format: STATE_FORMAT,
        product: product.clone(),
        build_target: target,
        channel,
        base_version: version_s.clone(),
        base_tree_digest: digest.clone(),
        current_version: version_s.clone(),
        current_tree_digest: digest,
        module_file: module_file.clone(),
        max_layers: opts.max_layers.unwrap_or(DEFAULT_MAX_LAYERS),
        layers: Vec::new(),
        boot_files: bt.files.iter().map(BootFile::entry).collect(),
        keyring: keyring.as_ref().map(|k| k.file_name.clone()),
        key_fingerprints: keyring
            .as_ref()
            .map(|k| k.fingerprints.clone())
            .unwrap_or_default(),
        writer_format: 0,
    };
    let live = medium.live();
    if let Some(k) = &keyring {
        let p = live.join(&k.file_name);
        write_file(fs, &p, &k.bytes).map_err(|e| io_err(&p, e))?;
    }
    write_file(fs, &live.join(&module_file), state.module_text().as_bytes())
        .map_err(|e| io_err(&live, e))?;
    write_file(fs, &live.join(LOCK_FILE), b"").map_err(|e| io_err(&live, e))?;
    let staging = live.join(STAGING_DIR);
    fs.mkdir(&staging).map_err(|e| io_err(&staging, e))?;
    // The state last: a medium without it is not an iuk medium yet.
    write_file(fs, &live.join(STATE_FILE), state.to_yaml().as_bytes())
        .map_err(|e| io_err(&live, e))?;
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    fs.fsync_dir(&medium.root)
        .map_err(|e| io_err(&medium.root, e))?;
    Ok(InitReport {
        product,
        version: version_s,
        boot_files: bt.files.len(),
        bytes,
        skipped_symlinks: bt.skipped_symlinks,
        keyring: state.keyring.clone(),
        key_fingerprints: state.key_fingerprints.clone(),
    })
}
