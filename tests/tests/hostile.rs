//! Hostile media and inputs, generated case by case ("Hostile media and inputs"): every command
//! on a medium that holds symbolic links — a boot directory that points outside, the staging
//! directory, the state, the lock, the journal, a layer, `live/` itself — either works without
//! following any link, or refuses with one line that names the link; the medium and everything
//! outside it stay byte-identical.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use iuk_e2e::{copy_tree, require_root_or_skip, run, sha256_file, Run};

use crate::apply::{build_kit, ia, init_medium, rebuild_kit, tmpdir};

/// Every entry under `root` (links recorded as links, never followed): relative path → what it
/// is (`dir`, `file SIZE SHA256`, `link TARGET`).
fn listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(d) else {
            return;
        };
        for e in entries.map(|e| e.unwrap()) {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, format!("link {}", t.display()));
            } else if md.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, format!("file {} {}", md.len(), sha256_file(&p)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A medium with one hostile link, and the directory outside the medium it points into.
struct Case {
    name: &'static str,
    /// The link's path on the medium, as errors must name it.
    link: &'static str,
    /// Commands that must refuse (they read, write or delete through the link).
    must_refuse: &'static [&'static str],
}

/// Makes the case's link on `m`, pointing into `outside` (which gets a victim file).
fn make_link(case: &Case, m: &Path, outside: &Path) {
    fs::create_dir_all(outside).unwrap();
    fs::write(outside.join("victim"), b"outside the medium\n").unwrap();
    let link = m.join(case.link);
    if link.exists() {
        // Move what was there outside, so the link shows the same content.
        let moved = outside.join("moved");
        fs::rename(&link, &moved).unwrap();
        symlink(&moved, &link).unwrap();
    } else {
        symlink(outside, &link).unwrap();
    }
}

/// The commands run on every hostile medium: (name, arguments after `--medium M`).
fn commands(kit: &Path, bad_kit: &Path) -> Vec<(&'static str, Vec<String>)> {
    let k = kit.display().to_string();
    let b = bad_kit.display().to_string();
    vec![
        ("status", vec!["status".into()]),
        ("verify", vec!["verify".into()]),
        ("verify --deep", vec!["verify".into(), "--deep".into()]),
        ("check", vec!["check".into(), k.clone()]),
        ("check bad", vec!["check".into(), b.clone()]),
        ("recover", vec!["recover".into()]),
        ("apply bad", vec!["apply".into(), b]),
        ("apply", vec!["apply".into(), k]),
        ("adopt", vec!["adopt".into()]),
    ]
}

fn run_on(m: &Path, args: &[String]) -> Run {
    let mut c = ia(&args[0], m);
    c.args(&args[1..]);
    run(&mut c)
}

#[test]
fn symlinks_on_the_medium_are_never_followed() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let kit = build_kit("6.9", "6.10");
    // A kit that deletes a file below a linked directory of a monitored boot directory.
    let bad = w.join("bad.iuk");
    rebuild_kit(&kit, &bad, None, |c, _| {
        c.delete_files.push("EFI/BOOT/lnk/victim".into())
    });
    let clean = w.join("clean");
    init_medium(&clean, "6.9");
    // A boot directory the kit writes into (the first of its boot files in a subdirectory).
    let control = iuk::kit::Kit::open(&kit).unwrap().control;
    let boot_dir: &'static str = control
        .overlay
        .iter()
        .filter(|e| !e.path.starts_with("live/"))
        .find_map(|e| e.path.split_once('/').map(|(d, _)| d.to_string()))
        .map(|d| &*Box::leak(d.into_boxed_str()))
        .expect("the kit writes a boot file in a directory");
    let cases = [
        Case {
            name: "a link inside a monitored boot directory, named by delete_files",
            link: "EFI/BOOT/lnk",
            must_refuse: &["apply bad", "check bad"],
        },
        Case {
            name: "a boot directory the kit writes into",
            link: boot_dir,
            must_refuse: &["apply", "check", "verify --deep", "adopt"],
        },
        Case {
            name: "the staging directory",
            link: "live/iuk-staging",
            must_refuse: &["recover", "apply", "check", "adopt"],
        },
        Case {
            name: "the state",
            link: "live/iuk-state.yml",
            must_refuse: &["status", "verify", "check", "recover", "apply", "adopt"],
        },
        Case {
            name: "the lock",
            link: "live/iuk.lock",
            must_refuse: &["recover", "apply", "adopt"],
        },
        Case {
            name: "the module file",
            link: "live/Tails.module",
            must_refuse: &["verify", "check", "apply", "recover", "adopt"],
        },
        Case {
            name: "the base",
            link: "live/filesystem.squashfs",
            must_refuse: &["verify", "verify --deep", "check", "apply", "adopt"],
        },
        Case {
            name: "live/ itself",
            link: "live",
            must_refuse: &["status", "verify", "check", "recover", "apply", "adopt"],
        },
    ];
    let mut refusals = 0;
    for case in &cases {
        for (cmd, args) in commands(&kit, &bad) {
            let dir = w.join("case");
            let m = dir.join("medium");
            let outside = dir.join("outside");
            fs::create_dir_all(&dir).unwrap();
            copy_tree(&clean, &m);
            make_link(case, &m, &outside);
            let (m_before, o_before) = (medium_listing(&m), listing(&outside));
            let r = run_on(&m, &args);
            let what = format!("{} ({}), `{cmd}`", case.name, case.link);
            assert!(!r.stderr.contains("panicked"), "{what}: panicked: {r}");
            assert_eq!(
                listing(&outside),
                o_before,
                "{what}: changed files outside the medium: {r}"
            );
            if case.must_refuse.contains(&cmd) {
                assert_eq!(r.code, Some(1), "{what}: not refused: {r}");
                let lines: Vec<&str> = r.stderr.lines().collect();
                assert_eq!(lines.len(), 1, "{what}: not one line: {r}");
                assert!(
                    lines[0].contains(&m.join(case.link).display().to_string())
                        && lines[0].contains("symbolic link"),
                    "{what}: the error does not name the link: {r}"
                );
            }
            if !r.ok() {
                assert_eq!(r.code, Some(1), "{what}: {r}");
                assert_eq!(
                    medium_listing(&m),
                    m_before,
                    "{what}: the refusal changed the medium: {r}"
                );
                refusals += 1;
            }
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    eprintln!("hostile symlinks: {refusals} refusals");
}

/// The state of a medium, parsed.
fn state_of(m: &Path) -> iuk::medium::state::State {
    let text = fs::read_to_string(m.join("live/iuk-state.yml")).unwrap();
    iuk::medium::state::State::from_yaml(&text).unwrap()
}

/// Every size and sha256 the state records is the one the file on the medium has.
fn assert_state_matches_medium(m: &Path, what: &str) {
    let s = state_of(m);
    for l in &s.layers {
        let p = m.join(format!("live/{}.squashfs", l.name));
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            l.size,
            "{what}: {}",
            p.display()
        );
        assert_eq!(sha256_file(&p), l.sha256, "{what}: {}", p.display());
    }
    for f in &s.boot_files {
        let p = m.join(&f.path);
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            f.size,
            "{what}: {}",
            p.display()
        );
        assert_eq!(sha256_file(&p), f.sha256, "{what}: {}", p.display());
    }
}

#[test]
fn no_size_lie_reaches_the_state() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let kit = build_kit("6.9", "6.10");
    let clean = w.join("clean");
    init_medium(&clean, "6.9");
    assert_state_matches_medium(&clean, "after init");
    let control = iuk::kit::Kit::open(&kit).unwrap().control;
    let carried = |p: &str| control.overlay.iter().any(|e| e.path == p);
    let kept = control
        .boot_tree
        .iter()
        .find(|e| !carried(&e.path))
        .expect("a boot file the kit keeps")
        .path
        .clone();
    let written = control
        .boot_tree
        .iter()
        .find(|e| carried(&e.path))
        .expect("a boot file the kit writes")
        .path
        .clone();
    let lies: Vec<(String, u64)> = vec![
        (kept.clone(), i64::MAX as u64),
        (kept.clone(), 0),
        (written.clone(), i64::MAX as u64),
        (written.clone(), 1 << 32),
    ];
    for (i, (path, size)) in lies.iter().enumerate() {
        let bad = w.join(format!("lie-{i}.iuk"));
        rebuild_kit(&kit, &bad, None, |c, _| {
            for e in c.boot_tree.iter_mut().filter(|e| e.path == *path) {
                e.size = *size;
            }
        });
        let m = w.join(format!("m-{i}"));
        copy_tree(&clean, &m);
        let before = listing(&m);
        for cmd in ["check", "apply"] {
            let mut c = ia(cmd, &m);
            c.arg(&bad);
            let r = run(&mut c);
            let what = format!("boot file {path} declared with {size} bytes, `{cmd}`");
            assert_eq!(r.code, Some(1), "{what}: not refused: {r}");
            assert_eq!(r.stderr.lines().count(), 1, "{what}: {r}");
            assert!(r.stderr.contains(path.as_str()), "{what}: {r}");
            assert_eq!(listing(&m), before, "{what}: the medium changed");
        }
    }
    // A good apply records what it wrote; `verify` (without --deep) catches a boot file that
    // grew by one byte, and a layer that did.
    let m = w.join("good");
    copy_tree(&clean, &m);
    let mut c = ia("apply", &m);
    c.arg(&kit);
    let r = run(&mut c);
    assert!(r.ok(), "{r}");
    assert_state_matches_medium(&m, "after apply");
    let layer = format!("live/{}.squashfs", state_of(&m).layers[0].name);
    for grown in [written.as_str(), kept.as_str(), layer.as_str()] {
        let g = w.join("grown");
        copy_tree(&m, &g);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(g.join(grown))
            .unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
        let r = run(&mut ia("verify", &g));
        assert_eq!(r.code, Some(1), "verify after {grown} grew: {r}");
        assert!(r.stderr.contains(grown), "verify after {grown} grew: {r}");
        fs::remove_dir_all(&g).unwrap();
    }
}

/// Flips one byte in the middle of `path` (in a fixture image: a data block).
fn flip_middle(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

/// `check --deep` and `apply --deep` verify the stack first: a flipped byte in the base or in a
/// diff layer (same size, so the cheap checks pass) is refused, nothing written; a damaged
/// superblock is refused even without `--deep`.
#[test]
fn deep_check_and_apply_refuse_a_damaged_stack() {
    if !require_root_or_skip() {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let k2 = build_kit("6.10", "6.11");
    let at_69 = w.join("at-6.9");
    init_medium(&at_69, "6.9");
    let at_610 = w.join("at-6.10");
    copy_tree(&at_69, &at_610);
    let r = run(ia("apply", &at_610).arg(&k1));
    assert!(r.ok(), "{r}");
    let layer = format!("live/{}.squashfs", state_of(&at_610).layers[0].name);
    let cases = [
        (&at_69, "live/filesystem.squashfs", &k1),
        (&at_610, "live/filesystem.squashfs", &k2),
        (&at_610, layer.as_str(), &k2),
    ];
    for (i, (clean, damaged, kit)) in cases.into_iter().enumerate() {
        let m = w.join(format!("m-{i}"));
        copy_tree(clean, &m);
        flip_middle(&m.join(damaged));
        let before = medium_listing(&m);
        // Without --deep the damage goes unnoticed by check (documented: sizes and tables).
        let r = run(ia("check", &m).arg(kit));
        assert!(r.ok(), "check without --deep, {damaged} damaged: {r}");
        for cmd in ["check", "apply"] {
            let r = run(ia(cmd, &m).arg("--deep").arg(kit));
            let what = format!("`{cmd} --deep` with a byte flipped in {damaged}");
            assert_eq!(r.code, Some(1), "{what}: not refused: {r}");
            assert_eq!(r.stderr.lines().count(), 1, "{what}: {r}");
            assert!(r.stderr.contains("adopt"), "{what}: {r}");
            assert_eq!(medium_listing(&m), before, "{what}: the medium changed");
        }
        let r = run(ia("verify", &m).arg("--deep"));
        assert_eq!(r.code, Some(1), "verify --deep, {damaged} damaged: {r}");
    }
    // A damaged superblock: refused by a plain check and apply.
    let m = w.join("sb");
    copy_tree(&at_610, &m);
    let p = m.join(&layer);
    let mut bytes = fs::read(&p).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&p, bytes).unwrap();
    for cmd in ["check", "apply"] {
        let r = run(ia(cmd, &m).arg(&k2));
        assert_eq!(r.code, Some(1), "`{cmd}` with a damaged superblock: {r}");
        assert!(r.stderr.contains(&layer), "`{cmd}`: {r}");
    }
    let r = run(&mut ia("verify", &m));
    assert_eq!(r.code, Some(1), "verify with a damaged superblock: {r}");
}

// ------------------------------------------------------------------------------------------------
// A seeded mutation loop over every kind of input and every command that reads it

/// xorshift64*: a fixed seed gives the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `bytes`: flipped bytes anywhere, in the first or last 4 KiB (where headers
/// and tables lie), or a truncation; with what was done.
fn mutate(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let mut b = bytes.to_vec();
    let len = b.len();
    let kind = rng.below(5);
    if kind == 4 {
        let at = rng.below(len);
        b.truncate(at);
        return (b, format!("truncated to {at}"));
    }
    let mut flips = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let at = match kind {
            0 | 1 => rng.below(len),
            2 => rng.below(len.min(4096)),
            _ => len - 1 - rng.below(len.min(4096)),
        };
        b[at] ^= 1 << rng.below(8);
        flips.push(at);
    }
    (b, format!("bits flipped at {flips:?}"))
}

/// Runs `cmd` under `timeout` (bounded time: a hang fails the test).
fn bounded(cmd: &Command) -> Run {
    let mut t = Command::new("timeout");
    t.arg("60").arg(cmd.get_program()).args(cmd.get_args());
    run(&mut t)
}

/// Asserts a command's outcome on hostile input: no panic, no hang, an exit status it
/// documents (`codes`; the first non-zero one is the refusal), and a refusal is one line that
/// starts `BIN: error:` and names one of `names`.
fn assert_outcome(r: &Run, what: &str, bin: &str, codes: &[i32], error_code: i32, names: &[&str]) {
    assert!(!r.stderr.contains("panicked"), "{what}: panicked: {r}");
    assert_ne!(r.code, Some(124), "{what}: did not finish in 60 s: {r}");
    let code = r.code.unwrap_or(-1);
    assert!(codes.contains(&code), "{what}: exit status {code}: {r}");
    if code == error_code {
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: not one line: {r}");
        assert!(
            lines[0].starts_with(&format!("{bin}: error: ")),
            "{what}: {r}"
        );
        assert!(
            names.iter().any(|n| lines[0].contains(n)),
            "{what}: the error names none of {names:?}: {r}"
        );
    }
}

/// Listing of a medium without the lock file (the one file a refused command may leave).
fn medium_listing(m: &Path) -> BTreeMap<String, String> {
    let mut l = listing(m);
    l.remove("live/iuk.lock");
    l
}

#[test]
fn seeded_mutations_of_every_input_are_refused_cleanly() {
    if !require_root_or_skip() || !iuk_e2e::tools_or_skip(&["gpg", "timeout"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let inputs = w.join("in");
    fs::create_dir_all(&inputs).unwrap();
    let k1 = inputs.join("k1.iuk");
    fs::copy(build_kit("6.9", "6.10"), &k1).unwrap();
    let iso69 = iuk_e2e::iso("6.9");
    let iso610 = iuk_e2e::iso("6.10");
    let plain = inputs.join("plain");
    init_medium(&plain, "6.9");
    // A medium with trusted keys, a signed UDF for it, and a new keyring signed by its key.
    let g = iuk_e2e::Gpg::new();
    let key = g.gen("a@example.org", "sign");
    let keys = inputs.join("keys.asc");
    fs::write(&keys, g.export(&[&key])).unwrap();
    let keyed = inputs.join("keyed");
    let r = run(ia("init", &keyed)
        .arg("--iso")
        .arg(&iso69)
        .arg("--keyring")
        .arg(&keys));
    assert!(r.ok(), "{r}");
    let udf = inputs.join("upgrades.yml");
    let mut d = iuk_e2e::iuk_command("iuk-build");
    d.args([
        "describe",
        "--product",
        "Tails",
        "--initial-install-version",
        "6.9",
    ])
    .args(["--version", "6.10", "--kit"])
    .arg(&k1)
    .args(["--kit-url", "https://example.org/k1.iuk", "--out"])
    .arg(&udf);
    assert!(run(&mut d).ok());
    let udf_sig = g.sign(&key, &udf, &inputs.join("upgrades.yml.pgp"));
    let key2 = g.gen("b@example.org", "sign");
    let new_keys = inputs.join("new-keys.asc");
    fs::write(&new_keys, g.export(&[&key2])).unwrap();
    let new_sig = g.sign(&key, &new_keys, &inputs.join("new-keys.asc.sig"));
    // A journal the apply of k1 would commit.
    let p = iuk::medium::plan::plan(
        &iuk::medium::Medium::new(&plain),
        &k1,
        &Default::default(),
        &iuk::progress::NoProgress,
    )
    .unwrap();
    let journal =
        iuk::medium::plan::plan_journal(p.old_state_sha, &p.new_state, &p.writes, &p.deletes)
            .encode();
    let base = w.join("base.squashfs");
    fs::write(
        &base,
        fs::read(plain.join("live/filesystem.squashfs")).unwrap(),
    )
    .unwrap();
    let inputs_before = listing(&inputs);

    let mut rng = Rng(0x1d2c_3b4a_5968_7786);
    let mutated = w.join("mut");
    let m = w.join("medium");
    let out = w.join("out");
    let mut runs = 0;
    let mut refused = 0;
    let mut tally = |r: &Run| {
        runs += 1;
        if !r.ok() {
            refused += 1;
        }
    };
    let ab = |sub: &str| {
        let mut c = iuk_e2e::iuk_command("iuk-build");
        c.arg(sub);
        c
    };
    let fresh = |from: &Path| {
        if m.exists() {
            fs::remove_dir_all(&m).unwrap();
        }
        copy_tree(from, &m);
    };
    let mname = m.display().to_string();

    // Kits: check and apply (on a copy), inspect, compare; a few rebuilds.
    let kit_bytes = fs::read(&k1).unwrap();
    for i in 0..40 {
        let (bytes, how) = mutate(&kit_bytes, &mut rng);
        fs::write(&mutated, &bytes).unwrap();
        let mn = mutated.display().to_string();
        fresh(&plain);
        let before = medium_listing(&m);
        for sub in ["check", "apply"] {
            let r = bounded(ia(sub, &m).arg(&mutated));
            let what = format!("kit {how}, `{sub}`");
            assert_outcome(&r, &what, "iuk-apply", &[0, 1], 1, &[&mn, &mname]);
            if !r.ok() {
                assert_eq!(medium_listing(&m), before, "{what}: the medium changed");
            }
            tally(&r);
        }
        let r = bounded(ab("inspect").arg("--list").arg(&mutated));
        assert_outcome(
            &r,
            &format!("kit {how}, inspect"),
            "iuk-build",
            &[0, 1],
            1,
            &[&mn],
        );
        tally(&r);
        let r = bounded(ab("compare").arg(&mutated).arg(&k1));
        assert_outcome(
            &r,
            &format!("kit {how}, compare"),
            "iuk-build",
            &[0, 1, 2],
            2,
            &[&mn],
        );
        tally(&r);
        let r = bounded(
            ab("describe")
                .args(["--product", "Tails", "--initial-install-version", "6.9"])
                .args(["--version", "6.10", "--kit"])
                .arg(&mutated)
                .args(["--kit-url", "https://example.org/k1.iuk"])
                .args(["--details-url", "https://example.org/news"]),
        );
        assert_outcome(
            &r,
            &format!("kit {how}, describe"),
            "iuk-build",
            &[0, 1],
            1,
            &[&mn],
        );
        tally(&r);
        if i % 8 == 0 {
            let r = bounded(
                ab("rebuild")
                    .arg(&mutated)
                    .arg("--old")
                    .arg(&iso69)
                    .arg("--new")
                    .arg(&iso610),
            );
            assert_outcome(
                &r,
                &format!("kit {how}, rebuild"),
                "iuk-build",
                &[0, 1, 2],
                2,
                &[&mn],
            );
            tally(&r);
        }
    }

    // Images: inspect, compare.
    let base_bytes = fs::read(&base).unwrap();
    for _ in 0..40 {
        let (bytes, how) = mutate(&base_bytes, &mut rng);
        fs::write(&mutated, &bytes).unwrap();
        let mn = mutated.display().to_string();
        let r = bounded(ab("inspect").arg("--list").arg(&mutated));
        assert_outcome(
            &r,
            &format!("image {how}, inspect"),
            "iuk-build",
            &[0, 1],
            1,
            &[&mn],
        );
        tally(&r);
        let r = bounded(ab("compare").arg(&base).arg(&mutated));
        assert_outcome(
            &r,
            &format!("image {how}, compare"),
            "iuk-build",
            &[0, 1, 2],
            2,
            &[&mn],
        );
        tally(&r);
    }

    // ISOs: init (the medium stays missing when refused), build.
    let iso_bytes = fs::read(&iso610).unwrap();
    for i in 0..30 {
        let (bytes, how) = mutate(&iso_bytes, &mut rng);
        fs::write(&mutated, &bytes).unwrap();
        let mn = mutated.display().to_string();
        if m.exists() {
            fs::remove_dir_all(&m).unwrap();
        }
        let r = bounded(ia("init", &m).arg("--iso").arg(&mutated));
        assert_outcome(
            &r,
            &format!("ISO {how}, init"),
            "iuk-apply",
            &[0, 1],
            1,
            &[&mn, &mname],
        );
        if !r.ok() {
            assert!(
                !m.exists(),
                "ISO {how}: a refused init left {}",
                m.display()
            );
        }
        tally(&r);
        if i % 3 == 0 {
            let _ = fs::remove_file(&out);
            let r = bounded(
                ab("build")
                    .args(["--source-date-epoch", "1700000000"])
                    .arg("--old")
                    .arg(&iso69)
                    .arg("--new")
                    .arg(&mutated)
                    .arg("--out")
                    .arg(&out),
            );
            assert_outcome(
                &r,
                &format!("ISO {how}, build"),
                "iuk-build",
                &[0, 1],
                1,
                &[&mn],
            );
            if !r.ok() {
                assert!(
                    !out.exists(),
                    "ISO {how}: a refused build left {}",
                    out.display()
                );
            }
            tally(&r);
        }
    }

    // States and journals on a copy of the medium: status, verify, check, apply, recover.
    let state_bytes = fs::read(plain.join("live/iuk-state.yml")).unwrap();
    for (what, file, bytes) in [
        ("state", "live/iuk-state.yml", &state_bytes),
        ("journal", "live/iuk-journal", &journal),
    ] {
        for _ in 0..25 {
            let (mb, how) = mutate(bytes, &mut rng);
            fresh(&plain);
            fs::write(m.join(file), &mb).unwrap();
            let before = medium_listing(&m);
            for args in [
                vec!["status"],
                vec!["verify"],
                vec!["check", k1.to_str().unwrap()],
                vec!["recover"],
                vec!["apply", k1.to_str().unwrap()],
            ] {
                let mut c = ia(args[0], &m);
                c.args(&args[1..]);
                let r = bounded(&c);
                let w = format!("{what} {how}, `{}`", args.join(" "));
                assert_outcome(&r, &w, "iuk-apply", &[0, 1], 1, &[&mname]);
                if !r.ok() {
                    assert_eq!(medium_listing(&m), before, "{w}: the medium changed");
                }
                tally(&r);
            }
        }
    }

    // UDFs (select) and keyrings (trust) against the medium with trusted keys.
    let udf_bytes = fs::read(&udf).unwrap();
    let keys_bytes = fs::read(&new_keys).unwrap();
    for _ in 0..20 {
        let (bytes, how) = mutate(&udf_bytes, &mut rng);
        fs::write(&mutated, &bytes).unwrap();
        let mn = mutated.display().to_string();
        let r = bounded(
            ia("select", &keyed)
                .arg("--udf")
                .arg(&mutated)
                .arg("--signature")
                .arg(&udf_sig),
        );
        assert_outcome(
            &r,
            &format!("UDF {how}, select"),
            "iuk-apply",
            &[0, 1, 3],
            1,
            &[&mn, &keyed.display().to_string()],
        );
        tally(&r);
        let (bytes, how) = mutate(&keys_bytes, &mut rng);
        fs::write(&mutated, &bytes).unwrap();
        fresh(&keyed);
        let before = medium_listing(&m);
        let r = bounded(
            ia("trust", &m)
                .arg("--keyring")
                .arg(&mutated)
                .arg("--signature")
                .arg(&new_sig),
        );
        let what = format!("keyring {how}, trust");
        assert_outcome(&r, &what, "iuk-apply", &[0, 1], 1, &[&mn, &mname]);
        if !r.ok() {
            assert_eq!(medium_listing(&m), before, "{what}: the medium changed");
        }
        tally(&r);
    }
    assert_eq!(
        listing(&inputs),
        inputs_before,
        "an input outside the medium changed"
    );
    eprintln!("hostile mutations: {runs} runs, {refused} refused");
    assert!(
        refused * 2 > runs,
        "too few refusals ({refused} of {runs}): are the mutations applied?"
    );
}

/// YAML nested as deep as its file's size cap allows, in the state, a kit's control.yml and a
/// signed UDF: refused at once (the nesting guard runs before the parser), one line naming the
/// file. Times are printed; the bound here only catches a hang (speed is measured in notes).
#[test]
fn deep_yaml_at_the_size_caps_is_refused_at_once() {
    if !require_root_or_skip() || !iuk_e2e::tools_or_skip(&["unsquashfs", "gensquashfs"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    let deep = |cap: usize| "[".repeat(cap);
    let time = |what: &str, cmd: &mut Command, names: &str| {
        let t = std::time::Instant::now();
        let r = run(cmd);
        let secs = t.elapsed().as_secs_f64();
        eprintln!("{what}: refused in {secs:.3} s");
        assert_eq!(r.code, Some(1), "{what}: {r}");
        assert_eq!(r.stderr.lines().count(), 1, "{what}: {r}");
        assert!(r.stderr.contains(names), "{what}: {r}");
        assert!(
            r.stderr.contains("nest"),
            "{what}: the error does not say nesting: {r}"
        );
        assert!(secs < 20.0, "{what}: {secs} s");
    };
    // The state at its cap (2 MiB).
    let state = m.join("live/iuk-state.yml");
    let saved = fs::read(&state).unwrap();
    fs::write(&state, deep(iuk::medium::state::MAX_STATE)).unwrap();
    time("state", &mut ia("status", &m), "iuk-state.yml");
    fs::write(&state, saved).unwrap();
    // control.yml at its cap.
    let bad = w.join("deep.iuk");
    crate::apply::as_tails_kit(&k1, &bad, |d| {
        fs::write(d.join("control.yml"), deep(iuk::kit::MAX_CONTROL as usize)).unwrap()
    });
    time("control.yml", ia("check", &m).arg(&bad), "control.yml");
}

/// A kit whose layer is damaged but whose control.yml records the damaged bytes (a hostile or
/// broken builder): a damaged table is refused by `check` and `apply`; a data block that does
/// not decode is refused with `--deep` (which decodes every block of the layer).
#[test]
fn a_damaged_layer_with_matching_hashes_is_refused() {
    if !require_root_or_skip() || !iuk_e2e::tools_or_skip(&["unsquashfs"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let k1 = build_kit("6.9", "6.10");
    let m = w.join("medium");
    init_medium(&m, "6.9");
    let control = iuk::kit::Kit::open(&k1).unwrap().control;
    let layer_path = control.layer_path();
    let layer = crate::apply::kit_file(&k1, &format!("overlay/{layer_path}"));
    // The id table lies at the end of the layer's tables; the data blocks in the middle.
    let sb =
        iuk::squashfs::superblock::Superblock::decode(&layer[..96], layer.len() as u64).unwrap();
    let cases = [
        ("a damaged id table", sb.id_table_start as usize + 1, false),
        ("a damaged data block", layer.len() / 3, true),
    ];
    for (what, at, deep_only) in cases {
        let mut bytes = layer.clone();
        bytes[at] ^= 0x5a;
        let bad = w.join("bad.iuk");
        rebuild_kit(&k1, &bad, None, |c, files| {
            for e in c.overlay.iter_mut().filter(|e| e.path == layer_path) {
                e.size = bytes.len() as u64;
                e.sha256 = iuk_e2e::sha256_hex(&bytes);
            }
            for f in files.iter_mut().filter(|f| f.path == layer_path) {
                f.content = iuk::tree::Content::from_bytes(bytes.clone());
            }
        });
        let before = medium_listing(&m);
        for deep in [false, true] {
            for cmd in ["check", "apply"] {
                let mut c = ia(cmd, &m);
                if deep {
                    c.arg("--deep");
                }
                let r = run(c.arg(&bad));
                let w = format!("{what}, `{cmd}{}`", if deep { " --deep" } else { "" });
                if deep_only && !deep {
                    assert_eq!(r.code, Some(0), "{w}: {r}");
                    if cmd == "apply" {
                        // Undo: this test is about refusals.
                        fs::remove_dir_all(&m).unwrap();
                        init_medium(&m, "6.9");
                    }
                    continue;
                }
                assert_eq!(r.code, Some(1), "{w}: not refused: {r}");
                assert_eq!(r.stderr.lines().count(), 1, "{w}: {r}");
                assert!(r.stderr.contains(&layer_path), "{w}: {r}");
                assert_eq!(medium_listing(&m), before, "{w}: the medium changed");
            }
        }
    }
}
