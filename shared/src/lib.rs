//! `iuk`: the library behind `iuk-build` and `iuk-apply`.
//!
//! Everything both tools need lives here so it can be tested without processes: the deterministic
//! SquashFS engine ([`squashfs`]) and the filesystem tree model ([`tree`]). See DESIGN.md beside the
//! repository for the architecture and the invariants every module serves.

pub mod boot;
pub mod build;
pub mod compare;
pub mod delta;
pub mod diff;
pub mod hostdir;
pub mod io;
pub mod iso;
pub mod kit;
pub mod medium;
pub mod memory;
pub mod message;
pub mod output;
pub mod progress;
pub mod rebuild;
pub mod release;
pub mod sign;
pub mod squashfs;
pub mod tree;
pub mod udf;
pub mod version;
pub mod yaml;
