//! The per-file content source of a FORMAT 3 recipe and its reconstruction. [`best_patch`]
//! tries a `zstd` patch-from and a bsdiff-style patch of a new file against its base file
//! ([`super::plain`]) and keeps the smaller, only when it is smaller than what the file costs
//! whole (never larger than FORMAT 2, per file). [`reconstruct`] re-creates the file on the
//! device and checks it against the recorded size and sha256. Files that start with a
//! compressed-stream signature skip the byte-delta trials (they gain ≤ 1.5 % on them:
//! REFERENCE.md, "Deltas"); such files, and others that may hold compressed streams, are tried
//! as a `repack` patch instead, taken between the plain contents ([`super::repack`]).

use super::plain::reconstruct_plain;
pub use super::plain::{
    best_plain_patch, bsdiff_patch, zstd_patch, Patch, BSDIFF_CHUNK, BSDIFF_MAX_TOTAL, ZSTD_LEVEL,
    ZSTD_MAX_TOTAL,
};
use super::{repack, DeltaError};

/// True when `data` starts like a compressed stream or a kernel image (gzip, xz, zstd, bzip2,
/// bzImage): byte deltas are not tried on it.
pub fn looks_compressed(data: &[u8]) -> bool {
    const SIGNATURES: [&[u8]; 4] = [b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"BZh"];
    SIGNATURES.iter().any(|s| data.starts_with(s))
        || data.get(0x202..0x206) == Some(b"HdrS".as_slice())
}

/// The smallest patch of `new` against `old` that is smaller than `whole_cost` (the bytes the
/// file costs carried whole), or `None` (carry it whole): a `zstd` or `bsdiff` patch unless
/// `new` starts like a compressed stream, and a `repack` patch when `new` may hold streams
/// ([`repack::worth_trying`]). Patches over the caps are not tried.
pub fn best_patch(old: &[u8], new: &[u8], whole_cost: u64) -> Result<Option<Patch>, DeltaError> {
    let mut best = if looks_compressed(new) {
        None
    } else {
        best_plain_patch(old, new, whole_cost)?.map(Patch::from)
    };
    if repack::worth_trying(new) {
        let limit = best.as_ref().map_or(whole_cost, |b| b.bytes().len() as u64);
        if let Some(r) = repack::make(old, new, limit)? {
            best = Some(Patch::Repack(r));
        }
    }
    Ok(best)
}

/// Re-creates a file from its patch and base file, refusing output other than `size` bytes
/// with sha256 `sha256` (memory: the output, bounded by `size`, and the decoder's state; for a
/// `repack` patch, see [`super::repack`]).
pub fn reconstruct(
    patch: &Patch,
    old: &[u8],
    size: u64,
    sha256: &[u8; 32],
) -> Result<Vec<u8>, DeltaError> {
    match patch.plain() {
        Some(plain) => reconstruct_plain(plain, old, size, sha256),
        None => repack::apply(patch.bytes(), old, size, sha256),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A pseudo-random "binary": repeated records with a few fields changed between versions.
    fn binary(seed: u64, len: usize, changes: usize) -> (Vec<u8>, Vec<u8>) {
        let mut x = seed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let old: Vec<u8> = (0..len).map(|_| (next() % 251) as u8).collect();
        let mut new = old.clone();
        for _ in 0..changes {
            let at = (next() as usize) % len;
            new[at] = new[at].wrapping_add(1);
        }
        // An insertion shifts the rest, as a rebuilt library does.
        new.splice(len / 3..len / 3, b"inserted bytes".iter().copied());
        (old, new)
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn patches_reconstruct_exactly_and_are_deterministic() {
        let (old, new) = binary(7, 300_000, 40);
        for p in [
            Patch::Zstd(zstd_patch(&old, &new).unwrap()),
            Patch::Bsdiff(bsdiff_patch(&old, &new).unwrap()),
        ] {
            assert!(
                p.bytes().len() < new.len() / 20,
                "{}: {} bytes for {}",
                p.kind(),
                p.bytes().len(),
                new.len()
            );
            let again = match &p {
                Patch::Zstd(_) => zstd_patch(&old, &new).unwrap(),
                _ => bsdiff_patch(&old, &new).unwrap(),
            };
            assert_eq!(again, p.bytes(), "{}: not deterministic", p.kind());
            let out = reconstruct(&p, &old, new.len() as u64, &sha(&new)).unwrap();
            assert_eq!(out, new);
        }
    }

    #[test]
    fn the_smaller_patch_wins_and_never_beats_whole_by_losing() {
        let (old, new) = binary(9, 200_000, 10);
        let best = best_patch(&old, &new, new.len() as u64).unwrap().unwrap();
        let z = zstd_patch(&old, &new).unwrap().len();
        let b = bsdiff_patch(&old, &new).unwrap().len();
        assert_eq!(best.bytes().len(), z.min(b));
        // A whole cost smaller than any patch: carried whole.
        assert_eq!(best_patch(&old, &new, z.min(b) as u64).unwrap(), None);
        // Compressed files are not tried.
        let mut gz = vec![0x1f, 0x8b];
        gz.extend_from_slice(&new);
        assert_eq!(best_patch(&old, &gz, u64::MAX).unwrap(), None);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(looks_compressed(&bz));
    }

    #[test]
    fn a_changed_gzip_file_gets_a_repack_patch() {
        use crate::delta::testtools::{have, sh, text};
        if !have("gzip") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let body = text(200_000, 5);
        std::fs::write(dir.path().join("old"), &body).unwrap();
        std::fs::write(
            dir.path().join("new"),
            [&body[..], b"one more line\n"].concat(),
        )
        .unwrap();
        let old = sh(dir.path(), "gzip -9nc old");
        let new = sh(dir.path(), "gzip -9nc new");
        let best = best_patch(&old, &new, new.len() as u64).unwrap().unwrap();
        assert_eq!(best.kind(), "repack");
        assert!(
            best.bytes().len() * 10 < new.len(),
            "{}",
            best.bytes().len()
        );
        let out = reconstruct(&best, &old, new.len() as u64, &sha(&new)).unwrap();
        assert_eq!(out, new);
    }

    #[test]
    fn damaged_patches_wrong_bases_and_lies_are_refused() {
        let (old, new) = binary(11, 100_000, 5);
        let digest = sha(&new);
        let size = new.len() as u64;
        for p in [
            Patch::Zstd(zstd_patch(&old, &new).unwrap()),
            Patch::Bsdiff(bsdiff_patch(&old, &new).unwrap()),
        ] {
            let mut other = old.clone();
            other[500] ^= 1;
            assert!(
                reconstruct(&p, &other, size, &digest).is_err(),
                "{}",
                p.kind()
            );
            assert!(
                reconstruct(&p, &old, size - 1, &digest).is_err(),
                "{}",
                p.kind()
            );
            assert!(
                reconstruct(&p, &old, size, &sha(b"x")).is_err(),
                "{}",
                p.kind()
            );
            let bytes = p.bytes();
            for cut in [0, bytes.len() / 2, bytes.len() - 1] {
                let t = p.with_bytes(bytes[..cut].to_vec());
                // Refused, or (a trailing byte the decoder never needs) exactly the file.
                if let Ok(out) = reconstruct(&t, &old, size, &digest) {
                    assert!(cut > 0 && out == new, "{} cut {cut}", p.kind());
                }
            }
            for at in (0..bytes.len()).step_by(bytes.len() / 16 + 1) {
                let mut f = bytes.to_vec();
                f[at] ^= 0x40;
                let t = p.with_bytes(f);
                // Never a panic; an output other than the recorded one is refused.
                if let Ok(out) = reconstruct(&t, &old, size, &digest) {
                    assert_eq!(out, new);
                }
            }
        }
    }
}
