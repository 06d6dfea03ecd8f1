//! Progress of long work (building, hashing, writing, applying): one trait the library reports
//! to, and one terminal implementation both binaries show, so `iuk-build` and `iuk-apply` look
//! the same. Progress never changes what is computed: it only receives counts.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives the progress of long work and the warnings it gives.
pub trait Progress: Sync {
    /// A new phase starts; `total` is its size in bytes (0 when unknown).
    fn phase(&self, name: &str, total: u64);
    /// Bytes done so far in the current phase.
    fn position(&self, done: u64);
    /// Something the user should know; the work goes on.
    fn warn(&self, message: &str);
    /// Items of a batch done so far (`done` of `total`: the kits of a release), shown as an
    /// overall line above the phase; ignored by default.
    fn items(&self, _done: u64, _total: u64) {}
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

/// The terminal view of [`Progress`]: one bar per phase and, for a batch, an overall line of
/// items done (only on a TTY), warnings printed above them as `<program>: warning: <message>`.
/// The bars are cleared when dropped. With timings on, each phase's wall time is printed when
/// it ends (`<program>: timing: <phase> <seconds> s`), on a terminal or not.
pub struct Bars {
    program: &'static str,
    multi: MultiProgress,
    bar: Mutex<Option<ProgressBar>>,
    overall: Mutex<Option<ProgressBar>>,
    timings: Option<Mutex<Option<(String, Instant)>>>,
}

impl Bars {
    /// Progress of the binary `program` (its name prefixes warnings).
    pub fn new(program: &'static str) -> Bars {
        let multi = if std::io::stderr().is_terminal() {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        Bars {
            program,
            multi,
            bar: Mutex::new(None),
            overall: Mutex::new(None),
            timings: None,
        }
    }

    /// Progress of `program` that also prints each phase's wall time when `timings` is true.
    pub fn with_timings(program: &'static str, timings: bool) -> Bars {
        let mut bars = Bars::new(program);
        if timings {
            bars.timings = Some(Mutex::new(None));
        }
        bars
    }

    /// Ends the timed phase (if any) and starts timing `next` (none: nothing more to time).
    fn time_phase(&self, next: Option<&str>) {
        let Some(t) = &self.timings else { return };
        let Ok(mut t) = t.lock() else { return };
        if let Some((name, start)) = t.take() {
            let line = format!(
                "{}: timing: {name} {:.2} s",
                self.program,
                start.elapsed().as_secs_f64()
            );
            self.multi.suspend(|| eprintln!("{line}"));
        }
        *t = next.map(|n| (n.to_string(), Instant::now()));
    }

    /// Clears the bars (and ends the timed phase).
    pub fn finish(&self) {
        self.time_phase(None);
        for m in [&self.bar, &self.overall] {
            if let Ok(mut b) = m.lock() {
                if let Some(b) = b.take() {
                    b.finish_and_clear();
                }
            }
        }
    }
}

/// The overall line of a batch: `done/total` items with elapsed time and ETA.
fn items_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:14} [{bar:30}] {pos}/{len} kits, {elapsed} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("overall");
    bar
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Progress for Bars {
    fn phase(&self, name: &str, total: u64) {
        self.time_phase(Some(name));
        if let Ok(mut b) = self.bar.lock() {
            if let Some(old) = b.take() {
                old.finish_and_clear();
                self.multi.remove(&old);
            }
            *b = Some(self.multi.add(bytes_bar(total, name)));
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
        self.multi.suspend(|| eprintln!("{line}"));
    }
    fn items(&self, done: u64, total: u64) {
        if total < 2 {
            return;
        }
        if let Ok(mut o) = self.overall.lock() {
            let bar = o.get_or_insert_with(|| self.multi.insert(0, items_bar(total)));
            bar.set_position(done);
            if done >= total {
                bar.finish_and_clear();
            }
        }
    }
}
