//! The send window: the calls written to their sockets within the last second, and those with
//! a place not written yet. One more call is allowed only while fewer than the limit are
//! within a second of now, so no sliding second ever holds more than the limit by the time
//! each request left. A call is stamped when hyper writes its request ([`SendTicket`]); a
//! ticket dropped unwritten takes its call out again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the send window looks again at a full second whose oldest call has its place but
/// has not reached its socket yet (a connection still being set up). Written, that call would
/// hold its place for a second more; only its being given up (a connect error) frees it sooner,
/// and that is what the window looks for.
pub(crate) const UNWRITTEN_POLL: Duration = Duration::from_millis(10);

/// When one call was written to its socket, shared between the send window and the call's
/// [`SendTicket`]: nanoseconds since the pacer's origin plus one; zero until then, all ones when
/// the call was given up before it was written.
#[derive(Debug, Clone, Default)]
pub(crate) struct SendMark(Arc<AtomicU64>);

/// What a [`SendMark`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Pending,
    At(Duration),
    Unsent,
}

impl SendMark {
    const PENDING: u64 = 0;
    const UNSENT: u64 = u64::MAX;

    /// A call written at `at` (since the origin).
    #[cfg(test)]
    pub(crate) fn at(at: Duration) -> SendMark {
        let mark = SendMark::default();
        mark.set(at);
        mark
    }

    /// The latest write wins: a request retried on a fresh connection counts when it left.
    pub(crate) fn set(&self, at: Duration) {
        let stamp = (at.as_nanos() + 1).min(u128::from(Self::UNSENT - 1)) as u64;
        self.0.store(stamp, Ordering::Relaxed);
    }

    fn give_up(&self) {
        let _ = self.0.compare_exchange(
            Self::PENDING,
            Self::UNSENT,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn read(&self) -> Sent {
        match self.0.load(Ordering::Relaxed) {
            Self::PENDING => Sent::Pending,
            Self::UNSENT => Sent::Unsent,
            nanos => Sent::At(Duration::from_nanos(nanos - 1)),
        }
    }
}

/// One call's place in the send windows of its budgets, from [`super::Pacer::acquire`]. The HTTP client calls
/// [`SendTicket::writing`] as the request goes to its socket; a ticket dropped before that
/// tells the window the call never left.
#[derive(Debug)]
#[must_use = "a ticket dropped unused takes its call out of the send window"]
pub struct SendTicket {
    origin: Instant,
    mark: SendMark,
}

impl SendTicket {
    /// A ticket outside any pacer (a test's one-off call): its mark goes nowhere.
    #[cfg(test)]
    pub(crate) fn unpaced() -> SendTicket {
        SendTicket {
            origin: Instant::now(),
            mark: SendMark::default(),
        }
    }

    /// The request is being written to its socket now.
    pub fn writing(&self) {
        self.mark.set(self.origin.elapsed());
    }

    /// What the window will see of this ticket, kept after the ticket is handed on.
    #[cfg(test)]
    pub(crate) fn watch(&self) -> SendWatch {
        SendWatch {
            origin: self.origin,
            mark: self.mark.clone(),
        }
    }
}

/// A test's view of a [`SendTicket`] it has handed on.
#[cfg(test)]
pub(crate) struct SendWatch {
    origin: Instant,
    mark: SendMark,
}

#[cfg(test)]
impl SendWatch {
    /// When the request was written, if it was.
    pub(crate) fn written_at(&self) -> Option<Instant> {
        match self.mark.read() {
            Sent::At(at) => Some(self.origin + at),
            Sent::Pending | Sent::Unsent => None,
        }
    }

    /// The ticket was dropped before its request was written.
    pub(crate) fn given_up(&self) -> bool {
        self.mark.read() == Sent::Unsent
    }
}

impl Drop for SendTicket {
    fn drop(&mut self) {
        self.mark.give_up();
    }
}

/// The calls written within the last second, and those with a permit not written yet: one more
/// is allowed only while fewer than `limit` of them are within a second of now, so no sliding
/// second ever holds more than `limit` writes. Calls are kept in permit order; one written out
/// of that order stays counted until the ones before it age out (it only ever counts more).
#[derive(Debug)]
pub(crate) struct SendWindow {
    limit: usize,
    /// Oldest permit first.
    sends: VecDeque<SendMark>,
}

impl SendWindow {
    pub(crate) fn new(limit: usize) -> SendWindow {
        SendWindow {
            limit: limit.max(1),
            sends: VecDeque::with_capacity(limit.max(1)),
        }
    }

    /// How long from `now` until one more send fits, or `None` when it fits now.
    pub(crate) fn wait(&mut self, now: Duration) -> Option<Duration> {
        while let Some(oldest) = self.sends.front() {
            match oldest.read() {
                Sent::Unsent => {}
                Sent::At(at) if at + Duration::from_secs(1) <= now => {}
                Sent::At(_) | Sent::Pending => break,
            }
            self.sends.pop_front();
        }
        if self.sends.len() < self.limit {
            return None;
        }
        match self.sends.front().map(SendMark::read) {
            Some(Sent::At(at)) => Some(at + Duration::from_secs(1) - now),
            _ => Some(UNWRITTEN_POLL),
        }
    }

    pub(crate) fn record(&mut self, mark: SendMark) {
        self.sends.push_back(mark);
    }

    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }
}

impl SendTicket {
    /// Stamps the ticket's call as written at `at` (a fake clock's time).
    #[cfg(test)]
    pub(crate) fn mark_written_at(&self, at: Duration) {
        self.mark.set(at);
    }

    /// A ticket for `mark`, stamped relative to `origin`.
    pub(crate) fn new(origin: Instant, mark: SendMark) -> SendTicket {
        SendTicket { origin, mark }
    }
}

impl SendWindow {
    /// Calls counted now (written within the last second, or not written yet).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_window_waits_for_the_oldest_send_to_age_out() {
        let ms = Duration::from_millis;
        let mut w = SendWindow::new(3);
        for t in [0, 10, 20] {
            assert_eq!(w.wait(ms(t)), None);
            w.record(SendMark::at(ms(t)));
        }
        assert_eq!(w.wait(ms(500)), Some(ms(500)));
        assert_eq!(w.wait(ms(1000)), None);
        w.record(SendMark::at(ms(1000)));
        assert_eq!(w.wait(ms(1000)), Some(ms(10)));
        w.set_limit(5);
        assert_eq!(w.wait(ms(1000)), None);
        w.set_limit(1);
        assert_eq!(
            w.wait(ms(1500)),
            Some(ms(500)),
            "a lower limit waits longer"
        );
    }

    #[test]
    fn a_call_counts_from_its_permit_until_a_second_after_it_was_written() {
        let ms = Duration::from_millis;
        let origin = Instant::now();
        let mut w = SendWindow::new(1);
        let ticket = SendTicket {
            origin,
            mark: SendMark::default(),
        };
        w.record(ticket.mark.clone());
        // Not written yet (a connection being set up): it holds its place however long.
        assert_eq!(w.wait(ms(1500)), Some(UNWRITTEN_POLL));
        assert_eq!(ticket.watch().written_at(), None);
        // Written 900 ms after the origin: free a second after that, not after the permit.
        ticket.mark.set(ms(900));
        assert_eq!(ticket.watch().written_at(), Some(origin + ms(900)));
        assert_eq!(w.wait(ms(1500)), Some(ms(400)));
        assert_eq!(w.wait(ms(1900)), None);
        // Dropping a written ticket changes nothing.
        drop(ticket);
        w.record(SendMark::at(ms(1900)));
        assert_eq!(w.wait(ms(2000)), Some(ms(900)));
    }

    #[test]
    fn a_call_given_up_before_it_was_written_leaves_the_window() {
        let ms = Duration::from_millis;
        let mut w = SendWindow::new(2);
        let given_up = SendTicket::unpaced();
        w.record(given_up.mark.clone());
        w.record(SendMark::at(ms(10)));
        assert_eq!(w.wait(ms(20)), Some(UNWRITTEN_POLL));
        drop(given_up);
        assert_eq!(w.wait(ms(20)), None, "the never-sent call no longer counts");
    }

    #[test]
    fn a_call_written_out_of_order_still_counts_until_the_ones_before_it_age_out() {
        let ms = Duration::from_millis;
        let mut w = SendWindow::new(2);
        let first = SendMark::default();
        w.record(first.clone());
        w.record(SendMark::at(ms(5))); // the second permit's call left first
        first.set(ms(40));
        assert_eq!(
            w.wait(ms(1010)),
            Some(ms(30)),
            "both count until the first ages out"
        );
        assert_eq!(w.wait(ms(1040)), None);
    }
}
