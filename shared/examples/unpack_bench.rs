//! Measurements of `iuk::delta::unpack` on real files (not part of the binaries).
//!
//! ```text
//! unpack_bench unpack FILE OUT_PREFIX   # writes OUT_PREFIX.plain and OUT_PREFIX.layout
//! unpack_bench repack OUT_PREFIX FILE   # re-creates FILE from them and compares
//! unpack_bench view FILE                # plain_view only (what the device runs on its old file)
//! unpack_bench pairs OLD_ROOT NEW_ROOT  # *.gz and *.jar changed between two trees
//! unpack_bench survey ROOT              # every *.gz, *.jar, *.ja, *.zip, *.xz, *.zst, *.zz of a tree
//! unpack_bench puff OLD NEW             # gzip members: puffin-like path against preflate-rs's
//! unpack_bench puff-pairs OLD_ROOT NEW_ROOT  # the same over *.gz changed between two trees
//! ```
//!
//! Run under `/usr/bin/time -v` for the peak RSS of one step, e.g.
//! `cargo run --release -p iuk --example unpack_bench -- unpack new/boot/initrd.img /tmp/i`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use iuk::delta::puff::{huff, puff};
use iuk::delta::source::{bsdiff_patch, zstd_patch};
use iuk::delta::unpack::{plain_view, repack, unpack, Layout, UnpackCaps};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["unpack", file, prefix] => unpack_file(Path::new(file), prefix),
        ["repack", prefix, file] => repack_file(prefix, Path::new(file)),
        ["view", file] => view_file(Path::new(file)),
        ["pairs", old, new] => pairs(Path::new(old), Path::new(new)),
        ["survey", root] => survey(Path::new(root)),
        ["puff", old, new] => puff_files(Path::new(old), Path::new(new)),
        ["puff-pairs", old, new] => puff_pairs(Path::new(old), Path::new(new)),
        _ => Err(
            "usage: unpack_bench unpack FILE PREFIX | repack PREFIX FILE | view FILE | pairs OLD NEW | survey ROOT | puff OLD NEW | puff-pairs OLD NEW".into(),
        ),
    }
}

fn unpack_file(file: &Path, prefix: &str) -> Res<()> {
    let data = std::fs::read(file)?;
    let t = Instant::now();
    let u = unpack(&data, UnpackCaps::DEFAULT)?.ok_or("not unpacked")?;
    let secs = t.elapsed().as_secs_f64();
    let layout = u.layout.to_bytes();
    std::fs::write(format!("{prefix}.plain"), &u.plain)?;
    std::fs::write(format!("{prefix}.layout"), &layout)?;
    println!(
        "unpack {}: {} B file, {} B plain, {} B layout ({} segments, {} re-created streams, {} kept verbatim), {secs:.2} s",
        file.display(),
        data.len(),
        u.plain.len(),
        layout.len(),
        u.layout.segment_count(),
        u.layout.recreated_streams(),
        u.layout.stored_streams()
    );
    Ok(())
}

fn repack_file(prefix: &str, file: &Path) -> Res<()> {
    let plain = std::fs::read(format!("{prefix}.plain"))?;
    let layout = Layout::from_bytes(
        &std::fs::read(format!("{prefix}.layout"))?,
        UnpackCaps::DEFAULT,
    )?;
    let t = Instant::now();
    let out = repack(&plain, &layout, UnpackCaps::DEFAULT)?;
    let secs = t.elapsed().as_secs_f64();
    let same = out == std::fs::read(file)?;
    println!("repack: {} B, identical: {same}, {secs:.2} s", out.len());
    if !same {
        return Err("repack differs".into());
    }
    Ok(())
}

fn view_file(file: &Path) -> Res<()> {
    let data = std::fs::read(file)?;
    let t = Instant::now();
    let plain = plain_view(&data, UnpackCaps::DEFAULT)?.ok_or("nothing recognised")?;
    println!(
        "plain_view {}: {} B plain, {:.2} s",
        file.display(),
        plain.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Res<()> {
    walk_ext(root, rel, &[".gz", ".jar"], out)
}

fn walk_ext(root: &Path, rel: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> Res<()> {
    for e in std::fs::read_dir(root.join(rel))? {
        let e = e?;
        let ft = e.file_type()?;
        let r = rel.join(e.file_name());
        if ft.is_dir() {
            walk_ext(root, &r, exts, out)?;
        } else if ft.is_file() {
            let n = e.file_name().to_string_lossy().into_owned();
            if exts.iter().any(|e| n.ends_with(e)) {
                out.push(r);
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    files: usize,
    new: u64,
    zstd_raw: u64,
    bsdiff_raw: u64,
    best_raw: u64,
    zstd_plain: u64,
    bsdiff_plain: u64,
    best_plain: u64,
    best_either: u64,
    layouts: u64,
    not_unpacked: usize,
}

fn pairs(old_root: &Path, new_root: &Path) -> Res<()> {
    let mut files = Vec::new();
    walk(new_root, Path::new(""), &mut files)?;
    files.sort();
    let caps = UnpackCaps::DEFAULT;
    let mut t = Totals::default();
    let started = Instant::now();
    for rel in files {
        let (o, n) = (old_root.join(&rel), new_root.join(&rel));
        let Ok(old) = std::fs::read(&o) else {
            continue;
        };
        let new = std::fs::read(&n)?;
        if old == new {
            continue;
        }
        t.files += 1;
        t.new += new.len() as u64;
        let zr = zstd_patch(&old, &new)?.len() as u64;
        let br = bsdiff_patch(&old, &new)?.len() as u64;
        t.zstd_raw += zr;
        t.bsdiff_raw += br;
        t.best_raw += zr.min(br);
        let unpacked = unpack(&new, caps)?;
        let old_plain = plain_view(&old, caps)?;
        let (zp, bp) = match (unpacked, old_plain) {
            (Some(u), Some(op)) => {
                let l = u.layout.to_bytes().len() as u64;
                t.layouts += l;
                (
                    zstd_patch(&op, &u.plain)?.len() as u64 + l,
                    bsdiff_patch(&op, &u.plain)?.len() as u64 + l,
                )
            }
            (u, op) => {
                println!(
                    "not unpacked: {} (new: {}, old: {})",
                    rel.display(),
                    u.is_some(),
                    op.is_some()
                );
                t.not_unpacked += 1;
                (zr, br)
            }
        };
        t.zstd_plain += zp;
        t.bsdiff_plain += bp;
        t.best_plain += zp.min(bp);
        t.best_either += zr.min(br).min(zp).min(bp);
    }
    println!(
        "{} changed *.gz/*.jar files, {} B new, {} not unpacked, {:.1} s",
        t.files,
        t.new,
        t.not_unpacked,
        started.elapsed().as_secs_f64()
    );
    println!("| patch | of raw files | of plain + layout | per file, smaller of raw and plain |");
    println!("|---|---|---|---|");
    println!("| zstd patch-from | {} | {} | |", t.zstd_raw, t.zstd_plain);
    println!("| bsdiff | {} | {} | |", t.bsdiff_raw, t.bsdiff_plain);
    println!(
        "| smaller of the two | {} | {} | {} |",
        t.best_raw, t.best_plain, t.best_either
    );
    println!("layout bytes in total: {}", t.layouts);
    Ok(())
}

/// Every compressed file of a tree through `unpack`: how many are unpacked, how many streams
/// are re-created or kept verbatim, what the layouts cost.
fn survey(root: &Path) -> Res<()> {
    let mut files = Vec::new();
    walk_ext(
        root,
        Path::new(""),
        &[".gz", ".jar", ".ja", ".zip", ".xz", ".zst", ".zz"],
        &mut files,
    )?;
    files.sort();
    let started = Instant::now();
    let (mut bytes, mut unpacked, mut recreated, mut stored, mut layouts) = (0u64, 0, 0, 0, 0u64);
    for rel in &files {
        let data = std::fs::read(root.join(rel))?;
        bytes += data.len() as u64;
        match unpack(&data, UnpackCaps::DEFAULT)? {
            Some(u) => {
                unpacked += 1;
                recreated += u.layout.recreated_streams();
                stored += u.layout.stored_streams();
                layouts += u.layout.to_bytes().len() as u64;
                if u.layout.stored_streams() > 0 {
                    println!(
                        "{}: {} streams kept verbatim",
                        rel.display(),
                        u.layout.stored_streams()
                    );
                }
            }
            None => println!("not unpacked: {}", rel.display()),
        }
    }
    println!(
        "{} files, {bytes} B: {unpacked} unpacked, {recreated} streams re-created, {stored} kept verbatim, {layouts} B of layouts, {:.1} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The length of a gzip member header (RFC 1952) at the start of `h`, if it is one.
fn gzip_header(h: &[u8]) -> Option<usize> {
    if h.get(..3)? != [0x1f, 0x8b, 0x08] || h.get(3)? & 0xe0 != 0 {
        return None;
    }
    let flg = h[3];
    let mut q = 10usize;
    if flg & 0x04 != 0 {
        q += 2 + usize::from(u16::from_le_bytes([*h.get(q)?, *h.get(q + 1)?]));
    }
    for bit in [0x08, 0x10] {
        if flg & bit != 0 {
            q += h.get(q..)?.iter().position(|&b| b == 0)? + 1;
        }
    }
    if flg & 0x02 != 0 {
        q += 2;
    }
    (q <= h.len()).then_some(q)
}

/// One gzip member's deflate stream, puffed.
struct Stream {
    compressed: usize,
    puffed: usize,
    plain: usize,
}

/// A file with every gzip member's deflate body replaced by its puffed form (the puffin path's
/// "plain" side), the bytes the device needs to cut it back (varint lengths of the raw gaps and
/// puffed streams), the streams, and the puff and huff times; `None` when no member is found or
/// a member does not huff back to its exact bytes.
struct PuffView {
    view: Vec<u8>,
    layout: usize,
    streams: Vec<Stream>,
    puff_secs: f64,
    huff_secs: f64,
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn puff_view(data: &[u8]) -> Res<Option<PuffView>> {
    let (mut view, mut layout, mut streams) = (Vec::new(), 0, Vec::new());
    let (mut puff_secs, mut huff_secs) = (0.0, 0.0);
    let (mut p, mut copied) = (0usize, 0usize);
    while let Some(off) = data[p..].windows(3).position(|w| w == [0x1f, 0x8b, 0x08]) {
        let at = p + off;
        let Some(h) = gzip_header(&data[at..]) else {
            p = at + 1;
            continue;
        };
        let body = &data[at + h..];
        let t = Instant::now();
        let Ok(puffed) = puff(body) else {
            p = at + 1;
            continue;
        };
        puff_secs += t.elapsed().as_secs_f64();
        let deflate = &body[..puffed.consumed];
        let mut plain = Vec::new();
        let ok =
            std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(deflate), &mut plain)
                .is_ok();
        let trailer = body.get(puffed.consumed..puffed.consumed + 8);
        let mut crc = flate2::Crc::new();
        crc.update(&plain);
        let want = trailer.map(|t| {
            (
                u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
                u32::from_le_bytes([t[4], t[5], t[6], t[7]]),
            )
        });
        if !ok || want != Some((crc.sum(), plain.len() as u32)) {
            p = at + 1;
            continue;
        }
        let t = Instant::now();
        let back = huff(&puffed.data)?;
        huff_secs += t.elapsed().as_secs_f64();
        if back != deflate {
            println!("huff differs at member offset {at}");
            return Ok(None);
        }
        let gap_end = at + h;
        view.extend_from_slice(&data[copied..gap_end]);
        layout += varint_len((gap_end - copied) as u64) + varint_len(puffed.data.len() as u64);
        view.extend_from_slice(&puffed.data);
        streams.push(Stream {
            compressed: deflate.len(),
            puffed: puffed.data.len(),
            plain: plain.len(),
        });
        copied = gap_end + puffed.consumed;
        p = copied;
    }
    if streams.is_empty() {
        return Ok(None);
    }
    view.extend_from_slice(&data[copied..]);
    layout += varint_len((data.len() - copied) as u64) + varint_len(streams.len() as u64);
    Ok(Some(PuffView {
        view,
        layout,
        streams,
        puff_secs,
        huff_secs,
    }))
}

fn puff_files(old: &Path, new: &Path) -> Res<()> {
    let no_bsdiff = std::env::var_os("PUFF_NO_BSDIFF").is_some();
    let (old, new) = (std::fs::read(old)?, std::fs::read(new)?);
    let caps = UnpackCaps::DEFAULT;
    let mut views = Vec::new();
    for (name, data) in [("old", &old), ("new", &new)] {
        let v = puff_view(data)?.ok_or("no gzip member puffs and huffs back")?;
        for s in &v.streams {
            println!(
                "{name}: file {} B, deflate {} B, puffed {} B, plain {} B",
                data.len(),
                s.compressed,
                s.puffed,
                s.plain
            );
        }
        println!(
            "{name}: puff {:.2} s, huff {:.2} s (exact), puff layout {} B",
            v.puff_secs, v.huff_secs, v.layout
        );
        views.push(v);
    }
    let t = Instant::now();
    let u = unpack(&new, caps)?.ok_or("preflate: new not unpacked")?;
    let unpack_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let op = plain_view(&old, caps)?.ok_or("preflate: old not viewed")?;
    let view_secs = t.elapsed().as_secs_f64();
    let layout = u.layout.to_bytes().len();
    println!(
        "preflate: unpack(new) {unpack_secs:.2} s, plain {} B, layout {layout} B ({} streams kept verbatim); plain_view(old) {view_secs:.2} s",
        u.plain.len(),
        u.layout.stored_streams()
    );
    let (pv_old, pv_new) = (&views[0].view, &views[1].view);
    let mut rows = Vec::new();
    for (what, a, b, extra) in [
        ("puffed + puff layout", pv_old, pv_new, views[1].layout),
        ("plain + preflate layout", &op, &u.plain, layout),
        ("raw files", &old, &new, 0),
    ] {
        let t = Instant::now();
        let z = zstd_patch(a, b)?.len() + extra;
        let zs = t.elapsed().as_secs_f64();
        println!("{what}: zstd patch-from {z} B ({zs:.1} s)");
        let bs = if no_bsdiff {
            None
        } else {
            let t = Instant::now();
            let bsd = bsdiff_patch(a, b)?.len() + extra;
            let secs = t.elapsed().as_secs_f64();
            println!("{what}: bsdiff {bsd} B ({secs:.1} s)");
            Some(bsd)
        };
        rows.push((what, z, bs));
    }
    println!("| path | zstd patch-from | bsdiff |");
    println!("|---|---|---|");
    for (what, z, b) in rows {
        println!(
            "| {what} | {z} | {} |",
            b.map_or("—".into(), |b| b.to_string())
        );
    }
    Ok(())
}

#[derive(Default)]
struct PuffTotals {
    files: usize,
    new: u64,
    raw: [u64; 2],
    plain: [u64; 2],
    puffed: [u64; 2],
    layouts: u64,
    puff_layouts: u64,
    surveyed: usize,
    preflate_fails: usize,
    preflate_fails_puffed: usize,
    puff_fails: usize,
    puff_secs: f64,
    huff_secs: f64,
}

fn puff_pairs(old_root: &Path, new_root: &Path) -> Res<()> {
    let mut files = Vec::new();
    walk_ext(new_root, Path::new(""), &[".gz"], &mut files)?;
    files.sort();
    let caps = UnpackCaps::DEFAULT;
    let mut t = PuffTotals::default();
    let started = Instant::now();
    for rel in files {
        let new = std::fs::read(new_root.join(&rel))?;
        let unpacked = unpack(&new, caps)?;
        let pv_new = puff_view(&new)?;
        t.surveyed += 1;
        if !matches!(&unpacked, Some(u) if u.layout.stored_streams() == 0) {
            t.preflate_fails += 1;
            let puffs = pv_new.is_some();
            t.preflate_fails_puffed += usize::from(puffs);
            println!(
                "preflate-rs does not model {} ({}); puff round-trips it: {puffs}",
                rel.display(),
                if unpacked.is_none() {
                    "not unpacked"
                } else {
                    "kept verbatim"
                }
            );
        }
        let Ok(old) = std::fs::read(old_root.join(&rel)) else {
            continue;
        };
        if old == new {
            continue;
        }
        t.files += 1;
        t.new += new.len() as u64;
        let raw = [
            zstd_patch(&old, &new)?.len() as u64,
            bsdiff_patch(&old, &new)?.len() as u64,
        ];
        let old_plain = plain_view(&old, caps)?;
        let pv_old = puff_view(&old)?;
        let plain = match (&unpacked, &old_plain) {
            (Some(u), Some(op)) => {
                let l = u.layout.to_bytes().len() as u64;
                t.layouts += l;
                [
                    zstd_patch(op, &u.plain)?.len() as u64 + l,
                    bsdiff_patch(op, &u.plain)?.len() as u64 + l,
                ]
            }
            _ => raw,
        };
        let puffed = match (&pv_old, &pv_new) {
            (Some(a), Some(b)) => {
                t.puff_layouts += b.layout as u64;
                t.puff_secs += b.puff_secs;
                t.huff_secs += b.huff_secs;
                [
                    zstd_patch(&a.view, &b.view)?.len() as u64 + b.layout as u64,
                    bsdiff_patch(&a.view, &b.view)?.len() as u64 + b.layout as u64,
                ]
            }
            _ => {
                t.puff_fails += 1;
                println!(
                    "not puffed: {} (old: {}, new: {})",
                    rel.display(),
                    pv_old.is_some(),
                    pv_new.is_some()
                );
                raw
            }
        };
        for i in 0..2 {
            t.raw[i] += raw[i];
            t.plain[i] += plain[i];
            t.puffed[i] += puffed[i];
        }
    }
    println!(
        "{} changed *.gz files, {} B new, {:.1} s; puff(new) {:.2} s, huff(new) {:.2} s",
        t.files,
        t.new,
        started.elapsed().as_secs_f64(),
        t.puff_secs,
        t.huff_secs
    );
    println!(
        "of {} *.gz files of the new tree, preflate-rs does not model {}, of which puff round-trips {}; pairs puff fails on: {}",
        t.surveyed,
        t.preflate_fails, t.preflate_fails_puffed, t.puff_fails
    );
    println!("| patch | of raw files | of plain + preflate layouts | of puffed + puff layouts |");
    println!("|---|---|---|---|");
    println!(
        "| zstd patch-from | {} | {} | {} |",
        t.raw[0], t.plain[0], t.puffed[0]
    );
    println!(
        "| bsdiff | {} | {} | {} |",
        t.raw[1], t.plain[1], t.puffed[1]
    );
    println!(
        "preflate layouts {} B, puff layouts {} B",
        t.layouts, t.puff_layouts
    );
    Ok(())
}
