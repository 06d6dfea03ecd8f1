//! Directory listings of the directory table: runs of up to 256 entries behind a header naming
//! the inode-table block and base inode number they share. Reader and writer.

use super::inode::DirIndex;
use super::meta::{MetaRef, MetaWriter};
use super::{Le, Result};
use crate::corrupt;

/// Most entries one header may cover.
pub const MAX_RUN: usize = 256;

/// One directory entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Entry name, 1..=256 bytes.
    pub name: Vec<u8>,
    /// Where the entry's inode lies in the inode table.
    pub inode_ref: MetaRef,
    /// The entry's inode number.
    pub number: u32,
    /// Basic inode type (1..=7), even when the inode is extended.
    pub kind: u16,
}

/// Where a written listing lies, for its directory inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// Position of the listing's first byte in the directory table.
    pub start: MetaRef,
    /// Listing size in bytes + 3 (the kernel counts `.` and `..`).
    pub size: u32,
    /// Index entries, one per header that starts in a later block than the previous indexed one.
    pub index: Vec<DirIndex>,
}

fn fits_run(first: &DirEntry, count: usize, e: &DirEntry) -> bool {
    let diff = e.number as i64 - first.number as i64;
    count < MAX_RUN
        && e.inode_ref.block == first.inode_ref.block
        && (-32768..=32767).contains(&diff)
}

/// Writes the listing of `entries` (already sorted bytewise by name) into the directory table.
/// Names must be 1 to 256 bytes long and the listing at most 4 GiB; errors say which limit was
/// passed (the caller adds the directory's path).
pub fn write_listing(table: &mut MetaWriter, entries: &[DirEntry]) -> Result<Listing> {
    if let Some(e) = entries.iter().find(|e| !(1..=256).contains(&e.name.len())) {
        return Err(super::SqfsError::Invalid(format!(
            "entry {:?} has a name of {} bytes; SquashFS stores names of 1 to 256 bytes \
             (rename or leave out the entry)",
            String::from_utf8_lossy(&e.name),
            e.name.len()
        )));
    }
    let past_4g = |what: &str| {
        super::SqfsError::Invalid(format!(
            "{what} passes 4 GiB, more than directory entries can address (split the tree into \
             several images)"
        ))
    };
    let start = table.position();
    let mut written = 0u64;
    let mut index = Vec::new();
    let mut last_block = start.block;
    let mut i = 0;
    while i < entries.len() {
        let first = &entries[i];
        let mut n = 1;
        while i + n < entries.len() && fits_run(first, n, &entries[i + n]) {
            n += 1;
        }
        let here = table.position();
        if here.block != last_block {
            index.push(DirIndex {
                index: u32::try_from(written).map_err(|_| past_4g("the directory listing"))?,
                start: u32::try_from(here.block).map_err(|_| past_4g("the directory table"))?,
                name: first.name.clone(),
            });
            last_block = here.block;
        }
        let mut buf = Vec::with_capacity(12 + n * 24);
        buf.extend_from_slice(&(n as u32 - 1).to_le_bytes());
        let inode_block =
            u32::try_from(first.inode_ref.block).map_err(|_| past_4g("the inode table"))?;
        buf.extend_from_slice(&inode_block.to_le_bytes());
        buf.extend_from_slice(&first.number.to_le_bytes());
        for e in &entries[i..i + n] {
            buf.extend_from_slice(&e.inode_ref.offset.to_le_bytes());
            buf.extend_from_slice(&((e.number as i64 - first.number as i64) as i16).to_le_bytes());
            buf.extend_from_slice(&e.kind.to_le_bytes());
            buf.extend_from_slice(&(e.name.len() as u16 - 1).to_le_bytes());
            buf.extend_from_slice(&e.name);
        }
        table.write(&buf)?;
        written += buf.len() as u64;
        i += n;
    }
    let size = u32::try_from(written + 3).map_err(|_| {
        super::SqfsError::Invalid(format!(
            "directory listing of {} entries takes {written} bytes, more than the 4 GiB a \
             directory can hold (split the directory)",
            entries.len()
        ))
    })?;
    Ok(Listing { start, size, index })
}

/// Decodes a listing of `bytes` (exactly the directory's size − 3 bytes).
pub fn read_listing(bytes: &[u8]) -> Result<Vec<DirEntry>> {
    let mut r = Le::new(bytes, "directory listing");
    let mut out = Vec::new();
    while r.pos() < bytes.len() {
        let at = r.pos();
        // Widened before adding: a stored count of u32::MAX cannot wrap.
        let count = u64::from(r.u32()?) + 1;
        if count > MAX_RUN as u64 {
            return Err(corrupt!(
                "directory header at byte {at} of the listing claims {count} entries (at most \
                 {MAX_RUN})"
            ));
        }
        let block = r.u32()? as u64;
        let base = r.u32()?;
        for _ in 0..count {
            let offset = r.u16()?;
            let delta = r.u16()? as i16;
            let kind = r.u16()?;
            let len = r.u16()? as usize + 1;
            if len > 256 {
                return Err(corrupt!(
                    "directory entry name of {len} bytes in the run at byte {at} (at most 256)"
                ));
            }
            let name = r.bytes(len)?.to_vec();
            let number = base as i64 + delta as i64;
            let bad = if !(1..=u32::MAX as i64).contains(&number) {
                Some(format!("inode number {base} + {delta} = {number}"))
            } else if !(1..=7).contains(&kind) {
                Some(format!("type {kind}, not in 1..=7"))
            } else if offset as usize >= super::META_SIZE {
                Some(format!(
                    "inode offset {offset}, not below {}",
                    super::META_SIZE
                ))
            } else {
                None
            };
            if let Some(bad) = bad {
                return Err(corrupt!(
                    "bad directory entry {:?}: {bad}",
                    String::from_utf8_lossy(&name)
                ));
            }
            out.push(DirEntry {
                name,
                inode_ref: MetaRef { block, offset },
                number: number as u32,
                kind,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_and_roundtrip() {
        let entries: Vec<DirEntry> = (0..600u32)
            .map(|i| DirEntry {
                name: format!("entry-{i:05}-{}", "x".repeat((i % 40) as usize)).into_bytes(),
                inode_ref: MetaRef {
                    block: if i < 300 { 0 } else { 777 },
                    offset: (i % 8000) as u16,
                },
                number: if i == 599 { 100_000 } else { i + 1 },
                kind: 2,
            })
            .collect();
        let mut w = MetaWriter::new(None);
        w.write(&[0u8; 8000]).unwrap();
        let l = write_listing(&mut w, &entries).unwrap();
        assert_eq!(
            l.start,
            MetaRef {
                block: 0,
                offset: 8000
            }
        );
        assert!(!l.index.is_empty());
        let (table, _) = w.finish().unwrap();
        // Strip the uncompressed block headers to get the raw listing back.
        let mut raw = Vec::new();
        let mut p = 0;
        while p < table.len() {
            let n = (u16::from_le_bytes([table[p], table[p + 1]]) & 0x7fff) as usize;
            raw.extend_from_slice(&table[p + 2..p + 2 + n]);
            p += 2 + n;
        }
        let listing = &raw[8000..];
        assert_eq!(listing.len() as u32 + 3, l.size);
        assert_eq!(read_listing(listing).unwrap(), entries);
        for i in &l.index {
            // Each index entry points at a header whose first name is the index name.
            let at = &listing[i.index as usize..];
            let first_name_len = u16::from_le_bytes([at[18], at[19]]) as usize + 1;
            assert_eq!(&at[20..20 + first_name_len], &i.name[..]);
        }
        assert!(read_listing(&listing[..listing.len() - 1]).is_err());
    }

    #[test]
    fn bad_names_are_refused_with_the_entry_and_the_limit() {
        for len in [0usize, 257] {
            let e = DirEntry {
                name: vec![b'n'; len],
                inode_ref: MetaRef::default(),
                number: 1,
                kind: 2,
            };
            let err = write_listing(&mut MetaWriter::new(None), &[e])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("name of {len} bytes")), "{err}");
            assert!(err.contains("1 to 256"), "{err}");
        }
    }
}
