//! Man pages and shell completions of a binary, generated from its clap definition so they never
//! drift from `--help`: one page per command and subcommand (`iuk-build.1`,
//! `iuk-build-build.1`, …) and completions for bash, zsh and fish. Both binaries answer
//! `BIN generate-docs DIR` with them (see [`generate_if_asked`]); `scripts/install` runs it.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::Path;
use std::process::ExitCode;

use clap_complete::Shell;

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes the man pages of `cmd` and its subcommands into `out/man1/` and its completions into
/// `out/completions/` (`<bin>.bash`, `_<bin>`, `<bin>.fish`). Hidden subcommands get no page. Returns the files written, sorted.
pub fn generate(cmd: clap::Command, out: &Path) -> io::Result<Vec<String>> {
    let mut cmd = cmd;
    cmd.build();
    let bin = cmd.get_name().to_string();
    let man = out.join("man1");
    fs::create_dir_all(&man)?;
    let mut written = Vec::new();
    write_page(&cmd, &bin, &man, &mut written)?;
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in SHELLS {
        let path = clap_complete::generate_to(shell, &mut cmd, &bin, &completions)?;
        written.push(path.display().to_string());
    }
    written.sort();
    Ok(written)
}

/// Writes the page of `cmd` named `name` (`iuk-build-build` for a subcommand), then those of its
/// visible subcommands.
fn write_page(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> io::Result<()> {
    let page_cmd = cmd.clone().name(name.to_string());
    let mut bytes = Vec::new();
    clap_mangen::Man::new(page_cmd).render(&mut bytes)?;
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, bytes)?;
    written.push(path.display().to_string());
    // `help` repeats `--help`: no page of its own.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

/// The first argument that asks a binary for its documents instead of running a command:
/// `BIN generate-docs DIR` (what `scripts/install` runs). It is checked before clap parses the
/// command line, so it appears in no `--help`, man page or completion.
pub const GENERATE_DOCS: &str = "generate-docs";

/// When the command line is `BIN generate-docs DIR`, writes the documents of `cmd()` into DIR,
/// prints the files written and returns the exit status; otherwise returns `None` and the
/// binary parses its command line as usual.
pub fn generate_if_asked(cmd: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let [first, dir] = args.as_slice() else {
        return None;
    };
    if first != GENERATE_DOCS {
        return None;
    }
    let cmd = cmd();
    let bin = cmd.get_name().to_string();
    match generate(cmd, Path::new(dir)) {
        Ok(files) => {
            for f in files {
                println!("{f}");
            }
            Some(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{bin}: error: {}: {e}", Path::new(dir).display());
            Some(ExitCode::from(1))
        }
    }
}
