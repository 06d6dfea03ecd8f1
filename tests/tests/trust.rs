//! The trust chain through the real binary: `iuk-build describe` makes the upgrade description
//! file (Tails UDF v2) from kits built from the fixture ISOs; the library reads it back, picks
//! the path a device takes, and verifies a GnuPG signature over it; Tails' own UDF parser (Perl,
//! from `IUK_TAILS_SRC`, when set) picks the cumulative kit from it.
//!
//! Needs the built binary (`cargo build --release -p iuk-build`) and `gpg` for the signature
//! test (skipped without it). The Tails test runs when `IUK_TAILS_SRC` points at a checkout of
//! the Tails sources (the directory holding `config/`) and prints `SKIP: …` otherwise, unless
//! `IUK_REQUIRE_TAILS=1`; its Perl modules come with `scripts/tails-interop-deps` (plus
//! libdpkg-perl and liblist-moreutils-perl, which the UDF parser loads).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use iuk::kit::Kit;
use iuk::sign::verify_detached;
use iuk::udf::{select_path, Device, Model, PathType, Selection, Udf};
use iuk_e2e::{fixture, fixture_kit_at, iuk_command, pack, run, run_ok, sha256_file, Gpg, Run};
use tempfile::TempDir;

const EPOCH: u32 = 1_700_000_000;

fn tmpdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("iuk-e2e-trust-")
        .tempdir()
        .unwrap()
}

/// The kit `from` → `to` of the fixture ISOs with extra `build` arguments, built once per run
/// and shared ([`iuk_e2e::fixture_kit`]): read it, never change it.
fn kit(from: &str, to: &str, args: &[&str]) -> PathBuf {
    fixture_kit_at(from, to, EPOCH, args)
}

fn url(kit: &Path) -> String {
    format!(
        "https://example.org/iuk/{}",
        kit.file_name().unwrap().to_string_lossy()
    )
}

/// `iuk-build describe` for devices installed at 6.9, offering 6.11, with the kits given.
fn describe(kits: &[&Path], extra: &[&str]) -> Run {
    let mut c = iuk_command("iuk-build");
    c.args(["describe", "--product", "Tails", "--build-target", "amd64"])
        .args(["--channel", "stable", "--initial-install-version", "6.9"])
        .args(["--version", "6.11"]);
    for k in kits {
        c.arg("--kit").arg(k).arg("--kit-url").arg(url(k));
    }
    run(c.args(extra))
}

fn device(current: &'static str) -> Device<'static> {
    Device {
        product: "Tails",
        build_target: "amd64",
        channel: "stable",
        base_version: "6.9",
        current_version: current,
    }
}

/// Asserts a refusal: exit 1, one error line naming `what` (warnings aside), nothing on stdout.
fn refused(r: &Run, what: &str) {
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stdout.is_empty(), "{r}");
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("iuk-build: warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "not one error line: {r}");
    assert!(errors[0].starts_with("iuk-build: error: "), "{r}");
    assert!(
        errors[0].contains(what),
        "{:?} should mention {what:?}",
        errors[0]
    );
}

#[test]
fn describe_lists_the_cumulative_kit_first() {
    let d = tmpdir();
    let cumulative = kit("6.9", "6.11", &[]);
    let stacking = kit("6.10", "6.11", &[]);
    let iso = fixture("Tails-6.11.iso");
    let out = d.path().join("upgrades.yml");
    // The stacking kit first on the command line: the cumulative one still comes first.
    let r = run_ok(
        iuk_command("iuk-build")
            .args(["describe", "--product", "Tails"])
            .args(["--initial-install-version", "6.9", "--version", "6.11"])
            .args(["--details-url", "https://example.org/news/version_6.11/"])
            .arg("--kit")
            .arg(&stacking)
            .arg("--kit-url")
            .arg(url(&stacking))
            .arg("--kit")
            .arg(&cumulative)
            .arg("--kit-url")
            .arg(url(&cumulative))
            .arg("--iso")
            .arg(&iso)
            .args(["--iso-url", "https://example.org/tails-amd64-6.11.iso"])
            .arg("--out")
            .arg(&out),
    );
    assert!(
        r.stdout_text().contains("2 kit(s) and a full upgrade"),
        "{r}"
    );
    let text = fs::read(&out).unwrap();
    let udf = Udf::from_bytes(&text).unwrap();
    assert_eq!(udf.product_name, "Tails");
    assert_eq!(udf.initial_install_version, "6.9");
    assert_eq!(udf.build_target, "amd64");
    assert_eq!(udf.channel, "stable");
    assert_eq!(udf.upgrades.len(), 1);
    let u = &udf.upgrades[0];
    assert_eq!(u.version, "6.11");
    assert_eq!(u.kind.as_str(), "minor");
    let paths = &u.upgrade_paths;
    assert_eq!(paths.len(), 3);
    let expect = [
        (PathType::Incremental, None, &cumulative),
        (PathType::Incremental, Some("6.10"), &stacking),
        (PathType::Full, None, &iso),
    ];
    for (p, (kind, from, file)) in paths.iter().zip(expect) {
        assert_eq!(p.kind, kind);
        assert_eq!(p.from_version.as_deref(), from);
        assert_eq!(p.target_files.len(), 1);
        let t = &p.target_files[0];
        assert_eq!(t.size, fs::metadata(file).unwrap().len());
        assert_eq!(t.sha256, sha256_file(file));
    }
    assert_eq!(paths[0].target_files[0].url, url(&cumulative));
    // Every string quoted: versions stay strings for any YAML reader.
    let s = String::from_utf8(text.clone()).unwrap();
    assert!(s.contains("version: \"6.11\"\n"), "{s}");
    assert!(s.contains("from-version: \"6.10\"\n"), "{s}");
    assert!(s.contains("initial-install-version: \"6.9\"\n"), "{s}");

    // Standard output gives the same bytes, and so does a second run.
    let again = describe(
        &[&cumulative, &stacking],
        &[
            "--details-url",
            "https://example.org/news/version_6.11/",
            "--iso",
            iso.to_str().unwrap(),
            "--iso-url",
            "https://example.org/tails-amd64-6.11.iso",
        ],
    );
    assert!(again.ok(), "{again}");
    assert_eq!(again.stdout, text);

    // What devices take from it.
    let kit_of = |s: &Selection| match s {
        Selection::Incremental { path, model, .. } => (path.target_files[0].url.clone(), *model),
        other => panic!("{other}"),
    };
    assert_eq!(
        kit_of(&select_path(&udf, &device("6.10"), true)),
        (url(&stacking), Model::Stacking)
    );
    assert_eq!(
        kit_of(&select_path(&udf, &device("6.10"), false)),
        (url(&cumulative), Model::Cumulative)
    );
    assert_eq!(
        kit_of(&select_path(&udf, &device("6.9"), true)),
        (url(&cumulative), Model::Stacking)
    );
    assert_eq!(
        select_path(&udf, &device("6.11"), true),
        Selection::UpToDate
    );
}

/// A FORMAT 3 kit is offered right after the FORMAT 2 kit of its path (Tails devices take the
/// first incremental path); our devices take the smaller of the two.
#[test]
fn describe_offers_a_format_3_kit_after_its_format_2_twin() {
    let cumulative = kit("6.9", "6.11", &[]);
    let delta = kit("6.9", "6.11", &["--deltas"]);
    assert_eq!(Kit::open(&delta).unwrap().format, "3");
    let stacking = kit("6.10", "6.11", &[]);
    let (c_url, d_url) = ("https://example.org/c.iuk", "https://example.org/d.iuk");
    let mut c = iuk_command("iuk-build");
    c.args(["describe", "--product", "Tails", "--build-target", "amd64"])
        .args(["--channel", "stable", "--initial-install-version", "6.9"])
        .args(["--version", "6.11"]);
    for (k, u) in [
        (&delta, d_url.to_string()),
        (&stacking, url(&stacking)),
        (&cumulative, c_url.to_string()),
    ] {
        c.arg("--kit").arg(k).arg("--kit-url").arg(u);
    }
    let r = run(&mut c);
    assert!(r.ok(), "{r}");
    let udf = Udf::from_yaml(&r.stdout_text()).unwrap();
    let listed: Vec<(String, Option<String>)> = udf.upgrades[0]
        .upgrade_paths
        .iter()
        .map(|p| (p.target_files[0].url.clone(), p.kit_format.clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (c_url.to_string(), None),
            (d_url.to_string(), Some("3".to_string())),
            (url(&stacking), None),
        ]
    );
    let smaller = if fs::metadata(&delta).unwrap().len() < fs::metadata(&cumulative).unwrap().len()
    {
        d_url
    } else {
        c_url
    };
    let Selection::Incremental { path, .. } = select_path(&udf, &device("6.9"), true) else {
        panic!("no incremental path for a device at 6.9")
    };
    assert_eq!(path.target_files[0].url, smaller);
}

#[test]
fn describe_refuses_mismatched_kits() {
    let d = tmpdir();
    let cumulative = kit("6.9", "6.11", &[]);
    let stacking = kit("6.10", "6.11", &[]);
    let out = d.path().join("upgrades.yml");
    let out_arg = out.to_str().unwrap();

    // A kit to another version.
    let to_6_10 = kit("6.9", "6.10", &[]);
    let r = describe(&[&to_6_10], &["--out", out_arg]);
    refused(&r, "a kit to version 6.10, not 6.11");
    assert!(r.stderr.contains(&to_6_10.display().to_string()), "{r}");

    // A kit for another product.
    let other = kit("6.9", "6.11", &["--product", "Other"]);
    refused(
        &describe(&[&other], &["--out", out_arg]),
        "a kit for product Other, not Tails",
    );

    // Stacking kits without the cumulative one.
    refused(
        &describe(&[&stacking], &["--out", out_arg]),
        "no kit from the initial-install version 6.9",
    );

    // Two kits from one version.
    refused(
        &describe(&[&cumulative, &stacking, &cumulative], &["--out", out_arg]),
        "a second FORMAT 2 kit from version 6.9",
    );

    // A FORMAT 3 kit alone: Tails' installer (and older iuk) cannot take it.
    let control = Kit::open(&cumulative).unwrap().control;
    let src = d.path().join("format3");
    fs::create_dir_all(src.join("overlay/live")).unwrap();
    fs::write(src.join("FORMAT"), "3").unwrap();
    fs::write(src.join("control.yml"), control.to_yaml()).unwrap();
    let format3 = d.path().join("format3.iuk");
    pack(&src, &format3, EPOCH, &[]);
    assert_eq!(Kit::open(&format3).unwrap().format, "3");
    refused(
        &describe(&[&format3, &stacking], &["--out", out_arg]),
        "the FORMAT 3 kit from 6.9 comes without the FORMAT 2 kit of the same path",
    );

    // Nothing to offer; a version not newer than the initial-install one; unpaired URLs.
    refused(&describe(&[], &["--out", out_arg]), "nothing to offer");
    let r = run(iuk_command("iuk-build")
        .args([
            "describe",
            "--product",
            "Tails",
            "--initial-install-version",
            "6.11",
        ])
        .args(["--version", "6.11", "--iso"])
        .arg(fixture("Tails-6.11.iso"))
        .args(["--iso-url", "https://example.org/x.iso"]));
    refused(&r, "not newer than the initial-install version");
    let r = run(iuk_command("iuk-build")
        .args([
            "describe",
            "--product",
            "Tails",
            "--initial-install-version",
            "6.9",
        ])
        .args(["--version", "6.11", "--kit"])
        .arg(&cumulative));
    refused(&r, "give one URL for each kit");
    // A missing kit file.
    let r = run(iuk_command("iuk-build")
        .args([
            "describe",
            "--product",
            "Tails",
            "--initial-install-version",
            "6.9",
        ])
        .args(["--version", "6.11", "--kit"])
        .arg(d.path().join("missing.iuk"))
        .args(["--kit-url", "https://example.org/m.iuk"]));
    refused(&r, "missing.iuk");

    // No refusal left a file behind.
    assert!(!out.exists());
    let leftovers: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("upgrades.yml"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ------------------------------------------------------------------------------------------------
// Signature

#[test]
fn signed_udf_verifies_against_the_keyring() {
    if iuk_e2e::find_tool("gpg").is_none() {
        iuk_e2e::skip("`gpg` is not installed");
        return;
    }
    let d = tmpdir();
    let cumulative = kit("6.9", "6.11", &[]);
    let out = d.path().join("upgrades.yml");
    run_ok(&mut {
        let mut c = iuk_command("iuk-build");
        c.args([
            "describe",
            "--product",
            "Tails",
            "--initial-install-version",
            "6.9",
        ])
        .args(["--version", "6.11", "--kit"])
        .arg(&cumulative)
        .arg("--kit-url")
        .arg(url(&cumulative))
        .arg("--out")
        .arg(&out);
        c
    });
    let g = Gpg::new();
    let fpr = g.gen("release@example.org", "sign");
    let keyring = g.export(&[&fpr]);
    let sig_path = g.sign(&fpr, &out, &d.path().join("upgrades.yml.pgp"));
    let data = fs::read(&out).unwrap();
    let sig = fs::read(&sig_path).unwrap();
    let v = verify_detached(&data, &sig, &keyring).unwrap();
    assert_eq!(v.fingerprint, fpr);
    // The verified bytes are a UDF this device takes.
    let udf = Udf::from_bytes(&data).unwrap();
    assert!(matches!(
        select_path(&udf, &device("6.10"), true),
        Selection::Incremental {
            model: Model::Cumulative,
            ..
        }
    ));
    // A changed UDF (another URL) no longer verifies.
    let forged = String::from_utf8(data)
        .unwrap()
        .replace("https://example.org/", "https://evil.example/");
    let e = verify_detached(forged.as_bytes(), &sig, &keyring)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match the data"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// Tails' parser

fn tails_udf_parser() -> Option<(PathBuf, PathBuf)> {
    let Some(src) = std::env::var_os("IUK_TAILS_SRC") else {
        let reason = "IUK_TAILS_SRC is unset (the path of a Tails source checkout, the directory \
                      holding config/)";
        iuk_e2e::skip_unless_required("IUK_REQUIRE_TAILS", reason);
        return None;
    };
    let usr_src = PathBuf::from(src).join("config/chroot_local-includes/usr/src");
    let iuk_lib = usr_src.join("iuk/lib");
    let perl5lib = usr_src.join("perl5lib/lib");
    let udf_pm = ["iuk/lib", "perl5lib/lib"]
        .iter()
        .map(|d| usr_src.join(d).join("Tails/IUK/UpgradeDescriptionFile.pm"))
        .find(|p| p.is_file());
    assert!(
        udf_pm.is_some(),
        "IUK_TAILS_SRC: no Tails/IUK/UpgradeDescriptionFile.pm under {}/{{iuk,perl5lib}}/lib",
        usr_src.display()
    );
    Some((iuk_lib, perl5lib))
}

/// Prints, as Tails' frontend sees it for a device running `running`: the fields it matches
/// against the running system, then the incremental and full paths it would take.
const TAILS_PARSE: &str = r#"
use strict; use warnings;
use Tails::IUK::UpgradeDescriptionFile;
use YAML::Any;
my ($file, $running) = @ARGV;
my $text = do { local $/; open my $fh, '<', $file or die "$file: $!"; <$fh> };
my $d = YAML::Any::Load($text);
print "$_=$d->{$_}\n" for qw(product-name initial-install-version build-target channel);
my $udf = Tails::IUK::UpgradeDescriptionFile->new_from_text(
    text => $text, product_version => $running);
if ($udf->contains_incremental_upgrade_path) {
    my $p = $udf->incremental_upgrade_path;
    my $f = $p->{'target-files'}[0];
    print "incremental=$p->{version} $f->{url} $f->{size} $f->{sha256}\n";
}
if ($udf->contains_full_upgrade_path) {
    my $p = $udf->full_upgrade_path;
    print "full=$p->{version} $p->{'target-files'}[0]{url}\n";
}
"#;

#[test]
fn tails_parser_takes_the_cumulative_kit() {
    let Some((iuk_lib, perl5lib)) = tails_udf_parser() else {
        return;
    };
    let d = tmpdir();
    let cumulative = kit("6.9", "6.11", &[]);
    let stacking = kit("6.10", "6.11", &[]);
    // Its FORMAT 3 twin is listed too: Tails' parser must still take the FORMAT 2 kit.
    let delta = kit("6.9", "6.11", &["--deltas"]);
    let iso = fixture("Tails-6.11.iso");
    let r = describe(
        &[&stacking, &delta, &cumulative],
        &[
            "--iso",
            iso.to_str().unwrap(),
            "--iso-url",
            "https://example.org/tails-amd64-6.11.iso",
        ],
    );
    assert!(r.ok(), "{r}");
    let udf = d.path().join("upgrades.yml");
    fs::write(&udf, &r.stdout).unwrap();
    let script = d.path().join("parse.pl");
    fs::File::create(&script)
        .unwrap()
        .write_all(TAILS_PARSE.as_bytes())
        .unwrap();
    let parse = |running: &str| {
        let r = run(Command::new("perl")
            .arg("-I")
            .arg(&iuk_lib)
            .arg("-I")
            .arg(&perl5lib)
            .arg(&script)
            .arg(&udf)
            .arg(running));
        assert!(
            r.ok(),
            "Tails' UDF parser failed (missing Perl modules? run scripts/tails-interop-deps): {r}"
        );
        r.stdout_text()
    };
    // Running 6.10 (installed at 6.9): the first incremental path, our cumulative kit.
    let out = parse("6.10");
    for line in [
        "product-name=Tails",
        "initial-install-version=6.9",
        "build-target=amd64",
        "channel=stable",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} missing:\n{out}");
    }
    let expected = format!(
        "incremental=6.11 {} {} {}",
        url(&cumulative),
        fs::metadata(&cumulative).unwrap().len(),
        sha256_file(&cumulative)
    );
    assert!(
        out.lines().any(|l| l == expected),
        "{expected:?} missing:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "full=6.11 https://example.org/tails-amd64-6.11.iso"),
        "{out}"
    );
    // At the base version too.
    assert!(parse("6.9").lines().any(|l| l == expected));
    // Already at 6.11: nothing.
    let out = parse("6.11");
    assert!(
        !out.contains("incremental=") && !out.contains("full="),
        "{out}"
    );
}
