//! Request signing, both of the vendor's schemes, as pure functions of their inputs:
//! V3 `ACS3-HMAC-SHA256` (header `Authorization`) and V2 RPC `HMAC-SHA1` (query `Signature`).
//! Each attempt is signed anew with its own timestamp and nonce. Pinned by API.md's vectors.

use std::borrow::Cow;

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
    encode(text).into_owned()
}

/// [`percent_encode`], borrowing `text` when nothing in it needs escaping.
fn encode(text: &str) -> Cow<'_, str> {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).into()
}

/// Hex sha256 of an empty body.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// `name=value` pairs percent-encoded, sorted by encoded name, joined with `&`.
pub fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(Cow<'_, str>, Cow<'_, str>)> =
        params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
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
    let mut lowered: Vec<(Cow<'_, str>, &str)> = headers
        .iter()
        .map(|(k, v)| {
            let k = if k.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(k.to_ascii_lowercase())
            } else {
                Cow::Borrowed(*k)
            };
            (k, v.trim())
        })
        .collect();
    lowered.sort();
    let names: usize = lowered.iter().map(|(k, _)| k.len() + 1).sum();
    let values: usize = lowered.iter().map(|(_, v)| v.len() + 2).sum();
    let mut signed_headers = String::with_capacity(names);
    for (i, (k, _)) in lowered.iter().enumerate() {
        if i > 0 {
            signed_headers.push(';');
        }
        signed_headers.push_str(k);
    }
    let mut canonical = String::with_capacity(
        method.len() + query.len() + names + values + signed_headers.len() + body_sha256.len() + 6,
    );
    for part in [method, "\n/\n", query, "\n"] {
        canonical.push_str(part);
    }
    for (k, v) in &lowered {
        for part in [k.as_ref(), ":", v, "\n"] {
            canonical.push_str(part);
        }
    }
    for part in ["\n", &signed_headers, "\n", body_sha256] {
        canonical.push_str(part);
    }
    (canonical, signed_headers)
}

/// V3: `ACS3-HMAC-SHA256\n` + hex(sha256(canonical request)).
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    const PREFIX: &str = "ACS3-HMAC-SHA256\n";
    let hash = digest::digest(&digest::SHA256, canonical_request.as_bytes());
    let mut out = String::with_capacity(PREFIX.len() + 64);
    out.push_str(PREFIX);
    out.push_str(&hex::encode(hash));
    out
}

/// An AccessKeySecret made ready for one scheme's HMAC. ring pads the key into the HMAC's inner
/// and outer blocks when the key is made: made once per client, that is two SHA-256 blocks a
/// call less than making it for every signature. Its `Debug` never shows the key.
pub struct SigningKey(hmac::Key);

impl SigningKey {
    /// V3 (`ACS3-HMAC-SHA256`): keyed with the secret itself.
    pub fn v3(secret: &str) -> SigningKey {
        SigningKey(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    /// V2 (`HMAC-SHA1`): keyed with the secret followed by `&`.
    pub fn v2(secret: &str) -> SigningKey {
        let mut key = String::with_capacity(secret.len() + 1);
        key.push_str(secret);
        key.push('&');
        SigningKey(hmac::Key::new(
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            key.as_bytes(),
        ))
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// V3: hex(hmac_sha256(secret, string to sign)), with a [`SigningKey::v3`].
pub fn v3_signature(key: &SigningKey, string_to_sign: &str) -> String {
    hex::encode(hmac::sign(&key.0, string_to_sign.as_bytes()))
}

/// V2: `METHOD&%2F&` + pe(canonical query).
pub fn v2_string_to_sign(method: &str, canonical_query: &str) -> String {
    format!("{method}&%2F&{}", percent_encode(canonical_query))
}

/// V2: base64(hmac_sha1(secret + "&", string to sign)), with a [`SigningKey::v2`].
pub fn v2_signature(key: &SigningKey, string_to_sign: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key.0, string_to_sign.as_bytes()))
}

/// The signing timestamp, `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds). chrono's fixed RFC 3339
/// writer, not a strftime pattern parsed on every call.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What one signed call needs: the query string and the headers to send.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    /// The URL query, already percent-encoded.
    pub query: String,
    /// Headers to send, lower-case names (the V3 signed set but `host`, which the HTTP client
    /// sets from the URL, plus `authorization`; none for V2).
    pub headers: Vec<(&'static str, Cow<'a, str>)>,
}

/// The fixed parts of one call.
pub struct CallToSign<'a> {
    pub host: &'a str,
    pub action: &'a str,
    pub version: &'a str,
    /// Business parameters (ClientId, InstanceId).
    pub params: &'a [(&'a str, &'a str)],
    pub access_key_id: &'a str,
    /// The AccessKeySecret, made ready for the scheme in use.
    pub key: &'a SigningKey,
    pub security_token: Option<&'a str>,
    /// `YYYY-MM-DDTHH:MM:SSZ`, UTC.
    pub timestamp: &'a str,
    /// Unique per call.
    pub nonce: &'a str,
}

/// Signs a `POST /` with an empty body, V3. `call.key` is a [`SigningKey::v3`].
pub fn sign_v3<'a>(call: &CallToSign<'a>) -> SignedRequest<'a> {
    let query = canonical_query(call.params);
    let mut signed: Vec<(&'static str, &'a str)> = vec![
        ("host", call.host),
        ("x-acs-action", call.action),
        ("x-acs-content-sha256", EMPTY_BODY_SHA256),
        ("x-acs-date", call.timestamp),
        ("x-acs-signature-nonce", call.nonce),
        ("x-acs-version", call.version),
    ];
    if let Some(token) = call.security_token {
        signed.push(("x-acs-security-token", token));
    }
    let (canonical, signed_headers) =
        v3_canonical_request("POST", &query, &signed, EMPTY_BODY_SHA256);
    let signature = v3_signature(call.key, &v3_string_to_sign(&canonical));
    // The HTTP client sets Host from the URL.
    let mut headers: Vec<(&'static str, Cow<'a, str>)> = signed
        .into_iter()
        .filter(|(k, _)| *k != "host")
        .map(|(k, v)| (k, Cow::Borrowed(v)))
        .collect();
    headers.push((
        "authorization",
        Cow::Owned(format!(
            "ACS3-HMAC-SHA256 Credential={},SignedHeaders={signed_headers},Signature={signature}",
            call.access_key_id
        )),
    ));
    SignedRequest { query, headers }
}

/// Signs a `POST /` with an empty body, V2 (all parameters in the query string). `call.key` is
/// a [`SigningKey::v2`].
pub fn sign_v2<'a>(call: &CallToSign<'a>) -> SignedRequest<'a> {
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
    let signature = v2_signature(call.key, &v2_string_to_sign("POST", &canonical));
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
            v2_signature(&SigningKey::v2("testsecret"), &sts),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        let post = v2_string_to_sign("POST", &canonical);
        assert_eq!(
            v2_signature(&SigningKey::v2("testsecret"), &post),
            "MxbnVAM4w6sft9xjVpe/GCKueuk="
        );
    }

    fn vector_call<'a>(params: &'a [(&'a str, &'a str)], key: &'a SigningKey) -> CallToSign<'a> {
        CallToSign {
            host: "onsmqtt.cn-hangzhou.aliyuncs.com",
            action: "UnRegisterDeviceCredential",
            version: "2020-04-20",
            params,
            access_key_id: "testid",
            key,
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
        let key = SigningKey::v2("testsecret");
        let signed = sign_v2(&vector_call(&OP_PARAMS, &key));
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
            v2_signature(&SigningKey::v2("testsecret"), &sts),
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
            v3_signature(&SigningKey::v3("YourAccessKeySecret"), &sts),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn v3_canonical_headers_are_lower_cased_and_sorted_whatever_the_input() {
        let lower = [("host", "h"), ("x-acs-date", " d "), ("x-acs-action", "A")];
        let mixed = [("X-Acs-Date", "d"), ("Host", "h"), ("x-ACS-action", "A")];
        let expected = v3_canonical_request("POST", "q=1", &lower, EMPTY_BODY_SHA256);
        assert_eq!(
            v3_canonical_request("POST", "q=1", &mixed, EMPTY_BODY_SHA256),
            expected
        );
        assert_eq!(
            expected.0,
            format!("POST\n/\nq=1\nhost:h\nx-acs-action:A\nx-acs-date:d\n\nhost;x-acs-action;x-acs-date\n{EMPTY_BODY_SHA256}")
        );
    }

    #[test]
    fn a_signing_key_never_shows_its_secret() {
        for key in [
            SigningKey::v3("s3cret-value"),
            SigningKey::v2("s3cret-value"),
        ] {
            let shown = format!("{key:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn v3_reproduces_the_operation_vector() {
        let key = SigningKey::v3("testsecret");
        let signed = sign_v3(&vector_call(&OP_PARAMS, &key));
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
        let key = SigningKey::v3("testsecret");
        let mut call = vector_call(&OP_PARAMS, &key);
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
