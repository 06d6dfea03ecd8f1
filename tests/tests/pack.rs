//! End-to-end tests of `iuk-build pack` (directory sources): the real kernel's view of the image
//! equals the source tree (DESIGN.md invariant 1), independent readers agree, the bytes do not
//! depend on the environment (invariant 2), and every refusal is a one-line error that leaves
//! nothing behind (invariant 5).
//!
//! Tests that need root, loop mounts or external tools print `SKIP: …` and pass when those are
//! missing, unless `IUK_REQUIRE_KERNEL=1`. The binaries must be built first
//! (`cargo build --release -p iuk-build`).

use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use iuk_e2e::{
    assert_same_outputs, assert_same_tree, bin, dir_names, iuk_command, kernel_or_skip, make_tree,
    mkfs_time, mount_squashfs, pack, require_root_or_skip, run, run_ok, sha256_file, show_path,
    skip, snapshot, tool_or_skip, Entry, Kind, Run,
};
use tempfile::TempDir;

const EPOCH: u32 = 1_700_000_000;

/// A temporary directory holding `src/`, the tree made by `scripts/make-tree`.
struct Fixture {
    tmp: TempDir,
    src: PathBuf,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

fn full_tree() -> Fixture {
    let tmp = tempfile::Builder::new()
        .prefix("iuk-e2e-")
        .tempdir()
        .unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, "full");
    Fixture { tmp, src }
}

/// A small tree that needs no root: a few files and a directory.
fn small_tree() -> Fixture {
    let tmp = tempfile::Builder::new()
        .prefix("iuk-e2e-")
        .tempdir()
        .unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), b"alpha\n").unwrap();
    fs::write(src.join("d/b"), vec![7u8; 70_000]).unwrap();
    std::os::unix::fs::symlink("a", src.join("s")).unwrap();
    Fixture { tmp, src }
}

// ------------------------------------------------------------------------------------------------
// The test tree itself

/// make-tree builds what the other tests rely on (so that a passing kernel test means something).
#[test]
fn make_tree_covers_every_feature() {
    if !require_root_or_skip() {
        return;
    }
    let f = full_tree();
    let s = snapshot(&f.src);
    let get = |p: &str| -> &Entry {
        s.iter()
            .find(|e| e.path == p.as_bytes())
            .unwrap_or_else(|| panic!("make-tree made no {p}"))
    };
    for kind in [
        Kind::Dir,
        Kind::File,
        Kind::Symlink,
        Kind::CharDev,
        Kind::BlockDev,
        Kind::Fifo,
        Kind::Socket,
    ] {
        assert!(s.iter().any(|e| e.kind == kind), "no {kind:?} in the tree");
    }
    // Hard-link groups of a file (3 names), a symlink, a fifo and a device.
    for (member, group, kind) in [
        ("links/two/h2", "links/h3", Kind::File),
        ("links/two/sym-b", "links/sym-a", Kind::Symlink),
        ("links/one/fifo-b", "links/fifo-a", Kind::Fifo),
        ("links/two/cdev-b", "links/cdev-a", Kind::CharDev),
    ] {
        let e = get(member);
        assert_eq!(e.kind, kind, "{member}");
        assert_eq!(e.link_group.as_deref(), Some(group.as_bytes()), "{member}");
    }
    let h3 = s
        .iter()
        .filter(|e| e.link_group.as_deref() == Some(b"links/h3"))
        .count();
    assert_eq!(h3, 3, "links/h3 has three names");
    assert_eq!(get("files/exact-128K").size, Some(128 << 10));
    assert_eq!(get("files/exact-1M-random").size, Some(1 << 20));
    assert_eq!(get("files/1M-plus-1").size, Some((1 << 20) + 1));
    assert!(get("files/multi-block").size.unwrap() > 3 << 20);
    assert_eq!(get("sym/long").target.as_ref().map(Vec::len), Some(300));
    assert_eq!(get("dev/big-char").rdev, Some((259, 70000)));
    assert_eq!(get("times/zero").mtime, 0);
    assert_eq!(get("times/dir-max").mtime, 4_294_967_295);
    assert_eq!(get("times/link-max").mtime, 4_294_967_295);
    assert_eq!(get("modes/setuid").mode, 0o4755);
    assert_eq!(get("modes/sticky-dir").mode, 0o1777);
    assert_eq!(get("modes/zero").mode, 0);
    assert!(s.iter().any(|e| e.path.ends_with(b"\xff\xfe")));
    assert!(s.iter().any(|e| e.path.ends_with(&[b'n'; 255])));
    assert!(s.iter().any(|e| e.path.ends_with(b"new\nline")));
    assert!(s
        .iter()
        .any(|e| e.path == b"names/system-systemd\\x2dcryptsetup.slice"));
    let bigdir = s.iter().filter(|e| e.path.starts_with(b"bigdir/")).count();
    assert!(bigdir >= 700, "bigdir has {bigdir} entries");
    assert!(s.iter().any(|e| e.path.split(|b| *b == b'/').count() > 40));
    let ids: HashSet<u32> = s.iter().flat_map(|e| [e.uid, e.gid]).collect();
    assert!(ids.len() > 4096, "only {} distinct ids", ids.len());
    assert!(ids.contains(&4_294_967_294));
    let xattr_names: HashSet<&[u8]> = s
        .iter()
        .flat_map(|e| e.xattrs.iter().map(|(n, _)| n.as_slice()))
        .collect();
    for n in [
        &b"user.shared"[..],
        b"trusted.t",
        b"security.capability",
        b"user.empty",
        b"trusted.symlink-attr",
    ] {
        assert!(xattr_names.contains(n), "no xattr {}", n.escape_ascii());
    }
    assert!(get("xattr/dir-with-xattrs").xattrs.len() >= 2);
    // make-tree is deterministic: a second run gives the same snapshot.
    let again = f.path("again");
    make_tree(&again, "full");
    assert_same_tree(&s, &snapshot(&again), "make-tree run twice");
}

// ------------------------------------------------------------------------------------------------
// The kernel's view

/// make-tree → pack with `args` → loop mount → the mounted tree equals the source in every
/// path, type, content, mode, owner, mtime, symlink target, device number, xattr (system.*
/// excepted: SquashFS cannot store it) and hard-link grouping.
fn kernel_roundtrip(args: &[&str]) {
    if !require_root_or_skip() || !kernel_or_skip() {
        return;
    }
    let f = full_tree();
    let img = f.path("image.sqfs");
    pack(&f.src, &img, EPOCH, args);
    assert_eq!(
        fs::metadata(&img).unwrap().len() % 4096,
        0,
        "image padded to 4 KiB"
    );
    let expected = snapshot(&f.src);
    let m = mount_squashfs(&img);
    assert_same_tree(
        &expected,
        &snapshot(m.path()),
        &format!("kernel view of `pack {}` vs source", args.join(" ")),
    );
}

#[test]
fn kernel_view_equals_source_xz_default() {
    kernel_roundtrip(&[]);
}

#[test]
fn kernel_view_equals_source_zstd() {
    kernel_roundtrip(&["--compression", "zstd"]);
}

#[test]
fn kernel_view_equals_source_gzip() {
    kernel_roundtrip(&["--compression", "gzip"]);
}

/// 4 KiB blocks with the default compressor (xz, dictionary = block size, as mksquashfs
/// `-b 4K -comp xz` does and the kernel mounts).
#[test]
fn kernel_view_equals_source_4k_blocks() {
    kernel_roundtrip(&["--block-size", "4K"]);
}

#[test]
fn kernel_view_equals_source_4k_blocks_zstd() {
    kernel_roundtrip(&["--block-size", "4K", "--compression", "zstd"]);
}

#[test]
fn kernel_view_equals_source_xz_bcj_small_dict() {
    kernel_roundtrip(&["--xz-bcj", "x86", "--xz-dict-size", "64K"]);
}

/// `--all-root`: the same tree, every entry owned by 0:0.
#[test]
fn kernel_view_all_root() {
    if !require_root_or_skip() || !kernel_or_skip() {
        return;
    }
    let f = full_tree();
    let img = f.path("image.sqfs");
    pack(
        &f.src,
        &img,
        EPOCH,
        &["--all-root", "--compression", "zstd"],
    );
    let expected: Vec<Entry> = snapshot(&f.src)
        .into_iter()
        .map(|mut e| {
            e.uid = 0;
            e.gid = 0;
            e
        })
        .collect();
    let m = mount_squashfs(&img);
    assert_same_tree(
        &expected,
        &snapshot(m.path()),
        "kernel view of `pack --all-root`",
    );
}

// ------------------------------------------------------------------------------------------------
// Independent readers

/// `unsquashfs -lls` lists every path of the source; `unsquashfs -d` (as root: owners, xattrs,
/// hard links restored) extracts a tree equal to the source.
#[test]
fn unsquashfs_lists_and_extracts_exactly() {
    if !require_root_or_skip() {
        return;
    }
    let Some(unsquashfs) = tool_or_skip("unsquashfs") else {
        return;
    };
    let f = full_tree();
    let img = f.path("image.sqfs");
    pack(&f.src, &img, EPOCH, &[]);
    let expected = snapshot(&f.src);

    let listing = run_ok(Command::new(&unsquashfs).arg("-lls").arg(&img));
    // Each line ends with `squashfs-root/PATH` (or `… -> TARGET` for a symlink); a name with a
    // newline spans two lines and is searched for in the whole output instead.
    let lines: HashSet<&[u8]> = listing
        .stdout
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let at = l.windows(13).position(|w| w == b"squashfs-root")?;
            Some(&l[at..])
        })
        .collect();
    let mut missing = Vec::new();
    for e in &expected {
        let mut needle = b"squashfs-root".to_vec();
        if !e.path.is_empty() {
            needle.push(b'/');
            needle.extend_from_slice(&e.path);
        }
        if let Some(t) = &e.target {
            needle.extend_from_slice(b" -> ");
            needle.extend_from_slice(t);
        }
        let found = if needle.contains(&b'\n') {
            needle.push(b'\n');
            listing.stdout.windows(needle.len()).any(|w| w == needle)
        } else {
            lines.contains(needle.as_slice())
        };
        if !found {
            missing.push(show_path(&e.path));
        }
    }
    assert!(
        missing.is_empty(),
        "unsquashfs -lls does not list: {missing:?}"
    );

    let out = f.path("extracted");
    let r = run_ok(
        Command::new(&unsquashfs)
            .arg("-no-progress")
            .arg("-d")
            .arg(&out)
            .arg(&img),
    );
    assert!(
        !r.stderr.contains("rror") && !r.stdout_text().contains("rror"),
        "unsquashfs reported errors: {r}"
    );
    assert_same_tree(
        &expected,
        &snapshot(&out),
        "unsquashfs -d extraction vs source",
    );
}

/// squashfs-tools-ng reads the image: `rdsquashfs -l /` lists the root, and unpacking with
/// xattrs, times, modes and owners gives the source tree — except what rdsquashfs 1.2 does
/// not restore whatever the image (checked with mksquashfs images too): hard links (each name
/// becomes its own file), the attributes of the unpack root (an existing directory of ours),
/// and security.capability (it sets xattrs before chown, which makes the kernel drop the
/// capability): that one is checked with `rdsquashfs -x` instead.
#[test]
fn rdsquashfs_lists_and_unpacks() {
    if !require_root_or_skip() {
        return;
    }
    let Some(rdsquashfs) = tool_or_skip("rdsquashfs") else {
        return;
    };
    let f = full_tree();
    let img = f.path("image.sqfs");
    pack(&f.src, &img, EPOCH, &[]);
    let expected = snapshot(&f.src);

    let list = run_ok(Command::new(&rdsquashfs).args(["-l", "/"]).arg(&img));
    let text = list.stdout_text();
    for e in expected
        .iter()
        .filter(|e| !e.path.is_empty() && !e.path.contains(&b'/'))
    {
        let name = String::from_utf8_lossy(&e.path);
        assert!(
            text.lines().any(|l| l.ends_with(&format!(" {name}"))),
            "rdsquashfs -l / does not list {name}:\n{text}"
        );
    }

    let out = f.path("unpacked");
    fs::create_dir(&out).unwrap();
    run_ok(
        Command::new(&rdsquashfs)
            .args(["-q", "-u", "/", "-p"])
            .arg(&out)
            .args(["-X", "-T", "-C", "-O"])
            .arg(&img),
    );
    let strip = |s: Vec<Entry>| -> Vec<Entry> {
        s.into_iter()
            .filter(|e| !e.path.is_empty())
            .map(|mut e| {
                e.link_group = None;
                e.xattrs.retain(|(n, _)| n != b"security.capability");
                e
            })
            .collect()
    };
    let caps: Vec<&Entry> = expected
        .iter()
        .filter(|e| e.xattrs.iter().any(|(n, _)| n == b"security.capability"))
        .collect();
    assert!(!caps.is_empty(), "the tree has a security.capability");
    for e in caps {
        let (_, value) = e
            .xattrs
            .iter()
            .find(|(n, _)| n == b"security.capability")
            .unwrap();
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        let r = run_ok(
            Command::new(&rdsquashfs)
                .arg("-x")
                .arg(format!("/{}", String::from_utf8(e.path.clone()).unwrap()))
                .arg(&img),
        );
        assert!(
            r.stdout_text()
                .lines()
                .any(|l| l == format!("security.capability=0x{hex}")),
            "rdsquashfs -x /{}: {r}",
            show_path(&e.path)
        );
    }
    assert_same_tree(
        &strip(expected),
        &strip(snapshot(&out)),
        "rdsquashfs unpack vs source (hard links and root attributes not compared)",
    );
}

/// `sqfsdiff` finds no difference between our image and mksquashfs's image of the same tree.
///
/// Options: `-T` adds mtimes to what sqfsdiff compares by default (entries, types, contents,
/// permissions, owners, symlink targets, device numbers). Not used: `-S` (superblocks: the
/// two writers' tables legitimately differ in layout and flags) and `-I` (inode numbers are
/// an implementation choice). sqfsdiff 1.2 compares no xattrs and no hard links: the kernel,
/// unsquashfs and rdsquashfs tests cover those. sqfsdiff prints a different symlink target
/// without changing its exit status, so its output must be empty too. A negative control
/// (mksquashfs `-all-root`) shows that sqfsdiff does see differences.
#[test]
fn sqfsdiff_finds_no_difference_from_mksquashfs() {
    if !require_root_or_skip() {
        return;
    }
    let (Some(mksquashfs), Some(sqfsdiff)) = (tool_or_skip("mksquashfs"), tool_or_skip("sqfsdiff"))
    else {
        return;
    };
    let f = full_tree();
    let ours = f.path("ours.sqfs");
    pack(&f.src, &ours, EPOCH, &[]);
    let mk = |out: &Path, extra: &[&str]| {
        run_ok(
            Command::new(&mksquashfs)
                .arg(&f.src)
                .arg(out)
                .args(["-comp", "xz", "-b", "1M", "-noappend", "-no-progress"])
                .args(["-mkfs-time", &EPOCH.to_string()])
                .args(extra),
        );
    };
    let theirs = f.path("mksquashfs.sqfs");
    mk(&theirs, &[]);
    let d = run(Command::new(&sqfsdiff)
        .arg("-T")
        .arg("-a")
        .arg(&ours)
        .arg("-b")
        .arg(&theirs));
    assert!(
        d.code == Some(0) && d.stdout.is_empty(),
        "sqfsdiff -T ours mksquashfs: {d}"
    );

    let all_root = f.path("mksquashfs-all-root.sqfs");
    mk(&all_root, &["-all-root"]);
    let d = run(Command::new(&sqfsdiff)
        .arg("-T")
        .arg("-a")
        .arg(&ours)
        .arg("-b")
        .arg(&all_root));
    assert!(
        d.code == Some(1) && d.stdout_text().contains("different ownership"),
        "negative control: sqfsdiff must see the owners -all-root dropped: {d}"
    );
}

// ------------------------------------------------------------------------------------------------
// Determinism

/// `iuk-build pack SOURCE OUTPUT --source-date-epoch=EPOCH` in a fixed base environment
/// (TZ=UTC, LC_ALL=C) that each determinism case then changes in one respect.
fn base_pack(source: &Path, output: &Path) -> Command {
    let mut c = iuk_command("iuk-build");
    c.arg("pack")
        .arg(source)
        .arg(output)
        .arg(format!("--source-date-epoch={EPOCH}"))
        .env("TZ", "UTC")
        .env("LC_ALL", "C");
    c
}

/// Same bytes whatever the thread count, time zone, locale, umask, working directory (with
/// relative paths), temp directory, and whether the epoch comes by flag or environment.
#[test]
fn deterministic_across_jobs_and_environment() {
    if !require_root_or_skip() {
        return;
    }
    let f = full_tree();
    let mut cases: Vec<(String, PathBuf, Command)> = Vec::new();
    let mut case = |name: &str, tweak: &dyn Fn(&mut Command, &Path)| {
        let out = f.path(&format!("out-{}.sqfs", cases.len()));
        let mut c = base_pack(&f.src, &out);
        tweak(&mut c, &out);
        cases.push((name.to_string(), out, c));
    };
    for jobs in ["1", "2", "8"] {
        case(&format!("--jobs {jobs}"), &|c, _| {
            c.args(["--jobs", jobs]);
        });
    }
    case("TZ=Asia/Kathmandu", &|c, _| {
        c.env("TZ", "Asia/Kathmandu");
    });
    case("LC_ALL=C.UTF-8", &|c, _| {
        c.env("LC_ALL", "C.UTF-8");
    });
    case("TMPDIR=/var/tmp HOME=/nonexistent", &|c, _| {
        c.env("TMPDIR", "/var/tmp").env("HOME", "/nonexistent");
    });
    for umask in ["077", "022"] {
        case(&format!("umask {umask}"), &|c, out| {
            // The same program and arguments through sh, which sets the umask first.
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
                .arg(c.get_program())
                .args(["pack".as_ref(), f.src.as_os_str(), out.as_os_str()])
                .arg(format!("--source-date-epoch={EPOCH}"))
                .env_remove("SOURCE_DATE_EPOCH")
                .env("TZ", "UTC")
                .env("LC_ALL", "C");
            *c = sh;
        });
    }
    case("other cwd, relative paths", &|c, out| {
        let mut r = iuk_command("iuk-build");
        r.current_dir(f.tmp.path())
            .args(["pack".as_ref(), "src".as_ref(), out.file_name().unwrap()])
            .arg(format!("--source-date-epoch={EPOCH}"))
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        *c = r;
    });
    case("SOURCE_DATE_EPOCH in the environment", &|c, out| {
        let mut r = iuk_command("iuk-build");
        r.arg("pack")
            .arg(&f.src)
            .arg(out)
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        *c = r;
    });
    assert_same_outputs(cases);
}

/// The same logical tree created in another order (so readdir returns entries in another
/// order: the copy lies on a tmpfs, which lists entries by creation order, while ext4 lists
/// them by name hash) and at another path gives the same bytes.
#[test]
fn deterministic_across_readdir_order() {
    if !require_root_or_skip() {
        return;
    }
    let f = full_tree();
    let a = f.path("a.sqfs");
    pack(&f.src, &a, EPOCH, &[]);

    let tmpfs = f.path("tmpfs");
    fs::create_dir(&tmpfs).unwrap();
    let mounted = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs"])
        .arg(&tmpfs));
    let _guard;
    let shuffled_root = if mounted.ok() {
        _guard = Unmount(tmpfs.clone());
        tmpfs.join("shuffled")
    } else {
        skip(&format!(
            "cannot mount a tmpfs ({}): shuffled tree on the same filesystem",
            mounted.stderr.trim()
        ));
        f.path("shuffled")
    };
    make_tree(&shuffled_root, "shuffled");
    let order = |p: &Path| -> Vec<Vec<u8>> {
        fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect()
    };
    if mounted.ok() {
        assert_ne!(
            order(&f.src),
            order(&shuffled_root),
            "the shuffled tree must be listed in another order for this test to mean anything"
        );
    }
    assert_same_tree(
        &snapshot(&f.src),
        &snapshot(&shuffled_root),
        "full vs shuffled tree",
    );
    let b = f.path("b.sqfs");
    pack(&shuffled_root, &b, EPOCH, &["--jobs", "1"]);
    assert_eq!(
        sha256_file(&a),
        sha256_file(&b),
        "image of the shuffled tree differs"
    );
}

/// Unmounts a directory when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The epoch is part of the bytes (the superblock's mkfs time): another epoch, another sha256.
#[test]
fn epoch_changes_the_bytes() {
    let f = small_tree();
    let a = f.path("a.sqfs");
    let b = f.path("b.sqfs");
    pack(&f.src, &a, EPOCH, &[]);
    pack(&f.src, &b, EPOCH + 1, &[]);
    assert_ne!(
        sha256_file(&a),
        sha256_file(&b),
        "the epoch did not change the image"
    );
    assert_eq!(mkfs_time(&a), EPOCH);
    assert_eq!(mkfs_time(&b), EPOCH + 1);
}

// ------------------------------------------------------------------------------------------------
// Refusals

/// Runs a command expected to be refused and checks the common contract: non-zero exit, one
/// stderr line starting with `iuk-build: error:`, no panic, and the watched directories'
/// contents unchanged (no output, no temporary file).
fn expect_refusal(what: &str, cmd: &mut Command, watched: &[&Path]) -> Run {
    let before: Vec<_> = watched.iter().map(|d| dir_names(d)).collect();
    let r = run(cmd);
    assert!(r.code.is_some_and(|c| c != 0), "{what}: not refused: {r}");
    assert!(!r.stderr.contains("panicked"), "{what}: panicked: {r}");
    assert!(
        r.stderr.starts_with("iuk-build: error:")
            && r.stderr.ends_with('\n')
            && r.stderr.lines().count() == 1,
        "{what}: stderr must be one line starting with `iuk-build: error:`, got {:?}",
        r.stderr
    );
    for (d, b) in watched.iter().zip(before) {
        assert_eq!(dir_names(d), b, "{what}: {} changed", d.display());
    }
    r
}

fn pack_cmd(source: &Path, output: &Path) -> Command {
    let mut c = iuk_command("iuk-build");
    c.arg("pack").arg(source).arg(output);
    c
}

#[test]
fn refuses_without_epoch() {
    let f = small_tree();
    let out = f.path("out.sqfs");
    let r = expect_refusal(
        "no epoch",
        &mut pack_cmd(&f.src, &out),
        &[f.tmp.path(), &f.src],
    );
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains("SOURCE_DATE_EPOCH"), "{r}");
    assert!(!out.exists());
}

#[test]
fn refuses_malformed_epochs() {
    let f = small_tree();
    let out = f.path("out.sqfs");
    for bad in [
        "abc",
        "-1",
        "1.5",
        "99999999999",
        "4294967296",
        "+5",
        "0x10",
        "",
    ] {
        if !bad.is_empty() {
            expect_refusal(
                &format!("--source-date-epoch={bad}"),
                pack_cmd(&f.src, &out).arg(format!("--source-date-epoch={bad}")),
                &[f.tmp.path(), &f.src],
            );
        }
        expect_refusal(
            &format!("SOURCE_DATE_EPOCH={bad:?}"),
            pack_cmd(&f.src, &out).env("SOURCE_DATE_EPOCH", bad),
            &[f.tmp.path(), &f.src],
        );
    }
    assert!(!out.exists());
}

#[test]
fn refuses_missing_output_directory() {
    let f = small_tree();
    let missing = f.path("no-such-dir");
    let r = expect_refusal(
        "missing output directory",
        pack_cmd(&f.src, &missing.join("out.sqfs")).arg(format!("--source-date-epoch={EPOCH}")),
        &[f.tmp.path(), &f.src],
    );
    assert!(r.stderr.contains("no-such-dir"), "{r}");
    assert!(!missing.exists());
}

#[test]
fn refuses_missing_source() {
    let f = small_tree();
    let missing = f.path("no-such-source");
    let r = expect_refusal(
        "missing source",
        pack_cmd(&missing, &f.path("out.sqfs")).arg(format!("--source-date-epoch={EPOCH}")),
        &[f.tmp.path()],
    );
    assert!(r.stderr.contains(&*missing.to_string_lossy()), "{r}");
}

#[test]
fn refuses_source_that_is_neither_directory_nor_image() {
    let f = small_tree();
    let r = expect_refusal(
        "plain file as source",
        pack_cmd(&f.src.join("a"), &f.path("out.sqfs")).arg(format!("--source-date-epoch={EPOCH}")),
        &[f.tmp.path(), &f.src],
    );
    assert!(
        r.stderr.contains(&*f.src.join("a").to_string_lossy()),
        "{r}"
    );
}

/// SquashFS keeps mtimes as u32 seconds: a source mtime before 1970 or after 2106 is an error
/// naming the file, never a silent wrap.
#[test]
fn refuses_unrepresentable_mtimes() {
    for secs in [-1i64, 1 << 32] {
        let f = small_tree();
        let victim = f.src.join("d/b");
        let c = std::ffi::CString::new(victim.as_os_str().as_bytes()).unwrap();
        let t = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: a valid C string and two valid timespecs.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
        assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
        if fs::symlink_metadata(&victim).unwrap().mtime() != secs {
            skip(&format!("this filesystem cannot store mtime {secs}"));
            continue;
        }
        let r = expect_refusal(
            &format!("mtime {secs}"),
            pack_cmd(&f.src, &f.path("out.sqfs")).arg(format!("--source-date-epoch={EPOCH}")),
            &[f.tmp.path(), &f.src],
        );
        assert!(r.stderr.contains(&*victim.to_string_lossy()), "{r}");
    }
}

#[test]
fn refuses_output_inside_source() {
    let f = small_tree();
    let d = f.src.join("d");
    for out in [f.src.join("out.sqfs"), d.join("out.sqfs"), f.src.clone()] {
        let r = expect_refusal(
            &format!("output {}", out.display()),
            pack_cmd(&f.src, &out).arg(format!("--source-date-epoch={EPOCH}")),
            &[f.tmp.path(), &f.src, &d],
        );
        assert!(r.stderr.contains(&*out.to_string_lossy()), "{r}");
    }
}

#[test]
fn refuses_bad_block_sizes() {
    let f = small_tree();
    let out = f.path("out.sqfs");
    for bad in ["3000", "2M", "0", "2K", "1536K"] {
        expect_refusal(
            &format!("--block-size {bad}"),
            pack_cmd(&f.src, &out)
                .arg(format!("--source-date-epoch={EPOCH}"))
                .args(["--block-size", bad]),
            &[f.tmp.path(), &f.src],
        );
    }
}

#[test]
fn refuses_xz_options_without_xz() {
    let f = small_tree();
    let out = f.path("out.sqfs");
    for (comp, opt, val) in [
        ("zstd", "--xz-bcj", "x86"),
        ("gzip", "--xz-bcj", "none"),
        ("gzip", "--xz-dict-size", "64K"),
    ] {
        expect_refusal(
            &format!("--compression {comp} {opt} {val}"),
            pack_cmd(&f.src, &out)
                .arg(format!("--source-date-epoch={EPOCH}"))
                .args(["--compression", comp, opt, val]),
            &[f.tmp.path(), &f.src],
        );
    }
}

// ------------------------------------------------------------------------------------------------
// --json

#[test]
fn json_summary_matches_the_image() {
    let f = small_tree();
    let out = f.path("out.sqfs");
    let r = pack(&f.src, &out, EPOCH, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {r}"));
    let inodes = v["inodes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no `inodes`: {v}"));
    let bytes_out = v["bytes_out"]
        .as_u64()
        .unwrap_or_else(|| panic!("no `bytes_out`: {v}"));
    assert_eq!(bytes_out, fs::metadata(&out).unwrap().len(), "{v}");
    // root, a, d, d/b, s
    assert_eq!(inodes, 5, "{v}");
    assert!(bin("iuk-build").is_file());
}

// ------------------------------------------------------------------------------------------------
// Repacking an existing image, and inspecting images

/// mksquashfs image of the full tree → `pack IMAGE` → the kernel's view of our image equals its
/// view of mksquashfs's image exactly (hard links, xattrs, devices, sparse files, odd names), and
/// the result does not depend on the thread count.
#[test]
fn repack_of_mksquashfs_image_is_exact() {
    if !require_root_or_skip() || !kernel_or_skip() {
        return;
    }
    let Some(mksquashfs) = tool_or_skip("mksquashfs") else {
        return;
    };
    let f = full_tree();
    let foreign = f.path("foreign.sqfs");
    run_ok(Command::new(mksquashfs).arg(&f.src).arg(&foreign).args([
        "-comp",
        "xz",
        "-b",
        "1M",
        "-noappend",
        "-no-progress",
        "-quiet",
    ]));
    let a = f.path("repacked-1.sqfs");
    let b = f.path("repacked-2.sqfs");
    pack(
        &foreign,
        &a,
        EPOCH,
        &["--jobs", "1", "--compression", "zstd"],
    );
    pack(
        &foreign,
        &b,
        EPOCH,
        &["--jobs", "2", "--compression", "zstd"],
    );
    assert_eq!(sha256_file(&a), sha256_file(&b), "repack depends on --jobs");
    // The reference is the kernel's view of mksquashfs's image (mksquashfs itself stores
    // hard-linked symlinks as separate inodes, so that image is not the source tree).
    let original = mount_squashfs(&foreign);
    let repacked = mount_squashfs(&a);
    assert_same_tree(
        &snapshot(original.path()),
        &snapshot(repacked.path()),
        "kernel view of the repacked image vs kernel view of mksquashfs's image",
    );
}

/// mksquashfs image (xz, BCJ x86, 64 KiB blocks) → `pack IMAGE` with the same settings: the
/// full blocks and the fragment blocks are copied, not compressed (`--json` counts), the result does not depend on the
/// thread count, unsquashfs extracts it, and the kernel's view equals its view of the original.
#[test]
fn repack_with_equal_settings_copies_blocks_and_mounts() {
    if !require_root_or_skip() || !kernel_or_skip() {
        return;
    }
    let Some(mksquashfs) = tool_or_skip("mksquashfs") else {
        return;
    };
    let Some(unsquashfs) = tool_or_skip("unsquashfs") else {
        return;
    };
    let f = full_tree();
    let foreign = f.path("foreign.sqfs");
    run_ok(Command::new(mksquashfs).arg(&f.src).arg(&foreign).args([
        "-comp",
        "xz",
        "-Xbcj",
        "x86",
        "-b",
        "64K",
        "-noappend",
        "-no-progress",
        "-quiet",
    ]));
    let settings = ["--xz-bcj", "x86", "--block-size", "64K", "--json"];
    let a = f.path("repacked-1.sqfs");
    let b = f.path("repacked-2.sqfs");
    let r = pack(
        &foreign,
        &a,
        EPOCH,
        &[&settings[..], &["--jobs", "1"]].concat(),
    );
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let copied = v["copied_blocks"].as_u64().unwrap();
    assert!(copied > 0, "{v}");
    assert_eq!(v["compressed_blocks"].as_u64(), Some(0), "{v}");
    // Every file is carried, so mksquashfs's fragment blocks are copied too.
    assert!(v["copied_fragment_blocks"].as_u64().unwrap() > 0, "{v}");
    pack(
        &foreign,
        &b,
        EPOCH,
        &[&settings[..], &["--jobs", "2"]].concat(),
    );
    assert_eq!(sha256_file(&a), sha256_file(&b), "repack depends on --jobs");
    let x = f.path("x");
    run_ok(
        Command::new(unsquashfs)
            .args(["-q", "-n", "-d"])
            .arg(&x)
            .arg(&a),
    );
    let original = mount_squashfs(&foreign);
    let repacked = mount_squashfs(&a);
    assert_same_tree(
        &snapshot(original.path()),
        &snapshot(repacked.path()),
        "kernel view of the repacked image vs kernel view of mksquashfs's image",
    );
    // Other settings: every block is compressed again.
    let c = f.path("recompressed.sqfs");
    let r = pack(&foreign, &c, EPOCH, &["--block-size", "64K", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["copied_blocks"].as_u64(), Some(0), "{v}");
    assert_eq!(v["compressed_blocks"].as_u64(), Some(copied), "{v}");
    assert_eq!(v["copied_fragment_blocks"].as_u64(), Some(0), "{v}");
}

#[test]
fn inspect_reports_and_lists() {
    let f = small_tree();
    let img = f.path("img.sqfs");
    pack(&f.src, &img, EPOCH, &[]);
    let human = run_ok(iuk_command("iuk-build").arg("inspect").arg(&img));
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("compressor       xz"),
        "{human}"
    );
    let json = run_ok(
        iuk_command("iuk-build")
            .args(["inspect", "--json", "--list"])
            .arg(&img),
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["superblock"]["mod_time"], EPOCH);
    assert_eq!(v["counts"]["files"], 2);
    assert_eq!(v["counts"]["symlinks"], 1);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "{entries:?}");
    assert!(
        entries
            .iter()
            .any(|e| e.as_str().unwrap().ends_with("squashfs-root/s -> a")),
        "{entries:?}"
    );
}

/// Truncated images are refused with one line naming the file; corrupted ones never panic.
#[test]
fn inspect_refuses_truncated_and_survives_corrupt_images() {
    let f = small_tree();
    let img = f.path("img.sqfs");
    pack(&f.src, &img, EPOCH, &[]);
    let bytes = fs::read(&img).unwrap();
    let used = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let bad = f.path("bad.sqfs");
    for cut in [0usize, 10, 95, 96, 200, used / 2, used - 20, used - 1] {
        fs::write(&bad, &bytes[..cut]).unwrap();
        let r = expect_refusal(
            &format!("inspect of an image cut at {cut}"),
            iuk_command("iuk-build")
                .args(["inspect", "--list"])
                .arg(&bad),
            &[f.tmp.path()],
        );
        assert!(r.stderr.contains("bad.sqfs"), "cut at {cut}: {r}");
    }
    let mut x = 0x9e37_79b9u32;
    for i in 0..200 {
        let mut m = bytes.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let at = x as usize % m.len();
            m[at] ^= 1 << (x % 8);
        }
        fs::write(&bad, &m).unwrap();
        let r = run(iuk_command("iuk-build")
            .args(["inspect", "--list"])
            .arg(&bad));
        assert!(matches!(r.code, Some(0) | Some(1)), "flip round {i}: {r}");
        assert!(!r.stderr.contains("panicked"), "flip round {i}: {r}");
    }
}

/// `inspect` checks every table but decodes no data; `inspect --deep` decodes every block and
/// refuses an image with a corrupt data block with exit status 1 and one line naming the image
/// and the block; the help says what each mode checks.
#[test]
fn inspect_deep_refuses_a_corrupt_data_block() {
    let f = small_tree();
    let img = f.path("img.sqfs");
    pack(&f.src, &img, EPOCH, &["--block-size", "4096"]);
    let json = run_ok(
        iuk_command("iuk-build")
            .args(["inspect", "--deep", "--json"])
            .arg(&img),
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["check"]["level"], "deep", "{v}");
    // d/b: 17 blocks of 4096 bytes and a tail, with a, in a fragment.
    assert_eq!(v["check"]["data_blocks_decoded"], 17, "{v}");
    assert_eq!(v["check"]["fragment_blocks_decoded"], 1, "{v}");
    assert_eq!(v["check"]["bytes_decoded"], 70_006, "{v}");
    let plain = run_ok(iuk_command("iuk-build").arg("inspect").arg(&img));
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        text.contains("checked          metadata: ")
            && text.contains("not decoded (--deep decodes them)"),
        "{plain}"
    );
    let mut bytes = fs::read(&img).unwrap();
    // The first data block (about 90 bytes of xz) follows the superblock.
    bytes[96 + 40] ^= 0x55;
    let bad = f.path("bad.sqfs");
    fs::write(&bad, &bytes).unwrap();
    run_ok(iuk_command("iuk-build").arg("inspect").arg(&bad));
    let r = expect_refusal(
        "inspect --deep of an image with a corrupt data block",
        iuk_command("iuk-build")
            .args(["inspect", "--deep"])
            .arg(&bad),
        &[f.tmp.path()],
    );
    assert_eq!(r.code, Some(1), "{r}");
    assert!(
        r.stderr.contains("bad.sqfs: /d/b (inode ") && r.stderr.contains("data block 0 at "),
        "{r}"
    );
    let help = run_ok(iuk_command("iuk-build").args(["inspect", "--help"]));
    // Wrapped to the terminal width: compare words.
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("--deep") && help.contains("Not checked without --deep"),
        "{help}"
    );
}

/// The compressors are vendored and linked statically: no host compression library is loaded,
/// so image bytes cannot depend on the host's library versions.
#[test]
fn no_host_compression_library_is_linked() {
    let Some(ldd) = tool_or_skip("ldd") else {
        return;
    };
    for b in ["iuk-build", "iuk-apply"] {
        let r = run_ok(Command::new(&ldd).arg(bin(b)));
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        for lib in ["liblzma", "libzstd", "libz.so", "liblz4", "liblzo"] {
            assert!(!out.contains(lib), "{b} links {lib}:\n{out}");
        }
    }
}
