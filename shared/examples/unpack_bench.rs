//! Measurements of `iuk::delta::unpack` on real files (not part of the binaries).
//!
//! ```text
//! unpack_bench unpack FILE OUT_PREFIX   # writes OUT_PREFIX.plain and OUT_PREFIX.layout
//! unpack_bench repack OUT_PREFIX FILE   # re-creates FILE from them and compares
//! unpack_bench view FILE                # plain_view only (what the device runs on its old file)
//! unpack_bench pairs OLD_ROOT NEW_ROOT  # *.gz and *.jar changed between two trees
//! unpack_bench survey ROOT              # every *.gz, *.jar, *.ja, *.zip, *.xz, *.zst, *.zz of a tree
//! ```
//!
//! Run under `/usr/bin/time -v` for the peak RSS of one step, e.g.
//! `cargo run --release -p iuk --example unpack_bench -- unpack new/boot/initrd.img /tmp/i`.

use std::path::{Path, PathBuf};
use std::time::Instant;

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
        _ => Err(
            "usage: unpack_bench unpack FILE PREFIX | repack PREFIX FILE | view FILE | pairs OLD NEW".into(),
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
