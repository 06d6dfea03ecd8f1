//! Inodes of the inode table, basic and extended forms of every type: reader and writer.

use super::{Le, Result, INVALID_U32};
use crate::corrupt;

/// Inode type numbers (basic forms; the extended form is the basic + 7).
pub mod kind {
    /// Directory.
    pub const DIR: u16 = 1;
    /// Regular file.
    pub const FILE: u16 = 2;
    /// Symbolic link.
    pub const SYMLINK: u16 = 3;
    /// Block device.
    pub const BLKDEV: u16 = 4;
    /// Character device.
    pub const CHRDEV: u16 = 5;
    /// Named pipe.
    pub const FIFO: u16 = 6;
    /// Socket.
    pub const SOCKET: u16 = 7;
    /// Offset from a basic type to its extended form.
    pub const EXTENDED: u16 = 7;
}

/// Block-size entry bit: the block is stored uncompressed.
pub const BLOCK_UNCOMPRESSED: u32 = 1 << 24;
/// Largest symlink target the kernel reads (one page).
pub const MAX_SYMLINK: usize = 4096;

/// The header every inode starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeHeader {
    /// Type number (basic 1..=7 or extended 8..=14).
    pub kind: u16,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u16,
    /// Index of the owner in the id table.
    pub uid_idx: u16,
    /// Index of the group in the id table.
    pub gid_idx: u16,
    /// Modification time.
    pub mtime: u32,
    /// Inode number, 1..=inode count.
    pub number: u32,
}

/// An entry of an extended directory's index: where a header starting with `name` lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirIndex {
    /// Byte offset of the header from the start of the listing.
    pub index: u32,
    /// Start of the directory-table block holding that header, relative to the table.
    pub start: u32,
    /// Name of the first entry under that header.
    pub name: Vec<u8>,
}

/// Type-specific part of an inode. `xattr` is an xattr-id index or [`INVALID_U32`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeBody {
    /// A directory and where its listing lies.
    Dir {
        /// Directory-table block of the listing's start, relative to the table.
        block_start: u32,
        /// Link count (2 + subdirectories).
        nlink: u32,
        /// Listing size in bytes + 3.
        size: u32,
        /// Offset of the listing inside its block.
        offset: u16,
        /// Inode number of the parent (inode count + 1 for the root).
        parent: u32,
        /// Index entries (extended form only).
        index: Vec<DirIndex>,
        /// Xattr index.
        xattr: u32,
    },
    /// A regular file.
    File {
        /// Offset of the first data block in the image.
        blocks_start: u64,
        /// File size in bytes.
        size: u64,
        /// Bytes not stored because their blocks were all zero.
        sparse: u64,
        /// Link count.
        nlink: u32,
        /// Fragment index or [`INVALID_U32`].
        frag: u32,
        /// Offset of the tail inside its fragment block.
        frag_offset: u32,
        /// Xattr index.
        xattr: u32,
        /// On-disk size of every full block (bit 24: stored uncompressed; 0: sparse).
        block_sizes: Vec<u32>,
    },
    /// A symbolic link.
    Symlink {
        /// Link count.
        nlink: u32,
        /// Raw target bytes.
        target: Vec<u8>,
        /// Xattr index.
        xattr: u32,
    },
    /// A block (`block = true`) or character device.
    Device {
        /// Block rather than character device.
        block: bool,
        /// Link count.
        nlink: u32,
        /// Device number in the kernel's 32-bit `new_encode_dev` form.
        rdev: u32,
        /// Xattr index.
        xattr: u32,
    },
    /// A fifo or (`socket = true`) a socket.
    Ipc {
        /// Socket rather than fifo.
        socket: bool,
        /// Link count.
        nlink: u32,
        /// Xattr index.
        xattr: u32,
    },
}

/// A whole inode as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInode {
    /// Common header; `header.kind` says basic or extended.
    pub header: InodeHeader,
    /// Type-specific fields.
    pub body: InodeBody,
}

/// Encodes a `dev_t` as the kernel's 32-bit `new_encode_dev`. Fails for numbers it cannot hold.
pub fn encode_dev(rdev: u64) -> Option<u32> {
    let major = libc::major(rdev as libc::dev_t) as u64;
    let minor = libc::minor(rdev as libc::dev_t) as u64;
    if major > 0xfff || minor > 0xfffff {
        return None;
    }
    Some(((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)) as u32)
}

/// Decodes the kernel's 32-bit device encoding into a `dev_t`.
pub fn decode_dev(v: u32) -> u64 {
    let major = (v & 0xfff00) >> 8;
    let minor = (v & 0xff) | ((v >> 12) & 0xfff00);
    libc::makedev(major, minor) as u64
}

impl InodeBody {
    /// The basic type number of this body.
    pub fn basic_kind(&self) -> u16 {
        match self {
            InodeBody::Dir { .. } => kind::DIR,
            InodeBody::File { .. } => kind::FILE,
            InodeBody::Symlink { .. } => kind::SYMLINK,
            InodeBody::Device { block: true, .. } => kind::BLKDEV,
            InodeBody::Device { block: false, .. } => kind::CHRDEV,
            InodeBody::Ipc { socket: false, .. } => kind::FIFO,
            InodeBody::Ipc { socket: true, .. } => kind::SOCKET,
        }
    }

    /// Whether only the extended form can hold these fields (the writer uses the basic form
    /// otherwise, as mksquashfs does).
    pub fn needs_extended(&self) -> bool {
        match self {
            InodeBody::Dir {
                size, xattr, index, ..
            } => *size > 0xFFFF || *xattr != INVALID_U32 || !index.is_empty(),
            InodeBody::File {
                blocks_start,
                size,
                sparse,
                nlink,
                xattr,
                ..
            } => {
                *blocks_start > u32::MAX as u64
                    || *size > u32::MAX as u64
                    || *sparse != 0
                    || *nlink != 1
                    || *xattr != INVALID_U32
            }
            InodeBody::Symlink { xattr, .. }
            | InodeBody::Device { xattr, .. }
            | InodeBody::Ipc { xattr, .. } => *xattr != INVALID_U32,
        }
    }

    /// The xattr index (or [`INVALID_U32`]).
    pub fn xattr(&self) -> u32 {
        match self {
            InodeBody::Dir { xattr, .. }
            | InodeBody::File { xattr, .. }
            | InodeBody::Symlink { xattr, .. }
            | InodeBody::Device { xattr, .. }
            | InodeBody::Ipc { xattr, .. } => *xattr,
        }
    }

    /// The link count.
    pub fn nlink(&self) -> u32 {
        match self {
            InodeBody::Dir { nlink, .. }
            | InodeBody::File { nlink, .. }
            | InodeBody::Symlink { nlink, .. }
            | InodeBody::Device { nlink, .. }
            | InodeBody::Ipc { nlink, .. } => *nlink,
        }
    }
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

impl DiskInode {
    /// Encodes the inode; `header.kind` is set from the body (extended exactly when needed).
    pub fn encode(&self) -> Vec<u8> {
        let ext = self.body.needs_extended();
        let kind = self.body.basic_kind() + if ext { kind::EXTENDED } else { 0 };
        let h = &self.header;
        let mut b = Vec::with_capacity(64);
        put16(&mut b, kind);
        put16(&mut b, h.perm);
        put16(&mut b, h.uid_idx);
        put16(&mut b, h.gid_idx);
        put32(&mut b, h.mtime);
        put32(&mut b, h.number);
        match &self.body {
            InodeBody::Dir {
                block_start,
                nlink,
                size,
                offset,
                parent,
                index,
                xattr,
            } => {
                if ext {
                    put32(&mut b, *nlink);
                    put32(&mut b, *size);
                    put32(&mut b, *block_start);
                    put32(&mut b, *parent);
                    put16(&mut b, index.len() as u16);
                    put16(&mut b, *offset);
                    put32(&mut b, *xattr);
                    for i in index {
                        put32(&mut b, i.index);
                        put32(&mut b, i.start);
                        put32(&mut b, i.name.len() as u32 - 1);
                        b.extend_from_slice(&i.name);
                    }
                } else {
                    put32(&mut b, *block_start);
                    put32(&mut b, *nlink);
                    put16(&mut b, *size as u16);
                    put16(&mut b, *offset);
                    put32(&mut b, *parent);
                }
            }
            InodeBody::File {
                blocks_start,
                size,
                sparse,
                nlink,
                frag,
                frag_offset,
                xattr,
                block_sizes,
            } => {
                if ext {
                    put64(&mut b, *blocks_start);
                    put64(&mut b, *size);
                    put64(&mut b, *sparse);
                    put32(&mut b, *nlink);
                    put32(&mut b, *frag);
                    put32(&mut b, *frag_offset);
                    put32(&mut b, *xattr);
                } else {
                    put32(&mut b, *blocks_start as u32);
                    put32(&mut b, *frag);
                    put32(&mut b, *frag_offset);
                    put32(&mut b, *size as u32);
                }
                for s in block_sizes {
                    put32(&mut b, *s);
                }
            }
            InodeBody::Symlink {
                nlink,
                target,
                xattr,
            } => {
                put32(&mut b, *nlink);
                put32(&mut b, target.len() as u32);
                b.extend_from_slice(target);
                if ext {
                    put32(&mut b, *xattr);
                }
            }
            InodeBody::Device {
                nlink, rdev, xattr, ..
            } => {
                put32(&mut b, *nlink);
                put32(&mut b, *rdev);
                if ext {
                    put32(&mut b, *xattr);
                }
            }
            InodeBody::Ipc { nlink, xattr, .. } => {
                put32(&mut b, *nlink);
                if ext {
                    put32(&mut b, *xattr);
                }
            }
        }
        b
    }

    /// Decodes an inode. `read(n)` returns the next `n` bytes of the inode table (crossing metadata
    /// blocks as needed); `block_size` decides how many block sizes a file lists.
    pub fn decode(
        mut read: impl FnMut(usize) -> Result<Vec<u8>>,
        block_size: u32,
    ) -> Result<DiskInode> {
        let header = decode_header(&read(16)?)?;
        let ext = header.kind > kind::EXTENDED;
        let basic = if ext {
            header.kind - kind::EXTENDED
        } else {
            header.kind
        };
        let number = header.number;
        let mut fixed = |n: usize, what: &'static str| -> Result<Vec<u8>> {
            read(n).map_err(|e| corrupt!("{what} of inode {number}: {e}"))
        };
        let body = match (basic, ext) {
            (kind::DIR, false) => decode_dir(&mut fixed)?,
            (kind::DIR, true) => decode_ext_dir(&mut fixed, number)?,
            (kind::FILE, _) => decode_file(&mut fixed, ext, number, block_size)?,
            (kind::SYMLINK, _) => decode_symlink(&mut fixed, ext, number)?,
            (kind::BLKDEV | kind::CHRDEV, _) => {
                let b = fixed(if ext { 12 } else { 8 }, "device inode")?;
                let mut r = Le::new(&b, "device inode");
                let nlink = r.u32()?;
                let rdev = r.u32()?;
                let xattr = if ext { r.u32()? } else { INVALID_U32 };
                InodeBody::Device {
                    block: basic == kind::BLKDEV,
                    nlink,
                    rdev,
                    xattr,
                }
            }
            (kind::FIFO | kind::SOCKET, _) => {
                let b = fixed(if ext { 8 } else { 4 }, "ipc inode")?;
                let mut r = Le::new(&b, "ipc inode");
                let nlink = r.u32()?;
                let xattr = if ext { r.u32()? } else { INVALID_U32 };
                InodeBody::Ipc {
                    socket: basic == kind::SOCKET,
                    nlink,
                    xattr,
                }
            }
            _ => {
                return Err(corrupt!(
                    "inode {} has unknown type {}",
                    header.number,
                    header.kind
                ))
            }
        };
        Ok(DiskInode { header, body })
    }
}

/// Decodes and checks the 16-byte header of an inode.
fn decode_header(hb: &[u8]) -> Result<InodeHeader> {
    let mut r = Le::new(hb, "inode header");
    let header = InodeHeader {
        kind: r.u16()?,
        perm: r.u16()?,
        uid_idx: r.u16()?,
        gid_idx: r.u16()?,
        mtime: r.u32()?,
        number: r.u32()?,
    };
    if header.perm > 0o7777 {
        return Err(corrupt!(
            "inode {} has permission bits {:o} (above 7777)",
            header.number,
            header.perm
        ));
    }
    Ok(header)
}

/// Decodes the body of a basic directory inode; `fixed(n, what)` reads the next `n` bytes.
fn decode_dir(fixed: &mut impl FnMut(usize, &'static str) -> Result<Vec<u8>>) -> Result<InodeBody> {
    let b = fixed(16, "directory inode")?;
    let mut r = Le::new(&b, "directory inode");
    let block_start = r.u32()?;
    let nlink = r.u32()?;
    let size = r.u16()? as u32;
    let offset = r.u16()?;
    let parent = r.u32()?;
    Ok(InodeBody::Dir {
        block_start,
        nlink,
        size,
        offset,
        parent,
        index: Vec::new(),
        xattr: INVALID_U32,
    })
}

/// Decodes the body of an extended directory inode and its index.
fn decode_ext_dir(
    fixed: &mut impl FnMut(usize, &'static str) -> Result<Vec<u8>>,
    number: u32,
) -> Result<InodeBody> {
    let b = fixed(24, "extended directory inode")?;
    let mut r = Le::new(&b, "extended directory inode");
    let nlink = r.u32()?;
    let size = r.u32()?;
    let block_start = r.u32()?;
    let parent = r.u32()?;
    let count = r.u16()?;
    let offset = r.u16()?;
    let xattr = r.u32()?;
    let mut index = Vec::new();
    for _ in 0..count {
        let ib = fixed(12, "directory index")?;
        let mut r = Le::new(&ib, "directory index");
        let idx = r.u32()?;
        let start = r.u32()?;
        // Widened before adding: a stored length of u32::MAX cannot wrap.
        let len = u64::from(r.u32()?) + 1;
        if len > 256 {
            return Err(corrupt!(
                "extended directory inode {number}: index name of {len} bytes (at most 256)"
            ));
        }
        index.push(DirIndex {
            index: idx,
            start,
            name: fixed(len as usize, "directory index name")?,
        });
    }
    Ok(InodeBody::Dir {
        block_start,
        nlink,
        size,
        offset,
        parent,
        index,
        xattr,
    })
}

/// Decodes the body of a (basic or extended) file inode of inode `number` and its block list.
fn decode_file(
    fixed: &mut impl FnMut(usize, &'static str) -> Result<Vec<u8>>,
    ext: bool,
    number: u32,
    block_size: u32,
) -> Result<InodeBody> {
    let (blocks_start, size, sparse, nlink, frag, frag_offset, xattr) = if ext {
        let b = fixed(40, "extended file inode")?;
        let mut r = Le::new(&b, "extended file inode");
        (
            r.u64()?,
            r.u64()?,
            r.u64()?,
            r.u32()?,
            r.u32()?,
            r.u32()?,
            r.u32()?,
        )
    } else {
        let b = fixed(16, "file inode")?;
        let mut r = Le::new(&b, "file inode");
        let start = r.u32()? as u64;
        let frag = r.u32()?;
        let off = r.u32()?;
        let size = r.u32()? as u64;
        (start, size, 0, 1, frag, off, INVALID_U32)
    };
    let bs = block_size as u64;
    if bs == 0 {
        return Err(corrupt!("file inode {number}: block size 0"));
    }
    let count = if frag == INVALID_U32 {
        size.div_ceil(bs)
    } else {
        size / bs
    };
    // The list lives in the inode table: reading it fails as soon as the table runs out,
    // and `read` grows its buffer only as real bytes arrive.
    let bytes = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(4))
        .ok_or_else(|| corrupt!("file inode {number} has size {size}"))?;
    let list = fixed(bytes, "block list")?;
    let block_sizes = list
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(InodeBody::File {
        blocks_start,
        size,
        sparse,
        nlink,
        frag,
        frag_offset,
        xattr,
        block_sizes,
    })
}

/// Decodes the body of a (basic or extended) symlink inode of inode `number`.
fn decode_symlink(
    fixed: &mut impl FnMut(usize, &'static str) -> Result<Vec<u8>>,
    ext: bool,
    number: u32,
) -> Result<InodeBody> {
    let b = fixed(8, "symlink inode")?;
    let mut r = Le::new(&b, "symlink inode");
    let nlink = r.u32()?;
    let len = r.u32()? as usize;
    if len > MAX_SYMLINK {
        return Err(corrupt!("symlink inode {number} has a {len}-byte target"));
    }
    let target = fixed(len, "symlink target")?;
    let xattr = if ext {
        Le::new(&fixed(4, "symlink xattr")?, "symlink").u32()?
    } else {
        INVALID_U32
    };
    Ok(InodeBody::Symlink {
        nlink,
        target,
        xattr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(body: InodeBody) {
        let ino = DiskInode {
            header: InodeHeader {
                kind: 0,
                perm: 0o4755,
                uid_idx: 1,
                gid_idx: 2,
                mtime: u32::MAX,
                number: 9,
            },
            body,
        };
        let bytes = ino.encode();
        let (back, used) = decode_from(&bytes);
        let back = back.unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back.body, ino.body);
        assert_eq!(
            back.header.kind,
            ino.body.basic_kind() + if ino.body.needs_extended() { 7 } else { 0 }
        );
        for cut in 0..bytes.len() {
            assert!(
                decode_from(&bytes[..cut]).0.is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    /// Decodes an inode from a byte slice; returns the result and the bytes consumed.
    fn decode_from(bytes: &[u8]) -> (Result<DiskInode>, usize) {
        let mut pos = 0;
        let r = DiskInode::decode(
            |n| {
                let s = bytes
                    .get(pos..pos + n)
                    .ok_or_else(|| corrupt!("eof"))?
                    .to_vec();
                pos += n;
                Ok(s)
            },
            4096,
        );
        (r, pos)
    }

    #[test]
    fn every_form_roundtrips() {
        let x = INVALID_U32;
        roundtrip(InodeBody::Dir {
            block_start: 5,
            nlink: 3,
            size: 100,
            offset: 7,
            parent: 1,
            index: vec![],
            xattr: x,
        });
        roundtrip(InodeBody::Dir {
            block_start: 5,
            nlink: 3,
            size: 70000,
            offset: 7,
            parent: 1,
            index: vec![DirIndex {
                index: 8000,
                start: 300,
                name: b"zz".to_vec(),
            }],
            xattr: 4,
        });
        roundtrip(InodeBody::File {
            blocks_start: 96,
            size: 9000,
            sparse: 0,
            nlink: 1,
            frag: 0,
            frag_offset: 10,
            xattr: x,
            block_sizes: vec![100, 4096 | BLOCK_UNCOMPRESSED],
        });
        roundtrip(InodeBody::File {
            blocks_start: 1 << 33,
            size: 8193,
            sparse: 4096,
            nlink: 2,
            frag: x,
            frag_offset: 0,
            xattr: x,
            block_sizes: vec![0, 12, 1],
        });
        roundtrip(InodeBody::Symlink {
            nlink: 1,
            target: vec![b'a'; 300],
            xattr: x,
        });
        roundtrip(InodeBody::Symlink {
            nlink: 1,
            target: b"t".to_vec(),
            xattr: 0,
        });
        roundtrip(InodeBody::Device {
            block: true,
            nlink: 1,
            rdev: 0x1234,
            xattr: x,
        });
        roundtrip(InodeBody::Device {
            block: false,
            nlink: 2,
            rdev: 0,
            xattr: 3,
        });
        roundtrip(InodeBody::Ipc {
            socket: true,
            nlink: 1,
            xattr: x,
        });
        roundtrip(InodeBody::Ipc {
            socket: false,
            nlink: 1,
            xattr: 1,
        });
    }

    #[test]
    fn device_numbers() {
        for (maj, min) in [(0u32, 0u32), (1, 3), (8, 1), (259, 65536), (4095, 0xfffff)] {
            let d = libc::makedev(maj, min) as u64;
            assert_eq!(decode_dev(encode_dev(d).unwrap()), d);
        }
        assert!(encode_dev(libc::makedev(4096, 0) as u64).is_none());
    }
}
