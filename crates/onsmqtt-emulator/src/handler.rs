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
use super::stamp::Received;
use super::state::{record_offset, State};
use super::AccessKey;

/// The only API version this emulator serves.
pub const API_VERSION: &str = "2020-04-20";
/// The one action it implements.
pub(crate) const ACTION: &str = "UnRegisterDeviceCredential";

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
pub(crate) struct Shared {
    /// Keys by AccessKeyId.
    pub keys: std::collections::HashMap<String, AccessKey>,
    /// Accepted calls allowed per sliding second, per AccessKeyId.
    pub rate_limit: u32,
    /// Accepted calls allowed per sliding second, per source IP.
    pub ip_limit: Option<u32>,
    /// Value of `x-acs-retry-after` on throttled answers, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// Instances answered with `InstancePermissionCheckFailed`.
    pub forbidden_instances: std::collections::HashSet<String>,
    /// State and fault plan under one lock, so fault draws follow request order.
    pub inner: Mutex<Inner>,
}

/// What the lock guards.
#[derive(Debug)]
pub(crate) struct Inner {
    /// Registry, windows, stats.
    pub state: State,
    /// Seeded fault decisions.
    pub plan: FaultPlan,
}

/// A request already read off the wire.
#[derive(Debug)]
pub(crate) struct Incoming {
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
    /// When the kernel received the request (`None`: handle time stands in).
    pub received: Option<Received>,
}

/// What the connection should do with a request.
#[derive(Debug)]
pub(crate) enum Action {
    /// Answer with this response after `delay`.
    Answer(Response<Body>, Duration),
    /// Reset the connection after `delay`.
    Reset(Duration),
    /// Keep the request hanging for `hang`, then close the connection.
    Hang(Duration),
}

/// What the locked bookkeeping decided; turned into a response after the lock is released.
#[derive(Debug)]
enum Outcome {
    Error(ApiError, Option<u64>),
    Success,
    Reset,
    Hang(Duration),
    Malformed(Malformed),
}

/// Handles one API request (the stats endpoint is handled by the caller).
pub(crate) fn handle(shared: &Arc<Shared>, req: &Incoming) -> Action {
    let received = req.received.unwrap_or_else(Received::now);
    let now = received.at;
    let host = header_str(&req.headers, "host").unwrap_or("localhost");
    shared.lock().state.record_arrival(received);

    let (auth, key_id) = authenticate(shared, req);
    let (outcome, delay) = match auth {
        Ok(auth) => {
            let request_check = check_request(&auth);
            decide(shared, req, &auth, request_check, now)
        }
        Err(e) => {
            let mut inner = shared.lock();
            if let Some(k) = &key_id {
                inner.state.record_key_arrival(k, now);
            }
            if e.code == "SignatureDoesNotMatch" {
                inner.state.stats.signature_failures += 1;
            }
            inner.state.count_code(e.code);
            (Outcome::Error(e, None), Duration::ZERO)
        }
    };
    match outcome {
        Outcome::Error(e, retry_after) => {
            Action::Answer(error_response(&e, host, retry_after), delay)
        }
        Outcome::Success => Action::Answer(success_response(), delay),
        Outcome::Reset => Action::Reset(delay),
        Outcome::Hang(wait) => Action::Hang(delay + wait),
        Outcome::Malformed(Malformed::Html502) => Action::Answer(html_502(), delay),
        Outcome::Malformed(Malformed::TruncatedJson) => {
            let full = json!({ "RequestId": request_id() }).to_string();
            let cut = &full[..full.len() / 2];
            Action::Answer(
                raw_response(200, "application/json;charset=utf-8", cut),
                delay,
            )
        }
        Outcome::Malformed(Malformed::Empty) => Action::Answer(
            raw_response(200, "application/json;charset=utf-8", ""),
            delay,
        ),
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("emulator state lock poisoned")
    }
}

/// The bookkeeping of an authenticated request, under one short lock: nonce, throttling,
/// the precomputed parameter check, the fault draw and the registry. Returns the outcome and
/// the added latency.
fn decide(
    shared: &Shared,
    req: &Incoming,
    auth: &Authenticated,
    request_check: Result<(String, String), ApiError>,
    now: Instant,
) -> (Outcome, Duration) {
    let mut guard = shared.lock();
    let Inner { state, plan } = &mut *guard;
    state.record_key_arrival(&auth.key_id, now);
    if !state
        .nonces
        .check_and_insert(&auth.key_id, &auth.nonce, now)
    {
        state.count_code("SignatureNonceUsed");
        let e = ApiError::new(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        );
        return (Outcome::Error(e, None), Duration::ZERO);
    }

    // Both windows are checked before either records, so a refused call counts against neither.
    let key_full = state
        .accepted_by_key
        .entry(auth.key_id.clone())
        .or_default()
        .count(now)
        >= u64::from(shared.rate_limit);
    let ip_full = shared.ip_limit.is_some_and(|limit| {
        state.accepted_by_ip.entry(req.peer).or_default().count(now) >= u64::from(limit)
    });
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
        return (Outcome::Error(e, shared.retry_after_ms), Duration::ZERO);
    }
    if let Some(w) = state.accepted_by_key.get_mut(&auth.key_id) {
        w.record(now);
    }
    if let Some(w) = state.accepted_by_ip.get_mut(&req.peer) {
        w.record(now);
    }
    state.accepted_all.record(now);
    state.stats.accepted += 1;
    let offset = now.duration_since(state.started);
    record_offset(&mut state.accepted_offsets, offset);

    let (instance, client) = match request_check {
        Ok(ids) => ids,
        Err(e) => {
            state.count_code(e.code);
            return (Outcome::Error(e, None), Duration::ZERO);
        }
    };

    if shared.forbidden_instances.contains(&instance) {
        let e = ApiError::new(
            400,
            "InstancePermissionCheckFailed",
            format!("No permission on the instance {instance}."),
        );
        state.count_code(e.code);
        return (Outcome::Error(e, None), Duration::ZERO);
    }

    // Faults apply only from here on: to requests that would otherwise be served.
    let fault = plan.draw();
    let delay = plan.delay();
    let deregister = |state: &mut State| -> bool {
        let done = state.registry.deregister(&instance, &client);
        if done {
            state.stats.deregistered += 1;
        }
        done
    };
    // Resets, hangs and malformed answers may strike after the work was done, as in real life.
    let deregister_under_fault = |state: &mut State, first: bool| {
        if first && deregister(state) {
            state.stats.deregistered_under_fault += 1;
        }
    };
    let outcome = match fault {
        None => {
            if deregister(state) {
                state.record_success(&instance, now);
                state.count_code("OK");
                Outcome::Success
            } else {
                state.count_code("DeviceCredentialNotFound");
                Outcome::Error(
                    ApiError::new(
                        400,
                        "DeviceCredentialNotFound",
                        "The device credential is not found.",
                    ),
                    None,
                )
            }
        }
        Some(Fault::SystemOverflow) => {
            state.stats.faults_injected.system_overflow += 1;
            state.count_code("SystemOverFlow");
            Outcome::Error(
                ApiError::new(
                    500,
                    "SystemOverFlow",
                    "The system is overloaded, please try again later.",
                ),
                None,
            )
        }
        Some(Fault::InternalError) => {
            state.stats.faults_injected.internal_error += 1;
            state.count_code("InternalError");
            Outcome::Error(
                ApiError::new(
                    500,
                    "InternalError",
                    "The request processing has failed due to some unknown error.",
                ),
                None,
            )
        }
        Some(Fault::ApplyTokenOverflow) => {
            state.stats.faults_injected.apply_token_overflow += 1;
            state.count_code("ApplyTokenOverFlow");
            Outcome::Error(
                ApiError::new(
                    400,
                    "ApplyTokenOverFlow",
                    "Too many token applications, please try again later.",
                ),
                None,
            )
        }
        Some(Fault::Reset { deregister_first }) => {
            state.stats.faults_injected.reset += 1;
            deregister_under_fault(state, deregister_first);
            Outcome::Reset
        }
        Some(Fault::Hang { deregister_first }) => {
            state.stats.faults_injected.hang += 1;
            deregister_under_fault(state, deregister_first);
            Outcome::Hang(Duration::from_millis(plan.hang_ms()))
        }
        Some(Fault::Malformed {
            kind,
            deregister_first,
        }) => {
            let c = &mut state.stats.faults_injected;
            match kind {
                Malformed::Html502 => c.malformed_html += 1,
                Malformed::TruncatedJson => c.malformed_truncated += 1,
                Malformed::Empty => c.malformed_empty += 1,
            }
            deregister_under_fault(state, deregister_first);
            Outcome::Malformed(kind)
        }
    };
    (outcome, delay)
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
