//! The ONE place that decides what an API answer means for a job: succeeded, not_found, retry
//! later, permanent failure, or a pause (the credentials, clock, permissions or API are wrong, so
//! every job would fail alike and none must be burnt). Everything else acts on [`Outcome`].

use std::time::Duration;

use serde::Deserialize;

use crate::api::{Answer, TransportError};

mod completion;
pub(crate) mod sanitize;

pub use completion::completion_for;

/// Who a pause applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseScope {
    /// Every call of this account would fail alike.
    Account,
    /// Calls on this job's instance would fail alike.
    Instance,
}

pub use crate::pacing::Pressure;

/// What one call's answer means.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// HTTP 2xx with a RequestId: the credential is gone, and the call was billed.
    Succeeded { request_id: Option<String> },
    /// DeviceCredentialNotFound: the goal state already holds.
    NotFound {
        request_id: Option<String>,
        message: String,
    },
    /// Transient: call again later. `pressure` asks the pacing to slow down.
    Retry {
        code: String,
        message: String,
        request_id: Option<String>,
        pressure: Option<Pressure>,
        retry_after: Option<Duration>,
    },
    /// This job's input is bad: retrying cannot help.
    Permanent {
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// The credentials the call was signed with were refused (`InvalidSecurityToken.*`: expired,
    /// malformed, not matching the key): renewable ones are renewed at once and the job is
    /// called again; the attempt is not counted. The dispatcher pauses when they cannot be.
    StaleCredentials {
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// Stop dispatching (account or instance); the job stays pending, its attempt not counted.
    Pause {
        scope: PauseScope,
        code: String,
        message: String,
        request_id: Option<String>,
        /// What the operator should check.
        hint: &'static str,
    },
}

impl Outcome {
    pub fn code(&self) -> &str {
        match self {
            Outcome::Succeeded { .. } => "OK",
            Outcome::NotFound { .. } => "DeviceCredentialNotFound",
            Outcome::Retry { code, .. }
            | Outcome::Permanent { code, .. }
            | Outcome::StaleCredentials { code, .. }
            | Outcome::Pause { code, .. } => code,
        }
    }
}

/// Classified answer plus whether the call was billed.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub outcome: Outcome,
    /// True for a successful answer (2xx with a RequestId): the call added one to the
    /// instance's TPS. A 2xx whose body is damaged is retried, not counted: whether the gateway
    /// billed it is unknown, and a retry settles it (DeviceCredentialNotFound if it went through).
    pub billed: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    request_id: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

/// Maps an answer (or its absence) to an [`Outcome`].
pub fn classify(answer: &Result<Answer, TransportError>) -> Classified {
    classify_keeping(answer, true)
}

/// [`classify`] for an answer that may carry a device's secret (`GetDeviceCredential`): of a
/// body that is not the API's JSON, nothing is kept but its status and length.
pub(crate) fn classify_withheld(answer: &Result<Answer, TransportError>) -> Classified {
    classify_keeping(answer, false)
}

fn classify_keeping(answer: &Result<Answer, TransportError>, excerpt: bool) -> Classified {
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let code = match error {
                TransportError::Timeout => "Timeout",
                TransportError::Connect(_) => "ConnectError",
                TransportError::Broken(_) => "ConnectionBroken",
                TransportError::Oversized { .. } => "OversizedAnswer",
            };
            return Classified {
                outcome: Outcome::Retry {
                    code: code.into(),
                    message: sanitize::transport(&error.to_string()),
                    request_id: None,
                    pressure: None,
                    retry_after: None,
                },
                billed: false,
            };
        }
    };
    let ok_status = (200..300).contains(&answer.status);
    let body: Option<Body> = serde_json::from_slice(&answer.body).ok();
    let request_id = body
        .as_ref()
        .and_then(|b| b.request_id.as_deref())
        .or(answer.request_id.as_deref())
        .and_then(sanitize::request_id);
    let outcome = match body {
        Some(Body {
            code: None,
            request_id: Some(_),
            ..
        }) if ok_status => Outcome::Succeeded { request_id },
        Some(Body {
            code: Some(code),
            message,
            ..
        }) => by_code(
            answer,
            sanitize::code(&code),
            sanitize::message(message.as_deref().unwrap_or("")),
            request_id,
        ),
        _ => {
            // Not the JSON it should be: a proxy's HTML page, a truncated body, nothing at all.
            Outcome::Retry {
                code: format!("HTTP{}", answer.status),
                message: if excerpt {
                    sanitize::foreign_body(answer.status, &answer.body)
                } else {
                    sanitize::withheld_body(answer.status, &answer.body)
                },
                request_id,
                pressure: status_pressure(answer.status),
                retry_after: answer.retry_after,
            }
        }
    };
    let billed = matches!(outcome, Outcome::Succeeded { .. });
    Classified { outcome, billed }
}

fn by_code(answer: &Answer, code: String, message: String, request_id: Option<String>) -> Outcome {
    let retry = |pressure: Option<Pressure>| Outcome::Retry {
        code: code.clone(),
        message: message.clone(),
        request_id: request_id.clone(),
        pressure,
        retry_after: answer.retry_after,
    };
    let pause = |scope: PauseScope, hint: &'static str| Outcome::Pause {
        scope,
        code: code.clone(),
        message: message.clone(),
        request_id: request_id.clone(),
        hint,
    };
    let permanent = || Outcome::Permanent {
        code: code.clone(),
        message: message.clone(),
        request_id: request_id.clone(),
    };
    match code.as_str() {
        "DeviceCredentialNotFound" => Outcome::NotFound {
            request_id,
            message,
        },
        c if c.starts_with("Throttling") => retry(Some(Pressure::Throttled)),
        "SystemOverFlow" | "ApplyTokenOverFlow" | "ServiceUnavailable" => {
            retry(Some(Pressure::Overloaded))
        }
        "InternalError" | "SignatureNonceUsed" => retry(None),
        "ParameterCheckFailed" | "MissingParameter" => permanent(),
        c if c.starts_with("InvalidParameter") || c.starts_with("Missing") => permanent(),
        "SignatureDoesNotMatch" | "IncompleteSignature" => pause(
            PauseScope::Account,
            "check ALIBABA_CLOUD_ACCESS_KEY_SECRET (and api.signature)",
        ),
        c if c.starts_with("InvalidAccessKeyId") => pause(
            PauseScope::Account,
            "check ALIBABA_CLOUD_ACCESS_KEY_ID: the key is unknown or disabled",
        ),
        c if c.starts_with("InvalidSecurityToken") => Outcome::StaleCredentials {
            code: code.clone(),
            message: message.clone(),
            request_id: request_id.clone(),
        },
        c if c.starts_with("InvalidTimeStamp") => pause(
            PauseScope::Account,
            "check this host's clock (NTP): the gateway allows 15 minutes of skew",
        ),
        "CheckAccountInfoFailed" => pause(
            PauseScope::Account,
            "check the account and its STS token in the vendor console",
        ),
        "Forbidden.RAM" => pause(
            PauseScope::Account,
            "grant the RAM user permission for onsmqtt:UnRegisterDeviceCredential",
        ),
        "ApiNotSupport" | "InvalidAction.NotFound" | "InvalidApi.NotFound" | "InvalidVersion" => {
            pause(
                PauseScope::Account,
                "check api.endpoint: the region or instance type may not support this API",
            )
        }
        "InstancePermissionCheckFailed" | "PermissionCheckFailed" => pause(
            PauseScope::Instance,
            "grant the RAM user permission on this instance and its GroupIds",
        ),
        _ if answer.status >= 500 || answer.status == 429 => retry(status_pressure(answer.status)),
        // An unknown 4xx code: retry, so a transient oddity does not fail the job outright;
        // retry.max_attempts bounds it.
        _ => retry(None),
    }
}

/// Every code an answer is known to carry, plus deregd's own for transport errors: the codes
/// metrics are labelled with. Anything else is counted as [`OTHER_CODE`], so a gateway (or a
/// hostile peer) inventing codes cannot make series without end.
const KNOWN_CODES: &[&str] = &[
    "OK",
    "DeviceCredentialNotFound",
    "Throttling",
    "Throttling.User",
    "Throttling.Api",
    "SystemOverFlow",
    "ApplyTokenOverFlow",
    "ServiceUnavailable",
    "InternalError",
    "SignatureNonceUsed",
    "ParameterCheckFailed",
    "MissingParameter",
    "MissingClientId",
    "MissingInstanceId",
    "InvalidParameter.ClientId",
    "InvalidParameter.InstanceId",
    "InvalidParameter.GroupId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidAccessKeyId.NotFound",
    "InvalidAccessKeyId.Inactive",
    "InvalidSecurityToken.Expired",
    "InvalidSecurityToken.Malformed",
    "InvalidSecurityToken.MismatchWithAccessKey",
    "InvalidTimeStamp.Format",
    "InvalidTimeStamp.Expired",
    "CheckAccountInfoFailed",
    "Forbidden.RAM",
    "ApiNotSupport",
    "InvalidAction.NotFound",
    "InvalidApi.NotFound",
    "InvalidVersion",
    "InstancePermissionCheckFailed",
    "PermissionCheckFailed",
    "Timeout",
    "ConnectError",
    "ConnectionBroken",
    "OversizedAnswer",
    "InvalidInput",
    "HTTP200",
    "HTTP400",
    "HTTP403",
    "HTTP404",
    "HTTP429",
    "HTTP500",
    "HTTP502",
    "HTTP503",
    "HTTP504",
];

/// What to check when credentials that cannot be renewed are refused.
pub const STALE_CREDENTIALS_HINT: &str =
    "refresh ALIBABA_CLOUD_SECURITY_TOKEN (or use a renewable source: a RAM role, OIDC, a profile): the STS token is expired or wrong";

/// The label for codes outside [`KNOWN_CODES`].
pub const OTHER_CODE: &str = "other";

/// The metrics label of `code`: itself when known, else [`OTHER_CODE`].
pub fn metric_code(code: &str) -> &'static str {
    KNOWN_CODES
        .iter()
        .find(|known| **known == code)
        .copied()
        .unwrap_or(OTHER_CODE)
}

fn status_pressure(status: u16) -> Option<Pressure> {
    match status {
        429 => Some(Pressure::Throttled),
        503 => Some(Pressure::Overloaded),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<Answer, TransportError> {
        Ok(Answer {
            status,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            request_id: Some("HDR-ID".into()),
            retry_after: None,
        })
    }

    fn error_body(code: &str) -> String {
        format!(
            r#"{{"RequestId":"R1","Message":"m","HostId":"h","Code":"{code}","Recommend":"r"}}"#
        )
    }

    fn kind(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::NotFound { .. } => "not_found",
            Outcome::Retry {
                pressure: Some(Pressure::Throttled),
                ..
            } => "retry-throttled",
            Outcome::Retry {
                pressure: Some(Pressure::Overloaded),
                ..
            } => "retry-overloaded",
            Outcome::Retry { .. } => "retry",
            Outcome::Permanent { .. } => "permanent",
            Outcome::StaleCredentials { .. } => "stale-credentials",
            Outcome::Pause {
                scope: PauseScope::Account,
                ..
            } => "pause-account",
            Outcome::Pause { .. } => "pause-instance",
        }
    }

    #[test]
    fn every_documented_code_maps_to_its_class() {
        let table = [
            (400, "ApplyTokenOverFlow", "retry-overloaded"),
            (400, "CheckAccountInfoFailed", "pause-account"),
            (400, "InstancePermissionCheckFailed", "pause-instance"),
            (400, "ParameterCheckFailed", "permanent"),
            (400, "PermissionCheckFailed", "pause-instance"),
            (400, "InvalidParameter.ClientId", "permanent"),
            (400, "DeviceCredentialNotFound", "not_found"),
            (404, "ApiNotSupport", "pause-account"),
            (500, "InternalError", "retry"),
            (500, "SystemOverFlow", "retry-overloaded"),
            (400, "Throttling.User", "retry-throttled"),
            (400, "Throttling.Api", "retry-throttled"),
            (429, "Throttling", "retry-throttled"),
            (503, "Throttling", "retry-throttled"),
            (400, "SignatureDoesNotMatch", "pause-account"),
            (403, "SignatureDoesNotMatch", "pause-account"),
            (400, "IncompleteSignature", "pause-account"),
            (404, "InvalidAccessKeyId.NotFound", "pause-account"),
            (400, "InvalidAccessKeyId.Inactive", "pause-account"),
            (400, "InvalidSecurityToken.Expired", "stale-credentials"),
            (400, "InvalidSecurityToken.Malformed", "stale-credentials"),
            (
                400,
                "InvalidSecurityToken.MismatchWithAccessKey",
                "stale-credentials",
            ),
            (400, "InvalidTimeStamp.Format", "pause-account"),
            (400, "InvalidTimeStamp.Expired", "pause-account"),
            (400, "SignatureNonceUsed", "retry"),
            (400, "MissingClientId", "permanent"),
            (400, "MissingInstanceId", "permanent"),
            (400, "MissingParameter", "permanent"),
            (404, "InvalidAction.NotFound", "pause-account"),
            (404, "InvalidApi.NotFound", "pause-account"),
            (400, "InvalidVersion", "pause-account"),
            (403, "Forbidden.RAM", "pause-account"),
            (503, "ServiceUnavailable", "retry-overloaded"),
            (502, "SomethingNew", "retry"),
            (400, "SomethingNew", "retry"),
        ];
        for (status, code, expected) in table {
            let c = classify(&answer(status, &error_body(code)));
            assert_eq!(kind(&c.outcome), expected, "{status} {code}");
            assert!(!c.billed, "{code} must not be billed");
            assert_eq!(c.outcome.code(), code);
        }
    }

    #[test]
    fn a_json_success_is_billed_and_keeps_the_request_id() {
        let c = classify(&answer(200, r#"{"RequestId":"E4581CCD"}"#));
        assert_eq!(
            c.outcome,
            Outcome::Succeeded {
                request_id: Some("E4581CCD".into())
            }
        );
        assert!(c.billed);
    }

    #[test]
    fn bodies_that_are_not_the_expected_json_are_retried() {
        for (status, body) in [
            (502, "<html><body>Bad Gateway</body></html>"),
            (200, r#"{"RequestId":"E45"#),
            (200, ""),
            (200, "{}"),
            (500, "oops"),
        ] {
            let c = classify(&answer(status, body));
            assert_eq!(kind(&c.outcome), "retry", "{status} {body}");
            assert!(!c.billed, "{status} {body}");
        }
    }

    #[test]
    fn transport_errors_are_retried() {
        for e in [
            TransportError::Timeout,
            TransportError::Connect("refused".into()),
            TransportError::Broken("reset by peer".into()),
        ] {
            let c = classify(&Err(e));
            assert_eq!(kind(&c.outcome), "retry");
            assert!(!c.billed);
        }
    }

    #[test]
    fn the_echoed_string_to_sign_is_never_kept() {
        let body = r#"{"RequestId":"R","Code":"SignatureDoesNotMatch","Message":"Specified signature is not matched with our calculation. server string to sign is:POST&%2F&SecurityToken%3DSECRET"}"#;
        let c = classify(&answer(400, body));
        match c.outcome {
            Outcome::Pause { message, .. } => {
                assert_eq!(
                    message,
                    "Specified signature is not matched with our calculation."
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_answers_are_bounded_and_their_codes_fold_into_a_few_labels() {
        let huge = "X".repeat(10 * 1024 * 1024);
        let body = format!(r#"{{"RequestId":"{huge}","Code":"{huge}","Message":"{huge}"}}"#);
        let c = classify(&answer(400, &body));
        let Outcome::Retry {
            code,
            message,
            request_id,
            ..
        } = c.outcome
        else {
            panic!("an unknown code is retried");
        };
        assert_eq!(code.len(), 64);
        assert_eq!(request_id.map(|r| r.len()), Some(64));
        assert!(message.chars().count() <= 301, "{}", message.len());
        assert_eq!(metric_code(&code), OTHER_CODE);
        assert_eq!(metric_code("Throttling.User"), "Throttling.User");
        let labels: std::collections::BTreeSet<&str> = (0..6000)
            .map(|i| metric_code(&format!("Weird{i}")))
            .collect();
        assert_eq!(labels.len(), 1);
        let c = classify(&Err(TransportError::Oversized {
            status: 200,
            limit: 65536,
        }));
        assert_eq!(kind(&c.outcome), "retry");
        assert_eq!(c.outcome.code(), "OversizedAnswer");
        assert!(!c.billed);
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut a = answer(400, &error_body("Throttling.User")).unwrap();
        a.retry_after = Some(Duration::from_millis(250));
        match classify(&Ok(a)).outcome {
            Outcome::Retry { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_millis(250)))
            }
            other => panic!("{other:?}"),
        }
    }
}
