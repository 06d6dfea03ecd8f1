//! The builder's per-file choice of content source for a FORMAT 3 recipe (DESIGN.md, "Binary
//! deltas (FORMAT 3)"). For each regular file of the diff layer, in order:
//! 1. empty → `whole` (nothing to carry);
//! 2. an old file with the same sha256 → `copy` (the same path first, then the matched base
//!    path, then the first such file in walk order): metadata-only changes, moves and renames
//!    cost nothing;
//! 3. a base file ([`BaseIndex`]: same path, renamed kernel ABI directory, versioned soname) →
//!    the smallest of a `zstd` patch-from and a `bsdiff` patch (not for files that start with
//!    a compressed-stream signature) and, for files that may hold compressed streams, a
//!    `repack` patch between the plain contents ([`best_patch`]), kept only when smaller than
//!    what the file costs whole in the layer ([`whole_cost`]); files over the caps are not
//!    tried;
//! 4. otherwise `whole`.
//!
//! Everything is a pure function of the two trees, their contents and the layer's compressor
//! settings: trials run in parallel but results are collected by file, and patches themselves
//! are deterministic ([`super::source`]). Memory: files whose base and new content together
//! exceed [`PARALLEL_MAX`] are tried one at a time (a bsdiff trial needs about six times the
//! base's size), and so are files over [`PARALLEL_REPACK_MAX`] that may hold compressed
//! streams (a repack trial holds their plain content).

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::matching::BaseIndex;
use super::recipe::{file_paths, Chosen, RecipeFile, SourceKind, PARALLEL_REPACK_MAX};
use super::repack;
use super::source::{best_patch, Patch, BSDIFF_MAX_TOTAL, ZSTD_MAX_TOTAL};
use super::DeltaError;
use crate::diff::Hashed;
use crate::squashfs::compress::Compressor;
use crate::squashfs::data::StoredFile;
use crate::squashfs::inode::BLOCK_UNCOMPRESSED;
use crate::tree::{hex, Content, InodeId, InodeKind, Tree};

/// Files whose base and new content together are at most this large are tried in parallel;
/// larger ones one at a time, so the build's memory stays bounded whatever the thread count.
pub const PARALLEL_MAX: u64 = 32 << 20;

/// The layer's compressor and block size: what "the file carried whole" costs is measured with
/// them.
#[derive(Clone, Copy, Debug)]
pub struct LayerCompression<'a> {
    /// The layer's compressor.
    pub compressor: &'a Compressor,
    /// The layer's block size.
    pub block_size: u32,
}

/// The bytes `content` costs carried whole in a layer written with `layer`: its full blocks as
/// the layer stores them (the new image's stored blocks when its compressor and block size are
/// the layer's, as block sources copy them; otherwise each block compressed) plus its tail
/// compressed on its own (in the layer it shares a fragment block, so this errs high by at most
/// the fragment's framing).
pub fn whole_cost(content: &Content, layer: LayerCompression<'_>) -> Result<u64, DeltaError> {
    let read = |e: std::io::Error| DeltaError::Read(format!("{}: {e}", content.source.describe()));
    let bs = layer.block_size as u64;
    if let Some(s) = StoredFile::of(content) {
        if s.same_settings(layer.compressor, layer.block_size) {
            if let Some(full) = s.full_blocks() {
                let blocks: u64 = full.iter().map(|b| (b & !BLOCK_UNCOMPRESSED) as u64).sum();
                let tail = s
                    .tail()
                    .map_err(|e| DeltaError::Read(format!("{}: {e}", s.describe())))?;
                return Ok(blocks + compressed_len(layer.compressor, &tail)?);
            }
        }
    }
    let bytes = content.read_all().map_err(read)?;
    let mut cost = 0u64;
    for chunk in bytes.chunks(bs.max(1) as usize) {
        cost += compressed_len(layer.compressor, chunk)?;
    }
    Ok(cost)
}

/// The stored size of `data` compressed as one block (stored as it is when that does not shrink).
fn compressed_len(c: &Compressor, data: &[u8]) -> Result<u64, DeltaError> {
    if data.is_empty() {
        return Ok(0);
    }
    let packed = c.compress(data).map_err(|e| DeltaError::Encode {
        kind: "whole-cost",
        msg: e.to_string(),
    })?;
    Ok(packed.map_or(data.len(), |p| p.len().min(data.len())) as u64)
}

/// What the choice found, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChoiceStats {
    /// Files tried for a patch.
    pub tried: u64,
    /// Files tried that may hold compressed streams ([`repack::worth_trying`]).
    pub compressed: u64,
    /// What those files cost whole in the layer (bytes, an upper bound: full blocks as
    /// stored, tails raw).
    pub compressed_whole_bytes: u64,
    /// What the kit carries for them (their patch, or their cost whole).
    pub compressed_carried_bytes: u64,
    /// Files over the caps.
    pub over_caps: u64,
}

/// One layer file waiting for a patch trial.
struct Trial {
    /// Index into the chosen list.
    at: usize,
    /// Its base file in the old root.
    base_path: String,
    /// The base's content.
    base: Content,
    /// The base's sha256.
    base_sha: [u8; 32],
}

/// Chooses every regular file's source (see the module doc). `layer` is the diff layer with its
/// content hashes, `old` the old root with its; `read` gets the bytes of new files tried.
pub fn choose(
    layer: Hashed<'_>,
    old: Hashed<'_>,
    compression: LayerCompression<'_>,
    read: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<Chosen>, ChoiceStats), DeltaError> {
    let old_files = old_regular_files(old.tree);
    let mut by_sha: HashMap<[u8; 32], &str> = HashMap::new();
    for (path, id) in &old_files {
        if let Some(h) = old.hashes.get(id.0 as usize).copied().flatten() {
            by_sha.entry(h).or_insert(path.as_str());
        }
    }
    let by_path: HashMap<&str, InodeId> = old_files.iter().map(|(p, i)| (p.as_str(), *i)).collect();
    let index = BaseIndex::new(old_files.iter().map(|(p, _)| p.as_str()));
    let old_sha = |p: &str| {
        by_path
            .get(p)
            .and_then(|i| old.hashes.get(i.0 as usize).copied().flatten())
    };

    let mut chosen = Vec::new();
    let mut trials = Vec::new();
    for (i, path) in file_paths(layer.tree).into_iter().enumerate() {
        let Some(path) = path else { continue };
        let inode = InodeId(i as u32);
        let InodeKind::File(content) = &layer.tree.inode(inode).kind else {
            continue;
        };
        let sha = layer.hashes.get(i).copied().flatten().ok_or_else(|| {
            DeltaError::Recipe(format!("{path}: the layer file has no content hash"))
        })?;
        let matched = index.base_for(&path);
        let copy_from = if content.size == 0 {
            None
        } else {
            [Some(path.as_str()), matched.as_deref()]
                .into_iter()
                .flatten()
                .find(|p| old_sha(p) == Some(sha))
                .or_else(|| by_sha.get(&sha).copied())
        };
        let record = |source: SourceKind, base: Option<(&str, [u8; 32])>| RecipeFile {
            path: path.clone(),
            size: content.size,
            sha256: hex(&sha),
            source,
            base: base.map(|b| b.0.to_string()),
            base_sha256: base.map(|b| hex(&b.1)),
        };
        if let Some(b) = copy_from {
            chosen.push(Chosen {
                inode,
                record: record(SourceKind::Copy, Some((b, sha))),
                payload: Content::from_bytes(Vec::new()),
            });
            continue;
        }
        if content.size > 0 {
            if let Some((b, base_sha, base)) = matched.as_deref().and_then(|b| {
                let id = by_path.get(b)?;
                let InodeKind::File(c) = &old.tree.inode(*id).kind else {
                    return None;
                };
                Some((b, old_sha(b)?, c.clone()))
            }) {
                trials.push(Trial {
                    at: chosen.len(),
                    base_path: b.to_string(),
                    base,
                    base_sha,
                });
            }
        }
        chosen.push(Chosen {
            inode,
            record: record(SourceKind::Whole, None),
            payload: content.clone(),
        });
    }

    let mut stats = ChoiceStats::default();
    // A repack trial holds the plain content of its streams: only small ones run in parallel.
    let parallel = |t: &&Trial| {
        let new = &chosen[t.at].payload;
        let total = t.base.size + new.size;
        total <= PARALLEL_REPACK_MAX
            || (total <= PARALLEL_MAX && !head(new).is_ok_and(|h| repack::worth_trying(&h)))
    };
    let (small, large): (Vec<&Trial>, Vec<&Trial>) = trials.iter().partition(parallel);
    let done = AtomicU64::new(0);
    let progress = |n: u64| read(done.fetch_add(n, Ordering::Relaxed) + n);
    let try_one = |t: &Trial| -> Result<Outcome, DeltaError> {
        try_patch(t, &chosen[t.at].payload, compression, &progress)
    };
    let mut outcomes: Vec<(usize, Outcome)> = small
        .par_iter()
        .map(|t| Ok((t.at, try_one(t)?)))
        .collect::<Result<_, DeltaError>>()?;
    // Each large trial allocates afresh what the previous one freed: hand it back in between,
    // so the peak is the largest trial's, not the sum (crate::memory).
    crate::memory::release_free_heap();
    for t in &large {
        outcomes.push((t.at, try_one(t)?));
        crate::memory::release_free_heap();
    }
    let trial_at: HashMap<usize, &Trial> = trials.iter().map(|t| (t.at, t)).collect();
    for (at, outcome) in outcomes {
        let Outcome::Tried {
            patch,
            streams,
            whole,
        } = outcome
        else {
            stats.over_caps += 1;
            continue;
        };
        stats.tried += 1;
        if streams {
            stats.compressed += 1;
            stats.compressed_whole_bytes += whole;
            stats.compressed_carried_bytes +=
                patch.as_ref().map_or(whole, |p| p.bytes().len() as u64);
        }
        if let Some(p) = patch {
            let t = trial_at[&at];
            let c = &mut chosen[at];
            c.record.source = SourceKind::of(&p);
            c.record.base = Some(t.base_path.clone());
            c.record.base_sha256 = Some(hex(&t.base_sha));
            c.payload = Content::from_bytes(p.into_bytes());
        }
    }
    Ok((chosen, stats))
}

/// The first bytes of `c` (enough for [`repack::worth_trying`]).
fn head(c: &Content) -> std::io::Result<Vec<u8>> {
    let mut h = Vec::with_capacity(0x206);
    c.source.open()?.take(0x206).read_to_end(&mut h)?;
    Ok(h)
}

/// What one trial gave.
enum Outcome {
    /// Base and file exceed every cap: not tried.
    OverCaps,
    /// Tried: the patch to carry, if one is smaller than the file whole; whether the file may
    /// hold compressed streams; what it costs whole (an upper bound).
    Tried {
        patch: Option<Patch>,
        streams: bool,
        whole: u64,
    },
}

fn try_patch(
    t: &Trial,
    new: &Content,
    compression: LayerCompression<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Outcome, DeltaError> {
    let total = t.base.size.saturating_add(new.size);
    if total > ZSTD_MAX_TOTAL.max(BSDIFF_MAX_TOTAL) {
        return Ok(Outcome::OverCaps);
    }
    let read = |c: &Content| {
        c.read_all()
            .map_err(|e| DeltaError::Read(format!("{}: {e}", c.source.describe())))
    };
    let new_bytes = read(new)?;
    progress(new.size);
    let streams = repack::worth_trying(&new_bytes);
    let old_bytes = read(&t.base)?;
    // A patch has to beat the file's cost whole: first against a bound that is never lower
    // (full blocks as stored plus the raw tail), then, when the patch is larger than the full
    // blocks alone, against the measured cost.
    let upper = upper_cost(new, compression);
    let tried = |patch| Outcome::Tried {
        patch,
        streams,
        whole: upper,
    };
    let Some(p) = best_patch(&old_bytes, &new_bytes, upper)? else {
        return Ok(tried(None));
    };
    let len = p.bytes().len() as u64;
    if len >= lower_cost(new, compression) && len >= whole_cost(new, compression)? {
        return Ok(tried(None));
    }
    Ok(tried(Some(p)))
}

/// The stored full blocks when the new image's settings are the layer's (else 0).
fn lower_cost(c: &Content, layer: LayerCompression<'_>) -> u64 {
    match StoredFile::of(c) {
        Some(s) if s.same_settings(layer.compressor, layer.block_size) => {
            s.full_blocks().map_or(0, |f| {
                f.iter().map(|b| (b & !BLOCK_UNCOMPRESSED) as u64).sum()
            })
        }
        _ => 0,
    }
}

/// The stored full blocks plus the raw tail when the new image's settings are the layer's, else
/// the raw size: never lower than [`whole_cost`].
fn upper_cost(c: &Content, layer: LayerCompression<'_>) -> u64 {
    match StoredFile::of(c) {
        Some(s) if s.same_settings(layer.compressor, layer.block_size) => {
            lower_cost(c, layer) + c.size % layer.block_size as u64
        }
        _ => c.size,
    }
}

/// Every regular file of `tree` with its inode, in walk order (hard links: every name).
fn old_regular_files(tree: &Tree) -> Vec<(String, InodeId)> {
    tree.walk()
        .into_iter()
        .filter_map(|id| {
            let n = tree.node(id);
            matches!(tree.inode(n.inode).kind, InodeKind::File(_)).then(|| {
                (
                    String::from_utf8_lossy(&tree.path(id)).into_owned(),
                    n.inode,
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{content_hashes, Inode, Metadata};

    fn meta() -> Metadata {
        Metadata {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: Vec::new(),
        }
    }

    fn tree(files: &[(&str, Vec<u8>)]) -> Tree {
        let mut t = Tree::new(Metadata {
            perm: 0o755,
            ..meta()
        });
        for (path, bytes) in files {
            let mut parent = t.root();
            let parts: Vec<&str> = path.split('/').collect();
            for d in &parts[..parts.len() - 1] {
                parent = match t.child(parent, d.as_bytes()) {
                    Some(c) => c,
                    None => t
                        .add(
                            parent,
                            d.as_bytes(),
                            Inode {
                                meta: Metadata {
                                    perm: 0o755,
                                    ..meta()
                                },
                                kind: InodeKind::Dir,
                            },
                        )
                        .unwrap(),
                };
            }
            t.add(
                parent,
                parts[parts.len() - 1].as_bytes(),
                Inode {
                    meta: meta(),
                    kind: InodeKind::File(Content::from_bytes(bytes.clone())),
                },
            )
            .unwrap();
        }
        t
    }

    /// Pseudo-random bytes that xz cannot shrink much (a patch must beat them).
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Each kind is chosen where it belongs, and the choice does not depend on the thread count.
    #[test]
    fn each_source_kind_is_chosen() {
        let lib_old = noise(200_000, 1);
        let mut lib_new = lib_old.clone();
        lib_new[1000..1010].copy_from_slice(b"0123456789");
        let moved = noise(5000, 2);
        let mut gz = b"\x1f\x8b".to_vec();
        gz.extend(noise(3000, 3));
        let mut gz_new = gz.clone();
        gz_new[100] ^= 1;
        let old = tree(&[
            ("usr/lib/libfoo.so.1.2.3", lib_old.clone()),
            ("usr/share/a", moved.clone()),
            ("usr/share/z.gz", gz.clone()),
        ]);
        let new = tree(&[
            ("usr/lib/libfoo.so.1.2.4", lib_new.clone()),
            ("usr/share/b", moved.clone()),
            ("usr/share/fresh", noise(4000, 4)),
            ("usr/share/empty", Vec::new()),
            ("usr/share/z.gz", gz_new),
        ]);
        let xz = Compressor::Xz {
            level: 6,
            dict_size: 1 << 20,
            bcj_x86: false,
        };
        let lc = LayerCompression {
            compressor: &xz,
            block_size: 1 << 20,
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let oh = content_hashes(&old, &|_| {}).unwrap();
                let nh = content_hashes(&new, &|_| {}).unwrap();
                let (c, _) = choose(
                    Hashed {
                        tree: &new,
                        hashes: &nh,
                    },
                    Hashed {
                        tree: &old,
                        hashes: &oh,
                    },
                    lc,
                    &|_| {},
                )
                .unwrap();
                c.iter()
                    .map(|c| (c.record.clone(), c.payload.read_all().unwrap()))
                    .collect::<Vec<_>>()
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        let kinds: Vec<(&str, SourceKind, Option<&str>)> = one
            .iter()
            .map(|(r, _)| (r.path.as_str(), r.source, r.base.as_deref()))
            .collect();
        assert!(
            kinds.contains(&(
                "usr/lib/libfoo.so.1.2.4",
                SourceKind::Bsdiff,
                Some("usr/lib/libfoo.so.1.2.3")
            )) || kinds.contains(&(
                "usr/lib/libfoo.so.1.2.4",
                SourceKind::Zstd,
                Some("usr/lib/libfoo.so.1.2.3")
            )),
            "{kinds:?}"
        );
        assert!(kinds.contains(&("usr/share/b", SourceKind::Copy, Some("usr/share/a"))));
        assert!(kinds.contains(&("usr/share/fresh", SourceKind::Whole, None)));
        assert!(kinds.contains(&("usr/share/empty", SourceKind::Whole, None)));
        assert!(kinds.contains(&("usr/share/z.gz", SourceKind::Whole, None)));
        let (_, patch) = &one[0];
        assert!(patch.len() < 2000, "patch of {} bytes", patch.len());
    }
}
