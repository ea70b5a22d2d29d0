//! Authentication of one request: which scheme, which key, timestamp, signature, STS token.
//!
//! Pure functions over an already-read request; the nonce and throttling checks need shared
//! state and live in `handler`.

use chrono::{DateTime, NaiveDateTime, Utc};
use hyper::header::HeaderMap;

use super::answer::ApiError;
use super::handler::{Incoming, Shared};
use super::verify;
use super::AccessKey;

/// Largest skew between a request's timestamp and the emulator's clock.
const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// Result of authentication: who called, with which nonce, asking for what.
#[derive(Debug)]
pub(crate) struct Authenticated {
    /// The verified AccessKeyId.
    pub key_id: String,
    /// The request's signature nonce (V3 header or V2 parameter).
    pub nonce: String,
    /// The requested action (`x-acs-action` or `Action`).
    pub action: String,
    /// The requested API version (`x-acs-version` or `Version`).
    pub version: String,
    /// Decoded API parameters from the query string and any form body.
    pub params: Vec<(String, String)>,
}

/// Authenticates `req`; also returns the AccessKeyId once it is known to exist.
pub(crate) fn authenticate(
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

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_form(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
