//! What an image holds, for `iuk-build inspect` and for explaining differences between images:
//! a serializable [`Report`] (superblock, compressor settings, flags, counts, where every table
//! lies) and an `unsquashfs -lls`-style [`listing`].
//!
//! Both are pure functions of the image bytes: owners are printed as numbers (never looked up on
//! the host), times in UTC.

use std::collections::HashSet;

use serde::Serialize;

use super::archive::Archive;
use super::compress::id;
use super::inode::{decode_dev, InodeBody, BLOCK_UNCOMPRESSED};
use super::superblock::{flags, Superblock};
use super::{Le, Result, INVALID_U32};

/// Everything `inspect` says about an image.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The name the archive was opened with.
    pub name: String,
    /// The superblock, field by field.
    pub superblock: Superblock,
    /// The superblock's modification time, `YYYY-MM-DD HH:MM:SS` UTC.
    pub mod_time_utc: String,
    /// Compressor and its settings.
    pub compressor: CompressorReport,
    /// Names of the superblock flags that are set.
    pub flags: Vec<String>,
    /// Counts of tables and tree objects.
    pub counts: Counts,
    /// Every region of the image, sorted by start.
    pub tables: Vec<TableReport>,
}

/// The compressor an image declares and the settings its options block stores.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompressorReport {
    /// `gzip`, `xz`, `zstd`, `lz4` or `lzma`.
    pub name: &'static str,
    /// On-disk compressor id.
    pub id: u16,
    /// Whether a compressor-options block follows the superblock.
    pub options_stored: bool,
    /// Compression level, where the format records one (gzip, zstd; their defaults when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<i64>,
    /// zlib window size (log2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_size: Option<u16>,
    /// zlib strategies tried.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strategies: Vec<&'static str>,
    /// xz dictionary size in bytes (the block size when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dict_size: Option<u32>,
    /// xz branch/call/jump filters tried.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<&'static str>,
    /// lz4 format version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lz4_version: Option<u32>,
    /// lz4 high-compression mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lz4_high_compression: Option<bool>,
}

/// Counts from the tables and from walking the tree. Per-type counts are of distinct inodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Inodes the superblock declares.
    pub inodes: u32,
    /// Entries of the id table.
    pub ids: u16,
    /// Entries of the fragment table.
    pub fragments: u32,
    /// Entries of the xattr id table.
    pub xattr_ids: u64,
    /// Directory entries, the root included.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Character devices.
    pub char_devices: u64,
    /// Block devices.
    pub block_devices: u64,
    /// Named pipes.
    pub fifos: u64,
    /// Sockets.
    pub sockets: u64,
    /// Inodes named by more than one entry.
    pub hard_linked_inodes: u64,
    /// Entries naming an inode an earlier entry already named.
    pub hard_link_entries: u64,
    /// Inodes carrying extended attributes.
    pub inodes_with_xattrs: u64,
    /// Sum of the sizes of the regular files.
    pub file_bytes: u64,
    /// Full data blocks listed by files (sparse ones included).
    pub data_blocks: u64,
    /// Data blocks stored as holes.
    pub sparse_blocks: u64,
    /// Data blocks stored uncompressed.
    pub uncompressed_blocks: u64,
    /// Files whose tail lies in a fragment block.
    pub fragment_tails: u64,
}

/// One region of the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableReport {
    /// Region name.
    pub name: &'static str,
    /// Absolute offset of its first byte.
    pub start: u64,
    /// Its size in bytes.
    pub size: u64,
}

const FLAG_NAMES: [(u16, &str); 12] = [
    (flags::UNCOMPRESSED_INODES, "uncompressed-inodes"),
    (flags::UNCOMPRESSED_DATA, "uncompressed-data"),
    (0x0004, "check"),
    (flags::UNCOMPRESSED_FRAGMENTS, "uncompressed-fragments"),
    (flags::NO_FRAGMENTS, "no-fragments"),
    (flags::ALWAYS_FRAGMENTS, "always-fragments"),
    (flags::DUPLICATES, "duplicates"),
    (flags::EXPORTABLE, "exportable"),
    (flags::UNCOMPRESSED_XATTRS, "uncompressed-xattrs"),
    (flags::NO_XATTRS, "no-xattrs"),
    (flags::COMPRESSOR_OPTIONS, "compressor-options"),
    (flags::UNCOMPRESSED_IDS, "uncompressed-ids"),
];

/// Names of the flag bits set in `f`; unknown bits as `unknown-0xNNNN`.
pub fn flag_names(f: u16) -> Vec<String> {
    let mut out = Vec::new();
    let mut known = 0u16;
    for (bit, name) in FLAG_NAMES {
        known |= bit;
        if f & bit != 0 {
            out.push(name.to_string());
        }
    }
    for i in 0..16 {
        let bit = 1u16 << i;
        if f & bit != 0 && known & bit == 0 {
            out.push(format!("unknown-{bit:#06x}"));
        }
    }
    out
}

fn bit_names(v: u32, names: &[(u32, &'static str)]) -> Vec<&'static str> {
    names
        .iter()
        .filter(|(b, _)| v & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Decodes the compressor settings of `archive` (options block where present, format defaults
/// otherwise).
pub fn compressor_report(archive: &Archive) -> Result<CompressorReport> {
    let sb = archive.superblock();
    let opts = archive.compressor_options();
    let mut r = CompressorReport {
        name: archive.compressor().name(),
        id: sb.compression_id,
        options_stored: opts.is_some(),
        ..CompressorReport::default()
    };
    match sb.compression_id {
        id::GZIP => match opts {
            Some(o) => {
                let mut le = Le::new(o, "gzip options");
                r.level = Some(le.u32()? as i64);
                r.window_size = Some(le.u16()?);
                r.strategies = bit_names(
                    le.u16()? as u32,
                    &[
                        (0x01, "default"),
                        (0x02, "filtered"),
                        (0x04, "huffman-only"),
                        (0x08, "rle"),
                        (0x10, "fixed"),
                    ],
                );
            }
            None => {
                r.level = Some(super::compress::GZIP_DEFAULT_LEVEL as i64);
                r.window_size = Some(15);
            }
        },
        id::XZ => match opts {
            Some(o) => {
                let mut le = Le::new(o, "xz options");
                r.dict_size = Some(le.u32()?);
                r.filters = bit_names(
                    le.u32()?,
                    &[
                        (0x01, "x86"),
                        (0x02, "powerpc"),
                        (0x04, "ia64"),
                        (0x08, "arm"),
                        (0x10, "armthumb"),
                        (0x20, "sparc"),
                    ],
                );
            }
            None => r.dict_size = Some(sb.block_size),
        },
        id::ZSTD => {
            r.level = Some(match opts {
                Some(o) => Le::new(o, "zstd options").u32()? as i64,
                None => super::compress::ZSTD_DEFAULT_LEVEL as i64,
            })
        }
        id::LZ4 => {
            if let Some(o) = opts {
                let mut le = Le::new(o, "lz4 options");
                r.lz4_version = Some(le.u32()?);
                r.lz4_high_compression = Some(le.u32()? & 1 != 0);
            }
        }
        _ => {}
    }
    Ok(r)
}

/// The report of an opened archive; walks the whole tree (inodes and listings, no file data).
pub fn report(archive: &Archive) -> Result<Report> {
    let sb = archive.superblock().clone();
    let mut c = Counts {
        inodes: sb.inode_count,
        ids: sb.id_count,
        fragments: sb.fragment_count,
        xattr_ids: archive.xattr_id_count(),
        ..Counts::default()
    };
    let mut linked: HashSet<u32> = HashSet::new();
    archive.walk(|e| {
        c.entries += 1;
        if !e.first_link {
            c.hard_link_entries += 1;
            if linked.insert(e.inode.header.number) {
                c.hard_linked_inodes += 1;
            }
            return Ok(());
        }
        if e.inode.body.xattr() != INVALID_U32 {
            c.inodes_with_xattrs += 1;
        }
        match &e.inode.body {
            InodeBody::Dir { .. } => c.dirs += 1,
            InodeBody::File {
                size,
                frag,
                block_sizes,
                ..
            } => {
                c.files += 1;
                c.file_bytes = c.file_bytes.checked_add(*size).ok_or_else(|| {
                    crate::corrupt!(
                        "file inode {}: the sizes of the files add up past 2^64 bytes",
                        e.inode.header.number
                    )
                })?;
                // Each block counted has 4 bytes in the inode table: these sums stay below the image size.
                c.data_blocks += block_sizes.len() as u64;
                c.sparse_blocks += block_sizes.iter().filter(|s| **s == 0).count() as u64;
                c.uncompressed_blocks += block_sizes
                    .iter()
                    .filter(|s| **s & BLOCK_UNCOMPRESSED != 0)
                    .count() as u64;
                if *frag != INVALID_U32 && *size % sb.block_size as u64 != 0 {
                    c.fragment_tails += 1;
                }
            }
            InodeBody::Symlink { .. } => c.symlinks += 1,
            InodeBody::Device { block: true, .. } => c.block_devices += 1,
            InodeBody::Device { block: false, .. } => c.char_devices += 1,
            InodeBody::Ipc { socket: false, .. } => c.fifos += 1,
            InodeBody::Ipc { socket: true, .. } => c.sockets += 1,
        }
        Ok(())
    })?;
    let mut tables = vec![TableReport {
        name: "superblock",
        start: 0,
        size: super::superblock::SIZE as u64,
    }];
    for e in archive.extents() {
        if e.name == "data" && e.start > super::superblock::SIZE as u64 {
            tables.push(TableReport {
                name: "compressor options",
                start: super::superblock::SIZE as u64,
                size: e.start - super::superblock::SIZE as u64,
            });
        }
        tables.push(TableReport {
            name: e.name,
            start: e.start,
            size: e.end.saturating_sub(e.start),
        });
    }
    Ok(Report {
        name: archive.name().to_string(),
        mod_time_utc: utc(sb.mod_time.into(), true),
        compressor: compressor_report(archive)?,
        flags: flag_names(sb.flags),
        counts: c,
        tables,
        superblock: sb,
    })
}

/// `YYYY-MM-DD HH:MM` (with `:SS` when `seconds`) for `t` seconds after the epoch, in UTC.
pub fn utc(t: u64, seconds: bool) -> String {
    let days = (t / 86_400) as i64;
    let rem = t % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let (h, min, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if seconds {
        format!("{y}-{m:02}-{d:02} {h:02}:{min:02}:{s:02}")
    } else {
        format!("{y}-{m:02}-{d:02} {h:02}:{min:02}")
    }
}

/// `ls`-style mode string: type letter, then rwx triplets with s/S, s/S and t/T for setuid,
/// setgid and sticky.
pub fn mode_string(type_char: char, perm: u16) -> String {
    let bit = |m: u16, c: char| if perm & m != 0 { c } else { '-' };
    let special = |x: u16, sp: u16, set: char, unset: char| match (perm & x != 0, perm & sp != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        type_char,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// Bytes as text: valid UTF-8 as is, except control characters; those and invalid bytes as
/// `\xNN` (so every entry stays on one line).
pub fn escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for ch in chunk.valid().chars() {
            if ch.is_control() && (ch as u32) < 0x80 {
                out.push_str(&format!("\\x{:02x}", ch as u32));
            } else {
                out.push(ch);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// One line per entry, depth first in bytewise name order, as `unsquashfs -lln` prints them
/// (numeric owners) with times in UTC: `drwxr-xr-x 0/0  45 2024-01-01 00:00 squashfs-root/dir`.
/// Sizes are file sizes, directory sizes as stored (listing + 3), symlink target lengths, 0 for
/// fifos and sockets; devices show `major,minor` (the real numbers, also for minors above 255).
/// Names are shown with [`escape`].
pub fn listing(archive: &Archive) -> Result<Vec<String>> {
    let mut out = Vec::new();
    archive.walk(|e| {
        let h = &e.inode.header;
        let id = |idx: u16| {
            archive
                .ids()
                .get(idx as usize)
                .map(|v| v.to_string())
                .ok_or_else(|| {
                    crate::corrupt!(
                        "inode {}: id index {idx} outside the id table ({} entries)",
                        h.number,
                        archive.ids().len()
                    )
                })
        };
        let (uid, gid) = (id(h.uid_idx)?, id(h.gid_idx)?);
        let pad = 25usize.saturating_sub(uid.len() + gid.len());
        let (type_char, field, target) = match &e.inode.body {
            InodeBody::Dir { size, .. } => ('d', format!("{size:>pad$}"), None),
            InodeBody::File { size, .. } => ('-', format!("{size:>pad$}"), None),
            InodeBody::Symlink { target, .. } => {
                ('l', format!("{:>pad$}", target.len()), Some(escape(target)))
            }
            InodeBody::Device { block, rdev, .. } => {
                let dev = decode_dev(*rdev) as libc::dev_t;
                let w = pad.saturating_sub(7);
                (
                    if *block { 'b' } else { 'c' },
                    format!("{:>w$}{:>3},{:>3}", " ", libc::major(dev), libc::minor(dev)),
                    None,
                )
            }
            InodeBody::Ipc { socket, .. } => (
                if *socket { 's' } else { 'p' },
                format!("{:>pad$}", 0),
                None,
            ),
        };
        let mut path = String::from("squashfs-root");
        if !e.path.is_empty() {
            path.push('/');
            path.push_str(&escape(e.path));
        }
        let mut line = format!(
            "{} {uid}/{gid} {field} {} {path}",
            mode_string(type_char, h.perm),
            utc(h.mtime.into(), false)
        );
        if let Some(t) = target {
            line.push_str(" -> ");
            line.push_str(&t);
        }
        out.push(line);
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::testkit::*;
    use std::process::Command;

    #[test]
    fn times_modes_flags_and_escapes() {
        assert_eq!(utc(0, false), "1970-01-01 00:00");
        assert_eq!(utc(u32::MAX.into(), true), "2106-02-07 06:28:15");
        assert_eq!(utc(951_782_400, false), "2000-02-29 00:00");
        assert_eq!(utc(1_704_067_199, true), "2023-12-31 23:59:59");
        assert_eq!(mode_string('d', 0o755), "drwxr-xr-x");
        assert_eq!(mode_string('-', 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string('-', 0o4644), "-rwSr--r--");
        assert_eq!(mode_string('-', 0o2755), "-rwxr-sr-x");
        assert_eq!(mode_string('-', 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string('d', 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string('d', 0o1770), "drwxrwx--T");
        assert_eq!(mode_string('s', 0), "s---------");
        assert_eq!(
            flag_names(flags::NO_FRAGMENTS | flags::EXPORTABLE | 0x8000),
            ["no-fragments", "exportable", "unknown-0x8000"]
        );
        assert_eq!(escape(b"a\xffb\nc\xc3\xa9"), "a\\xffb\\x0ac\u{e9}");
    }

    fn build(args: &[&str]) -> Option<(tempfile::TempDir, std::path::PathBuf, Model)> {
        if !have("mksquashfs") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        small_source(&src);
        let many = src.join("many");
        std::fs::create_dir(&many).unwrap();
        for i in 0..600 {
            std::fs::write(many.join(format!("entry-{i:04}")), b"").unwrap();
        }
        finish_mtimes(&src);
        let model = model_of_dir(&src);
        let img = mksquashfs(&src, &dir.path().join("img"), args);
        Some((dir, img, model))
    }

    #[test]
    fn listing_matches_unsquashfs() {
        let Some((_dir, img, _)) = build(&["-comp", "gzip", "-b", "4K"]) else {
            return;
        };
        let a = Archive::open(&img).unwrap();
        let ours = listing(&a).unwrap();
        let out = Command::new("unsquashfs")
            .env("TZ", "UTC")
            .arg("-lln")
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success());
        let theirs: Vec<String> = out
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(escape)
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{ours:#?}\n{theirs:#?}");
        for (o, t) in ours.iter().zip(&theirs) {
            // unsquashfs prints rdev >> 8 and rdev & 0xff: wrong for minors above 255.
            if o.ends_with("/dev/bigminor") {
                assert!(o.contains(" 259,70000 "), "{o}");
                continue;
            }
            assert_eq!(o, t);
        }
        assert!(ours.iter().any(|l| l.starts_with("-rwSr--r-- ")));
        assert!(ours
            .iter()
            .any(|l| l.contains(" 2106-02-07 06:28 squashfs-root/tmax")));
        assert!(ours.iter().any(|l| l.contains(" 100000/200000 ")));
        assert!(ours
            .iter()
            .any(|l| l.ends_with("squashfs-root/bad-\\xff\\xfe-name")));
    }

    #[test]
    fn report_counts_and_settings() {
        let Some((dir, img, model)) = build(&[
            "-comp",
            "gzip",
            "-b",
            "4K",
            "-Xcompression-level",
            "3",
            "-Xwindow-size",
            "12",
        ]) else {
            return;
        };
        let a = Archive::open(&img).unwrap();
        let r = report(&a).unwrap();
        let count = |k: &str| model.ents.values().filter(|e| e.kind == k).count() as u64;
        let links: u64 = model.links.iter().map(|g| g.len() as u64 - 1).sum();
        let c = &r.counts;
        assert_eq!(c.entries, model.ents.len() as u64);
        assert_eq!(c.dirs, count("directory"));
        assert_eq!(c.files + links, count("file"));
        assert_eq!(c.symlinks, count("symlink"));
        assert_eq!((c.char_devices, c.block_devices), (2, 1));
        assert_eq!((c.fifos, c.sockets), (1, 1));
        assert_eq!((c.hard_linked_inodes, c.hard_link_entries), (1, 2));
        assert_eq!(c.inodes as u64, c.entries - c.hard_link_entries);
        assert!(c.fragments > 0 && c.fragment_tails > 0 && c.data_blocks >= 3);
        let with_xattrs = model.ents.values().filter(|e| !e.xattrs.is_empty());
        assert_eq!(c.inodes_with_xattrs, with_xattrs.clone().count() as u64);
        let sets: std::collections::HashSet<_> = with_xattrs.map(|e| &e.xattrs).collect();
        assert_eq!(c.xattr_ids, sets.len() as u64);
        let mut seen = std::collections::HashSet::new();
        let bytes: u64 = model
            .ents
            .iter()
            .filter_map(|(p, e)| e.content.map(|c| (p, c.0)))
            .filter(|(p, _)| {
                !model.links.iter().any(|g| g[1..].contains(p)) && seen.insert(p.to_vec())
            })
            .map(|(_, n)| n)
            .sum();
        assert_eq!(c.file_bytes, bytes);
        assert_eq!(r.compressor.name, "gzip");
        assert_eq!(r.compressor.level, Some(3));
        assert_eq!(r.compressor.window_size, Some(12));
        assert!(r.compressor.options_stored);
        assert!(r.flags.contains(&"compressor-options".to_string()));
        assert!(r.flags.contains(&"exportable".to_string()));
        let names: Vec<&str> = r.tables.iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "superblock",
                "compressor options",
                "data",
                "inode table",
                "directory table",
                "fragment table",
                "export table",
                "id table",
                "xattr table"
            ]
        );
        for w in r.tables.windows(2) {
            assert!(w[0].start + w[0].size <= w[1].start, "{:?}", r.tables);
        }
        let last = r.tables.last().unwrap();
        assert_eq!(last.start + last.size, r.superblock.bytes_used);

        let src = dir.path().join("src");
        for (args, check) in [
            (
                &[
                    "-comp",
                    "xz",
                    "-b",
                    "64K",
                    "-Xbcj",
                    "x86,arm",
                    "-Xdict-size",
                    "32K",
                ][..],
                (None, Some(32 << 10), vec!["x86", "arm"]),
            ),
            (
                &["-comp", "xz", "-b", "64K"][..],
                (None, Some(64 << 10), vec![]),
            ),
            (&["-comp", "zstd", "-b", "4K"][..], (Some(15), None, vec![])),
        ] {
            let img = mksquashfs(&src, &dir.path().join("img2"), args);
            let a = Archive::open(&img).unwrap();
            let c = compressor_report(&a).unwrap();
            assert_eq!((c.level, c.dict_size, c.filters), check, "{args:?}");
        }
        let img = mksquashfs(&src, &dir.path().join("img3"), &["-comp", "lz4", "-Xhc"]);
        let c = compressor_report(&Archive::open(&img).unwrap()).unwrap();
        assert_eq!(
            (c.lz4_version, c.lz4_high_compression),
            (Some(1), Some(true))
        );
    }
}
