//! The walk of an image's directory tree ([`Archive::walk`]) and the [`Tree`] built from it
//! ([`Archive::read_tree`]): every entry checked against its inode, cycles, shared listings, deep
//! nesting and hard-link bombs refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::archive::{lossy, wrap, Archive};
use super::data::ArchiveFile;
use super::dir::DirEntry;
use super::inode::{decode_dev, DiskInode, InodeBody};
use super::meta::{MetaReader, MetaRef};
use super::{Result, SqfsError};
use crate::corrupt;
use crate::tree::{Content, Inode, InodeId, InodeKind, Metadata, NodeId, Tree, Xattr};

/// Deepest directory nesting accepted (the root is depth 0).
pub const MAX_DEPTH: usize = 256;
/// Directory entries allowed per distinct inode, beyond [`LINK_SLACK`] (bounds hard-link bombs).
pub const LINKS_PER_INODE: u64 = 16;
/// Directory entries allowed in any image whatever its number of inodes.
pub const LINK_SLACK: u64 = 65_536;

/// Most bytes of extended attributes (names and values, counted per inode) a tree may hold.
pub const MAX_TREE_XATTR_BYTES: u64 = 256 << 20;

/// Attribute sets decoded so far while reading a tree, and the bytes attached to inodes.
#[derive(Default)]
struct XattrCache {
    sets: HashMap<u32, Vec<Xattr>>,
    bytes: u64,
}

/// One entry met by [`Archive::walk`].
pub struct WalkEntry<'a> {
    /// Full path, `/`-separated, without a leading slash; empty for the root.
    pub path: &'a [u8],
    /// Entry name; empty for the root.
    pub name: &'a [u8],
    /// Nesting depth: 0 for the root, 1 for its entries, …
    pub depth: usize,
    /// The entry's inode.
    pub inode: &'a DiskInode,
    /// Where the inode lies in the inode table.
    pub inode_ref: MetaRef,
    /// False when an earlier entry named the same inode (this entry is a further hard link).
    pub first_link: bool,
}

impl Archive {
    fn metadata_in(
        &self,
        meta: &MetaReader<'_>,
        ino: &DiskInode,
        xattrs: &mut XattrCache,
    ) -> Result<Metadata> {
        let idx = ino.body.xattr();
        let set = match xattrs.sets.get(&idx) {
            Some(set) => set.clone(),
            None => {
                let set = self.xattrs_in(meta, idx)?;
                xattrs.sets.insert(idx, set.clone());
                set
            }
        };
        // A set decodes to at most xattr::MAX_SET_BYTES: this sum cannot overflow.
        let bytes: usize = set.iter().map(|x| x.name.len() + x.value.len()).sum();
        xattrs.bytes = xattrs.bytes.saturating_add(bytes as u64);
        if xattrs.bytes > MAX_TREE_XATTR_BYTES {
            return Err(corrupt!(
                "extended attributes of the tree exceed {MAX_TREE_XATTR_BYTES} bytes"
            ));
        }
        Ok(Metadata {
            perm: ino.header.perm,
            uid: self.id(ino.header.uid_idx, "owner")?,
            gid: self.id(ino.header.gid_idx, "group")?,
            mtime: ino.header.mtime,
            xattrs: set,
        })
    }

    /// Visits every entry once, depth first, parents before children, children in bytewise name
    /// order; the root first (depth 0, empty name). Refuses cycles, directories reached twice,
    /// entries whose type or number disagree with their inode, inode numbers outside
    /// 1..=inode count, overlapping listings, nesting deeper than [`MAX_DEPTH`] and more entries
    /// than the hard-link bound ([`LINKS_PER_INODE`], [`LINK_SLACK`]) allows.
    pub fn walk(&self, visit: impl FnMut(&WalkEntry<'_>) -> Result<()>) -> Result<()> {
        self.walk_in(&self.meta(), visit).map_err(|e| self.named(e))
    }

    pub(super) fn walk_in(
        &self,
        meta: &MetaReader<'_>,
        mut visit: impl FnMut(&WalkEntry<'_>) -> Result<()>,
    ) -> Result<()> {
        struct Frame {
            entries: Vec<DirEntry>,
            next: usize,
            path_len: usize,
        }
        let root_ref = self.root_ref();
        let root = self
            .inode_in(meta, root_ref)
            .map_err(|e| wrap(e, "root inode"))?;
        if !matches!(root.body, InodeBody::Dir { .. }) {
            return Err(corrupt!("root inode is not a directory"));
        }
        // Inode number -> (where it lies, the inode unless it is a directory).
        let mut seen: HashMap<u32, (MetaRef, Option<Arc<DiskInode>>)> = HashMap::new();
        let mut listings: BTreeMap<MetaRef, MetaRef> = BTreeMap::new();
        seen.insert(root.header.number, (root_ref, None));
        visit(&WalkEntry {
            path: b"",
            name: b"",
            depth: 0,
            inode: &root,
            inode_ref: root_ref,
            first_link: true,
        })
        .map_err(|e| wrap(e, "/"))?;
        let mut stack = vec![Frame {
            entries: self
                .listing_claimed(meta, &root, &mut listings)
                .map_err(|e| wrap(e, "/"))?,
            next: 0,
            path_len: 0,
        }];
        let mut path: Vec<u8> = Vec::new();
        let mut entries: u64 = 1;
        while let Some(frame) = stack.last_mut() {
            let Some(e) = frame.entries.get(frame.next) else {
                stack.pop();
                continue;
            };
            frame.next += 1;
            let e = e.clone();
            path.truncate(frame.path_len);
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            let depth = stack.len();
            let at = |err: SqfsError| wrap(err, format_args!("/{}", lossy(&path)));
            if depth > MAX_DEPTH {
                return Err(at(corrupt!("entry nested deeper than {MAX_DEPTH} levels")));
            }
            entries += 1;
            let bound = (seen.len() as u64)
                .saturating_mul(LINKS_PER_INODE)
                .saturating_add(LINK_SLACK);
            if entries > bound {
                return Err(at(corrupt!(
                    "{entries} entries for {} inodes: too many hard links",
                    seen.len()
                )));
            }
            if e.number == 0 || e.number > self.sb.inode_count {
                return Err(at(corrupt!(
                    "entry names inode {}, outside 1..={}",
                    e.number,
                    self.sb.inode_count
                )));
            }
            let (inode, first_link) = match seen.get(&e.number) {
                Some((r, cached)) => {
                    if *r != e.inode_ref {
                        return Err(at(corrupt!(
                            "inode {} is reached through two different references",
                            e.number
                        )));
                    }
                    match cached {
                        Some(i) => (i.clone(), false),
                        None => {
                            return Err(at(corrupt!(
                                "directory inode {} is reached twice (a cycle or a hard-linked directory)",
                                e.number
                            )))
                        }
                    }
                }
                None => (
                    Arc::new(self.inode_in(meta, e.inode_ref).map_err(at)?),
                    true,
                ),
            };
            if inode.header.number != e.number {
                return Err(at(corrupt!(
                    "entry names inode {} but its inode is number {}",
                    e.number,
                    inode.header.number
                )));
            }
            if inode.body.basic_kind() != e.kind {
                return Err(at(corrupt!(
                    "entry has type {} but its inode has type {}",
                    e.kind,
                    inode.body.basic_kind()
                )));
            }
            let is_dir = matches!(inode.body, InodeBody::Dir { .. });
            if first_link {
                let cached = if is_dir { None } else { Some(inode.clone()) };
                seen.insert(e.number, (e.inode_ref, cached));
            }
            visit(&WalkEntry {
                path: &path,
                name: &e.name,
                depth,
                inode: &inode,
                inode_ref: e.inode_ref,
                first_link,
            })
            .map_err(at)?;
            if is_dir {
                let children = self
                    .listing_claimed(meta, &inode, &mut listings)
                    .map_err(at)?;
                stack.push(Frame {
                    entries: children,
                    next: 0,
                    path_len: path.len(),
                });
            }
        }
        Ok(())
    }

    /// Lists `dir`, refusing a listing that overlaps one already read (legitimate images never
    /// share listing bytes; this bounds the entries of a hostile image by its directory table).
    fn listing_claimed(
        &self,
        meta: &MetaReader<'_>,
        dir: &DiskInode,
        claimed: &mut BTreeMap<MetaRef, MetaRef>,
    ) -> Result<Vec<DirEntry>> {
        let (entries, start, end) = self.list_dir_in(meta, dir)?;
        if start == end {
            return Ok(entries);
        }
        let overlaps_before = claimed
            .range(..=start)
            .next_back()
            .is_some_and(|(_, e)| *e > start);
        let overlaps_after = claimed.range(start..).next().is_some_and(|(s, _)| *s < end);
        if overlaps_before || overlaps_after {
            return Err(corrupt!(
                "listing of directory inode {} overlaps another directory's listing",
                dir.header.number
            ));
        }
        claimed.insert(start, end);
        Ok(entries)
    }

    /// The whole tree: metadata, kinds, hard-link groups (entries naming one inode number share
    /// one [`InodeId`]). File contents are not read now: each is a handle that streams the bytes
    /// from this archive when opened.
    pub fn read_tree(self: &Arc<Self>) -> Result<Tree> {
        self.read_tree_in().map_err(|e| self.named(e))
    }

    fn read_tree_in(self: &Arc<Self>) -> Result<Tree> {
        let meta = self.meta();
        let mut tree: Option<Tree> = None;
        let mut parents: Vec<NodeId> = Vec::new();
        let mut inodes: HashMap<u32, InodeId> = HashMap::new();
        let mut xattrs = XattrCache::default();
        self.walk_in(&meta, |e| {
            let number = e.inode.header.number;
            if e.depth == 0 {
                let t = Tree::new(self.metadata_in(&meta, e.inode, &mut xattrs)?);
                parents.push(t.root());
                tree = Some(t);
                return Ok(());
            }
            let t = tree
                .as_mut()
                .ok_or_else(|| corrupt!("entry met before the root directory"))?;
            parents.truncate(e.depth);
            let parent = *parents
                .last()
                .ok_or_else(|| corrupt!("entry at depth {} without a parent directory", e.depth))?;
            let tree_err = |err: crate::tree::TreeError| corrupt!("{err}");
            let node = if e.first_link {
                let kind = self.kind_in(&meta, e)?;
                let inode = Inode {
                    meta: self.metadata_in(&meta, e.inode, &mut xattrs)?,
                    kind,
                };
                let node = t.add(parent, e.name, inode).map_err(tree_err)?;
                inodes.insert(number, t.node(node).inode);
                node
            } else {
                let id = *inodes.get(&number).ok_or_else(|| {
                    corrupt!("hard link to inode {number}, which no earlier entry named")
                })?;
                t.link(parent, e.name, id).map_err(tree_err)?
            };
            if matches!(e.inode.body, InodeBody::Dir { .. }) {
                parents.push(node);
            }
            Ok(())
        })?;
        tree.ok_or_else(|| corrupt!("the walk met no root directory"))
    }

    fn kind_in(self: &Arc<Self>, meta: &MetaReader<'_>, e: &WalkEntry<'_>) -> Result<InodeKind> {
        Ok(match &e.inode.body {
            InodeBody::Dir { .. } => InodeKind::Dir,
            InodeBody::File { size, .. } => {
                let what = format!("{}:/{}", self.name, lossy(e.path));
                let layout = self.file_layout(meta, e.inode, what)?;
                InodeKind::File(Content {
                    size: *size,
                    source: Arc::new(ArchiveFile {
                        archive: self.clone(),
                        layout: Arc::new(layout),
                    }),
                })
            }
            InodeBody::Symlink { target, .. } => InodeKind::Symlink(target.clone()),
            InodeBody::Device {
                block: true, rdev, ..
            } => InodeKind::BlockDev(decode_dev(*rdev)),
            InodeBody::Device {
                block: false, rdev, ..
            } => InodeKind::CharDev(decode_dev(*rdev)),
            InodeBody::Ipc { socket: false, .. } => InodeKind::Fifo,
            InodeBody::Ipc { socket: true, .. } => InodeKind::Socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::compress::Compressor;
    use crate::squashfs::inode::BLOCK_UNCOMPRESSED;
    use crate::squashfs::superblock;
    use crate::squashfs::testkit::*;
    use std::io::{self, Read};
    use std::path::Path;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// The inode of `path` in `a`.
    fn inode_at(a: &Archive, path: &[u8]) -> DiskInode {
        let mut found = None;
        a.walk(|e| {
            if e.path == path {
                found = Some(e.inode.clone());
            }
            Ok(())
        })
        .unwrap();
        found.unwrap_or_else(|| panic!("no {}", lossy(path)))
    }

    fn check_image(img: &Path, expected: &Model, what: &str) -> Arc<Archive> {
        let a = Archive::open(img).unwrap_or_else(|e| panic!("{what}: {e}"));
        let t = a.read_tree().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same(expected, &model_of_tree(&t), what);
        a
    }

    /// Every combination of block size (4 KiB, 1 MiB) and fragments (on, off) for `comp`.
    fn matrix(comp: &str) {
        if !have("mksquashfs") {
            return;
        }
        let s = source(true);
        for bs in ["4K", "1M"] {
            for frags in [true, false] {
                let name = format!("{comp}-{bs}-{}", if frags { "frag" } else { "nofrag" });
                let out = s.dir.path().join(&name);
                let mut args = vec!["-comp", comp, "-b", bs];
                if !frags {
                    args.push("-no-fragments");
                }
                mksquashfs(&s.src, &out, &args);
                let a = check_image(&out, &s.model, &name);
                assert_eq!(a.compressor().name(), comp);
                assert_eq!(a.superblock().fragment_count == 0, !frags, "{name}");
                // The 600-entry listing spans metadata blocks: an extended inode with an index.
                let InodeBody::Dir { index, size, .. } = inode_at(&a, b"many").body else {
                    panic!("many is not a directory")
                };
                assert!(!index.is_empty() && size > 8192, "{name}");
                let InodeBody::File { block_sizes, .. } = inode_at(&a, b"sparse").body else {
                    panic!("sparse is not a file")
                };
                assert!(block_sizes.contains(&0), "{name}: no sparse block");
                std::fs::remove_file(&out).unwrap();
            }
        }
    }

    #[test]
    fn mksquashfs_gzip_images_read_back() {
        matrix("gzip");
    }

    #[test]
    fn mksquashfs_xz_images_read_back() {
        matrix("xz");
    }

    #[test]
    fn mksquashfs_zstd_images_read_back() {
        matrix("zstd");
    }

    #[test]
    fn mksquashfs_lz4_images_read_back() {
        matrix("lz4");
    }

    #[test]
    fn compressor_options_and_uncompressed_tables() {
        if !have("mksquashfs") {
            return;
        }
        let s = source(false);
        let variants: [(&str, &[&str], Option<Compressor>); 7] = [
            (
                "xz-bcj",
                &[
                    "-comp",
                    "xz",
                    "-b",
                    "64K",
                    "-Xbcj",
                    "x86",
                    "-Xdict-size",
                    "32K",
                ],
                Some(Compressor::Xz {
                    level: crate::squashfs::compress::XZ_DEFAULT_LEVEL,
                    dict_size: 32 << 10,
                    bcj_x86: true,
                }),
            ),
            (
                "gzip-level",
                &[
                    "-comp",
                    "gzip",
                    "-b",
                    "4K",
                    "-Xcompression-level",
                    "3",
                    "-always-use-fragments",
                ],
                Some(Compressor::Gzip { level: 3 }),
            ),
            (
                "zstd-level",
                &["-comp", "zstd", "-b", "8K", "-Xcompression-level", "3"],
                Some(Compressor::Zstd { level: 3 }),
            ),
            (
                "lz4-hc",
                &["-comp", "lz4", "-b", "4K", "-Xhc"],
                Some(Compressor::Lz4),
            ),
            ("lzo", &["-comp", "lzo", "-b", "64K"], Some(Compressor::Lzo)),
            (
                "uncompressed",
                &[
                    "-noI",
                    "-noD",
                    "-noF",
                    "-noX",
                    "-b",
                    "4K",
                    "-always-use-fragments",
                ],
                None,
            ),
            (
                "lzma",
                &["-comp", "lzma", "-b", "4K", "-no-exports"],
                Some(Compressor::Lzma),
            ),
        ];
        for (name, args, comp) in variants {
            let out = s.dir.path().join(name);
            mksquashfs(&s.src, &out, args);
            let a = check_image(&out, &s.model, name);
            if let Some(c) = comp {
                assert_eq!(a.compressor(), &c, "{name}");
            }
        }
        let out = s.dir.path().join("no-xattrs");
        mksquashfs(&s.src, &out, &["-no-xattrs", "-b", "4K"]);
        let mut m = Model {
            ents: s.model.ents.clone(),
            links: s.model.links.clone(),
        };
        m.ents.values_mut().for_each(|e| e.xattrs.clear());
        let a = check_image(&out, &m, "no-xattrs");
        assert_eq!(a.xattr_id_count(), 0);
    }

    #[test]
    fn gensquashfs_images_read_back() {
        if !have("gensquashfs") {
            return;
        }
        let s = source(true);
        // gensquashfs --pack-dir stores every hard link as a separate file (REFERENCE.md).
        let expected = Model {
            ents: s.model.ents.clone(),
            links: Default::default(),
        };
        for (name, args) in [
            ("xz-4k", &["-c", "xz", "-b", "4096"][..]),
            (
                "zstd-1m-no-tail-packing",
                &["-c", "zstd", "-b", "1048576", "-T"][..],
            ),
            ("gzip-default", &["-c", "gzip"][..]),
        ] {
            let out = s.dir.path().join(name);
            gensquashfs(&s.src, &out, args);
            check_image(&out, &expected, name);
            std::fs::remove_file(&out).unwrap();
        }
    }
    /// Entries of the listing of directory `dir`: (name, header position, entry position), absolute
    /// in the image. The listing must lie in the first (uncompressed) directory-table block.
    fn raw_entries(img: &[u8], dir: &[u8]) -> Vec<(Vec<u8>, usize, usize)> {
        let a = Archive::from_image(Arc::new(img.to_vec()), "raw".into()).unwrap();
        let InodeBody::Dir {
            block_start,
            size,
            offset,
            ..
        } = inode_at(&a, dir).body
        else {
            panic!("not a directory")
        };
        assert_eq!(block_start, 0);
        let start = a.superblock().directory_table_start as usize + 2 + offset as usize;
        let end = start + size as usize - 3;
        let mut out = Vec::new();
        let mut p = start;
        while p < end {
            let count = u32::from_le_bytes(img[p..p + 4].try_into().unwrap()) as usize + 1;
            let hdr = p;
            p += 12;
            for _ in 0..count {
                let len = u16::from_le_bytes([img[p + 6], img[p + 7]]) as usize + 1;
                out.push((img[p + 8..p + 8 + len].to_vec(), hdr, p));
                p += 8 + len;
            }
        }
        out
    }

    fn expect_corrupt(img: Vec<u8>, needle: &str) {
        let err = Archive::from_image(Arc::new(img), "patched".into())
            .and_then(|a| a.read_tree())
            .err()
            .unwrap_or_else(|| panic!("patched image accepted (expected {needle:?})"));
        let msg = err.to_string();
        assert!(matches!(err, SqfsError::Corrupt(_)), "{msg}");
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
        assert!(msg.contains("patched"), "{msg:?} does not name the image");
    }

    #[test]
    fn patched_listings_are_refused() {
        if !have("mksquashfs") {
            return;
        }
        let s = source(false);
        let img = raw_image(&s);
        // user.big is shared by three different sets: stored once, referenced out of line.
        let ool = [&[0u8, 1, 3, 0][..], b"big"].concat();
        assert!(
            img.windows(ool.len()).any(|w| w == ool),
            "no out-of-line value"
        );
        let a = Archive::from_image(Arc::new(img.clone()), "raw".into()).unwrap();
        let root_ref = a.root_ref();
        let root_number = a.inode(root_ref).unwrap().header.number;
        let inode_count = a.superblock().inode_count;
        let put16 = |img: &mut Vec<u8>, at: usize, v: u16| {
            img[at..at + 2].copy_from_slice(&v.to_le_bytes())
        };
        let put32 = |img: &mut Vec<u8>, at: usize, v: u32| {
            img[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };

        // a/b made to name the root directory: a cycle.
        let ab = raw_entries(&img, b"a");
        assert_eq!(ab.len(), 1);
        let (_, hdr, ent) = ab[0].clone();
        let mut m = img.clone();
        put32(&mut m, hdr + 4, root_ref.block as u32);
        put32(&mut m, hdr + 8, root_number);
        put16(&mut m, ent, root_ref.offset);
        put16(&mut m, ent + 2, 0);
        expect_corrupt(m, "reached twice");

        let top = raw_entries(&img, b"");
        let (_, hdr, tiny) = top.iter().find(|e| e.0 == b"tiny").unwrap().clone();
        let mut m = img.clone();
        put16(&mut m, tiny + 4, 3);
        expect_corrupt(m, "has type");

        let mut m = img.clone();
        put32(&mut m, hdr + 8, inode_count + 1000);
        expect_corrupt(m, "outside 1..=");

        let mut m = img.clone();
        let delta = i16::from_le_bytes([img[tiny + 2], img[tiny + 3]]);
        put16(&mut m, tiny + 2, (delta + 1) as u16);
        expect_corrupt(m, "but its inode is number");

        let links = raw_entries(&img, b"links");
        let (name, _, h2) = links[1].clone();
        assert_eq!(name, b"h2");
        let mut m = img.clone();
        m[h2 + 9] = b'0';
        expect_corrupt(m, "not sorted");

        let mut m = img.clone();
        m[h2 + 9] = b'/';
        expect_corrupt(m, "invalid name");

        // Inodes: the table is uncompressed, so an inode lies at table + block + 2 + offset.
        let inode_pos = |path: &[u8]| {
            let mut at = None;
            a.walk(|e| {
                if e.path == path {
                    at = Some(e.inode_ref);
                }
                Ok(())
            })
            .unwrap();
            let r = at.unwrap();
            assert_eq!(r.block, 0);
            a.superblock().inode_table_start as usize + 2 + r.offset as usize
        };
        let links_dir = inode_pos(b"links");
        let sticky = inode_pos(b"sticky");
        // Basic directory inode: header (16), block_start (4), nlink (4), size (2), offset (2).
        let mut m = img.clone();
        m[sticky + 16..sticky + 20].copy_from_slice(&img[links_dir + 16..links_dir + 20]);
        m[sticky + 24..sticky + 28].copy_from_slice(&img[links_dir + 24..links_dir + 28]);
        expect_corrupt(m, "overlaps another directory's listing");

        let mut m = img.clone();
        put16(&mut m, sticky + 24, 2);
        expect_corrupt(m, "less than 3");

        // Basic file inode: header (16), blocks_start, fragment, offset, size, then block sizes.
        let three = inode_pos(b"three-blocks");
        let mut m = img.clone();
        put32(&mut m, three + 32, 4095 | BLOCK_UNCOMPRESSED);
        expect_corrupt(m, "uncompressed block 0 has 4095 bytes, expected 4096");
        let mut m = img.clone();
        put32(&mut m, three + 32, 5000);
        expect_corrupt(m, "more than the block size");
        let mut m = img.clone();
        put32(&mut m, three + 20, a.superblock().fragment_count);
        expect_corrupt(m, "fragment index");
        let mut m = img.clone();
        put32(&mut m, three + 16, a.superblock().inode_table_start as u32);
        expect_corrupt(m, "outside the data area");
    }

    #[test]
    fn deep_nesting_is_refused() {
        if !have("mksquashfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, depth, ok) in [("ok", MAX_DEPTH, true), ("deep", MAX_DEPTH + 1, false)] {
            let src = dir.path().join(name);
            let mut p = src.clone();
            for _ in 0..depth - 1 {
                p.push("d");
            }
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("f"), b"at the bottom").unwrap();
            let img = mksquashfs(&src, &dir.path().join(format!("{name}.sqfs")), &[]);
            let r = Archive::open(&img).and_then(|a| a.read_tree());
            match (r, ok) {
                (Ok(t), true) => assert_eq!(t.node_count(), depth + 1),
                (Err(e), false) => assert!(e.to_string().contains("deeper than"), "{e}"),
                (r, _) => panic!("depth {depth}: {:?}", r.map(|t| t.node_count())),
            }
        }
    }

    /// Opens `img`, lists it, reads its tree and every file (at most 8 MiB each, 64 MiB in all).
    fn exercise(img: Vec<u8>) -> std::result::Result<(), String> {
        let a = Archive::from_image(Arc::new(img), "fuzz".into()).map_err(|e| e.to_string())?;
        let listed = crate::squashfs::inspect::listing(&a);
        let reported = crate::squashfs::inspect::report(&a);
        let t = a.read_tree().map_err(|e| e.to_string())?;
        if listed.is_err() || reported.is_err() {
            return Err("listing or report failed where read_tree did not".into());
        }
        let mut budget: u64 = 64 << 20;
        for n in t.walk() {
            if let InodeKind::File(c) = &t.node_inode(n).kind {
                let r = c.source.open().map_err(|e| e.to_string())?;
                let cap = budget.min(8 << 20);
                let got = io::copy(&mut r.take(cap), &mut io::sink()).map_err(|e| e.to_string())?;
                budget -= got;
                if got < cap && got != c.size {
                    return Err(format!("{} bytes read of {}", got, c.size));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn truncated_images_fail_cleanly() {
        if !have("mksquashfs") {
            return;
        }
        let s = source(false);
        let out = mksquashfs(
            &s.src,
            &s.dir.path().join("img"),
            &["-comp", "zstd", "-b", "4K"],
        );
        let img = std::fs::read(out).unwrap();
        let used = Archive::from_image(Arc::new(img.clone()), "t".into())
            .unwrap()
            .superblock()
            .bytes_used as usize;
        exercise(img.clone()).unwrap();
        let (mut ok, mut refused, mut patched) = (0, 0, 0);
        for cut in (0..200).chain((200..img.len()).step_by(97)) {
            let r = exercise(img[..cut].to_vec());
            assert_eq!(r.is_ok(), cut >= used, "cut at {cut}: {r:?}");
            if r.is_ok() {
                ok += 1;
            } else {
                refused += 1;
            }
            if cut < used && cut >= superblock::SIZE {
                // The superblock made to claim the truncated length: deeper structures fail.
                let mut m = img[..cut].to_vec();
                m[40..48].copy_from_slice(&(cut as u64).to_le_bytes());
                assert!(exercise(m).is_err(), "cut at {cut} with bytes_used patched");
                patched += 1;
            }
        }
        eprintln!(
            "truncations: {ok} cuts read, {refused} refused, {patched} refused with bytes_used \
             patched ({} bytes, {used} used)",
            img.len()
        );
        // Measured with mksquashfs 4.5.1 (20480-byte image, 16447 used): 42 cuts read, 368
        // refused, 272 refused with bytes_used patched. The bounds leave room for another
        // mksquashfs's layout, not for a reader that refuses (or accepts) every cut.
        assert!(
            ok >= 35 && refused >= 350 && patched >= 255,
            "{ok} read, {refused} refused, {patched} refused with bytes_used patched"
        );
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Flips random bytes of the superblock and metadata of `img`, checking that reading never
    /// panics and every iteration is quick.
    fn flip_bytes(img: &[u8], iterations: usize, seed: u64) -> (usize, Duration) {
        let a = Archive::from_image(Arc::new(img.to_vec()), "f".into()).unwrap();
        let meta_start = a.superblock().inode_table_start as usize;
        let used = a.superblock().bytes_used as usize;
        let mut rng = XorShift(seed);
        let mut ok = 0;
        let mut slowest = Duration::ZERO;
        for i in 0..iterations {
            let mut m = img.to_vec();
            let flips = 1 + rng.below(3);
            let mut what = Vec::new();
            for _ in 0..flips {
                let at = if rng.below(10) == 0 {
                    rng.below(superblock::SIZE)
                } else {
                    meta_start + rng.below(used - meta_start)
                };
                let x = 1 + rng.below(255) as u8;
                m[at] ^= x;
                what.push((at, x));
            }
            let t = Instant::now();
            let r = std::panic::catch_unwind(|| exercise(m));
            let took = t.elapsed();
            match r {
                Ok(Ok(())) => ok += 1,
                Ok(Err(_)) => {}
                Err(_) => panic!("iteration {i} (seed {seed}) panicked; flips {what:?}"),
            }
            assert!(
                took < Duration::from_secs(3),
                "iteration {i} took {took:?}; flips {what:?}"
            );
            slowest = slowest.max(took);
        }
        (ok, slowest)
    }

    #[test]
    fn random_byte_flips_never_panic() {
        if !have("mksquashfs") {
            return;
        }
        let s = source(false);
        let raw = raw_image(&s);
        let packed = std::fs::read(mksquashfs(
            &s.src,
            &s.dir.path().join("zstd"),
            &["-comp", "zstd", "-b", "4K"],
        ))
        .unwrap();
        let (ok_raw, slow_raw) = flip_bytes(&raw, 2000, 0x9E37_79B9_7F4A_7C15);
        let (ok_packed, slow_packed) = flip_bytes(&packed, 1000, 0xD1B5_4A32_D192_ED03);
        eprintln!(
            "byte flips: {ok_raw}/2000 uncompressed-metadata and {ok_packed}/1000 zstd images \
             still read; slowest iterations {slow_raw:?} and {slow_packed:?}"
        );
        // Measured with mksquashfs 4.5.1 and these seeds: 504 of 2000 and 71 of 1000 read, the
        // rest refused. The bounds leave room for another mksquashfs's layout, not for a reader
        // that refuses (or accepts) far more.
        let (refused_raw, refused_packed) = (2000 - ok_raw, 1000 - ok_packed);
        assert!(
            ok_raw >= 480 && refused_raw >= 1420,
            "uncompressed metadata: {ok_raw} read, {refused_raw} refused"
        );
        assert!(
            ok_packed >= 60 && refused_packed >= 880,
            "zstd: {ok_packed} read, {refused_packed} refused"
        );
    }

    fn proptest_image() -> Option<&'static Vec<u8>> {
        static IMG: OnceLock<Option<Vec<u8>>> = OnceLock::new();
        IMG.get_or_init(|| {
            if !have("mksquashfs") {
                return None;
            }
            let s = source(false);
            Some(raw_image(&s))
        })
        .as_ref()
    }

    /// Property test with a fixed seed (so the counts of read and refused images are fixed too):
    /// 300 images with 1 to 5 bytes changed never panic the reader.
    #[test]
    fn mutated_images_never_panic() {
        use proptest::test_runner::{Config, RngSeed, TestRunner};
        let Some(base) = proptest_image() else { return };
        let a = Archive::from_image(Arc::new(base.clone()), "p".into()).unwrap();
        let start = a.superblock().inode_table_start as usize;
        let used = a.superblock().bytes_used as usize;
        let mut runner = TestRunner::new(Config {
            cases: 300,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0x51_7EAD),
            ..Config::default()
        });
        let muts = (
            proptest::collection::vec((proptest::num::usize::ANY, 1u8..=255), 1..6),
            0u8..4,
        );
        let (ok, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        runner
            .run(&muts, |(muts, tail)| {
                let mut m = base.clone();
                for (i, (at, x)) in muts.iter().enumerate() {
                    // Mostly metadata, sometimes the superblock or the data area.
                    let at = match (i + tail as usize) % 4 {
                        0 => at % superblock::SIZE,
                        1 => at % used,
                        _ => start + at % (used - start),
                    };
                    m[at] ^= x;
                }
                match exercise(m) {
                    Ok(()) => ok.set(ok.get() + 1),
                    Err(_) => refused.set(refused.get() + 1),
                }
                Ok(())
            })
            .unwrap();
        let (ok, refused) = (ok.get(), refused.get());
        eprintln!("mutations: {ok} images read, {refused} refused");
        // Measured with mksquashfs 4.5.1 and this seed: 58 read, 242 refused. The bounds leave room
        // for another mksquashfs's layout, not for a reader that refuses (or accepts) far more.
        assert!(ok >= 50 && refused >= 225, "{ok} read, {refused} refused");
    }
}
