//! Sliding one-second windows over arrival stamps, and the recorded offsets tests read.
//!
//! A window keeps the events of the last two seconds sorted and the largest count any sliding
//! second held; events recorded a little out of order are counted where they happened.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Upper bound on recorded arrival offsets kept for tests (accepted and successful calls each).
pub(crate) const MAX_RECORDED_OFFSETS: usize = 1_000_000;

/// Events in the last second, plus the largest count any sliding one-second window held.
/// Events may be recorded a little out of order (requests on two connections are handled in
/// whatever order the emulator's threads get to them, but stamped when they arrived): they are
/// kept sorted, and an event recorded late is counted in every window that holds it.
#[derive(Debug, Default, Clone)]
pub(crate) struct SlidingWindow {
    events: VecDeque<Instant>,
    max: u64,
}

/// How far out of order an event may be recorded and still be counted exactly.
const REORDER_SLACK: Duration = Duration::from_secs(1);

impl SlidingWindow {
    /// Events in `[end - 1 s, end]`, excluding those exactly 1 s old, of the first `upto`.
    fn window_ending_at(&self, end: Instant, upto: usize) -> u64 {
        let start = self
            .events
            .partition_point(|&e| e + Duration::from_secs(1) <= end);
        upto.saturating_sub(start) as u64
    }

    /// Events within the second before `now` (exclusive of events exactly 1 s old).
    pub(crate) fn count(&self, now: Instant) -> u64 {
        let upto = self.events.partition_point(|&e| e <= now);
        self.window_ending_at(now, upto)
    }

    /// Records one event at `at` and updates the maximum: every window ending at an event from
    /// `at` on now holds one more.
    pub(crate) fn record(&mut self, at: Instant) {
        let pos = self.events.partition_point(|&e| e <= at);
        self.events.insert(pos, at);
        for i in pos..self.events.len() {
            let count = self.window_ending_at(self.events[i], i + 1);
            self.max = self.max.max(count);
        }
        let latest = *self.events.back().expect("just inserted");
        while let Some(&front) = self.events.front() {
            if front + Duration::from_secs(1) + REORDER_SLACK <= latest {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// Largest number of events seen in any sliding one-second window so far.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

/// Adds `offset` to a recorded list (up to [`MAX_RECORDED_OFFSETS`]), kept sorted (requests
/// are handled a little out of their arrival order).
pub(crate) fn record_offset(offsets: &mut Vec<Duration>, offset: Duration) {
    if offsets.len() < MAX_RECORDED_OFFSETS {
        let pos = offsets.partition_point(|&o| o <= offset);
        offsets.insert(pos, offset);
    }
}

/// Largest number of `offsets` falling in any half-open window `[t, t + window)`.
/// `offsets` must be sorted ascending (as recorded).
pub fn max_in_window(offsets: &[Duration], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, &t) in offsets.iter().enumerate() {
        while t.saturating_sub(offsets[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_tracks_the_busiest_second() {
        let mut w = SlidingWindow::default();
        let t0 = Instant::now();
        for i in 0..10 {
            w.record(t0 + Duration::from_millis(i * 100));
        }
        assert_eq!(w.max(), 10);
        w.record(t0 + Duration::from_millis(1000));
        assert_eq!(w.max(), 10);
        assert_eq!(w.count(t0 + Duration::from_millis(1950)), 1);
    }

    #[test]
    fn sliding_window_counts_events_recorded_out_of_order_where_they_happened() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 0, 10, ..., 990 ms and 1005 ms: the busiest second holds 100 (10 ms .. 1005 ms).
        let mut times: Vec<u64> = (0..100).map(|i| i * 10).collect();
        times.push(1005);
        let mut sorted = SlidingWindow::default();
        for &t in &times {
            sorted.record(at(t));
        }
        // The same events, each pair recorded in reverse (handled out of arrival order).
        let mut shuffled = SlidingWindow::default();
        for pair in times.chunks(2) {
            for &t in pair.iter().rev() {
                shuffled.record(at(t));
            }
        }
        assert_eq!(sorted.max(), 100);
        assert_eq!(shuffled.max(), 100);
        // A late event clamped to the latest time would have made one window hold 101.
        let mut late = SlidingWindow::default();
        for &t in &times[1..] {
            late.record(at(t));
        }
        late.record(at(0));
        assert_eq!(
            late.max(),
            100,
            "the 0 ms event is not in the 1005 ms window"
        );
        assert_eq!(late.count(at(999)), 100);
        assert_eq!(late.count(at(1005)), 100);
    }

    #[test]
    fn max_in_window_counts_half_open_windows() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            max_in_window(&ms(&[0, 500, 999, 1000, 1500]), Duration::from_secs(1)),
            3
        );
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    }
}
