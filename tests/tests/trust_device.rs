//! The device side of the trust chain through the real binaries (DESIGN.md, "Trust" and "The
//! medium"): a medium initialised with trusted OpenPGP keys applies only kits listed in an
//! upgrade description file (made by `iuk-build describe`) signed by one of them; `select`
//! tells which path the device takes; `trust` rotates the keys, crash-safely.
//!
//! Keys and signatures are made by GnuPG (ed25519) in temporary homes; every test prints
//! `SKIP: …` without `gpg` (and the kill test without `strace`), unless
//! `IUK_REQUIRE_KERNEL=1`. Needs the built binaries (`cargo build --release -p iuk-apply -p
//! iuk-build`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use iuk_e2e::{
    assert_same_tree, copy_tree, fixture, fixture_kit_at, iuk_command, kernel_or_skip, kill_points,
    mount_overlay, mount_squashfs, require_root_or_skip, run, run_ok, sha256_file, sha256_hex,
    snapshot, tools_or_skip, trace_clean_run, Gpg, Run,
};
use tempfile::TempDir;

const EPOCH: u32 = 1_700_000_000;
const LOCK: &str = "live/iuk.lock";

fn tmpdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("iuk-e2e-trustdev-")
        .tempdir()
        .unwrap()
}

/// A file `name` in `dir` holding `bytes`.
fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

// ------------------------------------------------------------------------------------------------
// Kits, UDFs, the medium

/// The kit `from` → `to` of the fixture ISOs, built once per run and shared
/// ([`iuk_e2e::fixture_kit`]): read it, never change it.
fn kit(from: &str, to: &str) -> PathBuf {
    fixture_kit_at(from, to, EPOCH, &[])
}

fn url(file: &Path) -> String {
    format!(
        "https://example.org/{}",
        file.file_name().unwrap().to_string_lossy()
    )
}

/// `iuk-build describe` for devices installed at 6.9 offering `version` through `kits` (and
/// the fixture ISO of `version` as the full upgrade when `full`), written to `dir/name`.
fn describe(dir: &Path, name: &str, version: &str, kits: &[&Path], full: bool) -> PathBuf {
    let out = dir.join(name);
    let mut c = iuk_command("iuk-build");
    c.args(["describe", "--product", "Tails", "--build-target", "amd64"])
        .args(["--channel", "stable", "--initial-install-version", "6.9"])
        .args(["--version", version])
        .args([
            "--details-url",
            &format!("https://example.org/news/{version}/"),
        ]);
    for k in kits {
        c.arg("--kit").arg(k).arg("--kit-url").arg(url(k));
    }
    if full {
        let iso = fixture(&format!("Tails-{version}.iso"));
        c.arg("--iso").arg(&iso).arg("--iso-url").arg(url(&iso));
    }
    run_ok(c.arg("--out").arg(&out));
    out
}

/// `iuk-apply SUB --medium MEDIUM`.
fn ia(sub: &str, medium: &Path) -> Command {
    let mut c = iuk_command("iuk-apply");
    c.arg(sub).arg("--medium").arg(medium);
    c
}

/// `init` at 6.9, with the keyring given.
fn init(medium: &Path, keyring: Option<&Path>) -> Run {
    let mut c = ia("init", medium);
    c.arg("--iso").arg(fixture("Tails-6.9.iso"));
    if let Some(k) = keyring {
        c.arg("--keyring").arg(k);
    }
    run_ok(&mut c)
}

/// `apply` (or `check`) of a kit with a signed UDF.
fn signed(sub: &str, medium: &Path, kit: &Path, udf: &Path, sig: &Path) -> Run {
    run(ia(sub, medium)
        .arg(kit)
        .arg("--udf")
        .arg(udf)
        .arg("--signature")
        .arg(sig))
}

fn status(medium: &Path) -> serde_json::Value {
    let r = run_ok(ia("status", medium).arg("--json"));
    serde_json::from_slice(&r.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {r}"))
}

/// Every name under the medium with the sha256 of each file (None for a directory), the lock
/// file aside (the one file a refused command may leave changed).
fn files(root: &Path) -> BTreeMap<String, Option<String>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Option<String>>) {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else if rel != LOCK {
                out.insert(rel, Some(sha256_file(&p)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn diff(a: &BTreeMap<String, Option<String>>, b: &BTreeMap<String, Option<String>>) -> String {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", a.get(k), b.get(k)))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Asserts a refusal: exit 1, nothing on stdout, one stderr line `iuk-apply: error: …` that
/// contains `needle`.
fn refused(r: &Run, what: &str, needle: &str) {
    assert_eq!(r.code, Some(1), "{what}: {r}");
    assert!(!r.stderr.contains("panicked"), "{what}: {r}");
    assert!(r.stdout.is_empty(), "{what}: {r}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one stderr line: {r}");
    assert!(lines[0].starts_with("iuk-apply: error: "), "{what}: {r}");
    assert!(
        lines[0].contains(needle),
        "{what}: {:?} should mention {needle:?}",
        lines[0]
    );
}

/// Runs `cmd`, asserts it is refused (see [`refused`]) and that the medium is byte-for-byte
/// what it was.
fn refused_unchanged(medium: &Path, cmd: &mut Command, what: &str, needle: &str) {
    let before = files(medium);
    let r = run(cmd);
    refused(&r, what, needle);
    let after = files(medium);
    assert!(
        before == after,
        "{what}: the refused command changed the medium:\n  {}",
        diff(&before, &after)
    );
}

fn verify_deep(medium: &Path) {
    run_ok(ia("verify", medium).arg("--deep"));
}

/// `select --json`, with its exit code.
fn select(
    medium: &Path,
    udf: &Path,
    sig: &Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value) {
    let r = run(ia("select", medium)
        .arg("--udf")
        .arg(udf)
        .arg("--signature")
        .arg(sig)
        .arg("--json")
        .args(extra));
    assert!(r.code == Some(0) || r.code == Some(3), "select failed: {r}");
    let v = serde_json::from_slice(&r.stdout).unwrap_or_else(|e| panic!("select --json: {e}: {r}"));
    (r.code, v)
}

/// Asserts that `select` picks `file` (a kit or an ISO) by `outcome` and `model`.
fn picks(v: &serde_json::Value, outcome: &str, model: Option<&str>, version: &str, file: &Path) {
    assert_eq!(v["outcome"], outcome, "{v}");
    assert_eq!(v["model"].as_str(), model, "{v}");
    assert_eq!(v["version"], version, "{v}");
    let f = &v["files"][0];
    assert_eq!(f["url"], url(file), "{v}");
    assert_eq!(f["size"], fs::metadata(file).unwrap().len(), "{v}");
    assert_eq!(f["sha256"], sha256_file(file), "{v}");
}

// ------------------------------------------------------------------------------------------------
// Signed apply and its refusals

#[test]
fn signed_apply_stacks_and_everything_else_is_refused_before_any_write() {
    if !tools_or_skip(&["gpg"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let g = Gpg::new();
    let a = g.gen("a@example.org", "sign");
    let x = g.gen("x@example.org", "sign");
    let keys = put(w, "A.asc", &g.export(&[&a]));
    let k1 = kit("6.9", "6.10");
    let kc = kit("6.9", "6.11");
    let udf = describe(w, "u10.yml", "6.10", &[&k1], false);
    let sig = g.sign(&a, &udf, &w.join("u10.yml.pgp"));
    let m = w.join("medium");
    let r = init(&m, Some(&keys));
    assert!(r.stderr.is_empty(), "init warned: {r}");

    // The keyring is on the medium, named by its content, and recorded in the state.
    let name = format!("iuk-keyring-{}.asc", sha256_file(&keys));
    assert_eq!(
        fs::read(m.join("live").join(&name)).unwrap(),
        fs::read(&keys).unwrap()
    );
    let s = status(&m);
    assert_eq!(s["keyring"], name.as_str());
    assert_eq!(s["key_fingerprints"], serde_json::json!([a]));

    // Unsigned, by an unknown key, modified, for another device, a kit it does not list.
    let what = "unsigned apply on a keyed medium";
    refused_unchanged(&m, ia("apply", &m).arg(&k1), what, "--udf");
    refused_unchanged(&m, ia("check", &m).arg(&k1), "unsigned check", "--udf");
    let by_x = g.sign(&x, &udf, &w.join("u10.yml.x.pgp"));
    let apply = |kit: &Path, udf: &Path, sig: &Path| {
        let mut c = ia("apply", &m);
        c.arg(kit).arg("--udf").arg(udf).arg("--signature").arg(sig);
        c
    };
    refused_unchanged(
        &m,
        &mut apply(&k1, &udf, &by_x),
        "unknown key",
        "unknown key",
    );
    assert!(
        run(&mut apply(&k1, &udf, &by_x)).stderr.contains(&x),
        "names the key"
    );
    let text = fs::read_to_string(&udf).unwrap();
    let forged = put(
        w,
        "forged.yml",
        text.replace("https://example.org/", "https://evil.example/")
            .as_bytes(),
    );
    refused_unchanged(
        &m,
        &mut apply(&k1, &forged, &sig),
        "modified UDF",
        "does not match the data",
    );
    for (what, from, to, needle) in [
        (
            "another product",
            "product-name: \"Tails\"",
            "product-name: \"Other\"",
            "product-name",
        ),
        (
            "another initial-install version",
            "initial-install-version: \"6.9\"",
            "initial-install-version: \"6.8\"",
            "initial-install-version",
        ),
        (
            "another channel",
            "channel: \"stable\"",
            "channel: \"alpha\"",
            "channel",
        ),
        (
            "the kit listed as another upgrade",
            "  version: \"6.10\"",
            "  version: \"6.11\"",
            "lists it as the kit from 6.9 to 6.11",
        ),
    ] {
        assert!(text.contains(from), "{from:?} not in\n{text}");
        let other = put(w, "other.yml", text.replace(from, to).as_bytes());
        let other_sig = g.sign(&a, &other, &w.join("other.yml.pgp"));
        refused_unchanged(&m, &mut apply(&k1, &other, &other_sig), what, needle);
    }
    refused_unchanged(
        &m,
        &mut apply(&kc, &udf, &sig),
        "a kit the UDF does not list",
        "not listed in the signed upgrade description",
    );
    // A damaged kit with the listed name: its sha256 is not the listed one.
    let damaged = w.join("damaged").join(k1.file_name().unwrap());
    fs::create_dir_all(damaged.parent().unwrap()).unwrap();
    let mut bytes = fs::read(&k1).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&damaged, bytes).unwrap();
    refused_unchanged(
        &m,
        &mut apply(&damaged, &udf, &sig),
        "damaged kit",
        "not listed",
    );

    // The signed kit: checked, then stacked, with no warning.
    let r = signed("check", &m, &k1, &udf, &sig);
    assert!(r.ok() && r.stderr.is_empty(), "{r}");
    let r = signed("apply", &m, &k1, &udf, &sig);
    assert!(r.ok(), "{r}");
    assert!(r.stderr.is_empty(), "signed apply warned: {r}");
    let s = status(&m);
    assert_eq!(s["current_version"], "6.10");
    assert_eq!(s["keyring"], name.as_str(), "the keyring survives an apply");
    verify_deep(&m);
    assert!(m.join("live").join(&name).is_file());
    stack_equals_root(&m, "6.10", w);
    // Replayed: refused, even signed.
    refused_unchanged(&m, &mut apply(&k1, &udf, &sig), "replay", "not listed");
}

/// RSA keys, a signing subkey of a certify-only primary, and a key that has expired since it
/// signed all authorize a signed `check` on a keyed medium (judged at the signature's time,
/// never against the clock).
#[test]
fn rsa_subkey_and_expired_since_signing_keys_are_accepted() {
    if !tools_or_skip(&["gpg"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let g = Gpg::new();
    let fpr = |email: &str| -> String {
        let text = String::from_utf8(g.run(&["--with-colons", "--list-keys", email])).unwrap();
        text.lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .unwrap()
            .to_string()
    };
    g.run(&[
        "--quick-gen-key",
        "RSA <rsa@example.org>",
        "rsa3072",
        "sign",
        "0",
    ]);
    let rsa = fpr("rsa@example.org");
    g.run(&[
        "--quick-gen-key",
        "Cert <cert@example.org>",
        "ed25519",
        "cert",
        "0",
    ]);
    let cert = fpr("cert@example.org");
    g.run(&["--quick-add-key", &cert, "ed25519", "sign", "0"]);
    g.run(&[
        "--faked-system-time",
        "20200101T000000!",
        "--quick-gen-key",
        "Old <old@example.org>",
        "ed25519",
        "sign",
        "2d",
    ]);
    let old = fpr("old@example.org");
    let keys = put(w, "keys.asc", &g.export(&[&rsa, &cert, &old]));
    let k1 = kit("6.9", "6.10");
    let udf = describe(w, "u.yml", "6.10", &[&k1], false);
    let m = w.join("medium");
    init(&m, Some(&keys));
    for (name, key, faked) in [
        ("rsa", &rsa, None),
        ("subkey", &cert, None),
        ("expired since", &old, Some("20200101T120000!")),
    ] {
        let sig = w.join(format!("u-{name}.pgp"));
        match faked {
            Some(t) => {
                g.run(&[
                    "--faked-system-time",
                    t,
                    "--local-user",
                    key,
                    "--armor",
                    "--detach-sign",
                    "--output",
                    sig.to_str().unwrap(),
                    udf.to_str().unwrap(),
                ]);
            }
            None => {
                g.sign(key, &udf, &sig);
            }
        }
        let r = signed("check", &m, &k1, &udf, &sig);
        assert!(r.ok(), "{name}: a signed check was refused: {r}");
    }
}

// ------------------------------------------------------------------------------------------------
// select

#[test]
fn select_takes_the_path_of_the_rule() {
    if !tools_or_skip(&["gpg"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let g = Gpg::new();
    let a = g.gen("a@example.org", "sign");
    let keys = put(w, "A.asc", &g.export(&[&a]));
    let k1 = kit("6.9", "6.10");
    let k2 = kit("6.10", "6.11");
    let kc = kit("6.9", "6.11");
    let k4 = kit("6.11", "6.11.1");
    let k5 = kit("6.9", "6.11.1");
    let sign = |name: &str, version: &str, kits: &[&Path], full: bool| {
        let u = describe(w, name, version, kits, full);
        let s = g.sign(&a, &u, &w.join(format!("{name}.pgp")));
        (u, s)
    };
    let u10 = sign("u10.yml", "6.10", &[&k1], false);
    let u11 = sign("u11.yml", "6.11", &[&k2, &kc], false);
    let u1111 = sign("u1111.yml", "6.11.1", &[&k4, &k5], false);
    let full = sign("full.yml", "6.11", &[], true);
    let m = w.join("medium");
    init(&m, Some(&keys));

    // At the base: the kit from the base, stacked.
    let (code, v) = select(&m, &u10.0, &u10.1, &[]);
    assert_eq!(code, Some(0));
    picks(&v, "incremental", Some("stacking"), "6.10", &k1);
    assert_eq!(v["signed_by"], a.as_str());
    assert_eq!(signed("apply", &m, &k1, &u10.0, &u10.1).code, Some(0));

    let before = files(&m);
    // At 6.10 (one layer): the stacking kit from 6.10.
    let (_, v) = select(&m, &u11.0, &u11.1, &[]);
    picks(&v, "incremental", Some("stacking"), "6.11", &k2);
    assert_eq!(v["from_version"], "6.10");
    // The same in human form: type, version, URL, size, sha256.
    let r = run_ok(
        ia("select", &m)
            .arg("--udf")
            .arg(&u11.0)
            .arg("--signature")
            .arg(&u11.1),
    );
    let out = r.stdout_text();
    for needle in [
        "incremental".to_string(),
        "6.11".to_string(),
        url(&k2),
        fs::metadata(&k2).unwrap().len().to_string(),
        sha256_file(&k2),
    ] {
        assert!(out.contains(&needle), "{needle:?} missing: {r}");
    }
    // One more layer would exceed --max-layers: the cumulative kit.
    let (_, v) = select(&m, &u11.0, &u11.1, &["--max-layers", "1"]);
    picks(&v, "incremental", Some("cumulative"), "6.11", &kc);
    // No kit from the current version 6.10: the cumulative kit from the base.
    let (_, v) = select(&m, &u1111.0, &u1111.1, &[]);
    picks(&v, "incremental", Some("cumulative"), "6.11.1", &k5);
    // No incremental path at all: the full upgrade.
    let (code, v) = select(&m, &full.0, &full.1, &[]);
    assert_eq!(code, Some(0));
    picks(&v, "full", None, "6.11", &fixture("Tails-6.11.iso"));
    // Nothing newer: exit 3.
    let (code, v) = select(&m, &u10.0, &u10.1, &[]);
    assert_eq!(code, Some(3));
    assert_eq!(v["outcome"], "up-to-date");
    let r = run(ia("select", &m)
        .arg("--udf")
        .arg(&u10.0)
        .arg("--signature")
        .arg(&u10.1));
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stdout_text().contains("no upgrade"), "{r}");
    assert!(files(&m) == before, "select wrote");

    // Refused: a UDF for another device, a bad signature.
    let text = fs::read_to_string(&u11.0).unwrap();
    let other = put(
        w,
        "other.yml",
        text.replace("channel: \"stable\"", "channel: \"alpha\"")
            .as_bytes(),
    );
    let other_sig = g.sign(&a, &other, &w.join("other.yml.pgp"));
    refused_unchanged(
        &m,
        ia("select", &m)
            .arg("--udf")
            .arg(&other)
            .arg("--signature")
            .arg(&other_sig),
        "select of a UDF for another channel",
        "channel",
    );
    refused_unchanged(
        &m,
        ia("select", &m)
            .arg("--udf")
            .arg(&u11.0)
            .arg("--signature")
            .arg(&u10.1),
        "select with another file's signature",
        "does not match the data",
    );

    // A pending journal is reported; select still works and writes nothing.
    fs::write(m.join("live/iuk-journal"), b"iuk-journal 1\ntorn").unwrap();
    let before = files(&m);
    let r = run_ok(
        ia("select", &m)
            .arg("--udf")
            .arg(&u11.0)
            .arg("--signature")
            .arg(&u11.1),
    );
    assert!(
        r.stderr.contains("pending") && r.stderr.contains("recover"),
        "{r}"
    );
    assert!(r.stdout_text().contains(&sha256_file(&k2)), "{r}");
    assert!(files(&m) == before, "select wrote with a pending journal");
    run_ok(&mut ia("recover", &m));

    // The cumulative kit applies; at the newest version, nothing more: exit 3.
    assert_eq!(signed("apply", &m, &k5, &u1111.0, &u1111.1).code, Some(0));
    verify_deep(&m);
    let (code, v) = select(&m, &u1111.0, &u1111.1, &[]);
    assert_eq!(code, Some(3));
    assert_eq!(v["outcome"], "up-to-date");
    assert_eq!(v["current_version"], "6.11.1");

    // The exit codes are documented.
    let help = run_ok(iuk_command("iuk-apply").args(["select", "--help"])).stdout_text();
    assert!(
        help.contains("Exit status") && help.contains("  3  "),
        "{help}"
    );
}

// ------------------------------------------------------------------------------------------------
// trust: key rotation

#[test]
fn trust_rotates_keys_and_revocations_take_effect_at_once() {
    if !tools_or_skip(&["gpg"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let g = Gpg::new();
    let a = g.gen("a@example.org", "sign");
    let c = g.gen("c@example.org", "sign");
    let d = g.gen("d@example.org", "sign");
    let x = g.gen("x@example.org", "sign");
    let e = g.gen("e@example.org", "cert");
    let keys = put(w, "A.asc", &g.export(&[&a]));
    let k1 = kit("6.9", "6.10");
    let k2 = kit("6.10", "6.11");
    let kc = kit("6.9", "6.11");
    let u10 = describe(w, "u10.yml", "6.10", &[&k1], false);
    let u11 = describe(w, "u11.yml", "6.11", &[&kc, &k2], false);
    let m = w.join("medium");
    init(&m, Some(&keys));
    let old_name = format!("iuk-keyring-{}.asc", sha256_file(&keys));
    let trust = |keyring: &Path, sig: &Path| {
        let mut cmd = ia("trust", &m);
        cmd.arg("--keyring")
            .arg(keyring)
            .arg("--signature")
            .arg(sig);
        cmd
    };

    // Refused, medium unchanged: signed by an untrusted key, a keyring without a signing key,
    // a signature over other bytes.
    let new1 = {
        let mut b = g.export(&[&a]);
        b.extend_from_slice(&g.revocation(&a));
        b.extend_from_slice(&g.export(&[&c]));
        put(w, "new1.asc", &b)
    };
    let by_x = g.sign(&x, &new1, &w.join("new1.asc.x.sig"));
    refused_unchanged(
        &m,
        &mut trust(&new1, &by_x),
        "keyring signed by X",
        "unknown key",
    );
    let certify_only = put(w, "e.asc", &g.export(&[&e]));
    let e_sig = g.sign(&a, &certify_only, &w.join("e.asc.sig"));
    refused_unchanged(
        &m,
        &mut trust(&certify_only, &e_sig),
        "keyring without a signing key",
        "no key in it can sign",
    );
    refused_unchanged(
        &m,
        &mut trust(&new1, &e_sig),
        "signature over another keyring",
        "does not match the data",
    );
    let garbage = put(w, "garbage.asc", b"not a keyring\n");
    let garbage_sig = g.sign(&a, &garbage, &w.join("garbage.asc.sig"));
    refused_unchanged(
        &m,
        &mut trust(&garbage, &garbage_sig),
        "garbage keyring",
        "garbage.asc",
    );

    // Rotation 1, signed by A: A revoked, C added.
    let sig1 = g.sign(&a, &new1, &w.join("new1.asc.sig"));
    let r = run_ok(&mut trust(&new1, &sig1));
    assert!(r.stdout_text().contains(&c), "{r}");
    let name1 = format!("iuk-keyring-{}.asc", sha256_file(&new1));
    let s = status(&m);
    assert_eq!(s["keyring"], name1.as_str());
    let mut fprs = vec![a.clone(), c.clone()];
    fprs.sort();
    assert_eq!(s["key_fingerprints"], serde_json::json!(fprs));
    assert!(
        !m.join("live").join(&old_name).exists(),
        "the old keyring is left"
    );
    assert_eq!(
        fs::read(m.join("live").join(&name1)).unwrap(),
        fs::read(&new1).unwrap()
    );
    assert!(!m.join("live/iuk-journal").exists());
    verify_deep(&m);

    // A's signatures are refused at once (revoked); C's work.
    let u10_a = g.sign(&a, &u10, &w.join("u10.a.pgp"));
    let mut cmd = ia("apply", &m);
    cmd.arg(&k1)
        .arg("--udf")
        .arg(&u10)
        .arg("--signature")
        .arg(&u10_a);
    refused_unchanged(&m, &mut cmd, "UDF signed by the revoked key", "revoked");
    let u10_c = g.sign(&c, &u10, &w.join("u10.c.pgp"));
    let r = signed("apply", &m, &k1, &u10, &u10_c);
    assert!(r.ok(), "{r}");

    // Rotation 2, signed by C: only D is trusted now.
    let new2 = put(w, "new2.asc", &g.export(&[&d]));
    let sig2 = g.sign(&c, &new2, &w.join("new2.asc.sig"));
    run_ok(&mut trust(&new2, &sig2));
    let name2 = format!("iuk-keyring-{}.asc", sha256_file(&new2));
    assert_eq!(status(&m)["key_fingerprints"], serde_json::json!([d]));
    let keyrings: Vec<String> = fs::read_dir(m.join("live"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("iuk-keyring-"))
        .collect();
    assert_eq!(keyrings, vec![name2.clone()]);
    // C (no longer in the keyring) is unknown; D applies.
    let u11_c = g.sign(&c, &u11, &w.join("u11.c.pgp"));
    let mut cmd = ia("apply", &m);
    cmd.arg(&k2)
        .arg("--udf")
        .arg(&u11)
        .arg("--signature")
        .arg(&u11_c);
    refused_unchanged(
        &m,
        &mut cmd,
        "UDF signed by a key rotated out",
        "unknown key",
    );
    // C can no longer rotate the keys either.
    refused_unchanged(
        &m,
        &mut trust(&new1, &sig1),
        "rotation signed by A",
        "unknown key",
    );
    let u11_d = g.sign(&d, &u11, &w.join("u11.d.pgp"));
    let r = signed("apply", &m, &k2, &u11, &u11_d);
    assert!(r.ok(), "{r}");
    assert_eq!(status(&m)["current_version"], "6.11");
    verify_deep(&m);

    // The same keyring again: nothing changes.
    let again = g.sign(&d, &new2, &w.join("new2.asc.d.sig"));
    let before = files(&m);
    let r = run_ok(&mut trust(&new2, &again));
    assert!(r.stdout_text().contains("nothing changed"), "{r}");
    assert!(files(&m) == before);
}

// ------------------------------------------------------------------------------------------------
// Media without keys; init and adopt with keys

#[test]
fn media_without_keys_take_unsigned_kits_with_a_warning() {
    if !tools_or_skip(&["gpg"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let g = Gpg::new();
    let a = g.gen("a@example.org", "sign");
    let e = g.gen("e@example.org", "cert");
    let keys = put(w, "A.asc", &g.export(&[&a]));
    let k1 = kit("6.9", "6.10");
    let k2 = kit("6.10", "6.11");
    let kc = kit("6.9", "6.11");
    let u10 = describe(w, "u10.yml", "6.10", &[&k1], false);
    let u10_sig = g.sign(&a, &u10, &w.join("u10.yml.pgp"));
    let u11 = describe(w, "u11.yml", "6.11", &[&kc, &k2], false);
    let u11_sig = g.sign(&a, &u11, &w.join("u11.yml.pgp"));
    let m = w.join("medium");
    init(&m, None);
    assert_eq!(status(&m)["keyring"], serde_json::Value::Null);

    // A signed UDF cannot be verified here: refused with advice; so are select and trust.
    refused_unchanged(
        &m,
        ia("apply", &m)
            .arg(&k1)
            .arg("--udf")
            .arg(&u10)
            .arg("--signature")
            .arg(&u10_sig),
        "signed apply on a keyless medium",
        "--keyring",
    );
    refused_unchanged(
        &m,
        ia("select", &m)
            .arg("--udf")
            .arg(&u10)
            .arg("--signature")
            .arg(&u10_sig),
        "select on a keyless medium",
        "--keyring",
    );
    let sig = g.sign(&a, &keys, &w.join("A.asc.sig"));
    refused_unchanged(
        &m,
        ia("trust", &m)
            .arg("--keyring")
            .arg(&keys)
            .arg("--signature")
            .arg(&sig),
        "trust on a keyless medium",
        "--keyring",
    );

    // Unsigned: applied, with the warning.
    let r = run_ok(ia("apply", &m).arg(&k1));
    assert!(
        r.stderr.contains("iuk-apply: warning: ") && r.stderr.contains("no trusted keys"),
        "{r}"
    );
    verify_deep(&m);

    // adopt --keyring gives it keys (a pipe works); then unsigned kits are refused.
    let mut child = iuk_command("iuk-apply")
        .args(["adopt", "--keyring", "/dev/stdin", "--medium"])
        .arg(&m)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&keys).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = format!("iuk-keyring-{}.asc", sha256_file(&keys));
    assert_eq!(status(&m)["keyring"], name.as_str());
    refused_unchanged(
        &m,
        ia("apply", &m).arg(&k2),
        "unsigned apply after adopt",
        "--udf",
    );
    // adopt without --keyring keeps the keys.
    run_ok(&mut ia("adopt", &m));
    assert_eq!(status(&m)["keyring"], name.as_str());
    assert_eq!(status(&m)["key_fingerprints"], serde_json::json!([a]));
    let r = signed("apply", &m, &k2, &u11, &u11_sig);
    assert!(r.ok() && r.stderr.is_empty(), "{r}");
    verify_deep(&m);

    // init refuses keyrings it cannot use, before writing anything.
    for (what, bytes, needle) in [
        ("garbage", b"garbage\n".to_vec(), "garbage.asc"),
        ("certify-only", g.export(&[&e]), "no key in it can sign"),
    ] {
        let k = put(w, &format!("{what}.asc"), &bytes);
        let fresh = w.join(format!("fresh-{what}"));
        let r = run(ia("init", &fresh)
            .arg("--iso")
            .arg(fixture("Tails-6.9.iso"))
            .arg("--keyring")
            .arg(&k));
        refused(&r, &format!("init with a {what} keyring"), needle);
        assert!(
            !fresh.exists(),
            "init with a {what} keyring created the medium"
        );
    }
    // ... and a keyring read from a pipe works.
    let piped = w.join("piped");
    let mut child = iuk_command("iuk-apply")
        .args(["init", "--keyring", "/dev/stdin", "--iso"])
        .arg(fixture("Tails-6.9.iso"))
        .arg("--medium")
        .arg(&piped)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&keys).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(&piped)["keyring"], name.as_str());
}

// ------------------------------------------------------------------------------------------------
// trust killed at its system calls

#[test]
fn killed_trust_recovers_to_the_old_or_the_new_keyring() {
    if !tools_or_skip(&["gpg", "strace", "cp"]) {
        return;
    }
    let work = tmpdir();
    let w = work.path();
    let g = Gpg::new();
    let a = g.gen("a@example.org", "sign");
    let c = g.gen("c@example.org", "sign");
    let keys = put(w, "A.asc", &g.export(&[&a]));
    let new = put(w, "C.asc", &g.export(&[&c]));
    let sig = g.sign(&a, &new, &w.join("C.asc.sig"));
    let k1 = kit("6.9", "6.10");
    let udf = describe(w, "u10.yml", "6.10", &[&k1], false);
    let by_a = g.sign(&a, &udf, &w.join("u10.a.pgp"));
    let by_c = g.sign(&c, &udf, &w.join("u10.c.pgp"));
    let old_name = format!("iuk-keyring-{}.asc", sha256_file(&keys));
    let new_name = format!("iuk-keyring-{}.asc", sha256_file(&new));
    let old_ref = w.join("old");
    init(&old_ref, Some(&keys));
    let trust = |medium: &Path| {
        let mut cmd = Command::new(iuk_e2e::bin("iuk-apply"));
        cmd.arg("trust")
            .arg("--medium")
            .arg(medium)
            .arg("--keyring")
            .arg(&new)
            .arg("--signature")
            .arg(&sig);
        cmd
    };

    // The clean run, traced: no rename, link or chmod on the medium; one thread changes it.
    let new_ref = w.join("new");
    copy_tree(&old_ref, &new_ref);
    let trace = w.join("clean.strace");
    let (calls, pid) = trace_clean_run(
        "the clean trust",
        &trace,
        &iuk_e2e::bin("iuk-apply"),
        &trust(&new_ref).get_args().collect::<Vec<_>>(),
        &new_ref,
    );
    let old_files = files(&old_ref);
    let new_files = files(&new_ref);
    assert!(new_files.contains_key(&format!("live/{new_name}")));
    assert!(!new_files.contains_key(&format!("live/{old_name}")));

    // Kill points: every call of each mutating kind.
    let per_kind = kill_points(
        &calls,
        &pid,
        &[
            "write",
            "unlink",
            "unlinkat",
            "fsync",
            "fdatasync",
            "ftruncate",
            "openat",
        ],
    );
    // (No ftruncate is required: std's `set_len` skips it when the size is right already.)
    for kind in ["write", "unlinkat", "fsync", "openat"] {
        assert!(
            per_kind.contains_key(kind),
            "the clean trust made no {kind} call: {per_kind:?}"
        );
    }
    let points: Vec<(&str, usize)> = per_kind
        .iter()
        .flat_map(|(kind, ks)| ks.iter().map(move |k| (*kind, *k)))
        .collect();
    eprintln!("kill points: {}", points.len());

    let (mut olds, mut news) = (0, 0);
    for (kind, k) in points {
        let what = format!("trust killed at {kind} #{k}");
        let m = w.join(format!("kill-{kind}-{k}"));
        copy_tree(&old_ref, &m);
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-o", "/dev/null", "-e"])
            .arg(format!("inject={kind}:signal=SIGKILL:when={k}"))
            .arg(iuk_e2e::bin("iuk-apply"))
            .args(trust(&m).get_args());
        let r = run(&mut cmd);
        assert!(
            r.code.is_none() || r.code == Some(137),
            "{what}: the process was not killed: {r}"
        );
        // Recover, itself killed once first at one of its own calls, then to the end.
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-o", "/dev/null", "-e"])
            .arg(format!("inject=unlinkat:signal=SIGKILL:when={}", 1 + k % 2))
            .arg(iuk_e2e::bin("iuk-apply"))
            .args(["recover", "--medium"])
            .arg(&m);
        run(&mut cmd);
        let rec = run(&mut ia("recover", &m));
        assert!(rec.ok(), "{what}: recover failed: {rec}");
        let got = files(&m);
        let (name, udf_sig) = if got == old_files {
            olds += 1;
            (&old_name, &by_a)
        } else if got == new_files {
            news += 1;
            (&new_name, &by_c)
        } else {
            panic!(
                "{what}, then recovered: neither old nor new.\nagainst old:\n  {}\nagainst new:\n  {}",
                diff(&old_files, &got),
                diff(&new_files, &got)
            );
        };
        // The state names that keyring; it is there, intact, and verifies a UDF by its key.
        let s = status(&m);
        assert_eq!(s["keyring"], name.as_str(), "{what}");
        let keyring = fs::read(m.join("live").join(name)).unwrap();
        assert_eq!(
            format!("iuk-keyring-{}.asc", sha256_hex(&keyring)),
            *name,
            "{what}"
        );
        let (code, v) = select(&m, &udf, udf_sig, &[]);
        assert_eq!(code, Some(0), "{what}: {v}");
        picks(&v, "incremental", Some("stacking"), "6.10", &k1);
        verify_deep(&m);
        fs::remove_dir_all(&m).unwrap();
    }
    eprintln!("after recover: {olds} old, {news} new");
    assert!(
        olds > 0 && news > 0,
        "{olds} old, {news} new: a side was missed"
    );
}

/// The medium's module stack, mounted by the kernel (loop + overlayfs, module order), equals the
/// root filesystem of fixture `version` exactly (skipped without root or loop/overlay mounts).
fn stack_equals_root(medium: &Path, version: &str, work: &Path) {
    if !require_root_or_skip() || !kernel_or_skip() {
        return;
    }
    let root_img = work.join(format!("root-{version}.sqfs"));
    run_ok(
        std::process::Command::new("osirrox")
            .arg("-indev")
            .arg(fixture(&format!("Tails-{version}.iso")))
            .arg("-extract")
            .arg("/live/filesystem.squashfs")
            .arg(&root_img),
    );
    let module = std::fs::read_to_string(medium.join("live/Tails.module")).unwrap();
    let layers: Vec<_> = module
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| mount_squashfs(&medium.join("live").join(l.trim())))
        .collect();
    let lowers: Vec<&Path> = layers.iter().rev().map(|m| m.path()).collect();
    let stack = mount_overlay(&lowers);
    let root = mount_squashfs(&root_img);
    assert_same_tree(
        &snapshot(root.path()),
        &snapshot(stack.path()),
        &format!("kernel stack after a signed apply vs {version}'s root"),
    );
}
