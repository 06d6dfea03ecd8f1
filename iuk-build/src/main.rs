//! `iuk-build`: builds deterministic incremental upgrade kits and the SquashFS images in them.
//! Argument parsing, progress and output formatting only; the logic lives in the `iuk` library.

mod build;
mod compare;
mod describe;
mod inspect;
mod pack;
mod rebuild;
mod writer_args;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit status:
  0  success (rebuild, compare: identical)
  1  the job failed (bad input, I/O error); the message names the file and the problem;
     rebuild, compare: the kits differ (the differences are printed)
  2  invalid command line; rebuild, compare: an input cannot be read or is refused";

/// Build deterministic SquashFS images and incremental upgrade kits.
///
/// Every output byte is a pure function of the inputs and the declared parameters: the same
/// command gives the same sha256 on any machine, with any number of threads.
#[derive(Parser)]
#[command(name = "iuk-build", version, after_help = EXIT_CODES, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Build(build::BuildArgs),
    Pack(pack::PackArgs),
    Inspect(inspect::InspectArgs),
    Describe(describe::DescribeArgs),
    Rebuild(rebuild::RebuildArgs),
    Compare(compare::CompareArgs),
}

/// Starts the worker threads for hashing and compression: `jobs`, or one per CPU.
fn start_workers(jobs: Option<u32>) -> anyhow::Result<usize> {
    use anyhow::Context;
    let jobs = jobs
        .map(|j| j as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build_global()
        .context("cannot start worker threads")?;
    Ok(jobs)
}

fn main() -> ExitCode {
    if let Some(code) = iuk_clidocs::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => build::run(a),
        Command::Pack(a) => pack::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Describe(a) => describe::run(a),
        Command::Rebuild(a) => return rebuild::main(a),
        Command::Compare(a) => return compare::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iuk-build: error: {}", iuk::message::one_line(e.as_ref()));
            ExitCode::from(1)
        }
    }
}
