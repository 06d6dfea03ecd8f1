//! Helpers for the end-to-end tests: finding the built binaries, deciding when a test needs
//! root, the kernel or an external tool (and skipping or failing accordingly, through the one
//! skip helper of the `iuk-skip` crate), building the fixture kits once per run
//! ([`fixture_kit`]), building test trees with `scripts/make-tree`, snapshotting a directory tree with every attribute the
//! invariants cover, explaining snapshot differences field by field, and loop-mounting images
//! with a guard that always unmounts.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

// ------------------------------------------------------------------------------------------------
// Binaries and scripts

/// The workspace root (the parent of this package's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A script of the workspace's `scripts/` directory.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("scripts").join(name)
}

/// The directory holding the built binaries: `IUK_BIN_DIR` if set, else the profile directory
/// of the running test executable (`target/<profile>/deps/<test>` → `target/<profile>/`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IUK_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lies in target/<profile>/deps/")
        .to_path_buf()
}

/// The path of a built binary of the workspace (`iuk-build`, `iuk-apply`).
///
/// A package cannot depend on another package's binaries, so the binaries must be built
/// before the tests run; a missing binary fails the test with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    if !p.is_file() {
        panic!(
            "{} not found: build it first: cargo build --release \
             (or set IUK_BIN_DIR to the directory holding {name})",
            p.display()
        );
    }
    p
}

// ------------------------------------------------------------------------------------------------
// Skipping

pub use iuk_skip::{skip, skip_unless_required, skips_forbidden};

/// Whether the process runs as root (euid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `true` when running as root; otherwise reports a skip (see [`skip`]: counted, or a failure
/// under `IUK_REQUIRE_KERNEL=1`) and returns `false`.
///
/// Usage: `if !require_root_or_skip() { return; }`
pub fn require_root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    skip("needs root (devices, arbitrary owners, trusted.* xattrs, mounts)");
    false
}

/// Why the kernel cannot loop-mount SquashFS here, or `Ok` when it can.
pub fn kernel_available() -> Result<(), String> {
    if !is_root() {
        return Err("loop-mounting needs root".into());
    }
    let has_squashfs = || {
        fs::read_to_string("/proc/filesystems")
            .map(|s| {
                s.lines()
                    .any(|l| l.split_whitespace().last() == Some("squashfs"))
            })
            .unwrap_or(false)
    };
    if !has_squashfs() {
        // The module may just not be loaded yet.
        let _ = Command::new("modprobe")
            .arg("squashfs")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !has_squashfs() {
            return Err("the kernel has no squashfs support".into());
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no loop devices (/dev/loop-control missing)".into());
    }
    for tool in ["mount", "umount"] {
        if find_tool(tool).is_none() {
            return Err(format!("`{tool}` not found"));
        }
    }
    Ok(())
}

/// `true` when images can be loop-mounted; otherwise reports a skip and returns `false`.
pub fn kernel_or_skip() -> bool {
    match kernel_available() {
        Ok(()) => true,
        Err(reason) => {
            skip(&reason);
            false
        }
    }
}

/// The path of an executable found in `PATH`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The path of an external tool; when missing, reports a skip and returns `None`.
pub fn tool_or_skip(name: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        skip(&format!("`{name}` is not installed"));
    }
    found
}

// ------------------------------------------------------------------------------------------------
// Running commands

/// What a finished command returned.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Run {
    /// Whether the command exited with status 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output, lossily decoded.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Run {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Run {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a command and panics, showing its output, unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Run {
    let r = run(cmd);
    assert!(r.ok(), "{cmd:?} failed: {r}");
    r
}

/// Runs every `(name, output, command)` case, each of which must succeed, and asserts that all
/// outputs have the same sha256 (the determinism tests).
pub fn assert_same_outputs(cases: Vec<(String, PathBuf, Command)>) {
    let mut results = Vec::new();
    for (name, out, mut c) in cases {
        let r = run(&mut c);
        assert!(r.ok(), "{name}: {c:?}: {r}");
        results.push((name, sha256_file(&out)));
    }
    let (first_name, first) = results[0].clone();
    let differing: Vec<String> = results
        .iter()
        .filter(|(_, s)| *s != first)
        .map(|(n, s)| format!("{n}: {s}"))
        .collect();
    assert!(
        differing.is_empty(),
        "`{first_name}` gave {first}, but:\n  {}",
        differing.join("\n  ")
    );
}

/// A `Command` for a built binary, with `SOURCE_DATE_EPOCH` removed from its environment so
/// that only what a test passes explicitly counts.
pub fn iuk_command(name: &str) -> Command {
    let mut c = Command::new(bin(name));
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

/// Runs `iuk-build pack SOURCE OUTPUT --source-date-epoch EPOCH ARGS...` and panics unless it
/// succeeds.
pub fn pack(source: &Path, output: &Path, epoch: u32, args: &[&str]) -> Run {
    run_ok(
        iuk_command("iuk-build")
            .arg("pack")
            .arg(source)
            .arg(output)
            .arg(format!("--source-date-epoch={epoch}"))
            .args(args),
    )
}

/// Runs `scripts/make-tree DIR VARIANT` (needs root).
pub fn make_tree(dir: &Path, variant: &str) {
    run_ok(
        Command::new("bash")
            .arg(script("make-tree"))
            .arg(dir)
            .arg(variant),
    );
}

/// Hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex(&sha256_reader(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn sha256_reader(r: &mut impl Read) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The names in a directory, sorted (to check that nothing was left behind).
pub fn dir_names(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readdir").file_name())
        .collect();
    v.sort();
    v
}

// ------------------------------------------------------------------------------------------------
// Snapshots

/// The type of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// One entry of a tree, with every attribute the exactness invariant covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the snapshot root, as bytes; the root itself is the empty path.
    pub path: Vec<u8>,
    /// Type.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, whole seconds.
    pub mtime: i64,
    /// Size in bytes (regular files only).
    pub size: Option<u64>,
    /// Hex sha256 of the content (regular files only).
    pub sha256: Option<String>,
    /// Symlink target (symlinks only).
    pub target: Option<Vec<u8>>,
    /// Device (major, minor) (character and block devices only).
    pub rdev: Option<(u32, u32)>,
    /// Extended attributes (name, value), sorted; `system.*` (POSIX ACLs) excluded.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For a non-directory with more than one link: the smallest path of its hard-link group
    /// within the snapshot (the same value for every member of the group).
    pub link_group: Option<Vec<u8>>,
}

/// A path for messages: printable ASCII kept, other bytes escaped; the root shows as `/`.
pub fn show_path(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        p.escape_ascii().to_string()
    }
}

fn show_bytes(b: &[u8]) -> String {
    format!("\"{}\"", b.escape_ascii())
}

/// Walks `root` (never following symlinks) and records every entry, sorted by path bytes.
pub fn snapshot(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut inodes: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    walk(root, Vec::new(), &mut out, &mut inodes);
    for members in inodes.values() {
        let smallest = members
            .iter()
            .map(|&i| out[i].path.clone())
            .min()
            .expect("non-empty group");
        for &i in members {
            out[i].link_group = Some(smallest.clone());
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn walk(
    path: &Path,
    rel: Vec<u8>,
    out: &mut Vec<Entry>,
    inodes: &mut HashMap<(u64, u64), Vec<usize>>,
) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        panic!("{}: unknown file type", path.display());
    };
    let (size, sha256) = if kind == Kind::File {
        let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let h = sha256_reader(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (Some(md.len()), Some(hex(&h)))
    } else {
        (None, None)
    };
    let target = (kind == Kind::Symlink).then(|| {
        fs::read_link(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .as_os_str()
            .as_bytes()
            .to_vec()
    });
    let rdev = matches!(kind, Kind::CharDev | Kind::BlockDev)
        .then(|| (libc::major(md.rdev()), libc::minor(md.rdev())));
    let xattrs = read_xattrs(path)
        .unwrap_or_else(|e| panic!("{}: xattrs: {e}", path.display()))
        .into_iter()
        .filter(|(n, _)| !n.starts_with(b"system."))
        .collect();
    let index = out.len();
    if kind != Kind::Dir && md.nlink() > 1 {
        inodes.entry((md.dev(), md.ino())).or_default().push(index);
    }
    out.push(Entry {
        path: rel.clone(),
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        size,
        sha256,
        target,
        rdev,
        xattrs,
        link_group: None,
    });
    if kind == Kind::Dir {
        let mut names: Vec<OsString> = fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|e| {
                e.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .file_name()
            })
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            walk(&path.join(&name), child, out, inodes);
        }
    }
}

/// The extended attributes of `path` itself (symlinks not followed), sorted by name.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut names = vec![0u8; 4096];
    let len = loop {
        // SAFETY: `c` is a valid C string and `names` a writable buffer of the given length.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let mut value = vec![0u8; 256];
        let vlen = loop {
            // SAFETY: valid C strings and a writable buffer of the given length.
            let n = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) if value.len() < (1 << 24) => value.resize(value.len() * 4, 0),
                _ => return Err(e),
            }
        };
        value.truncate(vlen);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Every difference between two snapshots, one line each: the path, the field and both
/// values (`a` first). Empty when the snapshots are equal.
pub fn diff_snapshots(a: &[Entry], b: &[Entry]) -> Vec<String> {
    let ma: BTreeMap<&[u8], &Entry> = a.iter().map(|e| (e.path.as_slice(), e)).collect();
    let mb: BTreeMap<&[u8], &Entry> = b.iter().map(|e| (e.path.as_slice(), e)).collect();
    let mut out = Vec::new();
    for (p, ea) in &ma {
        let Some(eb) = mb.get(p) else {
            out.push(format!(
                "{}: only in the first tree ({:?})",
                show_path(p),
                ea.kind
            ));
            continue;
        };
        let path = show_path(p);
        let mut field = |name: &str, va: String, vb: String| {
            if va != vb {
                out.push(format!("{path}: {name}: {va} != {vb}"));
            }
        };
        field("type", format!("{:?}", ea.kind), format!("{:?}", eb.kind));
        field(
            "mode",
            format!("{:04o}", ea.mode),
            format!("{:04o}", eb.mode),
        );
        field("uid", ea.uid.to_string(), eb.uid.to_string());
        field("gid", ea.gid.to_string(), eb.gid.to_string());
        field("mtime", ea.mtime.to_string(), eb.mtime.to_string());
        field("size", format!("{:?}", ea.size), format!("{:?}", eb.size));
        field(
            "sha256",
            format!("{:?}", ea.sha256),
            format!("{:?}", eb.sha256),
        );
        let opt = |t: &Option<Vec<u8>>| t.as_deref().map_or("none".into(), show_bytes);
        field("symlink target", opt(&ea.target), opt(&eb.target));
        field("rdev", format!("{:?}", ea.rdev), format!("{:?}", eb.rdev));
        let opt_path = |t: &Option<Vec<u8>>| t.as_deref().map_or("none".into(), show_path);
        field(
            "hard-link group",
            opt_path(&ea.link_group),
            opt_path(&eb.link_group),
        );
        let xa: BTreeMap<&[u8], &[u8]> = ea
            .xattrs
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        let xb: BTreeMap<&[u8], &[u8]> = eb
            .xattrs
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        for (n, va) in &xa {
            match xb.get(n) {
                None => out.push(format!(
                    "{path}: xattr {}: {} != (absent)",
                    n.escape_ascii(),
                    show_bytes(va)
                )),
                Some(vb) if vb != va => out.push(format!(
                    "{path}: xattr {}: {} != {}",
                    n.escape_ascii(),
                    show_bytes(va),
                    show_bytes(vb)
                )),
                Some(_) => {}
            }
        }
        for (n, vb) in &xb {
            if !xa.contains_key(n) {
                out.push(format!(
                    "{path}: xattr {}: (absent) != {}",
                    n.escape_ascii(),
                    show_bytes(vb)
                ));
            }
        }
    }
    for (p, eb) in &mb {
        if !ma.contains_key(p) {
            out.push(format!(
                "{}: only in the second tree ({:?})",
                show_path(p),
                eb.kind
            ));
        }
    }
    out
}

/// Panics with every difference (up to 200 lines) unless the snapshots are equal.
pub fn assert_same_tree(expected: &[Entry], actual: &[Entry], what: &str) {
    let d = diff_snapshots(expected, actual);
    if !d.is_empty() {
        let shown: Vec<&str> = d.iter().take(200).map(String::as_str).collect();
        panic!(
            "{what}: {} difference(s) (first tree = expected, second = actual):\n  {}{}",
            d.len(),
            shown.join("\n  "),
            if d.len() > shown.len() { "\n  …" } else { "" }
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Mounting

/// A loop-mounted image; unmounted (and its mountpoint removed) when dropped, also while a
/// panicking test unwinds.
pub struct Mounted {
    point: PathBuf,
    holder: Option<tempfile::TempDir>,
}

impl Mounted {
    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.point
    }
}

/// Loop-mounts a SquashFS image read-only; panics with mount's message (and the kernel's
/// last messages when readable) on failure.
pub fn mount_squashfs(image: &Path) -> Mounted {
    let holder = tempfile::Builder::new()
        .prefix("iuk-mnt-")
        .tempdir()
        .expect("mountpoint");
    let point = holder.path().to_path_buf();
    let r = run(Command::new("mount")
        .args(["-t", "squashfs", "-o", "loop,ro"])
        .arg(image)
        .arg(&point));
    if !r.ok() {
        let dmesg = Command::new("dmesg")
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).into_owned();
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(10)..].join("\n")
            })
            .unwrap_or_default();
        panic!(
            "mount -o loop,ro {} failed: {}\nkernel log tail:\n{dmesg}",
            image.display(),
            r.stderr.trim()
        );
    }
    Mounted {
        point,
        holder: Some(holder),
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let quiet = |args: &[&OsStr]| {
            Command::new("umount")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let p = self.point.as_os_str();
        let unmounted = quiet(&[p]) || quiet(&[OsStr::new("-l"), p]);
        if unmounted {
            drop(self.holder.take());
        } else {
            // Never recurse into a still-mounted tree to delete it.
            eprintln!("warning: could not unmount {}", self.point.display());
            if let Some(h) = self.holder.take() {
                let _ = h.keep();
            }
        }
    }
}

/// Mounts a read-only overlayfs view of `lowers` (leftmost on top, as `lowerdir=` orders them)
/// with `xino=on`, so that `st_ino` alone is unique across layers; unmounted when dropped.
/// Panics with mount's message (and the kernel's last messages) on failure. The lower paths
/// must not contain `:` or `,`.
pub fn mount_overlay(lowers: &[&Path]) -> Mounted {
    assert!(
        lowers.len() >= 2,
        "a read-only overlay needs two lower layers or more"
    );
    let mut opts = OsString::from("ro,xino=on,lowerdir=");
    for (i, l) in lowers.iter().enumerate() {
        let b = l.as_os_str().as_bytes();
        assert!(
            !b.contains(&b':') && !b.contains(&b','),
            "{}: `:` and `,` cannot appear in a lowerdir",
            l.display()
        );
        if i > 0 {
            opts.push(":");
        }
        opts.push(l.as_os_str());
    }
    let holder = tempfile::Builder::new()
        .prefix("iuk-ovl-")
        .tempdir()
        .expect("mountpoint");
    let point = holder.path().to_path_buf();
    let r = run(Command::new("mount")
        .args(["-t", "overlay", "-o"])
        .arg(&opts)
        .arg("overlay")
        .arg(&point));
    if !r.ok() {
        panic!(
            "mount -t overlay -o {} failed: {}\nkernel log tail:\n{}",
            opts.to_string_lossy(),
            r.stderr.trim(),
            kernel_log_tail()
        );
    }
    Mounted {
        point,
        holder: Some(holder),
    }
}

fn kernel_log_tail() -> String {
    Command::new("dmesg")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------
// Fixtures

/// A committed fixture of `testdata/` (the ISOs of testdata/README.md, golden hashes).
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("testdata").join(name)
}

/// The fixture ISO of a version (`testdata/Tails-<version>.iso`).
pub fn iso(version: &str) -> PathBuf {
    fixture(&format!("Tails-{version}.iso"))
}

/// The default layer name of the kit `from` → `to` of the fixtures.
pub fn layer_name(from: &str, to: &str) -> String {
    format!("Tails_{from}_to_{to}")
}

/// `true` when every named tool is installed; otherwise reports a skip and returns `false`.
pub fn tools_or_skip(names: &[&str]) -> bool {
    names.iter().all(|n| tool_or_skip(n).is_some())
}

/// `iuk-build build --old OLD --new NEW --out OUT` (no epoch, SOURCE_DATE_EPOCH removed).
pub fn build_cmd(old: &Path, new: &Path, out: &Path) -> Command {
    let mut c = iuk_command("iuk-build");
    c.arg("build")
        .arg("--old")
        .arg(old)
        .arg("--new")
        .arg(new)
        .arg("--out")
        .arg(out);
    c
}

/// The kits of the fixture ISOs built so far by this process, by (from, to, arguments): each
/// slot is filled once, by the first test that asks for it; the others wait for it.
type KitSlots = HashMap<(String, String, Vec<String>), Arc<OnceLock<PathBuf>>>;

/// The process-wide directory holding the kits [`fixture_kit`] built (removed at exit).
static KIT_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Removes [`KIT_DIR`] when the test process exits (registered with `atexit`).
extern "C" fn remove_kit_dir() {
    if let Some(d) = KIT_DIR.get() {
        let _ = fs::remove_dir_all(d);
    }
}

/// [`fixture_kit`] built with `--source-date-epoch=EPOCH` before `args` (how most tests name
/// their kits).
pub fn fixture_kit_at(from: &str, to: &str, epoch: u32, args: &[&str]) -> PathBuf {
    let mut all = vec![format!("--source-date-epoch={epoch}")];
    all.extend(args.iter().map(|a| a.to_string()));
    fixture_kit(
        from,
        to,
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// The process-wide temporary directory of the shared fixture kits and pairs, made on first use
/// and removed when the process exits.
fn kit_dir() -> &'static PathBuf {
    KIT_DIR.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("iuk-e2e-kits-")
            .tempdir()
            .expect("a temporary directory for the fixture kits")
            .keep();
        // SAFETY: registers a function without arguments that only removes a directory.
        unsafe { libc::atexit(remove_kit_dir) };
        d
    })
}

/// The kit `iuk-build build --old Tails-FROM.iso --new Tails-TO.iso --out OUT ARGS` of the
/// fixture ISOs (SOURCE_DATE_EPOCH removed, so pass `--source-date-epoch=…` in `args`), built
/// once per test process and shared by every test that asks for the same (from, to, args):
/// the file is `Tails_amd64_FROM_to_TO.iuk` in a directory of its own under a process-wide
/// temporary directory, removed when the process exits. Read it; never change it: a test that
/// modifies a kit copies it first. Panics (with the build's output) unless the build succeeds.
pub fn fixture_kit(from: &str, to: &str, args: &[&str]) -> PathBuf {
    static SLOTS: OnceLock<Mutex<KitSlots>> = OnceLock::new();
    let key = (
        from.to_string(),
        to.to_string(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    static BUILT: AtomicUsize = AtomicUsize::new(0);
    let slot = Arc::clone(
        SLOTS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default(),
    );
    slot.get_or_init(|| {
        let root = kit_dir();
        let dir = root.join(BUILT.fetch_add(1, Ordering::Relaxed).to_string());
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let out = dir.join(format!("Tails_amd64_{from}_to_{to}.iuk"));
        run_ok(build_cmd(&iso(from), &iso(to), &out).args(args));
        out
    })
    .clone()
}

/// The mkfs time in the superblock of the SquashFS image at `path` (bytes 8..12).
pub fn mkfs_time(path: &Path) -> u32 {
    let bytes = fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

// ------------------------------------------------------------------------------------------------
// Scratch filesystems (added for tests/tests/apply.rs)

/// Whether `point` is a mountpoint now (per `/proc/self/mountinfo`).
pub fn is_mountpoint(point: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(point) else {
        return false;
    };
    let want = canon.as_os_str().as_bytes();
    fs::read("/proc/self/mountinfo")
        .map(|info| {
            info.split(|b| *b == b'\n').any(|line| {
                // Field 5 is the mountpoint, with spaces etc. octal-escaped; temp paths have none.
                line.split(|b| *b == b' ').nth(4) == Some(want)
            })
        })
        .unwrap_or(false)
}

/// Mounts a fresh tmpfs of `size` (as `mount -o size=` takes it, e.g. `2M`) on a new temporary
/// directory; unmounted (and the directory removed) when dropped. Needs root.
pub fn mount_tmpfs(size: &str) -> Mounted {
    let holder = tempfile::Builder::new()
        .prefix("iuk-tmpfs-")
        .tempdir()
        .expect("mountpoint");
    let point = holder.path().to_path_buf();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(&point),
    );
    Mounted {
        point,
        holder: Some(holder),
    }
}

/// Mounts the FAT image `image` read-write through FUSE (`fusefat -o rw+ IMAGE DIR`) on a new
/// temporary directory, waiting until the mount is there; unmounted when dropped. Panics with
/// fusefat's output on failure.
pub fn mount_fusefat(image: &Path) -> Mounted {
    let holder = tempfile::Builder::new()
        .prefix("iuk-fat-")
        .tempdir()
        .expect("mountpoint");
    let point = holder.path().to_path_buf();
    let r = run(Command::new("fusefat")
        .args(["-o", "rw+"])
        .arg(image)
        .arg(&point));
    assert!(r.ok(), "fusefat -o rw+ {} failed: {r}", image.display());
    let mounted = Mounted {
        point: point.clone(),
        holder: Some(holder),
    };
    for _ in 0..100 {
        if is_mountpoint(&point) {
            return mounted;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "fusefat: {} did not appear as a mountpoint",
        point.display()
    );
}

/// Every regular file under `dir`, by `/`-separated relative path; panics on other types
/// than directories and regular files.
pub fn read_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file() {
                out.insert(rel, fs::read(&p).unwrap());
            } else {
                panic!("{}: neither a file nor a directory", p.display());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `hay` with every occurrence of `from` replaced by `to`.
pub fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// GnuPG

/// A temporary GnuPG home; its agent is stopped when dropped.
pub struct Gpg(TempDir);

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.0.path())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Default for Gpg {
    fn default() -> Gpg {
        Gpg::new()
    }
}

impl Gpg {
    /// A new home, tuned for fast signing.
    pub fn new() -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("iuk-gpg-")
            .tempdir()
            .unwrap();
        // The fewest key-derivation rounds for the passphrase (faster signing).
        fs::write(home.path().join("gpg-agent.conf"), "s2k-count 65536\n").unwrap();
        Gpg(home)
    }

    /// Runs gpg in the home, in batch mode, with a fixed passphrase; panics unless it succeeds.
    pub fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.0.path())
            .args(["--batch", "--no-tty", "--yes", "--quiet"])
            .args(["--pinentry-mode", "loopback", "--passphrase", "pw"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Makes an ed25519 key with the usage given (`sign`, `cert`) and returns its fingerprint.
    pub fn gen(&self, email: &str, usage: &str) -> String {
        self.run(&[
            "--quick-gen-key",
            &format!("Key <{email}>"),
            "ed25519",
            usage,
            "0",
        ]);
        let text = String::from_utf8(self.run(&["--with-colons", "--list-keys", email])).unwrap();
        text.lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .unwrap()
            .to_string()
    }

    /// The armored public keys.
    pub fn export(&self, fprs: &[&str]) -> Vec<u8> {
        let mut args = vec!["--export", "--armor"];
        args.extend_from_slice(fprs);
        let out = self.run(&args);
        assert!(!out.is_empty());
        out
    }

    /// The revocation certificate GnuPG made with the key (its armor line unmasked).
    pub fn revocation(&self, fpr: &str) -> Vec<u8> {
        let p = self
            .0
            .path()
            .join("openpgp-revocs.d")
            .join(format!("{fpr}.rev"));
        fs::read_to_string(p)
            .unwrap()
            .replace(":-----BEGIN PGP", "-----BEGIN PGP")
            .into_bytes()
    }

    /// `gpg --armor --detach-sign` of `file` by `key`, written to `out`.
    pub fn sign(&self, key: &str, file: &Path, out: &Path) -> PathBuf {
        self.run(&[
            "--local-user",
            key,
            "--armor",
            "--detach-sign",
            "--output",
            out.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        out.to_path_buf()
    }
}

// ------------------------------------------------------------------------------------------------
// Killing the real binary at its system calls (strace)

/// The system calls the kill tests trace: every one that can change a file or a directory.
pub const MUTATING_SYSCALLS: &str = "write,pwrite64,pwritev,writev,unlink,unlinkat,mkdir,\
    mkdirat,rmdir,fsync,fdatasync,syncfs,ftruncate,truncate,openat,open,creat,rename,renameat,\
    renameat2,copy_file_range,link,linkat,symlink,symlinkat,fchmod,fchmodat,chmod,fchown,\
    fchownat,chown";

/// One system call of an strace log (`-f -o FILE`): pid, name, the whole line.
pub struct Call {
    /// The thread that made it.
    pub pid: String,
    /// The system call's name.
    pub name: String,
    /// The whole line.
    pub line: String,
}

/// The calls of an strace log written with `-f -qq -o FILE`.
pub fn parse_strace(text: &str) -> Vec<Call> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.starts_with("+++") || rest.starts_with("---") || rest.starts_with("<...") {
            continue;
        }
        let Some(open) = rest.find('(') else { continue };
        out.push(Call {
            pid: pid.to_string(),
            name: rest[..open].to_string(),
            line: line.to_string(),
        });
    }
    out
}

/// Runs `program args` to success under strace, tracing [`MUTATING_SYSCALLS`] into `trace`;
/// asserts that nothing renames, links, chmods or chowns on `medium` and that one thread
/// changes it; returns the calls and that thread's pid. `what` names the run in messages.
pub fn trace_clean_run(
    what: &str,
    trace: &Path,
    program: &Path,
    args: &[&OsStr],
    medium: &Path,
) -> (Vec<Call>, String) {
    run_ok(
        Command::new("strace")
            .args(["-f", "-qq", "-o"])
            .arg(trace)
            .args(["-e", &format!("trace={MUTATING_SYSCALLS}")])
            .arg(program)
            .args(args),
    );
    let calls = parse_strace(&fs::read_to_string(trace).unwrap());
    let medium_s = medium.display().to_string();
    let forbidden: Vec<&str> = calls
        .iter()
        .filter(|c| {
            c.name.starts_with("rename")
                || c.name.contains("link") && c.name != "unlink" && c.name != "unlinkat"
                || c.name.contains("chmod")
                || c.name.contains("chown")
        })
        .filter(|c| c.line.contains(&medium_s))
        .map(|c| c.line.as_str())
        .collect();
    assert!(
        forbidden.is_empty(),
        "{what}: renames, links or chmods on the medium:\n  {}",
        forbidden.join("\n  ")
    );
    let pids: std::collections::BTreeSet<String> = calls
        .iter()
        .filter(|c| c.line.contains(&medium_s))
        .map(|c| c.pid.clone())
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "{what}: the medium is changed from more than one thread: {pids:?}"
    );
    let pid = pids.into_iter().next().unwrap();
    (calls, pid)
}

/// The kill points among `pid`'s calls of each of `kinds`, numbered as strace's `when=` counts
/// them (per syscall, per thread); among `openat` only the calls that create or truncate.
/// Kinds never called are left out.
pub fn kill_points<'a>(
    calls: &[Call],
    pid: &str,
    kinds: &[&'a str],
) -> BTreeMap<&'a str, Vec<usize>> {
    let mut per_kind = BTreeMap::new();
    for &kind in kinds {
        let ks: Vec<usize> = calls
            .iter()
            .filter(|c| c.pid == pid && c.name == kind)
            .enumerate()
            .filter(|(_, c)| {
                kind != "openat" || c.line.contains("O_CREAT") || c.line.contains("O_TRUNC")
            })
            .map(|(i, _)| i + 1)
            .collect();
        if !ks.is_empty() {
            per_kind.insert(kind, ks);
        }
    }
    per_kind
}

/// Copies a tree with `cp -a` (a pristine medium for each kill).
pub fn copy_tree(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

// ------------------------------------------------------------------------------------------------
// A generated release pair for binary-delta kits (FORMAT 3; added for tests/tests/deltas.rs)

/// The versions of the pair [`delta_pair`] makes.
pub const DELTA_OLD_VERSION: &str = "7.0";
/// See [`DELTA_OLD_VERSION`].
pub const DELTA_NEW_VERSION: &str = "7.1";
/// The mtime of every entry the pair does not give another one, and the image's mkfs time.
pub const DELTA_MTIME: i64 = 1_700_000_000;

/// Deterministic pseudo-random bytes (xorshift64*, seeded by `seed`): incompressible, so a
/// patch against a similar file is far smaller than the file.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// `data` with `n` bytes at each of `offsets` replaced by pseudo-random ones (a rebuilt binary
/// changed in a few places; the size stays).
fn edited(data: &[u8], offsets: &[usize], n: usize, seed: u64) -> Vec<u8> {
    let mut out = data.to_vec();
    for (i, &o) in offsets.iter().enumerate() {
        out[o..o + n].copy_from_slice(&pseudo_random(n, seed + i as u64));
    }
    out
}

/// A table of little-endian u32 "addresses" (a relocated binary): every one moved by `shift`.
/// A bsdiff patch (bytewise differences, mostly equal) stays tiny; a zstd patch-from cannot
/// match more than three bytes in a row.
fn address_table(words: usize, seed: u64, shift: u32) -> Vec<u8> {
    pseudo_random(words * 4, seed)
        .chunks(4)
        .flat_map(|c| {
            let v = u32::from_le_bytes(c.try_into().unwrap()) & 0x00ff_fff0;
            (v + shift).to_le_bytes()
        })
        .collect()
}

/// The output of the external command `cmd args` fed `data` on its standard input (fixtures of
/// compressed files are made by GNU gzip, xz, cpio and Python's zlib, never by our code).
fn filter(cmd: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect(cmd);
    writer.join().unwrap().expect("stdin");
    assert!(out.status.success(), "{cmd} failed");
    out.stdout
}

/// `gzip -n -9` of `data`.
fn gzip(data: &[u8]) -> Vec<u8> {
    filter("gzip", &["-n", "-9", "-c"], data)
}

/// `xz -6` of `data`.
fn xz(data: &[u8]) -> Vec<u8> {
    filter("xz", &["-6", "-c"], data)
}

/// A zip archive (deflated entries, as a jar or `omni.ja`) of `data` cut into eight entries,
/// made by Python's zipfile with fixed dates.
fn zip_of(data: &[u8]) -> Vec<u8> {
    const SCRIPT: &str = "import sys, io, zipfile\n\
        d = sys.stdin.buffer.read(); n = 8; step = len(d) // n + 1\n\
        b = io.BytesIO()\n\
        with zipfile.ZipFile(b, 'w') as z:\n\
        \x20   for i in range(n):\n\
        \x20       info = zipfile.ZipInfo('chrome/part%d.js' % i, (2020, 1, 1, 0, 0, 0))\n\
        \x20       info.compress_type = zipfile.ZIP_DEFLATED\n\
        \x20       z.writestr(info, d[i * step:(i + 1) * step], compresslevel=9)\n\
        sys.stdout.buffer.write(b.getvalue())\n";
    filter("python3", &["-c", SCRIPT], data)
}

/// An initrd as Debian makes one: an uncompressed cpio archive with early microcode, then the
/// main cpio archive gzip'd (by GNU cpio and gzip); `new` changes one module of the main part.
fn initrd(new: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let early = dir.path().join("early/kernel/x86/microcode");
    let main = dir.path().join("main/lib/modules");
    fs::create_dir_all(&early).unwrap();
    fs::create_dir_all(&main).unwrap();
    fs::write(early.join("GenuineIntel.bin"), pseudo_random(30_000, 301)).unwrap();
    for i in 0..6u64 {
        let mut text = Vec::new();
        for l in 0..3000u64 {
            text.extend_from_slice(format!("module {i} symbol {l} {}\n", l * 31 % 97).as_bytes());
        }
        if new && i == 2 {
            text.extend_from_slice(b"a fix in 7.1\n");
        }
        fs::write(main.join(format!("m{i}.ko")), text).unwrap();
    }
    let cpio = |sub: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg("find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible")
            .current_dir(dir.path().join(sub))
            .output()
            .expect("cpio");
        assert!(out.status.success(), "cpio failed");
        out.stdout
    };
    [cpio("early"), gzip(&cpio("main"))].concat()
}

/// One entry of a generated root.
enum GenEntry {
    Dir {
        mode: u32,
    },
    File {
        data: Vec<u8>,
        mode: u32,
    },
    /// A hard link to the file at the given path (created earlier in path order).
    Link(&'static str),
    Symlink(&'static str),
}

/// An entry of a generated root: path, entry, mtime, `user.*` xattrs.
type GenItem = (&'static str, GenEntry, i64, Vec<(&'static str, Vec<u8>)>);

/// Sets `path`'s mtime (symlinks themselves, not their targets).
fn set_mtime(path: &Path, secs: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: a valid C path and two valid timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "{}: utimensat: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// Sets a `user.*` extended attribute on `path`.
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "{}: setxattr {name}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// The root filesystem of one release of the pair (`new`: the second), as (path, entry,
/// mtime, xattrs), in path order (parents first).
fn delta_root(new: bool) -> Vec<GenItem> {
    use GenEntry::*;
    let v = if new {
        DELTA_NEW_VERSION
    } else {
        DELTA_OLD_VERSION
    };
    let t = DELTA_MTIME;
    let tn = if new { t + 86_400 } else { t };
    let d = |mode| Dir { mode };
    let f = |data: Vec<u8>, mode| File { data, mode };
    let none = Vec::new;
    let mut e: Vec<GenItem> = Vec::new();
    e.push(("etc", d(0o755), t, none()));
    let os_release = format!(
        "NAME=\"Tails\"\nID=\"tails\"\nVERSION_ID=\"{v}\"\nTAILS_PRODUCT_NAME=\"Tails\"\n\
         TAILS_VERSION_ID=\"{v}\"\n"
    );
    e.push((
        "etc/os-release",
        f(os_release.into_bytes(), 0o644),
        tn,
        none(),
    ));
    e.push(("etc/hostname", f(b"amnesia\n".to_vec(), 0o644), t, none()));
    // lib/modules: the kernel ABI directory is renamed, its module changes a little.
    e.push(("lib", d(0o755), t, none()));
    e.push(("lib/modules", d(0o755), t, none()));
    let ko = pseudo_random(300 << 10, 11);
    let (abi, ko) = if new {
        (
            "lib/modules/6.1.0-28-amd64",
            edited(&ko, &[4096, 150_000, 290_000], 24, 12),
        )
    } else {
        ("lib/modules/6.1.0-26-amd64", ko)
    };
    let (abi_kernel, abi_ko, abi_order) = if new {
        (
            "lib/modules/6.1.0-28-amd64/kernel",
            "lib/modules/6.1.0-28-amd64/kernel/foo.ko",
            "lib/modules/6.1.0-28-amd64/modules.order",
        )
    } else {
        (
            "lib/modules/6.1.0-26-amd64/kernel",
            "lib/modules/6.1.0-26-amd64/kernel/foo.ko",
            "lib/modules/6.1.0-26-amd64/modules.order",
        )
    };
    e.push((abi, d(0o755), tn, none()));
    e.push((abi_kernel, d(0o755), tn, none()));
    e.push((abi_ko, f(ko, 0o644), tn, none()));
    e.push((abi_order, f(b"kernel/foo.ko\n".to_vec(), 0o644), tn, none()));
    // opt/removed-dir: a directory the new release lacks (one whiteout).
    if !new {
        e.push(("opt", d(0o755), t, none()));
        e.push(("opt/removed-dir", d(0o755), t, none()));
        e.push(("opt/removed-dir/a", f(b"a\n".to_vec(), 0o644), t, none()));
        e.push((
            "opt/removed-dir/b",
            f(pseudo_random(5000, 13), 0o644),
            t,
            none(),
        ));
    } else {
        e.push(("opt", d(0o755), tn, none()));
    }
    e.push(("usr", d(0o755), t, none()));
    e.push(("usr/bin", d(0o755), tn, none()));
    // Hard links: both names of one changed file.
    let hl = pseudo_random(120 << 10, 21);
    let hl = if new {
        edited(&hl, &[60_000], 16, 22)
    } else {
        hl
    };
    e.push(("usr/bin/hl-a", f(hl, 0o755), tn, none()));
    e.push(("usr/bin/hl-b", Link("usr/bin/hl-a"), tn, none()));
    // Metadata-only changes: the mode, and an xattr.
    let mode_only = pseudo_random(100 << 10, 31);
    e.push((
        "usr/bin/mode-only",
        f(mode_only, if new { 0o755 } else { 0o644 }),
        t,
        none(),
    ));
    let xattr_only = pseudo_random(90 << 10, 32);
    let xa = if new {
        vec![("user.note", b"added".to_vec())]
    } else {
        none()
    };
    e.push(("usr/bin/xattr-only", f(xattr_only, 0o644), t, xa));
    if new {
        e.push(("usr/bin/new-link", Symlink("tool-zstd"), tn, none()));
    }
    // A relocated table of addresses larger than one block (1 MiB): bsdiff's case.
    let table = address_table(300 << 10, 41, if new { 0x1000 } else { 0 });
    e.push(("usr/bin/tool-bsdiff", f(table, 0o755), tn, none()));
    // A binary changed in a few places, with an xattr that changes: zstd's case.
    let tool = pseudo_random(600 << 10, 51);
    let tool = if new {
        let mut t2 = edited(&tool, &[1000, 200_000, 400_000], 32, 52);
        t2.splice(300_000..300_000, pseudo_random(200, 53));
        t2
    } else {
        tool
    };
    let note = if new { b"v2".to_vec() } else { b"v1".to_vec() };
    e.push((
        "usr/bin/tool-zstd",
        f(tool, 0o755),
        tn,
        vec![("user.note", note)],
    ));
    e.push(("usr/lib", d(0o755), t, none()));
    e.push((
        "usr/lib/x86_64-linux-gnu",
        d(0o755),
        tn,
        vec![("user.dir", b"libs".to_vec())],
    ));
    // A versioned soname: libfoo.so.1.2.3 -> libfoo.so.1.2.4, libfoo.so.1 follows.
    let lib = pseudo_random(400 << 10, 61);
    let (lib_name, lib) = if new {
        (
            "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.4",
            edited(&lib, &[512, 100_000, 380_000], 20, 62),
        )
    } else {
        ("usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3", lib)
    };
    e.push((
        "usr/lib/x86_64-linux-gnu/libfoo.so.1",
        Symlink(if new {
            "libfoo.so.1.2.4"
        } else {
            "libfoo.so.1.2.3"
        }),
        tn,
        none(),
    ));
    e.push((lib_name, f(lib, 0o644), tn, none()));
    e.push(("usr/share", d(0o755), tn, none()));
    e.push(("usr/share/doc", d(0o755), tn, none()));
    // A gzip file, an xz file and a zip archive that change: repack patches of their plain
    // content.
    let mut text = Vec::new();
    for i in 0..4000 {
        text.extend_from_slice(format!("{i:05} changelog entry {}\n", i * 7 % 13).as_bytes());
    }
    if new {
        text.extend_from_slice(b"7.1: fixes\n");
    }
    e.push((
        "usr/share/doc/changelog.gz",
        f(gzip(&text), 0o644),
        tn,
        none(),
    ));
    e.push(("usr/share/doc/news.xz", f(xz(&text), 0o644), tn, none()));
    e.push(("usr/lib/app", d(0o755), t, none()));
    e.push(("usr/lib/app/omni.ja", f(zip_of(&text), 0o644), tn, none()));
    if !new {
        e.push((
            "usr/share/doc/obsolete.txt",
            f(b"removed in 7.1\n".to_vec(), 0o644),
            t,
            none(),
        ));
    }
    // A file moved to another directory with the same content (copy from its old path).
    let moved = pseudo_random(200 << 10, 71);
    if new {
        e.push(("usr/share/new-place", d(0o755), tn, none()));
        e.push(("usr/share/new-place/data.bin", f(moved, 0o644), t, none()));
        // A new file: whole, larger than one block.
        e.push((
            "usr/share/new-place/fresh.bin",
            f(pseudo_random((1 << 20) + 70_000, 81), 0o644),
            tn,
            none(),
        ));
    } else {
        e.push(("usr/share/old-place", d(0o755), t, none()));
        e.push(("usr/share/old-place/data.bin", f(moved, 0o644), t, none()));
    }
    e.push((
        "usr/share/unchanged",
        f(pseudo_random(50_000, 91), 0o644),
        t,
        none(),
    ));
    e.sort_by(|a, b| a.0.cmp(b.0));
    e
}

/// Makes one release of the pair in `dir` (an extracted-ISO layout: `live/filesystem.squashfs`
/// by mksquashfs, kernel, initrd, boot-loader configurations naming them).
fn make_delta_release(dir: &Path, new: bool) {
    let v = if new {
        DELTA_NEW_VERSION
    } else {
        DELTA_OLD_VERSION
    };
    let root = dir.parent().unwrap().join(format!(
        "{}.root",
        dir.file_name().unwrap().to_str().unwrap()
    ));
    fs::create_dir_all(&root).unwrap();
    let entries = delta_root(new);
    for (path, entry, _, xattrs) in &entries {
        let p = root.join(path);
        match entry {
            GenEntry::Dir { mode } => {
                fs::create_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                    .unwrap();
            }
            GenEntry::File { data, mode } => {
                fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                    .unwrap();
            }
            GenEntry::Link(to) => fs::hard_link(root.join(to), &p).unwrap(),
            GenEntry::Symlink(to) => std::os::unix::fs::symlink(to, &p).unwrap(),
        }
        for (n, value) in xattrs {
            set_xattr(&p, n, value);
        }
    }
    // Owners (root only): one file owned by another user in the new release.
    if is_root() {
        for (path, _, _, _) in &entries {
            let owner = if new && *path == "usr/share/unchanged" {
                1000
            } else {
                0
            };
            std::os::unix::fs::lchown(root.join(path), Some(owner), Some(owner)).unwrap();
        }
    }
    // Mtimes last, children before their directories.
    for (path, _, mtime, _) in entries.iter().rev() {
        set_mtime(&root.join(path), *mtime);
    }
    set_mtime(&root, DELTA_MTIME);
    fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    for d in ["live", "isolinux", "EFI/BOOT"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    run_ok(
        Command::new("mksquashfs")
            .arg(&root)
            .arg(dir.join("live/filesystem.squashfs"))
            .args([
                "-comp",
                "xz",
                "-Xbcj",
                "x86",
                "-b",
                "1M",
                "-noappend",
                "-no-progress",
            ])
            .args(["-quiet", "-processors", "1", "-mkfs-time"])
            .arg(DELTA_MTIME.to_string()),
    );
    let kernel_seed = if new { 102 } else { 101 };
    fs::write(dir.join("live/vmlinuz"), pseudo_random(6000, kernel_seed)).unwrap();
    fs::write(dir.join("live/initrd.img"), initrd(new)).unwrap();
    fs::write(dir.join("live/Tails.module"), b"filesystem.squashfs\n").unwrap();
    fs::write(
        dir.join("isolinux/isolinux.cfg"),
        b"include /isolinux/menu.cfg\ndefault live\n",
    )
    .unwrap();
    fs::write(
        dir.join("isolinux/menu.cfg"),
        format!(
            "label live\n  menu label Tails {v}\n  kernel /live/vmlinuz\n  \
             append initrd=/live/initrd.img boot=live module=Tails\n"
        ),
    )
    .unwrap();
    // A loader configuration of some size with one line changed (the version), a boot-loader
    // binary with a few bytes changed (both patched in a FORMAT 3 kit), and a splash image that
    // moves from isolinux/ to EFI/BOOT/ with the same content (copied from the medium).
    let theme: String = pseudo_random(6000, 77)
        .chunks(30)
        .map(|c| format!("# theme {}\n", hex(c)))
        .collect();
    fs::write(
        dir.join("EFI/BOOT/grub.cfg"),
        format!(
            "menuentry 'Tails {v}' {{\n  linux /live/vmlinuz boot=live module=Tails\n  \
             initrd /live/initrd.img\n}}\n{theme}"
        ),
    )
    .unwrap();
    let loader = pseudo_random(300_000, 55);
    let loader = if new {
        edited(&loader, &[1000, 150_000, 250_000], 8, 56)
    } else {
        loader
    };
    fs::write(dir.join("EFI/BOOT/bootx64.efi"), loader).unwrap();
    let splash = if new {
        "EFI/BOOT/splash.bin"
    } else {
        "isolinux/splash.bin"
    };
    fs::write(dir.join(splash), pseudo_random(40_000, 66)).unwrap();
}

/// The generated pair of release directories (old, new) for binary-delta kits, made once per
/// test process (needs mksquashfs and gzip; removed at exit with the fixture kits): their roots
/// differ so that a FORMAT 3 kit of the pair holds every source kind — `copy` (a file moved to
/// another directory, a mode-only and an xattr-only change), `zstd` (a 600 KiB binary changed
/// in a few places, with a changed xattr), `bsdiff` (a 1.2 MiB table of relocated addresses,
/// larger than one block), `whole` (a new file larger than one block; a changed gzip file) —
/// and a renamed kernel ABI directory, a versioned soname, removed files and a removed
/// directory (whiteouts), new and changed symlinks, a changed hard-link pair, xattrs on files and
/// a directory, and (as root) a changed owner; and boot files that the kit re-creates from the
/// medium's (`EFI/BOOT/grub.cfg` and `EFI/BOOT/bootx64.efi` patched, `EFI/BOOT/splash.bin`
/// copied from `syslinux/splash.bin`) or carries whole (kernel, initrd, `syslinux/menu.cfg`).
/// Deterministic: fixed seeds, modes, mtimes and mkfs time. Read them; never change them.
pub fn delta_pair() -> (PathBuf, PathBuf) {
    static PAIR: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let root = kit_dir();
        let base = root.join("delta-pair");
        let old = base.join(format!("Tails-{DELTA_OLD_VERSION}"));
        let new = base.join(format!("Tails-{DELTA_NEW_VERSION}"));
        make_delta_release(&old, false);
        make_delta_release(&new, true);
        (old, new)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_path_field_and_both_values() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for t in [&a, &b] {
            fs::create_dir(t).unwrap();
            fs::write(t.join("f"), b"same").unwrap();
            std::os::unix::fs::symlink("f", t.join("s")).unwrap();
        }
        fs::hard_link(a.join("f"), a.join("g")).unwrap();
        fs::write(b.join("g"), b"same").unwrap();
        let sa = snapshot(&a);
        assert!(diff_snapshots(&sa, &sa).is_empty());
        assert_eq!(sa[1].link_group.as_deref(), Some(&b"f"[..]));
        assert_eq!(sa[2].link_group.as_deref(), Some(&b"f"[..]));
        let d1 = diff_snapshots(&sa, &snapshot(&b));
        assert_eq!(
            d1,
            [
                "f: hard-link group: f != none",
                "g: hard-link group: f != none"
            ]
        );

        let mut sb = sa.clone();
        sb[1].mode = 0o600;
        sb[3].target = Some(b"\xffx".to_vec());
        sb[2].xattrs.push((b"user.k".to_vec(), b"v".to_vec()));
        sb.remove(0);
        let d2 = diff_snapshots(&sa, &sb);
        assert_eq!(
            d2,
            [
                "/: only in the first tree (Dir)".to_string(),
                format!("f: mode: {:04o} != 0600", sa[1].mode),
                "g: xattr user.k: (absent) != \"v\"".to_string(),
                "s: symlink target: \"f\" != \"\\xffx\"".to_string(),
            ]
        );
    }
}
