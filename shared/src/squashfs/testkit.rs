//! Source trees, image builders and tree models shared by the reader's and the inspector's tests
//! (test-only: `#[cfg(test)]` in `squashfs/mod.rs`). Nothing here opens an image with the reader,
//! so the reader modules' tests can use it without an import cycle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::tree::{InodeKind, Tree};

/// True when `tool` can be run; otherwise prints why the caller skips, or panics when
/// `IUK_REQUIRE_KERNEL=1` demands every checker.
pub fn have(tool: &str) -> bool {
    if Command::new(tool).arg("--help").output().is_ok() {
        return true;
    }
    iuk_skip::skip(&format!("`{tool}` is not installed"));
    false
}

/// Deterministic bytes: a pseudo-random half (incompressible) and a text half.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let mut out = Vec::with_capacity(len);
    while out.len() < len / 2 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len / 2);
    let mut i = 0u32;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} of seed {seed}\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::write(p, bytes).unwrap();
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name} on {}", p.display());
}

fn set_mtime(p: &Path, t: i64) {
    let ts = libc::timespec {
        tv_sec: t as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(p).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let r = unsafe { libc::mknod(c(p).as_ptr(), kind | 0o640, libc::makedev(major, minor)) };
    assert_eq!(r, 0, "mknod {}", p.display());
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A 20-byte version-2 `security.capability` value (cap_net_raw, effective).
pub const CAPABILITY: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Builds the small source tree at `root` (created): every kind of entry and metadata, small
/// files only. The returned tree is what every reader must give back.
pub fn small_source(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    write(&root.join("empty"), b"");
    write(&root.join("tiny"), b"hello\n");
    write(&root.join("three-blocks"), &pattern(3 * 4096 + 100, 1));
    write(&root.join("dup-a"), &pattern(10_000, 2));
    write(&root.join("dup-b"), &pattern(10_000, 2));
    write(&root.join("dup-tiny"), b"hello\n");
    let links = root.join("links");
    std::fs::create_dir(&links).unwrap();
    write(&links.join("h1"), &pattern(5000, 3));
    std::fs::hard_link(links.join("h1"), links.join("h2")).unwrap();
    std::fs::hard_link(links.join("h1"), root.join("h3")).unwrap();
    std::os::unix::fs::symlink("tiny", root.join("sym-short")).unwrap();
    let long: String = (0..30).map(|i| format!("dir{i:06}/")).collect();
    assert_eq!(long.len(), 300);
    std::os::unix::fs::symlink(&long, root.join("sym-long")).unwrap();
    let dev = root.join("dev");
    std::fs::create_dir(&dev).unwrap();
    mknod(&dev.join("null"), libc::S_IFCHR, 1, 3);
    mknod(&dev.join("sda1"), libc::S_IFBLK, 8, 1);
    mknod(&dev.join("bigminor"), libc::S_IFCHR, 259, 70_000);
    let r = unsafe { libc::mkfifo(c(&root.join("fifo")).as_ptr(), 0o600) };
    assert_eq!(r, 0);
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
    let big = b"a value longer than eight bytes, shared";
    for (name, extra) in [("x1", true), ("x2", false), ("x3", false)] {
        let p = root.join(name);
        write(&p, name.as_bytes());
        set_xattr(&p, "user.big", big);
        if extra {
            set_xattr(&p, "user.a", b"1");
            set_xattr(&p, "trusted.t", b"tt");
            set_xattr(&p, "security.capability", &CAPABILITY);
        } else {
            set_xattr(&p, "trusted.big", big);
        }
    }
    set_xattr(&dev, "user.dir", b"on a directory");
    set_xattr(&root.join("sym-short"), "trusted.sym", b"on a symlink");
    set_xattr(root, "user.root", b"r");
    let ids = root.join("ids");
    write(&ids, b"owned");
    std::os::unix::fs::lchown(&ids, Some(100_000), Some(200_000)).unwrap();
    std::os::unix::fs::lchown(root.join("sym-long"), Some(70_000), Some(70_001)).unwrap();
    for (name, mode) in [
        ("setuid", 0o4755),
        ("setuid-nox", 0o4644),
        ("setgid", 0o2755),
        ("setgid-nox", 0o2644),
    ] {
        let p = root.join(name);
        write(&p, name.as_bytes());
        chmod(&p, mode);
    }
    let sticky = root.join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    write(&sticky.join("inside"), b"in a sticky dir");
    chmod(&sticky, 0o1777);
    let sgdir = root.join("sgid-dir");
    std::fs::create_dir(&sgdir).unwrap();
    chmod(&sgdir, 0o2770);
    write(&root.join("t0"), b"epoch");
    write(&root.join("tmax"), b"2106");
    write(&root.join("n".repeat(255)), b"long name");
    let bad = std::ffi::OsStr::from_bytes(b"bad-\xff\xfe-name");
    write(&root.join(bad), b"not utf-8");
    let deep = root.join("a/b/c/d");
    std::fs::create_dir_all(&deep).unwrap();
    write(&deep.join("leaf"), b"leaf");
}

/// The small tree plus multi-block files for 4 KiB and 1 MiB blocks, a sparse file and a
/// directory of 600 entries.
pub fn full_source(root: &Path) {
    small_source(root);
    write(&root.join("one-4k"), &pattern(4096, 10));
    write(&root.join("one-4k-plus1"), &pattern(4097, 11));
    write(&root.join("one-1m"), &pattern(1 << 20, 12));
    write(&root.join("one-1m-plus1"), &pattern((1 << 20) + 1, 13));
    write(&root.join("multi-1m"), &pattern((2 << 20) + 300, 14));
    let sparse = root.join("sparse");
    let mut f = std::fs::File::create(&sparse).unwrap();
    f.set_len(3 << 20).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1_500_000)).unwrap();
    f.write_all(b"middle").unwrap();
    drop(f);
    let many = root.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..600 {
        let p = many.join(format!("entry-{i:04}-{}", "p".repeat(i % 17)));
        if i % 50 == 0 {
            write(&p, &pattern(i, i as u32));
        } else {
            write(&p, b"");
        }
    }
}

/// Gives every entry under `root` a deterministic mtime (children before parents), then the
/// special ones 0 and 2^32-1.
pub fn finish_mtimes(root: &Path) {
    fn walk(p: &Path, n: &mut i64) {
        let md = std::fs::symlink_metadata(p).unwrap();
        if md.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for c in names {
                walk(&c, n);
            }
        }
        *n += 3607;
        set_mtime(p, 1_600_000_000 + *n);
    }
    let mut n = 0;
    walk(root, &mut n);
    set_mtime(&root.join("t0"), 0);
    set_mtime(&root.join("tmax"), u32::MAX as i64);
}

/// Runs a tool, panicking with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds `out` from `src` with mksquashfs and extra arguments.
pub fn mksquashfs(src: &Path, out: &Path, args: &[&str]) -> PathBuf {
    run(Command::new("mksquashfs")
        .arg(src)
        .arg(out)
        .args(["-noappend", "-quiet", "-no-progress", "-processors", "2"])
        .args(args));
    out.to_path_buf()
}

/// Builds `out` from `src` with gensquashfs (times and xattrs kept, root defaults taken from
/// the source root) and extra arguments.
pub fn gensquashfs(src: &Path, out: &Path, args: &[&str]) -> PathBuf {
    let md = std::fs::symlink_metadata(src).unwrap();
    let defaults = format!(
        "uid={},gid={},mode=0{:o},mtime={}",
        md.uid(),
        md.gid(),
        md.mode() & 0o7777,
        md.mtime()
    );
    run(Command::new("gensquashfs")
        .arg("-D")
        .arg(src)
        .args(["-k", "-x", "-q", "-f", "-j", "2", "-d", &defaults])
        .args(args)
        .arg(out));
    out.to_path_buf()
}

/// One entry of a tree as the comparison sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ent {
    /// Kind name.
    pub kind: String,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: u32,
    /// File size and content sha256.
    pub content: Option<(u64, [u8; 32])>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Device number.
    pub rdev: Option<u64>,
    /// Xattrs, sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A whole tree: entries by path, and hard-link groups (sorted paths of inodes with more
/// than one entry).
#[derive(Debug, Default)]
pub struct Model {
    /// Entries by path (root = empty path).
    pub ents: BTreeMap<Vec<u8>, Ent>,
    /// Hard-link groups.
    pub links: BTreeSet<Vec<Vec<u8>>>,
}

fn sha(mut r: impl Read) -> (u64, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (n, h.finalize().into())
}

fn host_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let cp = c(p);
    let n = unsafe { libc::llistxattr(cp.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Vec::new();
    }
    let mut names = vec![0u8; n as usize];
    let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    names.truncate(n.max(0) as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"system.") {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let vn = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        let mut v = vec![0u8; vn.max(0) as usize];
        let vn =
            unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(vn.max(0) as usize);
        out.push((name.to_vec(), v));
    }
    out.sort();
    out
}

/// The model of a host directory tree.
pub fn model_of_dir(root: &Path) -> Model {
    let mut m = Model::default();
    let mut groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((p, rel)) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let mut e = Ent {
            kind: String::new(),
            perm: (md.mode() & 0o7777) as u16,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime() as u32,
            content: None,
            target: None,
            rdev: None,
            xattrs: host_xattrs(&p),
        };
        use std::os::unix::fs::FileTypeExt;
        e.kind = if ft.is_dir() {
            for c in std::fs::read_dir(&p).unwrap() {
                let c = c.unwrap();
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(c.file_name().as_bytes());
                stack.push((c.path(), r));
            }
            "directory"
        } else if ft.is_file() {
            e.content = Some(sha(std::fs::File::open(&p).unwrap()));
            "file"
        } else if ft.is_symlink() {
            e.target = Some(
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            );
            "symlink"
        } else if ft.is_char_device() {
            e.rdev = Some(md.rdev());
            "char-device"
        } else if ft.is_block_device() {
            e.rdev = Some(md.rdev());
            "block-device"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        }
        .to_string();
        if !ft.is_dir() {
            groups
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        m.ents.insert(rel, e);
    }
    m.links = link_groups(groups);
    m
}

/// The paths of every group of two or more hard links, each sorted.
fn link_groups<K>(groups: HashMap<K, Vec<Vec<u8>>>) -> BTreeSet<Vec<Vec<u8>>> {
    groups
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

/// The model of a tree, reading every file's content through its handle.
pub fn model_of_tree(t: &Tree) -> Model {
    let mut m = Model::default();
    let mut groups: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    for n in t.walk() {
        let path = t.path(n);
        let node = t.node(n);
        let ino = t.inode(node.inode);
        let mut e = Ent {
            kind: ino.kind.name().to_string(),
            perm: ino.meta.perm,
            uid: ino.meta.uid,
            gid: ino.meta.gid,
            mtime: ino.meta.mtime,
            content: None,
            target: None,
            rdev: None,
            xattrs: ino
                .meta
                .xattrs
                .iter()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
        };
        match &ino.kind {
            InodeKind::File(c) => {
                let (n, h) = sha(c.source.open().unwrap());
                assert_eq!(n, c.size, "{}", c.source.describe());
                e.content = Some((n, h));
            }
            InodeKind::Symlink(t) => e.target = Some(t.clone()),
            InodeKind::CharDev(d) | InodeKind::BlockDev(d) => e.rdev = Some(*d),
            _ => {}
        }
        if !matches!(ino.kind, InodeKind::Dir) {
            groups.entry(node.inode.0).or_default().push(path.clone());
        }
        m.ents.insert(path, e);
    }
    m.links = link_groups(groups);
    m
}

/// Panics listing the differences between two models.
pub fn assert_same(expected: &Model, actual: &Model, what: &str) {
    let mut diffs = Vec::new();
    let keys: BTreeSet<&Vec<u8>> = expected.ents.keys().chain(actual.ents.keys()).collect();
    for k in keys {
        let p = String::from_utf8_lossy(k);
        match (expected.ents.get(k), actual.ents.get(k)) {
            (Some(a), Some(b)) if a != b => diffs.push(format!("/{p}: {a:?} != {b:?}")),
            (Some(_), None) => diffs.push(format!("/{p}: missing")),
            (None, Some(_)) => diffs.push(format!("/{p}: unexpected")),
            _ => {}
        }
    }
    if expected.links != actual.links {
        diffs.push(format!(
            "hard links {:?} != {:?}",
            expected.links, actual.links
        ));
    }
    diffs.truncate(20);
    assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
}
/// A source tree in a temporary directory and its model.
pub struct Src {
    /// The temporary directory (removed when dropped); images are built inside it.
    pub dir: tempfile::TempDir,
    /// The source tree, `dir/src`.
    pub src: PathBuf,
    /// What every reader must give back for it.
    pub model: Model,
}

/// The small (or, when `full`, the full) source tree with its mtimes set, checked to cover
/// what the tests claim.
pub fn source(full: bool) -> Src {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    if full {
        full_source(&src);
    } else {
        small_source(&src);
    }
    finish_mtimes(&src);
    let model = model_of_dir(&src);
    sanity(&model, full);
    Src { dir, src, model }
}

/// Checks that the source tree holds what the tests claim to cover.
fn sanity(m: &Model, full: bool) {
    let e = |p: &str| m.ents.get(p.as_bytes()).unwrap_or_else(|| panic!("no {p}"));
    assert!(m.links.iter().any(|g| g.len() == 3), "{:?}", m.links);
    let x1: Vec<&[u8]> = e("x1").xattrs.iter().map(|x| x.0.as_slice()).collect();
    assert_eq!(
        x1,
        [
            &b"security.capability"[..],
            b"trusted.t",
            b"user.a",
            b"user.big"
        ]
    );
    assert_eq!(
        e("dev/bigminor").rdev,
        Some(libc::makedev(259, 70_000) as u64)
    );
    assert_eq!(e("dev/sda1").kind, "block-device");
    assert_eq!((e("ids").uid, e("ids").gid), (100_000, 200_000));
    assert_eq!((e("t0").mtime, e("tmax").mtime), (0, u32::MAX));
    assert_eq!(e("setuid-nox").perm, 0o4644);
    assert_eq!(e("sticky").perm, 0o1777);
    assert_eq!(e("sock").kind, "socket");
    assert_eq!(e("fifo").kind, "fifo");
    assert_eq!(e("sym-long").target.as_ref().map(Vec::len), Some(300));
    assert!(!e("sym-short").xattrs.is_empty());
    assert!(m.ents.contains_key(&b"bad-\xff\xfe-name"[..]));
    assert!(m.ents.contains_key("n".repeat(255).as_bytes()));
    if full {
        let many = m.ents.keys().filter(|k| k.starts_with(b"many/")).count();
        assert_eq!(many, 600);
        assert_eq!(e("sparse").content.map(|c| c.0), Some(3 << 20));
    }
}

/// An image of the small tree with every metadata table stored uncompressed, so tests can
/// patch structures in place.
pub fn raw_image(s: &Src) -> Vec<u8> {
    let out = mksquashfs(
        &s.src,
        &s.dir.path().join("raw"),
        &["-noI", "-noD", "-noF", "-noX", "-comp", "gzip", "-b", "4K"],
    );
    std::fs::read(out).unwrap()
}
