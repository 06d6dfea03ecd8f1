//! The image sections of a comparison: superblock fields and compressor settings, the entries
//! (through [`super::tree`]), and the bytes — which region differs, from which offset, and inside
//! the data region which file's block it belongs to.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::io::{FileImage, ReadAt, SubImage};
use crate::squashfs::archive::Archive;
use crate::squashfs::check::check;
use crate::squashfs::inode::{InodeBody, BLOCK_UNCOMPRESSED};
use crate::squashfs::inspect::{compressor_report, flag_names, utc};
use crate::squashfs::{superblock, SqfsError, INVALID_U32, INVALID_U64};
use crate::tree::{InodeKind, NodeId, Tree};

use super::report::{push_section, show_path, CompareError, Difference, Section};
use super::tree::tree_diff;

/// One opened input (or an image nested inside one).
pub(super) struct Side {
    /// Its bytes.
    pub(super) image: Arc<dyn ReadAt>,
    /// The image opened.
    pub(super) archive: Arc<Archive>,
    /// Its length in bytes.
    pub(super) size: u64,
    /// sha256 of its bytes.
    pub(super) sha256: [u8; 32],
    /// Offset of this image inside the outer file, when it is nested and stored contiguously.
    pub(super) base: Option<u64>,
}

impl Side {
    /// Opens the file at `path` as an image.
    pub(super) fn open(path: &Path) -> Result<Side, CompareError> {
        let name = path.display().to_string();
        let io = |e| CompareError::Io {
            path: name.clone(),
            source: e,
        };
        let file = File::open(path).map_err(io)?;
        let image: Arc<dyn ReadAt> = Arc::new(FileImage::new(file).map_err(io)?);
        Side::from_image(image, name, None)
    }

    fn from_image(
        image: Arc<dyn ReadAt>,
        name: String,
        base: Option<u64>,
    ) -> Result<Side, CompareError> {
        let archive = Archive::from_image(image.clone(), name.clone())?;
        let sha256 = sha256_of(&*image).map_err(|e| CompareError::Io {
            path: name,
            source: e,
        })?;
        Ok(Side {
            size: image.len(),
            image,
            archive,
            sha256,
            base,
        })
    }
}

fn sha256_of(image: &dyn ReadAt) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < image.len() {
        let n = (image.len() - at).min(buf.len() as u64) as usize;
        image.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize().into())
}

/// Opens the file `n` of an image as an image of its own: in place when its bytes lie
/// contiguous and uncompressed, else through the outer image's blocks, decoded on demand (a
/// kit's layer whose padded last block, or a block the container's screen compressed, is not
/// stored as it is): memory stays a few blocks whatever the layer's size.
pub(super) fn nested(outer: &Side, tree: &Tree, n: NodeId, path: &str) -> Result<Side, String> {
    let InodeKind::File(content) = &tree.node_inode(n).kind else {
        return Err("not a regular file".into());
    };
    let name = format!("{}:{path}", outer.archive.name());
    if let Some(start) = contiguous_start(&outer.archive, path.as_bytes()) {
        let image: Arc<dyn ReadAt> = Arc::new(
            SubImage::new(outer.image.clone(), start, content.size).map_err(|e| e.to_string())?,
        );
        let base = outer.base.unwrap_or(0) + start;
        return Side::from_image(image, name, Some(base)).map_err(|e| e.to_string());
    }
    let image: Arc<dyn ReadAt> = match content.source.random_access() {
        Some(image) => image,
        None => Arc::new(content.read_all().map_err(|e| e.to_string())?),
    };
    Side::from_image(image, name, None).map_err(|e| e.to_string())
}

/// Where the bytes of the file at `path` start in the image, when they are stored as they are
/// (every block uncompressed, none sparse, no fragment).
fn contiguous_start(archive: &Archive, path: &[u8]) -> Option<u64> {
    let mut found = None;
    let _ = archive.walk(|e| {
        if e.path == path {
            if let InodeBody::File {
                blocks_start,
                size,
                frag,
                block_sizes,
                ..
            } = &e.inode.body
            {
                let bs = archive.superblock().block_size as u64;
                let whole_blocks = *frag == INVALID_U32 || size % bs == 0;
                let stored: u64 = block_sizes
                    .iter()
                    .map(|s| (s & !BLOCK_UNCOMPRESSED) as u64)
                    .sum();
                let plain = block_sizes
                    .iter()
                    .all(|s| s & BLOCK_UNCOMPRESSED != 0 && s & !BLOCK_UNCOMPRESSED != 0);
                if whole_blocks && plain && stored == *size {
                    found = Some(*blocks_start);
                }
            }
        }
        Ok(())
    });
    found
}

// ------------------------------------------------------------------------------------------------
// SquashFS images

/// Superblock, entries and bytes sections of two differing images. `content`: compare file
/// contents too (off for kit images, whose files the kit sections compared already).
pub(super) fn image_sections(
    label: &str,
    sa: &Side,
    ta: &Result<&Tree, &SqfsError>,
    sb: &Side,
    tb: &Result<&Tree, &SqfsError>,
    content: bool,
    out: &mut Vec<Section>,
) {
    if sa.sha256 == sb.sha256 && sa.size == sb.size {
        return;
    }
    // The metadata check (every table and inode); the data blocks are decoded below, when the
    // contents are hashed, so a block that does not decode shows as an unreadable content.
    let mut s = Section::new(format!("{label}: check"));
    for (side, x) in [("A", sa), ("B", sb)] {
        if let Err(e) = check(&x.archive) {
            s.push(Difference::note(format!(
                "{side} fails the image check: {e}"
            )));
        }
    }
    push_section(out, s);

    let mut s = Section::new(format!("{label}: superblock"));
    let fa = superblock_fields(&sa.archive);
    let fb = superblock_fields(&sb.archive);
    for ((name, a), (_, b)) in fa.iter().zip(&fb) {
        if a != b {
            s.push(Difference::both(*name, a.as_str(), b.as_str()));
        }
    }
    push_section(out, s);

    let mut s = Section::new(format!("{label}: entries"));
    let mut trees_equal = false;
    match (ta, tb) {
        (Ok(ta), Ok(tb)) => {
            tree_diff(ta, tb, content, &mut s);
            trees_equal = s.is_empty() && content;
        }
        _ => {
            for (side, r) in [("A", ta), ("B", tb)] {
                if let Err(e) = r {
                    s.push(Difference::note(format!("{side}: tree unreadable: {e}")));
                }
            }
        }
    }
    push_section(out, s);

    let mut s = Section::new(format!("{label}: bytes"));
    if trees_equal {
        s.push(Difference::note(
            "the trees are equal (every entry, its metadata and content); only the layout differs",
        ));
    }
    bytes_diff(sa, sb, &mut s);
    push_section(out, s);
}

fn superblock_fields(a: &Archive) -> Vec<(&'static str, String)> {
    let sb = a.superblock();
    let table = |v: u64| {
        if v == INVALID_U64 {
            "none".to_string()
        } else {
            v.to_string()
        }
    };
    let mut f = vec![
        ("bytes used", sb.bytes_used.to_string()),
        ("inode count", sb.inode_count.to_string()),
        (
            "modification time",
            format!("{} ({} UTC)", sb.mod_time, utc(sb.mod_time.into(), true)),
        ),
        ("block size", sb.block_size.to_string()),
        ("block log", sb.block_log.to_string()),
        ("fragment count", sb.fragment_count.to_string()),
        (
            "compression",
            format!("{} (id {})", a.compressor().name(), sb.compression_id),
        ),
        ("flags", {
            let n = flag_names(sb.flags);
            if n.is_empty() {
                "none".to_string()
            } else {
                n.join(" ")
            }
        }),
        ("id count", sb.id_count.to_string()),
        (
            "version",
            format!("{}.{}", sb.version_major, sb.version_minor),
        ),
        (
            "root inode",
            format!(
                "block {} offset {}",
                sb.root_inode_ref >> 16,
                sb.root_inode_ref & 0xffff
            ),
        ),
        ("inode table start", sb.inode_table_start.to_string()),
        (
            "directory table start",
            sb.directory_table_start.to_string(),
        ),
        ("fragment table start", sb.fragment_table_start.to_string()),
        ("export table start", table(sb.export_table_start)),
        ("id table start", sb.id_table_start.to_string()),
        ("xattr id table start", table(sb.xattr_id_table_start)),
    ];
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    match compressor_report(a) {
        Ok(c) => {
            f.push(("compressor options stored", c.options_stored.to_string()));
            f.push(("compressor level", opt(c.level.map(|l| l.to_string()))));
            f.push((
                "xz dictionary size",
                opt(c.dict_size.map(|d| d.to_string())),
            ));
            f.push((
                "xz filters",
                if c.filters.is_empty() {
                    "none".to_string()
                } else {
                    c.filters.join("+")
                },
            ));
            f.push(("zlib window", opt(c.window_size.map(|w| w.to_string()))));
        }
        Err(e) => f.push(("compressor options", format!("unreadable ({e})"))),
    }
    f
}

/// A named byte range of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Region {
    name: &'static str,
    start: u64,
    end: u64,
}

fn regions(s: &Side) -> Vec<Region> {
    let a = &s.archive;
    let sbsize = superblock::SIZE as u64;
    let mut out = vec![Region {
        name: "superblock",
        start: 0,
        end: sbsize,
    }];
    for e in a.extents() {
        if e.name == "data" && e.start > sbsize {
            out.push(Region {
                name: "compressor options",
                start: sbsize,
                end: e.start,
            });
        }
        out.push(Region {
            name: e.name,
            start: e.start,
            end: e.end,
        });
    }
    let used = a.superblock().bytes_used;
    if s.size > used {
        out.push(Region {
            name: "padding",
            start: used,
            end: s.size,
        });
    }
    out
}

/// Compares `len` bytes of `a` from `a_at` with those of `b` from `b_at` (cut to what both
/// hold): the offset of the first differing byte relative to the starts, and how many differ.
fn first_difference(
    a: &dyn ReadAt,
    a_at: u64,
    b: &dyn ReadAt,
    b_at: u64,
    len: u64,
) -> std::io::Result<Option<(u64, u64)>> {
    let len = len
        .min(a.len().saturating_sub(a_at))
        .min(b.len().saturating_sub(b_at));
    let mut at = 0u64;
    let mut first = None;
    let mut count = 0u64;
    let chunk = 1usize << 20;
    let (mut ba, mut bb) = (vec![0u8; chunk], vec![0u8; chunk]);
    while at < len {
        let n = (len - at).min(chunk as u64) as usize;
        a.read_exact_at(&mut ba[..n], a_at + at)?;
        b.read_exact_at(&mut bb[..n], b_at + at)?;
        if ba[..n] != bb[..n] {
            for (i, (x, y)) in ba[..n].iter().zip(&bb[..n]).enumerate() {
                if x != y {
                    count += 1;
                    first.get_or_insert(at + i as u64);
                }
            }
        }
        at += n as u64;
    }
    Ok(first.map(|f| (f, count)))
}

/// What lies at byte `offset` of an image's data region: a file's block or a fragment block.
fn locate(a: &Archive, offset: u64) -> Option<String> {
    let bs = a.superblock().block_size as u64;
    let mut found: Option<String> = None;
    let mut frag_users: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    let _ = a.walk(|e| {
        if !e.first_link {
            return Ok(());
        }
        if let InodeBody::File {
            blocks_start,
            block_sizes,
            frag,
            size,
            ..
        } = &e.inode.body
        {
            if *frag != INVALID_U32 {
                let users = frag_users.entry(*frag).or_default();
                if users.len() < 3 {
                    users.push(e.path.to_vec());
                }
            }
            if found.is_some() {
                return Ok(());
            }
            let mut at = *blocks_start;
            for (i, s) in block_sizes.iter().enumerate() {
                let stored = (s & !BLOCK_UNCOMPRESSED) as u64;
                if stored > 0 && (at..at + stored).contains(&offset) {
                    let p = show_path(e.path);
                    found = Some(if s & BLOCK_UNCOMPRESSED != 0 {
                        format!(
                            "{p}, byte {} of the file (block {i}, stored uncompressed)",
                            i as u64 * bs + (offset - at)
                        )
                    } else {
                        format!(
                            "{p}, compressed block {i} (file bytes {}..{}), byte {} of the block",
                            i as u64 * bs,
                            ((i as u64 + 1) * bs).min(*size),
                            offset - at
                        )
                    });
                    break;
                }
                at += stored;
            }
        }
        Ok(())
    });
    if found.is_some() {
        return found;
    }
    for i in 0..a.superblock().fragment_count {
        let Ok(f) = a.fragment(i) else { continue };
        let stored = (f.size & !BLOCK_UNCOMPRESSED) as u64;
        if (f.start..f.start + stored).contains(&offset) {
            let users: Vec<String> = frag_users
                .get(&i)
                .map(|v| v.iter().map(|p| show_path(p)).collect())
                .unwrap_or_default();
            return Some(format!(
                "fragment block {i}, byte {} of it (tails of {}{})",
                offset - f.start,
                users.join(", "),
                if users.len() >= 3 { ", …" } else { "" }
            ));
        }
    }
    None
}

fn bytes_diff(sa: &Side, sb: &Side, s: &mut Section) {
    if sa.size != sb.size {
        s.push(Difference::both(
            "file size",
            sa.size.to_string(),
            sb.size.to_string(),
        ));
    }
    let outer = |side: &Side, at: u64| match side.base {
        Some(b) => format!(" [byte {} of the enclosing file]", b + at),
        None => String::new(),
    };
    let inside = |side: &Side, name: &str, at: u64| {
        if name == "data" {
            locate(&side.archive, at)
                .map(|l| format!(", in {l}"))
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let plural = |n: u64| {
        if n == 1 {
            "1 byte differs".to_string()
        } else {
            format!("{n} bytes differ")
        }
    };
    let (ra, rb) = (regions(sa), regions(sb));
    if ra == rb {
        // Same layout: every region that differs, with its first differing byte.
        for r in &ra {
            match first_difference(&*sa.image, r.start, &*sb.image, r.start, r.end - r.start) {
                Ok(Some((off, count))) => {
                    let first = r.start + off;
                    s.push(Difference::note(format!(
                        "{} (bytes {}..{}): {}, the first at byte {first} (+{off} into the {}){}{}",
                        r.name,
                        r.start,
                        r.end,
                        plural(count),
                        r.name,
                        inside(sa, r.name, first),
                        outer(sa, first)
                    )));
                }
                Ok(None) => {}
                Err(e) => {
                    s.push(Difference::note(format!("cannot compare the bytes: {e}")));
                    return;
                }
            }
        }
        return;
    }
    // Different layouts: the regions that moved or changed size, and for each region both
    // images have, where its content first differs (relative to the region's start).
    let mut names: Vec<&'static str> = Vec::new();
    for r in ra.iter().chain(&rb) {
        if !names.contains(&r.name) {
            names.push(r.name);
        }
    }
    let show = |r: Option<&Region>| match r {
        Some(r) => format!("{} bytes at {}..{}", r.end - r.start, r.start, r.end),
        None => "absent".to_string(),
    };
    let mut contents = Vec::new();
    for n in names {
        let a = ra.iter().find(|r| r.name == n);
        let b = rb.iter().find(|r| r.name == n);
        if a != b {
            s.push(Difference::both(format!("{n} region"), show(a), show(b)));
        }
        let (Some(a), Some(b)) = (a, b) else { continue };
        if n == "padding" {
            continue;
        }
        let len = (a.end - a.start).min(b.end - b.start);
        match first_difference(&*sa.image, a.start, &*sb.image, b.start, len) {
            Ok(Some((off, count))) => contents.push(Difference::note(format!(
                "{n} content: {} in the first {len} bytes, the first at +{off} \
                 (A byte {}, B byte {}){}{}",
                plural(count),
                a.start + off,
                b.start + off,
                inside(sa, n, a.start + off),
                outer(sa, a.start + off)
            ))),
            Ok(None) => {}
            Err(e) => {
                s.push(Difference::note(format!("cannot compare the bytes: {e}")));
                return;
            }
        }
    }
    for d in contents {
        s.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_counts_bytes() {
        let a = vec![0u8; 3000];
        let mut b = a.clone();
        b[1000] = 1;
        b[2000] = 1;
        assert_eq!(
            first_difference(&a, 0, &b, 0, 3000).unwrap(),
            Some((1000, 2))
        );
        assert_eq!(first_difference(&a, 1001, &b, 1001, 999).unwrap(), None);
        assert_eq!(first_difference(&a, 0, &a, 0, 5000).unwrap(), None);
        // Offsets are relative when the two ranges start at different places.
        assert_eq!(
            first_difference(&a, 0, &b, 500, 2000).unwrap(),
            Some((500, 2))
        );
    }
}
