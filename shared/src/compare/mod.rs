//! Explaining why two kits, or two SquashFS images, differ (`iuk-build compare`, and `rebuild`
//! when the rebuilt kit is not identical): DESIGN.md, "Rebuilders".
//!
//! The report goes from the top down, so that a mismatch is actionable without diffoscope:
//! - for two kits: the `FORMAT` files, the control.yml keys that differ (nested keys named by
//!   path, list items by their `path` when they have one: `layer-params.compression`,
//!   `overlay[live/vmlinuz].sha256`), the files under `overlay/` (added, missing, different size
//!   or sha256, or not matching the kit's own manifest), then the diff layers inside them, then
//!   the kit images themselves;
//! - for each pair of differing SquashFS images: whether each fails the metadata check
//!   ([`crate::squashfs::check::check`]: every table and inode), the superblock fields and
//!   compressor settings,
//!   the entries (path and which metadata field, or the content), and the bytes: which region
//!   (superblock, data, inode table, …) differs, from which byte offset, and — inside the data
//!   region — which file's block it belongs to.
//!
//! Every section is bounded ([`SECTION_LIMIT`] differences, then a count of the rest). Only an
//! input that is not a SquashFS image at all is an error; anything unreadable deeper down (a
//! corrupt table, a block that does not decompress) is reported as a difference.

//!
//! The comparison is split by what it looks at: [`report`] (the report's types), [`kit`] (the
//! kit sections), [`image`] (an image's superblock and bytes) and [`tree`] (its entries).

mod image;
mod kit;
pub mod report;
mod tree;

use std::path::Path;

use crate::squashfs::SqfsError;
use crate::tree::{hex, InodeKind, Tree};

use image::{image_sections, Side};
use kit::kit_sections;
pub use report::{CompareError, Comparison, Difference, Input, Kind, Section, SECTION_LIMIT};

fn is_kit(tree: &Tree) -> bool {
    let file = |name: &[u8]| {
        tree.lookup(name)
            .is_some_and(|n| matches!(tree.node_inode(n).kind, InodeKind::File(_)))
    };
    file(b"FORMAT") && file(b"control.yml")
}

/// Compares two files, each a kit or a plain SquashFS image. Fails only when an input cannot
/// be read or is not a SquashFS image at all.
pub fn compare_files(a: &Path, b: &Path) -> Result<Comparison, CompareError> {
    let sa = Side::open(a)?;
    let sb = Side::open(b)?;
    let ta = sa.archive.read_tree();
    let tb = sb.archive.read_tree();
    let kind = |t: &Result<Tree, SqfsError>| match t {
        Ok(t) if is_kit(t) => Kind::Kit,
        _ => Kind::Squashfs,
    };
    let (ka, kb) = (kind(&ta), kind(&tb));
    let input = |p: &Path, s: &Side, k: Kind| Input {
        path: p.display().to_string(),
        kind: k,
        size: s.size,
        sha256: hex(&s.sha256),
    };
    let mut c = Comparison {
        a: input(a, &sa, ka),
        b: input(b, &sb, kb),
        identical: sa.sha256 == sb.sha256 && sa.size == sb.size,
        sections: Vec::new(),
    };
    if c.identical {
        return Ok(c);
    }
    let out = &mut c.sections;
    if ka != kb {
        let mut s = Section::new("kind");
        s.push(Difference::both("kind", ka.to_string(), kb.to_string()));
        out.push(s);
    }
    if let (Kind::Kit, Kind::Kit, Ok(ta), Ok(tb)) = (ka, kb, &ta, &tb) {
        kit_sections(&sa, ta, &sb, tb, out);
        image_sections("kit image", &sa, &Ok(ta), &sb, &Ok(tb), false, out);
    } else {
        image_sections("image", &sa, &ta.as_ref(), &sb, &tb.as_ref(), true, out);
    }
    if c.sections.is_empty() {
        // Same sha256 is the only "identical"; say so rather than print nothing.
        let mut s = Section::new("bytes");
        s.push(Difference::note(
            "the files differ but no difference could be located",
        ));
        c.sections.push(s);
    }
    Ok(c)
}
