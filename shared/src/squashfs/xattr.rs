//! Extended attributes: the key/value table, the xattr id table, and their header. Reader and
//! writer.
//!
//! SquashFS stores only the `user.`, `trusted.` and `security.` namespaces, as a type number plus
//! the name without its prefix. A value already stored is referenced out of line (flag 0x0100)
//! instead of being repeated; identical attribute sets share one xattr id. Ids are handed out in
//! first-use order and keys are written sorted, so the table is a pure function of the inputs.

use std::collections::HashMap;

use super::compress::Compressor;
use super::meta::{MetaReader, MetaRef, MetaWriter};
use super::table::{self, Table};
use super::{Le, Result};
use crate::corrupt;
use crate::tree::Xattr;

/// Flag in the key type: the value is a reference to a value stored elsewhere.
pub const VALUE_OOL: u16 = 0x0100;
/// Most attributes one inode may carry when reading.
pub const MAX_COUNT: u32 = 65_536;
/// Largest value the reader accepts.
pub const MAX_VALUE: u32 = 1 << 20;
/// Most bytes (names and values) one attribute set may decode to: out-of-line values can make a
/// few stored bytes stand for many decoded ones.
pub const MAX_SET_BYTES: usize = 16 << 20;

const PREFIXES: [(&[u8], u16); 3] = [(b"user.", 0), (b"trusted.", 1), (b"security.", 2)];

/// Splits a full attribute name into (type, name without prefix), or `None` for namespaces
/// SquashFS cannot store (`system.` and others).
pub fn split_name(name: &[u8]) -> Option<(u16, &[u8])> {
    PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p) && name.len() > p.len())
        .map(|(p, t)| (*t, &name[p.len()..]))
}

/// True when SquashFS can store an attribute with this full name.
pub fn storable(name: &[u8]) -> bool {
    split_name(name).is_some()
}

/// One xattr id table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XattrId {
    /// Position of the first key in the key/value table.
    pub at: MetaRef,
    /// Number of attributes.
    pub count: u32,
    /// Bytes of the stored key/value pairs.
    pub size: u32,
}

/// Builds the xattr tables while inodes are written.
pub struct XattrWriter {
    kv: MetaWriter,
    ids: Vec<XattrId>,
    sets: HashMap<Vec<Xattr>, u32>,
    values: HashMap<Vec<u8>, MetaRef>,
}

impl XattrWriter {
    /// A writer compressing metadata with `comp`.
    pub fn new(comp: Option<Compressor>) -> XattrWriter {
        XattrWriter {
            kv: MetaWriter::new(comp),
            ids: Vec::new(),
            sets: HashMap::new(),
            values: HashMap::new(),
        }
    }

    /// The xattr index for `set` (sorted, unique, storable names), adding it on first use.
    pub fn add(&mut self, set: &[Xattr]) -> Result<u32> {
        if let Some(i) = self.sets.get(set) {
            return Ok(*i);
        }
        // An index must differ from the "no xattrs" marker.
        let idx = u32::try_from(self.ids.len())
            .ok()
            .filter(|i| *i != super::INVALID_U32)
            .ok_or_else(|| {
                super::SqfsError::Invalid(
                    "more than 2^32 - 1 distinct xattr sets (give the files fewer distinct \
                     attribute sets)"
                        .into(),
                )
            })?;
        let count = u32::try_from(set.len()).map_err(|_| {
            super::SqfsError::Invalid(format!(
                "a set of {} xattrs, more than 2^32 (leave attributes out)",
                set.len()
            ))
        })?;
        let at = self.kv.position();
        let mut size = 0u32;
        for x in set {
            let (t, name) = split_name(&x.name).ok_or_else(|| {
                super::SqfsError::Invalid(format!(
                    "xattr {:?} cannot be stored (SquashFS holds only the user., trusted. and \
                     security. namespaces; leave the attribute out)",
                    String::from_utf8_lossy(&x.name)
                ))
            })?;
            let too_large = |what: String| {
                super::SqfsError::Invalid(format!(
                    "xattr {:?}: {what} (leave the attribute out)",
                    String::from_utf8_lossy(&x.name)
                ))
            };
            let name_len = u16::try_from(name.len())
                .map_err(|_| too_large(format!("name of {} bytes, at most 65535", name.len())))?;
            let value_len = u32::try_from(x.value.len()).map_err(|_| {
                too_large(format!("value of {} bytes, at most 4 GiB", x.value.len()))
            })?;
            let mut b = Vec::with_capacity(16 + name.len() + x.value.len());
            let ool = if x.value.len() > 8 {
                self.values.get(&x.value).copied()
            } else {
                None
            };
            b.extend_from_slice(&(t | if ool.is_some() { VALUE_OOL } else { 0 }).to_le_bytes());
            b.extend_from_slice(&name_len.to_le_bytes());
            b.extend_from_slice(name);
            self.kv.write(&b)?;
            let value_at = self.kv.position();
            let mut v = Vec::with_capacity(12 + x.value.len());
            match ool {
                Some(r) => {
                    v.extend_from_slice(&8u32.to_le_bytes());
                    v.extend_from_slice(&r.pack().to_le_bytes());
                }
                None => {
                    v.extend_from_slice(&value_len.to_le_bytes());
                    v.extend_from_slice(&x.value);
                    if x.value.len() > 8 {
                        self.values.insert(x.value.clone(), value_at);
                    }
                }
            }
            self.kv.write(&v)?;
            size = u32::try_from(b.len() + v.len())
                .ok()
                .and_then(|n| size.checked_add(n))
                .ok_or_else(|| too_large("the attribute set takes more than 4 GiB".to_string()))?;
        }
        self.ids.push(XattrId { at, count, size });
        self.sets.insert(set.to_vec(), idx);
        Ok(idx)
    }

    /// True when no attribute set was added.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Serializes the tables to be written at absolute offset `at`: key/value blocks, id-entry
    /// blocks, then the header (whose position is the superblock's xattr table start) and lookup.
    /// Returns the bytes and the offset of the header.
    pub fn finish(self, comp: Option<&Compressor>, at: u64) -> Result<(Vec<u8>, u64)> {
        let (mut out, _) = self.kv.finish()?;
        let ids: Vec<u8> = self
            .ids
            .iter()
            .flat_map(|e| {
                let mut b = e.at.pack().to_le_bytes().to_vec();
                b.extend_from_slice(&e.count.to_le_bytes());
                b.extend_from_slice(&e.size.to_le_bytes());
                b
            })
            .collect();
        let t = table::write(&ids, comp, at + out.len() as u64)?;
        out.extend_from_slice(&t.blocks);
        let header_at = at + out.len() as u64;
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&t.lookup);
        Ok((out, header_at))
    }
}

/// The xattr tables of an opened image.
pub struct XattrReader {
    kv_start: u64,
    ids: Table,
}

impl XattrReader {
    /// Opens the tables whose header is at `header_at`; metadata must lie before `end`.
    pub fn open(image: &dyn crate::io::ReadAt, header_at: u64, end: u64) -> Result<XattrReader> {
        let header_end = header_at
            .checked_add(16)
            .filter(|e| *e <= end)
            .ok_or_else(|| {
                corrupt!(
                    "xattr table header at {header_at} lies past the end of the image at {end}"
                )
            })?;
        let mut h = [0u8; 16];
        image
            .read_exact_at(&mut h, header_at)
            .map_err(|e| super::SqfsError::io("xattr table header", e))?;
        let mut r = Le::new(&h, "xattr table header");
        let kv_start = r.u64()?;
        let count = r.u32()?;
        if kv_start >= header_at {
            return Err(corrupt!(
                "xattr key/value table starts at {kv_start}, not before its header at {header_at}"
            ));
        }
        let ids = Table::open(
            image,
            "xattr id table",
            header_end,
            count as u64,
            16,
            header_at,
        )?;
        Ok(XattrReader { kv_start, ids })
    }

    /// Number of xattr ids.
    pub fn count(&self) -> u64 {
        self.ids.count()
    }

    /// The xattr id table.
    pub fn id_table(&self) -> &Table {
        &self.ids
    }

    /// Absolute start of the key/value table.
    pub fn kv_start(&self) -> u64 {
        self.kv_start
    }

    /// The attributes of xattr id `idx`, with full names, sorted by name.
    pub fn get(&self, meta: &MetaReader<'_>, idx: u32, kv_end: u64) -> Result<Vec<Xattr>> {
        let e = self.ids.entry(meta, "xattr id", idx as u64)?;
        let mut r = Le::new(&e, "xattr id");
        let at = MetaRef::unpack(r.u64()?);
        let count = r.u32()?;
        if count > MAX_COUNT {
            return Err(corrupt!(
                "xattr id {idx} claims {count} attributes (at most {MAX_COUNT})"
            ));
        }
        let mut out = Vec::with_capacity(count.min(64) as usize);
        let mut pos = at;
        let mut total = 0usize;
        let read = |pos: &mut MetaRef, n: usize| -> Result<Vec<u8>> {
            let (b, next) = meta.read(self.kv_start, kv_end, *pos, n)?;
            *pos = next;
            Ok(b)
        };
        for _ in 0..count {
            let kb = read(&mut pos, 4)?;
            let mut kr = Le::new(&kb, "xattr key");
            let t = kr.u16()?;
            let len = kr.u16()? as usize;
            let name = read(&mut pos, len)?;
            let prefix = PREFIXES
                .iter()
                .find(|(_, pt)| *pt == t & !VALUE_OOL)
                .map(|(p, _)| *p)
                .ok_or_else(|| {
                    corrupt!(
                        "xattr id {idx}: attribute of unknown type {t:#x} (0 user, 1 trusted, \
                         2 security)"
                    )
                })?;
            let vsize = Le::new(&read(&mut pos, 4)?, "xattr value").u32()?;
            let value = if t & VALUE_OOL != 0 {
                if vsize != 8 {
                    return Err(corrupt!(
                        "xattr id {idx}: out-of-line value reference of {vsize} bytes, expected 8"
                    ));
                }
                let target =
                    MetaRef::unpack(Le::new(&read(&mut pos, 8)?, "xattr reference").u64()?);
                let (sb, after) = meta.read(self.kv_start, kv_end, target, 4)?;
                let real = Le::new(&sb, "xattr value").u32()?;
                if real > MAX_VALUE {
                    return Err(corrupt!(
                        "xattr id {idx}: value of {real} bytes (at most {MAX_VALUE})"
                    ));
                }
                meta.read(self.kv_start, kv_end, after, real as usize)?.0
            } else {
                if vsize > MAX_VALUE {
                    return Err(corrupt!(
                        "xattr id {idx}: value of {vsize} bytes (at most {MAX_VALUE})"
                    ));
                }
                read(&mut pos, vsize as usize)?
            };
            total = total.saturating_add(prefix.len() + name.len() + value.len());
            if total > MAX_SET_BYTES {
                return Err(corrupt!(
                    "xattr id {idx} holds more than {MAX_SET_BYTES} bytes"
                ));
            }
            let mut full = prefix.to_vec();
            full.extend_from_slice(&name);
            out.push(Xattr { name: full, value });
        }
        out.sort();
        Ok(out)
    }

    /// Absolute start of the xattr id table's first block (the end of the key/value table).
    pub fn kv_end(&self) -> u64 {
        self.ids.first_block().unwrap_or(self.kv_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(n: &str, v: &[u8]) -> Xattr {
        Xattr {
            name: n.as_bytes().to_vec(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn roundtrip_with_sharing_and_ool() {
        let comp = Compressor::Zstd { level: 3 };
        let mut w = XattrWriter::new(Some(comp.clone()));
        let cap = vec![1u8; 20];
        let a = vec![x("security.capability", &cap), x("user.a", b"1")];
        let b = vec![x("trusted.t", &cap), x("user.big", &vec![7u8; 9000])];
        assert_eq!(w.add(&a).unwrap(), 0);
        assert_eq!(w.add(&b).unwrap(), 1);
        assert_eq!(w.add(&a).unwrap(), 0);
        assert!(w.add(&[x("system.posix_acl_access", b"")]).is_err());
        let at = 64u64;
        let (bytes, header_at) = w.finish(Some(&comp), at).unwrap();
        let mut img = vec![0u8; at as usize];
        img.extend_from_slice(&bytes);
        let r = XattrReader::open(&img, header_at, img.len() as u64).unwrap();
        let meta = MetaReader::new(&img, &comp);
        assert_eq!(r.get(&meta, 0, r.kv_end()).unwrap(), a);
        let mut bs = b.clone();
        bs.sort();
        assert_eq!(r.get(&meta, 1, r.kv_end()).unwrap(), bs);
        assert!(r.get(&meta, 2, r.kv_end()).is_err());
    }

    #[test]
    fn namespaces() {
        assert_eq!(split_name(b"user.x"), Some((0, &b"x"[..])));
        assert_eq!(
            split_name(b"security.capability"),
            Some((2, &b"capability"[..]))
        );
        assert!(split_name(b"system.posix_acl_access").is_none());
        assert!(split_name(b"user.").is_none());
    }
}
