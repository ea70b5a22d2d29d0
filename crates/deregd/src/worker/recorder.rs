//! The recorder: the one task that writes outcomes, in batches (one short `BEGIN IMMEDIATE`
//! each, never across a call). A write that fails is retried for as long as the process lives,
//! with a capped backoff; meanwhile the calls stay counted as unrecorded, so dispatch stops at
//! `limits.max_unrecorded` and waits. Invariant: a call leaves [`Unrecorded`] only once its
//! outcome is committed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::stats::Shared;
use crate::store::jobs::{self, Completion};
use crate::store::Store;

/// How long outcomes are gathered before they are written in one transaction: at 490 calls/s
/// a batch of ~50 jobs. Larger batches cost less per call; the calls waiting on a batch count
/// as unrecorded, and a batch is written at once when dispatch has no place left.
pub(crate) const GATHER: Duration = Duration::from_millis(100);

/// Most outcomes written in one transaction.
const MAX_BATCH: usize = 512;

/// Retry waits of a failed write: from this, doubling...
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// ... up to this.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A failing write is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The calls whose outcome is not committed yet, shared by the dispatcher (which adds one per
/// call) and the recorder (which takes them off as their batch commits).
#[derive(Debug, Default)]
pub(crate) struct Unrecorded {
    count: AtomicUsize,
    /// Set while dispatch waits for a place: the recorder then writes what it has at once.
    waiting: AtomicBool,
    /// Wakes a recorder gathering a batch when dispatch begins to wait.
    nudge: Notify,
    freed: Notify,
}

impl Unrecorded {
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Dispatch waits on a place (or stops waiting).
    pub(crate) fn set_waiting(&self, waiting: bool) {
        if waiting && !self.waiting.swap(true, Ordering::Relaxed) {
            self.nudge.notify_one();
        } else if !waiting {
            self.waiting.store(false, Ordering::Relaxed);
        }
    }

    fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    fn release(&self, calls: usize) {
        if calls > 0 {
            self.count.fetch_sub(calls, Ordering::Relaxed);
            self.freed.notify_one();
        }
    }

    /// Resolves when places are freed.
    pub(crate) async fn freed(&self) {
        self.freed.notified().await
    }
}

/// One job's row change on its way to the database.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) completion: Completion,
    /// A call was made for it (it counts in [`Unrecorded`]).
    pub(crate) call: bool,
}

/// The running recorder: its queue and its task.
pub(crate) struct Recorder {
    pub(crate) tx: mpsc::UnboundedSender<Done>,
    pub(crate) task: JoinHandle<()>,
}

/// Starts the recorder for `owner`'s leases. `give_up` ends it at once, whatever is not
/// written yet (the stop's deadline passed: those jobs are rescued at the next start).
pub(crate) fn spawn(
    store: Store,
    owner: String,
    shared: Shared,
    unrecorded: Arc<Unrecorded>,
    gather: Duration,
    give_up: CancellationToken,
) -> Recorder {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        tokio::select! {
            () = record(&store, &owner, &shared, rx, &unrecorded, gather) => {}
            () = give_up.cancelled() => {}
        }
    });
    Recorder { tx, task }
}

/// Writes batches until the dispatcher drops its sender and all is written.
async fn record(
    store: &Store,
    owner: &str,
    shared: &Shared,
    mut rx: mpsc::UnboundedReceiver<Done>,
    unrecorded: &Unrecorded,
    gather: Duration,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        let mut calls = first.call as usize;
        batch.push(first.completion);
        let gather_until = tokio::time::Instant::now() + gather;
        while batch.len() < MAX_BATCH && !unrecorded.waiting() {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(done) => {
                        calls += done.call as usize;
                        batch.push(done.completion);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(gather_until) => break,
                _ = unrecorded.nudge.notified() => {}
            }
        }
        write(store, owner, shared, &batch).await;
        batch.clear();
        // The outcomes are committed: their calls no longer count as unrecorded.
        unrecorded.release(calls);
    }
}

/// Writes one batch, retrying until it is committed.
async fn write(store: &Store, owner: &str, shared: &Shared, batch: &[Completion]) {
    let mut wait = FIRST_RETRY;
    let mut warned: Option<tokio::time::Instant> = None;
    let mut failures = 0u64;
    loop {
        match jobs::complete(store, owner, batch).await {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(
                        jobs = batch.len(),
                        write.failures = failures,
                        "outcomes recorded again"
                    );
                    shared.update(|s| s.recording = None);
                }
                return;
            }
            Err(e) => {
                failures += 1;
                let problem = format!("outcomes not recorded: {e}");
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warned = Some(tokio::time::Instant::now());
                    tracing::warn!(error = %e, jobs = batch.len(), write.failures = failures,
                        "outcomes not recorded; retrying (dispatch waits at limits.max_unrecorded)");
                }
                shared.update(|s| s.recording = Some(problem));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::job::Status;

    /// One claimed job's success handed to a recorder that gathers for `gather`.
    struct Recording {
        _dir: tempfile::TempDir,
        store: Store,
        shared: Shared,
        unrecorded: Arc<Unrecorded>,
        recorder: Recorder,
    }

    async fn recording(gather: Duration, setup: &[&str]) -> Recording {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("jobs.db")).await.unwrap();
        crate::store::submit::submit(&store, &[("post-cn-0pp12gl0001", "GID_test@@@d1")], "r")
            .await
            .unwrap();
        let jobs = jobs::claim(&store, "owner", 10, now_ms() + 60_000, &Default::default())
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        for sql in setup {
            sqlx::query(sql).execute(&store.writer).await.unwrap();
        }
        let settings = crate::config::Settings::load_from(None, &Default::default()).unwrap();
        let shared = Shared::new(&settings.limits);
        let unrecorded = Arc::new(Unrecorded::default());
        unrecorded.add();
        let recorder = spawn(
            store.clone(),
            "owner".into(),
            shared.clone(),
            unrecorded.clone(),
            gather,
            CancellationToken::new(),
        );
        recorder
            .tx
            .send(Done {
                completion: Completion::new(&jobs[0], Status::Succeeded),
                call: true,
            })
            .unwrap();
        Recording {
            _dir: dir,
            store,
            shared,
            unrecorded,
            recorder,
        }
    }

    async fn status(store: &Store) -> String {
        sqlx::query_scalar("SELECT status FROM jobs")
            .fetch_one(&store.reader)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_waits_for_the_gather_while_dispatch_has_places_left() {
        let r = recording(Duration::from_secs(3600), &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status(&r.store).await, "running", "still gathering");
        assert_eq!(r.unrecorded.count(), 1);
        // The dispatcher stops: what was gathered is written.
        drop(r.recorder.tx);
        r.recorder.task.await.unwrap();
        assert_eq!(status(&r.store).await, "succeeded");
        assert_eq!(r.unrecorded.count(), 0);
    }

    #[tokio::test]
    async fn a_batch_is_written_at_once_when_dispatch_waits_for_a_place() {
        let r = recording(Duration::from_secs(3600), &[]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Without the early write this would wait out the hour.
        r.unrecorded.set_waiting(true);
        tokio::time::timeout(Duration::from_secs(30), async {
            while r.unrecorded.count() > 0 {
                r.unrecorded.freed().await;
            }
        })
        .await
        .expect("written without waiting out the gather");
        assert_eq!(status(&r.store).await, "succeeded");
    }

    #[tokio::test]
    async fn a_write_that_fails_is_retried_until_it_goes_through_and_says_why_meanwhile() {
        let r = recording(
            Duration::from_millis(10),
            &["CREATE TRIGGER refuse BEFORE UPDATE ON jobs BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"],
        )
        .await;
        // Retried for well past the old 20 tries (about 48 s of them at the old pace).
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(status(&r.store).await, "running");
        let problem = r
            .shared
            .snapshot()
            .recording
            .expect("the failure is reported");
        assert!(problem.starts_with("outcomes not recorded: "), "{problem}");
        assert!(problem.contains("disk on fire"), "{problem}");
        assert_eq!(r.unrecorded.count(), 1, "still unrecorded");
        sqlx::query("DROP TRIGGER refuse")
            .execute(&r.store.writer)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            while r.unrecorded.count() > 0 {
                r.unrecorded.freed().await;
            }
        })
        .await
        .expect("written once the fault cleared");
        assert_eq!(status(&r.store).await, "succeeded");
        assert_eq!(r.shared.snapshot().recording, None);
    }
}
