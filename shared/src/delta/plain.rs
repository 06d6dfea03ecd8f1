//! Byte patches of one file against another: a `zstd` patch-from and a bsdiff-style patch,
//! their caps, and their re-creation ([`reconstruct_plain`]); the [`Patch`] kinds a recipe
//! carries. [`super::source`] chooses among them (and `repack` patches, [`super::repack`],
//! which use these on plain contents).
//!
//! Determinism: zstd runs single-threaded at a fixed level with `deterministicRefPrefix`;
//! qbsdiff cuts the new file into fixed-size chunks ([`BSDIFF_CHUNK`]), so its bytes do not
//! depend on the number of threads; both libraries are pinned by Cargo.lock.

use qbsdiff::{Bsdiff, Bspatch, ParallelScheme};
use sha2::{Digest, Sha256};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

use super::DeltaError;

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

/// The two byte patches: a `zstd` patch-from ([`zstd_patch`]) and a bsdiff-style patch
/// ([`bsdiff_patch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainKind {
    /// zstd frame compressed with the base as its prefix.
    Zstd,
    /// bsdiff 4 patch (qbsdiff's format) against the base.
    Bsdiff,
}

impl PlainKind {
    /// `zstd` or `bsdiff`.
    pub fn name(self) -> &'static str {
        match self {
            PlainKind::Zstd => "zstd",
            PlainKind::Bsdiff => "bsdiff",
        }
    }
}

/// A byte patch of one file against another: what a `zstd` or `bsdiff` source carries, and
/// what a `repack` patch carries between plain contents (never a repack patch itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainPatch {
    /// Which patch.
    pub kind: PlainKind,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl From<PlainPatch> for Patch {
    fn from(p: PlainPatch) -> Patch {
        match p.kind {
            PlainKind::Zstd => Patch::Zstd(p.bytes),
            PlainKind::Bsdiff => Patch::Bsdiff(p.bytes),
        }
    }
}

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
    /// `zstd`, `bsdiff` or `repack`: the source kind as control.yml names it.
    pub fn kind(&self) -> &'static str {
        self.plain().map_or("repack", |(k, _)| k.name())
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

    /// A `zstd` or `bsdiff` patch as a byte patch (None for a `repack` patch).
    pub fn plain(&self) -> Option<(PlainKind, &[u8])> {
        match self {
            Patch::Zstd(b) => Some((PlainKind::Zstd, b)),
            Patch::Bsdiff(b) => Some((PlainKind::Bsdiff, b)),
            Patch::Repack(_) => None,
        }
    }
}

/// The smaller of a `zstd` and a `bsdiff` patch of `new` against `old`, when smaller than
/// `limit`; patches over the caps are not tried.
pub fn best_plain_patch(
    old: &[u8],
    new: &[u8],
    limit: u64,
) -> Result<Option<PlainPatch>, DeltaError> {
    let total = old.len() as u64 + new.len() as u64;
    let mut best: Option<PlainPatch> = None;
    let mut consider = |kind: PlainKind, bytes: Vec<u8>| {
        let bound = best.as_ref().map_or(limit, |b| b.bytes.len() as u64);
        if (bytes.len() as u64) < bound {
            best = Some(PlainPatch { kind, bytes });
        }
    };
    if total <= ZSTD_MAX_TOTAL {
        consider(PlainKind::Zstd, zstd_patch(old, new)?);
    }
    if total <= BSDIFF_MAX_TOTAL {
        consider(PlainKind::Bsdiff, bsdiff_patch(old, new)?);
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

/// Re-creates a file from its `zstd` or `bsdiff` patch and base file, refusing output other
/// than `size` bytes with sha256 `sha256` (memory: the output, bounded by `size`, and the
/// decoder's state). A `repack` patch is [`super::source::reconstruct`]'s.
pub fn reconstruct_plain(
    (kind, p): (PlainKind, &[u8]),
    old: &[u8],
    size: u64,
    sha256: &[u8; 32],
) -> Result<Vec<u8>, DeltaError> {
    let dec = |msg: String| DeltaError::Decode {
        kind: kind.name(),
        msg,
    };
    let cap = usize::try_from(size).map_err(|_| dec(format!("{size} bytes do not fit memory")))?;
    let out = match kind {
        PlainKind::Zstd => {
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
        PlainKind::Bsdiff => {
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
    };
    let got: [u8; 32] = Sha256::digest(&out).into();
    if out.len() as u64 != size || got != *sha256 {
        return Err(DeltaError::Mismatch {
            size: out.len() as u64,
        });
    }
    Ok(out)
}
