//! Fault injection: which fault (if any) a valid request meets, and the added latency.
//!
//! Random decisions come from one `StdRng` seeded from `EmulatorSettings::seed`, drawn in a
//! fixed order per request, so a run with the same seed and the same request order injects the
//! same faults. Deterministic ones (a failing group, a failing listing page) draw nothing.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::settings::{GroupFault, PageFault};

/// Fault probabilities (each 0.0–1.0) and delays. `Default` injects nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Chance of a 500 `SystemOverFlow` answer.
    pub p_system_overflow: f64,
    /// Chance of a 500 `InternalError` answer.
    pub p_internal_error: f64,
    /// Chance of a 400 `ApplyTokenOverFlow` answer.
    pub p_apply_token_overflow: f64,
    /// Chance the TCP connection is reset without any answer.
    pub p_reset: f64,
    /// Chance the request gets no answer for `hang_ms`, then the connection closes.
    pub p_hang: f64,
    /// How long a hung request waits before its connection is closed, in milliseconds.
    pub hang_ms: u64,
    /// Chance of a malformed answer (HTML 502, truncated JSON 200 or empty 200, in rotation).
    pub p_malformed: f64,
    /// Delay added before every answer to a valid request, in milliseconds.
    pub latency_ms: u64,
    /// Uniform ± spread around `latency_ms`, in milliseconds.
    pub jitter_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            p_system_overflow: 0.0,
            p_internal_error: 0.0,
            p_apply_token_overflow: 0.0,
            p_reset: 0.0,
            p_hang: 0.0,
            hang_ms: 15_000,
            p_malformed: 0.0,
            latency_ms: 0,
            jitter_ms: 0,
        }
    }
}

impl Faults {
    /// Checks every probability is within 0.0–1.0.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, p) in [
            ("p_system_overflow", self.p_system_overflow),
            ("p_internal_error", self.p_internal_error),
            ("p_apply_token_overflow", self.p_apply_token_overflow),
            ("p_reset", self.p_reset),
            ("p_hang", self.p_hang),
            ("p_malformed", self.p_malformed),
        ] {
            if !(0.0..=1.0).contains(&p) {
                anyhow::bail!("fault probability {name} must be within 0.0..=1.0, got {p}");
            }
        }
        Ok(())
    }
}

/// The malformed answers, served in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// A load balancer's HTML 502 page.
    Html502,
    /// HTTP 200 whose JSON body is cut short.
    TruncatedJson,
    /// HTTP 200 with an empty body.
    Empty,
}

/// What happens to one otherwise-valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 500 `SystemOverFlow`; nothing happens server-side.
    SystemOverflow,
    /// 500 `InternalError`; nothing happens server-side.
    InternalError,
    /// 400 `ApplyTokenOverFlow`; nothing happens server-side.
    ApplyTokenOverflow,
    /// Connection reset; `effect_first` says whether the call took effect before it.
    Reset { effect_first: bool },
    /// No answer, then close; `effect_first` as above.
    Hang { effect_first: bool },
    /// A malformed answer; `effect_first` as above.
    Malformed { kind: Malformed, effect_first: bool },
}

/// The source of fault decisions.
#[derive(Debug)]
pub(crate) struct FaultPlan {
    faults: Faults,
    rng: StdRng,
    malformed_turn: usize,
    /// Failing groups: GroupId → error code.
    groups: HashMap<String, String>,
    /// Failing listing pages, each with the failures it has left (`None`: unbounded).
    pages: Vec<(PageFault, Option<u32>)>,
}

impl FaultPlan {
    /// A plan drawing from `seed`, with no deterministic faults.
    pub(crate) fn new(faults: Faults, seed: u64) -> FaultPlan {
        FaultPlan {
            faults,
            rng: StdRng::seed_from_u64(seed),
            malformed_turn: 0,
            groups: HashMap::new(),
            pages: Vec::new(),
        }
    }

    /// The same plan, with failing groups and listing pages.
    pub(crate) fn with_fixed(mut self, groups: &[GroupFault], pages: &[PageFault]) -> FaultPlan {
        self.groups = groups
            .iter()
            .map(|g| (g.group.clone(), g.code.clone()))
            .collect();
        self.pages = pages.iter().map(|p| (p.clone(), p.times)).collect();
        self
    }

    /// The error code every call of a ClientId in `group` answers, if the group fails.
    pub(crate) fn group_fault(&self, group: &str) -> Option<&str> {
        self.groups.get(group).map(String::as_str)
    }

    /// The error code listing page `page` answers this time, if it fails; spends one failure.
    pub(crate) fn page_fault(&mut self, page: u32) -> Option<String> {
        let (fault, left) = self
            .pages
            .iter_mut()
            .find(|(f, left)| f.page == page && *left != Some(0))?;
        if let Some(n) = left {
            *n -= 1;
        }
        Some(fault.code.clone())
    }

    /// Decides the fault (if any) for the next valid request. Connection-level faults are
    /// drawn first, so at p=1.0 each kind wins over the answer-level ones.
    pub(crate) fn draw(&mut self) -> Option<Fault> {
        let f = &self.faults;
        let (reset, hang, malformed) = (f.p_reset, f.p_hang, f.p_malformed);
        let (overflow, internal, token) = (
            f.p_system_overflow,
            f.p_internal_error,
            f.p_apply_token_overflow,
        );
        if self.hit(reset) {
            return Some(Fault::Reset {
                effect_first: self.rng.gen_bool(0.5),
            });
        }
        if self.hit(hang) {
            return Some(Fault::Hang {
                effect_first: self.rng.gen_bool(0.5),
            });
        }
        if self.hit(malformed) {
            let kind = [
                Malformed::Html502,
                Malformed::TruncatedJson,
                Malformed::Empty,
            ][self.malformed_turn % 3];
            self.malformed_turn += 1;
            return Some(Fault::Malformed {
                kind,
                effect_first: self.rng.gen_bool(0.5),
            });
        }
        if self.hit(overflow) {
            return Some(Fault::SystemOverflow);
        }
        if self.hit(internal) {
            return Some(Fault::InternalError);
        }
        if self.hit(token) {
            return Some(Fault::ApplyTokenOverflow);
        }
        None
    }

    /// Skips the draw entirely when p is 0 so a fault-free run does not consume randomness.
    fn hit(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen::<f64>() < p
    }

    /// The added delay for the next answer: `latency_ms` ± uniform `jitter_ms`, never negative.
    pub(crate) fn delay(&mut self) -> Duration {
        let base = self.faults.latency_ms as i64;
        let jitter = self.faults.jitter_ms as i64;
        let ms = if jitter > 0 {
            base + self.rng.gen_range(-jitter..=jitter)
        } else {
            base
        };
        Duration::from_millis(ms.max(0) as u64)
    }

    /// How long a hung request waits, in milliseconds.
    pub(crate) fn hang_ms(&self) -> u64 {
        self.faults.hang_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_faults() {
        let faults = Faults {
            p_system_overflow: 0.3,
            p_reset: 0.1,
            p_malformed: 0.2,
            latency_ms: 5,
            jitter_ms: 5,
            ..Faults::default()
        };
        let mut a = FaultPlan::new(faults.clone(), 7);
        let mut b = FaultPlan::new(faults, 7);
        for _ in 0..200 {
            assert_eq!(a.draw(), b.draw());
            assert_eq!(a.delay(), b.delay());
        }
    }

    #[test]
    fn certain_malformed_rotates_through_three_kinds() {
        let mut p = FaultPlan::new(
            Faults {
                p_malformed: 1.0,
                ..Faults::default()
            },
            1,
        );
        let kinds: Vec<_> = (0..3)
            .map(|_| match p.draw() {
                Some(Fault::Malformed { kind, .. }) => kind,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                Malformed::Html502,
                Malformed::TruncatedJson,
                Malformed::Empty
            ]
        );
    }

    #[test]
    fn no_faults_means_no_draws_and_no_delay() {
        let mut p = FaultPlan::new(Faults::default(), 1);
        assert_eq!(p.draw(), None);
        assert_eq!(p.delay(), Duration::ZERO);
    }

    #[test]
    fn fixed_faults_hit_their_group_and_their_page_as_often_as_asked() {
        let groups = ["GID_bad:PermissionCheckFailed".parse().unwrap()];
        let pages = [
            "3:InternalError:2".parse().unwrap(),
            "7:InvalidParameter.GroupId".parse().unwrap(),
        ];
        let mut p = FaultPlan::new(Faults::default(), 1).with_fixed(&groups, &pages);
        assert_eq!(p.group_fault("GID_bad"), Some("PermissionCheckFailed"));
        assert_eq!(p.group_fault("GID_good"), None);
        assert_eq!(p.page_fault(1), None);
        let third: Vec<_> = (0..3).map(|_| p.page_fault(3)).collect();
        assert_eq!(
            third,
            [
                Some("InternalError".into()),
                Some("InternalError".into()),
                None
            ]
        );
        for _ in 0..5 {
            assert_eq!(p.page_fault(7).as_deref(), Some("InvalidParameter.GroupId"));
        }
        assert_eq!(p.draw(), None, "no random fault drawn");
    }

    #[test]
    fn out_of_range_probability_is_refused() {
        let f = Faults {
            p_hang: 1.5,
            ..Faults::default()
        };
        assert!(f.validate().unwrap_err().to_string().contains("p_hang"));
    }
}
