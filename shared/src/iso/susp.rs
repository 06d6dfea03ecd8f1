//! System Use Sharing Protocol entries and the Rock Ridge (RRIP) ones among them: names, modes,
//! owners, times, symlink targets, relocated directories, and the continuation areas (`CE`) that
//! chain one record's entries across blocks.

use super::names::lossy;
use super::time::{long_time, short_time};
use super::volume::{le32, SECTOR};
use super::{Image, IsoError, MAX_CONTINUATIONS, MAX_NAME, MAX_PATH, MAX_TOTAL_CONTINUATIONS};

/// Rock Ridge information gathered from one record's system use area and its continuations.
#[derive(Default)]
pub(super) struct RockRidge {
    /// `NM` name, joined.
    pub(super) name: Option<Vec<u8>>,
    /// `NM` said `.` or `..`.
    pub(super) name_special: bool,
    /// `PX` fields.
    pub(super) mode: Option<u32>,
    pub(super) nlink: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    /// `TF` modify time.
    pub(super) mtime: Option<i64>,
    /// `SL` target, joined.
    pub(super) target: Option<Vec<u8>>,
    /// The last `SL` component continues in the next one.
    sl_continues: bool,
    /// The target so far ends in the root component.
    sl_after_root: bool,
    /// `RE`: this is a relocated directory, listed where its `CL` points from.
    pub(super) relocated: bool,
    /// `CL`: block of the relocated directory this placeholder stands for.
    pub(super) child_link: Option<u32>,
    /// `ZF`: the data is zisofs-compressed.
    pub(super) zisofs: bool,
}

/// A continuation area: block, offset in it, length.
type Continuation = (u32, usize, usize);

/// The SUSP continuation areas of one tree: how many were followed, and the block last read.
#[derive(Default)]
pub(super) struct Continuations {
    /// Continuation areas followed so far.
    followed: usize,
    /// The block last read for a continuation area.
    cache: Option<(u32, Vec<u8>)>,
}

impl Continuations {
    /// Parses a system use area and the continuation areas it chains to.
    pub(super) fn rock_ridge(
        &mut self,
        image: &Image,
        su: &[u8],
        parent: &[u8],
    ) -> Result<RockRidge, IsoError> {
        let mut rr = RockRidge::default();
        let mut next = susp_area(su, &mut rr)
            .map_err(|why| image.corrupt(format!("{why} in directory /{}", lossy(parent))))?;
        let mut hops = 0;
        while let Some((block, offset, len)) = next {
            hops += 1;
            self.followed += 1;
            if self.followed > MAX_TOTAL_CONTINUATIONS {
                return Err(image.corrupt(format!(
                    "more than {MAX_TOTAL_CONTINUATIONS} SUSP continuation areas"
                )));
            }
            if hops > MAX_CONTINUATIONS {
                return Err(image.corrupt(format!(
                    "more than {MAX_CONTINUATIONS} SUSP continuation areas for an entry in /{}",
                    lossy(parent)
                )));
            }
            let parsed = {
                let sector = self.block(image, block, parent)?;
                match offset
                    .checked_add(len)
                    .and_then(|end| sector.get(offset..end))
                {
                    Some(area) => susp_area(area, &mut rr),
                    None => Err("SUSP continuation area beyond its block".into()),
                }
            };
            next = parsed
                .map_err(|why| image.corrupt(format!("{why} in directory /{}", lossy(parent))))?;
        }
        Ok(rr)
    }

    /// One block of the image, cached for consecutive continuation areas in it.
    fn block(&mut self, image: &Image, lba: u32, parent: &[u8]) -> Result<&[u8], IsoError> {
        if self.cache.as_ref().is_none_or(|(cached, _)| *cached != lba) {
            let data = image.read_block(lba, || {
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
    while let Some(&[s0, s1, len, _version]) = area.get(pos..).and_then(|rest| rest.get(..4)) {
        let len = usize::from(len);
        if len < 4 {
            break;
        }
        let Some(body) = area.get(pos..).and_then(|rest| rest.get(4..len)) else {
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
    if u64::from(offset).saturating_add(u64::from(len)) > SECTOR {
        return Err(format!(
            "SUSP continuation area at block {block} offset {offset} (+{len}) crosses its block"
        ));
    }
    let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
        return Err(format!(
            "SUSP continuation area at block {block} offset {offset} (+{len}) is too large"
        ));
    };
    Ok((len > 0).then_some((block, offset, len)))
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

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;

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
}
