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
        let now = Instant::now();
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
        let window = elapsed.min(WINDOW).as_secs_f64().max(0.05);
        self.samples.iter().map(|(_, b)| *b).sum::<u64>() as f64 / window
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
}
