//! Opening a SquashFS image: the superblock, the compressor and the tables (id, export, fragment,
//! xattr), bounds-checked, as an [`Archive`]; typed access to its inodes, directory listings,
//! attribute sets and fragment entries. The walk that builds a tree is in
//! [`super::read_tree`], the file data path in [`super::data`].
//!
//! Images are untrusted input (invariant 5): every field is checked before it is used, every read
//! is bounded by the structure it belongs to, and no buffer is sized by a field that was not first
//! checked against real bytes. Tables are bounded as the kernel bounds them: they follow each other
//! in the order inode table, directory table, fragment table, export table, id table, xattr tables,
//! and each one ends where the first metadata block of the next one begins.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::compress::Compressor;
use super::dir::{read_listing, DirEntry};
use super::inode::{DiskInode, InodeBody, BLOCK_UNCOMPRESSED};
use super::meta::{MetaReader, MetaRef};
use super::superblock::{self, flags, Superblock};
use super::table::{FragmentEntry, Table};
use super::xattr::XattrReader;
use super::{Result, SqfsError, INVALID_U32, INVALID_U64, META_SIZE};
use crate::corrupt;
use crate::io::{FileImage, ReadAt, SubImage};
use crate::tree::Xattr;

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

/// An opened SquashFS image. Fields are visible to the sibling reader modules ([`super::read_tree`],
/// [`super::data`]), which add their methods to it.
pub struct Archive {
    pub(super) name: String,
    pub(super) image: Arc<dyn ReadAt>,
    pub(super) sb: Superblock,
    pub(super) comp: Compressor,
    comp_options: Option<Vec<u8>>,
    ids: Vec<u32>,
    pub(super) fragments: Option<Table>,
    pub(super) xattrs: Option<XattrReader>,
    pub(super) data_start: u64,
    pub(super) dir_end: u64,
    extents: Vec<TableExtent>,
    /// Decompressed fragment blocks, most recently used first (see [`super::data`]).
    pub(super) frag_cache: Mutex<Vec<(FragmentEntry, Arc<Vec<u8>>)>>,
    /// sha256 of fragment blocks' stored bytes, by (start, stored size) (see [`super::data`]).
    pub(super) frag_digests: Mutex<HashMap<(u64, u32), [u8; 32]>>,
}

/// Returns `e` with `what` prefixed to its message, keeping its kind.
pub(super) fn wrap(e: SqfsError, what: impl Display) -> SqfsError {
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

/// Bytes as text, invalid UTF-8 replaced (for error messages).
pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// End of the lookup list starting at `at` of a table of `count` entries of `size` bytes (one u64
/// per metadata block of entries).
fn lookup_end(what: &str, at: u64, count: u64, size: u64) -> Result<u64> {
    count
        .checked_mul(size)
        .map(|bytes| bytes.div_ceil(META_SIZE as u64))
        .and_then(|blocks| blocks.checked_mul(8))
        .and_then(|b| at.checked_add(b))
        .ok_or_else(|| {
            corrupt!("{what} lookup list at {at} for {count} entries overflows the image offsets")
        })
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
        let (sb, image) = read_superblock(image)?;
        let (comp, comp_options, data_start) = read_compressor(&*image, &sb)?;
        let meta = MetaReader::new(&*image, &comp);
        let mut tables = TablesFromEnd {
            extents: Vec::new(),
            next: sb.bytes_used,
        };
        let xattrs = tables.xattrs(&*image, &sb)?;
        let ids = tables.ids(&*image, &meta, &sb)?;
        tables.export(&*image, &sb, data_start)?;
        let fragments = tables.fragments(&*image, &sb)?;
        let dir_end = tables.next;
        let extents = tables.finish(&sb, data_start)?;
        Ok(Archive {
            name,
            image,
            dir_end,
            sb,
            comp,
            comp_options,
            ids,
            fragments,
            xattrs,
            data_start,
            extents,
            frag_cache: Mutex::new(Vec::new()),
            frag_digests: Mutex::new(HashMap::new()),
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

    pub(super) fn named(&self, e: SqfsError) -> SqfsError {
        wrap(e, &self.name)
    }

    pub(super) fn meta(&self) -> MetaReader<'_> {
        MetaReader::new(&*self.image, &self.comp)
    }

    pub(super) fn id(&self, idx: u16, what: &str) -> Result<u32> {
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

    pub(super) fn inode_in(&self, meta: &MetaReader<'_>, r: MetaRef) -> Result<DiskInode> {
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
    pub(super) fn list_dir_in(
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

    pub(super) fn xattrs_in(&self, meta: &MetaReader<'_>, idx: u32) -> Result<Vec<Xattr>> {
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

    pub(super) fn fragment_in(&self, meta: &MetaReader<'_>, i: u32) -> Result<FragmentEntry> {
        let t = self.fragments.as_ref().ok_or_else(|| {
            corrupt!("fragment {i} is referenced but the image has no fragment table")
        })?;
        let e = FragmentEntry::decode(&t.entry(meta, "fragment", i as u64)?)?;
        let stored = e.size & !BLOCK_UNCOMPRESSED;
        if stored == 0 || stored > self.sb.block_size {
            return Err(corrupt!(
                "fragment {i} has stored size {stored}, not in 1..={} (the block size)",
                self.sb.block_size
            ));
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
}

/// Reads and checks the superblock of `image`; returns it and the image cut to its `bytes_used`.
fn read_superblock(image: Arc<dyn ReadAt>) -> Result<(Superblock, Arc<dyn ReadAt>)> {
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
    Ok((sb, image))
}

/// The compressor `sb` declares with its options block, when the image has one; returns it, the
/// raw options and where the data area starts (after the options).
fn read_compressor(
    image: &dyn ReadAt,
    sb: &Superblock,
) -> Result<(Compressor, Option<Vec<u8>>, u64)> {
    let probe = Compressor::from_image(sb.compression_id, None, sb.block_size)?;
    let mut data_start = superblock::SIZE as u64;
    let comp_options = if sb.flags & flags::COMPRESSOR_OPTIONS != 0 {
        let meta = MetaReader::new(image, &probe);
        let (block, next) = meta
            .block(data_start, sb.inode_table_start)
            .map_err(|e| wrap(e, "compressor options"))?;
        data_start = next;
        Some(block.to_vec())
    } else {
        None
    };
    let comp = Compressor::from_image(sb.compression_id, comp_options.as_deref(), sb.block_size)
        .map_err(|e| wrap(e, "compressor options"))?;
    Ok((comp, comp_options, data_start))
}

/// The tables after the directory table, opened from the last one backwards: each one must end
/// where the first metadata block of the one after it begins.
struct TablesFromEnd {
    /// The regions found so far.
    extents: Vec<TableExtent>,
    /// Start of the table opened last: the end of the one before it.
    next: u64,
}

impl TablesFromEnd {
    /// Opens the xattr tables, when the image has them.
    fn xattrs(&mut self, image: &dyn ReadAt, sb: &Superblock) -> Result<Option<XattrReader>> {
        if sb.xattr_id_table_start == INVALID_U64 {
            return Ok(None);
        }
        let x = XattrReader::open(image, sb.xattr_id_table_start, sb.bytes_used)
            .map_err(|e| wrap(e, "xattr table"))?;
        let header_end = sb.xattr_id_table_start.checked_add(16).ok_or_else(|| {
            corrupt!(
                "xattr table header at {} overflows",
                sb.xattr_id_table_start
            )
        })?;
        let end = lookup_end("xattr id table", header_end, x.count(), 16)?;
        self.extents.push(TableExtent {
            name: "xattr table",
            start: x.kv_start(),
            end,
        });
        self.next = x.kv_start();
        Ok(Some(x))
    }

    /// Reads the whole id table.
    fn ids(
        &mut self,
        image: &dyn ReadAt,
        meta: &MetaReader<'_>,
        sb: &Superblock,
    ) -> Result<Vec<u32>> {
        let id_count = sb.id_count as u64;
        let end = lookup_end("id table", sb.id_table_start, id_count, 4)?;
        if end > self.next {
            return Err(corrupt!(
                "id table (lookup list {}..{end}) overlaps the xattr table that follows it at {}",
                sb.id_table_start,
                self.next
            ));
        }
        let id_table = Table::open(
            image,
            "id table",
            sb.id_table_start,
            id_count,
            4,
            sb.id_table_start,
        )?;
        let mut ids = Vec::with_capacity(sb.id_count as usize);
        for i in 0..id_count {
            let e = id_table.entry(meta, "id", i)?;
            ids.push(super::Le::new(&e, "id table entry").u32()?);
        }
        let first = id_table
            .first_block()
            .ok_or_else(|| corrupt!("id table of {id_count} entries has no blocks"))?;
        self.extents.push(TableExtent {
            name: "id table",
            start: first,
            end,
        });
        self.next = first;
        Ok(ids)
    }

    /// Checks where the export table lies, when the image has one (its entries are not used).
    fn export(&mut self, image: &dyn ReadAt, sb: &Superblock, data_start: u64) -> Result<()> {
        if sb.export_table_start == INVALID_U64 {
            return Ok(());
        }
        let at = sb.export_table_start;
        let end = lookup_end("export table", at, sb.inode_count as u64, 8)?;
        if end > self.next {
            return Err(corrupt!(
                "export table (lookup list {at}..{end}) overlaps the id table that follows it at {}",
                self.next
            ));
        }
        let mut b = [0u8; 8];
        image
            .read_exact_at(&mut b, at)
            .map_err(|e| SqfsError::io("export table", e))?;
        let first = u64::from_le_bytes(b);
        if first >= at || first < data_start {
            return Err(corrupt!(
                "export table block at {first} lies outside {data_start}..{at}, between the data \
                 and its lookup list"
            ));
        }
        self.extents.push(TableExtent {
            name: "export table",
            start: first,
            end,
        });
        self.next = first;
        Ok(())
    }

    /// Opens the fragment table, when the image has fragments.
    fn fragments(&mut self, image: &dyn ReadAt, sb: &Superblock) -> Result<Option<Table>> {
        if sb.fragment_count == 0 {
            return Ok(None);
        }
        let at = sb.fragment_table_start;
        let count = sb.fragment_count as u64;
        let end = lookup_end("fragment table", at, count, 16)?;
        if end > self.next {
            return Err(corrupt!(
                "fragment table (lookup list {at}..{end}) overlaps the table that follows it at {}",
                self.next
            ));
        }
        let t = Table::open(image, "fragment table", at, count, 16, at)?;
        let first = t
            .first_block()
            .ok_or_else(|| corrupt!("fragment table of {count} entries has no blocks"))?;
        self.extents.push(TableExtent {
            name: "fragment table",
            start: first,
            end,
        });
        self.next = first;
        Ok(Some(t))
    }

    /// Adds the data area, the inode table and the directory table (which ends where the tables
    /// after it begin); returns every region sorted by start.
    fn finish(mut self, sb: &Superblock, data_start: u64) -> Result<Vec<TableExtent>> {
        let next = self.next;
        if sb.directory_table_start > next {
            return Err(corrupt!(
                "directory table starts at {} after the table that follows it ({next})",
                sb.directory_table_start
            ));
        }
        if sb.inode_table_start < data_start {
            return Err(corrupt!(
                "inode table starts at {}, inside the compressor options that end at {data_start}",
                sb.inode_table_start
            ));
        }
        self.extents.push(TableExtent {
            name: "data",
            start: data_start,
            end: sb.inode_table_start,
        });
        self.extents.push(TableExtent {
            name: "inode table",
            start: sb.inode_table_start,
            end: sb.directory_table_start,
        });
        self.extents.push(TableExtent {
            name: "directory table",
            start: sb.directory_table_start,
            end: next,
        });
        self.extents.sort_by_key(|e| (e.start, e.end));
        Ok(self.extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::testkit::*;
    use std::io::Read;

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
}
