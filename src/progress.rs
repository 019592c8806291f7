//! Progress of long-running CLI commands (`dlq replay`, `dlq list`, `topics apply`, `schemas
//! apply`, `migrate`, `status`), on stderr so stdout stays machine-readable.
//!
//! - On a terminal (`tty`): one line redrawn in place, at most every 100 ms: count/total,
//!   percentage, rate and elapsed time; the final state stays on screen.
//! - Otherwise (`plain`, e.g. under a supervisor or in CI logs): a line when the work starts, then
//!   at most one a second and one per tenth of the total, and a final `done` line.
//! - `off`: nothing.
//!
//! The binary picks the mode once (`--progress auto|tty|plain|off`, `DEVCYCLE_PROGRESS`; `auto`
//! is `tty` when stderr is a terminal, else `plain`) with [`set_mode`]. Library callers that did
//! not (tests, the services' own start-up) get `off`, and functions that report progress also
//! have a quiet variant taking no [`Progress`].

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `tty` when stderr is a terminal, else `plain`.
    Auto,
    Tty,
    Plain,
    Off,
}

static MODE: AtomicU8 = AtomicU8::new(3);

/// Sets the process-wide mode of [`Progress::new`] (`Auto` is resolved here).
pub fn set_mode(mode: Mode) {
    let resolved = match mode {
        Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
        Mode::Auto => Mode::Plain,
        m => m,
    };
    MODE.store(resolved as u8, Ordering::Relaxed);
}

fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::Tty,
        2 => Mode::Plain,
        _ => Mode::Off,
    }
}

const PLAIN_EVERY: Duration = Duration::from_secs(1);
const TTY_EVERY: Duration = Duration::from_millis(100);

/// The progress of one piece of work, counted in `unit`s.
pub struct Progress {
    label: String,
    unit: &'static str,
    mode: Mode,
    out: Box<dyn Write + Send>,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_shown: Option<Instant>,
    /// Plain mode: the tenth of the total last reported.
    last_tenth: u64,
    finished: bool,
}

impl Progress {
    /// Progress in the process-wide mode (see [`set_mode`]), written to stderr.
    pub fn new(label: impl Into<String>, unit: &'static str) -> Progress {
        Self::to_writer(label, unit, mode(), Box::new(std::io::stderr()))
    }

    /// Progress that shows nothing.
    pub fn hidden() -> Progress {
        Self::to_writer("", "", Mode::Off, Box::new(std::io::sink()))
    }

    /// Progress in `mode` written to `out` (`Auto` counts as `plain`).
    pub fn to_writer(label: impl Into<String>, unit: &'static str, mode: Mode, out: Box<dyn Write + Send>) -> Progress {
        let mode = if mode == Mode::Auto { Mode::Plain } else { mode };
        Progress {
            label: label.into(),
            unit,
            mode,
            out,
            total: None,
            done: 0,
            started: Instant::now(),
            last_shown: None,
            last_tenth: 0,
            finished: false,
        }
    }

    /// Another piece of work shown the same way (e.g. the next phase of a command).
    pub fn sibling(&self, label: impl Into<String>, unit: &'static str) -> Progress {
        match self.mode {
            Mode::Off => Self::hidden(),
            m => Self::to_writer(label, unit, m, Box::new(std::io::stderr())),
        }
    }

    /// Starts the clock with the total, when known, and shows the first line.
    pub fn start(&mut self, total: Option<u64>) {
        self.total = total;
        self.done = 0;
        self.started = Instant::now();
        self.show(true);
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        self.show(false);
    }

    /// Shows the final line (once; nothing if the work never started).
    pub fn finish(&mut self) {
        if self.finished || self.last_shown.is_none() {
            return;
        }
        self.finished = true;
        let secs = self.started.elapsed().as_secs_f64();
        let line = match self.total {
            Some(t) => format!("{}: {}/{t} {}, done in {secs:.1}s ({})", self.label, self.done, self.unit, self.rate()),
            None => format!("{}: {} {}, done in {secs:.1}s ({})", self.label, self.done, self.unit, self.rate()),
        };
        match self.mode {
            Mode::Off | Mode::Auto => return,
            Mode::Tty => {
                let _ = write!(self.out, "\r\x1b[2K{line}\n");
            }
            Mode::Plain => {
                let _ = writeln!(self.out, "{line}");
            }
        }
        let _ = self.out.flush();
    }

    fn rate(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        if secs < 0.001 {
            return format!("- {}/s", self.unit);
        }
        format!("{:.1} {}/s", self.done as f64 / secs, self.unit)
    }

    /// The current state as one line (without a newline).
    pub fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let count = match self.total {
            Some(t) if t > 0 => {
                format!("{}/{t} {} ({}%)", self.done, self.unit, (self.done.min(t) * 100) / t)
            }
            Some(t) => format!("{}/{t} {}", self.done, self.unit),
            None => format!("{} {}", self.done, self.unit),
        };
        format!("{}: {count}, {}, elapsed {elapsed:.1}s", self.label, self.rate())
    }

    fn show(&mut self, first: bool) {
        let now = Instant::now();
        let since = self.last_shown.map(|t| now.duration_since(t));
        let due = match self.mode {
            Mode::Off | Mode::Auto => false,
            Mode::Tty => first || since.is_none_or(|d| d >= TTY_EVERY),
            Mode::Plain => {
                let tenth = match self.total {
                    Some(t) if t > 0 => (self.done.min(t) * 10) / t,
                    _ => 0,
                };
                // The last tenth is said by the `done` line.
                let crossed = tenth > self.last_tenth && self.total.is_some_and(|t| self.done < t);
                self.last_tenth = self.last_tenth.max(tenth);
                first || crossed || since.is_none_or(|d| d >= PLAIN_EVERY)
            }
        };
        if !due {
            return;
        }
        self.last_shown = Some(now);
        let line = self.line();
        if self.mode == Mode::Tty {
            let _ = write!(self.out, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(self.out, "{line}");
        }
        let _ = self.out.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A tty line left half-drawn (an error cut the work short) is ended.
        if !self.finished && self.mode == Mode::Tty && self.last_shown.is_some() {
            let _ = writeln!(self.out);
        }
    }
}

/// Runs `work`, showing its elapsed time while it lasts more than a second (for work that has
/// no count, e.g. migrations or reaching slow services). Says nothing when it is quick.
pub async fn while_running<F: Future>(label: &str, work: F) -> F::Output {
    let m = mode();
    if matches!(m, Mode::Off | Mode::Auto) {
        return work.await;
    }
    let started = Instant::now();
    let every = if m == Mode::Tty { Duration::from_millis(200) } else { PLAIN_EVERY };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PLAIN_EVERY, every);
    let mut shown = false;
    let mut err = std::io::stderr();
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = ticks.tick() => {
                shown = true;
                let line = format!("{label}: running, elapsed {:.1}s", started.elapsed().as_secs_f64());
                let _ = if m == Mode::Tty { write!(err, "\r\x1b[2K{line}") } else { writeln!(err, "{line}") };
            }
        }
    };
    if shown {
        let line = format!("{label}: done in {:.1}s", started.elapsed().as_secs_f64());
        let _ = if m == Mode::Tty { writeln!(err, "\r\x1b[2K{line}") } else { writeln!(err, "{line}") };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::SharedBuf;

    /// What a command counting `n` items one by one shows in `mode`.
    fn shown(label: &str, unit: &'static str, mode: Mode, n: u64) -> String {
        let buf = SharedBuf::default();
        let mut p = Progress::to_writer(label, unit, mode, Box::new(buf.clone()));
        p.start(Some(n));
        for _ in 0..n {
            p.inc(1);
        }
        p.finish();
        buf.text()
    }

    #[test]
    fn plain_mode_prints_start_each_tenth_and_done() {
        let text = shown("dlq replay", "dead letters", Mode::Plain, 100);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert!(lines[0].starts_with("dlq replay: 0/100 dead letters (0%), "), "{text}");
        assert!(lines[1].starts_with("dlq replay: 10/100 dead letters (10%), "), "{text}");
        assert!(lines[9].starts_with("dlq replay: 90/100 dead letters (90%), "), "{text}");
        assert!(lines[10].starts_with("dlq replay: 100/100 dead letters, done in "), "{text}");
        assert!(lines.iter().all(|l| l.contains("/s")), "{text}");
        assert!(!text.contains('\r'));
    }

    #[test]
    fn tty_mode_redraws_one_line() {
        let text = shown("topics apply", "topics", Mode::Tty, 3);
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(text.starts_with("\r\x1b[2Ktopics apply: 0/3 topics (0%)"), "{text:?}");
        assert!(
            text.contains("\r\x1b[2Ktopics apply: 3/3 topics, done in ") && text.ends_with(" topics/s)\n"),
            "{text:?}"
        );
    }

    #[test]
    fn off_and_unknown_totals() {
        let buf = SharedBuf::default();
        let mut p = Progress::to_writer("x", "items", Mode::Off, Box::new(buf.clone()));
        p.start(None);
        p.inc(5);
        p.finish();
        assert!(buf.text().is_empty());
        let mut p = Progress::to_writer("dlq read", "records", Mode::Plain, Box::new(SharedBuf::default()));
        p.start(None);
        p.inc(7);
        assert!(p.line().starts_with("dlq read: 7 records, "), "{}", p.line());
    }
}
