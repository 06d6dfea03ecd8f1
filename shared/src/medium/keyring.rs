//! The keys a medium trusts (DESIGN.md, "Trust" and "The medium").
//!
//! - A medium trusts the OpenPGP keys stored on it as `live/iuk-keyring-<sha256>.asc` (named by
//!   its content, a protected name); the state records the file name and the keys'
//!   fingerprints. [`prepare_keyring`] checks a keyring before `init` or `adopt` stores it: it
//!   must parse and hold a key that can sign. [`trusted_keyring`] reads the stored one back.
//! - [`rotate`] replaces the trusted keyring by a new one signed by a currently trusted key,
//!   crash-safely with the journal of `apply`: the new keyring is written and fsynced at its
//!   final name (step 2), the journal records the new state and the deletion of the old
//!   keyring (step 3), and `commit::finish` rewrites the state (step 5), deletes the old keyring
//!   (step 6) and drops the journal (step 7). Without a journal, `recover` deletes a keyring file
//!   the state does not name ([`stray_keyrings`]), which an interrupted rotation (or adopt) left.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::beneath::Kind;
use super::commit::finish;
use super::fsops::{write_file, MediumFs};
use super::journal::{Delete, Journal};
use super::state::State;
use super::{
    io_err, io_err_or, is_keyring_name, refuse, Medium, MediumError, JOURNAL_FILE, KEYRING_PREFIX,
    KEYRING_SUFFIX, MAX_MODULE,
};
use crate::sign::{Keyring, MAX_KEYRING};
use crate::tree::hex;

/// The file name (in `live/`) a keyring is stored under: named by the sha256 of its bytes.
pub fn keyring_name(bytes: &[u8]) -> String {
    format!(
        "{KEYRING_PREFIX}{}{KEYRING_SUFFIX}",
        hex(&Sha256::digest(bytes))
    )
}

/// A keyring given on the command line: a name for messages and its bytes (read whole).
#[derive(Clone, Debug)]
pub struct KeyringInput {
    /// Where it came from (the path given), for messages.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A keyring checked for storing on a medium.
#[derive(Clone, Debug)]
pub struct NewKeyring {
    /// Its file name in `live/` ([`keyring_name`]).
    pub file_name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The fingerprints of its primary keys, sorted (recorded in the state).
    pub fingerprints: Vec<String>,
    /// The fingerprints of the primary keys that can sign (with the key or a subkey).
    pub signing: Vec<String>,
}

/// Checks a keyring for storing on a medium: it must parse, and at least one of its keys,
/// unrevoked, must have been able to sign at some time.
pub fn prepare_keyring(input: &KeyringInput) -> Result<NewKeyring, MediumError> {
    let keyring =
        Keyring::parse(&input.bytes).map_err(|e| refuse(format!("{}: {e}", input.name)))?;
    let signing = keyring.signing_keys();
    if signing.is_empty() {
        return Err(refuse(format!(
            "{}: no key in it can sign (every key is certify- or encrypt-only, revoked or \
             unusable under the algorithm policy): a medium trusting it could verify nothing",
            input.name
        )));
    }
    Ok(NewKeyring {
        file_name: keyring_name(&input.bytes),
        bytes: input.bytes.clone(),
        fingerprints: keyring.fingerprints(),
        signing,
    })
}

/// The keyring a medium trusts, read from `live/` and checked against its name.
#[derive(Clone, Debug)]
pub struct Trusted {
    /// Its file name in `live/`.
    pub file_name: String,
    /// The path on the medium.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The parsed keyring.
    pub keyring: Keyring,
}

/// Reads the keyring the state names, or `None` when the medium has no trusted keys. The file
/// must exist, have the sha256 its name says, parse, and hold the fingerprints the state
/// records.
pub fn trusted_keyring(medium: &Medium, state: &State) -> Result<Option<Trusted>, MediumError> {
    let Some(name) = &state.keyring else {
        return Ok(None);
    };
    let root = medium.root.display();
    let damaged = |what: String| {
        refuse(format!(
            "{root}: the trusted keyring live/{name} {what}; the medium was changed by something \
             else than iuk-apply (set its keys again with `iuk-apply adopt --keyring`)"
        ))
    };
    if !is_keyring_name(name) {
        return Err(damaged("has no keyring file name".into()));
    }
    let path = medium
        .find(&format!("live/{name}"))?
        .ok_or_else(|| damaged("is missing".into()))?;
    let bytes = medium
        .read_capped(&path, MAX_KEYRING as u64)
        .map_err(|e| io_err_or(e, |e| damaged(format!("is unreadable: {e}"))))?;
    if !keyring_name(&bytes).eq_ignore_ascii_case(name) {
        return Err(damaged("does not have the sha256 its name says".into()));
    }
    let keyring = Keyring::parse(&bytes).map_err(|e| damaged(format!("is unusable: {e}")))?;
    let mut recorded = state.key_fingerprints.clone();
    recorded.sort();
    if keyring.fingerprints() != recorded {
        return Err(damaged(
            "holds other keys than the state's key-fingerprints".into(),
        ));
    }
    Ok(Some(Trusted {
        file_name: name.clone(),
        path,
        bytes,
        keyring,
    }))
}

/// Keyring files in `live/` that the state does not name (left by an interrupted `trust` or
/// `adopt`), sorted. Never the state's own keyring.
pub fn stray_keyrings(medium: &Medium, state: &State) -> Result<Vec<PathBuf>, MediumError> {
    keyring_files(medium, state.keyring.as_deref())
}

/// The keyring files in `live/` other than `except` (compared case-insensitively), sorted; a
/// link named like a keyring is refused, naming it.
pub fn keyring_files(medium: &Medium, except: Option<&str>) -> Result<Vec<PathBuf>, MediumError> {
    let live = medium.live();
    if !medium.is_dir(&live)? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (name, kind) in medium.read_dir(&live)? {
        let n = name.to_string_lossy();
        if !is_keyring_name(&n) || except.is_some_and(|k| k.eq_ignore_ascii_case(&n)) {
            continue;
        }
        match kind {
            Kind::File => out.push(live.join(&name)),
            Kind::Symlink => return Err(MediumError::Symlink(live.join(&name))),
            _ => {}
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Key rotation

/// What `trust` did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TrustReport {
    /// False when the new keyring is the one trusted already (nothing written).
    pub changed: bool,
    /// The keyring file trusted before.
    pub old_keyring: String,
    /// The keyring file trusted now.
    pub new_keyring: String,
    /// The fingerprints trusted now.
    pub fingerprints: Vec<String>,
    /// Keys trusted now that were not before.
    pub added: Vec<String>,
    /// Keys trusted before that are not any more.
    pub removed: Vec<String>,
    /// The key that signed the new keyring.
    pub signed_by: String,
}

/// Replaces the medium's trusted keyring by `new`, which `signature` (a detached signature over
/// its bytes) must show signed by a key the medium trusts now (see the module doc for the
/// order of writes). Revocations the new keyring carries take effect at once. Refused, with the
/// medium unchanged: a medium without keys (use `init` or `adopt --keyring`), a signature that
/// does not verify, a new keyring without a key that can sign, a medium that does not match
/// its state. The caller holds the lock and has run `recover`.
pub fn rotate(
    medium: &Medium,
    new: &KeyringInput,
    signature_name: &str,
    signature: &[u8],
    fs: &mut dyn MediumFs,
) -> Result<TrustReport, MediumError> {
    if medium.journal_pending()? || medium.staging_pending()? {
        return Err(MediumError::PendingRecovery(medium.root.clone()));
    }
    let (state, _, old_state_sha) = medium.read_state()?;
    let Some(old) = trusted_keyring(medium, &state)? else {
        return Err(refuse(format!(
            "{}: no trusted keys on this medium yet: nothing can vouch for {}; give it keys with \
             `iuk-apply init --keyring` or `iuk-apply adopt --keyring`",
            medium.root.display(),
            new.name
        )));
    };
    medium.check_consistent(&state, false)?;
    let verified = old
        .keyring
        .verify_detached(&new.bytes, signature)
        .map_err(|e| {
            refuse(format!(
                "{}: {signature_name}: {e} (the new keyring must be signed by a key the medium \
                 trusts now)",
                new.name
            ))
        })?;
    let fresh = prepare_keyring(new)?;
    let old_fprs = old.keyring.fingerprints();
    let diff = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    let mut report = TrustReport {
        changed: false,
        old_keyring: old.file_name.clone(),
        new_keyring: fresh.file_name.clone(),
        fingerprints: fresh.fingerprints.clone(),
        added: diff(&fresh.fingerprints, &old_fprs),
        removed: diff(&old_fprs, &fresh.fingerprints),
        signed_by: verified.fingerprint.clone(),
    };
    if fresh.file_name.eq_ignore_ascii_case(&old.file_name) {
        return Ok(report);
    }

    let mut new_state = state.clone();
    new_state.keyring = Some(fresh.file_name.clone());
    new_state.key_fingerprints = fresh.fingerprints.clone();
    // The module file stays byte for byte what it is (finish leaves an equal file alone).
    let module_text = medium
        .find(&format!("live/{}", state.module_file))?
        .and_then(|p| medium.read_capped(&p, MAX_MODULE).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| state.module_text());

    // Step 2: the new keyring at its final name, durable, read back from the device.
    let live = medium.live();
    let new_path = live.join(&fresh.file_name);
    write_file(fs, &new_path, &fresh.bytes).map_err(|e| io_err(&new_path, e))?;
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    medium.drop_cache(&new_path);
    let want: [u8; 32] = Sha256::digest(&fresh.bytes).into();
    if medium.sha_of(&new_path)? != want {
        return Err(refuse(format!(
            "{}: read back with another sha256 than written (failing medium?)",
            new_path.display()
        )));
    }

    // Step 3: the commit point.
    let old_rel = format!(
        "live/{}",
        old.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| old.file_name.clone())
    );
    let journal = Journal {
        old_state: old_state_sha,
        module_file: state.module_file.clone(),
        module_text,
        state_text: new_state.to_yaml(),
        writes: Vec::new(),
        deletes: vec![Delete {
            path: old_rel,
            old: Some(Sha256::digest(&old.bytes).into()),
        }],
    };
    let jpath = medium.live_file(JOURNAL_FILE);
    write_file(fs, &jpath, &journal.encode()).map_err(|e| io_err(&jpath, e))?;
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;

    // Steps 4 to 7 (no boot file; the module file unchanged).
    finish(medium, &journal, fs)?;
    report.changed = true;
    Ok(report)
}

#[cfg(test)]
mod tests {
    //! Keys are made by GnuPG in a temporary home (skipped, with a message, when `gpg` is
    //! missing), as in `sign`'s tests.

    use super::*;
    use crate::medium::crashsim::{crash_states, Model, SimFs};
    use crate::medium::fsops::RealFs;
    use crate::medium::init::{init, InitOptions};
    use crate::medium::recover::recover;
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::Path;
    use std::process::{Command, Stdio};

    struct Gpg {
        home: tempfile::TempDir,
    }

    impl Drop for Gpg {
        fn drop(&mut self) {
            let _ = Command::new("gpgconf")
                .arg("--homedir")
                .arg(self.home.path())
                .args(["--kill", "gpg-agent"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    impl Gpg {
        fn new() -> Option<Gpg> {
            let ok = Command::new("gpg")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                iuk_skip::skip("`gpg` is not installed");
                return None;
            }
            let home = tempfile::Builder::new()
                .prefix("iuk-gpg-")
                .tempdir()
                .unwrap();
            fs::write(home.path().join("gpg-agent.conf"), "s2k-count 65536\n").unwrap();
            Some(Gpg { home })
        }

        fn run(&self, args: &[&str]) -> Vec<u8> {
            let out = Command::new("gpg")
                .arg("--homedir")
                .arg(self.home.path())
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

        /// Makes a key (`usage`: `sign`, `cert`, …) and returns its fingerprint.
        fn gen(&self, uid: &str, usage: &str) -> String {
            self.run(&["--quick-gen-key", uid, "ed25519", usage, "0"]);
            let text = String::from_utf8(self.run(&["--with-colons", "--list-keys", uid])).unwrap();
            text.lines()
                .find(|l| l.starts_with("fpr:"))
                .and_then(|l| l.split(':').nth(9))
                .unwrap()
                .to_string()
        }

        fn export(&self, fprs: &[&str]) -> Vec<u8> {
            let mut args = vec!["--export", "--armor"];
            args.extend_from_slice(fprs);
            self.run(&args)
        }

        /// The revocation certificate GnuPG made with the key, made importable.
        fn revocation(&self, fpr: &str) -> Vec<u8> {
            let p = self
                .home
                .path()
                .join("openpgp-revocs.d")
                .join(format!("{fpr}.rev"));
            let text = fs::read_to_string(p).unwrap();
            text.replace(":-----BEGIN PGP", "-----BEGIN PGP")
                .into_bytes()
        }

        fn sign(&self, key: &str, data: &[u8]) -> Vec<u8> {
            let f = self.home.path().join("data");
            fs::write(&f, data).unwrap();
            self.run(&[
                "--local-user",
                key,
                "--armor",
                "--detach-sign",
                "--output",
                "-",
                f.to_str().unwrap(),
            ])
        }
    }

    fn input(name: &str, bytes: &[u8]) -> KeyringInput {
        KeyringInput {
            name: name.into(),
            bytes: bytes.to_vec(),
        }
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, MediumError>, what: &str) {
        let e = r.expect_err("must be refused").to_string();
        assert!(e.contains(what), "{e:?} should mention {what:?}");
        assert!(!e.contains('\n'), "{e:?} is not one line");
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(name)
    }

    fn keyed_medium(dir: &Path, keyring: &[u8]) -> Medium {
        let m = Medium::new(dir);
        let opts = InitOptions {
            keyring: Some(input("keys.asc", keyring)),
            ..InitOptions::default()
        };
        init(
            &m,
            &fixture("Tails-6.9.iso"),
            &opts,
            &mut RealFs::new(&m.root),
        )
        .unwrap();
        m
    }

    #[test]
    fn names() {
        let n = keyring_name(b"x");
        assert!(n.starts_with("iuk-keyring-") && n.ends_with(".asc") && n.len() == 12 + 64 + 4);
        assert!(is_keyring_name(&n) && is_keyring_name(&n.to_uppercase()));
        for bad in [
            "iuk-keyring-.asc",
            "iuk-keyring-a.txt",
            "x/iuk-keyring-a.asc",
            "keys.asc",
        ] {
            assert!(!is_keyring_name(bad), "{bad}");
        }
        assert!(crate::boot::is_protected(&format!("live/{n}")));
    }

    #[test]
    fn keyrings_must_parse_and_hold_a_signing_key() {
        let Some(g) = Gpg::new() else { return };
        refused(prepare_keyring(&input("k.asc", b"")), "k.asc");
        refused(prepare_keyring(&input("k.asc", b"garbage")), "k.asc");
        let signer = g.gen("S <s@example.org>", "sign");
        let certifier = g.gen("C <c@example.org>", "cert");
        let ok = prepare_keyring(&input("s.asc", &g.export(&[&signer]))).unwrap();
        assert_eq!(ok.fingerprints, vec![signer.clone()]);
        assert_eq!(ok.signing, vec![signer.clone()]);
        assert_eq!(ok.file_name, keyring_name(&ok.bytes));
        // Certify-only: nothing could be verified with it.
        refused(
            prepare_keyring(&input("c.asc", &g.export(&[&certifier]))),
            "no key in it can sign",
        );
        // Both: the signer counts; both are recorded.
        let both = prepare_keyring(&input("b.asc", &g.export(&[&signer, &certifier]))).unwrap();
        assert_eq!(both.signing, vec![signer.clone()]);
        assert_eq!(both.fingerprints.len(), 2);
        // A certify-only primary with a signing subkey can sign.
        g.run(&["--quick-add-key", &certifier, "ed25519", "sign", "0"]);
        let sub = prepare_keyring(&input("c.asc", &g.export(&[&certifier]))).unwrap();
        assert_eq!(sub.signing, vec![certifier.clone()]);
        // A revoked signer, as `cat key.asc rev.asc` makes, and exported after the import.
        let mut cat = g.export(&[&signer]);
        cat.extend_from_slice(&g.revocation(&signer));
        refused(
            prepare_keyring(&input("r.asc", &cat)),
            "no key in it can sign",
        );
        let rev = g.home.path().join("rev.asc");
        fs::write(&rev, g.revocation(&signer)).unwrap();
        g.run(&["--import", rev.to_str().unwrap()]);
        refused(
            prepare_keyring(&input("r.asc", &g.export(&[&signer]))),
            "no key in it can sign",
        );
    }

    /// A medium keyed with A; a new keyring (B) signed by A; the snapshot before and after.
    struct Rotation {
        _t: tempfile::TempDir,
        g: Gpg,
        b: String,
        medium: Medium,
        new: KeyringInput,
        sig: Vec<u8>,
        old_name: String,
    }

    fn rotation() -> Option<Rotation> {
        let g = Gpg::new()?;
        let a = g.gen("A <a@example.org>", "sign");
        let b = g.gen("B <b@example.org>", "sign");
        let t = tempfile::tempdir().unwrap();
        let ka = g.export(&[&a]);
        let medium = keyed_medium(&t.path().join("medium"), &ka);
        let kb = g.export(&[&b]);
        let sig = g.sign(&a, &kb);
        Some(Rotation {
            _t: t,
            g,
            b,
            medium,
            new: input("new.asc", &kb),
            sig,
            old_name: keyring_name(&ka),
        })
    }

    fn state_keyring(m: &Medium) -> String {
        m.read_state().unwrap().0.keyring.unwrap()
    }

    #[test]
    fn rotation_replaces_the_keyring_and_refusals_change_nothing() {
        let Some(r) = rotation() else { return };
        let m = &r.medium;
        let before = Model::read(&m.root).unwrap().view();
        // A signature over other bytes; a keyring signed by nobody trusted.
        refused(
            rotate(
                m,
                &r.new,
                "sig",
                &r.sig[..r.sig.len() / 2],
                &mut RealFs::new(&m.root),
            ),
            "new.asc",
        );
        let mut other = r.new.clone();
        other.bytes.extend_from_slice(b"\n");
        refused(
            rotate(m, &other, "sig", &r.sig, &mut RealFs::new(&m.root)),
            "does not match the data",
        );
        assert_eq!(Model::read(&m.root).unwrap().view(), before);

        let rep = rotate(m, &r.new, "sig", &r.sig, &mut RealFs::new(&m.root)).unwrap();
        assert!(rep.changed);
        assert_eq!(rep.old_keyring, r.old_name);
        assert_eq!(state_keyring(m), keyring_name(&r.new.bytes));
        assert_eq!(
            keyring_files(m, None).unwrap(),
            vec![m.live_file(&rep.new_keyring)]
        );
        assert!(!m.journal_pending().unwrap());
        let (s, _, _) = m.read_state().unwrap();
        assert_eq!(s.key_fingerprints, rep.fingerprints);
        assert!(trusted_keyring(m, &s).unwrap().is_some());
        m.check_consistent(&s, true).unwrap();
        // A is no longer trusted; the keyring trusted already, signed by B, changes nothing.
        refused(
            rotate(m, &r.new, "sig", &r.sig, &mut RealFs::new(&m.root)),
            "unknown key",
        );
        let by_b = r.g.sign(&r.b, &r.new.bytes);
        let after = Model::read(&m.root).unwrap().view();
        let rep = rotate(m, &r.new, "sig", &by_b, &mut RealFs::new(&m.root)).unwrap();
        assert!(!rep.changed);
        assert_eq!(Model::read(&m.root).unwrap().view(), after);
    }

    #[test]
    fn finish_never_deletes_the_keyring_the_new_state_names() {
        let Some(r) = rotation() else { return };
        let m = &r.medium;
        let (state, text, sha) = m.read_state().unwrap();
        let name = state.keyring.clone().unwrap();
        let path = m.live_file(&name);
        let bytes = fs::read(&path).unwrap();
        let j = Journal {
            old_state: sha,
            module_file: state.module_file.clone(),
            module_text: state.module_text(),
            state_text: text,
            writes: Vec::new(),
            deletes: vec![Delete {
                path: format!(
                    "live/{}",
                    name.to_uppercase().replace("IUK-KEYRING-", "iuk-keyring-")
                ),
                old: Some(Sha256::digest(&bytes).into()),
            }],
        };
        finish(m, &j, &mut RealFs::new(&m.root)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn recover_deletes_only_keyrings_the_state_does_not_name() {
        let Some(r) = rotation() else { return };
        let m = &r.medium;
        let named = m.live_file(&state_keyring(m));
        let stray = m.live_file(&keyring_name(&r.new.bytes));
        fs::write(&stray, &r.new.bytes).unwrap();
        let (s, _, _) = m.read_state().unwrap();
        assert_eq!(stray_keyrings(m, &s).unwrap(), vec![stray.clone()]);
        assert_eq!(
            recover(m, &mut RealFs::new(&m.root)).unwrap(),
            crate::medium::recover::Recovery::Discarded
        );
        assert!(!stray.exists() && named.exists());
        assert_eq!(
            recover(m, &mut RealFs::new(&m.root)).unwrap(),
            crate::medium::recover::Recovery::Clean
        );
        // An unreadable state: nothing is deleted.
        fs::write(&stray, &r.new.bytes).unwrap();
        let state = m.live_file(super::super::STATE_FILE);
        let text = fs::read(&state).unwrap();
        fs::write(&state, b"garbage: [").unwrap();
        recover(m, &mut RealFs::new(&m.root)).unwrap();
        assert!(stray.exists() && named.exists());
        fs::write(&state, text).unwrap();
    }

    /// Every prefix of a rotation, every allowed loss of unsynced work (bounded), then recover:
    /// the medium is old or new, and its state names a keyring that is there, intact.
    #[test]
    fn power_cuts_during_a_rotation_recover_to_old_or_new() {
        let Some(r) = rotation() else { return };
        let m = &r.medium;
        let old = Model::read(&m.root).unwrap();
        let mut sim = SimFs::new(&m.root, &old);
        rotate(m, &r.new, "sig", &r.sig, &mut sim).unwrap();
        let new = Model::read(&m.root).unwrap();
        let (old_v, new_v) = (old.view(), new.view());
        assert_ne!(old_v, new_v);
        let work = tempfile::tempdir().unwrap();
        let (mut olds, mut news) = (0, 0);
        for prefix in 0..=sim.len() {
            for (i, state) in crash_states(&sim, &old, prefix, 64, prefix as u64 * 7919 + 1)
                .into_iter()
                .enumerate()
            {
                let dir = work.path().join(format!("c-{prefix}-{i}"));
                state.materialize(&dir).unwrap();
                let cm = Medium::new(&dir);
                recover(&cm, &mut RealFs::new(&cm.root))
                    .unwrap_or_else(|e| panic!("prefix {prefix} case {i}: recover: {e}"));
                let after: BTreeMap<_, _> = Model::read(&dir).unwrap().view();
                if after == old_v {
                    olds += 1;
                } else if after == new_v {
                    news += 1;
                } else {
                    panic!(
                        "prefix {prefix}/{} case {i}: neither old nor new",
                        sim.len()
                    );
                }
                let (s, _, _) = cm.read_state().unwrap();
                let t = trusted_keyring(&cm, &s).unwrap().unwrap();
                assert!(t.path.is_file());
                cm.check_consistent(&s, true).unwrap();
                fs::remove_dir_all(&dir).unwrap();
            }
        }
        assert!(olds > 0 && news > 0, "{olds} old, {news} new");
        eprintln!(
            "{} simulated crashes over {} operations: {olds} old, {news} new",
            olds + news,
            sim.len()
        );
    }
}
