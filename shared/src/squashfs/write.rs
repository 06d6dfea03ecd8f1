//! The deterministic image writer: a [`Tree`] plus [`WriterParams`] in, SquashFS bytes out.
//!
//! Layout rules (they are the writer format version together with the vendored compressors; any
//! change that alters bytes for unchanged parameters must bump [`WRITER_FORMAT_VERSION`]):
//! 1. Superblock, then compressor options when any setting differs from the format default.
//! 2. File data in the order of [`Tree::walk`] (depth first, children bytewise by name), each
//!    inode at its first entry, stably reordered by sort-file priority (higher first) and, with
//!    [`DataOrder::NewestFirst`] (diff layers), within one priority by mtime (later first). Each file
//!    is split into blocks; full blocks (and, without fragments, the last short block) are
//!    compressed in parallel and emitted in order; a block that does not shrink is stored; an
//!    all-zero block is sparse (not stored). A stored path's blocks are stored as they are,
//!    except a short last block of several and a full block that zstd level 1 shrinks, which
//!    are compressed when that shrinks them. Tails shorter than a block are packed into fragment
//!    blocks in the same order; a fragment block is emitted when the next tail does not fit.
//!    A file whose (size, sha256) equals an earlier file's reuses that file's blocks and tail.
//!    Block sources: when a file's content is a file inside an input SquashFS image whose
//!    compressor id, block size and declared compressor options ([`Compressor::declared_options`]:
//!    an absent options payload stands for the defaults; the xz preset, which no image records,
//!    is not compared) equal this image's, and every block is to be compressed, each of its
//!    full-block-list entries that covers the same byte range here and is neither sparse nor
//!    all zeros is copied verbatim (compressed or stored, as the input has it) instead of being
//!    compressed, provided a compressed one passes the kernel traps; it is checked to decode to
//!    the file's bytes first. Fragment sources: a fragment block of such an input image is
//!    copied verbatim when the tails of this image's files whose blocks have that source cover
//!    every byte of it (decided at its first member's tail in data order, emitted there and
//!    numbered as the next fragment; the members' tails point into it at their input offsets);
//!    other tails are packed into fragment blocks here. Fragment blocks are numbered in the
//!    order they are emitted.
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

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};

use super::blocks::{self, BlockCache, BlockParams, FileData};
use super::compress::{BcjTrial, Compressor};
use super::dir::{self, DirEntry};
use super::inode::{self, DiskInode, InodeBody, InodeHeader};
use super::meta::{MetaRef, MetaWriter};
use super::sortfile::SortFile;
use super::superblock::{self, flags, Superblock};
use super::table::{self, FragmentEntry};
use super::xattr::XattrWriter;
use super::{Result, SqfsError, INVALID_U32, INVALID_U64, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::tree::{InodeId, InodeKind, NodeId, Tree};

/// How data blocks are compressed (defined with the data path).
pub use super::blocks::DataCompression;

/// The writer format version: fixes the bytes emitted for given parameters (layout rules above
/// plus the exact vendored compressor versions and settings).
/// Version 2: data blocks are copied from input images (block sources, rule 2).
/// Version 3: diff layers order their files newest first ([`DataOrder::NewestFirst`], rule 2).
/// Version 4: fragment blocks are copied from input images (fragment sources, rule 2).
/// Version 5: a stored path's full block that zstd level 1 shrinks is compressed (rule 2).
pub const WRITER_FORMAT_VERSION: u32 = 5;

/// The order of file data (rule 2) within one sort-file priority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataOrder {
    /// Path order ([`Tree::walk`]), as mksquashfs writes a directory.
    #[default]
    Path,
    /// Later mtimes first, path order among equal mtimes: the order of diff layers. A kit from
    /// an older release carries the files of more package updates, and each update's files
    /// share an mtime, so the tails every kit of a release carries are packed into the same
    /// fragment blocks at the start of each kit, and a batch compresses them once (measured on
    /// the bench batch: 85 % of the later kits' fragment bytes shared, against 65 % in path
    /// order).
    NewestFirst,
}

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
    /// shrinks it (images end with zero padding), and a full block that zstd level 1 shrinks
    /// (a block where compressed streams repeat each other, or tables), compressed when that
    /// shrinks it.
    pub stored_paths: Vec<Vec<u8>>,
    /// Write the export (NFS) table, as mksquashfs does by default.
    pub exportable: bool,
    /// Optional data-order priorities.
    pub sort: SortFile,
    /// The data order within one priority.
    pub order: DataOrder,
    /// Compression threads. Never changes the output bytes.
    pub jobs: usize,
    /// Compressed blocks shared with the other images of a run (the kits of a batch). Never
    /// changes the output bytes.
    pub cache: Option<std::sync::Arc<BlockCache>>,
    /// How xz blocks get the BCJ x86 filter: [`BcjTrial::Full`] (the writer format's) unless
    /// the image's bytes are never compared, only its tree (a device's rebuilt layer).
    pub bcj_trial: BcjTrial,
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
            order: DataOrder::Path,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cache: None,
            bcj_trial: BcjTrial::Full,
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
    /// Data blocks copied verbatim from an input image (block sources, rule 2).
    pub copied_blocks: u64,
    /// Data blocks this writer compressed (kept compressed, or stored when that did not shrink).
    pub compressed_blocks: u64,
    /// Fragment blocks written.
    pub fragment_blocks: u64,
    /// Fragment blocks copied verbatim from an input image (fragment sources, rule 2).
    pub copied_fragment_blocks: u64,
}

/// Called with the number of content bytes read so far; must be cheap.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

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
pub fn write_image<W: Write + Seek>(
    tree: &Tree,
    params: &WriterParams,
    out: &mut W,
    progress: Progress<'_>,
) -> Result<WriteReport> {
    write_image_hashed(tree, None, params, out, progress)
}

/// [`write_image`] with the sha256 of some files' content known beforehand (`hashes`, by
/// [`InodeId`], as [`crate::diff::HashedTree`] holds them): such a file is not read just to be
/// hashed, and a file whose blocks are all copied from an input image is decoded once, to check
/// it against its known hash (see [`blocks`]). The bytes are those [`write_image`] writes; a
/// file whose content does not match its known hash fails the write.
pub fn write_image_hashed<W: Write + Seek>(
    tree: &Tree,
    hashes: Option<&[Option<[u8; 32]>]>,
    params: &WriterParams,
    out: &mut W,
    progress: Progress<'_>,
) -> Result<WriteReport> {
    params.validate()?;
    let comp = &params.compressor;
    let options = comp.options(params.block_size);
    let start = write_head(out, options.as_deref())?;

    // Data phase (rule 2).
    let order = data_order(tree, &params.sort, params.order);
    let block_params = BlockParams {
        compressor: comp,
        block_size: params.block_size,
        fragments: params.fragments,
        data: params.data,
        stored_paths: &params.stored_paths,
        jobs: params.jobs,
        cache: params.cache.as_deref(),
        bcj_trial: params.bcj_trial,
        hashes,
    };
    let data = blocks::write_data(tree, &order, &block_params, out, start, progress)?;
    let mut file_data: HashMap<InodeId, &FileData> = HashMap::with_capacity(order.len());
    for (i, (id, _)) in order.iter().enumerate() {
        file_data.insert(*id, &data.files[i]);
    }

    // Metadata phase (rules 3 to 5).
    let (meta, xattrs) = inode_tables(tree, comp, &file_data)?;
    let (mut tail, starts) = tables(data.end, &meta, xattrs, &data.fragments, params)?;
    let padded = starts.bytes_used.div_ceil(4096) * 4096;
    tail.resize(tail.len() + (padded - starts.bytes_used) as usize, 0);
    out.write_all(&tail)
        .map_err(|e| SqfsError::io(write_context("the tables"), e))?;
    let sb = superblock(params, options.is_some(), &meta, &data.fragments, starts)?;
    finish(out, &sb, padded)?;
    Ok(WriteReport {
        inodes: meta.count,
        files: order.len() as u64,
        bytes_in: data.bytes_in,
        bytes_out: padded,
        duplicates: data.duplicates,
        data_blocks: data.data_blocks,
        copied_blocks: data.copied_blocks,
        compressed_blocks: data.compressed_blocks,
        fragment_blocks: data.fragments.len() as u64,
        copied_fragment_blocks: data.copied_fragments,
    })
}

/// What a failed write of the image was writing, with the next step.
fn write_context(what: &str) -> String {
    format!("writing {what} of the image (check that the output has room and is writable)")
}

/// Writes the superblock's placeholder and the compressor options (rule 1); returns the offset
/// where the data starts.
fn write_head<W: Write>(out: &mut W, options: Option<&[u8]>) -> Result<u64> {
    let mut pos: u64 = superblock::SIZE as u64;
    let mut head = vec![0u8; superblock::SIZE];
    if let Some(o) = options {
        head.extend_from_slice(&(o.len() as u16 | super::meta::UNCOMPRESSED).to_le_bytes());
        head.extend_from_slice(o);
        pos += 2 + o.len() as u64;
    }
    out.write_all(&head)
        .map_err(|e| SqfsError::io(write_context("the superblock"), e))?;
    Ok(pos)
}

/// Writes the final superblock at offset 0 and leaves `out` positioned at the image's end.
fn finish<W: Write + Seek>(out: &mut W, sb: &Superblock, padded: u64) -> Result<()> {
    let err = |e| SqfsError::io(write_context("the superblock"), e);
    out.seek(SeekFrom::Start(0)).map_err(err)?;
    out.write_all(&sb.encode()).map_err(err)?;
    out.seek(SeekFrom::Start(padded)).map_err(err)?;
    out.flush().map_err(err)
}

/// The inode and directory tables (rules 3 and 4) and what they gathered for the tables after
/// them (the xattr tables are returned beside them, to be finished in place).
struct InodeTables {
    /// The inode table's bytes.
    inodes: Vec<u8>,
    /// The directory table's bytes.
    dirs: Vec<u8>,
    /// Distinct uids and gids in first-use order.
    ids: Vec<u32>,
    /// The export table's entries: each inode's reference, by inode number.
    export: Vec<u8>,
    /// Reference of the root directory's inode.
    root_ref: MetaRef,
    /// Number of inodes.
    count: u32,
}

/// Writes every inode in post-order (rule 3), each directory's listing just before it (rule 4).
fn inode_tables(
    tree: &Tree,
    comp: &Compressor,
    file_data: &HashMap<InodeId, &FileData>,
) -> Result<(InodeTables, XattrWriter)> {
    let meta_comp = Some(comp.clone());
    let post = post_order(tree);
    // Inode numbers run from 1 to count and the root's parent is count + 1: all must fit a u32.
    let count = u32::try_from(post.len())
        .ok()
        .filter(|c| *c < u32::MAX)
        .ok_or_else(|| {
            SqfsError::Invalid(format!(
                "{} inodes: SquashFS numbers inodes with 32 bits, at most {} per image \
                 (split the tree into several images)",
                post.len(),
                u32::MAX - 1
            ))
        })?;
    let mut number: HashMap<InodeId, u32> = HashMap::with_capacity(post.len());
    for (i, (id, _)) in post.iter().enumerate() {
        number.insert(*id, i as u32 + 1);
    }
    let mut w = InodeWriter {
        tree,
        file_data,
        number,
        links: tree.link_counts(),
        count,
        inodes: MetaWriter::new(meta_comp.clone()),
        dirs: MetaWriter::new(meta_comp.clone()),
        xattrs: XattrWriter::new(meta_comp),
        ids: Vec::new(),
        id_index: HashMap::new(),
        refs: HashMap::with_capacity(post.len()),
        export: Vec::with_capacity(post.len() * 8),
    };
    for (id, node) in &post {
        w.add(*id, *node)?;
    }
    let root_ref = w.refs[&tree.node(tree.root()).inode];
    let (inodes, _) = w.inodes.finish()?;
    let (dirs, _) = w.dirs.finish()?;
    let tables = InodeTables {
        inodes,
        dirs,
        ids: w.ids,
        export: w.export,
        root_ref,
        count,
    };
    Ok((tables, w.xattrs))
}

/// State of the inode and directory table writers along the post-order walk.
struct InodeWriter<'a> {
    tree: &'a Tree,
    file_data: &'a HashMap<InodeId, &'a FileData>,
    /// Inode number of every inode.
    number: HashMap<InodeId, u32>,
    /// Link count of every inode.
    links: Vec<u32>,
    /// Number of inodes.
    count: u32,
    inodes: MetaWriter,
    dirs: MetaWriter,
    xattrs: XattrWriter,
    ids: Vec<u32>,
    id_index: HashMap<u32, u16>,
    /// Where each written inode lies (children are written before their directory).
    refs: HashMap<InodeId, MetaRef>,
    export: Vec<u8>,
}

impl InodeWriter<'_> {
    /// The path of `node` for messages.
    fn path(&self, node: NodeId) -> String {
        String::from_utf8_lossy(&self.tree.path(node)).into_owned()
    }

    /// The id-table index of uid or gid `v` of `node`'s inode, adding it on first use.
    fn id_of(&mut self, v: u32, node: NodeId) -> Result<u16> {
        if let Some(i) = self.id_index.get(&v) {
            return Ok(*i);
        }
        // The superblock counts ids in a u16: at most 65535 distinct ids.
        let i = u16::try_from(self.ids.len())
            .ok()
            .filter(|i| *i < u16::MAX)
            .ok_or_else(|| {
                SqfsError::Invalid(format!(
                    "/{}: owner id {v} is one more than the 65535 distinct uids and gids an \
                     image can hold (give the files fewer distinct owners)",
                    self.path(node)
                ))
            })?;
        self.ids.push(v);
        self.id_index.insert(v, i);
        Ok(i)
    }

    /// Writes inode `id` for `node` (its directory listing first) and records where it lies.
    fn add(&mut self, id: InodeId, node: NodeId) -> Result<()> {
        let meta = &self.tree.inode(id).meta;
        let uid_idx = self.id_of(meta.uid, node)?;
        let gid_idx = self.id_of(meta.gid, node)?;
        let xattr = if meta.xattrs.is_empty() {
            INVALID_U32
        } else {
            self.xattrs
                .add(&meta.xattrs)
                .map_err(|e| SqfsError::Invalid(format!("/{}: {e}", self.path(node))))?
        };
        let body = self.body(id, node, xattr)?;
        let at = self.inodes.position();
        let header = InodeHeader {
            kind: 0,
            perm: meta.perm & 0o7777,
            uid_idx,
            gid_idx,
            mtime: meta.mtime,
            number: self.number[&id],
        };
        self.inodes.write(&DiskInode { header, body }.encode())?;
        self.refs.insert(id, at);
        self.export.extend_from_slice(&at.pack().to_le_bytes());
        Ok(())
    }

    /// The type-specific part of inode `id`.
    fn body(&mut self, id: InodeId, node: NodeId, xattr: u32) -> Result<InodeBody> {
        let ino = self.tree.inode(id);
        let nlink = self.links[id.0 as usize];
        Ok(match &ino.kind {
            InodeKind::Dir => self.dir_body(node, xattr)?,
            InodeKind::File(c) => {
                let fd = self.file_data[&id];
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
                        "/{}: symlink target of {} bytes (1 to {} allowed; shorten the link or \
                         leave it out)",
                        self.path(node),
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
                        "/{}: device number {rdev:#x} cannot be stored (SquashFS holds majors \
                         up to 4095 and minors up to 1048575; leave the device out)",
                        self.path(node)
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
        })
    }

    /// Writes the listing of directory `node` and returns its inode body.
    fn dir_body(&mut self, node: NodeId, xattr: u32) -> Result<InodeBody> {
        let tree = self.tree;
        let children = &tree.node(node).children;
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
                inode_ref: self.refs[&cn.inode],
                number: self.number[&cn.inode],
                kind: kind_of(&ci.kind),
            });
        }
        let path = || String::from_utf8_lossy(&tree.path(node)).into_owned();
        let too_large = |what: &str| {
            SqfsError::Invalid(format!(
                "/{}: {what} (split the directory or the tree into several images)",
                path()
            ))
        };
        let listing = dir::write_listing(&mut self.dirs, &entries)
            .map_err(|e| SqfsError::Invalid(format!("/{}: {e}", path())))?;
        let parent = if node == tree.root() {
            self.count + 1
        } else {
            self.number[&tree.node(tree.node(node).parent).inode]
        };
        let block_start = u32::try_from(listing.start.block)
            .map_err(|_| too_large("the directory table passes 4 GiB at this directory"))?;
        if listing.index.len() > u16::MAX as usize {
            return Err(too_large(
                "the directory listing spans more than 65535 metadata blocks",
            ));
        }
        let nlink = subdirs
            .checked_add(2)
            .ok_or_else(|| too_large("too many subdirectories for a 32-bit link count"))?;
        Ok(InodeBody::Dir {
            block_start,
            nlink,
            size: listing.size,
            offset: listing.start.offset,
            parent,
            index: listing.index,
            xattr,
        })
    }
}

/// Where the tables after the data lie (the superblock's table starts).
#[derive(Clone, Copy, Debug)]
struct TableStarts {
    inode_table_start: u64,
    directory_table_start: u64,
    fragment_table_start: u64,
    export_table_start: u64,
    id_table_start: u64,
    xattr_id_table_start: u64,
    /// Whether the image has xattr tables.
    xattrs: bool,
    /// End of the last table: the image size before padding.
    bytes_used: u64,
}

/// Lays out the inode and directory tables at `pos`, then the fragment, export, id and xattr
/// tables (rule 5); returns their bytes and where each one starts.
fn tables(
    pos: u64,
    meta: &InodeTables,
    xattrs: XattrWriter,
    frags: &[FragmentEntry],
    params: &WriterParams,
) -> Result<(Vec<u8>, TableStarts)> {
    let meta_comp = Some(params.compressor.clone());
    let mut tail: Vec<u8> = Vec::new();
    let inode_table_start = pos;
    tail.extend_from_slice(&meta.inodes);
    let directory_table_start = inode_table_start + meta.inodes.len() as u64;
    tail.extend_from_slice(&meta.dirs);
    let mut at = directory_table_start + meta.dirs.len() as u64;

    let frag_bytes: Vec<u8> = frags.iter().flat_map(|f| f.encode()).collect();
    let ft = table::write(&frag_bytes, meta_comp.as_ref(), at)?;
    tail.extend_from_slice(&ft.blocks);
    let fragment_table_start = at + ft.blocks.len() as u64;
    tail.extend_from_slice(&ft.lookup);
    at = fragment_table_start + ft.lookup.len() as u64;

    let export_table_start = if params.exportable {
        let et = table::write(&meta.export, meta_comp.as_ref(), at)?;
        tail.extend_from_slice(&et.blocks);
        let start = at + et.blocks.len() as u64;
        tail.extend_from_slice(&et.lookup);
        at = start + et.lookup.len() as u64;
        start
    } else {
        INVALID_U64
    };

    let id_bytes: Vec<u8> = meta.ids.iter().flat_map(|i| i.to_le_bytes()).collect();
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
    let starts = TableStarts {
        inode_table_start,
        directory_table_start,
        fragment_table_start,
        export_table_start,
        id_table_start,
        xattr_id_table_start,
        xattrs: has_xattrs,
        bytes_used: at,
    };
    Ok((tail, starts))
}

/// The final superblock.
fn superblock(
    params: &WriterParams,
    has_options: bool,
    meta: &InodeTables,
    frags: &[FragmentEntry],
    starts: TableStarts,
) -> Result<Superblock> {
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
    if !starts.xattrs {
        fl |= flags::NO_XATTRS;
    }
    if has_options {
        fl |= flags::COMPRESSOR_OPTIONS;
    }
    let fragment_count = u32::try_from(frags.len()).map_err(|_| {
        SqfsError::Invalid(format!(
            "{} fragment blocks: more than a 32-bit count (write the image without fragments)",
            frags.len()
        ))
    })?;
    let id_count = u16::try_from(meta.ids.len()).map_err(|_| {
        SqfsError::Invalid(format!(
            "{} distinct uids and gids: at most 65535 per image (give the files fewer distinct \
             owners)",
            meta.ids.len()
        ))
    })?;
    Ok(Superblock {
        inode_count: meta.count,
        mod_time: params.mod_time,
        block_size: params.block_size,
        fragment_count,
        compression_id: params.compressor.id(),
        block_log: params.block_size.trailing_zeros() as u16,
        flags: fl,
        id_count,
        version_major: 4,
        version_minor: 0,
        root_inode_ref: meta.root_ref.pack(),
        bytes_used: starts.bytes_used,
        id_table_start: starts.id_table_start,
        xattr_id_table_start: starts.xattr_id_table_start,
        inode_table_start: starts.inode_table_start,
        directory_table_start: starts.directory_table_start,
        fragment_table_start: starts.fragment_table_start,
        export_table_start: starts.export_table_start,
    })
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
fn data_order(tree: &Tree, sort: &SortFile, order: DataOrder) -> Vec<(InodeId, NodeId)> {
    let mut seen = vec![false; tree.inode_count()];
    let mut files: Vec<(i32, u32, InodeId, NodeId)> = Vec::new();
    for n in tree.walk() {
        let id = tree.node(n).inode;
        if matches!(tree.inode(id).kind, InodeKind::File(_)) && !seen[id.0 as usize] {
            seen[id.0 as usize] = true;
            let prio = if sort.is_empty() {
                0
            } else {
                sort.priority(&tree.path(n))
            };
            let mtime = match order {
                DataOrder::Path => 0,
                DataOrder::NewestFirst => tree.inode(id).meta.mtime,
            };
            files.push((prio, mtime, id, n));
        }
    }
    // Stable: path order among equal keys.
    files.sort_by_key(|(p, m, _, _)| (std::cmp::Reverse(*p), std::cmp::Reverse(*m)));
    files.into_iter().map(|(_, _, id, n)| (id, n)).collect()
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
