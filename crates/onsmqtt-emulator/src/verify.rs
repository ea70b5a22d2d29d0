//! Signature checking for both vendor schemes (V3 `ACS3-HMAC-SHA256`, V2 `HMAC-SHA1`).
//!
//! Written independently of the client signer in `src/api/` on purpose: if both sides shared
//! one canonicalisation bug, the tests would pass and the real gateway would refuse us. The unit
//! tests below pin every test vector from the vendor documentation.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Name of the V3 signing algorithm, as it appears in `Authorization` and the StringToSign.
pub(crate) const V3_ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// Percent-encodes `input` the vendor's way: only `A-Z a-z 0-9 - _ . ~` survive, every other
/// UTF-8 byte becomes `%XY` with upper-case hex (so a space is `%20`, never `+`).
pub(crate) fn percent_encode(input: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len() + 8);
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0x0f) as usize] as char);
        }
    }
    out
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space, `%XY` a byte).
/// Invalid escapes are kept literally, like lenient servers do; invalid UTF-8 is replaced.
pub(crate) fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits a query string or form body into decoded `(name, value)` pairs, in order.
pub(crate) fn parse_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Lower-case hex of sha256(`data`).
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Compares two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parsed `Authorization` header of a V3 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V3Authorization {
    /// The AccessKeyId from `Credential=`.
    pub access_key_id: String,
    /// Lower-case header names from `SignedHeaders=`, in the order the client listed them.
    pub signed_headers: Vec<String>,
    /// Lower-case hex signature from `Signature=`.
    pub signature: String,
}

/// Parses `ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..`; `None` when garbled.
pub(crate) fn parse_v3_authorization(header: &str) -> Option<V3Authorization> {
    let rest = header.trim().strip_prefix(V3_ALGORITHM)?;
    if !rest.starts_with(' ') {
        return None;
    }
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Credential" => cred = Some(v.trim().to_string()),
            "SignedHeaders" => signed = Some(v.trim().to_string()),
            "Signature" => sig = Some(v.trim().to_string()),
            _ => return None,
        }
    }
    let (cred, signed, sig) = (cred?, signed?, sig?);
    if cred.is_empty() || signed.is_empty() || sig.is_empty() {
        return None;
    }
    Some(V3Authorization {
        access_key_id: cred,
        signed_headers: signed
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        signature: sig.to_ascii_lowercase(),
    })
}

/// Everything a V3 StringToSign depends on, already extracted from the request.
#[derive(Debug, Clone)]
pub(crate) struct V3Input<'a> {
    /// HTTP method as sent (`POST`).
    pub method: &'a str,
    /// Request path (`/`).
    pub path: &'a str,
    /// Decoded query parameters.
    pub query: &'a [(String, String)],
    /// `(lower-case name, value)` for each signed header; values are trimmed here.
    pub headers: &'a [(String, String)],
    /// Hex sha256 of the body, as the client declared it in `x-acs-content-sha256`.
    pub payload_hash: &'a str,
}

/// Builds the V3 canonical request: method, path, query, headers, signed header list, hash.
pub(crate) fn v3_canonical_request(input: &V3Input<'_>) -> String {
    let mut query: Vec<(String, String)> = input
        .query
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.sort();
    let mut canonical_headers = String::new();
    for (k, v) in &headers {
        canonical_headers.push_str(k);
        canonical_headers.push(':');
        canonical_headers.push_str(v);
        canonical_headers.push('\n');
    }
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method, input.path, query, canonical_headers, signed, input.payload_hash
    )
}

/// `ACS3-HMAC-SHA256\n` + hex(sha256(canonical request)).
pub(crate) fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{V3_ALGORITHM}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Lower-case hex of hmac_sha256(key = secret, string_to_sign).
pub(crate) fn v3_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// V2 StringToSign: `METHOD&%2F&pe(sorted pe(name)=pe(value) joined by &)`; `Signature` excluded.
pub(crate) fn v2_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> =
        params.iter().filter(|(k, _)| k != "Signature").collect();
    // The SDKs sort by raw parameter name, then encode.
    sorted.sort();
    let canonical = sorted
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{method}&{}&{}",
        percent_encode("/"),
        percent_encode(&canonical)
    )
}

/// base64(hmac_sha1(key = secret + "&", string_to_sign)).
pub(crate) fn v2_signature(secret: &str, string_to_sign: &str) -> String {
    let key = format!("{secret}&");
    let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("a b*c@d~e"), "a%20b%2Ac%40d~e");
        assert_eq!(percent_encode("é/+="), "%C3%A9%2F%2B%3D");
        assert_eq!(percent_decode("a%20b+c%2a%zz%4"), "a b c*%zz%4");
    }

    fn vector1_params() -> Vec<(String, String)> {
        owned(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ])
    }

    #[test]
    fn v2_documentation_vector_reproduces_string_to_sign_and_signatures() {
        let sts = v2_string_to_sign("GET", &vector1_params());
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(
            v2_signature("testsecret", &sts),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        let post = v2_string_to_sign("POST", &vector1_params());
        assert_eq!(
            v2_signature("testsecret", &post),
            "MxbnVAM4w6sft9xjVpe/GCKueuk="
        );
    }

    #[test]
    fn v2_vector_of_this_operation_reproduces_both_methods() {
        // Given in a shuffled order on purpose: the verifier must sort.
        let params = owned(&[
            ("InstanceId", "post-cn-0pp12gl****"),
            ("Action", "UnRegisterDeviceCredential"),
            ("Version", "2020-04-20"),
            ("Format", "JSON"),
            ("AccessKeyId", "testid"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", "0123456789abcdef0123456789abcdef"),
            ("Timestamp", "2024-01-01T00:00:00Z"),
            ("ClientId", "GID_test@@@test"),
            ("Signature", "ignored"),
        ]);
        let post = v2_string_to_sign("POST", &params);
        assert_eq!(
            v2_signature("testsecret", &post),
            "2dmkV/OOc6wbnv4gMWpGYViEpoI="
        );
        let get = v2_string_to_sign("GET", &params);
        assert_eq!(
            v2_signature("testsecret", &get),
            "HLONpJBRxNJFnJPh+eVmqLyaDXk="
        );
    }

    #[test]
    fn v3_documentation_vector_reproduces_hash_and_signature() {
        let query = owned(&[
            ("RegionId", "cn-shanghai"),
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
        ]);
        let headers = owned(&[
            ("x-acs-version", "2014-05-26"),
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
        ]);
        let cr = v3_canonical_request(&V3Input {
            method: "POST",
            path: "/",
            query: &query,
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        });
        assert_eq!(
            sha256_hex(cr.as_bytes()),
            "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        let sts = v3_string_to_sign(&cr);
        assert_eq!(
            v3_signature("YourAccessKeySecret", &sts),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn v3_vector_of_this_operation_reproduces_query_hash_and_signature() {
        let query = owned(&[
            ("InstanceId", "post-cn-0pp12gl****"),
            ("ClientId", "GID_test@@@test"),
        ]);
        let headers = owned(&[
            ("host", "onsmqtt.cn-hangzhou.aliyuncs.com"),
            ("x-acs-action", "UnRegisterDeviceCredential"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", "2024-01-01T00:00:00Z"),
            ("x-acs-signature-nonce", "0123456789abcdef0123456789abcdef"),
            ("x-acs-version", "2020-04-20"),
        ]);
        let cr = v3_canonical_request(&V3Input {
            method: "POST",
            path: "/",
            query: &query,
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        });
        assert_eq!(
            cr.lines().nth(2),
            Some("ClientId=GID_test%40%40%40test&InstanceId=post-cn-0pp12gl%2A%2A%2A%2A")
        );
        // The canonical headers block ends with "\n", which leaves an empty line.
        assert!(cr.contains("x-acs-version:2020-04-20\n\nhost;x-acs-action;"));
        assert_eq!(
            sha256_hex(cr.as_bytes()),
            "d3da5f60af0b99da0b44a29e36ee92fef0987cda38ce83e05c79a6e3c13a6b68"
        );
        assert_eq!(
            v3_signature("testsecret", &v3_string_to_sign(&cr)),
            "e6140d8e0d03691fd3c5767e3d451b61186bfcf6365ce256d8b4029ac9823842"
        );
    }

    #[test]
    fn v3_authorization_parses_and_rejects_garbage() {
        let a = parse_v3_authorization(
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-date,Signature=ABCD",
        )
        .unwrap();
        assert_eq!(a.access_key_id, "testid");
        assert_eq!(a.signed_headers, vec!["host", "x-acs-date"]);
        assert_eq!(a.signature, "abcd");
        assert!(parse_v3_authorization("ACS3-HMAC-SHA256 Credential=testid").is_none());
        assert!(parse_v3_authorization("Bearer x").is_none());
        assert!(
            parse_v3_authorization("ACS3-HMAC-SHA256Credential=a,SignedHeaders=b,Signature=c")
                .is_none()
        );
    }
}
