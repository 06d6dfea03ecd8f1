//! Opening a SquashFS image: typed, bounds-checked access to its tables, streaming reads of file
//! data, and the whole tree as a [`crate::tree::Tree`].
//!
//! Images are untrusted input (invariant 5): every field is checked before it is used, every read
//! is bounded by the structure it belongs to, and no buffer is sized by a field that was not first
//! checked against real bytes. Tables are bounded as the kernel bounds them: they follow each other
//! in the order inode table, directory table, fragment table, export table, id table, xattr tables,
//! and each one ends where the first metadata block of the next one begins.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::compress::Compressor;
use super::dir::{read_listing, DirEntry};
use super::inode::{decode_dev, DiskInode, InodeBody, BLOCK_UNCOMPRESSED};
use super::meta::{MetaReader, MetaRef};
use super::superblock::{self, flags, Superblock};
use super::table::{FragmentEntry, Table};
use super::xattr::XattrReader;
use super::{Result, SqfsError, INVALID_U32, INVALID_U64, META_SIZE};
use crate::corrupt;
use crate::io::{FileImage, ReadAt, SubImage};
use crate::tree::{
    Content, ContentSource, Inode, InodeId, InodeKind, Metadata, NodeId, Tree, Xattr,
};

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

/// Where one region of an image lies: absolute byte offsets, end exclusive.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableExtent {
    /// Region name (`data`, `inode table`, `directory table`, `fragment table`, `export table`,
    /// `id table`, `xattr table`).
    pub name: &'static str,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Decompressed fragment blocks kept per archive (at most 1 MiB each).
const FRAGMENT_CACHE: usize = 16;

/// An opened SquashFS image.
pub struct Archive {
    name: String,
    image: Arc<dyn ReadAt>,
    sb: Superblock,
    comp: Compressor,
    comp_options: Option<Vec<u8>>,
    ids: Vec<u32>,
    fragments: Option<Table>,
    xattrs: Option<XattrReader>,
    data_start: u64,
    dir_end: u64,
    extents: Vec<TableExtent>,
    frag_cache: Mutex<Vec<(FragmentEntry, Arc<Vec<u8>>)>>,
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

/// Returns `e` with `what` prefixed to its message, keeping its kind.
fn wrap(e: SqfsError, what: impl Display) -> SqfsError {
    match e {
        SqfsError::Io { context, source } => SqfsError::Io {
            context: format!("{what}: {context}"),
            source,
        },
        SqfsError::Corrupt(m) => SqfsError::Corrupt(format!("{what}: {m}")),
        SqfsError::Unsupported(m) => SqfsError::Unsupported(format!("{what}: {m}")),
        SqfsError::Invalid(m) => SqfsError::Invalid(format!("{what}: {m}")),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Number of metadata blocks holding `count` entries of `size` bytes.
fn table_blocks(count: u64, size: u64) -> u64 {
    count.saturating_mul(size).div_ceil(META_SIZE as u64)
}

/// End of a lookup list of `blocks` u64 entries starting at `at`.
fn lookup_end(what: &str, at: u64, blocks: u64) -> Result<u64> {
    blocks
        .checked_mul(8)
        .and_then(|b| at.checked_add(b))
        .ok_or_else(|| corrupt!("{what} lookup list overflows"))
}

impl Archive {
    /// Opens the image file at `path`.
    pub fn open(path: &Path) -> Result<Arc<Archive>> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| SqfsError::io(name.clone(), e))?;
        let image = FileImage::new(file).map_err(|e| SqfsError::io(name.clone(), e))?;
        Archive::from_image(Arc::new(image), name)
    }

    /// Opens an image held by `image` (a file, a buffer, or a [`SubImage`] window inside an ISO);
    /// `name` says which input it is in error messages.
    pub fn from_image(image: Arc<dyn ReadAt>, name: String) -> Result<Arc<Archive>> {
        match Archive::load(image, name.clone()) {
            Ok(a) => Ok(Arc::new(a)),
            Err(e) => Err(wrap(e, name)),
        }
    }

    fn load(image: Arc<dyn ReadAt>, name: String) -> Result<Archive> {
        let len = image.len();
        if len < superblock::SIZE as u64 {
            return Err(corrupt!(
                "image of {len} bytes is smaller than a superblock"
            ));
        }
        let mut buf = [0u8; superblock::SIZE];
        image
            .read_exact_at(&mut buf, 0)
            .map_err(|e| SqfsError::io("superblock", e))?;
        let sb = Superblock::decode(&buf, len)?;
        let image: Arc<dyn ReadAt> = Arc::new(
            SubImage::new(image, 0, sb.bytes_used).map_err(|e| SqfsError::io("superblock", e))?,
        );
        let probe = Compressor::from_image(sb.compression_id, None, sb.block_size)?;
        let mut data_start = superblock::SIZE as u64;
        let comp_options = if sb.flags & flags::COMPRESSOR_OPTIONS != 0 {
            let meta = MetaReader::new(&*image, &probe);
            let (block, next) = meta
                .block(data_start, sb.inode_table_start)
                .map_err(|e| wrap(e, "compressor options"))?;
            data_start = next;
            Some(block.to_vec())
        } else {
            None
        };
        let comp =
            Compressor::from_image(sb.compression_id, comp_options.as_deref(), sb.block_size)
                .map_err(|e| wrap(e, "compressor options"))?;
        let meta = MetaReader::new(&*image, &comp);
        let mut extents = Vec::new();
        let mut next = sb.bytes_used;

        let xattrs = if sb.xattr_id_table_start != INVALID_U64 {
            let x = XattrReader::open(&*image, sb.xattr_id_table_start, sb.bytes_used)
                .map_err(|e| wrap(e, "xattr table"))?;
            let header_end = sb
                .xattr_id_table_start
                .checked_add(16)
                .ok_or_else(|| corrupt!("xattr table header overflows"))?;
            let end = lookup_end("xattr id table", header_end, table_blocks(x.count(), 16))?;
            extents.push(TableExtent {
                name: "xattr table",
                start: x.kv_start(),
                end,
            });
            next = x.kv_start();
            Some(x)
        } else {
            None
        };

        let id_count = sb.id_count as u64;
        let end = lookup_end("id table", sb.id_table_start, table_blocks(id_count, 4))?;
        if end > next {
            return Err(corrupt!(
                "id table overlaps the xattr table that follows it"
            ));
        }
        let id_table = Table::open(
            &*image,
            "id table",
            sb.id_table_start,
            id_count,
            4,
            sb.id_table_start,
        )?;
        let mut ids = Vec::with_capacity(sb.id_count as usize);
        for i in 0..id_count {
            let e = id_table.entry(&meta, "id", i)?;
            ids.push(super::Le::new(&e, "id table entry").u32()?);
        }
        let first = id_table
            .first_block()
            .ok_or_else(|| corrupt!("id table has no blocks"))?;
        extents.push(TableExtent {
            name: "id table",
            start: first,
            end,
        });
        next = first;

        if sb.export_table_start != INVALID_U64 {
            let at = sb.export_table_start;
            let end = lookup_end("export table", at, table_blocks(sb.inode_count as u64, 8))?;
            if end > next {
                return Err(corrupt!(
                    "export table overlaps the id table that follows it"
                ));
            }
            let mut b = [0u8; 8];
            image
                .read_exact_at(&mut b, at)
                .map_err(|e| SqfsError::io("export table", e))?;
            let first = u64::from_le_bytes(b);
            if first >= at || first < data_start {
                return Err(corrupt!("export table block at {first} outside its table"));
            }
            extents.push(TableExtent {
                name: "export table",
                start: first,
                end,
            });
            next = first;
        }

        let fragments = if sb.fragment_count > 0 {
            let at = sb.fragment_table_start;
            let count = sb.fragment_count as u64;
            let end = lookup_end("fragment table", at, table_blocks(count, 16))?;
            if end > next {
                return Err(corrupt!(
                    "fragment table overlaps the table that follows it"
                ));
            }
            let t = Table::open(&*image, "fragment table", at, count, 16, at)?;
            let first = t
                .first_block()
                .ok_or_else(|| corrupt!("fragment table has no blocks"))?;
            extents.push(TableExtent {
                name: "fragment table",
                start: first,
                end,
            });
            next = first;
            Some(t)
        } else {
            None
        };

        if sb.directory_table_start > next {
            return Err(corrupt!(
                "directory table starts at {} after the table that follows it ({next})",
                sb.directory_table_start
            ));
        }
        if sb.inode_table_start < data_start {
            return Err(corrupt!("inode table overlaps the compressor options"));
        }
        extents.push(TableExtent {
            name: "data",
            start: data_start,
            end: sb.inode_table_start,
        });
        extents.push(TableExtent {
            name: "inode table",
            start: sb.inode_table_start,
            end: sb.directory_table_start,
        });
        extents.push(TableExtent {
            name: "directory table",
            start: sb.directory_table_start,
            end: next,
        });
        extents.sort_by_key(|e| (e.start, e.end));
        Ok(Archive {
            name,
            image,
            dir_end: next,
            sb,
            comp,
            comp_options,
            ids,
            fragments,
            xattrs,
            data_start,
            extents,
            frag_cache: Mutex::new(Vec::new()),
        })
    }

    /// The name given when the image was opened (used in error messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The compressor the image declares, with its options.
    pub fn compressor(&self) -> &Compressor {
        &self.comp
    }

    /// The raw compressor-options payload, when the image has one.
    pub fn compressor_options(&self) -> Option<&[u8]> {
        self.comp_options.as_deref()
    }

    /// Where the root directory inode lies.
    pub fn root_ref(&self) -> MetaRef {
        MetaRef::unpack(self.sb.root_inode_ref)
    }

    /// Every region of the image (data and tables), sorted by start.
    pub fn extents(&self) -> &[TableExtent] {
        &self.extents
    }

    /// The whole id table.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Number of xattr ids (0 without an xattr table).
    pub fn xattr_id_count(&self) -> u64 {
        self.xattrs.as_ref().map_or(0, |x| x.count())
    }

    fn named(&self, e: SqfsError) -> SqfsError {
        wrap(e, &self.name)
    }

    fn meta(&self) -> MetaReader<'_> {
        MetaReader::new(&*self.image, &self.comp)
    }

    fn id(&self, idx: u16, what: &str) -> Result<u32> {
        self.ids.get(idx as usize).copied().ok_or_else(|| {
            corrupt!(
                "{what} index {idx} outside the id table ({} entries)",
                self.ids.len()
            )
        })
    }

    /// The user id stored at index `idx` of the id table.
    pub fn uid(&self, idx: u16) -> Result<u32> {
        self.id(idx, "owner").map_err(|e| self.named(e))
    }

    /// The group id stored at index `idx` of the id table (the same table as owners).
    pub fn gid(&self, idx: u16) -> Result<u32> {
        self.id(idx, "group").map_err(|e| self.named(e))
    }

    /// The inode at `r`, relative to the inode table.
    pub fn inode(&self, r: MetaRef) -> Result<DiskInode> {
        self.inode_in(&self.meta(), r).map_err(|e| self.named(e))
    }

    fn inode_in(&self, meta: &MetaReader<'_>, r: MetaRef) -> Result<DiskInode> {
        let table = self.sb.inode_table_start;
        let end = self.sb.directory_table_start;
        let mut pos = r;
        let ino = DiskInode::decode(
            |n| {
                let (b, next) = meta.read(table, end, pos, n)?;
                pos = next;
                Ok(b)
            },
            self.sb.block_size,
        )
        .map_err(|e| wrap(e, format_args!("inode at {}:{}", r.block, r.offset)))?;
        let n = ino.header.number;
        if n == 0 || n > self.sb.inode_count {
            return Err(corrupt!(
                "inode at {}:{} has number {n}, outside 1..={}",
                r.block,
                r.offset,
                self.sb.inode_count
            ));
        }
        Ok(ino)
    }

    /// The entries of directory `dir`, checked: names valid and sorted strictly ascending bytewise.
    pub fn list_dir(&self, dir: &DiskInode) -> Result<Vec<DirEntry>> {
        self.list_dir_in(&self.meta(), dir)
            .map(|(entries, _, _)| entries)
            .map_err(|e| self.named(e))
    }

    /// Lists `dir`; also returns where its listing starts and ends in the directory table.
    fn list_dir_in(
        &self,
        meta: &MetaReader<'_>,
        dir: &DiskInode,
    ) -> Result<(Vec<DirEntry>, MetaRef, MetaRef)> {
        let n = dir.header.number;
        let InodeBody::Dir {
            block_start,
            size,
            offset,
            ..
        } = &dir.body
        else {
            return Err(corrupt!("inode {n} is not a directory"));
        };
        let len = size
            .checked_sub(3)
            .ok_or_else(|| corrupt!("directory inode {n} has size {size}, less than 3"))?;
        let start = MetaRef {
            block: *block_start as u64,
            offset: *offset,
        };
        if len == 0 {
            return Ok((Vec::new(), start, start));
        }
        let len =
            usize::try_from(len).map_err(|_| corrupt!("directory inode {n} has size {size}"))?;
        let (bytes, end) = meta
            .read(self.sb.directory_table_start, self.dir_end, start, len)
            .map_err(|e| wrap(e, format_args!("listing of directory inode {n}")))?;
        let entries =
            read_listing(&bytes).map_err(|e| wrap(e, format_args!("directory inode {n}")))?;
        for e in &entries {
            if crate::tree::check_name(&e.name).is_err() {
                return Err(corrupt!(
                    "directory inode {n} has an entry with the invalid name {:?}",
                    lossy(&e.name)
                ));
            }
        }
        for pair in entries.windows(2) {
            if pair[0].name >= pair[1].name {
                return Err(corrupt!(
                    "entries of directory inode {n} are not sorted: {:?} before {:?}",
                    lossy(&pair[0].name),
                    lossy(&pair[1].name)
                ));
            }
        }
        Ok((entries, start, end))
    }

    /// The attributes of xattr index `idx`, full names sorted; empty for [`INVALID_U32`].
    pub fn xattrs(&self, idx: u32) -> Result<Vec<Xattr>> {
        self.xattrs_in(&self.meta(), idx).map_err(|e| self.named(e))
    }

    fn xattrs_in(&self, meta: &MetaReader<'_>, idx: u32) -> Result<Vec<Xattr>> {
        if idx == INVALID_U32 {
            return Ok(Vec::new());
        }
        let x = self
            .xattrs
            .as_ref()
            .ok_or_else(|| corrupt!("xattr index {idx} but the image has no xattr table"))?;
        let set = x
            .get(meta, idx, x.kv_end())
            .map_err(|e| wrap(e, format_args!("xattr id {idx}")))?;
        for pair in set.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(corrupt!(
                    "xattr id {idx} holds {:?} twice",
                    lossy(&pair[0].name)
                ));
            }
        }
        Ok(set)
    }

    /// Fragment table entry `i`, checked to lie inside the data area.
    pub fn fragment(&self, i: u32) -> Result<FragmentEntry> {
        self.fragment_in(&self.meta(), i).map_err(|e| self.named(e))
    }

    fn fragment_in(&self, meta: &MetaReader<'_>, i: u32) -> Result<FragmentEntry> {
        let t = self.fragments.as_ref().ok_or_else(|| {
            corrupt!("fragment {i} is referenced but the image has no fragment table")
        })?;
        let e = FragmentEntry::decode(&t.entry(meta, "fragment", i as u64)?)?;
        let stored = e.size & !BLOCK_UNCOMPRESSED;
        if stored == 0 || stored > self.sb.block_size {
            return Err(corrupt!("fragment {i} has stored size {stored}"));
        }
        if e.start < self.data_start
            || e.start
                .checked_add(stored as u64)
                .is_none_or(|end| end > self.sb.inode_table_start)
        {
            return Err(corrupt!(
                "fragment {i} ({stored} bytes at {}) lies outside the data area",
                e.start
            ));
        }
        Ok(e)
    }

    /// The decompressed fragment block `e`, from a small most-recently-used cache: files sharing
    /// a fragment block are usually read one after another, by each of a few threads.
    fn fragment_block(&self, e: FragmentEntry) -> Result<Arc<Vec<u8>>> {
        {
            let mut cache = self.frag_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|(k, _)| *k == e) {
                let hit = cache.remove(i);
                let data = hit.1.clone();
                cache.insert(0, hit);
                return Ok(data);
            }
        }
        let stored = (e.size & !BLOCK_UNCOMPRESSED) as usize;
        let mut raw = vec![0u8; stored];
        self.image
            .read_exact_at(&mut raw, e.start)
            .map_err(|err| SqfsError::io(format!("fragment block at {}", e.start), err))?;
        let data = if e.size & BLOCK_UNCOMPRESSED != 0 {
            raw
        } else {
            self.comp
                .decompress(&raw, self.sb.block_size as usize)
                .map_err(|err| wrap(err, format_args!("fragment block at {}", e.start)))?
        };
        let data = Arc::new(data);
        let mut cache = self.frag_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(0, (e, data.clone()));
        cache.truncate(FRAGMENT_CACHE);
        Ok(data)
    }

    /// Checks where the data of file inode `ino` lies and resolves its fragment.
    fn file_layout(
        &self,
        meta: &MetaReader<'_>,
        ino: &DiskInode,
        what: String,
    ) -> Result<FileLayout> {
        let n = ino.header.number;
        let InodeBody::File {
            blocks_start,
            size,
            frag,
            frag_offset,
            block_sizes,
            ..
        } = &ino.body
        else {
            return Err(corrupt!("inode {n} is not a regular file"));
        };
        let bs = self.sb.block_size as u64;
        let mut end = *blocks_start;
        for (i, s) in block_sizes.iter().enumerate() {
            let stored = s & !BLOCK_UNCOMPRESSED;
            if stored as u64 > bs {
                return Err(corrupt!(
                    "file inode {n}: block {i} has stored size {stored}, more than the block size"
                ));
            }
            if s & BLOCK_UNCOMPRESSED != 0 && stored != 0 {
                let expected = block_len(*size, bs, i);
                if Some(stored as u64) != expected {
                    return Err(corrupt!(
                        "file inode {n}: uncompressed block {i} has {stored} bytes, expected {}",
                        expected.unwrap_or(0)
                    ));
                }
            }
            end = end
                .checked_add(stored as u64)
                .ok_or_else(|| corrupt!("file inode {n}: data blocks overflow"))?;
        }
        if end > *blocks_start
            && (*blocks_start < self.data_start || end > self.sb.inode_table_start)
        {
            return Err(corrupt!(
                "file inode {n}: data blocks {blocks_start}..{end} lie outside the data area"
            ));
        }
        let mut tail = None;
        if *frag != INVALID_U32 {
            let e = self.fragment_in(meta, *frag)?;
            let len = size % bs;
            if len > 0 {
                if (*frag_offset as u64)
                    .checked_add(len)
                    .is_none_or(|x| x > bs)
                {
                    return Err(corrupt!(
                        "file inode {n}: tail of {len} bytes at offset {frag_offset} overflows its fragment block"
                    ));
                }
                tail = Some(Tail {
                    frag: e,
                    offset: *frag_offset as usize,
                    len: len as usize,
                });
            }
        }
        Ok(FileLayout {
            what,
            size: *size,
            block_size: bs,
            blocks_start: *blocks_start,
            block_sizes: block_sizes.clone(),
            tail,
        })
    }

    /// A reader streaming the bytes of regular-file inode `ino`.
    pub fn open_file(self: &Arc<Self>, ino: &DiskInode) -> Result<FileReader> {
        let what = format!("{}: inode {}", self.name, ino.header.number);
        let layout = self
            .file_layout(&self.meta(), ino, what)
            .map_err(|e| self.named(e))?;
        Ok(FileReader::new(self.clone(), Arc::new(layout)))
    }

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

    fn walk_in(
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
                .ok_or_else(|| corrupt!("entry met before the root"))?;
            parents.truncate(e.depth);
            let parent = *parents
                .last()
                .ok_or_else(|| corrupt!("entry without a parent directory"))?;
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
                let id = *inodes
                    .get(&number)
                    .ok_or_else(|| corrupt!("hard link to unknown inode {number}"))?;
                t.link(parent, e.name, id).map_err(tree_err)?
            };
            if matches!(e.inode.body, InodeBody::Dir { .. }) {
                parents.push(node);
            }
            Ok(())
        })?;
        tree.ok_or_else(|| corrupt!("no root directory"))
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

/// Uncompressed length of full-block-list entry `i` of a file of `size` bytes: the block size,
/// or the remainder for the last block.
fn block_len(size: u64, bs: u64, i: usize) -> Option<u64> {
    let start = (i as u64).checked_mul(bs)?;
    let left = size.checked_sub(start).filter(|l| *l > 0)?;
    Some(left.min(bs))
}

/// The tail of a file stored in a fragment block.
#[derive(Clone, Debug)]
struct Tail {
    frag: FragmentEntry,
    offset: usize,
    len: usize,
}

/// Where a file's bytes lie, checked against the image.
#[derive(Debug)]
struct FileLayout {
    what: String,
    size: u64,
    block_size: u64,
    blocks_start: u64,
    block_sizes: Vec<u32>,
    tail: Option<Tail>,
}

/// The content of a file inside an archive, for [`crate::tree::Content`].
struct ArchiveFile {
    archive: Arc<Archive>,
    layout: Arc<FileLayout>,
}

impl ContentSource for ArchiveFile {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(FileReader::new(
            self.archive.clone(),
            self.layout.clone(),
        )))
    }
    fn describe(&self) -> String {
        self.layout.what.clone()
    }
    fn random_access(&self) -> Option<Arc<dyn ReadAt>> {
        Some(Arc::new(ArchiveFileImage::new(
            self.archive.clone(),
            self.layout.clone(),
        )))
    }
}

enum Chunk {
    Empty,
    Owned(Vec<u8>, usize),
    Zeros(u64),
    Shared(Arc<Vec<u8>>, usize, usize),
}

/// Streams the bytes of one regular file: its full blocks in order (sparse blocks as zeros),
/// then its tail from the fragment block. Every block is checked to decompress to exactly its
/// expected size; after the first error every read fails.
pub struct FileReader {
    archive: Arc<Archive>,
    layout: Arc<FileLayout>,
    next_block: usize,
    disk_pos: u64,
    tail_done: bool,
    cur: Chunk,
    failed: Option<String>,
}

impl FileReader {
    fn new(archive: Arc<Archive>, layout: Arc<FileLayout>) -> FileReader {
        let disk_pos = layout.blocks_start;
        FileReader {
            archive,
            layout,
            next_block: 0,
            disk_pos,
            tail_done: false,
            cur: Chunk::Empty,
            failed: None,
        }
    }

    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        self.layout.size
    }

    /// Loads the next block or the tail; false at the end of the file.
    fn load_next(&mut self) -> Result<bool> {
        let l = &*self.layout;
        if let Some(&s) = l.block_sizes.get(self.next_block) {
            let i = self.next_block;
            self.next_block += 1;
            let at = self.disk_pos;
            let raw = match std::mem::replace(&mut self.cur, Chunk::Empty) {
                Chunk::Owned(v, _) => v,
                _ => Vec::new(),
            };
            self.cur = match decode_block(&self.archive, l, i, at, raw)? {
                Some(data) => Chunk::Owned(data, 0),
                None => Chunk::Zeros(block_len(l.size, l.block_size, i).unwrap_or(0)),
            };
            self.disk_pos = at + (s & !BLOCK_UNCOMPRESSED) as u64;
            return Ok(true);
        }
        if !self.tail_done {
            self.tail_done = true;
            if let Some(t) = &l.tail {
                let (block, start, end) = tail_bytes(&self.archive, t)?;
                self.cur = Chunk::Shared(block, start, end);
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Full block `i` of a file, stored at `at`, checked to decompress to exactly its expected
/// size; None for a sparse block (zeros). `raw` is a buffer to reuse.
fn decode_block(
    archive: &Archive,
    l: &FileLayout,
    i: usize,
    at: u64,
    mut raw: Vec<u8>,
) -> Result<Option<Vec<u8>>> {
    let s = *l
        .block_sizes
        .get(i)
        .ok_or_else(|| corrupt!("block {i} lies past the end of the file"))?;
    let expected = block_len(l.size, l.block_size, i)
        .ok_or_else(|| corrupt!("block {i} lies past the end of the file"))?;
    let stored = (s & !BLOCK_UNCOMPRESSED) as u64;
    if stored == 0 {
        return Ok(None);
    }
    if stored > l.block_size {
        return Err(corrupt!("block {i} has stored size {stored}"));
    }
    if at.checked_add(stored).is_none() {
        return Err(corrupt!("block {i} lies past the end of the image"));
    }
    raw.clear();
    raw.resize(stored as usize, 0);
    archive
        .image
        .read_exact_at(&mut raw, at)
        .map_err(|e| SqfsError::io(format!("data block {i} at {at}"), e))?;
    let data = if s & BLOCK_UNCOMPRESSED != 0 {
        raw
    } else {
        archive
            .comp
            .decompress(&raw, expected as usize)
            .map_err(|e| wrap(e, format_args!("data block {i} at {at}")))?
    };
    if data.len() as u64 != expected {
        return Err(corrupt!(
            "data block {i} at {at} holds {} bytes, expected {expected}",
            data.len()
        ));
    }
    Ok(Some(data))
}

/// A file's tail: its fragment block and the byte range in it.
fn tail_bytes(archive: &Archive, t: &Tail) -> Result<(Arc<Vec<u8>>, usize, usize)> {
    let block = archive.fragment_block(t.frag)?;
    let end = t
        .offset
        .checked_add(t.len)
        .filter(|e| *e <= block.len())
        .ok_or_else(|| {
            corrupt!(
                "tail of {} bytes at offset {} lies outside its {}-byte fragment block",
                t.len,
                t.offset,
                block.len()
            )
        })?;
    Ok((block, t.offset, end))
}

/// Decoded blocks a [`FileImage`] of an archive file keeps.
const FILE_IMAGE_CACHE: usize = 8;

/// Random access to a file inside an archive (an image stored in a kit): a full block is found
/// by the running sum of the stored sizes and decoded on demand (the last few kept), the tail
/// read from its fragment. Every block is checked as when streaming.
struct ArchiveFileImage {
    archive: Arc<Archive>,
    layout: Arc<FileLayout>,
    /// Where each full block starts on disk.
    starts: Vec<u64>,
    cache: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
}

impl ArchiveFileImage {
    fn new(archive: Arc<Archive>, layout: Arc<FileLayout>) -> ArchiveFileImage {
        let mut at = layout.blocks_start;
        let starts = layout
            .block_sizes
            .iter()
            .map(|s| {
                let here = at;
                at = at.saturating_add((s & !BLOCK_UNCOMPRESSED) as u64);
                here
            })
            .collect();
        ArchiveFileImage {
            archive,
            layout,
            starts,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// Full block `i`, decoded (sparse blocks as zeros).
    fn block(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = cache.iter().position(|(k, _)| *k == i) {
            let hit = cache.remove(pos);
            let data = hit.1.clone();
            cache.push(hit);
            return Ok(data);
        }
        let l = &*self.layout;
        let at = *self
            .starts
            .get(i)
            .ok_or_else(|| corrupt!("block {i} lies past the end of the file"))?;
        let data = match decode_block(&self.archive, l, i, at, Vec::new())? {
            Some(d) => d,
            None => vec![0; block_len(l.size, l.block_size, i).unwrap_or(0) as usize],
        };
        let data = Arc::new(data);
        if cache.len() >= FILE_IMAGE_CACHE {
            cache.remove(0);
        }
        cache.push((i, data.clone()));
        Ok(data)
    }
}

impl ReadAt for ArchiveFileImage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let l = &*self.layout;
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > l.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: read past the end of the file", l.what),
            ));
        }
        let fail = |e: SqfsError| {
            let m = format!("{}: {e}", l.what);
            match e {
                SqfsError::Io { source, .. } => io::Error::new(source.kind(), m),
                _ => io::Error::new(io::ErrorKind::InvalidData, m),
            }
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = usize::try_from(pos / l.block_size).unwrap_or(usize::MAX);
            let within = (pos % l.block_size) as usize;
            let n = if i < l.block_sizes.len() {
                let b = self.block(i).map_err(fail)?;
                let src = b.get(within..).unwrap_or_default();
                let n = src.len().min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&src[..n]);
                n
            } else {
                let t = l.tail.as_ref().ok_or_else(|| {
                    fail(corrupt!(
                        "offset {pos} lies in a tail the file does not have"
                    ))
                })?;
                let (b, start, end) = tail_bytes(&self.archive, t).map_err(fail)?;
                let src = b.get(start + within..end).unwrap_or_default();
                let n = src.len().min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&src[..n]);
                n
            };
            if n == 0 {
                return Err(fail(corrupt!("no bytes at offset {pos}")));
            }
            done += n;
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.layout.size
    }
}

impl Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(m) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, m.clone()));
        }
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.cur {
                Chunk::Owned(v, p) if *p < v.len() => {
                    let src = v.get(*p..).unwrap_or_default();
                    let n = src.len().min(out.len());
                    out[..n].copy_from_slice(&src[..n]);
                    *p += n;
                    return Ok(n);
                }
                Chunk::Zeros(left) if *left > 0 => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(out.len());
                    out[..n].fill(0);
                    *left -= n as u64;
                    return Ok(n);
                }
                Chunk::Shared(b, s, e) if *s < *e => {
                    let src = b.get(*s..*e).unwrap_or_default();
                    let n = src.len().min(out.len());
                    if n > 0 {
                        out[..n].copy_from_slice(&src[..n]);
                        *s += n;
                        return Ok(n);
                    }
                    self.cur = Chunk::Empty;
                }
                _ => {}
            }
            match self.load_next() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    let m = format!("{}: {e}", self.layout.what);
                    self.failed = Some(m.clone());
                    return Err(match e {
                        SqfsError::Io { source, .. } => io::Error::new(source.kind(), m),
                        _ => io::Error::new(io::ErrorKind::InvalidData, m),
                    });
                }
            }
        }
    }
}

/// Source trees, image builders and tree models shared by the reader's and the inspector's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::ffi::CString;
    use std::io::{Read, Write};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use sha2::{Digest, Sha256};

    use crate::tree::{InodeKind, Tree};

    /// True when `tool` can be run; otherwise prints why the caller skips, or panics when
    /// `IUK_REQUIRE_KERNEL=1` demands every checker.
    pub fn have(tool: &str) -> bool {
        if Command::new(tool).arg("--help").output().is_ok() {
            return true;
        }
        if std::env::var("IUK_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("{tool} is not installed and IUK_REQUIRE_KERNEL=1");
        }
        eprintln!("skipping: {tool} is not installed");
        false
    }

    /// Deterministic bytes: a pseudo-random half (incompressible) and a text half.
    pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let mut out = Vec::with_capacity(len);
        while out.len() < len / 2 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len / 2);
        let mut i = 0u32;
        while out.len() < len {
            out.extend_from_slice(format!("line {i} of seed {seed}\n").as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn c(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    fn write(p: &Path, bytes: &[u8]) {
        std::fs::write(p, bytes).unwrap();
    }

    fn set_xattr(p: &Path, name: &str, value: &[u8]) {
        let n = CString::new(name).unwrap();
        let r = unsafe {
            libc::lsetxattr(
                c(p).as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {name} on {}", p.display());
    }

    fn set_mtime(p: &Path, t: i64) {
        let ts = libc::timespec {
            tv_sec: t as libc::time_t,
            tv_nsec: 0,
        };
        let times = [ts, ts];
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c(p).as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "utimensat {}", p.display());
    }

    fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
        let r = unsafe { libc::mknod(c(p).as_ptr(), kind | 0o640, libc::makedev(major, minor)) };
        assert_eq!(r, 0, "mknod {}", p.display());
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A 20-byte version-2 `security.capability` value (cap_net_raw, effective).
    pub const CAPABILITY: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// Builds the small source tree at `root` (created): every kind of entry and metadata, small
    /// files only. The returned tree is what every reader must give back.
    pub fn small_source(root: &Path) {
        std::fs::create_dir_all(root).unwrap();
        write(&root.join("empty"), b"");
        write(&root.join("tiny"), b"hello\n");
        write(&root.join("three-blocks"), &pattern(3 * 4096 + 100, 1));
        write(&root.join("dup-a"), &pattern(10_000, 2));
        write(&root.join("dup-b"), &pattern(10_000, 2));
        write(&root.join("dup-tiny"), b"hello\n");
        let links = root.join("links");
        std::fs::create_dir(&links).unwrap();
        write(&links.join("h1"), &pattern(5000, 3));
        std::fs::hard_link(links.join("h1"), links.join("h2")).unwrap();
        std::fs::hard_link(links.join("h1"), root.join("h3")).unwrap();
        std::os::unix::fs::symlink("tiny", root.join("sym-short")).unwrap();
        let long: String = (0..30).map(|i| format!("dir{i:06}/")).collect();
        assert_eq!(long.len(), 300);
        std::os::unix::fs::symlink(&long, root.join("sym-long")).unwrap();
        let dev = root.join("dev");
        std::fs::create_dir(&dev).unwrap();
        mknod(&dev.join("null"), libc::S_IFCHR, 1, 3);
        mknod(&dev.join("sda1"), libc::S_IFBLK, 8, 1);
        mknod(&dev.join("bigminor"), libc::S_IFCHR, 259, 70_000);
        let r = unsafe { libc::mkfifo(c(&root.join("fifo")).as_ptr(), 0o600) };
        assert_eq!(r, 0);
        drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
        let big = b"a value longer than eight bytes, shared";
        for (name, extra) in [("x1", true), ("x2", false), ("x3", false)] {
            let p = root.join(name);
            write(&p, name.as_bytes());
            set_xattr(&p, "user.big", big);
            if extra {
                set_xattr(&p, "user.a", b"1");
                set_xattr(&p, "trusted.t", b"tt");
                set_xattr(&p, "security.capability", &CAPABILITY);
            } else {
                set_xattr(&p, "trusted.big", big);
            }
        }
        set_xattr(&dev, "user.dir", b"on a directory");
        set_xattr(&root.join("sym-short"), "trusted.sym", b"on a symlink");
        set_xattr(root, "user.root", b"r");
        let ids = root.join("ids");
        write(&ids, b"owned");
        std::os::unix::fs::lchown(&ids, Some(100_000), Some(200_000)).unwrap();
        std::os::unix::fs::lchown(root.join("sym-long"), Some(70_000), Some(70_001)).unwrap();
        for (name, mode) in [
            ("setuid", 0o4755),
            ("setuid-nox", 0o4644),
            ("setgid", 0o2755),
            ("setgid-nox", 0o2644),
        ] {
            let p = root.join(name);
            write(&p, name.as_bytes());
            chmod(&p, mode);
        }
        let sticky = root.join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        write(&sticky.join("inside"), b"in a sticky dir");
        chmod(&sticky, 0o1777);
        let sgdir = root.join("sgid-dir");
        std::fs::create_dir(&sgdir).unwrap();
        chmod(&sgdir, 0o2770);
        write(&root.join("t0"), b"epoch");
        write(&root.join("tmax"), b"2106");
        write(&root.join("n".repeat(255)), b"long name");
        let bad = std::ffi::OsStr::from_bytes(b"bad-\xff\xfe-name");
        write(&root.join(bad), b"not utf-8");
        let deep = root.join("a/b/c/d");
        std::fs::create_dir_all(&deep).unwrap();
        write(&deep.join("leaf"), b"leaf");
    }

    /// The small tree plus multi-block files for 4 KiB and 1 MiB blocks, a sparse file and a
    /// directory of 600 entries.
    pub fn full_source(root: &Path) {
        small_source(root);
        write(&root.join("one-4k"), &pattern(4096, 10));
        write(&root.join("one-4k-plus1"), &pattern(4097, 11));
        write(&root.join("one-1m"), &pattern(1 << 20, 12));
        write(&root.join("one-1m-plus1"), &pattern((1 << 20) + 1, 13));
        write(&root.join("multi-1m"), &pattern((2 << 20) + 300, 14));
        let sparse = root.join("sparse");
        let mut f = std::fs::File::create(&sparse).unwrap();
        f.set_len(3 << 20).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1_500_000)).unwrap();
        f.write_all(b"middle").unwrap();
        drop(f);
        let many = root.join("many");
        std::fs::create_dir(&many).unwrap();
        for i in 0..600 {
            let p = many.join(format!("entry-{i:04}-{}", "p".repeat(i % 17)));
            if i % 50 == 0 {
                write(&p, &pattern(i, i as u32));
            } else {
                write(&p, b"");
            }
        }
    }

    /// Gives every entry under `root` a deterministic mtime (children before parents), then the
    /// special ones 0 and 2^32-1.
    pub fn finish_mtimes(root: &Path) {
        fn walk(p: &Path, n: &mut i64) {
            let md = std::fs::symlink_metadata(p).unwrap();
            if md.is_dir() {
                let mut names: Vec<_> = std::fs::read_dir(p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                names.sort();
                for c in names {
                    walk(&c, n);
                }
            }
            *n += 3607;
            set_mtime(p, 1_600_000_000 + *n);
        }
        let mut n = 0;
        walk(root, &mut n);
        set_mtime(&root.join("t0"), 0);
        set_mtime(&root.join("tmax"), u32::MAX as i64);
    }

    /// Runs a tool, panicking with its output when it fails.
    pub fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Builds `out` from `src` with mksquashfs and extra arguments.
    pub fn mksquashfs(src: &Path, out: &Path, args: &[&str]) -> PathBuf {
        run(Command::new("mksquashfs")
            .arg(src)
            .arg(out)
            .args(["-noappend", "-quiet", "-no-progress", "-processors", "2"])
            .args(args));
        out.to_path_buf()
    }

    /// Builds `out` from `src` with gensquashfs (times and xattrs kept, root defaults taken from
    /// the source root) and extra arguments.
    pub fn gensquashfs(src: &Path, out: &Path, args: &[&str]) -> PathBuf {
        let md = std::fs::symlink_metadata(src).unwrap();
        let defaults = format!(
            "uid={},gid={},mode=0{:o},mtime={}",
            md.uid(),
            md.gid(),
            md.mode() & 0o7777,
            md.mtime()
        );
        run(Command::new("gensquashfs")
            .arg("-D")
            .arg(src)
            .args(["-k", "-x", "-q", "-f", "-j", "2", "-d", &defaults])
            .args(args)
            .arg(out));
        out.to_path_buf()
    }

    /// One entry of a tree as the comparison sees it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Ent {
        /// Kind name.
        pub kind: String,
        /// Permission bits.
        pub perm: u16,
        /// Owner.
        pub uid: u32,
        /// Group.
        pub gid: u32,
        /// Modification time.
        pub mtime: u32,
        /// File size and content sha256.
        pub content: Option<(u64, [u8; 32])>,
        /// Symlink target.
        pub target: Option<Vec<u8>>,
        /// Device number.
        pub rdev: Option<u64>,
        /// Xattrs, sorted.
        pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    }

    /// A whole tree: entries by path, and hard-link groups (sorted paths of inodes with more
    /// than one entry).
    #[derive(Debug, Default)]
    pub struct Model {
        /// Entries by path (root = empty path).
        pub ents: BTreeMap<Vec<u8>, Ent>,
        /// Hard-link groups.
        pub links: BTreeSet<Vec<Vec<u8>>>,
    }

    fn sha(mut r: impl Read) -> (u64, [u8; 32]) {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        (n, h.finalize().into())
    }

    fn host_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let cp = c(p);
        let n = unsafe { libc::llistxattr(cp.as_ptr(), std::ptr::null_mut(), 0) };
        if n <= 0 {
            return Vec::new();
        }
        let mut names = vec![0u8; n as usize];
        let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        names.truncate(n.max(0) as usize);
        let mut out = Vec::new();
        for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if name.starts_with(b"system.") {
                continue;
            }
            let cn = CString::new(name).unwrap();
            let vn = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
            let mut v = vec![0u8; vn.max(0) as usize];
            let vn = unsafe {
                libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len())
            };
            v.truncate(vn.max(0) as usize);
            out.push((name.to_vec(), v));
        }
        out.sort();
        out
    }

    /// The model of a host directory tree.
    pub fn model_of_dir(root: &Path) -> Model {
        let mut m = Model::default();
        let mut groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
        let mut stack = vec![(root.to_path_buf(), Vec::new())];
        while let Some((p, rel)) = stack.pop() {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let mut e = Ent {
                kind: String::new(),
                perm: (md.mode() & 0o7777) as u16,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime() as u32,
                content: None,
                target: None,
                rdev: None,
                xattrs: host_xattrs(&p),
            };
            use std::os::unix::fs::FileTypeExt;
            e.kind = if ft.is_dir() {
                for c in std::fs::read_dir(&p).unwrap() {
                    let c = c.unwrap();
                    let mut r = rel.clone();
                    if !r.is_empty() {
                        r.push(b'/');
                    }
                    r.extend_from_slice(c.file_name().as_bytes());
                    stack.push((c.path(), r));
                }
                "directory"
            } else if ft.is_file() {
                e.content = Some(sha(std::fs::File::open(&p).unwrap()));
                "file"
            } else if ft.is_symlink() {
                e.target = Some(
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                );
                "symlink"
            } else if ft.is_char_device() {
                e.rdev = Some(md.rdev());
                "char-device"
            } else if ft.is_block_device() {
                e.rdev = Some(md.rdev());
                "block-device"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "socket"
            }
            .to_string();
            if !ft.is_dir() {
                groups
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            m.ents.insert(rel, e);
        }
        m.links = link_groups(groups);
        m
    }

    /// The paths of every group of two or more hard links, each sorted.
    fn link_groups<K>(groups: HashMap<K, Vec<Vec<u8>>>) -> BTreeSet<Vec<Vec<u8>>> {
        groups
            .into_values()
            .filter(|g| g.len() > 1)
            .map(|mut g| {
                g.sort();
                g
            })
            .collect()
    }

    /// The model of a tree, reading every file's content through its handle.
    pub fn model_of_tree(t: &Tree) -> Model {
        let mut m = Model::default();
        let mut groups: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        for n in t.walk() {
            let path = t.path(n);
            let node = t.node(n);
            let ino = t.inode(node.inode);
            let mut e = Ent {
                kind: ino.kind.name().to_string(),
                perm: ino.meta.perm,
                uid: ino.meta.uid,
                gid: ino.meta.gid,
                mtime: ino.meta.mtime,
                content: None,
                target: None,
                rdev: None,
                xattrs: ino
                    .meta
                    .xattrs
                    .iter()
                    .map(|x| (x.name.clone(), x.value.clone()))
                    .collect(),
            };
            match &ino.kind {
                InodeKind::File(c) => {
                    let (n, h) = sha(c.source.open().unwrap());
                    assert_eq!(n, c.size, "{}", c.source.describe());
                    e.content = Some((n, h));
                }
                InodeKind::Symlink(t) => e.target = Some(t.clone()),
                InodeKind::CharDev(d) | InodeKind::BlockDev(d) => e.rdev = Some(*d),
                _ => {}
            }
            if !matches!(ino.kind, InodeKind::Dir) {
                groups.entry(node.inode.0).or_default().push(path.clone());
            }
            m.ents.insert(path, e);
        }
        m.links = link_groups(groups);
        m
    }

    /// Panics listing the differences between two models.
    pub fn assert_same(expected: &Model, actual: &Model, what: &str) {
        let mut diffs = Vec::new();
        let keys: BTreeSet<&Vec<u8>> = expected.ents.keys().chain(actual.ents.keys()).collect();
        for k in keys {
            let p = String::from_utf8_lossy(k);
            match (expected.ents.get(k), actual.ents.get(k)) {
                (Some(a), Some(b)) if a != b => diffs.push(format!("/{p}: {a:?} != {b:?}")),
                (Some(_), None) => diffs.push(format!("/{p}: missing")),
                (None, Some(_)) => diffs.push(format!("/{p}: unexpected")),
                _ => {}
            }
        }
        if expected.links != actual.links {
            diffs.push(format!(
                "hard links {:?} != {:?}",
                expected.links, actual.links
            ));
        }
        diffs.truncate(20);
        assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// An image holding one file `f` with `data`, written by our writer.
    fn image_with(data: Vec<u8>, block_size: u32, comp: Compressor) -> Arc<Archive> {
        let mut t = Tree::new(Metadata {
            perm: 0o755,
            ..Default::default()
        });
        let root = t.root();
        t.add(
            root,
            b"f",
            Inode {
                meta: Metadata {
                    perm: 0o644,
                    ..Default::default()
                },
                kind: InodeKind::File(Content::from_bytes(data)),
            },
        )
        .unwrap();
        let mut p = crate::squashfs::write::WriterParams::new(comp, block_size, 0);
        p.jobs = 1;
        let mut out = io::Cursor::new(Vec::new());
        crate::squashfs::write::write_image(&t, &p, &mut out, &|_| {}).unwrap();
        Archive::from_image(Arc::new(out.into_inner()), "outer".into()).unwrap()
    }

    /// All bytes of an image.
    fn image_bytes(a: &Archive) -> Vec<u8> {
        let mut v = vec![0u8; a.image.len() as usize];
        a.image.read_exact_at(&mut v, 0).unwrap();
        v
    }

    /// The content of file `f` at the root of an image of [`image_with`].
    fn file_f(a: &Arc<Archive>) -> Result<Content> {
        let t = a.read_tree()?;
        let n = t.lookup(b"f").ok_or_else(|| corrupt!("no f"))?;
        match &t.node_inode(n).kind {
            InodeKind::File(c) => Ok(c.clone()),
            _ => Err(corrupt!("f is not a file")),
        }
    }

    /// The bytes of `f` inside the image stored as `f` in `outer`, opened in place.
    fn nested_f(outer: Arc<dyn ReadAt>) -> Result<Vec<u8>> {
        let c = file_f(&Archive::from_image(outer, "outer".into())?)?;
        let img = c
            .source
            .random_access()
            .ok_or_else(|| corrupt!("no random access"))?;
        let f = file_f(&Archive::from_image(img, "nested".into())?)?;
        f.read_all().map_err(|e| SqfsError::io("nested f", e))
    }

    /// The next value of a small linear congruential generator.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed
    }

    #[test]
    fn random_access_to_a_file_matches_its_stream() {
        // Compressed, stored (random) and sparse blocks, and a tail in a fragment.
        let mut data = pattern(3 * 4096, 7);
        data.extend(std::iter::repeat_n(b'a', 4096));
        data.extend(vec![0u8; 8192]);
        data.extend(pattern(1000, 9));
        let a = image_with(data.clone(), 4096, Compressor::Gzip { level: 9 });
        let img = file_f(&a)
            .unwrap()
            .source
            .random_access()
            .expect("random access");
        assert_eq!(img.len(), data.len() as u64);
        let mut seed = 1u64;
        for _ in 0..400 {
            let r = lcg(&mut seed);
            let off = (r >> 33) as usize % data.len();
            let len = ((r >> 13) as usize % 9000).min(data.len() - off);
            let mut buf = vec![0u8; len];
            img.read_exact_at(&mut buf, off as u64).unwrap();
            assert_eq!(buf, data[off..off + len], "{off}+{len}");
        }
        let mut buf = [0u8; 2];
        assert!(img.read_exact_at(&mut buf, data.len() as u64 - 1).is_err());
    }

    #[test]
    fn an_image_inside_an_image_opens_in_place() {
        // The inner image's blocks are compressed by the outer one and its tail is a fragment.
        let inner = image_with(pattern(50_000, 3), 4096, Compressor::Gzip { level: 9 });
        let outer = image_with(image_bytes(&inner), 4096, Compressor::Gzip { level: 9 });
        assert_eq!(
            nested_f(Arc::new(image_bytes(&outer))).unwrap(),
            pattern(50_000, 3)
        );
    }

    #[test]
    fn a_damaged_outer_image_gives_errors_not_panics_through_random_access() {
        let inner = image_with(pattern(30_000, 5), 4096, Compressor::Gzip { level: 9 });
        let outer = image_with(image_bytes(&inner), 4096, Compressor::Gzip { level: 9 });
        let good = image_bytes(&outer);
        let mut seed = 99u64;
        let mut errors = 0;
        for _ in 0..300 {
            let r = lcg(&mut seed);
            let mut bad = good.clone();
            let at = (r >> 33) as usize % bad.len();
            bad[at] ^= 1 << ((r >> 20) % 8);
            match nested_f(Arc::new(bad)) {
                Ok(bytes) => assert!(bytes.len() == 30_000),
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 0, "no flipped byte was noticed");
    }

    struct Src {
        dir: tempfile::TempDir,
        src: PathBuf,
        model: Model,
    }

    fn source(full: bool) -> Src {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        if full {
            full_source(&src);
        } else {
            small_source(&src);
        }
        finish_mtimes(&src);
        let model = model_of_dir(&src);
        sanity(&model, full);
        Src { dir, src, model }
    }

    /// Checks that the source tree holds what the tests claim to cover.
    fn sanity(m: &Model, full: bool) {
        let e = |p: &str| m.ents.get(p.as_bytes()).unwrap_or_else(|| panic!("no {p}"));
        assert!(m.links.iter().any(|g| g.len() == 3), "{:?}", m.links);
        let x1: Vec<&[u8]> = e("x1").xattrs.iter().map(|x| x.0.as_slice()).collect();
        assert_eq!(
            x1,
            [
                &b"security.capability"[..],
                b"trusted.t",
                b"user.a",
                b"user.big"
            ]
        );
        assert_eq!(
            e("dev/bigminor").rdev,
            Some(libc::makedev(259, 70_000) as u64)
        );
        assert_eq!(e("dev/sda1").kind, "block-device");
        assert_eq!((e("ids").uid, e("ids").gid), (100_000, 200_000));
        assert_eq!((e("t0").mtime, e("tmax").mtime), (0, u32::MAX));
        assert_eq!(e("setuid-nox").perm, 0o4644);
        assert_eq!(e("sticky").perm, 0o1777);
        assert_eq!(e("sock").kind, "socket");
        assert_eq!(e("fifo").kind, "fifo");
        assert_eq!(e("sym-long").target.as_ref().map(Vec::len), Some(300));
        assert!(!e("sym-short").xattrs.is_empty());
        assert!(m.ents.contains_key(&b"bad-\xff\xfe-name"[..]));
        assert!(m.ents.contains_key("n".repeat(255).as_bytes()));
        if full {
            let many = m.ents.keys().filter(|k| k.starts_with(b"many/")).count();
            assert_eq!(many, 600);
            assert_eq!(e("sparse").content.map(|c| c.0), Some(3 << 20));
        }
    }

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

    #[test]
    fn sub_image_windows() {
        let inner: Arc<dyn ReadAt> = Arc::new((0u8..100).collect::<Vec<u8>>());
        let w = SubImage::new(inner.clone(), 10, 20).unwrap();
        assert_eq!(w.len(), 20);
        let mut b = [0u8; 5];
        w.read_exact_at(&mut b, 15).unwrap();
        assert_eq!(b, [25, 26, 27, 28, 29]);
        assert!(w.read_exact_at(&mut b, 16).is_err());
        assert!(w.read_exact_at(&mut b, u64::MAX - 2).is_err());
        assert!(SubImage::new(inner.clone(), 90, 11).is_err());
        assert!(SubImage::new(inner, u64::MAX, 2).is_err());
    }

    #[test]
    fn image_embedded_at_an_offset() {
        if !have("mksquashfs") {
            return;
        }
        let s = source(false);
        let out = mksquashfs(
            &s.src,
            &s.dir.path().join("img"),
            &["-comp", "xz", "-b", "4K"],
        );
        let img = std::fs::read(&out).unwrap();
        let mut iso = vec![0xAAu8; 32768];
        iso.extend_from_slice(&img);
        iso.extend_from_slice(&[0x55u8; 5000]);
        let iso: Arc<dyn ReadAt> = Arc::new(iso);
        let win = SubImage::new(iso, 32768, img.len() as u64).unwrap();
        let a =
            Archive::from_image(Arc::new(win), "x.iso:/live/filesystem.squashfs".into()).unwrap();
        assert_same(
            &s.model,
            &model_of_tree(&a.read_tree().unwrap()),
            "embedded",
        );
    }

    #[test]
    fn accessors() {
        if !have("mksquashfs") {
            return;
        }
        let s = source(false);
        let out = mksquashfs(
            &s.src,
            &s.dir.path().join("img"),
            &["-comp", "gzip", "-b", "4K"],
        );
        let a = Archive::open(&out).unwrap();
        let root = a.inode(a.root_ref()).unwrap();
        let entries = a.list_dir(&root).unwrap();
        let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let find = |n: &[u8]| {
            let e = entries.iter().find(|e| e.name == n).unwrap();
            a.inode(e.inode_ref).unwrap()
        };
        let x1 = find(b"x1");
        let xs = a.xattrs(x1.body.xattr()).unwrap();
        let names: Vec<&[u8]> = xs.iter().map(|x| x.name.as_slice()).collect();
        assert_eq!(
            names,
            vec![
                &b"security.capability"[..],
                b"trusted.t",
                b"user.a",
                b"user.big"
            ]
        );
        assert_eq!(xs[0].value, CAPABILITY);
        let ids = find(b"ids");
        assert_eq!(a.uid(ids.header.uid_idx).unwrap(), 100_000);
        assert_eq!(a.gid(ids.header.gid_idx).unwrap(), 200_000);
        assert!(a.uid(u16::MAX).is_err());
        let tiny = find(b"tiny");
        let mut r = a.open_file(&tiny).unwrap();
        assert_eq!(r.size(), 6);
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert_eq!(v, b"hello\n");
        assert!(a.open_file(&root).is_err());
        assert!(a.list_dir(&tiny).is_err());
        let f = a.fragment(0).unwrap();
        assert!(f.start >= superblock::SIZE as u64 && f.start < a.superblock().inode_table_start);
        assert!(a.fragment(a.superblock().fragment_count).is_err());
        assert!(a.xattrs(a.xattr_id_count() as u32).is_err());
        let names: Vec<&str> = a.extents().iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "data",
                "inode table",
                "directory table",
                "fragment table",
                "export table",
                "id table",
                "xattr table"
            ]
        );
        for w in a.extents().windows(2) {
            assert!(w[0].end <= w[1].start, "{:?}", a.extents());
        }
    }

    /// An image of the small tree with every metadata table stored uncompressed, so tests can
    /// patch structures in place.
    fn raw_image(s: &Src) -> Vec<u8> {
        let out = mksquashfs(
            &s.src,
            &s.dir.path().join("raw"),
            &["-noI", "-noD", "-noF", "-noX", "-comp", "gzip", "-b", "4K"],
        );
        std::fs::read(out).unwrap()
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
        for cut in (0..200).chain((200..img.len()).step_by(97)) {
            let r = exercise(img[..cut].to_vec());
            assert_eq!(r.is_ok(), cut >= used, "cut at {cut}: {r:?}");
            if cut < used && cut >= superblock::SIZE {
                // The superblock made to claim the truncated length: deeper structures fail.
                let mut m = img[..cut].to_vec();
                m[40..48].copy_from_slice(&(cut as u64).to_le_bytes());
                assert!(exercise(m).is_err(), "cut at {cut} with bytes_used patched");
            }
        }
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

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 300,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]
        #[test]
        fn mutated_images_never_panic(
            muts in proptest::collection::vec((proptest::num::usize::ANY, 1u8..=255), 1..6),
            tail in 0u8..4,
        ) {
            let Some(base) = proptest_image() else { return Ok(()) };
            let a = Archive::from_image(Arc::new(base.clone()), "p".into()).unwrap();
            let start = a.superblock().inode_table_start as usize;
            let used = a.superblock().bytes_used as usize;
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
            let _ = exercise(m);
        }
    }
}
