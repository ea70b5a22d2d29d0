//! One request, start to finish: route, authenticate, throttle, validate, inject faults, act.
//!
//! Checks run in the gateway's order: signature scheme and key, timestamp, signature, STS
//! token, nonce, throttling, then version/action/parameters, then the instance permission,
//! the fixed faults (failing group or listing page), the seeded faults and the registry.
//! CPU work (hashing) happens outside the state lock; the lock covers only bookkeeping.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::Response;
use serde_json::{json, Map, Value};

use super::actions::{self, ActionKind, Op};
use super::answer::{
    error_response, html_502, raw_response, request_id, status_for_code, success_response,
    ApiError, Body,
};
use super::auth::{authenticate, header_str, Authenticated, KeySeen, Params};
use super::faults::{Fault, FaultPlan, Malformed};
use super::registry::group_of;
use super::shared::{Inner, Shared};
use super::stamp::Received;
use super::state::{Admission, Product, State};
use super::stats::FaultCounts;
use super::sts;

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
    Success(Map<String, Value>),
    Reset,
    Hang(Duration),
    Malformed(Malformed),
}

/// Handles one API request (the stats endpoint is handled by the caller).
pub(crate) fn handle(shared: &Shared, req: &Incoming) -> Action {
    let received = req.received.unwrap_or_else(Received::now);
    let now = received.at;
    let host = header_str(&req.headers, "host").unwrap_or("localhost");
    let params = Params::of(req);
    let named = |header: &str, name: &str| {
        header_str(&req.headers, header)
            .or_else(|| params.get(name))
            .unwrap_or("")
            .to_string()
    };
    let action = named("x-acs-action", "Action");
    let product = if named("x-acs-version", "Version") == sts::STS_VERSION {
        Product::Sts
    } else {
        Product::OnsMqtt(ActionKind::from_name(&action))
    };
    shared
        .lock()
        .state
        .record_arrival(received, req.peer, product);

    let (outcome, delay) = match product {
        Product::Sts => match sts::handle(shared, req, &params, &action, now) {
            Ok(fields) => (Outcome::Success(fields), Duration::ZERO),
            Err(e) => (Outcome::Error(e, None), Duration::ZERO),
        },
        Product::OnsMqtt(kind) => match authenticate(shared, req, &params) {
            (Ok(auth), _) => {
                let op = actions::parse(&auth);
                decide(shared, req, &auth, kind, op, now)
            }
            (Err(e), seen) => {
                rejected(shared, product, seen, &e, now);
                (Outcome::Error(e, None), Duration::ZERO)
            }
        },
    };
    let product_name = match product {
        Product::Sts => "Sts",
        Product::OnsMqtt(_) => "OnsMqtt",
    };
    match outcome {
        Outcome::Error(e, retry_after) => {
            Action::Answer(error_response(&e, host, product_name, retry_after), delay)
        }
        Outcome::Success(fields) => Action::Answer(success_response(fields), delay),
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

/// Counts a request that failed authentication.
pub(crate) fn rejected(
    shared: &Shared,
    product: Product,
    seen: Option<KeySeen>,
    e: &ApiError,
    now: Instant,
) {
    let mut inner = shared.lock();
    let state = &mut inner.state;
    if let Some(k) = &seen {
        state.record_key_arrival(&k.id, now);
        if k.temporary && e.code == "InvalidSecurityToken.Expired" {
            state.stats.sts.expired_rejected += 1;
        }
    }
    if e.code == "SignatureDoesNotMatch" {
        state.stats.signature_failures += 1;
    }
    state.count_code(product, &e.code);
}

/// Records the request's nonce; a nonce used already within the TTL is refused (and counted).
pub(crate) fn use_nonce(
    state: &mut State,
    auth: &Authenticated,
    product: Product,
    now: Instant,
) -> Result<(), ApiError> {
    if state
        .nonces
        .check_and_insert(&auth.key_id, &auth.nonce, now)
    {
        return Ok(());
    }
    state.count_code(product, "SignatureNonceUsed");
    Err(ApiError::new(
        400,
        "SignatureNonceUsed",
        "Specified signature nonce was used already.",
    ))
}

/// The bookkeeping of an authenticated onsmqtt request, under one short lock: nonce,
/// throttling, the precomputed parameter check, the faults and the registry. Returns the
/// outcome and the added latency.
fn decide(
    shared: &Shared,
    req: &Incoming,
    auth: &Authenticated,
    kind: ActionKind,
    op: Result<Op, ApiError>,
    now: Instant,
) -> (Outcome, Duration) {
    let product = Product::OnsMqtt(kind);
    let mut guard = shared.lock();
    let Inner { state, plan } = &mut *guard;
    state.record_key_arrival(&auth.key_id, now);
    let fail = |state: &mut State, e: ApiError| {
        state.count_code(product, &e.code);
        (Outcome::Error(e, None), Duration::ZERO)
    };
    if let Err(e) = use_nonce(state, auth, product, now) {
        return (Outcome::Error(e, None), Duration::ZERO);
    }
    let admission = Admission {
        key_id: &auth.key_id,
        account: &auth.account,
        kind,
        peer: req.peer,
        limit: shared.limits.of(kind),
        ip_limit: shared.limits.ip,
    };
    if let Err(e) = state.admit(admission, now) {
        return (Outcome::Error(e, shared.retry_after_ms), Duration::ZERO);
    }
    let op = match op {
        Ok(op) => op,
        Err(e) => return fail(state, e),
    };
    if shared.forbidden_instances.contains(op.instance()) {
        let e = ApiError::new(
            400,
            "InstancePermissionCheckFailed",
            format!("No permission on the instance {}.", op.instance()),
        );
        return fail(state, e);
    }
    if let Some(e) = fixed_fault(plan, &op, &mut state.stats.faults_injected) {
        return fail(state, e);
    }

    // Seeded faults apply only from here on: to requests that would otherwise be served.
    let fault = plan.draw();
    let delay = plan.delay();
    let counts = &mut state.stats.faults_injected;
    let outcome = match fault {
        None => match actions::perform(&op, state, shared.list) {
            Ok(fields) => {
                state.record_success(kind, op.instance(), now);
                Outcome::Success(fields)
            }
            Err(e) => return (fail(state, e).0, delay),
        },
        Some(f @ (Fault::SystemOverflow | Fault::InternalError | Fault::ApplyTokenOverflow)) => {
            let e = answer_fault(f, counts);
            return (fail(state, e).0, delay);
        }
        Some(Fault::Reset { effect_first }) => {
            counts.reset += 1;
            effect_under_fault(state, &op, effect_first, shared);
            Outcome::Reset
        }
        Some(Fault::Hang { effect_first }) => {
            counts.hang += 1;
            effect_under_fault(state, &op, effect_first, shared);
            Outcome::Hang(Duration::from_millis(plan.hang_ms()))
        }
        Some(Fault::Malformed { kind, effect_first }) => {
            match kind {
                Malformed::Html502 => counts.malformed_html += 1,
                Malformed::TruncatedJson => counts.malformed_truncated += 1,
                Malformed::Empty => counts.malformed_empty += 1,
            }
            effect_under_fault(state, &op, effect_first, shared);
            Outcome::Malformed(kind)
        }
    };
    (outcome, delay)
}

/// The error of a failing group (UnRegister and Get) or listing page, if `op` meets one.
fn fixed_fault(plan: &mut FaultPlan, op: &Op, counts: &mut FaultCounts) -> Option<ApiError> {
    let (code, what) = match op {
        Op::UnRegister { client, .. } | Op::Get { client, .. } => {
            let group = group_of(client);
            let code = plan.group_fault(group)?.to_string();
            counts.group += 1;
            (code, format!("the GroupId {group}"))
        }
        Op::List(l) => {
            let code = plan.page_fault(l.page_no)?;
            counts.list_page += 1;
            (code, format!("page {} of {}", l.page_no, l.group))
        }
        Op::Register { .. } => return None,
    };
    let message = format!("The request on {what} failed ({code}).");
    Some(ApiError::new(status_for_code(&code), code, message))
}

/// The answer of a seeded answer fault, counted.
fn answer_fault(fault: Fault, counts: &mut FaultCounts) -> ApiError {
    let (counter, status, code, message) = match fault {
        Fault::SystemOverflow => (
            &mut counts.system_overflow,
            500,
            "SystemOverFlow",
            "The system is overloaded, please try again later.",
        ),
        Fault::InternalError => (
            &mut counts.internal_error,
            500,
            "InternalError",
            "The request processing has failed due to some unknown error.",
        ),
        _ => (
            &mut counts.apply_token_overflow,
            400,
            "ApplyTokenOverFlow",
            "Too many token applications, please try again later.",
        ),
    };
    *counter += 1;
    ApiError::new(status, code, message)
}

/// Resets, hangs and malformed answers may strike after the work was done, as in real life.
fn effect_under_fault(state: &mut State, op: &Op, first: bool, shared: &Shared) {
    if first
        && actions::perform(op, state, shared.list).is_ok()
        && op.kind() == ActionKind::UnRegister
    {
        state.stats.deregistered_under_fault += 1;
    }
}
