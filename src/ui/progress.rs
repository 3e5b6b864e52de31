//! Progress shown while a command works: the download bar (`peer get`, and
//! each download in the prompt's `status`), the line of a set of files and the hashing counter of
//! `peer share`. Both redraw one stderr line in place, and only on a
//! terminal: a pipe or a log file gets no carriage returns. The line is cut
//! to the terminal's width, so a redraw never wraps onto a new line.
//!
//! Owns: the bar's layout and when to draw it. Calls `peer::download`
//! (the `Progress` type), [`super::format`] and `terminal_size`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::format::{count, human};
use crate::peer::download::Progress;
use crate::peer::download::batch::BatchProgress;
use crate::peer::share::HashProgress;

/// Width assumed when the terminal's cannot be read (not a terminal).
pub const DEFAULT_COLUMNS: usize = 80;
/// Widest bar drawn, however wide the terminal.
const MAX_BAR: usize = 30;
/// Narrowest bar worth drawing; below it the bar is left out.
const MIN_BAR: usize = 8;

/// The width of the terminal on stderr, or [`DEFAULT_COLUMNS`].
pub fn stderr_columns() -> usize {
    columns(terminal_size::terminal_size_of(std::io::stderr()))
}

/// The width of the terminal on stdout, or [`DEFAULT_COLUMNS`].
pub fn stdout_columns() -> usize {
    columns(terminal_size::terminal_size_of(std::io::stdout()))
}

fn columns(size: Option<(terminal_size::Width, terminal_size::Height)>) -> usize {
    match size {
        Some((terminal_size::Width(w), _)) if w > 0 => usize::from(w),
        _ => DEFAULT_COLUMNS,
    }
}

/// Time left at the current rate, if there is a rate to speak of.
pub fn eta(p: &Progress) -> Option<Duration> {
    eta_of(p.done_bytes, p.total_bytes, p.rate)
}

/// Time left for `total - done` bytes at `rate` bytes/s, if there is a rate
/// to speak of (and the answer is under 100 hours).
fn eta_of(done: u64, total: u64, rate: f64) -> Option<Duration> {
    let left = total.saturating_sub(done);
    if left == 0 || rate < 1.0 {
        return None;
    }
    let secs = left as f64 / rate;
    (secs < 100.0 * 3600.0).then(|| Duration::from_secs_f64(secs.ceil()))
}

/// The columns a file's bar and a set's line share, fixed width so a line
/// redrawn in place does not jitter: the fraction done, ` 42.0%`,
/// `13.4 MiB / 32.0 MiB`, `5.1 MiB/s` and `ETA 3s`.
struct Amounts {
    frac: f64,
    pct: String,
    sizes: String,
    rate: String,
    eta: String,
}

fn amounts(done: u64, total: u64, rate: f64) -> Amounts {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    Amounts {
        frac,
        pct: format!("{:5.1}%", frac * 100.0),
        sizes: format!("{:>9} / {}", human(done as f64), human(total as f64)),
        rate: format!("{:>11}", format!("{}/s", human(rate))),
        eta: format!("{:<9}", eta_text(eta_of(done, total, rate))),
    }
}

/// "ETA 42s", "ETA 3m05s", "ETA 2h03m"; "ETA --" without a rate.
pub fn eta_text(eta: Option<Duration>) -> String {
    let Some(d) = eta else {
        return "ETA --".to_owned();
    };
    let s = d.as_secs();
    match s {
        0..60 => format!("ETA {s}s"),
        60..3600 => format!("ETA {}m{:02}s", s / 60, s % 60),
        _ => format!("ETA {}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// "2 sources", or "waiting for sources" while none is sending (every
/// source gone, or none found yet).
fn sources_text(p: &Progress) -> String {
    match p.active_sources {
        0 => "waiting for sources".to_owned(),
        1 => "1 source".to_owned(),
        n => format!("{n} sources"),
    }
}

/// `[#####.....]  42.0%   13.4 MiB / 32.0 MiB    5.1 MiB/s  ETA 3m05s  2 sources`,
/// cut to fit `columns` (the last column is left free so the cursor never
/// wraps): first the bar narrows, then it goes, then the sizes, then the
/// rate. Fixed-width numbers, so a line redrawn in place does not jitter.
pub fn progress_line(p: &Progress, columns: usize) -> String {
    let Amounts {
        frac,
        pct,
        sizes,
        rate,
        eta,
    } = amounts(p.done_bytes, p.total_bytes, p.rate);
    let src = sources_text(p);
    let room = columns.saturating_sub(1);
    let tail = [pct.as_str(), &sizes, &rate, &eta, &src].join("  ");
    // "[" bar "] " tail
    let bar = room.saturating_sub(tail.chars().count() + 3).min(MAX_BAR);
    if bar >= MIN_BAR {
        let filled = ((frac * bar as f64).floor() as usize).min(bar);
        return format!(
            "[{}{}] {tail}",
            "#".repeat(filled),
            ".".repeat(bar - filled)
        );
    }
    let candidates = [
        tail,
        [pct.as_str(), &rate, &eta, &src].join("  "),
        [pct.as_str(), &eta, &src].join("  "),
        [pct.as_str(), eta.trim_end()].join("  "),
    ];
    for c in &candidates {
        if c.chars().count() <= room {
            return c.clone();
        }
    }
    pct.chars().take(room).collect()
}

/// The display of a set of files (`peer get photos/`, several names):
/// `12/300 files   45.0%  13.4 MiB / 32.0 MiB   5.1 MiB/s  ETA 3s  photos/a.jpg +3`,
/// cut to fit `columns`: the files being fetched go first, then the sizes,
/// then the rate.
pub fn batch_line(p: &BatchProgress, columns: usize) -> String {
    let Amounts {
        pct,
        sizes,
        rate,
        eta,
        ..
    } = amounts(p.done_bytes, p.total_bytes, p.rate);
    let files = format!(
        "{}/{} files",
        count(p.files_done as u64),
        count(p.files_total as u64)
    );
    let failed = if p.files_failed > 0 {
        format!(" ({} failed)", count(p.files_failed as u64))
    } else {
        String::new()
    };
    let current = match p.current.as_slice() {
        [] => String::new(),
        [(name, _, _)] => name.clone(),
        [(name, _, _), rest @ ..] => format!("{name} +{}", rest.len()),
    };
    let head = format!("{files}{failed}");
    let room = columns.saturating_sub(1);
    let candidates = [
        [head.as_str(), &pct, &sizes, &rate, &eta, &current].join("  "),
        [head.as_str(), &pct, &rate, &eta, &current].join("  "),
        [head.as_str(), &pct, &eta].join("  "),
        [head.as_str(), &pct].join("  "),
    ];
    for c in &candidates {
        if c.chars().count() <= room {
            return c.trim_end().to_owned();
        }
    }
    candidates[3].chars().take(room).collect()
}

/// One line of stderr redrawn in place, or nothing at all when stderr is
/// not a terminal (or when log lines would share the line and break it up).
/// Drawn from any thread (the hashing threads report progress themselves).
pub struct StatusLine {
    on: bool,
    drawn: AtomicBool,
}

impl StatusLine {
    /// A line drawn only if stderr is a terminal and `allowed`.
    pub fn new(allowed: bool) -> StatusLine {
        StatusLine {
            on: allowed && std::io::stderr().is_terminal(),
            drawn: AtomicBool::new(false),
        }
    }

    /// Whether anything is drawn at all.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Replaces the line with `text`, cut to the terminal's width.
    pub fn draw(&self, text: &str) {
        if self.on {
            let room = stderr_columns().saturating_sub(1);
            let text: String = text.chars().take(room).collect();
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r{text}\x1b[K");
            let _ = e.flush();
            self.drawn.store(true, Ordering::Relaxed);
        }
    }

    /// Replaces the line with a progress bar fitted to the terminal.
    pub fn draw_progress(&self, p: &Progress) {
        if self.on {
            self.draw(&progress_line(p, stderr_columns()));
        }
    }

    /// Erases the line, so what follows starts on a clean one.
    pub fn clear(&self) {
        if self.drawn.swap(false, Ordering::Relaxed) {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[K");
            let _ = e.flush();
        }
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The hashing counter of `peer share`:
/// "hashing: 12 of 2,001 files, 1.2 GiB of 12.0 GiB".
pub fn hashing_line(p: &HashProgress) -> String {
    format!(
        "hashing: {} of {} files, {} of {}",
        count(p.files_done),
        count(p.files_total),
        human(p.bytes_done as f64),
        human(p.bytes_total as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(done: u64, rate: f64, sources: usize) -> Progress {
        Progress {
            total_bytes: 1000,
            done_bytes: done,
            chunks_done: 0,
            chunks_total: 10,
            active_sources: sources,
            elapsed: Duration::ZERO,
            rate,
        }
    }

    #[test]
    fn a_set_line_says_files_amounts_and_current_and_fits() {
        let b = crate::peer::download::batch::BatchProgress {
            files_total: 300,
            files_done: 12,
            files_failed: 1,
            total_bytes: 2048 * 1024,
            done_bytes: 1024 * 1024,
            rate: 512.0 * 1024.0,
            elapsed: Duration::from_secs(2),
            current: vec![
                ("photos/a.jpg".into(), 0, 10),
                ("photos/b.jpg".into(), 0, 10),
            ],
        };
        let l = batch_line(&b, 120);
        assert_eq!(
            l,
            "12/300 files (1 failed)   50.0%    1.0 MiB / 2.0 MiB  512.0 KiB/s  ETA 2s     photos/a.jpg +1"
        );
        for cols in [10, 30, 50, 70, 90] {
            let l = batch_line(&b, cols);
            assert!(l.chars().count() < cols.max(1), "{cols}: {l:?}");
        }
    }

    #[test]
    fn bars_keep_their_width_and_never_round_up_to_full() {
        let (a, b) = (
            progress_line(&p(0, 2048.0, 2), 80),
            progress_line(&p(999, 2048.0, 2), 80),
        );
        assert!(a.starts_with("[......"), "{a}");
        assert!(a.contains("]   0.0%"), "{a}");
        // Not full until it is: 99.9% does not round up to a full bar.
        assert!(b.contains(".]  99.9%"), "{b}");
        assert_eq!(
            a.chars().count(),
            b.chars().count(),
            "the line keeps its width"
        );
        let full = progress_line(&p(1000, 0.0, 1), 80);
        assert!(
            full.starts_with("[###") && full.contains("#] 100.0%"),
            "{full}"
        );
        assert!(a.ends_with("2.0 KiB/s  ETA 1s     2 sources"), "{a}");
        let h = HashProgress {
            bytes_done: 1536,
            bytes_total: 1 << 20,
            files_done: 12,
            files_total: 2001,
        };
        assert_eq!(
            hashing_line(&h),
            "hashing: 12 of 2,001 files, 1.5 KiB of 1.0 MiB"
        );
    }

    /// Issue 14: in a 50-column terminal every update wrapped onto a new
    /// line.
    #[test]
    fn the_line_fits_the_terminal() {
        for cols in [200, 100, 80, 60, 50, 40, 30, 20, 10, 1, 0] {
            for q in [p(0, 0.0, 0), p(500, 123_456_789.0, 12), p(1000, 1.0, 1)] {
                let l = progress_line(&q, cols);
                assert!(
                    l.chars().count() < cols.max(1),
                    "{cols} columns: {l:?} ({} chars)",
                    l.chars().count()
                );
            }
        }
        assert!(progress_line(&p(500, 10.0, 1), 50).contains("ETA"));
        assert!(progress_line(&p(500, 10.0, 1), 100).starts_with('['));
    }

    /// Issue 14: no ETA; and with every source gone, the bar kept showing
    /// the last rate and "0 sources".
    #[test]
    fn eta_and_waiting_for_sources() {
        assert_eq!(eta(&p(500, 100.0, 1)), Some(Duration::from_secs(5)));
        assert_eq!(eta(&p(500, 0.0, 0)), None);
        assert_eq!(eta(&p(1000, 5.0, 1)), None);
        assert_eq!(eta_text(Some(Duration::from_secs(42))), "ETA 42s");
        assert_eq!(eta_text(Some(Duration::from_secs(185))), "ETA 3m05s");
        assert_eq!(eta_text(Some(Duration::from_secs(7380))), "ETA 2h03m");
        let gone = progress_line(&p(500, 0.0, 0), 100);
        assert!(gone.contains("0 B/s") && gone.contains("ETA --"), "{gone}");
        assert!(gone.ends_with("waiting for sources"), "{gone}");
        assert!(!gone.contains("0 sources"), "{gone}");
    }
}
