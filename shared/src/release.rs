//! An input release: a live ISO image, or a directory holding an extracted one. Lists its files,
//! opens them as streamable content, opens its root filesystem (`live/filesystem.squashfs`)
//! without mounting, and reads `/etc/os-release` inside that root (resolving symlinks inside the
//! image, never on the host).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::io::{FileImage, ReadAt, SubImage};
use crate::iso::{Iso, IsoError, IsoKind};
use crate::squashfs::archive::Archive;
use crate::squashfs::SqfsError;
use crate::tree::{Content, ContentSource, HostFile, InodeKind, NodeId, Tree};

/// Path of the root filesystem inside a release.
pub const ROOTFS: &str = "live/filesystem.squashfs";

/// Errors opening or reading a release; each names the release.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// I/O error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The ISO image could not be read.
    #[error("{0}")]
    Iso(#[from] IsoError),
    /// The root filesystem is missing.
    #[error("{}: no {ROOTFS} (not a live system image)", .0.display())]
    NoRootfs(PathBuf),
    /// The root filesystem image is not readable SquashFS.
    #[error("{}: {ROOTFS}: {source}", path.display())]
    Rootfs {
        /// The release.
        path: PathBuf,
        /// The error.
        source: SqfsError,
    },
    /// A file the caller asked for is not in the release.
    #[error("{}: no file {name}", path.display())]
    NoFile {
        /// The release.
        path: PathBuf,
        /// The file.
        name: String,
    },
    /// os-release cannot be found or read inside the root filesystem.
    #[error("{}: /etc/os-release: {problem}", path.display())]
    OsRelease {
        /// The release.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// What a release file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseFileKind {
    /// A regular file of this size.
    File(u64),
    /// A symbolic link with this target.
    Symlink(Vec<u8>),
}

/// One non-directory entry of a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseFile {
    /// Path relative to the release root, `/`-separated (raw bytes).
    pub path: Vec<u8>,
    /// File or symlink.
    pub kind: ReleaseFileKind,
    /// Modification time as the release records it (seconds since 1970), if it does.
    pub mtime: Option<i64>,
}

enum Source {
    Iso(Arc<Iso>),
    Dir,
}

/// An opened release.
pub struct Release {
    path: PathBuf,
    source: Source,
    files: Vec<ReleaseFile>,
}

struct IsoFile {
    iso: Arc<Iso>,
    index: usize,
}

impl ContentSource for IsoFile {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        let e = &self.iso.entries()[self.index];
        let r = self
            .iso
            .open_file(e)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, r)))
    }
    fn describe(&self) -> String {
        format!(
            "{}:{}",
            self.iso.path().display(),
            self.iso.entries()[self.index].display_path()
        )
    }
}

impl Release {
    /// Opens an ISO image or an extracted-ISO directory.
    pub fn open(path: &Path) -> Result<Release, ReleaseError> {
        let io_err = |e| ReleaseError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let md = std::fs::metadata(path).map_err(io_err)?;
        if md.is_dir() {
            let mut files = Vec::new();
            walk_dir(path, path, &mut files)?;
            files.sort_by(|a, b| a.path.cmp(&b.path));
            return Ok(Release {
                path: path.to_path_buf(),
                source: Source::Dir,
                files,
            });
        }
        let iso = Arc::new(Iso::open(path)?);
        let mut files: Vec<ReleaseFile> = iso
            .entries()
            .iter()
            .filter_map(|e| match &e.kind {
                IsoKind::File { size } => Some(ReleaseFile {
                    path: e.path.clone(),
                    kind: ReleaseFileKind::File(*size),
                    mtime: e.mtime,
                }),
                IsoKind::Symlink(t) => Some(ReleaseFile {
                    path: e.path.clone(),
                    kind: ReleaseFileKind::Symlink(t.clone()),
                    mtime: e.mtime,
                }),
                _ => None,
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Release {
            path: path.to_path_buf(),
            source: Source::Iso(iso),
            files,
        })
    }

    /// The path the release was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for an ISO image, false for a directory.
    pub fn is_iso(&self) -> bool {
        matches!(self.source, Source::Iso(_))
    }

    /// Every file and symlink, sorted bytewise by path.
    pub fn files(&self) -> &[ReleaseFile] {
        &self.files
    }

    /// A regular file's content as a streamable handle.
    pub fn content(&self, path: &[u8]) -> Result<Content, ReleaseError> {
        let no_file = || ReleaseError::NoFile {
            path: self.path.clone(),
            name: String::from_utf8_lossy(path).into_owned(),
        };
        let f = self
            .files
            .binary_search_by(|f| f.path.as_slice().cmp(path))
            .map_err(|_| no_file())?;
        let ReleaseFileKind::File(size) = self.files[f].kind else {
            return Err(no_file());
        };
        match &self.source {
            Source::Dir => Ok(Content::from_host_path(
                self.path.join(std::ffi::OsStr::from_bytes(path)),
                size,
            )),
            Source::Iso(iso) => {
                let index = iso
                    .entries()
                    .iter()
                    .position(|e| e.path == path)
                    .ok_or_else(no_file)?;
                Ok(Content {
                    size,
                    source: Arc::new(IsoFile {
                        iso: iso.clone(),
                        index,
                    }),
                })
            }
        }
    }

    /// The root filesystem, read in place (inside the ISO when its extent is contiguous).
    pub fn rootfs(&self) -> Result<Arc<Archive>, ReleaseError> {
        let rootfs_err = |e| ReleaseError::Rootfs {
            path: self.path.clone(),
            source: e,
        };
        let io_err = |e| ReleaseError::Io {
            path: self.path.clone(),
            source: e,
        };
        if !self
            .files
            .iter()
            .any(|f| f.path == ROOTFS.as_bytes() && matches!(f.kind, ReleaseFileKind::File(_)))
        {
            return Err(ReleaseError::NoRootfs(self.path.clone()));
        }
        let name = format!("{}:{ROOTFS}", self.path.display());
        match &self.source {
            Source::Dir => {
                let p = self.path.join(ROOTFS);
                let img: Arc<dyn ReadAt> =
                    Arc::new(FileImage::new(File::open(&p).map_err(io_err)?).map_err(io_err)?);
                Archive::from_image(img, name).map_err(rootfs_err)
            }
            Source::Iso(iso) => {
                let entry = iso
                    .find(ROOTFS)
                    .ok_or_else(|| ReleaseError::NoRootfs(self.path.clone()))?;
                let Some((offset, len)) = iso.file_range(entry) else {
                    return Err(ReleaseError::Rootfs {
                        path: self.path.clone(),
                        source: SqfsError::Unsupported(
                            "root filesystem stored in non-contiguous extents".into(),
                        ),
                    });
                };
                let whole: Arc<dyn ReadAt> = Arc::new(
                    FileImage::new(File::open(&self.path).map_err(io_err)?).map_err(io_err)?,
                );
                let img: Arc<dyn ReadAt> =
                    Arc::new(SubImage::new(whole, offset, len).map_err(io_err)?);
                Archive::from_image(img, name).map_err(rootfs_err)
            }
        }
    }

    /// The sha256 of the ISO image file, or `None` for a directory.
    pub fn iso_sha256(&self) -> Result<Option<[u8; 32]>, ReleaseError> {
        if !self.is_iso() {
            return Ok(None);
        }
        let io_err = |e| ReleaseError::Io {
            path: self.path.clone(),
            source: e,
        };
        let mut f = File::open(&self.path).map_err(io_err)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(Some(h.finalize().into()))
    }
}

fn walk_dir(root: &Path, dir: &Path, out: &mut Vec<ReleaseFile>) -> Result<(), ReleaseError> {
    let io_err = |p: &Path, e| ReleaseError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let e = e.map_err(|e| io_err(dir, e))?;
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).map_err(|e| io_err(&p, e))?;
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .as_os_str()
            .as_bytes()
            .to_vec();
        if md.is_dir() {
            walk_dir(root, &p, out)?;
        } else if md.is_file() {
            out.push(ReleaseFile {
                path: rel,
                kind: ReleaseFileKind::File(md.len()),
                mtime: Some(md.mtime()),
            });
        } else if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| io_err(&p, e))?;
            out.push(ReleaseFile {
                path: rel,
                kind: ReleaseFileKind::Symlink(t.as_os_str().as_bytes().to_vec()),
                mtime: Some(md.mtime()),
            });
        }
    }
    Ok(())
}

/// Product and version as os-release states them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `TAILS_PRODUCT_NAME`, else `NAME`.
    pub product: Option<String>,
    /// `TAILS_VERSION_ID`, else `VERSION_ID`.
    pub version: Option<String>,
}

/// Most symlinks followed resolving a path inside an image (as the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside `tree`, following symlinks inside the tree (absolute targets are
/// relative to the tree's root). Returns the final node.
pub fn resolve(tree: &Tree, path: &[u8]) -> Option<NodeId> {
    let mut hops = 0;
    let mut pending: Vec<Vec<u8>> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| c.to_vec())
        .rev()
        .collect();
    let mut stack: Vec<NodeId> = vec![tree.root()];
    while let Some(comp) = pending.pop() {
        let cur = *stack.last()?;
        match comp.as_slice() {
            b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let child = tree.child(cur, &comp)?;
        match &tree.node_inode(child).kind {
            InodeKind::Symlink(target) => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return None;
                }
                if target.starts_with(b"/") {
                    stack.truncate(1);
                }
                pending.extend(
                    target
                        .split(|b| *b == b'/')
                        .filter(|c| !c.is_empty())
                        .map(|c| c.to_vec())
                        .rev(),
                );
            }
            _ => stack.push(child),
        }
    }
    stack.last().copied()
}

/// Reads `/etc/os-release` (or `/usr/lib/os-release`) inside a root filesystem tree.
pub fn os_release(tree: &Tree) -> Result<OsRelease, String> {
    let node = resolve(tree, b"etc/os-release")
        .or_else(|| resolve(tree, b"usr/lib/os-release"))
        .ok_or("not found in the root filesystem")?;
    let InodeKind::File(c) = &tree.node_inode(node).kind else {
        return Err("not a regular file".into());
    };
    if c.size > 64 * 1024 {
        return Err(format!(
            "{} bytes, too large for an os-release file",
            c.size
        ));
    }
    let text = c.read_all().map_err(|e| e.to_string())?;
    let vars = parse_os_release(&String::from_utf8_lossy(&text));
    let get = |k: &str| {
        vars.iter()
            .rev()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    Ok(OsRelease {
        product: get("TAILS_PRODUCT_NAME").or_else(|| get("NAME")),
        version: get("TAILS_VERSION_ID").or_else(|| get("VERSION_ID")),
    })
}

/// Parses os-release's shell-like `KEY=value` lines (double or single quotes, backslash escapes).
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let mut value = String::new();
        let mut chars = v.chars();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (Some('\''), c) => value.push(c),
                (_, '\\') => {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                }
                (None, c) if c.is_whitespace() => break,
                (_, c) => value.push(c),
            }
        }
        out.push((k.trim().to_string(), value));
    }
    out
}

/// Hex of a sha256, or `None`.
pub fn hex_opt(h: Option<[u8; 32]>) -> Option<String> {
    h.map(|h| crate::tree::hex(&h))
}

/// Content of a host file as a handle (used for the layer image written to a temporary file).
pub fn host_content(path: PathBuf) -> io::Result<Content> {
    let size = std::fs::metadata(&path)?.len();
    Ok(Content {
        size,
        source: Arc::new(HostFile(path)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Inode, Metadata};

    #[test]
    fn os_release_through_symlinks() {
        let mut t = Tree::new(Metadata::default());
        let r = t.root();
        let dir = || Inode {
            meta: Metadata::default(),
            kind: InodeKind::Dir,
        };
        let etc = t.add(r, b"etc", dir()).unwrap();
        let usr = t.add(r, b"usr", dir()).unwrap();
        let lib = t.add(usr, b"lib", dir()).unwrap();
        let text =
            b"NAME=\"Tails\"\nVERSION_ID='6.10'\nTAILS_PRODUCT_NAME=\"Tails\"\n# c\nX=a\\ b\n"
                .to_vec();
        t.add(
            lib,
            b"os-release",
            Inode {
                meta: Metadata::default(),
                kind: InodeKind::File(Content::from_bytes(text)),
            },
        )
        .unwrap();
        t.add(
            etc,
            b"os-release",
            Inode {
                meta: Metadata::default(),
                kind: InodeKind::Symlink(b"../usr/lib/os-release".to_vec()),
            },
        )
        .unwrap();
        let o = os_release(&t).unwrap();
        assert_eq!(
            o,
            OsRelease {
                product: Some("Tails".into()),
                version: Some("6.10".into())
            }
        );
        // A loop is refused, not followed forever.
        t.add(
            etc,
            b"loop",
            Inode {
                meta: Metadata::default(),
                kind: InodeKind::Symlink(b"loop".to_vec()),
            },
        )
        .unwrap();
        assert!(resolve(&t, b"etc/loop").is_none());
        assert_eq!(parse_os_release("X=a\\ b")[0].1, "a b");
    }
}
