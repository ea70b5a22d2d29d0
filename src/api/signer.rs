//! Request signing, both of the vendor's schemes, as pure functions of their inputs:
//! V3 `ACS3-HMAC-SHA256` (header `Authorization`) and V2 RPC `HMAC-SHA1` (query `Signature`).
//! Each attempt is signed anew with its own timestamp and nonce. Pinned by API.md's vectors.

use base64::Engine;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use ring::{digest, hmac};

/// Everything but `A-Z a-z 0-9 - _ . ~` is escaped, with upper-case hex (a space is `%20`).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The vendor's percent-encoding (RFC 3986 unreserved kept, UTF-8 bytes escaped).
pub fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

/// Hex sha256 of an empty body.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// `name=value` pairs percent-encoded, sorted by encoded name, joined with `&`.
pub fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    encoded.sort();
    let mut out = String::with_capacity(encoded.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (i, (k, v)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// V3: the canonical request. `headers` are the signed headers (any case, any order).
/// Returns the canonical request and the `SignedHeaders` list.
pub fn v3_canonical_request(
    method: &str,
    query: &str,
    headers: &[(&str, &str)],
    body_sha256: &str,
) -> (String, String) {
    let mut lowered: Vec<(String, &str)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    lowered.sort();
    let mut canonical_headers = String::new();
    for (k, v) in &lowered {
        canonical_headers.push_str(k);
        canonical_headers.push(':');
        canonical_headers.push_str(v);
        canonical_headers.push('\n');
    }
    let signed: Vec<&str> = lowered.iter().map(|(k, _)| k.as_str()).collect();
    let signed_headers = signed.join(";");
    let canonical =
        format!("{method}\n/\n{query}\n{canonical_headers}\n{signed_headers}\n{body_sha256}");
    (canonical, signed_headers)
}

/// V3: `ACS3-HMAC-SHA256\n` + hex(sha256(canonical request)).
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "ACS3-HMAC-SHA256\n{}",
        hex::encode(digest::digest(
            &digest::SHA256,
            canonical_request.as_bytes()
        ))
    )
}

/// V3: hex(hmac_sha256(secret, string to sign)).
pub fn v3_signature(secret: &str, string_to_sign: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(hmac::sign(&key, string_to_sign.as_bytes()))
}

/// V2: `METHOD&%2F&` + pe(canonical query).
pub fn v2_string_to_sign(method: &str, canonical_query: &str) -> String {
    format!("{method}&%2F&{}", percent_encode(canonical_query))
}

/// V2: base64(hmac_sha1(secret + "&", string to sign)).
pub fn v2_signature(secret: &str, string_to_sign: &str) -> String {
    let mut key = String::with_capacity(secret.len() + 1);
    key.push_str(secret);
    key.push('&');
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, string_to_sign.as_bytes()))
}

/// The signing timestamp, `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds). chrono's fixed RFC 3339
/// writer, not a strftime pattern parsed on every call.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What one signed call needs: the query string and the headers to send.
#[derive(Debug)]
pub struct SignedRequest {
    /// The URL query, already percent-encoded.
    pub query: String,
    /// Headers to send (the V3 signed set plus `Authorization`; none for V2).
    pub headers: Vec<(&'static str, String)>,
}

/// The fixed parts of one call.
pub struct CallToSign<'a> {
    pub host: &'a str,
    pub action: &'a str,
    pub version: &'a str,
    /// Business parameters (ClientId, InstanceId).
    pub params: &'a [(&'a str, &'a str)],
    pub access_key_id: &'a str,
    pub access_key_secret: &'a str,
    pub security_token: Option<&'a str>,
    /// `YYYY-MM-DDTHH:MM:SSZ`, UTC.
    pub timestamp: &'a str,
    /// Unique per call.
    pub nonce: &'a str,
}

/// Signs a `POST /` with an empty body, V3.
pub fn sign_v3(call: &CallToSign<'_>) -> SignedRequest {
    let query = canonical_query(call.params);
    let mut headers: Vec<(&'static str, String)> = vec![
        ("host", call.host.to_string()),
        ("x-acs-action", call.action.to_string()),
        ("x-acs-content-sha256", EMPTY_BODY_SHA256.to_string()),
        ("x-acs-date", call.timestamp.to_string()),
        ("x-acs-signature-nonce", call.nonce.to_string()),
        ("x-acs-version", call.version.to_string()),
    ];
    if let Some(token) = call.security_token {
        headers.push(("x-acs-security-token", token.to_string()));
    }
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (canonical, signed_headers) =
        v3_canonical_request("POST", &query, &pairs, EMPTY_BODY_SHA256);
    let signature = v3_signature(call.access_key_secret, &v3_string_to_sign(&canonical));
    headers.push((
        "authorization",
        format!(
            "ACS3-HMAC-SHA256 Credential={},SignedHeaders={signed_headers},Signature={signature}",
            call.access_key_id
        ),
    ));
    // The HTTP client sets Host from the URL.
    headers.retain(|(k, _)| *k != "host");
    SignedRequest { query, headers }
}

/// Signs a `POST /` with an empty body, V2 (all parameters in the query string).
pub fn sign_v2(call: &CallToSign<'_>) -> SignedRequest {
    let mut params: Vec<(&str, &str)> = vec![
        ("Action", call.action),
        ("Version", call.version),
        ("Format", "JSON"),
        ("AccessKeyId", call.access_key_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", call.nonce),
        ("Timestamp", call.timestamp),
    ];
    if let Some(token) = call.security_token {
        params.push(("SecurityToken", token));
    }
    params.extend_from_slice(call.params);
    let canonical = canonical_query(&params);
    let signature = v2_signature(
        call.access_key_secret,
        &v2_string_to_sign("POST", &canonical),
    );
    let query = format!("{canonical}&Signature={}", percent_encode(&signature));
    SignedRequest {
        query,
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_PARAMS: [(&str, &str); 8] = [
        ("AccessKeyId", "testid"),
        ("Action", "DescribeRegions"),
        ("Format", "XML"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
        ("SignatureVersion", "1.0"),
        ("Timestamp", "2016-02-23T12:46:24Z"),
        ("Version", "2014-05-26"),
    ];

    #[test]
    fn timestamps_are_utc_whole_seconds_with_a_z() {
        let at = chrono::DateTime::from_timestamp(1_456_231_584, 987_000_000).expect("valid");
        assert_eq!(timestamp(at), "2016-02-23T12:46:24Z");
        let midnight = chrono::DateTime::from_timestamp(1_795_737_600, 0).expect("valid");
        assert_eq!(timestamp(midnight), "2026-11-27T00:00:00Z");
    }

    #[test]
    fn percent_encoding_follows_the_vendor_rules() {
        assert_eq!(
            percent_encode("a b*c~d@e/é+"),
            "a%20b%2Ac~d%40e%2F%C3%A9%2B"
        );
        assert_eq!(percent_encode("A-Z_a.z~09"), "A-Z_a.z~09");
    }

    #[test]
    fn v2_reproduces_the_documentation_vector() {
        let canonical = canonical_query(&V1_PARAMS);
        let sts = v2_string_to_sign("GET", &canonical);
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(
            v2_signature("testsecret", &sts),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        let post = v2_string_to_sign("POST", &canonical);
        assert_eq!(
            v2_signature("testsecret", &post),
            "MxbnVAM4w6sft9xjVpe/GCKueuk="
        );
    }

    fn vector_call<'a>(params: &'a [(&'a str, &'a str)]) -> CallToSign<'a> {
        CallToSign {
            host: "onsmqtt.cn-hangzhou.aliyuncs.com",
            action: "UnRegisterDeviceCredential",
            version: "2020-04-20",
            params,
            access_key_id: "testid",
            access_key_secret: "testsecret",
            security_token: None,
            timestamp: "2024-01-01T00:00:00Z",
            nonce: "0123456789abcdef0123456789abcdef",
        }
    }

    const OP_PARAMS: [(&str, &str); 2] = [
        ("ClientId", "GID_test@@@test"),
        ("InstanceId", "post-cn-0pp12gl****"),
    ];

    #[test]
    fn v2_reproduces_the_operation_vector() {
        let signed = sign_v2(&vector_call(&OP_PARAMS));
        let expected = percent_encode("2dmkV/OOc6wbnv4gMWpGYViEpoI=");
        assert!(
            signed.query.ends_with(&format!("&Signature={expected}")),
            "{}",
            signed.query
        );
        // GET variant of the same vector, from the lower-level functions.
        let mut params = vec![
            ("Action", "UnRegisterDeviceCredential"),
            ("Version", "2020-04-20"),
            ("Format", "JSON"),
            ("AccessKeyId", "testid"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", "0123456789abcdef0123456789abcdef"),
            ("Timestamp", "2024-01-01T00:00:00Z"),
        ];
        params.extend_from_slice(&OP_PARAMS);
        let sts = v2_string_to_sign("GET", &canonical_query(&params));
        assert_eq!(
            v2_signature("testsecret", &sts),
            "HLONpJBRxNJFnJPh+eVmqLyaDXk="
        );
    }

    #[test]
    fn v3_reproduces_the_documentation_vector() {
        let query = canonical_query(&[
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ]);
        let headers = [
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", EMPTY_BODY_SHA256),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ];
        let (canonical, signed) = v3_canonical_request("POST", &query, &headers, EMPTY_BODY_SHA256);
        assert_eq!(
            signed,
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
        );
        let sts = v3_string_to_sign(&canonical);
        assert_eq!(
            sts,
            "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        assert_eq!(
            v3_signature("YourAccessKeySecret", &sts),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn v3_reproduces_the_operation_vector() {
        let signed = sign_v3(&vector_call(&OP_PARAMS));
        assert_eq!(
            signed.query,
            "ClientId=GID_test%40%40%40test&InstanceId=post-cn-0pp12gl%2A%2A%2A%2A"
        );
        let auth = &signed
            .headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        assert!(auth.ends_with(
            "Signature=e6140d8e0d03691fd3c5767e3d451b61186bfcf6365ce256d8b4029ac9823842"
        ));
        assert!(
            auth.starts_with("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-action;")
        );
    }

    #[test]
    fn v3_signs_the_security_token_header() {
        let mut call = vector_call(&OP_PARAMS);
        call.security_token = Some("tok");
        let signed = sign_v3(&call);
        let auth = &signed.headers.last().unwrap().1;
        assert!(
            auth.contains("x-acs-security-token;x-acs-signature-nonce"),
            "{auth}"
        );
        assert!(signed
            .headers
            .iter()
            .any(|(k, v)| *k == "x-acs-security-token" && v == "tok"));
    }
}
