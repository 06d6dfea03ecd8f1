//! Checking a whole image: [`check`] walks and validates every metadata block and every table,
//! and every inode the tree reaches, without decoding file data; [`check_deep`] also decodes
//! every data block and every fragment block. `iuk-build inspect` runs them, `compare` reports
//! what they find, and `iuk-apply check` may call them on a kit.
//!
//! The normal reader ([`Archive`], [`Archive::walk`], [`Archive::read_tree`]) checks what it
//! reads as it reads it (invariant 5), and only that: a table block or a fragment no file uses,
//! the link counts, the export table and the directory indexes are never looked at. These checks
//! look at everything, so that an image [`check_deep`] accepts is one `unsquashfs` extracts and
//! the kernel reads (they are stricter than unsquashfs where the kernel relies on a structure
//! unsquashfs ignores: export table, directory indexes, link counts).
//!
//! [`check`] verifies:
//! - the superblock (as [`Archive::open`] does) and its flags: no unknown flag bit, nor the
//!   "check data" bit readers disagree on; the regions
//!   (data, then each table) follow each other with no gap up to `bytes_used`;
//! - every metadata block of the inode, directory, fragment, export, id and xattr tables decodes,
//!   the blocks of each table follow each other with no gap up to the table's end, every block but
//!   the last holds 8 KiB, each lookup list names exactly these blocks, and each table holds
//!   exactly the bytes of its entries;
//! - every fragment table entry (size 1..=block size, inside the data area), every id, every xattr
//!   id and its keys and values (known namespaces, no duplicate name), every export table entry
//!   (the reference of its inode);
//! - the tree: every entry as [`Archive::walk`] checks it (sorted unique names, valid inode
//!   references and numbers, types, no cycle), each inode reference at a metadata block start,
//!   exactly the superblock's count of inodes reached, owner, group and xattr indexes in range,
//!   each directory's parent number, link count (2 + subdirectories) and index, each other
//!   inode's link count (its number of entries), each file's blocks inside the data area with
//!   sizes matching the file size and its tail inside a valid fragment;
//! - data blocks and fragment blocks never partly overlap one another.
//!
//! [`check_deep`] adds, one block at a time per thread: every distinct data block decompresses
//! (its stream using exactly its stored bytes) to exactly the size its file expects, and every
//! fragment block decompresses to at most the block size, holding each tail stored in it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use super::archive::{lossy, wrap, Archive};
use super::data::block_len;
use super::inode::{DiskInode, InodeBody, BLOCK_UNCOMPRESSED};
use super::meta::{MetaReader, MetaRef};
use super::read_tree::{WalkEntry, MAX_TREE_XATTR_BYTES};
use super::superblock::flags;
use super::table::{FragmentEntry, Table};
use super::{Result, INVALID_U32, INVALID_U64, META_SIZE};
use crate::corrupt;

/// Every flag bit of SquashFS 4.0 images, except 0x0004 ("check data": unsquashfs then expects a
/// check byte after each metadata block header, the kernel does not; no writer sets it).
const KNOWN_FLAGS: u16 = flags::UNCOMPRESSED_INODES
    | flags::UNCOMPRESSED_DATA
    | flags::UNCOMPRESSED_FRAGMENTS
    | flags::NO_FRAGMENTS
    | flags::ALWAYS_FRAGMENTS
    | flags::DUPLICATES
    | flags::EXPORTABLE
    | flags::UNCOMPRESSED_XATTRS
    | flags::NO_XATTRS
    | flags::COMPRESSOR_OPTIONS
    | flags::UNCOMPRESSED_IDS;

/// What a check covered: the counts of what it looked at. Serialized in `inspect --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckSummary {
    /// `metadata` ([`check`]) or `deep` ([`check_deep`]).
    pub level: &'static str,
    /// The tables whose every metadata block and entry was checked.
    pub tables: Vec<&'static str>,
    /// Metadata blocks decoded (every block of every table).
    pub metadata_blocks: u64,
    /// Bytes those blocks decode to.
    pub metadata_bytes: u64,
    /// Inodes reached from the root (the superblock's count).
    pub inodes: u64,
    /// Directory entries, the root included.
    pub entries: u64,
    /// Directories.
    pub directories: u64,
    /// Regular files (inodes).
    pub files: u64,
    /// Entries of the id table.
    pub ids: u64,
    /// Entries of the fragment table.
    pub fragments: u64,
    /// Entries of the xattr id table, each decoded.
    pub xattr_ids: u64,
    /// Entries of the export table (0 without one).
    pub export_entries: u64,
    /// Distinct data blocks located (shared blocks of duplicate files counted once), sparse ones
    /// not counted.
    pub data_blocks: u64,
    /// Data blocks stored as holes.
    pub sparse_blocks: u64,
    /// File tails stored in fragment blocks.
    pub tails: u64,
    /// Data blocks decompressed and their size checked (deep only).
    pub data_blocks_decoded: u64,
    /// Fragment blocks decompressed and their tails checked (deep only).
    pub fragment_blocks_decoded: u64,
    /// Bytes of file data those blocks decode to (deep only).
    pub bytes_decoded: u64,
}

/// Called by [`check_deep`] with the stored bytes decoded so far and their total.
pub type DeepProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Validates every metadata block and table of `archive` and every inode its tree reaches,
/// without decoding file data (see the module documentation for the list). The error names the
/// image, the table or the entry's path and inode, and the byte offset.
pub fn check(archive: &Archive) -> Result<CheckSummary> {
    let meta = archive.meta();
    metadata(archive, &meta)
        .map(|(s, _)| s)
        .map_err(|e| archive.named(e))
}

/// [`check`], then decodes every distinct data block and every fragment block, one block at a
/// time per thread (rayon), reporting progress in stored bytes.
pub fn check_deep(archive: &Archive, progress: DeepProgress<'_>) -> Result<CheckSummary> {
    let meta = archive.meta();
    let run = || -> Result<CheckSummary> {
        let (mut s, plan) = metadata(archive, &meta)?;
        drop(meta);
        deep(archive, &plan, &mut s, progress)?;
        s.level = "deep";
        Ok(s)
    };
    run().map_err(|e| archive.named(e))
}

/// One data block a file lists (not sparse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BlockRef {
    /// Absolute offset.
    start: u64,
    /// Stored size word (bit 24: uncompressed).
    word: u32,
    /// Size it must decode to.
    expected: u64,
    /// Index of the file in [`Plan::paths`].
    file: u32,
    /// Index of the block in the file.
    index: u32,
}

impl BlockRef {
    fn stored(&self) -> u64 {
        (self.word & !BLOCK_UNCOMPRESSED) as u64
    }
}

/// A file tail stored in a fragment block.
struct TailRef {
    frag: u32,
    offset: usize,
    len: usize,
    file: u32,
}

/// What the deep check decodes, found by the metadata check.
#[derive(Default)]
struct Plan {
    /// Paths of the files with data blocks or a tail, with their inode numbers.
    paths: Vec<(String, u32)>,
    /// Distinct data blocks, sorted by offset.
    blocks: Vec<BlockRef>,
    /// Tails, in walk order.
    tails: Vec<TailRef>,
    /// Every fragment table entry.
    fragments: Vec<FragmentEntry>,
    /// Bytes (names and values) each xattr id decodes to.
    xattr_bytes: Vec<u64>,
    /// Bytes of xattrs attached to the inodes so far (as [`Archive::read_tree`] bounds them).
    tree_xattr_bytes: u64,
}

/// The metadata blocks of one table, walked from its first block to its end.
struct Blocks {
    /// Absolute start of every block.
    starts: Vec<u64>,
    /// Bytes the blocks decode to.
    bytes: u64,
}

impl Blocks {
    /// Starts relative to the table start (as metadata references give them).
    fn relative(&self, table: u64) -> HashSet<u64> {
        self.starts.iter().map(|s| s - table).collect()
    }
}

/// Decodes every metadata block from `start` to exactly `end`: each block but the last must
/// hold [`META_SIZE`] bytes.
fn table_blocks(
    archive: &Archive,
    meta: &MetaReader<'_>,
    what: &'static str,
    start: u64,
    end: u64,
    s: &mut CheckSummary,
) -> Result<Blocks> {
    let mut b = Blocks {
        starts: Vec::new(),
        bytes: 0,
    };
    let mut pos = start;
    let mut last: Option<(u64, usize)> = None;
    while pos < end {
        if let Some((at, len)) = last.filter(|(_, len)| *len != META_SIZE) {
            return Err(corrupt!(
                "{what}: metadata block at {at} holds {len} bytes but is not the table's last \
                 block (only the last may hold less than {META_SIZE})"
            ));
        }
        let (data, next) = meta.block(pos, end).map_err(|e| wrap(e, what))?;
        exact_meta_block(archive, pos, next).map_err(|e| wrap(e, what))?;
        b.starts.push(pos);
        b.bytes += data.len() as u64;
        s.metadata_blocks += 1;
        s.metadata_bytes += data.len() as u64;
        last = Some((pos, data.len()));
        pos = next;
    }
    s.tables.push(what);
    Ok(b)
}

/// Decodes the compressed metadata block from `pos` to `next` again, refusing what the reader
/// tolerates (bytes left after the stream, a zlib stream reading before its start).
fn exact_meta_block(archive: &Archive, pos: u64, next: u64) -> Result<()> {
    let len = usize::try_from(next - pos).map_err(|_| corrupt!("metadata block at {pos}"))?;
    let mut raw = vec![0u8; len];
    archive
        .image
        .read_exact_at(&mut raw, pos)
        .map_err(|e| super::SqfsError::io(format!("metadata block at {pos}"), e))?;
    let [h0, h1, stored @ ..] = raw.as_slice() else {
        return Err(corrupt!("metadata block at {pos} has no header"));
    };
    if u16::from_le_bytes([*h0, *h1]) & super::meta::UNCOMPRESSED == 0 {
        archive
            .comp
            .decompress_exact(stored, META_SIZE)
            .map_err(|e| wrap(e, format_args!("metadata block at {pos}")))?;
    }
    Ok(())
}

/// Checks that the lookup list of table `what` names exactly the blocks walked, and that they
/// hold exactly `count` entries of `size` bytes.
fn lookup_matches(what: &str, t: &Table, walked: &Blocks, size: u64) -> Result<()> {
    let listed = t.starts();
    if listed != walked.starts.as_slice() {
        let i = listed
            .iter()
            .zip(&walked.starts)
            .position(|(a, b)| a != b)
            .unwrap_or(listed.len().min(walked.starts.len()));
        return Err(corrupt!(
            "{what}: its lookup list names {} blocks, its blocks are {} (first difference at \
             block {i}: listed {:?}, found {:?})",
            listed.len(),
            walked.starts.len(),
            listed.get(i),
            walked.starts.get(i)
        ));
    }
    let bytes = t.count().saturating_mul(size);
    if bytes != walked.bytes {
        return Err(corrupt!(
            "{what}: {} entries of {size} bytes take {bytes} bytes, its blocks hold {}",
            t.count(),
            walked.bytes
        ));
    }
    Ok(())
}

/// Checks that the regions of the image follow each other with no gap: each table ends where
/// the next begins, the last one at the superblock's `bytes_used` (unsquashfs refuses gaps).
fn tables_adjoin(archive: &Archive) -> Result<()> {
    let mut at = archive.data_start;
    for e in archive.extents() {
        if e.start != at {
            return Err(corrupt!(
                "{} starts at {}, but the region before it ends at {at}",
                e.name,
                e.start
            ));
        }
        at = e.end;
    }
    if at != archive.sb.bytes_used {
        return Err(corrupt!(
            "the last table ends at {at}, but the superblock says the image uses {} bytes",
            archive.sb.bytes_used
        ));
    }
    Ok(())
}

/// The tables after the directory table: fragment, id, xattr (the export table needs the walk).
fn lookup_tables(
    archive: &Archive,
    meta: &MetaReader<'_>,
    s: &mut CheckSummary,
    plan: &mut Plan,
) -> Result<()> {
    let sb = &archive.sb;
    if let Some(t) = &archive.fragments {
        let first = t.first_block().unwrap_or(sb.fragment_table_start);
        let b = table_blocks(
            archive,
            meta,
            "fragment table",
            first,
            sb.fragment_table_start,
            s,
        )?;
        lookup_matches("fragment table", t, &b, 16)?;
        for i in 0..sb.fragment_count {
            plan.fragments.push(archive.fragment_in(meta, i)?);
        }
        s.fragments = sb.fragment_count as u64;
    }
    let ids = Table::open(
        &*archive.image,
        "id table",
        sb.id_table_start,
        sb.id_count as u64,
        4,
        sb.id_table_start,
    )?;
    let first = ids.first_block().unwrap_or(sb.id_table_start);
    let b = table_blocks(archive, meta, "id table", first, sb.id_table_start, s)?;
    lookup_matches("id table", &ids, &b, 4)?;
    s.ids = archive.ids().len() as u64;
    if let Some(x) = &archive.xattrs {
        let t = x.id_table();
        table_blocks(
            archive,
            meta,
            "xattr key/value table",
            x.kv_start(),
            x.kv_end(),
            s,
        )?;
        let first = t.first_block().unwrap_or(sb.xattr_id_table_start);
        let b = table_blocks(
            archive,
            meta,
            "xattr id table",
            first,
            sb.xattr_id_table_start,
            s,
        )?;
        lookup_matches("xattr id table", t, &b, 16)?;
        for i in 0..t.count() {
            let idx = u32::try_from(i).map_err(|_| corrupt!("xattr id {i} overflows"))?;
            let set = archive.xattrs_in(meta, idx)?;
            // A set decodes to at most xattr::MAX_SET_BYTES.
            let bytes: usize = set.iter().map(|x| x.name.len() + x.value.len()).sum();
            plan.xattr_bytes.push(bytes as u64);
        }
        s.xattr_ids = t.count();
    }
    Ok(())
}

/// Link counts and parents gathered along the walk.
#[derive(Default)]
struct Links {
    /// Inode number -> where it lies.
    refs: HashMap<u32, MetaRef>,
    /// Directory inode number -> (declared link count, subdirectories met).
    dirs: HashMap<u32, (u32, u32)>,
    /// Other inode number -> (declared link count, entries met).
    others: HashMap<u32, (u32, u32)>,
    /// Directory inode numbers from the root down to the current entry's parent.
    parents: Vec<u32>,
}

/// The metadata check; also returns what the deep check decodes.
fn metadata(archive: &Archive, meta: &MetaReader<'_>) -> Result<(CheckSummary, Plan)> {
    let sb = &archive.sb;
    let mut s = CheckSummary {
        level: "metadata",
        ..CheckSummary::default()
    };
    let mut plan = Plan::default();
    if sb.flags & !KNOWN_FLAGS != 0 {
        return Err(corrupt!(
            "superblock flags {:#06x} have unknown or unsupported bits {:#06x}",
            sb.flags,
            sb.flags & !KNOWN_FLAGS
        ));
    }
    tables_adjoin(archive)?;
    let inode_blocks = table_blocks(
        archive,
        meta,
        "inode table",
        sb.inode_table_start,
        sb.directory_table_start,
        &mut s,
    )?
    .relative(sb.inode_table_start);
    let dir_blocks = table_blocks(
        archive,
        meta,
        "directory table",
        sb.directory_table_start,
        archive.dir_end,
        &mut s,
    )?;
    lookup_tables(archive, meta, &mut s, &mut plan)?;
    let mut links = Links::default();
    let dir_starts: Vec<u64> = dir_blocks
        .starts
        .iter()
        .map(|a| a - sb.directory_table_start)
        .collect();
    archive.walk_in(meta, |e| {
        visit(
            archive,
            meta,
            e,
            (&inode_blocks, &dir_starts),
            &mut links,
            &mut s,
            &mut plan,
        )
    })?;
    if links.refs.len() as u64 != sb.inode_count as u64 {
        return Err(corrupt!(
            "the tree reaches {} inodes, the superblock declares {}",
            links.refs.len(),
            sb.inode_count
        ));
    }
    s.inodes = links.refs.len() as u64;
    link_counts(&links)?;
    export_table(archive, meta, &links, &mut s)?;
    plan.blocks.sort();
    plan.blocks
        .dedup_by(|a, b| (a.start, a.word, a.expected) == (b.start, b.word, b.expected));
    same_block_same_size(&plan)?;
    s.data_blocks = plan.blocks.len() as u64;
    s.tails = plan.tails.len() as u64;
    no_overlaps(&plan)?;
    Ok((s, plan))
}

/// Checks one entry of the walk (see [`check`]) and records what the deep check decodes.
fn visit(
    archive: &Archive,
    meta: &MetaReader<'_>,
    e: &WalkEntry<'_>,
    (inode_blocks, dir_starts): (&HashSet<u64>, &[u64]),
    links: &mut Links,
    s: &mut CheckSummary,
    plan: &mut Plan,
) -> Result<()> {
    let ino = e.inode;
    let n = ino.header.number;
    let is_dir = matches!(ino.body, InodeBody::Dir { .. });
    s.entries += 1;
    links.parents.truncate(e.depth);
    if let Some(parent) = links.parents.last() {
        let counter = if is_dir {
            links.dirs.get_mut(parent).map(|c| &mut c.1)
        } else {
            links.others.get_mut(&n).map(|c| &mut c.1)
        };
        if let Some(c) = counter {
            *c = c.saturating_add(1);
        }
    }
    if !e.first_link {
        return Ok(());
    }
    links.refs.insert(n, e.inode_ref);
    if !inode_blocks.contains(&e.inode_ref.block) {
        return Err(corrupt!(
            "inode {n} is referenced in a metadata block at {} of the inode table, where no block \
             starts",
            e.inode_ref.block
        ));
    }
    archive.id(ino.header.uid_idx, "owner")?;
    archive.id(ino.header.gid_idx, "group")?;
    let x = ino.body.xattr();
    if x != INVALID_U32 {
        let bytes = plan.xattr_bytes.get(x as usize).ok_or_else(|| {
            corrupt!(
                "inode {n} has xattr index {x}, outside the xattr id table ({} entries)",
                archive.xattr_id_count()
            )
        })?;
        plan.tree_xattr_bytes = plan.tree_xattr_bytes.saturating_add(*bytes);
        if plan.tree_xattr_bytes > MAX_TREE_XATTR_BYTES {
            return Err(corrupt!(
                "extended attributes of the tree exceed {MAX_TREE_XATTR_BYTES} bytes"
            ));
        }
    }
    match &ino.body {
        InodeBody::Dir { nlink, parent, .. } => {
            s.directories += 1;
            let expected = match links.parents.last() {
                Some(p) => *p,
                None => archive.sb.inode_count.saturating_add(1),
            };
            if *parent != expected {
                return Err(corrupt!(
                    "directory inode {n} names {parent} as its parent, expected {expected}"
                ));
            }
            dir_index(archive, meta, ino, dir_starts)?;
            links.dirs.insert(n, (*nlink, 0));
            links.parents.push(n);
        }
        InodeBody::File { .. } => {
            s.files += 1;
            links.others.insert(n, (ino.body.nlink(), 1));
            file(archive, meta, e, s, plan)?;
        }
        _ => {
            links.others.insert(n, (ino.body.nlink(), 1));
        }
    }
    Ok(())
}

/// Checks a file's layout and records its blocks and tail.
fn file(
    archive: &Archive,
    meta: &MetaReader<'_>,
    e: &WalkEntry<'_>,
    s: &mut CheckSummary,
    plan: &mut Plan,
) -> Result<()> {
    let n = e.inode.header.number;
    let l = archive.file_layout(meta, e.inode, String::new())?;
    if l.block_sizes.is_empty() && l.tail.is_none() {
        return Ok(());
    }
    let file = u32::try_from(plan.paths.len()).map_err(|_| corrupt!("too many files"))?;
    plan.paths.push((format!("/{}", lossy(e.path)), n));
    let mut at = l.blocks_start;
    for (i, w) in l.block_sizes.iter().enumerate() {
        let stored = (w & !BLOCK_UNCOMPRESSED) as u64;
        if stored == 0 {
            s.sparse_blocks += 1;
            continue;
        }
        // file_layout checked that the blocks lie inside the data area.
        let expected = block_len(l.size, l.block_size, i)
            .ok_or_else(|| corrupt!("file inode {n}: block {i} lies past the end of the file"))?;
        plan.blocks.push(BlockRef {
            start: at,
            word: *w,
            expected,
            file,
            index: i as u32,
        });
        at += stored;
    }
    if let InodeBody::File { frag, .. } = &e.inode.body {
        if let Some(t) = &l.tail {
            plan.tails.push(TailRef {
                frag: *frag,
                offset: t.offset,
                len: t.len,
                file,
            });
        }
    }
    Ok(())
}

/// Checks the index of an extended directory: each entry names a header of the listing (its
/// byte offset, the directory-table block holding it, its first name), in order.
fn dir_index(
    archive: &Archive,
    meta: &MetaReader<'_>,
    ino: &DiskInode,
    dir_starts: &[u64],
) -> Result<()> {
    let n = ino.header.number;
    let InodeBody::Dir {
        block_start,
        size,
        offset,
        index,
        ..
    } = &ino.body
    else {
        return Ok(());
    };
    if *size <= 3 {
        return if index.is_empty() {
            Ok(())
        } else {
            Err(corrupt!("empty directory inode {n} has an index"))
        };
    }
    let first = dir_starts
        .binary_search(&(*block_start as u64))
        .map_err(|_| {
            corrupt!(
                "directory inode {n}: its listing starts in a block at {block_start} of the \
                 directory table, where no block starts"
            )
        })?;
    if index.is_empty() {
        return Ok(());
    }
    let start = MetaRef {
        block: *block_start as u64,
        offset: *offset,
    };
    let len = (*size - 3) as usize;
    let (bytes, _) = meta.read(
        archive.sb.directory_table_start,
        archive.dir_end,
        start,
        len,
    )?;
    let headers = header_offsets(&bytes);
    let mut previous: Option<u32> = None;
    for (k, i) in index.iter().enumerate() {
        let bad = |why: String| corrupt!("directory inode {n}: index entry {k}: {why}");
        if previous.is_some_and(|p| i.index <= p) {
            return Err(bad(format!(
                "offset {} does not follow the previous",
                i.index
            )));
        }
        previous = Some(i.index);
        let name = headers
            .get(&(i.index as usize))
            .ok_or_else(|| bad(format!("offset {} is not a header of the listing", i.index)))?;
        if *name != i.name {
            return Err(bad(format!(
                "names {:?}, the header there starts with {:?}",
                lossy(&i.name),
                lossy(name)
            )));
        }
        let block = (*offset as usize + i.index as usize) / META_SIZE;
        let expected = dir_starts.get(first + block);
        if expected != Some(&(i.start as u64)) {
            return Err(bad(format!(
                "says block {}, the header lies in the block at {}",
                i.start,
                expected.map_or("(past the table)".to_string(), |b| b.to_string())
            )));
        }
    }
    Ok(())
}

/// Byte offset of every header of a listing (already decoded once by the walk) with the name
/// of its first entry.
fn header_offsets(bytes: &[u8]) -> HashMap<usize, Vec<u8>> {
    let mut out = HashMap::new();
    let mut r = super::Le::new(bytes, "directory listing");
    let mut parse = || -> Result<()> {
        while r.pos() < bytes.len() {
            let at = r.pos();
            let count = u64::from(r.u32()?) + 1;
            r.bytes(8)?;
            for i in 0..count {
                r.bytes(6)?;
                let len = r.u16()? as usize + 1;
                let name = r.bytes(len)?;
                if i == 0 {
                    out.insert(at, name.to_vec());
                }
            }
        }
        Ok(())
    };
    // The walk decoded this listing already: it cannot fail here.
    let _ = parse();
    out
}

/// Checks every link count against the tree: directories 2 + their subdirectories, other
/// inodes their number of entries.
fn link_counts(links: &Links) -> Result<()> {
    let mut dirs: Vec<_> = links.dirs.iter().collect();
    dirs.sort();
    for (n, (declared, subdirs)) in dirs {
        let expected = u64::from(*subdirs) + 2;
        if u64::from(*declared) != expected {
            return Err(corrupt!(
                "directory inode {n} has link count {declared}, expected {expected} (2 + its \
                 {subdirs} subdirectories)"
            ));
        }
    }
    let mut others: Vec<_> = links.others.iter().collect();
    others.sort();
    for (n, (declared, entries)) in others {
        if declared != entries {
            return Err(corrupt!(
                "inode {n} has link count {declared}, but {entries} entries name it"
            ));
        }
    }
    Ok(())
}

/// Checks the export table, when the image has one: entry `i` is the reference of inode `i + 1`.
fn export_table(
    archive: &Archive,
    meta: &MetaReader<'_>,
    links: &Links,
    s: &mut CheckSummary,
) -> Result<()> {
    let sb = &archive.sb;
    if sb.export_table_start == INVALID_U64 {
        return Ok(());
    }
    let at = sb.export_table_start;
    let t = Table::open(
        &*archive.image,
        "export table",
        at,
        sb.inode_count as u64,
        8,
        at,
    )?;
    let first = t.first_block().unwrap_or(at);
    let b = table_blocks(archive, meta, "export table", first, at, s)?;
    lookup_matches("export table", &t, &b, 8)?;
    // The walk reached exactly inode_count inodes: this loop is bounded by real inodes.
    for i in 0..t.count() {
        let raw = t.entry(meta, "export table", i)?;
        let r = MetaRef::unpack(super::Le::new(&raw, "export table entry").u64()?);
        let n = u32::try_from(i + 1).map_err(|_| corrupt!("export table entry {i} overflows"))?;
        let real = links.refs.get(&n);
        if real != Some(&r) {
            return Err(corrupt!(
                "export table: entry for inode {n} says {}:{}, the inode lies at {}",
                r.block,
                r.offset,
                real.map_or("(not reached)".to_string(), |r| format!(
                    "{}:{}",
                    r.block, r.offset
                ))
            ));
        }
    }
    s.export_entries = t.count();
    Ok(())
}

/// Checks that the files sharing a data block (duplicates) expect it to decode to one size
/// (so that the deep check decodes each stored block once).
fn same_block_same_size(plan: &Plan) -> Result<()> {
    for w in plan.blocks.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if (a.start, a.word) == (b.start, b.word) {
            let (pa, na) = &plan.paths[a.file as usize];
            let (pb, nb) = &plan.paths[b.file as usize];
            return Err(corrupt!(
                "data block {} of {pa} (inode {na}) and data block {} of {pb} (inode {nb}) are \
                 the same stored block at {}, but one expects {} bytes, the other {}",
                a.index,
                b.index,
                a.start,
                a.expected,
                b.expected
            ));
        }
    }
    Ok(())
}

/// Checks that no two stored blocks (data blocks, fragment blocks) partly overlap: blocks of
/// duplicate files are shared whole, never in part.
fn no_overlaps(plan: &Plan) -> Result<()> {
    // (start, end, what): data blocks already distinct, fragment blocks.
    let mut extents: BTreeSet<(u64, u64, String)> = BTreeSet::new();
    let mut shared: HashSet<(u64, u64)> = HashSet::new();
    for b in &plan.blocks {
        if shared.insert((b.start, b.stored())) {
            let (path, n) = &plan.paths[b.file as usize];
            extents.insert((
                b.start,
                b.start + b.stored(),
                format!("data block {} of {path} (inode {n})", b.index),
            ));
        }
    }
    for (i, f) in plan.fragments.iter().enumerate() {
        let stored = (f.size & !BLOCK_UNCOMPRESSED) as u64;
        extents.insert((f.start, f.start + stored, format!("fragment block {i}")));
    }
    let mut last: Option<&(u64, u64, String)> = None;
    for x in &extents {
        if let Some(p) = last {
            if x.0 < p.1 {
                return Err(corrupt!(
                    "{} (bytes {}..{}) overlaps {} (bytes {}..{})",
                    x.2,
                    x.0,
                    x.1,
                    p.2,
                    p.0,
                    p.1
                ));
            }
        }
        if last.is_none_or(|p| x.1 > p.1) {
            last = Some(x);
        }
    }
    Ok(())
}

/// The deep part: every distinct data block and every fragment block decoded.
fn deep(
    archive: &Archive,
    plan: &Plan,
    s: &mut CheckSummary,
    progress: DeepProgress<'_>,
) -> Result<()> {
    let frag_stored = |f: &FragmentEntry| (f.size & !BLOCK_UNCOMPRESSED) as u64;
    let total: u64 = plan.blocks.iter().map(BlockRef::stored).sum::<u64>()
        + plan.fragments.iter().map(frag_stored).sum::<u64>();
    let done = AtomicU64::new(0);
    let decoded = AtomicU64::new(0);
    progress(0, total);
    let advance = |n: u64| progress(done.fetch_add(n, Ordering::Relaxed) + n, total);
    let bs = archive.sb.block_size as usize;
    if let Some(err) = plan.blocks.par_iter().find_map_first(|b| {
        let r = decode(archive, b.start, b.word, b.expected as usize).and_then(|len| {
            if len as u64 != b.expected {
                return Err(corrupt!("holds {len} bytes, expected {}", b.expected));
            }
            decoded.fetch_add(len as u64, Ordering::Relaxed);
            Ok(())
        });
        advance(b.stored());
        r.err().map(|e| {
            let (path, n) = &plan.paths[b.file as usize];
            wrap(
                e,
                format_args!("{path} (inode {n}): data block {} at {}", b.index, b.start),
            )
        })
    }) {
        return Err(err);
    }
    s.data_blocks_decoded = plan.blocks.len() as u64;
    let lens: Vec<Result<usize>> = plan
        .fragments
        .par_iter()
        .enumerate()
        .map(|(i, f)| {
            let r = decode(archive, f.start, f.size, bs)
                .map_err(|e| wrap(e, format_args!("fragment block {i} at {}", f.start)));
            advance(frag_stored(f));
            r
        })
        .collect();
    let mut frag_bytes = 0u64;
    let lens = lens
        .into_iter()
        .map(|r| r.inspect(|len| frag_bytes += *len as u64))
        .collect::<Result<Vec<usize>>>()?;
    s.fragment_blocks_decoded = lens.len() as u64;
    for t in &plan.tails {
        let (path, n) = &plan.paths[t.file as usize];
        let len = lens.get(t.frag as usize).copied().unwrap_or(0);
        if t.offset.checked_add(t.len).is_none_or(|end| end > len) {
            return Err(corrupt!(
                "{path} (inode {n}): tail of {} bytes at offset {} lies outside fragment block {} \
                 ({len} bytes decoded)",
                t.len,
                t.offset,
                t.frag
            ));
        }
    }
    s.bytes_decoded = decoded.load(Ordering::Relaxed) + frag_bytes;
    Ok(())
}

/// Reads the block of size word `word` at `start` and decodes it (at most `max` bytes, the
/// stream using exactly the stored bytes); returns its decoded length.
fn decode(archive: &Archive, start: u64, word: u32, max: usize) -> Result<usize> {
    let stored = (word & !BLOCK_UNCOMPRESSED) as usize;
    let mut raw = vec![0u8; stored];
    archive
        .image
        .read_exact_at(&mut raw, start)
        .map_err(|e| super::SqfsError::io("read", e))?;
    if word & BLOCK_UNCOMPRESSED != 0 {
        return Ok(raw.len());
    }
    Ok(archive.comp.decompress_exact(&raw, max)?.len())
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
