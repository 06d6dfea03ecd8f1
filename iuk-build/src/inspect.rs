//! `iuk-build inspect`: what a SquashFS image holds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use iuk::squashfs::archive::Archive;
use iuk::squashfs::inspect::{self, Report};

/// Show a SquashFS image's superblock, compressor settings, counts and table layout.
///
/// With --list, every entry with its metadata, like `unsquashfs -lln` (numeric owners, UTC
/// times). The image is fully validated while it is read: a truncated or corrupt image gives a
/// one-line error and exit status 1.
#[derive(Args)]
pub struct InspectArgs {
    /// The image to inspect
    pub image: PathBuf,
    /// Also list every entry
    #[arg(long)]
    pub list: bool,
    /// Print JSON on stdout (with --list, the entries as an array of lines)
    #[arg(long)]
    pub json: bool,
}

/// Runs `inspect`.
pub fn run(a: InspectArgs) -> Result<()> {
    let name = a.image.display().to_string();
    let archive = Archive::open(&a.image).with_context(|| name.clone())?;
    let report = inspect::report(&archive).with_context(|| name.clone())?;
    let listing = if a.list {
        Some(inspect::listing(&archive).with_context(|| name.clone())?)
    } else {
        None
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(l) = &listing {
            v["entries"] = serde_json::json!(l);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_report(&report);
    if let Some(l) = listing {
        println!();
        for line in l {
            println!("{line}");
        }
    }
    Ok(())
}

fn print_report(r: &Report) {
    let sb = &r.superblock;
    let c = &r.compressor;
    println!("image            {}", r.name);
    println!(
        "format           SquashFS {}.{}",
        sb.version_major, sb.version_minor
    );
    println!("bytes used       {}", sb.bytes_used);
    println!("block size       {}", sb.block_size);
    println!("modification     {} ({})", r.mod_time_utc, sb.mod_time);
    let mut comp = c.name.to_string();
    if let Some(l) = c.level {
        comp.push_str(&format!(", level {l}"));
    }
    if let Some(d) = c.dict_size {
        comp.push_str(&format!(", dictionary {d}"));
    }
    if !c.filters.is_empty() {
        comp.push_str(&format!(", filters {}", c.filters.join("+")));
    }
    if let Some(w) = c.window_size {
        comp.push_str(&format!(", window {w}"));
    }
    comp.push_str(if c.options_stored {
        " (options stored)"
    } else {
        " (defaults, no options stored)"
    });
    println!("compressor       {comp}");
    println!(
        "flags            {}",
        if r.flags.is_empty() {
            "none".to_string()
        } else {
            r.flags.join(" ")
        }
    );
    let n = &r.counts;
    println!(
        "inodes           {} ({} files, {} directories, {} symlinks, {} char devices, {} block devices, {} fifos, {} sockets)",
        n.inodes, n.files, n.dirs, n.symlinks, n.char_devices, n.block_devices, n.fifos, n.sockets
    );
    println!(
        "entries          {} ({} hard-linked inodes with {} entries)",
        n.entries, n.hard_linked_inodes, n.hard_link_entries
    );
    println!("file bytes       {}", n.file_bytes);
    println!(
        "data blocks      {} ({} sparse, {} stored uncompressed), {} fragment blocks, {} tails",
        n.data_blocks, n.sparse_blocks, n.uncompressed_blocks, n.fragments, n.fragment_tails
    );
    println!("ids              {}", n.ids);
    println!(
        "xattr sets       {} ({} inodes with xattrs)",
        n.xattr_ids, n.inodes_with_xattrs
    );
    println!("tables:");
    for t in &r.tables {
        println!(
            "  {:<22} start {:>12}  size {:>12}",
            t.name, t.start, t.size
        );
    }
}
