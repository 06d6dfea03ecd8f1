//! Metadata blocks (8 KiB payloads behind a 16-bit header) and references into them.
//!
//! A header's low 15 bits give the stored size; bit 15 set means stored uncompressed. A
//! [`MetaRef`] addresses a byte as (start of its block relative to the table start, offset inside
//! the uncompressed block), packed on disk as `block << 16 | offset`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::compress::Compressor;
use super::{Result, SqfsError, META_SIZE};
use crate::corrupt;
use crate::io::ReadAt;

/// Header bit marking a metadata block stored uncompressed.
pub const UNCOMPRESSED: u16 = 0x8000;

/// A position inside a metadata table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MetaRef {
    /// Byte offset of the block's header from the table start.
    pub block: u64,
    /// Offset inside the uncompressed block (< 8192).
    pub offset: u16,
}

impl MetaRef {
    /// The on-disk packed form.
    pub fn pack(self) -> u64 {
        (self.block << 16) | self.offset as u64
    }
    /// Unpacks the on-disk form.
    pub fn unpack(v: u64) -> MetaRef {
        MetaRef {
            block: v >> 16,
            offset: (v & 0xFFFF) as u16,
        }
    }
}

/// Writes a metadata table: bytes in, compressed 8 KiB blocks out, in order.
pub struct MetaWriter {
    comp: Option<Compressor>,
    buf: Vec<u8>,
    out: Vec<u8>,
    block_starts: Vec<u64>,
}

impl MetaWriter {
    /// A writer compressing with `comp`, or storing every block uncompressed when `None`.
    pub fn new(comp: Option<Compressor>) -> MetaWriter {
        MetaWriter {
            comp,
            buf: Vec::with_capacity(META_SIZE),
            out: Vec::new(),
            block_starts: Vec::new(),
        }
    }

    /// Where the next byte written will be.
    pub fn position(&self) -> MetaRef {
        MetaRef {
            block: self.out.len() as u64,
            offset: self.buf.len() as u16,
        }
    }

    /// Appends bytes, emitting a block each time 8 KiB are buffered.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = (META_SIZE - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == META_SIZE {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.block_starts.push(self.out.len() as u64);
        let packed = match &self.comp {
            Some(c) => c.compress(&self.buf)?,
            None => None,
        };
        match packed {
            Some(z) => {
                self.out.extend_from_slice(&(z.len() as u16).to_le_bytes());
                self.out.extend_from_slice(&z);
            }
            None => {
                self.out
                    .extend_from_slice(&(self.buf.len() as u16 | UNCOMPRESSED).to_le_bytes());
                self.out.extend_from_slice(&self.buf);
            }
        }
        self.buf.clear();
        Ok(())
    }

    /// Flushes the last partial block; returns the table bytes and the start of every block.
    pub fn finish(mut self) -> Result<(Vec<u8>, Vec<u64>)> {
        self.flush()?;
        Ok((self.out, self.block_starts))
    }
}

/// A decoded block and the absolute offset of the block after it.
type CachedBlock = (Arc<Vec<u8>>, u64);

/// Reads metadata blocks of one image, caching decoded blocks.
pub struct MetaReader<'a> {
    image: &'a dyn ReadAt,
    comp: &'a Compressor,
    cache: Mutex<HashMap<u64, CachedBlock>>,
}

/// Cached blocks above this count are dropped (bounds memory on hostile or huge images).
const CACHE_LIMIT: usize = 4096;

impl<'a> MetaReader<'a> {
    /// A reader over `image` decompressing with `comp`.
    pub fn new(image: &'a dyn ReadAt, comp: &'a Compressor) -> MetaReader<'a> {
        MetaReader {
            image,
            comp,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Decodes the block whose header is at absolute offset `pos`, which must lie below `end`.
    /// Returns the payload and the absolute offset of the next block.
    pub fn block(&self, pos: u64, end: u64) -> Result<(Arc<Vec<u8>>, u64)> {
        if let Some((b, next)) = self.lock_cache()?.get(&pos) {
            if *next <= end {
                return Ok((b.clone(), *next));
            }
        }
        let header = u16::from_le_bytes(self.header(pos, end)?);
        let size = (header & !UNCOMPRESSED) as u64;
        // `header` checked that pos + 2 <= end; size <= 8192, so only a huge `end` could overflow.
        let next = pos
            .checked_add(2 + size)
            .ok_or_else(|| corrupt!("metadata block at {pos} overflows"))?;
        if size == 0 || size > META_SIZE as u64 || next > end {
            return Err(corrupt!(
                "metadata block at {pos} has stored size {size}: not in 1..={META_SIZE} or past \
                 the end of its table at {end}"
            ));
        }
        let mut raw = vec![0u8; size as usize];
        self.image
            .read_exact_at(&mut raw, pos + 2)
            .map_err(|e| SqfsError::io(format!("metadata block at {pos}"), e))?;
        let data = if header & UNCOMPRESSED != 0 {
            raw
        } else {
            self.comp
                .decompress(&raw, META_SIZE)
                .map_err(|e| corrupt!("metadata block at {pos}: {e}"))?
        };
        let data = Arc::new(data);
        let mut cache = self.lock_cache()?;
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(pos, (data.clone(), next));
        Ok((data, next))
    }

    /// The decoded-block cache.
    fn lock_cache(&self) -> Result<std::sync::MutexGuard<'_, HashMap<u64, CachedBlock>>> {
        self.cache.lock().map_err(|_| {
            corrupt!("metadata block cache poisoned: another thread panicked while reading it")
        })
    }

    fn header(&self, pos: u64, end: u64) -> Result<[u8; 2]> {
        if pos.checked_add(2).is_none_or(|e| e > end) {
            return Err(corrupt!("metadata block at {pos} lies outside its table"));
        }
        let mut h = [0u8; 2];
        self.image
            .read_exact_at(&mut h, pos)
            .map_err(|e| SqfsError::io(format!("metadata block at {pos}"), e))?;
        Ok(h)
    }

    /// Reads `len` bytes starting at `at` in the table beginning at absolute offset `table` and
    /// ending before `end`; returns them and the position after them. `len` is bounded by the
    /// caller (every structure's size is checked before it is read).
    pub fn read(
        &self,
        table: u64,
        end: u64,
        at: MetaRef,
        len: usize,
    ) -> Result<(Vec<u8>, MetaRef)> {
        let mut out = Vec::with_capacity(len.min(1 << 20));
        let mut cur = at;
        loop {
            let pos = table.checked_add(cur.block).ok_or_else(|| {
                corrupt!(
                    "metadata reference to block {} of the table at {table} overflows",
                    cur.block
                )
            })?;
            let (data, next) = self.block(pos, end)?;
            let off = cur.offset as usize;
            if off > data.len() || (off == data.len() && out.len() < len) {
                return Err(corrupt!(
                    "metadata reference offset {off} lies past the end of the {}-byte block at {pos}",
                    data.len()
                ));
            }
            // `block` returned next > pos >= table.
            let next_block = next
                .checked_sub(table)
                .ok_or_else(|| corrupt!("metadata block at {pos} ends before its table"))?;
            let take = (len - out.len()).min(data.len() - off);
            out.extend_from_slice(&data[off..off + take]);
            if out.len() == len {
                let mut after = MetaRef {
                    block: cur.block,
                    // Blocks decode to at most META_SIZE (8192) bytes.
                    offset: u16::try_from(off + take).map_err(|_| {
                        corrupt!("metadata block at {pos} holds more than {META_SIZE} bytes")
                    })?,
                };
                if off + take == data.len() && data.len() == META_SIZE {
                    after = MetaRef {
                        block: next_block,
                        offset: 0,
                    };
                }
                return Ok((out, after));
            }
            cur = MetaRef {
                block: next_block,
                offset: 0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_across_blocks() {
        let comp = Compressor::Zstd { level: 3 };
        let mut w = MetaWriter::new(Some(comp.clone()));
        let data: Vec<u8> = (0..30_000u32).map(|i| (i % 7) as u8).collect();
        w.write(&data[..100]).unwrap();
        let p = w.position();
        assert_eq!(
            p,
            MetaRef {
                block: 0,
                offset: 100
            }
        );
        w.write(&data[100..]).unwrap();
        let (table, starts) = w.finish().unwrap();
        assert_eq!(starts.len(), 4);
        let mut img = vec![0u8; 10];
        img.extend_from_slice(&table);
        let r = MetaReader::new(&img, &comp);
        let end = img.len() as u64;
        let (back, _) = r.read(10, end, MetaRef::default(), data.len()).unwrap();
        assert_eq!(back, data);
        let (mid, after) = r.read(10, end, p, 8092).unwrap();
        assert_eq!(mid, &data[100..8192]);
        assert_eq!(after.block, starts[1]);
        assert!(r.read(10, end, MetaRef::default(), data.len() + 1).is_err());
        assert!(r.read(10, end - 1, MetaRef::default(), data.len()).is_err());
    }

    #[test]
    fn incompressible_blocks_are_stored() {
        let mut w = MetaWriter::new(None);
        w.write(&[1, 2, 3]).unwrap();
        let (t, _) = w.finish().unwrap();
        assert_eq!(t, vec![3, 0x80, 1, 2, 3]);
        assert_eq!(
            MetaRef::unpack(
                MetaRef {
                    block: 0x1234,
                    offset: 77
                }
                .pack()
            )
            .offset,
            77
        );
    }
}
