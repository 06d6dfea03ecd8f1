//! `iuk-build rebuild`: reproduce a published kit from the two releases and check the bytes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use iuk::rebuild::{rebuild, RebuildOptions, RebuildReport, Verdict};

use iuk::progress::Bars;

/// Rebuild a published kit from the two releases and check that it is byte-identical.
///
/// Every parameter comes from the kit's control.yml: product, versions, build target, layer
/// name, compression and its settings, block size, sort file and the epoch (SOURCE_DATE_EPOCH
/// is ignored). First the sha256 of each ISO is checked against the one the kit records: other
/// inputs can never give the same kit, so nothing is rebuilt then. A kit built from an extracted
/// directory records no ISO sha256; its inputs' identity cannot be checked, only the bytes.
///
/// Kits from another generator than iuk, or written with a writer format this program does not
/// implement, are refused. The rebuilt kit is written to a temporary directory (TMPDIR) and
/// removed, unless --keep is given. When the bytes differ, the differences are printed as
/// `iuk-build compare` does (A = the published kit, B = the rebuilt one).
#[derive(Args)]
#[command(after_help = "Exit status:\n  \
    0  identical: the kit is reproduced byte for byte\n  \
    1  different, or the inputs are not the ones the kit was built from (the reason is printed)\n  \
    2  the kit or an input cannot be read, the kit is refused (FORMAT, generator, writer\n     \
    format), or invalid command line (one-line error)\n\n\
    Example:\n  \
    iuk-build rebuild Tails_amd64_6.10_to_6.11.iuk --old Tails-6.10.iso --new Tails-6.11.iso")]
pub struct RebuildArgs {
    /// The published kit to reproduce
    pub kit: PathBuf,
    /// The release the kit upgrades from: the ISO image (or the directory) it was built from
    #[arg(long, value_name = "OLD")]
    pub old: PathBuf,
    /// The release the kit upgrades to
    #[arg(long, value_name = "NEW")]
    pub new: PathBuf,
    /// Keep the rebuilt kit at PATH (replaced if it exists) instead of a temporary file
    #[arg(long, value_name = "PATH")]
    pub keep: Option<PathBuf>,
    /// Threads for hashing and compression [default: number of CPUs]; never changes the bytes
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Runs `rebuild`: exit 0 identical, 1 different or wrong inputs, 2 error.
pub fn main(a: RebuildArgs) -> ExitCode {
    match run(a) {
        Ok(Verdict::Identical) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("iuk-build: error: {}", iuk::message::one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(a: RebuildArgs) -> Result<Verdict> {
    let jobs = crate::start_workers(a.jobs)?;
    let bars = Bars::new("iuk-build");
    let opts = RebuildOptions {
        jobs,
        keep: a.keep.clone(),
    };
    let r = rebuild(&a.kit, &a.old, &a.new, &opts, &bars);
    bars.finish();
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(r.verdict)
}

fn print_report(r: &RebuildReport) {
    println!("kit      {}", r.kit);
    println!(
        "         {} {} -> {} ({}), layer {}, writer format {}",
        r.product, r.from_version, r.to_version, r.build_target, r.layer, r.writer_format
    );
    println!("         sha256 {}", r.kit_sha256);
    for i in &r.inputs {
        println!("{:<8} {}: {}", i.role, i.path, i.message);
    }
    if let Some(s) = &r.rebuilt_sha256 {
        println!("rebuilt  sha256 {s}");
    }
    if let Some(k) = &r.kept {
        println!("kept     {k}");
    }
    match r.verdict {
        Verdict::Identical => {
            println!("identical: the kit is reproduced byte for byte from these inputs")
        }
        Verdict::WrongInputs => println!(
            "different inputs: these are not the releases the kit was built from (see above), \
             so nothing was rebuilt: a kit records the sha256 of both ISOs (null for a \
             directory), so a kit built from other inputs cannot be identical"
        ),
        Verdict::Different => {
            println!("DIFFERENT: the rebuilt kit does not have the published kit's bytes");
            if let Some(c) = &r.comparison {
                crate::compare::print_comparison(c);
            }
        }
    }
}
