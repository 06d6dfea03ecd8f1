//! Lookup tables: fixed-size entries in metadata blocks followed by a list of the absolute start
//! of every block. The fragment table (16-byte entries), the id table (4), the export table (8) and
//! the xattr id table (16) all take this shape. Reader and writer.

use super::compress::Compressor;
use super::meta::{MetaReader, MetaWriter};
use super::{Result, SqfsError, META_SIZE};
use crate::corrupt;
use crate::io::ReadAt;

/// A fragment table entry: where a fragment block lies and its stored size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentEntry {
    /// Absolute offset of the fragment block.
    pub start: u64,
    /// Stored size; bit 24 set means stored uncompressed.
    pub size: u32,
}

impl FragmentEntry {
    /// The 16 on-disk bytes.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.start.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b
    }
    /// Decodes 16 bytes.
    pub fn decode(b: &[u8]) -> Result<FragmentEntry> {
        let mut r = super::Le::new(b, "fragment entry");
        Ok(FragmentEntry {
            start: r.u64()?,
            size: r.u32()?,
        })
    }
}

/// A serialized table: the metadata blocks then the lookup list.
pub struct TableBytes {
    /// Metadata blocks holding the entries, to be written at the position given to [`write`].
    pub blocks: Vec<u8>,
    /// The lookup list (absolute u64 block starts); its position is the table start.
    pub lookup: Vec<u8>,
}

/// Lays out `entries` (concatenated fixed-size entries) as a table whose first metadata block
/// will be written at absolute offset `at`.
pub fn write(entries: &[u8], comp: Option<&Compressor>, at: u64) -> Result<TableBytes> {
    let mut w = MetaWriter::new(comp.cloned());
    w.write(entries)?;
    let (blocks, starts) = w.finish()?;
    let lookup = starts.iter().flat_map(|s| (at + s).to_le_bytes()).collect();
    Ok(TableBytes { blocks, lookup })
}

/// A table opened for random access to its entries.
pub struct Table {
    starts: Vec<u64>,
    count: u64,
    entry_size: usize,
    end: u64,
}

impl Table {
    /// Opens a table of `count` entries of `entry_size` bytes whose lookup list is at `lookup_at`.
    /// Every metadata block must lie before `end`; the lookup list itself must lie in the image.
    pub fn open(
        image: &dyn ReadAt,
        what: &'static str,
        lookup_at: u64,
        count: u64,
        entry_size: usize,
        end: u64,
    ) -> Result<Table> {
        let too_large = || corrupt!("{what} of {count} entries of {entry_size} bytes is too large");
        let blocks = count
            .checked_mul(entry_size as u64)
            .ok_or_else(too_large)?
            .div_ceil(META_SIZE as u64);
        let bytes = blocks.checked_mul(8).ok_or_else(too_large)?;
        if lookup_at.checked_add(bytes).is_none_or(|e| e > image.len()) {
            return Err(corrupt!(
                "{what} of {count} entries: its lookup list of {bytes} bytes at {lookup_at} \
                 does not fit in the image of {} bytes",
                image.len()
            ));
        }
        let mut raw = vec![0u8; usize::try_from(bytes).map_err(|_| too_large())?];
        image
            .read_exact_at(&mut raw, lookup_at)
            .map_err(|e| SqfsError::io(what, e))?;
        let starts: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        for (i, pair) in starts.windows(2).enumerate() {
            if pair[1] <= pair[0] {
                return Err(corrupt!(
                    "{what}: block {} at {} does not follow block {i} at {} (lookup list at \
                     {lookup_at})",
                    i + 1,
                    pair[1],
                    pair[0]
                ));
            }
        }
        if let Some((i, s)) = starts.iter().enumerate().find(|(_, s)| **s >= end) {
            return Err(corrupt!(
                "{what}: block {i} at {s} lies past the end of the table's blocks at {end}"
            ));
        }
        Ok(Table {
            starts,
            count,
            entry_size,
            end,
        })
    }

    /// Number of entries.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Absolute starts of the table's metadata blocks, as its lookup list gives them.
    pub fn starts(&self) -> &[u64] {
        &self.starts
    }

    /// Absolute start of the table's first metadata block (the end of the table before it).
    pub fn first_block(&self) -> Option<u64> {
        self.starts.first().copied()
    }

    /// The raw bytes of entry `i`.
    pub fn entry(&self, meta: &MetaReader<'_>, what: &str, i: u64) -> Result<Vec<u8>> {
        if i >= self.count {
            return Err(corrupt!(
                "{what} index {i} out of range ({} entries)",
                self.count
            ));
        }
        // i < count, and count * entry_size was checked when the table was opened.
        let byte = i
            .checked_mul(self.entry_size as u64)
            .ok_or_else(|| corrupt!("{what} index {i} overflows"))?;
        let block = usize::try_from(byte / META_SIZE as u64)
            .map_err(|_| corrupt!("{what} index {i} overflows"))?;
        let offset = (byte % META_SIZE as u64) as usize;
        let start = *self.starts.get(block).ok_or_else(|| {
            corrupt!(
                "{what} index {i} lies in block {block}, past the {} blocks of the lookup list",
                self.starts.len()
            )
        })?;
        let (data, _) = meta.block(start, self.end)?;
        data.get(offset..offset + self.entry_size)
            .map(|s| s.to_vec())
            .ok_or_else(|| {
                corrupt!(
                    "{what} entry {i} lies past the end of the {}-byte block at {start}",
                    data.len()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_ids() {
        let ids: Vec<u8> = (0..3000u32).flat_map(|i| (i * 3).to_le_bytes()).collect();
        let comp = Compressor::Gzip { level: 9 };
        let at = 100u64;
        let t = write(&ids, Some(&comp), at).unwrap();
        let mut img = vec![0u8; at as usize];
        img.extend_from_slice(&t.blocks);
        let lookup_at = img.len() as u64;
        img.extend_from_slice(&t.lookup);
        let end = lookup_at;
        let table = Table::open(&img, "id table", lookup_at, 3000, 4, end).unwrap();
        let meta = MetaReader::new(&img, &comp);
        for i in [0u64, 1, 2047, 2048, 2999] {
            assert_eq!(
                table.entry(&meta, "id", i).unwrap(),
                ((i as u32) * 3).to_le_bytes()
            );
        }
        assert!(table.entry(&meta, "id", 3000).is_err());
        assert!(Table::open(&img, "id table", lookup_at, 30_000_000, 4, end).is_err());
    }
}
