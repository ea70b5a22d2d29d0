//! One request, start to finish: authenticate, throttle, validate, inject faults, deregister.
//!
//! Checks run in the gateway's order: signature scheme and key, timestamp, signature, STS
//! token, nonce, throttling, then version/action/parameters, then faults and the registry.
//! CPU work (hashing) happens outside the state lock; the lock covers only bookkeeping.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use rand::Rng;
use serde_json::json;

use super::faults::{Fault, FaultPlan, Malformed};
use super::state::{State, MAX_RECORDED_OFFSETS};
use super::verify;
use super::AccessKey;

/// The only API version this emulator serves.
pub const API_VERSION: &str = "2020-04-20";
/// The one action it implements.
pub const ACTION: &str = "UnRegisterDeviceCredential";
/// Largest skew between a request's timestamp and the emulator's clock.
const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

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

/// Response body type of every answer.
pub type Body = Full<Bytes>;

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

/// An error answer in the gateway's format.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn incomplete(why: &str) -> ApiError {
        ApiError::new(
            400,
            "IncompleteSignature",
            format!("The request signature does not conform to Aliyun standards. ({why})"),
        )
    }
}

/// Result of authentication.
#[derive(Debug)]
struct Authenticated {
    key_id: String,
    nonce: String,
    action: String,
    version: String,
    params: Vec<(String, String)>,
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

/// Authenticates `req`; also returns the AccessKeyId once it is known to exist.
fn authenticate(
    shared: &Shared,
    req: &Incoming,
) -> (Result<Authenticated, ApiError>, Option<String>) {
    let authorization = header_str(&req.headers, "authorization");
    let mut query = verify::parse_pairs(&req.query);
    let form = if is_form(&req.headers) {
        verify::parse_pairs(&String::from_utf8_lossy(&req.body))
    } else {
        Vec::new()
    };
    match authorization {
        Some(a) if a.trim_start().starts_with(verify::V3_ALGORITHM) => {
            let Some(parsed) = verify::parse_v3_authorization(a) else {
                return (
                    Err(ApiError::incomplete("malformed Authorization header")),
                    None,
                );
            };
            let Some(key) = shared.keys.get(&parsed.access_key_id) else {
                return (Err(key_not_found()), None);
            };
            let key_id = Some(key.id.clone());
            let result = verify_v3(key, parsed, req, &query).map(|mut auth| {
                auth.params = std::mem::take(&mut query);
                auth.params.extend(form);
                auth
            });
            (result, key_id)
        }
        Some(_) if !query.iter().chain(&form).any(|(k, _)| k == "Signature") => (
            Err(ApiError::incomplete("unsupported Authorization scheme")),
            None,
        ),
        _ => {
            query.extend(form);
            let Some(id) = param(&query, "AccessKeyId") else {
                return (Err(ApiError::incomplete("missing AccessKeyId")), None);
            };
            let Some(key) = shared.keys.get(id) else {
                return (Err(key_not_found()), None);
            };
            let key_id = Some(key.id.clone());
            (verify_v2(key, req, query), key_id)
        }
    }
}

fn verify_v3(
    key: &AccessKey,
    auth: verify::V3Authorization,
    req: &Incoming,
    query: &[(String, String)],
) -> Result<Authenticated, ApiError> {
    let signed = &auth.signed_headers;
    if !signed.iter().any(|h| h == "host") {
        return Err(ApiError::incomplete("host must be a signed header"));
    }
    // Every x-acs-* header the client sends must be covered by the signature.
    for name in req.headers.keys() {
        if name.as_str().starts_with("x-acs-") && !signed.iter().any(|h| h == name.as_str()) {
            return Err(ApiError::incomplete(&format!(
                "{name} must be a signed header"
            )));
        }
    }
    let mut headers = Vec::with_capacity(signed.len());
    for name in signed {
        let values: Vec<&str> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        if values.is_empty() {
            return Err(ApiError::incomplete(&format!(
                "signed header {name} is absent"
            )));
        }
        headers.push((name.clone(), values.join(",")));
    }
    let date = header_str(&req.headers, "x-acs-date")
        .ok_or_else(|| ApiError::incomplete("missing x-acs-date"))?;
    let nonce = header_str(&req.headers, "x-acs-signature-nonce")
        .ok_or_else(|| ApiError::incomplete("missing x-acs-signature-nonce"))?;
    check_timestamp(date)?;

    let body_hash = verify::sha256_hex(&req.body);
    let declared = header_str(&req.headers, "x-acs-content-sha256").unwrap_or(&body_hash);
    let canonical = verify::v3_canonical_request(&verify::V3Input {
        method: &req.method,
        path: &req.path,
        query,
        headers: &headers,
        payload_hash: declared,
    });
    let string_to_sign = verify::v3_string_to_sign(&canonical);
    let expected = verify::v3_signature(&key.secret, &string_to_sign);
    // A body that does not match its declared hash is as unsigned as a wrong signature.
    if !declared.eq_ignore_ascii_case(&body_hash)
        || !verify::constant_time_eq(expected.as_bytes(), auth.signature.as_bytes())
    {
        return Err(signature_mismatch(&string_to_sign));
    }
    check_token(key, header_str(&req.headers, "x-acs-security-token"))?;
    Ok(Authenticated {
        key_id: key.id.clone(),
        nonce: nonce.to_string(),
        action: header_str(&req.headers, "x-acs-action")
            .unwrap_or("")
            .to_string(),
        version: header_str(&req.headers, "x-acs-version")
            .unwrap_or("")
            .to_string(),
        params: Vec::new(),
    })
}

fn verify_v2(
    key: &AccessKey,
    req: &Incoming,
    params: Vec<(String, String)>,
) -> Result<Authenticated, ApiError> {
    let signature = param(&params, "Signature").unwrap_or_default();
    if param(&params, "SignatureMethod") != Some("HMAC-SHA1") {
        return Err(ApiError::incomplete("SignatureMethod must be HMAC-SHA1"));
    }
    if param(&params, "SignatureVersion") != Some("1.0") {
        return Err(ApiError::incomplete("SignatureVersion must be 1.0"));
    }
    let nonce = param(&params, "SignatureNonce")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::incomplete("missing SignatureNonce"))?
        .to_string();
    let timestamp =
        param(&params, "Timestamp").ok_or_else(|| ApiError::incomplete("missing Timestamp"))?;
    check_timestamp(timestamp)?;
    let string_to_sign = verify::v2_string_to_sign(&req.method, &params);
    let expected = verify::v2_signature(&key.secret, &string_to_sign);
    if !verify::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(signature_mismatch(&string_to_sign));
    }
    check_token(key, param(&params, "SecurityToken"))?;
    let action = param(&params, "Action").unwrap_or("").to_string();
    let version = param(&params, "Version").unwrap_or("").to_string();
    Ok(Authenticated {
        key_id: key.id.clone(),
        nonce,
        action,
        version,
        params,
    })
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

fn check_timestamp(value: &str) -> Result<(), ApiError> {
    let parsed = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%SZ")
        .map(|n| n.and_utc())
        .or_else(|_| DateTime::parse_from_rfc3339(value).map(|d| d.with_timezone(&Utc)));
    let Ok(at) = parsed else {
        return Err(ApiError::new(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        ));
    };
    if (Utc::now() - at).abs() > MAX_SKEW {
        return Err(ApiError::new(
            400,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    Ok(())
}

fn check_token(key: &AccessKey, presented: Option<&str>) -> Result<(), ApiError> {
    match (&key.security_token, presented) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(ApiError::new(
            400,
            "InvalidSecurityToken.Missing",
            "The SecurityToken is required for this AccessKeyId.",
        )),
        (Some(want), Some(got)) if verify::constant_time_eq(want.as_bytes(), got.as_bytes()) => {
            Ok(())
        }
        (Some(_), Some(_)) => Err(ApiError::new(
            400,
            "InvalidSecurityToken.Expired",
            "Specified SecurityToken is expired.",
        )),
    }
}

fn key_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidAccessKeyId.NotFound",
        "Specified access key is not found.",
    )
}

fn signature_mismatch(string_to_sign: &str) -> ApiError {
    ApiError::new(
        400,
        "SignatureDoesNotMatch",
        format!(
            "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
        ),
    )
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_form(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
}

/// A RequestId shaped like the gateway's: upper-case hex, 8-4-4-4-12.
pub fn request_id() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn success_response() -> Response<Body> {
    let id = request_id();
    let body = json!({ "RequestId": id }).to_string();
    let mut resp = raw_response(200, "application/json;charset=utf-8", &body);
    set_request_id(&mut resp, &id);
    resp
}

/// The gateway's error body, fields in the gateway's order.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody<'a> {
    request_id: &'a str,
    message: &'a str,
    host_id: &'a str,
    code: &'a str,
    recommend: &'a str,
}

fn error_response(e: &ApiError, host: &str, retry_after_ms: Option<u64>) -> Response<Body> {
    let id = request_id();
    let recommend = format!(
        "https://api.aliyun.com/troubleshoot?q={}&product=OnsMqtt&requestId={id}",
        e.code
    );
    let body = serde_json::to_string(&ErrorBody {
        request_id: &id,
        message: &e.message,
        host_id: host,
        code: e.code,
        recommend: &recommend,
    })
    .expect("error body serialises");
    let mut resp = raw_response(e.status, "application/json;charset=utf-8", &body);
    set_request_id(&mut resp, &id);
    if let Some(ms) = retry_after_ms {
        resp.headers_mut()
            .insert("x-acs-retry-after", HeaderValue::from(ms));
    }
    resp
}

fn html_502() -> Response<Body> {
    raw_response(
        502,
        "text/html",
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n",
    )
}

/// A response with `status`, `content_type` and `body`.
pub fn raw_response(status: u16, content_type: &str, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = StatusCode::from_u16(status).expect("valid status");
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("valid content type"),
    );
    resp
}

fn set_request_id(resp: &mut Response<Body>, id: &str) {
    resp.headers_mut().insert(
        "x-acs-request-id",
        HeaderValue::from_str(id).expect("hex request id"),
    );
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

    #[test]
    fn timestamps_are_checked_for_format_and_skew() {
        let now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        assert!(check_timestamp(&now).is_ok());
        assert_eq!(
            check_timestamp("2024-01-01T00:00:00Z").unwrap_err().code,
            "InvalidTimeStamp.Expired"
        );
        assert_eq!(
            check_timestamp("yesterday").unwrap_err().code,
            "InvalidTimeStamp.Format"
        );
    }

    #[test]
    fn request_ids_look_like_the_gateway_s() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert!(id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase()));
    }
}
