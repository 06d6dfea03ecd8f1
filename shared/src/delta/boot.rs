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
//! A pure function of the two boot trees: the same choices and patches on every machine. The
//! patch trials of one new release are kept ([`BootTrials`]) for the other kits of a batch:
//! old releases that share a boot file (no kernel or initramfs change between them) take the
//! same patch without a second trial (an initrd's takes ~15 s, a kernel's ~45 s).

use std::collections::HashMap;
use std::sync::Mutex;

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

/// A patch trial's key: the new file's path and sha256, its base's path and sha256.
type TrialKey = (String, [u8; 32], String, [u8; 32]);

/// A patch trial's outcome: the patch (kind and bytes) when one beat the file whole, and what
/// the file costs whole in the container.
type TrialOutcome = (Option<(SourceKind, Vec<u8>)>, u64);

/// The boot files' patch trials against one new release, shared by the kits of a batch. The
/// outcome is a function of the key's two contents (named by their sha256), so a kept outcome
/// is the one a new trial would give.
#[derive(Debug, Default)]
pub struct BootTrials(Mutex<HashMap<TrialKey, TrialOutcome>>);

impl BootTrials {
    /// The outcome for `key`, from an earlier trial or from `trial`.
    fn get_or_try(
        &self,
        key: TrialKey,
        trial: impl FnOnce() -> Result<TrialOutcome, DeltaError>,
    ) -> Result<TrialOutcome, DeltaError> {
        let known = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(o) = known {
            return Ok(o);
        }
        let o = trial()?;
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, o.clone());
        Ok(o)
    }
}

/// The choice for the boot file `new` against the old release's boot files `old` (sorted by
/// path); None: carried whole. A patch trial already in `trials` is not run again.
pub fn choose_boot(
    old: &[BootInput<'_>],
    new: BootInput<'_>,
    trials: &BootTrials,
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
    let key = (
        new.path.to_string(),
        *new.sha256,
        o.path.to_string(),
        *o.sha256,
    );
    let (patch, whole) = trials.get_or_try(key, || {
        // An initrd's repack trial is the build's largest single allocation: it starts from a
        // heap with the earlier trials handed back (crate::memory).
        crate::memory::release_free_heap();
        let new_bytes = read(new.content)?;
        let whole = container_cost(&new_bytes)?;
        let old_bytes = read(o.content)?;
        let patch = best_patch(&old_bytes, &new_bytes, whole)?;
        Ok((patch.map(|p| (SourceKind::of(&p), p.into_bytes())), whole))
    })?;
    let Some((kind, bytes)) = patch else {
        return Ok(None);
    };
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
        let trials = BootTrials::default();
        let copy = choose_boot(
            &old,
            BootInput {
                path: "EFI/BOOT/fonts/font.pf2",
                sha256: &s_font,
                content: &c_font,
            },
            &trials,
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
            &trials,
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
            &trials,
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
            &trials,
        )
        .unwrap();
        assert!(unrelated.is_none());
    }

    /// A content that counts how often it is read.
    struct Counted(Vec<u8>, std::sync::atomic::AtomicUsize);

    impl crate::tree::ContentSource for Counted {
        fn open(&self) -> std::io::Result<Box<dyn std::io::Read + Send + '_>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Box::new(std::io::Cursor::new(self.0.as_slice())))
        }
        fn describe(&self) -> String {
            "counted".into()
        }
    }

    /// A batch's second kit whose old release has the same boot file takes the first kit's
    /// trial: the same choice, neither file read again; another base is tried afresh.
    #[test]
    fn a_shared_old_boot_file_is_tried_once() {
        let old_bytes = noise(300_000, 13);
        let mut new_bytes = old_bytes.clone();
        new_bytes[5000..5010].copy_from_slice(b"0123456789");
        let counted = |b: &[u8]| {
            let c = std::sync::Arc::new(Counted(b.to_vec(), Default::default()));
            let content = Content {
                size: b.len() as u64,
                source: c.clone(),
            };
            (c, content)
        };
        let (old_src, old_c) = counted(&old_bytes);
        let (new_src, new_c) = counted(&new_bytes);
        let (s_old, s_new) = (sha(&old_bytes), sha(&new_bytes));
        let old = [BootInput {
            path: "live/vmlinuz",
            sha256: &s_old,
            content: &old_c,
        }];
        let new = BootInput {
            path: "live/vmlinuz",
            sha256: &s_new,
            content: &new_c,
        };
        let reads = || {
            let n = |c: &Counted| c.1.load(std::sync::atomic::Ordering::Relaxed);
            (n(&old_src), n(&new_src))
        };
        let trials = BootTrials::default();
        let first = choose_boot(&old, new, &trials).unwrap().unwrap();
        assert_eq!(reads(), (1, 1));
        let again = choose_boot(&old, new, &trials).unwrap().unwrap();
        assert_eq!(reads(), (1, 1), "the kept trial was run again");
        assert_eq!(
            (&again.record, &again.patch, again.saved),
            (&first.record, &first.patch, first.saved)
        );
        assert!(first.record.source.is_patch(), "{:?}", first.record);
        // A fresh memo gives the same choice (the kept outcome is the trial's).
        let fresh = choose_boot(&old, new, &BootTrials::default())
            .unwrap()
            .unwrap();
        assert_eq!((&fresh.record, &fresh.patch), (&first.record, &first.patch));
        // Another base (other bytes at the same path) is a new trial.
        let other = noise(300_000, 17);
        let (s_other, c_other) = (sha(&other), Content::from_bytes(other.clone()));
        let old2 = [BootInput {
            path: "live/vmlinuz",
            sha256: &s_other,
            content: &c_other,
        }];
        assert!(choose_boot(&old2, new, &trials).unwrap().is_none());
        assert_eq!(
            reads().1,
            3,
            "the other base's trial did not read the new file"
        );
    }
}
