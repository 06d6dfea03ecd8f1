//! Tree diff → overlayfs upper layer, and the overlay merge (userspace stacking).
//!
//! [`diff`] turns (old root, new root) into the upper directory that, stacked on the old root
//! with overlayfs semantics, shows exactly the new root (invariant 1):
//! - added entries, and entries whose type, content, symlink target, device number, metadata
//!   (permissions, owner, mtime, xattrs) or hard-link group changed, are written whole with the
//!   new metadata (overlayfs cannot change a lower file's metadata without its data);
//! - a hard-link group with any member written is written whole (links cannot span layers);
//! - every directory on the way to a written entry or a whiteout is written with the new
//!   directory's full metadata (overlayfs shows the topmost copy of a directory's attributes);
//!   the root is always written;
//! - a removed entry becomes one whiteout (char device 0:0, owner 0:0, permissions 0, mtime = the
//!   declared epoch); a removed directory is one whiteout;
//! - an entry replaced by one of another type is written whole (a new directory in place of a
//!   non-directory with all its subtree); no opaque directories and no xattr-form whiteouts are
//!   ever emitted, and `trusted.overlay.*` xattrs of the inputs are dropped.
//!
//! [`merge`] stacks an upper tree on a lower one the way overlayfs presents it, so kits can be
//! checked in userspace (merge(old, diff(old, new)) has the digest of new).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

mod reuse;

use crate::progress::Progress;
use crate::tree::{
    content_hashes, tree_digest, Inode, InodeId, InodeKind, Metadata, NodeId, Tree, TreeError,
    Xattr,
};

/// Errors of the diff and the merge.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Building the result tree failed.
    #[error("{0}")]
    Tree(#[from] TreeError),
}

/// A tree with the sha256 of each file's content, indexed by inode (see
/// [`crate::tree::content_hashes`]).
#[derive(Clone, Copy)]
pub struct Hashed<'a> {
    /// The tree.
    pub tree: &'a Tree,
    /// Content hashes, indexed by [`InodeId`].
    pub hashes: &'a [Option<[u8; 32]>],
}

/// A tree that owns the sha256 of every inode's content (indexed by inode id), so that layers
/// can be stacked on it and its tree digest taken without reading any file twice. The builder's
/// check of a new layer and the medium's checks of its stack use this one view of stacking.
pub struct HashedTree {
    /// The tree.
    pub tree: Tree,
    /// sha256 of each inode's content; None for inodes that are not regular files.
    pub hashes: Vec<Option<[u8; 32]>>,
}

impl HashedTree {
    /// Hashes every file of `tree` (`progress` gets bytes read; errors name the file).
    pub fn new(tree: Tree, progress: &(dyn Fn(u64) + Sync)) -> Result<HashedTree, TreeError> {
        let hashes = content_hashes(&tree, progress)?;
        Ok(HashedTree { tree, hashes })
    }

    /// Hashes every file of `tree` as the progress phase `phase`.
    pub fn with_progress(
        tree: Tree,
        phase: &str,
        progress: &dyn Progress,
    ) -> Result<HashedTree, TreeError> {
        progress.phase(phase, tree.content_bytes());
        let done = AtomicU64::new(0);
        HashedTree::new(tree, &|n| {
            progress.position(done.fetch_add(n, Ordering::Relaxed) + n)
        })
    }

    /// [`HashedTree::new`], decoding only what is needed: a file of `tree` whose stored form in
    /// its SquashFS image (compressor, block size, size, block list, the stored bytes of every
    /// block and the tail bytes) equals that of a file of `known` takes that file's sha256 without
    /// being decompressed, since identical stored bytes decode to identical content. Candidates
    /// are files of the same size and stored block sizes; only their compressed bytes (and tails)
    /// are read. Every other file is decoded and hashed as by [`HashedTree::new`].
    pub fn new_reusing(
        tree: Tree,
        known: &HashedTree,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<HashedTree, TreeError> {
        HashedTree::new_reusing_any(tree, &[known], progress)
    }

    /// [`HashedTree::new_reusing`] with several known trees (a batch's new root and the old
    /// roots hashed before this one).
    pub fn new_reusing_any(
        tree: Tree,
        known: &[&HashedTree],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<HashedTree, TreeError> {
        let hashes = reuse::content_hashes_reusing(&tree, known, progress)?;
        Ok(HashedTree { tree, hashes })
    }

    /// The borrowed view [`diff`] takes.
    pub fn hashed(&self) -> Hashed<'_> {
        Hashed {
            tree: &self.tree,
            hashes: &self.hashes,
        }
    }

    /// The tree with `upper` stacked on it as overlayfs would.
    pub fn stack(&self, upper: &HashedTree) -> Result<HashedTree, DiffError> {
        let (tree, origins) = merge_with_origins(&self.tree, &upper.tree)?;
        let hashes = origins
            .iter()
            .map(|o| match o {
                Origin::Lower(i) => self.hashes.get(i.0 as usize).copied().flatten(),
                Origin::Upper(i) => upper.hashes.get(i.0 as usize).copied().flatten(),
            })
            .collect();
        Ok(HashedTree { tree, hashes })
    }

    /// The canonical tree digest ([`crate::tree::tree_digest`]).
    pub fn digest(&self) -> [u8; 32] {
        tree_digest(&self.tree, &self.hashes)
    }
}

/// What a diff found, counted per entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiffStats {
    /// Entries of the new root that the old root lacks (subtrees counted entry by entry).
    pub added: u64,
    /// Entries whose content, target, device number or type changed.
    pub changed: u64,
    /// Entries with the same content whose metadata or hard-link group changed.
    pub metadata_only: u64,
    /// Entries of the old root that the new root lacks (subtrees counted entry by entry).
    pub removed: u64,
    /// Whiteouts written (a removed directory is one).
    pub whiteouts: u64,
    /// Bytes of file content the layer carries.
    pub content_bytes: u64,
    /// Entries in the layer, the root and whiteouts included.
    pub layer_entries: u64,
}

/// True for an overlayfs whiteout: a character device 0:0.
pub fn is_whiteout(inode: &Inode) -> bool {
    matches!(inode.kind, InodeKind::CharDev(0))
}

fn without_overlay_xattrs(m: &Metadata) -> Metadata {
    let mut m = m.clone();
    m.xattrs
        .retain(|x: &Xattr| !x.name.starts_with(b"trusted.overlay."));
    m
}

/// Why a new node is in the layer.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Mark {
    Out,
    /// A directory on the way to a change (or the root), same content as before.
    Path,
    Added,
    Changed,
    MetadataOnly,
}

struct Groups {
    /// For each linked inode: the sorted paths naming it.
    paths: HashMap<InodeId, Vec<Vec<u8>>>,
}

impl Groups {
    fn of(tree: &Tree) -> Groups {
        let counts = tree.link_counts();
        let mut paths: HashMap<InodeId, Vec<Vec<u8>>> = HashMap::new();
        for id in tree.walk() {
            let n = tree.node(id);
            if counts[n.inode.0 as usize] > 1 && !matches!(tree.inode(n.inode).kind, InodeKind::Dir)
            {
                paths.entry(n.inode).or_default().push(tree.path(id));
            }
        }
        for v in paths.values_mut() {
            v.sort();
        }
        Groups { paths }
    }

    fn same(&self, a: InodeId, other: &Groups, b: InodeId, path: &[u8]) -> bool {
        let single = [path.to_vec()];
        let ga = self.paths.get(&a).map_or(&single[..], |v| &v[..]);
        let gb = other.paths.get(&b).map_or(&single[..], |v| &v[..]);
        ga == gb
    }
}

struct Differ<'a> {
    old: Hashed<'a>,
    new: Hashed<'a>,
    old_groups: Groups,
    new_groups: Groups,
    marks: Vec<Mark>,
    /// (new parent directory, name) of each whiteout.
    whiteouts: Vec<(NodeId, Vec<u8>)>,
    stats: DiffStats,
}

impl Differ<'_> {
    fn mark_subtree(&mut self, n: NodeId) {
        let mut stack = vec![n];
        while let Some(id) = stack.pop() {
            self.marks[id.0 as usize] = Mark::Added;
            self.stats.added += 1;
            stack.extend(self.new.tree.node(id).children.iter().copied());
        }
    }

    fn count_subtree(tree: &Tree, n: NodeId) -> u64 {
        let mut stack = vec![n];
        let mut c = 0;
        while let Some(id) = stack.pop() {
            c += 1;
            stack.extend(tree.node(id).children.iter().copied());
        }
        c
    }

    /// Same kind and kind-specific data (content, target, device number)?
    fn same_object(&self, o: NodeId, n: NodeId) -> Option<bool> {
        let oi = self.old.tree.node(o).inode;
        let ni = self.new.tree.node(n).inode;
        let (ok, nk) = (&self.old.tree.inode(oi).kind, &self.new.tree.inode(ni).kind);
        Some(match (ok, nk) {
            (InodeKind::Dir, InodeKind::Dir)
            | (InodeKind::Fifo, InodeKind::Fifo)
            | (InodeKind::Socket, InodeKind::Socket) => true,
            (InodeKind::File(a), InodeKind::File(b)) => {
                a.size == b.size
                    && self.old.hashes.get(oi.0 as usize).copied().flatten()
                        == self.new.hashes.get(ni.0 as usize).copied().flatten()
            }
            (InodeKind::Symlink(a), InodeKind::Symlink(b)) => a == b,
            (InodeKind::CharDev(a), InodeKind::CharDev(b))
            | (InodeKind::BlockDev(a), InodeKind::BlockDev(b)) => a == b,
            _ => return None,
        })
    }

    /// Compares two directories' children; true when anything below needs the layer.
    fn dir(&mut self, o: NodeId, n: NodeId) -> bool {
        let oc = self.old.tree.node(o).children.clone();
        let nc = self.new.tree.node(n).children.clone();
        let (mut i, mut j) = (0, 0);
        let mut any = false;
        while i < oc.len() || j < nc.len() {
            let on = oc.get(i).map(|c| self.old.tree.node(*c).name.as_slice());
            let nn = nc.get(j).map(|c| self.new.tree.node(*c).name.as_slice());
            match (on, nn) {
                (Some(a), Some(b)) if a == b => {
                    any |= self.entry(oc[i], nc[j]);
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a < b => {
                    self.removed(n, oc[i]);
                    any = true;
                    i += 1;
                }
                (Some(_), None) => {
                    self.removed(n, oc[i]);
                    any = true;
                    i += 1;
                }
                _ => {
                    self.mark_subtree(nc[j]);
                    any = true;
                    j += 1;
                }
            }
        }
        any
    }

    fn removed(&mut self, new_parent: NodeId, old_child: NodeId) {
        self.stats.removed += Self::count_subtree(self.old.tree, old_child);
        self.stats.whiteouts += 1;
        self.whiteouts
            .push((new_parent, self.old.tree.node(old_child).name.clone()));
    }

    /// Compares one entry present in both roots; true when it (or anything below) is written.
    fn entry(&mut self, o: NodeId, n: NodeId) -> bool {
        let Some(same) = self.same_object(o, n) else {
            // Type change: the new entry is written whole and hides the old one.
            self.stats.removed += Self::count_subtree(self.old.tree, o);
            self.mark_subtree(n);
            self.stats.added -= 1;
            self.stats.removed -= 1;
            self.stats.changed += 1;
            return true;
        };
        let oi = self.old.tree.node(o).inode;
        let ni = self.new.tree.node(n).inode;
        let om = without_overlay_xattrs(&self.old.tree.inode(oi).meta);
        let nm = without_overlay_xattrs(&self.new.tree.inode(ni).meta);
        if matches!(self.new.tree.inode(ni).kind, InodeKind::Dir) {
            let below = self.dir(o, n);
            if om != nm {
                self.marks[n.0 as usize] = Mark::MetadataOnly;
                self.stats.metadata_only += 1;
            } else if below {
                self.marks[n.0 as usize] = Mark::Path;
            }
            return below || om != nm;
        }
        let path = self.new.tree.path(n);
        let group_same = self.new_groups.same(ni, &self.old_groups, oi, &path);
        if !same {
            self.marks[n.0 as usize] = Mark::Changed;
            self.stats.changed += 1;
            true
        } else if om != nm || !group_same {
            self.marks[n.0 as usize] = Mark::MetadataOnly;
            self.stats.metadata_only += 1;
            true
        } else {
            false
        }
    }
}

/// Computes the overlay upper layer that turns `old` into `new` (see the module doc).
/// `whiteout_mtime` is the declared epoch, stamped on whiteouts.
pub fn diff(
    old: Hashed<'_>,
    new: Hashed<'_>,
    whiteout_mtime: u32,
) -> Result<(Tree, DiffStats), DiffError> {
    diff_hashed(old, new, whiteout_mtime).map(|(layer, stats)| (layer.tree, stats))
}

/// [`diff`], with the layer's content hashes (each layer file has its new file's sha256), so
/// that the layer's writer need not read a file just to hash it.
pub fn diff_hashed(
    old: Hashed<'_>,
    new: Hashed<'_>,
    whiteout_mtime: u32,
) -> Result<(HashedTree, DiffStats), DiffError> {
    let mut d = Differ {
        old,
        new,
        old_groups: Groups::of(old.tree),
        new_groups: Groups::of(new.tree),
        marks: vec![Mark::Out; new.tree.node_count()],
        whiteouts: Vec::new(),
        stats: DiffStats::default(),
    };
    let root_meta_changed = without_overlay_xattrs(&old.tree.node_inode(old.tree.root()).meta)
        != without_overlay_xattrs(&new.tree.node_inode(new.tree.root()).meta);
    d.dir(old.tree.root(), new.tree.root());
    if root_meta_changed {
        d.stats.metadata_only += 1;
    }
    d.marks[new.tree.root().0 as usize] = Mark::Path;

    // Hard-link closure: a group with any member in the layer goes in whole.
    let walk = new.tree.walk();
    let mut in_layer: HashMap<InodeId, bool> = HashMap::new();
    for id in &walk {
        let n = new.tree.node(*id);
        if d.marks[id.0 as usize] != Mark::Out && d.new_groups.paths.contains_key(&n.inode) {
            in_layer.insert(n.inode, true);
        }
    }
    for id in &walk {
        let n = new.tree.node(*id);
        if d.marks[id.0 as usize] == Mark::Out && in_layer.contains_key(&n.inode) {
            d.marks[id.0 as usize] = Mark::MetadataOnly;
            d.stats.metadata_only += 1;
        }
    }
    // Every directory on the way to a marked entry is in the layer too.
    for id in &walk {
        if d.marks[id.0 as usize] == Mark::Out {
            continue;
        }
        let mut p = new.tree.node(*id).parent;
        while d.marks[p.0 as usize] == Mark::Out {
            d.marks[p.0 as usize] = Mark::Path;
            p = new.tree.node(p).parent;
        }
    }

    // Build the layer in walk order.
    let root_meta = without_overlay_xattrs(&new.tree.node_inode(new.tree.root()).meta);
    let mut layer = Tree::new(root_meta);
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let mut inode_map: HashMap<InodeId, InodeId> = HashMap::new();
    map.insert(new.tree.root(), layer.root());
    for id in walk.iter().skip(1) {
        if d.marks[id.0 as usize] == Mark::Out {
            continue;
        }
        let n = new.tree.node(*id);
        let parent = map[&n.parent];
        let ino = new.tree.inode(n.inode);
        let out = match inode_map.get(&n.inode) {
            Some(existing) => layer.link(parent, &n.name, *existing)?,
            None => {
                let copy = Inode {
                    meta: without_overlay_xattrs(&ino.meta),
                    kind: ino.kind.clone(),
                };
                let c = layer.add(parent, &n.name, copy)?;
                if !matches!(ino.kind, InodeKind::Dir) {
                    inode_map.insert(n.inode, layer.node(c).inode);
                }
                if let InodeKind::File(content) = &ino.kind {
                    d.stats.content_bytes += content.size;
                }
                c
            }
        };
        map.insert(*id, out);
    }
    let whiteout = Metadata {
        perm: 0,
        uid: 0,
        gid: 0,
        mtime: whiteout_mtime,
        xattrs: Vec::new(),
    };
    for (parent, name) in &d.whiteouts {
        layer.add(
            map[parent],
            name,
            Inode {
                meta: whiteout.clone(),
                kind: InodeKind::CharDev(0),
            },
        )?;
    }
    d.stats.layer_entries = layer.node_count() as u64;
    let mut hashes = vec![None; layer.inode_count()];
    for (n, l) in &inode_map {
        if let Some(h) = hashes.get_mut(l.0 as usize) {
            *h = new.hashes.get(n.0 as usize).copied().flatten();
        }
    }
    Ok((
        HashedTree {
            tree: layer,
            hashes,
        },
        d.stats,
    ))
}

/// The overlayfs view of `upper` stacked on `lower`: whiteouts hide lower entries, directories
/// present in both merge (with the upper's metadata), any other upper entry hides the lower one.
/// Hard links stay grouped within each layer.
pub fn merge(lower: &Tree, upper: &Tree) -> Result<Tree, DiffError> {
    Ok(merge_with_origins(lower, upper)?.0)
}

/// Where an inode of a merged view comes from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This inode of the lower tree.
    Lower(InodeId),
    /// This inode of the upper tree.
    Upper(InodeId),
}

/// [`merge`], plus the origin of every inode of the result (indexed by [`InodeId`]), so content
/// hashes computed for the inputs serve the result.
pub fn merge_with_origins(lower: &Tree, upper: &Tree) -> Result<(Tree, Vec<Origin>), DiffError> {
    let mut out = Tree::new(upper.node_inode(upper.root()).meta.clone());
    let mut origins = vec![Origin::Upper(upper.node(upper.root()).inode)];
    let mut lower_map: HashMap<InodeId, InodeId> = HashMap::new();
    let mut upper_map: HashMap<InodeId, InodeId> = HashMap::new();
    // (output dir, lower dir, upper dir)
    let mut stack: Vec<(NodeId, Option<NodeId>, Option<NodeId>)> =
        vec![(out.root(), Some(lower.root()), Some(upper.root()))];
    while let Some((dir, l, u)) = stack.pop() {
        let lc: &[NodeId] = l.map_or(&[], |l| &lower.node(l).children);
        let uc: &[NodeId] = u.map_or(&[], |u| &upper.node(u).children);
        let (mut i, mut j) = (0, 0);
        while i < lc.len() || j < uc.len() {
            let ln = lc.get(i).map(|c| lower.node(*c).name.as_slice());
            let un = uc.get(j).map(|c| upper.node(*c).name.as_slice());
            let (lo, up) = match (ln, un) {
                (Some(a), Some(b)) if a == b => {
                    i += 1;
                    j += 1;
                    (Some(lc[i - 1]), Some(uc[j - 1]))
                }
                (Some(a), Some(b)) if a < b => {
                    i += 1;
                    (Some(lc[i - 1]), None)
                }
                (Some(_), None) => {
                    i += 1;
                    (Some(lc[i - 1]), None)
                }
                _ => {
                    j += 1;
                    (None, Some(uc[j - 1]))
                }
            };
            let (src_tree, src, map, is_upper) = match up {
                Some(un) if is_whiteout(upper.node_inode(un)) => continue,
                Some(un) => (upper, un, &mut upper_map, true),
                None => match lo {
                    Some(ln) if is_whiteout(lower.node_inode(ln)) => continue,
                    Some(ln) => (lower, ln, &mut lower_map, false),
                    None => continue,
                },
            };
            let node = src_tree.node(src);
            let ino = src_tree.inode(node.inode);
            let origin = if is_upper {
                Origin::Upper(node.inode)
            } else {
                Origin::Lower(node.inode)
            };
            if matches!(ino.kind, InodeKind::Dir) {
                let c = out.add(dir, &node.name, ino.clone())?;
                origins.push(origin);
                let lower_dir = if is_upper {
                    lo.filter(|ln| matches!(lower.node_inode(*ln).kind, InodeKind::Dir))
                } else {
                    Some(src)
                };
                stack.push((c, lower_dir, if is_upper { Some(src) } else { None }));
            } else {
                match map.get(&node.inode) {
                    Some(existing) => {
                        out.link(dir, &node.name, *existing)?;
                    }
                    None => {
                        let c = out.add(dir, &node.name, ino.clone())?;
                        origins.push(origin);
                        map.insert(node.inode, out.node(c).inode);
                    }
                }
            }
        }
    }
    Ok((out, origins))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Content;
    use crate::tree::{content_hashes, tree_digest};
    use proptest::prelude::*;

    fn bytes(b: &[u8]) -> InodeKind {
        InodeKind::File(Content::from_bytes(b.to_vec()))
    }

    fn meta(perm: u16, mtime: u32) -> Metadata {
        Metadata {
            perm,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        }
    }

    fn digest(t: &Tree) -> [u8; 32] {
        tree_digest(t, &content_hashes(t, &|_| {}).unwrap())
    }

    fn check(old: &Tree, new: &Tree) -> (Tree, DiffStats) {
        let oh = content_hashes(old, &|_| {}).unwrap();
        let nh = content_hashes(new, &|_| {}).unwrap();
        let (layer, stats) = diff(
            Hashed {
                tree: old,
                hashes: &oh,
            },
            Hashed {
                tree: new,
                hashes: &nh,
            },
            7,
        )
        .unwrap();
        let merged = merge(old, &layer).unwrap();
        assert_eq!(digest(&merged), digest(new), "merge(old, diff) != new");
        (layer, stats)
    }

    fn dir(t: &mut Tree, p: NodeId, name: &str) -> NodeId {
        t.add(
            p,
            name.as_bytes(),
            Inode {
                meta: meta(0o755, 1),
                kind: InodeKind::Dir,
            },
        )
        .unwrap()
    }
    fn file(t: &mut Tree, p: NodeId, name: &str, data: &[u8]) -> NodeId {
        t.add(
            p,
            name.as_bytes(),
            Inode {
                meta: meta(0o644, 1),
                kind: bytes(data),
            },
        )
        .unwrap()
    }

    #[test]
    fn identical_trees_give_a_bare_root() {
        let mut t = Tree::new(meta(0o755, 1));
        let r = t.root();
        let d = dir(&mut t, r, "d");
        file(&mut t, d, "f", b"x");
        let (layer, stats) = check(&t, &t.clone());
        assert_eq!(layer.node_count(), 1);
        assert_eq!(
            stats,
            DiffStats {
                layer_entries: 1,
                ..DiffStats::default()
            }
        );
    }

    #[test]
    fn every_kind_of_change() {
        let mut old = Tree::new(meta(0o755, 1));
        let r = old.root();
        let d = dir(&mut old, r, "d");
        file(&mut old, d, "same", b"same");
        file(&mut old, d, "content", b"a");
        file(&mut old, d, "meta", b"m");
        let gone = dir(&mut old, r, "gone");
        file(&mut old, gone, "x", b"x");
        file(&mut old, r, "to-dir", b"f");
        let h = file(&mut old, r, "h1", b"h");
        old.link(r, b"h2", old.node(h).inode).unwrap();
        old.add(
            r,
            b"sym",
            Inode {
                meta: meta(0o777, 1),
                kind: InodeKind::Symlink(b"a".to_vec()),
            },
        )
        .unwrap();

        let mut new = Tree::new(meta(0o755, 1));
        let r = new.root();
        let d = dir(&mut new, r, "d");
        file(&mut new, d, "same", b"same");
        file(&mut new, d, "content", b"b");
        new.add(
            d,
            b"meta",
            Inode {
                meta: meta(0o600, 1),
                kind: bytes(b"m"),
            },
        )
        .unwrap();
        let td = dir(&mut new, r, "to-dir");
        file(&mut new, td, "inside", b"i");
        let h = file(&mut new, r, "h1", b"h");
        new.link(r, b"h2", new.node(h).inode).unwrap();
        new.link(r, b"h3", new.node(h).inode).unwrap();
        new.add(
            r,
            b"sym",
            Inode {
                meta: meta(0o777, 1),
                kind: InodeKind::Symlink(b"b".to_vec()),
            },
        )
        .unwrap();

        let (layer, stats) = check(&old, &new);
        assert!(layer.lookup(b"d/same").is_none());
        assert!(layer.lookup(b"d/content").is_some());
        assert!(layer.lookup(b"d/meta").is_some());
        let w = layer.lookup(b"gone").unwrap();
        assert!(is_whiteout(layer.node_inode(w)));
        assert!(layer.lookup(b"gone/x").is_none());
        assert!(layer.lookup(b"to-dir/inside").is_some());
        let (a, b, c) = (
            layer.lookup(b"h1").unwrap(),
            layer.lookup(b"h2").unwrap(),
            layer.lookup(b"h3").unwrap(),
        );
        assert_eq!(layer.node(a).inode, layer.node(b).inode);
        assert_eq!(layer.node(a).inode, layer.node(c).inode);
        assert_eq!(stats.whiteouts, 1);
        assert_eq!(stats.removed, 2);
        assert_eq!(stats.added, 2);
    }

    #[test]
    fn trusted_overlay_xattrs_never_leak() {
        let old = Tree::new(meta(0o755, 1));
        let mut new = Tree::new(meta(0o755, 1));
        let r = new.root();
        let mut m = meta(0o644, 1);
        m.xattrs.push(Xattr {
            name: b"trusted.overlay.opaque".to_vec(),
            value: b"y".to_vec(),
        });
        new.add(
            r,
            b"f",
            Inode {
                meta: m,
                kind: bytes(b""),
            },
        )
        .unwrap();
        let oh = content_hashes(&old, &|_| {}).unwrap();
        let nh = content_hashes(&new, &|_| {}).unwrap();
        let (layer, _) = diff(
            Hashed {
                tree: &old,
                hashes: &oh,
            },
            Hashed {
                tree: &new,
                hashes: &nh,
            },
            0,
        )
        .unwrap();
        assert!(layer
            .node_inode(layer.lookup(b"f").unwrap())
            .meta
            .xattrs
            .is_empty());
    }

    /// A small random tree: names from a tiny alphabet so old and new trees overlap a lot.
    fn arb_tree() -> impl Strategy<Value = Tree> {
        let entry = (0u8..4, 0u8..6, 0u8..4, 0u8..3, 0u8..3);
        proptest::collection::vec(proptest::collection::vec(entry, 0..12), 1..4).prop_map(
            |levels| {
                let mut t = Tree::new(meta(0o755, 1));
                let mut dirs = vec![t.root()];
                let mut files: Vec<InodeId> = Vec::new();
                for level in levels {
                    let mut next = Vec::new();
                    for (i, (kind, name, content, perm, parent)) in level.into_iter().enumerate() {
                        let p = dirs[(parent as usize + i) % dirs.len()];
                        let name = format!("n{name}");
                        if t.child(p, name.as_bytes()).is_some() {
                            continue;
                        }
                        let m = meta(0o600 + perm as u16, 1 + content as u32 % 2);
                        let inode = match kind {
                            0 => Inode {
                                meta: m,
                                kind: InodeKind::Dir,
                            },
                            1 => Inode {
                                meta: m,
                                kind: bytes(&[content]),
                            },
                            2 => Inode {
                                meta: m,
                                kind: InodeKind::Symlink(vec![b'a' + content]),
                            },
                            _ => {
                                if let Some(f) = files.get(content as usize) {
                                    t.link(p, name.as_bytes(), *f).unwrap();
                                    continue;
                                }
                                Inode {
                                    meta: m,
                                    kind: InodeKind::Fifo,
                                }
                            }
                        };
                        let is_dir = matches!(inode.kind, InodeKind::Dir);
                        let c = t.add(p, name.as_bytes(), inode).unwrap();
                        if is_dir {
                            next.push(c);
                        } else {
                            files.push(t.node(c).inode);
                        }
                    }
                    dirs.extend(next);
                }
                t
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]
        #[test]
        fn merge_of_diff_is_new(old in arb_tree(), new in arb_tree()) {
            let (layer, _) = check(&old, &new);
            // Layers never carry opaque markers or xattr whiteouts.
            for id in layer.walk() {
                prop_assert!(layer.node_inode(id).meta.xattrs.iter().all(|x| !x.name.starts_with(b"trusted.overlay.")));
            }
            // Stacking a second diff on the first merged view works the same way.
            let (_, _) = check(&merge(&old, &layer).unwrap(), &old);
        }
    }
}
