//! The directory walk: every directory extent read once, records joined into entries
//! (multi-extent files, Rock Ridge attributes, relocated directories), with the tree's limits.

use std::collections::HashSet;

use super::names::{check_name, iso_name, joliet_name, lossy};
use super::susp::{Continuations, RockRidge};
use super::time::short_time;
use super::volume::{Extent, Record, FLAG_ASSOCIATED, FLAG_DIRECTORY, FLAG_MULTI_EXTENT, SECTOR};
use super::{
    Image, IsoEntry, IsoError, IsoKind, Namespace, DIR_CHUNK, MAX_DEPTH, MAX_DIR_BYTES,
    MAX_ENTRIES, MAX_NAME_BYTES, MAX_PATH,
};

/// POSIX file type bits of a Rock Ridge `PX` mode.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// One parsed child of a directory, with its name in `entry.path` until the walk joins paths.
struct Child {
    /// The entry, its path still the bare name.
    entry: IsoEntry,
    /// The directory extent to list, for directories.
    dir: Option<Extent>,
}

/// Lists the tree below `root` in `image`'s `namespace` (`skip`: the SUSP `SP` skip length),
/// depth-first, children sorted by name.
pub(super) fn list(
    image: &Image,
    namespace: Namespace,
    skip: usize,
    root: Extent,
) -> Result<Vec<IsoEntry>, IsoError> {
    let mut walker = Walker {
        image,
        namespace,
        skip,
        visited: HashSet::new(),
        entries: Vec::new(),
        name_bytes: 0,
        listed: 0,
        dir_bytes: 0,
        susp: Continuations::default(),
    };
    walker.walk(root, &[], 0)?;
    Ok(walker.entries)
}

/// State of one [`Iso::open`](super::Iso::open): the image and everything listed so far.
struct Walker<'a> {
    /// The image being listed.
    image: &'a Image<'a>,
    /// The tree being listed.
    namespace: Namespace,
    /// SUSP `SP` skip length for system use areas.
    skip: usize,
    /// Start offsets of the directory extents listed so far.
    visited: HashSet<u64>,
    /// The entries listed so far, depth-first.
    entries: Vec<IsoEntry>,
    /// Name, path and target bytes so far.
    name_bytes: usize,
    /// Entries parsed so far, listed or still waiting in a parent's children.
    listed: usize,
    /// Directory extent bytes so far.
    dir_bytes: u64,
    /// The SUSP continuation areas followed so far.
    susp: Continuations,
}

impl Walker<'_> {
    /// Lists the directory at `dir` whose path is `parent`, and below it, into `self.entries`.
    fn walk(&mut self, dir: Extent, parent: &[u8], depth: usize) -> Result<(), IsoError> {
        if depth > MAX_DEPTH {
            return Err(self.image.corrupt(format!(
                "directory /{} is nested deeper than {MAX_DEPTH} levels",
                lossy(parent)
            )));
        }
        if !self.visited.insert(dir.0) {
            return Err(self.image.corrupt(format!(
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
            return Err(self.image.corrupt(format!(
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
                return Err(self.image.corrupt(format!(
                    "path {} is longer than {MAX_PATH} bytes",
                    entry.display_path()
                )));
            }
            self.count_name_bytes(entry.path.len())?;
            entry.check_extents(self.image.path, self.image.size)?;
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
        self.dir_bytes = self
            .dir_bytes
            .checked_add(len)
            .filter(|&bytes| bytes <= MAX_DIR_BYTES)
            .ok_or_else(|| {
                self.image
                    .corrupt(format!("directories exceed {MAX_DIR_BYTES} bytes"))
            })?;
        let what = || format!("directory /{}", lossy(parent));
        let mut children = Vec::new();
        let mut pending: Option<(Vec<u8>, Child)> = None;
        let mut off = 0;
        while off < len {
            let n = (len - off).min(DIR_CHUNK);
            let at = start.checked_add(off).ok_or_else(|| {
                self.image.corrupt(format!(
                    "{} at byte {start} (+{len}) lies beyond any image",
                    what()
                ))
            })?;
            let chunk = self.image.read(at, n, what)?;
            for (i, sector) in chunk.chunks(SECTOR as usize).enumerate() {
                let mut pos = 0;
                while let Some(&l) = sector.get(pos) {
                    if l == 0 {
                        break;
                    }
                    let l = usize::from(l);
                    let rec = sector.get(pos..pos + l).and_then(Record::parse);
                    let Some(rec) = rec else {
                        // Inside the chunk just read, so below the image size.
                        let at = at.saturating_add(i as u64 * SECTOR + pos as u64);
                        return Err(self.image.corrupt(format!(
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
            return Err(self.image.corrupt(format!(
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
                return Err(self.image.corrupt(format!(
                    "multi-extent file {} in directory /{} is followed by another file",
                    child.entry.display_path(),
                    lossy(parent)
                )));
            }
            self.add_data(&mut child.entry, rec, parent)?;
            if last {
                if let Some((_, child)) = pending.take() {
                    children.push(child);
                }
            }
            return Ok(());
        }
        self.listed += 1;
        if self.listed > MAX_ENTRIES {
            return Err(self
                .image
                .corrupt(format!("more than {MAX_ENTRIES} entries")));
        }
        let Some(child) = self.child(rec, parent)? else {
            return Ok(());
        };
        if last {
            children.push(child);
        } else if child.dir.is_some() {
            return Err(self.image.corrupt(format!(
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
            self.susp
                .rock_ridge(self.image, rec.su.get(self.skip..).unwrap_or(&[]), parent)?
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
            walker.image.corrupt(format!(
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
            dir = Some(self.extent(rec, parent)?);
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
                    self.add_data(&mut entry, rec, parent)?;
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
        self.count_name_bytes(entry.path.len())?;
        self.count_name_bytes(target)?;
        Ok(Some(Child { entry, dir }))
    }

    /// Adds to the name, path and target bytes held, failing beyond [`MAX_NAME_BYTES`].
    fn count_name_bytes(&mut self, n: usize) -> Result<(), IsoError> {
        self.name_bytes = self
            .name_bytes
            .checked_add(n)
            .filter(|&bytes| bytes <= MAX_NAME_BYTES)
            .ok_or_else(|| {
                self.image.corrupt(format!(
                    "names, paths and link targets exceed {MAX_NAME_BYTES} bytes"
                ))
            })?;
        Ok(())
    }

    /// A record's extent; corrupt when its offset does not fit in 64 bits.
    fn extent(&self, rec: &Record, parent: &[u8]) -> Result<Extent, IsoError> {
        rec.extent().ok_or_else(|| {
            self.image.corrupt(format!(
                "the extent of record {:?} in directory /{} lies beyond any image",
                lossy(rec.ident),
                lossy(parent)
            ))
        })
    }

    /// Adds a record's extent to a file's data (an interleaved one cannot be read); corrupt when
    /// the file's size would not fit in 64 bits.
    fn add_data(&self, entry: &mut IsoEntry, rec: &Record, parent: &[u8]) -> Result<(), IsoError> {
        let (start, len) = self.extent(rec, parent)?;
        if entry.add_extent(start, len).is_none() {
            return Err(self.image.corrupt(format!(
                "file {} in directory /{} is larger than 2^64 bytes",
                entry.display_path(),
                lossy(parent)
            )));
        }
        if rec.interleaved {
            entry.unsupported = Some("an interleaved file");
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
        let sector = self.image.read_block(lba, what)?;
        let dot = Record::parse(&sector)
            .filter(|r| r.ident == [0] && r.flags & FLAG_DIRECTORY != 0)
            .ok_or_else(|| self.image.corrupt(format!("{} has no . record", what())))?;
        let rr =
            self.susp
                .rock_ridge(self.image, dot.su.get(self.skip..).unwrap_or(&[]), parent)?;
        let extent = dot.extent().ok_or_else(|| {
            self.image
                .corrupt(format!("the extent of {} lies beyond any image", what()))
        })?;
        Ok((extent, rr))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;

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
}
