//! The 96-byte SquashFS 4.0 superblock: reader and writer.

use super::{Le, Result, INVALID_U64, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::corrupt;

/// `hsqs` in little-endian.
pub const MAGIC: u32 = 0x7371_7368;
/// Size of the superblock on disk.
pub const SIZE: usize = 96;

/// Superblock flag bits.
pub mod flags {
    /// Inode table stored uncompressed.
    pub const UNCOMPRESSED_INODES: u16 = 0x0001;
    /// Data blocks stored uncompressed.
    pub const UNCOMPRESSED_DATA: u16 = 0x0002;
    /// Fragments stored uncompressed.
    pub const UNCOMPRESSED_FRAGMENTS: u16 = 0x0008;
    /// No tail-end fragments are used.
    pub const NO_FRAGMENTS: u16 = 0x0010;
    /// Files smaller than a block always go to fragments.
    pub const ALWAYS_FRAGMENTS: u16 = 0x0020;
    /// Duplicate files were deduplicated.
    pub const DUPLICATES: u16 = 0x0040;
    /// The export (NFS) table is present.
    pub const EXPORTABLE: u16 = 0x0080;
    /// Xattrs stored uncompressed.
    pub const UNCOMPRESSED_XATTRS: u16 = 0x0100;
    /// No xattrs in the image.
    pub const NO_XATTRS: u16 = 0x0200;
    /// Compressor options follow the superblock.
    pub const COMPRESSOR_OPTIONS: u16 = 0x0400;
    /// Id table stored uncompressed.
    pub const UNCOMPRESSED_IDS: u16 = 0x0800;
}

/// The superblock, field by field as on disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Superblock {
    /// Number of inodes.
    pub inode_count: u32,
    /// Image modification time (the declared epoch for our images).
    pub mod_time: u32,
    /// Data block size in bytes (a power of two, 4 KiB..1 MiB).
    pub block_size: u32,
    /// Number of fragment table entries.
    pub fragment_count: u32,
    /// Compressor id (1 gzip, 2 lzma, 3 lzo, 4 xz, 5 lz4, 6 zstd).
    pub compression_id: u16,
    /// log2 of the block size.
    pub block_log: u16,
    /// Flag bits, see [`flags`].
    pub flags: u16,
    /// Number of entries in the id table.
    pub id_count: u16,
    /// Format major version (4).
    pub version_major: u16,
    /// Format minor version (0).
    pub version_minor: u16,
    /// Metadata reference of the root directory inode.
    pub root_inode_ref: u64,
    /// Bytes used by the image, without the final padding.
    pub bytes_used: u64,
    /// Start of the id lookup table.
    pub id_table_start: u64,
    /// Start of the xattr id table header, or [`INVALID_U64`].
    pub xattr_id_table_start: u64,
    /// Start of the inode table.
    pub inode_table_start: u64,
    /// Start of the directory table.
    pub directory_table_start: u64,
    /// Start of the fragment lookup table.
    pub fragment_table_start: u64,
    /// Start of the export lookup table, or [`INVALID_U64`].
    pub export_table_start: u64,
}

impl Superblock {
    /// Encodes the superblock into its 96 on-disk bytes.
    pub fn encode(&self) -> [u8; SIZE] {
        let mut b = Vec::with_capacity(SIZE);
        for v in [
            MAGIC,
            self.inode_count,
            self.mod_time,
            self.block_size,
            self.fragment_count,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.compression_id,
            self.block_log,
            self.flags,
            self.id_count,
            self.version_major,
            self.version_minor,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.root_inode_ref,
            self.bytes_used,
            self.id_table_start,
            self.xattr_id_table_start,
            self.inode_table_start,
            self.directory_table_start,
            self.fragment_table_start,
            self.export_table_start,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut out = [0u8; SIZE];
        out.copy_from_slice(&b);
        out
    }

    /// Decodes and sanity-checks a superblock. `image_len` is the size of the file it came from.
    pub fn decode(buf: &[u8], image_len: u64) -> Result<Superblock> {
        let mut r = Le::new(buf, "superblock");
        if r.u32()? != MAGIC {
            return Err(corrupt!("not a SquashFS image (bad magic)"));
        }
        let sb = Superblock {
            inode_count: r.u32()?,
            mod_time: r.u32()?,
            block_size: r.u32()?,
            fragment_count: r.u32()?,
            compression_id: r.u16()?,
            block_log: r.u16()?,
            flags: r.u16()?,
            id_count: r.u16()?,
            version_major: r.u16()?,
            version_minor: r.u16()?,
            root_inode_ref: r.u64()?,
            bytes_used: r.u64()?,
            id_table_start: r.u64()?,
            xattr_id_table_start: r.u64()?,
            inode_table_start: r.u64()?,
            directory_table_start: r.u64()?,
            fragment_table_start: r.u64()?,
            export_table_start: r.u64()?,
        };
        if (sb.version_major, sb.version_minor) != (4, 0) {
            return Err(super::SqfsError::Unsupported(format!(
                "SquashFS version {}.{} (only 4.0 is supported)",
                sb.version_major, sb.version_minor
            )));
        }
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&sb.block_size)
            || !sb.block_size.is_power_of_two()
            || 1u32.checked_shl(sb.block_log as u32) != Some(sb.block_size)
        {
            return Err(corrupt!(
                "bad block size {} (log {})",
                sb.block_size,
                sb.block_log
            ));
        }
        if sb.bytes_used > image_len {
            return Err(corrupt!(
                "image truncated: superblock says {} bytes, file has {}",
                sb.bytes_used,
                image_len
            ));
        }
        let tables = [
            ("inode table", sb.inode_table_start),
            ("directory table", sb.directory_table_start),
            ("id table", sb.id_table_start),
        ];
        for (name, start) in tables {
            if start < SIZE as u64 || start >= sb.bytes_used {
                return Err(corrupt!("{name} start {start} outside the image"));
            }
        }
        if sb.inode_table_start >= sb.directory_table_start {
            return Err(corrupt!("inode table does not precede the directory table"));
        }
        for (name, start) in [
            ("xattr table", sb.xattr_id_table_start),
            ("export table", sb.export_table_start),
        ] {
            if start != INVALID_U64 && (start < SIZE as u64 || start >= sb.bytes_used) {
                return Err(corrupt!("{name} start {start} outside the image"));
            }
        }
        if sb.fragment_count > 0
            && (sb.fragment_table_start < SIZE as u64 || sb.fragment_table_start >= sb.bytes_used)
        {
            return Err(corrupt!("fragment table start outside the image"));
        }
        if sb.id_count == 0 {
            return Err(corrupt!("id table is empty"));
        }
        Ok(sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            inode_count: 3,
            mod_time: 1_700_000_000,
            block_size: 1 << 17,
            fragment_count: 1,
            compression_id: 4,
            block_log: 17,
            flags: flags::EXPORTABLE,
            id_count: 1,
            version_major: 4,
            version_minor: 0,
            root_inode_ref: 0x40,
            bytes_used: 4000,
            id_table_start: 3990,
            xattr_id_table_start: INVALID_U64,
            inode_table_start: 1000,
            directory_table_start: 2000,
            fragment_table_start: 3000,
            export_table_start: 3500,
        }
    }

    #[test]
    fn roundtrip() {
        let sb = sample();
        let bytes = sb.encode();
        assert_eq!(&bytes[..4], b"hsqs");
        assert_eq!(Superblock::decode(&bytes, 4096).unwrap(), sb);
    }

    #[test]
    fn refuses_bad_fields() {
        let sb = sample();
        assert!(Superblock::decode(&sb.encode(), 3999).is_err());
        let mut bad = sb.clone();
        bad.block_log = 16;
        assert!(Superblock::decode(&bad.encode(), 4096).is_err());
        let mut bad = sb.clone();
        bad.version_major = 3;
        assert!(Superblock::decode(&bad.encode(), 4096).is_err());
        assert!(Superblock::decode(&sb.encode()[..50], 4096).is_err());
    }
}
