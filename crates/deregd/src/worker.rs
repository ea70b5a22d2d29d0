//! The dispatch loop: claim -> validate -> wait for an in-flight slot and a pacing permit ->
//! call -> classify -> record. One dispatcher task owns the pacing and pause state; each call is
//! its own task; one completer task writes outcomes in batches (one short `BEGIN IMMEDIATE` per
//! batch, never across a call). Shutdown is a token passed in; every idle wait also watches it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::db::Db;
use crate::dispatcher::{self, Heartbeat};
use crate::job::{Job, Status};
use crate::limiter::{Pacer, SendTicket};
use crate::outcome::{classify, Classified, Outcome, PauseScope};
use crate::queue::{self, Completion};
use crate::retry;

/// How the loop should end.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Exit once nothing is pending, running or awaiting a retry.
    pub until_empty: bool,
}

/// Why dispatch is paused.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PauseReason {
    pub code: String,
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for PauseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.code, self.message, self.hint)
    }
}

/// Live counters, shared with status lines and metrics.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DispatchStats {
    /// Calls answered or failed in transport, by code (`OK` for success; codes outside the
    /// known set as `other`).
    pub calls_by_code: BTreeMap<String, u64>,
    /// Billed (2xx) calls per instance.
    pub billed_by_instance: BTreeMap<String, u64>,
    pub calls: u64,
    pub billed: u64,
    pub retries_scheduled: u64,
    pub rejected: u64,
    pub in_flight: u64,
    /// Pacing permits taken from the account's budget. Each becomes a call, but for one in
    /// hand when a pause begins or dispatch stops.
    pub permits: u64,
    /// Current pacing rate and ceiling, calls per second.
    pub rate: f64,
    pub ceiling: f64,
    /// Account-wide pause, if any.
    pub paused: Option<PauseReason>,
    /// Paused instances and why.
    pub paused_instances: BTreeMap<String, PauseReason>,
    /// Unix ms of the last turn of the dispatch loop (watchdog).
    pub last_progress_ms: i64,
}

/// Handles the daemon shares with the loop.
#[derive(Clone, Default)]
pub struct Shared {
    pub stats: Arc<Mutex<DispatchStats>>,
    /// Notified to re-read limits (SIGHUP); the loop also probes paused dispatch at once.
    pub reload: Arc<tokio::sync::Notify>,
    /// New limits for the next reload.
    pub new_limits: Arc<Mutex<Option<crate::config::LimitsSettings>>>,
}

struct CallResult {
    job: Job,
    sent_at: Instant,
    sent_ms: i64,
    classified: Classified,
    /// The call's place under `limits.max_unrecorded`, held until the outcome is committed.
    unrecorded: OwnedSemaphorePermit,
}

/// An outcome on its way to the database, with the call's place under
/// `limits.max_unrecorded`: it is freed only once the outcome is committed, which bounds the
/// calls a crash could leave sent but unrecorded.
struct Done {
    completion: Completion,
    unrecorded: Option<OwnedSemaphorePermit>,
}

/// Runs the dispatcher until `shutdown` (or until empty). The caller holds the dispatch lock.
pub async fn run(
    db: Db,
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
    let rescued = queue::rescue_all(&db).await?;
    if rescued > 0 {
        tracing::warn!(
            jobs.rescued = rescued,
            "returned jobs left running by a previous process to pending"
        );
    }
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
    let unrecorded = Arc::new(Semaphore::new(settings.limits.max_unrecorded as usize));
    let completer = tokio::spawn(complete_loop(
        db.clone(),
        owner.clone(),
        done_rx,
        unrecorded.clone(),
        GATHER,
    ));
    let mut dispatcher = Dispatcher::new(
        db.clone(),
        client,
        settings,
        owner.clone(),
        done_tx,
        unrecorded,
        shared,
    );
    let result = dispatcher.run(&shutdown, options).await;
    dispatcher.drain(&shutdown).await;
    let Dispatcher { done_tx, .. } = dispatcher;
    drop(done_tx);
    completer.await??;
    let released = queue::release_all(&db, &owner).await?;
    if released > 0 {
        tracing::info!(
            jobs.released = released,
            "returned unfinished jobs to pending"
        );
    }
    let _ = dispatcher::clear(&db, &owner).await;
    result
}

struct Dispatcher {
    db: Db,
    client: ApiClient,
    settings: Settings,
    owner: String,
    pacer: Pacer,
    /// Calls awaiting an answer (`limits.max_in_flight`).
    slots: Arc<Semaphore>,
    max_in_flight: u32,
    /// Calls whose outcome is not yet committed (`limits.max_unrecorded`).
    unrecorded: Arc<Semaphore>,
    max_unrecorded: u32,
    buffer: VecDeque<Job>,
    results_tx: mpsc::UnboundedSender<CallResult>,
    results_rx: mpsc::UnboundedReceiver<CallResult>,
    done_tx: mpsc::UnboundedSender<Done>,
    shared: Shared,
    /// Account pause, and when to probe again.
    paused: Option<(PauseReason, Instant)>,
    paused_instances: HashMap<String, (PauseReason, Instant)>,
    /// One call at a time until an answer proves the credentials (start-up, after a pause).
    probing: bool,
    in_flight: u32,
    last_beat: Instant,
    /// A claim running beside the loop.
    claiming: Option<tokio::task::JoinHandle<sqlx::Result<Vec<Job>>>>,
    /// The last claim found nothing due.
    queue_dry: bool,
    /// The heartbeat write in progress.
    publishing: Option<tokio::task::JoinHandle<()>>,
    /// A pacing permit taken when no buffered job's instance cap allowed a call: the next call
    /// uses it.
    spare: Option<SendTicket>,
}

impl Dispatcher {
    fn new(
        db: Db,
        client: ApiClient,
        settings: Settings,
        owner: String,
        done_tx: mpsc::UnboundedSender<Done>,
        unrecorded: Arc<Semaphore>,
        shared: Shared,
    ) -> Dispatcher {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let max_in_flight = settings.limits.max_in_flight;
        Dispatcher {
            pacer: Pacer::new(&settings.limits),
            slots: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            unrecorded,
            max_unrecorded: settings.limits.max_unrecorded,
            db,
            client,
            settings,
            owner,
            buffer: VecDeque::new(),
            results_tx,
            results_rx,
            done_tx,
            shared,
            paused: None,
            paused_instances: HashMap::new(),
            probing: true,
            in_flight: 0,
            last_beat: Instant::now() - Duration::from_secs(60),
            claiming: None,
            queue_dry: false,
            publishing: None,
            spare: None,
        }
    }

    async fn run(
        &mut self,
        shutdown: &CancellationToken,
        options: RunOptions,
    ) -> anyhow::Result<()> {
        let poll = self.settings.worker.poll_interval;
        loop {
            while let Ok(result) = self.results_rx.try_recv() {
                self.handle(result);
            }
            self.publish();
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let reload = self.shared.reload.clone();
            if futures_util::FutureExt::now_or_never(reload.notified()).is_some() {
                self.reload();
            }
            if let Some((_, probe_at)) = &self.paused {
                let probe_at = *probe_at;
                if Instant::now() < probe_at {
                    // Wake at least every second: the turn of this loop is the watchdog's pulse.
                    let wake = probe_at.min(Instant::now() + Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake.into()) => {}
                        _ = reload.notified() => self.reload(),
                        Some(r) = self.results_rx.recv() => self.handle(r),
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    continue;
                }
                // Time to probe: a single call decides.
                self.probing = true;
            }
            if self.probing && self.in_flight > 0 {
                tokio::select! {
                    Some(r) = self.results_rx.recv() => self.handle(r),
                    _ = shutdown.cancelled() => return Ok(()),
                }
                continue;
            }
            self.expire_instance_pauses();
            // Claims run beside the loop: a claim waiting behind another process's write lock
            // must not stop calls while the buffer still holds work.
            self.collect_claim().await?;
            if self.buffer.len() < self.refill_threshold() && !self.queue_dry {
                self.start_claim();
            }
            if self.buffer.is_empty() {
                if let Some(claiming) = self.claiming.as_mut() {
                    tokio::select! {
                        claimed = claiming => { self.claiming = None; self.take_claim(claimed?)?; }
                        Some(r) = self.results_rx.recv() => self.handle(r),
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    continue;
                }
                if options.until_empty
                    && self.in_flight == 0
                    && !queue::has_open_jobs(&self.db).await?
                {
                    return Ok(());
                }
                let wait = match queue::next_due(&self.db).await? {
                    Some(due) => Duration::from_millis(
                        (due - now_ms()).clamp(1, poll.as_millis() as i64) as u64,
                    ),
                    None => poll,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = reload.notified() => self.reload(),
                    Some(r) = self.results_rx.recv() => self.handle(r),
                    _ = shutdown.cancelled() => return Ok(()),
                }
                // The idle wait is over: look again.
                self.queue_dry = false;
                continue;
            }
            // Reject malformed jobs before they cost a slot or a permit.
            if let Some(job) = self.buffer.front() {
                if let Err(reason) = job.verdict() {
                    let job = self.buffer.pop_front().expect("front exists");
                    self.reject(job, reason);
                    continue;
                }
            }
            // Slots first (a place among the unrecorded calls, then an in-flight one), then the
            // pacing permit, then send at once: the send time is the permit time.
            let (slots, unrecorded) = (self.slots.clone(), self.unrecorded.clone());
            let (permit, unrecorded) = tokio::select! {
                permits = async {
                    let unrecorded = unrecorded.acquire_owned().await;
                    (slots.acquire_owned().await, unrecorded)
                } => match permits {
                    (Ok(slot), Ok(unrecorded)) => (slot, unrecorded),
                    _ => unreachable!("the semaphores are never closed"),
                },
                Some(r) = self.results_rx.recv() => { self.handle(r); continue; }
                _ = shutdown.cancelled() => return Ok(()),
            };
            let ticket = match self.spare.take() {
                Some(ticket) => ticket,
                None => {
                    let ticket = tokio::select! {
                        ticket = self.pacer.until_ready() => ticket,
                        _ = shutdown.cancelled() => return Ok(()),
                    };
                    self.stats(|s| s.permits += 1);
                    ticket
                }
            };
            let Some(job) = self.pick() else {
                // Every buffered job waits on its instance's cap. The permit is kept for the
                // next turn: given up, it would spend a call of the account's budget on
                // nothing (one capped instance at 300/s under qps 490 got 228/s that way).
                self.spare = Some(ticket);
                drop(permit);
                let wait = self.shortest_instance_wait();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                continue;
            };
            self.send(job, permit, unrecorded, ticket);
        }
    }

    /// Jobs to keep claimed ahead: about two seconds of calls, so calls go on while another
    /// process holds the write lock for a while.
    fn refill_target(&self) -> usize {
        if self.probing {
            return 1;
        }
        ((self.pacer.rate() * 2.0) as usize).clamp(4, 2048)
    }

    fn refill_threshold(&self) -> usize {
        self.refill_target().div_ceil(2)
    }

    /// Starts a claim task for what the buffer lacks (none while paused or already claiming).
    fn start_claim(&mut self) {
        let want = self.refill_target().saturating_sub(self.buffer.len());
        if want == 0 || self.claiming.is_some() || self.paused.is_some() && !self.probing {
            return;
        }
        let lease_until = now_ms() + self.settings.worker.lease.as_millis() as i64;
        let excluded: Vec<String> = self.paused_instances.keys().cloned().collect();
        let (db, owner) = (self.db.clone(), self.owner.clone());
        self.claiming = Some(tokio::spawn(async move {
            queue::claim(&db, &owner, want as i64, lease_until, &excluded).await
        }));
    }

    /// Takes a finished claim's jobs into the buffer.
    async fn collect_claim(&mut self) -> anyhow::Result<()> {
        if self.claiming.as_ref().is_some_and(|c| c.is_finished()) {
            let claimed = self.claiming.take().expect("checked").await?;
            self.take_claim(claimed)?;
        }
        Ok(())
    }

    fn take_claim(&mut self, claimed: sqlx::Result<Vec<Job>>) -> anyhow::Result<()> {
        let claimed = claimed?;
        // Nothing due: wait for the poll interval (or a due retry) before claiming again.
        self.queue_dry = claimed.is_empty();
        if self.buffer.is_empty() && !claimed.is_empty() {
            // Work again after none (start-up, a probe's answer awaited, an idle queue): the
            // pacer's catch-up is for calls a stall held back, not for time without work.
            self.pacer.restart();
        }
        self.buffer.extend(claimed);
        // Claimed while a pause began: straight back.
        if self.paused.is_some() && !self.probing {
            self.release_buffer(|_| true);
        }
        let paused = &self.paused_instances;
        if !paused.is_empty() {
            let ids: Vec<String> = paused.keys().cloned().collect();
            self.release_buffer(|job| ids.contains(&job.instance_id));
        }
        Ok(())
    }

    /// The first buffered job whose instance cap allows a call now.
    fn pick(&mut self) -> Option<Job> {
        let index = self
            .buffer
            .iter()
            .position(|job| self.pacer.take_instance(&job.instance_id).is_ok())?;
        self.buffer.remove(index)
    }

    fn shortest_instance_wait(&self) -> Duration {
        self.buffer
            .iter()
            .filter_map(|job| self.pacer.take_instance(&job.instance_id).err())
            .min()
            .unwrap_or(Duration::from_millis(10))
            .max(Duration::from_millis(1))
    }

    fn send(
        &mut self,
        job: Job,
        slot: OwnedSemaphorePermit,
        unrecorded: OwnedSemaphorePermit,
        ticket: SendTicket,
    ) {
        self.in_flight += 1;
        let client = self.client.clone();
        let results = self.results_tx.clone();
        let sent_at = Instant::now();
        let sent_ms = now_ms();
        tracing::debug!(job.id = job.id, job.instance = %job.instance_id, job.client = %job.client_id, job.attempt = job.attempts + 1, "calling");
        tokio::spawn(async move {
            let answer = client
                .unregister(&job.instance_id, &job.client_id, ticket)
                .await;
            drop(slot);
            let classified = classify(&answer);
            let _ = results.send(CallResult {
                job,
                sent_at,
                sent_ms,
                classified,
                unrecorded,
            });
        });
    }

    fn reject(&mut self, job: Job, reason: String) {
        tracing::warn!(job.id = job.id, job.reason = %reason, "rejected: malformed job, not sent");
        self.stats(|s| s.rejected += 1);
        let mut completion = Completion::new(&job, Status::Rejected);
        completion.code = Some("InvalidInput".into());
        completion.message = Some(reason);
        self.finish(completion, None);
    }

    fn finish(&mut self, completion: Completion, unrecorded: Option<OwnedSemaphorePermit>) {
        // The completer only stops after this sender is dropped.
        let _ = self.done_tx.send(Done {
            completion,
            unrecorded,
        });
    }

    /// Acts on one answer: pacing feedback, pause state, and the job's completion.
    fn handle(&mut self, result: CallResult) {
        self.in_flight -= 1;
        let CallResult {
            job,
            sent_at,
            sent_ms,
            classified,
            unrecorded,
        } = result;
        let Classified { outcome, billed } = classified;
        let code = outcome.code().to_string();
        self.stats(|s| {
            s.calls += 1;
            *s.calls_by_code
                .entry(crate::outcome::metric_code(&code).to_string())
                .or_default() += 1;
            if billed {
                s.billed += 1;
                *s.billed_by_instance
                    .entry(job.instance_id.clone())
                    .or_default() += 1;
            }
        });
        let attempt = job.attempts + 1;
        let billed_second = billed.then_some(sent_ms.div_euclid(1000));
        let mut completion = Completion::new(&job, Status::Pending);
        completion.count_attempt = true;
        completion.billed_second = billed_second;
        if !matches!(outcome, Outcome::Retry { .. }) {
            self.pacer.on_accepted();
        }
        if !matches!(outcome, Outcome::Pause { .. }) {
            self.resume_after_answer(&job);
        }
        match outcome {
            Outcome::Succeeded { request_id } => {
                tracing::debug!(
                    job.id = job.id,
                    api.request_id = request_id.as_deref().unwrap_or(""),
                    "deregistered"
                );
                completion.status = Status::Succeeded;
                completion.request_id = request_id;
            }
            Outcome::NotFound {
                request_id,
                message,
            } => {
                tracing::debug!(job.id = job.id, "credential was already gone");
                completion.status = Status::NotFound;
                completion.code = Some(code);
                completion.message = Some(message);
                completion.request_id = request_id;
            }
            Outcome::Retry {
                message,
                request_id,
                retry_after,
                pressure,
                ..
            } => {
                if let Some(pressure) = pressure {
                    if let Some(rate) = self.pacer.on_pressure(pressure, sent_at, retry_after) {
                        tracing::warn!(api.code = %code, pacing.rate = format!("{rate:.1}"), "throttled: slowing down");
                    }
                }
                completion.code = Some(code.clone());
                completion.message = Some(message);
                completion.request_id = request_id;
                if attempt >= i64::from(self.settings.retry.max_attempts) {
                    tracing::warn!(job.id = job.id, api.code = %code, job.attempts = attempt, "failed: retries spent");
                    completion.status = Status::Failed;
                } else {
                    let mut delay = retry::delay_after(&self.settings.retry, attempt);
                    if let Some(after) = retry_after {
                        delay = delay.max(after);
                    }
                    tracing::debug!(job.id = job.id, api.code = %code, retry.in_ms = delay.as_millis() as u64, "retry scheduled");
                    self.stats(|s| s.retries_scheduled += 1);
                    completion.next_attempt_at = now_ms() + delay.as_millis() as i64;
                }
            }
            Outcome::Permanent {
                message,
                request_id,
                ..
            } => {
                tracing::warn!(job.id = job.id, api.code = %code, api.message = %message, "failed: the API refused this job's parameters");
                completion.status = Status::Failed;
                completion.code = Some(code);
                completion.message = Some(message);
                completion.request_id = request_id;
            }
            Outcome::Pause {
                scope,
                message,
                request_id,
                hint,
                ..
            } => {
                // Not this job's fault: back to pending, the attempt not counted.
                completion.count_attempt = false;
                completion.code = Some(code.clone());
                completion.message = Some(message.clone());
                completion.request_id = request_id;
                completion.next_attempt_at = now_ms();
                let reason = PauseReason {
                    code,
                    message,
                    hint: hint.to_string(),
                };
                self.pause(scope, &job.instance_id, reason);
            }
        }
        self.finish(completion, Some(unrecorded));
    }

    fn pause(&mut self, scope: PauseScope, instance_id: &str, reason: PauseReason) {
        let probe = self.settings.limits.pause_probe;
        let probe_at = Instant::now() + probe;
        match scope {
            PauseScope::Account => {
                // No call until the probe: a permit in hand would sit in the send window.
                self.spare = None;
                if self.paused.is_none() {
                    tracing::error!(api.code = %reason.code, api.message = %reason.message, pause.probe_secs = probe.as_secs(),
                        "paused: every call would fail alike; {}; probing again with one call every {} s (SIGHUP probes now)",
                        reason.hint, probe.as_secs());
                }
                self.paused = Some((reason, probe_at));
                self.probing = true;
                self.release_buffer(|_| true);
            }
            PauseScope::Instance => {
                if !self.paused_instances.contains_key(instance_id) {
                    tracing::error!(job.instance = %instance_id, api.code = %reason.code, api.message = %reason.message,
                        "paused for this instance; {}", reason.hint);
                }
                self.paused_instances
                    .insert(instance_id.to_string(), (reason, probe_at));
                let id = instance_id.to_string();
                self.release_buffer(|job| job.instance_id == id);
            }
        }
        self.sync_pause_stats();
    }

    /// An answer that is not a pause: the credentials work (and this instance, for its jobs).
    fn resume_after_answer(&mut self, job: &Job) {
        if let Some((reason, _)) = self.paused.take() {
            tracing::info!(api.code = %reason.code, "resumed: a probe call went through");
        }
        if self.paused_instances.remove(&job.instance_id).is_some() {
            tracing::info!(job.instance = %job.instance_id, "resumed for this instance");
        }
        self.probing = false;
        self.sync_pause_stats();
    }

    /// Instance pauses whose probe time came are lifted; the next call on it is the probe.
    fn expire_instance_pauses(&mut self) {
        let now = Instant::now();
        let before = self.paused_instances.len();
        self.paused_instances.retain(|_, (_, at)| *at > now);
        if self.paused_instances.len() != before {
            self.sync_pause_stats();
        }
    }

    fn release_buffer(&mut self, which: impl Fn(&Job) -> bool) {
        let (release, keep): (Vec<Job>, Vec<Job>) = self.buffer.drain(..).partition(|j| which(j));
        self.buffer = keep.into();
        for job in release {
            self.finish(Completion::new(&job, Status::Pending), None);
        }
    }

    fn reload(&mut self) {
        if let Some(limits) = self.shared.new_limits.lock().expect("not poisoned").take() {
            self.pacer.reload(&limits);
            let extra = limits
                .max_in_flight
                .saturating_sub(self.settings.limits.max_in_flight);
            if extra > 0 {
                self.slots.add_permits(extra as usize);
                self.max_in_flight += extra;
            }
            let extra = limits
                .max_unrecorded
                .saturating_sub(self.settings.limits.max_unrecorded);
            if extra > 0 {
                self.unrecorded.add_permits(extra as usize);
                self.max_unrecorded += extra;
            }
            tracing::info!(limits.qps = limits.qps, limits.burst = limits.burst, limits.max_in_flight = self.max_in_flight,
                limits.max_unrecorded = self.max_unrecorded, limits.instance_tps = ?limits.instance_tps, "reloaded limits");
            self.settings.limits = limits;
        }
        // A reload also probes a paused dispatch at once.
        let now = Instant::now();
        if let Some((_, at)) = &mut self.paused {
            *at = now;
        }
        for (_, at) in self.paused_instances.values_mut() {
            *at = now;
        }
    }

    fn sync_pause_stats(&self) {
        let paused = self.paused.as_ref().map(|(r, _)| r.clone());
        let instances: BTreeMap<String, PauseReason> = self
            .paused_instances
            .iter()
            .map(|(k, (r, _))| (k.clone(), r.clone()))
            .collect();
        self.stats(|s| {
            s.paused = paused;
            s.paused_instances = instances;
        });
    }

    fn stats(&self, update: impl FnOnce(&mut DispatchStats)) {
        let mut stats = self.shared.stats.lock().expect("not poisoned");
        update(&mut stats);
    }

    /// Every ~2 s: live numbers into the shared stats and the `dispatcher` row.
    fn publish(&mut self) {
        let in_flight = self.in_flight as u64;
        let (rate, ceiling) = (self.pacer.rate(), self.pacer.ceiling());
        self.stats(|s| {
            s.in_flight = in_flight;
            s.rate = rate;
            s.ceiling = ceiling;
            s.last_progress_ms = now_ms();
        });
        if self.last_beat.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_beat = Instant::now();
        let paused = match (&self.paused, self.paused_instances.is_empty()) {
            (Some((r, _)), _) => Some(r.to_string()),
            (None, false) => Some(
                self.paused_instances
                    .iter()
                    .map(|(i, (r, _))| format!("instance {i}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => None,
        };
        let beat = Heartbeat {
            owner: self.owner.clone(),
            pid: std::process::id() as i64,
            host: hostname(),
            heartbeat: now_ms(),
            paused,
            rate: Some(rate),
        };
        // Beside the loop, like claims: a write may wait behind another process's lock.
        if self.publishing.as_ref().is_none_or(|p| p.is_finished()) {
            let db = self.db.clone();
            self.publishing = Some(tokio::spawn(async move {
                if let Err(e) = dispatcher::publish(&db, &beat).await {
                    tracing::warn!(error = %e, "could not publish the dispatcher heartbeat");
                }
            }));
        }
    }

    /// After the loop: wait for in-flight calls (bounded), record them, release the buffer.
    async fn drain(&mut self, shutdown: &CancellationToken) {
        if let Some(claiming) = self.claiming.take() {
            if let Ok(Ok(jobs)) = claiming.await {
                self.buffer.extend(jobs);
            }
        }
        self.release_buffer(|_| true);
        let bound = self.settings.worker.shutdown_grace + self.settings.api.request_timeout;
        let deadline = tokio::time::Instant::now() + bound;
        if self.in_flight > 0 && shutdown.is_cancelled() {
            tracing::info!(
                calls.in_flight = self.in_flight,
                "stopping: waiting for calls in flight"
            );
        }
        while self.in_flight > 0 {
            tokio::select! {
                Some(r) = self.results_rx.recv() => self.handle(r),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(calls.in_flight = self.in_flight, "calls still in flight at the deadline; their jobs return to pending");
                    break;
                }
            }
        }
        // Any results that raced in.
        while let Ok(r) = self.results_rx.try_recv() {
            self.handle(r);
        }
        self.release_buffer(|_| true);
    }
}

/// How long the completer gathers outcomes before writing them in one transaction: at 490
/// calls/s a batch of ~50 jobs. Each batch is a few round trips to SQLite's thread and a
/// commit that rewrites the same dozen-odd pages of `jobs` and its indexes, so fewer, larger
/// batches cost less per call: 50 ms instead of 10 ms saved ~8 % of the daemon's CPU per call,
/// and 100 ms instead of 50 ms another ~8 % (interleaved A/B, with about a tenth fewer
/// context switches per call). The calls waiting on a batch count against
/// `limits.max_unrecorded`, so a crash still loses no more than that, and a batch is written at
/// once when dispatch has no place left under that bound.
const GATHER: Duration = Duration::from_millis(100);

/// Most outcomes written in one transaction.
const MAX_BATCH: usize = 512;

/// Writes completions in batches: whatever arrived within `gather`, up to [`MAX_BATCH`], and
/// at once when `unrecorded` (the dispatcher's places under `limits.max_unrecorded`) has none
/// left, since dispatch then waits on this batch.
async fn complete_loop(
    db: Db,
    owner: String,
    mut rx: mpsc::UnboundedReceiver<Done>,
    unrecorded: Arc<Semaphore>,
    gather: Duration,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut slots = Vec::with_capacity(MAX_BATCH);
    let add = |done: Done, batch: &mut Vec<Completion>, slots: &mut Vec<_>| {
        batch.push(done.completion);
        slots.extend(done.unrecorded);
    };
    while let Some(first) = rx.recv().await {
        add(first, &mut batch, &mut slots);
        let gather_until = tokio::time::Instant::now() + gather;
        while batch.len() < MAX_BATCH && unrecorded.available_permits() > 0 {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(done) => add(done, &mut batch, &mut slots),
                    None => break,
                },
                _ = tokio::time::sleep_until(gather_until) => break,
            }
        }
        write_batch(&db, &owner, &batch).await?;
        batch.clear();
        // The outcomes are committed: their calls no longer count as unrecorded.
        slots.clear();
    }
    Ok(())
}

/// Writes one batch, retrying on database errors (another process may hold the write lock for
/// long): an outcome is never dropped while the process lives.
async fn write_batch(db: &Db, owner: &str, batch: &[Completion]) -> anyhow::Result<()> {
    let mut failures = 0u32;
    loop {
        match queue::complete(db, owner, batch).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, jobs = batch.len(), attempt = failures, "could not record outcomes; retrying");
                if failures >= 20 {
                    return Err(anyhow::anyhow!(
                        "could not record outcomes after {failures} tries: {e}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250 * failures as u64)).await;
            }
        }
    }
}

/// This host's name, for the lease owner and the heartbeat.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One claimed job's success handed to a completer that gathers for an hour, with `places`
    /// under `limits.max_unrecorded` of which the job's call holds one.
    struct Gathering {
        _dir: tempfile::TempDir,
        db: Db,
        unrecorded: Arc<Semaphore>,
        tx: mpsc::UnboundedSender<Done>,
        completer: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    async fn gathering(places: usize) -> Gathering {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("jobs.db")).await.unwrap();
        crate::intake::submit(&db, &[("post-cn-0pp12gl0001", "GID_test@@@d1")], "r")
            .await
            .unwrap();
        let jobs = queue::claim(&db, "owner", 10, now_ms() + 60_000, &[])
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        let unrecorded = Arc::new(Semaphore::new(places));
        let permit = unrecorded.clone().acquire_owned().await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let hour = Duration::from_secs(3600);
        let completer = tokio::spawn(complete_loop(
            db.clone(),
            "owner".into(),
            rx,
            unrecorded.clone(),
            hour,
        ));
        tx.send(Done {
            completion: Completion::new(&jobs[0], Status::Succeeded),
            unrecorded: Some(permit),
        })
        .unwrap();
        Gathering {
            _dir: dir,
            db,
            unrecorded,
            tx,
            completer,
        }
    }

    async fn status(db: &Db) -> String {
        sqlx::query_scalar("SELECT status FROM jobs")
            .fetch_one(&db.reader)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_waits_for_the_gather_while_dispatch_has_places_left() {
        let g = gathering(2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status(&g.db).await, "running", "still gathering");
        assert_eq!(g.unrecorded.available_permits(), 1);
        // The dispatcher stops: what was gathered is written.
        drop(g.tx);
        g.completer.await.unwrap().unwrap();
        assert_eq!(status(&g.db).await, "succeeded");
        assert_eq!(g.unrecorded.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_batch_is_written_at_once_when_dispatch_has_no_place_left() {
        let g = gathering(1).await;
        // Without the early write this would wait out the hour.
        let place = tokio::time::timeout(Duration::from_secs(30), g.unrecorded.acquire())
            .await
            .expect("the place came back without waiting for the gather")
            .unwrap();
        assert_eq!(status(&g.db).await, "succeeded");
        drop(place);
        drop(g.tx);
        g.completer.await.unwrap().unwrap();
    }
}
