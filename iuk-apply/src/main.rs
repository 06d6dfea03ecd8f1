//! `iuk-apply`: verifies an incremental upgrade kit on an installed system and stacks it as one
//! more SquashFS layer. Its commands arrive with the applier work (DESIGN.md, "The medium"); until
//! then the binary only describes itself.

use clap::Parser;

/// Verify an incremental upgrade kit and stack it on an installed medium.
///
/// No commands are available in this version: init, adopt, check, apply, select, trust, verify,
/// status and recover are described in DESIGN.md and are not implemented yet.
#[derive(Parser)]
#[command(
    name = "iuk-apply",
    version,
    max_term_width = 100,
    after_help = "Exit status:\n  0  help or version shown\n  2  invalid command line"
)]
struct Cli {}

fn main() {
    Cli::parse();
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let _ = cmd.print_help();
}
