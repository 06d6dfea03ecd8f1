//! The end-to-end tests, one binary: each file of this directory is a module (run one file's
//! tests with a filter: `cargo test --release -p iuk-e2e --test e2e apply::`). The binaries
//! must be built first (`cargo build --release --workspace --bins`).

mod apply;
mod bounded;
mod build;
mod deltas;
mod docs;
mod hostile;
mod pack;
mod rebuild;
mod tails_interop;
mod trust;
mod trust_device;
