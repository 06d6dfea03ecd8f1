//! The `repack` source of a FORMAT 3 recipe (DESIGN.md, "Compressed files"): a file holding
//! compressed streams — a gzip'd initrd, a `.gz`, a jar or `omni.ja` with deflated entries, an
//! `.xz`, a kernel image with its xz payload — is patched in its *plain content*
//! ([`super::unpack`]), where a byte delta finds what the compressed bytes hide, and the device
//! re-creates the exact compressed bytes from the patched plain content and the new file's
//! [`Layout`].
//!
//! A repack patch ([`RepackPatch`]) carries: the length and sha256 of the base file's plain
//! content (what the patch was made against), the length and sha256 of the new plain content,
//! the new file's layout, and a `zstd` or `bsdiff` patch of the new plain content against the
//! base's. The base's plain content is [`base_plain`]: its [`plain_view`], or the base itself
//! when it holds no stream (a file that became compressed). The device ([`apply`]) derives the
//! base's plain content, checks its length and sha256, applies the patch (checking the plain
//! result's length and sha256), repacks, and the caller's check of the output's size and sha256
//! follows. The builder ([`make`]) runs that very [`apply`] on what it made and keeps the patch
//! only when it gives the file exactly and is smaller than the limit it is given.
//!
//! Memory, builder and device alike: the base, its plain content, the new plain content, the
//! output and the re-creation state of one stream (preflate-rs: about 3× that stream's plain
//! content; liblzma: about 11.5× the dictionary): with [`UnpackCaps::DEFAULT`] (256 MiB of plain
//! content per file) at most about 1 GiB for one file. A file over the caps is carried otherwise.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::plain::{best_plain_patch, reconstruct_plain, PlainKind, PlainPatch};
use super::unpack::{plain_view, repack, unpack, zlib_header, Layout, UnpackCaps, ZSTD_MAGIC};
use super::DeltaError;

/// The first bytes of a repack patch (and its format version).
const MAGIC: &[u8; 8] = b"iukrpk1\n";
/// Patch kinds inside a repack patch.
const INNER_ZSTD: u8 = 1;
/// See [`INNER_ZSTD`].
const INNER_BSDIFF: u8 = 2;
/// Bytes before the layout: magic, inner kind, two (length, sha256) pairs, the layout's length.
pub const HEADER_LEN: usize = 8 + 1 + (8 + 32) * 2 + 8;

/// True when `data` may hold a stream [`super::unpack`] recognises and is worth a repack trial:
/// it starts like a gzip member, an xz stream, a zstd frame, a zlib stream, a zip archive, a
/// cpio archive (an initrd whose compressed part follows an uncompressed one) or a Linux kernel
/// image (bzImage).
pub fn worth_trying(data: &[u8]) -> bool {
    const STARTS: [&[u8]; 7] = [
        b"\x1f\x8b\x08",
        b"\xfd7zXZ\x00",
        &ZSTD_MAGIC,
        b"PK\x03\x04",
        b"070701",
        b"070702",
        b"070707",
    ];
    STARTS.iter().any(|s| data.starts_with(s))
        || zlib_header(data)
        || data.get(0x202..0x206) == Some(b"HdrS".as_slice())
}

/// A parsed repack patch (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepackPatch {
    /// Length of the base's plain content.
    pub base_plain_len: u64,
    /// sha256 of the base's plain content.
    pub base_plain_sha256: [u8; 32],
    /// Length of the new plain content.
    pub plain_len: u64,
    /// sha256 of the new plain content.
    pub plain_sha256: [u8; 32],
    /// The new file's layout ([`Layout::to_bytes`]).
    pub layout: Vec<u8>,
    /// The patch of the new plain content against the base's (`zstd` or `bsdiff`).
    pub patch: PlainPatch,
}

impl RepackPatch {
    /// The bytes a kit carries.
    pub fn to_bytes(&self) -> Vec<u8> {
        let kind = match self.patch.kind {
            PlainKind::Zstd => INNER_ZSTD,
            PlainKind::Bsdiff => INNER_BSDIFF,
        };
        let patch = &self.patch.bytes;
        let mut out = Vec::with_capacity(HEADER_LEN + self.layout.len() + patch.len());
        out.extend_from_slice(MAGIC);
        out.push(kind);
        out.extend_from_slice(&self.base_plain_len.to_le_bytes());
        out.extend_from_slice(&self.base_plain_sha256);
        out.extend_from_slice(&self.plain_len.to_le_bytes());
        out.extend_from_slice(&self.plain_sha256);
        out.extend_from_slice(&(self.layout.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.layout);
        out.extend_from_slice(patch);
        out
    }

    /// Parses a repack patch; refuses another magic, an unknown inner kind and lengths that
    /// do not fit.
    pub fn from_bytes(b: &[u8]) -> Result<RepackPatch, DeltaError> {
        let bad = |msg: &str| DeltaError::Decode {
            kind: "repack",
            msg: msg.to_string(),
        };
        if b.len() < HEADER_LEN || &b[..8] != MAGIC {
            return Err(bad("not a repack patch (magic or header missing)"));
        }
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let sha_at = |at: usize| {
            let mut x = [0u8; 32];
            x.copy_from_slice(&b[at..at + 32]);
            x
        };
        let kind = b[8];
        let base_plain_len = u64_at(9);
        let base_plain_sha256 = sha_at(17);
        let plain_len = u64_at(49);
        let plain_sha256 = sha_at(57);
        let layout_len = u64_at(89);
        let rest = &b[HEADER_LEN..];
        let layout_len = usize::try_from(layout_len)
            .ok()
            .filter(|l| *l <= rest.len())
            .ok_or_else(|| bad("the layout runs past the end of the patch"))?;
        let (layout, patch) = rest.split_at(layout_len);
        let kind = match kind {
            INNER_ZSTD => PlainKind::Zstd,
            INNER_BSDIFF => PlainKind::Bsdiff,
            _ => return Err(bad("unknown patch kind inside the repack patch")),
        };
        let patch = PlainPatch {
            kind,
            bytes: patch.to_vec(),
        };
        Ok(RepackPatch {
            base_plain_len,
            base_plain_sha256,
            plain_len,
            plain_sha256,
            layout: layout.to_vec(),
            patch,
        })
    }
}

/// The plain content a repack patch is made against and applied to: the base's
/// [`plain_view`], or the base itself when it holds no recognised stream.
pub fn base_plain(base: &[u8]) -> Result<Cow<'_, [u8]>, DeltaError> {
    Ok(match plain_view(base, UnpackCaps::DEFAULT)? {
        Some(p) => Cow::Owned(p),
        None => Cow::Borrowed(base),
    })
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// The builder's repack patch of `new` against `base`, when `new` holds streams that can be
/// re-created and the patch is smaller than `limit` bytes; checked by re-creating `new` from it
/// with [`apply`], exactly as the device does. `None` otherwise (the file goes another way).
pub fn make(base: &[u8], new: &[u8], limit: u64) -> Result<Option<Vec<u8>>, DeltaError> {
    let caps = UnpackCaps::DEFAULT;
    let Some(unpacked) = unpack(new, caps)? else {
        return Ok(None);
    };
    let layout = unpacked.layout.to_bytes();
    let fixed = (HEADER_LEN + layout.len()) as u64;
    if fixed >= limit {
        return Ok(None);
    }
    let bp = base_plain(base)?;
    if bp.len() as u64 > caps.max_plain {
        return Ok(None);
    }
    let Some(patch) = best_plain_patch(&bp, &unpacked.plain, limit - fixed)? else {
        return Ok(None);
    };
    let made = RepackPatch {
        base_plain_len: bp.len() as u64,
        base_plain_sha256: sha(&bp),
        plain_len: unpacked.plain.len() as u64,
        plain_sha256: sha(&unpacked.plain),
        layout,
        patch,
    }
    .to_bytes();
    drop(unpacked);
    drop(bp);
    // Kept only when the device's path gives the file exactly.
    match apply(&made, base, new.len() as u64, &sha(new)) {
        Ok(out) if out == new => Ok(Some(made)),
        _ => Ok(None),
    }
}

/// Re-creates a file from its repack patch `blob` and its base: checks the base's plain
/// content against the patch, applies the inner patch (the plain result checked), repacks, and
/// refuses output other than `size` bytes with sha256 `sha256`.
pub fn apply(
    blob: &[u8],
    base: &[u8],
    size: u64,
    sha256: &[u8; 32],
) -> Result<Vec<u8>, DeltaError> {
    let caps = UnpackCaps::DEFAULT;
    let bad = |msg: String| DeltaError::Decode {
        kind: "repack",
        msg,
    };
    let p = RepackPatch::from_bytes(blob)?;
    if p.plain_len > caps.max_plain || p.base_plain_len > caps.max_plain {
        return Err(bad(format!(
            "plain contents of {} and {} bytes exceed the {} bytes a device re-creates",
            p.base_plain_len, p.plain_len, caps.max_plain
        )));
    }
    let bp = base_plain(base)?;
    if bp.len() as u64 != p.base_plain_len || sha(&bp) != p.base_plain_sha256 {
        return Err(bad(
            "the base file's plain content is not the one the patch was made against".into(),
        ));
    }
    let plain = reconstruct_plain(
        (p.patch.kind, &p.patch.bytes),
        &bp,
        p.plain_len,
        &p.plain_sha256,
    )?;
    drop(bp);
    let layout = Layout::from_bytes(&p.layout, caps)?;
    let out = repack(&plain, &layout, caps)?;
    if out.len() as u64 != size || sha(&out) != *sha256 {
        return Err(DeltaError::Mismatch {
            size: out.len() as u64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::testtools::{have, sh, text};
    use std::path::Path;

    #[test]
    fn worth_trying_kinds() {
        for yes in [
            &b"\x1f\x8b\x08\x00"[..],
            b"\xfd7zXZ\x00\x00",
            b"\x28\xb5\x2f\xfd\x24",
            b"\x78\x9c\x01",
            b"\x78\xda",
            b"PK\x03\x04",
            b"070701",
        ] {
            assert!(worth_trying(yes), "{yes:?}");
        }
        for no in [&b"\x78\x9d"[..], b"\x28\xb5\x2f", b"text", b""] {
            assert!(!worth_trying(no), "{no:?}");
        }
    }

    /// Lines of text, a few of them changed between versions (`new`).
    fn lines(n: usize, seed: u32, new: bool) -> Vec<u8> {
        let base = text(n * 60, seed);
        let mut out = Vec::new();
        for (i, line) in base.chunks(60).enumerate() {
            out.extend_from_slice(line);
            if new && i % 97 == 3 {
                out.extend_from_slice(format!(" changed in the new version {i}").as_bytes());
            }
            out.push(b'\n');
        }
        out
    }

    /// An initrd as Debian makes one: an uncompressed cpio archive (early microcode), then a
    /// gzip'd cpio archive (the main one), made by GNU cpio and gzip in `dir`.
    fn initrd(dir: &Path, new: bool) -> Vec<u8> {
        let tag = if new { "new" } else { "old" };
        let root = dir.join(format!("initrd-{tag}"));
        for d in [
            "early/kernel/x86/microcode",
            "main/lib/modules",
            "main/scripts",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("early/kernel/x86/microcode/GenuineIntel.bin"),
            text(20_000, 7),
        )
        .unwrap();
        for i in 0..12u32 {
            std::fs::write(
                root.join(format!("main/lib/modules/m{i}.ko")),
                lines(300, 100 + i, new && i % 4 == 1),
            )
            .unwrap();
        }
        std::fs::write(root.join("main/scripts/init"), lines(80, 9, new)).unwrap();
        let early = sh(
            &root.join("early"),
            "find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible",
        );
        let main = sh(
            &root.join("main"),
            "find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible | gzip -9n",
        );
        [early, main].concat()
    }

    /// Makes the repack patch of `new` against `old`, checks it is small, exact and
    /// reproducible; returns it.
    fn made(old: &[u8], new: &[u8], at_most: f64) -> Vec<u8> {
        let blob = make(old, new, new.len() as u64)
            .unwrap()
            .expect("a repack patch");
        assert!(
            (blob.len() as f64) < at_most * new.len() as f64,
            "{} bytes for {}",
            blob.len(),
            new.len()
        );
        assert_eq!(
            make(old, new, new.len() as u64).unwrap(),
            Some(blob.clone())
        );
        let out = apply(&blob, old, new.len() as u64, &sha(new)).unwrap();
        assert_eq!(out, new);
        blob
    }

    #[test]
    fn an_initrd_travels_as_a_patch_of_its_plain_content() {
        if !(have("cpio") && have("gzip")) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (initrd(dir.path(), false), initrd(dir.path(), true));
        assert_ne!(old, new);
        let blob = made(&old, &new, 0.35);
        // Byte deltas of the compressed bytes gain little: the repack patch is far smaller.
        let plain = best_plain_patch(&old, &new, u64::MAX).unwrap().unwrap();
        assert!(
            blob.len() * 3 < plain.bytes.len(),
            "repack {} bytes, byte patch {}",
            blob.len(),
            plain.bytes.len()
        );
    }

    #[test]
    fn gz_zip_and_xz_files_travel_as_patches_of_their_plain_content() {
        if !(have("gzip") && have("xz") && have("zip")) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut pairs = Vec::new();
        for (tag, new) in [("old", false), ("new", true)] {
            std::fs::write(d.join(format!("changelog-{tag}")), lines(2000, 3, new)).unwrap();
            let gz = sh(d, &format!("gzip -9nc changelog-{tag}"));
            let xz = sh(d, &format!("xz -6c changelog-{tag}"));
            let z = d.join(format!("jar-{tag}"));
            std::fs::create_dir_all(z.join("META-INF")).unwrap();
            std::fs::write(z.join("META-INF/MANIFEST.MF"), b"Manifest-Version: 1.0\n").unwrap();
            for i in 0..6u32 {
                std::fs::write(
                    z.join(format!("c{i}.class")),
                    lines(200, 40 + i, new && i == 2),
                )
                .unwrap();
            }
            let zip = sh(
                &z,
                "TZ=UTC find . -exec touch -d 2020-01-01T00:00:00 {} + && \
                 LC_ALL=C zip -X -q -r -9 - META-INF c0.class c1.class c2.class c3.class \
                 c4.class c5.class",
            );
            pairs.push([gz, xz, zip]);
        }
        for (i, what) in ["gzip", "xz", "zip"].iter().enumerate() {
            let (old, new) = (&pairs[0][i], &pairs[1][i]);
            assert_ne!(old, new, "{what}");
            made(old, new, 0.5);
        }
    }

    #[test]
    fn damaged_patches_and_other_bases_are_refused() {
        if !(have("cpio") && have("gzip")) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (initrd(dir.path(), false), initrd(dir.path(), true));
        let blob = made(&old, &new, 0.35);
        let (size, digest) = (new.len() as u64, sha(&new));
        // Another base (a byte of its compressed part changed, or the new file itself).
        let mut other = old.clone();
        let last = other.len() - 20;
        other[last] ^= 1;
        for base in [&other, &new] {
            let err = apply(&blob, base, size, &digest).unwrap_err().to_string();
            assert!(
                err.contains("plain content is not the one")
                    || err.contains("does not decode")
                    || err.contains("repack"),
                "{err}"
            );
        }
        // A lie about the output.
        assert!(apply(&blob, &old, size - 1, &digest).is_err());
        assert!(apply(&blob, &old, size, &sha(b"x")).is_err());
        // Truncated and bit-flipped patches: refused, or exactly the file, never a panic.
        for cut in [
            0,
            8,
            HEADER_LEN - 1,
            HEADER_LEN + 3,
            blob.len() / 2,
            blob.len() - 1,
        ] {
            if let Ok(out) = apply(&blob[..cut], &old, size, &digest) {
                assert_eq!(out, new, "cut {cut}");
            }
        }
        for at in (0..blob.len()).step_by(blob.len() / 64 + 1) {
            let mut f = blob.clone();
            f[at] ^= 0x20;
            if let Ok(out) = apply(&f, &old, size, &digest) {
                assert_eq!(out, new, "flip at {at}");
            }
        }
        // A file without streams gets no repack patch.
        assert_eq!(make(&old, b"plain text", 1 << 20).unwrap(), None);
    }
}
