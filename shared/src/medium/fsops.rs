//! The one small interface through which the applier changes a medium (DESIGN.md, "Crash
//! model"): create, open for writing, write, truncate, fsync, unlink, mkdir, rmdir, fsync of a
//! directory — all called from one thread, in program order. [`RealFs`] does them on the real
//! filesystem; tests put a crash-simulating implementation in its place and replay every prefix
//! of an apply with every allowed loss of work not yet fsynced.
//!
//! Nothing here needs chmod, chown, symlink, link or rename, so every operation works on a FAT
//! medium (Linux vfat, fusefat): files are created with the process's default mode and written
//! plainly. [`RealFs`] resolves every path below the medium's root without following a link
//! ([`Beneath`]): a link on the way fails the operation, naming the link.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::beneath::Beneath;

/// A handle to a file opened for writing through a [`MediumFs`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Handle(pub usize);

/// The mutating operations the applier performs on a medium.
pub trait MediumFs {
    /// Creates `path` (truncating an existing file) and opens it for writing.
    fn create(&mut self, path: &Path) -> io::Result<Handle>;
    /// Opens an existing file for writing in place (no truncation).
    fn open_write(&mut self, path: &Path) -> io::Result<Handle>;
    /// Writes `data` at `offset`.
    fn write_at(&mut self, h: Handle, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Sets the file's length.
    fn truncate(&mut self, h: Handle, len: u64) -> io::Result<()>;
    /// Makes the file's data durable.
    fn fsync(&mut self, h: Handle) -> io::Result<()>;
    /// Closes the handle.
    fn close(&mut self, h: Handle) -> io::Result<()>;
    /// Removes a file.
    fn unlink(&mut self, path: &Path) -> io::Result<()>;
    /// Creates a directory.
    fn mkdir(&mut self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn rmdir(&mut self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable.
    fn fsync_dir(&mut self, path: &Path) -> io::Result<()>;
}

/// The real filesystem below a medium's root.
pub struct RealFs {
    beneath: Beneath,
    files: Vec<Option<File>>,
}

impl RealFs {
    /// A fresh instance with no open files, for the medium at `root`.
    pub fn new(root: &Path) -> RealFs {
        RealFs {
            beneath: Beneath::new(root),
            files: Vec::new(),
        }
    }

    fn file(&mut self, h: Handle) -> io::Result<&mut File> {
        self.files
            .get_mut(h.0)
            .and_then(|f| f.as_mut())
            .ok_or_else(|| io::Error::other("write to a closed handle"))
    }

    fn keep(&mut self, f: File) -> Handle {
        self.files.push(Some(f));
        Handle(self.files.len() - 1)
    }
}

impl MediumFs for RealFs {
    fn create(&mut self, path: &Path) -> io::Result<Handle> {
        let f = self.beneath.open_write(path, true, true)?;
        // fusefat ignores O_TRUNC on an existing file: shrink it explicitly.
        if f.metadata()?.len() != 0 {
            f.set_len(0)?;
        }
        Ok(self.keep(f))
    }
    fn open_write(&mut self, path: &Path) -> io::Result<Handle> {
        let f = self.beneath.open_write(path, false, false)?;
        Ok(self.keep(f))
    }
    fn write_at(&mut self, h: Handle, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = self.file(h)?;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(data)
    }
    fn truncate(&mut self, h: Handle, len: u64) -> io::Result<()> {
        // fusefat refuses ftruncate unless it shrinks the file (EPERM): skip a no-op.
        let f = self.file(h)?;
        if f.metadata()?.len() == len {
            return Ok(());
        }
        f.set_len(len)
    }
    fn fsync(&mut self, h: Handle) -> io::Result<()> {
        self.file(h)?.sync_all()
    }
    fn close(&mut self, h: Handle) -> io::Result<()> {
        match self.files.get_mut(h.0) {
            Some(f) => {
                *f = None;
                Ok(())
            }
            None => Err(io::Error::other("close of an unknown handle")),
        }
    }
    fn unlink(&mut self, path: &Path) -> io::Result<()> {
        self.beneath.unlink(path)
    }
    fn mkdir(&mut self, path: &Path) -> io::Result<()> {
        self.beneath.mkdir(path)
    }
    fn rmdir(&mut self, path: &Path) -> io::Result<()> {
        self.beneath.rmdir(path)
    }
    fn fsync_dir(&mut self, path: &Path) -> io::Result<()> {
        self.beneath.fsync_dir(path)
    }
}

/// Writes `data` as the whole content of a new (or truncated) file, fsyncs and closes it.
pub fn write_file(fs: &mut dyn MediumFs, path: &Path, data: &[u8]) -> io::Result<()> {
    let h = fs.create(path)?;
    if !data.is_empty() {
        fs.write_at(h, 0, data)?;
    }
    fs.fsync(h)?;
    fs.close(h)
}

/// Rewrites an existing file in place with `data` (write from offset 0, then truncate), fsyncs
/// and closes it; creates it when it does not exist.
pub fn rewrite_file(fs: &mut dyn MediumFs, path: &Path, data: &[u8]) -> io::Result<()> {
    let h = match fs.open_write(path) {
        Ok(h) => h,
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs.create(path)?,
        Err(e) => return Err(e),
    };
    if !data.is_empty() {
        fs.write_at(h, 0, data)?;
    }
    fs.truncate(h, data.len() as u64)?;
    fs.fsync(h)?;
    fs.close(h)
}

/// The parent directory of a medium path (the medium root for top-level names).
pub fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}
