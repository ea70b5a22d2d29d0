//! The provider: the set calls are signed with now, shared through a `watch` so a call keeps
//! the set it was signed with while new calls take a renewed one as soon as it is there; and
//! the refresher, a background task that renews a temporary set well before it expires and
//! retries with backoff while the set in hand is still valid.
//! Invariant: a set past its expiry (or refused by the API) is never reported [`Status::Ready`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::chain::{Fetcher, How, Source};
use super::{Credentials, Issued};
use crate::api::signer::SigningKey;
use crate::config::{Settings, SignatureVersion};

/// A set is treated as expired this long before its `Expiration`, so a call signed with it
/// still arrives in time.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);
/// Renewal starts at the latest when this much of a set's lifetime is left...
const AHEAD_SHARE: u32 = 4;
/// ...and never later than this before expiry, unless the set lives less than twice as long
/// (then halfway through its life).
const AHEAD_AT_LEAST: Duration = Duration::from_secs(180);
/// Failed renewals are retried after 1 s, doubling up to this.
const RETRY_AT_MOST: Duration = Duration::from_secs(15);

/// One set of credentials, as issued, with its signing keys made ready.
pub struct Set {
    pub credentials: Credentials,
    /// When it expires; `None` for a long-term AccessKey.
    pub expires_at: Option<SystemTime>,
    /// When it was obtained.
    pub obtained_at: SystemTime,
    /// Counts the sets of this provider, from 0.
    pub generation: u64,
    /// Obtained because the API refused the set before it.
    after_refusal: bool,
    /// A call signed with it was accepted.
    proven: AtomicBool,
    v2: SigningKey,
    v3: SigningKey,
}

impl std::fmt::Debug for Set {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Set")
            .field("credentials", &self.credentials)
            .field("expires_at", &self.expires_at)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Set {
    fn new(issued: Issued, generation: u64, after_refusal: bool) -> Set {
        let secret = issued.credentials.access_key_secret.expose();
        Set {
            v2: SigningKey::v2(secret),
            v3: SigningKey::v3(secret),
            credentials: issued.credentials,
            expires_at: issued.expires_at,
            obtained_at: SystemTime::now(),
            generation,
            after_refusal,
            proven: AtomicBool::new(false),
        }
    }

    /// A call signed with this set was accepted.
    pub(crate) fn accepted(&self) {
        if !self.proven.load(Ordering::Relaxed) {
            self.proven.store(true, Ordering::Relaxed);
        }
    }

    /// A set of `credentials` as they are (to sign an STS call with a long-term key).
    pub(crate) fn of(credentials: Credentials) -> Set {
        Set::new(
            Issued {
                credentials,
                expires_at: None,
            },
            0,
            false,
        )
    }

    /// The key for `signature`.
    pub(crate) fn key(&self, signature: SignatureVersion) -> &SigningKey {
        match signature {
            SignatureVersion::V3 => &self.v3,
            SignatureVersion::V2 => &self.v2,
        }
    }

    /// True once the set is (about to be) past its expiry at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|e| now + EXPIRY_MARGIN >= e)
    }

    /// When its renewal is due: a quarter of its lifetime before expiry, at least 3 minutes
    /// before, but no earlier than halfway. `None` for a set that does not expire.
    pub fn renew_at(&self) -> Option<SystemTime> {
        let expires = self.expires_at?;
        let lifetime = expires
            .duration_since(self.obtained_at)
            .unwrap_or(Duration::ZERO);
        let ahead = (lifetime / AHEAD_SHARE)
            .max(AHEAD_AT_LEAST)
            .min(lifetime / 2);
        Some(expires - ahead)
    }
}

/// Whether calls may be signed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The current set is valid.
    Ready,
    /// The current set expired or was refused; a new one is being fetched.
    Renewing,
    /// The current set expired or was refused and no new one could be had: why.
    Unavailable(String),
}

/// What the watch carries.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) set: Arc<Set>,
    /// The API refused the set: renew at once.
    invalidated: bool,
    /// Why the last renewal failed (cleared by a success).
    last_error: Option<String>,
}

struct Inner {
    state: watch::Sender<State>,
    /// What the chain chose, for `check` and the logs (no secret).
    described: String,
    /// Short name of the source (`env`, `ecs`, ...).
    name: &'static str,
    renewable: bool,
    renew_now: Arc<Notify>,
    renewals: AtomicU64,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The credentials calls are signed with; cheap to clone.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

impl From<Credentials> for Provider {
    fn from(credentials: Credentials) -> Provider {
        Provider::fixed(credentials)
    }
}

impl Provider {
    /// A set given as it is: never renewed.
    pub fn fixed(credentials: Credentials) -> Provider {
        Provider::with_set(
            Issued {
                credentials,
                expires_at: None,
            },
            "fixed".into(),
            "fixed",
            false,
        )
    }

    fn with_set(issued: Issued, described: String, name: &'static str, renewable: bool) -> Self {
        let state = State {
            set: Arc::new(Set::new(issued, 0, false)),
            invalidated: false,
            last_error: None,
        };
        Provider {
            inner: Arc::new(Inner {
                state: watch::channel(state).0,
                described,
                name,
                renewable,
                renew_now: Arc::default(),
                renewals: AtomicU64::new(0),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The credentials of the process environment (see [`Provider::start`]).
    pub async fn load(settings: &Settings) -> anyhow::Result<Provider> {
        let env = std::env::vars().collect();
        Provider::start(settings, &env).await
    }

    /// Picks the source by the chain (a configuration problem is a
    /// [`crate::config::ConfigError`]), obtains the first set, and for a temporary one starts
    /// renewing it in the background (on the current runtime).
    pub async fn start(
        settings: &Settings,
        env: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Provider> {
        let source = super::chain::resolve(settings, env)?;
        let described = source.describe();
        let name = source.name();
        if let How::Static(credentials) = &source.how {
            let issued = Issued {
                credentials: credentials.clone(),
                expires_at: None,
            };
            return Ok(Provider::with_set(issued, described, name, false));
        }
        let fetcher = Fetcher::new(settings)?;
        let issued = fetcher
            .fetch(&source)
            .await
            .map_err(|e| anyhow::anyhow!("cannot obtain credentials from {described}: {e}"))?;
        let provider = Provider::with_set(issued, described, name, true);
        tracing::info!(credentials.source = name, credentials.expires = %provider.expires_text(),
            "credentials obtained from {}", provider.inner.described);
        let weak = Arc::downgrade(&provider.inner);
        let stop = provider.inner.stop.clone();
        let renew_now = provider.inner.renew_now.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = renew(weak, renew_now, fetcher, source) => {}
                _ = stop.cancelled() => {}
            }
        });
        Ok(provider)
    }

    /// The set to sign a call with now.
    pub fn current(&self) -> Arc<Set> {
        self.inner.state.borrow().set.clone()
    }

    /// Whether calls may be signed now.
    pub fn status(&self) -> Status {
        let state = self.inner.state.borrow();
        if !state.invalidated && !state.set.expired(SystemTime::now()) {
            return Status::Ready;
        }
        if !self.inner.renewable {
            return Status::Unavailable(format!(
                "the credentials from {} expired and cannot be renewed",
                self.inner.described
            ));
        }
        match &state.last_error {
            Some(why) => Status::Unavailable(format!(
                "the credentials from {} expired and could not be renewed: {why}",
                self.inner.described
            )),
            None => Status::Renewing,
        }
    }

    /// The API refused set `generation` (expired or unknown token): renew at once. Returns
    /// false when that cannot help: the source is not renewable, or the set was itself
    /// obtained after a refusal and no call signed with it was ever accepted.
    pub fn refused(&self, generation: u64) -> bool {
        if !self.inner.renewable {
            return false;
        }
        let mut helps = true;
        self.inner.state.send_if_modified(|s| {
            if s.set.generation != generation || s.invalidated {
                return false;
            }
            if s.set.after_refusal && !s.set.proven.load(Ordering::Relaxed) {
                helps = false;
                return false;
            }
            s.invalidated = true;
            true
        });
        if helps {
            self.inner.renew_now.notify_one();
        }
        helps
    }

    /// Tells of every new set and every change of status.
    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.inner.state.subscribe()
    }

    /// Short name of the source: `fixed`, `env`, `files`, `oidc`, `profile`, `ecs`, `uri`.
    pub fn source(&self) -> &'static str {
        self.inner.name
    }

    /// What the chain chose, in words (no secret).
    pub fn describe(&self) -> &str {
        &self.inner.described
    }

    /// True for temporary credentials renewed in the background.
    pub fn renewable(&self) -> bool {
        self.inner.renewable
    }

    /// Sets obtained after the first.
    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }

    /// The current set's expiry, `YYYY-MM-DDTHH:MM:SSZ`, or `never`.
    pub fn expires_text(&self) -> String {
        match self.current().expires_at {
            Some(at) => chrono::DateTime::<chrono::Utc>::from(at)
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
            None => "never".into(),
        }
    }
}

/// The refresher: renews when due (or at once after a refusal), retries a failure with a
/// doubling wait, and ends when the provider is dropped.
async fn renew(provider: Weak<Inner>, renew_now: Arc<Notify>, fetcher: Fetcher, source: Source) {
    let mut failures: u32 = 0;
    loop {
        let Some(inner) = provider.upgrade() else {
            return;
        };
        let (set, invalidated) = {
            let s = inner.state.borrow();
            (s.set.clone(), s.invalidated)
        };
        let wait = if failures > 0 {
            let backoff = Duration::from_secs(1 << (failures - 1).min(4)).min(RETRY_AT_MOST);
            // Never so long that the set in hand expires unrenewed for want of a try, and
            // soon again once it has.
            let left = set
                .expires_at
                .and_then(|e| e.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO);
            let most = if invalidated || set.expired(SystemTime::now()) {
                Duration::from_secs(5)
            } else {
                (left / 2).max(Duration::from_secs(1))
            };
            backoff.min(most)
        } else if invalidated {
            Duration::ZERO
        } else {
            set.renew_at()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO)
        };
        drop(inner);
        let notified = renew_now.notified();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = notified => {}
        }
        let Some(inner) = provider.upgrade() else {
            return;
        };
        let (current, invalidated) = {
            let s = inner.state.borrow();
            (s.set.clone(), s.invalidated)
        };
        let due = invalidated
            || failures > 0
            || current.renew_at().is_some_and(|at| SystemTime::now() >= at);
        if !due {
            continue;
        }
        drop(inner);
        let result = fetcher.fetch(&source).await;
        let Some(inner) = provider.upgrade() else {
            return;
        };
        match result {
            Ok(issued)
                if issued.expires_at.is_some()
                    && issued.expires_at <= current.expires_at
                    && !invalidated =>
            {
                failures += 1;
                let why = "the source handed back a set that expires no later".to_string();
                tracing::warn!(credentials.source = inner.name, credentials.error = %why,
                    "credentials not renewed yet; trying again");
                inner
                    .state
                    .send_modify(|s| s.last_error = Some(why.clone()));
            }
            Ok(issued) => {
                failures = 0;
                let set = Arc::new(Set::new(issued, current.generation + 1, invalidated));
                inner.renewals.fetch_add(1, Ordering::Relaxed);
                inner.state.send_replace(State {
                    set,
                    invalidated: false,
                    last_error: None,
                });
                tracing::info!(credentials.source = inner.name, credentials.expires = %expires_text(&inner),
                    credentials.generation = current.generation + 1, "credentials renewed");
            }
            Err(why) => {
                failures += 1;
                tracing::warn!(credentials.source = inner.name, credentials.error = %why,
                    credentials.valid = !current.expired(SystemTime::now()),
                    "credentials could not be renewed; trying again");
                inner.state.send_modify(|s| s.last_error = Some(why));
            }
        }
    }
}

fn expires_text(inner: &Arc<Inner>) -> String {
    Provider {
        inner: inner.clone(),
    }
    .expires_text()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;

    fn set_living(lifetime: Duration) -> Set {
        let mut set = Set::new(
            Issued {
                credentials: Credentials {
                    access_key_id: "STS.x".into(),
                    access_key_secret: Secret::new("s"),
                    security_token: Some(Secret::new("t")),
                },
                expires_at: None,
            },
            0,
            false,
        );
        set.expires_at = Some(set.obtained_at + lifetime);
        set
    }

    #[test]
    fn renewal_is_due_a_quarter_of_the_lifetime_ahead_at_least_three_minutes_or_halfway() {
        let ahead = |lifetime: u64| {
            let set = set_living(Duration::from_secs(lifetime));
            set.expires_at
                .unwrap()
                .duration_since(set.renew_at().unwrap())
                .unwrap()
                .as_secs()
        };
        assert_eq!(ahead(3600), 900, "an hour: 15 minutes ahead");
        assert_eq!(ahead(900), 225, "15 minutes: a quarter");
        assert_eq!(ahead(600), 180, "10 minutes: 3 minutes ahead");
        assert_eq!(ahead(43200), 10800);
        assert_eq!(ahead(120), 60, "shorter than 6 minutes: halfway");
        assert_eq!(ahead(20), 10);
    }

    #[test]
    fn a_fixed_set_never_expires_and_cannot_be_renewed() {
        let p = Provider::fixed(Credentials {
            access_key_id: "id".into(),
            access_key_secret: Secret::new("s"),
            security_token: None,
        });
        assert_eq!(p.status(), Status::Ready);
        assert!(!p.refused(0), "nothing to renew");
        assert_eq!(p.expires_text(), "never");
        assert_eq!(p.source(), "fixed");
    }
}
