//! End-to-end tests of `iuk-build build` on the committed fixture ISOs (testdata/README.md):
//! the kernel's overlay view of old root + kit layer equals the new root (DESIGN.md invariant 1),
//! the tree digests agree with the library and with a userspace merge, the kit follows Tails'
//! layout rules (REFERENCE.md, Create.feature), its bytes are a pure function of the inputs
//! (invariant 2) and equal the committed golden hashes, and every refusal is a one-line error
//! that leaves nothing behind (invariant 5).
//!
//! The expected values come from the fixtures' documentation and from independent tools
//! (`osirrox` extracts the ISOs, `unsquashfs` reads the kits and layers, the kernel mounts them),
//! never from the builder's own reader alone.
//!
//! Tests that need root, loop mounts or external tools print `SKIP: …` and pass when those are
//! missing, unless `IUK_REQUIRE_KERNEL=1`. The binaries must be built first
//! (`cargo build --release -p iuk-build`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use iuk::kit::Control;
use iuk::release::Release;
use iuk::squashfs::write::WRITER_FORMAT_VERSION;
use iuk::tree::{content_hashes, hex, tree_digest, Tree};
use iuk_e2e::{
    assert_same_outputs, assert_same_tree, build_cmd, diff_snapshots, dir_names, fixture,
    fixture_kit_at, iso, iuk_command, kernel_or_skip, layer_name, mkfs_time, mount_overlay,
    mount_squashfs, read_files, require_root_or_skip, run, run_ok, sha256_file, sha256_hex,
    show_path, snapshot, tools_or_skip, Entry, Kind, Run,
};
use tempfile::TempDir;

const EPOCH: u32 = 1_700_000_000;

/// The upgrade paths the fixtures cover: A, B, C and the cumulative 6.9 → 6.11.
const PAIRS: [(&str, &str); 4] = [
    ("6.9", "6.10"),
    ("6.10", "6.11"),
    ("6.11", "6.11.1"),
    ("6.9", "6.11"),
];

fn layer_path(from: &str, to: &str) -> String {
    format!("live/{}.squashfs", layer_name(from, to))
}

fn tmpdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("iuk-e2e-build-")
        .tempdir()
        .unwrap()
}

/// Builds a kit with the declared epoch and `args`; panics unless it succeeds.
fn build_kit(old: &Path, new: &Path, out: &Path, args: &[&str]) -> Run {
    run_ok(
        build_cmd(old, new, out)
            .arg(format!("--source-date-epoch={EPOCH}"))
            .args(args),
    )
}

/// The kit of a fixture pair with the declared epoch and `args`, built once per run and shared
/// ([`iuk_e2e::fixture_kit`]): read it, never change it.
fn build_pair(from: &str, to: &str, args: &[&str]) -> PathBuf {
    fixture_kit_at(from, to, EPOCH, args)
}

/// One file of a SquashFS image, read by `unsquashfs -cat`.
fn unsquashfs_cat(image: &Path, path: &str) -> Vec<u8> {
    run_ok(Command::new("unsquashfs").arg("-cat").arg(image).arg(path)).stdout
}

/// Extracts the diff layer of a kit to `dir/<layer>.squashfs` with `unsquashfs -cat`.
fn extract_layer(kit: &Path, from: &str, to: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}.squashfs", layer_name(from, to)));
    let bytes = unsquashfs_cat(kit, &format!("overlay/{}", layer_path(from, to)));
    assert!(
        bytes.starts_with(b"hsqs"),
        "{}: the layer is not a SquashFS image",
        kit.display()
    );
    fs::write(&out, bytes).unwrap();
    out
}

/// Extracts one file of an ISO with `osirrox` (independent of our ISO reader).
fn osirrox_extract(iso: &Path, path: &str, out: &Path) {
    run_ok(
        Command::new("osirrox")
            .arg("-indev")
            .arg(iso)
            .arg("-extract")
            .arg(path)
            .arg(out),
    );
}

/// The root filesystem image of a fixture version, extracted with osirrox to `dir/root-<v>.sqfs`.
fn rootfs_of(version: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("root-{version}.sqfs"));
    if !out.exists() {
        osirrox_extract(&iso(version), "/live/filesystem.squashfs", &out);
    }
    out
}

/// Every file of an ISO, extracted with osirrox into `dest`.
fn iso_files(iso: &Path, dest: &Path) -> BTreeMap<String, Vec<u8>> {
    osirrox_extract(iso, "/", dest);
    read_files(dest)
}

/// A kit unpacked by `unsquashfs -d`, with its control.yml.
struct Unpacked {
    dir: PathBuf,
    entries: Vec<Entry>,
    control_text: String,
    control: Control,
}

impl Unpacked {
    /// Files under `overlay/`: path relative to `overlay/` → bytes.
    fn overlay(&self) -> BTreeMap<String, Vec<u8>> {
        read_files(&self.dir.join("overlay"))
    }
}

fn unpack(kit: &Path, dest: &Path) -> Unpacked {
    let r = run_ok(
        Command::new("unsquashfs")
            .arg("-no-progress")
            .arg("-d")
            .arg(dest)
            .arg(kit),
    );
    assert!(
        !r.stderr.contains("rror"),
        "unsquashfs reported errors on {}: {r}",
        kit.display()
    );
    let control_text = String::from_utf8(fs::read(dest.join("control.yml")).unwrap())
        .expect("control.yml is UTF-8");
    let control = Control::from_yaml(&control_text)
        .unwrap_or_else(|e| panic!("{}: control.yml: {e}\n{control_text}", kit.display()));
    Unpacked {
        dir: dest.to_path_buf(),
        entries: snapshot(dest),
        control_text,
        control,
    }
}

/// The raw text of a top-level scalar key of control.yml.
fn raw_value<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no top-level {key} in control.yml:\n{text}"))
        .trim()
}

// ------------------------------------------------------------------------------------------------
// Expectations computed independently of the builder (DESIGN.md, "The medium")

/// Names that belong to iuk or to the layer stack on a medium (DESIGN.md, "Our files on the
/// medium"): module files, layer images, state, keyrings, lock, journal, staging.
fn is_protected(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    let Some(rest) = p.strip_prefix("live/") else {
        return false;
    };
    if rest.starts_with("iuk-") || rest == "iuk.lock" {
        return true;
    }
    if rest.contains('/') {
        return false;
    }
    rest.ends_with(".module")
        || [".squashfs", ".erofs", ".xfs", ".jffs2", ".dir"]
            .iter()
            .any(|s| rest.ends_with(s))
        || rest
            .rsplit_once('.')
            .is_some_and(|(_, ext)| ext.starts_with("ext"))
}

/// Replaces every `/isolinux/` by `/syslinux/` (same length).
fn isolinux_to_syslinux(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i + 10 <= out.len() {
        if &out[i..i + 10] == b"/isolinux/" {
            out[i..i + 10].copy_from_slice(b"/syslinux/");
            i += 10;
        } else {
            i += 1;
        }
    }
    out
}

/// An ISO's boot tree as installed: every file but `live/filesystem.squashfs` and protected
/// names, `isolinux/` → `syslinux/`, `isolinux.cfg` → `syslinux.cfg`, "/isolinux/" rewritten
/// inside `syslinux/`.
fn installed_boot_tree(iso_files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    iso_files
        .iter()
        .filter(|(p, _)| p.as_str() != "live/filesystem.squashfs" && !is_protected(p))
        .map(|(p, b)| match p.strip_prefix("isolinux/") {
            Some(rest) => {
                let rest = if rest == "isolinux.cfg" {
                    "syslinux.cfg"
                } else {
                    rest
                };
                (format!("syslinux/{rest}"), isolinux_to_syslinux(b))
            }
            None => (p.clone(), b.clone()),
        })
        .collect()
}

/// What testdata/README.md says each kit must show.
struct Expect {
    from: &'static str,
    to: &'static str,
    /// control.yml `delete_files`, exactly.
    delete_files: &'static [&'static str],
    /// The `live/vmlinuz*` and `live/initrd*` files of the overlay, exactly.
    kernels: &'static [&'static str],
}

const EXPECT: [Expect; 4] = [
    Expect {
        from: "6.9",
        to: "6.10",
        delete_files: &["EFI/BOOT/grub/x86_64-efi/legacy.mod", "live/a"],
        kernels: &["live/initrd.img", "live/vmlinuz"],
    },
    Expect {
        from: "6.10",
        to: "6.11",
        delete_files: &["utils/linux/old-helper"],
        kernels: &["live/initrd2.img", "live/vmlinuz2"],
    },
    Expect {
        from: "6.11",
        to: "6.11.1",
        delete_files: &[],
        kernels: &[],
    },
    Expect {
        from: "6.9",
        to: "6.11",
        delete_files: &[
            "EFI/BOOT/grub/x86_64-efi/legacy.mod",
            "live/a",
            "utils/linux/old-helper",
        ],
        kernels: &[
            "live/initrd.img",
            "live/initrd2.img",
            "live/vmlinuz",
            "live/vmlinuz2",
        ],
    },
];

fn expectation(from: &str, to: &str) -> &'static Expect {
    EXPECT
        .iter()
        .find(|e| e.from == from && e.to == to)
        .expect("a documented pair")
}

// ------------------------------------------------------------------------------------------------
// 1. Exactness through the real kernel

fn parent(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

fn is_whiteout(e: &Entry) -> bool {
    e.kind == Kind::CharDev && e.rdev == Some((0, 0))
}

/// The layer mounted alone has the shape DESIGN.md demands: no `trusted.overlay.*` xattr (no
/// opaque directory, no xattr whiteout), a whiteout (char device 0:0) exactly for each entry of
/// the old root that the new root lacks inside a directory present as a directory in both (a
/// removed directory is one whiteout), and nothing that changes nothing: every non-directory is
/// new or differs from the old entry (members of hard-link groups excepted: a changed group is
/// written whole), every directory is new, changed or on the way to a change.
fn check_layer_shape(old: &[Entry], new: &[Entry], layer: &[Entry], what: &str) {
    let by_path = |s: &[Entry]| -> BTreeMap<Vec<u8>, Entry> {
        s.iter().map(|e| (e.path.clone(), e.clone())).collect()
    };
    let (mo, mn, ml) = (by_path(old), by_path(new), by_path(layer));
    let mut problems = Vec::new();
    for e in old.iter().chain(new).chain(layer) {
        for (n, _) in &e.xattrs {
            if n.starts_with(b"trusted.overlay.") {
                problems.push(format!(
                    "{}: xattr {} present",
                    show_path(&e.path),
                    n.escape_ascii()
                ));
            }
        }
    }
    let is_dir =
        |m: &BTreeMap<Vec<u8>, Entry>, p: &[u8]| m.get(p).is_some_and(|e| e.kind == Kind::Dir);
    let expected_whiteouts: BTreeSet<Vec<u8>> = mo
        .keys()
        .filter(|p| {
            !p.is_empty()
                && !mn.contains_key(*p)
                && is_dir(&mo, parent(p))
                && is_dir(&mn, parent(p))
        })
        .cloned()
        .collect();
    let whiteouts: BTreeSet<Vec<u8>> = layer
        .iter()
        .filter(|e| is_whiteout(e))
        .map(|e| e.path.clone())
        .collect();
    for p in expected_whiteouts.difference(&whiteouts) {
        problems.push(format!("{}: no whiteout in the layer", show_path(p)));
    }
    for p in whiteouts.difference(&expected_whiteouts) {
        problems.push(format!(
            "{}: unexpected whiteout in the layer",
            show_path(p)
        ));
    }
    let same_meta = |a: &Entry, b: &Entry| {
        a.kind == b.kind
            && a.mode == b.mode
            && a.uid == b.uid
            && a.gid == b.gid
            && a.mtime == b.mtime
            && a.xattrs == b.xattrs
    };
    for e in layer {
        if is_whiteout(e) {
            continue;
        }
        let Some(n) = mn.get(&e.path) else {
            problems.push(format!(
                "{}: in the layer but not in the new root",
                show_path(&e.path)
            ));
            continue;
        };
        let Some(o) = mo.get(&e.path) else { continue };
        if e.kind == Kind::Dir {
            let prefix: Vec<u8> = if e.path.is_empty() {
                Vec::new()
            } else {
                [e.path.as_slice(), b"/"].concat()
            };
            let has_below = ml
                .keys()
                .any(|p| !p.is_empty() && p != &e.path && p.starts_with(&prefix));
            if same_meta(o, n) && !has_below {
                problems.push(format!(
                    "{}: unchanged directory with nothing below it in the layer",
                    show_path(&e.path)
                ));
            }
        } else if o.link_group.is_none()
            && n.link_group.is_none()
            && same_meta(o, n)
            && o.sha256 == n.sha256
            && o.target == n.target
            && o.rdev == n.rdev
        {
            problems.push(format!(
                "{}: unchanged entry carried by the layer",
                show_path(&e.path)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: the layer's shape is wrong:\n  {}",
        problems.join("\n  ")
    );
}

/// Build the kit of (from, to); mount old root, layer and new root; the overlay
/// `lowerdir=LAYER:OLD` equals the new root in every field the snapshot records.
fn kernel_exact(from: &str, to: &str) {
    if !require_root_or_skip() || !kernel_or_skip() || !tools_or_skip(&["osirrox", "unsquashfs"]) {
        return;
    }
    let t = tmpdir();
    let kit = build_pair(from, to, &[]);
    let old_img = rootfs_of(from, t.path());
    let new_img = rootfs_of(to, t.path());
    let layer_img = extract_layer(&kit, from, to, t.path());
    let old = mount_squashfs(&old_img);
    let new = mount_squashfs(&new_img);
    let layer = mount_squashfs(&layer_img);
    let view = mount_overlay(&[layer.path(), old.path()]);
    let expected = snapshot(new.path());
    assert!(
        expected
            .iter()
            .any(|e| e.xattrs.iter().any(|(n, _)| n == b"trusted.test")),
        "the new root's trusted.* xattr is not visible: the comparison would be blind to it"
    );
    assert!(
        expected
            .iter()
            .any(|e| e.xattrs.iter().any(|(n, _)| n == b"security.capability")),
        "the new root's security.capability is not visible: the comparison would be blind to it"
    );
    assert!(
        expected.iter().any(|e| e.link_group.is_some()),
        "no hard-link group seen in the new root: the comparison would be blind to them"
    );
    assert_same_tree(
        &expected,
        &snapshot(view.path()),
        &format!("{from} -> {to}: overlay of the kit's layer on {from} vs {to}"),
    );
    check_layer_shape(
        &snapshot(old.path()),
        &expected,
        &snapshot(layer.path()),
        &format!("{from} -> {to}"),
    );
}

#[test]
fn kernel_overlay_equals_new_root_6_9_to_6_10() {
    kernel_exact("6.9", "6.10");
}

#[test]
fn kernel_overlay_equals_new_root_6_10_to_6_11() {
    kernel_exact("6.10", "6.11");
}

#[test]
fn kernel_overlay_equals_new_root_6_11_to_6_11_1() {
    kernel_exact("6.11", "6.11.1");
}

#[test]
fn kernel_overlay_equals_new_root_cumulative_6_9_to_6_11() {
    kernel_exact("6.9", "6.11");
}

/// Stacking: 6.10 → 6.11's layer on 6.9 → 6.10's layer on 6.9 (`lowerdir=L2:L1:OLD`) is 6.11.
#[test]
fn kernel_chain_of_two_kits_equals_6_11() {
    if !require_root_or_skip() || !kernel_or_skip() || !tools_or_skip(&["osirrox", "unsquashfs"]) {
        return;
    }
    let t = tmpdir();
    let k1 = build_pair("6.9", "6.10", &[]);
    let k2 = build_pair("6.10", "6.11", &[]);
    let base_img = rootfs_of("6.9", t.path());
    let new_img = rootfs_of("6.11", t.path());
    let l1_img = extract_layer(&k1, "6.9", "6.10", t.path());
    let l2_img = extract_layer(&k2, "6.10", "6.11", t.path());
    let base = mount_squashfs(&base_img);
    let new = mount_squashfs(&new_img);
    let l1 = mount_squashfs(&l1_img);
    let l2 = mount_squashfs(&l2_img);
    let view = mount_overlay(&[l2.path(), l1.path(), base.path()]);
    assert_same_tree(
        &snapshot(new.path()),
        &snapshot(view.path()),
        "6.9 + (6.9 -> 6.10) + (6.10 -> 6.11) vs 6.11",
    );
    // Negative control: without the second layer the view is 6.10, and the comparison sees
    // what B changes through overlayfs (hard-link partition, xattr, device type, content).
    let partial = mount_overlay(&[l1.path(), base.path()]);
    let d = diff_snapshots(&snapshot(new.path()), &snapshot(partial.path()));
    for needle in [
        "usr/lib/hl/p2: hard-link group:",
        "usr/share/xattr/changing: xattr user.test:",
        "usr/share/xattr/removed: xattr user.test:",
        "var/lib/types/e: type:",
        "etc/same-mtime-new-content: sha256:",
        "usr/share/mtime-only: mtime:",
    ] {
        assert!(
            d.iter().any(|l| l.starts_with(needle)),
            "negative control: 6.9 + (6.9 -> 6.10) vs 6.11 must show `{needle}`; differences:\n  {}",
            d.join("\n  ")
        );
    }
}

// ------------------------------------------------------------------------------------------------
// 2. Userspace digests

/// A root filesystem read by the library, with its tree digest.
fn library_root(tree: Tree) -> (Tree, [u8; 32]) {
    let h = content_hashes(&tree, &|_| {}).unwrap();
    let d = tree_digest(&tree, &h);
    (tree, d)
}

fn library_root_of_release(path: &Path) -> (Tree, [u8; 32]) {
    let r = Release::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let a = r
        .rootfs()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    library_root(
        a.read_tree()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

fn library_root_of_image(path: &Path) -> (Tree, [u8; 32]) {
    let a = iuk::squashfs::archive::Archive::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    library_root(
        a.read_tree()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

/// control.yml's tree digests are the library's digests of the two roots (read through our ISO
/// reader and, the same, from osirrox's copy of the image), and the library's userspace overlay
/// merge of old root + layer has the new root's digest.
#[test]
fn control_digests_match_library_and_userspace_merge() {
    if !tools_or_skip(&["osirrox", "unsquashfs"]) {
        return;
    }
    let t = tmpdir();
    for (from, to) in PAIRS {
        let what = format!("{from} -> {to}");
        let kit = build_pair(from, to, &[]);
        let text = String::from_utf8(unsquashfs_cat(&kit, "control.yml")).unwrap();
        let c = Control::from_yaml(&text).unwrap();
        let (old_tree, old_digest) = library_root_of_release(&iso(from));
        let (_, new_digest) = library_root_of_release(&iso(to));
        assert_eq!(
            library_root_of_image(&rootfs_of(from, t.path())).1,
            old_digest,
            "{what}: digest of {from} via our ISO reader vs via osirrox"
        );
        assert_eq!(
            library_root_of_image(&rootfs_of(to, t.path())).1,
            new_digest,
            "{what}: digest of {to} via our ISO reader vs via osirrox"
        );
        assert_eq!(
            c.old_tree_digest,
            hex(&old_digest),
            "{what}: old-tree-digest"
        );
        assert_eq!(
            c.new_tree_digest,
            hex(&new_digest),
            "{what}: new-tree-digest"
        );
        assert_ne!(old_digest, new_digest, "{what}: the roots differ");
        let (layer_tree, _) = library_root_of_image(&extract_layer(&kit, from, to, t.path()));
        let merged = iuk::diff::merge(&old_tree, &layer_tree).unwrap();
        let (_, merged_digest) = library_root(merged);
        assert_eq!(
            hex(&merged_digest),
            hex(&new_digest),
            "{what}: userspace merge of old root + layer"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// 3. Tails layout rules

/// Everything testdata/README.md and REFERENCE.md (Create.feature) say about the kit of a pair.
fn check_layout(from: &str, to: &str) {
    if !tools_or_skip(&["osirrox", "unsquashfs"]) {
        return;
    }
    let what = format!("{from} -> {to}");
    let exp = expectation(from, to);
    let t = tmpdir();
    let kit = build_pair(from, to, &[]);
    let layer = layer_path(from, to);

    // FORMAT: the bytes `2`, no newline.
    assert_eq!(unsquashfs_cat(&kit, "FORMAT"), b"2", "{what}: FORMAT");

    // Every entry root-owned; files 0644, directories 0755, nothing else (unsquashfs -lln).
    let listing = run_ok(Command::new("unsquashfs").arg("-lln").arg(&kit)).stdout_text();
    let mut bad = Vec::new();
    for line in listing.lines().filter(|l| l.contains("squashfs-root")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ok = f.len() >= 6
            && f[1] == "0/0"
            && if f[0].starts_with('d') {
                f[0] == "drwxr-xr-x"
            } else {
                f[0] == "-rw-r--r--"
            };
        if !ok {
            bad.push(line.to_string());
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: kit entries not 0:0 with 0644/0755:\n{}",
        bad.join("\n")
    );

    let u = unpack(&kit, &t.path().join("kit"));
    // Every entry: owner 0:0, files 0644, dirs 0755 (after extraction); mtime = the epoch,
    // except boot files, which keep the new ISO's mtime (so that Tails' installer, whose rsync
    // compares size and mtime, sees every changed file).
    let new_entries = iso_mtimes(&iso(to), &t.path().join("iso-mtimes"));
    for e in &u.entries {
        let mode = if e.kind == Kind::Dir { 0o755 } else { 0o644 };
        let rel = e.path.strip_prefix(b"overlay/".as_slice()).unwrap_or(&[]);
        let expected_mtime = match new_entries.get(&installed_to_iso(rel)) {
            Some(m) if e.kind == Kind::File && !rel.is_empty() => *m,
            _ => i64::from(EPOCH),
        };
        assert!(
            matches!(e.kind, Kind::Dir | Kind::File)
                && e.uid == 0
                && e.gid == 0
                && e.mode == mode
                && e.mtime == expected_mtime
                && e.xattrs.is_empty(),
            "{what}: kit entry {} is {e:?}",
            show_path(&e.path)
        );
    }
    assert_eq!(
        dir_names(&u.dir),
        ["FORMAT", "control.yml", "overlay"],
        "{what}: top level of the kit"
    );
    let c = &u.control;

    // control.yml: keys in order, our identity and parameters.
    let keys: Vec<&str> = u
        .control_text
        .lines()
        .filter(|l| !l.starts_with([' ', '-']) && !l.is_empty())
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "delete_files",
            "generator",
            "writer-format",
            "product",
            "build-target",
            "from-version",
            "to-version",
            "layer",
            "layer-params",
            "old-iso-sha256",
            "new-iso-sha256",
            "old-tree-digest",
            "new-tree-digest",
            "overlay",
            "boot-tree",
        ],
        "{what}: control.yml keys"
    );
    assert_eq!(c.generator, "iuk", "{what}");
    assert_eq!(c.writer_format, iuk::kit::writer_format(), "{what}");
    assert_eq!(c.product, "Tails", "{what}");
    assert_eq!(c.build_target, "amd64", "{what}");
    assert_eq!(c.from_version, from, "{what}: from-version");
    assert_eq!(c.to_version, to, "{what}: to-version");
    assert_eq!(c.layer, layer_name(from, to), "{what}");
    let lp = &c.layer_params;
    assert_eq!(
        (
            lp.compression.as_str(),
            lp.xz_bcj.as_deref(),
            lp.xz_dict_size,
            lp.block_size,
            lp.sort_file.as_deref(),
            lp.source_date_epoch
        ),
        ("xz", Some("x86"), Some(1 << 20), 1 << 20, None, EPOCH),
        "{what}: default layer parameters (Tails' settings)"
    );
    assert_eq!(
        c.old_iso_sha256.as_deref(),
        Some(sha256_file(&iso(from)).as_str()),
        "{what}: old-iso-sha256"
    );
    assert_eq!(
        c.new_iso_sha256.as_deref(),
        Some(sha256_file(&iso(to)).as_str()),
        "{what}: new-iso-sha256"
    );

    // The overlay list: complete, sorted, every size and sha256 right.
    let overlay = u.overlay();
    let listed: BTreeMap<String, (u64, String)> = c
        .overlay
        .iter()
        .map(|f| (f.path.clone(), (f.size, f.sha256.clone())))
        .collect();
    let actual: BTreeMap<String, (u64, String)> = overlay
        .iter()
        .map(|(p, b)| (p.clone(), (b.len() as u64, sha256_hex(b))))
        .collect();
    assert_eq!(listed, actual, "{what}: control.yml `overlay` vs overlay/");
    let order: Vec<&str> = c.overlay.iter().map(|f| f.path.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(order, sorted, "{what}: `overlay` sorted, no duplicates");

    // The diff layer: a SquashFS at live/<layer>.squashfs; no base image, no protected name.
    assert!(
        overlay.get(&layer).is_some_and(|b| b.starts_with(b"hsqs")),
        "{what}: no SquashFS diff at overlay/{layer}"
    );
    assert!(
        !overlay.contains_key("live/filesystem.squashfs"),
        "{what}: the kit carries live/filesystem.squashfs"
    );
    let protected: Vec<&String> = overlay
        .keys()
        .filter(|p| is_protected(p) && **p != layer)
        .collect();
    assert!(
        protected.is_empty(),
        "{what}: protected names in the overlay: {protected:?}"
    );

    // Boot loader: syslinux/ with syslinux.cfg, no isolinux/, no "/isolinux/" left.
    assert!(
        overlay.contains_key("syslinux/syslinux.cfg"),
        "{what}: no syslinux/syslinux.cfg in the overlay"
    );
    assert!(
        !overlay.keys().any(|p| p.starts_with("isolinux/")),
        "{what}: isolinux/ in the overlay"
    );
    assert!(
        !u.dir.join("overlay/isolinux").exists(),
        "{what}: isolinux/ directory in the overlay"
    );
    for (p, b) in overlay.iter().filter(|(p, _)| p.starts_with("syslinux/")) {
        assert!(
            !b.windows(10).any(|w| w == b"/isolinux/"),
            "{what}: {p} still holds \"/isolinux/\""
        );
    }

    // Expected overlay and boot tree, from osirrox's copies of both ISOs.
    let old_boot = installed_boot_tree(&iso_files(&iso(from), &t.path().join("old-iso")));
    let new_boot = installed_boot_tree(&iso_files(&iso(to), &t.path().join("new-iso")));
    assert!(
        old_boot
            .get("syslinux/ldlinux.c32")
            .is_some_and(|b| b.windows(10).any(|w| w == b"/syslinux/")),
        "fixture: ldlinux.c32 must hold the rewritten string"
    );
    let mut expected: BTreeMap<String, Vec<u8>> = new_boot
        .iter()
        .filter(|(p, b)| {
            ["EFI/", "syslinux/", "utils/"]
                .iter()
                .any(|d| p.starts_with(d))
                || old_boot.get(*p) != Some(*b)
        })
        .map(|(p, b)| (p.clone(), b.clone()))
        .collect();
    expected.insert(layer.clone(), overlay[&layer].clone());
    let show = |m: &BTreeMap<String, Vec<u8>>| -> Vec<String> {
        m.iter()
            .map(|(p, b)| format!("{p} ({} B, {})", b.len(), &sha256_hex(b)[..12]))
            .collect()
    };
    assert_eq!(
        show(&overlay),
        show(&expected),
        "{what}: overlay/ vs the new ISO's new or changed boot files + EFI/, syslinux/, utils/ whole"
    );
    let listed_boot: Vec<(String, u64, String)> = c
        .boot_tree
        .iter()
        .map(|f| (f.path.clone(), f.size, f.sha256.clone()))
        .collect();
    let expected_boot: Vec<(String, u64, String)> = new_boot
        .iter()
        .map(|(p, b)| (p.clone(), b.len() as u64, sha256_hex(b)))
        .collect();
    assert_eq!(
        listed_boot, expected_boot,
        "{what}: boot-tree vs the new ISO's files as installed"
    );
    assert!(
        !c.boot_tree
            .iter()
            .any(|f| f.path == "live/filesystem.squashfs" || is_protected(&f.path)),
        "{what}: boot-tree lists the base image or a protected name"
    );

    // delete_files: exactly what testdata/README.md says (doc/old.txt is not monitored).
    assert_eq!(c.delete_files, exp.delete_files, "{what}: delete_files");

    // Kernels: upgraded → both in the overlay; unchanged → absent; second kernel → only it.
    let kernels: Vec<&str> = overlay
        .keys()
        .map(String::as_str)
        .filter(|p| p.starts_with("live/vmlinuz") || p.starts_with("live/initrd"))
        .collect();
    assert_eq!(kernels, exp.kernels, "{what}: kernel files in the overlay");

    // The root side, read by unsquashfs from the extracted layer.
    let layer_img = t.path().join("layer.sqfs");
    fs::write(&layer_img, &overlay[&layer]).unwrap();
    let ll = run_ok(Command::new("unsquashfs").arg("-lln").arg(&layer_img)).stdout_text();
    let line_of = |path: &str| -> Option<&str> {
        let suffix = format!("squashfs-root/{path}");
        ll.lines().find(|l| l.ends_with(&suffix))
    };
    let owner = |path: &str| -> Option<String> {
        line_of(path).map(|l| l.split_whitespace().nth(1).unwrap().to_string())
    };
    let slice = "etc/systemd/system/system-systemd\\x2dcryptsetup.slice";
    match (from, to) {
        ("6.9", "6.10") | ("6.9", "6.11") => {
            // Create.feature: a new file owned by www-data keeps its owner in the diff.
            assert_eq!(
                owner("var/www/index.html").as_deref(),
                Some("33/33"),
                "{what}"
            );
            assert_eq!(owner("var/www").as_deref(), Some("33/33"), "{what}");
            // A removed file is deleted by the diff (a whiteout).
            assert!(
                line_of("usr/share/doc/removed.txt").is_some_and(|l| l.starts_with('c')),
                "{what}: no whiteout for usr/share/doc/removed.txt:\n{ll}"
            );
            // The file whose mtime went 1333333333 -> 1336666666 with new content.
            assert!(line_of("etc/mtime-changed").is_some(), "{what}:\n{ll}");
            assert!(
                line_of(slice).is_some(),
                "{what}: no {slice} in the layer:\n{ll}"
            );
        }
        ("6.10", "6.11") => {
            assert!(
                line_of(slice).is_some(),
                "{what}: no {slice} in the layer:\n{ll}"
            );
            assert!(
                line_of("opt/legacy").is_some_and(|l| l.starts_with('c'))
                    && !ll.contains("squashfs-root/opt/legacy/"),
                "{what}: opt/legacy must be one whiteout:\n{ll}"
            );
        }
        ("6.11", "6.11.1") => {
            // Only /usr/lib/os-release changes: the layer holds it and its directories.
            let paths: Vec<&str> = ll
                .lines()
                .filter_map(|l| l.split("squashfs-root").nth(1))
                .collect();
            assert_eq!(
                paths,
                ["", "/usr", "/usr/lib", "/usr/lib/os-release"],
                "{what}: layer entries"
            );
        }
        _ => unreachable!(),
    }
    // Only the container is all-root: the layer keeps every owner (A: owner-only change).
    if from == "6.9" {
        assert_eq!(
            owner("srv/owner-only").as_deref(),
            Some("1000/1000"),
            "{what}"
        );
    }
}

#[test]
fn layout_6_9_to_6_10() {
    check_layout("6.9", "6.10");
}

#[test]
fn layout_6_10_to_6_11() {
    check_layout("6.10", "6.11");
}

#[test]
fn layout_6_11_to_6_11_1() {
    check_layout("6.11", "6.11.1");
}

#[test]
fn layout_cumulative_6_9_to_6_11() {
    check_layout("6.9", "6.11");
}

/// Versions are YAML strings, written quoted (DESIGN.md: "6.10" must never become the float
/// 6.1; YAML 1.1's float pattern `[-+]?([0-9][0-9_]*)?\.[0-9.]*` also matches "6.11.1").
#[test]
fn versions_are_quoted_strings_in_control_yml() {
    if !tools_or_skip(&["unsquashfs"]) {
        return;
    }
    let mut bad = Vec::new();
    for (from, to) in PAIRS {
        let kit = build_pair(from, to, &[]);
        let text = String::from_utf8(unsquashfs_cat(&kit, "control.yml")).unwrap();
        for (key, v) in [("from-version", from), ("to-version", to)] {
            let raw = raw_value(&text, key);
            if raw != format!("'{v}'") && raw != format!("\"{v}\"") {
                bad.push(format!(
                    "{from} -> {to}: `{key}: {raw}` (want `{key}: '{v}'`)"
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "versions not quoted in control.yml:\n  {}",
        bad.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------------
// 4. Determinism

/// The same kit bytes whatever the thread count, time zone, locale, umask, working directory
/// (relative paths), temp directory, input paths (copies at a path of another length), and
/// whether the epoch comes by flag or environment; no temporary file left anywhere.
#[test]
fn deterministic_across_jobs_and_environment() {
    let t = tmpdir();
    let (from, to) = ("6.9", "6.11");
    let out_dir = t.path().join("out");
    let tmp_env = t.path().join("tmpdir");
    let copies = t.path().join("copies/of/the/input/isos/at/a/longer/path");
    let rel = t.path().join("rel");
    for d in [&out_dir, &tmp_env, &copies, &rel.join("in")] {
        fs::create_dir_all(d).unwrap();
    }
    for (d, v) in [
        (&copies, from),
        (&copies, to),
        (&rel.join("in"), from),
        (&rel.join("in"), to),
    ] {
        fs::copy(iso(v), d.join(format!("Tails-{v}.iso"))).unwrap();
    }
    let base = |out: &Path| -> Command {
        let mut c = build_cmd(&iso(from), &iso(to), out);
        c.arg(format!("--source-date-epoch={EPOCH}"))
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        c
    };
    let mut cases: Vec<(String, PathBuf, Command)> = Vec::new();
    let mut case = |name: &str, make: &dyn Fn(&Path) -> Command| {
        let out = out_dir.join(format!("kit-{}.iuk", cases.len()));
        cases.push((name.to_string(), out.clone(), make(&out)));
    };
    for jobs in ["1", "2"] {
        case(&format!("--jobs {jobs}"), &|out| {
            let mut c = base(out);
            c.args(["--jobs", jobs]);
            c
        });
    }
    case("TZ=Asia/Kathmandu", &|out| {
        let mut c = base(out);
        c.env("TZ", "Asia/Kathmandu");
        c
    });
    case("LC_ALL=C.UTF-8", &|out| {
        let mut c = base(out);
        c.env("LC_ALL", "C.UTF-8");
        c
    });
    case("umask 077", &|out| {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("umask 077; exec \"$0\" \"$@\"")
            .arg(iuk_e2e::bin("iuk-build"))
            .arg("build")
            .arg("--old")
            .arg(iso(from))
            .arg("--new")
            .arg(iso(to))
            .arg("--out")
            .arg(out)
            .arg(format!("--source-date-epoch={EPOCH}"))
            .env_remove("SOURCE_DATE_EPOCH")
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        sh
    });
    case("other cwd, relative paths", &|out| {
        let mut c = iuk_command("iuk-build");
        c.current_dir(&rel)
            .arg("build")
            .arg("--old")
            .arg(format!("in/Tails-{from}.iso"))
            .arg("--new")
            .arg(format!("in/Tails-{to}.iso"))
            .arg("--out")
            .arg(Path::new("../out").join(out.file_name().unwrap()))
            .arg(format!("--source-date-epoch={EPOCH}"))
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        c
    });
    case("TMPDIR elsewhere, HOME missing", &|out| {
        let mut c = base(out);
        c.env("TMPDIR", &tmp_env).env("HOME", "/nonexistent");
        c
    });
    case("input ISOs copied to a longer path", &|out| {
        let mut c = build_cmd(
            &copies.join(format!("Tails-{from}.iso")),
            &copies.join(format!("Tails-{to}.iso")),
            out,
        );
        c.arg(format!("--source-date-epoch={EPOCH}"))
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        c
    });
    case("SOURCE_DATE_EPOCH in the environment", &|out| {
        let mut c = build_cmd(&iso(from), &iso(to), out);
        c.env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        c
    });
    let outputs: Vec<PathBuf> = cases.iter().map(|(_, o, _)| o.clone()).collect();
    assert_same_outputs(cases);
    let mut want: Vec<_> = outputs
        .iter()
        .map(|o| o.file_name().unwrap().to_os_string())
        .collect();
    want.sort();
    assert_eq!(
        dir_names(&out_dir),
        want,
        "only the kits in the output directory"
    );
    assert!(dir_names(&tmp_env).is_empty(), "files left in TMPDIR");
    assert_eq!(
        dir_names(&rel),
        ["in"],
        "files left in the working directory"
    );
}

/// The epoch is part of the bytes: another epoch, another sha256 (superblock time and
/// control.yml both say it).
#[test]
fn another_epoch_changes_the_bytes() {
    let t = tmpdir();
    let a = build_pair("6.11", "6.11.1", &[]);
    let b = t.path().join("b.iuk");
    run_ok(
        build_cmd(&iso("6.11"), &iso("6.11.1"), &b)
            .arg(format!("--source-date-epoch={}", EPOCH + 1)),
    );
    assert_ne!(
        sha256_file(&a),
        sha256_file(&b),
        "the epoch did not change the kit"
    );
    assert_eq!(mkfs_time(&a), EPOCH);
    assert_eq!(mkfs_time(&b), EPOCH + 1);
}

/// Without `--out`, the kit is `<P>_<T>_<A>_to_<B>.iuk` in the working directory, with the
/// same bytes.
#[test]
fn default_output_name_in_the_working_directory() {
    let t = tmpdir();
    let explicit = build_pair("6.11", "6.11.1", &[]);
    let cwd = t.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    run_ok(
        iuk_command("iuk-build")
            .current_dir(&cwd)
            .arg("build")
            .arg("--old")
            .arg(iso("6.11"))
            .arg("--new")
            .arg(iso("6.11.1"))
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string()),
    );
    assert_eq!(dir_names(&cwd), ["Tails_amd64_6.11_to_6.11.1.iuk"]);
    assert_eq!(
        sha256_file(&cwd.join("Tails_amd64_6.11_to_6.11.1.iuk")),
        sha256_file(&explicit)
    );
}

// ------------------------------------------------------------------------------------------------
// 5. Golden hashes

const GOLDEN: &str = "golden-kits.sha256";

/// The kits every golden file must cover: the four pairs with default parameters, one pair
/// with non-default parameters, and the FORMAT 3 kit of 6.9 → 6.10 (`--deltas`; the other pairs
/// fall back to FORMAT 2 with the FORMAT 2 kit's bytes, tests/tests/deltas.rs checks that).
const GOLDEN_CASES: [(&str, &str, &[&str]); 6] = [
    ("6.9", "6.10", &[]),
    ("6.10", "6.11", &[]),
    ("6.11", "6.11.1", &[]),
    ("6.9", "6.11", &[]),
    (
        "6.9",
        "6.10",
        &[
            "--compression",
            "zstd",
            "--level",
            "19",
            "--block-size",
            "128K",
        ],
    ),
    ("6.9", "6.10", &["--deltas"]),
];

/// The header line of the golden file recording the writer format version its hashes are of.
const GOLDEN_VERSION_PREFIX: &str = "# writer-format-version:";

/// The writer format version the golden file records (its `# writer-format-version: N` line),
/// or `None` when it has none; panics on a malformed or repeated one.
fn golden_version(text: &str) -> Option<u32> {
    let mut found = None;
    for line in text.lines() {
        let Some(v) = line.strip_prefix(GOLDEN_VERSION_PREFIX) else {
            continue;
        };
        let v: u32 = v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{GOLDEN}: malformed line {line:?}: {e}"));
        assert!(
            found.replace(v).is_none(),
            "{GOLDEN}: two `{GOLDEN_VERSION_PREFIX}` lines"
        );
    }
    found
}

/// What the golden test reports, given the writer format version the golden file records, the
/// current one, and the kits whose hashes differ from it (`problems`): `None` when all is well.
/// A changed version with an old golden file means it was not regenerated; changed hashes under
/// the recorded version mean the bytes changed without a version bump.
fn golden_verdict(recorded: Option<u32>, current: u32, problems: &[String]) -> Option<String> {
    let regenerate =
        "IUK_UPDATE_GOLDEN=1 cargo test --release -p iuk-e2e --test e2e build::golden_kit_hashes";
    match recorded {
        None => Some(format!(
            "testdata/{GOLDEN} has no `{GOLDEN_VERSION_PREFIX} N` line (the writer format \
             version its hashes are of); regenerate it:\n\n    {regenerate}"
        )),
        Some(r) if r != current => Some(format!(
            "WRITER_FORMAT_VERSION is {current} but testdata/{GOLDEN} records the hashes of \
             writer format {r}: the golden file was not regenerated after the version changed; \
             regenerate it and commit it with the change:\n\n    {regenerate}"
        )),
        Some(_) if !problems.is_empty() => Some(format!(
            "the kit bytes differ from testdata/{GOLDEN} but WRITER_FORMAT_VERSION is still \
             {current}, as recorded: bump WRITER_FORMAT_VERSION (shared/src/squashfs/write.rs) \
             and regenerate the golden file, unless the change is not the writer's (see below):\n  {}",
            problems.join("\n  ")
        )),
        Some(_) => None,
    }
}

#[test]
fn golden_verdict_names_what_to_do() {
    let changed = ["Tails-6.9.iso Tails-6.10.iso: recorded a, built b".to_string()];
    assert_eq!(golden_verdict(Some(3), 3, &[]), None);
    let same_version = golden_verdict(Some(3), 3, &changed).unwrap();
    assert!(
        same_version.contains("bump WRITER_FORMAT_VERSION")
            && same_version.contains("regenerate")
            && same_version.contains(&changed[0]),
        "{same_version}"
    );
    for hashes in [&[][..], &changed[..]] {
        let not_regenerated = golden_verdict(Some(3), 4, hashes).unwrap();
        assert!(
            not_regenerated.contains("not regenerated")
                && not_regenerated.contains("IUK_UPDATE_GOLDEN=1"),
            "{not_regenerated}"
        );
    }
    assert!(golden_verdict(None, 3, &[])
        .unwrap()
        .contains(GOLDEN_VERSION_PREFIX));
    assert_eq!(
        golden_version("# x\n# writer-format-version: 7\nab  c\n"),
        Some(7)
    );
    assert_eq!(golden_version("# x\nab  c\n"), None);
}

fn golden_description(from: &str, to: &str, args: &[&str]) -> String {
    format!(
        "Tails-{from}.iso Tails-{to}.iso epoch={EPOCH} {}",
        if args.is_empty() {
            "defaults".to_string()
        } else {
            args.join(" ")
        }
    )
}

/// Each kit of `testdata/golden-kits.sha256`, rebuilt, has the recorded sha256: the bytes for
/// given inputs and parameters never change by accident (DESIGN.md, "Writer format version").
/// `IUK_UPDATE_GOLDEN=1` rewrites the file instead (only on purpose).
#[test]
fn golden_kit_hashes() {
    let path = fixture(GOLDEN);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let recorded_version = golden_version(&text);
    let mut recorded: BTreeMap<String, String> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (hash, desc) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("{GOLDEN}: malformed line {line:?}"));
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{GOLDEN}: malformed hash in {line:?}"
        );
        assert!(
            recorded
                .insert(desc.to_string(), hash.to_string())
                .is_none(),
            "{GOLDEN}: {desc} listed twice"
        );
    }
    let t = tmpdir();
    let mut actual: Vec<(String, String, PathBuf)> = Vec::new();
    for (i, (from, to, args)) in GOLDEN_CASES.iter().enumerate() {
        // The fixture kits are built once per run (the other tests share them); a copy is kept
        // here for comparison when the hashes differ.
        let out = t.path().join(format!("{i}-{from}-{to}.iuk"));
        fs::copy(build_pair(from, to, args), &out).unwrap();
        actual.push((golden_description(from, to, args), sha256_file(&out), out));
    }
    // Lines of the file that no case covers would silently stop being checked.
    let covered: BTreeSet<&str> = actual.iter().map(|(d, _, _)| d.as_str()).collect();
    let stray: Vec<&String> = recorded
        .keys()
        .filter(|d| !covered.contains(d.as_str()))
        .collect();
    let new_file = {
        let mut s = String::from(
            "# sha256 of the kits `iuk-build build --old A --new B --source-date-epoch E [ARGS]` makes\n\
             # from the committed fixture ISOs (testdata/README.md). Checked by tests/tests/build.rs\n\
             # (golden_kit_hashes). Change only on purpose (writer format version bump, new fixtures,\n\
             # control.yml layout), never by accident. The version line below is the writer format\n\
             # version (WRITER_FORMAT_VERSION) the hashes are of.\n",
        );
        s.push_str(&format!(
            "{GOLDEN_VERSION_PREFIX} {WRITER_FORMAT_VERSION}\n"
        ));
        for (d, h, _) in &actual {
            s.push_str(&format!("{h}  {d}\n"));
        }
        s
    };
    if std::env::var("IUK_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        fs::write(&path, &new_file).unwrap();
        eprintln!("IUK_UPDATE_GOLDEN=1: rewrote {}", path.display());
        return;
    }
    let mut problems = Vec::new();
    for (d, h, _) in &actual {
        match recorded.get(d) {
            None => problems.push(format!("{d}: not in {GOLDEN} (built: {h})")),
            Some(r) if r != h => problems.push(format!("{d}: recorded {r}, built {h}")),
            Some(_) => {}
        }
    }
    for d in stray {
        problems.push(format!("{d}: in {GOLDEN} but no test builds it"));
    }
    if let Some(verdict) = golden_verdict(recorded_version, WRITER_FORMAT_VERSION, &problems) {
        let kept = t.keep();
        panic!(
            "{verdict}\n\n\
             Kit bytes must never change by accident (DESIGN.md: determinism, writer format version).\n\
             The kits just built are kept in {} for comparison.\n\
             If the change is deliberate (a change of the writer's layout rules or a compressor\n\
             upgrade: bump WRITER_FORMAT_VERSION in shared/src/squashfs/write.rs; a control.yml\n\
             change; regenerated fixtures), update the golden file and commit it with the change\n\
             that explains why:\n\
             \n    IUK_UPDATE_GOLDEN=1 cargo test --release -p iuk-e2e --test e2e build::golden_kit_hashes\n\
             \nor replace testdata/{GOLDEN} with:\n{new_file}",
            kept.display()
        );
    }
}

// ------------------------------------------------------------------------------------------------
// 6. Refusals

/// Runs a command expected to be refused and checks the common contract: non-zero exit, one
/// stderr line starting with `iuk-build: error:`, no panic, and the watched directories'
/// contents unchanged (no output, no temporary, partial or layer file).
fn expect_refusal(what: &str, cmd: &mut Command, watched: &[&Path]) -> Run {
    let before: Vec<_> = watched.iter().map(|d| dir_names(d)).collect();
    let r = run(cmd);
    assert!(r.code.is_some_and(|c| c != 0), "{what}: not refused: {r}");
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "{what}: panicked: {r}"
    );
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
    // The message says each thing once (an error wrapping another must not print it twice).
    let msg = r.stderr.trim_end();
    for (i, _) in msg.match_indices(": ") {
        let tail = &msg[i + 2..];
        assert!(
            tail.len() < 8 || !msg[..i].ends_with(tail),
            "{what}: the message repeats itself ({tail:?} twice): {msg:?}"
        );
    }
    eprintln!("{what}: {msg}");
    r
}

/// A temporary directory with an empty `out/` to watch.
struct Scene {
    tmp: TempDir,
    out: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tmpdir();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        Scene { tmp, out }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn kit(&self) -> PathBuf {
        self.out.join("kit.iuk")
    }
    /// `build` with the epoch flag, refused; checks that `out/` and the scene stay unchanged.
    fn refuse(&self, what: &str, old: &Path, new: &Path, args: &[&str]) -> Run {
        let r = expect_refusal(
            what,
            build_cmd(old, new, &self.kit())
                .arg(format!("--source-date-epoch={EPOCH}"))
                .args(args),
            &[&self.out, self.tmp.path()],
        );
        assert!(!self.kit().exists(), "{what}: kit written");
        r
    }
}

fn assert_names(r: &Run, what: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "{what}: the message does not name {n:?}: {:?}",
            r.stderr
        );
    }
}

#[test]
fn refuses_without_source_date_epoch() {
    let s = Scene::new();
    let r = expect_refusal(
        "no epoch",
        &mut build_cmd(&iso("6.9"), &iso("6.10"), &s.kit()),
        &[&s.out],
    );
    assert_eq!(r.code, Some(1), "{r}");
    assert_names(&r, "no epoch", &["SOURCE_DATE_EPOCH"]);
}

#[test]
fn refuses_a_file_that_is_not_an_iso() {
    let s = Scene::new();
    let junk = s.path("junk.iso");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(&junk, bytes).unwrap();
    let j = junk.to_str().unwrap();
    let r = s.refuse("random bytes as old", &junk, &iso("6.10"), &[]);
    assert_names(&r, "random bytes as old", &[j]);
    let r = s.refuse("random bytes as new", &iso("6.9"), &junk, &[]);
    assert_names(&r, "random bytes as new", &[j]);
}

#[test]
fn refuses_a_truncated_iso() {
    let s = Scene::new();
    let cut = s.path("Tails-6.10-truncated.iso");
    let bytes = fs::read(iso("6.10")).unwrap();
    fs::write(&cut, &bytes[..64 << 10]).unwrap();
    let c = cut.to_str().unwrap();
    let r = s.refuse("truncated new ISO", &iso("6.9"), &cut, &[]);
    assert_names(&r, "truncated new ISO", &[c]);
    let r = s.refuse("truncated old ISO", &cut, &iso("6.11"), &[]);
    assert_names(&r, "truncated old ISO", &[c]);
}

/// Builds an ISO (xorriso, Rock Ridge + Joliet) from a staging directory.
fn make_iso(stage: &Path, out: &Path) {
    run_ok(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-R", "-J", "-quiet", "-o"])
            .arg(out)
            .arg(stage),
    );
}

#[test]
fn refuses_an_iso_without_root_filesystem() {
    if !tools_or_skip(&["xorriso"]) {
        return;
    }
    let s = Scene::new();
    let stage = s.path("stage");
    fs::create_dir_all(stage.join("live")).unwrap();
    fs::create_dir_all(stage.join("isolinux")).unwrap();
    fs::write(stage.join("live/vmlinuz"), b"kernel").unwrap();
    fs::write(stage.join("isolinux/isolinux.cfg"), b"default live\n").unwrap();
    let bare = s.path("no-rootfs.iso");
    make_iso(&stage, &bare);
    let b = bare.to_str().unwrap();
    let r = s.refuse("ISO without rootfs as new", &iso("6.9"), &bare, &[]);
    assert_names(&r, "ISO without rootfs", &[b, "filesystem.squashfs"]);
    let r = s.refuse("ISO without rootfs as old", &bare, &iso("6.10"), &[]);
    assert_names(&r, "ISO without rootfs", &[b, "filesystem.squashfs"]);
}

/// An ISO whose live/filesystem.squashfs is a real image with bytes flipped in its inode table.
#[test]
fn refuses_a_corrupt_root_filesystem() {
    if !tools_or_skip(&["xorriso", "osirrox"]) {
        return;
    }
    let s = Scene::new();
    let stage = s.path("stage");
    osirrox_extract(&iso("6.10"), "/", &stage);
    let rootfs = stage.join("live/filesystem.squashfs");
    let mut img = fs::read(&rootfs).unwrap();
    let start = u64::from_le_bytes(img[64..72].try_into().unwrap()) as usize;
    let header = u16::from_le_bytes([img[start], img[start + 1]]);
    let len = usize::from(header & 0x7fff);
    if header & 0x8000 == 0 {
        // Compressed metadata block: flip 8 bytes in the middle of the stream.
        let at = start + 2 + len / 2;
        for b in &mut img[at..at + 8] {
            *b ^= 0xff;
        }
    } else {
        // Stored block: make the first inode's type invalid.
        img[start + 2] ^= 0xff;
        img[start + 3] ^= 0xff;
    }
    // osirrox extracts read-only files.
    fs::remove_file(&rootfs).unwrap();
    fs::write(&rootfs, &img).unwrap();
    let bad = s.path("corrupt-rootfs.iso");
    make_iso(&stage, &bad);
    let b = bad.to_str().unwrap();
    let r = s.refuse("corrupt rootfs as new", &iso("6.9"), &bad, &[]);
    assert_names(&r, "corrupt rootfs as new", &[b, "filesystem.squashfs"]);
    let r = s.refuse("corrupt rootfs as old", &bad, &iso("6.11"), &[]);
    assert_names(&r, "corrupt rootfs as old", &[b, "filesystem.squashfs"]);
}

/// A boot tree that cannot live on FAT (two names equal but for case) is refused after the
/// layer was written: the layer's temporary file must be gone too.
#[test]
fn refuses_boot_files_that_collide_on_fat() {
    if !tools_or_skip(&["xorriso", "osirrox"]) {
        return;
    }
    let s = Scene::new();
    let stage = s.path("stage");
    osirrox_extract(&iso("6.10"), "/", &stage);
    let efi = stage.join("EFI/BOOT");
    let mut perms = fs::metadata(&efi).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&efi, perms).unwrap();
    fs::write(efi.join("GRUB.CFG"), b"set timeout=1\n").unwrap();
    let bad = s.path("case-collision.iso");
    make_iso(&stage, &bad);
    let r = s.refuse("FAT name collision", &iso("6.9"), &bad, &[]);
    assert_names(
        &r,
        "FAT name collision",
        &[bad.to_str().unwrap(), "EFI/BOOT/"],
    );
}

#[test]
fn refuses_the_same_version() {
    let s = Scene::new();
    let copy = s.path("Tails-6.11-copy.iso");
    fs::copy(iso("6.11"), &copy).unwrap();
    let r = s.refuse("6.11 -> 6.11", &iso("6.11"), &copy, &[]);
    assert_names(&r, "6.11 -> 6.11", &["6.11", "nothing to upgrade"]);
}

#[test]
fn refuses_a_downgrade() {
    let s = Scene::new();
    let r = s.refuse("6.10 -> 6.9", &iso("6.10"), &iso("6.9"), &[]);
    assert_names(&r, "6.10 -> 6.9", &["6.9", "6.10", "older"]);
}

#[test]
fn refuses_output_equal_to_an_input() {
    let s = Scene::new();
    let inputs = s.path("in");
    fs::create_dir(&inputs).unwrap();
    let (old, new) = (inputs.join("old.iso"), inputs.join("new.iso"));
    fs::copy(iso("6.9"), &old).unwrap();
    fs::copy(iso("6.10"), &new).unwrap();
    let (old_sha, new_sha) = (sha256_file(&old), sha256_file(&new));
    let other_spelling = inputs.join("../in/./new.iso");
    for out in [&old, &new, &other_spelling] {
        let what = format!("--out {}", out.display());
        let r = expect_refusal(
            &what,
            build_cmd(&old, &new, out).arg(format!("--source-date-epoch={EPOCH}")),
            &[&inputs, s.tmp.path(), &s.out],
        );
        assert_names(&r, &what, &[out.to_str().unwrap()]);
        assert_eq!(sha256_file(&old), old_sha, "{what}: old input changed");
        assert_eq!(sha256_file(&new), new_sha, "{what}: new input changed");
    }
}

#[test]
fn refuses_a_missing_output_directory() {
    let s = Scene::new();
    let missing = s.path("no-such-dir");
    let r = expect_refusal(
        "missing output directory",
        build_cmd(&iso("6.9"), &iso("6.10"), &missing.join("kit.iuk"))
            .arg(format!("--source-date-epoch={EPOCH}")),
        &[s.tmp.path(), &s.out],
    );
    assert_names(&r, "missing output directory", &["no-such-dir"]);
    assert!(!missing.exists());
}

#[test]
fn refuses_a_missing_input() {
    let s = Scene::new();
    let missing = s.path("Tails-9.99.iso");
    let r = s.refuse("missing new", &iso("6.9"), &missing, &[]);
    assert_names(&r, "missing new", &[missing.to_str().unwrap()]);
}

#[test]
fn refuses_a_bad_product_name() {
    let s = Scene::new();
    let r = s.refuse(
        "--product 'a b'",
        &iso("6.9"),
        &iso("6.10"),
        &["--product", "a b"],
    );
    assert_names(&r, "--product 'a b'", &["a b"]);
    s.refuse(
        "--product ../x",
        &iso("6.9"),
        &iso("6.10"),
        &["--product", "../x"],
    );
}

#[test]
fn refuses_the_layer_name_filesystem() {
    let s = Scene::new();
    for name in ["filesystem", "FileSystem"] {
        let what = format!("--layer-name {name}");
        let r = s.refuse(&what, &iso("6.9"), &iso("6.10"), &["--layer-name", name]);
        assert_names(&r, &what, &[name]);
    }
}

/// Directory inputs (ISOs extracted by osirrox) give the same kit except control.yml's
/// `old-iso-sha256: null` and `new-iso-sha256: null`; the layer and every overlay file are
/// byte-identical.
#[test]
fn directory_inputs_give_the_same_kit_but_null_iso_hashes() {
    if !tools_or_skip(&["osirrox", "unsquashfs"]) {
        return;
    }
    let t = tmpdir();
    for (from, to) in [("6.9", "6.10"), ("6.10", "6.11")] {
        let what = format!("{from} -> {to} from directories");
        let (old_dir, new_dir) = (
            t.path().join(format!("dir-{from}")),
            t.path().join(format!("dir-{to}")),
        );
        for (d, v) in [(&old_dir, from), (&new_dir, to)] {
            if !d.exists() {
                osirrox_extract(&iso(v), "/", d);
            }
        }
        let from_isos = build_pair(from, to, &[]);
        let from_dirs = t.path().join(format!("dirs-{from}-{to}.iuk"));
        build_kit(&old_dir, &new_dir, &from_dirs, &[]);
        let a = unpack(&from_isos, &t.path().join(format!("u-iso-{from}-{to}")));
        let b = unpack(&from_dirs, &t.path().join(format!("u-dir-{from}-{to}")));
        let strip = |s: &[Entry]| -> Vec<Entry> {
            s.iter()
                .filter(|e| e.path != b"control.yml")
                .cloned()
                .collect()
        };
        assert_same_tree(&strip(&a.entries), &strip(&b.entries), &what);
        let layer = format!("overlay/{}", layer_path(from, to));
        assert_eq!(
            sha256_file(&a.dir.join(&layer)),
            sha256_file(&b.dir.join(&layer)),
            "{what}: layer"
        );
        let expected = a
            .control_text
            .replace(
                &format!("old-iso-sha256: \"{}\"", sha256_file(&iso(from))),
                "old-iso-sha256: null",
            )
            .replace(
                &format!("new-iso-sha256: \"{}\"", sha256_file(&iso(to))),
                "new-iso-sha256: null",
            );
        assert_ne!(
            expected, a.control_text,
            "{what}: ISO hashes in the ISO kit"
        );
        assert_eq!(b.control_text, expected, "{what}: control.yml");
        assert!(b.control.old_iso_sha256.is_none() && b.control.new_iso_sha256.is_none());
    }
}

/// `--timings` prints every phase's wall time on stderr, one line each, and changes no byte.
#[test]
fn timings_name_every_phase_and_change_nothing() {
    let t = tmpdir();
    let out = t.path().join("timed.iuk");
    let r = build_kit(&iso("6.9"), &iso("6.10"), &out, &["--timings"]);
    let stderr = &r.stderr;
    let phases: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("iuk-build: timing: "))
        .collect();
    for want in [
        "hashing",
        "hashing old",
        "compressing",
        "verifying",
        "writing kit",
    ] {
        let line = phases
            .iter()
            .find(|p| {
                p.strip_prefix(want).is_some_and(|r| {
                    r.starts_with(' ') && r[1..].starts_with(|c: char| c.is_ascii_digit())
                })
            })
            .unwrap_or_else(|| panic!("no timing of phase {want:?}: {stderr}"));
        let secs = line[want.len()..].trim().trim_end_matches(" s");
        assert!(secs.parse::<f64>().is_ok_and(|s| s >= 0.0), "{line}");
    }
    assert_eq!(
        sha256_file(&out),
        sha256_file(&build_pair("6.9", "6.10", &[])),
        "--timings changed the kit"
    );
}

// ------------------------------------------------------------------------------------------------
// 7. --json

#[test]
fn json_summary_matches_the_kit() {
    if !tools_or_skip(&["unsquashfs"]) {
        return;
    }
    let t = tmpdir();
    for (from, to) in [("6.9", "6.10"), ("6.11", "6.11.1")] {
        let what = format!("{from} -> {to}");
        let out = t.path().join(format!("{from}-{to}.iuk"));
        let r = build_kit(&iso(from), &iso(to), &out, &["--json"]);
        let v: serde_json::Value = serde_json::from_slice(&r.stdout)
            .unwrap_or_else(|e| panic!("{what}: --json output is not JSON ({e}): {r}"));
        let num = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("{what}: no integer `{k}`: {v}"))
        };
        let diff = |k: &str| {
            v["diff"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("{what}: no integer `diff.{k}`: {v}"))
        };
        assert_eq!(
            v["kit_sha256"].as_str(),
            Some(sha256_file(&out).as_str()),
            "{what}: {v}"
        );
        assert_eq!(
            num("kit_bytes"),
            fs::metadata(&out).unwrap().len(),
            "{what}: {v}"
        );
        let text = String::from_utf8(unsquashfs_cat(&out, "control.yml")).unwrap();
        let c = Control::from_yaml(&text).unwrap();
        let layer = c
            .overlay
            .iter()
            .find(|f| f.path == layer_path(from, to))
            .expect("layer listed");
        assert_eq!(num("layer_bytes"), layer.size, "{what}: {v}");
        assert_eq!(num("overlay_files"), c.overlay.len() as u64, "{what}: {v}");
        assert_eq!(
            num("delete_files"),
            c.delete_files.len() as u64,
            "{what}: {v}"
        );
        assert_eq!(
            v["old_tree_digest"].as_str(),
            Some(c.old_tree_digest.as_str())
        );
        assert_eq!(
            v["new_tree_digest"].as_str(),
            Some(c.new_tree_digest.as_str())
        );
        assert_eq!(v["from_version"].as_str(), Some(from), "{what}: {v}");
        assert_eq!(v["to_version"].as_str(), Some(to), "{what}: {v}");
        assert_eq!(v["layer"].as_str(), Some(layer_name(from, to).as_str()));
        let counts = ["added", "changed", "metadata_only", "removed"].map(diff);
        if (from, to) == ("6.11", "6.11.1") {
            // Only /usr/lib/os-release changes (testdata/README.md).
            assert_eq!(counts, [0, 1, 0, 0], "{what}: diff counts: {v}");
        } else {
            assert!(counts.iter().all(|n| *n > 0), "{what}: diff counts: {v}");
        }
    }
}

/// The fixture ISOs are the committed bytes that the golden hashes refer to.
#[test]
fn fixture_isos_are_the_committed_bytes() {
    let sums = fs::read_to_string(fixture("fixtures.sha256")).unwrap();
    let mut n = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, name) = line.split_once("  ").expect("sha256sum format");
        assert_eq!(
            sha256_file(&fixture(name.trim_start_matches('*'))),
            hash,
            "testdata/{name} differs from fixtures.sha256: the golden hashes refer to those bytes"
        );
        n += 1;
    }
    assert_eq!(n, 4, "fixtures.sha256 lists the four ISOs");
}

/// The mtime of every file of an ISO, by path, as osirrox extracts it (an independent reader).
fn iso_mtimes(iso: &Path, dir: &Path) -> std::collections::HashMap<Vec<u8>, i64> {
    if !dir.exists() {
        osirrox_extract(iso, "/", dir);
    }
    snapshot(dir)
        .into_iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| (e.path, e.mtime))
        .collect()
}

/// The ISO path of an installed boot-file path (syslinux/ came from isolinux/).
fn installed_to_iso(path: &[u8]) -> Vec<u8> {
    match path.strip_prefix(b"syslinux/".as_slice()) {
        Some(b"syslinux.cfg") => b"isolinux/isolinux.cfg".to_vec(),
        Some(rest) => [b"isolinux/".as_slice(), rest].concat(),
        None => path.to_vec(),
    }
}

/// One run builds a kit from each old release to the new one (`--old` repeated, `--out-dir`):
/// each kit is byte-identical to its single build, `--json` lists them all, and the names and
/// outputs of every kit are checked before the first is written.
#[test]
fn every_kit_of_a_release_in_one_run() {
    let s = Scene::new();
    let r = run_ok(
        iuk_command("iuk-build")
            .args(["build", "--new"])
            .arg(iso("6.11"))
            .arg("--old")
            .arg(iso("6.9"))
            .arg("--old")
            .arg(iso("6.10"))
            .arg("--out-dir")
            .arg(&s.out)
            .arg(format!("--source-date-epoch={EPOCH}"))
            .arg("--json"),
    );
    let reports: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let reports = reports.as_array().expect("--json lists every kit");
    assert_eq!(reports.len(), 2);
    for (report, from) in reports.iter().zip(["6.9", "6.10"]) {
        let kit = s.out.join(format!("Tails_amd64_{from}_to_6.11.iuk"));
        let single = build_pair(from, "6.11", &[]);
        assert_eq!(sha256_file(&kit), sha256_file(&single), "{from} -> 6.11");
        assert_eq!(report["kit_sha256"], sha256_file(&kit).as_str());
        assert_eq!(report["from_version"], from);
        assert_eq!(report["output"], kit.to_str().unwrap());
    }

    // --from-version once per --old, in order.
    let named = s.path("named");
    fs::create_dir(&named).unwrap();
    run_ok(
        iuk_command("iuk-build")
            .args(["build", "--new"])
            .arg(iso("6.11"))
            .args(["--old".as_ref(), iso("6.9").as_os_str()])
            .args(["--old".as_ref(), iso("6.10").as_os_str()])
            .args(["--from-version", "6.9.0", "--from-version", "6.10.0"])
            .arg("--out-dir")
            .arg(&named)
            .arg(format!("--source-date-epoch={EPOCH}")),
    );
    let mut names: Vec<String> = fs::read_dir(&named)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Tails_amd64_6.10.0_to_6.11.iuk",
            "Tails_amd64_6.9.0_to_6.11.iuk"
        ]
    );

    // Refused before any kit is written: --out with several --old, a --from-version count that
    // does not match, two kits to one file, and a bad pair among good ones.
    let refusals: [(&str, Vec<&str>, &str); 4] = [
        ("--out with two --old", vec!["--out", "k.iuk"], "--out-dir"),
        (
            "one --from-version for two --old",
            vec!["--from-version", "6.9"],
            "one per --old",
        ),
        (
            "the same old twice",
            vec!["--old", "OLD69", "--out-dir", "OUT"],
            "same file",
        ),
        (
            "a downgrade among the olds",
            vec!["--old", "NEW", "--out-dir", "OUT"],
            "nothing to upgrade",
        ),
    ];
    for (what, extra, needle) in refusals {
        let out = s.out.to_str().unwrap().to_string();
        let (o69, new) = (iso("6.9"), iso("6.11"));
        let extra: Vec<String> = extra
            .iter()
            .map(|a| match *a {
                "OLD69" => o69.to_str().unwrap().to_string(),
                "NEW" => new.to_str().unwrap().to_string(),
                "OUT" => out.clone(),
                a => a.to_string(),
            })
            .collect();
        let before = dir_names(&s.out);
        let r = expect_refusal(
            what,
            iuk_command("iuk-build")
                .args(["build", "--new"])
                .arg(&new)
                .args(["--old".as_ref(), o69.as_os_str()])
                .args(["--old".as_ref(), iso("6.10").as_os_str()])
                .arg(format!("--source-date-epoch={EPOCH}"))
                .args(&extra)
                .current_dir(s.tmp.path()),
            &[s.tmp.path()],
        );
        assert_names(&r, what, &[needle]);
        assert_eq!(dir_names(&s.out), before, "{what}: a kit was written");
    }
}

/// A new release whose boot tree would not boot — its initrd gone, or a kernel its boot-loader
/// configuration names missing — is refused before a kit is written.
#[test]
fn refuses_a_new_release_that_would_not_boot() {
    if !tools_or_skip(&["osirrox"]) {
        return;
    }
    let s = Scene::new();
    let new = s.path("new");
    osirrox_extract(&iso("6.10"), "/", &new);
    fs::remove_file(new.join("live/initrd.img")).unwrap();
    let r = s.refuse("no initrd", &iso("6.9"), &new, &[]);
    assert_names(
        &r,
        "no initrd",
        &["initrd /live/initrd.img", "would not boot"],
    );

    osirrox_extract(
        &iso("6.10"),
        "/live/initrd.img",
        &new.join("live/initrd.img"),
    );
    let menu = new.join("isolinux/menu.cfg");
    let text = fs::read_to_string(&menu).unwrap();
    fs::write(
        &menu,
        text.replace("/live/vmlinuz", "/live/vmlinuz-missing"),
    )
    .unwrap();
    let r = s.refuse("a kernel the menu names is missing", &iso("6.9"), &new, &[]);
    assert_names(
        &r,
        "a kernel the menu names is missing",
        &["syslinux/menu.cfg", "kernel /live/vmlinuz-missing"],
    );
}

// ------------------------------------------------------------------------------------------------
// Block sources: the layer copies the new image's blocks when its settings equal the layer's

/// Text that xz shrinks, different for each `seed`.
fn text(len: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u32;
    while out.len() < len {
        out.extend_from_slice(format!("seed {seed} line {i} {}\n", i % 977).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// The 6.10 fixture as a release directory whose root filesystem also holds `/big` (three
/// full 1 MiB blocks and a tail), packed by mksquashfs with the layer's default settings (xz,
/// BCJ x86, 1 MiB blocks and dictionary), so the layer can copy its blocks.
fn release_with_big_file(dir: &Path) -> PathBuf {
    let rel = dir.join("new-release");
    osirrox_extract(&iso("6.10"), "/", &rel);
    let root = dir.join("root");
    let sqfs = rel.join("live/filesystem.squashfs");
    run_ok(
        Command::new("unsquashfs")
            .args(["-q", "-n", "-d"])
            .arg(&root)
            .arg(&sqfs),
    );
    fs::write(root.join("big"), text(3 * 1024 * 1024 + 4321, 1)).unwrap();
    fs::remove_file(&sqfs).unwrap();
    run_ok(Command::new("mksquashfs").arg(&root).arg(&sqfs).args([
        "-comp",
        "xz",
        "-Xbcj",
        "x86",
        "-b",
        "1M",
        "-noappend",
        "-no-progress",
        "-quiet",
        "-mkfs-time",
        "0",
    ]));
    rel
}

/// The layer of a build whose new image matches the layer's settings copies the full blocks
/// of the files it carries (`--json` counts them), and the kit does not depend on --jobs.
#[test]
fn layer_copies_the_new_images_blocks() {
    if !tools_or_skip(&["osirrox", "unsquashfs", "mksquashfs"]) {
        return;
    }
    let t = tmpdir();
    let new = release_with_big_file(t.path());
    let a = t.path().join("a.iuk");
    let r = build_kit(&iso("6.9"), &new, &a, &["--json", "--jobs", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    // /big's three full blocks, and those of the fixture's own files over 1 MiB: every full
    // block the layer holds is copied, none compressed (tails go to fragments).
    let copied = v["layer_copied_blocks"].as_u64().unwrap();
    assert!(copied >= 3, "{v}");
    assert_eq!(v["layer_compressed_blocks"].as_u64(), Some(0), "{v}");
    let b = t.path().join("b.iuk");
    let r = build_kit(&iso("6.9"), &new, &b, &["--jobs", "2"]);
    assert!(
        r.stdout_text().contains(&format!(
            "layer data blocks: {copied} copied from the new image"
        )),
        "{r}"
    );
    assert_eq!(sha256_file(&a), sha256_file(&b), "kit depends on --jobs");
    // Without the BCJ filter the settings differ: nothing is copied.
    let c = t.path().join("c.iuk");
    let r = build_kit(&iso("6.9"), &new, &c, &["--json", "--xz-bcj", "none"]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["layer_copied_blocks"].as_u64(), Some(0), "{v}");
    assert_eq!(v["layer_compressed_blocks"].as_u64(), Some(copied), "{v}");
}

/// A corrupted block of the new image is never copied into a kit: the build stops with a
/// one-line error naming the file, and writes no kit.
#[test]
fn a_corrupted_new_image_block_stops_the_build() {
    if !tools_or_skip(&["osirrox", "unsquashfs", "mksquashfs"]) {
        return;
    }
    let t = tmpdir();
    let new = release_with_big_file(t.path());
    let sqfs = new.join("live/filesystem.squashfs");
    let mut bytes = fs::read(&sqfs).unwrap();
    // Where /big's second block lies, found by our reader; one byte in its middle flipped.
    let block = {
        let archive = iuk::squashfs::archive::Archive::open(&sqfs).unwrap();
        let tree = archive.read_tree().unwrap();
        let node = tree
            .node(tree.root())
            .children
            .iter()
            .copied()
            .find(|n| tree.node(*n).name == b"big")
            .unwrap();
        let iuk::tree::InodeKind::File(c) = &tree.node_inode(node).kind else {
            panic!("/big is not a file");
        };
        iuk::squashfs::data::StoredFile::of(c)
            .unwrap()
            .raw_block(1)
            .unwrap()
    };
    let at = bytes
        .windows(block.len())
        .position(|w| w == block.as_slice())
        .unwrap();
    bytes[at + block.len() / 2] ^= 0x55;
    fs::write(&sqfs, &bytes).unwrap();
    let out = t.path().join("kit.iuk");
    let r = run(build_cmd(&iso("6.9"), &new, &out).arg(format!("--source-date-epoch={EPOCH}")));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(
        r.stderr.starts_with("iuk-build: error:")
            && r.stderr.lines().count() == 1
            && r.stderr.contains("big")
            && r.stderr.contains("block 1"),
        "{r}"
    );
    assert!(!out.exists(), "a kit was written");
}

/// `build --udf` writes, for each kit's from-version, the UDF `describe` makes for devices first
/// installed there from the same kits and URLs, byte for byte, at Tails' path layout.
#[test]
fn a_batch_writes_the_udf_of_every_initial_install_version() {
    let s = Scene::new();
    let base = "https://example.org/iuks/";
    let details = "https://example.org/news/6.11";
    let r = run_ok(
        iuk_command("iuk-build")
            .args(["build", "--new"])
            .arg(iso("6.11"))
            .args(["--old".as_ref(), iso("6.9").as_os_str()])
            .args(["--old".as_ref(), iso("6.10").as_os_str()])
            .arg("--out-dir")
            .arg(&s.out)
            .arg(format!("--source-date-epoch={EPOCH}"))
            .args([
                "--udf",
                "--kit-url-base",
                base,
                "--details-url",
                details,
                "--json",
            ]),
    );
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["kits"].as_array().map(Vec::len), Some(2), "{v}");
    let udfs = v["udfs"].as_array().expect("--json lists the UDFs");
    assert_eq!(udfs.len(), 2);
    let kit = |from: &str| s.out.join(format!("Tails_amd64_{from}_to_6.11.iuk"));
    for (u, (initial, kits)) in udfs
        .iter()
        .zip([("6.9", vec!["6.9", "6.10"]), ("6.10", vec!["6.10"])])
    {
        let path = s.out.join(format!(
            "upgrade/v2/Tails/{initial}/amd64/stable/upgrades.yml"
        ));
        assert_eq!(u["path"], path.to_str().unwrap());
        assert_eq!(u["initial_install_version"], initial);
        let mut d = iuk_command("iuk-build");
        d.args([
            "describe",
            "--product",
            "Tails",
            "--initial-install-version",
            initial,
        ])
        .args(["--version", "6.11", "--details-url", details]);
        for from in kits {
            let k = kit(from);
            let url = format!("https://example.org/iuks/Tails_amd64_{from}_to_6.11.iuk");
            d.arg("--kit").arg(&k).arg("--kit-url").arg(url);
        }
        let want = run_ok(&mut d).stdout;
        assert_eq!(
            fs::read(&path).unwrap(),
            want,
            "the UDF for {initial} differs from describe's"
        );
    }
    // --udf needs the URL base and an output directory.
    let r = iuk_e2e::run(
        iuk_command("iuk-build")
            .args(["build", "--new"])
            .arg(iso("6.11"))
            .arg("--old")
            .arg(iso("6.9"))
            .args(["--udf", "--out-dir"])
            .arg(&s.out),
    );
    assert_eq!(r.code, Some(2), "{r}");
}
