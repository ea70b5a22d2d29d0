//! One request, start to finish: authenticate, throttle, validate, inject faults, deregister.
//!
//! Checks run in the gateway's order: signature scheme and key, timestamp, signature, STS
//! token, nonce, throttling, then version/action/parameters, then faults and the registry.
//! CPU work (hashing) happens outside the state lock; the lock covers only bookkeeping.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::Response;
use serde_json::json;

use super::answer::{
    error_response, html_502, raw_response, request_id, success_response, ApiError, Body,
};
use super::auth::{authenticate, header_str, param, Authenticated};
use super::faults::{Fault, FaultPlan, Malformed};
use super::state::{State, MAX_RECORDED_OFFSETS};
use super::AccessKey;

/// The only API version this emulator serves.
pub const API_VERSION: &str = "2020-04-20";
/// The one action it implements.
pub const ACTION: &str = "UnRegisterDeviceCredential";

/// Other real onsmqtt 2020-04-20 actions: known to the gateway, not served here.
const OTHER_ACTIONS: &[&str] = &[
    "RegisterDeviceCredential",
    "GetDeviceCredential",
    "RefreshDeviceCredential",
    "QueryTokenStatus",
    "ApplyToken",
    "RevokeToken",
    "BatchQuerySessionByClientIds",
    "QuerySessionByClientId",
    "QueryMqttTraceDevice",
    "QueryMqttTraceMessageOfClient",
    "QueryMqttTraceMessagePublish",
    "QueryMqttTraceMessageSubscribe",
    "SendMessage",
    "ListGroupId",
    "CreateGroupId",
    "DeleteGroupId",
    "QueryCustomAuthConnectBlack",
    "AddCustomAuthConnectBlack",
    "DeleteCustomAuthConnectBlack",
    "QueryCustomAuthIdentity",
    "AddCustomAuthIdentity",
    "UpdateCustomAuthIdentity",
    "DeleteCustomAuthIdentity",
    "QueryCustomAuthPermission",
    "AddCustomAuthPermission",
    "UpdateCustomAuthPermission",
    "DeleteCustomAuthPermission",
];

/// Settings and state shared by all connections.
#[derive(Debug)]
pub struct Shared {
    /// Keys by AccessKeyId.
    pub keys: std::collections::HashMap<String, AccessKey>,
    /// Accepted calls allowed per sliding second, per AccessKeyId.
    pub rate_limit: u32,
    /// Accepted calls allowed per sliding second, per source IP.
    pub ip_limit: Option<u32>,
    /// Value of `x-acs-retry-after` on throttled answers, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// State and fault plan under one lock, so fault draws follow request order.
    pub inner: Mutex<Inner>,
}

/// What the lock guards.
#[derive(Debug)]
pub struct Inner {
    /// Registry, windows, stats.
    pub state: State,
    /// Seeded fault decisions.
    pub plan: FaultPlan,
}

/// A request already read off the wire.
#[derive(Debug)]
pub struct Incoming {
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    /// All headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
    /// Peer address.
    pub peer: IpAddr,
}

/// What the connection should do with a request.
#[derive(Debug)]
pub enum Action {
    /// Answer with this response after `delay`.
    Answer(Response<Body>, Duration),
    /// Reset the connection after `delay`.
    Reset(Duration),
    /// Keep the request hanging for `hang`, then close the connection.
    Hang(Duration),
}

/// Handles one API request (the stats endpoint is handled by the caller).
pub fn handle(shared: &Arc<Shared>, req: &Incoming) -> Action {
    let now = Instant::now();
    let host = header_str(&req.headers, "host")
        .unwrap_or("localhost")
        .to_string();
    shared
        .inner
        .lock()
        .expect("state lock")
        .state
        .record_arrival(now);

    let (auth, key_id) = authenticate(shared, req);
    let auth = match auth {
        Ok(a) => a,
        Err(e) => {
            let mut inner = shared.inner.lock().expect("state lock");
            if let Some(k) = &key_id {
                inner.state.record_key_arrival(k, now);
            }
            if e.code == "SignatureDoesNotMatch" {
                inner.state.stats.signature_failures += 1;
            }
            inner.state.count_code(e.code);
            drop(inner);
            return Action::Answer(error_response(&e, &host, None), Duration::ZERO);
        }
    };
    let request_check = check_request(&auth);

    let mut guard = shared.inner.lock().expect("state lock");
    let Inner { state, plan } = &mut *guard;
    state.record_key_arrival(&auth.key_id, now);
    if !state
        .nonces
        .check_and_insert(&auth.key_id, &auth.nonce, now)
    {
        let e = ApiError::new(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        );
        state.count_code(e.code);
        return Action::Answer(error_response(&e, &host, None), Duration::ZERO);
    }

    // Throttling: both windows are checked before either records, so a refused call counts
    // against neither.
    let key_window = state
        .accepted_by_key
        .entry(auth.key_id.clone())
        .or_default();
    let key_full = key_window.count(now) >= u64::from(shared.rate_limit);
    let ip_full = match shared.ip_limit {
        Some(limit) => {
            state.accepted_by_ip.entry(req.peer).or_default().count(now) >= u64::from(limit)
        }
        None => false,
    };
    if key_full || ip_full {
        let e = if key_full {
            ApiError::new(
                400,
                "Throttling.User",
                "Request was denied due to user flow control.",
            )
        } else {
            state.stats.throttled_by_ip += 1;
            ApiError::new(400, "Throttling", "Request was denied due to flow control.")
        };
        state.stats.throttled += 1;
        state.count_code(e.code);
        return Action::Answer(
            error_response(&e, &host, shared.retry_after_ms),
            Duration::ZERO,
        );
    }
    state
        .accepted_by_key
        .get_mut(&auth.key_id)
        .expect("inserted above")
        .record(now);
    if shared.ip_limit.is_some() {
        state
            .accepted_by_ip
            .get_mut(&req.peer)
            .expect("inserted above")
            .record(now);
    }
    state.accepted_all.record(now);
    state.stats.accepted += 1;
    if state.accepted_offsets.len() < MAX_RECORDED_OFFSETS {
        state
            .accepted_offsets
            .push(now.duration_since(state.started));
    }

    let (instance, client) = match request_check {
        Ok(ids) => ids,
        Err(e) => {
            state.count_code(e.code);
            return Action::Answer(error_response(&e, &host, None), Duration::ZERO);
        }
    };

    let fault = plan.draw();
    let delay = plan.delay();
    let deregister = |state: &mut State| -> bool {
        let done = state.registry.deregister(&instance, &client);
        if done {
            state.stats.deregistered += 1;
        }
        done
    };
    let fault_error = |code: &'static str, status: u16, message: &str| {
        Action::Answer(
            error_response(&ApiError::new(status, code, message), &host, None),
            delay,
        )
    };
    match fault {
        None => {
            if deregister(state) {
                state.record_success(&instance, now);
                state.count_code("OK");
                Action::Answer(success_response(), delay)
            } else {
                let e = ApiError::new(
                    400,
                    "DeviceCredentialNotFound",
                    "The device credential is not found.",
                );
                state.count_code(e.code);
                Action::Answer(error_response(&e, &host, None), delay)
            }
        }
        Some(Fault::SystemOverflow) => {
            state.stats.faults_injected.system_overflow += 1;
            state.count_code("SystemOverFlow");
            fault_error(
                "SystemOverFlow",
                500,
                "The system is overloaded, please try again later.",
            )
        }
        Some(Fault::InternalError) => {
            state.stats.faults_injected.internal_error += 1;
            state.count_code("InternalError");
            fault_error(
                "InternalError",
                500,
                "The request processing has failed due to some unknown error.",
            )
        }
        Some(Fault::ApplyTokenOverflow) => {
            state.stats.faults_injected.apply_token_overflow += 1;
            state.count_code("ApplyTokenOverFlow");
            fault_error(
                "ApplyTokenOverFlow",
                400,
                "Too many token applications, please try again later.",
            )
        }
        Some(Fault::Reset { deregister_first }) => {
            state.stats.faults_injected.reset += 1;
            if deregister_first && deregister(state) {
                state.stats.deregistered_under_fault += 1;
            }
            Action::Reset(delay)
        }
        Some(Fault::Hang { deregister_first }) => {
            state.stats.faults_injected.hang += 1;
            if deregister_first && deregister(state) {
                state.stats.deregistered_under_fault += 1;
            }
            Action::Hang(delay + Duration::from_millis(plan.hang_ms()))
        }
        Some(Fault::Malformed {
            kind,
            deregister_first,
        }) => {
            if deregister_first && deregister(state) {
                state.stats.deregistered_under_fault += 1;
            }
            let f = &mut state.stats.faults_injected;
            let resp = match kind {
                Malformed::Html502 => {
                    f.malformed_html += 1;
                    html_502()
                }
                Malformed::TruncatedJson => {
                    f.malformed_truncated += 1;
                    let full = json!({ "RequestId": request_id() }).to_string();
                    raw_response(
                        200,
                        "application/json;charset=utf-8",
                        &full[..full.len() / 2],
                    )
                }
                Malformed::Empty => {
                    f.malformed_empty += 1;
                    raw_response(200, "application/json;charset=utf-8", "")
                }
            };
            Action::Answer(resp, delay)
        }
    }
}

/// Version, action and parameters; returns `(InstanceId, ClientId)`.
fn check_request(auth: &Authenticated) -> Result<(String, String), ApiError> {
    if auth.version != API_VERSION {
        return Err(ApiError::new(
            400,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
        ));
    }
    if auth.action != ACTION {
        return Err(if OTHER_ACTIONS.contains(&auth.action.as_str()) {
            ApiError::new(404, "ApiNotSupport", "The API is not supported.")
        } else {
            ApiError::new(
                404,
                "InvalidAction.NotFound",
                "Specified api is not found, please check your url and method.",
            )
        });
    }
    let client = param(&auth.params, "ClientId")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                400,
                "MissingClientId",
                "ClientId is mandatory for this action.",
            )
        })?;
    let instance = param(&auth.params, "InstanceId")
        .filter(|i| !i.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                400,
                "MissingInstanceId",
                "InstanceId is mandatory for this action.",
            )
        })?;
    if !is_valid_client_id(client) {
        return Err(ApiError::new(
            400,
            "InvalidParameter.ClientId",
            "The specified parameter ClientId is invalid.",
        ));
    }
    Ok((instance.to_string(), client.to_string()))
}

/// The documented ClientId rule: `GroupId@@@DeviceId`, at most 64 characters, letters, digits,
/// `-` and `_` besides the one separator; GroupId 7–64 characters starting `GID_` or `GID-`.
pub fn is_valid_client_id(client: &str) -> bool {
    if client.len() > 64 {
        return false;
    }
    let mut parts = client.split("@@@");
    let (Some(group), Some(device), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let allowed = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (7..=64).contains(&group.len())
        && (group.starts_with("GID_") || group.starts_with("GID-"))
        && !device.is_empty()
        && allowed(group)
        && allowed(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_rule_matches_the_documentation() {
        assert!(is_valid_client_id("GID_test@@@test"));
        assert!(is_valid_client_id("GID-abc@@@d-1_x"));
        assert!(!is_valid_client_id("GID_te@@@x"), "GroupId shorter than 7");
        assert!(!is_valid_client_id("GROUP_test@@@x"));
        assert!(!is_valid_client_id("GID_test@@@"));
        assert!(!is_valid_client_id("GID_test@@test"));
        assert!(!is_valid_client_id("GID_test@@@a@@@b"));
        assert!(!is_valid_client_id("GID_test@@@a b"));
        assert!(!is_valid_client_id(&format!(
            "GID_test@@@{}",
            "x".repeat(55)
        )));
        assert!(is_valid_client_id(&format!(
            "GID_test@@@{}",
            "x".repeat(53)
        )));
    }
}
