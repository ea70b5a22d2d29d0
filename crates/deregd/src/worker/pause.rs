//! The pause state: answers that say every call would fail alike (the credentials, clock,
//! permissions, or an endpoint that cannot be reached) stop dispatch, account-wide or for one
//! instance, with the jobs left pending; one probe call at a time tells when to go on.
//! Invariant: while paused, and while probing, at most one call is in flight, and a job whose
//! call met the pause does not spend an attempt.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::outcome::PauseScope;

/// Answers remembered to tell an outage from a stray transport error.
const RECENT: usize = 20;
/// Share of the remembered answers that must have failed to reach the endpoint for an outage.
const OUTAGE_SHARE: f64 = 0.8;
/// ... and at least this many answers remembered.
const OUTAGE_MIN: usize = 5;
/// The first probe after an outage begins; the wait doubles up to `limits.pause_probe_secs`.
const FIRST_PROBE: Duration = Duration::from_secs(1);

/// The pause code of credentials that expired and could not be renewed.
pub const CREDENTIALS_EXPIRED: &str = "CredentialsExpired";

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

/// Whether the account may call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Calls go as the budgets allow.
    Open,
    /// One call, when none is in flight, to see whether things work.
    Probe,
    /// No call before this.
    Closed(Instant),
}

#[derive(Debug, Clone)]
struct Paused {
    reason: PauseReason,
    /// An endpoint that cannot be reached (probed with a doubling wait), rather than an
    /// answer that refused the calls.
    outage: bool,
    probe_at: Instant,
    wait: Duration,
    /// A probe call is out and not yet answered.
    probe_out: bool,
}

/// The account's, the endpoint's and the instances' pauses.
#[derive(Debug)]
pub(crate) struct Pauses {
    account: Option<Paused>,
    /// The credentials expired and could not be renewed: no call at all until they are.
    credentials: Option<PauseReason>,
    instances: HashMap<String, Paused>,
    /// One call at a time until an answer proves the calls work (start-up, after a pause).
    probing: bool,
    /// Recent calls, true for one that could not reach the endpoint.
    recent: VecDeque<bool>,
    probe_every: Duration,
}

impl Pauses {
    /// Starts probing: nothing is proven yet.
    pub(crate) fn new(probe_every: Duration) -> Pauses {
        Pauses {
            account: None,
            credentials: None,
            instances: HashMap::new(),
            probing: true,
            recent: VecDeque::with_capacity(RECENT),
            probe_every,
        }
    }

    pub(crate) fn set_probe_every(&mut self, every: Duration) {
        self.probe_every = every;
    }

    pub(crate) fn gate(&self, now: Instant) -> Gate {
        match &self.account {
            Some(p) if now < p.probe_at => Gate::Closed(p.probe_at),
            Some(_) => Gate::Probe,
            None if self.probing => Gate::Probe,
            None => Gate::Open,
        }
    }

    /// True while calls go one at a time.
    pub(crate) fn probing(&self) -> bool {
        self.probing || self.account.is_some()
    }

    /// True while the account (or the endpoint) is paused, probe due or not.
    pub(crate) fn account_paused(&self) -> bool {
        self.account.is_some()
    }

    /// An answer that is not a pause: the calls work, and so does `instance`.
    pub(crate) fn on_answer(&mut self, instance: &str) {
        self.remember(false);
        if let Some(p) = self.account.take() {
            tracing::info!(api.code = %p.reason.code, "resumed: a probe call went through");
        }
        if self.instances.remove(instance).is_some() {
            tracing::info!(job.instance = %instance, "resumed for this instance");
        }
        self.probing = false;
    }

    /// A call that failed in transport at `now`. `unreachable` when it could not reach the
    /// endpoint at all (refused, DNS, TLS, a timeout). Returns whether the call counts against
    /// the job's attempts: not when it meets or begins an outage, or fails as a probe.
    pub(crate) fn on_transport_error(
        &mut self,
        unreachable: bool,
        error: &str,
        now: Instant,
    ) -> bool {
        self.remember(unreachable);
        if !unreachable {
            return true;
        }
        let outage = self.probing()
            || (self.recent.len() >= OUTAGE_MIN
                && self.recent.iter().filter(|u| **u).count() as f64
                    >= OUTAGE_SHARE * self.recent.len() as f64);
        if !outage {
            return true;
        }
        match &mut self.account {
            // A call that was in flight when the pause began: nothing new.
            Some(p) if !p.probe_out => {}
            Some(p) => {
                // The probe failed: wait longer (an outage) or as long again.
                p.probe_out = false;
                if p.outage {
                    p.wait = (p.wait * 2).min(self.probe_every.max(FIRST_PROBE));
                    p.reason.message = error.to_string();
                }
                p.probe_at = now + p.wait;
            }
            None => {
                let hint = if error.contains("certificate") {
                    "the endpoint's TLS certificate was refused: check api.endpoint and the host's trust roots"
                } else {
                    "check api.endpoint, DNS, the network and any proxy; probing again with a doubling wait"
                };
                let reason = PauseReason {
                    code: "EndpointUnreachable".into(),
                    message: error.to_string(),
                    hint: hint.into(),
                };
                tracing::error!(pause.reason = %reason, "paused: the API endpoint cannot be reached; jobs stay pending");
                self.account = Some(Paused {
                    reason,
                    outage: true,
                    probe_at: now + FIRST_PROBE,
                    wait: FIRST_PROBE,
                    probe_out: false,
                });
            }
        }
        false
    }

    /// The probe call of a paused account went out.
    pub(crate) fn on_probe_sent(&mut self) {
        if let Some(p) = &mut self.account {
            p.probe_out = true;
        }
    }

    /// A pause-class answer for a call on `instance` at `now`.
    pub(crate) fn pause(
        &mut self,
        scope: PauseScope,
        instance: &str,
        reason: PauseReason,
        now: Instant,
    ) {
        self.remember(false);
        let probe_at = now + self.probe_every;
        let paused = Paused {
            reason,
            outage: false,
            probe_at,
            wait: self.probe_every,
            probe_out: false,
        };
        match scope {
            PauseScope::Account => {
                if self
                    .account
                    .as_ref()
                    .is_none_or(|p| p.reason != paused.reason)
                {
                    tracing::error!(api.code = %paused.reason.code, api.message = %paused.reason.message,
                        pause.probe_secs = self.probe_every.as_secs(),
                        "paused: every call would fail alike; {}; probing again with one call every {} s (SIGHUP probes now)",
                        paused.reason.hint, self.probe_every.as_secs());
                }
                self.account = Some(paused);
                self.probing = true;
            }
            PauseScope::Instance => {
                if !self.instances.contains_key(instance) {
                    tracing::error!(job.instance = %instance, api.code = %paused.reason.code,
                        api.message = %paused.reason.message, "paused for this instance; {}", paused.reason.hint);
                }
                self.instances.insert(instance.to_string(), paused);
            }
        }
    }

    /// Lifts the instance pauses whose probe time came: the next call on each is its probe.
    /// Returns whether any was lifted.
    pub(crate) fn expire_instances(&mut self, now: Instant) -> bool {
        let before = self.instances.len();
        self.instances.retain(|_, p| p.probe_at > now);
        self.instances.len() != before
    }

    /// Probes every pause at once (SIGHUP).
    pub(crate) fn probe_now(&mut self, now: Instant) {
        if let Some(p) = &mut self.account {
            p.probe_at = now;
        }
        for p in self.instances.values_mut() {
            p.probe_at = now;
        }
    }

    /// The instances whose jobs are not to be claimed or sent.
    pub(crate) fn paused_instances(&self) -> impl Iterator<Item = &str> {
        self.instances.keys().map(String::as_str)
    }

    #[cfg(test)]
    pub(crate) fn is_instance_paused(&self, instance: &str) -> bool {
        self.instances.contains_key(instance)
    }

    /// The account's pause reason, if paused (the credentials' first).
    pub(crate) fn account_reason(&self) -> Option<&PauseReason> {
        self.credentials
            .as_ref()
            .or(self.account.as_ref().map(|p| &p.reason))
    }

    /// The credentials expired and could not be renewed: `why`. Returns true when this
    /// begins the pause.
    pub(crate) fn pause_credentials(&mut self, why: String) -> bool {
        let begins = self.credentials.is_none();
        if begins {
            tracing::error!(pause.reason = %why,
                "paused: the credentials expired and could not be renewed; jobs stay pending; \
                 resuming as soon as they are renewed");
        }
        self.credentials = Some(PauseReason {
            code: CREDENTIALS_EXPIRED.into(),
            message: why,
            hint: "check the credentials source (the metadata service, STS, the token file): \
                   renewal is retried with backoff"
                .into(),
        });
        begins
    }

    /// The credentials are usable: lifts their pause. Returns true when there was one.
    pub(crate) fn lift_credentials(&mut self) -> bool {
        let lifted = self.credentials.take().is_some();
        if lifted {
            tracing::info!("resumed: the credentials were renewed");
        }
        lifted
    }

    /// Each paused instance's reason.
    pub(crate) fn instance_reasons(&self) -> impl Iterator<Item = (&str, &PauseReason)> {
        self.instances.iter().map(|(i, p)| (i.as_str(), &p.reason))
    }

    fn remember(&mut self, unreachable: bool) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(unreachable);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(code: &str) -> PauseReason {
        PauseReason {
            code: code.into(),
            message: "m".into(),
            hint: "h".into(),
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn dispatch_starts_probing_and_opens_on_the_first_answer() {
        let mut p = Pauses::new(MINUTE);
        let now = Instant::now();
        assert_eq!(p.gate(now), Gate::Probe);
        p.on_answer("i");
        assert_eq!(p.gate(now), Gate::Open);
        assert!(!p.probing());
    }

    #[test]
    fn an_account_pause_closes_until_its_probe_and_an_answer_lifts_it() {
        let mut p = Pauses::new(MINUTE);
        let now = Instant::now();
        p.on_answer("i");
        p.pause(
            PauseScope::Account,
            "i",
            reason("SignatureDoesNotMatch"),
            now,
        );
        assert_eq!(p.gate(now), Gate::Closed(now + MINUTE));
        assert_eq!(p.gate(now + MINUTE), Gate::Probe);
        assert_eq!(p.account_reason().unwrap().code, "SignatureDoesNotMatch");
        p.probe_now(now);
        assert_eq!(p.gate(now), Gate::Probe, "SIGHUP probes at once");
        p.on_answer("i");
        assert_eq!(p.gate(now), Gate::Open);
        assert!(p.account_reason().is_none());
    }

    #[test]
    fn an_instance_pause_holds_that_instance_only_until_its_probe_time() {
        let mut p = Pauses::new(MINUTE);
        let now = Instant::now();
        p.on_answer("a");
        p.pause(
            PauseScope::Instance,
            "a",
            reason("InstancePermissionCheckFailed"),
            now,
        );
        assert_eq!(p.gate(now), Gate::Open);
        assert!(p.is_instance_paused("a") && !p.is_instance_paused("b"));
        assert_eq!(p.paused_instances().collect::<Vec<_>>(), ["a"]);
        assert!(!p.expire_instances(now + Duration::from_secs(59)));
        assert!(p.expire_instances(now + MINUTE));
        assert!(!p.is_instance_paused("a"));
    }

    #[test]
    fn a_stray_transport_error_counts_but_an_outage_pauses_and_counts_nothing() {
        let mut p = Pauses::new(MINUTE);
        let now = Instant::now();
        p.on_answer("i");
        for _ in 0..10 {
            p.on_answer("i");
        }
        assert!(p.on_transport_error(false, "reset", now), "a reset counts");
        assert!(
            p.on_transport_error(true, "refused", now),
            "one refusal among answers counts"
        );
        // Refusals become most of the recent calls: an outage.
        let mut counted = 0;
        for _ in 0..30 {
            counted += p.on_transport_error(true, "connection refused", now) as usize;
        }
        assert!(counted < 16, "{counted}");
        assert_eq!(p.gate(now), Gate::Closed(now + FIRST_PROBE));
        assert_eq!(p.account_reason().unwrap().code, "EndpointUnreachable");
        // Each failed probe doubles the wait, up to the probe interval.
        let mut wait = FIRST_PROBE;
        for _ in 0..10 {
            p.on_probe_sent();
            assert!(!p.on_transport_error(true, "connection refused", now));
            wait = (wait * 2).min(MINUTE);
            assert_eq!(p.gate(now), Gate::Closed(now + wait));
        }
        assert_eq!(wait, MINUTE);
        p.on_answer("i");
        assert_eq!(p.gate(now), Gate::Open);
    }

    #[test]
    fn a_credentials_pause_shows_first_and_lifts_alone() {
        let mut p = Pauses::new(MINUTE);
        assert!(p.pause_credentials("the metadata service is down".into()));
        assert!(!p.pause_credentials("still down".into()), "begins once");
        assert_eq!(p.account_reason().unwrap().code, CREDENTIALS_EXPIRED);
        assert_eq!(p.account_reason().unwrap().message, "still down");
        assert!(p.lift_credentials());
        assert!(!p.lift_credentials());
        assert!(p.account_reason().is_none());
    }

    #[test]
    fn a_probe_that_cannot_reach_the_endpoint_pauses_at_once_and_names_a_certificate() {
        let mut p = Pauses::new(MINUTE);
        let now = Instant::now();
        assert!(!p.on_transport_error(true, "invalid peer certificate: UnknownIssuer", now));
        let r = p.account_reason().unwrap();
        assert!(r.hint.contains("certificate"), "{r}");
        assert!(r.message.contains("UnknownIssuer"), "{r}");
    }
}
