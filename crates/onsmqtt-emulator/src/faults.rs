//! Seeded fault injection: which fault (if any) a valid request meets, and the added latency.
//!
//! Decisions come from one `StdRng` seeded from `EmulatorSettings::seed`, drawn in a fixed order
//! per request, so a run with the same seed and the same request order injects the same faults.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

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
    /// Connection reset; `deregister_first` says whether the call took effect before it.
    Reset { deregister_first: bool },
    /// No answer, then close; `deregister_first` as above.
    Hang { deregister_first: bool },
    /// A malformed answer; `deregister_first` as above.
    Malformed {
        kind: Malformed,
        deregister_first: bool,
    },
}

/// The seeded source of fault decisions.
#[derive(Debug)]
pub(crate) struct FaultPlan {
    faults: Faults,
    rng: StdRng,
    malformed_turn: usize,
}

impl FaultPlan {
    /// A plan drawing from `seed`.
    pub(crate) fn new(faults: Faults, seed: u64) -> FaultPlan {
        FaultPlan {
            faults,
            rng: StdRng::seed_from_u64(seed),
            malformed_turn: 0,
        }
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
                deregister_first: self.rng.gen_bool(0.5),
            });
        }
        if self.hit(hang) {
            return Some(Fault::Hang {
                deregister_first: self.rng.gen_bool(0.5),
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
                deregister_first: self.rng.gen_bool(0.5),
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
    fn out_of_range_probability_is_refused() {
        let f = Faults {
            p_hang: 1.5,
            ..Faults::default()
        };
        assert!(f.validate().unwrap_err().to_string().contains("p_hang"));
    }
}
