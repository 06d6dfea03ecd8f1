//! End-to-end tests of binary-delta kits (FORMAT 3, DESIGN.md "Binary deltas (FORMAT 3)")
//! through the real binaries:
//!
//! - on a generated release pair ([`iuk_e2e::delta_pair`]) the FORMAT 3 kit holds every source
//!   kind, matched bases for a renamed kernel ABI directory and a versioned soname, a recipe whose
//!   layer tree digest, layer size and sha256 are those of the FORMAT 2 kit's layer, and every
//!   other control.yml key of the FORMAT 2 kit; its changed boot files are patched (same path)
//!   or copied (a moved file) from the old release's, or carried whole;
//! - applied on a medium initialised from the old release it gives the medium the FORMAT 2 kit
//!   gives, `verify --deep` passes, and the kernel's overlay view of base + rebuilt layer equals
//!   the new root filesystem (mounted by the kernel);
//! - the fixture chain built with `--deltas` gives the media of the FORMAT 2 chain (stacking and
//!   cumulative), and the kits that fall back to FORMAT 2 are byte-identical to FORMAT 2 kits;
//! - damaged or inconsistent FORMAT 3 kits, and media whose boot files are not the ones a kit
//!   re-creates its boot files from, are refused with one line naming the kit or the medium and
//!   the file, the medium byte-for-byte unchanged;
//! - the kit is reproducible (threads, time zone, locale, umask, working directory, TMPDIR) and
//!   `iuk-build rebuild` reproduces it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use iuk::delta::recipe::{boot_patch_path, SourceKind, RECIPE_IMAGE};
use iuk::diff::HashedTree;
use iuk::io::{ReadAt, SubImage};
use iuk::kit::{container_params, container_tree_full, Control, Kit, OverlayFile};
use iuk::squashfs::archive::Archive;
use iuk::squashfs::write::write_image;
use iuk::tree::{hex, Content, InodeKind, Tree};
use iuk_e2e::{
    assert_same_outputs, assert_same_tree, build_cmd, delta_pair, fixture_kit_at, iso, iuk_command,
    kernel_or_skip, mount_overlay, mount_squashfs, require_root_or_skip, run, run_ok, sha256_file,
    sha256_hex, snapshot, tools_or_skip, Entry, Run,
};

use crate::apply::{assert_one_line_error, ia, tmpdir};

const EPOCH: u32 = 1_700_000_000;

// ------------------------------------------------------------------------------------------------
// Kits and helpers

/// The generated pair's FORMAT 2 and FORMAT 3 kits, built once per process (None: the tools to
/// make the pair are missing, skipped).
fn pair_kits() -> Option<&'static (PathBuf, PathBuf)> {
    if !tools_or_skip(&["mksquashfs", "gzip"]) {
        return None;
    }
    static KITS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    Some(KITS.get_or_init(|| {
        let (old, new) = delta_pair();
        let dir = old.parent().unwrap().to_path_buf();
        let (f2, f3) = (dir.join("f2.iuk"), dir.join("f3.iuk"));
        run_ok(build_cmd(&old, &new, &f2).arg(format!("--source-date-epoch={EPOCH}")));
        run_ok(
            build_cmd(&old, &new, &f3)
                .arg(format!("--source-date-epoch={EPOCH}"))
                .arg("--deltas"),
        );
        (f2, f3)
    }))
}

fn open_kit(path: &Path) -> Kit {
    Kit::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bytes of a file of a kit (the layer, the recipe image), read through our reader (the
/// container stores them, but may compress their last block).
fn kit_file(kit: &Path, path: &str) -> Vec<u8> {
    let k = open_kit(kit);
    let n = k
        .tree
        .lookup(path.as_bytes())
        .unwrap_or_else(|| panic!("{path} not in {}", kit.display()));
    let InodeKind::File(c) = &k.tree.node_inode(n).kind else {
        panic!("{path}: not a file in {}", kit.display())
    };
    c.read_all().unwrap()
}

/// The tree digest of an image held in memory.
fn tree_digest(image: Vec<u8>, what: &str) -> String {
    let whole: Arc<dyn ReadAt> = Arc::new(image);
    let len = whole.len();
    let a = Archive::from_image(Arc::new(SubImage::new(whole, 0, len).unwrap()), what.into())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let tree = a.read_tree().unwrap_or_else(|e| panic!("{what}: {e}"));
    hex(&HashedTree::new(tree, &|_| {}).unwrap().digest())
}

/// Every entry of a medium but the root: path → None (directory) or (size, sha256).
fn medium_files(root: &Path) -> BTreeMap<String, Option<(u64, String)>> {
    snapshot(root)
        .into_iter()
        .filter(|e| !e.path.is_empty())
        .map(|e| {
            let p = String::from_utf8(e.path).unwrap();
            (p, e.size.zip(e.sha256))
        })
        .collect()
}

/// The media `a` (FORMAT 2 kits applied) and `b` (FORMAT 3) hold the same files, except that a
/// rebuilt layer may differ in compressed bytes (DESIGN.md: the device checks the tree, not the
/// image bytes): each layer whose bytes differ must have the same size and tree digest, and the
/// states must differ only in those layers' sha256.
fn assert_same_media(a: &Path, b: &Path, what: &str) {
    let (mut fa, mut fb) = (medium_files(a), medium_files(b));
    let (mut sa, mut sb) = (
        fs::read_to_string(a.join("live/iuk-state.yml")).unwrap(),
        fs::read_to_string(b.join("live/iuk-state.yml")).unwrap(),
    );
    let layers: Vec<String> = fa
        .keys()
        .filter(|p| p.starts_with("live/") && p.ends_with(".squashfs"))
        .filter(|p| *p != "live/filesystem.squashfs")
        .cloned()
        .collect();
    for l in layers {
        let (Some(Some(va)), Some(Some(vb))) = (fa.get(&l).cloned(), fb.get(&l).cloned()) else {
            continue;
        };
        if va == vb {
            continue;
        }
        assert_eq!(va.0, vb.0, "{what}: {l}: rebuilt with another size");
        assert_eq!(
            tree_digest(fs::read(a.join(&l)).unwrap(), &l),
            tree_digest(fs::read(b.join(&l)).unwrap(), &l),
            "{what}: {l}: the rebuilt layer has another tree"
        );
        assert!(
            sa.contains(&va.1) && sb.contains(&vb.1),
            "{what}: {l}: state"
        );
        sa = sa.replace(&va.1, "LAYER-SHA256");
        sb = sb.replace(&vb.1, "LAYER-SHA256");
        fa.remove(&l);
        fb.remove(&l);
    }
    assert_eq!(
        sa, sb,
        "{what}: the states differ (beyond rebuilt layers' sha256)"
    );
    fa.remove("live/iuk-state.yml");
    fb.remove("live/iuk-state.yml");
    let mut d = Vec::new();
    for (p, va) in &fa {
        match fb.get(p) {
            None => d.push(format!("{p}: only in the first")),
            Some(vb) if vb != va => d.push(format!("{p}: {va:?} != {vb:?}")),
            Some(_) => {}
        }
    }
    for p in fb.keys().filter(|p| !fa.contains_key(*p)) {
        d.push(format!("{p}: only in the second"));
    }
    assert!(
        d.is_empty(),
        "{what}: the media differ ({} = FORMAT 2, {} = FORMAT 3):\n  {}",
        a.display(),
        b.display(),
        d.join("\n  ")
    );
}

/// `iuk-apply init --medium M --iso RELEASE` (an ISO or an extracted-ISO directory).
fn init(m: &Path, release: &Path) {
    run_ok(ia("init", m).arg("--iso").arg(release));
}

fn apply(m: &Path, kit: &Path) -> Run {
    run_ok(ia("apply", m).arg(kit))
}

/// The kernel's view of the medium's stack (module file, bottom first), overlaid.
fn kernel_stack(m: &Path) -> Vec<Entry> {
    let module = fs::read_to_string(m.join("live/Tails.module")).unwrap();
    let mounts: Vec<_> = module
        .lines()
        .map(|n| mount_squashfs(&m.join("live").join(n)))
        .collect();
    assert!(mounts.len() >= 2, "{module:?}");
    let lowers: Vec<&Path> = mounts.iter().rev().map(|m| m.path()).collect();
    let overlay = mount_overlay(&lowers);
    snapshot(overlay.path())
}

/// The file at `path` of the generated release root `release` (`Tails-7.x` → `Tails-7.x.root`).
fn root_file(release: &Path, path: &str) -> PathBuf {
    let name = release.file_name().unwrap().to_str().unwrap();
    release
        .parent()
        .unwrap()
        .join(format!("{name}.root"))
        .join(path)
}

// ------------------------------------------------------------------------------------------------
// The generated pair

/// FORMAT, every source kind, matched bases, the recipe against the FORMAT 2 kit's layer, and
/// every other control.yml key equal to the FORMAT 2 kit's.
#[test]
fn generated_pair_gives_every_source_kind_and_the_format_2_layer_tree() {
    let Some((f2, f3)) = pair_kits() else { return };
    let (old, new) = delta_pair();
    let (k2, k3) = (open_kit(f2), open_kit(f3));
    assert_eq!(k2.format, "2");
    assert_eq!(
        k3.format, "3",
        "the generated pair must give a FORMAT 3 kit"
    );
    assert!(k2.control.recipe.is_none());
    let recipe = k3
        .control
        .recipe
        .clone()
        .expect("FORMAT 3 kit without a recipe");
    let kinds: std::collections::BTreeSet<SourceKind> =
        recipe.files.iter().map(|f| f.source).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        SourceKind::ALL,
        "every source kind: {:#?}",
        recipe.files
    );
    let by_path: BTreeMap<&str, _> = recipe.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let expect = |path: &str, kinds: &[SourceKind], base: Option<&str>| {
        let f = by_path
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the recipe: {:#?}", recipe.files));
        assert!(kinds.contains(&f.source), "{path}: {f:?}");
        assert_eq!(f.base.as_deref(), base, "{path}: {f:?}");
        if let Some(b) = base {
            assert_eq!(
                f.base_sha256.as_deref(),
                Some(sha256_file(&root_file(&old, b)).as_str()),
                "{path}: base-sha256"
            );
        }
        assert_eq!(
            f.sha256,
            sha256_file(&root_file(&new, path)),
            "{path}: sha256"
        );
        assert_eq!(f.size, fs::metadata(root_file(&new, path)).unwrap().len());
    };
    let patch = [SourceKind::Zstd, SourceKind::Bsdiff];
    let copy = [SourceKind::Copy];
    let whole = [SourceKind::Whole];
    expect(
        "lib/modules/6.1.0-28-amd64/kernel/foo.ko",
        &patch,
        Some("lib/modules/6.1.0-26-amd64/kernel/foo.ko"),
    );
    expect(
        "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.4",
        &patch,
        Some("usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3"),
    );
    expect("usr/bin/tool-zstd", &patch, Some("usr/bin/tool-zstd"));
    expect("usr/bin/tool-bsdiff", &patch, Some("usr/bin/tool-bsdiff"));
    expect("usr/bin/hl-a", &patch, Some("usr/bin/hl-a"));
    expect(
        "usr/share/new-place/data.bin",
        &copy,
        Some("usr/share/old-place/data.bin"),
    );
    expect("usr/bin/mode-only", &copy, Some("usr/bin/mode-only"));
    expect("usr/bin/xattr-only", &copy, Some("usr/bin/xattr-only"));
    let repack = [SourceKind::Repack];
    for f in [
        "usr/share/doc/changelog.gz",
        "usr/share/doc/news.xz",
        "usr/lib/app/omni.ja",
    ] {
        expect(f, &repack, Some(f));
    }
    expect("usr/share/new-place/fresh.bin", &whole, None);
    assert!(
        !by_path.contains_key("usr/bin/hl-b"),
        "a hard-link group is one recipe file"
    );

    // Boot files: patched against the old file at the same path (the initrd, an uncompressed
    // cpio and a gzip'd one, as a repack patch of its plain content), copied from the old path
    // of a moved file; patches under boot-patches/, neither kind under overlay/ (control.yml's
    // overlay still lists what ends on the medium).
    let boot: BTreeMap<&str, _> = recipe
        .boot_files
        .iter()
        .map(|b| (b.path.as_str(), b))
        .collect();
    for (path, kinds, base, old_file) in [
        (
            "EFI/BOOT/grub.cfg",
            &patch[..],
            "EFI/BOOT/grub.cfg",
            "EFI/BOOT/grub.cfg",
        ),
        (
            "EFI/BOOT/bootx64.efi",
            &patch[..],
            "EFI/BOOT/bootx64.efi",
            "EFI/BOOT/bootx64.efi",
        ),
        (
            "EFI/BOOT/splash.bin",
            &copy[..],
            "syslinux/splash.bin",
            "isolinux/splash.bin",
        ),
        (
            "live/initrd.img",
            &repack[..],
            "live/initrd.img",
            "live/initrd.img",
        ),
    ] {
        let b = boot
            .get(path)
            .unwrap_or_else(|| panic!("{path}: not a boot file of the recipe: {boot:#?}"));
        assert!(kinds.contains(&b.source), "{path}: {b:?}");
        assert_eq!(b.base, base, "{path}: {b:?}");
        assert_eq!(b.base_sha256, sha256_file(&old.join(old_file)), "{path}");
        let e = k3.control.overlay.iter().find(|e| e.path == path).unwrap();
        assert_eq!(e.sha256, sha256_file(&new.join(path)), "{path}");
        let in_kit = |p: &str| k3.tree.lookup(p.as_bytes()).is_some();
        assert!(!in_kit(&format!("overlay/{path}")), "{path} under overlay/");
        let at = boot_patch_path(path);
        match b.patch_size {
            Some(n) => {
                let bytes = kit_file(f3, &at);
                assert_eq!(bytes.len() as u64, n, "{at}");
                assert_eq!(b.patch_sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
                assert!(
                    n * 10 < e.size,
                    "{path}: a patch of {n} bytes for {}",
                    e.size
                );
            }
            None => assert!(!in_kit(&at), "{at}: a copy carries nothing"),
        }
    }
    // The kernel (nothing in common), a small loader configuration (its record would cost more
    // than its patch saves): whole.
    for p in ["live/vmlinuz", "syslinux/menu.cfg"] {
        assert!(!boot.contains_key(p), "{p}: {boot:#?}");
        assert!(
            k3.tree.lookup(format!("overlay/{p}").as_bytes()).is_some(),
            "{p}"
        );
    }

    // The recipe describes the FORMAT 2 kit's layer.
    let layer_path = format!("overlay/{}", k2.control.layer_path());
    let layer = kit_file(f2, &layer_path);
    assert_eq!(recipe.layer_size, layer.len() as u64);
    assert_eq!(recipe.layer_sha256, sha256_hex(&layer));
    assert_eq!(
        recipe.layer_tree_digest,
        tree_digest(layer, "the FORMAT 2 layer"),
        "recipe.layer-tree-digest"
    );
    let image = kit_file(f3, RECIPE_IMAGE);
    assert_eq!(recipe.image_size, image.len() as u64);
    assert_eq!(recipe.image_sha256, sha256_hex(&image));
    // The recipe image is the layer's tree: whiteouts for removed files and directories (the
    // old ABI directory, a directory of the old release, a file), the new symlinks, a
    // copy's payload empty.
    let tree = {
        let whole: Arc<dyn ReadAt> = Arc::new(image);
        let len = whole.len();
        let a = Archive::from_image(Arc::new(SubImage::new(whole, 0, len).unwrap()), "r".into())
            .unwrap();
        a.read_tree().unwrap()
    };
    let kind = |p: &str| {
        let n = tree
            .lookup(p.as_bytes())
            .unwrap_or_else(|| panic!("{p} not in the recipe image"));
        tree.node_inode(n).kind.clone()
    };
    for p in [
        "lib/modules/6.1.0-26-amd64",
        "opt/removed-dir",
        "usr/share/old-place",
        "usr/share/doc/obsolete.txt",
        "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3",
    ] {
        assert!(
            matches!(kind(p), InodeKind::CharDev(0)),
            "{p}: not a whiteout in the recipe image"
        );
    }
    assert!(matches!(
        kind("usr/lib/x86_64-linux-gnu/libfoo.so.1"),
        InodeKind::Symlink(t) if t == b"libfoo.so.1.2.4"
    ));
    assert!(matches!(kind("usr/bin/new-link"), InodeKind::Symlink(t) if t == b"tool-zstd"));
    assert!(matches!(kind("usr/bin/mode-only"), InodeKind::File(c) if c.size == 0));
    assert!(
        fs::metadata(f3).unwrap().len() < fs::metadata(f2).unwrap().len(),
        "FORMAT 3 only when smaller"
    );

    // Every other key is the FORMAT 2 kit's. The overlay lacks the layer and the boot files
    // whose content the old release has already (FORMAT 2 carries EFI/, syslinux/ and utils/
    // whole for Tails' installer; iuk keeps unchanged files): compared with a medium initialised
    // from the old release.
    let (mut c2, mut c3) = (k2.control.clone(), k3.control.clone());
    let t = tmpdir();
    let m_old = t.path().join("m");
    init(&m_old, &old);
    let o2: Vec<_> = c2
        .overlay
        .iter()
        .filter(|e| format!("overlay/{}", e.path) != layer_path)
        .cloned()
        .collect();
    assert_eq!(
        o2.len() + 1,
        c2.overlay.len(),
        "the FORMAT 2 overlay has the layer"
    );
    let changed: Vec<_> = o2
        .iter()
        .filter(|e| {
            let p = m_old.join(&e.path);
            !p.is_file() || sha256_file(&p) != e.sha256
        })
        .cloned()
        .collect();
    assert!(
        changed.len() < o2.len() && !changed.is_empty(),
        "the generated pair has changed and unchanged boot files: {o2:#?}"
    );
    assert_eq!(
        c3.overlay, changed,
        "the FORMAT 3 overlay: the FORMAT 2 one without the layer and the unchanged boot files"
    );
    c2.overlay.clear();
    c3.overlay.clear();
    c3.recipe = None;
    assert_eq!(
        serde_json::to_value(&c2).unwrap(),
        serde_json::to_value(&c3).unwrap(),
        "control.yml keys other than overlay and recipe"
    );
}

/// Applied on a medium initialised from the old release: the FORMAT 2 kit's medium, verify
/// --deep, and (kernel) the overlay view of base + rebuilt layer is the new root filesystem.
#[test]
fn generated_pair_applies_like_format_2() {
    let Some((f2, f3)) = pair_kits() else { return };
    let (old, new) = delta_pair();
    let t = tmpdir();
    let (m2, m3) = (t.path().join("m2"), t.path().join("m3"));
    init(&m2, &old);
    init(&m3, &old);
    // `check` tells how the layer and the boot files will be made, per source kind.
    let c = run_ok(ia("check", &m3).arg(f3).arg("--json"));
    let c: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(c["format"], "3", "{c}");
    let kinds = |key: &str| -> Vec<String> {
        c[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key}: {c}"))
            .iter()
            .filter(|k| k["files"].as_u64() > Some(0))
            .map(|k| k["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        kinds("layer_sources"),
        ["copy", "zstd", "bsdiff", "repack", "whole"],
        "{c}"
    );
    assert!(!kinds("boot_sources").is_empty(), "{c}");
    let text = run_ok(ia("check", &m3).arg(f3));
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("FORMAT 3: the layer is rebuilt on this medium from copy "),
        "{text}"
    );
    let c2 = run_ok(ia("check", &m2).arg(f2).arg("--json"));
    let c2: serde_json::Value = serde_json::from_slice(&c2.stdout).unwrap();
    assert_eq!(c2["format"], "2", "{c2}");
    apply(&m2, f2);
    apply(&m3, f3);
    assert_same_media(&m2, &m3, "generated pair");
    run_ok(ia("verify", &m3).arg("--deep"));
    let s = run_ok(ia("status", &m3).arg("--json"));
    let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(s["current_version"], "7.1", "{s}");

    if !(require_root_or_skip() && kernel_or_skip()) {
        return;
    }
    let want = {
        let m = mount_squashfs(&new.join("live/filesystem.squashfs"));
        snapshot(m.path())
    };
    assert!(
        want.iter().any(|e| !e.xattrs.is_empty()) && want.iter().any(|e| e.link_group.is_some()),
        "the new root has xattrs and hard links"
    );
    assert_same_tree(&want, &kernel_stack(&m3), "FORMAT 3 medium: kernel stack");
}

// ------------------------------------------------------------------------------------------------
// Refusals

/// `stderr` without the warning a medium without keys gives before it reads the kit.
fn without_key_warning(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("no trusted keys on this medium"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A copy of the FORMAT 3 kit `src` with control.yml, the recipe image's tree and the FORMAT
/// file edited; the recipe's image-size and image-sha256 follow the rewritten image unless
/// `edit_control` changes them afterwards.
fn rewrite_kit(
    src: &Path,
    out: &Path,
    format: Option<&[u8]>,
    edit_image: impl FnOnce(&mut Tree) -> Option<Vec<u8>>,
    edit_control: impl FnOnce(&mut Control),
) {
    rewrite_kit_with(src, out, format, edit_image, |_| {}, edit_control)
}

/// [`rewrite_kit`] that also edits the boot files' patches (container path, bytes).
fn rewrite_kit_with(
    src: &Path,
    out: &Path,
    format: Option<&[u8]>,
    edit_image: impl FnOnce(&mut Tree) -> Option<Vec<u8>>,
    edit_patches: impl FnOnce(&mut Vec<(String, Vec<u8>)>),
    edit_control: impl FnOnce(&mut Control),
) {
    let kit = open_kit(src);
    let mut control = kit.control.clone();
    let boot_files = control
        .recipe
        .as_ref()
        .map(|r| r.boot_files.clone())
        .unwrap_or_default();
    let mut patches: Vec<(String, Vec<u8>)> = boot_files
        .iter()
        .filter(|b| b.patch_size.is_some())
        .map(|b| {
            let p = boot_patch_path(&b.path);
            (p.clone(), kit_file(src, &p))
        })
        .collect();
    edit_patches(&mut patches);
    let files: Vec<OverlayFile> = control
        .overlay
        .iter()
        .filter(|e| !boot_files.iter().any(|b| b.path == e.path))
        .map(|e| {
            let p = format!("overlay/{}", e.path);
            let inode = kit.tree.node_inode(kit.tree.lookup(p.as_bytes()).unwrap());
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
    let mut image = None;
    let layer_params = control.layer_params.clone();
    if let Some(recipe) = &mut control.recipe {
        let bytes = kit_file(src, RECIPE_IMAGE);
        let whole: Arc<dyn ReadAt> = Arc::new(bytes);
        let len = whole.len();
        let a = Archive::from_image(Arc::new(SubImage::new(whole, 0, len).unwrap()), "r".into())
            .unwrap();
        let mut tree = a.read_tree().unwrap();
        let bytes = match edit_image(&mut tree) {
            Some(raw) => raw,
            None => {
                let mut v = std::io::Cursor::new(Vec::new());
                let p = layer_params.to_writer(1).unwrap();
                write_image(&tree, &p, &mut v, &|_| {}).unwrap();
                v.into_inner()
            }
        };
        recipe.image_size = bytes.len() as u64;
        recipe.image_sha256 = sha256_hex(&bytes);
        image = Some(Content::from_bytes(bytes));
    }
    edit_control(&mut control);
    let patches: Vec<(String, Content)> = patches
        .into_iter()
        .map(|(p, b)| (p, Content::from_bytes(b)))
        .collect();
    let mut tree = container_tree_full(&control, &files, image, &patches).unwrap();
    if let Some(f) = format {
        let id = tree.node(tree.lookup(b"FORMAT").unwrap()).inode;
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

/// The recipe file of `path` in the recipe image's tree, with its content replaced by `f(old)`.
fn edit_payload(tree: &mut Tree, path: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let n = tree
        .lookup(path.as_bytes())
        .unwrap_or_else(|| panic!("{path} not in the recipe image"));
    let id = tree.node(n).inode;
    let InodeKind::File(c) = &tree.inode(id).kind else {
        panic!("{path}: not a file")
    };
    let bytes = f(c.read_all().unwrap());
    tree.inode_mut(id).kind = InodeKind::File(Content::from_bytes(bytes));
}

/// Each damaged or inconsistent FORMAT 3 kit is refused before any write: exit status 1, one
/// line naming the kit or the file, the medium byte-for-byte unchanged.
#[test]
fn refuses_damaged_format_3_kits_before_any_write() {
    let Some((f2, f3)) = pair_kits() else { return };
    let (old, _) = delta_pair();
    let t = tmpdir();
    let m = t.path().join("m");
    init(&m, &old);
    let before = snapshot(&m);
    let k3 = open_kit(f3);
    let recipe = k3.control.recipe.clone().unwrap();
    let of_kind = |k: SourceKind| {
        recipe
            .files
            .iter()
            .find(|f| f.source == k)
            .unwrap_or_else(|| panic!("no {k:?} file"))
            .clone()
    };
    let (zstd, bsdiff) = (of_kind(SourceKind::Zstd), of_kind(SourceKind::Bsdiff));
    let repack = of_kind(SourceKind::Repack);
    let f3s = f3.to_str().unwrap().to_string();
    let mut n = 0;
    let mut check = |subs: &[&str], what: &str, kit: &Path, needles: &[&str]| {
        for &sub in subs {
            let mut r = run(ia(sub, &m).arg(kit));
            // A medium without keys warns before it reads the kit; the refusal is the rest.
            r.stderr = without_key_warning(&r.stderr);
            for needle in needles {
                assert_one_line_error(&r, &format!("{sub}: {what}"), needle);
            }
            assert_same_tree(
                &before,
                &snapshot(&m),
                &format!("{sub}: {what}: medium changed"),
            );
        }
        n += 1;
    };
    let both = ["check", "apply"];
    let kit = |name: &str| t.path().join(format!("{name}.iuk"));

    // A base file whose sha256 differs from the recipe's (the medium's file "changed").
    let k = kit("other-base");
    rewrite_kit(
        f3,
        &k,
        None,
        |_| None,
        |c| {
            let r = c.recipe.as_mut().unwrap();
            let f = r.files.iter_mut().find(|f| f.path == zstd.path).unwrap();
            f.base_sha256 = Some("ab".repeat(32));
        },
    );
    check(
        &both,
        "base with another sha256",
        &k,
        &[zstd.base.as_deref().unwrap()],
    );
    // A base file the medium lacks.
    let k = kit("missing-base");
    rewrite_kit(
        f3,
        &k,
        None,
        |_| None,
        |c| {
            let r = c.recipe.as_mut().unwrap();
            let f = r.files.iter_mut().find(|f| f.path == bsdiff.path).unwrap();
            f.base = Some("usr/bin/not-on-the-medium".into());
        },
    );
    check(&both, "missing base", &k, &["usr/bin/not-on-the-medium"]);
    // An unknown recipe version.
    let k = kit("version-2");
    rewrite_kit(
        f3,
        &k,
        None,
        |_| None,
        |c| c.recipe.as_mut().unwrap().version = 2,
    );
    check(
        &both,
        "recipe version 2",
        &k,
        &[k.to_str().unwrap(), "version 2"],
    );
    // A recipe missing a file.
    let k = kit("file-missing");
    rewrite_kit(
        f3,
        &k,
        None,
        |_| None,
        |c| {
            c.recipe
                .as_mut()
                .unwrap()
                .files
                .retain(|f| f.path != zstd.path);
        },
    );
    check(&both, "recipe without a file", &k, &[&zstd.path]);
    // A truncated recipe image (size and sha256 recorded for the truncated bytes).
    let k = kit("truncated-image");
    let half = kit_file(f3, RECIPE_IMAGE);
    let half = half[..half.len() / 2].to_vec();
    rewrite_kit(f3, &k, None, |_| Some(half), |_| {});
    check(&both, "truncated recipe image", &k, &[k.to_str().unwrap()]);
    // A recipe image that does not match control.yml's image-sha256.
    let k = kit("image-sha");
    rewrite_kit(
        f3,
        &k,
        None,
        |_| None,
        |c| {
            c.recipe.as_mut().unwrap().image_sha256 = "cd".repeat(32);
        },
    );
    check(
        &both,
        "recipe image sha256",
        &k,
        &[k.to_str().unwrap(), RECIPE_IMAGE],
    );
    // FORMAT 3 without a recipe; FORMAT 2 with one.
    let k = kit("format-3-no-recipe");
    rewrite_kit(f2, &k, Some(b"3"), |_| None, |_| {});
    check(
        &both,
        "FORMAT 3 without a recipe",
        &k,
        &[k.to_str().unwrap()],
    );
    let k = kit("format-2-with-recipe");
    rewrite_kit(f3, &k, Some(b"2"), |_| None, |_| {});
    check(&both, "FORMAT 2 with a recipe", &k, &[k.to_str().unwrap()]);
    // A patch with one byte flipped, the image's size and sha256 updated: only re-creating the
    // file can tell, which `check` and `apply` do for every patch before anything is written.
    for f in [&zstd, &bsdiff] {
        let what = format!("corrupt {} patch", f.source.name());
        let k = kit(&format!("corrupt-{}", f.source.name()));
        rewrite_kit(
            f3,
            &k,
            None,
            |tree| {
                edit_payload(tree, &f.path, |mut b| {
                    let i = b.len() / 2;
                    b[i] ^= 0x55;
                    b
                });
                None
            },
            |_| {},
        );
        check(&both, &what, &k, &[&f.path]);
    }
    // A repack patch whose reconstruction stream (the layout, preflate-rs's corrections) has a
    // byte flipped: the re-created bytes differ, refused before any write.
    let k = kit("corrupt-repack-layout");
    rewrite_kit(
        f3,
        &k,
        None,
        |tree| {
            edit_payload(tree, &repack.path, |mut b| {
                let header = iuk::delta::repack::HEADER_LEN;
                let len = u64::from_le_bytes(b[header - 8..header].try_into().unwrap()) as usize;
                b[header + len / 2] ^= 0x55;
                b
            });
            None
        },
        |_| {},
    );
    check(&both, "corrupt repack layout", &k, &[&repack.path]);
    // The unmodified kit applies (the refusals above are the edits').
    assert!(f3s.ends_with(".iuk"));
    assert_eq!(n, 11);
    apply(&m, f3);
}

/// Boot files re-created on the device: a damaged patch, a base the kit does not expect and a
/// medium whose base changed are each refused by `check` and `apply` before any write (exit
/// status 1, one line naming the kit or the medium and the file, the medium unchanged).
#[test]
fn refuses_boot_files_it_cannot_recreate_before_any_write() {
    let Some((_, f3)) = pair_kits() else { return };
    let (old, _) = delta_pair();
    let t = tmpdir();
    let kit = |name: &str| t.path().join(format!("{name}.iuk"));
    let check = |m: &Path, what: &str, kit: &Path, needles: &[&str]| {
        let before = snapshot(m);
        for sub in ["check", "apply"] {
            let mut r = run(ia(sub, m).arg(kit));
            r.stderr = without_key_warning(&r.stderr);
            for needle in needles {
                assert_one_line_error(&r, &format!("{sub}: {what}"), needle);
            }
            assert_same_tree(
                &before,
                &snapshot(m),
                &format!("{sub}: {what}: medium changed"),
            );
        }
    };
    let efi = "EFI/BOOT/bootx64.efi";
    let at = boot_patch_path(efi);
    let m = t.path().join("m");
    init(&m, &old);
    let flip = |b: &mut Vec<u8>| {
        let i = b.len() / 2;
        b[i] ^= 0x55;
    };

    // Patch bytes that do not match control.yml's patch-sha256.
    let k = kit("patch-sha");
    rewrite_kit_with(
        f3,
        &k,
        None,
        |_| None,
        |p| {
            p.iter_mut()
                .filter(|(p, _)| *p == at)
                .for_each(|(_, b)| flip(b))
        },
        |_| {},
    );
    check(&m, "boot patch sha256", &k, &[k.to_str().unwrap(), &at]);
    // A damaged patch recorded as it is: only re-creating the file tells.
    let k = kit("patch-damaged");
    let mut damaged = kit_file(f3, &at);
    flip(&mut damaged);
    let recorded = damaged.clone();
    rewrite_kit_with(
        f3,
        &k,
        None,
        |_| None,
        |p| {
            p.iter_mut()
                .filter(|(p, _)| *p == at)
                .for_each(|(_, b)| *b = damaged.clone())
        },
        |c| {
            let b = c.recipe.as_mut().unwrap();
            let b = b.boot_files.iter_mut().find(|b| b.path == efi).unwrap();
            b.patch_sha256 = Some(sha256_hex(&recorded));
        },
    );
    check(&m, "damaged boot patch", &k, &[k.to_str().unwrap(), &at]);
    // A patch the kit lacks.
    let k = kit("patch-missing");
    rewrite_kit_with(
        f3,
        &k,
        None,
        |_| None,
        |p| p.retain(|(p, _)| *p != at),
        |_| {},
    );
    check(&m, "missing boot patch", &k, &[k.to_str().unwrap(), &at]);
    // A base sha256 other than the medium's (the kit built against other boot files).
    let k = kit("other-boot-base");
    rewrite_kit(
        f3,
        &k,
        None,
        |_| None,
        |c| {
            let b = c.recipe.as_mut().unwrap();
            let b = b.boot_files.iter_mut().find(|b| b.path == efi).unwrap();
            b.base_sha256 = "ab".repeat(32);
        },
    );
    check(&m, "other boot base", &k, &[m.to_str().unwrap(), efi]);

    // A boot-files record that names no overlay entry; a patch nothing lists.
    let k = kit("record-unlisted");
    rewrite_kit(
        f3,
        &k,
        None,
        |_| None,
        |c| {
            let r = c.recipe.as_mut().unwrap();
            let mut b = r.boot_files.iter().find(|b| b.path == efi).unwrap().clone();
            b.path = "EFI/BOOT/elsewhere.efi".into();
            r.boot_files.push(b);
        },
    );
    check(
        &m,
        "boot file record without overlay entry",
        &k,
        &[k.to_str().unwrap(), "EFI/BOOT/elsewhere.efi"],
    );
    let k = kit("patch-unlisted");
    let extra = boot_patch_path("EFI/BOOT/extra.efi");
    rewrite_kit_with(
        f3,
        &k,
        None,
        |_| None,
        |p| p.push((extra.clone(), b"not listed".to_vec())),
        |_| {},
    );
    check(
        &m,
        "unlisted boot patch",
        &k,
        &[k.to_str().unwrap(), &extra],
    );

    // A base that is a link on the medium (same content): never read through it.
    let ml = t.path().join("linked-base");
    init(&ml, &old);
    let base = ml.join("syslinux/splash.bin");
    let outside = t.path().join("splash-outside.bin");
    fs::copy(&base, &outside).unwrap();
    fs::remove_file(&base).unwrap();
    std::os::unix::fs::symlink(&outside, &base).unwrap();
    check(&ml, "linked base", f3, &["syslinux/splash.bin"]);

    // A medium whose base boot files changed (same size, a byte flipped): the patched one and
    // the copied one, each refused naming the medium and the file.
    for (name, file) in [("patched", efi), ("copied", "syslinux/splash.bin")] {
        let mc = t.path().join(format!("changed-{name}"));
        init(&mc, &old);
        let p = mc.join(file);
        let mut b = fs::read(&p).unwrap();
        flip(&mut b);
        fs::write(&p, b).unwrap();
        check(
            &mc,
            &format!("changed {name} base"),
            f3,
            &[mc.to_str().unwrap(), file],
        );
    }

    // The unmodified kit applies (the refusals above are the edits').
    apply(&m, f3);
}

// ------------------------------------------------------------------------------------------------
// Determinism and rebuild

/// The FORMAT 3 kit's bytes do not depend on threads, time zone, locale, umask, working
/// directory or TMPDIR: a build with two threads, umask 077, relative paths from another
/// directory and another TMPDIR, and `iuk-build rebuild` with one thread in another time zone and
/// locale, both reproduce the kit (built with the default thread count) byte for byte.
#[test]
fn format_3_kit_is_reproducible_and_rebuilt() {
    let Some((_, f3)) = pair_kits() else { return };
    let (old, new) = delta_pair();
    let t = tmpdir();
    let out = t.path().join("out");
    let tmp_env = t.path().join("tmpdir");
    for d in [&out, &tmp_env] {
        fs::create_dir_all(d).unwrap();
    }
    let reference = out.join("reference.iuk");
    fs::copy(f3, &reference).unwrap();
    let mut cases: Vec<(String, PathBuf, Command)> =
        vec![("reference".into(), reference.clone(), Command::new("true"))];
    let b = out.join("b.iuk");
    let mut sh = Command::new("sh");
    sh.current_dir(old.parent().unwrap())
        .arg("-c")
        .arg("umask 077; exec \"$0\" \"$@\"")
        .arg(iuk_e2e::bin("iuk-build"))
        .arg("build")
        .arg("--old")
        .arg(old.file_name().unwrap())
        .arg("--new")
        .arg(new.file_name().unwrap())
        .arg("--out")
        .arg(&b)
        .args(["--deltas", "--jobs", "2"])
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .env("TMPDIR", &tmp_env)
        .env("TZ", "UTC")
        .env("LC_ALL", "C");
    cases.push((
        "--jobs 2, umask 077, relative paths from another cwd, TMPDIR elsewhere".into(),
        b,
        sh,
    ));
    assert_same_outputs(cases);
    assert!(
        iuk_e2e::dir_names(&tmp_env).is_empty(),
        "files left in TMPDIR"
    );

    // rebuild (one thread, another time zone and locale) makes the same bytes again.
    let r = run(iuk_command("iuk-build")
        .arg("rebuild")
        .arg(&reference)
        .arg("--old")
        .arg(&old)
        .arg("--new")
        .arg(&new)
        .args(["--jobs", "1", "--json", "--keep"])
        .arg(out.join("kept.iuk"))
        .env("TZ", "Asia/Kathmandu")
        .env("LC_ALL", "C.UTF-8"));
    assert!(r.ok(), "rebuild of the FORMAT 3 kit (--jobs 1): {r}");
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["verdict"], "identical", "{r}");
    assert_eq!(sha256_file(&out.join("kept.iuk")), sha256_file(&reference));
    assert_eq!(open_kit(&reference).format, "3");
}

// ------------------------------------------------------------------------------------------------
// The fixture chain

/// 6.9 → 6.10 → 6.11 → 6.11.1 with --deltas kits (FORMAT 3 where smaller) gives the media of the
/// FORMAT 2 chain, and so does the cumulative 6.9 → 6.11 kit on a medium at 6.10 initialised at
/// 6.9; kits that fall back to FORMAT 2 are the FORMAT 2 kits, byte for byte.
#[test]
fn fixture_chain_with_deltas_gives_the_format_2_media() {
    let t = tmpdir();
    let (m2, m3) = (t.path().join("m2"), t.path().join("m3"));
    init(&m2, &iso("6.9"));
    init(&m3, &iso("6.9"));
    let mut formats = Vec::new();
    for (from, to) in [("6.9", "6.10"), ("6.10", "6.11"), ("6.11", "6.11.1")] {
        let k2 = fixture_kit_at(from, to, EPOCH, &[]);
        let k3 = fixture_kit_at(from, to, EPOCH, &["--deltas"]);
        let format = open_kit(&k3).format;
        if format == "2" {
            assert_eq!(
                sha256_file(&k2),
                sha256_file(&k3),
                "{from} → {to}: FORMAT 2 fallback"
            );
        }
        formats.push(format);
        apply(&m2, &k2);
        apply(&m3, &k3);
        assert_same_media(&m2, &m3, &format!("chain at {to}"));
    }
    assert_eq!(formats[0], "3", "6.9 → 6.10 gives FORMAT 3: {formats:?}");
    run_ok(ia("verify", &m3).arg("--deep"));

    let (c2, c3) = (t.path().join("c2"), t.path().join("c3"));
    let k2 = fixture_kit_at("6.9", "6.11", EPOCH, &[]);
    let k3 = fixture_kit_at("6.9", "6.11", EPOCH, &["--deltas"]);
    if open_kit(&k3).format == "2" {
        assert_eq!(
            sha256_file(&k2),
            sha256_file(&k3),
            "6.9 → 6.11: FORMAT 2 fallback"
        );
    }
    // A FORMAT 3 kit that re-creates boot files from the 6.9 ones cannot apply on a medium at
    // 6.10 (its boot files are 6.10's): refused before any write with the advice to take the
    // FORMAT 2 kit of the path, which `select` takes there.
    let boot_patched = open_kit(&k3)
        .control
        .recipe
        .is_some_and(|r| !r.boot_files.is_empty());
    for (m, k) in [(&c2, &k2), (&c3, &k3)] {
        init(m, &iso("6.9"));
        apply(m, &fixture_kit_at("6.9", "6.10", EPOCH, &["--deltas"]));
        if boot_patched && k == &k3 {
            let before = snapshot(m);
            let r = run(ia("apply", m).arg(k));
            let r = Run {
                stderr: without_key_warning(&r.stderr),
                ..r
            };
            assert_one_line_error(&r, "cumulative FORMAT 3 on 6.10", "apply the FORMAT 2 kit");
            assert_same_tree(&before, &snapshot(m), "refused cumulative FORMAT 3 kit");
            apply(m, &k2);
        } else {
            apply(m, k);
        }
    }
    assert_same_media(&c2, &c3, "cumulative 6.9 → 6.11 on 6.10");
    run_ok(ia("verify", &c3).arg("--deep"));
    // On a medium at 6.9 the same kit applies and gives the FORMAT 2 kit's medium.
    let (d2, d3) = (t.path().join("d2"), t.path().join("d3"));
    for (m, k) in [(&d2, &k2), (&d3, &k3)] {
        init(m, &iso("6.9"));
        apply(m, k);
    }
    assert_same_media(&d2, &d3, "6.9 → 6.11 on 6.9");
}

// ------------------------------------------------------------------------------------------------
// inspect and compare

/// `inspect` shows a kit's FORMAT and, for FORMAT 3, the recipe version, layer tree digest and
/// per source kind the files, bytes re-created and bytes carried (text and --json); `compare`
/// names the FORMAT, the recipe file whose base-sha256 differs, the recipe image entry whose
/// payload differs, and a boot file whose source and patch differ; `inspect` shows the boot
/// files per source kind.
#[test]
fn inspect_and_compare_explain_format_3() {
    let Some((f2, f3)) = pair_kits() else { return };
    let (_, new) = delta_pair();
    let inspect = |image: &Path| -> serde_json::Value {
        let r = run_ok(
            iuk_command("iuk-build")
                .arg("inspect")
                .arg("--json")
                .arg(image),
        );
        serde_json::from_slice(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r}"))
    };
    let recipe = open_kit(f3).control.recipe.unwrap();
    let j = inspect(f3);
    let k = &j["kit"];
    assert_eq!(k["format"], "3", "{k}");
    assert_eq!(k["to_version"], "7.1", "{k}");
    let r = &k["recipe"];
    assert_eq!(r["version"], 1, "{r}");
    assert_eq!(r["layer_tree_digest"], recipe.layer_tree_digest.as_str());
    assert_eq!(r["image_size"], recipe.image_size);
    let sources = r["sources"].as_array().unwrap();
    assert_eq!(sources.len(), SourceKind::ALL.len(), "{r}");
    for (s, (kind, totals)) in sources.iter().zip(recipe.totals()) {
        assert_eq!(s["kind"], kind.name(), "{r}");
        assert_eq!(s["files"], totals.files, "{kind:?}: {r}");
        assert_eq!(s["bytes"], totals.bytes, "{kind:?}: {r}");
        let carried = s["payload_bytes"].as_u64().unwrap();
        match kind {
            SourceKind::Copy => assert_eq!(carried, 0, "{r}"),
            SourceKind::Whole => assert_eq!(carried, totals.bytes, "{r}"),
            _ => assert!(carried > 0 && carried * 10 < totals.bytes, "{kind:?}: {r}"),
        }
    }
    let text = run_ok(iuk_command("iuk-build").arg("inspect").arg(f3)).stdout_text();
    for needle in [
        "FORMAT 3",
        recipe.layer_tree_digest.as_str(),
        "bsdiff",
        "bytes carried",
    ] {
        assert!(text.contains(needle), "inspect: no {needle:?}:\n{text}");
    }
    // Boot files per source kind: two patched, the initrd repacked, one copied, whole ones
    // under overlay/.
    let boot = r["boot_files"].as_array().unwrap();
    let count = |kinds: &[&str]| -> u64 {
        boot.iter()
            .filter(|b| kinds.contains(&b["kind"].as_str().unwrap()))
            .map(|b| b["files"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(boot.len(), SourceKind::ALL.len(), "{r}");
    assert_eq!(count(&["zstd", "bsdiff"]), 2, "{r}");
    assert_eq!(count(&["repack"]), 1, "{r}");
    assert_eq!(count(&["copy"]), 1, "{r}");
    assert!(count(&["whole"]) >= 2, "{r}");
    assert!(
        text.contains("boot files"),
        "inspect: no boot files:\n{text}"
    );
    let j2 = inspect(f2);
    assert_eq!(j2["kit"]["format"], "2", "{j2}");
    assert!(j2["kit"]["recipe"].is_null(), "{j2}");
    let plain = inspect(&new.join("live/filesystem.squashfs"));
    assert!(plain["kit"].is_null(), "not a kit: {plain}");

    // compare
    let t = tmpdir();
    let compare = |a: &Path, b: &Path| -> String {
        let r = run(iuk_command("iuk-build").arg("compare").arg(a).arg(b));
        assert_eq!(r.code, Some(1), "compare of different kits: {r}");
        r.stdout_text()
    };
    let out = compare(f2, f3);
    assert!(out.contains("FORMAT: \"2\" vs \"3\""), "{out}");
    let zstd = recipe
        .files
        .iter()
        .find(|f| f.source == SourceKind::Zstd)
        .unwrap()
        .clone();
    let other_base = t.path().join("other-base.iuk");
    rewrite_kit(
        f3,
        &other_base,
        None,
        |_| None,
        |c| {
            let r = c.recipe.as_mut().unwrap();
            let f = r.files.iter_mut().find(|f| f.path == zstd.path).unwrap();
            f.base_sha256 = Some("ab".repeat(32));
        },
    );
    let out = compare(f3, &other_base);
    let key = format!("recipe.files[{}].base-sha256", zstd.path);
    assert!(out.contains(&key), "no {key}:\n{out}");
    let payload = t.path().join("payload.iuk");
    rewrite_kit(
        f3,
        &payload,
        None,
        |tree| {
            edit_payload(tree, &zstd.path, |mut b| {
                b.push(0);
                b
            });
            None
        },
        |_| {},
    );
    let out = compare(f3, &payload);
    assert!(out.contains("recipe.image-sha256"), "{out}");
    let entry = format!("/{}: size", zstd.path);
    assert!(
        out.contains("recipe image recipe.squashfs: entries") && out.contains(&entry),
        "no {entry} in the recipe image section:\n{out}"
    );

    // A boot file's patch and source: control.yml's record and the patch under boot-patches/.
    let efi = "EFI/BOOT/bootx64.efi";
    let at = boot_patch_path(efi);
    let other_patch = t.path().join("other-patch.iuk");
    let longer = [kit_file(f3, &at), b"x".to_vec()].concat();
    let (len, sha) = (longer.len() as u64, sha256_hex(&longer));
    rewrite_kit_with(
        f3,
        &other_patch,
        None,
        |_| None,
        |p| {
            p.iter_mut()
                .filter(|(p, _)| *p == at)
                .for_each(|(_, b)| *b = longer.clone())
        },
        |c| {
            let r = c.recipe.as_mut().unwrap();
            let b = r.boot_files.iter_mut().find(|b| b.path == efi).unwrap();
            b.source = match b.source {
                SourceKind::Zstd => SourceKind::Bsdiff,
                _ => SourceKind::Zstd,
            };
            b.patch_size = Some(len);
            b.patch_sha256 = Some(sha);
        },
    );
    let out = compare(f3, &other_patch);
    for key in [
        format!("recipe.boot-files[{efi}].source"),
        format!("recipe.boot-files[{efi}].patch-sha256"),
        format!("{efi}: size"),
        "boot patches (boot-patches/)".to_string(),
    ] {
        assert!(out.contains(&key), "no {key}:\n{out}");
    }
    assert!(
        !out.contains("not in the kit"),
        "re-created boot files are not missing from the overlay:\n{out}"
    );
}

// ------------------------------------------------------------------------------------------------
// File names that are not UTF-8

/// A small release directory of `files` (path bytes, content) in `dir`, its root packed by
/// mksquashfs.
fn tiny_release(dir: &Path, version: &str, files: &[(&[u8], Vec<u8>)]) {
    use std::os::unix::ffi::OsStrExt;
    let root = dir.with_file_name(format!("{version}.root"));
    for (p, data) in files {
        let path = root.join(std::ffi::OsStr::from_bytes(p));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/os-release"),
        format!("NAME=\"Tails\"\nTAILS_PRODUCT_NAME=\"Tails\"\nTAILS_VERSION_ID=\"{version}\"\n"),
    )
    .unwrap();
    for d in ["live", "isolinux"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    run_ok(
        Command::new("mksquashfs")
            .arg(&root)
            .arg(dir.join("live/filesystem.squashfs"))
            .args([
                "-comp",
                "xz",
                "-b",
                "1M",
                "-noappend",
                "-quiet",
                "-no-progress",
            ])
            .args(["-all-time", "1700000000", "-mkfs-time", "1700000000"]),
    );
    fs::write(dir.join("live/vmlinuz"), b"kernel").unwrap();
    fs::write(dir.join("live/initrd.img"), b"initrd").unwrap();
    fs::write(
        dir.join("isolinux/isolinux.cfg"),
        b"label live\n kernel /live/vmlinuz\n append initrd=/live/initrd.img\n",
    )
    .unwrap();
}

/// A recipe names files by UTF-8 paths: a changed file whose name is not UTF-8 (its base would
/// not be found on the device) makes the builder fall back to FORMAT 2, with a warning, and that
/// kit applies.
#[test]
fn names_that_are_not_utf8_fall_back_to_format_2() {
    if !tools_or_skip(&["mksquashfs"]) {
        return;
    }
    let t = tmpdir();
    let data = iuk_e2e::pseudo_random(300_000, 7);
    let mut changed = data.clone();
    changed[1000..1020].copy_from_slice(&[b'X'; 20]);
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    tiny_release(&old, "7.0", &[(b"usr/bin/\xff-bin", data)]);
    tiny_release(&new, "7.1", &[(b"usr/bin/\xff-bin", changed)]);
    let kit = t.path().join("k.iuk");
    let r = run_ok(
        build_cmd(&old, &new, &kit)
            .arg(format!("--source-date-epoch={EPOCH}"))
            .arg("--deltas"),
    );
    assert!(
        r.stderr.contains("not UTF-8") && r.stderr.contains("writing FORMAT 2"),
        "{r}"
    );
    assert_eq!(open_kit(&kit).format, "2");
    let m = t.path().join("m");
    init(&m, &old);
    apply(&m, &kit);
    run_ok(ia("verify", &m).arg("--deep"));
}

// ------------------------------------------------------------------------------------------------
// Fragment sources

/// `files` as [`tiny_release`] takes them.
fn refs(files: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], Vec<u8>)> {
    files.iter().map(|(p, d)| (&p[..], d.clone())).collect()
}

/// A kernel ABI change's shape: the new release adds a directory of 150 small modules (about
/// 3 MB of tails, so mksquashfs packs whole fragment blocks of them): the FORMAT 2 layer copies
/// those fragment blocks from the new image, the kit applies, and the kernel's view of the
/// medium's stack equals the new root.
#[test]
fn a_new_directory_of_small_files_has_its_fragment_blocks_copied() {
    if !tools_or_skip(&["mksquashfs"]) {
        return;
    }
    let t = tmpdir();
    let text = |n: usize, seed: u64| -> Vec<u8> {
        // Compressible: hex of pseudo-random bytes, lines of a module-like listing.
        let raw = iuk_e2e::pseudo_random(n / 2, seed);
        raw.iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect()
    };
    let common: Vec<(Vec<u8>, Vec<u8>)> = (0..8)
        .map(|i| (format!("usr/share/doc/d{i}").into_bytes(), text(9_000, i)))
        .collect();
    let modules: Vec<(Vec<u8>, Vec<u8>)> = (0..150)
        .map(|i| {
            (
                format!("usr/lib/modules/6.1.0-57/kernel/m{i:03}.ko").into_bytes(),
                text(15_000 + 97 * i as usize, 100 + i),
            )
        })
        .collect();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    tiny_release(&old, "7.0", &refs(&common));
    tiny_release(&new, "7.1", &[refs(&common), refs(&modules)].concat());
    let kit = t.path().join("k.iuk");
    // tiny_release's image: xz without a branch filter, 1 MiB blocks.
    let r = run_ok(
        build_cmd(&old, &new, &kit)
            .arg(format!("--source-date-epoch={EPOCH}"))
            .args(["--xz-bcj", "none", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let copied = v["layer_copied_fragments"].as_u64().unwrap();
    assert!(copied >= 1, "{v}");
    assert!(
        v["layer_fragment_blocks"].as_u64().unwrap() >= copied,
        "{v}"
    );
    let m = t.path().join("m");
    init(&m, &old);
    apply(&m, &kit);
    run_ok(ia("verify", &m).arg("--deep"));
    if !(require_root_or_skip() && kernel_or_skip()) {
        return;
    }
    let want = {
        let mnt = mount_squashfs(&new.join("live/filesystem.squashfs"));
        snapshot(mnt.path())
    };
    assert_same_tree(&want, &kernel_stack(&m), "kernel stack after the kit");
}
