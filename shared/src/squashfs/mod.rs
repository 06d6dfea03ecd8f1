//! Deterministic SquashFS 4.0 reader and writer.
//!
//! One module per on-disk structure, with its reader and writer side by side (as squashfs-tools-ng's
//! libsquashfs): [`superblock`], [`meta`] (8 KiB metadata blocks and references), [`inode`], [`dir`],
//! [`table`] (the fragment, id, export and xattr-id lookup tables), [`xattr`], [`compress`]. The
//! [`write`] module lays out a whole image from a [`crate::tree::Tree`] (inodes and tables) with
//! [`blocks`] as its data path; [`archive`] opens one, [`read_tree`] walks it into a tree and
//! [`data`] reads file contents; [`check`] validates a whole image (every table and inode, and
//! with `check_deep` every data block).
//! Every byte written is a pure function of the tree and [`write::WriterParams`] (invariant 2).

pub mod archive;
pub mod blocks;
pub mod check;
pub mod compress;
pub mod data;
pub mod dir;
mod fragment_source;
pub mod inode;
pub mod inspect;
pub mod meta;
pub mod read_tree;
pub mod sortfile;
pub mod superblock;
pub mod table;
#[cfg(test)]
pub(crate) mod testkit;
pub mod write;
pub mod xattr;

use std::io;

/// Size of the uncompressed payload of a metadata block.
pub const META_SIZE: usize = 8192;
/// Smallest data block size the kernel mounts (one page).
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest data block size of the format.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Marker for "no fragment", "no xattrs" and absent tables.
pub const INVALID_U32: u32 = 0xFFFF_FFFF;
/// Marker for an absent table start.
pub const INVALID_U64: u64 = 0xFFFF_FFFF_FFFF_FFFF;

/// Errors of the SquashFS reader and writer. Reader errors say which structure was bad.
#[derive(Debug, thiserror::Error)]
pub enum SqfsError {
    /// An I/O error reading or writing the image or a source file.
    #[error("{context}: {source}")]
    Io {
        /// What was being read or written.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The image is not SquashFS 4.0, or a structure in it is inconsistent.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The image uses a feature this reader does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A writer parameter or input cannot be represented.
    #[error("{0}")]
    Invalid(String),
}

impl SqfsError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> SqfsError {
        SqfsError::Io {
            context: context.into(),
            source,
        }
    }

    /// The error of a file whose bytes changed while the writer read them (`what` names it).
    pub(crate) fn changed_while_read(what: &str) -> SqfsError {
        SqfsError::Invalid(format!(
            "{what}: file changed while it was being read (write the image again once it is no \
             longer being modified)"
        ))
    }
}

/// Shorthand for a [`SqfsError::Corrupt`] error built with `format!`.
#[macro_export]
macro_rules! corrupt {
    ($($arg:tt)*) => { $crate::squashfs::SqfsError::Corrupt(format!($($arg)*)) };
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, SqfsError>;

/// Little-endian field reader over a byte slice with bounds checks (never panics).
pub struct Le<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Le<'a> {
    /// Reads fields of structure `what` from `buf`.
    pub fn new(buf: &'a [u8], what: &'static str) -> Le<'a> {
        Le { buf, pos: 0, what }
    }
    /// Takes `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(corrupt!("{} truncated", self.what)),
        }
    }
    /// Reads a u16.
    pub fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// Reads a u32.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Reads a u64.
    pub fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }
}
