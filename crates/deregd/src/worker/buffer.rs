//! The claim-ahead buffer: about two seconds of calls claimed ahead, each claim a task beside
//! the loop, so calls go on while a claim waits behind another process's write lock. A claim
//! that fails (a lock held past the busy timeout, a full disk) is retried with a capped
//! backoff and reported; it never stops the daemon.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::job::Job;
use crate::store::{jobs, Store};

/// A failed claim is tried again after this, doubling...
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// ... up to this.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A failing claim is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What one claim task found.
pub(crate) struct Claimed {
    jobs: sqlx::Result<Vec<Job>>,
    /// When nothing was due: the earliest scheduled retry, unix ms.
    next_due: Option<i64>,
    /// When nothing was due: whether any job is still pending or running.
    open: bool,
}

/// What [`Buffer::take`] made of a finished claim.
pub(crate) enum Took {
    /// Jobs arrived (the first after none: `after_none`).
    Jobs { after_none: bool },
    /// Nothing was due.
    Nothing,
    /// The claim failed; the message says why.
    Failed(String),
}

#[derive(Default)]
pub(crate) struct Buffer {
    jobs: VecDeque<Job>,
    claiming: Option<JoinHandle<Claimed>>,
    /// No claim before this: the queue had nothing due, or a claim failed.
    rest_until: Option<Instant>,
    /// The last claim found nothing due and no job open at all.
    exhausted: bool,
    failures: u32,
    warned_at: Option<Instant>,
}

impl Buffer {
    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The buffered jobs' instances, in queue order (the pacer's candidates).
    pub(crate) fn instances(&self) -> impl Iterator<Item = &str> {
        self.jobs.iter().map(|j| j.instance_id.as_str())
    }

    pub(crate) fn remove(&mut self, index: usize) -> Option<Job> {
        self.jobs.remove(index)
    }

    /// Takes out the buffered jobs `which` picks.
    pub(crate) fn drain_where(&mut self, which: impl Fn(&Job) -> bool) -> Vec<Job> {
        let (out, keep): (Vec<Job>, Vec<Job>) = self.jobs.drain(..).partition(|j| which(j));
        self.jobs = keep.into();
        out
    }

    pub(crate) fn is_claiming(&self) -> bool {
        self.claiming.is_some()
    }

    /// True once the last claim found no job due and none open.
    pub(crate) fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    /// When the next claim may start (`None`: now).
    pub(crate) fn rest_until(&self) -> Option<Instant> {
        self.rest_until
    }

    /// Ends the rest after an empty claim (the idle wait is over, or work may have arrived).
    pub(crate) fn wake(&mut self) {
        if self.failures == 0 {
            self.rest_until = None;
        }
    }

    /// True when a claim may start now.
    pub(crate) fn may_claim(&self, now: Instant) -> bool {
        self.claiming.is_none() && self.rest_until.is_none_or(|at| now >= at)
    }

    /// Starts a claim of up to `want` jobs for `owner`, leased for `lease`, leaving the
    /// instances in `excluded` alone.
    pub(crate) fn start(
        &mut self,
        store: &Store,
        owner: &str,
        want: usize,
        lease: Duration,
        filter: jobs::ClaimFilter,
    ) {
        let (store, owner) = (store.clone(), owner.to_string());
        self.claiming = Some(tokio::spawn(async move {
            let lease_until = now_ms() + lease.as_millis() as i64;
            let jobs = jobs::claim(&store, &owner, want as i64, lease_until, &filter).await;
            let (mut next_due, mut open) = (None, true);
            if jobs.as_ref().is_ok_and(Vec::is_empty) {
                next_due = jobs::next_due(&store, &filter).await.ok().flatten();
                open = jobs::has_open_jobs(&store).await.unwrap_or(true);
            }
            Claimed {
                jobs,
                next_due,
                open,
            }
        }));
    }

    /// Resolves when the claim in progress ends (never, when there is none).
    pub(crate) async fn claim_done(&mut self) -> Claimed {
        match self.claiming.as_mut() {
            Some(task) => {
                let claimed = task.await.unwrap_or_else(|e| Claimed {
                    jobs: Err(sqlx::Error::Protocol(format!("claim task failed: {e}"))),
                    next_due: None,
                    open: true,
                });
                self.claiming = None;
                claimed
            }
            None => std::future::pending().await,
        }
    }

    /// The finished claim, if it finished, without waiting.
    pub(crate) async fn claim_if_done(&mut self) -> Option<Claimed> {
        if self.claiming.as_ref().is_some_and(JoinHandle::is_finished) {
            Some(self.claim_done().await)
        } else {
            None
        }
    }

    /// Adds a finished claim's jobs. After an empty claim the buffer rests until the next
    /// retry is due, at most `poll`; after a failed one, for a backoff.
    pub(crate) fn take(&mut self, claimed: Claimed, poll: Duration) -> Took {
        let now = Instant::now();
        match claimed.jobs {
            Ok(jobs) => {
                if self.failures > 0 {
                    tracing::info!(claim.failures = self.failures, "claims work again");
                }
                self.failures = 0;
                if jobs.is_empty() {
                    self.exhausted = !claimed.open;
                    let wait = match claimed.next_due {
                        // At least 1 ms, unless the poll itself is zero (the drain's last take).
                        Some(due) => {
                            let poll_ms = poll.as_millis() as i64;
                            Duration::from_millis(
                                (due - now_ms()).clamp(poll_ms.min(1), poll_ms) as u64
                            )
                        }
                        None => poll,
                    };
                    self.rest_until = Some(now + wait);
                    return Took::Nothing;
                }
                self.exhausted = false;
                self.rest_until = None;
                let after_none = self.jobs.is_empty();
                self.jobs.extend(jobs);
                Took::Jobs { after_none }
            }
            Err(e) => {
                self.failures += 1;
                let wait =
                    (FIRST_RETRY * 2u32.saturating_pow(self.failures.min(8) - 1)).min(MAX_RETRY);
                self.rest_until = Some(now + wait);
                if self.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    self.warned_at = Some(now);
                    tracing::warn!(error = %e, claim.failures = self.failures,
                        "could not claim jobs; retrying (calls go on from the buffer)");
                }
                Took::Failed(format!("jobs not claimed: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing_due(next_due: Option<i64>) -> Claimed {
        Claimed {
            jobs: Ok(Vec::new()),
            next_due,
            open: true,
        }
    }

    #[tokio::test]
    async fn an_empty_claim_taken_with_a_zero_poll_does_not_panic() {
        // The drain takes its last claim with a zero poll; a retry due later must not panic.
        let mut buffer = Buffer::default();
        let took = buffer.take(nothing_due(Some(now_ms() + 5_000)), Duration::ZERO);
        assert!(matches!(took, Took::Nothing));
        assert!(buffer.rest_until.is_some_and(|at| at <= Instant::now()));
    }

    #[tokio::test]
    async fn an_empty_claim_rests_until_the_next_retry_at_most_a_poll() {
        let poll = Duration::from_millis(500);
        let mut buffer = Buffer::default();
        buffer.take(nothing_due(Some(now_ms() + 60_000)), poll);
        let until = buffer.rest_until.unwrap();
        assert!(until <= Instant::now() + poll);
        let before = Instant::now();
        buffer.take(nothing_due(Some(now_ms() - 1_000)), poll);
        let until = buffer.rest_until.unwrap();
        assert!(until >= before + Duration::from_millis(1));
    }
}
