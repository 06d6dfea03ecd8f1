//! Reading the medium's stack of SquashFS layers in userspace (DESIGN.md, "The medium"): the
//! tree of one image, the adapters around [`HashedTree`] that turn its errors into refusals, and
//! [`verify_trees`], which checks the base's and the stacked tree digests against the state
//! (`verify --deep`). `adopt`, `plan` and `verify` read layers through this module.

use std::path::Path;
use std::sync::Arc;

use super::state::State;
use super::{refuse, Medium, MediumError, BASE};
use crate::diff::HashedTree;
use crate::io::FileImage;
use crate::progress::Progress;
use crate::squashfs::archive::Archive;
use crate::tree::{hex, Tree};

/// The refusal of an image the reader cannot read (`e` names the image).
fn damaged(e: impl std::fmt::Display) -> MediumError {
    refuse(format!(
        "{e}; an image on the medium is unreadable (damaged medium?): reinstall the medium"
    ))
}

/// The tree of the SquashFS image at `path` on the medium (the reader's errors name the image;
/// the refusal says the medium is damaged). The image is opened without following links.
pub fn read_image_tree(medium: &Medium, path: &Path) -> Result<Tree, MediumError> {
    open_image(medium, path)?.read_tree().map_err(damaged)
}

/// Opens the image at `path` on the medium (never through a link) with the reader's checks.
pub fn open_image(medium: &Medium, path: &Path) -> Result<Arc<Archive>, MediumError> {
    open_image_or(medium, path, damaged)
}

/// [`open_image`], the reader's errors (which name the image) turned into `bad`'s refusal.
fn open_image_or(
    medium: &Medium,
    path: &Path,
    bad: impl Fn(String) -> MediumError,
) -> Result<Arc<Archive>, MediumError> {
    let file = medium.open(path)?;
    let image = FileImage::new(file).map_err(|e| super::io_err(path, e))?;
    Archive::from_image(Arc::new(image), path.display().to_string()).map_err(|e| bad(e.to_string()))
}

/// The base and every layer the state lists, bottom first, relative to the medium root.
fn stack_rels(state: &State) -> impl Iterator<Item = String> + '_ {
    std::iter::once(BASE.to_string()).chain(
        state
            .layers
            .iter()
            .map(|l| format!("live/{}.squashfs", l.name)),
    )
}

/// Opens the base and every layer the state lists with the reader's checks (superblock and
/// tables), so that a stack whose images are visibly damaged is refused (`verify`, `apply`).
/// Data blocks are not decoded: [`verify_trees`] does that.
pub fn check_images(medium: &Medium, state: &State) -> Result<(), MediumError> {
    for rel in stack_rels(state) {
        let p = medium
            .find(&rel)?
            .ok_or_else(|| medium.changed(format!("{rel} is missing")))?;
        open_image(medium, &p)?;
    }
    Ok(())
}

/// Checks the trees the medium's layers stack to against the state, in userspace: the base's
/// tree digest and that of the whole stack (`verify --deep`).
pub fn verify_trees(
    medium: &Medium,
    state: &State,
    progress: &dyn Progress,
) -> Result<(), MediumError> {
    let changed = |what: String| medium.changed(what);
    let open = |rel: &str| -> Result<HashedTree, MediumError> {
        let p = medium
            .find(rel)?
            .ok_or_else(|| changed(format!("{rel} is missing")))?;
        let tree = open_image_or(medium, &p, changed)?
            .read_tree()
            .map_err(|e| changed(e.to_string()))?;
        hash_tree(tree, &format!("hashing {rel}"), progress).map_err(|e| changed(e.to_string()))
    };
    let mut stack = open(BASE)?;
    if hex(&stack.digest()) != state.base_tree_digest {
        return Err(changed(format!(
            "{BASE} does not hold the tree of {} the state records",
            state.base_version
        )));
    }
    for rel in stack_rels(state).skip(1) {
        stack = stack_layer(&stack, &open(&rel)?, &rel)?;
    }
    if hex(&stack.digest()) != state.current_tree_digest {
        return Err(changed(format!(
            "the layers do not stack to the tree of {} the state records",
            state.current_version
        )));
    }
    Ok(())
}

/// Hashes every file of `tree` as the progress phase `phase` (errors name the file).
pub fn hash_tree(
    tree: Tree,
    phase: &str,
    progress: &dyn Progress,
) -> Result<HashedTree, MediumError> {
    HashedTree::with_progress(tree, phase, progress).map_err(|e| refuse(e.to_string()))
}

/// `upper` stacked on `lower` as overlayfs would; errors name `what` (the upper layer).
pub fn stack_layer(
    lower: &HashedTree,
    upper: &HashedTree,
    what: &str,
) -> Result<HashedTree, MediumError> {
    lower
        .stack(upper)
        .map_err(|e| refuse(format!("{what}: {e}")))
}
