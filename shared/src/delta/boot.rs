//! The builder's choice for the boot files of a FORMAT 3 kit's `overlay` (DESIGN.md, "Binary
//! deltas (FORMAT 3)": boot files get the same per-file choice against the medium's current boot
//! files). For each boot file the kit carries (new or changed), in order:
//! 1. an old boot file with the same sha256 at another path → `copy` (the first in path order);
//! 2. the old boot file at the same path (compared case-insensitively, as on FAT) → the smaller
//!    of a `zstd` and a `bsdiff` patch ([`best_patch`]), kept only when smaller than what the
//!    file costs whole in the kit container ([`container_cost`]); base and file together at most
//!    [`MAX_PATCH_INPUT`];
//! 3. otherwise whole, under `overlay/` as in FORMAT 2.
//!
//! A pure function of the two boot trees: the same choices and patches on every machine.

use super::recipe::{BootFile, SourceKind, MAX_PATCH_INPUT};
use super::source::best_patch;
use super::DeltaError;
use crate::squashfs::compress::Compressor;
use crate::tree::{hex, Content};

/// The container's compressor and block size ([`crate::kit::container_params`]: xz preset 6,
/// 1 MiB dictionary, no BCJ, 1 MiB blocks).
const CONTAINER: Compressor = Compressor::Xz {
    level: 6,
    dict_size: 1 << 20,
    bcj_x86: false,
};
/// See [`CONTAINER`].
const CONTAINER_BLOCK: usize = 1 << 20;

/// The bytes `data` takes as a file of the kit container: its 1 MiB blocks (the container has no
/// fragments) written as the container's writer does — zero blocks sparse; the first other
/// block compressed, and when that does not shrink it, every block stored as it is; otherwise
/// every block compressed and kept so when that makes it smaller.
pub fn container_cost(data: &[u8]) -> Result<u64, DeltaError> {
    let mut compress: Option<bool> = None;
    let mut cost = 0u64;
    for block in data.chunks(CONTAINER_BLOCK) {
        if block.iter().all(|b| *b == 0) {
            continue;
        }
        let len = block.len() as u64;
        cost += match compress {
            Some(false) => len,
            _ => {
                let packed = CONTAINER.compress(block).map_err(|e| DeltaError::Encode {
                    kind: "xz",
                    msg: e.to_string(),
                })?;
                if compress.is_none() {
                    compress = Some(packed.is_some());
                }
                packed.map_or(len, |p| p.len() as u64)
            }
        };
    }
    Ok(cost)
}

/// A boot file of the new release as the builder sees it.
#[derive(Clone, Copy)]
pub struct BootInput<'a> {
    /// Path on the medium.
    pub path: &'a str,
    /// sha256 of the content.
    pub sha256: &'a [u8; 32],
    /// The content.
    pub content: &'a Content,
}

/// A boot file the kit re-creates from the medium's current boot files.
#[derive(Clone, Debug)]
pub struct BootChoice {
    /// The recipe's record.
    pub record: BootFile,
    /// The patch the kit carries at [`super::recipe::boot_patch_path`] (None for a copy).
    pub patch: Option<Vec<u8>>,
    /// Bytes the kit saves against carrying the file whole: its [`container_cost`] less the
    /// patch's size (the patch's own container cost is at most its size).
    pub saved: u64,
}

/// The choice for the boot file `new` against the old release's boot files `old` (sorted by
/// path); None: carried whole.
pub fn choose_boot(
    old: &[BootInput<'_>],
    new: BootInput<'_>,
) -> Result<Option<BootChoice>, DeltaError> {
    let read = |c: &Content| {
        c.read_all()
            .map_err(|e| DeltaError::Read(format!("{}: {e}", c.source.describe())))
    };
    if let Some(o) = old
        .iter()
        .find(|o| o.sha256 == new.sha256 && !o.path.eq_ignore_ascii_case(new.path))
    {
        let saved = container_cost(&read(new.content)?)?;
        return Ok(Some(BootChoice {
            record: BootFile {
                path: new.path.to_string(),
                source: SourceKind::Copy,
                base: o.path.to_string(),
                base_sha256: hex(o.sha256),
                patch_size: None,
                patch_sha256: None,
            },
            patch: None,
            saved,
        }));
    }
    let Some(o) = old.iter().find(|o| o.path.eq_ignore_ascii_case(new.path)) else {
        return Ok(None);
    };
    if o.content.size.saturating_add(new.content.size) > MAX_PATCH_INPUT || new.content.size == 0 {
        return Ok(None);
    }
    let new_bytes = read(new.content)?;
    let whole = container_cost(&new_bytes)?;
    let old_bytes = read(o.content)?;
    let Some(patch) = best_patch(&old_bytes, &new_bytes, whole)? else {
        return Ok(None);
    };
    let (kind, bytes) = (SourceKind::of(&patch), patch.into_bytes());
    use sha2::{Digest, Sha256};
    Ok(Some(BootChoice {
        record: BootFile {
            path: new.path.to_string(),
            source: kind,
            base: o.path.to_string(),
            base_sha256: hex(o.sha256),
            patch_size: Some(bytes.len() as u64),
            patch_sha256: Some(hex(&Sha256::digest(&bytes))),
        },
        saved: whole.saturating_sub(bytes.len() as u64),
        patch: Some(bytes),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::source::reconstruct;
    use sha2::{Digest, Sha256};

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    /// The settings are the container's, and its writer's way with blocks too.
    #[test]
    fn container_settings_are_the_kits() {
        let p = crate::kit::container_params(0, 1, "x");
        assert_eq!(p.compressor, CONTAINER);
        assert_eq!(p.block_size as usize, CONTAINER_BLOCK);
        assert!(!p.fragments);
        assert_eq!(p.data, crate::squashfs::write::DataCompression::Probe);
    }

    /// The container cost follows the writer: zero blocks free, incompressible data stored,
    /// text compressed.
    #[test]
    fn container_cost_matches_the_container_writer() {
        assert_eq!(container_cost(&[]).unwrap(), 0);
        assert_eq!(container_cost(&vec![0u8; 3 << 20]).unwrap(), 0);
        let n = noise(1_500_000, 3);
        assert_eq!(container_cost(&n).unwrap(), n.len() as u64);
        let text = b"label live\n  kernel /live/vmlinuz\n".repeat(2000);
        let c = container_cost(&text).unwrap();
        assert!(c < text.len() as u64 / 10, "{c}");
        // Incompressible first block: the rest is stored without a try, as the writer does.
        let mut mixed = noise(CONTAINER_BLOCK, 5);
        mixed.extend_from_slice(&text);
        assert_eq!(container_cost(&mixed).unwrap(), mixed.len() as u64);
    }

    /// Copy from another path, a patch against the same path (case-insensitive), whole
    /// otherwise; the patch re-creates the file.
    #[test]
    fn copy_patch_or_whole() {
        let efi_old = noise(200_000, 7);
        let mut efi_new = efi_old.clone();
        efi_new[1000..1008].copy_from_slice(b"CHANGED!");
        let font = noise(50_000, 9);
        let other = noise(30_000, 11);
        let (c_efi_old, c_efi_new) = (
            Content::from_bytes(efi_old.clone()),
            Content::from_bytes(efi_new.clone()),
        );
        let (c_font, c_other) = (
            Content::from_bytes(font.clone()),
            Content::from_bytes(other.clone()),
        );
        let (s_efi_old, s_efi_new, s_font, s_other) =
            (sha(&efi_old), sha(&efi_new), sha(&font), sha(&other));
        let old = [
            BootInput {
                path: "EFI/BOOT/BOOTX64.EFI",
                sha256: &s_efi_old,
                content: &c_efi_old,
            },
            BootInput {
                path: "EFI/BOOT/font.pf2",
                sha256: &s_font,
                content: &c_font,
            },
        ];
        let copy = choose_boot(
            &old,
            BootInput {
                path: "EFI/BOOT/fonts/font.pf2",
                sha256: &s_font,
                content: &c_font,
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(copy.record.source, SourceKind::Copy);
        assert_eq!(copy.record.base, "EFI/BOOT/font.pf2");
        assert!(copy.patch.is_none() && copy.saved == font.len() as u64);

        let p = choose_boot(
            &old,
            BootInput {
                path: "EFI/BOOT/bootx64.efi",
                sha256: &s_efi_new,
                content: &c_efi_new,
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.record.base, "EFI/BOOT/BOOTX64.EFI");
        let bytes = p.patch.clone().unwrap();
        assert_eq!(p.record.patch_size, Some(bytes.len() as u64));
        assert!(bytes.len() < 1000, "{}", bytes.len());
        let patch = p.record.source.patch(bytes).unwrap();
        let out = reconstruct(&patch, &efi_old, efi_new.len() as u64, &s_efi_new).unwrap();
        assert_eq!(out, efi_new);

        // No base at that path, or nothing in common: whole.
        let none = choose_boot(
            &old,
            BootInput {
                path: "utils/other",
                sha256: &s_other,
                content: &c_other,
            },
        )
        .unwrap();
        assert!(none.is_none());
        let unrelated = choose_boot(
            &old,
            BootInput {
                path: "EFI/BOOT/BOOTX64.EFI",
                sha256: &s_other,
                content: &c_other,
            },
        )
        .unwrap();
        assert!(unrelated.is_none());
    }
}
