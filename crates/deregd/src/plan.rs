//! What a run will take before it is started, from the queue and the limits alone (no API
//! call): how long, under which bound, and the TPS it adds to each instance. A pure function
//! of its inputs, so `deregd plan` and its tests agree.
//!
//! The ETA is the shortest time the budgets allow: the account ceiling (`limits.qps`, or the
//! source addresses' budgets when they are lower) over every job, and each capped instance
//! over its own jobs; the slowest bound wins and is named. Calls are paced so that this is
//! what a run takes when every call succeeds at the first try; retries add to it. Under
//! maintenance windows the calls go only inside them: the ETA is the time until the windows
//! have held that much calling time, and the windows are the bound when they add to it.

use std::collections::BTreeMap;

use crate::clock::human_duration;
use crate::config::LimitsSettings;
use crate::schedule::Schedule;

/// Open jobs above which an instance without a cap is worth a warning.
pub const UNCAPPED_WARN_JOBS: i64 = 10_000;
/// Open jobs older than this are worth a warning, days.
pub const OLD_JOB_DAYS: i64 = 30;
/// The vendor's limit per source address, calls per second (every API together).
pub const VENDOR_SOURCE_QPS: u32 = 300;

/// The budgets a plan is made under.
#[derive(Debug, Clone)]
pub struct Budgets {
    pub qps: u32,
    pub source_qps: u32,
    /// Source addresses (at least 1: the host's default one).
    pub sources: usize,
    pub instance_tps: BTreeMap<String, u32>,
}

impl Budgets {
    pub fn from_limits(limits: &LimitsSettings, sources: usize) -> Budgets {
        Budgets {
            qps: limits.qps,
            source_qps: limits.source_qps,
            sources: sources.max(1),
            instance_tps: limits.instance_tps.clone(),
        }
    }

    /// The rate every job shares, calls per second, and what sets it.
    pub fn ceiling(&self) -> (f64, String) {
        let sources = self.sources as f64 * self.source_qps as f64;
        if sources < self.qps as f64 {
            let what = if self.sources == 1 {
                format!(
                    "the source address at {}/s (limits.source_qps)",
                    self.source_qps
                )
            } else {
                format!(
                    "{} source addresses at {}/s each (limits.source_qps)",
                    self.sources, self.source_qps
                )
            };
            (sources, what)
        } else {
            (
                self.qps as f64,
                format!("the account ceiling of {}/s (limits.qps)", self.qps),
            )
        }
    }
}

/// How long a set of open jobs takes, and the TPS it adds per instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Calls still to make (one per open job).
    pub calls: i64,
    /// Until the last call, seconds: the calling time, stretched by the maintenance windows.
    pub eta_secs: f64,
    /// The calling time alone, seconds.
    pub call_secs: f64,
    /// The bound that sets the ETA, in words (`instance post-cn-x capped at 50/s`).
    pub bound: String,
    /// The maintenance windows the calls go in (`Mon-Fri 01:00-06:00 (UTC)`); null: any time.
    pub windows: Option<String>,
    pub instances: Vec<InstanceLoad>,
}

/// What a plan adds to one instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InstanceLoad {
    pub instance_id: String,
    /// Open jobs: the successful calls it will be billed for, if every one succeeds.
    pub calls: i64,
    pub cap: Option<u32>,
    /// The most calls per second it will see: its cap, or the shared ceiling.
    pub peak_calls_per_sec: f64,
    /// Its jobs alone at that rate, seconds.
    pub secs: f64,
}

/// The estimate for `open` jobs per instance.
pub fn estimate(open: &BTreeMap<String, i64>, budgets: &Budgets) -> Estimate {
    let (ceiling, ceiling_is) = budgets.ceiling();
    let calls: i64 = open.values().sum();
    let mut eta = calls as f64 / ceiling;
    let mut bound = ceiling_is;
    let mut instances = Vec::with_capacity(open.len());
    for (instance, &n) in open {
        let cap = budgets.instance_tps.get(instance).copied();
        let peak = cap.map_or(ceiling, |c| (c as f64).min(ceiling));
        let secs = n as f64 / peak;
        if secs > eta {
            eta = secs;
            bound = match cap {
                Some(c) => format!("instance {instance} capped at {c}/s (limits.instance_tps)"),
                None => bound,
            };
        }
        instances.push(InstanceLoad {
            instance_id: instance.clone(),
            calls: n,
            cap,
            peak_calls_per_sec: peak,
            secs,
        });
    }
    Estimate {
        calls,
        eta_secs: eta,
        call_secs: eta,
        bound,
        windows: None,
        instances,
    }
}

/// `estimate` when its calls start at `now` (unix ms) and go only inside `schedule`'s windows.
pub fn under_windows(mut estimate: Estimate, schedule: &Schedule, now: i64) -> Estimate {
    if schedule.is_always() || estimate.calls == 0 {
        return estimate;
    }
    let call_ms = (estimate.call_secs * 1000.0).ceil() as i64;
    let end = schedule.finish_after(now, call_ms);
    estimate.eta_secs = (end - now) as f64 / 1000.0;
    estimate.windows = Some(schedule.describe());
    if end - now > call_ms {
        estimate.bound = format!(
            "the maintenance windows {}, the last call {}; {} of calls under {}",
            schedule.describe(),
            schedule.local_text(end),
            human_duration(estimate.call_secs.ceil() as i64),
            estimate.bound
        );
    }
    estimate
}

/// Warnings about the budgets themselves.
pub fn budget_warnings(open: &BTreeMap<String, i64>, budgets: &Budgets) -> Vec<String> {
    let mut warnings = Vec::new();
    for (instance, &n) in open {
        if n > UNCAPPED_WARN_JOBS && !budgets.instance_tps.contains_key(instance) {
            let (ceiling, _) = budgets.ceiling();
            warnings.push(format!(
                "instance {instance} has {n} jobs and no cap in [limits.instance_tps]: it will \
                 see up to {ceiling:.0} calls/s on top of its live traffic"
            ));
        }
    }
    if budgets.qps > VENDOR_SOURCE_QPS && budgets.sources == 1 {
        warnings.push(format!(
            "limits.qps is {} but there is one source address, and the vendor blocks a source \
             address above {VENDOR_SOURCE_QPS} calls/s: add api.source_addresses to use it",
            budgets.qps
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(qps: u32, caps: &[(&str, u32)]) -> Budgets {
        Budgets {
            qps,
            source_qps: 280,
            sources: 1,
            instance_tps: caps.iter().map(|(i, c)| (i.to_string(), *c)).collect(),
        }
    }

    fn open(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(i, n)| (i.to_string(), *n)).collect()
    }

    #[test]
    fn a_capped_instance_with_the_most_work_is_the_bound() {
        let e = estimate(
            &open(&[("post-cn-a", 6000), ("post-cn-b", 4000)]),
            &budgets(200, &[("post-cn-a", 50)]),
        );
        assert_eq!(e.calls, 10_000);
        assert!((e.eta_secs - 120.0).abs() < 1e-9, "{e:?}");
        assert_eq!(
            e.bound,
            "instance post-cn-a capped at 50/s (limits.instance_tps)"
        );
        assert_eq!(e.instances[0].peak_calls_per_sec, 50.0);
        assert_eq!(e.instances[1].peak_calls_per_sec, 200.0);
    }

    #[test]
    fn otherwise_the_ceiling_or_the_source_address_is() {
        let e = estimate(
            &open(&[("a", 1000), ("b", 1000)]),
            &budgets(200, &[("a", 50)]),
        );
        // a alone takes 20 s at 50/s; the 2000 calls at 200/s take 10 s: the cap still wins.
        assert!((e.eta_secs - 20.0).abs() < 1e-9);
        let e = estimate(
            &open(&[("a", 1000), ("b", 9000)]),
            &budgets(200, &[("a", 50)]),
        );
        assert!((e.eta_secs - 50.0).abs() < 1e-9);
        assert!(e.bound.contains("limits.qps"), "{}", e.bound);
        let mut b = budgets(400, &[]);
        b.source_qps = 280;
        let e = estimate(&open(&[("a", 2800)]), &b);
        assert!((e.eta_secs - 10.0).abs() < 1e-9);
        assert!(e.bound.contains("source address"), "{}", e.bound);
        b.sources = 2;
        assert_eq!(b.ceiling().0, 400.0);
    }

    #[test]
    fn windows_stretch_the_eta_and_become_the_bound() {
        // 2026-12-02 00:00 UTC, a Wednesday; a window of one hour a day from 01:00.
        let wed = 1_796_169_600_000;
        let windows = Schedule::parse(&["daily 01:00-02:00".into()], "UTC").unwrap();
        // 2 h of calls at 200/s: Wednesday's hour and Thursday's.
        let e = estimate(&open(&[("a", 1_440_000)]), &budgets(200, &[]));
        assert_eq!(e.call_secs, 7200.0);
        let e = under_windows(e, &windows, wed);
        assert_eq!(e.eta_secs, 86_400.0 + 7_200.0);
        assert_eq!(e.call_secs, 7200.0);
        assert!(
            e.bound.starts_with("the maintenance windows daily 01:00-02:00 (UTC), the last call Thu 02:00 UTC; 2h 0m of calls under the account ceiling"),
            "{}",
            e.bound
        );
        // Inside a window long enough, the bound stays what it was.
        let e = estimate(&open(&[("a", 2000)]), &budgets(200, &[]));
        let e = under_windows(e, &windows, wed + 3_600_000);
        assert_eq!((e.eta_secs, e.bound.contains("limits.qps")), (10.0, true));
        assert!(e.windows.is_some());
    }

    #[test]
    fn warnings_name_uncapped_big_instances_and_one_address_above_the_vendor_limit() {
        let w = budget_warnings(&open(&[("big", 20_000), ("small", 10)]), &budgets(450, &[]));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("instance big has 20000 jobs"), "{w:?}");
        assert!(w[1].contains("one source address"), "{w:?}");
        assert!(
            budget_warnings(&open(&[("big", 20_000)]), &budgets(280, &[("big", 10)])).is_empty()
        );
    }
}
