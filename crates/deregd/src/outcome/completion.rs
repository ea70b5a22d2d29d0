//! What an outcome writes into its job's row: a pure function of the job, the outcome, the
//! attempt and the retry settings, beside [`super::classify`] which makes the outcome.

use crate::config::RetrySettings;
use crate::job::{Job, Status};
use crate::retry;
use crate::store::jobs::Completion;

use super::Outcome;

/// The row change for `job` after call number `attempt` (1-based) ended in `outcome`, at
/// `now_ms` (unix ms). A transient failure is rescheduled (jittered backoff, at least any
/// retry-after) until `retry.max_attempts` calls are spent, then `failed`; a pause returns the
/// job to pending without counting the call. `billed_second` is left for the caller, who
/// knows when the call went.
pub fn completion_for(
    job: &Job,
    outcome: &Outcome,
    attempt: i64,
    retry: &RetrySettings,
    now_ms: i64,
) -> Completion {
    let mut completion = Completion::new(job, Status::Pending);
    completion.count_attempt = true;
    completion.next_attempt_at = now_ms;
    let code = outcome.code().to_string();
    match outcome {
        Outcome::Succeeded { request_id } => {
            completion.status = Status::Succeeded;
            completion.request_id = request_id.clone();
        }
        Outcome::NotFound {
            request_id,
            message,
        } => {
            completion.status = Status::NotFound;
            completion.code = Some(code);
            completion.message = Some(message.clone());
            completion.request_id = request_id.clone();
        }
        Outcome::Retry {
            message,
            request_id,
            retry_after,
            ..
        } => {
            completion.code = Some(code);
            completion.message = Some(message.clone());
            completion.request_id = request_id.clone();
            if attempt >= i64::from(retry.max_attempts) {
                completion.status = Status::Failed;
            } else {
                let mut delay = retry::delay_after(retry, attempt);
                if let Some(after) = retry_after {
                    delay = delay.max(*after);
                }
                completion.next_attempt_at = now_ms + delay.as_millis() as i64;
            }
        }
        Outcome::Permanent {
            message,
            request_id,
            ..
        } => {
            completion.status = Status::Failed;
            completion.code = Some(code);
            completion.message = Some(message.clone());
            completion.request_id = request_id.clone();
        }
        Outcome::Pause {
            message,
            request_id,
            ..
        }
        | Outcome::StaleCredentials {
            message,
            request_id,
            ..
        } => {
            // Not this job's fault: back to pending, the call not counted.
            completion.count_attempt = false;
            completion.code = Some(code);
            completion.message = Some(message.clone());
            completion.request_id = request_id.clone();
        }
    }
    completion
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outcome::{PauseScope, Pressure};

    fn job(attempts: i64) -> Job {
        Job {
            id: 7,
            instance_id: "post-cn-0pp12gl0001".into(),
            client_id: "GID_a@@@d".into(),
            run: "r".into(),
            attempts,
            malformed: None,
        }
    }

    fn retry_outcome(retry_after: Option<Duration>) -> Outcome {
        Outcome::Retry {
            code: "SystemOverFlow".into(),
            message: "busy".into(),
            request_id: Some("R".into()),
            pressure: Some(Pressure::Overloaded),
            retry_after,
        }
    }

    #[test]
    fn each_outcome_writes_its_row_change() {
        let retry = RetrySettings {
            max_attempts: 3,
            base_delay: Duration::from_millis(1000),
            max_delay: Duration::from_millis(60_000),
        };
        let now = 1_000_000;
        // (outcome, attempt, status, counted, code, earliest and latest next attempt)
        type Row<'a> = (Outcome, i64, Status, bool, Option<&'a str>, i64, i64);
        let table: Vec<Row> = vec![
            (
                Outcome::Succeeded {
                    request_id: Some("R".into()),
                },
                1,
                Status::Succeeded,
                true,
                None,
                now,
                now,
            ),
            (
                Outcome::NotFound {
                    request_id: None,
                    message: "gone".into(),
                },
                2,
                Status::NotFound,
                true,
                Some("DeviceCredentialNotFound"),
                now,
                now,
            ),
            // First retry: half to all of the base delay.
            (
                retry_outcome(None),
                1,
                Status::Pending,
                true,
                Some("SystemOverFlow"),
                now + 500,
                now + 1000,
            ),
            // Second: half to all of twice the base.
            (
                retry_outcome(None),
                2,
                Status::Pending,
                true,
                Some("SystemOverFlow"),
                now + 1000,
                now + 2000,
            ),
            // A retry-after longer than the backoff wins.
            (
                retry_outcome(Some(Duration::from_secs(30))),
                1,
                Status::Pending,
                true,
                Some("SystemOverFlow"),
                now + 30_000,
                now + 30_000,
            ),
            // The last attempt spent: failed.
            (
                retry_outcome(None),
                3,
                Status::Failed,
                true,
                Some("SystemOverFlow"),
                now,
                now,
            ),
            (
                Outcome::Permanent {
                    code: "InvalidParameter.ClientId".into(),
                    message: "bad".into(),
                    request_id: None,
                },
                1,
                Status::Failed,
                true,
                Some("InvalidParameter.ClientId"),
                now,
                now,
            ),
            (
                Outcome::Pause {
                    scope: PauseScope::Account,
                    code: "SignatureDoesNotMatch".into(),
                    message: "m".into(),
                    request_id: None,
                    hint: "h",
                },
                8,
                Status::Pending,
                false,
                Some("SignatureDoesNotMatch"),
                now,
                now,
            ),
        ];
        for (outcome, attempt, status, counted, code, earliest, latest) in table {
            let c = completion_for(&job(attempt - 1), &outcome, attempt, &retry, now);
            assert_eq!(c.job_id, 7);
            assert_eq!(c.status, status, "{outcome:?}");
            assert_eq!(c.count_attempt, counted, "{outcome:?}");
            assert_eq!(c.code.as_deref(), code, "{outcome:?}");
            assert!(
                (earliest..=latest).contains(&c.next_attempt_at),
                "{outcome:?}: {} not in {earliest}..={latest}",
                c.next_attempt_at
            );
            assert_eq!(c.billed_second, None, "billing is the caller's");
        }
    }
}
