//! Bounded memory on hostile input ("House in order"): files far larger than anything iuk writes
//! — sparse, so they cost no disk — are refused quickly, with a one-line error naming the file,
//! without reading them whole. Each command runs as a child of its own, reaped with `wait4` so
//! that its peak RSS (`ru_maxrss`) is its own, not the test process's.
//!
//! The cases: a 4 GiB `live/iuk-journal` (`status` reports the pending recovery, as it does for
//! any journal; `recover` discards it as stale or torn — no journal iuk writes is that large —
//! without reading or rewriting it whole), a 2 GiB `live/iuk-state.yml` (`status`,
//! `verify`), and a 1 GiB upgrade description file (`select --udf`, `check --udf`).
//!
//! Needs root (init of a medium, as the other medium tests) and the built binaries.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iuk_e2e::{fixture_kit_at, iso, iuk_command, require_root_or_skip, run_ok};
use tempfile::TempDir;

const EPOCH: u32 = 1_700_000_000;
/// The most a refusal may take.
const MAX_TIME: Duration = Duration::from_secs(10);
/// The most peak RSS a refusal may take, in KiB (as `ru_maxrss` counts).
const MAX_RSS_KIB: i64 = 64 << 10;
/// A child still running after this is killed (the test then fails on time).
const KILL_AFTER: Duration = Duration::from_secs(20);
/// The most a child may write to one file (`RLIMIT_FSIZE`): a command that wrongly rewrote a
/// huge file (zeroing a 4 GiB journal) stops there instead of filling the disk.
const MAX_FILE_WRITE: u64 = 64 << 20;

const GIB: u64 = 1 << 30;

fn tmpdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("iuk-e2e-bounded-")
        .tempdir()
        .unwrap()
}

/// What a child did: exit code, stderr, wall time and peak RSS (KiB).
struct Measured {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    max_rss_kib: i64,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:.2?}, peak RSS {} KiB\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.max_rss_kib, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` as a child with stdout and stderr in files of `dir`, reaps it with `wait4` and
/// returns its own peak RSS with its outcome; kills it after [`KILL_AFTER`].
fn measure(dir: &Path, cmd: &mut Command) -> Measured {
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: MAX_FILE_WRITE as libc::rlim_t,
                rlim_max: MAX_FILE_WRITE as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child, not reaped yet (std never waits for it: we own the reaping).
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4({pid}): {}", std::io::Error::last_os_error());
        if start.elapsed() > KILL_AFTER {
            // SAFETY: killing our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = start.elapsed();
    drop(child);
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: String::from_utf8_lossy(&fs::read(&out_path).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap()).into_owned(),
        elapsed,
        max_rss_kib: usage.ru_maxrss,
    }
}

/// Asserts that the child was quick (< [`MAX_TIME`]) and small (< [`MAX_RSS_KIB`]).
fn assert_bounded(m: &Measured, what: &str) {
    eprintln!(
        "{what}: exit {:?} after {:.2?}, peak RSS {} KiB",
        m.code, m.elapsed, m.max_rss_kib
    );
    assert!(m.elapsed < MAX_TIME, "{what}: took too long: {m}");
    assert!(
        m.max_rss_kib < MAX_RSS_KIB,
        "{what}: peak RSS {} KiB, more than {MAX_RSS_KIB} KiB: {m}",
        m.max_rss_kib
    );
}

/// Asserts a bounded refusal: non-zero exit, stderr one line `iuk-apply: error: …` naming
/// `file`, no panic, quick and small.
fn assert_refused(m: &Measured, what: &str, file: &str) {
    assert_bounded(m, what);
    assert!(
        m.code.is_some_and(|c| c != 0),
        "{what}: not refused (or killed): {m}"
    );
    assert!(
        !m.stderr.contains("panicked") && !m.stderr.contains("RUST_BACKTRACE"),
        "{what}: panicked: {m}"
    );
    assert!(
        m.stderr.starts_with("iuk-apply: error:") && m.stderr.lines().count() == 1,
        "{what}: stderr must be one line starting with `iuk-apply: error:`: {m}"
    );
    assert!(
        m.stderr.contains(file),
        "{what}: the error does not name {file}: {m}"
    );
}

/// A sparse file of `len` bytes at `path` (replacing any file there).
fn sparse(path: &Path, len: u64) {
    fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// `iuk-apply SUB --medium MEDIUM`.
fn ia(sub: &str, medium: &Path) -> Command {
    let mut c = iuk_command("iuk-apply");
    c.arg(sub).arg("--medium").arg(medium);
    c
}

/// A medium initialized from the 6.9 fixture ISO, as `dir/medium`.
fn medium(dir: &Path) -> std::path::PathBuf {
    let m = dir.join("medium");
    run_ok(ia("init", &m).arg("--iso").arg(iso("6.9")));
    m
}

/// A 4 GiB journal: `status` reports the pending recovery (as for any journal); `recover`
/// discards it as stale or torn (DESIGN.md: a journal that is not valid is zeroed and removed),
/// within the same bounds and without writing gigabytes of zeros.
#[test]
fn huge_journal_is_discarded_in_bounded_memory() {
    if !require_root_or_skip() {
        return;
    }
    let t = tmpdir();
    let m = medium(t.path());
    let journal = m.join("live/iuk-journal");
    sparse(&journal, 4 * GIB);
    let status = |what: &str| -> serde_json::Value {
        let r = measure(t.path(), ia("status", &m).arg("--json"));
        assert_bounded(&r, what);
        assert_eq!(r.code, Some(0), "{what}: {r}");
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{what}: status --json is not JSON ({e}): {r}"))
    };
    assert_eq!(
        status("status with a 4 GiB journal")["pending_recovery"],
        true
    );
    let r = measure(t.path(), &mut ia("recover", &m));
    assert_bounded(&r, "recover with a 4 GiB journal");
    assert_eq!(r.code, Some(0), "recover with a 4 GiB journal: {r}");
    assert!(!journal.exists(), "recover left the journal: {r}");
    assert_eq!(status("status after recover")["pending_recovery"], false);
    run_ok(ia("verify", &m).arg("--deep"));
}

/// A 2 GiB state file: `status` and `verify` refuse it without reading it.
#[test]
fn huge_state_is_refused_in_bounded_memory() {
    if !require_root_or_skip() {
        return;
    }
    let t = tmpdir();
    let m = medium(t.path());
    sparse(&m.join("live/iuk-state.yml"), 2 * GIB);
    for sub in ["status", "verify"] {
        let r = measure(t.path(), &mut ia(sub, &m));
        assert_refused(&r, &format!("{sub} with a 2 GiB state"), "iuk-state.yml");
    }
}

/// A 1 GiB upgrade description file: `select` and `check --udf` refuse it without reading it.
#[test]
fn huge_udf_is_refused_in_bounded_memory() {
    if !require_root_or_skip() {
        return;
    }
    let t = tmpdir();
    let m = medium(t.path());
    let udf = t.path().join("huge-udf.yml");
    sparse(&udf, GIB);
    let sig = t.path().join("udf.sig");
    fs::write(&sig, b"not a signature\n").unwrap();
    let kit = fixture_kit_at("6.9", "6.10", EPOCH, &[]);
    let r = measure(
        t.path(),
        ia("select", &m)
            .arg("--udf")
            .arg(&udf)
            .arg("--signature")
            .arg(&sig),
    );
    assert_refused(&r, "select with a 1 GiB UDF", "huge-udf.yml");
    let r = measure(
        t.path(),
        ia("check", &m)
            .arg(&kit)
            .arg("--udf")
            .arg(&udf)
            .arg("--signature")
            .arg(&sig),
    );
    assert_refused(&r, "check --udf with a 1 GiB UDF", "huge-udf.yml");
}
