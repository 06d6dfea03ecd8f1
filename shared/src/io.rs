//! Where input bytes come from: positioned reads of images and ISOs ([`ReadAt`]: a file, a buffer
//! in memory, or a window of another image) and whole-file reads with a size cap checked before
//! anything is allocated ([`read_capped`]). The format code (SquashFS, ISO 9660) sits on top of this
//! module and never opens files itself, as squashfs-tools-ng's `io/` sits outside `libsquashfs`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
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

/// Reads the whole file at `path`, refusing it when it holds more than `limit` bytes.
///
/// The size is checked on the open file before any allocation, and the read itself stops at
/// `limit + 1` bytes (a file that grows while it is read, or a special file whose size is not
/// known, is still bounded): a damaged or hostile file costs at most `limit` bytes of memory.
/// A file over the cap fails with [`io::ErrorKind::FileTooLarge`] and a message giving both sizes.
pub fn read_capped(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_capped_file(File::open(path)?, limit)
}

/// [`read_capped`] of a file already open (opened, say, without following links).
pub fn read_capped_file(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    if len > limit {
        return Err(too_large(len, limit));
    }
    read_capped_from(file, limit)
}

/// Reads `reader` to its end, refusing more than `limit` bytes (see [`read_capped`]).
pub fn read_capped_from(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than the {limit} bytes allowed"),
        ));
    }
    Ok(out)
}

/// [`read_capped`] for a text file: the bytes must be UTF-8.
pub fn read_capped_string(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn too_large(len: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("{len} bytes, more than the {limit} bytes allowed"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn capped_reads_take_files_up_to_the_cap_and_refuse_larger_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_capped(&p, 10).unwrap(), b"0123456789");
        let e = read_capped(&p, 9).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("10 bytes"), "{e}");
        assert_eq!(read_capped_string(&p, 10).unwrap(), "0123456789");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_capped_string(&p, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_huge_sparse_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(4 << 30).unwrap();
        let t = std::time::Instant::now();
        let e = read_capped(&p, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_reader_longer_than_the_cap_is_refused() {
        let mut v = Vec::new();
        v.write_all(&[7u8; 100]).unwrap();
        assert_eq!(read_capped_from(&v[..], 100).unwrap().len(), 100);
        assert_eq!(
            read_capped_from(&v[..], 99).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
    }
}
