//! Hashing a tree without decoding the files another hashed tree already knows: a file whose
//! stored form in its SquashFS image equals a known file's has that file's content (see
//! [`super::HashedTree::new_reusing`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::HashedTree;
use crate::squashfs::data::{StoredFile, TailKey};
use crate::tree::{Content, InodeId, InodeKind, Tree, TreeError};

/// How two files are compared stored. Files with equal keys and equal digests of one form have
/// equal content; a file is looked up by [`Form::Located`] first, then by [`Form::Stored`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Form {
    /// Every entry of the block list stored, the fragment tail named by its fragment block's
    /// stored digest ([`StoredFile::located_digest`]): nothing is decoded. Files with a whole
    /// block or a fragment tail (a file held by one short block is cheaper to decode than to
    /// compare).
    Located,
    /// The whole blocks stored, the tail decoded ([`StoredFile::stored_digest`]): finds a large
    /// file whose tail moved to another fragment block. Files with a whole block.
    Stored,
}

const FORMS: [Form; 2] = [Form::Located, Form::Stored];

/// What two files with the same stored form share before their blocks' stored bytes are read:
/// the form, compressor id, block size, size, the stored sizes of the block list's entries (of
/// its whole blocks for [`Form::Stored`]) and, for [`Form::Located`], the fragment tail's
/// [`TailKey`].
type LayoutKey = (Form, u16, u32, u64, Vec<u32>, Option<TailKey>);

/// The layout key of a file in `form`, None when the form does not compare it; also None when
/// its fragment block cannot be read (it is then decoded, and the error reported there).
fn layout_key(c: &Content, form: Form) -> Option<LayoutKey> {
    let s = StoredFile::of(c)?;
    let full = s.full_blocks()?;
    let (blocks, tail) = match form {
        Form::Located => {
            let tail = s.tail_key().ok()?;
            if full.is_empty() && tail.is_none() {
                return None;
            }
            (s.block_sizes().to_vec(), tail)
        }
        Form::Stored if full.is_empty() => return None,
        Form::Stored => (full.to_vec(), None),
    };
    let (id, bs) = (s.compressor().id(), s.block_size());
    Some((form, id, bs, s.size(), blocks, tail))
}

/// The digest of `c`'s stored form `form`, None when it cannot be read.
fn form_digest(c: &Content, form: Form) -> Option<[u8; 32]> {
    let s = StoredFile::of(c)?;
    let d = match form {
        Form::Located => s.located_digest(),
        Form::Stored => s.stored_digest(),
    };
    d.ok().flatten()
}

/// Digests of known files computed so far, by (form, tree index, inode).
type Digests = HashMap<(Form, usize, InodeId), Option<[u8; 32]>>;

/// The known files by layout key (tree index and inode), and their digests once computed.
struct Known<'a> {
    trees: &'a [&'a HashedTree],
    by_layout: HashMap<LayoutKey, Vec<(usize, InodeId)>>,
    digests: Mutex<Digests>,
}

impl<'a> Known<'a> {
    fn new(trees: &'a [&'a HashedTree]) -> Known<'a> {
        let mut by_layout: HashMap<LayoutKey, Vec<(usize, InodeId)>> = HashMap::new();
        for (t, tree) in trees.iter().enumerate() {
            // Keys in parallel (a tail's key reads its fragment block once), kept in inode order.
            let keys: Vec<(LayoutKey, InodeId)> = (0..tree.tree.inode_count())
                .into_par_iter()
                .flat_map_iter(|i| {
                    let id = InodeId(i as u32);
                    let c = match &tree.tree.inode(id).kind {
                        InodeKind::File(c) => Some(c),
                        _ => None,
                    };
                    FORMS
                        .iter()
                        .filter_map(move |f| layout_key(c?, *f).map(|k| (k, id)))
                })
                .collect();
            for (k, id) in keys {
                by_layout.entry(k).or_default().push((t, id));
            }
        }
        Known {
            trees,
            by_layout,
            digests: Mutex::new(HashMap::new()),
        }
    }

    /// The digest in `form` of known file `id` of tree `t` (None when it cannot be read: then
    /// it is never reused).
    fn digest(&self, form: Form, (t, id): (usize, InodeId)) -> Option<[u8; 32]> {
        if let Some(d) = self.lock().get(&(form, t, id)) {
            return *d;
        }
        let d = match &self.trees[t].tree.inode(id).kind {
            InodeKind::File(c) => form_digest(c, form),
            _ => None,
        };
        self.lock().insert((form, t, id), d);
        d
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Digests> {
        self.digests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sha256 of `c` when a known file has the same stored form (the first such file, in
    /// the order of the trees: the result is the same whichever it is).
    fn reuse(&self, c: &Content) -> Option<[u8; 32]> {
        FORMS.iter().find_map(|&form| {
            let candidates = self.by_layout.get(&layout_key(c, form)?)?;
            let mine = form_digest(c, form)?;
            candidates
                .iter()
                .find(|k| self.digest(form, **k) == Some(mine))
                .and_then(|(t, id)| self.trees[*t].hashes.get(id.0 as usize).copied().flatten())
        })
    }
}

/// [`crate::tree::content_hashes`], taking the hash of every file whose stored form equals a
/// file of one of the `known` trees from it; the files are handled in parallel on the current
/// rayon pool.
pub(super) fn content_hashes_reusing(
    tree: &Tree,
    known: &[&HashedTree],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Option<[u8; 32]>>, TreeError> {
    let known = Known::new(known);
    let done = AtomicU64::new(0);
    (0..tree.inode_count())
        .into_par_iter()
        .map(|i| {
            let InodeKind::File(c) = &tree.inode(InodeId(i as u32)).kind else {
                return Ok(None);
            };
            if let Some(h) = known.reuse(c) {
                progress(done.fetch_add(c.size, Ordering::Relaxed) + c.size);
                return Ok(Some(h));
            }
            let h = c
                .sha256_with(|n| progress(done.fetch_add(n, Ordering::Relaxed) + n))
                .map_err(|e| TreeError::Read {
                    what: c.source.describe(),
                    source: e,
                })?;
            Ok(Some(h))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::archive::Archive;
    use crate::squashfs::compress::Compressor;
    use crate::squashfs::write::{write_image, WriterParams};
    use crate::tree::{Inode, Metadata};
    use std::io::Cursor;
    use std::sync::Arc;

    fn text(len: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("{seed}:{i}\n").as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    /// The tree of an image of `files`, read back from the image.
    fn image_tree(files: &[(&str, Vec<u8>)], fragments: bool) -> Tree {
        let mut t = Tree::new(Metadata {
            perm: 0o755,
            ..Default::default()
        });
        let root = t.root();
        for (name, data) in files {
            let inode = Inode {
                meta: Metadata {
                    perm: 0o644,
                    ..Default::default()
                },
                kind: InodeKind::File(Content::from_bytes(data.clone())),
            };
            t.add(root, name.as_bytes(), inode).unwrap();
        }
        let mut out = Cursor::new(Vec::new());
        let c = Compressor::Zstd { level: 3 };
        let mut p = WriterParams::new(c, 4096, 0);
        p.fragments = fragments;
        write_image(&t, &p, &mut out, &|_| {}).unwrap();
        let a = Archive::from_image(Arc::new(out.into_inner()), "img".into()).unwrap();
        a.read_tree().unwrap()
    }

    fn hash_of(h: &HashedTree, name: &str) -> [u8; 32] {
        let node = h.tree.node(h.tree.root()).children.iter().copied();
        let n = node
            .into_iter()
            .find(|n| h.tree.node(*n).name == name.as_bytes())
            .unwrap();
        h.hashes[h.tree.node(n).inode.0 as usize].unwrap()
    }

    #[test]
    fn identical_stored_files_are_not_decoded() {
        let same = text(3 * 4096 + 10, 1);
        let tail_only = text(100, 2);
        let old = image_tree(
            &[
                ("same", same.clone()),
                ("changed", text(2 * 4096, 3)),
                ("small", tail_only.clone()),
            ],
            true,
        );
        let new = image_tree(
            &[
                ("changed", text(2 * 4096, 4)),
                ("same", same.clone()),
                ("small", tail_only),
            ],
            true,
        );
        let mut known = HashedTree::new(new, &|_| {}).unwrap();
        let truth = HashedTree::new(old.clone(), &|_| {}).unwrap();
        // Known hashes replaced by markers: a reused hash shows its marker, a decoded one not.
        for (i, h) in known.hashes.iter_mut().enumerate() {
            if h.is_some() {
                *h = Some([i as u8; 32]);
            }
        }
        let got = HashedTree::new_reusing(old, &known, &|_| {}).unwrap();
        assert_eq!(hash_of(&got, "same"), hash_of(&known, "same"));
        assert_ne!(hash_of(&got, "same"), hash_of(&truth, "same"));
        // A tail-only file in a fragment block stored alike in both images: nothing decoded.
        assert_eq!(hash_of(&got, "small"), hash_of(&known, "small"));
        // Different stored bytes: decoded and hashed.
        assert_eq!(hash_of(&got, "changed"), hash_of(&truth, "changed"));
        // With true known hashes, the result equals a full hash of the tree.
        let known = HashedTree::new(known.tree, &|_| {}).unwrap();
        let got = HashedTree::new_reusing(truth.tree.clone(), &known, &|_| {}).unwrap();
        assert_eq!(got.hashes, truth.hashes);
    }

    /// A tail kept as a short last block in one image and in a fragment in the other: the
    /// whole blocks are compared stored, the tails decoded.
    #[test]
    fn a_tail_block_and_a_fragment_tail_compare_by_content() {
        let data = text(2 * 4096 + 77, 5);
        let other = {
            let mut d = data.clone();
            let n = d.len();
            d[n - 1] ^= 1;
            d
        };
        let old = image_tree(&[("f", data.clone()), ("g", other)], false);
        let new = image_tree(&[("f", data.clone()), ("g", data)], true);
        let mut known = HashedTree::new(new, &|_| {}).unwrap();
        let truth = HashedTree::new(old.clone(), &|_| {}).unwrap();
        for (i, h) in known.hashes.iter_mut().enumerate() {
            if h.is_some() {
                *h = Some([i as u8; 32]);
            }
        }
        let got = HashedTree::new_reusing(old, &known, &|_| {}).unwrap();
        assert_eq!(hash_of(&got, "f"), hash_of(&known, "f"));
        assert_eq!(hash_of(&got, "g"), hash_of(&truth, "g"));
    }

    /// Tails are named by their fragment block's stored bytes: an unchanged tail whose block
    /// also holds a changed tail is decoded, not taken from the other image.
    #[test]
    fn a_tail_in_a_changed_fragment_block_is_decoded() {
        let small = text(100, 10);
        let old = image_tree(&[("small", small.clone()), ("tiny", text(50, 11))], true);
        let new = image_tree(&[("small", small), ("tiny", text(50, 12))], true);
        let mut known = HashedTree::new(new, &|_| {}).unwrap();
        let truth = HashedTree::new(old.clone(), &|_| {}).unwrap();
        for (i, h) in known.hashes.iter_mut().enumerate() {
            if h.is_some() {
                *h = Some([i as u8; 32]);
            }
        }
        let got = HashedTree::new_reusing(old, &known, &|_| {}).unwrap();
        assert_eq!(got.hashes, truth.hashes);
    }

    /// With several known trees (a batch: the new root, then earlier old roots), a file stored
    /// as in any of them takes that tree's hash.
    #[test]
    fn any_known_tree_lends_its_hash() {
        let a = text(2 * 4096 + 3, 7);
        let b = text(3 * 4096 + 9, 8);
        let tree = image_tree(&[("a", a.clone()), ("b", b.clone())], true);
        let first = image_tree(&[("a", a), ("x", text(4096, 9))], true);
        let second = image_tree(&[("b", b)], true);
        let marked = |t: Tree, m: u8| {
            let mut h = HashedTree::new(t, &|_| {}).unwrap();
            for x in h.hashes.iter_mut().flatten() {
                *x = [m; 32];
            }
            h
        };
        let (first, second) = (marked(first, 1), marked(second, 2));
        let got = HashedTree::new_reusing_any(tree, &[&first, &second], &|_| {}).unwrap();
        assert_eq!(hash_of(&got, "a"), [1; 32]);
        assert_eq!(hash_of(&got, "b"), [2; 32]);
    }
}
