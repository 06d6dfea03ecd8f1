//! FORMAT 3 on the device (DESIGN.md, "Binary deltas (FORMAT 3)"): the diff layer is rebuilt
//! from the kit's recipe instead of copied from the kit.
//!
//! Before any write ([`prepare`]): the stack the kit applies to (stacking: the base and every
//! layer; cumulative: the base alone) is read with our own reader, every base file the recipe
//! names is hashed and compared with control.yml, the recipe image's tree is turned into the
//! layer's tree ([`crate::delta::recipe::layer_tree`]) and every patched file is re-created
//! once and its sha256 checked, so a damaged patch is refused by `check` and before `apply`
//! writes anything. In step 2 ([`write_layer`]) the layer is
//! written at its final name through the medium's one mutating interface with the layer's
//! parameters (blocks copied from the kit's recipe image and from the stack's own images where
//! block sources allow; every patched file re-created and sha256-checked as it is read); then
//! ([`check_written`]) it is read back from the device and its tree digest must equal the
//! recipe's before anything is committed. The state records the device's own layer size and
//! sha256.
//!
//! Memory: the writer's bounded pipeline plus one re-created file at a time (at most
//! [`crate::delta::recipe::MAX_PATCH_INPUT`] of patch, base and output together) and the trees'
//! metadata.

use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use super::fsops::{Handle, MediumFs};
use super::stack::{open_image, read_image_tree};
use super::state::State;
use super::{io_err, refuse, Medium, MediumError, BASE};
use crate::delta::recipe::{layer_tree, Recipe};
use crate::diff::{merge, HashedTree};
use crate::kit::LayerParams;
use crate::progress::Progress;
use crate::squashfs::archive::Archive;
use crate::squashfs::compress::BcjTrial;
use crate::squashfs::write::{write_image_hashed, DataOrder, WriterParams};
use crate::tree::{hex, Content, InodeKind, Tree};

/// A FORMAT 3 kit's layer as the kit carries it: its recipe, checked against control.yml.
pub struct RecipeKit {
    /// control.yml's recipe (validated).
    pub recipe: Recipe,
    /// The recipe image inside the kit (size and sha256 checked).
    pub image: Content,
    /// The layer's writer parameters.
    pub params: LayerParams,
}

/// The layer a FORMAT 3 apply writes: its tree, how to write it, and what it must give.
pub struct Rebuild {
    /// The layer's tree, contents from the kit and the stack.
    pub tree: Tree,
    /// Each regular file's recorded sha256, by inode of `tree`: the writer checks every file
    /// against it as it reads it.
    pub hashes: Vec<Option<[u8; 32]>>,
    /// The layer's writer parameters (no export table, as the builder's layer).
    pub params: WriterParams,
    /// The tree digest the written layer must have.
    pub digest: [u8; 32],
    /// Size of the builder's layer (the free-space estimate).
    pub size: u64,
}

/// The layer a kit carries.
pub enum KitLayer {
    /// FORMAT 2 (and kits of Tails' tooling): the layer image in the kit, with its sha256.
    Image(Content, [u8; 32]),
    /// FORMAT 3: the recipe.
    Recipe(Box<RecipeKit>),
}

/// The layer an apply writes.
pub enum LayerWrite {
    /// FORMAT 2 (and kits of Tails' tooling): the kit's layer image with its sha256, copied.
    Copy(Content, [u8; 32]),
    /// FORMAT 3: written from the recipe.
    Rebuild(Box<Rebuild>),
}

impl LayerWrite {
    /// The bytes the layer takes on the medium (for a rebuild: the builder's layer's size).
    pub fn size(&self) -> u64 {
        match self {
            LayerWrite::Copy(c, _) => c.size,
            LayerWrite::Rebuild(r) => r.size,
        }
    }

    /// The bytes counted against the medium's free space: for a rebuild, the builder's layer
    /// size plus [`REBUILD_ALLOWANCE`] of it, since the device's layer makes its own BCJ choices
    /// and block copies (measured 8 KiB, 0.01 %, over an 81 MB layer).
    pub fn space(&self) -> u64 {
        match self {
            LayerWrite::Copy(c, _) => c.size,
            LayerWrite::Rebuild(r) => r.size.saturating_add(r.size / REBUILD_ALLOWANCE),
        }
    }
}

/// A rebuilt layer is counted as 1/64 (1.6 %) larger than the builder's for free space.
pub const REBUILD_ALLOWANCE: u64 = 64;

/// The merged tree of the images the kit applies to: the base, and with `stacking` every layer
/// above it (see the module doc).
fn applied_to(medium: &Medium, state: &State, stacking: bool) -> Result<Tree, MediumError> {
    let base = medium
        .find(BASE)?
        .ok_or_else(|| refuse(format!("{}: no {BASE}", medium.root.display())))?;
    let mut tree = read_image_tree(medium, &base)?;
    if stacking {
        for l in &state.layers {
            let rel = format!("live/{}.squashfs", l.name);
            let p = medium
                .find(&rel)?
                .ok_or_else(|| refuse(format!("{}: no {rel}", medium.root.display())))?;
            let upper = read_image_tree(medium, &p)?;
            tree = merge(&tree, &upper).map_err(|e| refuse(format!("{rel}: {e}")))?;
        }
    }
    Ok(tree)
}

/// Step 1 for a FORMAT 3 kit: reads the stack the kit applies to (`stacking`: the base and every
/// layer; otherwise, a cumulative kit: the base alone), checks every base file of the recipe,
/// and makes the layer's tree. `bad_kit` words refusals about the kit.
pub fn prepare(
    medium: &Medium,
    state: &State,
    stacking: bool,
    kit: &RecipeKit,
    bad_kit: &dyn Fn(String) -> MediumError,
    progress: &dyn Progress,
) -> Result<Rebuild, MediumError> {
    let stack = applied_to(medium, state, stacking)?;
    let base = |path: &str| -> Option<Content> {
        let n = stack.lookup(path.as_bytes())?;
        match &stack.node_inode(n).kind {
            InodeKind::File(c) => Some(c.clone()),
            _ => None,
        }
    };
    let bases = kit.recipe.bases().map_err(|e| bad_kit(e.to_string()))?;
    let total: u64 = bases.keys().filter_map(|p| base(p)).map(|c| c.size).sum();
    progress.phase("checking base files", total);
    let done = std::sync::atomic::AtomicU64::new(0);
    kit.recipe
        .check_bases(&base, &|n| {
            progress.position(done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n)
        })
        .map_err(|e| {
            refuse(format!(
                "{}: {e}; the kit was not built against this medium's files (damaged medium?): \
                 nothing was written",
                medium.root.display()
            ))
        })?;
    let image = kit
        .image
        .source
        .random_access()
        .ok_or_else(|| bad_kit(format!("{} cannot be opened in place", kit_image_name())))?;
    let archive =
        Archive::from_image(image, kit_image_name()).map_err(|e| bad_kit(e.to_string()))?;
    let recipe_tree = archive.read_tree().map_err(|e| bad_kit(e.to_string()))?;
    let layer = layer_tree(&recipe_tree, &kit.recipe, &base).map_err(|e| bad_kit(e.to_string()))?;
    // Every patch is applied once before anything is written: a damaged patch is refused by
    // `check` too, and an apply never starts a layer it cannot finish.
    let total: u64 = layer.patched.iter().map(|p| p.size).sum();
    progress.phase("checking patches", total);
    let made = std::sync::atomic::AtomicU64::new(0);
    layer
        .check_patches(&|n| {
            progress.position(made.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n)
        })
        .map_err(|e| bad_kit(format!("{}: {e}", kit_image_name())))?;
    // The rebuild's compressors and re-created files start from a heap with that handed back.
    crate::memory::release_free_heap();
    let (tree, hashes) = (layer.tree, layer.hashes);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut params = kit
        .params
        .to_writer(jobs)
        .map_err(|e| bad_kit(e.to_string()))?;
    params.exportable = false;
    params.order = DataOrder::NewestFirst;
    // The device's layer is checked by its tree digest, not its bytes: the BCJ filter is chosen
    // by a fast trial (a third less CPU on the device's long step, 0.02 % larger measured).
    params.bcj_trial = BcjTrial::Fast;
    let digest = kit
        .recipe
        .layer_digest()
        .map_err(|e| bad_kit(format!("control.yml: {e}")))?;
    Ok(Rebuild {
        tree,
        hashes,
        params,
        digest,
        size: kit.recipe.layer_size,
    })
}

/// The recipe image's name in messages.
fn kit_image_name() -> String {
    crate::delta::recipe::RECIPE_IMAGE.to_string()
}

/// A file being written through [`MediumFs`], seen as `Write + Seek` (the writer goes back to
/// the superblock at the end).
struct FsWriter<'a> {
    fs: &'a mut dyn MediumFs,
    handle: Handle,
    pos: u64,
    len: u64,
}

impl Write for FsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fs.write_at(self.handle, self.pos, buf)?;
        self.pos += buf.len() as u64;
        self.len = self.len.max(self.pos);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for FsWriter<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the file's start")
        })?;
        Ok(self.pos)
    }
}

/// Step 2 for a FORMAT 3 kit: writes the layer at `path` (created; no module file lists it yet)
/// and makes its data durable. A re-created file that does not have its recorded sha256 stops
/// the write with an error naming it (nothing is committed; `recover` removes the layer).
pub fn write_layer(
    fs: &mut dyn MediumFs,
    path: &Path,
    rebuild: &Rebuild,
    progress: &dyn Progress,
) -> Result<(), MediumError> {
    let handle = fs.create(path).map_err(|e| io_err(path, e))?;
    let mut w = io::BufWriter::with_capacity(
        1 << 20,
        FsWriter {
            fs: &mut *fs,
            handle,
            pos: 0,
            len: 0,
        },
    );
    progress.phase("rebuilding layer", rebuild.tree.content_bytes());
    write_image_hashed(
        &rebuild.tree,
        Some(&rebuild.hashes),
        &rebuild.params,
        &mut w,
        &|n| progress.position(n),
    )
    .map_err(|e| {
        refuse(format!(
            "{}: rebuilding the layer: {e}; nothing was committed",
            path.display()
        ))
    })?;
    w.flush().map_err(|e| io_err(path, e))?;
    drop(w);
    fs.fsync(handle).map_err(|e| io_err(path, e))?;
    fs.close(handle).map_err(|e| io_err(path, e))?;
    Ok(())
}

/// After [`write_layer`] and the directory's fsync: reads the layer back from the device (page
/// cache dropped), requires its tree digest to equal the recipe's, and returns its size and
/// sha256 (what the state records).
pub fn check_written(
    medium: &Medium,
    path: &Path,
    rebuild: &Rebuild,
    progress: &dyn Progress,
) -> Result<(u64, [u8; 32]), MediumError> {
    medium.drop_cache(path);
    let size = medium.file_len(path)?;
    let sha = medium.sha_of(path)?;
    let archive = open_image(medium, path)?;
    let tree = archive.read_tree().map_err(|e| refuse(e.to_string()))?;
    progress.phase("verifying layer", tree.content_bytes());
    let hashed = HashedTree::new(tree, &|n| progress.position(n)).map_err(|e| {
        refuse(format!(
            "{}: reading the rebuilt layer back: {e}",
            path.display()
        ))
    })?;
    let got = hashed.digest();
    if got != rebuild.digest {
        return Err(refuse(format!(
            "{}: the rebuilt layer has tree digest {}, the kit records {}; nothing was \
             committed (`iuk-apply recover` removes it); please report this",
            path.display(),
            hex(&got),
            hex(&rebuild.digest)
        )));
    }
    Ok((size, sha))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squashfs::compress::Compressor;
    use crate::tree::Metadata;

    #[test]
    fn a_rebuilt_layer_is_counted_with_its_allowance() {
        let c = Compressor::Xz {
            level: 6,
            dict_size: 1 << 20,
            bcj_x86: true,
        };
        let rebuild = LayerWrite::Rebuild(Box::new(Rebuild {
            tree: Tree::new(Metadata::default()),
            hashes: Vec::new(),
            params: WriterParams::new(c, 1 << 20, 0),
            digest: [0; 32],
            size: 81_346_560,
        }));
        assert_eq!(rebuild.size(), 81_346_560);
        assert_eq!(rebuild.space(), 81_346_560 + 1_271_040);
        // The device's own layer on the bench pair (81,354,752 B) fits the count.
        assert!(rebuild.space() >= 81_354_752);
        let copy = LayerWrite::Copy(Content::from_bytes(vec![1; 10]), [0; 32]);
        assert_eq!((copy.size(), copy.space()), (10, 10));
    }
}
