//! Authentication of one request: which scheme, which key, timestamp, signature, STS token.
//!
//! Pure functions over an already-read request; the nonce and throttling checks need shared
//! state and live in `handler`.

use chrono::{DateTime, NaiveDateTime, Utc};
use hyper::header::HeaderMap;

use super::answer::ApiError;
use super::handler::Incoming;
use super::shared::Shared;
use super::tempkeys::{check_temp_token, TempKey};
use super::verify;

/// Largest skew between a request's timestamp and the emulator's clock.
const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// Result of authentication: who called, with which nonce, asking for what.
#[derive(Debug)]
pub(crate) struct Authenticated {
    /// The verified AccessKeyId.
    pub key_id: String,
    /// The account whose budgets the call uses.
    pub account: String,
    /// The request's signature nonce (V3 header or V2 parameter).
    pub nonce: String,
    /// The requested action (`x-acs-action` or `Action`).
    pub action: String,
    /// The requested API version (`x-acs-version` or `Version`).
    pub version: String,
    /// Decoded API parameters from the query string and any form body.
    pub params: Vec<(String, String)>,
}

/// A key as the verifier sees it: a long-term one or an issued temporary one.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub id: String,
    pub secret: String,
    pub account: String,
    pub token: TokenRule,
}

/// Which SecurityToken a key needs.
#[derive(Debug, Clone)]
pub(crate) enum TokenRule {
    /// None (a long-term key; a token sent along is ignored).
    None,
    /// Exactly this one (a key configured with a token; any other answers `Expired`).
    Fixed(String),
    /// Its own, until it expires.
    Temporary(TempKey),
}

/// The key a request named, once it is known to exist.
#[derive(Debug, Clone)]
pub(crate) struct KeySeen {
    pub id: String,
    pub temporary: bool,
}

/// A request's decoded parameters: query string, and form body when it is one.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
}

impl Params {
    /// Decodes the query and, for a form content type, the body.
    pub(crate) fn of(req: &Incoming) -> Params {
        let form = if is_form(&req.headers) {
            verify::parse_pairs(&String::from_utf8_lossy(&req.body))
        } else {
            Vec::new()
        };
        Params {
            query: verify::parse_pairs(&req.query),
            form,
        }
    }

    /// Query then form parameters.
    pub(crate) fn all(&self) -> Vec<(String, String)> {
        self.query.iter().chain(&self.form).cloned().collect()
    }

    /// The first parameter called `name`, query first.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        param(&self.query, name).or_else(|| param(&self.form, name))
    }
}

/// Authenticates `req`; also returns the key it named once that is known to exist.
pub(crate) fn authenticate(
    shared: &Shared,
    req: &Incoming,
    params: &Params,
) -> (Result<Authenticated, ApiError>, Option<KeySeen>) {
    let authorization = header_str(&req.headers, "authorization");
    let seen = |k: &Key| {
        Some(KeySeen {
            id: k.id.clone(),
            temporary: matches!(k.token, TokenRule::Temporary(_)),
        })
    };
    match authorization {
        Some(a) if a.trim_start().starts_with(verify::V3_ALGORITHM) => {
            let Some(parsed) = verify::parse_v3_authorization(a) else {
                return (
                    Err(ApiError::incomplete("malformed Authorization header")),
                    None,
                );
            };
            let Some(key) = shared.key(&parsed.access_key_id) else {
                return (Err(key_not_found()), None);
            };
            let result = verify_v3(&key, parsed, req, &params.query).map(|mut auth| {
                auth.params = params.all();
                auth
            });
            (result, seen(&key))
        }
        Some(_) if params.get("Signature").is_none() => (
            Err(ApiError::incomplete("unsupported Authorization scheme")),
            None,
        ),
        _ => {
            let Some(id) = params.get("AccessKeyId") else {
                return (Err(ApiError::incomplete("missing AccessKeyId")), None);
            };
            let Some(key) = shared.key(id) else {
                return (Err(key_not_found()), None);
            };
            (verify_v2(&key, req, params.all()), seen(&key))
        }
    }
}

fn verify_v3(
    key: &Key,
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
        account: key.account.clone(),
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
    key: &Key,
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
        account: key.account.clone(),
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

fn check_token(key: &Key, presented: Option<&str>) -> Result<(), ApiError> {
    match (&key.token, presented) {
        (TokenRule::None, _) => Ok(()),
        (TokenRule::Temporary(temp), _) => check_temp_token(temp, presented),
        (TokenRule::Fixed(_), None) => Err(ApiError::new(
            400,
            "InvalidSecurityToken.Missing",
            "The SecurityToken is required for this AccessKeyId.",
        )),
        (TokenRule::Fixed(want), Some(got))
            if verify::constant_time_eq(want.as_bytes(), got.as_bytes()) =>
        {
            Ok(())
        }
        (TokenRule::Fixed(_), Some(_)) => Err(ApiError::new(
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
