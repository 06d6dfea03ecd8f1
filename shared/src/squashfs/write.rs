//! The deterministic image writer: a [`Tree`] plus [`WriterParams`] in, SquashFS bytes out.
//!
//! Layout rules (they are the writer format version together with the vendored compressors; any
//! change that alters bytes for unchanged parameters must bump [`WRITER_FORMAT_VERSION`]):
//! 1. Superblock, then compressor options when any setting differs from the format default.
//! 2. File data in the order of [`Tree::walk`] (depth first, children bytewise by name), each
//!    inode at its first entry, stably reordered by sort-file priority (higher first). Each file
//!    is split into blocks; full blocks (and, without fragments, the last short block) are
//!    compressed in parallel and emitted in order; a block that does not shrink is stored; an
//!    all-zero block is sparse (not stored). Tails shorter than a block are packed into fragment
//!    blocks in the same order; a fragment block is emitted when the next tail does not fit.
//!    A file whose (size, sha256) equals an earlier file's reuses that file's blocks and tail.
//! 3. Inode table: inodes in post-order (each directory's children in name order, a subdirectory's
//!    whole subtree before the next sibling, the directory itself last; a hard-linked inode at
//!    its first entry). Inode numbers follow this order from 1; the root's parent is count + 1.
//!    Basic inode forms unless only the extended form holds the fields.
//! 4. Directory table: a directory's listing is written just before its inode; runs break at 256
//!    entries, at a change of inode-table block, or when the inode-number delta leaves i16;
//!    extended directories carry an index entry per run that starts in a new metadata block.
//! 5. Fragment table, export table, id table (ids in first-use order, uid before gid, in inode
//!    order), xattr tables (sets in first-use order, keys sorted, repeated values > 8 bytes out
//!    of line): the order the kernel requires. Superblock time = the declared epoch; the image is
//!    padded with zeros to a multiple of 4 KiB.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::compress::Compressor;
use super::dir::{self, DirEntry};
use super::inode::{self, DiskInode, InodeBody, InodeHeader, BLOCK_UNCOMPRESSED};
use super::meta::{MetaRef, MetaWriter};
use super::sortfile::SortFile;
use super::superblock::{self, flags, Superblock};
use super::table::{self, FragmentEntry};
use super::xattr::XattrWriter;
use super::{Result, SqfsError, INVALID_U32, INVALID_U64, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::tree::{Content, InodeId, InodeKind, NodeId, Tree};

/// The writer format version: fixes the bytes emitted for given parameters (layout rules above
/// plus the exact vendored compressor versions and settings).
pub const WRITER_FORMAT_VERSION: u32 = 1;

/// Files up to this size are read once into memory; larger ones are hashed in a first pass and
/// streamed in a second (bounds memory whatever the file sizes).
const INLINE_MAX: u64 = 16 << 20;

/// Everything that shapes the image bytes, plus `jobs`, which never does.
#[derive(Clone, Debug)]
pub struct WriterParams {
    /// Compressor and its settings (metadata and data alike).
    pub compressor: Compressor,
    /// Data block size: a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
    /// Superblock modification time: the declared epoch (`SOURCE_DATE_EPOCH`).
    pub mod_time: u32,
    /// Pack file tails into fragment blocks (off for the kit container).
    pub fragments: bool,
    /// How data blocks are compressed.
    pub data: DataCompression,
    /// Files (paths relative to the root) whose data is stored uncompressed whatever `data`
    /// says (the kit container's layer, which is compressed already), except, in a file of
    /// several blocks, a last block shorter than the block size, which is compressed when that
    /// shrinks it (images end with zero padding).
    pub stored_paths: Vec<Vec<u8>>,
    /// Write the export (NFS) table, as mksquashfs does by default.
    pub exportable: bool,
    /// Optional data-order priorities.
    pub sort: SortFile,
    /// Compression threads. Never changes the output bytes.
    pub jobs: usize,
}

impl WriterParams {
    /// Parameters with the given compressor and block size, fragments and export table on.
    pub fn new(compressor: Compressor, block_size: u32, mod_time: u32) -> WriterParams {
        WriterParams {
            compressor,
            block_size,
            mod_time,
            fragments: true,
            data: DataCompression::All,
            stored_paths: Vec::new(),
            exportable: true,
            sort: SortFile::default(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Checks the block size and the compressor settings.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size)
            || !self.block_size.is_power_of_two()
        {
            return Err(SqfsError::Invalid(format!(
                "block size {} must be a power of two from 4096 to 1048576",
                self.block_size
            )));
        }
        self.compressor.validate(self.block_size)
    }
}

/// How the writer treats data blocks. Every block it compresses is kept compressed only when
/// that makes it smaller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataCompression {
    /// Compress every block.
    All,
    /// Store every block uncompressed.
    None,
    /// Compress the first block of each file; when it does not shrink, store the whole file
    /// uncompressed without trying the rest (kit containers: most boot files are compressed
    /// already, configuration and boot-loader files are not).
    Probe,
}

/// Figures about a written image.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WriteReport {
    /// Inodes written.
    pub inodes: u32,
    /// Regular files (inodes).
    pub files: u64,
    /// Bytes of file content read.
    pub bytes_in: u64,
    /// Image size including padding.
    pub bytes_out: u64,
    /// Files whose data was shared with an earlier identical file.
    pub duplicates: u64,
    /// Data blocks written (not counting sparse ones).
    pub data_blocks: u64,
    /// Fragment blocks written.
    pub fragment_blocks: u64,
}

/// Called with the number of content bytes read so far; must be cheap.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Where one file's data ended up.
#[derive(Clone, Debug, Default)]
struct FileData {
    blocks_start: u64,
    block_sizes: Vec<u32>,
    sparse: u64,
    frag: Option<(u32, u32)>,
}

enum Target {
    Block { file: usize, first: bool },
    Fragment { index: u32 },
}

enum Payload {
    /// An all-zero block of this many bytes: not stored.
    Sparse(u64),
    /// A block to compress.
    Data(Vec<u8>),
    /// A block to store as it is.
    Stored(Vec<u8>),
    /// A block already compressed (by a probe).
    Packed(Vec<u8>),
}

/// What the producer decided while reading files.
struct Produced {
    /// Fragment index and offset of each file's tail, by data-order position.
    frag_of: Vec<Option<(u32, u32)>>,
    /// (duplicate, original) data-order positions.
    dups: Vec<(usize, usize)>,
    /// Blocks submitted.
    blocks: u64,
}

enum Msg {
    Done(Done),
    /// All blocks were submitted; this many in total.
    End(u64),
}

struct Done {
    seq: u64,
    target: Target,
    stored: Result<(Vec<u8>, bool)>,
    sparse_len: u64,
}

/// Writes `tree` as a SquashFS image to `out` (which must be empty and positioned at 0).
///
/// Determinism (audited): what reaches the bytes is the tree — names, kinds, metadata, content,
/// hard-link grouping — and `params` except `jobs`, through the layout rules of the module doc
/// and the vendored, pinned, single-threaded compressors. What never does: the clock (superblock
/// time = `params.mod_time`), the number of threads and their scheduling (blocks are compressed
/// in parallel and emitted in sequence order), hash-map iteration order (the maps here are only
/// looked up; ids and xattr sets are numbered in first-use order along the fixed traversal),
/// the order the source was read in ([`Tree`] keeps children sorted), and the host: no uid,
/// host name, pid, locale, time zone, umask or environment variable is read.
pub fn write_image<W: Write + Seek + Send>(
    tree: &Tree,
    params: &WriterParams,
    out: &mut W,
    progress: Progress<'_>,
) -> Result<WriteReport> {
    params.validate()?;
    let comp = &params.compressor;
    let options = comp.options(params.block_size);
    let mut pos: u64 = superblock::SIZE as u64;
    let mut head = vec![0u8; superblock::SIZE];
    if let Some(o) = &options {
        head.extend_from_slice(&(o.len() as u16 | super::meta::UNCOMPRESSED).to_le_bytes());
        head.extend_from_slice(o);
        pos += 2 + o.len() as u64;
    }
    out.write_all(&head)
        .map_err(|e| SqfsError::io("writing image", e))?;

    // Data phase.
    let ordered = data_order(tree, &params.sort);
    let order: Vec<InodeId> = ordered.iter().map(|(i, _)| *i).collect();
    let first_node: Vec<NodeId> = ordered.iter().map(|(_, n)| *n).collect();
    let mut report = WriteReport {
        files: order.len() as u64,
        ..WriteReport::default()
    };
    let (files, frags, data_end) = write_data(
        tree,
        &order,
        &first_node,
        params,
        out,
        pos,
        progress,
        &mut report,
    )?;
    pos = data_end;
    let mut file_data: HashMap<InodeId, &FileData> = HashMap::with_capacity(order.len());
    for (i, id) in order.iter().enumerate() {
        file_data.insert(*id, &files[i]);
    }

    // Metadata phase.
    let meta_comp = Some(comp.clone());
    let post = post_order(tree);
    let count =
        u32::try_from(post.len()).map_err(|_| SqfsError::Invalid("too many inodes".into()))?;
    let mut number: HashMap<InodeId, u32> = HashMap::with_capacity(post.len());
    for (i, (id, _)) in post.iter().enumerate() {
        number.insert(*id, i as u32 + 1);
    }
    let links = tree.link_counts();
    let mut inodes = MetaWriter::new(meta_comp.clone());
    let mut dirs = MetaWriter::new(meta_comp.clone());
    let mut xattrs = XattrWriter::new(meta_comp.clone());
    let mut ids: Vec<u32> = Vec::new();
    let mut id_index: HashMap<u32, u16> = HashMap::new();
    let mut refs: HashMap<InodeId, MetaRef> = HashMap::with_capacity(post.len());
    let mut export: Vec<u8> = Vec::with_capacity(post.len() * 8);
    let mut id_of = |v: u32| -> Result<u16> {
        if let Some(i) = id_index.get(&v) {
            return Ok(*i);
        }
        let i = u16::try_from(ids.len())
            .map_err(|_| SqfsError::Invalid("more than 65536 distinct uids/gids".into()))?;
        ids.push(v);
        id_index.insert(v, i);
        Ok(i)
    };
    for (id, node) in &post {
        let ino = tree.inode(*id);
        let meta = &ino.meta;
        let path = || String::from_utf8_lossy(&tree.path(*node)).into_owned();
        let uid_idx = id_of(meta.uid)?;
        let gid_idx = id_of(meta.gid)?;
        let xattr = if meta.xattrs.is_empty() {
            INVALID_U32
        } else {
            xattrs
                .add(&meta.xattrs)
                .map_err(|e| SqfsError::Invalid(format!("/{}: {e}", path())))?
        };
        let nlink = links[id.0 as usize];
        let body = match &ino.kind {
            InodeKind::Dir => {
                let children = &tree.node(*node).children;
                let mut entries = Vec::with_capacity(children.len());
                let mut subdirs = 0u32;
                for c in children {
                    let cn = tree.node(*c);
                    let ci = tree.inode(cn.inode);
                    if matches!(ci.kind, InodeKind::Dir) {
                        subdirs += 1;
                    }
                    entries.push(DirEntry {
                        name: cn.name.clone(),
                        inode_ref: refs[&cn.inode],
                        number: number[&cn.inode],
                        kind: kind_of(&ci.kind),
                    });
                }
                let listing = dir::write_listing(&mut dirs, &entries)?;
                let parent = if *node == tree.root() {
                    count + 1
                } else {
                    number[&tree.node(tree.node(*node).parent).inode]
                };
                let block_start = u32::try_from(listing.start.block)
                    .map_err(|_| SqfsError::Invalid("directory table larger than 4 GiB".into()))?;
                InodeBody::Dir {
                    block_start,
                    nlink: 2 + subdirs,
                    size: listing.size,
                    offset: listing.start.offset,
                    parent,
                    index: listing.index,
                    xattr,
                }
            }
            InodeKind::File(c) => {
                let fd = file_data[id];
                let (frag, frag_offset) = fd.frag.unwrap_or((INVALID_U32, 0));
                InodeBody::File {
                    blocks_start: fd.blocks_start,
                    size: c.size,
                    sparse: fd.sparse,
                    nlink,
                    frag,
                    frag_offset,
                    xattr,
                    block_sizes: fd.block_sizes.clone(),
                }
            }
            InodeKind::Symlink(target) => {
                if target.is_empty() || target.len() > inode::MAX_SYMLINK {
                    return Err(SqfsError::Invalid(format!(
                        "/{}: symlink target of {} bytes (1 to {} allowed)",
                        path(),
                        target.len(),
                        inode::MAX_SYMLINK
                    )));
                }
                InodeBody::Symlink {
                    nlink,
                    target: target.clone(),
                    xattr,
                }
            }
            InodeKind::CharDev(rdev) | InodeKind::BlockDev(rdev) => {
                let rdev = inode::encode_dev(*rdev).ok_or_else(|| {
                    SqfsError::Invalid(format!(
                        "/{}: device number {rdev:#x} cannot be stored",
                        path()
                    ))
                })?;
                InodeBody::Device {
                    block: matches!(ino.kind, InodeKind::BlockDev(_)),
                    nlink,
                    rdev,
                    xattr,
                }
            }
            InodeKind::Fifo => InodeBody::Ipc {
                socket: false,
                nlink,
                xattr,
            },
            InodeKind::Socket => InodeBody::Ipc {
                socket: true,
                nlink,
                xattr,
            },
        };
        let at = inodes.position();
        let header = InodeHeader {
            kind: 0,
            perm: meta.perm & 0o7777,
            uid_idx,
            gid_idx,
            mtime: meta.mtime,
            number: number[id],
        };
        inodes.write(&DiskInode { header, body }.encode())?;
        refs.insert(*id, at);
        export.extend_from_slice(&at.pack().to_le_bytes());
    }
    let root_ref = refs[&tree.node(tree.root()).inode];
    let (inode_bytes, _) = inodes.finish()?;
    let (dir_bytes, _) = dirs.finish()?;

    let mut tail: Vec<u8> = Vec::new();
    let inode_table_start = pos;
    tail.extend_from_slice(&inode_bytes);
    let directory_table_start = inode_table_start + inode_bytes.len() as u64;
    tail.extend_from_slice(&dir_bytes);
    let mut at = directory_table_start + dir_bytes.len() as u64;

    let frag_bytes: Vec<u8> = frags.iter().flat_map(|f| f.encode()).collect();
    let ft = table::write(&frag_bytes, meta_comp.as_ref(), at)?;
    tail.extend_from_slice(&ft.blocks);
    let fragment_table_start = at + ft.blocks.len() as u64;
    tail.extend_from_slice(&ft.lookup);
    at = fragment_table_start + ft.lookup.len() as u64;

    let export_table_start = if params.exportable {
        let et = table::write(&export, meta_comp.as_ref(), at)?;
        tail.extend_from_slice(&et.blocks);
        let start = at + et.blocks.len() as u64;
        tail.extend_from_slice(&et.lookup);
        at = start + et.lookup.len() as u64;
        start
    } else {
        INVALID_U64
    };

    let id_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let it = table::write(&id_bytes, meta_comp.as_ref(), at)?;
    tail.extend_from_slice(&it.blocks);
    let id_table_start = at + it.blocks.len() as u64;
    tail.extend_from_slice(&it.lookup);
    at = id_table_start + it.lookup.len() as u64;

    let has_xattrs = !xattrs.is_empty();
    let xattr_id_table_start = if has_xattrs {
        let (bytes, header_at) = xattrs.finish(meta_comp.as_ref(), at)?;
        tail.extend_from_slice(&bytes);
        at += bytes.len() as u64;
        header_at
    } else {
        INVALID_U64
    };
    let bytes_used = at;
    let padded = bytes_used.div_ceil(4096) * 4096;
    tail.resize(tail.len() + (padded - bytes_used) as usize, 0);
    out.write_all(&tail)
        .map_err(|e| SqfsError::io("writing image", e))?;

    let mut fl = flags::DUPLICATES;
    if params.exportable {
        fl |= flags::EXPORTABLE;
    }
    if !params.fragments {
        fl |= flags::NO_FRAGMENTS;
    }
    if params.data == DataCompression::None {
        fl |= flags::UNCOMPRESSED_DATA;
    }
    if !has_xattrs {
        fl |= flags::NO_XATTRS;
    }
    if options.is_some() {
        fl |= flags::COMPRESSOR_OPTIONS;
    }
    let sb = Superblock {
        inode_count: count,
        mod_time: params.mod_time,
        block_size: params.block_size,
        fragment_count: frags.len() as u32,
        compression_id: comp.id(),
        block_log: params.block_size.trailing_zeros() as u16,
        flags: fl,
        id_count: ids.len() as u16,
        version_major: 4,
        version_minor: 0,
        root_inode_ref: root_ref.pack(),
        bytes_used,
        id_table_start,
        xattr_id_table_start,
        inode_table_start,
        directory_table_start,
        fragment_table_start,
        export_table_start,
    };
    out.seek(SeekFrom::Start(0))
        .map_err(|e| SqfsError::io("writing image", e))?;
    out.write_all(&sb.encode())
        .map_err(|e| SqfsError::io("writing image", e))?;
    out.seek(SeekFrom::Start(padded))
        .map_err(|e| SqfsError::io("writing image", e))?;
    out.flush().map_err(|e| SqfsError::io("writing image", e))?;
    report.inodes = count;
    report.bytes_out = padded;
    report.fragment_blocks = frags.len() as u64;
    Ok(report)
}

fn kind_of(k: &InodeKind) -> u16 {
    use super::inode::kind;
    match k {
        InodeKind::Dir => kind::DIR,
        InodeKind::File(_) => kind::FILE,
        InodeKind::Symlink(_) => kind::SYMLINK,
        InodeKind::BlockDev(_) => kind::BLKDEV,
        InodeKind::CharDev(_) => kind::CHRDEV,
        InodeKind::Fifo => kind::FIFO,
        InodeKind::Socket => kind::SOCKET,
    }
}

/// File inodes in data order: walk order at first entry, stably sorted by descending priority.
fn data_order(tree: &Tree, sort: &SortFile) -> Vec<(InodeId, NodeId)> {
    let mut seen = vec![false; tree.inode_count()];
    let mut files: Vec<(i32, InodeId, NodeId)> = Vec::new();
    for n in tree.walk() {
        let id = tree.node(n).inode;
        if matches!(tree.inode(id).kind, InodeKind::File(_)) && !seen[id.0 as usize] {
            seen[id.0 as usize] = true;
            let prio = if sort.is_empty() {
                0
            } else {
                sort.priority(&tree.path(n))
            };
            files.push((prio, id, n));
        }
    }
    files.sort_by_key(|(p, _, _)| std::cmp::Reverse(*p));
    files.into_iter().map(|(_, id, n)| (id, n)).collect()
}

/// Inodes in inode-table order (rule 3), each with the node it is written for.
fn post_order(tree: &Tree) -> Vec<(InodeId, NodeId)> {
    let mut seen = vec![false; tree.inode_count()];
    let mut out = Vec::with_capacity(tree.inode_count());
    // Explicit stack of (directory, next child index) so deep trees cannot overflow the stack.
    let mut stack: Vec<(NodeId, usize)> = vec![(tree.root(), 0)];
    while let Some((d, i)) = stack.pop() {
        let children = &tree.node(d).children;
        if i < children.len() {
            stack.push((d, i + 1));
            let c = children[i];
            let id = tree.node(c).inode;
            if matches!(tree.inode(id).kind, InodeKind::Dir) {
                stack.push((c, 0));
            } else if !seen[id.0 as usize] {
                seen[id.0 as usize] = true;
                out.push((id, c));
            }
        } else {
            out.push((tree.node(d).inode, d));
        }
    }
    out
}

/// Compresses one block: `(bytes, compressed?)`.
fn pack_block(params: &WriterParams, data: Vec<u8>) -> Result<(Vec<u8>, bool)> {
    Ok(match params.compressor.compress(&data)? {
        Some(z) => (z, true),
        None => (data, false),
    })
}

/// Streams every file's data through the parallel compressor; returns where each file's data
/// went, the fragment table and the end offset.
#[allow(clippy::too_many_arguments)]
fn write_data<W: Write + Send>(
    tree: &Tree,
    order: &[InodeId],
    first_node: &[NodeId],
    params: &WriterParams,
    out: &mut W,
    start: u64,
    progress: Progress<'_>,
    report: &mut WriteReport,
) -> Result<(Vec<FileData>, Vec<FragmentEntry>, u64)> {
    let jobs = params.jobs.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("iuk-compress-{i}"))
        .build()
        .map_err(|e| SqfsError::Invalid(format!("cannot start compression threads: {e}")))?;
    // In-flight blocks are bounded by tokens: the producer takes one per block, the emitter gives
    // it back once the block is written. Memory stays bounded whatever the scheduling.
    let in_flight = 4 * jobs + 4;
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let (done_tx, done_rx) = mpsc::channel::<Msg>();
    let bs = params.block_size as usize;

    let mut files: Vec<FileData> = vec![FileData::default(); order.len()];
    let mut frags: Vec<FragmentEntry> = Vec::new();
    let mut pos = start;
    let mut emit_err: Option<SqfsError> = None;

    let produced: Result<Produced> = std::thread::scope(|ts| {
        let files = &mut files;
        let frags = &mut frags;
        let pos = &mut pos;
        let emit_err = &mut emit_err;
        let token_tx = token_tx.clone();
        let emitter = ts.spawn(move || {
            let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
            let mut next = 0u64;
            let mut total: Option<u64> = None;
            while total != Some(next) {
                match done_rx.recv() {
                    Ok(Msg::Done(d)) => {
                        pending.insert(d.seq, d);
                    }
                    Ok(Msg::End(t)) => total = Some(t),
                    Err(_) => break,
                }
                while let Some(d) = pending.remove(&next) {
                    next += 1;
                    let _ = token_tx.send(());
                    if emit_err.is_some() {
                        continue;
                    }
                    let (bytes, compressed) = match d.stored {
                        Ok(s) => s,
                        Err(e) => {
                            *emit_err = Some(e);
                            continue;
                        }
                    };
                    let here = *pos;
                    match d.target {
                        Target::Block { file, first } => {
                            let f = &mut files[file];
                            if first {
                                f.blocks_start = here;
                            }
                            if d.sparse_len > 0 {
                                f.block_sizes.push(0);
                                f.sparse += d.sparse_len;
                                continue;
                            }
                            f.block_sizes.push(
                                bytes.len() as u32
                                    | if compressed { 0 } else { BLOCK_UNCOMPRESSED },
                            );
                        }
                        Target::Fragment { index } => {
                            if frags.len() <= index as usize {
                                frags.resize(
                                    index as usize + 1,
                                    FragmentEntry { start: 0, size: 0 },
                                );
                            }
                            frags[index as usize] = FragmentEntry {
                                start: here,
                                size: bytes.len() as u32
                                    | if compressed { 0 } else { BLOCK_UNCOMPRESSED },
                            };
                        }
                    }
                    if let Err(e) = out.write_all(&bytes) {
                        *emit_err = Some(SqfsError::io("writing image", e));
                        continue;
                    }
                    *pos += bytes.len() as u64;
                }
            }
        });

        let produce = || -> Result<Produced> {
            let mut seq = 0u64;
            let mut read_total = 0u64;
            let mut frag_of: Vec<Option<(u32, u32)>> = vec![None; order.len()];
            let mut dups: Vec<(usize, usize)> = Vec::new();
            let mut seen: HashMap<(u64, [u8; 32]), usize> = HashMap::new();
            let mut frag_buf: Vec<u8> = Vec::with_capacity(bs);
            let mut frag_count = 0u32;
            pool.in_place_scope(|s| -> Result<()> {
                let mut submit = |target: Target, payload: Payload| -> Result<()> {
                    token_rx
                        .recv()
                        .map_err(|_| SqfsError::Invalid("image writer stopped".into()))?;
                    let my = seq;
                    seq += 1;
                    let done_tx = done_tx.clone();
                    s.spawn(move |_| {
                        let (stored, sparse_len) = match payload {
                            Payload::Sparse(len) => (Ok((Vec::new(), false)), len),
                            Payload::Data(d) => (pack_block(params, d), 0),
                            Payload::Stored(d) => (Ok((d, false)), 0),
                            Payload::Packed(z) => (Ok((z, true)), 0),
                        };
                        let _ = done_tx.send(Msg::Done(Done {
                            seq: my,
                            target,
                            stored,
                            sparse_len,
                        }));
                    });
                    Ok(())
                };
                for (fi, id) in order.iter().enumerate() {
                    let InodeKind::File(content) = &tree.inode(*id).kind else {
                        continue;
                    };
                    if content.size == 0 {
                        continue;
                    }
                    let (hash, inline) = hash_content(content)?;
                    if let Some(orig) = seen.get(&(content.size, hash)) {
                        dups.push((fi, *orig));
                        read_total += content.size;
                        progress(read_total);
                        continue;
                    }
                    seen.insert((content.size, hash), fi);
                    let size = content.size;
                    let tail_len = if params.fragments {
                        (size % bs as u64) as usize
                    } else {
                        0
                    };
                    let nblocks = (size - tail_len as u64).div_ceil(bs as u64);
                    let mut reader: Box<dyn Read + Send + '_> = match &inline {
                        Some(buf) => Box::new(&buf[..]),
                        None => content
                            .source
                            .open()
                            .map_err(|e| SqfsError::io(content.source.describe(), e))?,
                    };
                    let mut check = Sha256::new();
                    let path = || tree.path(first_node[fi]);
                    let stored_path =
                        !params.stored_paths.is_empty() && params.stored_paths.contains(&path());
                    let mut mode = match params.data {
                        DataCompression::None => DataCompression::None,
                        _ if stored_path => DataCompression::None,
                        m => m,
                    };
                    for b in 0..nblocks {
                        let len = (size - b * bs as u64).min(bs as u64) as usize;
                        let mut block = vec![0u8; len];
                        reader
                            .read_exact(&mut block)
                            .map_err(|e| read_err(content, e))?;
                        check.update(&block);
                        read_total += len as u64;
                        progress(read_total);
                        let payload = if block.iter().all(|b| *b == 0) {
                            Payload::Sparse(len as u64)
                        } else {
                            match mode {
                                DataCompression::All => Payload::Data(block),
                                // A stored path's last short block (of several) is compressed
                                // when that shrinks it (an image ends with zero padding).
                                DataCompression::None
                                    if stored_path
                                        && nblocks > 1
                                        && b + 1 == nblocks
                                        && len < bs =>
                                {
                                    Payload::Data(block)
                                }
                                DataCompression::None => Payload::Stored(block),
                                DataCompression::Probe => {
                                    match params.compressor.compress(&block)? {
                                        Some(z) => {
                                            mode = DataCompression::All;
                                            Payload::Packed(z)
                                        }
                                        None => {
                                            mode = DataCompression::None;
                                            Payload::Stored(block)
                                        }
                                    }
                                }
                            }
                        };
                        submit(
                            Target::Block {
                                file: fi,
                                first: b == 0,
                            },
                            payload,
                        )?;
                    }
                    if tail_len > 0 {
                        let mut t = vec![0u8; tail_len];
                        reader
                            .read_exact(&mut t)
                            .map_err(|e| read_err(content, e))?;
                        check.update(&t);
                        read_total += tail_len as u64;
                        progress(read_total);
                        if frag_buf.len() + tail_len > bs {
                            let full = std::mem::replace(&mut frag_buf, Vec::with_capacity(bs));
                            submit(Target::Fragment { index: frag_count }, Payload::Data(full))?;
                            frag_count += 1;
                        }
                        frag_of[fi] = Some((frag_count, frag_buf.len() as u32));
                        frag_buf.extend_from_slice(&t);
                    }
                    let mut extra = [0u8; 1];
                    let more = reader.read(&mut extra).map_err(|e| read_err(content, e))?;
                    if more != 0 || <[u8; 32]>::from(check.finalize()) != hash {
                        return Err(SqfsError::Invalid(format!(
                            "{}: file changed while it was being read",
                            content.source.describe()
                        )));
                    }
                }
                if !frag_buf.is_empty() {
                    let full = std::mem::take(&mut frag_buf);
                    submit(Target::Fragment { index: frag_count }, Payload::Data(full))?;
                    frag_count += 1;
                }
                Ok(())
            })?;
            Ok(Produced {
                frag_of,
                dups,
                blocks: seq,
            })
        };
        // Every spawned block has been sent once `produce` returns (the scope waits for them).
        let result = produce();
        match &result {
            Ok(p) => {
                let _ = done_tx.send(Msg::End(p.blocks));
            }
            Err(_) => drop(done_tx),
        }
        let _ = emitter.join();
        result
    });
    let Produced { frag_of, dups, .. } = produced?;
    if let Some(e) = emit_err {
        return Err(e);
    }
    for (fi, f) in frag_of.into_iter().enumerate() {
        files[fi].frag = f;
    }
    report.data_blocks = files
        .iter()
        .map(|f| f.block_sizes.iter().filter(|s| **s != 0).count() as u64)
        .sum();
    for (dup, orig) in dups {
        files[dup] = files[orig].clone();
        report.duplicates += 1;
    }
    report.bytes_in = order
        .iter()
        .map(|id| match &tree.inode(*id).kind {
            InodeKind::File(c) => c.size,
            _ => 0,
        })
        .sum();
    Ok((files, frags, pos))
}

fn read_err(content: &Content, e: std::io::Error) -> SqfsError {
    SqfsError::io(content.source.describe(), e)
}

/// The sha256 of a file's content, plus the bytes when the file is small enough to keep.
fn hash_content(content: &Content) -> Result<([u8; 32], Option<Vec<u8>>)> {
    let mut r = content.source.open().map_err(|e| read_err(content, e))?;
    if content.size <= INLINE_MAX {
        let mut buf = Vec::with_capacity(content.size as usize);
        (&mut r)
            .take(content.size + 1)
            .read_to_end(&mut buf)
            .map_err(|e| read_err(content, e))?;
        if buf.len() as u64 != content.size {
            return Err(size_changed(content, buf.len() as u64));
        }
        let h = Sha256::digest(&buf).into();
        return Ok((h, Some(buf)));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| read_err(content, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > content.size {
            return Err(size_changed(content, total));
        }
        h.update(&buf[..n]);
    }
    if total != content.size {
        return Err(size_changed(content, total));
    }
    Ok((h.finalize().into(), None))
}

fn size_changed(content: &Content, got: u64) -> SqfsError {
    SqfsError::Invalid(format!(
        "{}: expected {} bytes, found {got} (file changed while it was being read)",
        content.source.describe(),
        content.size
    ))
}
