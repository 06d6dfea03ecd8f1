//! Volume descriptors and directory records: the primary and Joliet roots, and which namespace
//! is listed (Rock Ridge when the root's `.` record starts with a SUSP `SP` entry, else Joliet,
//! else plain ISO 9660).

use super::{Image, IsoError, Namespace};

/// Logical block size; the only one supported.
pub(super) const SECTOR: u64 = 2048;
/// Volume descriptors start at this sector.
const FIRST_DESCRIPTOR: u64 = 16;
/// Volume descriptors examined before giving up on the terminator.
const MAX_DESCRIPTORS: u64 = 64;

/// ECMA-119 file flags.
pub(super) const FLAG_DIRECTORY: u8 = 0x02;
pub(super) const FLAG_ASSOCIATED: u8 = 0x04;
pub(super) const FLAG_MULTI_EXTENT: u8 = 0x80;

/// A directory's extent: byte offset and length.
pub(super) type Extent = (u64, u64);

/// The fixed part of one directory record, borrowed from the sector holding it.
pub(super) struct Record<'r> {
    /// First block of the extent (the extended attribute record, if any, comes first).
    lba: u32,
    /// Blocks of extended attribute record before the data.
    xar: u8,
    /// Data length in bytes.
    len: u32,
    /// Recording date, 7-byte form.
    pub(super) date: &'r [u8],
    /// File flags.
    pub(super) flags: u8,
    /// File unit size or interleave gap set.
    pub(super) interleaved: bool,
    /// File identifier.
    pub(super) ident: &'r [u8],
    /// System use area.
    pub(super) su: &'r [u8],
}

impl Record<'_> {
    /// Parses one record; `None` if it is shorter than its fields.
    pub(super) fn parse(rec: &[u8]) -> Option<Record<'_>> {
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

    /// The data's byte offset and length in the image; `None` when the offset does not fit in
    /// 64 bits (the caller reports the record as corrupt).
    pub(super) fn extent(&self) -> Option<Extent> {
        let block = u64::from(self.lba).checked_add(u64::from(self.xar))?;
        Some((block_offset(block)?, u64::from(self.len)))
    }

    /// Whether this is the `.` or `..` record.
    pub(super) fn is_dot(&self) -> bool {
        matches!(self.ident, [0] | [1])
    }
}

/// Byte offset of a logical block; `None` when it does not fit in 64 bits.
pub(super) fn block_offset(block: u64) -> Option<u64> {
    block.checked_mul(SECTOR)
}

/// Little-endian u32 at `at` (the first half of an ECMA-119 both-endian field).
pub(super) fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_le_bytes)
}

/// The tree to list: the namespace (`force`, else the preferred one: Rock Ridge, Joliet, plain
/// ISO 9660), its root directory extent and the SUSP skip length (0 unless Rock Ridge).
pub(super) fn select_root(
    image: &Image,
    force: Option<Namespace>,
) -> Result<(Namespace, Extent, usize), IsoError> {
    let (primary, joliet) = volume_descriptors(image)?;
    let susp = match force {
        None | Some(Namespace::RockRidge) => susp_skip(image, primary)?,
        Some(_) => None,
    };
    let namespace = match (force, susp, &joliet) {
        (Some(namespace), _, _) => namespace,
        (None, Some(_), _) => Namespace::RockRidge,
        (None, None, Some(_)) => Namespace::Joliet,
        (None, None, None) => Namespace::Iso9660,
    };
    let (root, skip) = match (namespace, susp, joliet) {
        (Namespace::RockRidge, Some(skip), _) => (primary, skip),
        (Namespace::RockRidge, None, _) => {
            return Err(image.unsupported("the image has no Rock Ridge extensions".into()));
        }
        (Namespace::Joliet, _, Some(root)) => (root?, 0),
        (Namespace::Joliet, _, None) => {
            return Err(image.unsupported("the image has no Joliet tree".into()));
        }
        (Namespace::Iso9660, _, _) => (primary, 0),
    };
    Ok((namespace, root, skip))
}

/// Reads the volume descriptor set: the primary root and the Joliet root, if any (its errors
/// matter only when the Joliet tree is listed).
fn volume_descriptors(
    image: &Image,
) -> Result<(Extent, Option<Result<Extent, IsoError>>), IsoError> {
    let not_iso = |reason: String| IsoError::NotIso {
        path: image.path.to_path_buf(),
        reason,
    };
    if image.size < (FIRST_DESCRIPTOR + 1) * SECTOR {
        return Err(not_iso(format!(
            "{} bytes is too small (volume descriptors start at byte {})",
            image.size,
            FIRST_DESCRIPTOR * SECTOR
        )));
    }
    let mut primary = None;
    let mut joliet = None;
    for sector in FIRST_DESCRIPTOR..FIRST_DESCRIPTOR + MAX_DESCRIPTORS {
        let offset = sector * SECTOR;
        if offset + SECTOR > image.size {
            break;
        }
        let vd = image.read(offset, SECTOR, || "volume descriptor".into())?;
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
            Some(1) if primary.is_none() => primary = Some(descriptor_root(image, &vd, offset)?),
            Some(2) if joliet.is_none() && is_joliet(&vd) => {
                joliet = Some(descriptor_root(image, &vd, offset));
            }
            _ => {}
        }
    }
    let primary = primary.ok_or_else(|| image.corrupt("no primary volume descriptor".into()))?;
    Ok((primary, joliet))
}

/// The root directory extent of a primary or supplementary volume descriptor.
fn descriptor_root(image: &Image, vd: &[u8], offset: u64) -> Result<Extent, IsoError> {
    let block = vd.get(128..130).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if block != Some(2048) {
        return Err(image.unsupported(format!(
            "logical block size {} in the descriptor at byte {offset} (only 2048 is supported)",
            block.unwrap_or(0)
        )));
    }
    vd.get(156..190)
        .and_then(Record::parse)
        .and_then(|r| r.extent())
        .ok_or_else(|| {
            image.corrupt(format!(
                "malformed root directory record in the volume descriptor at byte {offset}"
            ))
        })
}

/// The SUSP skip length if the root's `.` record starts with an `SP` entry (Rock Ridge).
fn susp_skip(image: &Image, root: Extent) -> Result<Option<usize>, IsoError> {
    let sector = image.read(root.0, root.1.min(SECTOR), || "root directory".into())?;
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

/// Whether a supplementary volume descriptor is Joliet (UCS-2 escape sequence).
fn is_joliet(vd: &[u8]) -> bool {
    vd.get(6) == Some(&1) && matches!(vd.get(88..91), Some([b'%', b'/', b'@' | b'C' | b'E']))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;
    use std::fs;
    use std::process::Command;

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
}
