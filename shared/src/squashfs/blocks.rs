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
//! and its bytes as a [`Payload`] (to compress, to store, or already compressed).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use sha2::{Digest, Sha256};

use super::compress::Compressor;
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
    /// A block already compressed (by a probe, or copied from an input image).
    Packed(Vec<u8>),
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
}

impl Payload {
    /// Compresses (or passes through) the payload.
    fn finish(self, compressor: &Compressor) -> Result<Stored> {
        let (bytes, compressed, sparse_len) = match self {
            Payload::Sparse(len) => (Vec::new(), false, len),
            Payload::Data(d) => match compressor.compress(&d)? {
                Some(z) => (z, true, 0),
                None => (d, false, 0),
            },
            Payload::Stored(d) => (d, false, 0),
            Payload::Packed(z) => (z, true, 0),
        };
        Ok(Stored {
            bytes,
            compressed,
            sparse_len,
        })
    }
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
pub fn write_data<W: Write + Send>(
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
        err: None,
        stop: &stop,
    };
    let mut producer = Producer::new(tree, order, params, progress, &stop);

    let produced: Result<u64> = std::thread::scope(|ts| {
        let emitting = ts.spawn(|| emitter.run(done_rx, token_tx));
        // Every spawned job has been sent once `run` returns (the rayon scope waits for them).
        let result = pool.in_place_scope(|s| {
            let mut sub = Submitter {
                scope: s,
                tokens: &token_rx,
                done: done_tx,
                compressor: params.compressor,
                stop: &stop,
                seq: 0,
            };
            let result = producer.run(&mut sub).map(|()| sub.seq);
            if let Ok(total) = result {
                let _ = sub.done.send(Msg::End(total));
            }
            // `sub` and its sender are dropped here: after an error the emitter sees the end.
            result
        });
        let _ = emitting.join();
        result
    });
    // The emitter's failure comes first: it is why the producer stopped.
    if let Some(e) = emitter.err {
        return Err(e);
    }
    produced?;
    let mut files = emitter.files;
    finish_layout(tree, order, producer, &mut files).map(|(data_blocks, duplicates, bytes_in)| {
        DataLayout {
            files,
            fragments: emitter.frags,
            end: emitter.pos,
            data_blocks,
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
    compressor: &'scope Compressor,
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
        let compressor = self.compressor;
        self.scope.spawn(move |_| {
            let BlockJob { target, payload } = job;
            let stored = payload.finish(compressor);
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
    /// Index of the current fragment block.
    frag_count: u32,
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
            frag_count: 0,
        }
    }

    /// Submits every file's jobs, then the last fragment block.
    fn run(&mut self, sub: &mut Submitter<'_, '_>) -> Result<()> {
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
            let full = std::mem::take(&mut self.frag_buf);
            self.submit_fragment(full, sub)?;
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
        let (hash, inline) = hash_content(content)?;
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
        let stored_path = !self.params.stored_paths.is_empty()
            && self.params.stored_paths.contains(&self.tree.path(node));
        let mut mode = match self.params.data {
            DataCompression::None => DataCompression::None,
            _ if stored_path => DataCompression::None,
            m => m,
        };
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
            let payload = self.payload(block, &mut mode, short_last)?;
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
            return Err(SqfsError::Invalid(format!(
                "{}: file changed while it was being read (write the image again once it is \
                 no longer being modified)",
                content.source.describe()
            )));
        }
        Ok(())
    }

    /// The payload of one full (or unfragmented last) block under compression `mode`; a probe
    /// compresses here and settles `mode` for the rest of the file.
    fn payload(
        &self,
        block: Vec<u8>,
        mode: &mut DataCompression,
        short_last: bool,
    ) -> Result<Payload> {
        if block.iter().all(|b| *b == 0) {
            return Ok(Payload::Sparse(block.len() as u64));
        }
        Ok(match *mode {
            DataCompression::All => Payload::Data(block),
            DataCompression::None if short_last => Payload::Data(block),
            DataCompression::None => Payload::Stored(block),
            DataCompression::Probe => match self.params.compressor.compress(&block)? {
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

    /// Packs a file's tail into the current fragment block, first submitting that block when
    /// the tail does not fit.
    fn tail(&mut self, fi: usize, t: &[u8], sub: &mut Submitter<'_, '_>) -> Result<()> {
        let bs = self.params.block_size as usize;
        if self.frag_buf.len() + t.len() > bs {
            let full = std::mem::replace(&mut self.frag_buf, Vec::with_capacity(bs));
            self.submit_fragment(full, sub)?;
        }
        self.frag_of[fi] = Some((self.frag_count, self.frag_buf.len() as u32));
        self.frag_buf.extend_from_slice(t);
        Ok(())
    }

    /// Submits a full fragment block and moves on to the next one.
    fn submit_fragment(&mut self, full: Vec<u8>, sub: &mut Submitter<'_, '_>) -> Result<()> {
        sub.submit(BlockJob {
            target: Target::Fragment {
                index: self.frag_count,
            },
            payload: Payload::Data(full),
        })?;
        self.frag_count = self.frag_count.checked_add(1).ok_or_else(|| {
            SqfsError::Invalid(
                "more than 2^32 fragment blocks (write the image without fragments)".into(),
            )
        })?;
        Ok(())
    }
}

/// Writes finished jobs in sequence order and records where each block went (see the module
/// doc). Its first error stops the producer.
struct Emitter<'a, W> {
    out: &'a mut W,
    /// Absolute offset of the next byte written.
    pos: u64,
    files: Vec<FileData>,
    frags: Vec<FragmentEntry>,
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
}
