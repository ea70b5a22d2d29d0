//! The gateway's answers: success and error bodies, headers, and the malformed fault pages.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use rand::Rng;
use serde_json::{Map, Value};

/// Response body type of every answer.
pub(crate) type Body = Full<Bytes>;

/// An error answer in the gateway's format.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The gateway's error `Code`.
    pub code: Cow<'static, str>,
    /// The gateway's `Message`.
    pub message: String,
}

impl ApiError {
    /// An error answer with `status`, `code` and `message`.
    pub(crate) fn new(
        status: u16,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// `IncompleteSignature`, saying `why`.
    pub(crate) fn incomplete(why: &str) -> ApiError {
        ApiError::new(
            400,
            "IncompleteSignature",
            format!("The request signature does not conform to Aliyun standards. ({why})"),
        )
    }
}

/// A RequestId shaped like the gateway's: upper-case hex, 8-4-4-4-12.
pub(crate) fn request_id() -> String {
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

/// HTTP 200 `{"RequestId": ..}` plus the action's own `fields`.
pub(crate) fn success_response(fields: Map<String, Value>) -> Response<Body> {
    let id = request_id();
    let mut body = fields;
    body.insert("RequestId".into(), Value::String(id.clone()));
    let body = Value::Object(body).to_string();
    let mut resp = raw_response(200, "application/json;charset=utf-8", &body);
    set_request_id(&mut resp, &id);
    resp
}

/// The gateway's HTTP status for an error `code` that a fault injects.
pub(crate) fn status_for_code(code: &str) -> u16 {
    match code {
        "InternalError" | "SystemOverFlow" => 500,
        "ServiceUnavailable" => 503,
        "ApiNotSupport" | "InvalidAction.NotFound" | "InvalidAccessKeyId.NotFound" => 404,
        "Forbidden.RAM" => 403,
        _ => 400,
    }
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

/// The gateway's JSON error for `product` (`OnsMqtt`, `Sts`); throttles may carry
/// `x-acs-retry-after`, in milliseconds.
pub(crate) fn error_response(
    e: &ApiError,
    host: &str,
    product: &str,
    retry_after_ms: Option<u64>,
) -> Response<Body> {
    let id = request_id();
    let recommend = format!(
        "https://api.aliyun.com/troubleshoot?q={}&product={product}&requestId={id}",
        e.code
    );
    let body = serde_json::to_string(&ErrorBody {
        request_id: &id,
        message: &e.message,
        host_id: host,
        code: &e.code,
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

/// A load balancer's HTML 502 page.
pub(crate) fn html_502() -> Response<Body> {
    raw_response(
        502,
        "text/html",
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n",
    )
}

/// A response with `status`, `content_type` and `body`.
pub(crate) fn raw_response(status: u16, content_type: &str, body: &str) -> Response<Body> {
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
    fn request_ids_look_like_the_gateway_s() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert!(id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase()));
    }
}
