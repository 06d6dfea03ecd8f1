//! Binary deltas for FORMAT 3 kits (DESIGN.md, "Binary deltas (FORMAT 3)"): which old file a new
//! file is patched against ([`matching`]), and the per-file choice of content source — `copy`,
//! `zstd` patch-from, a bsdiff-style patch, a `repack` patch between the plain contents of
//! files that hold compressed streams ([`repack`], [`unpack`]), or the whole file — with the
//! reconstruction that the device runs ([`source`]). Everything here is a pure function of the
//! bytes and the documented caps, so a kit stays reproducible.

pub mod boot;
pub mod choose;
pub mod matching;
pub mod plain;
pub mod puff;
pub mod recipe;
pub mod repack;
pub mod source;
#[cfg(test)]
mod testtools;
pub mod unpack;

/// Errors of delta making and reconstruction.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// A patch could not be made (an encoder failure).
    #[error("making a {kind} patch: {msg}")]
    Encode {
        /// `zstd` or `bsdiff`.
        kind: &'static str,
        /// The encoder's message.
        msg: String,
    },
    /// A patch does not apply or does not re-create the recorded file.
    #[error("{kind} patch: {msg}")]
    Decode {
        /// `zstd` or `bsdiff`.
        kind: &'static str,
        /// What went wrong.
        msg: String,
    },
    /// A recipe that this iuk cannot use (malformed, another version, inconsistent with its
    /// image).
    #[error("recipe: {0}")]
    Recipe(String),
    /// A base file of the recipe is missing from the medium's stack or differs from the recipe.
    #[error("{0}")]
    Base(String),
    /// A patched file could not be re-created as recorded.
    #[error("{0}")]
    Patch(String),
    /// Reading a file the recipe needs failed.
    #[error("{0}")]
    Read(String),
    /// The re-created content does not have the recorded sha256 (or size).
    #[error("re-created content differs from the recorded sha256 ({size} bytes)")]
    Mismatch {
        /// Bytes re-created.
        size: u64,
    },
}
