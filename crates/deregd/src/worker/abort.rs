//! The abort rule (as AWS IoT Jobs' `abortConfig`): among a run's last `abort_min_answers`
//! answers that ended a job `succeeded` or `failed`, when the share of `failed` reaches
//! `abort_failure_share` (the run's own, else `limits.abort_failure_share`), the run is paused,
//! not its remaining jobs failed, so a systematic problem costs about `abort_min_answers`
//! jobs. Transient answers (a retry is scheduled) and `not_found` never count. A share of 0
//! turns the rule off.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::job::Status;

/// The last answers of one run: `Some(code)` for a failed job, `None` for a succeeded one.
#[derive(Debug, Default)]
struct Window {
    last: VecDeque<Option<String>>,
    failed: usize,
}

/// The abort rule's windows, one per run.
#[derive(Debug, Default)]
pub(crate) struct Aborts {
    windows: HashMap<String, Window>,
}

impl Aborts {
    /// Counts a job's final answer. Returns the reason to pause `run` when the rule trips
    /// (the run's window starts again empty).
    pub(crate) fn record(
        &mut self,
        run: &str,
        status: Status,
        code: Option<&str>,
        share: f64,
        min_answers: u32,
    ) -> Option<String> {
        let entry = match status {
            Status::Succeeded => None,
            Status::Failed => Some(code.unwrap_or("unknown").to_string()),
            _ => return None,
        };
        if share <= 0.0 || min_answers == 0 {
            return None;
        }
        let window = self.windows.entry(run.to_string()).or_default();
        if entry.is_some() {
            window.failed += 1;
        }
        window.last.push_back(entry);
        while window.last.len() > min_answers as usize {
            if window.last.pop_front().flatten().is_some() {
                window.failed -= 1;
            }
        }
        let answers = window.last.len();
        if answers < min_answers as usize || (window.failed as f64) < share * answers as f64 {
            return None;
        }
        let reason = describe(window, share);
        self.windows.remove(run);
        Some(reason)
    }

    /// Forgets `run`'s answers (it was paused, by the rule or by hand).
    pub(crate) fn reset(&mut self, run: &str) {
        self.windows.remove(run);
    }
}

/// `"38 % of the last 100 answers failed (abort_failure_share 20 %): InvalidParameter.GroupId
/// x 37, InternalError x 1"`.
fn describe(window: &Window, share: f64) -> String {
    let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
    for code in window.last.iter().flatten() {
        *codes.entry(code.as_str()).or_default() += 1;
    }
    let mut codes: Vec<(&str, usize)> = codes.into_iter().collect();
    codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = codes
        .iter()
        .take(3)
        .map(|(code, n)| format!("{code} x {n}"))
        .collect();
    let more = codes.len().saturating_sub(3);
    format!(
        "aborted: {:.0} % of the last {} answers failed (abort_failure_share {:.0} %): {}{}",
        window.failed as f64 * 100.0 / window.last.len() as f64,
        window.last.len(),
        share * 100.0,
        shown.join(", "),
        if more > 0 {
            format!(" and {more} other codes")
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_once_the_window_is_full_and_the_share_is_reached() {
        let mut a = Aborts::default();
        // 3 of every 5 fail: the window of 10 trips at its 10th answer, not before.
        let mut tripped = None;
        for i in 0..10 {
            let (status, code) = if i % 5 < 3 {
                (Status::Failed, Some("InvalidParameter.GroupId"))
            } else {
                (Status::Succeeded, None)
            };
            if let Some(why) = a.record("r", status, code, 0.2, 10) {
                tripped = Some((i, why));
            }
        }
        let (at, why) = tripped.expect("tripped");
        assert_eq!(at, 9);
        assert!(why.contains("60 % of the last 10"), "{why}");
        assert!(why.contains("InvalidParameter.GroupId x 6"), "{why}");
        // It starts again empty.
        assert_eq!(
            a.record("r", Status::Failed, Some("X"), 0.2, 10),
            None,
            "one answer is not a window"
        );
    }

    #[test]
    fn transient_answers_not_found_and_other_runs_never_count() {
        let mut a = Aborts::default();
        for _ in 0..50 {
            assert_eq!(
                a.record("r", Status::Pending, Some("InternalError"), 0.2, 10),
                None
            );
            assert_eq!(a.record("r", Status::NotFound, None, 0.2, 10), None);
            assert_eq!(a.record("r", Status::Succeeded, None, 0.2, 10), None);
        }
        // One failure in ten stays under a fifth; the other run's failures are its own.
        assert_eq!(a.record("r", Status::Failed, Some("E"), 0.2, 10), None);
        for _ in 0..9 {
            assert_eq!(a.record("other", Status::Succeeded, None, 0.2, 10), None);
        }
        assert!(a
            .record("other", Status::Failed, Some("E"), 0.1, 10)
            .is_some());
    }

    #[test]
    fn old_answers_leave_the_window_and_a_zero_share_is_off() {
        let mut a = Aborts::default();
        for _ in 0..3 {
            assert_eq!(a.record("r", Status::Failed, Some("E"), 0.5, 10), None);
        }
        for _ in 0..20 {
            assert_eq!(a.record("r", Status::Succeeded, None, 0.5, 10), None);
        }
        for _ in 0..4 {
            assert_eq!(a.record("r", Status::Failed, Some("E"), 0.5, 10), None);
        }
        assert!(a.record("r", Status::Failed, Some("E"), 0.5, 10).is_some());
        for _ in 0..100 {
            assert_eq!(a.record("off", Status::Failed, Some("E"), 0.0, 10), None);
        }
    }
}
