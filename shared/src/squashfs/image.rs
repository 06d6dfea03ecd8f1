//! Random access to image bytes: a file, a buffer in memory, or a window of another image.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Positioned reads from an image. Implemented for files and in-memory buffers (tests, fuzzing).
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from `offset`; fails with `UnexpectedEof` past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// True when the image holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An image file with its length taken when it was opened.
pub struct FileImage {
    file: File,
    len: u64,
}

impl FileImage {
    /// Wraps an open file.
    pub fn new(file: File) -> io::Result<FileImage> {
        let len = file.metadata()?.len();
        Ok(FileImage { file, len })
    }
}

impl ReadAt for FileImage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            ));
        }
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|s| *s <= self.len());
        match start.and_then(|s| self.get(s..s.checked_add(buf.len())?)) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            )),
        }
    }
    fn len(&self) -> u64 {
        self.len() as u64
    }
}

/// A window of `len` bytes starting at `offset` inside another image, read without copying (a
/// SquashFS image embedded in an ISO, or an image cut to the size its superblock declares).
pub struct SubImage {
    inner: Arc<dyn ReadAt>,
    offset: u64,
    len: u64,
}

impl SubImage {
    /// The window `offset..offset + len` of `inner`; fails when it does not lie inside `inner`.
    pub fn new(inner: Arc<dyn ReadAt>, offset: u64, len: u64) -> io::Result<SubImage> {
        if offset.checked_add(len).is_none_or(|end| end > inner.len()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "window of {len} bytes at {offset} lies outside an image of {} bytes",
                    inner.len()
                ),
            ));
        }
        Ok(SubImage { inner, offset, len })
    }
}

impl ReadAt for SubImage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= self.len)
            .and_then(|_| offset.checked_add(self.offset))
        {
            Some(at) => self.inner.read_exact_at(buf, at),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            )),
        }
    }
    fn len(&self) -> u64 {
        self.len
    }
}
