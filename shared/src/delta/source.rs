//! The per-file content source of a FORMAT 3 recipe and its reconstruction. [`best_patch`]
//! tries a `zstd` patch-from and a bsdiff-style patch of a new file against its base file and
//! keeps the smaller, only when it is smaller than what the file costs whole (never larger than
//! FORMAT 2, per file). [`reconstruct`] re-creates the file on the device and checks it against
//! the recorded size and sha256. Files that start with a compressed-stream signature skip the
//! byte-delta trials (they gain ≤ 1.5 % on them: REFERENCE.md, "Deltas"); such files, and others
//! that may hold compressed streams, are tried as a `repack` patch instead, taken between the
//! plain contents ([`super::repack`]).
//!
//! Determinism: zstd runs single-threaded at a fixed level with `deterministicRefPrefix`;
//! qbsdiff cuts the new file into fixed-size chunks ([`BSDIFF_CHUNK`]), so its bytes do not
//! depend on the number of threads; both libraries are pinned by Cargo.lock.

use qbsdiff::{Bsdiff, Bspatch, ParallelScheme};
use sha2::{Digest, Sha256};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

use super::{repack, DeltaError};

/// The largest old + new size a bsdiff-style patch is tried for: qbsdiff needs about six times
/// the old file's size in memory (69 MB → 421 MB measured), so this keeps the build under 1 GiB.
pub const BSDIFF_MAX_TOTAL: u64 = 160 << 20;
/// The largest old + new size a zstd patch-from is tried for: the device's decoder holds the
/// old file and a window covering both (2^28 bytes at most), within its memory bound.
pub const ZSTD_MAX_TOTAL: u64 = 256 << 20;
/// The zstd level of patches. Measured on the bench pair (1,285 patched files, 245 MB; patch
/// bytes, then the best of zstd and bsdiff per file, then single-core CPU seconds): level 19
/// 14.0 MB, 11.9 MB, 219 s; 15: 10.3, 6.6, 99 s; 13: 10.5, 6.7, 48 s; **12: 10.4, 6.7, 14 s**;
/// 11: 11.0, 6.7, 9 s; 9: 11.6, 6.8, 7 s. Levels 16–19 (btultra) are slower and, on a 129 MB
/// file (a JDK's `lib/modules`), four times larger (7.1 MB against 1.9 MB at 12); on the other
/// files the best-of differs by 0.8 % between 19 and 12 because bsdiff takes the files zstd
/// loses. Level 12 keeps the patch trials a small part of a build.
pub const ZSTD_LEVEL: i32 = 12;
/// qbsdiff's chunk size: a fixed value, so patches do not depend on the thread count.
pub const BSDIFF_CHUNK: usize = 16 << 20;

/// How a recipe file's content is made on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Patch {
    /// zstd frame compressed with the base file as its prefix.
    Zstd(Vec<u8>),
    /// bsdiff 4 patch (qbsdiff's format) against the base file.
    Bsdiff(Vec<u8>),
    /// A repack patch ([`super::repack`]): a zstd or bsdiff patch between the plain contents
    /// of the base and of the file, and the layout that re-creates the file's compressed bytes.
    Repack(Vec<u8>),
}

impl Patch {
    /// `zstd` or `bsdiff`: the source kind as control.yml names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Patch::Zstd(_) => "zstd",
            Patch::Bsdiff(_) => "bsdiff",
            Patch::Repack(_) => "repack",
        }
    }

    /// The patch's bytes (what the kit carries).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Patch::Zstd(b) | Patch::Bsdiff(b) | Patch::Repack(b) => b,
        }
    }

    /// A patch of the same kind with other bytes.
    pub fn with_bytes(&self, bytes: Vec<u8>) -> Patch {
        match self {
            Patch::Zstd(_) => Patch::Zstd(bytes),
            Patch::Bsdiff(_) => Patch::Bsdiff(bytes),
            Patch::Repack(_) => Patch::Repack(bytes),
        }
    }

    /// The patch's bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Patch::Zstd(b) | Patch::Bsdiff(b) | Patch::Repack(b) => b,
        }
    }
}

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
        best_plain_patch(old, new, whole_cost)?
    };
    if repack::worth_trying(new) {
        let limit = best.as_ref().map_or(whole_cost, |b| b.bytes().len() as u64);
        if let Some(r) = repack::make(old, new, limit)? {
            best = Some(Patch::Repack(r));
        }
    }
    Ok(best)
}

/// The smaller of a `zstd` and a `bsdiff` patch of `new` against `old`, when smaller than
/// `limit`; patches over the caps are not tried.
pub fn best_plain_patch(old: &[u8], new: &[u8], limit: u64) -> Result<Option<Patch>, DeltaError> {
    let total = old.len() as u64 + new.len() as u64;
    let mut best: Option<Patch> = None;
    let mut consider = |p: Patch| {
        let len = p.bytes().len() as u64;
        let bound = best.as_ref().map_or(limit, |b| b.bytes().len() as u64);
        if len < bound {
            best = Some(p);
        }
    };
    if total <= ZSTD_MAX_TOTAL {
        consider(Patch::Zstd(zstd_patch(old, new)?));
    }
    if total <= BSDIFF_MAX_TOTAL {
        consider(Patch::Bsdiff(bsdiff_patch(old, new)?));
    }
    Ok(best)
}

/// The zstd window log that covers `old` and `new` together.
fn window_log(total: u64) -> u32 {
    let bits = 64 - total.saturating_sub(1).leading_zeros();
    bits.clamp(10, 28)
}

/// A zstd frame of `new` compressed with `old` as its prefix (patch-from, long-distance
/// matching, window covering both).
pub fn zstd_patch(old: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let err = |msg: &str| DeltaError::Encode {
        kind: "zstd",
        msg: msg.to_string(),
    };
    let total = old.len() as u64 + new.len() as u64;
    let mut cctx = CCtx::create();
    for p in [
        CParameter::CompressionLevel(ZSTD_LEVEL),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::WindowLog(window_log(total)),
        CParameter::DeterministicRefPrefix(true),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
    ] {
        cctx.set_parameter(p)
            .map_err(|c| err(zstd::zstd_safe::get_error_name(c)))?;
    }
    cctx.ref_prefix(old)
        .map_err(|c| err(zstd::zstd_safe::get_error_name(c)))?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(new.len()));
    cctx.compress2(&mut out, new)
        .map_err(|c| err(zstd::zstd_safe::get_error_name(c)))?;
    Ok(out)
}

/// A bsdiff 4 patch of `new` against `old` (qbsdiff, fixed chunks).
pub fn bsdiff_patch(old: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::new();
    Bsdiff::new(old, new)
        .parallel_scheme(ParallelScheme::ChunkSize(BSDIFF_CHUNK))
        .compression_level(9)
        .compare(std::io::Cursor::new(&mut out))
        .map_err(|e| DeltaError::Encode {
            kind: "bsdiff",
            msg: e.to_string(),
        })?;
    Ok(out)
}

/// Re-creates a file from its patch and base file, refusing output other than `size` bytes
/// with sha256 `sha256` (memory: the output, bounded by `size`, and the decoder's state).
pub fn reconstruct(
    patch: &Patch,
    old: &[u8],
    size: u64,
    sha256: &[u8; 32],
) -> Result<Vec<u8>, DeltaError> {
    if let Patch::Repack(blob) = patch {
        return repack::apply(blob, old, size, sha256);
    }
    let kind = patch.kind();
    let dec = |msg: String| DeltaError::Decode { kind, msg };
    let cap = usize::try_from(size).map_err(|_| dec(format!("{size} bytes do not fit memory")))?;
    let out = match patch {
        Patch::Zstd(p) => {
            let total = old.len() as u64 + size;
            if total > ZSTD_MAX_TOTAL {
                return Err(dec(format!(
                    "base and output of {total} bytes exceed the {ZSTD_MAX_TOTAL} bytes allowed"
                )));
            }
            let mut dctx = DCtx::create();
            dctx.set_parameter(DParameter::WindowLogMax(window_log(total)))
                .map_err(|c| dec(zstd::zstd_safe::get_error_name(c).to_string()))?;
            dctx.ref_prefix(old)
                .map_err(|c| dec(zstd::zstd_safe::get_error_name(c).to_string()))?;
            let mut out = Vec::with_capacity(cap);
            dctx.decompress(&mut out, p)
                .map_err(|c| dec(zstd::zstd_safe::get_error_name(c).to_string()))?;
            out
        }
        Patch::Bsdiff(p) => {
            let patcher = Bspatch::new(p).map_err(|e| dec(e.to_string()))?;
            if patcher.hint_target_size() != size {
                return Err(dec(format!(
                    "it makes {} bytes, {size} recorded",
                    patcher.hint_target_size()
                )));
            }
            let mut out = Vec::with_capacity(cap);
            patcher
                .apply(old, std::io::Cursor::new(&mut out))
                .map_err(|e| dec(e.to_string()))?;
            out
        }
        Patch::Repack(_) => return Err(dec("a repack patch in the plain path".into())),
    };
    let got: [u8; 32] = Sha256::digest(&out).into();
    if out.len() as u64 != size || got != *sha256 {
        return Err(DeltaError::Mismatch {
            size: out.len() as u64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
