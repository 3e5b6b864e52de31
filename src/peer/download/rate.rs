//! The download rate shown in progress displays.
//!
//! Owns: [`RateMeter`], bytes per second over a sliding window of a few
//! seconds. Pure data apart from reading the clock; calls nothing else.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(3);

/// Bytes per second over the last [`WINDOW`].
pub(super) struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    pub(super) fn new() -> RateMeter {
        RateMeter {
            samples: VecDeque::new(),
        }
    }

    pub(super) fn add(&mut self, bytes: u64) {
        self.add_at(Instant::now(), bytes);
    }

    fn add_at(&mut self, now: Instant, bytes: u64) {
        self.samples.push_back((now, bytes));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The rate, for a download running `elapsed` (a young download divides
    /// by its age, not by the whole window).
    pub(super) fn rate(&self, elapsed: Duration) -> f64 {
        self.rate_at(Instant::now(), elapsed)
    }

    /// Only the bytes of the last [`WINDOW`] before `now` count, so the
    /// rate falls to zero within the window once nothing arrives (every
    /// source gone) instead of showing the last rate for ever.
    fn rate_at(&self, now: Instant, elapsed: Duration) -> f64 {
        let window = elapsed.min(WINDOW).as_secs_f64().max(0.05);
        let recent: u64 = self
            .samples
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= WINDOW)
            .map(|(_, b)| *b)
            .sum();
        recent as f64 / window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_divides_by_the_shorter_of_age_and_window() {
        let mut m = RateMeter::new();
        m.add(1000);
        m.add(500);
        assert_eq!(m.rate(Duration::from_secs(1)), 1500.0);
        assert_eq!(m.rate(Duration::from_secs(60)), 500.0);
        assert_eq!(RateMeter::new().rate(Duration::ZERO), 0.0);
    }

    #[test]
    fn the_rate_falls_when_nothing_arrives() {
        let t0 = Instant::now();
        let mut m = RateMeter::new();
        m.add_at(t0, 3000);
        let long = Duration::from_secs(60);
        assert_eq!(m.rate_at(t0 + Duration::from_secs(1), long), 1000.0);
        assert_eq!(m.rate_at(t0 + WINDOW + Duration::from_millis(1), long), 0.0);
    }
}
