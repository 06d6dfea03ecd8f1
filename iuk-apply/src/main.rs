//! `iuk-apply`: verifies an incremental upgrade kit on an installed system and stacks it as one
//! more SquashFS layer. Argument parsing, progress and output only; the logic is in
//! `iuk::medium`.

mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  refused or failed; the message names the file and the problem, and says what to do.
     A refused command leaves the medium unchanged (its lock file aside).
  2  invalid command line
  3  select: no upgrade applies to this medium";

/// Verify an incremental upgrade kit and stack it on an installed medium, crash-safely.
///
/// The medium is the mounted system partition (a directory; FAT32 on a USB stick). Every
/// mutating command takes the medium's lock; `apply` first completes or discards an apply that
/// a crash or a power cut interrupted.
#[derive(Parser)]
#[command(name = "iuk-apply", version, after_help = EXIT_CODES, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    if let Some(code) = iuk_clidocs::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iuk-apply: error: {}", iuk::message::one_line(e.as_ref()));
            ExitCode::from(1)
        }
    }
}
