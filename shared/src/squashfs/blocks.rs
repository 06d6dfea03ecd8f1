//! The writer's data path: file content in, data blocks and fragment blocks out, in order.
//!
//! The producer (`Producer`) reads the files in data order, hashes each one (a file whose size
//! and sha256 equal an earlier file's reuses that file's blocks: dedup), cuts it into
//! [`BlockJob`]s (one per full block; all-zero blocks are sparse) and packs tails shorter than a
//! block into fragment jobs. Jobs are compressed in parallel on a rayon pool. The emitter
//! (`Emitter`) writes the results strictly in job order, whatever the scheduling, records where
//! each file's blocks went ([`FileData`]) and builds the fragment table. In-flight jobs are
//! bounded by tokens ([`pipeline_depth`]), so memory stays bounded; the emitter's first failure
//! (a write error such as a full disk, or a failed compression) stops the producer at its next
//! file or block instead of letting it read and compress the rest of the input.
//!
//! A [`BlockJob`] is the unit of work: which file and block (or which fragment block) it fills,
//! and its bytes as a [`Payload`] (to compress, to store, already compressed, or copied).
//!
//! Block sources: a file read from an input SquashFS image whose compressor id, block size and
//! declared compressor options equal the output's has its blocks copied verbatim instead of
//! compressed again ([`copy_block`] says which: a pure function of the input image and the
//! parameters, never of timing or the number of threads). The producer still reads (decodes) and
//! hashes the file as usual (dedup, "changed while read" check); each copied block is checked on
//! the pool to decode to exactly those bytes before the emitter writes it. When the file's sha256
//! is known beforehand (a diff layer's files: [`BlockParams::hashes`]) and every whole block of
//! it may be copied, the producer reads each block's stored bytes once, decodes them once (the
//! copied bytes are then the ones checked) and compares the file's sha256 at its end
//! (`Producer::copied_file`).
//!
//! Fragment sources ([`super::fragment_source`]): an input image's fragment block whose every
//! byte is a tail of a file written here is copied as it is stored; those files' tails point
//! into it, the other tails are packed.
//!
//! A [`BlockCache`] shared by the images of one run (the kits of a batch) remembers what each
//! block compressed to: a block whose bytes and compressor equal one compressed before takes that
//! result instead of being compressed again. Compression is a pure function of the bytes and the
//! compressor, so the cache never changes the output, only the time. It also remembers the files
//! whose copied blocks were checked against their known sha256 (by the digest of their stored
//! form): a later image of the run copies such a file's blocks without decoding them again, after
//! checking that the bytes it copied have that same digest.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::compress::{BcjTrial, Compressor};
use super::data::{StoredDigest, StoredFile};
use super::fragment_source::FragmentSources;
use super::inode::BLOCK_UNCOMPRESSED;
use super::table::FragmentEntry;
use super::{Result, SqfsError};
use crate::tree::{Content, InodeId, InodeKind, NodeId, Tree};

/// Files up to this size are read once into memory; larger ones are hashed in a first pass and
/// streamed in a second (bounds memory whatever the file sizes).
const INLINE_MAX: u64 = 16 << 20;

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

/// The writer parameters the data path uses (a view of the image's writer parameters).
#[derive(Clone, Copy, Debug)]
pub struct BlockParams<'a> {
    /// Compressor of the data blocks.
    pub compressor: &'a Compressor,
    /// Data block size (validated by the caller).
    pub block_size: u32,
    /// Pack file tails into fragment blocks.
    pub fragments: bool,
    /// How data blocks are compressed.
    pub data: DataCompression,
    /// Files (paths relative to the root) whose data is stored uncompressed, except, in a file of
    /// several blocks, a last short block that compression shrinks.
    pub stored_paths: &'a [Vec<u8>],
    /// Compression threads. Never changes the output bytes.
    pub jobs: usize,
    /// Compressed blocks remembered across the images of a run. Never changes the output bytes.
    pub cache: Option<&'a BlockCache>,
    /// How xz blocks get the BCJ x86 filter.
    pub bcj_trial: BcjTrial,
    /// The sha256 of files' content known beforehand, by [`InodeId`] (a diff layer's files).
    /// Never changes the output bytes; a file that does not match fails the write.
    pub hashes: Option<&'a [Option<[u8; 32]>]>,
}

/// A [`BlockCache`]'s entries: (compressor, sha256 of the block) → compressed bytes.
type CacheMap = HashMap<(Compressor, BcjTrial, [u8; 32]), Option<Vec<u8>>>;

/// A file checked to have the content with sha256 `content` when every whole block of its
/// stored form (digest `stored`, [`StoredDigest`]) is copied into an image with `compressor` and
/// `block_size`: no block of it decodes to zeros, every one passes the kernel traps.
#[derive(Clone, PartialEq, Eq, Hash)]
struct VerifiedFile {
    compressor: Compressor,
    block_size: u32,
    stored: [u8; 32],
    content: [u8; 32],
}

impl<'a> BlockParams<'a> {
    /// How this image's blocks are compressed.
    fn compression(&self) -> BlockCompression<'a> {
        BlockCompression {
            compressor: self.compressor,
            trial: self.bcj_trial,
            cache: self.cache,
        }
    }
}

/// What blocks compressed to, remembered across the images one run writes (the kits of a batch
/// share most fragment blocks and boot files): keyed by compressor and the sha256 of the
/// uncompressed bytes, holding the compressed bytes (`None`: the block did not shrink). Entries
/// are added until their bytes reach the cap, then only looked up. Output bytes never depend
/// on it (compression is deterministic); only time does.
pub struct BlockCache {
    entries: Mutex<CacheMap>,
    /// Copied blocks already checked: (sha256 of the stored bytes, sha256 of what they decode
    /// to). The same stored bytes with the same expected content need no second decoding.
    checked: Mutex<std::collections::HashSet<([u8; 32], [u8; 32])>>,
    /// Files whose copied blocks were checked against their known sha256.
    verified: Mutex<std::collections::HashSet<VerifiedFile>>,
    bytes: AtomicU64,
    cap: u64,
    hits: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .field("cap", &self.cap)
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .finish()
    }
}

impl BlockCache {
    /// The cap of a batch build's cache: with the build's own memory, well under 1 GiB.
    pub const DEFAULT_CAP: u64 = 256 << 20;

    /// An empty cache holding at most `cap` bytes of blocks.
    pub fn new(cap: u64) -> BlockCache {
        BlockCache {
            entries: Mutex::new(HashMap::new()),
            checked: Mutex::new(std::collections::HashSet::new()),
            verified: Mutex::new(std::collections::HashSet::new()),
            bytes: AtomicU64::new(0),
            cap,
            hits: AtomicU64::new(0),
        }
    }

    /// Blocks taken from the cache instead of compressed so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheMap> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`check_copied`], skipped when the same stored bytes were checked to decode to the same
    /// content (by sha256 of both) before.
    fn check_copied(
        &self,
        compressor: &Compressor,
        raw: &[u8],
        compressed: bool,
        plain: &[u8],
        what: &str,
    ) -> Result<()> {
        let key: ([u8; 32], [u8; 32]) = (Sha256::digest(raw).into(), Sha256::digest(plain).into());
        let lock = || self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if lock().contains(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        check_copied(compressor, raw, compressed, plain, what)?;
        if self.bytes.load(Ordering::Relaxed) + 64 <= self.cap {
            self.bytes.fetch_add(64, Ordering::Relaxed);
            lock().insert(key);
        }
        Ok(())
    }

    /// Whether `file` was checked before in this run.
    fn is_verified(&self, file: &VerifiedFile) -> bool {
        let hit = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(file);
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Remembers that `file` was checked (while the cache has room).
    fn add_verified(&self, file: VerifiedFile) {
        if self.bytes.load(Ordering::Relaxed) + 128 <= self.cap {
            self.bytes.fetch_add(128, Ordering::Relaxed);
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(file);
        }
    }

    /// `compressor.compress_with(data, trial)`, taken from the cache when the same bytes were
    /// compressed the same way before.
    pub fn compress(
        &self,
        compressor: &Compressor,
        trial: BcjTrial,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let key = (
            compressor.clone(),
            trial,
            <[u8; 32]>::from(Sha256::digest(data)),
        );
        if let Some(z) = self.lock().get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(z.clone());
        }
        let z = compressor.compress_with(data, trial)?;
        let len = z.as_ref().map_or(0, Vec::len) as u64 + 64;
        if self.bytes.load(Ordering::Relaxed) + len <= self.cap {
            self.bytes.fetch_add(len, Ordering::Relaxed);
            self.lock().insert(key, z.clone());
        }
        Ok(z)
    }
}

/// How the data path compresses a block: compressor, BCJ trial, and the cache if any.
#[derive(Clone, Copy)]
struct BlockCompression<'a> {
    compressor: &'a Compressor,
    trial: BcjTrial,
    cache: Option<&'a BlockCache>,
}

impl BlockCompression<'_> {
    /// Compresses `data` (`None`: it does not shrink), through the cache when there is one.
    fn compress(&self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.cache {
            Some(c) => c.compress(self.compressor, self.trial, data),
            None => self.compressor.compress_with(data, self.trial),
        }
    }

    /// [`check_copied`], through the cache when there is one.
    fn check_copied(&self, raw: &[u8], compressed: bool, plain: &[u8], what: &str) -> Result<()> {
        match self.cache {
            Some(c) => c.check_copied(self.compressor, raw, compressed, plain, what),
            None => check_copied(self.compressor, raw, compressed, plain, what),
        }
    }
}

/// Where one file's data ended up (what its inode records).
#[derive(Clone, Debug, Default)]
pub struct FileData {
    /// Absolute offset of the file's first data block.
    pub blocks_start: u64,
    /// Stored size of each block (0: sparse; [`BLOCK_UNCOMPRESSED`] set: stored).
    pub block_sizes: Vec<u32>,
    /// Bytes of the file held in sparse blocks.
    pub sparse: u64,
    /// Fragment index and offset of the file's tail, if it has one.
    pub frag: Option<(u32, u32)>,
}

/// What the data path wrote.
#[derive(Debug, Default)]
pub struct DataLayout {
    /// Where each file's data went, by data-order position.
    pub files: Vec<FileData>,
    /// The fragment table.
    pub fragments: Vec<FragmentEntry>,
    /// Absolute offset just after the last data or fragment block.
    pub end: u64,
    /// Data blocks written (not counting sparse ones).
    pub data_blocks: u64,
    /// Data blocks copied verbatim from an input image (block sources).
    pub copied_blocks: u64,
    /// Data blocks this writer compressed (kept compressed, or stored when that did not shrink
    /// them); with `copied_blocks` and the blocks stored by rule, they make `data_blocks`.
    pub compressed_blocks: u64,
    /// Fragment blocks copied verbatim from an input image (fragment sources).
    pub copied_fragments: u64,
    /// Files whose data was shared with an earlier identical file.
    pub duplicates: u64,
    /// Bytes of file content.
    pub bytes_in: u64,
}

/// Which block a job fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Block `index` of the file at data-order position `file`.
    Block {
        /// Data-order position of the file.
        file: usize,
        /// Block number inside the file, from 0.
        index: u64,
    },
    /// Fragment block number `index`.
    Fragment {
        /// Fragment table index.
        index: u32,
    },
}

/// The bytes of a job.
#[derive(Debug)]
pub enum Payload {
    /// An all-zero block of this many bytes: not stored.
    Sparse(u64),
    /// A block to compress.
    Data(Vec<u8>),
    /// A block to store as it is.
    Stored(Vec<u8>),
    /// A block of a stored path (a kit's layer: compressed data already): stored as it is
    /// unless a fast trial compression ([`shrinks_fast`]) shrinks it, then compressed like
    /// [`Payload::Data`] (kept compressed only when that is smaller). Catches the few blocks of
    /// a layer whose compressed streams repeat one another, and its tables.
    Screened(Vec<u8>),
    /// A block compressed already, by a probe.
    Packed(Vec<u8>),
    /// A block copied verbatim from an input image (a block source), checked on the pool to
    /// decode to exactly the file's bytes at its place before it is written.
    Copied {
        /// The block as the input image stores it.
        raw: Vec<u8>,
        /// Whether `raw` is compressed (else stored as is, the uncompressed flag kept).
        compressed: bool,
        /// The file's bytes this block must decode to.
        plain: Vec<u8>,
        /// Which file and block, for the error when it does not.
        what: String,
    },
    /// A block copied verbatim from an input image whose content the producer has checked
    /// already (decoded from these very bytes, or a file checked earlier in the run).
    Verified {
        /// The block as the input image stores it.
        raw: Vec<u8>,
        /// Whether `raw` is compressed.
        compressed: bool,
    },
}

/// The unit of work of the data path: one data or fragment block and its bytes. Jobs are
/// emitted in the order they are submitted, whoever produced them.
#[derive(Debug)]
pub struct BlockJob {
    /// The block this job fills.
    pub target: Target,
    /// Its bytes.
    pub payload: Payload,
}

/// A job's bytes as they go to the image.
struct Stored {
    /// The bytes to write (empty for a sparse block).
    bytes: Vec<u8>,
    /// Whether `bytes` are compressed.
    compressed: bool,
    /// For a sparse block, the bytes it stands for; 0 otherwise.
    sparse_len: u64,
    /// Where the bytes come from (for the counts of [`DataLayout`]).
    origin: Origin,
}

/// Where a written block's bytes come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Compressed by this writer (kept compressed, or stored when that did not shrink it).
    Compressed,
    /// Stored as is by rule (no compression asked for).
    Stored,
    /// Copied verbatim from an input image.
    Copied,
}

impl Payload {
    /// Compresses (or passes through) the payload.
    fn finish(self, how: BlockCompression<'_>) -> Result<Stored> {
        let (bytes, compressed, sparse_len, origin) = match self {
            Payload::Sparse(len) => (Vec::new(), false, len, Origin::Stored),
            Payload::Data(d) => match how.compress(&d)? {
                Some(z) => (z, true, 0, Origin::Compressed),
                None => (d, false, 0, Origin::Compressed),
            },
            Payload::Stored(d) => (d, false, 0, Origin::Stored),
            Payload::Screened(d) if shrinks_fast(&d) => match how.compress(&d)? {
                Some(z) => (z, true, 0, Origin::Compressed),
                None => (d, false, 0, Origin::Compressed),
            },
            Payload::Screened(d) => (d, false, 0, Origin::Stored),
            Payload::Packed(z) => (z, true, 0, Origin::Compressed),
            Payload::Copied {
                raw,
                compressed,
                plain,
                what,
            } => {
                how.check_copied(&raw, compressed, &plain, &what)?;
                (raw, compressed, 0, Origin::Copied)
            }
            Payload::Verified { raw, compressed } => (raw, compressed, 0, Origin::Copied),
        };
        Ok(Stored {
            bytes,
            compressed,
            sparse_len,
            origin,
        })
    }
}

/// Whether zstd at level 1 (pinned, vendored: a pure function of the bytes) makes `data`
/// smaller: the screen of [`Payload::Screened`], about 1 GB/s on data that does not shrink.
fn shrinks_fast(data: &[u8]) -> bool {
    zstd::bulk::compress(data, 1).is_ok_and(|z| z.len() < data.len())
}

/// Fails unless the copied block `raw` decodes (decompressed with `compressor`, whose id is the
/// input image's, or as stored) to exactly `plain`: a copied block whose bytes differ from the
/// file's (an input image changed while it was read, or a reader bug) never reaches the output.
fn check_copied(
    compressor: &Compressor,
    raw: &[u8],
    compressed: bool,
    plain: &[u8],
    what: &str,
) -> Result<()> {
    let same = if compressed {
        match compressor.decompress(raw, plain.len()) {
            Ok(d) => d == plain,
            Err(_) => false,
        }
    } else {
        raw == plain
    };
    if same {
        return Ok(());
    }
    Err(SqfsError::Invalid(format!(
        "{what}: the block copied from the input image does not decode to the file's bytes \
         (the image changed while it was read, or is corrupt: check it with unsquashfs)"
    )))
}

/// A job after compression, on its way to the emitter.
struct Finished {
    seq: u64,
    target: Target,
    stored: Result<Stored>,
}

enum Msg {
    Done(Finished),
    /// All jobs were submitted; this many in total.
    End(u64),
}

/// Jobs in flight at most (read, queued, compressing or waiting to be written) with `jobs`
/// compression threads.
pub fn pipeline_depth(jobs: usize) -> usize {
    jobs.max(1).saturating_mul(4).saturating_add(4)
}

/// Streams every file's data through the parallel compressor and writes it to `out`, whose
/// position is `start`; `order` lists the files in data order (each with the node its path is
/// taken from). `progress` is called with the bytes of content read so far.
pub fn write_data<W: Write>(
    tree: &Tree,
    order: &[(InodeId, NodeId)],
    params: &BlockParams<'_>,
    out: &mut W,
    start: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DataLayout> {
    let jobs = params.jobs.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("iuk-compress-{i}"))
        .build()
        .map_err(|e| {
            SqfsError::Invalid(format!(
                "cannot start {jobs} compression threads: {e} (try fewer jobs)"
            ))
        })?;
    // In-flight blocks are bounded by tokens: the producer takes one per block, the emitter gives
    // it back once the block is written. Memory stays bounded whatever the scheduling.
    let in_flight = pipeline_depth(jobs);
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let (done_tx, done_rx) = mpsc::channel::<Msg>();
    let stop = AtomicBool::new(false);
    let mut emitter = Emitter {
        out,
        pos: start,
        files: vec![FileData::default(); order.len()],
        frags: Vec::new(),
        copied: 0,
        compressed: 0,
        err: None,
        stop: &stop,
    };
    let mut producer = Producer::new(tree, order, params, progress, &stop);

    // The emitter writes on the calling thread (an applier's mutating calls all come from one
    // thread); the producer reads and submits on a thread of its own.
    let (producer_ref, stop_ref, pool_ref) = (&mut producer, &stop, &pool);
    let produced: Result<u64> = std::thread::scope(|ts| {
        let producing = ts.spawn(move || {
            // Every spawned job has been sent once `run` returns (the rayon scope waits for them).
            pool_ref.in_place_scope(|s| {
                let mut sub = Submitter {
                    scope: s,
                    tokens: &token_rx,
                    done: done_tx,
                    how: params.compression(),
                    stop: stop_ref,
                    seq: 0,
                };
                let result = producer_ref.run(&mut sub).map(|()| sub.seq);
                if let Ok(total) = result {
                    let _ = sub.done.send(Msg::End(total));
                }
                // `sub` and its sender are dropped here: after an error the emitter sees the end.
                result
            })
        });
        emitter.run(done_rx, token_tx);
        match producing.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    // The emitter's failure comes first: it is why the producer stopped.
    if let Some(e) = emitter.err {
        return Err(e);
    }
    produced?;
    let mut files = emitter.files;
    let copied_fragments = producer.sources.copied();
    finish_layout(tree, order, producer, &mut files).map(|(data_blocks, duplicates, bytes_in)| {
        DataLayout {
            files,
            fragments: emitter.frags,
            end: emitter.pos,
            data_blocks,
            copied_blocks: emitter.copied,
            compressed_blocks: emitter.compressed,
            copied_fragments,
            duplicates,
            bytes_in,
        }
    })
}

/// Applies the producer's fragment placements and duplicates to the emitted files; returns
/// (data blocks, duplicates, content bytes).
fn finish_layout(
    tree: &Tree,
    order: &[(InodeId, NodeId)],
    producer: Producer<'_>,
    files: &mut [FileData],
) -> Result<(u64, u64, u64)> {
    for (fi, f) in producer.frag_of.into_iter().enumerate() {
        files[fi].frag = f;
    }
    let data_blocks = files
        .iter()
        .map(|f| f.block_sizes.iter().filter(|s| **s != 0).count() as u64)
        .sum();
    let mut duplicates = 0u64;
    for (dup, orig) in producer.dups {
        files[dup] = files[orig].clone();
        duplicates += 1;
    }
    let mut bytes_in = 0u64;
    for (id, node) in order {
        if let InodeKind::File(c) = &tree.inode(*id).kind {
            bytes_in = add_size(bytes_in, c.size, || tree.path(*node))?;
        }
    }
    Ok((data_blocks, duplicates, bytes_in))
}

/// `total + size`, or an error naming the file that made the total overflow.
fn add_size(total: u64, size: u64, path: impl Fn() -> Vec<u8>) -> Result<u64> {
    total.checked_add(size).ok_or_else(|| {
        SqfsError::Invalid(format!(
            "/{}: file of {size} bytes makes the image content exceed 2^64 bytes \
             (the input is corrupt or too large: leave this file out)",
            String::from_utf8_lossy(&path())
        ))
    })
}

/// Hands jobs to the compression pool in sequence, one token each.
struct Submitter<'s, 'scope> {
    scope: &'s rayon::Scope<'scope>,
    tokens: &'s Receiver<()>,
    done: Sender<Msg>,
    how: BlockCompression<'scope>,
    stop: &'s AtomicBool,
    /// Jobs submitted so far (the next job's sequence number).
    seq: u64,
}

impl Submitter<'_, '_> {
    /// Fails once the emitter has stopped the pipeline.
    fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Acquire) {
            return Err(stopped());
        }
        Ok(())
    }

    /// Waits for a token, then compresses `job` on the pool; the emitter gets it in order.
    fn submit(&mut self, job: BlockJob) -> Result<()> {
        self.check()?;
        self.tokens.recv().map_err(|_| stopped())?;
        self.check()?;
        let seq = self.seq;
        self.seq += 1;
        let done = self.done.clone();
        let how = self.how;
        self.scope.spawn(move |_| {
            let BlockJob { target, payload } = job;
            let stored = payload.finish(how);
            let _ = done.send(Msg::Done(Finished {
                seq,
                target,
                stored,
            }));
        });
        Ok(())
    }
}

fn stopped() -> SqfsError {
    SqfsError::Invalid("image writer stopped".into())
}

/// Reads files in data order and turns them into block jobs (see the module doc).
struct Producer<'a> {
    tree: &'a Tree,
    order: &'a [(InodeId, NodeId)],
    params: &'a BlockParams<'a>,
    progress: &'a (dyn Fn(u64) + Sync),
    stop: &'a AtomicBool,
    /// Content bytes read (or skipped as duplicates) so far.
    read_total: u64,
    /// Fragment index and offset of each file's tail, by data-order position.
    frag_of: Vec<Option<(u32, u32)>>,
    /// (duplicate, original) data-order positions.
    dups: Vec<(usize, usize)>,
    /// First data-order position of each (size, sha256).
    seen: HashMap<(u64, [u8; 32]), usize>,
    /// Tails packed into the current fragment block.
    frag_buf: Vec<u8>,
    /// (data-order position, offset) of each tail in `frag_buf`.
    frag_members: Vec<(usize, u32)>,
    /// The next fragment table index (fragment blocks are numbered as they are submitted).
    next_frag: u32,
    /// Input fragment blocks that may be copied whole.
    sources: FragmentSources,
}

impl<'a> Producer<'a> {
    fn new(
        tree: &'a Tree,
        order: &'a [(InodeId, NodeId)],
        params: &'a BlockParams<'a>,
        progress: &'a (dyn Fn(u64) + Sync),
        stop: &'a AtomicBool,
    ) -> Producer<'a> {
        Producer {
            tree,
            order,
            params,
            progress,
            stop,
            read_total: 0,
            frag_of: vec![None; order.len()],
            dups: Vec::new(),
            seen: HashMap::new(),
            frag_buf: Vec::with_capacity(params.block_size as usize),
            frag_members: Vec::new(),
            next_frag: 0,
            sources: FragmentSources::default(),
        }
    }

    /// Lists the input fragment blocks the files' tails may be copied with: every file whose
    /// whole blocks have a block source ([`Producer::block_source`]) and whose tail lies in
    /// such an image's fragment block.
    fn plan_fragment_sources(&mut self) {
        if !self.params.fragments {
            return;
        }
        let bs = self.params.block_size as u64;
        let mut tails = Vec::new();
        for (fi, (id, node)) in self.order.iter().enumerate() {
            let InodeKind::File(content) = &self.tree.inode(*id).kind else {
                continue;
            };
            if content.size % bs == 0
                || self.mode_of(self.is_stored_path(*node)) != DataCompression::All
            {
                continue;
            }
            if let Some(t) = self
                .block_source(content, DataCompression::All)
                .and_then(|src| src.fragment_tail())
            {
                tails.push((fi, t));
            }
        }
        self.sources = FragmentSources::plan(tails);
    }

    /// Whether the file at `node` is one of the stored paths.
    fn is_stored_path(&self, node: NodeId) -> bool {
        !self.params.stored_paths.is_empty()
            && self.params.stored_paths.contains(&self.tree.path(node))
    }

    /// How the data of a file (a stored path or not) is compressed to begin with.
    fn mode_of(&self, stored_path: bool) -> DataCompression {
        match self.params.data {
            _ if stored_path => DataCompression::None,
            m => m,
        }
    }

    /// Submits every file's jobs, then the last fragment block.
    fn run(&mut self, sub: &mut Submitter<'_, '_>) -> Result<()> {
        self.plan_fragment_sources();
        for fi in 0..self.order.len() {
            let InodeKind::File(content) = &self.tree.inode(self.order[fi].0).kind else {
                continue;
            };
            if content.size == 0 {
                continue;
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(stopped());
            }
            self.file(fi, content, sub)?;
        }
        if !self.frag_buf.is_empty() {
            self.submit_fragment(sub)?;
        }
        Ok(())
    }

    /// Counts `len` more content bytes read and reports progress.
    fn advance(&mut self, len: u64, fi: usize) -> Result<()> {
        let node = self.order[fi].1;
        self.read_total = add_size(self.read_total, len, || self.tree.path(node))?;
        (self.progress)(self.read_total);
        Ok(())
    }

    /// Hashes one file and submits its blocks and tail, or records it as a duplicate.
    fn file(&mut self, fi: usize, content: &Content, sub: &mut Submitter<'_, '_>) -> Result<()> {
        let bs = self.params.block_size as u64;
        let known = self
            .params
            .hashes
            .and_then(|h| h.get(self.order[fi].0 .0 as usize).copied().flatten());
        let (hash, inline) = match known {
            Some(h) => (h, None),
            None => hash_content(content)?,
        };
        if let Some(orig) = self.seen.get(&(content.size, hash)) {
            self.dups.push((fi, *orig));
            return self.advance(content.size, fi);
        }
        self.seen.insert((content.size, hash), fi);
        let size = content.size;
        let tail_len = if self.params.fragments { size % bs } else { 0 };
        let nblocks = (size - tail_len).div_ceil(bs);
        let mut reader: Box<dyn Read + Send + '_> = match &inline {
            Some(buf) => Box::new(&buf[..]),
            None => content
                .source
                .open()
                .map_err(|e| SqfsError::io(content.source.describe(), e))?,
        };
        let mut check = Sha256::new();
        let node = self.order[fi].1;
        let stored_path = self.is_stored_path(node);
        let mut mode = self.mode_of(stored_path);
        let source = self.block_source(content, mode);
        if let Some(src) = source
            .as_ref()
            .filter(|s| known.is_some() && self.params.fragments && all_copyable(s, nblocks))
        {
            return self.copied_file(fi, src, nblocks, hash, sub);
        }
        for b in 0..nblocks {
            let len = (size - b * bs).min(bs) as usize;
            let mut block = vec![0u8; len];
            reader
                .read_exact(&mut block)
                .map_err(|e| read_err(content, e))?;
            check.update(&block);
            self.advance(len as u64, fi)?;
            // A stored path's last short block (of several) is compressed when that shrinks it
            // (an image ends with zero padding).
            let short_last = stored_path && nblocks > 1 && b + 1 == nblocks && (len as u64) < bs;
            let payload = match copy_block(source.as_ref(), b, block, self.params)? {
                Ok(copied) => copied,
                Err(block) => self.payload(block, &mut mode, stored_path, short_last)?,
            };
            sub.submit(BlockJob {
                target: Target::Block { file: fi, index: b },
                payload,
            })?;
        }
        if tail_len > 0 {
            let mut t = vec![0u8; tail_len as usize];
            reader
                .read_exact(&mut t)
                .map_err(|e| read_err(content, e))?;
            check.update(&t);
            self.advance(tail_len, fi)?;
            self.tail(fi, &t, sub)?;
        }
        let mut extra = [0u8; 1];
        let more = reader.read(&mut extra).map_err(|e| read_err(content, e))?;
        if more != 0 || <[u8; 32]>::from(check.finalize()) != hash {
            return Err(SqfsError::changed_while_read(&content.source.describe()));
        }
        Ok(())
    }

    /// A file of known sha256 `hash` whose `nblocks` whole blocks may all be copied from `src`
    /// ([`all_copyable`]): each block's stored bytes are read once and decoded once (to check
    /// them, and because a block that decodes to zeros stays sparse, one the kernel would refuse
    /// is compressed here), the tail is packed, and the file's sha256 must equal `hash`. With a
    /// [`BlockCache`] that saw this very stored form checked, nothing is decoded: the stored
    /// bytes copied must then have the digest checked before. Either way the copied bytes are
    /// the ones checked, and the blocks written are those [`copy_block`] would give.
    fn copied_file(
        &mut self,
        fi: usize,
        src: &StoredFile<'_>,
        nblocks: u64,
        hash: [u8; 32],
        sub: &mut Submitter<'_, '_>,
    ) -> Result<()> {
        let bs = self.params.block_size as u64;
        let size = src.size();
        let changed = || SqfsError::changed_while_read(src.describe());
        let mut digest = StoredDigest::begin(src).ok_or_else(changed)?;
        let cache = self.params.cache;
        let verified = |stored: [u8; 32]| VerifiedFile {
            compressor: self.params.compressor.clone(),
            block_size: self.params.block_size,
            stored,
            content: hash,
        };
        // Checked earlier in the run: the digest the copied bytes must have.
        let expect = match cache {
            Some(c) if nblocks > 0 => src
                .stored_digest()?
                .filter(|d| c.is_verified(&verified(*d))),
            _ => None,
        };
        let mut check = Sha256::new();
        let mut all_copied = true;
        for b in 0..nblocks {
            let len = (size - b * bs).min(bs);
            let raw = src.raw_block(b as usize)?;
            digest.block(&raw);
            let compressed = src
                .block_sizes()
                .get(b as usize)
                .is_some_and(|s| s & BLOCK_UNCOMPRESSED == 0);
            let safe = passes_kernel_traps(self.params, &raw, compressed);
            let payload = if expect.is_some() && safe {
                Payload::Verified { raw, compressed }
            } else {
                let plain = src.decode_raw(b as usize, &raw)?;
                check.update(&plain);
                if plain.iter().all(|x| *x == 0) {
                    all_copied = false;
                    Payload::Sparse(len)
                } else if !safe {
                    all_copied = false;
                    Payload::Data(plain)
                } else {
                    Payload::Verified { raw, compressed }
                }
            };
            self.advance(len, fi)?;
            sub.submit(BlockJob {
                target: Target::Block { file: fi, index: b },
                payload,
            })?;
        }
        let tail = src.tail()?;
        if tail.len() as u64 != size - nblocks * bs {
            return Err(changed());
        }
        check.update(&tail);
        let stored = digest.finish(&tail);
        self.advance(tail.len() as u64, fi)?;
        if !tail.is_empty() {
            self.tail(fi, &tail, sub)?;
        }
        match expect {
            Some(d) if d != stored => return Err(changed()),
            Some(_) => {}
            None => {
                if <[u8; 32]>::from(check.finalize()) != hash {
                    return Err(changed());
                }
                if let (Some(c), true) = (cache, all_copied && nblocks > 0) {
                    c.add_verified(verified(stored));
                }
            }
        }
        Ok(())
    }

    /// The input image `content` lies in, when its blocks may be copied into this image: every
    /// block is to be compressed (`mode` is [`DataCompression::All`], not a stored path) and the
    /// image's compressor id, block size and declared compressor options equal the output's.
    fn block_source<'c>(
        &self,
        content: &'c Content,
        mode: DataCompression,
    ) -> Option<StoredFile<'c>> {
        if mode != DataCompression::All {
            return None;
        }
        let src = StoredFile::of(content)?;
        src.same_settings(self.params.compressor, self.params.block_size)
            .then_some(src)
    }

    /// The payload of one full (or unfragmented last) block under compression `mode`; a probe
    /// compresses here and settles `mode` for the rest of the file. A stored path's full block is
    /// screened (compressed only when a fast trial shrinks it), its short last block (of several)
    /// compressed, a lone short block stored.
    fn payload(
        &self,
        block: Vec<u8>,
        mode: &mut DataCompression,
        stored_path: bool,
        short_last: bool,
    ) -> Result<Payload> {
        if block.iter().all(|b| *b == 0) {
            return Ok(Payload::Sparse(block.len() as u64));
        }
        let bs = self.params.block_size as usize;
        Ok(match *mode {
            DataCompression::All => Payload::Data(block),
            DataCompression::None if short_last => Payload::Data(block),
            DataCompression::None if stored_path && block.len() == bs => Payload::Screened(block),
            DataCompression::None => Payload::Stored(block),
            DataCompression::Probe => match self.params.compression().compress(&block)? {
                Some(z) => {
                    *mode = DataCompression::All;
                    Payload::Packed(z)
                }
                None => {
                    *mode = DataCompression::None;
                    Payload::Stored(block)
                }
            },
        })
    }

    /// Places a file's tail: in the input fragment block it lies in when that block is copied
    /// ([`FragmentSources`]), else packed into the current fragment block, first submitting
    /// that block when the tail does not fit.
    fn tail(&mut self, fi: usize, t: &[u8], sub: &mut Submitter<'_, '_>) -> Result<()> {
        let what = || match &self.tree.inode(self.order[fi].0).kind {
            InodeKind::File(c) => c.source.describe(),
            _ => String::new(),
        };
        let params = self.params;
        let safe = |raw: &[u8], compressed: bool| passes_kernel_traps(params, raw, compressed);
        let next_frag = &mut self.next_frag;
        let mut emit = |raw: Vec<u8>, compressed: bool| -> Result<u32> {
            let index = take_index(next_frag)?;
            sub.submit(BlockJob {
                target: Target::Fragment { index },
                payload: Payload::Verified { raw, compressed },
            })?;
            Ok(index)
        };
        if let Some(at) = self.sources.place(fi, t, &what, &safe, &mut emit)? {
            self.frag_of[fi] = Some(at);
            return Ok(());
        }
        let bs = self.params.block_size as usize;
        if self.frag_buf.len() + t.len() > bs {
            self.submit_fragment(sub)?;
        }
        self.frag_members.push((fi, self.frag_buf.len() as u32));
        self.frag_buf.extend_from_slice(t);
        Ok(())
    }

    /// Submits the current fragment block (numbered now) and starts the next one.
    fn submit_fragment(&mut self, sub: &mut Submitter<'_, '_>) -> Result<()> {
        let bs = self.params.block_size as usize;
        let full = std::mem::replace(&mut self.frag_buf, Vec::with_capacity(bs));
        let index = take_index(&mut self.next_frag)?;
        for (fi, offset) in self.frag_members.drain(..) {
            self.frag_of[fi] = Some((index, offset));
        }
        sub.submit(BlockJob {
            target: Target::Fragment { index },
            payload: Payload::Data(full),
        })
    }
}

/// Block `b` of a file (its bytes `block`) copied from the file's block source, or `block` back
/// when it is compressed as usual. A block is copied when the source has an entry `b` in its
/// block list (the same byte range, the block sizes being equal), that entry is not sparse, the
/// block is not all zeros (those stay sparse, by this writer's rule), and a compressed entry
/// passes the kernel traps ([`Compressor::kernel_safe_block`]). So a tail the source keeps in a
/// fragment is never copied, and a source's short last block only when this image also stores
/// that byte range as a block (no fragments). Which blocks are copied depends on the input image
/// and the parameters only.
fn copy_block(
    source: Option<&StoredFile<'_>>,
    b: u64,
    block: Vec<u8>,
    params: &BlockParams<'_>,
) -> Result<std::result::Result<Payload, Vec<u8>>> {
    let Some(src) = source else {
        return Ok(Err(block));
    };
    let Some(&s) = usize::try_from(b)
        .ok()
        .and_then(|i| src.block_sizes().get(i))
    else {
        return Ok(Err(block));
    };
    if s & !BLOCK_UNCOMPRESSED == 0 || block.iter().all(|x| *x == 0) {
        return Ok(Err(block));
    }
    let raw = src.raw_block(b as usize)?;
    let compressed = s & BLOCK_UNCOMPRESSED == 0;
    if !passes_kernel_traps(params, &raw, compressed) {
        return Ok(Err(block));
    }
    Ok(Ok(Payload::Copied {
        raw,
        compressed,
        plain: block,
        what: format!("{}: block {b}", src.describe()),
    }))
}

/// The next fragment table index, counted.
fn take_index(next: &mut u32) -> Result<u32> {
    let index = *next;
    *next = next.checked_add(1).ok_or_else(|| {
        SqfsError::Invalid(
            "more than 2^32 fragment blocks (write the image without fragments)".into(),
        )
    })?;
    Ok(index)
}

/// Whether a block stored as `raw` (`compressed` or not) may be copied into this image as it
/// is: a compressed one must pass the kernel traps ([`Compressor::kernel_safe_block`]).
fn passes_kernel_traps(params: &BlockParams<'_>, raw: &[u8], compressed: bool) -> bool {
    !compressed || params.compressor.kernel_safe_block(raw, params.block_size)
}

/// Whether every one of a file's `nblocks` whole blocks has a non-sparse entry in `src`'s block
/// list (so [`copy_block`] copies each one unless it decodes to zeros or fails the kernel traps).
fn all_copyable(src: &StoredFile<'_>, nblocks: u64) -> bool {
    src.full_blocks().is_some_and(|full| {
        full.len() as u64 == nblocks && full.iter().all(|s| s & !BLOCK_UNCOMPRESSED != 0)
    })
}

/// Writes finished jobs in sequence order and records where each block went (see the module
/// doc). Its first error stops the producer.
struct Emitter<'a, W> {
    out: &'a mut W,
    /// Absolute offset of the next byte written.
    pos: u64,
    files: Vec<FileData>,
    frags: Vec<FragmentEntry>,
    /// Data blocks copied from an input image so far.
    copied: u64,
    /// Data blocks compressed here so far.
    compressed: u64,
    err: Option<SqfsError>,
    stop: &'a AtomicBool,
}

impl<W: Write> Emitter<'_, W> {
    /// Receives finished jobs until all were written (or the producer hung up), handing a token
    /// back for each, also after an error, so a producer waiting for one wakes up and stops.
    fn run(&mut self, done: Receiver<Msg>, tokens: SyncSender<()>) {
        let mut pending: BTreeMap<u64, Finished> = BTreeMap::new();
        let mut next = 0u64;
        let mut total: Option<u64> = None;
        while total != Some(next) {
            match done.recv() {
                Ok(Msg::Done(d)) => {
                    pending.insert(d.seq, d);
                }
                Ok(Msg::End(t)) => total = Some(t),
                Err(_) => break,
            }
            while let Some(d) = pending.remove(&next) {
                next += 1;
                let _ = tokens.send(());
                if self.err.is_some() {
                    continue;
                }
                if let Err(e) = self.emit(d) {
                    self.err = Some(e);
                    self.stop.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Writes one finished job at the current position and records it.
    fn emit(&mut self, d: Finished) -> Result<()> {
        let Stored {
            bytes,
            compressed,
            sparse_len,
            origin,
        } = d.stored?;
        let here = self.pos;
        let size = bytes.len() as u32 | if compressed { 0 } else { BLOCK_UNCOMPRESSED };
        match d.target {
            Target::Block { file, index } => {
                let f = &mut self.files[file];
                if index == 0 {
                    f.blocks_start = here;
                }
                if sparse_len > 0 {
                    f.block_sizes.push(0);
                    f.sparse += sparse_len;
                    return Ok(());
                }
                f.block_sizes.push(size);
                match origin {
                    Origin::Copied => self.copied += 1,
                    Origin::Compressed => self.compressed += 1,
                    Origin::Stored => {}
                }
            }
            Target::Fragment { index } => {
                let index = index as usize;
                if self.frags.len() <= index {
                    self.frags
                        .resize(index + 1, FragmentEntry { start: 0, size: 0 });
                }
                self.frags[index] = FragmentEntry { start: here, size };
            }
        }
        self.out
            .write_all(&bytes)
            .map_err(|e| SqfsError::io(write_context(here), e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// What a failed data write was doing, with the next step.
fn write_context(at: u64) -> String {
    format!("writing image data at byte {at} (check that the output has room and is writable)")
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
        "{}: expected {} bytes, found {got} (file changed while it was being read; write the \
         image again once it is no longer being modified)",
        content.source.describe(),
        content.size
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::write::{write_image, WriterParams};
    use crate::tree::{ContentSource, Inode, Metadata};
    use std::io::{self, Seek, SeekFrom};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    const BS: usize = 4096;

    /// One block of incompressible bytes, different for each `seed` (xorshift64).
    fn noise(seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..BS / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    }

    /// File content whose reads add up in a counter shared by every file.
    struct Counted {
        data: Vec<u8>,
        read: Arc<AtomicU64>,
    }

    struct CountingReader<'a> {
        inner: &'a [u8],
        read: &'a AtomicU64,
    }

    impl Read for CountingReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.fetch_add(n as u64, Ordering::SeqCst);
            Ok(n)
        }
    }

    impl ContentSource for Counted {
        fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
            Ok(Box::new(CountingReader {
                inner: &self.data,
                read: &self.read,
            }))
        }
        fn describe(&self) -> String {
            "counted".into()
        }
    }

    /// An output that runs out of room after `room` bytes, noting how many content bytes had
    /// been read when its first write failed.
    struct FullDisk {
        room: u64,
        written: u64,
        read: Arc<AtomicU64>,
        read_at_failure: Option<u64>,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written + buf.len() as u64 > self.room {
                if self.read_at_failure.is_none() {
                    self.read_at_failure = Some(self.read.load(Ordering::SeqCst));
                }
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device",
                ));
            }
            self.written += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            match pos {
                SeekFrom::Start(n) => Ok(n),
                _ => Ok(self.written),
            }
        }
    }

    #[test]
    fn write_error_stops_the_producer() {
        let files = 400u64;
        let read = Arc::new(AtomicU64::new(0));
        let mut tree = Tree::new(Metadata {
            perm: 0o755,
            ..Default::default()
        });
        let root = tree.root();
        for i in 0..files {
            let content = Content {
                size: BS as u64,
                source: Arc::new(Counted {
                    data: noise(i),
                    read: read.clone(),
                }),
            };
            let inode = Inode {
                meta: Metadata {
                    perm: 0o644,
                    ..Default::default()
                },
                kind: InodeKind::File(content),
            };
            tree.add(root, format!("f{i:04}").as_bytes(), inode)
                .unwrap();
        }
        let jobs = 2;
        let mut params = WriterParams::new(Compressor::Gzip { level: 1 }, BS as u32, 0);
        params.jobs = jobs;
        let mut out = FullDisk {
            room: 20 * BS as u64,
            written: 0,
            read: read.clone(),
            read_at_failure: None,
        };
        let err = write_image(&tree, &params, &mut out, &|_| {}).unwrap_err();
        assert!(
            matches!(&err, SqfsError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull),
            "{err}"
        );
        let at_failure = out.read_at_failure.unwrap() / BS as u64;
        let total = read.load(Ordering::SeqCst) / BS as u64;
        assert!(
            at_failure >= 19,
            "{at_failure} blocks read before the failure"
        );
        // After the failure at most what the pipeline holds is read, far less than the input.
        assert!(
            total - at_failure <= pipeline_depth(jobs) as u64,
            "{} blocks read after the failure",
            total - at_failure
        );
        assert!(total < files / 4, "{total} of {files} blocks read");
    }

    // ---- block sources ----

    use crate::squashfs::archive::Archive;
    use crate::squashfs::write::WriteReport;
    use std::io::Cursor;
    use std::sync::Mutex;

    /// Text-like bytes that xz shrinks, different for each `seed`.
    fn text(len: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("seed {seed} line {i} {}\n", i * seed % 977).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn meta(perm: u16) -> Metadata {
        Metadata {
            perm,
            ..Default::default()
        }
    }

    /// A tree of files `(name, content)` in the root.
    fn tree_of(files: &[(&str, Vec<u8>)]) -> Tree {
        let mut t = Tree::new(meta(0o755));
        let root = t.root();
        for (name, data) in files {
            let inode = Inode {
                meta: meta(0o644),
                kind: InodeKind::File(Content::from_bytes(data.clone())),
            };
            t.add(root, name.as_bytes(), inode).unwrap();
        }
        t
    }

    fn xz(level: u32, dict_size: u32, bcj_x86: bool) -> Compressor {
        Compressor::Xz {
            level,
            dict_size,
            bcj_x86,
        }
    }

    fn params(c: Compressor, bs: usize, jobs: usize) -> WriterParams {
        let mut p = WriterParams::new(c, bs as u32, 7);
        p.jobs = jobs;
        p
    }

    fn write(t: &Tree, p: &WriterParams) -> (Vec<u8>, WriteReport) {
        let mut out = Cursor::new(Vec::new());
        let r = write_image(t, p, &mut out, &|_| {}).unwrap();
        (out.into_inner(), r)
    }

    /// The tree of an image held in memory, its files read from the image.
    fn read(image: Vec<u8>) -> Tree {
        let a = Archive::from_image(Arc::new(image), "in.sqfs".into()).unwrap();
        a.read_tree().unwrap()
    }

    /// A file's path, content, stored block sizes and stored bytes of each block.
    type StoredView = (Vec<u8>, Vec<u8>, Vec<u32>, Vec<Vec<u8>>);

    /// Each file's [`StoredView`] in `t`.
    fn stored(t: &Tree) -> Vec<StoredView> {
        let mut v = Vec::new();
        for node in t.walk() {
            if let InodeKind::File(c) = &t.node_inode(node).kind {
                let s = StoredFile::of(c).unwrap();
                let raw = (0..s.block_sizes().len())
                    .map(|i| s.raw_block(i).unwrap())
                    .collect();
                v.push((
                    t.path(node),
                    c.read_all().unwrap(),
                    s.block_sizes().to_vec(),
                    raw,
                ));
            }
        }
        v
    }

    /// Files with full compressible blocks and tails, an all-zero (sparse) block, an
    /// incompressible block (stored uncompressed), and two identical files (dedup).
    fn sample() -> Tree {
        let mut mixed = text(BS, 1);
        mixed.extend(vec![0u8; BS]);
        mixed.extend(noise(2));
        mixed.extend(text(BS + 100, 3));
        tree_of(&[
            ("a", text(3 * BS + 17, 4)),
            ("b", mixed),
            ("c", text(200, 5)),
            ("d1", text(2 * BS + 5, 6)),
            ("d2", text(2 * BS + 5, 6)),
        ])
    }

    #[test]
    fn a_shared_cache_changes_no_byte_and_compresses_repeated_blocks_once() {
        let p = params(xz(6, BS as u32, true), BS, 2);
        let other = tree_of(&[("a", text(3 * BS + 17, 4)), ("z", text(BS + 9, 11))]);
        let alone = [write(&sample(), &p).0, write(&other, &p).0];
        let mut shared = p.clone();
        let cache = Arc::new(BlockCache::new(BlockCache::DEFAULT_CAP));
        shared.cache = Some(cache.clone());
        let first = write(&sample(), &shared).0;
        assert_eq!(cache.hits(), 0, "one image repeats no block it compresses");
        let second = write(&other, &shared).0;
        assert_eq!([first, second], alone, "the cache changed the bytes");
        // `a`'s three full blocks were compressed for the first image.
        assert_eq!(cache.hits(), 3);
        // A cache full at once only looks up: same bytes, nothing remembered.
        let mut tiny = p.clone();
        let empty = Arc::new(BlockCache::new(0));
        tiny.cache = Some(empty.clone());
        assert_eq!(write(&sample(), &tiny).0, alone[0]);
        assert_eq!(write(&sample(), &tiny).0, alone[0]);
        assert_eq!(empty.hits(), 0);
    }

    #[test]
    fn copied_blocks_appear_verbatim() {
        // The input is compressed at xz preset 0, the output asks for preset 6: the image does
        // not record the preset, so the blocks are copied, and they differ from what preset 6
        // makes of them.
        let (input, _) = write(&sample(), &params(xz(0, BS as u32, false), BS, 2));
        let t = read(input);
        let (out, r) = write(&t, &params(xz(6, BS as u32, false), BS, 2));
        let (fresh, fr) = write(&sample(), &params(xz(6, BS as u32, false), BS, 2));
        // a: 3 blocks, b: text, noise, text (the zero block is sparse), d1 (d2 shares it): 2.
        assert_eq!((r.copied_blocks, r.compressed_blocks), (8, 0), "{r:?}");
        assert_eq!(r.data_blocks, 8);
        assert_eq!(r.duplicates, 1);
        assert_eq!((fr.copied_blocks, fr.compressed_blocks), (0, 8), "{fr:?}");
        assert_ne!(out, fresh, "preset 0 and 6 blocks should differ");
        let (before, after) = (stored(&t), stored(&read(out)));
        assert_eq!(before, after);
        let b = &after.iter().find(|f| f.0 == b"b").unwrap().2;
        assert_eq!(b[1], 0, "the zero block stays sparse");
        assert!(
            b[2] & BLOCK_UNCOMPRESSED != 0,
            "the noise block stays stored"
        );
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn a_shared_cache_checks_a_copied_block_once() {
        let (input, _) = write(&sample(), &params(xz(0, BS as u32, false), BS, 2));
        let t = read(input);
        let p = params(xz(6, BS as u32, false), BS, 2);
        let alone = write(&t, &p).0;
        let mut shared = p.clone();
        let cache = Arc::new(BlockCache::new(BlockCache::DEFAULT_CAP));
        shared.cache = Some(cache.clone());
        let (first, r) = write(&t, &shared);
        assert_eq!(r.copied_blocks, 8);
        let before = cache.hits();
        assert_eq!(write(&t, &shared).0, first);
        // Every copied block was checked by the first write; the fragments repeat too.
        assert!(
            cache.hits() >= before + 8,
            "{} then {}",
            before,
            cache.hits()
        );
        assert_eq!(first, alone, "the cache changed the bytes");
    }

    #[test]
    fn other_parameters_compress_instead() {
        let (input, _) = write(&sample(), &params(xz(0, BS as u32, false), BS, 2));
        let t = read(input);
        for (what, p) in [
            ("bcj", params(xz(0, BS as u32, true), BS, 2)),
            ("dictionary", params(xz(0, 8192, false), 2 * BS, 2)),
            ("block size", params(xz(0, BS as u32, false), 2 * BS, 2)),
            ("compressor", params(Compressor::Zstd { level: 3 }, BS, 2)),
            ("gzip", params(Compressor::Gzip { level: 9 }, BS, 2)),
        ] {
            let (out, r) = write(&t, &p);
            assert_eq!(r.copied_blocks, 0, "{what}: {r:?}");
            assert!(r.compressed_blocks > 0, "{what}: {r:?}");
            let same: Vec<_> = stored(&read(out)).into_iter().map(|f| f.1).collect();
            let orig: Vec<_> = stored(&t).into_iter().map(|f| f.1).collect();
            assert_eq!(same, orig, "{what}");
        }
        // A dictionary that differs with the same block size also compresses again.
        let (input, _) = write(&sample(), &params(xz(0, 8192, false), 2 * BS, 2));
        let (_, r) = write(&read(input), &params(xz(0, BS as u32, false), 2 * BS, 2));
        assert_eq!(r.copied_blocks, 0, "{r:?}");
    }

    #[test]
    fn copying_is_the_same_for_any_jobs() {
        let (input, _) = write(&sample(), &params(xz(0, BS as u32, false), BS, 2));
        let t = read(input);
        let outs: Vec<_> = [1, 2, 5]
            .into_iter()
            .map(|j| write(&t, &params(xz(9, BS as u32, false), BS, j)))
            .collect();
        assert!(outs[0].1.copied_blocks == 8, "{:?}", outs[0].1);
        assert!(outs.iter().all(|o| o.0 == outs[0].0));
    }

    #[test]
    fn a_short_last_block_is_copied_only_where_it_stays_a_block() {
        let files = [("x", text(2 * BS + 300, 8)), ("y", text(BS + 1, 9))];
        let mut p = params(xz(6, BS as u32, false), BS, 2);
        p.fragments = false;
        let t = read(write(&tree_of(&files), &p).0);
        // Into an image with fragments: the short last blocks become fragment tails.
        let (out, r) = write(&t, &params(xz(6, BS as u32, false), BS, 2));
        assert_eq!((r.copied_blocks, r.compressed_blocks), (3, 0), "{r:?}");
        assert_eq!(r.fragment_blocks, 1);
        let back = stored(&read(out));
        assert_eq!(back[0].2.len(), 2);
        assert_eq!(back[0].1, files[0].1);
        // Into an image without fragments: every block, the short ones too, is copied.
        let (out, r) = write(&t, &p);
        assert_eq!((r.copied_blocks, r.compressed_blocks), (5, 0), "{r:?}");
        assert_eq!(stored(&read(out)), stored(&t));
    }

    /// A tree holding the root files `names` of `t` (their inodes, so the same content sources).
    fn subset(t: &Tree, names: &[&str]) -> Tree {
        let mut out = Tree::new(meta(0o755));
        let root = out.root();
        for name in names {
            let node = t.lookup(name.as_bytes()).unwrap();
            out.add(root, name.as_bytes(), t.node_inode(node).clone())
                .unwrap();
        }
        out
    }

    /// The stored bytes of the fragment block `name`'s tail lies in.
    fn fragment_of(t: &Tree, name: &str) -> Vec<u8> {
        let node = t.lookup(name.as_bytes()).unwrap();
        let InodeKind::File(c) = &t.node_inode(node).kind else {
            panic!("{name} is not a file");
        };
        let tail = StoredFile::of(c).unwrap().fragment_tail().unwrap();
        tail.block(name).unwrap().0
    }

    /// Fails unless each root file `(name, content)` of `files` has that content in `t`.
    fn assert_contents(t: &Tree, files: &[(String, Vec<u8>)]) {
        for (name, data) in files {
            let node = t.lookup(name.as_bytes()).unwrap();
            let InodeKind::File(c) = &t.node_inode(node).kind else {
                panic!("{name} is not a file")
            };
            assert_eq!(&c.read_all().unwrap(), data, "{name}");
        }
    }

    /// 40 small files of 300 bytes (4 KiB blocks: 13 tails per fragment block, 4 blocks).
    fn smalls() -> Vec<(String, Vec<u8>)> {
        (0..40)
            .map(|i| (format!("s{i:02}"), text(300, 100 + i)))
            .collect()
    }

    #[test]
    fn fragment_blocks_whose_every_tail_is_carried_are_copied() {
        let files = smalls();
        let named: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        let (input, ir) = write(&tree_of(&named), &params(xz(0, BS as u32, false), BS, 2));
        assert_eq!(ir.fragment_blocks, 4);
        let t = read(input);
        let p = params(xz(6, BS as u32, false), BS, 2);
        // Every file: every fragment block is copied, as it is stored.
        let (out, r) = write(&t, &p);
        assert_eq!(
            (r.fragment_blocks, r.copied_fragment_blocks),
            (4, 4),
            "{r:?}"
        );
        let back = read(out);
        assert_contents(&back, &files);
        for (name, _) in &files {
            assert_eq!(fragment_of(&back, name), fragment_of(&t, name), "{name}");
        }
        // The first block's 13 files and 5 of the second's: only the first is copied, the five
        // tails are packed (compressed here: their block differs from the input's).
        let names: Vec<&str> = files[..18].iter().map(|(n, _)| n.as_str()).collect();
        let part = subset(&t, &names);
        let (out, r) = write(&part, &p);
        assert_eq!(
            (r.fragment_blocks, r.copied_fragment_blocks),
            (2, 1),
            "{r:?}"
        );
        let back = read(out);
        assert_eq!(fragment_of(&back, "s00"), fragment_of(&t, "s00"));
        assert_ne!(fragment_of(&back, "s13"), fragment_of(&t, "s13"));
        assert_contents(&back, &files[..18]);
        // Other settings (zstd): nothing copied. Any thread count: the same bytes.
        let (_, r) = write(&t, &params(Compressor::Zstd { level: 3 }, BS, 2));
        assert_eq!(r.copied_fragment_blocks, 0);
        let one = write(&part, &params(xz(6, BS as u32, false), BS, 1)).0;
        let four = write(&part, &params(xz(6, BS as u32, false), BS, 4)).0;
        assert_eq!(one, four);
    }

    #[test]
    fn a_fragment_block_that_changes_while_read_fails_the_write() {
        let files = smalls();
        let named: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        let (input, _) = write(&tree_of(&named), &params(xz(0, BS as u32, false), BS, 2));
        let t = read(input.clone());
        let InodeKind::File(c) = &t.node_inode(t.lookup(b"s00").unwrap()).kind else {
            panic!()
        };
        let (_, start, _) = StoredFile::of(c)
            .unwrap()
            .fragment_tail()
            .unwrap()
            .block_key();
        // The first read of the block (hashing s00) is intact, the second (the copy's) not.
        let flaky = Flaky {
            bytes: input,
            at: start + 10,
            after: 1,
            reads: Mutex::new(0),
        };
        let a = Archive::from_image(Arc::new(flaky), "flaky.sqfs".into()).unwrap();
        let t = a.read_tree().unwrap();
        let mut out = Cursor::new(Vec::new());
        let p = params(xz(6, BS as u32, false), BS, 2);
        let e = write_image(&t, &p, &mut out, &|_| {}).unwrap_err();
        assert!(e.to_string().contains("flaky.sqfs"), "{e}");
    }

    #[test]
    fn a_stored_path_compresses_only_blocks_a_fast_trial_shrinks() {
        // `layer`: noise (stored), noise repeated within the block (compressed), noise again,
        // and a short last block of text (compressed, as before).
        let half = noise(21);
        let mut layer = noise(20);
        layer.extend_from_slice(&half[..BS / 2]);
        layer.extend_from_slice(&half[..BS / 2]);
        layer.extend(noise(22));
        layer.extend(text(300, 23));
        let t = tree_of(&[("layer", layer.clone()), ("other", text(3 * BS, 24))]);
        let mut p = params(xz(6, BS as u32, false), BS, 2);
        p.fragments = false;
        p.data = DataCompression::Probe;
        p.stored_paths = vec![b"layer".to_vec()];
        let (out, _) = write(&t, &p);
        let back = stored(&read(out.clone()));
        let sizes = &back.iter().find(|f| f.0 == b"layer").unwrap().2;
        let compressed: Vec<bool> = sizes.iter().map(|s| s & BLOCK_UNCOMPRESSED == 0).collect();
        assert_eq!(compressed, [false, true, false, true], "{sizes:?}");
        assert_eq!(back[0].1, layer);
        let other = &back.iter().find(|f| f.0 == b"other").unwrap().2;
        assert!(
            other.iter().all(|s| s & BLOCK_UNCOMPRESSED == 0),
            "{other:?}"
        );
        // Without the stored path, the probe stores the file after its first block did not
        // shrink: the repeated block too.
        p.stored_paths.clear();
        let back = stored(&read(write(&t, &p).0));
        let again = &back.iter().find(|f| f.0 == b"layer").unwrap().2;
        assert!(again[1] & BLOCK_UNCOMPRESSED != 0, "{again:?}");
        // Any thread count: the same bytes.
        p.stored_paths = vec![b"layer".to_vec()];
        p.jobs = 1;
        assert_eq!(write(&t, &p).0, out);
    }

    #[test]
    fn a_repack_copies_mksquashfs_blocks() {
        if !crate::squashfs::testkit::have("mksquashfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("big"), text(5 * BS + 9, 10)).unwrap();
        std::fs::write(src.join("small"), text(99, 11)).unwrap();
        let img = crate::squashfs::testkit::mksquashfs(
            &src,
            &dir.path().join("m.sqfs"),
            &["-comp", "xz", "-Xbcj", "x86", "-b", "4K"],
        );
        let t = read(std::fs::read(img).unwrap());
        let (out, r) = write(&t, &params(xz(6, BS as u32, true), BS, 2));
        // mksquashfs keeps the 9-byte tail of `big` as a sixth block; here it is a fragment.
        assert_eq!((r.copied_blocks, r.compressed_blocks), (5, 0), "{r:?}");
        let (before, after) = (stored(&t), stored(&read(out)));
        assert_eq!(before[0].2.len(), 6);
        assert_eq!(
            before[0].3[..5],
            after[0].3[..],
            "the full blocks are copied"
        );
        assert_eq!(before[0].1, after[0].1);
        assert_eq!(before[1].1, after[1].1);
    }

    /// An image whose reads of one range return corrupted bytes from the `after`-th read on
    /// (an input that changes between the producer's decoding and the block copy).
    struct Flaky {
        bytes: Vec<u8>,
        at: u64,
        after: usize,
        reads: Mutex<usize>,
    }

    impl crate::io::ReadAt for Flaky {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.bytes.read_exact_at(buf, offset)?;
            let end = offset + buf.len() as u64;
            if (offset..end).contains(&self.at) {
                let mut n = self.reads.lock().unwrap();
                *n += 1;
                if *n > self.after {
                    buf[(self.at - offset) as usize] ^= 0x55;
                }
            }
            Ok(())
        }
        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }
    }

    #[test]
    fn a_copied_block_that_does_not_decode_to_the_file_is_refused() {
        for c in [xz(6, BS as u32, false), Compressor::Zstd { level: 3 }] {
            for stored_block in [false, true] {
                let data = if stored_block {
                    noise(12)
                } else {
                    text(BS, 12)
                };
                let (input, _) = write(&tree_of(&[("f", data)]), &params(c.clone(), BS, 2));
                let s = stored(&read(input.clone()));
                let raw = &s[0].3[0];
                let start = input.windows(raw.len()).position(|w| w == raw).unwrap() as u64;
                let len = raw.len() as u64;
                let image = Flaky {
                    bytes: input,
                    at: start + len / 2,
                    after: 1,
                    reads: Mutex::new(0),
                };
                let a = Archive::from_image(Arc::new(image), "in.sqfs".into()).unwrap();
                let t = a.read_tree().unwrap();
                let mut out = Cursor::new(Vec::new());
                let err = write_image(&t, &params(c.clone(), BS, 2), &mut out, &|_| {})
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(
                        "in.sqfs:/f: block 0: the block copied from the input image \
                         does not decode to the file's bytes"
                    ),
                    "{err}"
                );
            }
        }
    }

    // ---- known hashes, the batch's checked files, newest first ----

    use crate::squashfs::write::{write_image_hashed, DataOrder};

    /// Each inode's sha256, as a diff layer's writer gets them.
    fn hashes_of(t: &Tree) -> Vec<Option<[u8; 32]>> {
        crate::tree::content_hashes(t, &|_| {}).unwrap()
    }

    fn write_hashed(
        t: &Tree,
        hashes: &[Option<[u8; 32]>],
        p: &WriterParams,
    ) -> Result<(Vec<u8>, WriteReport)> {
        let mut out = Cursor::new(Vec::new());
        let r = write_image_hashed(t, Some(hashes), p, &mut out, &|_| {})?;
        Ok((out.into_inner(), r))
    }

    /// The inode of the file `name` in the root of `t`.
    fn inode_of(t: &Tree, name: &[u8]) -> usize {
        let root = t.root();
        let n = t
            .node(root)
            .children
            .iter()
            .find(|c| t.node(**c).name == name);
        t.node(*n.unwrap()).inode.0 as usize
    }

    #[test]
    fn known_hashes_change_no_byte_and_a_checked_file_is_decoded_once_per_run() {
        let (input, _) = write(&sample(), &params(xz(0, BS as u32, false), BS, 2));
        let t = read(input);
        let h = hashes_of(&t);
        let p = params(xz(6, BS as u32, false), BS, 2);
        let (alone, r) = write(&t, &p);
        let (known, kr) = write_hashed(&t, &h, &p).unwrap();
        assert_eq!(known, alone, "known hashes changed the bytes");
        assert_eq!(
            (kr.copied_blocks, kr.compressed_blocks),
            (r.copied_blocks, 0)
        );
        // A run: the second image takes the files checked by the first from the cache.
        let mut shared = p.clone();
        let cache = Arc::new(BlockCache::new(BlockCache::DEFAULT_CAP));
        shared.cache = Some(cache.clone());
        assert_eq!(write_hashed(&t, &h, &shared).unwrap().0, alone);
        let before = cache.hits();
        assert_eq!(write_hashed(&t, &h, &shared).unwrap().0, alone);
        // Taken from the cache: `a` and `d1` as checked files (every block copyable; `d2`
        // shares `d1`'s), `b`'s three copied blocks (it has a sparse entry, so its blocks are
        // checked one by one). The fragment block is copied from the input, not compressed.
        assert_eq!(cache.hits(), before + 5);
        // The same content stored otherwise (another input image) is not taken as checked.
        let (other, _) = write(&sample(), &params(xz(1, BS as u32, false), BS, 2));
        let t2 = read(other);
        let (alone2, _) = write(&t2, &p);
        assert_ne!(alone2, alone, "presets 0 and 1 should store other bytes");
        assert_eq!(
            write_hashed(&t2, &hashes_of(&t2), &shared).unwrap().0,
            alone2
        );
    }

    #[test]
    fn a_file_that_does_not_match_its_known_hash_fails_the_write() {
        let (input, _) = write(&sample(), &params(xz(0, BS as u32, false), BS, 2));
        let t = read(input);
        let p = params(xz(6, BS as u32, false), BS, 2);
        let mut shared = p.clone();
        shared.cache = Some(Arc::new(BlockCache::new(BlockCache::DEFAULT_CAP)));
        for name in [&b"a"[..], b"b", b"c"] {
            let mut h = hashes_of(&t);
            h[inode_of(&t, name)] = Some([7; 32]);
            for params in [&p, &shared] {
                let err = write_hashed(&t, &h, params).unwrap_err().to_string();
                assert!(err.contains("changed while it was being read"), "{err}");
            }
        }
    }

    #[test]
    fn newest_first_orders_data_by_mtime_then_path() {
        let mut t = Tree::new(meta(0o755));
        let root = t.root();
        for (name, mtime, seed) in [("a", 5, 21), ("b", 9, 22), ("c", 5, 23), ("d", 9, 24)] {
            let inode = Inode {
                meta: Metadata {
                    mtime,
                    ..meta(0o644)
                },
                kind: InodeKind::File(Content::from_bytes(text(BS + 10, seed))),
            };
            t.add(root, name.as_bytes(), inode).unwrap();
        }
        let mut p = params(xz(6, BS as u32, false), BS, 2);
        let position = |image: &[u8], name: &[u8]| {
            let back = read(image.to_vec());
            let f = stored(&back).into_iter().find(|f| f.0 == name).unwrap();
            let raw = &f.3[0];
            image
                .windows(raw.len())
                .position(|w| w == raw.as_slice())
                .unwrap()
        };
        let order = |image: &[u8]| {
            let mut names = [&b"a"[..], b"b", b"c", b"d"];
            names.sort_by_key(|n| position(image, n));
            names.map(|n| n[0] as char).iter().collect::<String>()
        };
        assert_eq!(order(&write(&t, &p).0), "abcd");
        p.order = DataOrder::NewestFirst;
        assert_eq!(order(&write(&t, &p).0), "bdac");
    }
}
