//! Settings and state shared by every connection of one emulator and its metadata server.
//!
//! Four locks, never nested and never held across an await: `inner` (registry, windows,
//! stats, fault plan), `temp_keys` (issued credentials), `oidc_token` and `metadata_tokens`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::actions::{ActionKind, ListSettings};
use super::auth::{Key, TokenRule};
use super::faults::FaultPlan;
use super::metadata::SharedTokens;
use super::settings::EmulatorSettings;
use super::state::State;
use super::stats::Stats;
use super::tempkeys::{StsCredentials, TempKeys};

/// Per-account limits of each action, and the per-source-address one, in calls per second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub unregister: u32,
    pub list: u32,
    pub get: u32,
    pub register: u32,
    pub ip: Option<u32>,
}

impl Limits {
    /// The per-account limit of `kind` (unknown actions share UnRegister's).
    pub(crate) fn of(&self, kind: ActionKind) -> u32 {
        match kind {
            ActionKind::UnRegister | ActionKind::Other => self.unregister,
            ActionKind::List => self.list,
            ActionKind::Get => self.get,
            ActionKind::Register => self.register,
        }
    }
}

/// What `inner` guards: state and fault plan under one lock, so fault draws follow request
/// order.
#[derive(Debug)]
pub(crate) struct Inner {
    pub state: State,
    pub plan: FaultPlan,
}

/// Everything shared.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Long-term keys by AccessKeyId.
    keys: HashMap<String, Key>,
    /// The account of the role behind OIDC and the ECS metadata service (the first key's).
    pub default_account: String,
    pub limits: Limits,
    /// Value of `x-acs-retry-after` on throttled answers, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// Instances answered with `InstancePermissionCheckFailed`.
    pub forbidden_instances: HashSet<String>,
    pub list: ListSettings,
    /// Longest lifetime of issued credentials, in seconds.
    pub sts_duration_secs: u64,
    pub oidc_token: Mutex<Option<String>>,
    /// The metadata service's IMDSv2 session tokens (kept across its restarts).
    pub metadata_tokens: SharedTokens,
    temp_keys: Mutex<TempKeys>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    pub inner: Mutex<Inner>,
}

/// One request being handled; counted in `max_concurrent` while it lives.
pub(crate) struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Shared state for `settings` (validated by the caller).
    pub(crate) fn new(settings: EmulatorSettings) -> Shared {
        let default_account = settings.keys[0].id.clone();
        let keys = settings
            .keys
            .into_iter()
            .map(|k| {
                let key = Key {
                    id: k.id.clone(),
                    secret: k.secret,
                    account: k.id.clone(),
                    token: k.security_token.map_or(TokenRule::None, TokenRule::Fixed),
                };
                (k.id, key)
            })
            .collect();
        let plan = FaultPlan::new(settings.faults, settings.seed)
            .with_fixed(&settings.group_faults, &settings.list_page_faults);
        Shared {
            keys,
            default_account,
            limits: Limits {
                unregister: settings.rate_limit,
                list: settings.list_rate_limit,
                get: settings.get_rate_limit,
                register: settings.register_rate_limit,
                ip: settings.ip_limit,
            },
            retry_after_ms: settings.retry_after_ms,
            forbidden_instances: settings.forbidden_instances.into_iter().collect(),
            list: ListSettings {
                paging: settings.list_paging,
                total_as_number: settings.list_total_as_number,
            },
            sts_duration_secs: settings.sts_duration_secs,
            oidc_token: Mutex::new(settings.oidc_token),
            metadata_tokens: SharedTokens::default(),
            temp_keys: Mutex::new(TempKeys::default()),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                state: State::new(settings.registry),
                plan,
            }),
        }
    }

    /// The state lock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("emulator state lock poisoned")
    }

    /// The key with this AccessKeyId: a long-term one, else an issued one (expired included).
    pub(crate) fn key(&self, id: &str) -> Option<Key> {
        if let Some(k) = self.keys.get(id) {
            return Some(k.clone());
        }
        let temp = self.temp_keys.lock().expect("temp keys lock");
        temp.get(id).map(|t| Key {
            id: id.to_string(),
            secret: t.secret.clone(),
            account: t.account.clone(),
            token: TokenRule::Temporary(t.clone()),
        })
    }

    /// Issues temporary credentials for `account`, living min(`requested`, the configured
    /// longest) seconds; counts them under `source`.
    pub(crate) fn issue(&self, account: &str, requested: u64, source: &str) -> StsCredentials {
        let lifetime = requested.min(self.sts_duration_secs);
        let issued = self
            .temp_keys
            .lock()
            .expect("temp keys lock")
            .issue(account, lifetime);
        let mut inner = self.lock();
        let sts = &mut inner.state.stats.sts;
        sts.issued += 1;
        *sts.issued_by_source.entry(source.to_string()).or_default() += 1;
        issued
    }

    /// Marks one request as being handled until the guard drops.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// A snapshot of every counter.
    pub(crate) fn snapshot(&self) -> Stats {
        let mut stats = self.lock().state.snapshot();
        stats.max_concurrent = self.max_in_flight.load(Ordering::Relaxed);
        stats
    }
}
