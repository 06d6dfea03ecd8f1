//! Paths on the medium resolved below its root, component by component, never following a
//! symbolic link ("Hostile media and inputs"). Every read, stat, listing, create, write, unlink,
//! mkdir, rmdir and fsync that iuk-apply does on a medium goes through [`Beneath`]: it opens the
//! medium's root directory, then each component with `openat(O_NOFOLLOW | O_DIRECTORY)` from the
//! previous one, and the last with `O_NOFOLLOW`. A component that is a symbolic link fails with
//! a [`SymlinkError`] naming the link (which `io_err` turns into a refusal that names it), so
//! nothing outside the medium directory is ever read, written or deleted, whatever links a
//! hostile or damaged medium holds. The root itself is the directory the user named and may be
//! reached through links.
//!
//! iuk never creates a link on a medium (FAT has none), so a link on a medium is foreign.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// A symbolic link met while resolving a path on the medium (the path of the link itself).
#[derive(Debug)]
pub struct SymlinkError(pub PathBuf);

impl fmt::Display for SymlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: a symbolic link on the medium; iuk-apply never follows links on a medium \
             (a FAT medium has none): remove it, then run the command again",
            self.0.display()
        )
    }
}

impl std::error::Error for SymlinkError {}

/// The link an I/O error stands for, when it is a [`SymlinkError`].
pub fn symlink_of(e: &io::Error) -> Option<&Path> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<SymlinkError>())
        .map(|s| s.0.as_path())
}

/// What a name on the medium is (links are never followed, so never reported as their target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, fifo or socket.
    Other,
}

impl Kind {
    fn of(md: &Metadata) -> Kind {
        let t = md.file_type();
        if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }
}

/// Resolution of paths below a medium root without following links. Paths given to its methods
/// are the root joined with a relative path (as `Medium` builds them); a path that is not below
/// the root, or that has `..` in it, is refused.
#[derive(Clone, Debug)]
pub struct Beneath {
    root: PathBuf,
}

impl Beneath {
    /// Resolution below `root`.
    pub fn new(root: &Path) -> Beneath {
        Beneath {
            root: root.to_path_buf(),
        }
    }

    /// The components of `path` below the root.
    fn components<'a>(&self, path: &'a Path) -> io::Result<Vec<&'a OsStr>> {
        let rel = path.strip_prefix(&self.root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not inside the medium {}", self.root.display()),
            )
        })?;
        let mut out = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("not inside the medium {}", self.root.display()),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn open_root(&self) -> io::Result<OwnedFd> {
        let c = cstring(self.root.as_os_str())?;
        // SAFETY: a valid NUL-terminated path; the descriptor returned is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        owned(fd)
    }

    /// Opens the directory `path` (every component a directory, none a link).
    fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        let comps = self.components(path)?;
        self.walk(&comps)
    }

    /// Opens the directories `comps` one by one from the root.
    fn walk(&self, comps: &[&OsStr]) -> io::Result<OwnedFd> {
        let mut dir = self.open_root()?;
        let mut seen = self.root.clone();
        for c in comps {
            seen.push(c);
            dir = openat(
                &dir,
                &cstring(c)?,
                libc::O_RDONLY | libc::O_DIRECTORY,
                &seen,
            )?;
        }
        Ok(dir)
    }

    /// The directory holding `path` and the last component's name.
    fn parent(&self, path: &Path) -> io::Result<(OwnedFd, CString, PathBuf)> {
        let comps = self.components(path)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the medium root itself",
            ));
        };
        let dir = self.walk(dirs)?;
        let mut shown = self.root.clone();
        shown.extend(comps.iter());
        Ok((dir, cstring(last)?, shown))
    }

    /// Metadata of `path` itself (a link is described, not followed; links on the way fail).
    pub fn symlink_metadata(&self, path: &Path) -> io::Result<Metadata> {
        let comps = self.components(path)?;
        if comps.is_empty() {
            return File::from(self.open_root()?).metadata();
        }
        let (dir, name, _) = self.parent(path)?;
        stat_at(&dir, &name)
    }

    /// Metadata of `path`; a link there fails with [`SymlinkError`].
    pub fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let md = self.symlink_metadata(path)?;
        if Kind::of(&md) == Kind::Symlink {
            return Err(symlink(path));
        }
        Ok(md)
    }

    /// What `path` is, `None` when it does not exist; a link on the way (or there) fails.
    pub fn kind(&self, path: &Path) -> io::Result<Option<Kind>> {
        match self.symlink_metadata(path) {
            Ok(md) if Kind::of(&md) == Kind::Symlink => Err(symlink(path)),
            Ok(md) => Ok(Some(Kind::of(&md))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens a file for reading.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        let (dir, name, shown) = self.parent(path)?;
        Ok(File::from(openat(&dir, &name, libc::O_RDONLY, &shown)?))
    }

    /// Opens a file for writing: `create` creates it when missing, `truncate` empties it.
    pub fn open_write(&self, path: &Path, create: bool, truncate: bool) -> io::Result<File> {
        let (dir, name, shown) = self.parent(path)?;
        let mut flags = libc::O_WRONLY;
        if create {
            flags |= libc::O_CREAT;
        }
        if truncate {
            flags |= libc::O_TRUNC;
        }
        Ok(File::from(openat(&dir, &name, flags, &shown)?))
    }

    /// The names in directory `path` with what each is, sorted by name.
    pub fn read_dir(&self, path: &Path) -> io::Result<Vec<(OsString, Kind)>> {
        let dir = self.open_dir(path)?;
        let mut out = Vec::new();
        for name in list(&dir)? {
            let c = cstring(&name)?;
            let kind = match stat_at(&dir, &c) {
                Ok(md) => Kind::of(&md),
                // Gone meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push((name, kind));
        }
        out.sort();
        Ok(out)
    }

    /// Removes the file `path` (a link there is refused, not removed).
    pub fn unlink(&self, path: &Path) -> io::Result<()> {
        let (dir, name, shown) = self.parent(path)?;
        refuse_link_at(&dir, &name, &shown)?;
        // SAFETY: a valid directory descriptor and NUL-terminated name.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
    }

    /// Creates the directory `path`.
    pub fn mkdir(&self, path: &Path) -> io::Result<()> {
        let (dir, name, _) = self.parent(path)?;
        // SAFETY: a valid directory descriptor and NUL-terminated name.
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o777) })
    }

    /// Removes the empty directory `path` (a link there is refused).
    pub fn rmdir(&self, path: &Path) -> io::Result<()> {
        let (dir, name, shown) = self.parent(path)?;
        refuse_link_at(&dir, &name, &shown)?;
        // SAFETY: a valid directory descriptor and NUL-terminated name.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
    }

    /// Makes the entries of directory `path` durable.
    pub fn fsync_dir(&self, path: &Path) -> io::Result<()> {
        File::from(self.open_dir(path)?).sync_all()
    }

    /// Creates every missing directory of `path` (below the root), none through a link.
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let comps = self.components(path)?;
        let mut cur = self.root.clone();
        for c in comps {
            cur.push(c);
            match self.kind(&cur)? {
                Some(Kind::Dir) => {}
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is not a directory", cur.display()),
                    ))
                }
                None => self.mkdir(&cur)?,
            }
        }
        Ok(())
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`, a link reported as [`SymlinkError`]
/// naming `shown`.
fn openat(dir: &OwnedFd, name: &CStr, flags: i32, shown: &Path) -> io::Result<OwnedFd> {
    // SAFETY: a valid directory descriptor and NUL-terminated name; the descriptor returned is
    // owned below. The mode is only used with O_CREAT.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    match owned(fd) {
        Ok(fd) => Ok(fd),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            match stat_at(dir, name) {
                Ok(md) if Kind::of(&md) == Kind::Symlink => Err(symlink(shown)),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Fails with [`SymlinkError`] naming `shown` when `name` in `dir` is a link (unlinkat would
/// remove the link itself: a foreign link is refused, not touched).
fn refuse_link_at(dir: &OwnedFd, name: &CStr, shown: &Path) -> io::Result<()> {
    if Kind::of(&stat_at(dir, name)?) == Kind::Symlink {
        return Err(symlink(shown));
    }
    Ok(())
}

/// The names in an open directory, without `.` and `..`.
fn list(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    // SAFETY: dup of a valid descriptor; fdopendir takes ownership of the copy and closedir
    // releases it; readdir's entries are read before the next call.
    unsafe {
        let copy = libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0);
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        let d = libc::fdopendir(copy);
        if d.is_null() {
            let e = io::Error::last_os_error();
            libc::close(copy);
            return Err(e);
        }
        let mut out = Vec::new();
        loop {
            *libc::__errno_location() = 0;
            let ent = libc::readdir(d);
            if ent.is_null() {
                let errno = *libc::__errno_location();
                libc::closedir(d);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                break;
            }
            let name = CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes();
            if name != b"." && name != b".." {
                out.push(OsString::from_vec(name.to_vec()));
            }
        }
        Ok(out)
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` as std metadata (through an `O_PATH` descriptor).
fn stat_at(dir: &OwnedFd, name: &CStr) -> io::Result<Metadata> {
    // SAFETY: a valid directory descriptor and NUL-terminated name; O_PATH|O_NOFOLLOW opens
    // the name itself (a link too) without reading it; the descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    File::from(owned(fd)?).metadata()
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with a NUL byte"))
}

fn symlink(path: &Path) -> io::Error {
    io::Error::other(SymlinkError(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    /// A medium with `a/b/file`, `a/lnk` → outside dir, `a/flink` → outside file.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("medium");
        let outside = t.path().join("outside");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(root.join("a/b/file"), b"in").unwrap();
        fs::write(outside.join("victim"), b"out").unwrap();
        symlink(&outside, root.join("a/lnk")).unwrap();
        symlink(outside.join("victim"), root.join("a/flink")).unwrap();
        (t, root, outside)
    }

    fn link_of(r: io::Result<impl std::fmt::Debug>) -> PathBuf {
        let e = r.expect_err("a link must fail");
        symlink_of(&e)
            .unwrap_or_else(|| panic!("not a link error: {e}"))
            .to_path_buf()
    }

    #[test]
    fn every_operation_refuses_a_link_and_names_it() {
        let (_t, root, outside) = setup();
        let b = Beneath::new(&root);
        let lnk = root.join("a/lnk");
        let through = lnk.join("victim");
        assert_eq!(link_of(b.open(&through)), lnk);
        assert_eq!(link_of(b.open_write(&through, true, true)), lnk);
        assert_eq!(link_of(b.open_write(&lnk.join("new"), true, true)), lnk);
        assert_eq!(link_of(b.unlink(&through)), lnk);
        assert_eq!(link_of(b.mkdir(&lnk.join("d"))), lnk);
        assert_eq!(link_of(b.read_dir(&lnk)), lnk);
        assert_eq!(link_of(b.fsync_dir(&lnk)), lnk);
        assert_eq!(link_of(b.kind(&through)), lnk);
        assert_eq!(link_of(b.kind(&lnk)), lnk);
        assert_eq!(link_of(b.metadata(&lnk)), lnk);
        assert_eq!(link_of(b.rmdir(&lnk)), lnk);
        assert_eq!(link_of(b.create_dir_all(&lnk.join("x/y"))), lnk);
        let flink = root.join("a/flink");
        assert_eq!(link_of(b.open(&flink)), flink);
        assert_eq!(link_of(b.open_write(&flink, false, false)), flink);
        assert_eq!(link_of(b.unlink(&flink)), flink);
        // Nothing outside changed; the links are still there.
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"out");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
        assert!(fs::symlink_metadata(&lnk).unwrap().file_type().is_symlink());
        assert!(fs::symlink_metadata(&flink)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn plain_paths_work_and_leaving_the_root_is_refused() {
        let (_t, root, _) = setup();
        let b = Beneath::new(&root);
        let file = root.join("a/b/file");
        assert_eq!(b.kind(&file).unwrap(), Some(Kind::File));
        assert_eq!(b.kind(&root.join("a/b")).unwrap(), Some(Kind::Dir));
        assert_eq!(b.kind(&root.join("a/none")).unwrap(), None);
        assert_eq!(b.kind(&file.join("below-a-file")).unwrap(), None);
        let names: Vec<(OsString, Kind)> = b.read_dir(&root.join("a")).unwrap();
        assert_eq!(
            names,
            vec![
                ("b".into(), Kind::Dir),
                ("flink".into(), Kind::Symlink),
                ("lnk".into(), Kind::Symlink)
            ]
        );
        b.create_dir_all(&root.join("a/b/c/d")).unwrap();
        let new = root.join("a/b/c/d/new");
        std::io::Write::write_all(&mut b.open_write(&new, true, true).unwrap(), b"x").unwrap();
        assert_eq!(fs::read(&new).unwrap(), b"x");
        b.unlink(&new).unwrap();
        b.rmdir(&root.join("a/b/c/d")).unwrap();
        b.fsync_dir(&root).unwrap();
        for bad in [
            root.join("a/../../outside/victim"),
            PathBuf::from("/etc/passwd"),
        ] {
            let e = b.open(&bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{}", bad.display());
        }
    }
}
