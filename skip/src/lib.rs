//! The one way a test of the workspace skips: [`skip`] (or [`skip_unless_required`] for a
//! requirement with its own switch).
//!
//! A test that cannot run here (no root, no kernel support, no `strace`, `gpg` or `fusefat`…)
//! calls [`skip`] and returns. The skip either fails the test, when `IUK_REQUIRE_KERNEL=1` says
//! that this machine has everything (CI), or is counted: it prints `SKIP: reason` to stderr and,
//! when `IUK_SKIP_LOG` names a file, appends the reason to it as one line, so that
//! `scripts/test` can sum up every skip of every test process of a run. The library's unit
//! tests use it too, so this crate depends on nothing but std.

use std::fs::OpenOptions;
use std::io::Write;

/// The variable that forbids skipping: `IUK_REQUIRE_KERNEL=1` turns every [`skip`] into a
/// failure (for machines that have root, the kernel and every tool, such as CI).
pub const REQUIRE_KERNEL: &str = "IUK_REQUIRE_KERNEL";

/// The variable naming the file each skip appends its reason to (one line per skip).
pub const SKIP_LOG: &str = "IUK_SKIP_LOG";

/// Whether skipping is forbidden (`IUK_REQUIRE_KERNEL=1`): a test that cannot run fails.
pub fn skips_forbidden() -> bool {
    required(REQUIRE_KERNEL)
}

/// Whether the environment variable `var` is `1`.
fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Skips the calling test for `reason`: panics when `IUK_REQUIRE_KERNEL=1` forbids skipping;
/// otherwise counts the skip (see [`record`]). The caller returns right after.
///
/// Usage: `if !found { return skip("`gpg` is not installed"); }`
pub fn skip(reason: &str) {
    skip_unless_required(REQUIRE_KERNEL, reason);
}

/// Skips the calling test for `reason`, unless the environment variable `var` is `1`, in which
/// case it panics (a requirement with its own switch, e.g. `IUK_REQUIRE_TAILS` for the tests
/// that need a Tails source checkout, which CI machines do not have).
pub fn skip_unless_required(var: &str, reason: &str) {
    if required(var) {
        panic!("cannot run this test ({reason}) and {var}=1 forbids skipping it");
    }
    record(reason);
}

/// Counts a skip: prints `SKIP: reason` to stderr and, when `IUK_SKIP_LOG` is set, appends the
/// reason as one line to that file (opened `O_APPEND`, written with one `write`, so lines of
/// concurrent test processes do not interleave). A log that cannot be written is reported on
/// stderr but does not fail the test.
pub fn record(reason: &str) {
    eprintln!("SKIP: {reason}");
    let Some(log) = std::env::var_os(SKIP_LOG) else {
        return;
    };
    let line = format!("{}\n", reason.replace('\n', " "));
    let written = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .and_then(|mut f| {
            let n = f.write(line.as_bytes())?;
            if n == line.len() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("short write ({n} bytes)")))
            }
        });
    if let Err(e) = written {
        eprintln!(
            "warning: cannot log the skip to {}: {e}",
            log.to_string_lossy()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_appends_one_line_per_skip() {
        let dir = std::env::temp_dir().join(format!("iuk-skip-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        // The only test of this crate that touches the environment (tests share it).
        std::env::set_var(SKIP_LOG, &log);
        record("needs root");
        record("two\nlines");
        std::env::remove_var(SKIP_LOG);
        record("not logged");
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "needs root\ntwo lines\n");
    }
}
