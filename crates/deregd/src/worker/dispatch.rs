//! The run loop, shaped as one decision and one wait: each turn, [`Dispatcher::next_step`]
//! says whether to send a call now, wait for something (an answer, a claim, a free place, a
//! reload), pace until the budgets open, or stop; then one `select!` waits for it. Each call
//! is its own task; its answer comes back as a [`CallResult`] and is acted on here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffer::{Buffer, Took};
use super::pause::{Gate, PauseReason, Pauses};
use super::recorder::{Done, Unrecorded};
use super::runs::RunGate;
use super::stats::Shared;
use super::windows::WindowGate;
use super::RunOptions;
use crate::api::http::StampedEmpty;
use crate::api::{Action, ApiClient};
use crate::clock::now_ms;
use crate::config::{LimitsSettings, Settings};
use crate::credentials::Status as Credentials;
use crate::job::{Job, Status};
use crate::outcome::{
    classify, completion_for, metric_code, Classified, Outcome, PauseScope, STALE_CREDENTIALS_HINT,
};
use crate::pacing::{Acquired, Ceilings, Pacer, Permit, Route};
use crate::schedule::Schedule;
use crate::store::jobs::{ClaimFilter, Completion};
use crate::store::Store;

/// The longest a wait lasts: the turn of the loop is the watchdog's pulse.
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// One call's answer, back from its task.
pub(crate) struct CallResult {
    job: Job,
    route: Route,
    /// Unix ms when the call took its place (the billed second).
    sent_ms: i64,
    classified: Classified,
    /// For a call that got no answer: whether it could not reach the endpoint, and why.
    transport: Option<(bool, String)>,
    /// The credentials the call was signed with.
    set: Arc<crate::credentials::Set>,
}

/// What the loop does next.
enum Step {
    Send {
        index: usize,
        permit: Permit,
    },
    /// Wait for an event, until this at the latest.
    Wait(Instant),
    /// The budgets are closed until this: sleep (answers wait until it is over).
    Pace(Instant),
    Stop(anyhow::Result<()>),
}

/// Everything the dispatch loop owns.
pub(crate) struct Dispatcher {
    store: Store,
    client: ApiClient,
    settings: Settings,
    limits_rx: watch::Receiver<LimitsSettings>,
    probe: Arc<Notify>,
    owner: String,
    pacer: Pacer,
    pauses: Pauses,
    buffer: Buffer,
    in_flight: usize,
    unrecorded: Arc<Unrecorded>,
    results_tx: mpsc::UnboundedSender<CallResult>,
    results_rx: mpsc::UnboundedReceiver<CallResult>,
    recorder: mpsc::UnboundedSender<Done>,
    fatal: watch::Receiver<Option<String>>,
    /// Tells of renewed credentials (and of their status changing).
    credentials: watch::Receiver<crate::credentials::State>,
    /// Which runs are paused, and the abort rule.
    runs: RunGate,
    /// Which runs are outside their maintenance windows.
    windows: WindowGate,
    /// New configured windows (SIGHUP).
    schedule_rx: watch::Receiver<Schedule>,
    shared: Shared,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Store,
        client: ApiClient,
        settings: Settings,
        owner: String,
        unrecorded: Arc<Unrecorded>,
        recorder: mpsc::UnboundedSender<Done>,
        fatal: watch::Receiver<Option<String>>,
        shared: Shared,
    ) -> Dispatcher {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let mut limits_rx = shared.limits();
        let limits = limits_rx.borrow_and_update().clone();
        Dispatcher {
            pacer: Pacer::new(&Ceilings::from_limits(&limits, client.sources())),
            credentials: client.credentials().subscribe(),
            pauses: Pauses::new(limits.pause_probe),
            probe: shared.probe(),
            runs: RunGate::new(&shared),
            windows: WindowGate::new(
                settings
                    .worker
                    .schedule()
                    .expect("the settings were validated when loaded"),
            ),
            schedule_rx: shared.schedule(),
            limits_rx,
            store,
            client,
            settings: Settings { limits, ..settings },
            owner,
            buffer: Buffer::default(),
            in_flight: 0,
            unrecorded,
            results_tx,
            results_rx,
            recorder,
            fatal,
            shared,
        }
    }

    /// Dispatches until `shutdown`, the queue is empty (with `until_empty`), or something
    /// makes calling unsafe (the recorder is gone, the database file was replaced).
    pub(crate) async fn run(
        &mut self,
        shutdown: &CancellationToken,
        options: RunOptions,
        recorder: &mut JoinHandle<()>,
    ) -> anyhow::Result<()> {
        loop {
            self.absorb().await;
            let step = if recorder.is_finished() {
                Step::Stop(Err(anyhow::anyhow!(
                    "the outcome recorder stopped; no call is made that could not be recorded"
                )))
            } else {
                self.next_step(shutdown, options)
            };
            match step {
                Step::Send { index, permit } => self.send(index, permit),
                Step::Stop(result) => return result,
                Step::Pace(until) => {
                    let until = self.until_window_change(until);
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = &mut *recorder => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Step::Wait(until) => {
                    let until = self.until_window_change(until);
                    tokio::select! {
                        Some(result) = self.results_rx.recv() => self.handle(result),
                        claimed = self.buffer.claim_done() => self.take_claim(claimed),
                        _ = self.unrecorded.freed() => {}
                        _ = self.limits_rx.changed() => self.reload(),
                        _ = self.probe.notified() => self.pauses.probe_now(std::time::Instant::now()),
                        _ = self.fatal.changed() => {}
                        _ = self.credentials.changed() => { self.credentials.borrow_and_update(); }
                        _ = self.runs.changed() => {}
                        // `changed` marks the value seen; the step takes it.
                        _ = self.schedule_rx.changed() => self.schedule_rx.mark_changed(),
                        _ = &mut *recorder => {}
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep_until(until) => self.buffer.wake(),
                    }
                }
            }
        }
    }

    /// Handles what is ready without waiting: answers, a finished claim.
    async fn absorb(&mut self) {
        while let Ok(result) = self.results_rx.try_recv() {
            self.handle(result);
        }
        if let Some(claimed) = self.buffer.claim_if_done().await {
            self.take_claim(claimed);
        }
        let (rate, ceiling) = (
            self.pacer.rate(Action::UnRegister),
            self.pacer.ceiling(Action::UnRegister),
        );
        let (in_flight, unrecorded) = (self.in_flight as u64, self.unrecorded.count() as u64);
        self.shared.update(|s| {
            s.in_flight = in_flight;
            s.unrecorded = unrecorded;
            s.rate = rate;
            s.ceiling = ceiling;
            s.last_progress_ms = now_ms();
        });
    }

    fn next_step(&mut self, shutdown: &CancellationToken, options: RunOptions) -> Step {
        if shutdown.is_cancelled() {
            return Step::Stop(Ok(()));
        }
        if let Some(why) = self.fatal.borrow().clone() {
            return Step::Stop(Err(anyhow::anyhow!("{why}")));
        }
        if self.limits_rx.has_changed().unwrap_or(false) {
            self.reload();
        }
        let mut held_changed = self.runs.refresh();
        if held_changed {
            self.windows.set_runs(self.runs.windows());
        }
        if self.schedule_rx.has_changed().unwrap_or(false) {
            let schedule = self.schedule_rx.borrow_and_update().clone();
            tracing::info!(worker.windows = %schedule.describe(), "reloaded maintenance windows");
            self.windows.set_configured(schedule);
        }
        if self.windows.evaluate(now_ms()) {
            held_changed = true;
            self.sync_windows();
        }
        if held_changed {
            self.release_held_runs();
        }
        let now = Instant::now();
        let longest = now + LONGEST_WAIT;
        if self.pauses.expire_instances(now.into_std()) {
            self.sync_pauses();
        }
        match self.client.credentials().status() {
            Credentials::Ready => {
                if self.pauses.lift_credentials() {
                    self.sync_pauses();
                }
            }
            // A renewal is under way after a refusal: no call until it is there.
            Credentials::Renewing => return Step::Wait(longest),
            Credentials::Unavailable(why) => {
                if self.pauses.pause_credentials(why) {
                    self.release(|_| true);
                }
                self.sync_pauses();
                return Step::Wait(longest);
            }
        }
        let gate = self.pauses.gate(now.into_std());
        match gate {
            Gate::Closed(at) => return Step::Wait(Instant::from_std(at).min(longest)),
            Gate::Probe if self.in_flight > 0 => return Step::Wait(longest),
            Gate::Probe | Gate::Open => {}
        }
        if !self.windows.any_open() {
            // Outside every window: no claim and no call; answers, reloads and the next
            // opening still wake the loop.
            return Step::Wait(longest);
        }
        let target = self.refill_target();
        if self.buffer.len() < target.div_ceil(2) && self.buffer.may_claim(now) {
            let runs = self.windows.filter();
            let filter = ClaimFilter {
                instances: self.pauses.paused_instances().map(str::to_string).collect(),
                runs: runs.held,
                only_runs: runs.only,
            };
            let want = target - self.buffer.len();
            self.buffer.start(
                &self.store,
                &self.owner,
                want,
                self.settings.worker.lease,
                filter,
            );
        }
        if self.buffer.is_empty() {
            if self.buffer.is_claiming() {
                return Step::Wait(longest);
            }
            if options.until_empty && self.in_flight == 0 && self.buffer.is_exhausted() {
                return Step::Stop(Ok(()));
            }
            return Step::Wait(
                self.buffer
                    .rest_until()
                    .unwrap_or(now)
                    .max(now)
                    .min(longest),
            );
        }
        if self.in_flight >= self.settings.limits.max_in_flight as usize {
            return Step::Wait(longest);
        }
        let full = self.unrecorded.count() >= self.settings.limits.max_unrecorded as usize;
        self.unrecorded.set_waiting(full);
        if full {
            return Step::Wait(longest);
        }
        match self
            .pacer
            .acquire(Action::UnRegister, self.buffer.instances())
        {
            Acquired::Go { index, permit } => Step::Send { index, permit },
            Acquired::Wait(wait) => Step::Pace((now + wait).min(longest)),
        }
    }

    /// Jobs to keep claimed ahead: about two seconds of calls, so calls go on while another
    /// process holds the write lock for a while; one while probing.
    fn refill_target(&self) -> usize {
        if self.pauses.probing() {
            return 1;
        }
        ((self.pacer.rate(Action::UnRegister) * 2.0) as usize).clamp(4, 2048)
    }

    fn take_claim(&mut self, claimed: super::buffer::Claimed) {
        let took = self
            .buffer
            .take(claimed, self.settings.worker.poll_interval);
        let problem = match took {
            Took::Failed(problem) => Some(problem),
            Took::Nothing => None,
            Took::Jobs { after_none } => {
                if after_none {
                    // Work again after none: the pacer's catch-up is for calls a stall held
                    // back, not for time without work.
                    self.pacer.restart();
                }
                // Malformed rows are rejected before they cost a place; jobs of an instance
                // paused meanwhile go straight back.
                for job in self.buffer.drain_where(|j| j.verdict().is_err()) {
                    let reason = job.verdict().expect_err("picked for it");
                    self.reject(job, reason);
                }
                let paused: Vec<String> =
                    self.pauses.paused_instances().map(str::to_string).collect();
                if !paused.is_empty() {
                    self.release(|j| paused.contains(&j.instance_id));
                }
                self.release_held_runs();
                None
            }
        };
        self.shared.update(|s| s.claiming = problem);
    }

    fn send(&mut self, index: usize, permit: Permit) {
        let Some(job) = self.buffer.remove(index) else {
            return;
        };
        if self.pauses.account_paused() {
            self.pauses.on_probe_sent();
        }
        self.in_flight += 1;
        self.unrecorded.add();
        self.shared.update(|s| s.permits += 1);
        let client = self.client.clone();
        let set = client.credentials().current();
        let results = self.results_tx.clone();
        let sent_ms = now_ms();
        tracing::debug!(job.id = job.id, job.instance = %job.instance_id, job.client = %job.client_id,
            job.attempt = job.attempts + 1, "calling");
        tokio::spawn(async move {
            let Permit { route, ticket } = permit;
            let params = [
                ("ClientId", job.client_id.as_str()),
                ("InstanceId", job.instance_id.as_str()),
            ];
            let answer = client
                .call_with(
                    &set,
                    route.action,
                    route.source,
                    &params,
                    StampedEmpty::paced(ticket),
                )
                .await;
            let transport = answer
                .as_ref()
                .err()
                .map(|e| (e.is_unreachable(), e.to_string()));
            let classified = classify(&answer);
            drop(answer);
            let _ = results.send(CallResult {
                job,
                route,
                sent_ms,
                classified,
                transport,
                set,
            });
        });
    }

    /// Acts on one answer: pacing feedback, the pause state, and the job's row.
    fn handle(&mut self, result: CallResult) {
        self.in_flight -= 1;
        let CallResult {
            job,
            route,
            sent_ms,
            classified,
            transport,
            set,
        } = result;
        let generation = set.generation;
        let Classified { outcome, billed } = classified;
        let code = outcome.code().to_string();
        self.shared.update(|s| {
            s.calls += 1;
            *s.calls_by_code
                .entry(metric_code(&code).to_string())
                .or_default() += 1;
            if billed {
                s.billed += 1;
                *s.billed_by_instance
                    .entry(job.instance_id.clone())
                    .or_default() += 1;
            }
        });
        let now = std::time::Instant::now();
        let counted = match (&transport, &outcome) {
            (Some((unreachable, error)), _) => {
                let was_paused = self.pauses.account_paused();
                let counted = self.pauses.on_transport_error(*unreachable, error, now);
                if !was_paused && self.pauses.account_paused() {
                    self.release(|_| true);
                }
                counted
            }
            (
                None,
                Outcome::Pause {
                    scope,
                    message,
                    hint,
                    ..
                },
            ) => {
                let reason = PauseReason {
                    code: code.clone(),
                    message: message.clone(),
                    hint: hint.to_string(),
                };
                self.pauses.pause(*scope, &job.instance_id, reason, now);
                match scope {
                    PauseScope::Account => self.release(|_| true),
                    PauseScope::Instance => {
                        let id = job.instance_id.clone();
                        self.release(|j| j.instance_id == id);
                    }
                }
                false
            }
            (None, Outcome::StaleCredentials { message, .. }) => {
                if self.client.credentials().refused(generation) {
                    tracing::info!(api.code = %code, credentials.generation = generation,
                        credentials.source = self.client.credentials().source(),
                        "the API refused the credentials; renewing them at once, the job is called again");
                } else {
                    let reason = PauseReason {
                        code: code.clone(),
                        message: message.clone(),
                        hint: STALE_CREDENTIALS_HINT.to_string(),
                    };
                    self.pauses
                        .pause(PauseScope::Account, &job.instance_id, reason, now);
                    self.release(|_| true);
                }
                false
            }
            (None, _) => {
                set.accepted();
                self.pauses.on_answer(&job.instance_id);
                true
            }
        };
        self.sync_pauses();
        match &outcome {
            Outcome::Retry {
                pressure: Some(pressure),
                retry_after,
                ..
            } => {
                if let Some(rate) = self.pacer.on_pressure(&route, *pressure, *retry_after) {
                    tracing::warn!(api.code = %code, pacing.rate = format!("{rate:.1}"), "throttled: slowing down");
                }
            }
            Outcome::Retry { .. } => {}
            _ => self.pacer.on_accepted(&route),
        }
        let attempt = job.attempts + 1;
        let mut completion =
            completion_for(&job, &outcome, attempt, &self.settings.retry, now_ms());
        if !counted {
            // The endpoint could not be reached: not this job's fault.
            completion.count_attempt = false;
            completion.status = Status::Pending;
            completion.next_attempt_at = now_ms();
        }
        completion.billed_second = billed.then_some(sent_ms.div_euclid(1000));
        log_outcome(&job, &outcome, &completion);
        self.abort_rule(&job.run, completion.status, completion.code.as_deref());
        if completion.status == Status::Pending
            && counted
            && matches!(outcome, Outcome::Retry { .. })
        {
            self.shared.update(|s| s.retries_scheduled += 1);
        }
        self.finish(completion, true);
    }

    fn reject(&mut self, job: Job, reason: String) {
        tracing::warn!(job.id = job.id, job.reason = %reason, "rejected: malformed job, not sent");
        self.shared.update(|s| s.rejected += 1);
        let mut completion = Completion::new(&job, Status::Rejected);
        completion.code = Some("InvalidInput".into());
        completion.message = Some(reason);
        self.finish(completion, false);
    }

    /// Counts a final answer for the abort rule; when it pauses the run, its claimed jobs go
    /// back at once.
    fn abort_rule(&mut self, run: &str, status: Status, code: Option<&str>) {
        let limits = &self.settings.limits;
        if let Some(reason) = self.runs.answer(&self.store, run, status, code, limits) {
            self.release_held_runs();
            self.shared.update(|s| {
                s.paused_runs.insert(run.to_string(), reason);
            });
        }
    }

    /// Returns the buffered jobs of paused runs, and of runs outside their maintenance
    /// windows, to pending (calls in flight finish).
    fn release_held_runs(&mut self) {
        if self.runs.paused().is_empty() && !self.windows.holds_any() {
            return;
        }
        let paused = self.runs.paused().clone();
        let windows = &self.windows;
        let held: Vec<Job> = self
            .buffer
            .drain_where(|j| paused.contains(&j.run) || windows.holds(&j.run));
        for job in held {
            self.finish(Completion::new(&job, Status::Pending), false);
        }
    }

    /// Publishes the windows' state for status, metrics and the STATUS line.
    fn sync_windows(&self) {
        let outside = self.windows.outside(now_ms());
        let runs = self.windows.held_runs().clone();
        if let Some(why) = &outside {
            tracing::info!("{why}: no call until then");
        }
        self.shared.update(|s| {
            s.outside_window = outside;
            s.runs_outside_window = runs;
        });
    }

    /// `until`, or the next opening or closing of a window when that comes first.
    fn until_window_change(&self, until: Instant) -> Instant {
        match self.windows.next_change() {
            Some(at) => {
                let wait = Duration::from_millis((at - now_ms()).max(0) as u64);
                until.min(Instant::now() + wait)
            }
            None => until,
        }
    }

    /// Returns the buffered jobs `which` picks to pending.
    fn release(&mut self, which: impl Fn(&Job) -> bool) {
        for job in self.buffer.drain_where(which) {
            self.finish(Completion::new(&job, Status::Pending), false);
        }
    }

    fn finish(&mut self, completion: Completion, call: bool) {
        // The recorder only stops after this sender is dropped; if it died, the loop stops at
        // its next turn, and this job stays leased until the next start rescues it.
        let _ = self.recorder.send(Done { completion, call });
    }

    /// Applies the limits a SIGHUP sent: the pacer's ceilings, and the bounds on calls in
    /// flight and unrecorded, exactly as configured (a lower bound holds new calls back until
    /// enough have come back).
    fn reload(&mut self) {
        let limits = self.limits_rx.borrow_and_update().clone();
        self.pacer
            .reload(&Ceilings::from_limits(&limits, self.client.sources()));
        self.pauses.set_probe_every(limits.pause_probe);
        tracing::info!(limits.qps = limits.qps, limits.burst = limits.burst,
            limits.max_in_flight = limits.max_in_flight, limits.max_unrecorded = limits.max_unrecorded,
            limits.instance_tps = ?limits.instance_tps, "reloaded limits");
        self.settings.limits = limits;
    }

    fn sync_pauses(&self) {
        let paused = self.pauses.account_reason().cloned();
        let instances = self
            .pauses
            .instance_reasons()
            .map(|(i, r)| (i.to_string(), r.clone()))
            .collect();
        self.shared.update(|s| {
            s.paused = paused;
            s.paused_instances = instances;
        });
    }

    /// After the loop: the claim in progress and the calls in flight finish (until
    /// `deadline`), their outcomes go to the recorder, and the buffer returns to pending.
    pub(crate) async fn drain(&mut self, deadline: Instant) {
        if self.buffer.is_claiming() {
            tokio::select! {
                claimed = self.buffer.claim_done() => { let _ = self.buffer.take(claimed, Duration::ZERO); }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        self.release(|_| true);
        if self.in_flight > 0 {
            tracing::info!(
                calls.in_flight = self.in_flight,
                "stopping: waiting for calls in flight"
            );
        }
        while self.in_flight > 0 {
            tokio::select! {
                Some(result) = self.results_rx.recv() => self.handle(result),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(calls.in_flight = self.in_flight,
                        "calls still in flight at the stop deadline; their jobs are rescued at the next start");
                    break;
                }
            }
        }
        while let Ok(result) = self.results_rx.try_recv() {
            self.handle(result);
        }
        self.release(|_| true);
        self.runs.drain(deadline).await;
    }
}

fn log_outcome(job: &Job, outcome: &Outcome, completion: &Completion) {
    let code = outcome.code();
    match outcome {
        Outcome::Succeeded { request_id } => tracing::debug!(
            job.id = job.id,
            api.request_id = request_id.as_deref().unwrap_or(""),
            "deregistered"
        ),
        Outcome::NotFound { .. } => tracing::debug!(job.id = job.id, "credential was already gone"),
        Outcome::Retry { .. } if completion.status == Status::Failed => {
            tracing::warn!(job.id = job.id, api.code = %code, job.attempts = job.attempts + 1, "failed: retries spent")
        }
        Outcome::Retry { .. } => tracing::debug!(job.id = job.id, api.code = %code,
            retry.at = completion.next_attempt_at, "retry scheduled"),
        Outcome::Permanent { message, .. } => tracing::warn!(job.id = job.id, api.code = %code,
            api.message = %message, "failed: the API refused this job's parameters"),
        Outcome::Pause { .. } | Outcome::StaleCredentials { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onsmqtt_emulator::{Emulator, EmulatorSettings};
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn with_the_recorder_gone_not_one_call_goes_out() {
        let emulator = Emulator::start(EmulatorSettings::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("d.db")).await.unwrap();
        let pairs: Vec<(String, String)> = (0..50)
            .map(|i| {
                (
                    "post-cn-0pp12gl0001".to_string(),
                    format!("GID_test@@@d{i}"),
                )
            })
            .collect();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        crate::store::submit::submit(&store, &pairs, "r")
            .await
            .unwrap();
        let env = BTreeMap::from([("DEREGD_API__ENDPOINT".to_string(), emulator.endpoint())]);
        let settings = Settings::load_from(None, &env).unwrap();
        let client = ApiClient::new(
            &settings,
            crate::credentials::Credentials {
                access_key_id: "testid".into(),
                access_key_secret: crate::credentials::Secret::new("testsecret"),
                security_token: None,
            },
        )
        .unwrap();
        let shared = Shared::new(&settings.limits);
        let (recorder_tx, _recorder_rx) = mpsc::unbounded_channel();
        // A recorder that has already ended (it panicked, say).
        let mut recorder = tokio::spawn(async {});
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_fatal_tx, fatal_rx) = watch::channel(None);
        let mut dispatcher = Dispatcher::new(
            store,
            client,
            settings,
            "owner".into(),
            Arc::default(),
            recorder_tx,
            fatal_rx,
            shared,
        );
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            dispatcher.run(
                &CancellationToken::new(),
                RunOptions::default(),
                &mut recorder,
            ),
        )
        .await
        .expect("stops at once");
        let error = result.expect_err("a run without its recorder is an error");
        assert!(error.to_string().contains("recorder"), "{error}");
        assert_eq!(emulator.stats().total_requests, 0);
    }
}
