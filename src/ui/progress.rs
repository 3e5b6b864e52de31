//! Progress shown while a command works: the download bar (`peer get`, and
//! each download in the prompt's `status`) and the hashing counter of
//! `peer share`. Both redraw one stderr line in place, and only on a
//! terminal: a pipe or a log file gets no carriage returns.
//!
//! Owns: the bar's layout and when to draw it. Calls `peer::download`
//! (the `Progress` type) and [`super::format`].

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use super::format::human;
use crate::peer::download::Progress;

/// `[#####.....]  42.0%   13.4 MiB / 32.0 MiB    5.1 MiB/s  2 sources` with
/// a bar `width` characters wide. Fixed-width numbers, so a line redrawn in
/// place does not jitter.
pub fn progress_line(p: &Progress, width: usize) -> String {
    let frac = if p.total_bytes == 0 {
        1.0
    } else {
        (p.done_bytes as f64 / p.total_bytes as f64).clamp(0.0, 1.0)
    };
    let filled = ((frac * width as f64).floor() as usize).min(width);
    format!(
        "[{}{}] {:5.1}%  {:>9} / {}  {:>11}  {} source{}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        frac * 100.0,
        human(p.done_bytes as f64),
        human(p.total_bytes as f64),
        format!("{}/s", human(p.rate)),
        p.active_sources,
        if p.active_sources == 1 { "" } else { "s" }
    )
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

    /// Replaces the line with `text`.
    pub fn draw(&self, text: &str) {
        if self.on {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r{text}\x1b[K");
            let _ = e.flush();
            self.drawn.store(true, Ordering::Relaxed);
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

/// Characters in the progress bar of `peer get`: the whole line then fits
/// an 80-column terminal, so redrawing it in place never wraps.
pub const GET_BAR_WIDTH: usize = 20;

/// The hashing counter of `peer share`: "hashing: 1.2 GiB of 12.0 GiB".
pub fn hashing_line(done: u64, total: u64) -> String {
    format!("hashing: {} of {}", human(done as f64), human(total as f64))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bars_keep_their_width_and_never_round_up_to_full() {
        let p = |done: u64| Progress {
            total_bytes: 1000,
            done_bytes: done,
            chunks_done: 0,
            chunks_total: 10,
            active_sources: 2,
            elapsed: Duration::ZERO,
            rate: 2048.0,
        };
        let (a, b) = (progress_line(&p(0), 10), progress_line(&p(999), 10));
        assert!(a.starts_with("[..........]   0.0%"), "{a}");
        // Not full until it is: 99.9% does not round up to a full bar.
        assert!(b.starts_with("[#########.]  99.9%"), "{b}");
        assert_eq!(a.len(), b.len(), "the line keeps its width");
        assert!(progress_line(&p(1000), 10).starts_with("[##########] 100.0%"));
        assert!(a.ends_with("2.0 KiB/s  2 sources"), "{a}");
        assert_eq!(hashing_line(1536, 1 << 20), "hashing: 1.5 KiB of 1.0 MiB");
    }
}
