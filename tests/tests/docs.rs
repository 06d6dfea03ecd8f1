//! Man pages and shell completions: every subcommand that `--help` lists has a page, the pages
//! are man(7) documents naming their command, the completions know every subcommand and the bash
//! one parses, and `scripts/install` puts binaries, pages and completions in place.

use std::fs;
use std::process::Command;

use iuk_e2e::{iuk_command, run_ok, script};

/// The subcommands `BIN --help` lists (its "Commands:" section), `help` excluded.
fn listed_subcommands(bin: &str) -> Vec<String> {
    let help = run_ok(iuk_command(bin).arg("--help"));
    let text = String::from_utf8_lossy(&help.stdout).into_owned();
    let section = text
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("\n\n").next())
        .unwrap_or_else(|| panic!("{bin} --help has no Commands: section:\n{text}"))
        .to_string();
    let names: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(
        names.len() >= 5,
        "{bin}: too few subcommands found: {names:?}"
    );
    names
}

#[test]
fn every_subcommand_has_a_man_page_and_completions() {
    for bin in ["iuk-build", "iuk-apply"] {
        let dir = tempfile::tempdir().unwrap();
        run_ok(iuk_command(bin).arg("generate-docs").arg(dir.path()));
        let man = dir.path().join("man1");
        let escaped = |s: &str| s.replace('-', "\\-");
        let top = fs::read_to_string(man.join(format!("{bin}.1"))).unwrap();
        assert!(top.contains(&format!(".TH {bin} 1")), "{bin}.1:\n{top}");
        let subs = listed_subcommands(bin);
        for sub in &subs {
            let page = man.join(format!("{bin}-{sub}.1"));
            let text = fs::read_to_string(&page)
                .unwrap_or_else(|e| panic!("{bin} {sub}: no man page {}: {e}", page.display()));
            assert!(
                text.contains(&format!(".TH {bin}-{sub} 1")),
                "{}",
                page.display()
            );
            assert!(
                text.contains(&format!("\\fB{} {}\\fR", escaped(bin), escaped(sub))),
                "{}: the synopsis does not show `{bin} {sub}`:\n{text}",
                page.display()
            );
            assert!(top.contains(&escaped(sub)), "{bin}.1 does not list {sub}");
        }
        let pages = fs::read_dir(&man).unwrap().count();
        assert_eq!(pages, subs.len() + 1, "{bin}: pages for hidden commands?");
        let completions = dir.path().join("completions");
        for file in [
            format!("{bin}.bash"),
            format!("_{bin}"),
            format!("{bin}.fish"),
        ] {
            let text = fs::read_to_string(completions.join(&file)).unwrap();
            for sub in &subs {
                assert!(
                    text.contains(sub.as_str()),
                    "{file} does not complete {sub}"
                );
            }
            assert!(
                !text.contains("generate-docs"),
                "{file} offers the hidden command"
            );
        }
        run_ok(
            Command::new("bash")
                .arg("-n")
                .arg(completions.join(format!("{bin}.bash"))),
        );
    }
}

#[test]
fn install_puts_binaries_pages_and_completions_in_place() {
    let dest = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(script("install"))
            .arg("/usr")
            .env("DESTDIR", dest.path()),
    );
    let usr = dest.path().join("usr");
    for bin in ["iuk-build", "iuk-apply"] {
        let installed = usr.join("bin").join(bin);
        let version = run_ok(Command::new(&installed).arg("--version"));
        assert!(String::from_utf8_lossy(&version.stdout).starts_with(bin));
        for sub in listed_subcommands(bin) {
            assert!(
                usr.join(format!("share/man/man1/{bin}-{sub}.1")).is_file(),
                "{bin}-{sub}.1"
            );
        }
        assert!(usr
            .join(format!("share/bash-completion/completions/{bin}"))
            .is_file());
        assert!(usr
            .join(format!("share/zsh/site-functions/_{bin}"))
            .is_file());
        assert!(usr
            .join(format!("share/fish/vendor_completions.d/{bin}.fish"))
            .is_file());
    }
}
