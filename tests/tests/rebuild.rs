//! End-to-end tests of the rebuilder tools through the real binary (DESIGN.md, "Rebuilders"):
//! `iuk-build rebuild` reproduces kits built with any parameters, under another environment,
//! and says why when it cannot (other inputs, a tampered kit); `iuk-build compare` names the
//! control.yml key, the overlay file, the entry field, and the region and byte offset that
//! differ; unreadable input is a one-line error with exit status 2; kits this program cannot
//! reproduce (unknown writer format, another generator) are refused.
//!
//! The expected offsets come from our reader's view of the kit (where the layer's bytes lie)
//! and from the edits the tests make, never from the comparison code itself. The binaries must
//! be built first (`cargo build --release -p iuk-build`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use iuk::io::{ReadAt, SubImage};
use iuk::kit::{container_tree, Control, Kit, OverlayFile};
use iuk::squashfs::archive::Archive;
use iuk::squashfs::compress::Compressor;
use iuk::squashfs::inode::InodeBody;
use iuk::squashfs::write::{write_image, WriterParams};
use iuk::tree::InodeKind;
use iuk_e2e::{
    build_cmd, dir_names, fixture_kit_at, iso, iuk_command, pack, run, run_ok, sha256_file,
    tool_or_skip, Run,
};
use tempfile::TempDir;

const EPOCH: u32 = 1_700_000_000;

fn tmpdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("iuk-e2e-rebuild-")
        .tempdir()
        .unwrap()
}

/// Builds a kit with `args` (the epoch is passed by the caller, in `args` or `env`).
fn build(old: &Path, new: &Path, out: &Path, args: &[&str], env: &[(&str, &str)]) {
    let mut c = build_cmd(old, new, out);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_ok(&mut c);
}

/// The 6.9 → 6.10 kit with default parameters, as `dir/name` (a copy of the kit built once per
/// run and shared, [`iuk_e2e::fixture_kit`]).
fn default_kit(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let shared = fixture_kit_at("6.9", "6.10", EPOCH, &[]);
    fs::copy(&shared, &out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    out
}

fn rebuild_cmd(kit: &Path, old: &Path, new: &Path) -> Command {
    let mut c = iuk_command("iuk-build");
    c.arg("rebuild")
        .arg(kit)
        .arg("--old")
        .arg(old)
        .arg("--new")
        .arg(new);
    c
}

fn compare(a: &Path, b: &Path, args: &[&str]) -> Run {
    run(iuk_command("iuk-build")
        .arg("compare")
        .arg(a)
        .arg(b)
        .args(args))
}

fn assert_contains(r: &Run, needles: &[&str]) {
    let out = r.stdout_text();
    for n in needles {
        assert!(out.contains(n), "stdout does not contain {n:?}:\n{r}");
    }
}

/// A one-line `iuk-build: error:` message on stderr, exit status 2, nothing on stdout, no panic.
fn assert_error_2(r: &Run, what: &str, needles: &[&str]) {
    assert_eq!(r.code, Some(2), "{what}: {r}");
    assert!(
        r.stderr.starts_with("iuk-build: error:")
            && r.stderr.ends_with('\n')
            && r.stderr.lines().count() == 1
            && !r.stderr.contains("panicked"),
        "{what}: stderr must be one line starting with `iuk-build: error:`: {:?}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{what}: stdout: {r}");
    for n in needles {
        assert!(r.stderr.contains(n), "{what}: message lacks {n:?}: {r}");
    }
    eprintln!("{what}: {}", r.stderr.trim_end());
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_slice(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r}"))
}

/// Every difference of a `--json` comparison as (section title, what, a, b).
fn differences(c: &serde_json::Value) -> Vec<(String, String, Option<String>, Option<String>)> {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    c["sections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|sec| {
            let title = sec["title"].as_str().unwrap().to_string();
            sec["differences"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |d| {
                    (
                        title.clone(),
                        s(&d["what"]).unwrap(),
                        s(&d["a"]),
                        s(&d["b"]),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Where the bytes of the kit's file `path` start in the kit file, and its size (the container
/// stores the layer as it is, contiguous).
fn file_start_in_kit(kit: &Path, path: &str) -> (u64, u64) {
    let a = Archive::open(kit).unwrap();
    let mut found = None;
    a.walk(|e| {
        if e.path == path.as_bytes() {
            if let InodeBody::File {
                blocks_start, size, ..
            } = &e.inode.body
            {
                found = Some((*blocks_start, *size));
            }
        }
        Ok(())
    })
    .unwrap();
    found.unwrap_or_else(|| panic!("{path} not in {}", kit.display()))
}

// ------------------------------------------------------------------------------------------------
// rebuild

/// A kit built with non-default parameters everywhere (compressor, level, block size, layer
/// name, build target, sort file, epoch from the environment) is reproduced byte for byte by
/// `rebuild`, which takes all of them from control.yml — run from another directory with
/// relative paths, in another time zone and locale, with another SOURCE_DATE_EPOCH in its
/// environment (ignored), and TMPDIR pointing at a directory that must be left empty.
#[test]
fn rebuild_reproduces_a_kit_with_non_default_parameters() {
    let t = tmpdir();
    let sort = t.path().join("sort.txt");
    fs::write(&sort, "usr/share/big 100\nvar/www 50\n# comment\netc -10\n").unwrap();
    let kit = t.path().join("custom.iuk");
    build(
        &iso("6.9"),
        &iso("6.10"),
        &kit,
        &[
            "--compression",
            "zstd",
            "--level",
            "19",
            "--block-size",
            "128K",
            "--layer-name",
            "Custom-layer_1",
            "--build-target",
            "i386",
            "--sort-file",
            sort.to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", "1234567890"), ("TZ", "UTC")],
    );
    let c = Kit::open(&kit).unwrap().control;
    let p = &c.layer_params;
    assert_eq!(
        (
            p.compression.as_str(),
            p.level,
            p.block_size,
            p.source_date_epoch
        ),
        ("zstd", 19, 128 << 10, 1_234_567_890)
    );
    assert_eq!(
        (c.layer.as_str(), c.build_target.as_str()),
        ("Custom-layer_1", "i386")
    );
    assert!(p
        .sort_file
        .as_deref()
        .unwrap()
        .contains("usr/share/big 100"));

    // Another cwd with relative paths, TZ, locale, TMPDIR, a misleading SOURCE_DATE_EPOCH.
    let cwd = t.path().join("elsewhere");
    let tmp_env = t.path().join("tmp");
    fs::create_dir_all(cwd.join("in")).unwrap();
    fs::create_dir(&tmp_env).unwrap();
    for v in ["6.9", "6.10"] {
        fs::copy(iso(v), cwd.join(format!("in/Tails-{v}.iso"))).unwrap();
    }
    let mut c = rebuild_cmd(
        Path::new("../custom.iuk"),
        Path::new("in/Tails-6.9.iso"),
        Path::new("in/Tails-6.10.iso"),
    );
    c.current_dir(&cwd)
        .env("TZ", "Asia/Kathmandu")
        .env("LC_ALL", "C.UTF-8")
        .env("TMPDIR", &tmp_env)
        .env("SOURCE_DATE_EPOCH", "1");
    let r = run(&mut c);
    assert_eq!(r.code, Some(0), "{r}");
    assert_contains(
        &r,
        &[
            "identical",
            "as the kit records",
            "i386",
            "Custom-layer_1",
            &sha256_file(&kit),
        ],
    );
    assert!(dir_names(&tmp_env).is_empty(), "files left in TMPDIR");
    assert_eq!(
        dir_names(&cwd),
        ["in"],
        "files left in the working directory"
    );

    // --json and --keep; --jobs never changes the verdict.
    let kept = t.path().join("kept.iuk");
    let r = run(rebuild_cmd(&kit, &iso("6.9"), &iso("6.10"))
        .args(["--json", "--jobs", "1", "--keep"])
        .arg(&kept));
    assert_eq!(r.code, Some(0), "{r}");
    let j = json(&r);
    assert_eq!(j["verdict"], "identical", "{r}");
    assert_eq!(j["inputs"][0]["status"], "matches");
    assert_eq!(j["inputs"][1]["status"], "matches");
    assert_eq!(j["kept"].as_str(), Some(kept.to_str().unwrap()));
    assert_eq!(sha256_file(&kept), sha256_file(&kit));
    // --keep never overwrites the kit itself.
    let before = sha256_file(&kit);
    let r = run(rebuild_cmd(&kit, &iso("6.9"), &iso("6.10"))
        .arg("--keep")
        .arg(&kit));
    assert_error_2(&r, "--keep KIT", &["--keep would overwrite the kit"]);
    assert_eq!(sha256_file(&kit), before);
}

/// Checked against another ISO pair (6.9 → 6.10 kit, --new 6.11), rebuild reports the sha256
/// mismatch of the new ISO, rebuilds nothing and exits 1.
#[test]
fn rebuild_against_the_wrong_iso_says_so() {
    let t = tmpdir();
    let kit = default_kit(t.path(), "kit.iuk");
    let tmp_env = t.path().join("tmp");
    fs::create_dir(&tmp_env).unwrap();
    let r = run(rebuild_cmd(&kit, &iso("6.9"), &iso("6.11")).env("TMPDIR", &tmp_env));
    assert_eq!(r.code, Some(1), "{r}");
    let recorded_new = sha256_file(&iso("6.10"));
    let given_new = sha256_file(&iso("6.11"));
    assert_contains(
        &r,
        &[
            "Tails-6.11.iso",
            &given_new,
            &format!("but the kit was built from an ISO with sha256 {recorded_new}"),
            "not the releases the kit was built from",
        ],
    );
    assert!(!r.stdout_text().contains("rebuilt  sha256"), "{r}");
    assert!(dir_names(&tmp_env).is_empty(), "files left in TMPDIR");
    let j = json(&run(
        rebuild_cmd(&kit, &iso("6.9"), &iso("6.11")).arg("--json")
    ));
    assert_eq!(j["verdict"], "wrong-inputs");
    assert_eq!(j["inputs"][0]["status"], "matches");
    assert_eq!(j["inputs"][1]["status"], "differs");
    assert_eq!(j["inputs"][1]["recorded_sha256"], recorded_new.as_str());
}

/// Kits built from extracted directories record `iso-sha256: null`: rebuild says their
/// identity cannot be checked and still demands identical bytes; given ISOs instead, it says
/// the kit was built from directories.
#[test]
fn rebuild_from_directories_cannot_check_identity() {
    if tool_or_skip("osirrox").is_none() {
        return;
    }
    let t = tmpdir();
    for v in ["6.9", "6.10"] {
        run_ok(
            Command::new("osirrox")
                .arg("-indev")
                .arg(iso(v))
                .arg("-extract")
                .arg("/")
                .arg(t.path().join(v)),
        );
    }
    let kit = t.path().join("dirs.iuk");
    build(
        &t.path().join("6.9"),
        &t.path().join("6.10"),
        &kit,
        &[&format!("--source-date-epoch={EPOCH}")],
        &[],
    );
    let r = run(&mut rebuild_cmd(
        &kit,
        &t.path().join("6.9"),
        &t.path().join("6.10"),
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert_contains(&r, &["identity cannot be checked", "identical"]);
    let r = run(&mut rebuild_cmd(&kit, &iso("6.9"), &t.path().join("6.10")));
    assert_eq!(r.code, Some(1), "{r}");
    assert_contains(&r, &["built from a directory"]);
}

/// A kit whose layer was tampered with (one byte flipped) is not reproduced: rebuild exits 1
/// and explains, down to the layer file and the byte.
#[test]
fn rebuild_explains_a_tampered_kit() {
    let t = tmpdir();
    let kit = default_kit(t.path(), "kit.iuk");
    let f = flip_in_layer_data(&kit, &t.path().join("bad.iuk"));
    let r = run(&mut rebuild_cmd(&f.kit, &iso("6.9"), &iso("6.10")));
    assert_eq!(r.code, Some(1), "{r}");
    assert_contains(
        &r,
        &[
            "DIFFERENT",
            "live/Tails_6.9_to_6.10.squashfs",
            &format!("the first at byte {}", f.in_kit),
        ],
    );
}

/// Writes `out`: a kit holding `kit`'s FORMAT and overlay files (with their mtimes) and its
/// control.yml edited by `edit`, made with the library's container tree. (Its image settings
/// need not be the builder's: only control.yml matters to these tests.)
fn patched_kit(kit: &Path, out: &Path, edit: impl Fn(&mut Control)) -> PathBuf {
    let k = Kit::open(kit).unwrap();
    let mut control = k.control.clone();
    edit(&mut control);
    let mut files = Vec::new();
    for n in k.tree.walk() {
        let path = String::from_utf8(k.tree.path(n)).unwrap();
        let ino = k.tree.node_inode(n);
        if let (Some(rel), InodeKind::File(c)) = (path.strip_prefix("overlay/"), &ino.kind) {
            files.push(OverlayFile {
                path: rel.to_string(),
                content: c.clone(),
                mtime: Some(ino.meta.mtime),
            });
        }
    }
    let tree = container_tree(&control, &files).unwrap();
    let params = WriterParams::new(
        Compressor::Xz {
            level: 6,
            dict_size: 1 << 20,
            bcj_x86: false,
        },
        1 << 20,
        control.layer_params.source_date_epoch,
    );
    let mut f = fs::File::create(out).unwrap();
    write_image(&tree, &params, &mut f, &|_| {}).unwrap();
    out.to_path_buf()
}

/// A writer format this program does not implement, or another generator, is refused with a
/// one-line error (exit 2) before anything is built.
#[test]
fn rebuild_refuses_an_unknown_writer_format_or_generator() {
    let t = tmpdir();
    let kit = default_kit(t.path(), "kit.iuk");
    let tmp_env = t.path().join("tmp");
    fs::create_dir(&tmp_env).unwrap();
    let wf = patched_kit(&kit, &t.path().join("wf9.iuk"), |c| c.writer_format = 9);
    let r = run(rebuild_cmd(&wf, &iso("6.9"), &iso("6.10")).env("TMPDIR", &tmp_env));
    assert_error_2(
        &r,
        "writer format 9",
        &[
            "wf9.iuk",
            "writer format 9",
            &format!(
                "implements writer format {} only",
                iuk::squashfs::write::WRITER_FORMAT_VERSION
            ),
        ],
    );
    assert!(dir_names(&tmp_env).is_empty(), "files left in TMPDIR");
    // compare names the key.
    let c = compare(&kit, &wf, &[]);
    assert_eq!(c.code, Some(1), "{c}");
    let versions = format!(
        "writer-format: {} vs 9",
        iuk::squashfs::write::WRITER_FORMAT_VERSION
    );
    assert_contains(&c, &[&versions]);

    let other = patched_kit(&kit, &t.path().join("other.iuk"), |c| {
        c.generator = "xyz".into()
    });
    let r = run(&mut rebuild_cmd(&other, &iso("6.9"), &iso("6.10")));
    assert_error_2(
        &r,
        "generator xyz",
        &["other.iuk", "generator \"xyz\"", "only kits made by iuk"],
    );

    let garbage = t.path().join("garbage.iuk");
    fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let r = run(&mut rebuild_cmd(&garbage, &iso("6.9"), &iso("6.10")));
    assert_error_2(&r, "garbage kit", &["garbage.iuk"]);
}

// ------------------------------------------------------------------------------------------------
// compare

/// Kits built with different compression: compare names `layer-params.compression` (text and
/// JSON), and goes on into the layers (superblock compression field).
#[test]
fn compare_names_the_differing_control_key() {
    let t = tmpdir();
    let xz = default_kit(t.path(), "xz.iuk");
    let zstd = t.path().join("zstd.iuk");
    build(
        &iso("6.9"),
        &iso("6.10"),
        &zstd,
        &[
            &format!("--source-date-epoch={EPOCH}"),
            "--compression",
            "zstd",
        ],
        &[],
    );
    let r = compare(&xz, &zstd, &[]);
    assert_eq!(r.code, Some(1), "{r}");
    assert_contains(
        &r,
        &[
            "control.yml:",
            "  layer-params.compression: xz vs zstd",
            "layer live/Tails_6.9_to_6.10.squashfs: superblock:",
            "compression: xz (id 4) vs zstd (id 6)",
            // Same trees in both layers: only the layout differs.
            "the trees are equal",
        ],
    );
    let lines: Vec<String> = r.stdout_text().lines().map(str::to_string).collect();
    assert!(
        lines.len() < 200,
        "output not bounded: {} lines",
        lines.len()
    );
    let j = json(&compare(&xz, &zstd, &["--json"]));
    assert_eq!(j["identical"], false);
    assert_eq!(j["a"]["kind"], "kit");
    let d = differences(&j);
    assert!(
        d.iter().any(|(s, w, a, b)| s == "control.yml"
            && w == "layer-params.compression"
            && a.as_deref() == Some("xz")
            && b.as_deref() == Some("zstd")),
        "{d:?}"
    );
}

/// A byte flipped in a copy of a kit.
struct Flipped {
    kit: PathBuf,
    /// Offset of the byte in the kit file.
    in_kit: u64,
    /// Offset of the byte in the layer image.
    in_layer: u64,
    /// Where the layer's data region starts in the layer image.
    data_start: u64,
}

/// Flips one byte in the middle of the layer's data region inside a copy of `kit`.
fn flip_in_layer_data(kit: &Path, out: &Path) -> Flipped {
    let (start, size) = file_start_in_kit(kit, "overlay/live/Tails_6.9_to_6.10.squashfs");
    let whole: Arc<dyn ReadAt> = Arc::new(fs::read(kit).unwrap());
    let layer = Archive::from_image(
        Arc::new(SubImage::new(whole, start, size).unwrap()),
        "layer".into(),
    )
    .unwrap();
    let data = layer
        .extents()
        .iter()
        .find(|e| e.name == "data")
        .unwrap()
        .clone();
    assert!(data.end > data.start + 100, "{data:?}");
    let in_layer = data.start + (data.end - data.start) / 2;
    let in_kit = start + in_layer;
    let mut bytes = fs::read(kit).unwrap();
    bytes[in_kit as usize] ^= 0x40;
    fs::write(out, &bytes).unwrap();
    Flipped {
        kit: out.to_path_buf(),
        in_kit,
        in_layer,
        data_start: data.start,
    }
}

/// A kit with one flipped byte inside the layer's data: compare names the overlay file (and
/// that it no longer matches the kit's manifest), the layer entry whose data holds the byte,
/// and the data region with the byte's offset in the layer and in the kit.
#[test]
fn compare_locates_a_flipped_byte_in_the_layer() {
    let t = tmpdir();
    let kit = default_kit(t.path(), "kit.iuk");
    let f = flip_in_layer_data(&kit, &t.path().join("bad.iuk"));
    let (in_kit, in_layer) = (f.in_kit, f.in_layer);
    let r = compare(&kit, &f.kit, &[]);
    assert_eq!(r.code, Some(1), "{r}");
    let layer = "live/Tails_6.9_to_6.10.squashfs";
    assert_contains(
        &r,
        &[
            "overlay files:",
            &format!("  {layer}: sha256: "),
            &format!("B: {layer} does not match control.yml's overlay manifest"),
            &format!("layer {layer}: entries:"),
            &format!("layer {layer}: bytes:"),
            &format!("1 byte differs, the first at byte {in_layer}"),
            &format!("[byte {in_kit} of the enclosing file]"),
            "kit image: bytes:",
            &format!("data (bytes 96..{}", {
                let a = Archive::open(&kit).unwrap();
                a.superblock().inode_table_start
            }),
            &format!("the first at byte {in_kit}"),
            &format!("in /overlay/{layer}, byte {in_layer} of the file"),
        ],
    );
    // The entries whose data the byte spoils are named, and what lies at the byte.
    let out = r.stdout_text();
    assert!(
        out.lines()
            .skip_while(|l| !l.starts_with(&format!("layer {layer}: entries:")))
            .nth(1)
            .is_some_and(|l| l.starts_with("  /") && l.contains(": content: ")),
        "{r}"
    );
    assert!(
        out.contains(&format!(
            "(+{} into the data), in ",
            in_layer - f.data_start
        )),
        "{r}"
    );
    assert!(
        out.lines().all(|l| l.chars().count() < 600),
        "overlong line: {r}"
    );
    // Nothing else differs: no control.yml section, no FORMAT section.
    assert!(!out.contains("control.yml:\n"), "{r}");
    assert!(!out.contains("FORMAT:\n"), "{r}");
}

/// A kit compared with a copy of itself is identical (exit 0), as JSON too.
#[test]
fn compare_identical() {
    let t = tmpdir();
    let kit = default_kit(t.path(), "kit.iuk");
    let copy = t.path().join("copy.iuk");
    fs::copy(&kit, &copy).unwrap();
    let r = compare(&kit, &copy, &[]);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(r.stdout_text().lines().last(), Some("identical"), "{r}");
    let j = json(&compare(&kit, &copy, &["--json"]));
    assert_eq!(j["identical"], true);
    assert_eq!(j["sections"].as_array().map(Vec::len), Some(0));
}

/// Input that is not a SquashFS image, or missing, is a one-line error with exit status 2.
#[test]
fn compare_refuses_garbage() {
    let t = tmpdir();
    let kit = default_kit(t.path(), "kit.iuk");
    let garbage = t.path().join("garbage.bin");
    fs::write(
        &garbage,
        b"this is not a squashfs image at all, just text\n".repeat(100),
    )
    .unwrap();
    assert_error_2(&compare(&kit, &garbage, &[]), "garbage B", &["garbage.bin"]);
    assert_error_2(&compare(&garbage, &kit, &[]), "garbage A", &["garbage.bin"]);
    let truncated = t.path().join("truncated.iuk");
    fs::write(&truncated, &fs::read(&kit).unwrap()[..5000]).unwrap();
    assert_error_2(
        &compare(&kit, &truncated, &[]),
        "truncated",
        &["truncated.iuk"],
    );
    assert_error_2(
        &compare(&kit, &t.path().join("missing.iuk"), &[]),
        "missing",
        &["missing.iuk"],
    );
}

/// Plain SquashFS images: an entry's mode and content are named; the same tree packed with
/// another compression level is "the trees are equal" plus the superblock/compressor field.
#[test]
fn compare_plain_images() {
    use std::os::unix::fs::PermissionsExt;
    let t = tmpdir();
    let mk = |name: &str, mode: u32, text: &str| -> PathBuf {
        let d = t.path().join(name);
        fs::create_dir_all(d.join("dir")).unwrap();
        fs::write(d.join("dir/file"), text).unwrap();
        fs::write(d.join("same"), "same\n").unwrap();
        fs::set_permissions(d.join("dir/file"), fs::Permissions::from_mode(mode)).unwrap();
        for p in [d.join("dir/file"), d.join("same"), d.join("dir"), d.clone()] {
            let f = fs::File::options().read(true).open(&p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000))
                .unwrap();
        }
        d
    };
    let a = mk("a", 0o644, "one\n");
    let b = mk("b", 0o600, "two\n");
    let (ia, ib, ic) = (
        t.path().join("a.sqfs"),
        t.path().join("b.sqfs"),
        t.path().join("c.sqfs"),
    );
    pack(&a, &ia, EPOCH, &["--compression", "zstd", "--level", "3"]);
    pack(&b, &ib, EPOCH, &["--compression", "zstd", "--level", "3"]);
    pack(&a, &ic, EPOCH, &["--compression", "zstd", "--level", "19"]);
    let r = compare(&ia, &ib, &[]);
    assert_eq!(r.code, Some(1), "{r}");
    assert_contains(
        &r,
        &[
            "image: entries:",
            "/dir/file: mode: 0644 vs 0600",
            "/dir/file: content: sha256 ",
            "image: bytes:",
        ],
    );
    assert!(!r.stdout_text().contains("/same: "), "{r}");
    let r = compare(&ia, &ic, &[]);
    assert_eq!(r.code, Some(1), "{r}");
    assert_contains(
        &r,
        &[
            "compressor level: 3 vs 19",
            "the trees are equal (every entry, its metadata and content); only the layout differs",
        ],
    );
    assert!(!r.stdout_text().contains("image: entries:"), "{r}");
}

/// An image that fails the metadata check of `inspect` (an unknown superblock flag here) is
/// named in a check section of the comparison.
#[test]
fn compare_reports_an_image_failing_the_check() {
    let t = tmpdir();
    let d = t.path().join("src");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("f"), "content\n").unwrap();
    let (good, bad) = (t.path().join("good.sqfs"), t.path().join("bad.sqfs"));
    pack(&d, &good, EPOCH, &[]);
    let mut bytes = fs::read(&good).unwrap();
    bytes[25] |= 0x40;
    fs::write(&bad, &bytes).unwrap();
    let r = compare(&good, &bad, &[]);
    assert_eq!(r.code, Some(1), "{r}");
    assert_contains(
        &r,
        &[
            "image: check:",
            "  B fails the image check: corrupt image: ",
            "bad.sqfs: superblock flags 0x42c0 have unknown or unsupported bits 0x4000",
        ],
    );
    assert!(!r.stdout_text().contains("A fails"), "{r}");
}
