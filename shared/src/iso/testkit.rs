//! Fixtures shared by the ISO reader's tests: xorriso-made trees and hand-built images.

use super::names::lossy;
use super::{Iso, IsoEntry, IsoError, IsoKind};
use std::fs::{self, File, Permissions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Whether xorriso runs; without it a test skips, unless `IUK_REQUIRE_KERNEL=1`.
pub(super) fn have_xorriso() -> bool {
    let ok = Command::new("xorriso")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        iuk_skip::skip("`xorriso` is not installed");
    }
    ok
}

pub(super) fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

pub(super) fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n).map(|_| xorshift(&mut state) as u8).collect()
}

pub(super) fn put(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
}

/// The source tree of the xorriso tests; `full` adds the 3 MB file and the 500-entry directory.
pub(super) fn populate(root: &Path, full: bool) {
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
pub(super) fn mkiso(src: &Path, out: &Path, extra: &[&str]) {
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
pub(super) fn describe(
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
pub(super) fn want_tree(dir: &Path, prefix: &[u8], out: &mut Vec<String>) {
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

pub(super) fn read_all(iso: &Iso, entry: &IsoEntry) -> Vec<u8> {
    let mut data = Vec::new();
    iso.open_file(entry)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    data
}

/// Compares the listing and every file's content with the source tree; `extra` entries are
/// in the image only.
pub(super) fn check_tree(iso: &Iso, src: &Path, extra: &[&str]) {
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

/// Opens an image and reads every file; `Err` on the first error.
pub(super) fn open_and_read(path: &Path) -> Result<(Iso, Vec<Vec<u8>>), String> {
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

// Hand-built images for what xorriso does not write (multi-extent files, loops, hostile SUSP).

pub(super) fn both16(v: u16) -> Vec<u8> {
    [v.to_le_bytes(), v.to_be_bytes()].concat()
}

pub(super) fn both32(v: u32) -> Vec<u8> {
    [v.to_le_bytes(), v.to_be_bytes()].concat()
}

/// A directory record; the date is 2020-01-02 03:04:05 UTC.
pub(super) fn rec(ident: &[u8], lba: u32, len: u32, flags: u8, su: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(len));
    r[18..25].copy_from_slice(&[120, 1, 2, 3, 4, 5, 0]);
    r[25] = flags;
    r[28..32].copy_from_slice(&both16(1));
    r[32] = ident.len() as u8;
    r.extend_from_slice(ident);
    if ident.len().is_multiple_of(2) {
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
pub(super) fn dir_sector(lba: u32, dot_su: &[u8], records: &[Vec<u8>]) -> Vec<u8> {
    let mut s = rec(&[0], lba, 2048, 2, dot_su);
    s.extend(rec(&[1], 18, 2048, 2, &[]));
    for r in records {
        s.extend_from_slice(r);
    }
    assert!(s.len() <= 2048);
    s.resize(2048, 0);
    s
}

pub(super) fn susp(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
    [&sig[..], &[body.len() as u8 + 4, 1], body].concat()
}

pub(super) fn px(mode: u32) -> Vec<u8> {
    susp(
        b"PX",
        &[both32(mode), both32(1), both32(7), both32(8)].concat(),
    )
}

pub(super) fn nm(flags: u8, name: &[u8]) -> Vec<u8> {
    susp(b"NM", &[&[flags], name].concat())
}

pub(super) fn ce(block: u32, offset: u32, len: u32) -> Vec<u8> {
    susp(
        b"CE",
        &[both32(block), both32(offset), both32(len)].concat(),
    )
}

/// Writes an image: descriptors at 16 and 17, root directory at sector 18, `sectors` placed.
pub(super) fn write_image(path: &Path, block_size: u16, sectors: &[(u32, Vec<u8>)]) {
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

pub(super) fn corrupt_reason(path: &Path) -> String {
    match Iso::open(path) {
        Err(IsoError::Corrupt { path: p, reason }) => {
            assert_eq!(p, path);
            reason
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}
