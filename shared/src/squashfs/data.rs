//! The data path of the reader: where a file's bytes lie ([`Archive::open_file`] checks its
//! blocks and fragment), the streaming [`FileReader`], block decoding, and random access to a file
//! inside an archive (an image stored in a kit, read in place). Every block is checked to
//! decompress to exactly its expected size.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use super::archive::{wrap, Archive};
use super::compress::Compressor;
use super::inode::{DiskInode, InodeBody, BLOCK_UNCOMPRESSED};
use super::meta::MetaReader;
use super::table::FragmentEntry;
use super::{Result, SqfsError, INVALID_U32};
use crate::corrupt;
use crate::io::ReadAt;
use crate::tree::{Content, ContentSource};

/// Decompressed fragment blocks kept per archive (at most 1 MiB each).
const FRAGMENT_CACHE: usize = 16;

impl Archive {
    /// Fragment block `e`, decoded, from the cache when it is there (the tails of one
    /// fragment block are usually read one after another, by each of a few threads).
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
        Ok(self.fragment_raw(e)?.1)
    }

    /// Checks where the data of file inode `ino` lies and resolves its fragment.
    pub(super) fn file_layout(
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
            end = end.checked_add(stored as u64).ok_or_else(|| {
                corrupt!(
                    "file inode {n}: data blocks from {blocks_start} overflow the image \
                         offsets at block {i}"
                )
            })?;
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

    /// Fragment block `e` as the image stores it and decoded, the decoded block also kept in the
    /// fragment cache (so a file's tail read next from it decodes nothing). The stored bytes are
    /// the ones decoded: a writer copying them verbatim copies exactly what was checked.
    fn fragment_raw(&self, e: FragmentEntry) -> Result<(Vec<u8>, Arc<Vec<u8>>)> {
        let raw = self.fragment_stored(e)?;
        let data = if e.size & BLOCK_UNCOMPRESSED != 0 {
            raw.clone()
        } else {
            self.comp
                .decompress(&raw, self.sb.block_size as usize)
                .map_err(|err| wrap(err, format_args!("fragment block at {}", e.start)))?
        };
        let data = Arc::new(data);
        let mut cache = self.frag_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(k, _)| *k != e);
        cache.insert(0, (e, data.clone()));
        cache.truncate(FRAGMENT_CACHE);
        Ok((raw, data))
    }

    /// Fragment block `e`'s bytes as the image stores them.
    fn fragment_stored(&self, e: FragmentEntry) -> Result<Vec<u8>> {
        let mut raw = vec![0u8; (e.size & !BLOCK_UNCOMPRESSED) as usize];
        self.image
            .read_exact_at(&mut raw, e.start)
            .map_err(|err| SqfsError::io(format!("fragment block at {}", e.start), err))?;
        Ok(raw)
    }

    /// sha256 of fragment block `e`'s stored-size field and stored bytes, computed once per
    /// block: blocks of two images with equal digests (same compressor and block size) decode to
    /// the same bytes, so a tail can be named without decoding it ([`StoredFile::located_digest`]).
    fn fragment_digest(&self, e: FragmentEntry) -> Result<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let key = (e.start, e.size);
        if let Some(d) = self
            .frag_digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*d);
        }
        let raw = self.fragment_stored(e)?;
        let mut h = Sha256::new();
        h.update(e.size.to_le_bytes());
        h.update(&raw);
        let d: [u8; 32] = h.finalize().into();
        self.frag_digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, d);
        Ok(d)
    }

    /// A reader streaming the bytes of regular-file inode `ino`.
    pub fn open_file(self: &Arc<Self>, ino: &DiskInode) -> Result<FileReader> {
        let what = format!("{}: inode {}", self.name, ino.header.number);
        let layout = self
            .file_layout(&self.meta(), ino, what)
            .map_err(|e| self.named(e))?;
        Ok(FileReader::new(self.clone(), Arc::new(layout)))
    }
}

/// Uncompressed length of full-block-list entry `i` of a file of `size` bytes: the block size,
/// or the remainder for the last block.
pub(super) fn block_len(size: u64, bs: u64, i: usize) -> Option<u64> {
    let start = (i as u64).checked_mul(bs)?;
    let left = size.checked_sub(start).filter(|l| *l > 0)?;
    Some(left.min(bs))
}

/// The tail of a file stored in a fragment block.
#[derive(Clone, Debug)]
pub(super) struct Tail {
    pub(super) frag: FragmentEntry,
    pub(super) offset: usize,
    pub(super) len: usize,
}

/// Where a file's bytes lie, checked against the image.
#[derive(Debug)]
pub(super) struct FileLayout {
    what: String,
    pub(super) size: u64,
    pub(super) block_size: u64,
    pub(super) blocks_start: u64,
    pub(super) block_sizes: Vec<u32>,
    pub(super) tail: Option<Tail>,
}

/// The content of a file inside an archive, for [`crate::tree::Content`].
pub(super) struct ArchiveFile {
    /// The archive holding the file.
    pub(super) archive: Arc<Archive>,
    /// Where its bytes lie.
    pub(super) layout: Arc<FileLayout>,
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
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// A file inside an image seen as its stored bytes: its full-block list as the image holds it
/// (compressed or stored, sparse entries included) and its tail. The writer copies such blocks
/// verbatim (block sources, [`super::blocks`]); the diff compares them to skip decoding files
/// whose stored bytes are identical (identical stored bytes decode to identical content).
pub struct StoredFile<'a> {
    file: &'a ArchiveFile,
    /// Where each entry of the block list starts in the image.
    starts: Vec<u64>,
}

impl<'a> StoredFile<'a> {
    /// The stored view of `content`, when it is a file inside a SquashFS image.
    pub fn of(content: &'a Content) -> Option<StoredFile<'a>> {
        let file = content.source.as_any()?.downcast_ref::<ArchiveFile>()?;
        let mut at = file.layout.blocks_start;
        let starts = file
            .layout
            .block_sizes
            .iter()
            .map(|s| {
                let here = at;
                // Cannot saturate: file_layout checked that the stored sizes add up.
                at = at.saturating_add((s & !BLOCK_UNCOMPRESSED) as u64);
                here
            })
            .collect();
        Some(StoredFile { file, starts })
    }

    /// The image's compressor, as its superblock declares it.
    pub fn compressor(&self) -> &Compressor {
        &self.file.archive.comp
    }

    /// The image's data block size.
    pub fn block_size(&self) -> u32 {
        self.file.archive.sb.block_size
    }

    /// The image's compressor options with every field spelled out (an absent payload stands
    /// for the defaults), as [`Compressor::declared_options`] gives them for a writer.
    pub fn declared_options(&self) -> Vec<u8> {
        match self.file.archive.compressor_options() {
            Some(o) => o.to_vec(),
            None => self.file.archive.comp.declared_options(),
        }
    }

    /// Whether the image's blocks are what a writer with `compressor` and `block_size` would
    /// store: same block size, compressor id and declared options (the block sources' rule).
    pub fn same_settings(&self, compressor: &Compressor, block_size: u32) -> bool {
        self.block_size() == block_size
            && self.compressor().id() == compressor.id()
            && self.declared_options() == compressor.declared_options()
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.file.layout.size
    }

    /// The stored size of each entry of the block list ([`BLOCK_UNCOMPRESSED`] set: stored as
    /// is; 0: sparse).
    pub fn block_sizes(&self) -> &[u32] {
        &self.file.layout.block_sizes
    }

    /// Whether the file's tail lies in a fragment block.
    pub fn has_fragment_tail(&self) -> bool {
        self.file.layout.tail.is_some()
    }

    /// Where the file's tail lies when it lies in a fragment block.
    pub fn fragment_tail(&self) -> Option<FragmentTail> {
        let t = self.file.layout.tail.as_ref()?;
        Some(FragmentTail {
            archive: self.file.archive.clone(),
            entry: t.frag,
            offset: u32::try_from(t.offset).ok()?,
            len: u32::try_from(t.len).ok()?,
        })
    }

    /// The input the file is read from, for messages (`image:/path`).
    pub fn describe(&self) -> &str {
        &self.file.layout.what
    }

    /// The bytes entry `i` of the block list occupies in the image, as they lie there (empty
    /// for a sparse entry).
    pub fn raw_block(&self, i: usize) -> Result<Vec<u8>> {
        let (Some(&s), Some(&at)) = (self.block_sizes().get(i), self.starts.get(i)) else {
            return Err(corrupt!(
                "{}: block {i} lies past the end of the file",
                self.describe()
            ));
        };
        let mut raw = vec![0u8; (s & !BLOCK_UNCOMPRESSED) as usize];
        self.file
            .archive
            .image
            .read_exact_at(&mut raw, at)
            .map_err(|e| {
                SqfsError::io(format!("{}: data block {i} at {at}", self.describe()), e)
            })?;
        Ok(raw)
    }

    /// The entries of the block list that hold whole blocks (the first size / block size),
    /// or None when the list is shorter than that (a damaged file: never compared).
    pub fn full_blocks(&self) -> Option<&[u32]> {
        let full = usize::try_from(self.size() / self.block_size() as u64).ok()?;
        self.block_sizes().get(..full)
    }

    /// The file's bytes past its whole blocks, decoded: from its fragment block, or from a short
    /// last entry of its block list (an image written without fragments, or mksquashfs's tail of
    /// a file larger than a block); empty when the size is a multiple of the block size.
    pub fn tail(&self) -> Result<Vec<u8>> {
        let l = &*self.file.layout;
        if let Some(t) = &l.tail {
            let (block, start, end) =
                tail_bytes(&self.file.archive, t).map_err(|e| wrap(e, self.describe()))?;
            return Ok(block[start..end].to_vec());
        }
        let full = self.full_blocks().map_or(0, <[u32]>::len);
        let (Some(_), Some(&at)) = (l.block_sizes.get(full), self.starts.get(full)) else {
            return Ok(Vec::new());
        };
        let data = decode_block(&self.file.archive, l, full, at, Vec::new())
            .map_err(|e| wrap(e, self.describe()))?;
        Ok(data.unwrap_or_else(|| {
            vec![0; block_len(l.size, l.block_size, full).unwrap_or(0) as usize]
        }))
    }

    /// A digest of the file's stored form: compressor id, block size, size, the stored size and
    /// bytes of every whole block, and the decoded tail (wherever it lies). Two files with equal
    /// stored digests have equal content; only the tail is decoded. None for a damaged file.
    pub fn stored_digest(&self) -> Result<Option<[u8; 32]>> {
        let Some(mut d) = StoredDigest::begin(self) else {
            return Ok(None);
        };
        for i in 0..self.full_blocks().map_or(0, <[u32]>::len) {
            d.block(&self.raw_block(i)?);
        }
        Ok(Some(d.finish(&self.tail()?)))
    }

    /// Where the file's tail lies, named by content: the digest of its fragment block's stored
    /// bytes, and the tail's offset and length in the decoded block. Files of images with the
    /// same compressor, options and block size whose tail keys are equal have equal tails.
    /// None when the tail is not in a fragment block (or there is none).
    pub fn tail_key(&self) -> Result<Option<TailKey>> {
        let Some(t) = &self.file.layout.tail else {
            return Ok(None);
        };
        let block = self
            .file
            .archive
            .fragment_digest(t.frag)
            .map_err(|e| wrap(e, self.describe()))?;
        Ok(Some(TailKey {
            block,
            offset: t.offset as u64,
            len: t.len as u64,
        }))
    }

    /// A digest of the file's stored form that decodes nothing: compressor id and declared
    /// options, block size, size, the stored size and bytes of every entry of the block list
    /// (a short last block too), and the fragment tail's [`TailKey`]. Two files with equal
    /// located digests have equal content (decoding is a function of these), so a hashed file
    /// lends its sha256 to every file stored the same way ([`crate::diff`]'s reuse). None for
    /// a damaged file.
    pub fn located_digest(&self) -> Result<Option<[u8; 32]>> {
        use sha2::{Digest, Sha256};
        if self.full_blocks().is_none() {
            return Ok(None);
        }
        let mut h = Sha256::new();
        h.update(b"iuk-located-file-v1\n");
        h.update(self.compressor().id().to_le_bytes());
        let options = self.declared_options();
        h.update((options.len() as u64).to_le_bytes());
        h.update(&options);
        h.update(self.block_size().to_le_bytes());
        h.update(self.size().to_le_bytes());
        h.update((self.block_sizes().len() as u64).to_le_bytes());
        for s in self.block_sizes() {
            h.update(s.to_le_bytes());
        }
        for i in 0..self.block_sizes().len() {
            h.update(self.raw_block(i)?);
        }
        match self.tail_key()? {
            Some(t) => {
                h.update([1]);
                h.update(t.block);
                h.update(t.offset.to_le_bytes());
                h.update(t.len.to_le_bytes());
            }
            None => h.update([0]),
        }
        Ok(Some(h.finalize().into()))
    }

    /// What whole block `i`, whose stored bytes (as [`StoredFile::raw_block`] gives them) are
    /// `raw`, decodes to: checked to be exactly the block's length, as when streaming.
    pub fn decode_raw(&self, i: usize, raw: &[u8]) -> Result<Vec<u8>> {
        let l = &*self.file.layout;
        let what = || format!("{}: data block {i}", self.describe());
        let (Some(&s), Some(expected)) = (l.block_sizes.get(i), block_len(l.size, l.block_size, i))
        else {
            return Err(corrupt!("{}: lies past the end of the file", what()));
        };
        if raw.len() as u64 != (s & !BLOCK_UNCOMPRESSED) as u64 {
            return Err(corrupt!(
                "{}: {} stored bytes, the block list says {}",
                what(),
                raw.len(),
                s & !BLOCK_UNCOMPRESSED
            ));
        }
        let data = if s & BLOCK_UNCOMPRESSED != 0 {
            raw.to_vec()
        } else {
            self.compressor()
                .decompress(raw, expected as usize)
                .map_err(|e| wrap(e, what()))?
        };
        if data.len() as u64 != expected {
            return Err(corrupt!(
                "{}: holds {} bytes, expected {expected}",
                what(),
                data.len()
            ));
        }
        Ok(data)
    }
}

/// A file's fragment tail named by content ([`StoredFile::tail_key`]): its fragment block's
/// stored digest, offset and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TailKey {
    /// sha256 of the fragment block's stored-size field and stored bytes.
    pub block: [u8; 32],
    /// Offset of the tail in the decoded block.
    pub offset: u64,
    /// Length of the tail.
    pub len: u64,
}

/// Where a file's tail lies in its image: a fragment block and the byte range in it. Files of
/// one image whose tails share a fragment block have equal [`FragmentTail::block_key`]s; a writer
/// may copy that block verbatim (fragment sources, [`super::blocks`]).
#[derive(Clone)]
pub struct FragmentTail {
    archive: Arc<Archive>,
    entry: FragmentEntry,
    /// Offset of the tail in the decoded fragment block.
    pub offset: u32,
    /// Length of the tail.
    pub len: u32,
}

impl FragmentTail {
    /// Which fragment block of which open image this tail lies in (equal for tails in the same
    /// block of the same image; only compared, never ordered or written).
    pub fn block_key(&self) -> (usize, u64, u32) {
        (
            Arc::as_ptr(&self.archive) as *const () as usize,
            self.entry.start,
            self.entry.size,
        )
    }

    /// Whether the image stores the block compressed.
    pub fn compressed(&self) -> bool {
        self.entry.size & BLOCK_UNCOMPRESSED == 0
    }

    /// The fragment block's stored bytes and what they decode to (`what` names a file whose
    /// tail lies there, for errors).
    pub fn block(&self, what: &str) -> Result<(Vec<u8>, Arc<Vec<u8>>)> {
        self.archive
            .fragment_raw(self.entry)
            .map_err(|e| wrap(e, what))
    }
}

/// [`StoredFile::stored_digest`] computed as the stored bytes go by: begun with the file's
/// layout, fed each whole block's stored bytes in order, finished with the decoded tail. The
/// writer computes it while it copies a file's blocks, so that the digest covers the very bytes
/// it copied.
pub struct StoredDigest(sha2::Sha256);

impl StoredDigest {
    /// The digest of `file` begun (compressor id, block size, size, block list); None when the
    /// block list is too short for the size (a damaged file).
    pub fn begin(file: &StoredFile<'_>) -> Option<StoredDigest> {
        use sha2::{Digest, Sha256};
        let full = file.full_blocks()?;
        let mut h = Sha256::new();
        h.update(b"iuk-stored-file-v1\n");
        h.update(file.compressor().id().to_le_bytes());
        h.update(file.block_size().to_le_bytes());
        h.update(file.size().to_le_bytes());
        h.update((full.len() as u64).to_le_bytes());
        for s in full {
            h.update(s.to_le_bytes());
        }
        Some(StoredDigest(h))
    }

    /// Adds the next whole block's stored bytes.
    pub fn block(&mut self, raw: &[u8]) {
        sha2::Digest::update(&mut self.0, raw);
    }

    /// Adds the decoded tail and gives the digest.
    pub fn finish(mut self, tail: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        self.0.update((tail.len() as u64).to_le_bytes());
        self.0.update(tail);
        self.0.finalize().into()
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
            // file_layout checked that the blocks' stored sizes add up without overflow.
            self.disk_pos = at
                .checked_add((s & !BLOCK_UNCOMPRESSED) as u64)
                .ok_or_else(|| corrupt!("data block {i} at {at} overflows the image offsets"))?;
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
        return Err(corrupt!(
            "data block {i} at {at} has stored size {stored}, more than the block size {}",
            l.block_size
        ));
    }
    if at.checked_add(stored).is_none() {
        return Err(corrupt!(
            "data block {i} at {at} ({stored} bytes) lies past the end of the image offsets"
        ));
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

/// Decoded blocks an [`ArchiveFileImage`] keeps.
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
                // Cannot saturate: file_layout checked that the stored sizes add up.
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
                let src = start
                    .checked_add(within)
                    .and_then(|from| b.get(from..end))
                    .unwrap_or_default();
                let n = src.len().min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&src[..n]);
                n
            };
            if n == 0 {
                return Err(fail(corrupt!(
                    "no bytes at offset {pos}: its block or tail is shorter than the file size says"
                )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::compress::Compressor;
    use crate::squashfs::testkit::*;
    use crate::tree::{Content, Inode, InodeKind, Metadata, Tree};

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
        let (mut errors, mut read) = (0, 0);
        for _ in 0..300 {
            let r = lcg(&mut seed);
            let mut bad = good.clone();
            let at = (r >> 33) as usize % bad.len();
            bad[at] ^= 1 << ((r >> 20) % 8);
            match nested_f(Arc::new(bad)) {
                Ok(bytes) => {
                    assert!(bytes.len() == 30_000);
                    read += 1;
                }
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 0, "no flipped byte was noticed");
        // Our writer's bytes and this seed are fixed: so are the counts.
        assert_eq!((read, errors), (216, 84), "images read, refused");
    }
}
