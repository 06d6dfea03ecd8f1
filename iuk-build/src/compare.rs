//! `iuk-build compare`: where and why two kits (or two SquashFS images) differ.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use iuk::compare::{compare_files, Comparison};

/// Compare two kits, or two SquashFS images, and explain every difference.
///
/// Prints "identical" when the files hold the same bytes. Otherwise lists the differences from
/// the top down: for kits, FORMAT, the control.yml keys that differ (nested keys named by path,
/// e.g. layer-params.compression), the overlay files added, missing or different (size, sha256),
/// then, for the diff layers inside and for the kit images themselves, whether each fails the
/// image check of `inspect` (every table and inode; data blocks are decoded when contents are
/// compared, one that does not decode shows as unreadable content), the superblock fields,
/// the entries (path and which metadata field, or the content) and the bytes (which table or
/// data region differs, from which byte offset, and in which file's block). At most 50 lines per
/// section, then a count of the rest.
#[derive(Args)]
#[command(after_help = "Exit status:\n  \
    0  identical\n  \
    1  different (the differences are printed)\n  \
    2  an input cannot be read or is not a SquashFS image (one-line error), or invalid command line\n\n\
    Examples:\n  \
    iuk-build compare published.iuk rebuilt.iuk\n  \
    iuk-build compare --json a.squashfs b.squashfs")]
pub struct CompareArgs {
    /// First kit or image (A)
    pub a: PathBuf,
    /// Second kit or image (B)
    pub b: PathBuf,
    /// Print the comparison as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `compare`: exit 0 identical, 1 different, 2 error.
pub fn main(a: CompareArgs) -> ExitCode {
    match run(&a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("iuk-build: error: {}", iuk::message::one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(a: &CompareArgs) -> Result<bool> {
    let c = compare_files(&a.a, &a.b)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print_comparison(&c);
    }
    Ok(c.identical)
}

/// The text form of a comparison: both inputs, then "identical" or the sections.
pub fn print_comparison(c: &Comparison) {
    for (side, i) in [("A", &c.a), ("B", &c.b)] {
        println!(
            "{side}: {} ({}, {} bytes, sha256 {})",
            i.path, i.kind, i.size, i.sha256
        );
    }
    if c.identical {
        println!("identical");
        return;
    }
    let n = c.difference_count();
    println!("different: {n} difference{}", if n == 1 { "" } else { "s" });
    for s in &c.sections {
        println!("{}:", s.title);
        for d in &s.differences {
            println!("  {d}");
        }
        if s.more > 0 {
            println!("  … {} more", s.more);
        }
    }
}
