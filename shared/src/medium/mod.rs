//! The installed medium (DESIGN.md, "The medium"): a directory laid out like the ISO — the base
//! `live/filesystem.squashfs`, diff layers `live/<layer>.squashfs`, the module file, the boot
//! files — plus iuk's own files in `live/`: the state, the lock, the journal and the staging
//! directory. Every name comparison on a medium is case-insensitive (FAT).
//!
//! [`init`] installs an ISO, [`adopt`] takes over an installed medium, [`plan`] verifies a kit
//! and [`apply`] stacks it in the crash-safe order of DESIGN.md, [`keyring`] holds and rotates
//! the trusted keys, [`signed_udf`] checks signed upgrade descriptions, [`recover`] completes or
//! discards an interrupted apply. The mutating commands share one journal commit ([`commit`]);
//! [`stack`] reads the layers. No module here imports one that imports it back: `commit`,
//! `stack`, `journal`, `state` and `fsops` sit below the commands that use them, and [`beneath`]
//! below everything: every path on the medium is resolved through it, never following a link.

pub mod adopt;
pub mod apply;
pub mod beneath;
pub mod commit;
#[cfg(test)]
pub mod crashsim;
pub mod fsops;
pub mod init;
pub mod journal;
pub mod keyring;
pub mod plan;
mod proposal;
pub mod rebuild;
pub mod recover;
pub mod signed_udf;
pub mod stack;
pub mod state;

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use beneath::{Beneath, Kind};

use sha2::{Digest, Sha256};

use state::State;

/// State file name in `live/`.
pub const STATE_FILE: &str = "iuk-state.yml";
/// Lock file name in `live/`.
pub const LOCK_FILE: &str = "iuk.lock";
/// Journal file name in `live/`.
pub const JOURNAL_FILE: &str = "iuk-journal";
/// Staging directory name in `live/`.
pub const STAGING_DIR: &str = "iuk-staging";
/// Intent file name in the staging directory.
pub const INTENT_FILE: &str = "intent";
/// The base image, relative to the medium root.
pub const BASE: &str = "live/filesystem.squashfs";
/// Keyring file names on the medium: `live/iuk-keyring-<sha256>.asc`.
pub const KEYRING_PREFIX: &str = "iuk-keyring-";
/// See [`KEYRING_PREFIX`].
pub const KEYRING_SUFFIX: &str = ".asc";
/// Largest module file accepted: one layer file name per line, far below this.
pub const MAX_MODULE: u64 = 1 << 20;
/// Largest intent file accepted: it names the layer, the state and the boot files written at
/// their final names, which the journal lists too, so it is smaller than any journal.
pub const MAX_INTENT: u64 = journal::MAX_JOURNAL as u64;
/// The largest file a FAT filesystem holds (4 GiB − 1): no file a kit puts on a medium may be
/// larger, whatever it declares.
pub const MAX_MEDIUM_FILE: u64 = (1 << 32) - 1;
/// Default bound on the number of diff layers.
pub const DEFAULT_MAX_LAYERS: u32 = 8;

/// Errors of medium operations. Each message names the medium or file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MediumError {
    /// An I/O error on a path.
    #[error("{}: {error}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The medium has no readable iuk state.
    #[error("{}: {problem}", path.display())]
    State {
        /// The medium.
        path: PathBuf,
        /// What is wrong, with advice.
        problem: String,
    },
    /// The request is refused; nothing was written.
    #[error("{0}")]
    Refused(String),
    /// Another iuk-apply holds the medium's lock (the path is the lock file, `live/iuk.lock`).
    #[error(
        "{}: locked by another iuk-apply working on this medium; wait for it to finish, then run \
         the command again (the lock goes away with the process that holds it)",
        .0.display()
    )]
    Locked(PathBuf),
    /// A symbolic link on the medium where a command must read, write or delete: refused, nothing
    /// was written (the path is the link's).
    #[error("{}: a symbolic link on the medium; iuk-apply never follows links on a medium (a FAT medium has none), and nothing was written: remove the link, then run the command again", .0.display())]
    Symlink(PathBuf),
    /// An interrupted apply must be recovered first.
    #[error("{}: an interrupted apply is pending; run `iuk-apply recover --medium {}` first", .0.display(), .0.display())]
    PendingRecovery(PathBuf),
}

/// A refusal: the request is refused and nothing was written; `msg` names the input and says
/// what to do.
pub fn refuse(msg: impl Into<String>) -> MediumError {
    MediumError::Refused(msg.into())
}

/// True when `name` (a file name in `live/`) is a keyring file name, compared
/// case-insensitively.
pub fn is_keyring_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.len() > KEYRING_PREFIX.len() + KEYRING_SUFFIX.len()
        && n.starts_with(KEYRING_PREFIX)
        && n.ends_with(KEYRING_SUFFIX)
        && !n.contains('/')
}

/// Shorthand for an I/O error on a path; a link met on the way becomes [`MediumError::Symlink`]
/// naming the link.
pub fn io_err(path: &Path, error: io::Error) -> MediumError {
    io_err_or(error, |error| MediumError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// A link met on the way as [`MediumError::Symlink`] naming it; any other I/O error as
/// `other` says it (a refusal in the caller's words).
pub fn io_err_or(error: io::Error, other: impl FnOnce(io::Error) -> MediumError) -> MediumError {
    match beneath::symlink_of(&error) {
        Some(link) => MediumError::Symlink(link.to_path_buf()),
        None => other(error),
    }
}

/// A medium directory.
#[derive(Clone, Debug)]
pub struct Medium {
    /// The medium's root (the mounted system partition).
    pub root: PathBuf,
}

/// The medium's exclusive lock, released when dropped.
pub struct Lock {
    _file: File,
}

impl Medium {
    /// A medium at `root`.
    pub fn new(root: &Path) -> Medium {
        Medium {
            root: root.to_path_buf(),
        }
    }

    /// `live/`.
    pub fn live(&self) -> PathBuf {
        self.root.join("live")
    }

    /// A file in `live/`.
    pub fn live_file(&self, name: &str) -> PathBuf {
        self.live().join(name)
    }

    /// The staging directory.
    pub fn staging(&self) -> PathBuf {
        self.live_file(STAGING_DIR)
    }

    /// Path resolution below the root that never follows a link: every access to the medium
    /// goes through it.
    pub fn beneath(&self) -> Beneath {
        Beneath::new(&self.root)
    }

    /// Finds an existing path under the root, each component compared case-insensitively (an
    /// exact match wins). Returns the path as it exists; a link on the way (or there) is refused,
    /// naming it.
    pub fn find(&self, rel: &str) -> Result<Option<PathBuf>, MediumError> {
        let mut cur = self.root.clone();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            match self.find_child(&cur, comp)? {
                Some(p) => cur = p,
                None => return Ok(None),
            }
        }
        self.kind(&cur)?;
        Ok(Some(cur))
    }

    /// The existing child of directory `dir` named `name`, compared case-insensitively (an
    /// exact match wins); `None` when `dir` is no directory or has no such child. A link named
    /// so is refused.
    pub fn find_child(&self, dir: &Path, name: &str) -> Result<Option<PathBuf>, MediumError> {
        let exact = dir.join(name);
        if self.kind(&exact)?.is_some() {
            return Ok(Some(exact));
        }
        if self.kind(dir)? != Some(Kind::Dir) {
            return Ok(None);
        }
        let lower = name.to_lowercase();
        for (n, kind) in self.read_dir(dir)? {
            if n.to_str().is_some_and(|n| n.to_lowercase() == lower) {
                let p = dir.join(&n);
                if kind == Kind::Symlink {
                    return Err(MediumError::Symlink(p));
                }
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// What `path` is (`None`: missing); a link on the way or there is refused, naming it.
    pub fn kind(&self, path: &Path) -> Result<Option<Kind>, MediumError> {
        self.beneath().kind(path).map_err(|e| io_err(path, e))
    }

    /// True when `path` is a regular file; a link on the way is refused.
    pub fn is_file(&self, path: &Path) -> Result<bool, MediumError> {
        Ok(self.kind(path)? == Some(Kind::File))
    }

    /// True when `path` is a directory; a link on the way is refused.
    pub fn is_dir(&self, path: &Path) -> Result<bool, MediumError> {
        Ok(self.kind(path)? == Some(Kind::Dir))
    }

    /// The size of the file `path`; a link on the way is refused.
    pub fn file_len(&self, path: &Path) -> Result<u64, MediumError> {
        self.beneath()
            .metadata(path)
            .map(|m| m.len())
            .map_err(|e| io_err(path, e))
    }

    /// Opens `path` for reading; a link on the way is refused.
    pub fn open(&self, path: &Path) -> Result<File, MediumError> {
        self.beneath().open(path).map_err(|e| io_err(path, e))
    }

    /// The names in directory `path` and what each is, sorted.
    pub fn read_dir(&self, path: &Path) -> Result<Vec<(std::ffi::OsString, Kind)>, MediumError> {
        self.beneath().read_dir(path).map_err(|e| io_err(path, e))
    }

    /// Reads the file `path` whole, at most `limit` bytes (checked before allocating); a link on
    /// the way fails with [`beneath::SymlinkError`].
    pub fn read_capped(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        crate::io::read_capped_file(self.beneath().open(path)?, limit)
    }

    /// The sha256 of the file `path` on the medium.
    pub fn sha_of(&self, path: &Path) -> Result<[u8; 32], MediumError> {
        sha_of_file(self.open(path)?, path)
    }

    /// [`Medium::sha_of`] in lower-case hex.
    pub fn hex_sha_of(&self, path: &Path) -> Result<String, MediumError> {
        Ok(crate::tree::hex(&self.sha_of(path)?))
    }

    /// Drops a file's pages from the page cache so that the next read comes from the device
    /// (used before re-reading written files to check them); a file that cannot be opened is
    /// left alone (the read that follows reports it).
    pub fn drop_cache(&self, path: &Path) {
        if let Ok(f) = self.beneath().open(path) {
            // SAFETY: a valid open descriptor; the call only gives the kernel advice.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }

    /// Refuses, naming it, a link as the directory `dir` or as any entry in it (a missing `dir`
    /// is fine): for directories a command reads and may delete in, such as `live/` for
    /// `recover`.
    pub fn refuse_links_in(&self, dir: &Path) -> Result<(), MediumError> {
        if self.kind(dir)? != Some(Kind::Dir) {
            return Ok(());
        }
        for (name, kind) in self.read_dir(dir)? {
            if kind == Kind::Symlink {
                return Err(MediumError::Symlink(dir.join(name)));
            }
        }
        Ok(())
    }

    /// Takes the exclusive lock on `live/iuk.lock` (which init and adopt create).
    pub fn lock(&self) -> Result<Lock, MediumError> {
        let path = self.live_file(LOCK_FILE);
        let file = self.beneath().open(&path).map_err(|e| {
            io_err_or(e, |e| MediumError::State {
                path: self.root.clone(),
                problem: format!(
                    "no {LOCK_FILE} ({e}); is this a medium made by `iuk-apply init` or \
                         `adopt`?"
                ),
            })
        })?;
        // SAFETY: a valid descriptor; flock only takes an advisory lock.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            return Err(MediumError::Locked(path));
        }
        Ok(Lock { _file: file })
    }

    /// Reads the state, returning it with its text and the sha256 of its bytes.
    pub fn read_state(&self) -> Result<(State, String, [u8; 32]), MediumError> {
        let path = self.live_file(STATE_FILE);
        let bytes = self
            .read_capped(&path, state::MAX_STATE as u64)
            .map_err(|e| {
                io_err_or(e, |e| MediumError::State {
                    path: self.root.clone(),
                    problem: match e.kind() {
                        io::ErrorKind::NotFound => format!(
                        "no live/{STATE_FILE}: not a medium of iuk-apply (use `iuk-apply init` or \
                         `adopt`)"
                    ),
                        io::ErrorKind::FileTooLarge => format!(
                        "live/{STATE_FILE}: {e}: not a state iuk-apply wrote (damaged medium?); \
                         run `iuk-apply adopt` to write it anew"
                    ),
                        _ => format!("live/{STATE_FILE}: {e}"),
                    },
                })
            })?;
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        let text = String::from_utf8(bytes).map_err(|_| MediumError::State {
            path: self.root.clone(),
            problem: format!("live/{STATE_FILE} is not UTF-8 text; run `iuk-apply adopt`"),
        })?;
        let state = State::from_yaml(&text).map_err(|e| MediumError::State {
            path: self.root.clone(),
            problem: format!("live/{STATE_FILE}: {e}; run `iuk-apply adopt`"),
        })?;
        Ok((state, text, sha))
    }

    /// True when a journal file exists (an apply may need recovery); a link there is refused.
    pub fn journal_pending(&self) -> Result<bool, MediumError> {
        Ok(self.kind(&self.live_file(JOURNAL_FILE))?.is_some())
    }

    /// True when the staging directory holds anything (an interrupted apply left work); a link
    /// there is refused.
    pub fn staging_pending(&self) -> Result<bool, MediumError> {
        if !self.is_dir(&self.staging())? {
            return Ok(false);
        }
        Ok(!self.read_dir(&self.staging())?.is_empty())
    }

    /// The refusal of a medium that no longer matches its state: `what` differs, with the
    /// advice to adopt it.
    pub fn changed(&self, what: impl std::fmt::Display) -> MediumError {
        MediumError::Refused(format!(
            "{}: {what}; the medium was changed by something else than iuk-apply (run \
             `iuk-apply adopt` to take it over again)",
            self.root.display()
        ))
    }

    /// Checks that the medium still matches its state: module file content, base present, every
    /// layer and boot file present with its recorded size. `deep` also hashes every layer and
    /// boot file.
    pub fn check_consistent(&self, state: &State, deep: bool) -> Result<(), MediumError> {
        let changed = |what: String| self.changed(what);
        let module = self
            .find(&format!("live/{}", state.module_file))?
            .ok_or_else(|| changed(format!("live/{} is missing", state.module_file)))?;
        let text = self
            .read_capped(&module, MAX_MODULE)
            .map_err(|e| io_err_or(e, |e| changed(format!("live/{}: {e}", state.module_file))))?;
        let lines = |t: &str| -> Vec<String> {
            t.lines()
                .map(|l| l.trim().to_lowercase())
                .filter(|l| !l.is_empty())
                .collect()
        };
        if lines(&String::from_utf8_lossy(&text)) != lines(&state.module_text()) {
            return Err(changed(format!(
                "live/{} does not list the recorded layers",
                state.module_file
            )));
        }
        if self.find(BASE)?.is_none() {
            return Err(changed(format!("{BASE} is missing")));
        }
        for l in &state.layers {
            let rel = format!("live/{}.squashfs", l.name);
            let p = self
                .find(&rel)?
                .ok_or_else(|| changed(format!("{rel} is missing")))?;
            let size = self.file_len(&p)?;
            if size != l.size {
                return Err(changed(format!(
                    "{rel} has {size} bytes, the state says {}",
                    l.size
                )));
            }
            if deep && self.hex_sha_of(&p)? != l.sha256 {
                return Err(changed(format!("{rel} does not have the recorded sha256")));
            }
        }
        for f in &state.boot_files {
            let p = self
                .find(&f.path)?
                .ok_or_else(|| changed(format!("boot file {} is missing", f.path)))?;
            let size = self.file_len(&p)?;
            if size != f.size {
                return Err(changed(format!(
                    "boot file {} has {size} bytes, the state says {}",
                    f.path, f.size
                )));
            }
            if deep && self.hex_sha_of(&p)? != f.sha256 {
                return Err(changed(format!(
                    "boot file {} does not have the recorded sha256",
                    f.path
                )));
            }
        }
        Ok(())
    }
}

/// Reads a module file (one layer file name per line) of `medium` whole: at most
/// [`MAX_MODULE`] bytes, checked before anything is allocated, and UTF-8 text.
pub fn read_module_text(medium: &Medium, path: &Path) -> Result<String, MediumError> {
    let bytes = medium.read_capped(path, MAX_MODULE).map_err(|e| {
        if e.kind() == io::ErrorKind::FileTooLarge {
            refuse(format!(
                "{}: {e}: not a module file of live-boot (damaged medium?); restore it (one \
                 layer file name per line) or reinstall the medium",
                path.display()
            ))
        } else {
            io_err(path, e)
        }
    })?;
    String::from_utf8(bytes).map_err(|_| {
        io_err(
            path,
            io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
        )
    })
}

/// The sha256 of an open file (`path` names it in errors).
pub fn sha_of_file(mut f: File, path: &Path) -> Result<[u8; 32], MediumError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// True when a name can be created on a FAT filesystem (no control characters, none of
/// `"*:<>?\|`, no trailing dot or space, at most 255 bytes).
pub fn fat_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.ends_with('.')
        && !name.ends_with(' ')
        && !name
            .chars()
            .any(|c| (c as u32) < 0x20 || "\"*:<>?\\|".contains(c))
}

/// True when `path` is relative, made of FAT-safe components, without `.`/`..` or empty parts.
pub fn safe_relative_path(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && path.split('/').all(fat_safe_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn path_rules() {
        for ok in ["EFI/BOOT/grub.cfg", "live/vmlinuz", "a b/c-d_e.f"] {
            assert!(safe_relative_path(ok), "{ok}");
        }
        for bad in [
            "", "/etc/x", "a/../b", "a/./b", "a//b", "a\\b", "x:y", "a/b.", "ctl\u{1}",
        ] {
            assert!(!safe_relative_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn finds_names_case_insensitively() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("EFI/Boot")).unwrap();
        fs::write(d.path().join("EFI/Boot/GRUB.cfg"), b"x").unwrap();
        let m = Medium::new(d.path());
        assert_eq!(
            m.find("efi/boot/grub.cfg").unwrap(),
            Some(d.path().join("EFI/Boot/GRUB.cfg"))
        );
        assert_eq!(m.find("efi/boot/none").unwrap(), None);
        assert_eq!(m.find("efi/boot/grub.cfg/x").unwrap(), None);
    }
}
