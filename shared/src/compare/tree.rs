//! The entries section of a comparison: two trees compared path by path (type, mode, owner,
//! mtime, xattrs, symlink target, device, size, content, hard links).

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;

use crate::squashfs::inspect::{escape, utc};
use crate::tree::{hex, InodeKind, Metadata, NodeId, Tree, Xattr};

use super::report::{cut, show_path, Difference, Section};

/// Size and sha256 of a file (or what else the entry is).
pub(super) struct FileSum {
    /// Size in bytes (0 for an entry that is not a file).
    pub(super) size: u64,
    /// Lower-case hex sha256, or why it could not be computed.
    pub(super) sha256: Result<String, String>,
}

impl FileSum {
    /// The sha256, or why it is unreadable.
    pub(super) fn show_sha(&self) -> String {
        match &self.sha256 {
            Ok(h) => h.clone(),
            Err(e) => format!("unreadable ({e})"),
        }
    }
    /// Size and sha256 (or why it is unreadable) on one line.
    pub(super) fn describe(&self) -> String {
        match &self.sha256 {
            Ok(h) => format!("size {}, sha256 {h}", self.size),
            Err(e) => format!("size {}, {e}", self.size),
        }
    }
}

/// The size and sha256 of the entry `n`.
pub(super) fn file_sum(tree: &Tree, n: NodeId) -> FileSum {
    match &tree.node_inode(n).kind {
        InodeKind::File(c) => FileSum {
            size: c.size,
            sha256: c.sha256().map(|h| hex(&h)).map_err(|e| {
                // The entry is named already: drop the reader's own naming of it.
                let m = e.to_string();
                let prefix = format!("{}: ", c.source.describe());
                escape(m.strip_prefix(&prefix).unwrap_or(&m).as_bytes())
            }),
        },
        k => FileSum {
            size: 0,
            sha256: Err(format!("a {}, not a file", k.name())),
        },
    }
}

fn perm(p: u16) -> String {
    format!("{p:04o}")
}

fn dev(d: u64) -> String {
    format!(
        "{}:{}",
        libc::major(d as libc::dev_t),
        libc::minor(d as libc::dev_t)
    )
}

fn mtime(t: u32) -> String {
    format!("{t} ({} UTC)", utc(t.into(), true))
}

/// The first path naming a hard-linked inode; `None` for an inode named once.
type Leader = Option<Vec<u8>>;

/// For every inode named by several entries, the first path naming it (walk order).
fn link_leaders(t: &Tree) -> Vec<Leader> {
    let counts = t.link_counts();
    let mut first: Vec<Option<Vec<u8>>> = vec![None; t.inode_count()];
    for n in t.walk() {
        let i = t.node(n).inode.0 as usize;
        if counts[i] > 1 && !matches!(t.inode(t.node(n).inode).kind, InodeKind::Dir) {
            first[i].get_or_insert_with(|| t.path(n));
        }
    }
    first
}

fn describe_entry(t: &Tree, n: NodeId) -> String {
    match &t.node_inode(n).kind {
        InodeKind::Dir => {
            let mut count = 0u64;
            let mut stack = vec![n];
            while let Some(d) = stack.pop() {
                for c in &t.node(d).children {
                    count += 1;
                    if matches!(t.node_inode(*c).kind, InodeKind::Dir) {
                        stack.push(*c);
                    }
                }
            }
            format!("directory, {count} entries below")
        }
        InodeKind::File(c) => format!("file, {} bytes", c.size),
        InodeKind::Symlink(target) => format!("symlink to {}", escape(target)),
        InodeKind::CharDev(d) => format!("char-device {}", dev(*d)),
        InodeKind::BlockDev(d) => format!("block-device {}", dev(*d)),
        k => k.name().to_string(),
    }
}

/// The differences between two trees, path by path: entries only one tree has (their children
/// not listed again), then for entries both have their type, metadata, content (when `content`)
/// and hard-link grouping.
pub(super) fn tree_diff(ta: &Tree, tb: &Tree, content: bool, s: &mut Section) {
    let pa: BTreeMap<Vec<u8>, NodeId> = ta.walk().into_iter().map(|n| (ta.path(n), n)).collect();
    let pb: BTreeMap<Vec<u8>, NodeId> = tb.walk().into_iter().map(|n| (tb.path(n), n)).collect();
    let keys: BTreeSet<&Vec<u8>> = pa.keys().chain(pb.keys()).collect();

    // Contents of same-size files present in both, hashed in parallel.
    let mut pairs: Vec<(&Vec<u8>, NodeId, NodeId)> = Vec::new();
    if content {
        for k in &keys {
            if let (Some(na), Some(nb)) = (pa.get(*k), pb.get(*k)) {
                if let (InodeKind::File(ca), InodeKind::File(cb)) =
                    (&ta.node_inode(*na).kind, &tb.node_inode(*nb).kind)
                {
                    if ca.size == cb.size {
                        pairs.push((k, *na, *nb));
                    }
                }
            }
        }
    }
    let hashed: BTreeMap<&Vec<u8>, (FileSum, FileSum)> = pairs
        .par_iter()
        .map(|(k, na, nb)| (*k, (file_sum(ta, *na), file_sum(tb, *nb))))
        .collect();
    let leaders = (link_leaders(ta), link_leaders(tb));

    let mut gone: BTreeSet<Vec<u8>> = BTreeSet::new();
    let under_gone = |p: &[u8], gone: &BTreeSet<Vec<u8>>| {
        let mut cur = p;
        while let Some(i) = cur.iter().rposition(|c| *c == b'/') {
            cur = &cur[..i];
            if gone.contains(cur) {
                return true;
            }
        }
        false
    };
    for k in keys {
        let (na, nb) = (pa.get(k), pb.get(k));
        let p = show_path(k);
        match (na, nb) {
            (Some(na), None) => {
                if !under_gone(k, &gone) {
                    s.push(Difference::only_a(p, describe_entry(ta, *na)));
                    gone.insert(k.clone());
                }
            }
            (None, Some(nb)) => {
                if !under_gone(k, &gone) {
                    s.push(Difference::only_b(p, describe_entry(tb, *nb)));
                    gone.insert(k.clone());
                }
            }
            (Some(na), Some(nb)) => {
                let sides = ((ta, *na), (tb, *nb));
                if entry_diff(&p, sides, hashed.get(k), (&leaders.0, &leaders.1), s) {
                    gone.insert(k.clone());
                }
            }
            (None, None) => {}
        }
    }
}

/// The differences of the entry at `p`, present in both trees as `na` and `nb`: type, metadata,
/// symlink target, device, size, content (`hashed`: both sums, when the contents were hashed)
/// and hard links (`leaders`: each tree's [`link_leaders`]). True when the type differs: the
/// entry then counts as replaced and nothing below it is compared.
fn entry_diff(
    p: &str,
    ((ta, na), (tb, nb)): ((&Tree, NodeId), (&Tree, NodeId)),
    hashed: Option<&(FileSum, FileSum)>,
    (la, lb): (&[Leader], &[Leader]),
    s: &mut Section,
) -> bool {
    let ia = ta.node_inode(na);
    let ib = tb.node_inode(nb);
    if ia.kind.name() != ib.kind.name() {
        s.push(Difference::both(
            format!("{p}: type"),
            describe_entry(ta, na),
            describe_entry(tb, nb),
        ));
        return true;
    }
    meta_diff(p, &ia.meta, &ib.meta, s);
    match (&ia.kind, &ib.kind) {
        (InodeKind::Symlink(a), InodeKind::Symlink(b)) if a != b => s.push(Difference::both(
            format!("{p}: symlink target"),
            escape(a),
            escape(b),
        )),
        (InodeKind::CharDev(a), InodeKind::CharDev(b))
        | (InodeKind::BlockDev(a), InodeKind::BlockDev(b))
            if a != b =>
        {
            s.push(Difference::both(format!("{p}: device"), dev(*a), dev(*b)))
        }
        (InodeKind::File(a), InodeKind::File(b)) => {
            if a.size != b.size {
                s.push(Difference::both(
                    format!("{p}: size"),
                    a.size.to_string(),
                    b.size.to_string(),
                ));
            } else if let Some((ha, hb)) = hashed {
                if ha.sha256.is_err() || hb.sha256.is_err() || ha.sha256 != hb.sha256 {
                    let show = |f: &FileSum| match &f.sha256 {
                        Ok(h) => format!("sha256 {h}"),
                        Err(e) => format!("unreadable ({e})"),
                    };
                    s.push(Difference::both(
                        format!("{p}: content"),
                        show(ha),
                        show(hb),
                    ));
                }
            }
        }
        _ => {}
    }
    if !matches!(ia.kind, InodeKind::Dir) {
        let ga = &la[ta.node(na).inode.0 as usize];
        let gb = &lb[tb.node(nb).inode.0 as usize];
        if ga != gb {
            let show = |g: &Option<Vec<u8>>| match g {
                Some(l) => format!("hard-linked, first link {}", show_path(l)),
                None => "not hard-linked".to_string(),
            };
            s.push(Difference::both(
                format!("{p}: hard links"),
                show(ga),
                show(gb),
            ));
        }
    }
    false
}

/// The metadata differences of the entry at `p`: mode, owner, mtime, xattrs.
fn meta_diff(p: &str, ma: &Metadata, mb: &Metadata, s: &mut Section) {
    if ma.perm != mb.perm {
        s.push(Difference::both(
            format!("{p}: mode"),
            perm(ma.perm),
            perm(mb.perm),
        ));
    }
    if (ma.uid, ma.gid) != (mb.uid, mb.gid) {
        s.push(Difference::both(
            format!("{p}: owner"),
            format!("{}:{}", ma.uid, ma.gid),
            format!("{}:{}", mb.uid, mb.gid),
        ));
    }
    if ma.mtime != mb.mtime {
        s.push(Difference::both(
            format!("{p}: mtime"),
            mtime(ma.mtime),
            mtime(mb.mtime),
        ));
    }
    if ma.xattrs != mb.xattrs {
        xattr_diff(p, &ma.xattrs, &mb.xattrs, s);
    }
}

/// The extended attributes of the entry at `p` that differ, by name.
fn xattr_diff(p: &str, a: &[Xattr], b: &[Xattr], s: &mut Section) {
    let xa: BTreeMap<&[u8], &[u8]> = a.iter().map(|x| (&x.name[..], &x.value[..])).collect();
    let xb: BTreeMap<&[u8], &[u8]> = b.iter().map(|x| (&x.name[..], &x.value[..])).collect();
    let names: BTreeSet<&[u8]> = xa.keys().chain(xb.keys()).copied().collect();
    for n in names {
        let what = format!("{p}: xattr {}", escape(n));
        let show = |v: &[u8]| cut(format!("\"{}\"", escape(v)), 120);
        match (xa.get(n), xb.get(n)) {
            (Some(a), Some(b)) if a != b => s.push(Difference::both(what, show(a), show(b))),
            (Some(a), None) => s.push(Difference::only_a(what, show(a))),
            (None, Some(b)) => s.push(Difference::only_b(what, show(b))),
            _ => {}
        }
    }
}
