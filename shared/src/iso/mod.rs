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

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Deepest directory nesting below the root that [`Iso::open`] accepts.
pub const MAX_DEPTH: usize = 64;
/// Most entries (files, directories, links) [`Iso::open`] accepts in one tree.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Most SUSP continuation areas (`CE`) followed for one directory record.
pub const MAX_CONTINUATIONS: usize = 32;
/// Most SUSP continuation areas followed in one tree (a few per entry at most in real images).
const MAX_TOTAL_CONTINUATIONS: usize = 4 * MAX_ENTRIES;

/// Logical block size; the only one supported.
const SECTOR: u64 = 2048;
/// Volume descriptors start at this sector.
const FIRST_DESCRIPTOR: u64 = 16;
/// Volume descriptors examined before giving up on the terminator.
const MAX_DESCRIPTORS: u64 = 64;
/// Directory extents are read in chunks of this many bytes (a multiple of [`SECTOR`]).
const DIR_CHUNK: u64 = 64 * 1024;
/// Total directory extent bytes one tree may have.
const MAX_DIR_BYTES: u64 = 256 << 20;
/// Total bytes of paths and link targets one tree may have.
const MAX_NAME_BYTES: usize = 256 << 20;
/// Longest file name.
const MAX_NAME: usize = 1024;
/// Longest path (without leading slash) and symlink target.
const MAX_PATH: usize = 4096;

/// ECMA-119 file flags.
const FLAG_DIRECTORY: u8 = 0x02;
const FLAG_ASSOCIATED: u8 = 0x04;
const FLAG_MULTI_EXTENT: u8 = 0x80;

/// POSIX file type bits of a Rock Ridge `PX` mode.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// Errors of the ISO reader; every message names the image file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// Opening or reading the image failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The image file.
        path: PathBuf,
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

    /// Appends a data extent, merging it with the previous one when they are adjacent.
    fn add_extent(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        if let IsoKind::File { size } = &mut self.kind {
            *size = size.saturating_add(len);
        }
        if let Some(last) = self.extents.last_mut() {
            if last.0.checked_add(last.1) == Some(start) {
                last.1 = last.1.saturating_add(len);
                return;
            }
        }
        self.extents.push((start, len));
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
        let io_err = |source| IsoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(IsoError::NotIso {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        let size = meta.len();
        let mut walker = Walker {
            path,
            file: &file,
            size,
            namespace: Namespace::Iso9660,
            skip: 0,
            visited: HashSet::new(),
            entries: Vec::new(),
            name_bytes: 0,
            listed: 0,
            dir_bytes: 0,
            continuations: 0,
            cache: None,
        };
        let (primary, joliet) = walker.volume_descriptors()?;
        let susp = match force {
            None | Some(Namespace::RockRidge) => walker.susp_skip(primary)?,
            Some(_) => None,
        };
        let namespace = match (force, susp, &joliet) {
            (Some(namespace), _, _) => namespace,
            (None, Some(_), _) => Namespace::RockRidge,
            (None, None, Some(_)) => Namespace::Joliet,
            (None, None, None) => Namespace::Iso9660,
        };
        let root = match (namespace, susp, joliet) {
            (Namespace::RockRidge, Some(skip), _) => {
                walker.skip = skip;
                primary
            }
            (Namespace::RockRidge, None, _) => {
                return Err(walker.unsupported("the image has no Rock Ridge extensions".into()));
            }
            (Namespace::Joliet, _, Some(root)) => root?,
            (Namespace::Joliet, _, None) => {
                return Err(walker.unsupported("the image has no Joliet tree".into()));
            }
            (Namespace::Iso9660, _, _) => primary,
        };
        walker.namespace = namespace;
        walker.walk(root, &[], 0)?;
        let entries = walker.entries;
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
        for &(start, len) in &entry.extents {
            if start.checked_add(len).is_none_or(|end| end > self.size) {
                return Err(IsoError::Corrupt {
                    path: self.path.clone(),
                    reason: format!(
                        "data of {} at byte {start} (+{len}) lies beyond the image end ({} bytes)",
                        entry.display_path(),
                        self.size
                    ),
                });
            }
        }
        Ok(IsoFileReader {
            file: Arc::clone(&self.file),
            image: self.path.clone(),
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
            if self.pos >= len {
                self.index += 1;
                self.pos = 0;
                continue;
            }
            let want = usize::try_from(len - self.pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let Some(dest) = buf.get_mut(..want) else {
                return Ok(0);
            };
            if dest.is_empty() {
                return Ok(0);
            }
            let at = start + self.pos;
            let n = loop {
                match self.file.read_at(dest, at) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let kind = e.kind();
                        let wrapped = IsoError::Io {
                            path: self.image.clone(),
                            source: e,
                        };
                        return Err(io::Error::new(kind, wrapped));
                    }
                }
            };
            if n == 0 {
                let msg = format!(
                    "{}: image ends before byte {at} of a file's data",
                    self.image.display()
                );
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
            }
            self.pos += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// A directory's extent: byte offset and length.
type Extent = (u64, u64);

/// The fixed part of one directory record, borrowed from the sector holding it.
struct Record<'r> {
    /// First block of the extent (the extended attribute record, if any, comes first).
    lba: u32,
    /// Blocks of extended attribute record before the data.
    xar: u8,
    /// Data length in bytes.
    len: u32,
    /// Recording date, 7-byte form.
    date: &'r [u8],
    /// File flags.
    flags: u8,
    /// File unit size or interleave gap set.
    interleaved: bool,
    /// File identifier.
    ident: &'r [u8],
    /// System use area.
    su: &'r [u8],
}

impl Record<'_> {
    /// Parses one record; `None` if it is shorter than its fields.
    fn parse(rec: &[u8]) -> Option<Record<'_>> {
        let len_dr = usize::from(*rec.first()?);
        if len_dr < 34 {
            return None;
        }
        let rec = rec.get(..len_dr)?;
        let len_fi = usize::from(*rec.get(32)?);
        let ident = rec.get(33..33 + len_fi)?;
        let su_start = 33 + len_fi + usize::from(len_fi % 2 == 0);
        Some(Record {
            lba: le32(rec, 2)?,
            xar: *rec.get(1)?,
            len: le32(rec, 10)?,
            date: rec.get(18..25)?,
            flags: *rec.get(25)?,
            interleaved: *rec.get(26)? != 0 || *rec.get(27)? != 0,
            ident,
            su: rec.get(su_start..).unwrap_or(&[]),
        })
    }

    /// The data's byte offset and length in the image.
    fn extent(&self) -> Extent {
        (
            (u64::from(self.lba) + u64::from(self.xar)) * SECTOR,
            u64::from(self.len),
        )
    }

    /// Whether this is the `.` or `..` record.
    fn is_dot(&self) -> bool {
        matches!(self.ident, [0] | [1])
    }
}

/// Rock Ridge information gathered from one record's system use area and its continuations.
#[derive(Default)]
struct RockRidge {
    /// `NM` name, joined.
    name: Option<Vec<u8>>,
    /// `NM` said `.` or `..`.
    name_special: bool,
    /// `PX` fields.
    mode: Option<u32>,
    nlink: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    /// `TF` modify time.
    mtime: Option<i64>,
    /// `SL` target, joined.
    target: Option<Vec<u8>>,
    /// The last `SL` component continues in the next one.
    sl_continues: bool,
    /// The target so far ends in the root component.
    sl_after_root: bool,
    /// `RE`: this is a relocated directory, listed where its `CL` points from.
    relocated: bool,
    /// `CL`: block of the relocated directory this placeholder stands for.
    child_link: Option<u32>,
    /// `ZF`: the data is zisofs-compressed.
    zisofs: bool,
}

/// A continuation area: block, offset in it, length.
type Continuation = (u32, usize, usize);

/// One parsed child of a directory, with its name in `entry.path` until the walk joins paths.
struct Child {
    entry: IsoEntry,
    /// The directory extent to list, for directories.
    dir: Option<Extent>,
}

/// State of one [`Iso::open`]: the image and everything listed so far.
struct Walker<'a> {
    path: &'a Path,
    file: &'a File,
    size: u64,
    namespace: Namespace,
    /// SUSP `SP` skip length for system use areas.
    skip: usize,
    /// Start offsets of the directory extents listed so far.
    visited: HashSet<u64>,
    entries: Vec<IsoEntry>,
    /// Name, path and target bytes so far.
    name_bytes: usize,
    /// Entries parsed so far, listed or still waiting in a parent's children.
    listed: usize,
    /// Directory extent bytes so far.
    dir_bytes: u64,
    /// Continuation areas followed so far.
    continuations: usize,
    /// The block last read for a continuation area.
    cache: Option<(u32, Vec<u8>)>,
}

impl Walker<'_> {
    fn corrupt(&self, reason: String) -> IsoError {
        IsoError::Corrupt {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn unsupported(&self, reason: String) -> IsoError {
        IsoError::Unsupported {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// Reads `len` bytes at `offset` after checking they lie inside the image.
    fn read(
        &self,
        offset: u64,
        len: u64,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<u8>, IsoError> {
        let in_bounds = offset.checked_add(len).is_some_and(|end| end <= self.size);
        let n = usize::try_from(len)
            .ok()
            .filter(|_| in_bounds)
            .ok_or_else(|| {
                self.corrupt(format!(
                    "{} at byte {offset} (+{len}) lies beyond the image end ({} bytes)",
                    what(),
                    self.size
                ))
            })?;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| IsoError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(buf)
    }

    /// Reads the volume descriptor set: the primary root and the Joliet root, if any (its errors
    /// matter only when the Joliet tree is listed).
    fn volume_descriptors(&self) -> Result<(Extent, Option<Result<Extent, IsoError>>), IsoError> {
        let not_iso = |reason: String| IsoError::NotIso {
            path: self.path.to_path_buf(),
            reason,
        };
        if self.size < (FIRST_DESCRIPTOR + 1) * SECTOR {
            return Err(not_iso(format!(
                "{} bytes is too small (volume descriptors start at byte {})",
                self.size,
                FIRST_DESCRIPTOR * SECTOR
            )));
        }
        let mut primary = None;
        let mut joliet = None;
        for sector in FIRST_DESCRIPTOR..FIRST_DESCRIPTOR + MAX_DESCRIPTORS {
            let offset = sector * SECTOR;
            if offset + SECTOR > self.size {
                break;
            }
            let vd = self.read(offset, SECTOR, || "volume descriptor".into())?;
            if vd.get(1..6) != Some(b"CD001".as_slice()) {
                if sector == FIRST_DESCRIPTOR {
                    return Err(not_iso(format!(
                        "no CD001 volume descriptor at byte {offset}"
                    )));
                }
                break;
            }
            match vd.first() {
                Some(255) => break,
                Some(1) if primary.is_none() => primary = Some(self.descriptor_root(&vd, offset)?),
                Some(2) if joliet.is_none() && is_joliet(&vd) => {
                    joliet = Some(self.descriptor_root(&vd, offset));
                }
                _ => {}
            }
        }
        let primary = primary.ok_or_else(|| self.corrupt("no primary volume descriptor".into()))?;
        Ok((primary, joliet))
    }

    /// The root directory extent of a primary or supplementary volume descriptor.
    fn descriptor_root(&self, vd: &[u8], offset: u64) -> Result<Extent, IsoError> {
        let block = vd.get(128..130).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if block != Some(2048) {
            return Err(self.unsupported(format!(
                "logical block size {} in the descriptor at byte {offset} (only 2048 is supported)",
                block.unwrap_or(0)
            )));
        }
        vd.get(156..190)
            .and_then(Record::parse)
            .map(|r| r.extent())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "malformed root directory record in the volume descriptor at byte {offset}"
                ))
            })
    }

    /// The SUSP skip length if the root's `.` record starts with an `SP` entry (Rock Ridge).
    fn susp_skip(&self, root: Extent) -> Result<Option<usize>, IsoError> {
        let sector = self.read(root.0, root.1.min(SECTOR), || "root directory".into())?;
        let Some(dot) = Record::parse(&sector).filter(|r| r.ident == [0]) else {
            return Ok(None);
        };
        for start in [0, 14] {
            if let Some(&[b'S', b'P', len, _, 0xBE, 0xEF, skip]) = dot.su.get(start..start + 7) {
                if len >= 7 {
                    return Ok(Some(usize::from(skip).max(start)));
                }
            }
        }
        Ok(None)
    }

    /// Lists the directory at `dir` whose path is `parent`, and below it, into `self.entries`.
    fn walk(&mut self, dir: Extent, parent: &[u8], depth: usize) -> Result<(), IsoError> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt(format!(
                "directory /{} is nested deeper than {MAX_DEPTH} levels",
                lossy(parent)
            )));
        }
        if !self.visited.insert(dir.0) {
            return Err(self.corrupt(format!(
                "directory /{} at byte {} is already listed elsewhere (directory loop)",
                lossy(parent),
                dir.0
            )));
        }
        let mut children = self.read_dir(dir, parent)?;
        children.sort_unstable_by(|a, b| a.entry.path.cmp(&b.entry.path));
        if let Some(pair) = children
            .windows(2)
            .find(|w| w.first().map(|c| &c.entry.path) == w.get(1).map(|c| &c.entry.path))
        {
            let name = pair
                .first()
                .map(|c| lossy(&c.entry.path))
                .unwrap_or_default();
            return Err(self.corrupt(format!(
                "directory /{} has two entries named {name}",
                lossy(parent)
            )));
        }
        for Child { mut entry, dir } in children {
            let mut path = Vec::with_capacity(parent.len() + 1 + entry.path.len());
            if !parent.is_empty() {
                path.extend_from_slice(parent);
                path.push(b'/');
            }
            path.extend_from_slice(&entry.path);
            entry.path = path;
            if entry.path.len() > MAX_PATH {
                return Err(self.corrupt(format!(
                    "path {} is longer than {MAX_PATH} bytes",
                    entry.display_path()
                )));
            }
            self.count_name_bytes(entry.path.len())?;
            for &(start, len) in &entry.extents {
                if start.checked_add(len).is_none_or(|end| end > self.size) {
                    return Err(self.corrupt(format!(
                        "data of {} at byte {start} (+{len}) lies beyond the image end ({} bytes)",
                        entry.display_path(),
                        self.size
                    )));
                }
            }
            let sub = dir.map(|d| (d, entry.path.clone()));
            self.entries.push(entry);
            if let Some((d, path)) = sub {
                self.walk(d, &path, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Parses the records of one directory extent into its children (unsorted).
    fn read_dir(&mut self, (start, len): Extent, parent: &[u8]) -> Result<Vec<Child>, IsoError> {
        self.dir_bytes = self.dir_bytes.saturating_add(len);
        if self.dir_bytes > MAX_DIR_BYTES {
            return Err(self.corrupt(format!("directories exceed {MAX_DIR_BYTES} bytes")));
        }
        let mut children = Vec::new();
        let mut pending: Option<(Vec<u8>, Child)> = None;
        let mut off = 0;
        while off < len {
            let n = (len - off).min(DIR_CHUNK);
            let chunk = self.read(start + off, n, || format!("directory /{}", lossy(parent)))?;
            for (i, sector) in chunk.chunks(SECTOR as usize).enumerate() {
                let mut pos = 0;
                while let Some(&l) = sector.get(pos) {
                    if l == 0 {
                        break;
                    }
                    let l = usize::from(l);
                    let rec = sector.get(pos..pos + l).and_then(Record::parse);
                    let Some(rec) = rec else {
                        let at = start + off + i as u64 * SECTOR + pos as u64;
                        return Err(self.corrupt(format!(
                            "malformed directory record at byte {at} in directory /{}",
                            lossy(parent)
                        )));
                    };
                    self.record(&rec, parent, &mut children, &mut pending)?;
                    pos += l;
                }
            }
            off += n;
        }
        if let Some((_, child)) = pending {
            return Err(self.corrupt(format!(
                "multi-extent file {} in directory /{} lacks its last extent",
                child.entry.display_path(),
                lossy(parent)
            )));
        }
        Ok(children)
    }

    /// Adds one directory record to `children`, or to the multi-extent file in `pending`.
    fn record(
        &mut self,
        rec: &Record,
        parent: &[u8],
        children: &mut Vec<Child>,
        pending: &mut Option<(Vec<u8>, Child)>,
    ) -> Result<(), IsoError> {
        if rec.is_dot() || rec.flags & FLAG_ASSOCIATED != 0 {
            return Ok(());
        }
        let last = rec.flags & FLAG_MULTI_EXTENT == 0;
        if let Some((ident, child)) = pending {
            if ident.as_slice() != rec.ident {
                return Err(self.corrupt(format!(
                    "multi-extent file {} in directory /{} is followed by another file",
                    child.entry.display_path(),
                    lossy(parent)
                )));
            }
            let (s, l) = rec.extent();
            child.entry.add_extent(s, l);
            if rec.interleaved {
                child.entry.unsupported = Some("an interleaved file");
            }
            if last {
                if let Some((_, child)) = pending.take() {
                    children.push(child);
                }
            }
            return Ok(());
        }
        self.listed += 1;
        if self.listed > MAX_ENTRIES {
            return Err(self.corrupt(format!("more than {MAX_ENTRIES} entries")));
        }
        let Some(child) = self.child(rec, parent)? else {
            return Ok(());
        };
        if last {
            children.push(child);
        } else if child.dir.is_some() {
            return Err(self.corrupt(format!(
                "directory {} in directory /{} has the multi-extent flag",
                child.entry.display_path(),
                lossy(parent)
            )));
        } else {
            *pending = Some((rec.ident.to_vec(), child));
        }
        Ok(())
    }

    /// Builds the child for one (first) record; `None` for a relocated directory (`RE`).
    fn child(&mut self, rec: &Record, parent: &[u8]) -> Result<Option<Child>, IsoError> {
        let mut rr = if self.namespace == Namespace::RockRidge {
            self.rock_ridge(rec.su.get(self.skip..).unwrap_or(&[]), parent)?
        } else {
            RockRidge::default()
        };
        if rr.relocated {
            return Ok(None);
        }
        let name = match (self.namespace, rr.name.take()) {
            (Namespace::RockRidge, Some(name)) => name,
            (Namespace::Joliet, _) => joliet_name(rec.ident),
            _ => iso_name(rec.ident),
        };
        let bad = |walker: &Walker, name: &[u8], what: &str| {
            walker.corrupt(format!(
                "entry {:?} in directory /{} {what}",
                lossy(name),
                lossy(parent)
            ))
        };
        if rr.name_special {
            return Err(bad(self, &name, "is named . or .. by Rock Ridge"));
        }
        if let Err(why) = check_name(&name) {
            return Err(bad(self, &name, why));
        }
        let mut entry = IsoEntry {
            path: name,
            kind: IsoKind::File { size: 0 },
            mode: rr.mode,
            nlink: rr.nlink,
            uid: rr.uid,
            gid: rr.gid,
            mtime: rr.mtime.or_else(|| short_time(rec.date)),
            extents: Vec::new(),
            unsupported: None,
        };
        let file_type = rr.mode.map(|m| m & S_IFMT);
        let mut dir = None;
        if let Some(lba) = rr.child_link {
            let (extent, dot) = self.relocated(lba, parent, &entry.path)?;
            entry.kind = IsoKind::Dir;
            entry.mode = dot.mode.or(entry.mode);
            entry.nlink = dot.nlink.or(entry.nlink);
            entry.uid = dot.uid.or(entry.uid);
            entry.gid = dot.gid.or(entry.gid);
            entry.mtime = dot.mtime.or(entry.mtime);
            dir = Some(extent);
        } else if rec.flags & FLAG_DIRECTORY != 0 {
            if file_type.is_some_and(|t| t != S_IFDIR) {
                return Err(bad(
                    self,
                    &entry.path,
                    "is a directory record with a non-directory Rock Ridge mode",
                ));
            }
            entry.kind = IsoKind::Dir;
            dir = Some(rec.extent());
        } else {
            match (file_type, rr.target.take()) {
                (Some(S_IFLNK) | None, Some(target)) => entry.kind = IsoKind::Symlink(target),
                (Some(S_IFLNK), None) => {
                    return Err(bad(self, &entry.path, "is a symlink without an SL target"))
                }
                (Some(S_IFDIR), _) => {
                    return Err(bad(
                        self,
                        &entry.path,
                        "has a directory mode but no directory record",
                    ))
                }
                (Some(S_IFREG) | None, None) | (Some(S_IFREG), Some(_)) => {
                    let (s, l) = rec.extent();
                    entry.add_extent(s, l);
                    if rec.interleaved {
                        entry.unsupported = Some("an interleaved file");
                    }
                    if rr.zisofs {
                        entry.unsupported = Some("zisofs-compressed");
                    }
                }
                (Some(_), _) => entry.kind = IsoKind::Special,
            }
        }
        let target = match &entry.kind {
            IsoKind::Symlink(t) => t.len(),
            _ => 0,
        };
        self.count_name_bytes(entry.path.len() + target)?;
        Ok(Some(Child { entry, dir }))
    }

    /// Adds to the name, path and target bytes held, failing beyond [`MAX_NAME_BYTES`].
    fn count_name_bytes(&mut self, n: usize) -> Result<(), IsoError> {
        self.name_bytes = self.name_bytes.saturating_add(n);
        if self.name_bytes > MAX_NAME_BYTES {
            return Err(self.corrupt(format!(
                "names, paths and link targets exceed {MAX_NAME_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Follows a `CL` child link: the relocated directory's extent and its `.` record's Rock Ridge.
    fn relocated(
        &mut self,
        lba: u32,
        parent: &[u8],
        name: &[u8],
    ) -> Result<(Extent, RockRidge), IsoError> {
        let what = || format!("relocated directory /{}/{}", lossy(parent), lossy(name));
        let sector = self.read(u64::from(lba) * SECTOR, SECTOR, what)?;
        let dot = Record::parse(&sector)
            .filter(|r| r.ident == [0] && r.flags & FLAG_DIRECTORY != 0)
            .ok_or_else(|| self.corrupt(format!("{} has no . record", what())))?;
        let rr = self.rock_ridge(dot.su.get(self.skip..).unwrap_or(&[]), parent)?;
        Ok((dot.extent(), rr))
    }

    /// Parses a system use area and the continuation areas it chains to.
    fn rock_ridge(&mut self, su: &[u8], parent: &[u8]) -> Result<RockRidge, IsoError> {
        let mut rr = RockRidge::default();
        let mut next = susp_area(su, &mut rr)
            .map_err(|why| self.corrupt(format!("{why} in directory /{}", lossy(parent))))?;
        let mut hops = 0;
        while let Some((block, offset, len)) = next {
            hops += 1;
            self.continuations += 1;
            if self.continuations > MAX_TOTAL_CONTINUATIONS {
                return Err(self.corrupt(format!(
                    "more than {MAX_TOTAL_CONTINUATIONS} SUSP continuation areas"
                )));
            }
            if hops > MAX_CONTINUATIONS {
                return Err(self.corrupt(format!(
                    "more than {MAX_CONTINUATIONS} SUSP continuation areas for an entry in /{}",
                    lossy(parent)
                )));
            }
            let parsed = {
                let sector = self.block(block, parent)?;
                match sector.get(offset..offset + len) {
                    Some(area) => susp_area(area, &mut rr),
                    None => Err("SUSP continuation area beyond its block".into()),
                }
            };
            next = parsed
                .map_err(|why| self.corrupt(format!("{why} in directory /{}", lossy(parent))))?;
        }
        Ok(rr)
    }

    /// One block of the image, cached for consecutive continuation areas in it.
    fn block(&mut self, lba: u32, parent: &[u8]) -> Result<&[u8], IsoError> {
        if self.cache.as_ref().is_none_or(|(cached, _)| *cached != lba) {
            let data = self.read(u64::from(lba) * SECTOR, SECTOR, || {
                format!("SUSP continuation area of an entry in /{}", lossy(parent))
            })?;
            self.cache = Some((lba, data));
        }
        Ok(self.cache.as_ref().map_or(&[], |(_, data)| data.as_slice()))
    }
}

/// Parses the SUSP entries of one area into `rr`; returns the continuation area, if any.
fn susp_area(area: &[u8], rr: &mut RockRidge) -> Result<Option<Continuation>, String> {
    let mut next = None;
    let mut pos = 0;
    while let Some(&[s0, s1, len, _version]) = area.get(pos..pos + 4) {
        let len = usize::from(len);
        if len < 4 {
            break;
        }
        let Some(body) = area.get(pos + 4..pos + len) else {
            break;
        };
        match &[s0, s1] {
            b"ST" => break,
            b"CE" => next = continuation(body)?,
            b"PX" if body.len() >= 32 => {
                rr.mode = le32(body, 0);
                rr.nlink = le32(body, 8);
                rr.uid = le32(body, 16);
                rr.gid = le32(body, 24);
            }
            b"NM" => {
                if let Some((&flags, content)) = body.split_first() {
                    if flags & 0x06 != 0 {
                        rr.name_special = true;
                    } else if flags & 0x20 == 0 {
                        let name = rr.name.get_or_insert_with(Vec::new);
                        name.extend_from_slice(content);
                        if name.len() > MAX_NAME {
                            return Err(format!("Rock Ridge name longer than {MAX_NAME} bytes"));
                        }
                    }
                }
            }
            b"SL" => symlink_components(body.get(1..).unwrap_or(&[]), rr)?,
            b"TF" => {
                if let Some((&flags, stamps)) = body.split_first() {
                    let width = if flags & 0x80 != 0 { 17 } else { 7 };
                    if flags & 0x02 != 0 {
                        let index = usize::from(flags & 0x01);
                        let stamp = stamps.get(index * width..(index + 1) * width);
                        rr.mtime = stamp.and_then(|s| {
                            if width == 17 {
                                long_time(s)
                            } else {
                                short_time(s)
                            }
                        });
                    }
                }
            }
            b"RE" => rr.relocated = true,
            b"CL" => rr.child_link = le32(body, 0),
            b"ZF" => rr.zisofs = true,
            _ => {}
        }
        pos += len;
    }
    Ok(next)
}

/// Parses a `CE` body: block, offset and length of the continuation area (inside one block).
fn continuation(body: &[u8]) -> Result<Option<Continuation>, String> {
    let (Some(block), Some(offset), Some(len)) = (le32(body, 0), le32(body, 8), le32(body, 16))
    else {
        return Err("truncated SUSP CE entry".into());
    };
    if u64::from(offset) + u64::from(len) > SECTOR {
        return Err(format!(
            "SUSP continuation area at block {block} offset {offset} (+{len}) crosses its block"
        ));
    }
    Ok((len > 0).then_some((block, offset as usize, len as usize)))
}

/// Appends the components of one `SL` entry to the link target in `rr`.
fn symlink_components(mut comps: &[u8], rr: &mut RockRidge) -> Result<(), String> {
    while let Some((&[flags, len], rest)) = comps.split_first_chunk::<2>() {
        let len = usize::from(len);
        let content = rest.get(..len).ok_or("truncated Rock Ridge SL component")?;
        comps = rest.get(len..).unwrap_or(&[]);
        let started = rr.target.is_some();
        let target = rr.target.get_or_insert_with(Vec::new);
        if flags & 0x18 != 0 {
            target.clear();
            target.push(b'/');
            rr.sl_after_root = true;
        } else {
            let piece: &[u8] = match flags {
                f if f & 0x02 != 0 => b".",
                f if f & 0x04 != 0 => b"..",
                f if f & 0x20 != 0 => b"",
                _ => content,
            };
            if started && !rr.sl_continues && !rr.sl_after_root {
                target.push(b'/');
            }
            target.extend_from_slice(piece);
            rr.sl_after_root = false;
        }
        rr.sl_continues = flags & 0x01 != 0;
        if target.len() > MAX_PATH {
            return Err(format!(
                "Rock Ridge symlink target longer than {MAX_PATH} bytes"
            ));
        }
    }
    Ok(())
}

/// Whether a supplementary volume descriptor is Joliet (UCS-2 escape sequence).
fn is_joliet(vd: &[u8]) -> bool {
    vd.get(6) == Some(&1) && matches!(vd.get(88..91), Some([b'%', b'/', b'@' | b'C' | b'E']))
}

/// Checks a translated name: not empty, `.` or `..`, no `/` or NUL, at most [`MAX_NAME`] bytes.
fn check_name(name: &[u8]) -> Result<(), &'static str> {
    match name {
        [] => Err("has an empty name"),
        b"." | b".." => Err("is named . or .."),
        _ if name.len() > MAX_NAME => Err("has a name longer than 1024 bytes"),
        _ if name.iter().any(|&c| c == b'/' || c == 0) => Err("has a name containing / or NUL"),
        _ => Ok(()),
    }
}

/// Removes a `;<digits>` version suffix and trailing dots (keeping a one-character name).
fn strip_version(mut name: &[u8]) -> &[u8] {
    if let Some(i) = name.iter().rposition(|&c| c == b';') {
        let (base, version) = name.split_at(i);
        if version.iter().skip(1).all(u8::is_ascii_digit) {
            name = base;
        }
    }
    while name.len() > 1 {
        match name.split_last() {
            Some((b'.', rest)) => name = rest,
            _ => break,
        }
    }
    name
}

/// A plain ISO 9660 identifier as a name: version and trailing dot stripped, case kept.
fn iso_name(ident: &[u8]) -> Vec<u8> {
    strip_version(ident).to_vec()
}

/// A Joliet identifier (UCS-2/UTF-16 big-endian) as a UTF-8 name, version and trailing dots
/// stripped; unpaired surrogates become U+FFFD.
fn joliet_name(ident: &[u8]) -> Vec<u8> {
    let units = ident
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    let name: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    strip_version(name.as_bytes()).to_vec()
}

/// Little-endian u32 at `at` (the first half of an ECMA-119 both-endian field).
fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_le_bytes)
}

/// Text of a path for messages.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Seconds since the epoch of a 7-byte date (years since 1900, month, day, hour, minute,
/// second, offset from GMT in 15-minute units); `None` if unset or invalid.
fn short_time(b: &[u8]) -> Option<i64> {
    let &[year, month, day, hour, minute, second, offset] = b.get(..7)? else {
        return None;
    };
    let f = [month, day, hour, minute, second].map(i64::from);
    epoch_seconds(1900 + i64::from(year), f, offset as i8)
}

/// Seconds since the epoch of a 17-byte date (`YYYYMMDDhhmmsscc` digits and GMT offset).
fn long_time(b: &[u8]) -> Option<i64> {
    let b = b.get(..17)?;
    let num = |from: usize, to: usize| -> Option<i64> {
        b.get(from..to)?.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let year = num(0, 4)?;
    if year == 0 {
        return None;
    }
    let f = [
        num(4, 6)?,
        num(6, 8)?,
        num(8, 10)?,
        num(10, 12)?,
        num(12, 14)?,
    ];
    epoch_seconds(year, f, *b.get(16)? as i8)
}

/// Seconds since the epoch of a calendar date and time in a zone `offset` quarter hours east.
fn epoch_seconds(
    year: i64,
    [month, day, hour, minute, second]: [i64; 5],
    offset: i8,
) -> Option<i64> {
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (H. Hinnant): March-based years make the leap day the last of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let offset = if (-48..=52).contains(&offset) {
        i64::from(offset)
    } else {
        0
    };
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset * 900)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, Permissions};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Whether xorriso runs; without it a test skips, unless `IUK_REQUIRE_KERNEL=1`.
    fn have_xorriso() -> bool {
        let ok = Command::new("xorriso")
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(
                std::env::var("IUK_REQUIRE_KERNEL").as_deref() != Ok("1"),
                "xorriso is not installed and IUK_REQUIRE_KERNEL=1"
            );
            eprintln!("skipping: xorriso is not installed");
        }
        ok
    }

    fn xorshift(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }

    fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n).map(|_| xorshift(&mut state) as u8).collect()
    }

    fn put(root: &Path, rel: &str, data: &[u8], mode: u32) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
    }

    /// The source tree of the xorriso tests; `full` adds the 3 MB file and the 500-entry directory.
    fn populate(root: &Path, full: bool) {
        put(root, "empty", b"", 0o644);
        put(root, "exec.sh", b"#!/bin/sh\necho hi\n", 0o755);
        put(root, "private", b"secret\n", 0o600);
        put(root, "suid", b"suid\n", 0o4755);
        put(
            root,
            &format!("{}.txt", "n".repeat(196)),
            b"long name\n",
            0o644,
        );
        put(
            root,
            "system-systemd\\x2dcryptsetup.slice",
            b"[Unit]\n",
            0o644,
        );
        put(root, "grüße/日本語.txt", "ünïcödé\n".as_bytes(), 0o644);
        put(
            root,
            "live/filesystem.squashfs",
            &random_bytes(2, 100_000),
            0o644,
        );
        put(root, "live/vmlinuz", &random_bytes(3, 5000), 0o644);
        put(root, "isolinux/isolinux.bin", &random_bytes(4, 3000), 0o444);
        put(root, "EFI/boot/bootx64.efi", &random_bytes(5, 7000), 0o644);
        let deep: String = (1..=10).map(|i| format!("d{i}/")).collect();
        put(root, &format!("deep/{deep}leaf.txt"), b"deep\n", 0o644);
        let count = if full { 500 } else { 40 };
        for i in 0..count {
            put(
                root,
                &format!("many/f{i:03}"),
                format!("{i}\n").as_bytes(),
                0o644,
            );
        }
        if full {
            put(root, "big.bin", &random_bytes(1, 3 << 20), 0o600);
        }
        fs::create_dir(root.join("emptydir")).unwrap();
        fs::set_permissions(root.join("emptydir"), Permissions::from_mode(0o700)).unwrap();
        let links = root.join("links");
        fs::create_dir(&links).unwrap();
        let long: String = (0..27).map(|i| format!("dir{i:07}/")).collect::<String>() + "end.txt";
        assert!(long.len() >= 300);
        for (name, target) in [
            ("rel", "../deep/d1"),
            ("abs", "/usr/lib/os-release"),
            ("long", long.as_str()),
            ("dot", "."),
            ("up", ".."),
            ("root", "/"),
            ("dotx", "./x"),
            ("unicode", "grüße/日本語.txt"),
        ] {
            symlink(target, links.join(name)).unwrap();
        }
        fs::set_permissions(root.join("live"), Permissions::from_mode(0o750)).unwrap();
    }

    /// Runs `xorriso -as mkisofs -R -J EXTRA -o OUT SRC`.
    fn mkiso(src: &Path, out: &Path, extra: &[&str]) {
        let output = Command::new("xorriso")
            .args(["-as", "mkisofs", "-R", "-J", "-input-charset", "utf-8"])
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(src)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "xorriso failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// One line per entry: path, kind, mode, owner, mtime.
    fn describe(
        path: &[u8],
        kind: &IsoKind,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        mtime: Option<i64>,
    ) -> String {
        let kind = match kind {
            IsoKind::File { size } => format!("file {size}"),
            IsoKind::Dir => "dir".into(),
            IsoKind::Symlink(t) => format!("link -> {}", lossy(t)),
            IsoKind::Special => "special".into(),
        };
        let mode = mode.map(|m| format!("{m:o}"));
        format!("{} {kind} {mode:?} {owner:?} {mtime:?}", lossy(path))
    }

    /// The source tree as `describe` lines, depth-first, names sorted bytewise.
    fn want_tree(dir: &Path, prefix: &[u8], out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let p = dir.join(&name);
            let m = fs::symlink_metadata(&p).unwrap();
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            let kind = if m.is_dir() {
                IsoKind::Dir
            } else if m.file_type().is_symlink() {
                IsoKind::Symlink(fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
            } else {
                IsoKind::File { size: m.len() }
            };
            out.push(describe(
                &path,
                &kind,
                Some(m.mode()),
                (Some(m.uid()), Some(m.gid())),
                Some(m.mtime()),
            ));
            if m.is_dir() {
                want_tree(&p, &path, out);
            }
        }
    }

    fn read_all(iso: &Iso, entry: &IsoEntry) -> Vec<u8> {
        let mut data = Vec::new();
        iso.open_file(entry)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        data
    }

    /// Compares the listing and every file's content with the source tree; `extra` entries are
    /// in the image only.
    fn check_tree(iso: &Iso, src: &Path, extra: &[&str]) {
        let mut want = Vec::new();
        want_tree(src, b"", &mut want);
        let got: Vec<String> = iso
            .entries()
            .iter()
            .filter(|e| !extra.contains(&e.display_path().as_str()))
            .map(|e| describe(&e.path, &e.kind, e.mode, (e.uid, e.gid), e.mtime))
            .collect();
        assert_eq!(got, want);
        for e in iso.entries() {
            assert_eq!(iso.find(&e.path), Some(e));
            if let IsoKind::File { size } = e.kind {
                let data = read_all(iso, e);
                assert_eq!(data.len() as u64, size, "{}", e.display_path());
                if !extra.contains(&e.display_path().as_str()) {
                    let source = fs::read(src.join(std::ffi::OsStr::from_bytes(&e.path))).unwrap();
                    assert!(data == source, "content of {}", e.display_path());
                }
                let (start, len) = iso.file_range(e).expect("xorriso writes contiguous files");
                assert_eq!(len, size);
                let mut direct = vec![0; len as usize];
                File::open(iso.path())
                    .unwrap()
                    .read_exact_at(&mut direct, start)
                    .unwrap();
                assert!(direct == data, "file_range of {}", e.display_path());
            }
        }
    }

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
    fn joliet_long_and_other_namespaces() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        populate(&src, false);
        let image = tmp.path().join("joliet.iso");
        mkiso(&src, &image, &["-joliet-long"]);
        check_tree(&Iso::open(&image).unwrap(), &src, &[]);

        let joliet = Iso::open_with(&image, Some(Namespace::Joliet)).unwrap();
        assert_eq!(joliet.namespace(), Namespace::Joliet);
        for path in [
            "many/f000",
            "live/filesystem.squashfs",
            "grüße/日本語.txt",
            "deep/d1/d2/d3/d4/d5/d6/d7/d8/d9/d10/leaf.txt",
        ] {
            let e = joliet
                .find(path)
                .unwrap_or_else(|| panic!("{path} missing from the Joliet tree"));
            assert_eq!((e.mode, e.uid), (None, None));
            assert!(
                read_all(&joliet, e) == fs::read(src.join(path)).unwrap(),
                "{path}"
            );
        }
        let long = joliet
            .entries()
            .iter()
            .find(|e| e.path.starts_with(b"nnnn"))
            .unwrap();
        // xorriso truncates to 104 UCS-2 characters, keeping the suffix.
        assert!(
            long.path.len() < 200 && long.path.ends_with(b".txt"),
            "{}",
            long.display_path()
        );
        assert!(joliet
            .entries()
            .iter()
            .all(|e| !matches!(e.kind, IsoKind::Symlink(_))));

        let plain = Iso::open_with(&image, Some(Namespace::Iso9660)).unwrap();
        assert_eq!(plain.namespace(), Namespace::Iso9660);
        let e = plain.find("MANY/F000").unwrap_or_else(|| {
            panic!(
                "{:?}",
                plain
                    .entries()
                    .iter()
                    .map(IsoEntry::display_path)
                    .collect::<Vec<_>>()
            )
        });
        assert_eq!(read_all(&plain, e), b"0\n");
        assert_eq!(
            read_all(&plain, plain.find("LIVE/VMLINUZ").unwrap()),
            fs::read(src.join("live/vmlinuz")).unwrap()
        );
    }

    #[test]
    fn joliet_only_image() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        put(&src, "live/vmlinuz", b"kernel", 0o644);
        put(&src, "grüße.txt", b"hello", 0o644);
        let image = tmp.path().join("j.iso");
        // `-as mkisofs` always writes Rock Ridge; native xorriso can switch it off.
        let output = Command::new("xorriso")
            .args(["-charset", "utf-8", "-outdev"])
            .arg(&image)
            .args(["-rockridge", "off", "-joliet", "on", "-map"])
            .arg(&src)
            .args(["/", "-commit"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let iso = Iso::open(&image).unwrap();
        assert_eq!(iso.namespace(), Namespace::Joliet);
        let names: Vec<_> = iso.entries().iter().map(IsoEntry::display_path).collect();
        assert_eq!(names, ["grüße.txt", "live", "live/vmlinuz"]);
        assert_eq!(read_all(&iso, iso.find("live/vmlinuz").unwrap()), b"kernel");
        let err = Iso::open_with(&image, Some(Namespace::RockRidge)).unwrap_err();
        assert!(matches!(err, IsoError::Unsupported { .. }), "{err}");
        let plain = Iso::open_with(&image, Some(Namespace::Iso9660)).unwrap();
        assert_eq!(
            read_all(&plain, plain.find("LIVE/VMLINUZ").unwrap()),
            b"kernel"
        );
    }

    #[test]
    fn hybrid_images() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        populate(&src, false);
        let mbr = tmp.path().join("mbr.bin");
        fs::write(&mbr, random_bytes(7, 432)).unwrap();
        let sysarea = tmp.path().join("sysarea.bin");
        fs::write(&sysarea, random_bytes(8, 32768)).unwrap();
        let image = tmp.path().join("hybrid.iso");
        let boot = [
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
        ];
        let mbr_arg = ["-isohybrid-mbr", mbr.to_str().unwrap()];
        mkiso(&src, &image, &[&boot[..], &mbr_arg[..]].concat());
        let head = fs::read(&image).unwrap();
        assert!(head[..432].iter().any(|&b| b != 0), "no MBR written");
        let iso = Iso::open(&image).unwrap();
        check_tree(&iso, &src, &["isolinux/boot.cat"]);
        assert!(iso.find("isolinux/boot.cat").is_some());

        let generic = tmp.path().join("generic.iso");
        mkiso(&src, &generic, &["-G", sysarea.to_str().unwrap()]);
        assert!(fs::read(&generic).unwrap()[..32768] == fs::read(&sysarea).unwrap()[..]);
        check_tree(&Iso::open(&generic).unwrap(), &src, &[]);
    }

    #[test]
    fn relocated_directories_appear_in_place() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        populate(&src, false);
        let image = tmp.path().join("reloc.iso");
        mkiso(&src, &image, &["-rr_reloc_dir", "rr_moved"]);
        let plain = Iso::open_with(&image, Some(Namespace::Iso9660)).unwrap();
        assert!(
            plain
                .entries()
                .iter()
                .any(|e| e.path.starts_with(b"RR_MOVED/") || e.path.starts_with(b"rr_moved/")),
            "xorriso did not relocate: {:?}",
            plain
                .entries()
                .iter()
                .map(IsoEntry::display_path)
                .collect::<Vec<_>>()
        );
        let iso = Iso::open(&image).unwrap();
        check_tree(&iso, &src, &["rr_moved"]);
    }

    #[test]
    fn not_iso_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, data) in [
            ("random.bin", random_bytes(9, 100 * 1024)),
            ("empty.bin", Vec::new()),
            ("ten.bin", vec![1; 10]),
        ] {
            let p = tmp.path().join(name);
            fs::write(&p, &data).unwrap();
            let err = Iso::open(&p).unwrap_err();
            assert!(matches!(err, IsoError::NotIso { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        let err = Iso::open(tmp.path()).unwrap_err();
        assert!(matches!(err, IsoError::NotIso { .. }), "{err}");
        let err = Iso::open(&tmp.path().join("missing.iso")).unwrap_err();
        assert!(
            matches!(err, IsoError::Io { .. }) && err.to_string().contains("missing.iso"),
            "{err}"
        );
    }

    /// Opens an image and reads every file; `Err` on the first error.
    fn open_and_read(path: &Path) -> Result<(Iso, Vec<Vec<u8>>), String> {
        let iso = Iso::open(path).map_err(|e| e.to_string())?;
        let mut contents = Vec::new();
        for e in iso.entries() {
            if matches!(e.kind, IsoKind::File { .. }) {
                let mut data = Vec::new();
                let mut reader = iso.open_file(e).map_err(|e| e.to_string())?;
                reader.read_to_end(&mut data).map_err(|e| e.to_string())?;
                assert_eq!(data.len() as u64, e.size());
                contents.push(data);
            }
        }
        Ok((iso, contents))
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

    // Hand-built images for what xorriso does not write (multi-extent files, loops, hostile SUSP).

    fn both16(v: u16) -> Vec<u8> {
        [v.to_le_bytes(), v.to_be_bytes()].concat()
    }

    fn both32(v: u32) -> Vec<u8> {
        [v.to_le_bytes(), v.to_be_bytes()].concat()
    }

    /// A directory record; the date is 2020-01-02 03:04:05 UTC.
    fn rec(ident: &[u8], lba: u32, len: u32, flags: u8, su: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; 33];
        r[2..10].copy_from_slice(&both32(lba));
        r[10..18].copy_from_slice(&both32(len));
        r[18..25].copy_from_slice(&[120, 1, 2, 3, 4, 5, 0]);
        r[25] = flags;
        r[28..32].copy_from_slice(&both16(1));
        r[32] = ident.len() as u8;
        r.extend_from_slice(ident);
        if ident.len() % 2 == 0 {
            r.push(0);
        }
        r.extend_from_slice(su);
        if r.len() % 2 == 1 {
            r.push(0);
        }
        r[0] = u8::try_from(r.len()).unwrap();
        r
    }

    /// A one-sector directory at `lba` with `.` (carrying `dot_su`), `..` and `records`.
    fn dir_sector(lba: u32, dot_su: &[u8], records: &[Vec<u8>]) -> Vec<u8> {
        let mut s = rec(&[0], lba, 2048, 2, dot_su);
        s.extend(rec(&[1], 18, 2048, 2, &[]));
        for r in records {
            s.extend_from_slice(r);
        }
        assert!(s.len() <= 2048);
        s.resize(2048, 0);
        s
    }

    fn susp(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
        [&sig[..], &[body.len() as u8 + 4, 1], body].concat()
    }

    fn px(mode: u32) -> Vec<u8> {
        susp(
            b"PX",
            &[both32(mode), both32(1), both32(7), both32(8)].concat(),
        )
    }

    fn nm(flags: u8, name: &[u8]) -> Vec<u8> {
        susp(b"NM", &[&[flags], name].concat())
    }

    fn ce(block: u32, offset: u32, len: u32) -> Vec<u8> {
        susp(
            b"CE",
            &[both32(block), both32(offset), both32(len)].concat(),
        )
    }

    /// Writes an image: descriptors at 16 and 17, root directory at sector 18, `sectors` placed.
    fn write_image(path: &Path, block_size: u16, sectors: &[(u32, Vec<u8>)]) {
        let total = sectors
            .iter()
            .map(|(l, _)| *l + 1)
            .max()
            .unwrap_or(19)
            .max(19);
        let mut img = vec![0u8; total as usize * 2048];
        let pvd = &mut img[16 * 2048..17 * 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[80..88].copy_from_slice(&both32(total));
        pvd[120..124].copy_from_slice(&both16(1));
        pvd[124..128].copy_from_slice(&both16(1));
        pvd[128..132].copy_from_slice(&both16(block_size));
        pvd[156..190].copy_from_slice(&rec(&[0], 18, 2048, 2, &[]));
        img[17 * 2048] = 255;
        img[17 * 2048 + 1..17 * 2048 + 6].copy_from_slice(b"CD001");
        for (lba, data) in sectors {
            let at = *lba as usize * 2048;
            img[at..at + data.len()].copy_from_slice(data);
        }
        fs::write(path, img).unwrap();
    }

    fn corrupt_reason(path: &Path) -> String {
        match Iso::open(path) {
            Err(IsoError::Corrupt { path: p, reason }) => {
                assert_eq!(p, path);
                reason
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn multi_extent_files() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("multi.iso");
        let root = dir_sector(
            18,
            &[],
            &[
                rec(b"BIG.;1", 20, 2048, 0x80, &[]),
                rec(b"BIG.;1", 22, 2048, 0x80, &[]),
                rec(b"BIG.;1", 21, 100, 0, &[]),
                rec(b"CONT.;1", 23, 2048, 0x80, &[]),
                rec(b"CONT.;1", 24, 10, 0, &[]),
                rec(b"README.TXT;1", 23, 5, 0, &[]),
            ],
        );
        let mut sectors = vec![(18, root)];
        sectors.extend((20..25).map(|l| (l, vec![l as u8; 2048])));
        write_image(&image, 2048, &sectors);
        let iso = Iso::open(&image).unwrap();
        assert_eq!(iso.namespace(), Namespace::Iso9660);
        let names: Vec<_> = iso.entries().iter().map(IsoEntry::display_path).collect();
        assert_eq!(names, ["BIG", "CONT", "README.TXT"]);
        let big = iso.find("BIG").unwrap();
        assert_eq!(big.size(), 4196);
        assert_eq!(big.mtime, Some(1_577_934_245));
        let want = [vec![20; 2048], vec![22; 2048], vec![21; 100]].concat();
        assert!(read_all(&iso, big) == want);
        assert_eq!(iso.file_range(big), None);
        let cont = iso.find("CONT").unwrap();
        assert_eq!(iso.file_range(cont), Some((23 * 2048, 2058)));
        assert!(read_all(&iso, cont) == [vec![23; 2048], vec![24; 10]].concat());

        let root = dir_sector(18, &[], &[rec(b"BIG.;1", 20, 2048, 0x80, &[])]);
        write_image(&image, 2048, &[(18, root), (20, vec![1; 2048])]);
        assert!(corrupt_reason(&image).contains("lacks its last extent"));

        let root = dir_sector(
            18,
            &[],
            &[
                rec(b"BIG.;1", 20, 2048, 0x80, &[]),
                rec(b"OTHER.;1", 20, 1, 0, &[]),
            ],
        );
        write_image(&image, 2048, &[(18, root), (20, vec![1; 2048])]);
        assert!(corrupt_reason(&image).contains("followed by another file"));

        let mut interleaved = rec(b"IL.;1", 20, 10, 0, &[]);
        interleaved[26] = 1;
        write_image(
            &image,
            2048,
            &[
                (18, dir_sector(18, &[], &[interleaved])),
                (20, vec![1; 2048]),
            ],
        );
        let iso = Iso::open(&image).unwrap();
        let err = iso.open_file(iso.find("IL").unwrap()).unwrap_err();
        assert!(matches!(err, IsoError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn synthetic_rock_ridge() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("rr.iso");
        let sp = susp(b"SP", &[0xBE, 0xEF, 0]);
        // A name split over NM entries, the second one in a continuation area with PX and TF.
        let file_su = [nm(1, b"lo"), ce(19, 100, 67)].concat();
        let tf = susp(b"TF", &[0x03, 100, 1, 1, 0, 0, 0, 0, 120, 1, 2, 3, 4, 5, 4]);
        let area = [nm(0, b"ng-name"), px(0o100_640), tf].concat();
        assert_eq!(area.len(), 67);
        let mut block19 = vec![0u8; 2048];
        block19[100..100 + area.len()].copy_from_slice(&area);
        // A link split over two SL entries with a component continued across them.
        let sl1 = susp(
            b"SL",
            &[1, 0x08, 0, 0, 3, b'u', b's', b'r', 0x01, 2, b'l', b'i'],
        );
        let sl2 = susp(b"SL", &[0, 0, 1, b'b', 0x04, 0, 0x02, 0, 0, 1, b'x']);
        let link_su = [nm(0, b"link"), px(0o120_777), sl1, sl2].concat();
        let long_tf = susp(
            b"TF",
            &[
                0x82, b'1', b'9', b'7', b'0', b'0', b'1', b'0', b'2', b'0', b'0', b'0', b'0', b'0',
                b'0', b'0', b'0', 0,
            ],
        );
        let sub_su = [nm(0, b"sub"), px(0o040_755), long_tf].concat();
        let fifo_su = [nm(0, b"fifo"), px(0o010_644)].concat();
        // "deep" is a CL placeholder for the directory relocated (RE) into "moved".
        let deep_su = [nm(0, b"deep"), px(0o100_644), susp(b"CL", &both32(22))].concat();
        let moved_su = [nm(0, b"moved"), px(0o040_755)].concat();
        let reloc_su = [nm(0, b"reloc"), px(0o040_700), susp(b"RE", &[])].concat();
        let root = dir_sector(
            18,
            &sp,
            &[
                rec(b"A.;1", 23, 3, 0, &file_su),
                rec(b"B.;1", 0, 0, 0, &link_su),
                rec(b"DEEP.;1", 0, 0, 0, &deep_su),
                rec(b"FIFO.;1", 0, 0, 0, &fifo_su),
                rec(b"MOVED", 21, 2048, 2, &moved_su),
                rec(b"SUB", 20, 2048, 2, &sub_su),
            ],
        );
        let moved = dir_sector(21, &[], &[rec(b"RELOC", 22, 2048, 2, &reloc_su)]);
        let reloc = dir_sector(
            22,
            &px(0o040_711),
            &[rec(b"INNER.;1", 23, 3, 0, &nm(0, b"inner"))],
        );
        let sectors = [
            (18, root),
            (19, block19),
            (20, dir_sector(20, &[], &[])),
            (21, moved),
            (22, reloc),
            (23, b"abc".to_vec()),
        ];
        write_image(&image, 2048, &sectors);
        let iso = Iso::open(&image).unwrap();
        assert_eq!(iso.namespace(), Namespace::RockRidge);
        let got: Vec<String> = iso
            .entries()
            .iter()
            .map(|e| describe(&e.path, &e.kind, e.mode, (e.uid, e.gid), e.mtime))
            .collect();
        let date = Some(1_577_934_245);
        let want = [
            describe(
                b"deep",
                &IsoKind::Dir,
                Some(0o040_711),
                (Some(7), Some(8)),
                date,
            ),
            describe(
                b"deep/inner",
                &IsoKind::File { size: 3 },
                None,
                (None, None),
                date,
            ),
            describe(
                b"fifo",
                &IsoKind::Special,
                Some(0o010_644),
                (Some(7), Some(8)),
                date,
            ),
            describe(
                b"link",
                &IsoKind::Symlink(b"/usr/lib/.././x".to_vec()),
                Some(0o120_777),
                (Some(7), Some(8)),
                date,
            ),
            describe(
                b"long-name",
                &IsoKind::File { size: 3 },
                Some(0o100_640),
                (Some(7), Some(8)),
                Some(1_577_934_245 - 3600),
            ),
            describe(
                b"moved",
                &IsoKind::Dir,
                Some(0o040_755),
                (Some(7), Some(8)),
                date,
            ),
            describe(
                b"sub",
                &IsoKind::Dir,
                Some(0o040_755),
                (Some(7), Some(8)),
                Some(86400),
            ),
        ];
        assert_eq!(got, want);
        assert_eq!(read_all(&iso, iso.find("deep/inner").unwrap()), b"abc");

        // A continuation area that continues into itself.
        let mut self_ce = vec![0u8; 2048];
        self_ce[..28].copy_from_slice(&ce(19, 0, 28));
        let root = dir_sector(18, &sp, &[rec(b"A.;1", 23, 3, 0, &ce(19, 0, 28))]);
        write_image(
            &image,
            2048,
            &[(18, root), (19, self_ce), (23, b"abc".to_vec())],
        );
        assert!(corrupt_reason(&image).contains("continuation areas"));

        // A continuation area crossing its block.
        let root = dir_sector(18, &sp, &[rec(b"A.;1", 23, 3, 0, &ce(19, 2000, 100))]);
        write_image(&image, 2048, &[(18, root), (23, b"abc".to_vec())]);
        assert!(corrupt_reason(&image).contains("crosses its block"));

        // Names that would escape or alias paths.
        for bad in [nm(0x02, b""), nm(0, b"a/b"), nm(0, b".."), nm(0, b"x\0y")] {
            let root = dir_sector(18, &sp, &[rec(b"A.;1", 23, 3, 0, &bad)]);
            write_image(&image, 2048, &[(18, root), (23, b"abc".to_vec())]);
            corrupt_reason(&image);
        }
    }

    #[test]
    fn hostile_structures() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("bad.iso");

        // A subdirectory that is the root again.
        write_image(
            &image,
            2048,
            &[(18, dir_sector(18, &[], &[rec(b"A", 18, 2048, 2, &[])]))],
        );
        assert!(corrupt_reason(&image).contains("loop"));

        // A chain of 70 nested directories.
        let mut sectors: Vec<(u32, Vec<u8>)> = (0..70)
            .map(|i| {
                (
                    18 + i,
                    dir_sector(18 + i, &[], &[rec(b"D", 19 + i, 2048, 2, &[])]),
                )
            })
            .collect();
        sectors.push((88, dir_sector(88, &[], &[])));
        write_image(&image, 2048, &sectors);
        assert!(corrupt_reason(&image).contains("deeper than 64"));

        // File data beyond the end of the image.
        write_image(
            &image,
            2048,
            &[(18, dir_sector(18, &[], &[rec(b"F.;1", 1000, 10, 0, &[])]))],
        );
        assert!(corrupt_reason(&image).contains("data of F"));

        // A directory extent beyond the end of the image.
        write_image(
            &image,
            2048,
            &[(18, dir_sector(18, &[], &[rec(b"D", 1000, 2048, 2, &[])]))],
        );
        assert!(corrupt_reason(&image).contains("directory /D"));

        // Two names that collide after the version is stripped.
        write_image(
            &image,
            2048,
            &[(
                18,
                dir_sector(
                    18,
                    &[],
                    &[rec(b"A.;1", 0, 0, 0, &[]), rec(b"A.;2", 0, 0, 0, &[])],
                ),
            )],
        );
        assert!(corrupt_reason(&image).contains("two entries named A"));

        // A record shorter than its fixed fields.
        let mut short = dir_sector(18, &[], &[rec(b"F.;1", 0, 0, 0, &[])]);
        short[68] = 20;
        write_image(&image, 2048, &[(18, short)]);
        assert!(corrupt_reason(&image).contains("malformed directory record"));

        // Block size other than 2048.
        write_image(&image, 512, &[(18, dir_sector(18, &[], &[]))]);
        assert!(matches!(
            Iso::open(&image),
            Err(IsoError::Unsupported { .. })
        ));

        // Associated files are skipped; an empty root lists nothing.
        write_image(
            &image,
            2048,
            &[(18, dir_sector(18, &[], &[rec(b"F.;1", 0, 0, 4, &[])]))],
        );
        assert!(Iso::open(&image).unwrap().entries().is_empty());
    }

    #[test]
    fn names_and_times() {
        assert_eq!(iso_name(b"README.TXT;1"), b"README.TXT");
        assert_eq!(iso_name(b"FOO.;1"), b"FOO");
        assert_eq!(iso_name(b"FOO"), b"FOO");
        let utf16: Vec<u8> = "grüße.txt;1"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert_eq!(joliet_name(&utf16), "grüße.txt".as_bytes());
        assert_eq!(joliet_name(&[0xD8, 0x00, 0, b'a']), "\u{FFFD}a".as_bytes());
        assert_eq!(short_time(&[70, 1, 1, 0, 0, 0, 0]), Some(0));
        assert_eq!(short_time(&[70, 1, 1, 1, 0, 0, 4]), Some(0));
        assert_eq!(short_time(&[100, 3, 1, 0, 0, 0, 0]), Some(951_868_800));
        assert_eq!(short_time(&[0; 7]), None);
        assert_eq!(short_time(&[70, 13, 1, 0, 0, 0, 0]), None);
        assert_eq!(long_time(b"2000030100000000\0"), Some(951_868_800));
        assert_eq!(long_time(b"0000000000000000\0"), None);
        assert_eq!(long_time(b"20000301000000x0\0"), Some(951_868_800));
        assert_eq!(long_time(b"2000x301000000000"), None);
    }
}
