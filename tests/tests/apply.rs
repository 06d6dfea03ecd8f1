//! End-to-end tests of `iuk-apply` on the committed fixture ISOs (testdata/README.md):
//!
//! - after `init` and after every `apply` (stacking, cumulative, on a plain directory and on a
//!   real FAT32 filesystem through fusefat) the kernel's overlay view of the layers the module
//!   file lists equals that version's root filesystem exactly, the medium's boot files equal the
//!   version's ISO exactly (isolinux/ renamed syslinux/, as Tails installs it) and nothing else
//!   lies on the medium but the layers and iuk's own files (DESIGN.md invariant 1, "The medium");
//! - every refused kit (corrupt, truncated, for another base, a replay or a downgrade, an unknown
//!   FORMAT, hostile paths, larger than the free space) is a one-line error with exit status 1
//!   that leaves the medium byte-for-byte unchanged (invariants 3 and 5);
//! - an apply killed at any mutating system call (`strace -e inject=…:signal=SIGKILL`) followed by
//!   `iuk-apply recover` leaves the medium exactly old or exactly new, and a clean apply renames
//!   nothing on the medium (invariant 4, "Crash model");
//! - read-only commands never write; a pending journal is reported, refused and recovered.
//!
//! Expected values come from independent tools — `osirrox` extracts the ISOs, the kernel mounts
//! the SquashFS images and the overlay — never from iuk's own readers.
//!
//! Tests that need root, loop mounts or external tools print `SKIP: …` and pass when those are
//! missing, unless `IUK_REQUIRE_KERNEL=1`. The binaries must be built first
//! (`cargo build --release -p iuk-build -p iuk-apply`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use iuk::kit::{container_params, container_tree, Control, FileEntry, Kit, OverlayFile};
use iuk::squashfs::archive::Archive;
use iuk::squashfs::inode::InodeBody;
use iuk::squashfs::write::write_image;
use iuk::tree::{Content, InodeKind};
use iuk_e2e::{
    assert_same_tree, copy_tree, diff_snapshots, fixture_kit_at, iso, iuk_command, kernel_or_skip,
    kill_points, layer_name, mount_fusefat, mount_overlay, mount_squashfs, mount_tmpfs, read_files,
    replace_all, require_root_or_skip, run, run_ok, sha256_file, sha256_hex, snapshot,
    tools_or_skip, trace_clean_run, Entry, Run,
};
use tempfile::TempDir;

const EPOCH: u32 = 1_700_000_000;
const MODULE: &str = "live/Tails.module";
/// Most strace kills the crash test runs (time budget).
const MAX_KILLS: usize = 60;

// ------------------------------------------------------------------------------------------------
// Fixtures, kits and commands

pub(crate) fn tmpdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("iuk-e2e-apply-")
        .tempdir()
        .unwrap()
}

/// The common preconditions: root, loop mounts, osirrox.
fn kernel_tests_or_skip() -> bool {
    require_root_or_skip() && kernel_or_skip() && tools_or_skip(&["osirrox"])
}

/// The kit `from` → `to` of the fixture ISOs, built once per run and shared
/// ([`iuk_e2e::fixture_kit`]): read it, never change it.
pub(crate) fn build_kit(from: &str, to: &str) -> PathBuf {
    fixture_kit_at(from, to, EPOCH, &[])
}

/// `iuk-apply SUB --medium MEDIUM`.
pub(crate) fn ia(sub: &str, medium: &Path) -> Command {
    let mut c = iuk_command("iuk-apply");
    c.arg(sub).arg("--medium").arg(medium);
    c
}

pub(crate) fn init_medium(medium: &Path, version: &str) -> Run {
    run_ok(ia("init", medium).arg("--iso").arg(iso(version)))
}

fn apply_kit(medium: &Path, kit: &Path) -> Run {
    run_ok(ia("apply", medium).arg(kit))
}

/// `iuk-apply status --json`, parsed.
fn status_json(medium: &Path) -> serde_json::Value {
    let r = run_ok(ia("status", medium).arg("--json"));
    serde_json::from_slice(&r.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {r}"))
}

/// Asserts a refusal: exit status 1, stderr one line starting `iuk-apply: error:` that contains
/// `needle`, no panic.
pub(crate) fn assert_one_line_error(r: &Run, what: &str, needle: &str) {
    if let Some(p) = one_line_error_problem(r, what, needle) {
        panic!("{p}");
    }
}

/// What is wrong with `r` as a refusal (see [`assert_one_line_error`]), if anything.
fn one_line_error_problem(r: &Run, what: &str, needle: &str) -> Option<String> {
    if r.code != Some(1) {
        return Some(format!("{what}: expected exit status 1: {r}"));
    }
    if r.stderr.contains("panicked") || r.stderr.contains("RUST_BACKTRACE") {
        return Some(format!("{what}: panicked: {r}"));
    }
    let lines: Vec<&str> = r.stderr.lines().collect();
    if lines.len() != 1 {
        return Some(format!("{what}: expected one stderr line: {r}"));
    }
    if !lines[0].starts_with("iuk-apply: error: ") {
        return Some(format!(
            "{what}: stderr does not start with `iuk-apply: error: `: {r}"
        ));
    }
    if !lines[0].contains(needle) {
        return Some(format!(
            "{what}: the error does not mention {needle:?}: {r}"
        ));
    }
    None
}

// ------------------------------------------------------------------------------------------------
// What a version looks like, from independent tools

/// A fixture release as osirrox and the kernel see it.
#[derive(Clone)]
struct Release {
    version: String,
    /// The root filesystem, loop-mounted by the kernel.
    root: Vec<Entry>,
    /// sha256 of `live/filesystem.squashfs`.
    base_sha: String,
    /// The boot tree as installed: medium path → sha256.
    boot: BTreeMap<String, String>,
}

/// The boot tree an installer puts on the medium, computed from the ISO's files as Tails does:
/// everything but `live/filesystem.squashfs` and `live/*.module`, `isolinux/` → `syslinux/`,
/// `isolinux.cfg` → `syslinux.cfg`, "/isolinux/" → "/syslinux/" inside every `syslinux/` file.
fn installed_boot_tree(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (path, bytes) in files {
        if path == "live/filesystem.squashfs" {
            continue;
        }
        if let Some(name) = path.strip_prefix("live/") {
            if !name.contains('/') && name.ends_with(".module") {
                continue;
            }
        }
        let path = match path.strip_prefix("isolinux/") {
            Some("isolinux.cfg") => "syslinux/syslinux.cfg".to_string(),
            Some(rest) => format!("syslinux/{rest}"),
            None => path.clone(),
        };
        let bytes = if path.starts_with("syslinux/") {
            replace_all(bytes, b"/isolinux/", b"/syslinux/")
        } else {
            bytes.clone()
        };
        assert!(
            out.insert(path.clone(), sha256_hex(&bytes)).is_none(),
            "{path} twice"
        );
    }
    out
}

/// Extracts a fixture ISO with osirrox into `work/iso-<version>` and mounts its root.
fn release(version: &str, work: &Path) -> Release {
    let dir = work.join(format!("iso-{version}"));
    run_ok(
        Command::new("osirrox")
            .arg("-indev")
            .arg(iso(version))
            .arg("-extract")
            .arg("/")
            .arg(&dir),
    );
    let rootfs = dir.join("live/filesystem.squashfs");
    let root = {
        let m = mount_squashfs(&rootfs);
        snapshot(m.path())
    };
    let files = read_files(&dir);
    assert!(
        files.keys().any(|p| p.starts_with("isolinux/")),
        "{version}: the fixture has no isolinux/"
    );
    Release {
        version: version.to_string(),
        root,
        base_sha: sha256_file(&rootfs),
        boot: installed_boot_tree(&files),
    }
}

// ------------------------------------------------------------------------------------------------
// What a medium holds

/// Every entry under `root` but the root: relative path → `None` for a directory,
/// `Some((size, sha256))` for a regular file; panics on any other type.
fn medium_files(root: &Path) -> BTreeMap<String, Option<(u64, String)>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Option<(u64, String)>>) {
        let mut entries: Vec<_> = fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else if md.is_file() {
                out.insert(rel, Some((md.len(), sha256_file(&p))));
            } else {
                panic!(
                    "{}: neither a file nor a directory on the medium",
                    p.display()
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Differences between two medium listings, one line each.
fn diff_files(
    a: &BTreeMap<String, Option<(u64, String)>>,
    b: &BTreeMap<String, Option<(u64, String)>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (p, va) in a {
        match b.get(p) {
            None => out.push(format!("{p}: only in the first")),
            Some(vb) if vb != va => out.push(format!("{p}: {va:?} != {vb:?}")),
            Some(_) => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            out.push(format!("{p}: only in the second"));
        }
    }
    out
}

/// The kernel's view of the stack the module file lists: every listed image loop-mounted (first
/// copied to `copy_to` when given, e.g. out of a FUSE mount), overlaid with the last line on top.
fn stack_snapshot(medium: &Path, copy_to: Option<&Path>) -> Vec<Entry> {
    let module = fs::read_to_string(medium.join(MODULE)).unwrap();
    let names: Vec<&str> = module.lines().collect();
    assert_eq!(names.first(), Some(&"filesystem.squashfs"), "{module:?}");
    let mut mounts = Vec::new();
    for n in &names {
        let mut p = medium.join("live").join(n);
        if let Some(d) = copy_to {
            let q = d.join(n);
            fs::copy(&p, &q).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            p = q;
        }
        mounts.push(mount_squashfs(&p));
    }
    if mounts.len() == 1 {
        return snapshot(mounts[0].path());
    }
    let lowers: Vec<&Path> = mounts.iter().rev().map(|m| m.path()).collect();
    let overlay = mount_overlay(&lowers);
    let s = snapshot(overlay.path());
    drop(overlay);
    s
}

/// Checks that `medium` holds exactly `rel` on top of `base` with the diff `layers` (bottom
/// first): module file, kernel stack, boot files and nothing else, `verify --deep`, `status`.
fn check_medium(medium: &Path, rel: &Release, base: &Release, layers: &[String], fat: bool) {
    let what = format!("{} at {}", medium.display(), rel.version);
    // The module file.
    let mut want_module = String::from("filesystem.squashfs\n");
    for l in layers {
        want_module.push_str(&format!("{l}.squashfs\n"));
    }
    let module = fs::read_to_string(medium.join(MODULE)).unwrap();
    assert_eq!(module, want_module, "{what}: {MODULE}");

    // (b) The files: the boot tree, the base, the layers, the module file, iuk's files.
    let files = medium_files(medium);
    let mut expected: BTreeMap<String, Option<String>> = rel
        .boot
        .iter()
        .map(|(p, s)| (p.clone(), Some(s.clone())))
        .collect();
    expected.insert(
        "live/filesystem.squashfs".into(),
        Some(base.base_sha.clone()),
    );
    for l in layers {
        expected.insert(format!("live/{l}.squashfs"), None);
    }
    for f in [MODULE, "live/iuk-state.yml", "live/iuk.lock"] {
        expected.insert(f.to_string(), None);
    }
    let actual: BTreeMap<&String, &(u64, String)> = files
        .iter()
        .filter_map(|(p, v)| v.as_ref().map(|v| (p, v)))
        .collect();
    let mut problems = Vec::new();
    for (p, want) in &expected {
        match actual.get(p) {
            None => problems.push(format!("{p}: missing")),
            Some((_, sha)) => {
                if let Some(w) = want {
                    if w != sha {
                        problems.push(format!("{p}: sha256 {sha}, the ISO's is {w}"));
                    }
                }
            }
        }
    }
    for p in actual.keys() {
        if !expected.contains_key(*p) {
            problems.push(format!("{p}: not a file of the release nor of iuk"));
        }
    }
    for (p, v) in &files {
        if v.is_some() {
            continue;
        }
        let prefix = format!("{p}/");
        let is_staging = p == "live/iuk-staging";
        if !is_staging && !expected.keys().any(|f| f.starts_with(&prefix)) {
            problems.push(format!(
                "{p}/: a directory that holds no file of the release"
            ));
        }
        if is_staging && files.keys().any(|f| f.starts_with(&prefix)) {
            problems.push("live/iuk-staging/ is not empty".to_string());
        }
    }
    if !files.contains_key("live/iuk-staging") {
        problems.push("live/iuk-staging/ is missing".to_string());
    }
    assert!(
        problems.is_empty(),
        "{what}: the medium's files differ from the ISO's boot tree + layers + iuk's files:\n  {}",
        problems.join("\n  ")
    );

    // (a) The kernel's overlay view equals the version's root filesystem.
    let scratch = tmpdir();
    let stack = stack_snapshot(medium, fat.then_some(scratch.path()));
    assert_same_tree(&rel.root, &stack, &format!("{what}: kernel stack"));

    // (c) verify --deep.
    run_ok(ia("verify", medium).arg("--deep"));

    // (d) status --json.
    let s = status_json(medium);
    assert_eq!(s["current_version"], rel.version.as_str(), "{what}: {s}");
    assert_eq!(s["base_version"], base.version.as_str(), "{what}: {s}");
    assert_eq!(s["product"], "Tails", "{what}: {s}");
    assert_eq!(s["pending_recovery"], false, "{what}: {s}");
    let names: Vec<&str> = s["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no layers in {s}"))
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, layers, "{what}: status layers");
    if fat {
        assert!(
            s["free_bytes"].is_null(),
            "{what}: fusefat reports no size: {s}"
        );
    } else {
        assert!(s["free_bytes"].is_u64(), "{what}: {s}");
    }
}

// ------------------------------------------------------------------------------------------------
// 1–3: chains

#[test]
fn chain_on_a_plain_directory() {
    if !kernel_tests_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10, r11) = (release("6.9", w), release("6.10", w), release("6.11", w));
    let k1 = build_kit("6.9", "6.10");
    let k2 = build_kit("6.10", "6.11");
    let m = w.join("medium");

    let r = init_medium(&m, "6.9");
    assert!(r.stderr.is_empty(), "init warned: {r}");
    check_medium(&m, &r9, &r9, &[], false);

    let r = apply_kit(&m, &k1);
    // A medium without trusted keys applies unsigned kits with exactly one warning saying so.
    assert!(
        r.stderr.lines().count() == 1 && r.stderr.contains("no trusted keys"),
        "apply on a keyless medium must warn once about the missing keys: {r}"
    );
    let l1 = layer_name("6.9", "6.10");
    check_medium(&m, &r10, &r9, std::slice::from_ref(&l1), false);

    apply_kit(&m, &k2);
    check_medium(&m, &r11, &r9, &[l1, layer_name("6.10", "6.11")], false);
}

#[test]
fn cumulative_kit_replaces_the_diff_layers() {
    if !kernel_tests_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10, r11) = (release("6.9", w), release("6.10", w), release("6.11", w));
    let k1 = build_kit("6.9", "6.10");
    let k3 = build_kit("6.9", "6.11");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    apply_kit(&m, &k1);
    check_medium(&m, &r10, &r9, &[layer_name("6.9", "6.10")], false);

    let r = run_ok(ia("apply", &m).arg(&k3).arg("--json"));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["model"], "cumulative", "{r}");
    assert!(
        !m.join(format!("live/{}.squashfs", layer_name("6.9", "6.10")))
            .exists(),
        "the superseded 6.9 → 6.10 layer is still on the medium"
    );
    check_medium(&m, &r11, &r9, &[layer_name("6.9", "6.11")], false);
}

#[test]
fn chain_on_a_fat32_medium() {
    if !kernel_tests_or_skip() || !tools_or_skip(&["fusefat", "mkfs.vfat"]) {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        iuk_e2e::skip("no /dev/fuse (FUSE unavailable)");
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10, r11) = (release("6.9", w), release("6.10", w), release("6.11", w));
    let k1 = build_kit("6.9", "6.10");
    let k2 = build_kit("6.10", "6.11");
    let img = w.join("fat.img");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    run_ok(Command::new("mkfs.vfat").args(["-F", "32"]).arg(&img));
    let fat = mount_fusefat(&img);
    let m = fat.path();

    init_medium(m, "6.9");
    check_medium(m, &r9, &r9, &[], true);
    let r = run_ok(&mut ia("status", m));
    assert!(
        r.stdout_text().contains("not reported"),
        "status should say free space is not reported: {r}"
    );

    let r = apply_kit(m, &k1);
    assert!(
        r.stderr.contains("does not report its free space"),
        "apply on fusefat should warn that free space is not checked: {r}"
    );
    let l1 = layer_name("6.9", "6.10");
    check_medium(m, &r10, &r9, std::slice::from_ref(&l1), true);

    apply_kit(m, &k2);
    check_medium(m, &r11, &r9, &[l1, layer_name("6.10", "6.11")], true);

    let r = run_ok(&mut ia("status", m));
    assert!(
        r.stdout_text().contains("not reported"),
        "status should say free space is not reported: {r}"
    );
    drop(fat);
}

#[test]
fn verify_deep_checks_the_base_and_stacked_trees() {
    if !tools_or_skip(&["osirrox"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let m = w.join("medium");
    init_medium(&m, "6.9");
    apply_kit(&m, &build_kit("6.9", "6.10"));
    run_ok(ia("verify", &m).arg("--deep"));

    // Another valid base of the same size passes the quick check, not the deep one.
    let other = w.join("other-base.squashfs");
    run_ok(
        Command::new("osirrox")
            .arg("-indev")
            .arg(iso("6.10"))
            .arg("-extract")
            .arg("/live/filesystem.squashfs")
            .arg(&other),
    );
    let base = m.join("live/filesystem.squashfs");
    let saved = fs::read(&base).unwrap();
    let mut bytes = fs::read(&other).unwrap();
    bytes.resize(saved.len().max(bytes.len()), 0);
    fs::write(&base, &bytes).unwrap();
    run_ok(&mut ia("verify", &m));
    let r = run(ia("verify", &m).arg("--deep"));
    assert_one_line_error(
        &r,
        "verify --deep of another base",
        "does not hold the tree of 6.9",
    );
    fs::write(&base, &saved).unwrap();

    // A state whose current tree digest is not the stack's.
    let state = m.join("live/iuk-state.yml");
    let text = fs::read_to_string(&state).unwrap();
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("current-tree-digest: "))
        .expect("current-tree-digest in the state")
        .trim_matches('"')
        .to_string();
    let flipped: String = digest
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    fs::write(&state, text.replace(&digest, &flipped)).unwrap();
    run_ok(&mut ia("verify", &m));
    let r = run(ia("verify", &m).arg("--deep"));
    assert_one_line_error(
        &r,
        "verify --deep of a wrong digest",
        "do not stack to the tree of 6.10",
    );
}

// ------------------------------------------------------------------------------------------------
// Kits of Tails' own tooling (--legacy-tails-kit)

/// A kit as Tails' `tails-create-iuk` makes it, from one of ours: the same FORMAT and overlay,
/// control.yml as Tails writes it (YAML::Any's dump of `delete_files` only), the container
/// packed with `gensquashfs --keep-xattr --all-root`. `edit` may change the unpacked tree first.
pub(crate) fn as_tails_kit(kit: &Path, out: &Path, edit: impl Fn(&Path)) -> PathBuf {
    let dir = out.with_extension("d");
    let _ = fs::remove_dir_all(&dir);
    run_ok(
        Command::new("unsquashfs")
            .arg("-q")
            .arg("-d")
            .arg(&dir)
            .arg(kit),
    );
    let control =
        iuk::kit::Control::from_yaml(&fs::read_to_string(dir.join("control.yml")).unwrap())
            .unwrap();
    let mut yaml = String::from("---\ndelete_files:");
    if control.delete_files.is_empty() {
        yaml.push_str(" []\n");
    } else {
        yaml.push('\n');
        for d in &control.delete_files {
            yaml.push_str(&format!("  - {d}\n"));
        }
    }
    fs::write(dir.join("control.yml"), yaml).unwrap();
    edit(&dir);
    let _ = fs::remove_file(out);
    run_ok(
        Command::new("gensquashfs")
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .args(["--keep-xattr", "--quiet", "--all-root", "--pack-dir"])
            .arg(&dir)
            .arg(out),
    );
    fs::remove_dir_all(&dir).unwrap();
    out.to_path_buf()
}

#[test]
fn kits_of_tails_own_tooling_apply_only_when_asked() {
    if !kernel_tests_or_skip() || !tools_or_skip(&["unsquashfs", "gensquashfs"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10, r11) = (release("6.9", w), release("6.10", w), release("6.11", w));
    let ours_10 = build_kit("6.9", "6.10");
    let ours_11 = build_kit("6.9", "6.11");
    let tails_11 = as_tails_kit(&ours_11, &w.join("tails-6.9-6.11.iuk"), |_| {});
    let tails_10 = as_tails_kit(&ours_10, &w.join("tails-6.9-6.10.iuk"), |_| {});
    let legacy = ["--legacy-tails-kit"];

    // On a medium at 6.10 (base 6.9 + one layer): refused without the flag, medium unchanged.
    let m = w.join("medium");
    init_medium(&m, "6.9");
    apply_kit(&m, &ours_10);
    assert_kit_refused(
        &m,
        &tails_11,
        &[],
        "a kit of Tails' own tooling",
        "--legacy-tails-kit",
    );
    // With it: cumulative, with a warning that the base cannot be checked.
    let r = run_ok(ia("check", &m).arg(&tails_11).args(legacy).arg("--json"));
    let plan: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(plan["model"], "cumulative", "{r}");
    assert_eq!(plan["legacy_tails_kit"], true, "{r}");
    assert_eq!(plan["to_version"], "6.11", "{r}");
    let r = run_ok(ia("apply", &m).arg(&tails_11).args(legacy));
    assert!(r.stderr.contains("cannot be checked"), "no warning: {r}");
    check_medium(&m, &r11, &r9, &[layer_name("6.9", "6.11")], false);
    // The state is the one our own kit leaves.
    let ours = w.join("ours");
    init_medium(&ours, "6.9");
    apply_kit(&ours, &ours_10);
    apply_kit(&ours, &ours_11);
    assert_eq!(
        fs::read(m.join("live/iuk-state.yml")).unwrap(),
        fs::read(ours.join("live/iuk-state.yml")).unwrap(),
        "the state after a kit of Tails' tooling differs from the state after ours"
    );
    // Replayed, or older than the medium: refused.
    assert_kit_refused(
        &m,
        &tails_11,
        &legacy,
        "a replayed kit of Tails' tooling",
        "already runs",
    );
    assert_kit_refused(
        &m,
        &tails_10,
        &legacy,
        "an older kit of Tails' tooling",
        "already runs",
    );

    // On a medium at its base: the layer goes on top. As with Tails' own installer, only
    // delete_files go, and Tails lists only files of its monitored directories: a file the old
    // release had elsewhere (the fixtures' doc/old.txt) stays.
    let b = w.join("base");
    init_medium(&b, "6.9");
    let r = run_ok(ia("apply", &b).arg(&tails_10).args(legacy).arg("--json"));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["to_version"], "6.10", "{r}");
    const TAILS_MONITORED: [&str; 16] = [
        "EFI",
        "EFI/BOOT",
        "EFI/BOOT/grub",
        "EFI/BOOT/grub/i386-efi",
        "EFI/BOOT/grub/x86_64-efi",
        "EFI/debian",
        "EFI/debian/grub",
        "EFI/debian/grub/i386-efi",
        "EFI/debian/grub/x86_64-efi",
        "isolinux",
        "live",
        "syslinux",
        "tails",
        "utils",
        "utils/mbr",
        "utils/linux",
    ];
    let mut r10_by_tails = r10.clone();
    for (p, sha) in &r9.boot {
        let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
        if !r10.boot.contains_key(p) && !TAILS_MONITORED.contains(&dir) {
            r10_by_tails.boot.insert(p.clone(), sha.clone());
        }
    }
    assert!(
        r10_by_tails.boot.len() > r10.boot.len(),
        "the fixtures no longer drop a file outside Tails' monitored directories"
    );
    check_medium(&b, &r10_by_tails, &r9, &[layer_name("6.9", "6.10")], false);

    // Hostile or broken kits of that shape: refused with the medium unchanged.
    let fresh = w.join("fresh");
    init_medium(&fresh, "6.9");
    let mut refusals = Refusals::new(&fresh);
    let layer = format!("overlay/live/{}.squashfs", layer_name("6.9", "6.10"));
    type Edit<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "no layer",
            Box::new(|d: &Path| fs::remove_file(d.join(&layer)).unwrap()),
            "no diff layer",
        ),
        (
            "two layers",
            Box::new(|d: &Path| {
                fs::copy(d.join(&layer), d.join("overlay/live/other.squashfs")).unwrap();
            }),
            "2 diff layers",
        ),
        (
            "a symlink in the overlay",
            Box::new(|d: &Path| {
                std::os::unix::fs::symlink("vmlinuz", d.join("overlay/live/vmlinuz-link")).unwrap()
            }),
            "symlink",
        ),
        (
            "delete_files leaving the monitored directories",
            Box::new(|d: &Path| {
                fs::write(d.join("control.yml"), "delete_files:\n  - ../etc/passwd\n").unwrap()
            }),
            "not allowed",
        ),
        (
            "delete_files naming the base",
            Box::new(|d: &Path| {
                fs::write(
                    d.join("control.yml"),
                    "delete_files: [live/filesystem.squashfs]\n",
                )
                .unwrap()
            }),
            "not allowed",
        ),
        (
            "a layer that is not a SquashFS image",
            Box::new(|d: &Path| fs::write(d.join(&layer), b"not an image").unwrap()),
            "corrupt image",
        ),
        (
            "an unknown control.yml key",
            Box::new(|d: &Path| {
                fs::write(d.join("control.yml"), "delete_files: []\nfrom: 6.9\n").unwrap()
            }),
            "neither a kit of iuk",
        ),
        (
            "an overlay file that overwrites the state",
            Box::new(|d: &Path| fs::write(d.join("overlay/live/iuk-state.yml"), b"x").unwrap()),
            "protected",
        ),
    ];
    for (what, edit, needle) in &cases {
        let k = as_tails_kit(&ours_10, &w.join("hostile.iuk"), edit);
        refusals.check(&k, &legacy, what, needle);
    }
    refusals.finish();
}

// ------------------------------------------------------------------------------------------------
// 4: refusals

/// Runs `check` and `apply` of `kit` (with `extra` arguments); both must refuse with one line
/// mentioning `needle` and leave the medium exactly as it was.
fn assert_kit_refused(medium: &Path, kit: &Path, extra: &[&str], what: &str, needle: &str) {
    if let Some(p) = kit_refusal_problem(medium, kit, extra, what, needle) {
        panic!("{p}");
    }
}

/// What is wrong with the refusal [`assert_kit_refused`] expects, if anything. When `apply`
/// accepted the kit, says what it did to the medium.
fn kit_refusal_problem(
    medium: &Path,
    kit: &Path,
    extra: &[&str],
    what: &str,
    needle: &str,
) -> Option<String> {
    let before = snapshot(medium);
    let before_files = medium_files(medium);
    let mut problems = Vec::new();
    for sub in ["check", "apply"] {
        let r = run(ia(sub, medium).arg(kit).args(extra));
        let mut problem = one_line_error_problem(&r, &format!("{sub} {what}"), needle);
        let d = diff_snapshots(&before, &snapshot(medium));
        if !d.is_empty() {
            let files = diff_files(&before_files, &medium_files(medium));
            problem = Some(format!(
                "{}{sub} {what}: the command changed the medium; files (before → after):\n    {}",
                problem.map(|p| p + "\n").unwrap_or_default(),
                files.join("\n    ")
            ));
        }
        if let Some(p) = problem {
            problems.push(p);
            if !d.is_empty() {
                break;
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("\n"))
}

/// Refusal checks on one medium that go on after a failure: the medium is restored from a
/// pristine copy, and [`Refusals::finish`] reports every failure at once.
struct Refusals {
    medium: PathBuf,
    pristine: PathBuf,
    problems: Vec<String>,
}

impl Refusals {
    fn new(medium: &Path) -> Refusals {
        let pristine = medium.with_extension("pristine");
        copy_tree(medium, &pristine);
        Refusals {
            medium: medium.to_path_buf(),
            pristine,
            problems: Vec::new(),
        }
    }

    fn check(&mut self, kit: &Path, extra: &[&str], what: &str, needle: &str) {
        if let Some(p) = kit_refusal_problem(&self.medium, kit, extra, what, needle) {
            self.problems.push(p);
            fs::remove_dir_all(&self.medium).unwrap();
            copy_tree(&self.pristine, &self.medium);
        }
    }

    fn finish(self) {
        assert!(
            self.problems.is_empty(),
            "{} refusal(s) failed:\n\n{}",
            self.problems.len(),
            self.problems.join("\n\n")
        );
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The unique offset of `needle` in `hay`.
fn find_unique(hay: &[u8], needle: &[u8], what: &str) -> usize {
    let i = find(hay, needle).unwrap_or_else(|| panic!("{what} not found"));
    assert!(
        find(&hay[i + 1..], needle).is_none(),
        "{what} occurs more than once"
    );
    i
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Where each regular file's data lies in a kit image, by path: (offset, bytes on disk, stored
/// uncompressed). Read from the inodes with the library's reader, only to aim the byte flips;
/// panics on fragments (kit containers have none).
fn data_extents(kit: &Path) -> BTreeMap<String, (usize, usize, bool)> {
    let archive = Archive::open(kit).unwrap_or_else(|e| panic!("{}: {e}", kit.display()));
    let mut out = BTreeMap::new();
    archive
        .walk(|e| {
            if let InodeBody::File {
                blocks_start,
                block_sizes,
                frag,
                ..
            } = &e.inode.body
            {
                let path = String::from_utf8_lossy(e.path).into_owned();
                assert_eq!(*frag, u32::MAX, "{path}: in a fragment");
                let len: u64 = block_sizes.iter().map(|s| u64::from(s & 0x00ff_ffff)).sum();
                let raw = block_sizes.iter().all(|s| s & (1 << 24) != 0);
                out.insert(path, (*blocks_start as usize, len as usize, raw));
            }
            Ok(())
        })
        .unwrap();
    out
}

/// The bytes of `overlay/<path>` in a kit, read with `unsquashfs -cat` (independent reader).
pub(crate) fn kit_file(kit: &Path, path: &str) -> Vec<u8> {
    run_ok(Command::new("unsquashfs").arg("-cat").arg(kit).arg(path)).stdout
}

#[test]
fn refuses_corrupt_kits() {
    if !require_root_or_skip() || !tools_or_skip(&["unsquashfs"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    let mut refusals = Refusals::new(&m);
    let kit = fs::read(&k1).unwrap();
    let bad = w.join("bad.iuk");

    // Where each file's data lies in the kit: the layer is stored as it is; other files may be
    // compressed (then a flip anywhere in their stream changes or breaks their content).
    let extents = data_extents(&k1);
    let extent = |p: &str| -> (usize, usize, bool) {
        *extents
            .get(p)
            .unwrap_or_else(|| panic!("{p} is not a file of the kit"))
    };
    let mut flips: Vec<(String, usize, u8)> = Vec::new();

    // control.yml: at the values the applier must check when it is stored as it is.
    let control = kit_file(&k1, "control.yml");
    let (c0, clen, craw) = extent("control.yml");
    let layer_rel = format!("live/{}.squashfs", layer_name("6.9", "6.10"));
    let layer = kit_file(&k1, &format!("overlay/{layer_rel}"));
    if craw {
        assert_eq!(&kit[c0..c0 + clen], &control[..], "control.yml's extent");
        let at = |needle: &str, skip: usize, want: &dyn Fn(u8) -> bool| -> usize {
            let off = c0 + find_unique(&control, needle.as_bytes(), needle) + skip;
            assert!(
                want(kit[off]),
                "{needle:?} + {skip}: {:?}",
                kit[off] as char
            );
            off
        };
        let hex = |b: u8| b.is_ascii_hexdigit();
        let is = |c: u8| move |b: u8| b == c;
        let layer_sha = sha256_hex(&layer);
        let size_first = layer.len().to_string().as_bytes()[0];
        let size_needle = format!("- path: \"{layer_rel}\"\n  size: ");
        let readme = "- path: \"doc/README.txt\"\n  size: 38\n  sha256: \"";
        for (what, off, mask) in [
            (
                "the layer's sha256",
                at(&format!("sha256: \"{layer_sha}\""), 9, &hex),
                0x01,
            ),
            (
                "the layer's size",
                at(&size_needle, size_needle.len(), &is(size_first)),
                0x02,
            ),
            ("old-tree-digest", at("old-tree-digest: \"", 18, &hex), 0x01),
            (
                "from-version",
                at("from-version: \"6.9\"", 17, &is(b'9')),
                0x01,
            ),
            ("product", at("product: \"Tails\"", 10, &is(b'T')), 0x20),
            ("generator", at("generator: \"iuk\"", 12, &is(b'i')), 0x20),
            ("YAML syntax", at("delete_files:", 12, &is(b':')), 0x01),
            (
                "an unchanged boot file's sha256",
                at(readme, readme.len(), &hex),
                0x01,
            ),
        ] {
            flips.push((format!("control.yml: {what}"), off, mask));
        }
    } else {
        for (what, off) in [
            ("first", c0),
            ("middle", c0 + clen / 2),
            ("last", c0 + clen - 1),
        ] {
            flips.push((
                format!("control.yml's compressed data ({what} byte)"),
                off,
                0x01,
            ));
        }
    }

    // The layer, stored as it is.
    let (l0, llen, lraw) = extent(&format!("overlay/{layer_rel}"));
    assert!(lraw, "the layer is not stored as it is in the kit");
    assert_eq!(&kit[l0..l0 + llen], &layer[..], "the layer's extent");
    flips.push(("the layer's first byte".into(), l0, 0x01));
    flips.push(("the layer's middle byte".into(), l0 + llen / 2, 0x80));
    flips.push(("the layer's last byte".into(), l0 + llen - 1, 0x01));

    // Boot files, stored or compressed.
    for p in [
        "overlay/EFI/BOOT/grub.cfg",
        "overlay/live/vmlinuz",
        "overlay/md5sum.txt",
    ] {
        let (s0, len, raw) = extent(p);
        let how = if raw { "stored" } else { "compressed" };
        flips.push((format!("{p}'s first byte ({how})"), s0, 0x01));
        flips.push((format!("{p}'s middle byte ({how})"), s0 + len / 2, 0x10));
    }

    // Metadata: superblock, tables.
    let bytes_used = le_u64(&kit, 40) as usize;
    let id_table = le_u64(&kit, 48) as usize;
    let inode_table = le_u64(&kit, 64) as usize;
    let dir_table = le_u64(&kit, 72) as usize;
    assert!(inode_table < dir_table && dir_table < bytes_used && bytes_used <= kit.len());
    for (what, off, mask) in [
        ("the superblock's magic", 0, 0x01),
        ("the superblock's block size", 14, 0x01),
        ("the superblock's compression id", 20, 0x04),
        ("the superblock's inode table start", 64, 0x10),
        ("the superblock's bytes_used", 45, 0x40),
        ("the inode table's block header", inode_table + 1, 0x80),
        ("the inode table's first xz byte", inode_table + 2, 0x01),
        ("the directory table's first xz byte", dir_table + 2, 0x01),
        ("the id table's pointer", id_table, 0x08),
    ] {
        flips.push((what.to_string(), off, mask));
    }
    eprintln!(
        "{} byte flips (control.yml {} in the kit)",
        flips.len(),
        if craw { "stored" } else { "compressed" }
    );
    for (what, off, mask) in &flips {
        let mut b = kit.clone();
        b[*off] ^= mask;
        fs::write(&bad, &b).unwrap();
        refusals.check(
            &bad,
            &[],
            &format!("kit with a flipped byte in {what} (offset {off})"),
            &bad.display().to_string(),
        );
    }

    // control.yml with one value changed (whether control.yml is stored as it is or compressed
    // in the container, the applier must catch each of these).
    fn flip_hex(h: &mut String) {
        let c = if h.starts_with('0') { "1" } else { "0" };
        h.replace_range(0..1, c);
    }
    let layer_path = format!("live/{}.squashfs", layer_name("6.9", "6.10"));
    type Edit = Box<dyn Fn(&mut Control)>;
    let lp = layer_path.clone();
    let lp2 = layer_path.clone();
    let edits: Vec<(&str, Edit)> = vec![
        (
            "the layer's sha256",
            Box::new(move |c: &mut Control| {
                flip_hex(&mut c.overlay.iter_mut().find(|e| e.path == lp).unwrap().sha256)
            }),
        ),
        (
            "the layer's size",
            Box::new(move |c: &mut Control| {
                c.overlay.iter_mut().find(|e| e.path == lp2).unwrap().size += 1
            }),
        ),
        (
            "a boot file's sha256 in the overlay list",
            Box::new(|c: &mut Control| {
                let e = c
                    .overlay
                    .iter_mut()
                    .find(|e| e.path == "EFI/BOOT/grub.cfg")
                    .unwrap();
                flip_hex(&mut e.sha256)
            }),
        ),
        (
            "a changed boot file's sha256 in the boot tree",
            Box::new(|c: &mut Control| {
                let e = c
                    .boot_tree
                    .iter_mut()
                    .find(|e| e.path == "EFI/BOOT/grub.cfg")
                    .unwrap();
                flip_hex(&mut e.sha256)
            }),
        ),
        (
            "an unchanged boot file's sha256 in the boot tree",
            Box::new(|c: &mut Control| {
                let e = c
                    .boot_tree
                    .iter_mut()
                    .find(|e| e.path == "doc/README.txt")
                    .unwrap();
                flip_hex(&mut e.sha256)
            }),
        ),
        (
            "old-tree-digest",
            Box::new(|c: &mut Control| flip_hex(&mut c.old_tree_digest)),
        ),
        (
            "from-version",
            Box::new(|c: &mut Control| c.from_version = "6.8".into()),
        ),
        (
            "product",
            Box::new(|c: &mut Control| c.product = "tails".into()),
        ),
        (
            "build target",
            Box::new(|c: &mut Control| c.build_target = "i386".into()),
        ),
        (
            "generator",
            Box::new(|c: &mut Control| c.generator = "Iuk".into()),
        ),
        (
            "writer format",
            Box::new(|c: &mut Control| c.writer_format = 999),
        ),
    ];
    for (what, edit) in &edits {
        rebuild_kit(&k1, &bad, None, |c, _| edit(c));
        refusals.check(
            &bad,
            &[],
            &format!("kit whose control.yml has another {what}"),
            &bad.display().to_string(),
        );
    }

    // Truncated kits.
    for len in [0, 50, 96, bytes_used / 2, bytes_used - 1] {
        fs::write(&bad, &kit[..len]).unwrap();
        refusals.check(
            &bad,
            &[],
            &format!("kit truncated to {len} bytes"),
            &bad.display().to_string(),
        );
    }

    // A byte flipped where no check of the content looks (the container's padding, else the
    // superblock's mkfs time) passes `check` but not `--sha256`.
    let mut b = kit.clone();
    let off = if kit.len() > bytes_used {
        kit.len() - 1
    } else {
        8
    };
    b[off] ^= 0x01;
    fs::write(&bad, &b).unwrap();
    run_ok(ia("check", &m).arg(&bad));
    let want = sha256_hex(&kit);
    refusals.check(
        &bad,
        &["--sha256", &want],
        &format!("kit with a flipped byte at {off}, outside every file, and --sha256"),
        &want,
    );
    // The intact kit is not refused (the refusals above are about the damage).
    run_ok(ia("check", &m).arg(&k1).arg("--sha256").arg(&want));
    refusals.finish();
}

#[test]
fn refuses_kits_that_do_not_apply_to_the_medium() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let k2 = build_kit("6.10", "6.11");
    let k3 = build_kit("6.9", "6.11");
    let k4 = build_kit("6.11", "6.11.1");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    let name = |k: &Path| k.display().to_string();

    // Another base: 6.10 → 6.11 on 6.9; 6.11 → 6.11.1 on 6.9.
    assert_kit_refused(&m, &k2, &[], "6.10 → 6.11 on a 6.9 medium", &name(&k2));
    assert_kit_refused(&m, &k4, &[], "6.11 → 6.11.1 on a 6.9 medium", &name(&k4));

    // Replay.
    apply_kit(&m, &k1);
    assert_kit_refused(&m, &k1, &[], "6.9 → 6.10 replayed", &name(&k1));

    // Downgrade and replays at 6.11 (reached by the chain).
    apply_kit(&m, &k2);
    for k in [&k1, &k2, &k3] {
        assert_kit_refused(
            &m,
            k,
            &[],
            "a kit to an older or the current version",
            &name(k),
        );
    }
    // A medium at 6.11 reached by the cumulative kit refuses the stacking ones too.
    let m2 = w.join("medium2");
    init_medium(&m2, "6.9");
    apply_kit(&m2, &k3);
    for k in [&k1, &k2, &k3] {
        assert_kit_refused(
            &m2,
            k,
            &[],
            "a kit to an older or the current version",
            &name(k),
        );
    }

    // --max-layers bounds the stack.
    let m3 = w.join("medium3");
    init_medium(&m3, "6.9");
    apply_kit(&m3, &k1);
    assert_kit_refused(
        &m3,
        &k2,
        &["--max-layers", "1"],
        "a second layer with --max-layers 1",
        "cumulative",
    );

    // A wrong --sha256.
    let other = sha256_file(&k2);
    assert_kit_refused(
        &m3,
        &k2,
        &["--sha256", &other[..63]],
        "--sha256 of 63 digits",
        "--sha256",
    );
    let k1sha = sha256_file(&k1);
    assert_kit_refused(
        &m3,
        &k2,
        &["--sha256", &k1sha],
        "--sha256 of another kit",
        &k1sha,
    );
}

/// Rebuilds the kit `src` into `out` with its control.yml and overlay files edited by `edit`
/// (and, when `format` is given, another FORMAT file), with the library's own container writer.
pub(crate) fn rebuild_kit(
    src: &Path,
    out: &Path,
    format: Option<&[u8]>,
    edit: impl FnOnce(&mut Control, &mut Vec<OverlayFile>),
) {
    let kit = Kit::open(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let mut control = kit.control.clone();
    let mut files: Vec<OverlayFile> = control
        .overlay
        .iter()
        .map(|e| {
            let p = format!("overlay/{}", e.path);
            let n = kit
                .tree
                .lookup(p.as_bytes())
                .unwrap_or_else(|| panic!("{p} missing"));
            let inode = kit.tree.node_inode(n);
            let InodeKind::File(c) = &inode.kind else {
                panic!("{p} is not a file")
            };
            OverlayFile {
                path: e.path.clone(),
                content: c.clone(),
                mtime: Some(inode.meta.mtime),
            }
        })
        .collect();
    edit(&mut control, &mut files);
    let mut tree = container_tree(&control, &files).unwrap();
    if let Some(f) = format {
        let n = tree.lookup(b"FORMAT").unwrap();
        let id = tree.node(n).inode;
        tree.inode_mut(id).kind = InodeKind::File(Content::from_bytes(f.to_vec()));
    }
    let params = container_params(
        control.layer_params.source_date_epoch,
        1,
        &control.stored_path(),
    );
    let mut f = fs::File::create(out).unwrap();
    write_image(&tree, &params, &mut f, &|_| {}).unwrap();
}

fn entry_of(path: &str, bytes: &[u8]) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    }
}

#[test]
fn refuses_unknown_formats_and_hostile_paths() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    let mut refusals = Refusals::new(&m);
    let bad = w.join("bad.iuk");
    let bad_name = bad.display().to_string();

    // The rebuild itself is faithful: with no edit it gives the kit's exact bytes.
    rebuild_kit(&k1, &bad, None, |_, _| {});
    assert_eq!(
        sha256_file(&bad),
        sha256_file(&k1),
        "rebuilding a kit with the library does not give its bytes back"
    );

    // FORMAT 9, made with the library.
    rebuild_kit(&k1, &bad, Some(b"9"), |_, _| {});
    assert_eq!(Kit::open(&bad).unwrap().format, "9");
    refusals.check(&bad, &[], "FORMAT 9 (library)", "FORMAT");
    // FORMAT 9, byte-patched in the kit's uncompressed data.
    let kit = fs::read(&k1).unwrap();
    let patched = (0..kit.len().min(8192))
        .filter(|&i| kit[i] == b'2')
        .find_map(|i| {
            let mut b = kit.clone();
            b[i] = b'9';
            fs::write(&bad, &b).unwrap();
            Kit::open(&bad).ok().filter(|k| k.format == "9").map(|_| i)
        });
    assert!(patched.is_some(), "FORMAT's byte not found in the kit");
    refusals.check(&bad, &[], "FORMAT 9 (byte-patched)", "FORMAT");

    // Hostile overlay and boot-tree paths (listed in control.yml; the container cannot hold `..`).
    let x = b"x".as_slice();
    let overlay_paths = ["../x", "live/../../x", "/etc/x", "EFI/./x", "EFI//x"];
    for p in overlay_paths {
        rebuild_kit(&k1, &bad, None, |c, _| c.overlay.push(entry_of(p, x)));
        refusals.check(&bad, &[], &format!("overlay path {p:?}"), p);
        rebuild_kit(&k1, &bad, None, |c, _| c.boot_tree.push(entry_of(p, x)));
        refusals.check(&bad, &[], &format!("boot-tree path {p:?}"), p);
    }
    // Protected names in the overlay, carried for real.
    for p in [
        "live/iuk-state.yml",
        "live/Tails.module",
        "live/filesystem.squashfs",
        "live/iuk-journal",
        "live/iuk-staging/intent",
        "LIVE/IUK.LOCK",
    ] {
        rebuild_kit(&k1, &bad, None, |c, files| {
            c.overlay.push(entry_of(p, x));
            files.push(OverlayFile {
                path: p.to_string(),
                content: Content::from_bytes(x.to_vec()),
                mtime: None,
            });
        });
        refusals.check(&bad, &[], &format!("overlay file {p:?}"), p);
        rebuild_kit(&k1, &bad, None, |c, _| c.boot_tree.push(entry_of(p, x)));
        refusals.check(&bad, &[], &format!("boot file {p:?}"), p);
    }
    // A file in the container that control.yml does not list.
    rebuild_kit(&k1, &bad, None, |_, files| {
        files.push(OverlayFile {
            path: "EFI/extra".into(),
            content: Content::from_bytes(x.to_vec()),
            mtime: None,
        })
    });
    refusals.check(&bad, &[], "an unlisted overlay file", "EFI/extra");

    // delete_files outside the monitored directories, one of them, or naming protected files.
    for d in [
        "../../etc",
        "live/../../x",
        "syslinux/../../x",
        "/etc",
        "EFI",
        "live",
        "EFI/BOOT",
        "EFI/BOOT/grub",
        "utils/linux",
        "doc/README.txt",
        "live/Tails.module",
        "LIVE/TAILS.MODULE",
        "live/iuk-state.yml",
        "live/iuk.lock",
        "live/iuk-staging",
        "live/filesystem.squashfs",
        "live/Tails_6.9_to_6.10.squashfs",
        "live/iuk-keyring-0.asc",
    ] {
        rebuild_kit(&k1, &bad, None, |c, _| c.delete_files.push(d.to_string()));
        refusals.check(&bad, &[], &format!("delete_files entry {d:?}"), d);
    }

    // Layer names that are not file names or would replace the base.
    for layer in ["filesystem", "FileSystem", "../x", "a/b", "x y"] {
        rebuild_kit(&k1, &bad, None, |c, files| {
            let old = format!("live/{}.squashfs", c.layer);
            let new = format!("live/{layer}.squashfs");
            c.layer = layer.to_string();
            for e in c.overlay.iter_mut().filter(|e| e.path == old) {
                e.path = new.clone();
            }
            // The container cannot hold a `..` name: there only control.yml names it.
            if !layer.contains("..") {
                for f in files.iter_mut().filter(|f| f.path == old) {
                    f.path = new.clone();
                }
            }
        });
        refusals.check(&bad, &[], &format!("layer name {layer:?}"), &bad_name);
    }
    refusals.finish();
}

/// A `delete_files` entry that names a file of the kit's own boot tree (one the apply does not
/// rewrite, its content being unchanged) must not leave the medium without it: the kit is
/// refused, or the file survives and the medium equals the new release.
#[test]
fn delete_files_never_removes_a_file_of_the_new_boot_tree() {
    if !kernel_tests_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10) = (release("6.9", w), release("6.10", w));
    let k1 = build_kit("6.9", "6.10");
    let bad = w.join("bad.iuk");
    for d in [
        "EFI/BOOT/bootx64.efi",
        "utils/linux/syslinux",
        "live/filesystem.packages",
    ] {
        assert!(r10.boot.contains_key(d), "{d} is not a 6.10 boot file");
        rebuild_kit(&k1, &bad, None, |c, _| c.delete_files.push(d.to_string()));
        let m = w.join(format!("medium-{}", d.replace('/', "_")));
        init_medium(&m, "6.9");
        let before = medium_files(&m);
        let r = run(ia("apply", &m).arg(&bad));
        if r.ok() {
            check_medium(&m, &r10, &r9, &[layer_name("6.9", "6.10")], false);
        } else {
            assert_one_line_error(&r, &format!("delete_files entry {d:?}"), d);
            assert_eq!(
                before,
                medium_files(&m),
                "the refused apply changed the medium"
            );
        }
    }
}

#[test]
fn refuses_a_kit_larger_than_the_free_space() {
    if !require_root_or_skip() {
        return;
    }
    let k1 = build_kit("6.9", "6.10");
    let tmpfs = mount_tmpfs("2M");
    let m = tmpfs.path();
    init_medium(m, "6.9");
    let free = status_json(m)["free_bytes"]
        .as_u64()
        .expect("tmpfs reports its size");
    let plan: serde_json::Value =
        serde_json::from_slice(&run_ok(ia("check", m).arg(&k1).arg("--json")).stdout).unwrap();
    let needed = plan["needed_bytes"].as_u64().unwrap();
    let payload = plan["payload_bytes"].as_u64().unwrap();
    assert!(needed > payload, "{plan}");
    assert!(
        free > needed,
        "the test expects the 2 MiB tmpfs to hold the kit before it is filled: {free} free, {needed} needed"
    );
    // Leave less free space than needed (tmpfs counts 4 KiB pages).
    let filler_len = (free - needed + 8192) / 4096 * 4096;
    fs::write(m.join("filler"), vec![0x55u8; filler_len as usize]).unwrap();
    let free_now = status_json(m)["free_bytes"].as_u64().unwrap();
    assert!(free_now < needed, "{free_now} free, {needed} needed");
    assert_kit_refused(m, &k1, &[], "a kit larger than the free space", "needed");

    // With the room back, the same kit applies.
    fs::remove_file(m.join("filler")).unwrap();
    apply_kit(m, &k1);
    run_ok(ia("verify", m).arg("--deep"));
    drop(tmpfs);
}

/// Fills the tmpfs at `root` so that between `needed` and `needed` + one page stays free.
fn leave_free(root: &Path, needed: u64) {
    let filler = root.join("filler");
    let _ = fs::remove_file(&filler);
    let free_now = || {
        iuk::medium::plan::free_space(root)
            .unwrap()
            .expect("tmpfs reports its size")
    };
    let free = free_now();
    assert!(free >= needed, "{free} free, {needed} needed");
    fs::write(
        &filler,
        vec![0x55u8; ((free - needed) / 4096 * 4096) as usize],
    )
    .unwrap();
    let now = free_now();
    assert!(
        (needed..needed + 4096).contains(&now),
        "{now} free, {needed} needed"
    );
}

#[test]
fn the_free_space_check_is_enough_and_within_the_goal() {
    if !require_root_or_skip() {
        return;
    }
    let kits = [
        build_kit("6.9", "6.10"),
        build_kit("6.10", "6.11"),
        build_kit("6.9", "6.11"),
    ];
    // A stacking chain, then a cumulative kit on a medium at 6.10. Each is planned (as `check`
    // does), then run with only the space the plan counts in whole pages, without the margin
    // `needed` adds: none may run out of room.
    for (name, steps) in [("chain", [0, 1]), ("cumulative", [0, 2])] {
        let tmpfs = mount_tmpfs("4M");
        let m = &tmpfs.path().join(name);
        init_medium(m, "6.9");
        for i in steps {
            let checked: serde_json::Value =
                serde_json::from_slice(&run_ok(ia("check", m).arg(&kits[i]).arg("--json")).stdout)
                    .unwrap();
            let medium = iuk::medium::Medium::new(m);
            let plan = iuk::medium::plan::plan(
                &medium,
                &kits[i],
                &Default::default(),
                &iuk::progress::NoProgress,
            )
            .unwrap();
            assert_eq!(checked["needed_bytes"].as_u64(), Some(plan.needed));
            assert_eq!(checked["allocated_bytes"].as_u64(), Some(plan.allocated));
            let goal = 1.1 * plan.payload as f64 + (1 << 20) as f64;
            assert!(
                plan.needed as f64 <= goal,
                "{name}: {} bytes needed for a payload of {}: over 1.1 × payload + 1 MiB",
                plan.needed,
                plan.payload
            );
            assert!(plan.allocated >= plan.written, "{name}");
            leave_free(tmpfs.path(), plan.allocated);
            let lock = medium.lock().unwrap();
            iuk::medium::apply::execute(
                &medium,
                &plan,
                &mut iuk::medium::fsops::RealFs::new(&medium.root),
                &iuk::progress::NoProgress,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            drop(lock);
            fs::remove_file(tmpfs.path().join("filler")).unwrap();
            run_ok(ia("verify", m).arg("--deep"));
        }
        drop(tmpfs);
    }
}

// ------------------------------------------------------------------------------------------------
// 5: kills

/// Up to `cap` values of `v`, evenly spread, first and last included.
fn spread(v: &[usize], cap: usize) -> Vec<usize> {
    if v.len() <= cap {
        return v.to_vec();
    }
    let mut out: Vec<usize> = (0..cap).map(|i| v[i * (v.len() - 1) / (cap - 1)]).collect();
    out.dedup();
    out
}

/// A kill test: the medium `old_ref` (holding `old`), the kit that takes it to `new`, how many
/// kills at most, and the system calls the clean run must make.
struct KillCase<'a> {
    tag: &'a str,
    old_ref: &'a Path,
    kit: &'a Path,
    old: &'a Side<'a>,
    new: &'a Side<'a>,
    max_kills: usize,
    required: &'a [&'a str],
}

/// One side of a kill test: what the medium must hold.
struct Side<'a> {
    release: &'a Release,
    layers: Vec<String>,
}

/// Applies `kit` to a copy of the medium `old_ref` (holding `old`), once cleanly under strace
/// (no rename, link, chmod or chown on the medium; one thread) and then killed at a sample of
/// at most `max_kills` of its mutating system calls; after each kill `iuk-apply recover` (first
/// killed itself a few times) must leave the medium exactly `old_ref` or exactly the clean run's
/// result, with the module file, kernel stack and `verify --deep` of that side.
fn kill_test(w: &Path, case: &KillCase) {
    let KillCase {
        tag,
        old_ref,
        kit,
        old,
        new,
        max_kills,
        required,
    } = *case;
    let new_ref = w.join(format!("{tag}-new"));
    copy_tree(old_ref, &new_ref);

    // The clean run, traced.
    let trace_file = w.join(format!("{tag}-clean.strace"));
    let (calls, pid) = trace_clean_run(
        &format!("{tag}: the clean apply"),
        &trace_file,
        &bin_path("iuk-apply"),
        &[
            "apply".as_ref(),
            kit.as_os_str(),
            "--medium".as_ref(),
            new_ref.as_os_str(),
        ],
        &new_ref,
    );

    // Kill points: every call of each mutating kind.
    let per_kind = kill_points(
        &calls,
        &pid,
        &[
            "write",
            "pwrite64",
            "pwritev",
            "writev",
            "unlink",
            "unlinkat",
            "mkdir",
            "mkdirat",
            "rmdir",
            "fsync",
            "fdatasync",
            "syncfs",
            "ftruncate",
            "truncate",
            "copy_file_range",
            "openat",
        ],
    );
    for kind in ["write", "unlinkat", "fsync", "openat"]
        .iter()
        .chain(required)
    {
        assert!(
            per_kind.contains_key(kind),
            "{tag}: the clean apply made no {kind} call (creating, for openat): {per_kind:?}"
        );
    }
    let mut cap = per_kind.values().map(Vec::len).max().unwrap();
    while per_kind.values().map(|v| v.len().min(cap)).sum::<usize>() > max_kills {
        cap -= 1;
    }
    let sample: Vec<(&str, usize)> = per_kind
        .iter()
        .flat_map(|(kind, ks)| spread(ks, cap).into_iter().map(move |k| (*kind, k)))
        .collect();
    eprintln!(
        "{tag}: kill points: {} of {} ({})",
        sample.len(),
        per_kind.values().map(Vec::len).sum::<usize>(),
        per_kind
            .iter()
            .map(|(k, v)| format!("{k} {}", v.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let old_files = medium_files(old_ref);
    let new_files = medium_files(&new_ref);
    let (mut olds, mut news) = (0, 0);
    for (kind, k) in sample {
        let what = format!("{tag}: apply killed at {kind} #{k}");
        let m = w.join(format!("{tag}-kill-{kind}-{k}"));
        copy_tree(old_ref, &m);
        let r = run(Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e"])
            .arg(format!("inject={kind}:signal=SIGKILL:when={k}"))
            .arg(bin_path("iuk-apply"))
            .arg("apply")
            .arg(kit)
            .arg("--medium")
            .arg(&m));
        assert!(
            r.code.is_none() || r.code == Some(137),
            "{what}: the process was not killed (does the clean run's count still hold?): {r}"
        );
        // Recover, itself killed first at a few of its own mutating calls (it must be
        // restartable from any point), then to the end.
        for rk in ["unlinkat", "write", "ftruncate", "fsync"] {
            run(Command::new("strace")
                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("inject={rk}:signal=SIGKILL:when={}", 1 + k % 3))
                .arg(bin_path("iuk-apply"))
                .arg("recover")
                .arg("--medium")
                .arg(&m));
        }
        let rec = run(&mut ia("recover", &m));
        assert!(rec.ok(), "{what}: recover failed: {rec}");
        let files = medium_files(&m);
        let side = if files == old_files {
            olds += 1;
            old
        } else if files == new_files {
            news += 1;
            new
        } else {
            panic!(
                "{what}, then recovered: the medium is neither old nor new.\n\
                 recover said: {}\nagainst old:\n  {}\nagainst new:\n  {}",
                rec.stdout_text().trim(),
                diff_files(&old_files, &files).join("\n  "),
                diff_files(&new_files, &files).join("\n  ")
            );
        };
        let module = fs::read_to_string(m.join(MODULE)).unwrap();
        let want: String = std::iter::once("filesystem.squashfs".to_string())
            .chain(side.layers.iter().map(|l| format!("{l}.squashfs")))
            .map(|l| l + "\n")
            .collect();
        assert_eq!(module, want, "{what}");
        let stack = stack_snapshot(&m, None);
        assert_same_tree(&side.release.root, &stack, &format!("{what}: kernel stack"));
        let v = run(ia("verify", &m).arg("--deep"));
        assert!(v.ok(), "{what}: verify --deep after recover: {v}");
        // The medium takes the upgrade after a discarded one.
        if std::ptr::eq(side, old) {
            apply_kit(&m, kit);
            assert_eq!(medium_files(&m), new_files, "{what}: apply after recover");
        }
        fs::remove_dir_all(&m).unwrap();
    }
    eprintln!("{tag}: after recover: {olds} old, {news} new");
    assert!(
        olds > 0 && news > 0,
        "{tag}: {olds} old, {news} new: the sample missed a side"
    );
}

#[test]
fn killed_apply_recovers_to_old_or_new() {
    if !kernel_tests_or_skip() || !tools_or_skip(&["strace", "cp"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10) = (release("6.9", w), release("6.10", w));
    let k1 = build_kit("6.9", "6.10");
    let old_ref = w.join("old");
    init_medium(&old_ref, "6.9");
    let old = Side {
        release: &r9,
        layers: vec![],
    };
    let new = Side {
        release: &r10,
        layers: vec![layer_name("6.9", "6.10")],
    };
    // The clean result is the real 6.10 (the kill test then compares byte for byte with it).
    let check = w.join("check");
    copy_tree(&old_ref, &check);
    apply_kit(&check, &k1);
    check_medium(&check, &r10, &r9, &new.layers, false);
    kill_test(
        w,
        &KillCase {
            tag: "stack",
            old_ref: &old_ref,
            kit: &k1,
            old: &old,
            new: &new,
            max_kills: MAX_KILLS,
            required: &[],
        },
    );
}

/// A FORMAT 3 kit: the layer is rebuilt on the device, so the kill points include every write
/// of the rebuilt layer (made from the applier's one thread, like every other mutating call).
#[test]
fn killed_rebuild_recovers_to_old_or_new() {
    if !kernel_tests_or_skip() || !tools_or_skip(&["strace", "cp"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10) = (release("6.9", w), release("6.10", w));
    let k = fixture_kit_at("6.9", "6.10", EPOCH, &["--deltas"]);
    let kit = iuk::kit::Kit::open(&k).unwrap();
    assert_eq!(
        kit.format,
        iuk::kit::FORMAT_DELTA,
        "6.9 -> 6.10 with --deltas"
    );
    let old_ref = w.join("old");
    init_medium(&old_ref, "6.9");
    let old = Side {
        release: &r9,
        layers: vec![],
    };
    let new = Side {
        release: &r10,
        layers: vec![layer_name("6.9", "6.10")],
    };
    let check = w.join("check");
    copy_tree(&old_ref, &check);
    apply_kit(&check, &k);
    check_medium(&check, &r10, &r9, &new.layers, false);
    kill_test(
        w,
        &KillCase {
            tag: "rebuild",
            old_ref: &old_ref,
            kit: &k,
            old: &old,
            new: &new,
            max_kills: MAX_KILLS / 2,
            required: &[],
        },
    );
}

/// The cumulative kit on a medium with a diff layer: the kill points include deleting the
/// superseded layer.
#[test]
fn killed_cumulative_apply_recovers_to_old_or_new() {
    if !kernel_tests_or_skip() || !tools_or_skip(&["strace", "cp"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10, r11) = (release("6.9", w), release("6.10", w), release("6.11", w));
    let k1 = build_kit("6.9", "6.10");
    let k3 = build_kit("6.9", "6.11");
    let old_ref = w.join("old");
    init_medium(&old_ref, "6.9");
    apply_kit(&old_ref, &k1);
    let old = Side {
        release: &r10,
        layers: vec![layer_name("6.9", "6.10")],
    };
    let new = Side {
        release: &r11,
        layers: vec![layer_name("6.9", "6.11")],
    };
    let check = w.join("check");
    copy_tree(&old_ref, &check);
    apply_kit(&check, &k3);
    check_medium(&check, &r11, &r9, &new.layers, false);
    kill_test(
        w,
        &KillCase {
            tag: "cumulative",
            old_ref: &old_ref,
            kit: &k3,
            old: &old,
            new: &new,
            max_kills: MAX_KILLS / 2,
            required: &[],
        },
    );
}

/// A kit whose new boot tree has a file in a new directory: the kill points include the
/// `mkdir` of step 4.
#[test]
fn killed_apply_creating_a_directory_recovers_to_old_or_new() {
    if !kernel_tests_or_skip() || !tools_or_skip(&["strace", "cp"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let (r9, r10) = (release("6.9", w), release("6.10", w));
    let k1 = build_kit("6.9", "6.10");
    let kit = w.join("newdir.iuk");
    let (path, bytes) = (
        "EFI/debian/grub/grub.cfg",
        b"configfile /EFI/BOOT/grub.cfg\n",
    );
    rebuild_kit(&k1, &kit, None, |c, files| {
        c.overlay.push(entry_of(path, bytes));
        c.boot_tree.push(entry_of(path, bytes));
        files.push(OverlayFile {
            path: path.to_string(),
            content: Content::from_bytes(bytes.to_vec()),
            mtime: None,
        });
    });
    let old_ref = w.join("old");
    init_medium(&old_ref, "6.9");
    let old = Side {
        release: &r9,
        layers: vec![],
    };
    let new = Side {
        release: &r10,
        layers: vec![layer_name("6.9", "6.10")],
    };
    let check = w.join("check");
    copy_tree(&old_ref, &check);
    apply_kit(&check, &kit);
    assert_eq!(fs::read(check.join(path)).unwrap(), bytes);
    kill_test(
        w,
        &KillCase {
            tag: "newdir",
            old_ref: &old_ref,
            kit: &kit,
            old: &old,
            new: &new,
            max_kills: MAX_KILLS / 4,
            required: &["mkdirat"],
        },
    );
}

fn bin_path(name: &str) -> PathBuf {
    iuk_e2e::bin(name)
}

// ------------------------------------------------------------------------------------------------
// 6: read-only commands, pending journals

#[test]
fn read_only_commands_never_write() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let k2 = build_kit("6.10", "6.11");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    apply_kit(&m, &k1);
    let before = snapshot(&m);
    let runs: Vec<(Vec<&str>, Option<&Path>)> = vec![
        (vec!["check"], Some(k2.as_path())),
        (vec!["check", "--json"], Some(k2.as_path())),
        (vec!["status"], None),
        (vec!["status", "--json"], None),
        (vec!["verify"], None),
        (vec!["verify", "--deep"], None),
    ];
    for (args, kit) in &runs {
        let mut c = ia(args[0], &m);
        c.args(&args[1..]);
        if let Some(k) = kit {
            c.arg(k);
        }
        run_ok(&mut c);
        let d = diff_snapshots(&before, &snapshot(&m));
        assert!(
            d.is_empty(),
            "{args:?} changed the medium:\n  {}",
            d.join("\n  ")
        );
    }
    // A refused check writes nothing either.
    let r = run(ia("check", &m).arg(&k1));
    assert_one_line_error(&r, "check of a replayed kit", &k1.display().to_string());
    assert!(diff_snapshots(&before, &snapshot(&m)).is_empty());
}

#[test]
fn pending_journal_is_reported_refused_and_recovered() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    let medium_s = m.display().to_string();

    // A journal torn before its checksum: looks like one, is not committed.
    let state_sha = sha256_file(&m.join("live/iuk-state.yml"));
    let torn = format!(
        "iuk-journal 1\nold-state 64 {state_sha}\nmodule-file 12 Tails.module\nmodule 40 filesystem.squashfs\nTails_6.9_to_6.10.squ"
    );
    fs::write(m.join("live/iuk-journal"), torn.as_bytes()).unwrap();
    let before = snapshot(&m);
    for args in [
        vec!["check", k1.to_str().unwrap()],
        vec!["verify"],
        vec!["verify", "--deep"],
    ] {
        let mut c = ia(args[0], &m);
        c.args(&args[1..]);
        let r = run(&mut c);
        assert_one_line_error(&r, &format!("{args:?} with a pending journal"), "recover");
        assert!(r.stderr.contains(&medium_s), "{r}");
        assert!(
            diff_snapshots(&before, &snapshot(&m)).is_empty(),
            "{args:?} wrote"
        );
    }
    let r = run_ok(&mut ia("status", &m));
    assert!(r.stdout_text().contains("PENDING"), "status: {r}");
    assert!(r.stdout_text().contains("recover"), "status: {r}");
    assert_eq!(status_json(&m)["pending_recovery"], true);
    assert!(
        diff_snapshots(&before, &snapshot(&m)).is_empty(),
        "status wrote"
    );

    // apply recovers first (the torn journal is stale), then applies.
    let r = apply_kit(&m, &k1);
    assert!(
        r.stderr.contains("stale journal"),
        "apply did not say it recovered: {r}"
    );
    assert!(!m.join("live/iuk-journal").exists());
    assert_eq!(status_json(&m)["current_version"], "6.10");
    assert_eq!(status_json(&m)["pending_recovery"], false);
    run_ok(ia("verify", &m).arg("--deep"));

    // An apply interrupted before its commit: a staged layer and intent, no journal.
    let m2 = w.join("medium2");
    init_medium(&m2, "6.9");
    let state_sha = sha256_file(&m2.join("live/iuk-state.yml"));
    let layer_file = m2.join(format!("live/{}.squashfs", layer_name("6.9", "6.10")));
    fs::write(&layer_file, b"half a layer").unwrap();
    fs::write(
        m2.join("live/iuk-staging/intent"),
        format!("layer {}\nstate {state_sha}\n", layer_name("6.9", "6.10")),
    )
    .unwrap();
    fs::write(m2.join("live/iuk-staging/00000"), b"staged").unwrap();
    let before = snapshot(&m2);
    let r = run(ia("check", &m2).arg(&k1));
    assert_one_line_error(&r, "check with staged files", "recover");
    let r = run(&mut ia("verify", &m2));
    assert_one_line_error(&r, "verify with staged files", "recover");
    assert_eq!(status_json(&m2)["pending_recovery"], true);
    assert!(
        diff_snapshots(&before, &snapshot(&m2)).is_empty(),
        "read-only commands wrote"
    );
    let r = apply_kit(&m2, &k1);
    assert!(
        r.stderr.contains("discarded"),
        "apply did not say it recovered: {r}"
    );
    assert_eq!(status_json(&m2)["current_version"], "6.10");
    run_ok(ia("verify", &m2).arg("--deep"));
    assert_eq!(
        sha256_file(&layer_file),
        sha256_file(&m.join(format!("live/{}.squashfs", layer_name("6.9", "6.10"))))
    );
}

// ------------------------------------------------------------------------------------------------
// 7: init refusals

#[test]
fn init_refusals() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");

    // A non-empty directory.
    let full = w.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep.txt"), b"mine").unwrap();
    let before = snapshot(&full);
    let r = run(ia("init", &full).arg("--iso").arg(iso("6.9")));
    assert_one_line_error(
        &r,
        "init on a non-empty directory",
        &full.display().to_string(),
    );
    assert!(diff_snapshots(&before, &snapshot(&full)).is_empty());

    // An initialised medium is not empty either.
    let m = w.join("medium");
    init_medium(&m, "6.9");
    let before = snapshot(&m);
    let r = run(ia("init", &m).arg("--iso").arg(iso("6.10")));
    assert_one_line_error(
        &r,
        "init on an initialised medium",
        &m.display().to_string(),
    );
    assert!(diff_snapshots(&before, &snapshot(&m)).is_empty());

    // Not ISOs, and a missing ISO, onto an empty directory.
    let text = w.join("notes.txt");
    fs::write(&text, b"not an ISO image\n").unwrap();
    let empty_file = w.join("empty.iso");
    fs::write(&empty_file, b"").unwrap();
    let mut short = fs::read(iso("6.9")).unwrap();
    short.truncate(40_000);
    let truncated = w.join("truncated.iso");
    fs::write(&truncated, &short).unwrap();
    let missing = w.join("missing.iso");
    let empty = w.join("empty");
    fs::create_dir(&empty).unwrap();
    for (bad, what) in [
        (&text, "a text file"),
        (&empty_file, "an empty file"),
        (&k1, "a kit (SquashFS, not ISO 9660)"),
        (&truncated, "a truncated ISO"),
        (&missing, "a missing file"),
    ] {
        let r = run(ia("init", &empty).arg("--iso").arg(bad));
        assert_one_line_error(
            &r,
            &format!("init --iso {what}"),
            &bad.display().to_string(),
        );
        assert!(
            iuk_e2e::dir_names(&empty).is_empty(),
            "init --iso {what} left files in the medium"
        );
    }
}

#[test]
fn refused_init_leaves_a_missing_medium_missing() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let m = w.join("not-yet");
    let missing = w.join("missing.iso");
    let r = run(ia("init", &m).arg("--iso").arg(&missing));
    assert_one_line_error(&r, "init --iso MISSING", &missing.display().to_string());
    assert!(
        !m.exists(),
        "a refused init created the medium directory {}",
        m.display()
    );
}

/// A kit that would leave a medium unable to boot is refused before any write: an empty boot
/// tree, one without the initrd its boot-loader configuration names, and one whose configuration
/// (carried in the kit) names a kernel the tree lacks.
#[test]
fn refuses_a_kit_that_would_leave_an_unbootable_medium() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    let mut refusals = Refusals::new(&m);
    let bad = w.join("bad.iuk");

    rebuild_kit(&k1, &bad, None, |c, _| c.boot_tree.clear());
    refusals.check(&bad, &[], "empty boot tree", "boot tree is empty");

    rebuild_kit(&k1, &bad, None, |c, _| {
        c.boot_tree.retain(|e| e.path != "live/initrd.img")
    });
    refusals.check(&bad, &[], "no initrd", "initrd /live/initrd.img");

    rebuild_kit(&k1, &bad, None, |c, files| {
        let menu = files
            .iter_mut()
            .find(|f| f.path == "syslinux/menu.cfg")
            .expect("the kit carries syslinux/ whole");
        let text = String::from_utf8(menu.content.read_all().unwrap()).unwrap();
        let text = text.replace("/live/vmlinuz", "/live/vmlinuz-gone");
        menu.content = Content::from_bytes(text.clone().into_bytes());
        let entry = entry_of("syslinux/menu.cfg", text.as_bytes());
        for list in [&mut c.overlay, &mut c.boot_tree] {
            for e in list.iter_mut().filter(|e| e.path == entry.path) {
                *e = entry.clone();
            }
        }
    });
    refusals.check(&bad, &[], "kernel gone", "kernel /live/vmlinuz-gone");
}
