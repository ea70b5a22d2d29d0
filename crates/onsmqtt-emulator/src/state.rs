//! The emulator's mutable state: credential registry, used nonces, sliding windows and stats.
//!
//! All of it lives behind one `std::sync::Mutex` held only for bookkeeping (never across an
//! await); every structure here is O(1) amortised per request and bounded in memory.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::stamp::Received;

/// How long a used nonce stays remembered, per key (the gateway's 15 minutes).
pub(crate) const NONCE_TTL: Duration = Duration::from_secs(15 * 60);

/// Upper bound on remembered nonces (about 50 MB); beyond it the oldest are forgotten early.
/// Covers the full 15 minutes up to about 1,100 calls per second, twice the vendor's limit.
pub(crate) const MAX_NONCES: usize = 1_000_000;

/// Upper bound on recorded arrival offsets kept for tests (accepted and successful calls each).
pub(crate) const MAX_RECORDED_OFFSETS: usize = 1_000_000;

/// Which device credentials exist, and which were removed by this emulator.
///
/// Either "everything well-formed is registered" (minus an optional never-registered set), or a
/// finite list of entries, each pinned to one instance or matching any instance. A wildcard
/// entry models a device whose instance the operator did not write down: the first successful
/// call on any instance removes it.
#[derive(Debug, Clone)]
pub struct Registry {
    kind: RegistryKind,
}

#[derive(Debug, Clone)]
enum RegistryKind {
    Open {
        never_pairs: HashSet<(String, String)>,
        never_clients: HashSet<String>,
        removed: HashSet<(String, String)>,
    },
    Finite {
        pinned: HashSet<(String, String)>,
        any_instance: HashSet<String>,
    },
}

impl Default for Registry {
    fn default() -> Self {
        Registry::everything()
    }
}

impl Registry {
    /// Every well-formed `(InstanceId, ClientId)` starts registered.
    pub fn everything() -> Registry {
        Registry::all_except(Vec::<(String, String)>::new())
    }

    /// Everything registered except these `(InstanceId, ClientId)` pairs, which answer
    /// `DeviceCredentialNotFound` from the first call.
    pub fn all_except<I, S>(never_registered: I) -> Registry
    where
        I: IntoIterator<Item = (S, S)>,
        S: Into<String>,
    {
        Registry {
            kind: RegistryKind::Open {
                never_pairs: never_registered
                    .into_iter()
                    .map(|(i, c)| (i.into(), c.into()))
                    .collect(),
                never_clients: HashSet::new(),
                removed: HashSet::new(),
            },
        }
    }

    /// Everything registered except these ClientIds, on every instance.
    pub fn all_except_clients<I, S>(never_registered: I) -> Registry
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Registry {
            kind: RegistryKind::Open {
                never_pairs: HashSet::new(),
                never_clients: never_registered.into_iter().map(Into::into).collect(),
                removed: HashSet::new(),
            },
        }
    }

    /// Only these entries are registered: `(Some(instance), client)` on that instance,
    /// `(None, client)` on any instance (removed by the first success anywhere).
    pub fn only<I>(entries: I) -> Registry
    where
        I: IntoIterator<Item = (Option<String>, String)>,
    {
        let mut pinned = HashSet::new();
        let mut any_instance = HashSet::new();
        for (instance, client) in entries {
            match instance {
                Some(i) => {
                    pinned.insert((i, client));
                }
                None => {
                    any_instance.insert(client);
                }
            }
        }
        Registry {
            kind: RegistryKind::Finite {
                pinned,
                any_instance,
            },
        }
    }

    /// Parses a registry file: one `ClientId` or `InstanceId ClientId` per line; blank lines
    /// and `#` comments are ignored.
    pub fn parse(text: &str) -> anyhow::Result<Registry> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [client] => entries.push((None, client.to_string())),
                [instance, client] => {
                    entries.push((Some(instance.to_string()), client.to_string()))
                }
                _ => bail!(
                    "registry line {}: expected `ClientId` or `InstanceId ClientId`, got {} fields",
                    n + 1,
                    fields.len()
                ),
            }
        }
        Ok(Registry::only(entries))
    }

    /// Reads and parses a registry file (see [`Registry::parse`]).
    pub fn from_file(path: &Path) -> anyhow::Result<Registry> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading registry file {}", path.display()))?;
        Registry::parse(&text).with_context(|| format!("parsing registry file {}", path.display()))
    }

    /// Whether `(instance, client)` is currently registered.
    pub fn is_registered(&self, instance: &str, client: &str) -> bool {
        let pair = (instance.to_string(), client.to_string());
        match &self.kind {
            RegistryKind::Open {
                never_pairs,
                never_clients,
                removed,
            } => {
                !never_clients.contains(client)
                    && !never_pairs.contains(&pair)
                    && !removed.contains(&pair)
            }
            RegistryKind::Finite {
                pinned,
                any_instance,
            } => pinned.contains(&pair) || any_instance.contains(client),
        }
    }

    /// Removes `(instance, client)`; returns whether it was registered.
    pub fn deregister(&mut self, instance: &str, client: &str) -> bool {
        let pair = (instance.to_string(), client.to_string());
        match &mut self.kind {
            RegistryKind::Open {
                never_pairs,
                never_clients,
                removed,
            } => {
                if never_clients.contains(client) || never_pairs.contains(&pair) {
                    return false;
                }
                removed.insert(pair)
            }
            RegistryKind::Finite {
                pinned,
                any_instance,
            } => pinned.remove(&pair) || any_instance.remove(client),
        }
    }

    /// Entries still registered, or `None` when the registry is open-ended.
    pub fn remaining(&self) -> Option<u64> {
        match &self.kind {
            RegistryKind::Open { .. } => None,
            RegistryKind::Finite {
                pinned,
                any_instance,
            } => Some((pinned.len() + any_instance.len()) as u64),
        }
    }
}

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

/// Events in the last second, plus the largest count any sliding one-second window held.
/// Events may be recorded a little out of order (requests on two connections are handled in
/// whatever order the emulator's threads get to them, but stamped when they arrived): they are
/// kept sorted, and an event recorded late is counted in every window that holds it.
#[derive(Debug, Default, Clone)]
pub(crate) struct SlidingWindow {
    events: VecDeque<Instant>,
    max: u64,
}

/// How far out of order an event may be recorded and still be counted exactly.
const REORDER_SLACK: Duration = Duration::from_secs(1);

impl SlidingWindow {
    /// Events in `[end - 1 s, end]`, excluding those exactly 1 s old, of the first `upto`.
    fn window_ending_at(&self, end: Instant, upto: usize) -> u64 {
        let start = self
            .events
            .partition_point(|&e| e + Duration::from_secs(1) <= end);
        upto.saturating_sub(start) as u64
    }

    /// Events within the second before `now` (exclusive of events exactly 1 s old).
    pub(crate) fn count(&self, now: Instant) -> u64 {
        let upto = self.events.partition_point(|&e| e <= now);
        self.window_ending_at(now, upto)
    }

    /// Records one event at `at` and updates the maximum: every window ending at an event from
    /// `at` on now holds one more.
    pub(crate) fn record(&mut self, at: Instant) {
        let pos = self.events.partition_point(|&e| e <= at);
        self.events.insert(pos, at);
        for i in pos..self.events.len() {
            let count = self.window_ending_at(self.events[i], i + 1);
            self.max = self.max.max(count);
        }
        let latest = *self.events.back().expect("just inserted");
        while let Some(&front) = self.events.front() {
            if front + Duration::from_secs(1) + REORDER_SLACK <= latest {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// Largest number of events seen in any sliding one-second window so far.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

/// Counts of injected faults, by kind.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct FaultCounts {
    /// 500 `SystemOverFlow` answers.
    pub system_overflow: u64,
    /// 500 `InternalError` answers.
    pub internal_error: u64,
    /// 400 `ApplyTokenOverFlow` answers.
    pub apply_token_overflow: u64,
    /// Connections reset without an answer.
    pub reset: u64,
    /// Requests left unanswered for `hang_ms`, then closed.
    pub hang: u64,
    /// HTML 502 pages.
    pub malformed_html: u64,
    /// 200 answers with a truncated JSON body.
    pub malformed_truncated: u64,
    /// 200 answers with an empty body.
    pub malformed_empty: u64,
}

/// A snapshot of what the emulator saw. Also served as JSON at `GET /__emulator/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Every API request that reached the emulator (the stats endpoint excluded).
    pub total_requests: u64,
    /// Answers per error `Code`; successful deregistrations count under `"OK"`.
    pub by_code: BTreeMap<String, u64>,
    /// Successful deregistrations (HTTP 200 with a RequestId, not faulted).
    pub successes: u64,
    /// Successful deregistrations per InstanceId.
    pub successes_by_instance: BTreeMap<String, u64>,
    /// Requests that passed authentication and throttling.
    pub accepted: u64,
    /// Most accepted requests in any sliding one-second window, all keys together.
    pub max_accepted_per_sliding_second: u64,
    /// Most accepted requests in any sliding one-second window, per AccessKeyId.
    pub max_accepted_per_sliding_second_by_key: BTreeMap<String, u64>,
    /// Most arrivals (any outcome) in any sliding one-second window.
    pub max_arrivals_per_sliding_second: u64,
    /// Most arrivals with a known AccessKeyId in any sliding one-second window, per key.
    pub max_arrivals_per_sliding_second_by_key: BTreeMap<String, u64>,
    /// Most successful deregistrations in any sliding one-second window (what billing sees).
    pub max_successes_per_sliding_second: u64,
    /// `SignatureDoesNotMatch` answers.
    pub signature_failures: u64,
    /// Throttled answers (per-key and per-IP together).
    pub throttled: u64,
    /// Throttled answers caused by the per-IP limit.
    pub throttled_by_ip: u64,
    /// Faults injected, per kind.
    pub faults_injected: FaultCounts,
    /// Deregistrations that happened server-side although the client got a fault.
    pub deregistered_under_fault: u64,
    /// All deregistrations that happened server-side (successes plus those under a fault).
    pub deregistered: u64,
    /// Registered credentials remaining, when the registry is finite.
    pub registry_remaining: Option<u64>,
    /// Nonces currently remembered (bounded by the TTL and a hard cap).
    pub nonces_remembered: u64,
    /// Wall-clock time of the first API request, unix microseconds (for rate measurements
    /// by another process).
    pub first_arrival_unix_us: Option<u64>,
    /// Wall-clock time of the latest API request, unix microseconds.
    pub last_arrival_unix_us: Option<u64>,
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
    /// Accepted calls per key, for throttling and the per-key maximum.
    pub accepted_by_key: HashMap<String, SlidingWindow>,
    /// Accepted calls per source IP, for the per-IP limit.
    pub accepted_by_ip: HashMap<std::net::IpAddr, SlidingWindow>,
    /// Accepted calls, all keys together.
    pub accepted_all: SlidingWindow,
    /// Arrivals per key.
    pub arrivals_by_key: HashMap<String, SlidingWindow>,
    /// All arrivals.
    pub arrivals_all: SlidingWindow,
    /// Successful deregistrations.
    pub successes_all: SlidingWindow,
    /// Offsets since `started` of accepted calls, capped at [`MAX_RECORDED_OFFSETS`].
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
            accepted_by_key: HashMap::new(),
            accepted_by_ip: HashMap::new(),
            accepted_all: SlidingWindow::default(),
            arrivals_by_key: HashMap::new(),
            arrivals_all: SlidingWindow::default(),
            successes_all: SlidingWindow::default(),
            accepted_offsets: Vec::new(),
            success_offsets: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Counts one answer with `code` (`"OK"` for success).
    pub(crate) fn count_code(&mut self, code: &str) {
        *self.stats.by_code.entry(code.to_string()).or_default() += 1;
    }

    /// Records an arrival; `key_id` once the key is known.
    pub(crate) fn record_arrival(&mut self, received: Received) {
        self.stats.total_requests += 1;
        self.arrivals_all.record(received.at);
        let wall = received.unix_us;
        self.stats.first_arrival_unix_us.get_or_insert(wall);
        let last = self.stats.last_arrival_unix_us.get_or_insert(wall);
        *last = (*last).max(wall);
    }

    /// Records an arrival attributed to a known key.
    pub(crate) fn record_key_arrival(&mut self, key_id: &str, now: Instant) {
        self.arrivals_by_key
            .entry(key_id.to_string())
            .or_default()
            .record(now);
    }

    /// Records a successful deregistration on `instance`.
    pub(crate) fn record_success(&mut self, instance: &str, now: Instant) {
        self.stats.successes += 1;
        *self
            .stats
            .successes_by_instance
            .entry(instance.to_string())
            .or_default() += 1;
        self.successes_all.record(now);
        record_offset(&mut self.success_offsets, now.duration_since(self.started));
    }

    /// A consistent snapshot of the counters.
    pub(crate) fn snapshot(&self) -> Stats {
        let mut s = self.stats.clone();
        s.max_accepted_per_sliding_second = self.accepted_all.max();
        s.max_arrivals_per_sliding_second = self.arrivals_all.max();
        s.max_successes_per_sliding_second = self.successes_all.max();
        s.max_accepted_per_sliding_second_by_key = self
            .accepted_by_key
            .iter()
            .map(|(k, w)| (k.clone(), w.max()))
            .collect();
        s.max_arrivals_per_sliding_second_by_key = self
            .arrivals_by_key
            .iter()
            .map(|(k, w)| (k.clone(), w.max()))
            .collect();
        s.registry_remaining = self.registry.remaining();
        s.nonces_remembered = self.nonces.remembered() as u64;
        s
    }
}

/// Adds `offset` to a recorded list (up to [`MAX_RECORDED_OFFSETS`]), kept sorted (requests
/// are handled a little out of their arrival order).
pub(crate) fn record_offset(offsets: &mut Vec<Duration>, offset: Duration) {
    if offsets.len() < MAX_RECORDED_OFFSETS {
        let pos = offsets.partition_point(|&o| o <= offset);
        offsets.insert(pos, offset);
    }
}

/// Largest number of `offsets` falling in any half-open window `[t, t + window)`.
/// `offsets` must be sorted ascending (as recorded).
pub fn max_in_window(offsets: &[Duration], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, &t) in offsets.iter().enumerate() {
        while t.saturating_sub(offsets[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_registry_removes_once_and_honours_never_registered() {
        let mut r = Registry::all_except(vec![("inst", "GID_never@@@x")]);
        assert!(r.is_registered("inst", "GID_test@@@a"));
        assert!(r.deregister("inst", "GID_test@@@a"));
        assert!(!r.deregister("inst", "GID_test@@@a"));
        assert!(r.deregister("other", "GID_test@@@a"));
        assert!(!r.deregister("inst", "GID_never@@@x"));
        assert!(r.deregister("other", "GID_never@@@x"));
        assert_eq!(r.remaining(), None);
        let mut c = Registry::all_except_clients(["GID_never@@@x"]);
        assert!(!c.deregister("any", "GID_never@@@x"));
    }

    #[test]
    fn registry_file_parses_pinned_and_wildcard_lines() {
        let mut r = Registry::parse(
            "# devices\n\nGID_a@@@1\n  mqtt-1  GID_b@@@2  # trailing\nmqtt-2 GID_c@@@3\n",
        )
        .unwrap();
        assert_eq!(r.remaining(), Some(3));
        assert!(!r.deregister("mqtt-2", "GID_b@@@2"));
        assert!(r.deregister("mqtt-1", "GID_b@@@2"));
        assert!(r.deregister("whatever", "GID_a@@@1"));
        assert!(!r.deregister("mqtt-1", "GID_a@@@1"));
        assert_eq!(r.remaining(), Some(1));
        let err = Registry::parse("a b c\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

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
    fn sliding_window_tracks_the_busiest_second() {
        let mut w = SlidingWindow::default();
        let t0 = Instant::now();
        for i in 0..10 {
            w.record(t0 + Duration::from_millis(i * 100));
        }
        assert_eq!(w.max(), 10);
        w.record(t0 + Duration::from_millis(1000));
        assert_eq!(w.max(), 10);
        assert_eq!(w.count(t0 + Duration::from_millis(1950)), 1);
    }

    #[test]
    fn sliding_window_counts_events_recorded_out_of_order_where_they_happened() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 0, 10, ..., 990 ms and 1005 ms: the busiest second holds 100 (10 ms .. 1005 ms).
        let mut times: Vec<u64> = (0..100).map(|i| i * 10).collect();
        times.push(1005);
        let mut sorted = SlidingWindow::default();
        for &t in &times {
            sorted.record(at(t));
        }
        // The same events, each pair recorded in reverse (handled out of arrival order).
        let mut shuffled = SlidingWindow::default();
        for pair in times.chunks(2) {
            for &t in pair.iter().rev() {
                shuffled.record(at(t));
            }
        }
        assert_eq!(sorted.max(), 100);
        assert_eq!(shuffled.max(), 100);
        // A late event clamped to the latest time would have made one window hold 101.
        let mut late = SlidingWindow::default();
        for &t in &times[1..] {
            late.record(at(t));
        }
        late.record(at(0));
        assert_eq!(
            late.max(),
            100,
            "the 0 ms event is not in the 1005 ms window"
        );
        assert_eq!(late.count(at(999)), 100);
        assert_eq!(late.count(at(1005)), 100);
    }

    #[test]
    fn max_in_window_counts_half_open_windows() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            max_in_window(&ms(&[0, 500, 999, 1000, 1500]), Duration::from_secs(1)),
            3
        );
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    }
}
