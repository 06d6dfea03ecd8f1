//! Verification of detached OpenPGP signatures (an upgrade description file's `.pgp`, a new
//! keyring during key rotation) against the keyring a device trusts.
//!
//! Inputs are byte slices: the data, the signature (armored or binary, one or more signature
//! packets) and the keyring (armored or binary; several armored blocks one after the other, as
//! `cat a.asc b.asc` makes, are read one by one; an armored revocation certificate among them
//! is applied to its key).
//!
//! Rules (DESIGN.md, "Trust"):
//! - the signing key — the primary key, or a subkey bound to it with the signing flag (and its
//!   back-signature) — and its certificate must have been valid at the signature's creation time:
//!   created before it, not expired at it, with the self-signatures in force at that time. The
//!   current clock is never consulted (device clocks are unreliable): a key that expired after
//!   signing still verifies, a signature made after expiry never does. (GnuPG replaces a key's
//!   self-signature when its expiry or usage changes, so a keyring exported afterwards shows no
//!   binding before that date, and signatures made earlier no longer verify against it: re-sign
//!   the UDFs when publishing such a key);
//! - a key or subkey with a revocation in the keyring is refused whatever the times and the
//!   revocation's reason (a soft revocation's date is the signer's to choose, so it cannot be
//!   trusted once the key is in doubt). Revocations by designated third-party revokers are not
//!   considered;
//! - a key that could not sign (no signing flag at that time) is refused;
//! - the signature must be a document signature (binary, or text with line endings normalized
//!   as OpenPGP requires) over exactly the data;
//! - algorithms are judged by Sequoia's standard policy at a fixed reference time (not the
//!   clock), so the outcome is a pure function of the three inputs: SHA-1 and MD5 signatures,
//!   RSA keys under 2048 bits and the like are refused.
//!
//! When the signature file holds several signatures, one that verifies is enough (the others
//! may come from keys the device does not know, during a key rotation).
//!
//! The implementation is Sequoia (`sequoia-openpgp`) with its pure-Rust crypto backend. It was
//! chosen over rPGP (`pgp`) because Sequoia carries the whole certificate-validity model — which
//! self-signature is in force at a given time, key and subkey expiry, back-signatures of signing
//! subkeys, revocation status, an algorithm policy — tested against the OpenPGP interoperability
//! suite and used by Debian's `sqv`; rPGP offers the packets and the cryptography, and would
//! leave exactly the expiry and revocation logic, where correctness matters most, to us. The
//! cost is comparable (about 200 crates against 150, three minutes of release build on two
//! cores, most of it the RustCrypto primitives both need); rPGP's current release also requires
//! a newer Rust (1.88) than this workspace's 1.85. The RustCrypto backend is flagged
//! experimental and not constant-time by Sequoia: verification handles no secret, so timing does
//! not matter here.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sequoia_openpgp as openpgp;

use openpgp::cert::amalgamation::{ValidAmalgamation, ValidateAmalgamation};
use openpgp::cert::CertParser;
use openpgp::packet::Signature;
use openpgp::parse::Parse;
use openpgp::policy::{HashAlgoSecurity, Policy, StandardPolicy};
use openpgp::types::{RevocationStatus, SignatureType};
use openpgp::{Cert, KeyHandle, Packet, PacketPile};

/// Largest keyring accepted.
pub const MAX_KEYRING: usize = 8 << 20;
/// Largest signature file accepted.
pub const MAX_SIGNATURE: usize = 64 << 10;
/// Most signatures considered in one signature file.
pub const MAX_SIGNATURES: usize = 16;

/// The reference time of the algorithm policy: 2025-01-01 00:00:00 UTC. Every cutoff of
/// Sequoia's standard policy lies before it; it is fixed so that no verdict depends on the clock.
const POLICY_TIME: u64 = 1_735_689_600;

/// Errors verifying a signature; each is one line.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The keyring is unusable.
    #[error("keyring: {0}")]
    Keyring(String),
    /// The signature file is unusable.
    #[error("signature: {0}")]
    Signature(String),
    /// No key of the keyring made the signature.
    #[error("signature by unknown key {issuers}: not in the trusted keyring")]
    UnknownKey {
        /// The issuers the signature names.
        issuers: String,
    },
    /// A trusted key made the signature, but it does not verify.
    #[error("signature by key {key} refused: {reason}")]
    Refused {
        /// The fingerprint of the primary key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A verified signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Fingerprint of the signer's primary key (upper-case hex).
    pub fingerprint: String,
    /// Fingerprint of the key that made the signature (the primary key or a subkey).
    pub signing_key: String,
    /// The signature's creation time (seconds since the Unix epoch).
    pub created: u64,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "good signature by key {} made {}",
            self.fingerprint,
            utc(self.created)
        )?;
        if self.signing_key != self.fingerprint {
            write!(f, " (subkey {})", self.signing_key)?;
        }
        Ok(())
    }
}

/// A parsed keyring: the certificates (keys with their self-signatures) a device trusts.
#[derive(Clone, Debug)]
pub struct Keyring {
    certs: Vec<Cert>,
}

impl Keyring {
    /// Parses a keyring (armored blocks or binary).
    pub fn parse(bytes: &[u8]) -> Result<Keyring, SignError> {
        let bad = |m: String| SignError::Keyring(m);
        if bytes.len() > MAX_KEYRING {
            return Err(bad(format!(
                "{} bytes, more than {MAX_KEYRING}",
                bytes.len()
            )));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(bad("empty: no OpenPGP key in it".into()));
        }
        let mut certs: Vec<Cert> = Vec::new();
        let mut revocations: Vec<Signature> = Vec::new();
        let mut add = |chunk: &[u8], what: &str| -> Result<(), SignError> {
            let mut found = false;
            let parser = CertParser::from_bytes(chunk)
                .map_err(|e| bad(format!("{what}: not OpenPGP data: {}", short(&e))))?;
            for c in parser {
                match c {
                    Ok(c) => {
                        found = true;
                        merge(&mut certs, c);
                    }
                    Err(e) => {
                        // A bare revocation certificate (gpg's --gen-revoke output) is no key:
                        // keep its signatures for the key they revoke.
                        match revocation_sigs(chunk) {
                            Some(sigs) if !sigs.is_empty() => {
                                revocations.extend(sigs);
                                return Ok(());
                            }
                            _ => {
                                return Err(bad(format!(
                                    "{what}: not an OpenPGP key: {}",
                                    short(&e)
                                )))
                            }
                        }
                    }
                }
            }
            if !found {
                match revocation_sigs(chunk) {
                    Some(sigs) if !sigs.is_empty() => revocations.extend(sigs),
                    _ => return Err(bad(format!("{what}: no OpenPGP key in it"))),
                }
            }
            Ok(())
        };
        match armored_blocks(bytes) {
            Some(blocks) => {
                for (i, b) in blocks.iter().enumerate() {
                    add(b, &format!("armored block {}", i + 1))?;
                }
            }
            None => add(bytes, "binary keyring")?,
        }
        for rev in revocations {
            let issuers = rev.get_issuers();
            let Some(cert) = certs.iter_mut().find(|c| {
                issuers
                    .iter()
                    .any(|h| h.aliases(KeyHandle::from(c.fingerprint())))
            }) else {
                return Err(bad(format!(
                    "a revocation certificate for key {} that is not in the keyring",
                    show_issuers(&issuers)
                )));
            };
            let (merged, _) = cert
                .clone()
                .insert_packets(std::iter::once(Packet::from(rev)))
                .map_err(|e| bad(format!("revocation certificate: {}", short(&e))))?;
            *cert = merged;
        }
        if certs.is_empty() {
            return Err(bad("no OpenPGP key in it".into()));
        }
        Ok(Keyring { certs })
    }

    /// The fingerprints (sorted) of the primary keys that can sign: unrevoked (no revocation of
    /// the key in the keyring), with the primary key or a subkey flagged for signing, alive and
    /// accepted by the algorithm policy at the time of one of the certificate's self-signatures.
    /// (A key that has expired since still counts: signatures are judged at their creation
    /// time, never against the clock.)
    pub fn signing_keys(&self) -> Vec<String> {
        let policy = StandardPolicy::at(UNIX_EPOCH + Duration::from_secs(POLICY_TIME));
        let mut out: Vec<String> = self
            .certs
            .iter()
            .filter(|c| can_sign(c, &policy))
            .map(|c| c.fingerprint().to_hex())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The fingerprints of the keyring's primary keys, sorted.
    pub fn fingerprints(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect();
        v.sort();
        v
    }

    /// Verifies a detached signature over `data` (see the module doc).
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> Result<Verified, SignError> {
        let sigs = parse_signatures(signature)?;
        let policy = StandardPolicy::at(UNIX_EPOCH + Duration::from_secs(POLICY_TIME));
        let mut refusal: Option<SignError> = None;
        let mut unknown: Vec<KeyHandle> = Vec::new();
        for sig in &sigs {
            match self.check(&policy, sig, data) {
                Ok(v) => return Ok(v),
                Err(Check::Unknown(issuers)) => unknown.extend(issuers),
                Err(Check::Refused(e)) => {
                    refusal.get_or_insert(e);
                }
            }
        }
        if let Some(e) = refusal {
            return Err(e);
        }
        Err(SignError::UnknownKey {
            issuers: show_issuers(&unknown),
        })
    }

    fn check(&self, policy: &dyn Policy, sig: &Signature, data: &[u8]) -> Result<Verified, Check> {
        let issuers = sig.get_issuers();
        let first_issuer = issuers.first().map(|h| h.to_hex()).unwrap_or_default();
        let refuse =
            |key: String, reason: String| Check::Refused(SignError::Refused { key, reason });
        let Some(t) = sig.signature_creation_time() else {
            return Err(refuse(
                first_issuer,
                "the signature has no creation time".into(),
            ));
        };
        let when = secs(t);
        if !matches!(sig.typ(), SignatureType::Binary | SignatureType::Text) {
            return Err(refuse(
                first_issuer,
                format!("a {} signature, not a signature of data", sig.typ()),
            ));
        }
        if issuers.is_empty() {
            return Err(Check::Unknown(Vec::new()));
        }
        let mut outcome: Option<Check> = None;
        for cert in &self.certs {
            for ka in cert.keys().key_handles(issuers.iter()) {
                let primary = cert.fingerprint().to_hex();
                let key_fpr = ka.key().fingerprint().to_hex();
                let is_sub = key_fpr != primary;
                let which = if is_sub {
                    format!("its subkey {key_fpr}")
                } else {
                    "it".to_string()
                };
                let result = (|| -> Result<Verified, String> {
                    if cert.primary_key().self_revocations().next().is_some() {
                        return Err("the key is revoked (a revocation is in the keyring)".into());
                    }
                    if is_sub && ka.self_revocations().next().is_some() {
                        return Err(format!(
                            "{which} is revoked (a revocation is in the keyring)"
                        ));
                    }
                    let created = secs(ka.key().creation_time());
                    if created > when {
                        return Err(format!(
                            "the signature was made {}, before {} was created ({})",
                            utc(when),
                            if is_sub { &which } else { "the key" },
                            utc(created)
                        ));
                    }
                    let primary_created = secs(cert.primary_key().key().creation_time());
                    if primary_created > when {
                        return Err(format!(
                            "the signature was made {}, before the key was created ({})",
                            utc(when),
                            utc(primary_created)
                        ));
                    }
                    let vka = ka.clone().with_policy(policy, t).map_err(|e| {
                        format!(
                            "{} had no valid self-signature when the signature was made ({}): {}",
                            if is_sub { &which } else { "the key" },
                            utc(when),
                            short(&e)
                        )
                    })?;
                    let expired = |exp: Option<SystemTime>, what: &str| match exp {
                        Some(x) => format!(
                            "{what} expired {}, before the signature was made ({})",
                            utc(secs(x)),
                            utc(when)
                        ),
                        None => format!("{what} was not valid when the signature was made"),
                    };
                    let vcert = vka.valid_cert();
                    if vcert.alive().is_err() {
                        return Err(expired(
                            vcert.primary_key().key_expiration_time(),
                            "the key",
                        ));
                    }
                    if vka.alive().is_err() {
                        return Err(expired(vka.key_expiration_time(), &which));
                    }
                    if let RevocationStatus::Revoked(_) = vcert.revocation_status() {
                        return Err("the key is revoked".into());
                    }
                    if let RevocationStatus::Revoked(_) = vka.revocation_status() {
                        return Err(format!("{which} is revoked"));
                    }
                    if !vka.for_signing() {
                        return Err(format!(
                            "{} not signing-capable when the signature was made",
                            if is_sub {
                                format!("{which} was")
                            } else {
                                "the key was".into()
                            }
                        ));
                    }
                    let normalized;
                    let message = if sig.typ() == SignatureType::Text {
                        normalized = crlf(data);
                        &normalized[..]
                    } else {
                        data
                    };
                    sig.verify_message(vka.key(), message).map_err(|_| {
                        "the signature does not match the data (modified data, or a signature \
                         of something else)"
                            .to_string()
                    })?;
                    policy
                        .signature(sig, HashAlgoSecurity::CollisionResistance)
                        .map_err(|e| format!("rejected by policy: {}", short(&e)))?;
                    Ok(Verified {
                        fingerprint: primary.clone(),
                        signing_key: key_fpr.clone(),
                        created: when,
                    })
                })();
                match result {
                    Ok(v) => return Ok(v),
                    Err(reason) => {
                        outcome.get_or_insert(refuse(primary, reason));
                    }
                }
            }
        }
        Err(outcome.unwrap_or(Check::Unknown(issuers)))
    }
}

enum Check {
    Unknown(Vec<KeyHandle>),
    Refused(SignError),
}

/// Verifies a detached signature over `data` against a keyring (see the module doc).
pub fn verify_detached(
    data: &[u8],
    signature: &[u8],
    keyring: &[u8],
) -> Result<Verified, SignError> {
    Keyring::parse(keyring)?.verify_detached(data, signature)
}

/// The fingerprints of a keyring's primary keys, sorted.
pub fn keyring_fingerprints(keyring: &[u8]) -> Result<Vec<String>, SignError> {
    Ok(Keyring::parse(keyring)?.fingerprints())
}

// ------------------------------------------------------------------------------------------------
// Helpers

/// Adds a certificate, merging it with an earlier one of the same key.
fn merge(certs: &mut Vec<Cert>, c: Cert) {
    match certs
        .iter_mut()
        .find(|o| o.fingerprint() == c.fingerprint())
    {
        Some(o) => {
            if let Ok(m) = o.clone().merge_public(c) {
                *o = m;
            }
        }
        None => certs.push(c),
    }
}

/// The key-revocation signatures of a chunk made only of signatures, or `None`.
fn revocation_sigs(chunk: &[u8]) -> Option<Vec<Signature>> {
    let pile = PacketPile::from_bytes(chunk).ok()?;
    let mut out = Vec::new();
    for p in pile.into_children() {
        match p {
            Packet::Signature(s)
                if matches!(
                    s.typ(),
                    SignatureType::KeyRevocation | SignatureType::SubkeyRevocation
                ) =>
            {
                out.push(s)
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The signatures of a detached-signature file.
fn parse_signatures(bytes: &[u8]) -> Result<Vec<Signature>, SignError> {
    let bad = |m: String| SignError::Signature(m);
    if bytes.len() > MAX_SIGNATURE {
        return Err(bad(format!(
            "{} bytes, more than {MAX_SIGNATURE}",
            bytes.len()
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("empty".into()));
    }
    let chunks: Vec<&[u8]> = match armored_blocks(bytes) {
        Some(b) => b,
        None => vec![bytes],
    };
    let mut sigs = Vec::new();
    for chunk in chunks {
        let pile = PacketPile::from_bytes(chunk)
            .map_err(|e| bad(format!("not an OpenPGP signature: {}", short(&e))))?;
        for p in pile.into_children() {
            match p {
                Packet::Signature(s) => sigs.push(s),
                Packet::Unknown(u) => {
                    return Err(bad(format!(
                        "not an OpenPGP signature: unreadable {}: {}",
                        u.tag(),
                        short(u.error())
                    )))
                }
                other => {
                    return Err(bad(format!(
                        "not a detached signature: it holds a {}",
                        other.tag()
                    )))
                }
            }
        }
    }
    if sigs.is_empty() {
        return Err(bad("no signature in it".into()));
    }
    if sigs.len() > MAX_SIGNATURES {
        return Err(bad(format!(
            "{} signatures, more than {MAX_SIGNATURES}",
            sigs.len()
        )));
    }
    Ok(sigs)
}

/// The armored blocks of a text (each from its `-----BEGIN PGP ` line to its `-----END PGP `
/// line), or `None` when it holds none (binary data).
fn armored_blocks(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    const BEGIN: &[u8] = b"-----BEGIN PGP ";
    const END: &[u8] = b"-----END PGP ";
    let mut blocks = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < bytes.len() {
        let line_end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| pos + i + 1);
        let line = &bytes[pos..line_end];
        match start {
            None if line.starts_with(BEGIN) => start = Some(pos),
            Some(s) if line.starts_with(END) => {
                blocks.push(&bytes[s..line_end]);
                start = None;
            }
            _ => {}
        }
        pos = line_end;
    }
    if let Some(s) = start {
        // An unterminated block: let the parser report it.
        blocks.push(&bytes[s..]);
    }
    (!blocks.is_empty()).then_some(blocks)
}

/// Whether a certificate could sign at some time (see [`Keyring::signing_keys`]).
fn can_sign(cert: &Cert, policy: &StandardPolicy) -> bool {
    if cert.primary_key().self_revocations().next().is_some() {
        return false;
    }
    let revoked: Vec<String> = cert
        .keys()
        .filter(|k| k.self_revocations().next().is_some())
        .map(|k| k.key().fingerprint().to_hex())
        .collect();
    let mut times: Vec<SystemTime> = Vec::new();
    times.extend(
        cert.primary_key()
            .self_signatures()
            .filter_map(|s| s.signature_creation_time()),
    );
    for u in cert.userids() {
        times.extend(
            u.self_signatures()
                .filter_map(|s| s.signature_creation_time()),
        );
    }
    for k in cert.keys().subkeys() {
        times.extend(
            k.self_signatures()
                .filter_map(|s| s.signature_creation_time()),
        );
    }
    times.sort();
    times.dedup();
    times.into_iter().any(|t| {
        let Ok(vc) = cert.with_policy(policy, t) else {
            return false;
        };
        vc.alive().is_ok()
            && vc
                .keys()
                .for_signing()
                .any(|k| k.alive().is_ok() && !revoked.contains(&k.key().fingerprint().to_hex()))
    })
}

/// OpenPGP's text normalization: every line ending (`\r\n`, `\n` or `\r`) becomes `\r\n`.
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn show_issuers(issuers: &[KeyHandle]) -> String {
    if issuers.is_empty() {
        return "(the signature names no issuer)".into();
    }
    // Fingerprints first; a key ID that is the tail of a fingerprint shown adds nothing.
    let mut sorted: Vec<&KeyHandle> = issuers.iter().collect();
    sorted.sort_by_key(|h| matches!(h, KeyHandle::KeyID(_)));
    let mut shown: Vec<&KeyHandle> = Vec::new();
    for h in sorted {
        if !shown.iter().any(|s| s.aliases(h)) {
            shown.push(h);
        }
    }
    shown
        .iter()
        .map(|h| h.to_hex())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error's message and causes on one line.
fn short(e: &openpgp::anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let m = c.to_string();
        if m.is_empty() || out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out.replace(['\n', '\r'], " ")
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    format!("{} UTC", crate::squashfs::inspect::utc(secs, true))
}

#[cfg(test)]
mod tests {
    //! Keys and signatures are made by GnuPG in a temporary home (skipped through `iuk_skip`
    //! when `gpg` is missing: counted, or a failure under `IUK_REQUIRE_KERNEL=1`). Times are
    //! faked (`--faked-system-time …!`), so every verdict is about fixed dates — and the
    //! current clock, years later, plays no part.

    use super::*;
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// 2020-01-01 00:00:00 UTC.
    const T0: u64 = 1_577_836_800;

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

    /// `20200101T000000!` plus `hours`.
    fn at(hours: u64) -> String {
        let s = utc(T0 + hours * 3600);
        // "2020-01-01 05:00:00 UTC" -> "20200101T050000!"
        format!(
            "{}{}{}T{}{}{}!",
            &s[0..4],
            &s[5..7],
            &s[8..10],
            &s[11..13],
            &s[14..16],
            &s[17..19]
        )
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
            // The fewest key-derivation rounds for the passphrase: each signature would
            // otherwise cost the agent half a second.
            std::fs::write(home.path().join("gpg-agent.conf"), "s2k-count 65536\n").unwrap();
            Some(Gpg { home })
        }

        fn cmd(&self, time: Option<&str>) -> Command {
            let mut c = Command::new("gpg");
            c.arg("--homedir")
                .arg(self.home.path())
                .args(["--pinentry-mode", "loopback", "--passphrase", "pw"])
                .args(["--no-tty", "--yes", "--quiet"]);
            if let Some(t) = time {
                c.args(["--faked-system-time", t, "--ignore-time-conflict"]);
            }
            c
        }

        /// Runs gpg (in batch mode unless `input` is given, which goes to `--command-fd 0`).
        fn run(&self, time: Option<&str>, args: &[&str], input: Option<&str>) -> Vec<u8> {
            let mut c = self.cmd(time);
            match input {
                None => {
                    c.arg("--batch").stdin(Stdio::null());
                }
                Some(_) => {
                    c.args(["--command-fd", "0", "--status-fd", "2"])
                        .stdin(Stdio::piped());
                }
            }
            let mut child = c
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            if let Some(i) = input {
                child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
            }
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "gpg {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }

        /// Makes a key and returns its fingerprint.
        fn gen(&self, uid: &str, algo: &str, usage: &str, expire: &str, time: &str) -> String {
            self.run(
                Some(time),
                &["--quick-gen-key", uid, algo, usage, expire],
                None,
            );
            self.fpr(uid)
        }

        fn fpr(&self, uid: &str) -> String {
            let out = self.run(None, &["--with-colons", "--list-keys", uid], None);
            let text = String::from_utf8(out).unwrap();
            text.lines()
                .find(|l| l.starts_with("fpr:"))
                .and_then(|l| l.split(':').nth(9))
                .unwrap()
                .to_string()
        }

        /// The fingerprints of `fpr`'s subkeys.
        fn subkeys(&self, fpr: &str) -> Vec<String> {
            let out = self.run(None, &["--with-colons", "--list-keys", fpr], None);
            let text = String::from_utf8(out).unwrap();
            let mut v = Vec::new();
            let mut in_sub = false;
            for l in text.lines() {
                if l.starts_with("sub:") {
                    in_sub = true;
                } else if l.starts_with("fpr:") && in_sub {
                    v.push(l.split(':').nth(9).unwrap().to_string());
                    in_sub = false;
                }
            }
            v
        }

        /// A detached signature by `key` (a fingerprint; with `!` after it, that very key).
        fn sign(&self, key: &str, data: &[u8], time: &str, extra: &[&str]) -> Vec<u8> {
            let f = self.home.path().join("data");
            std::fs::write(&f, data).unwrap();
            let mut args = vec!["--local-user", key, "--detach-sign", "--output", "-"];
            args.extend_from_slice(extra);
            let fs = f.to_str().unwrap();
            args.push(fs);
            self.run(Some(time), &args, None)
        }

        fn export(&self, fpr: &str, armor: bool) -> Vec<u8> {
            let mut args = vec!["--export"];
            if armor {
                args.push("--armor");
            }
            args.push(fpr);
            let out = self.run(None, &args, None);
            assert!(!out.is_empty());
            out
        }

        /// An armored revocation certificate for `fpr` with the reason code given.
        fn revocation(&self, fpr: &str, code: &str, time: &str) -> Vec<u8> {
            let out = self.home.path().join("rev.asc");
            let _ = std::fs::remove_file(&out);
            let o = out.to_str().unwrap();
            self.run(
                Some(time),
                &["--armor", "--output", o, "--gen-revoke", fpr],
                Some(&format!("y\n{code}\nrevoked in a test\n\ny\n")),
            );
            std::fs::read(&out).unwrap()
        }

        fn import(&self, path: &Path) {
            self.run(None, &["--import", path.to_str().unwrap()], None);
        }
    }

    const DATA: &[u8] = b"build-target: \"amd64\"\nchannel: \"stable\"\n";

    fn refused(r: Result<Verified, SignError>, what: &str) -> String {
        let e = r.expect_err("must be refused").to_string();
        assert!(e.contains(what), "{e:?} should mention {what:?}");
        assert!(!e.contains('\n'), "{e:?} is not one line");
        e
    }

    #[test]
    fn ed25519_rsa_and_subkeys_verify() {
        let Some(g) = Gpg::new() else { return };
        let ed = g.gen("Ed <ed@example.org>", "ed25519", "sign", "0", &at(0));
        let rsa = g.gen("Rsa <rsa@example.org>", "rsa3072", "sign", "0", &at(0));
        let cert_only = g.gen("Sub <sub@example.org>", "ed25519", "cert", "0", &at(0));
        g.run(
            Some(&at(1)),
            &["--quick-add-key", &cert_only, "ed25519", "sign"],
            None,
        );
        let sub = g.subkeys(&cert_only).pop().unwrap();
        let mut keyring = g.export(&ed, true);
        keyring.extend(g.export(&rsa, true));
        keyring.extend(g.export(&cert_only, true));
        let k = Keyring::parse(&keyring).unwrap();
        let mut all = vec![ed.clone(), rsa.clone(), cert_only.clone()];
        all.sort();
        assert_eq!(k.fingerprints(), all);
        assert_eq!(keyring_fingerprints(&keyring).unwrap(), all);

        for (key, primary) in [(&ed, &ed), (&rsa, &rsa), (&sub, &cert_only)] {
            for armor in [true, false] {
                let extra: &[&str] = if armor { &["--armor"] } else { &[] };
                let sig = g.sign(&format!("{key}!"), DATA, &at(2), extra);
                let v = verify_detached(DATA, &sig, &keyring).unwrap();
                assert_eq!(&v.fingerprint, primary);
                assert_eq!(&v.signing_key, key);
                assert_eq!(v.created, T0 + 2 * 3600);
                assert!(v.to_string().contains("2020-01-01 02:00:00 UTC"), "{v}");
                // Binary keyring too.
                let bin = g.export(primary, false);
                assert_eq!(verify_detached(DATA, &sig, &bin).unwrap(), v);
            }
        }
        // gpg signs with the subkey when asked for the certify-only primary.
        let sig = g.sign(&cert_only, DATA, &at(2), &["--armor"]);
        let v = verify_detached(DATA, &sig, &keyring).unwrap();
        assert_eq!(v.signing_key, sub);
        assert!(v.to_string().contains(&format!("subkey {sub}")), "{v}");

        // Text-mode signatures: line endings normalized.
        let sig = g.sign(&ed, DATA, &at(2), &["--textmode"]);
        verify_detached(DATA, &sig, &keyring).unwrap();

        // Several signatures: one by a key the keyring lacks, one by a trusted key.
        let other = Gpg::new().unwrap();
        let stranger = other.gen("X <x@example.org>", "ed25519", "sign", "0", &at(0));
        let mut both = other.sign(&stranger, DATA, &at(2), &["--armor"]);
        both.extend(g.sign(&ed, DATA, &at(3), &["--armor"]));
        let v = verify_detached(DATA, &both, &keyring).unwrap();
        assert_eq!(v.fingerprint, ed);
        assert_eq!(v.created, T0 + 3 * 3600);
    }

    #[test]
    fn expiry_is_judged_at_the_signature_time() {
        let Some(g) = Gpg::new() else { return };
        // Expires one day after 2020-01-01: long before the clock of whoever runs this test.
        let k = g.gen("Exp <exp@example.org>", "ed25519", "sign", "1d", &at(0));
        let before = g.sign(&k, DATA, &at(12), &["--armor"]);
        let keyring = g.export(&k, true);
        let v = verify_detached(DATA, &before, &keyring).unwrap();
        assert_eq!(v.created, T0 + 12 * 3600);

        // A signature after expiry: gpg refuses to make one with an expired key, so the key is
        // made without expiry, signs on day 3, then gets (at hour 1, with a new self-signature)
        // an expiry one day later.
        let k2 = g.gen("Late <late@example.org>", "ed25519", "sign", "0", &at(0));
        let after = g.sign(&k2, DATA, &at(72), &["--armor"]);
        let early = g.sign(&k2, DATA, &at(2), &["--armor"]);
        g.run(Some(&at(1)), &["--quick-set-expire", &k2, "1d"], None);
        let keyring2 = g.export(&k2, true);
        let e = refused(verify_detached(DATA, &after, &keyring2), "expired");
        assert!(e.contains("2020-01-02 01:00:00 UTC"), "{e}");
        assert!(e.contains(&k2), "{e}");
        verify_detached(DATA, &early, &keyring2).unwrap();

        // An expiring signing subkey under a primary that never expires.
        let p = g.gen("P <p@example.org>", "ed25519", "cert", "0", &at(0));
        g.run(
            Some(&at(0)),
            &["--quick-add-key", &p, "ed25519", "sign", "1d"],
            None,
        );
        let sub = g.subkeys(&p).pop().unwrap();
        let ok = g.sign(&sub, DATA, &at(20), &[]);
        let keyring3 = g.export(&p, false);
        verify_detached(DATA, &ok, &keyring3).unwrap();

        // A signature dated before the key was made.
        let young = g.gen("Young <y@example.org>", "ed25519", "sign", "0", &at(48));
        let sig = g.sign(&young, DATA, &at(24), &[]);
        refused(
            verify_detached(DATA, &sig, &g.export(&young, true)),
            "before the key was created",
        );
    }

    #[test]
    fn revoked_keys_and_subkeys_are_refused() {
        let Some(g) = Gpg::new() else { return };
        let k = g.gen("Rev <rev@example.org>", "ed25519", "sign", "0", &at(0));
        let sig = g.sign(&k, DATA, &at(1), &["--armor"]);
        let clean = g.export(&k, true);
        verify_detached(DATA, &sig, &clean).unwrap();
        // A soft revocation ("superseded"), dated well after the signature: refused anyway.
        let rev = g.revocation(&k, "2", &at(100));
        // The revocation certificate beside the key, as `cat key.asc rev.asc` makes.
        let mut cat = clean.clone();
        cat.extend_from_slice(&rev);
        let e = refused(verify_detached(DATA, &sig, &cat), "revoked");
        assert!(e.contains(&k), "{e}");
        // The key exported after importing the revocation.
        let rev_path = g.home.path().join("rev-import.asc");
        std::fs::write(&rev_path, &rev).unwrap();
        g.import(&rev_path);
        refused(verify_detached(DATA, &sig, &g.export(&k, true)), "revoked");
        refused(verify_detached(DATA, &sig, &g.export(&k, false)), "revoked");
        // A revocation certificate for a key the keyring lacks.
        let other = g.gen("O <o@example.org>", "ed25519", "sign", "0", &at(0));
        let rev_other = g.revocation(&other, "0", &at(2));
        let mut cat = clean.clone();
        cat.extend_from_slice(&rev_other);
        let e = Keyring::parse(&cat).unwrap_err().to_string();
        assert!(e.contains("not in the keyring"), "{e}");

        // A revoked signing subkey.
        let p = g.gen("Sub <s@example.org>", "ed25519", "cert", "0", &at(0));
        g.run(
            Some(&at(0)),
            &["--quick-add-key", &p, "ed25519", "sign"],
            None,
        );
        let sub = g.subkeys(&p).pop().unwrap();
        let sig = g.sign(&sub, DATA, &at(1), &[]);
        verify_detached(DATA, &sig, &g.export(&p, true)).unwrap();
        g.run(
            Some(&at(50)),
            &["--edit-key", &p],
            Some("key 1\nrevkey\ny\n2\n\ny\nsave\n"),
        );
        let e = refused(verify_detached(DATA, &sig, &g.export(&p, true)), "revoked");
        assert!(e.contains(&sub), "{e}");
    }

    #[test]
    fn keys_that_could_not_sign_are_refused() {
        let Some(g) = Gpg::new() else { return };
        // Signs at hour 2; a self-signature of hour 1 made it certify-only.
        let k = g.gen("U <u@example.org>", "ed25519", "sign,cert", "0", &at(0));
        let sig = g.sign(&k, DATA, &at(2), &[]);
        g.run(
            Some(&at(1)),
            &["--expert", "--edit-key", &k],
            Some("change-usage\nS\nQ\nsave\n"),
        );
        let keyring = g.export(&k, true);
        refused(verify_detached(DATA, &sig, &keyring), "not signing-capable");
        // (gpg replaces the old self-signature rather than adding one, so no signature made
        // before hour 1 can verify against this export: no binding existed then, as far as the
        // keyring shows.)
    }

    #[test]
    fn wrong_data_unknown_keys_and_garbage_are_refused() {
        let Some(g) = Gpg::new() else { return };
        let k = g.gen("K <k@example.org>", "ed25519", "sign", "0", &at(0));
        let sig = g.sign(&k, DATA, &at(1), &["--armor"]);
        let keyring = g.export(&k, true);
        verify_detached(DATA, &sig, &keyring).unwrap();
        // Modified data.
        let mut modified = DATA.to_vec();
        modified[0] ^= 1;
        let e = refused(verify_detached(&modified, &sig, &keyring), "does not match");
        assert!(e.contains(&k), "{e}");
        refused(verify_detached(b"", &sig, &keyring), "does not match");
        // The signature of another file.
        let other_sig = g.sign(&k, b"another file\n", &at(1), &["--armor"]);
        refused(
            verify_detached(DATA, &other_sig, &keyring),
            "does not match",
        );
        // A key the keyring lacks.
        let o = Gpg::new().unwrap();
        let stranger = o.gen("S <s@example.org>", "ed25519", "sign", "0", &at(0));
        let e = refused(
            verify_detached(DATA, &o.sign(&stranger, DATA, &at(1), &[]), &keyring),
            "unknown key",
        );
        assert!(e.contains(&stranger), "{e}");
        assert!(!e.contains(", "), "the key ID repeats the fingerprint: {e}");
        // Garbage and empty inputs.
        refused(verify_detached(DATA, b"garbage", &keyring), "signature:");
        refused(verify_detached(DATA, b"", &keyring), "signature: empty");
        refused(
            verify_detached(
                DATA,
                b"-----BEGIN PGP SIGNATURE-----\n\nnot base64!\n-----END PGP SIGNATURE-----\n",
                &keyring,
            ),
            "signature:",
        );
        refused(verify_detached(DATA, &keyring, &keyring), "signature:");
        refused(verify_detached(DATA, &sig, b""), "keyring: empty");
        refused(verify_detached(DATA, &sig, b" \n"), "keyring: empty");
        refused(verify_detached(DATA, &sig, b"garbage"), "keyring:");
        refused(verify_detached(DATA, &sig, &sig), "keyring:");
        let big = vec![b'x'; MAX_SIGNATURE + 1];
        refused(verify_detached(DATA, &big, &keyring), "more than");
    }

    #[test]
    fn helpers() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(T0), "2020-01-01 00:00:00 UTC");
        assert_eq!(utc(951_827_696), "2000-02-29 12:34:56 UTC");
        assert_eq!(at(25), "20200102T010000!");
        assert_eq!(crlf(b"a\nb\r\nc\rd\r"), b"a\r\nb\r\nc\r\nd\r\n");
        let text = b"junk\n-----BEGIN PGP A-----\nx\n-----END PGP A-----\n-----BEGIN PGP B-----\ny\n-----END PGP B-----";
        let blocks = armored_blocks(text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(blocks[1].ends_with(b"-----END PGP B-----"));
        assert!(armored_blocks(b"\x99\x01binary").is_none());
    }
}
