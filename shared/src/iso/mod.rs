//! ISO 9660 reader (Rock Ridge, Joliet): files out of an ISO image without mounting.
//!
//! The kit builder lists the whole tree of a live-OS ISO (as written by
//! `xorriso -as mkisofs -R -J`, hybrid images included) and streams single files such as
//! `live/filesystem.squashfs` out of it. [`Iso::open`] reads the volume descriptors and every
//! directory extent once (never file data), so listing a 1.5 GB image costs a few sector reads;
//! [`Iso::open_file`] streams a file with positioned reads, and [`Iso::file_range`] hands out the
//! byte range of a contiguous file so a SquashFS reader can read the embedded image in place.
//!
//! # Why not a crate
//!
//! `cdfs` 0.2.3 panics on hostile input (its default `assertions` feature asserts on read counts
//! and symlink components, a non-UTF-8 symlink target hits `to_str().unwrap()`) and drags `clap`,
//! `fuser`, `nom` and `anyhow` in as normal dependencies. `hadris-iso` 3.0.0 is a release
//! candidate split over eight internal crates with its own I/O traits, and joins Rock Ridge names
//! and link targets into caller-sized fixed buffers. Neither fits "positioned reads on a `File`,
//! bounds-checked, no panic", so this module implements the small read-only subset itself with
//! no new dependency.
//!
//! # What is read
//!
//! * Volume descriptors from sector 16 on (whatever precedes them, MBR/GPT/El Torito system area
//!   of a hybrid image, is ignored). Only 2048-byte logical blocks are supported.
//! * The namespace is Rock Ridge when the root's `.` record carries a SUSP `SP` entry, else Joliet
//!   when a supplementary descriptor has a UCS-2 escape sequence (`%/@`, `%/C`, `%/E`), else plain
//!   ISO 9660 (version `;1` and a trailing `.` stripped, case kept).
//! * SUSP: `SP` (skip bytes), `CE` (continuation areas, each inside one block, at most
//!   [`MAX_CONTINUATIONS`] per record and four per entry overall), `ST`; `ER`/`ES`/`PD` are
//!   ignored. RRIP: `PX` (36 or 44 bytes), `NM` (joined across entries; `CURRENT`/`PARENT` on a
//!   real entry is an error), `SL` (components with `ROOT`/`CURRENT`/`PARENT` and continuation
//!   across components and entries), `TF` (modify time, short and long form), `RE` (relocated
//!   directory: skipped where it sits), `CL` (child link: the relocated directory is listed at its
//!   original place, with the attributes of its `.` record; the relocation directory itself, e.g.
//!   `rr_moved`, stays listed, empty, as the kernel shows it), `PL` (ignored), `ZF` (zisofs:
//!   listed, but [`Iso::open_file`] refuses it). `PN` device numbers and `AL`/`AA` extended
//!   attributes are ignored.
//! * Multi-extent files (several records of one name, all but the last flagged) are joined;
//!   physically adjacent extents are merged, so [`Iso::file_range`] still works for them.
//! * Associated files (ECMA-119 flag bit 2) are skipped; hidden files are listed.
//!
//! # Hostile input
//!
//! Every offset and length from the image is checked against the image size before it is read;
//! allocations are bounded by the reads they hold (directory extents are read in 64 KiB chunks).
//! Limits: directory depth [`MAX_DEPTH`], [`MAX_ENTRIES`] entries, 256 MiB of directory extents,
//! 256 MiB of name, path and link-target bytes, names of 1024 and paths and link targets of 4096 bytes.
//! A directory extent listed twice (a loop) and two entries of one name in one directory are
//! errors. Any violation is an [`IsoError`]; nothing panics.
//!
//! # Layout
//!
//! This module holds the public reader ([`Iso`], [`IsoEntry`], [`IsoFileReader`]), its errors and
//! limits; `volume` reads the volume descriptors and picks the namespace, `walk` lists the
//! directories, `susp` parses SUSP and Rock Ridge entries, `names` translates and checks names,
//! `time` converts timestamps.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod names;
mod susp;
mod time;
mod volume;
mod walk;

/// Deepest directory nesting below the root that [`Iso::open`] accepts.
pub const MAX_DEPTH: usize = 64;
/// Most entries (files, directories, links) [`Iso::open`] accepts in one tree.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Most SUSP continuation areas (`CE`) followed for one directory record.
pub const MAX_CONTINUATIONS: usize = 32;
/// Most SUSP continuation areas followed in one tree (a few per entry at most in real images).
const MAX_TOTAL_CONTINUATIONS: usize = 4 * MAX_ENTRIES;

/// Directory extents are read in chunks of this many bytes (a multiple of the 2048-byte sector).
const DIR_CHUNK: u64 = 64 * 1024;
/// Total directory extent bytes one tree may have.
const MAX_DIR_BYTES: u64 = 256 << 20;
/// Total bytes of paths and link targets one tree may have.
const MAX_NAME_BYTES: usize = 256 << 20;
/// Longest file name.
const MAX_NAME: usize = 1024;
/// Longest path (without leading slash) and symlink target.
const MAX_PATH: usize = 4096;

/// Errors of the ISO reader; every message names the image file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// Opening or reading the image failed.
    #[error("{}: {context}: {source}", .path.display())]
    Io {
        /// The image file.
        path: PathBuf,
        /// What was being done: opening the image, or reading which structure at which byte.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is no ISO 9660 image (too small, or no `CD001` descriptor at byte 32768).
    #[error("{}: not an ISO 9660 image: {reason}", .path.display())]
    NotIso {
        /// The file.
        path: PathBuf,
        /// Why it is not taken for an ISO image.
        reason: String,
    },
    /// A structure is inconsistent, lies outside the image, or exceeds a limit of this reader.
    #[error("{}: corrupt ISO 9660 image: {reason}", .path.display())]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// The image uses a feature this reader does not implement.
    #[error("{}: unsupported ISO 9660 feature: {reason}", .path.display())]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// The feature, and where it is used.
        reason: String,
    },
    /// [`Iso::open_file`] was given an entry that is no regular file.
    #[error("{}: {entry} is not a regular file", .path.display())]
    NotAFile {
        /// The image file.
        path: PathBuf,
        /// The entry's path in the image.
        entry: String,
    },
}

/// Which directory tree of the image an [`Iso`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// The primary volume's tree with Rock Ridge names, modes, owners, times and symlinks.
    RockRidge,
    /// The Joliet tree (UCS-2 names; no modes, owners or symlinks).
    Joliet,
    /// The primary volume's tree with plain ISO 9660 names (version and trailing dot stripped).
    Iso9660,
}

/// What an [`IsoEntry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsoKind {
    /// A regular file of `size` bytes.
    File {
        /// Length of the file's data.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link (Rock Ridge `SL`) with its target bytes.
    Symlink(Vec<u8>),
    /// A device node, FIFO or socket (Rock Ridge); `mode` holds its type bits.
    Special,
}

/// One file, directory or link of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    /// Path from the root, components joined by `/`, no leading slash.
    pub path: Vec<u8>,
    /// Type, with size or link target.
    pub kind: IsoKind,
    /// Rock Ridge `PX` mode including the file type bits.
    pub mode: Option<u32>,
    /// Rock Ridge `PX` link count.
    pub nlink: Option<u32>,
    /// Rock Ridge `PX` owner.
    pub uid: Option<u32>,
    /// Rock Ridge `PX` group.
    pub gid: Option<u32>,
    /// Modification time in seconds since the Unix epoch: Rock Ridge `TF`, else the record's date.
    pub mtime: Option<i64>,
    /// Byte ranges (offset, length) of a file's data in the image, adjacent extents merged.
    extents: Vec<(u64, u64)>,
    /// Why the data cannot be read by [`Iso::open_file`], if it cannot.
    unsupported: Option<&'static str>,
}

impl IsoEntry {
    /// The path as text (lossy for names that are not UTF-8), for messages.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// The size of a regular file; 0 for anything else.
    pub fn size(&self) -> u64 {
        match self.kind {
            IsoKind::File { size } => size,
            _ => 0,
        }
    }

    /// Appends a data extent, merging it with the previous one when they are adjacent; `None`
    /// when the file's size or the merged extent would not fit in 64 bits.
    fn add_extent(&mut self, start: u64, len: u64) -> Option<()> {
        if len == 0 {
            return Some(());
        }
        if let IsoKind::File { size } = &mut self.kind {
            *size = size.checked_add(len)?;
        }
        if let Some(last) = self.extents.last_mut() {
            if last.0.checked_add(last.1) == Some(start) {
                last.1 = last.1.checked_add(len)?;
                return Some(());
            }
        }
        self.extents.push((start, len));
        Some(())
    }

    /// Fails, naming the image `path`, if a data extent does not lie inside its `size` bytes.
    fn check_extents(&self, path: &Path, size: u64) -> Result<(), IsoError> {
        for &(start, len) in &self.extents {
            if start.checked_add(len).is_none_or(|end| end > size) {
                return Err(IsoError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!(
                        "data of {} at byte {start} (+{len}) lies beyond the image end ({size} bytes)",
                        self.display_path()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// An opened ISO 9660 image with its whole directory tree.
#[derive(Debug)]
pub struct Iso {
    /// The image file's path, for messages.
    path: PathBuf,
    /// The image, shared with the readers handed out.
    file: Arc<File>,
    /// Size of the image file in bytes.
    size: u64,
    /// The tree that was listed.
    namespace: Namespace,
    /// The tree, depth-first, children sorted by name.
    entries: Vec<IsoEntry>,
    /// Indices into `entries`, sorted by path, for [`Iso::find`].
    order: Vec<u32>,
}

impl Iso {
    /// Opens an image and lists its tree: Rock Ridge if present, else Joliet, else plain ISO 9660.
    pub fn open(path: &Path) -> Result<Iso, IsoError> {
        Iso::open_with(path, None)
    }

    /// Opens an image listing the given namespace, or the preferred one when `force` is `None`.
    fn open_with(path: &Path, force: Option<Namespace>) -> Result<Iso, IsoError> {
        let io_err = |context: &str| {
            let context = context.to_string();
            move |source| IsoError::Io {
                path: path.to_path_buf(),
                context,
                source,
            }
        };
        let file = File::open(path).map_err(io_err("cannot open the image"))?;
        let meta = file
            .metadata()
            .map_err(io_err("cannot read the image's metadata"))?;
        if !meta.is_file() {
            return Err(IsoError::NotIso {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        let size = meta.len();
        let image = Image {
            path,
            file: &file,
            size,
        };
        let (namespace, root, skip) = volume::select_root(&image, force)?;
        let entries = walk::list(&image, namespace, skip, root)?;
        let mut order: Vec<u32> = (0..entries.len())
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        order.sort_unstable_by(|&a, &b| entries[a as usize].path.cmp(&entries[b as usize].path));
        Ok(Iso {
            path: path.to_path_buf(),
            file: Arc::new(file),
            size,
            namespace,
            entries,
            order,
        })
    }

    /// The image file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace (directory tree) that was listed.
    pub fn namespace(&self) -> Namespace {
        self.namespace
    }

    /// The whole tree, depth-first, children sorted bytewise by name; the root is not included.
    pub fn entries(&self) -> &[IsoEntry] {
        &self.entries
    }

    /// Looks up an entry by path, e.g. `"live/filesystem.squashfs"`; leading and trailing slashes
    /// are ignored, names compare bytewise.
    pub fn find(&self, path: impl AsRef<[u8]>) -> Option<&IsoEntry> {
        let mut p = path.as_ref();
        while let [b'/', rest @ ..] = p {
            p = rest;
        }
        while let [rest @ .., b'/'] = p {
            p = rest;
        }
        let at = self
            .order
            .binary_search_by(|&i| self.entries[i as usize].path.as_slice().cmp(p))
            .ok()?;
        self.entries.get(*self.order.get(at)? as usize)
    }

    /// Opens a regular file for reading; the reader yields exactly its size in bytes.
    pub fn open_file(&self, entry: &IsoEntry) -> Result<IsoFileReader, IsoError> {
        if !matches!(entry.kind, IsoKind::File { .. }) {
            return Err(IsoError::NotAFile {
                path: self.path.clone(),
                entry: entry.display_path(),
            });
        }
        if let Some(why) = entry.unsupported {
            return Err(IsoError::Unsupported {
                path: self.path.clone(),
                reason: format!("{} is {why}", entry.display_path()),
            });
        }
        entry.check_extents(&self.path, self.size)?;
        Ok(IsoFileReader {
            file: Arc::clone(&self.file),
            image: self.path.clone(),
            entry: entry.display_path(),
            extents: entry.extents.clone(),
            index: 0,
            pos: 0,
        })
    }

    /// Byte offset and length of a regular file's data in the image when it is one contiguous
    /// range (`(0, 0)` for an empty file); `None` for fragmented, compressed or non-regular files.
    pub fn file_range(&self, entry: &IsoEntry) -> Option<(u64, u64)> {
        if !matches!(entry.kind, IsoKind::File { .. }) || entry.unsupported.is_some() {
            return None;
        }
        match entry.extents.as_slice() {
            [] => Some((0, 0)),
            &[(start, len)] if start.checked_add(len).is_some_and(|end| end <= self.size) => {
                Some((start, len))
            }
            _ => None,
        }
    }
}

/// Streams one file's data out of the image with positioned reads; `Send`, independent of the
/// [`Iso`] it came from. Reads end after exactly the file's size; an image that got shorter
/// since it was opened gives an `UnexpectedEof` error naming the image.
#[derive(Debug)]
pub struct IsoFileReader {
    /// The image.
    file: Arc<File>,
    /// The image's path, for messages.
    image: PathBuf,
    /// The file's path in the image, for messages.
    entry: String,
    /// Byte ranges of the data, in file order.
    extents: Vec<(u64, u64)>,
    /// The extent being read.
    index: usize,
    /// Bytes of that extent already returned.
    pos: u64,
}

impl Read for IsoFileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(start, len)) = self.extents.get(self.index) {
            let Some(left) = len.checked_sub(self.pos).filter(|&left| left > 0) else {
                self.index += 1;
                self.pos = 0;
                continue;
            };
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let Some(dest) = buf.get_mut(..want) else {
                return Ok(0);
            };
            if dest.is_empty() {
                return Ok(0);
            }
            let Some(at) = start.checked_add(self.pos) else {
                let msg = format!(
                    "{}: the data of {} at byte {start} (+{}) lies beyond any image",
                    self.image.display(),
                    self.entry,
                    self.pos
                );
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            };
            let n = loop {
                match self.file.read_at(dest, at) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let kind = e.kind();
                        let wrapped = IsoError::Io {
                            path: self.image.clone(),
                            context: format!("cannot read the data of {} at byte {at}", self.entry),
                            source: e,
                        };
                        return Err(io::Error::new(kind, wrapped));
                    }
                }
            };
            if n == 0 {
                let msg = format!(
                    "{}: the image ends before byte {at}, inside the data of {} (it got shorter \
                     after it was opened)",
                    self.image.display(),
                    self.entry
                );
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
            }
            self.pos += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// The image being opened: its file and size, with bounds-checked reads and the errors that name it.
struct Image<'a> {
    /// The image file's path, for messages.
    path: &'a Path,
    /// The image file.
    file: &'a File,
    /// Size of the image file in bytes.
    size: u64,
}

impl Image<'_> {
    /// A [`IsoError::Corrupt`] naming the image.
    fn corrupt(&self, reason: String) -> IsoError {
        IsoError::Corrupt {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// An [`IsoError::Unsupported`] naming the image.
    fn unsupported(&self, reason: String) -> IsoError {
        IsoError::Unsupported {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// Reads logical block `lba` after checking it lies inside the image.
    fn read_block(&self, lba: u32, what: impl Fn() -> String) -> Result<Vec<u8>, IsoError> {
        let offset = volume::block_offset(u64::from(lba)).ok_or_else(|| {
            self.corrupt(format!("{} at block {lba} lies beyond any image", what()))
        })?;
        self.read(offset, volume::SECTOR, what)
    }

    /// Reads `len` bytes at `offset` after checking they lie inside the image.
    fn read(
        &self,
        offset: u64,
        len: u64,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<u8>, IsoError> {
        let in_bounds = offset.checked_add(len).is_some_and(|end| end <= self.size);
        let Some(n) = usize::try_from(len).ok().filter(|_| in_bounds) else {
            return Err(self.corrupt(format!(
                "{} at byte {offset} (+{len}) lies beyond the image end ({} bytes)",
                what(),
                self.size
            )));
        };
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| IsoError::Io {
                path: self.path.to_path_buf(),
                context: format!("cannot read the {} at byte {offset} (+{len})", what()),
                source,
            })?;
        Ok(buf)
    }
}

#[cfg(test)]
mod testkit;

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::time::{Duration, Instant};

    #[test]
    fn rock_ridge_tree_matches_source() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        populate(&src, true);
        let image = tmp.path().join("out.iso");
        mkiso(&src, &image, &[]);
        let started = Instant::now();
        let iso = Iso::open(&image).unwrap();
        eprintln!(
            "listed {} entries in {:?}",
            iso.entries().len(),
            started.elapsed()
        );
        assert_eq!(iso.namespace(), Namespace::RockRidge);
        check_tree(&iso, &src, &[]);

        let squash = iso.find("/live/filesystem.squashfs/").unwrap();
        assert_eq!(squash.path, b"live/filesystem.squashfs");
        assert_eq!(squash.size(), 100_000);
        assert_eq!(squash.mode, Some(0o100_644));
        assert_eq!(iso.find("live").unwrap().mode, Some(0o040_750));
        assert_eq!(iso.find("suid").unwrap().mode, Some(0o104_755));
        assert!(iso.find("many").unwrap().nlink.is_some());
        assert!(iso.find("live/missing").is_none());
        assert!(iso.find("").is_none());
        let big = iso.find("big.bin").unwrap();
        assert_eq!(big.size(), 3 << 20);
        assert_eq!(iso.file_range(iso.find("empty").unwrap()), Some((0, 0)));
        assert_eq!(
            iso.find("links/long").unwrap().kind,
            IsoKind::Symlink(
                fs::read_link(src.join("links/long"))
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            )
        );
        let dir = iso.find("live").unwrap();
        let err = iso.open_file(dir).unwrap_err();
        assert!(matches!(err, IsoError::NotAFile { .. }), "{err}");
        assert!(
            err.to_string().contains("out.iso") && err.to_string().contains("live"),
            "{err}"
        );
        assert!(iso.file_range(dir).is_none());

        // A reader is Send and reads in small chunks exactly `size` bytes.
        let mut reader = iso.open_file(big).unwrap();
        let handle = std::thread::spawn(move || {
            let mut total = Vec::new();
            let mut buf = [0u8; 1000];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total.extend_from_slice(&buf[..n]);
            }
        });
        assert!(handle.join().unwrap() == fs::read(src.join("big.bin")).unwrap());
    }

    #[test]
    fn truncated_images_fail_cleanly() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        populate(&src, false);
        let image = tmp.path().join("full.iso");
        mkiso(&src, &image, &[]);
        let full = fs::read(&image).unwrap();
        let (whole, whole_data) = open_and_read(&image).unwrap();
        let mut cuts: Vec<usize> = (0..=64).map(|s| s * 2048).collect();
        let mut state = 42;
        cuts.extend((0..40).map(|_| (xorshift(&mut state) % full.len() as u64) as usize));
        let cut_path = tmp.path().join("cut.iso");
        let (mut ok, mut failed) = (0, 0);
        for cut in cuts.into_iter().filter(|&c| c < full.len()) {
            fs::write(&cut_path, &full[..cut]).unwrap();
            match open_and_read(&cut_path) {
                Ok((iso, data)) => {
                    assert_eq!(iso.entries(), whole.entries(), "cut at {cut}");
                    assert!(data == whole_data, "cut at {cut}");
                    ok += 1;
                }
                Err(msg) => {
                    assert!(msg.contains("cut.iso"), "{msg}");
                    failed += 1;
                }
            }
        }
        eprintln!("truncation: {ok} consistent, {failed} errors");
        assert!(failed > 0);

        // Truncated after opening: reads fail with UnexpectedEof instead of returning short data.
        let iso = Iso::open(&image).unwrap();
        let entry = iso.find("live/filesystem.squashfs").unwrap();
        let (start, _) = iso.file_range(entry).unwrap();
        File::options()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(start + 10)
            .unwrap();
        let mut data = Vec::new();
        let err = iso
            .open_file(entry)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("full.iso"), "{err}");
    }

    #[test]
    fn flipped_bytes_never_panic_or_hang() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        populate(&src, false);
        let image = tmp.path().join("fuzz.iso");
        mkiso(&src, &image, &[]);
        let original = fs::read(&image).unwrap();
        let file = File::options().write(true).open(&image).unwrap();
        let window = original.len().min(100 * 1024) as u64;
        // Sectors holding directory records or SUSP entries get most of the flips.
        let hot: Vec<u64> = (16..window / 2048)
            .filter(|&s| {
                let sector = &original[s as usize * 2048..(s as usize + 1) * 2048];
                s < 18 || sector.windows(2).any(|w| w == b"PX" || w == b"NM")
            })
            .collect();
        assert!(hot.len() > 4, "{hot:?}");
        let mut state = 0x1234_5678_9ABC_DEF1;
        let (mut ok, mut failed) = (0, 0);
        let mut slowest = Duration::ZERO;
        for i in 0..3000 {
            let flips: Vec<u64> = (0..1 + xorshift(&mut state) % 4)
                .map(|_| {
                    let r = xorshift(&mut state);
                    if i % 4 == 0 {
                        r % window
                    } else {
                        hot[(r % hot.len() as u64) as usize] * 2048 + (r >> 32) % 2048
                    }
                })
                .collect();
            for &at in &flips {
                let byte = [original[at as usize] ^ (1 + (xorshift(&mut state) % 255) as u8)];
                file.write_all_at(&byte, at).unwrap();
            }
            let started = Instant::now();
            for namespace in [Namespace::Joliet, Namespace::Iso9660] {
                if let Err(e) = Iso::open_with(&image, Some(namespace)) {
                    assert!(e.to_string().contains("fuzz.iso"), "{e}");
                }
            }
            match open_and_read(&image) {
                Ok(_) => ok += 1,
                Err(msg) => {
                    assert!(msg.contains("fuzz.iso"), "{msg}");
                    failed += 1;
                }
            }
            let took = started.elapsed();
            slowest = slowest.max(took);
            assert!(took < Duration::from_secs(2), "iteration {i} took {took:?}");
            for &at in &flips {
                file.write_all_at(&original[at as usize..at as usize + 1], at)
                    .unwrap();
            }
        }
        eprintln!("byte flips: {ok} opened, {failed} errors, slowest {slowest:?}");
        assert!(ok > 0 && failed > 0);
    }

    /// One seeded mutation of an image: bytes flipped or overwritten with extreme values in the
    /// sectors holding descriptors and directory records, or the image cut short.
    fn mutate(original: &[u8], hot: &[usize], state: &mut u64) -> (Vec<u8>, String) {
        let mut image = original.to_vec();
        let pick = |state: &mut u64| {
            let r = xorshift(state);
            if r.is_multiple_of(8) {
                (r >> 8) as usize % original.len()
            } else {
                hot[(r >> 8) as usize % hot.len()] * 2048 + (r >> 40) as usize % 2048
            }
        };
        match xorshift(state) % 4 {
            0 => {
                let at: Vec<usize> = (0..1 + xorshift(state) % 4).map(|_| pick(state)).collect();
                for &i in &at {
                    image[i] ^= 1 + (xorshift(state) % 255) as u8;
                }
                (image, format!("bytes flipped at {at:?}"))
            }
            1 | 2 => {
                // Block numbers, lengths and SUSP offsets at their extremes.
                let at = pick(state) & !1;
                let sectors = (original.len() / 2048) as u32;
                let value = [u32::MAX, 0x8000_0000, 0x7FFF_FFFF, sectors, sectors - 1, 0]
                    [(xorshift(state) % 6) as usize];
                let end = (at + 4).min(image.len());
                image[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
                (image, format!("{value:#x} written at byte {at}"))
            }
            _ => {
                let cut = (xorshift(state) % original.len() as u64) as usize;
                image.truncate(cut);
                (image, format!("cut at byte {cut}"))
            }
        }
    }

    /// Seeded mutations of a committed fixture (no xorriso needed). Every mutant either reads
    /// completely or is refused with an error naming it; nothing panics (the release profile
    /// checks arithmetic overflow) or hangs. Both counts are asserted, so a reader that refused
    /// everything would fail.
    #[test]
    fn fixture_mutations_read_or_are_refused() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/Tails-6.9.iso");
        let original = fs::read(&fixture).unwrap();
        open_and_read(&fixture).unwrap();
        // Descriptors, and the sectors holding Rock Ridge directory records.
        let hot: Vec<usize> = (16..original.len() / 2048)
            .filter(|&s| {
                let sector = &original[s * 2048..(s + 1) * 2048];
                s < 20 || sector.windows(2).any(|w| w == b"PX" || w == b"NM")
            })
            .collect();
        assert!(hot.len() > 4, "{hot:?}");
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("mutant.iso");
        let mut state = 0x0DDB_1A5E_5BAD_5EED;
        let (mut read, mut refused) = (0, 0);
        for i in 0..2000 {
            let (image, how) = mutate(&original, &hot, &mut state);
            fs::write(&path, image).unwrap();
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(|| {
                for namespace in [Namespace::Joliet, Namespace::Iso9660] {
                    if let Err(e) = Iso::open_with(&path, Some(namespace)) {
                        assert!(e.to_string().contains("mutant.iso"), "{e}");
                    }
                }
                open_and_read(&path).map(|_| ())
            });
            match outcome {
                Ok(Ok(())) => read += 1,
                Ok(Err(msg)) => {
                    assert!(msg.contains("mutant.iso"), "mutant {i} ({how}): {msg}");
                    refused += 1;
                }
                Err(_) => panic!("mutant {i} ({how}) panicked the reader"),
            }
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "mutant {i} ({how}) took {took:?}"
            );
        }
        eprintln!("fixture mutations: {read} read, {refused} refused");
        assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
    }
}
