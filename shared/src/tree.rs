//! The filesystem tree model shared by every reader and writer.
//!
//! A [`Tree`] is an arena of directory entries ([`Node`]) that point at inodes ([`Inode`]); several
//! nodes may share one non-directory inode (a hard-link group). Children of a directory are kept
//! sorted bytewise by name, so every traversal is deterministic whatever order the source was read
//! in (invariant 2, determinism). Content is a handle ([`Content`]) that can be opened again at any
//! time, so writers stream file data instead of holding it in memory.

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

/// Index of a [`Node`] inside its [`Tree`]. The root is always `NodeId(0)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// Index of an [`Inode`] inside its [`Tree`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId(pub u32);

/// Metadata every inode carries, as SquashFS stores it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, whole seconds since the epoch (SquashFS keeps a u32).
    pub mtime: u32,
    /// Extended attributes as full names (`user.foo`), sorted bytewise by name, names unique.
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute: full name with namespace prefix, and value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    /// Full name, e.g. `security.capability`.
    pub name: Vec<u8>,
    /// Raw value bytes.
    pub value: Vec<u8>,
}

/// A source of file bytes that can be opened any number of times (a host file, a file inside a
/// SquashFS image, bytes in memory). Implementations must return exactly `size` bytes.
pub trait ContentSource: Send + Sync {
    /// Opens the content for sequential reading from the start.
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>>;
    /// A short human description used in error messages (a host path, `image.sqfs:/usr/bin/ls`).
    fn describe(&self) -> String;
    /// Positioned reads of the same bytes (to open an image stored inside another), when the
    /// source offers them.
    fn random_access(&self) -> Option<Arc<dyn crate::io::ReadAt>> {
        None
    }
    /// The source as [`std::any::Any`], for a source a writer can take stored bytes from as
    /// they are (a file inside a SquashFS image: the writer's block sources, and the diff's
    /// check of identical stored blocks); None for every other source.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// File content handle: size plus where to read the bytes from.
#[derive(Clone)]
pub struct Content {
    /// Exact size in bytes.
    pub size: u64,
    /// Where the bytes come from.
    pub source: Arc<dyn ContentSource>,
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Content({} bytes from {})",
            self.size,
            self.source.describe()
        )
    }
}

impl Content {
    /// Content held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Content {
        Content {
            size: bytes.len() as u64,
            source: Arc::new(MemorySource(Arc::new(bytes))),
        }
    }

    /// Content of a host file of known size.
    pub fn from_host_path(path: PathBuf, size: u64) -> Content {
        Content {
            size,
            source: Arc::new(HostFile(path)),
        }
    }

    /// The sha256 of the content, read in full; fails when the size differs from `size`.
    pub fn sha256(&self) -> io::Result<[u8; 32]> {
        self.sha256_with(|_| {})
    }

    /// [`Content::sha256`], reporting each chunk's length to `read` as it goes.
    pub fn sha256_with(&self, read: impl Fn(u64)) -> io::Result<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let mut r = self.source.open()?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            h.update(&buf[..n]);
            read(n as u64);
        }
        if total != self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: expected {} bytes, read {total}",
                    self.source.describe(),
                    self.size
                ),
            ));
        }
        Ok(h.finalize().into())
    }

    /// Reads the whole content into memory (for small files and tests).
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.size.min(1 << 24) as usize);
        self.source.open()?.read_to_end(&mut out)?;
        if out.len() as u64 != self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: expected {} bytes, read {}",
                    self.source.describe(),
                    self.size,
                    out.len()
                ),
            ));
        }
        Ok(out)
    }
}

/// Bytes held in memory.
pub struct MemorySource(pub Arc<Vec<u8>>);

impl ContentSource for MemorySource {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(&self.0[..]))
    }
    fn describe(&self) -> String {
        "memory".to_string()
    }
    fn random_access(&self) -> Option<Arc<dyn crate::io::ReadAt>> {
        Some(Arc::new(self.0.as_ref().clone()))
    }
}

/// A regular file on the host.
pub struct HostFile(pub PathBuf);

impl ContentSource for HostFile {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(std::fs::File::open(&self.0)?))
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// What kind of object an inode is, with its type-specific data.
#[derive(Clone, Debug)]
pub enum InodeKind {
    /// A directory; its entries are the children of the node that owns it.
    Dir,
    /// A regular file.
    File(Content),
    /// A symbolic link with its raw target bytes.
    Symlink(Vec<u8>),
    /// A character device with its device number (Linux `dev_t` encoding: `libc::makedev`).
    CharDev(u64),
    /// A block device with its device number.
    BlockDev(u64),
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

impl InodeKind {
    /// The file-type bits (`S_IFMT` part) of this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            InodeKind::Dir => 0o040000,
            InodeKind::File(_) => 0o100000,
            InodeKind::Symlink(_) => 0o120000,
            InodeKind::CharDev(_) => 0o020000,
            InodeKind::BlockDev(_) => 0o060000,
            InodeKind::Fifo => 0o010000,
            InodeKind::Socket => 0o140000,
        }
    }

    /// A one-word name of the kind, for listings and errors.
    pub fn name(&self) -> &'static str {
        match self {
            InodeKind::Dir => "directory",
            InodeKind::File(_) => "file",
            InodeKind::Symlink(_) => "symlink",
            InodeKind::CharDev(_) => "char-device",
            InodeKind::BlockDev(_) => "block-device",
            InodeKind::Fifo => "fifo",
            InodeKind::Socket => "socket",
        }
    }
}

/// An inode: metadata plus kind. Directories are never shared by two nodes.
#[derive(Clone, Debug)]
pub struct Inode {
    /// Owner, permissions, mtime, xattrs.
    pub meta: Metadata,
    /// Type and type-specific data.
    pub kind: InodeKind,
}

/// A directory entry: a name in a parent directory pointing at an inode.
#[derive(Clone, Debug)]
pub struct Node {
    /// Entry name (no `/`, not `.` or `..`, 1..=255 bytes); empty for the root.
    pub name: Vec<u8>,
    /// Parent directory node (the root is its own parent).
    pub parent: NodeId,
    /// The inode this entry names.
    pub inode: InodeId,
    /// For a directory: children sorted bytewise by name. Empty otherwise.
    pub children: Vec<NodeId>,
}

/// Errors building a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A name is empty, too long, `.`/`..`, or contains `/` or NUL.
    #[error("invalid entry name {0:?}")]
    BadName(String),
    /// A directory already has an entry with this name.
    #[error("duplicate entry {0:?}")]
    Duplicate(String),
    /// The parent of a new entry is not a directory.
    #[error("parent of {0:?} is not a directory")]
    NotADirectory(String),
    /// A directory inode cannot be hard-linked.
    #[error("directory {0:?} cannot be hard-linked")]
    DirHardLink(String),
    /// More entries than 32-bit ids can address.
    #[error("too many entries")]
    TooMany,
    /// Reading a file's content failed (the source's name said once, even when the reader's
    /// error names it too).
    #[error("{}", read_message(what, source))]
    Read {
        /// The content source.
        what: String,
        /// The error.
        source: io::Error,
    },
}

/// A whole filesystem tree. Node 0 is the root directory.
#[derive(Clone, Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    inodes: Vec<Inode>,
}

impl Tree {
    /// A tree holding only a root directory with the given metadata.
    pub fn new(root_meta: Metadata) -> Tree {
        Tree {
            nodes: vec![Node {
                name: Vec::new(),
                parent: NodeId(0),
                inode: InodeId(0),
                children: Vec::new(),
            }],
            inodes: vec![Inode {
                meta: root_meta,
                kind: InodeKind::Dir,
            }],
        }
    }

    /// The root node id.
    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// An inode by id.
    pub fn inode(&self, id: InodeId) -> &Inode {
        &self.inodes[id.0 as usize]
    }

    /// A mutable inode by id.
    pub fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        &mut self.inodes[id.0 as usize]
    }

    /// The inode a node names.
    pub fn node_inode(&self, id: NodeId) -> &Inode {
        self.inode(self.node(id).inode)
    }

    /// Number of nodes (directory entries, root included).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Bytes of regular-file content, each inode once (hard links are not counted twice).
    pub fn content_bytes(&self) -> u64 {
        self.inodes
            .iter()
            .map(|i| match &i.kind {
                InodeKind::File(c) => c.size,
                _ => 0,
            })
            .sum()
    }

    /// Number of distinct inodes.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Adds a new inode and an entry `name` for it in directory `parent`, keeping children sorted.
    pub fn add(&mut self, parent: NodeId, name: &[u8], inode: Inode) -> Result<NodeId, TreeError> {
        if self.inodes.len() >= u32::MAX as usize {
            return Err(TreeError::TooMany);
        }
        let id = InodeId(self.inodes.len() as u32);
        self.inodes.push(inode);
        match self.insert(parent, name, id) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.inodes.pop();
                Err(e)
            }
        }
    }

    /// Adds an entry `name` in `parent` for an existing inode (a hard link when it is not new).
    /// Directory inodes have exactly one entry: linking one is refused.
    pub fn link(
        &mut self,
        parent: NodeId,
        name: &[u8],
        inode: InodeId,
    ) -> Result<NodeId, TreeError> {
        if matches!(self.inode(inode).kind, InodeKind::Dir) {
            return Err(TreeError::DirHardLink(lossy(name)));
        }
        self.insert(parent, name, inode)
    }

    fn insert(&mut self, parent: NodeId, name: &[u8], inode: InodeId) -> Result<NodeId, TreeError> {
        check_name(name)?;
        if !matches!(self.node_inode(parent).kind, InodeKind::Dir) {
            return Err(TreeError::NotADirectory(lossy(name)));
        }
        if self.nodes.len() >= u32::MAX as usize {
            return Err(TreeError::TooMany);
        }
        let pos = {
            let children = &self.nodes[parent.0 as usize].children;
            match children.binary_search_by(|c| self.nodes[c.0 as usize].name.as_slice().cmp(name))
            {
                Ok(_) => return Err(TreeError::Duplicate(lossy(name))),
                Err(p) => p,
            }
        };
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            name: name.to_vec(),
            parent,
            inode,
            children: Vec::new(),
        });
        self.nodes[parent.0 as usize].children.insert(pos, id);
        Ok(id)
    }

    /// Finds the child of `dir` named `name`.
    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let children = &self.node(dir).children;
        children
            .binary_search_by(|c| self.node(*c).name.as_slice().cmp(name))
            .ok()
            .map(|i| children[i])
    }

    /// Looks up a `/`-separated path relative to the root (no symlink resolution).
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let mut cur = self.root();
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            cur = self.child(cur, comp)?;
        }
        Some(cur)
    }

    /// The full path of a node, `/`-separated, without a leading slash (empty for the root).
    pub fn path(&self, id: NodeId) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut cur = id;
        while cur != self.root() {
            let n = self.node(cur);
            parts.push(n.name.as_slice());
            cur = n.parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    /// Every node in depth-first order, children in bytewise name order, parents before children.
    /// This is the one traversal order the whole project uses.
    pub fn walk(&self) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![self.root()];
        while let Some(id) = stack.pop() {
            out.push(id);
            for c in self.node(id).children.iter().rev() {
                stack.push(*c);
            }
        }
        out
    }

    /// Number of directory entries naming each inode (hard-link counts, directories excluded).
    pub fn link_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.inodes.len()];
        for n in &self.nodes {
            counts[n.inode.0 as usize] += 1;
        }
        counts
    }
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Checks that `name` can be a directory entry name.
pub fn check_name(name: &[u8]) -> Result<(), TreeError> {
    if name.is_empty()
        || name.len() > 255
        || name == b"."
        || name == b".."
        || name.contains(&b'/')
        || name.contains(&0)
    {
        return Err(TreeError::BadName(lossy(name)));
    }
    Ok(())
}

/// Version tag hashed first into every tree digest; bump it if the listing format changes.
pub const TREE_DIGEST_TAG: &[u8] = b"iuk-tree-digest-v1\n";

/// The sha256 of every regular file's content, indexed by [`InodeId`] (`None` for other kinds).
/// Files are hashed in parallel on the current rayon pool; `progress` receives bytes hashed so far.
pub fn content_hashes(
    tree: &Tree,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Option<[u8; 32]>>, TreeError> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    let done = AtomicU64::new(0);
    tree.inodes
        .par_iter()
        .map(|ino| {
            let InodeKind::File(c) = &ino.kind else {
                return Ok(None);
            };
            let h = c
                .sha256_with(|n| progress(done.fetch_add(n, Ordering::Relaxed) + n))
                .map_err(|e| TreeError::Read {
                    what: c.source.describe(),
                    source: e,
                })?;
            Ok(Some(h))
        })
        .collect()
}

/// `what: error`, or the error alone when it starts with `what` already.
fn read_message(what: &str, e: &io::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with(what) {
        msg
    } else {
        format!("{what}: {msg}")
    }
}

/// The canonical tree digest: sha256 over a byte-exact listing of every entry.
///
/// [`TREE_DIGEST_TAG`] is hashed first; then, for every node in [`Tree::walk`] order (depth first,
/// children bytewise by name, the root first), all integers little-endian:
/// - `u32` length + path bytes (`/`-separated, no leading slash; the root's path is empty);
/// - one type byte: `d` directory, `f` file, `l` symlink, `c` char device, `b` block device,
///   `p` fifo, `s` socket;
/// - `u16` permission bits, `u32` uid, `u32` gid, `u32` mtime;
/// - `u32` xattr count, then per xattr in name order: `u32` length + name, `u32` length + value;
/// - files: `u64` size + the 32-byte sha256 of the content; symlinks: `u32` length + target;
///   devices: `u32` major, `u32` minor; nothing for other kinds;
/// - for a non-directory inode named by several nodes (a hard-link group): `u32` length + the
///   path of the group's first node in walk order; `u32` 0 otherwise.
///
/// Directory link counts and sizes are not part of it: they follow from the entries.
/// `hashes` comes from [`content_hashes`].
pub fn tree_digest(tree: &Tree, hashes: &[Option<[u8; 32]>]) -> [u8; 32] {
    tree_digest_with(tree, |i| hashes.get(i.0 as usize).copied().flatten())
}

/// [`tree_digest`] with content hashes looked up by a function (for views such as a merged
/// overlay whose inodes come from several trees).
pub fn tree_digest_with(tree: &Tree, hash_of: impl Fn(InodeId) -> Option<[u8; 32]>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(TREE_DIGEST_TAG);
    let counts = tree.link_counts();
    let mut first: Vec<Option<NodeId>> = vec![None; tree.inodes.len()];
    let put = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u32).to_le_bytes());
        h.update(b);
    };
    for id in tree.walk() {
        let node = tree.node(id);
        let ino = tree.inode(node.inode);
        let m = &ino.meta;
        put(&mut h, &tree.path(id));
        h.update([match ino.kind {
            InodeKind::Dir => b'd',
            InodeKind::File(_) => b'f',
            InodeKind::Symlink(_) => b'l',
            InodeKind::CharDev(_) => b'c',
            InodeKind::BlockDev(_) => b'b',
            InodeKind::Fifo => b'p',
            InodeKind::Socket => b's',
        }]);
        h.update(m.perm.to_le_bytes());
        h.update(m.uid.to_le_bytes());
        h.update(m.gid.to_le_bytes());
        h.update(m.mtime.to_le_bytes());
        h.update((m.xattrs.len() as u32).to_le_bytes());
        for x in &m.xattrs {
            put(&mut h, &x.name);
            put(&mut h, &x.value);
        }
        match &ino.kind {
            InodeKind::File(c) => {
                h.update(c.size.to_le_bytes());
                h.update(hash_of(node.inode).unwrap_or([0; 32]));
            }
            InodeKind::Symlink(t) => put(&mut h, t),
            InodeKind::CharDev(d) | InodeKind::BlockDev(d) => {
                h.update(libc::major(*d as libc::dev_t).to_le_bytes());
                h.update(libc::minor(*d as libc::dev_t).to_le_bytes());
            }
            _ => {}
        }
        let i = node.inode.0 as usize;
        if !matches!(ino.kind, InodeKind::Dir) && counts[i] > 1 {
            let leader = *first[i].get_or_insert(id);
            put(&mut h, &tree.path(leader));
        } else {
            h.update(0u32.to_le_bytes());
        }
    }
    h.finalize().into()
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> Inode {
        Inode {
            meta: Metadata::default(),
            kind: InodeKind::File(Content::from_bytes(bytes.to_vec())),
        }
    }

    #[test]
    fn children_stay_sorted_and_unique() {
        let mut t = Tree::new(Metadata::default());
        for n in [&b"b"[..], b"a", b"c\xff", b"a.txt"] {
            t.add(t.root(), n, file(n)).unwrap();
        }
        let names: Vec<_> = t
            .node(t.root())
            .children
            .iter()
            .map(|c| t.node(*c).name.clone())
            .collect();
        assert_eq!(
            names,
            vec![
                b"a".to_vec(),
                b"a.txt".to_vec(),
                b"b".to_vec(),
                b"c\xff".to_vec()
            ]
        );
        assert!(matches!(
            t.add(t.root(), b"a", file(b"")),
            Err(TreeError::Duplicate(_))
        ));
        assert_eq!(t.inode_count(), 5);
    }

    #[test]
    fn bad_names_are_refused() {
        let mut t = Tree::new(Metadata::default());
        for n in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(t.add(t.root(), n, file(b"")).is_err());
        }
        assert!(t.add(t.root(), &[b'x'; 256], file(b"")).is_err());
        assert!(t.add(t.root(), &[b'x'; 255], file(b"")).is_ok());
    }

    #[test]
    fn digest_sees_every_field() {
        let base = || {
            let mut t = Tree::new(Metadata::default());
            let f = t.add(t.root(), b"f", file(b"x")).unwrap();
            t.link(t.root(), b"g", t.node(f).inode).unwrap();
            t
        };
        let d = |t: &Tree| tree_digest(t, &content_hashes(t, &|_| {}).unwrap());
        let d0 = d(&base());
        assert_eq!(d0, d(&base()));
        let mut t = base();
        t.inode_mut(InodeId(1)).meta.mtime = 1;
        assert_ne!(d(&t), d0);
        let mut t = base();
        t.inode_mut(InodeId(1)).meta.xattrs.push(Xattr {
            name: b"user.a".to_vec(),
            value: vec![],
        });
        assert_ne!(d(&t), d0);
        let mut t = base();
        t.inode_mut(InodeId(1)).kind = InodeKind::File(Content::from_bytes(b"y".to_vec()));
        assert_ne!(d(&t), d0);
        // Same entries without the hard link.
        let mut t = Tree::new(Metadata::default());
        t.add(t.root(), b"f", file(b"x")).unwrap();
        t.add(t.root(), b"g", file(b"x")).unwrap();
        assert_ne!(d(&t), d0);
    }

    #[test]
    fn walk_and_paths() {
        let mut t = Tree::new(Metadata::default());
        let d = t
            .add(
                t.root(),
                b"d",
                Inode {
                    meta: Metadata::default(),
                    kind: InodeKind::Dir,
                },
            )
            .unwrap();
        let f = t.add(d, b"f", file(b"x")).unwrap();
        t.link(t.root(), b"h", t.node(f).inode).unwrap();
        let paths: Vec<_> = t.walk().iter().map(|n| t.path(*n)).collect();
        assert_eq!(
            paths,
            vec![b"".to_vec(), b"d".to_vec(), b"d/f".to_vec(), b"h".to_vec()]
        );
        assert_eq!(t.lookup(b"/d/f"), Some(f));
        assert_eq!(t.link_counts()[t.node(f).inode.0 as usize], 2);
        assert!(matches!(
            t.link(t.root(), b"d2", t.node(d).inode),
            Err(TreeError::DirHardLink(_))
        ));
    }
}
