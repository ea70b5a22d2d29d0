//! The emulator's mutable state: credential registry, used nonces, sliding windows and stats.
//!
//! All of it lives behind one `std::sync::Mutex` held only for bookkeeping (never across an
//! await); every structure here is O(1) amortised per request and bounded in memory, except the
//! per-key and per-address maps, which grow with the keys and addresses a test uses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::actions::ActionKind;
use super::answer::ApiError;
use super::registry::Registry;
use super::stamp::Received;
use super::stats::{ActionStats, SourceStats, Stats};
use super::window::{record_offset, SlidingWindow};

/// How long a used nonce stays remembered, per key (the gateway's 15 minutes).
pub(crate) const NONCE_TTL: Duration = Duration::from_secs(15 * 60);

/// Upper bound on remembered nonces (about 50 MB); beyond it the oldest are forgotten early.
/// Covers the full 15 minutes up to about 1,100 calls per second, twice the vendor's limit.
pub(crate) const MAX_NONCES: usize = 1_000_000;

/// Remembers used `(AccessKeyId, nonce)` pairs for [`NONCE_TTL`], bounded by [`MAX_NONCES`].
///
/// Stores a 128-bit keyed hash of each pair rather than the strings: about 50 bytes per entry
/// whatever the client sends, and a false "already used" needs a 2^-64-scale collision.
#[derive(Debug, Default)]
pub(crate) struct NonceStore {
    hasher: std::hash::RandomState,
    seen: HashSet<u128>,
    order: VecDeque<(Instant, u128)>,
}

impl NonceStore {
    fn fingerprint(&self, key_id: &str, nonce: &str) -> u128 {
        use std::hash::BuildHasher;
        let half = |salt: u8| self.hasher.hash_one((salt, key_id, nonce));
        (u128::from(half(0)) << 64) | u128::from(half(1))
    }

    /// Records the nonce; returns `false` if it was already used within the TTL.
    pub(crate) fn check_and_insert(&mut self, key_id: &str, nonce: &str, now: Instant) -> bool {
        while let Some(&(at, fp)) = self.order.front() {
            if now.duration_since(at) >= NONCE_TTL || self.order.len() >= MAX_NONCES {
                self.order.pop_front();
                self.seen.remove(&fp);
            } else {
                break;
            }
        }
        let fp = self.fingerprint(key_id, nonce);
        if !self.seen.insert(fp) {
            return false;
        }
        self.order.push_back((now, fp));
        true
    }

    /// Number of nonces currently remembered.
    pub(crate) fn remembered(&self) -> usize {
        self.order.len()
    }
}

/// Which product a request is for, decided from its `Version` before authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Product {
    /// The onsmqtt OpenAPI, with this action.
    OnsMqtt(ActionKind),
    /// STS (`Version=2015-04-01`).
    Sts,
}

/// The limits one accepted call is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission<'a> {
    /// The AccessKeyId.
    pub key_id: &'a str,
    /// The account the key belongs to (whose per-action budget it uses).
    pub account: &'a str,
    /// The action.
    pub kind: ActionKind,
    /// The source address.
    pub peer: IpAddr,
    /// The action's per-account limit, calls per sliding second.
    pub limit: u32,
    /// The per-source-address limit, calls per sliding second, every action together.
    pub ip_limit: Option<u32>,
}

/// Everything mutable, guarded by one mutex in the server.
#[derive(Debug)]
pub(crate) struct State {
    /// When the emulator started; recorded offsets are relative to it.
    pub started: Instant,
    /// The credential registry.
    pub registry: Registry,
    /// Used nonces.
    pub nonces: NonceStore,
    /// Accepted calls per (account, action): the per-action throttling windows.
    accepted_by_account_action: HashMap<(String, ActionKind), SlidingWindow>,
    /// Accepted calls per source IP, every action together: the per-IP limit and its stats.
    accepted_by_ip: HashMap<IpAddr, SlidingWindow>,
    accepted_by_key: HashMap<String, SlidingWindow>,
    accepted_by_account: HashMap<String, SlidingWindow>,
    accepted_by_action: HashMap<ActionKind, SlidingWindow>,
    accepted_all: SlidingWindow,
    arrivals_by_key: HashMap<String, SlidingWindow>,
    arrivals_all: SlidingWindow,
    /// Successful deregistrations.
    successes_all: SlidingWindow,
    /// Successes of every action.
    billed_all: SlidingWindow,
    successes_by_action: HashMap<ActionKind, SlidingWindow>,
    /// Per source address (turned into `Stats::by_source_ip` by a snapshot).
    by_source: HashMap<IpAddr, SourceStats>,
    /// Offsets since `started` of accepted calls, capped at `MAX_RECORDED_OFFSETS`.
    pub accepted_offsets: Vec<Duration>,
    /// Offsets since `started` of successful deregistrations, capped likewise.
    pub success_offsets: Vec<Duration>,
    /// Counters reported in [`Stats`].
    pub stats: Stats,
}

impl State {
    /// Fresh state around `registry`.
    pub(crate) fn new(registry: Registry) -> State {
        State {
            started: Instant::now(),
            registry,
            nonces: NonceStore::default(),
            accepted_by_account_action: HashMap::new(),
            accepted_by_ip: HashMap::new(),
            accepted_by_key: HashMap::new(),
            accepted_by_account: HashMap::new(),
            accepted_by_action: HashMap::new(),
            accepted_all: SlidingWindow::default(),
            arrivals_by_key: HashMap::new(),
            arrivals_all: SlidingWindow::default(),
            successes_all: SlidingWindow::default(),
            billed_all: SlidingWindow::default(),
            successes_by_action: HashMap::new(),
            by_source: HashMap::new(),
            accepted_offsets: Vec::new(),
            success_offsets: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// The stats of `kind`, without allocating once it has some.
    fn action(&mut self, kind: ActionKind) -> &mut ActionStats {
        let by_action = &mut self.stats.by_action;
        if !by_action.contains_key(kind.name()) {
            by_action.insert(kind.name().to_string(), ActionStats::default());
        }
        by_action.get_mut(kind.name()).expect("just inserted")
    }

    fn source(&mut self, peer: IpAddr) -> &mut SourceStats {
        self.by_source.entry(peer).or_default()
    }

    /// Counts one answer with `code` (`"OK"` for success) of a product.
    pub(crate) fn count_code(&mut self, product: Product, code: &str) {
        match product {
            Product::OnsMqtt(kind) => {
                *self.stats.by_code.entry(code.to_string()).or_default() += 1;
                *self
                    .action(kind)
                    .by_code
                    .entry(code.to_string())
                    .or_default() += 1;
            }
            Product::Sts => *self.stats.sts.by_code.entry(code.to_string()).or_default() += 1,
        }
    }

    /// Records an arrival from `peer`, for `product`.
    pub(crate) fn record_arrival(&mut self, received: Received, peer: IpAddr, product: Product) {
        self.stats.total_requests += 1;
        self.arrivals_all.record(received.at);
        let wall = received.unix_us;
        self.stats.first_arrival_unix_us.get_or_insert(wall);
        let last = self.stats.last_arrival_unix_us.get_or_insert(wall);
        *last = (*last).max(wall);
        match product {
            Product::OnsMqtt(kind) => {
                self.action(kind).calls += 1;
                self.source(peer).calls += 1;
            }
            Product::Sts => self.stats.sts.calls += 1,
        }
    }

    /// Records an arrival attributed to a known key.
    pub(crate) fn record_key_arrival(&mut self, key_id: &str, now: Instant) {
        self.arrivals_by_key
            .entry(key_id.to_string())
            .or_default()
            .record(now);
    }

    /// Throttling: admits the call if both its account's budget for the action and its source
    /// address's budget have room in the sliding second ending `now`, and records it in every
    /// window; otherwise counts the throttle and returns the gateway's answer. Both windows
    /// are checked before either records, so a refused call counts against neither.
    pub(crate) fn admit(&mut self, a: Admission<'_>, now: Instant) -> Result<(), ApiError> {
        let account_key = (a.account.to_string(), a.kind);
        let account_full = self
            .accepted_by_account_action
            .get(&account_key)
            .is_some_and(|w| w.count(now) >= u64::from(a.limit));
        let ip_full = a.ip_limit.is_some_and(|limit| {
            self.accepted_by_ip
                .get(&a.peer)
                .is_some_and(|w| w.count(now) >= u64::from(limit))
        });
        if account_full || ip_full {
            let e = if account_full {
                ApiError::new(
                    400,
                    "Throttling.User",
                    "Request was denied due to user flow control.",
                )
            } else {
                self.stats.throttled_by_ip += 1;
                ApiError::new(400, "Throttling", "Request was denied due to flow control.")
            };
            self.stats.throttled += 1;
            self.action(a.kind).throttled += 1;
            self.source(a.peer).throttled += 1;
            self.count_code(Product::OnsMqtt(a.kind), &e.code);
            return Err(e);
        }
        self.accepted_by_account_action
            .entry(account_key)
            .or_default()
            .record(now);
        self.accepted_by_ip.entry(a.peer).or_default().record(now);
        self.accepted_by_key
            .entry(a.key_id.to_string())
            .or_default()
            .record(now);
        self.accepted_by_account
            .entry(a.account.to_string())
            .or_default()
            .record(now);
        self.accepted_by_action
            .entry(a.kind)
            .or_default()
            .record(now);
        self.accepted_all.record(now);
        self.stats.accepted += 1;
        self.action(a.kind).accepted += 1;
        self.source(a.peer).accepted += 1;
        let offset = now.duration_since(self.started);
        record_offset(&mut self.accepted_offsets, offset);
        Ok(())
    }

    /// Records a successful (billed) call of `kind` on `instance`, and its `"OK"` answer.
    pub(crate) fn record_success(&mut self, kind: ActionKind, instance: &str, now: Instant) {
        let action = self.action(kind);
        action.successes += 1;
        *action
            .successes_by_instance
            .entry(instance.to_string())
            .or_default() += 1;
        *self
            .stats
            .billed_by_instance
            .entry(instance.to_string())
            .or_default() += 1;
        self.billed_all.record(now);
        self.successes_by_action
            .entry(kind)
            .or_default()
            .record(now);
        if kind == ActionKind::UnRegister {
            self.stats.successes += 1;
            *self
                .stats
                .successes_by_instance
                .entry(instance.to_string())
                .or_default() += 1;
            self.successes_all.record(now);
            record_offset(&mut self.success_offsets, now.duration_since(self.started));
        }
        self.count_code(Product::OnsMqtt(kind), "OK");
    }

    /// A consistent snapshot of the counters.
    pub(crate) fn snapshot(&self) -> Stats {
        fn maxima<K: ToString>(windows: &HashMap<K, SlidingWindow>) -> Vec<(String, u64)> {
            windows
                .iter()
                .map(|(k, w)| (k.to_string(), w.max()))
                .collect()
        }
        let mut s = self.stats.clone();
        s.max_accepted_per_sliding_second = self.accepted_all.max();
        s.max_arrivals_per_sliding_second = self.arrivals_all.max();
        s.max_successes_per_sliding_second = self.successes_all.max();
        s.max_billed_per_sliding_second = self.billed_all.max();
        s.max_accepted_per_sliding_second_by_key =
            maxima(&self.accepted_by_key).into_iter().collect();
        s.max_accepted_per_sliding_second_by_account =
            maxima(&self.accepted_by_account).into_iter().collect();
        s.max_arrivals_per_sliding_second_by_key =
            maxima(&self.arrivals_by_key).into_iter().collect();
        for (ip, source) in &self.by_source {
            let mut source = source.clone();
            source.max_accepted_per_sliding_second =
                self.accepted_by_ip.get(ip).map_or(0, SlidingWindow::max);
            s.by_source_ip.insert(ip.to_string(), source);
        }
        for (kind, w) in &self.accepted_by_action {
            let a = s.by_action.entry(kind.name().to_string()).or_default();
            a.max_accepted_per_sliding_second = w.max();
        }
        for (kind, w) in &self.successes_by_action {
            let a = s.by_action.entry(kind.name().to_string()).or_default();
            a.max_successes_per_sliding_second = w.max();
        }
        s.registry_remaining = self.registry.remaining();
        s.nonces_remembered = self.nonces.remembered() as u64;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_refused_within_ttl_and_forgotten_after() {
        let mut n = NonceStore::default();
        let t0 = Instant::now();
        assert!(n.check_and_insert("k", "n1", t0));
        assert!(!n.check_and_insert("k", "n1", t0 + Duration::from_secs(60)));
        assert!(n.check_and_insert("other", "n1", t0));
        assert!(n.check_and_insert("k", "n1", t0 + NONCE_TTL + Duration::from_secs(1)));
    }

    #[test]
    fn throttling_is_per_account_and_action_and_per_source_address_across_actions() {
        let mut s = State::new(Registry::everything());
        let t0 = Instant::now();
        let ip_a: IpAddr = "127.0.0.2".parse().unwrap();
        let ip_b: IpAddr = "127.0.0.3".parse().unwrap();
        let call = |kind, peer, key_id| Admission {
            key_id,
            account: "acct",
            kind,
            peer,
            limit: 2,
            ip_limit: Some(3),
        };
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(s
            .admit(call(ActionKind::UnRegister, ip_a, "k1"), at(0))
            .is_ok());
        assert!(s
            .admit(call(ActionKind::UnRegister, ip_b, "k2"), at(1))
            .is_ok());
        // The account's UnRegister budget is spent across both keys and addresses ...
        let e = s
            .admit(call(ActionKind::UnRegister, ip_a, "k1"), at(2))
            .unwrap_err();
        assert_eq!(e.code, "Throttling.User");
        // ... while its List budget is not.
        assert!(s.admit(call(ActionKind::List, ip_a, "k1"), at(3)).is_ok());
        assert!(s.admit(call(ActionKind::Get, ip_a, "k1"), at(4)).is_ok());
        // Address A has had 3 accepted calls of any action: its fourth is refused.
        let e = s
            .admit(call(ActionKind::Get, ip_a, "k1"), at(5))
            .unwrap_err();
        assert_eq!(e.code, "Throttling");
        assert!(s.admit(call(ActionKind::Get, ip_b, "k1"), at(6)).is_ok());
        // A second later every window has room again.
        assert!(s
            .admit(call(ActionKind::UnRegister, ip_a, "k1"), at(1001))
            .is_ok());
        let stats = s.snapshot();
        assert_eq!(
            (stats.accepted, stats.throttled, stats.throttled_by_ip),
            (6, 2, 1)
        );
        assert_eq!(stats.by_source_ip["127.0.0.2"].accepted, 4);
        assert_eq!(
            stats.by_source_ip["127.0.0.2"].max_accepted_per_sliding_second,
            3
        );
        assert_eq!(stats.by_source_ip["127.0.0.2"].throttled, 2);
        assert_eq!(
            stats.by_action["UnRegisterDeviceCredential"].max_accepted_per_sliding_second,
            2
        );
        assert_eq!(stats.by_action["GetDeviceCredential"].accepted, 2);
        assert_eq!(stats.max_accepted_per_sliding_second, 5);
        assert_eq!(stats.max_accepted_per_sliding_second_by_account["acct"], 5);
        assert_eq!(stats.max_accepted_per_sliding_second_by_key["k2"], 1);
    }

    #[test]
    fn successes_count_per_action_and_billing_while_deregistrations_stay_apart() {
        let mut s = State::new(Registry::everything());
        let now = Instant::now();
        s.record_success(ActionKind::List, "i", now);
        s.record_success(ActionKind::UnRegister, "i", now);
        s.record_success(ActionKind::Get, "j", now);
        let stats = s.snapshot();
        assert_eq!(stats.successes, 1);
        assert_eq!(stats.successes_by_instance.get("j"), None);
        assert_eq!(stats.billed_by_instance["i"], 2);
        assert_eq!(stats.billed_by_instance["j"], 1);
        assert_eq!(stats.by_code["OK"], 3);
        assert_eq!(
            stats.by_action["ListDeviceCredentialClientId"].successes_by_instance["i"],
            1
        );
        assert_eq!(stats.max_billed_per_sliding_second, 3);
        assert_eq!(stats.max_successes_per_sliding_second, 1);
    }
}
