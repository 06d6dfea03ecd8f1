//! Progress of long work (building, hashing, writing, applying): one trait the library reports
//! to, and one terminal implementation both binaries show, so `iuk-build` and `iuk-apply` look
//! the same. Progress never changes what is computed: it only receives counts.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

/// Receives the progress of long work and the warnings it gives.
pub trait Progress: Sync {
    /// A new phase starts; `total` is its size in bytes (0 when unknown).
    fn phase(&self, name: &str, total: u64);
    /// Bytes done so far in the current phase.
    fn position(&self, done: u64);
    /// Something the user should know; the work goes on.
    fn warn(&self, message: &str);
}

/// A progress sink that shows nothing and drops warnings (tests, library callers).
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: u64) {}
    fn position(&self, _: u64) {}
    fn warn(&self, _: &str) {}
}

/// A byte-count progress bar when stderr is a terminal, a hidden one elsewhere (pipes, CI logs).
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// The terminal view of [`Progress`]: one bar per phase (only on a TTY), warnings printed above
/// it as `<program>: warning: <message>`. The bar is cleared when dropped.
pub struct Bars {
    program: &'static str,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Progress of the binary `program` (its name prefixes warnings).
    pub fn new(program: &'static str) -> Bars {
        Bars {
            program,
            bar: Mutex::new(None),
        }
    }

    /// Clears the last bar.
    pub fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Progress for Bars {
    fn phase(&self, name: &str, total: u64) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(old) = b.take() {
                old.finish_and_clear();
            }
            *b = Some(bytes_bar(total, name));
        }
    }
    fn position(&self, done: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.set_position(done);
            }
        }
    }
    fn warn(&self, message: &str) {
        let line = format!("{}: warning: {message}", self.program);
        match self.bar.lock().ok().as_ref().and_then(|b| b.as_ref()) {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}
