//! Reading a directory of the host into a [`Tree`]: every entry with its type, permissions,
//! owner, mtime, xattrs and hard-link grouping, file content as streamable handles.
//!
//! Determinism: entries are sorted bytewise whatever readdir returns; hard links are grouped by
//! (device, inode) in walk order; nothing else of the host (time, user names, umask) is read.
//! SquashFS keeps whole seconds in a u32: sub-second parts are dropped, and an mtime before 1970
//! or after 2106 is an error naming the file. Xattrs outside `user.`, `trusted.` and `security.`
//! (POSIX ACLs in `system.`) cannot be stored: they are skipped and listed in the result so the
//! caller can warn once, as mksquashfs does.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::squashfs::xattr::storable;
use crate::tree::{Content, Inode, InodeId, InodeKind, Metadata, NodeId, Tree, TreeError, Xattr};

/// Errors reading a host directory; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum HostDirError {
    /// An I/O error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An entry that cannot be represented.
    #[error("{}: {problem}", path.display())]
    Unrepresentable {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The source is not a directory.
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
}

/// Options for reading a host directory.
#[derive(Clone, Debug, Default)]
pub struct HostDirOptions {
    /// Make every entry owned by 0:0.
    pub all_root: bool,
}

/// A tree read from the host plus what could not be carried over.
pub struct HostTree {
    /// The tree.
    pub tree: Tree,
    /// Full names of skipped xattrs (namespaces SquashFS cannot store), sorted, unique.
    pub skipped_xattrs: Vec<String>,
}

fn io_err(path: &Path, source: io::Error) -> HostDirError {
    HostDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the directory `root` and everything below it (symlinks are not followed).
pub fn read_dir_tree(root: &Path, opts: &HostDirOptions) -> Result<HostTree, HostDirError> {
    let md = fs::symlink_metadata(root).map_err(|e| io_err(root, e))?;
    if !md.is_dir() {
        return Err(HostDirError::NotADirectory(root.to_path_buf()));
    }
    let mut skipped = Vec::new();
    let root_meta = metadata(root, &md, opts, &mut skipped)?;
    let mut tree = Tree::new(root_meta);
    let mut links: HashMap<(u64, u64), InodeId> = HashMap::new();
    let mut stack: Vec<(PathBuf, NodeId)> = vec![(root.to_path_buf(), tree.root())];
    while let Some((dir, node)) = stack.pop() {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let e = e.map_err(|e| io_err(&dir, e))?;
            names.push(e.file_name().as_bytes().to_vec());
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(OsStr::from_bytes(&name));
            let md = fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
            let tree_err = |e: TreeError| HostDirError::Unrepresentable {
                path: path.clone(),
                problem: e.to_string(),
            };
            if !md.is_dir() && md.nlink() > 1 {
                if let Some(id) = links.get(&(md.dev(), md.ino())) {
                    tree.link(node, &name, *id).map_err(tree_err)?;
                    continue;
                }
            }
            let meta = metadata(&path, &md, opts, &mut skipped)?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                InodeKind::Dir
            } else if ft.is_file() {
                InodeKind::File(Content::from_host_path(path.clone(), md.len()))
            } else if ft.is_symlink() {
                let t = fs::read_link(&path).map_err(|e| io_err(&path, e))?;
                InodeKind::Symlink(t.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() {
                InodeKind::CharDev(md.rdev())
            } else if ft.is_block_device() {
                InodeKind::BlockDev(md.rdev())
            } else if ft.is_fifo() {
                InodeKind::Fifo
            } else if ft.is_socket() {
                InodeKind::Socket
            } else {
                return Err(HostDirError::Unrepresentable {
                    path,
                    problem: "unknown file type".into(),
                });
            };
            let is_dir = matches!(kind, InodeKind::Dir);
            let child = tree
                .add(node, &name, Inode { meta, kind })
                .map_err(tree_err)?;
            if is_dir {
                subdirs.push((path, child));
            } else if md.nlink() > 1 {
                links.insert((md.dev(), md.ino()), tree.node(child).inode);
            }
        }
        // Visit subdirectories in name order (the stack pops the last pushed first).
        stack.extend(subdirs.into_iter().rev());
    }
    skipped.sort();
    skipped.dedup();
    Ok(HostTree {
        tree,
        skipped_xattrs: skipped,
    })
}

fn metadata(
    path: &Path,
    md: &fs::Metadata,
    opts: &HostDirOptions,
    skipped: &mut Vec<String>,
) -> Result<Metadata, HostDirError> {
    let mtime = md.mtime();
    let mtime = u32::try_from(mtime).map_err(|_| HostDirError::Unrepresentable {
        path: path.to_path_buf(),
        problem: format!("mtime {mtime} is outside 1970..2106, which SquashFS cannot store"),
    })?;
    let mut xattrs = Vec::new();
    for x in read_xattrs(path)? {
        if storable(&x.name) {
            xattrs.push(x);
        } else {
            skipped.push(String::from_utf8_lossy(&x.name).into_owned());
        }
    }
    xattrs.sort();
    Ok(Metadata {
        perm: (md.mode() & 0o7777) as u16,
        uid: if opts.all_root { 0 } else { md.uid() },
        gid: if opts.all_root { 0 } else { md.gid() },
        mtime,
        xattrs,
    })
}

/// The extended attributes of `path` itself (not following symlinks).
pub fn read_xattrs(path: &Path) -> Result<Vec<Xattr>, HostDirError> {
    let c =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| HostDirError::Unrepresentable {
            path: path.to_path_buf(),
            problem: "path contains a NUL byte".into(),
        })?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: `c` is a valid C string and `names` a writable buffer of the given length.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(io_err(path, e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)
            .map_err(|_| io_err(path, io::Error::from(io::ErrorKind::InvalidData)))?;
        let mut value = vec![0u8; 256];
        let vlen = loop {
            // SAFETY: valid C strings and a writable buffer of the given length.
            let n = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) if value.len() < (1 << 24) => value.resize(value.len() * 4, 0),
                _ => return Err(io_err(path, e)),
            }
        };
        value.truncate(vlen);
        out.push(Xattr {
            name: name.to_vec(),
            value,
        });
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_types_links_and_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::create_dir(p.join("z")).unwrap();
        fs::write(p.join("z/f"), b"hello").unwrap();
        fs::hard_link(p.join("z/f"), p.join("a")).unwrap();
        std::os::unix::fs::symlink("z/f", p.join("s")).unwrap();
        let t = read_dir_tree(p, &HostDirOptions::default()).unwrap().tree;
        let paths: Vec<_> = t
            .walk()
            .iter()
            .map(|n| String::from_utf8(t.path(*n)).unwrap())
            .collect();
        assert_eq!(paths, vec!["", "a", "s", "z", "z/f"]);
        assert_eq!(
            t.node(t.lookup(b"a").unwrap()).inode,
            t.node(t.lookup(b"z/f").unwrap()).inode
        );
        match &t.node_inode(t.lookup(b"s").unwrap()).kind {
            InodeKind::Symlink(target) => assert_eq!(target, b"z/f"),
            k => panic!("{k:?}"),
        }
        assert!(read_dir_tree(&p.join("a"), &HostDirOptions::default()).is_err());
    }
}
