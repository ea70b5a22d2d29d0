//! The dispatch worker: [`dispatch`] (the run loop: send / wait / pace / stop), [`buffer`] (the
//! claim-ahead buffer), [`pause`] (account, endpoint and instance pauses, with probing),
//! [`recorder`] (the one writer of outcomes), [`heartbeat`] (the live state in the database,
//! rescues, file checks) and [`stats`] (what they share with the daemon). Shutdown is a token
//! passed in. Invariants: no transaction is held across a call; a call goes out only while
//! its outcome can be recorded, and at most `limits.max_unrecorded` calls are unrecorded.

mod abort;
mod buffer;
mod dispatch;
mod heartbeat;
mod pause;
mod recorder;
mod runs;
mod stats;
mod windows;

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::config::Settings;
use crate::store::{dispatcher, jobs, Store};

pub use heartbeat::hostname;
pub use pause::{PauseReason, CREDENTIALS_EXPIRED};
pub use stats::{DispatchStats, Shared};

/// How the loop should end.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Exit once nothing is pending, running or awaiting a retry.
    pub until_empty: bool,
}

/// Time allowed, after the drain's deadline, for the last writes (releasing the leases,
/// clearing the heartbeat) before the process gives up on them.
const LAST_WRITES: Duration = Duration::from_secs(3);

/// Runs the dispatcher until `shutdown` (or until empty). The caller holds the dispatch lock.
pub async fn run(
    store: Store,
    client: ApiClient,
    settings: Settings,
    shutdown: CancellationToken,
    options: RunOptions,
    shared: Shared,
) -> anyhow::Result<()> {
    let owner = format!(
        "{}:{}:{:08x}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    );
    rescue_at_start(&store, &shutdown).await;
    // The runs' pauses and abort shares before the first call; the heartbeat follows them.
    match crate::store::run_records::controls(&store).await {
        Ok(runs) => shared.set_runs(runs),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the runs' controls yet; the heartbeat retries")
        }
    }
    let unrecorded = std::sync::Arc::new(recorder::Unrecorded::default());
    let give_up = CancellationToken::new();
    let mut recorder = recorder::spawn(
        store.clone(),
        owner.clone(),
        shared.clone(),
        unrecorded.clone(),
        recorder::GATHER,
        give_up.clone(),
    );
    let (fatal_tx, fatal_rx) = watch::channel(None);
    let heartbeat = heartbeat::spawn(store.clone(), owner.clone(), shared.clone(), fatal_tx);
    let mut dispatcher = dispatch::Dispatcher::new(
        store.clone(),
        client,
        settings.clone(),
        owner.clone(),
        unrecorded.clone(),
        recorder.tx.clone(),
        fatal_rx,
        shared,
    );
    drop(recorder.tx);
    let result = dispatcher.run(&shutdown, options, &mut recorder.task).await;
    // Every wait from here on is bounded: the calls in flight get the grace and the request
    // timeout, the last writes a moment more; what is not written by then is rescued (and
    // its call sent again, ending not_found) at the next start, as after a second signal.
    let deadline =
        tokio::time::Instant::now() + settings.worker.shutdown_grace + settings.api.request_timeout;
    dispatcher.drain(deadline).await;
    drop(dispatcher);
    let recorded = tokio::time::timeout_at(deadline, &mut recorder.task)
        .await
        .is_ok();
    if !recorded {
        give_up.cancel();
        tracing::error!(calls.unrecorded = unrecorded.count(),
            "stopped before every outcome could be recorded; those jobs stay leased and are rescued at the next start");
    }
    // The heartbeat may be waiting on a write that cannot go through: it is not waited for.
    heartbeat.abort();
    let last = tokio::time::Instant::now().max(deadline) + LAST_WRITES;
    match tokio::time::timeout_at(last, jobs::release_all(&store, &owner)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(released)) => tracing::info!(
            jobs.released = released,
            "returned unfinished jobs to pending"
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not return unfinished jobs to pending; the next start does")
        }
        Err(_) => {
            tracing::warn!("no time left to return unfinished jobs to pending; the next start does")
        }
    }
    let _ = tokio::time::timeout_at(last, dispatcher::clear(&store, &owner)).await;
    if let Ok(Err(e)) = tokio::time::timeout_at(last, store.checkpoint()).await {
        tracing::warn!(error = %e, "could not checkpoint the database's WAL");
    }
    match (result, recorded) {
        (Err(e), _) => Err(e),
        (Ok(()), false) => Err(anyhow::anyhow!(
            "stopped with outcomes unrecorded: the database did not take them before the stop deadline"
        )),
        (Ok(()), true) => Ok(()),
    }
}

/// Returns every job left `running` by a previous process to pending, retrying while the
/// database is busy (another process holding the write lock must not keep the daemon from
/// starting).
async fn rescue_at_start(store: &Store, shutdown: &CancellationToken) {
    let mut wait = Duration::from_millis(250);
    loop {
        match jobs::rescue_all(store).await {
            Ok(0) => return,
            Ok(rescued) => {
                tracing::warn!(
                    jobs.rescued = rescued,
                    "returned jobs left running by a previous process to pending"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not rescue the jobs of a previous process; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
