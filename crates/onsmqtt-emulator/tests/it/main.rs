//! End-to-end tests of the in-process emulator, driven over real HTTP with reqwest.
//!
//! The signer here is a deliberately tiny second implementation written from the API notes, so
//! the emulator's verifier is checked against something other than itself or `src/api`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use onsmqtt_emulator::{
    max_in_window, AccessKey, Emulator, EmulatorSettings, Faults, Registry, Stats,
};
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

const ACTION: &str = "UnRegisterDeviceCredential";
const INSTANCE: &str = "mqtt-cn-test0001";
const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- test signer

fn pe(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn now_stamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn fresh_nonce() -> String {
    hex::encode(rand::thread_rng().gen::<[u8; 16]>())
}

/// One call to make; fields default to a valid UnRegisterDeviceCredential with testid.
#[derive(Clone)]
struct Call {
    key_id: String,
    secret: String,
    token: Option<String>,
    action: String,
    version: String,
    params: Vec<(String, String)>,
    timestamp: String,
    nonce: String,
    method: reqwest::Method,
    /// V3 only: extra headers the client sends and signs.
    extra_signed: Vec<(String, String)>,
    /// V3 only: extra headers the client sends without signing them.
    extra_unsigned: Vec<(String, String)>,
    /// V3 only: a body sent while the signature claims an empty one.
    tampered_body: Option<String>,
}

impl Call {
    fn new(client: &str) -> Call {
        Call {
            key_id: "testid".into(),
            secret: "testsecret".into(),
            token: None,
            action: ACTION.into(),
            version: "2020-04-20".into(),
            params: vec![
                ("ClientId".into(), client.into()),
                ("InstanceId".into(), INSTANCE.into()),
            ],
            timestamp: now_stamp(),
            nonce: fresh_nonce(),
            method: reqwest::Method::POST,
            extra_signed: Vec::new(),
            extra_unsigned: Vec::new(),
            tampered_body: None,
        }
    }

    fn secret(mut self, s: &str) -> Call {
        self.secret = s.into();
        self
    }

    fn key(mut self, id: &str, secret: &str) -> Call {
        self.key_id = id.into();
        self.secret = secret.into();
        self
    }

    fn token(mut self, t: &str) -> Call {
        self.token = Some(t.into());
        self
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn code(&self) -> String {
        self.json()["Code"].as_str().unwrap_or("").to_string()
    }
}

async fn read(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("body");
    Answer {
        status,
        headers,
        body,
    }
}

fn sorted_query(params: &[(String, String)]) -> String {
    let mut q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", pe(k), pe(v)))
        .collect();
    q.sort();
    q.join("&")
}

async fn try_v3(
    http: &reqwest::Client,
    emu: &Emulator,
    c: &Call,
) -> reqwest::Result<reqwest::Response> {
    let query = sorted_query(&c.params);
    let body_hash = hex::encode(Sha256::digest(b""));
    let mut headers = vec![
        ("host".to_string(), emu.addr().to_string()),
        ("x-acs-action".to_string(), c.action.clone()),
        ("x-acs-content-sha256".to_string(), body_hash.clone()),
        ("x-acs-date".to_string(), c.timestamp.clone()),
        ("x-acs-signature-nonce".to_string(), c.nonce.clone()),
        ("x-acs-version".to_string(), c.version.clone()),
    ];
    if let Some(t) = &c.token {
        headers.push(("x-acs-security-token".into(), t.clone()));
    }
    headers.extend(c.extra_signed.iter().cloned());
    headers.sort();
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{}\n/\n{query}\n{canonical_headers}\n{signed}\n{body_hash}",
        c.method
    );
    let sts = format!(
        "ACS3-HMAC-SHA256\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(c.secret.as_bytes()).unwrap();
    mac.update(sts.as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let mut req = http.request(c.method.clone(), format!("{}/?{query}", emu.endpoint()));
    for (k, v) in headers
        .iter()
        .chain(&c.extra_unsigned)
        .filter(|(k, _)| k != "host")
    {
        req = req.header(k, v);
    }
    if let Some(body) = &c.tampered_body {
        req = req.body(body.clone());
    }
    req.header(
        "authorization",
        format!(
            "ACS3-HMAC-SHA256 Credential={},SignedHeaders={signed},Signature={sig}",
            c.key_id
        ),
    )
    .send()
    .await
}

async fn v3(http: &reqwest::Client, emu: &Emulator, c: &Call) -> Answer {
    read(try_v3(http, emu, c).await.expect("transport")).await
}

/// V2 call; `form` puts the parameters in a form body instead of the query string.
async fn v2(http: &reqwest::Client, emu: &Emulator, c: &Call, form: bool) -> Answer {
    let mut params = vec![
        ("Action".to_string(), c.action.clone()),
        ("Version".into(), c.version.clone()),
        ("Format".into(), "JSON".into()),
        ("AccessKeyId".into(), c.key_id.clone()),
        ("SignatureMethod".into(), "HMAC-SHA1".into()),
        ("SignatureVersion".into(), "1.0".into()),
        ("SignatureNonce".into(), c.nonce.clone()),
        ("Timestamp".into(), c.timestamp.clone()),
    ];
    if let Some(t) = &c.token {
        params.push(("SecurityToken".into(), t.clone()));
    }
    params.extend(c.params.iter().cloned());
    let canonical = sorted_query(&params);
    let sts = format!("{}&%2F&{}", c.method, pe(&canonical));
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{}&", c.secret).as_bytes()).unwrap();
    mac.update(sts.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let all = format!("{canonical}&Signature={}", pe(&sig));
    let req = if form {
        http.request(c.method.clone(), format!("{}/", emu.endpoint()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(all)
    } else {
        http.request(c.method.clone(), format!("{}/?{all}", emu.endpoint()))
    };
    read(req.send().await.expect("transport")).await
}

async fn start(settings: EmulatorSettings) -> (Emulator, reqwest::Client) {
    let emu = Emulator::start(settings).await.expect("emulator starts");
    (emu, reqwest::Client::new())
}

async fn within<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out");
}

fn assert_request_id(id: &str) {
    assert_eq!(id.len(), 36, "{id}");
    assert!(id
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || ('A'..='F').contains(&c)));
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn valid_v3_call_deregisters_and_a_repeat_finds_nothing() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let a = v3(&http, &emu, &Call::new("GID_test@@@dev1")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let id = a.json()["RequestId"].as_str().unwrap().to_string();
        assert_request_id(&id);
        assert_eq!(a.headers["x-acs-request-id"], id.as_str());
        assert!(!emu.is_registered(INSTANCE, "GID_test@@@dev1"));

        let again = v3(&http, &emu, &Call::new("GID_test@@@dev1")).await;
        assert_eq!(again.status, 400);
        let j = again.json();
        assert_eq!(j["Code"], "DeviceCredentialNotFound");
        for field in ["RequestId", "Message", "HostId", "Code", "Recommend"] {
            assert!(j[field].is_string(), "missing {field}: {j}");
        }
        assert_eq!(
            again.headers["x-acs-request-id"],
            j["RequestId"].as_str().unwrap()
        );

        let stats = emu.shutdown().await;
        assert_eq!(stats.successes, 1);
        assert_eq!(stats.by_code["OK"], 1);
        assert_eq!(stats.by_code["DeviceCredentialNotFound"], 1);
        assert_eq!(stats.successes_by_instance[INSTANCE], 1);
    })
    .await;
}

#[tokio::test]
async fn valid_v2_calls_succeed_by_query_by_form_body_and_by_get() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let a = v2(&http, &emu, &Call::new("GID_test@@@q"), false).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_request_id(a.json()["RequestId"].as_str().unwrap());
        let b = v2(&http, &emu, &Call::new("GID_test@@@form"), true).await;
        assert_eq!(b.status, 200, "{}", b.body);
        let mut get = Call::new("GID_test@@@get");
        get.method = reqwest::Method::GET;
        let c = v2(&http, &emu, &get, false).await;
        assert_eq!(c.status, 200, "{}", c.body);
        let again = v2(&http, &emu, &Call::new("GID_test@@@form"), false).await;
        assert_eq!(again.code(), "DeviceCredentialNotFound");
        assert_eq!(emu.stats().successes, 3);
    })
    .await;
}

#[tokio::test]
async fn wrong_secret_gets_signature_mismatch_with_the_server_string_to_sign() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let a = v3(&http, &emu, &Call::new("GID_test@@@x").secret("nope")).await;
        assert_eq!((a.status, a.code().as_str()), (400, "SignatureDoesNotMatch"));
        let msg = a.json()["Message"].as_str().unwrap().to_string();
        assert!(
            msg.starts_with("Specified signature is not matched with our calculation. server string to sign is:ACS3-HMAC-SHA256\n"),
            "{msg}"
        );
        let b = v2(&http, &emu, &Call::new("GID_test@@@x").secret("nope"), false).await;
        assert_eq!(b.code(), "SignatureDoesNotMatch");
        let msg = b.json()["Message"].as_str().unwrap().to_string();
        assert!(msg.contains(" server string to sign is:POST&%2F&AccessKeyId%3Dtestid%26Action%3DUnRegisterDeviceCredential%26ClientId%3DGID_test%2540%2540%2540x%26"), "{msg}");
        let stats = emu.stats();
        assert_eq!(stats.signature_failures, 2);
        assert_eq!(stats.accepted, 0);
        assert!(emu.is_registered(INSTANCE, "GID_test@@@x"));
    })
    .await;
}

#[tokio::test]
async fn the_verifier_follows_the_headers_the_client_chose_to_sign() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("GID_test@@@hdr");
        c.extra_signed = vec![
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("user-agent".into(), "  AlibabaCloud (test) padded  ".into()),
        ];
        // Unsigned ordinary headers are fine; they are simply not covered.
        c.extra_unsigned = vec![("x-extra".into(), "whatever".into())];
        let a = v3(&http, &emu, &c).await;
        assert_eq!(a.status, 200, "{}", a.body);
    })
    .await;
}

#[tokio::test]
async fn an_unsigned_acs_header_is_an_incomplete_signature() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("GID_test@@@unsigned");
        c.extra_unsigned = vec![("x-acs-security-token".into(), "sneaky".into())];
        let a = v3(&http, &emu, &c).await;
        assert_eq!((a.status, a.code().as_str()), (400, "IncompleteSignature"));
    })
    .await;
}

#[tokio::test]
async fn a_body_that_differs_from_its_declared_hash_is_refused() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("GID_test@@@body");
        c.tampered_body = Some("ClientId=GID_test%40%40%40other".into());
        let a = v3(&http, &emu, &c).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "SignatureDoesNotMatch")
        );
        assert!(emu.is_registered(INSTANCE, "GID_test@@@body"));
    })
    .await;
}

#[tokio::test]
async fn unknown_access_key_is_not_found() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let a = v3(&http, &emu, &Call::new("GID_test@@@x").key("ghost", "s")).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (404, "InvalidAccessKeyId.NotFound")
        );
        let b = v2(
            &http,
            &emu,
            &Call::new("GID_test@@@x").key("ghost", "s"),
            false,
        )
        .await;
        assert_eq!(
            (b.status, b.code().as_str()),
            (404, "InvalidAccessKeyId.NotFound")
        );
    })
    .await;
}

#[tokio::test]
async fn missing_or_garbled_authentication_is_an_incomplete_signature() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let bare = read(
            http.post(format!(
                "{}/?ClientId=GID_test%40%40%40x&InstanceId=i",
                emu.endpoint()
            ))
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(
            (bare.status, bare.code().as_str()),
            (400, "IncompleteSignature")
        );
        let garbled = read(
            http.post(format!("{}/", emu.endpoint()))
                .header("authorization", "ACS3-HMAC-SHA256 Credential=testid")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(garbled.code(), "IncompleteSignature");
        let other = read(
            http.post(format!("{}/", emu.endpoint()))
                .header("authorization", "Bearer abc")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(other.code(), "IncompleteSignature");
    })
    .await;
}

#[tokio::test]
async fn a_key_with_an_sts_token_requires_that_exact_token() {
    within(async {
        let settings = EmulatorSettings {
            keys: vec![AccessKey {
                id: "STS.tmp".into(),
                secret: "tmpsecret".into(),
                security_token: Some("tok-123".into()),
            }],
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let base = || Call::new("GID_test@@@sts").key("STS.tmp", "tmpsecret");
        let none = v3(&http, &emu, &base()).await;
        assert!(
            none.code().starts_with("InvalidSecurityToken."),
            "{}",
            none.body
        );
        let wrong = v3(&http, &emu, &base().token("tok-999")).await;
        assert_eq!(
            (wrong.status, wrong.code().as_str()),
            (400, "InvalidSecurityToken.Expired")
        );
        let wrong2 = v2(&http, &emu, &base().token("tok-999"), false).await;
        assert_eq!(wrong2.code(), "InvalidSecurityToken.Expired");
        let ok = v3(&http, &emu, &base().token("tok-123")).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let ok2 = v2(
            &http,
            &emu,
            &Call::new("GID_test@@@sts2")
                .key("STS.tmp", "tmpsecret")
                .token("tok-123"),
            false,
        )
        .await;
        assert_eq!(ok2.status, 200, "{}", ok2.body);
    })
    .await;
}

#[tokio::test]
async fn stale_and_malformed_timestamps_are_refused() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let stale = (chrono::Utc::now() - chrono::TimeDelta::minutes(16))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut c = Call::new("GID_test@@@t");
        c.timestamp = stale.clone();
        assert_eq!(v3(&http, &emu, &c).await.code(), "InvalidTimeStamp.Expired");
        assert_eq!(
            v2(&http, &emu, &c, false).await.code(),
            "InvalidTimeStamp.Expired"
        );
        c.timestamp = "01/01/2024 00:00".into();
        assert_eq!(v3(&http, &emu, &c).await.code(), "InvalidTimeStamp.Format");
        assert_eq!(
            v2(&http, &emu, &c, true).await.code(),
            "InvalidTimeStamp.Format"
        );
        c.timestamp = (chrono::Utc::now() - chrono::TimeDelta::minutes(14))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        assert_eq!(v3(&http, &emu, &c).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_reused_nonce_is_refused_per_key() {
    within(async {
        let settings = EmulatorSettings {
            keys: vec![
                AccessKey::new("testid", "testsecret"),
                AccessKey::new("k2", "s2"),
            ],
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let mut c = Call::new("GID_test@@@n1");
        c.nonce = "fixed-nonce".into();
        assert_eq!(v3(&http, &emu, &c).await.status, 200);
        c.params[0].1 = "GID_test@@@n2".into();
        let again = v3(&http, &emu, &c).await;
        assert_eq!(
            (again.status, again.code().as_str()),
            (400, "SignatureNonceUsed")
        );
        assert_eq!(
            v2(&http, &emu, &c, false).await.code(),
            "SignatureNonceUsed"
        );
        let other_key = c.clone().key("k2", "s2");
        assert_eq!(v3(&http, &emu, &other_key).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn missing_and_malformed_parameters_are_refused() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("x");
        c.params = vec![("InstanceId".into(), INSTANCE.into())];
        assert_eq!(v3(&http, &emu, &c).await.code(), "MissingClientId");
        c.params = vec![("ClientId".into(), "GID_test@@@x".into())];
        c.nonce = fresh_nonce();
        assert_eq!(v2(&http, &emu, &c, false).await.code(), "MissingInstanceId");
        for bad in [
            "GID_te@@@x",
            "group_test@@@x",
            "GID_test@@x",
            "GID_test@@@",
            "GID_test@@@a b",
        ] {
            let a = v3(&http, &emu, &Call::new(bad)).await;
            assert_eq!(
                (a.status, a.code().as_str()),
                (400, "InvalidParameter.ClientId"),
                "{bad}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_actions_other_apis_and_wrong_versions_are_refused() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("GID_test@@@a");
        c.action = "DescribeRegions".into();
        let a = v3(&http, &emu, &c).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (404, "InvalidAction.NotFound")
        );
        c.action = "RegisterDeviceCredential".into();
        c.nonce = fresh_nonce();
        let b = v2(&http, &emu, &c, false).await;
        assert_eq!((b.status, b.code().as_str()), (404, "ApiNotSupport"));
        c.action = ACTION.into();
        c.version = "2019-01-01".into();
        c.nonce = fresh_nonce();
        let v = v3(&http, &emu, &c).await;
        assert_eq!((v.status, v.code().as_str()), (400, "InvalidVersion"));
    })
    .await;
}

#[tokio::test]
async fn calls_beyond_the_rate_limit_in_a_sliding_second_are_throttled() {
    within(async {
        let settings = EmulatorSettings {
            rate_limit: 20,
            retry_after_ms: Some(250),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let calls = (0..40).map(|i| {
            let http = http.clone();
            let c = Call::new(&format!("GID_test@@@r{i}"));
            let emu = &emu;
            async move { v3(&http, emu, &c).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        let ok = answers.iter().filter(|a| a.status == 200).count();
        let throttled: Vec<_> = answers.iter().filter(|a| a.status == 400).collect();
        assert_eq!(ok, 20);
        assert_eq!(throttled.len(), 20);
        for t in &throttled {
            assert_eq!(t.code(), "Throttling.User");
            assert_eq!(
                t.json()["Message"],
                "Request was denied due to user flow control."
            );
            assert_eq!(t.headers["x-acs-retry-after"], "250");
        }
        let stats = emu.stats();
        assert_eq!(stats.throttled, 20);
        assert_eq!(stats.accepted, 20);
        assert_eq!(stats.max_accepted_per_sliding_second, 20);
        assert_eq!(stats.max_accepted_per_sliding_second_by_key["testid"], 20);
        assert_eq!(stats.max_arrivals_per_sliding_second, 40);
        assert_eq!(stats.max_arrivals_per_sliding_second_by_key["testid"], 40);
        assert_eq!(
            max_in_window(&emu.accepted_offsets(), Duration::from_secs(1)),
            20
        );

        // A second later the window has slid past the burst.
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let later = v3(&http, &emu, &Call::new("GID_test@@@later")).await;
        assert_eq!(later.status, 200, "{}", later.body);
    })
    .await;
}

#[tokio::test]
async fn the_per_ip_limit_throttles_across_keys() {
    within(async {
        let settings = EmulatorSettings {
            keys: vec![
                AccessKey::new("testid", "testsecret"),
                AccessKey::new("k2", "s2"),
            ],
            ip_limit: Some(3),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let mut codes = Vec::new();
        for i in 0..6 {
            let c = Call::new(&format!("GID_test@@@ip{i}"));
            let c = if i % 2 == 0 { c } else { c.key("k2", "s2") };
            codes.push(v3(&http, &emu, &c).await.status);
        }
        assert_eq!(codes, vec![200, 200, 200, 400, 400, 400]);
        let stats = emu.stats();
        assert_eq!(stats.throttled_by_ip, 3);
        assert_eq!(stats.by_code["Throttling"], 3);
    })
    .await;
}

fn faulty(faults: Faults) -> EmulatorSettings {
    EmulatorSettings {
        faults,
        seed: 42,
        ..EmulatorSettings::default()
    }
}

#[tokio::test]
async fn certain_answer_faults_produce_their_codes_and_leave_the_credential() {
    within(async {
        let cases = [
            (
                Faults {
                    p_system_overflow: 1.0,
                    ..Faults::default()
                },
                500,
                "SystemOverFlow",
            ),
            (
                Faults {
                    p_internal_error: 1.0,
                    ..Faults::default()
                },
                500,
                "InternalError",
            ),
            (
                Faults {
                    p_apply_token_overflow: 1.0,
                    ..Faults::default()
                },
                400,
                "ApplyTokenOverFlow",
            ),
        ];
        for (faults, status, code) in cases {
            let (emu, http) = start(faulty(faults)).await;
            let a = v3(&http, &emu, &Call::new("GID_test@@@f")).await;
            assert_eq!((a.status, a.code().as_str()), (status, code));
            assert!(emu.is_registered(INSTANCE, "GID_test@@@f"));
            let stats = emu.shutdown().await;
            assert_eq!(stats.by_code[code], 1);
            assert_eq!(stats.successes, 0);
        }
    })
    .await;
}

#[tokio::test]
async fn faults_apply_only_after_authentication() {
    within(async {
        let (emu, http) = start(faulty(Faults {
            p_reset: 1.0,
            ..Faults::default()
        }))
        .await;
        let a = v3(&http, &emu, &Call::new("GID_test@@@f").secret("bad")).await;
        assert_eq!(a.code(), "SignatureDoesNotMatch");
        assert_eq!(emu.stats().faults_injected.reset, 0);
    })
    .await;
}

#[tokio::test]
async fn a_certain_reset_is_a_transport_error_and_sometimes_deregisters_first() {
    within(async {
        let (emu, http) = start(faulty(Faults {
            p_reset: 1.0,
            ..Faults::default()
        }))
        .await;
        let mut errors = 0;
        for i in 0..20 {
            let r = try_v3(&http, &emu, &Call::new(&format!("GID_test@@@reset{i}"))).await;
            if r.is_err() {
                errors += 1;
            }
        }
        assert_eq!(errors, 20);
        let stats = emu.stats();
        assert_eq!(stats.faults_injected.reset, 20);
        assert!(
            (1..20).contains(&stats.deregistered_under_fault),
            "{}",
            stats.deregistered_under_fault
        );
        let gone = (0..20)
            .filter(|i| !emu.is_registered(INSTANCE, &format!("GID_test@@@reset{i}")))
            .count() as u64;
        assert_eq!(gone, stats.deregistered_under_fault);
        assert_eq!(stats.successes, 0);
    })
    .await;
}

#[tokio::test]
async fn a_certain_hang_holds_the_request_then_closes() {
    within(async {
        let (emu, _) = start(faulty(Faults {
            p_hang: 1.0,
            hang_ms: 300,
            ..Faults::default()
        }))
        .await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let t0 = Instant::now();
        let r = try_v3(&http, &emu, &Call::new("GID_test@@@hang")).await;
        assert!(r.is_err(), "{r:?}");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(emu.stats().faults_injected.hang, 1);
    })
    .await;
}

#[tokio::test]
async fn certain_malformed_answers_rotate_html_truncated_and_empty() {
    within(async {
        let (emu, http) = start(faulty(Faults {
            p_malformed: 1.0,
            ..Faults::default()
        }))
        .await;
        let html = v3(&http, &emu, &Call::new("GID_test@@@m1")).await;
        assert_eq!(html.status, 502);
        assert!(html.body.contains("<html>"), "{}", html.body);
        let trunc = v3(&http, &emu, &Call::new("GID_test@@@m2")).await;
        assert_eq!(trunc.status, 200);
        assert!(trunc.body.starts_with('{') && serde_json::from_str::<Value>(&trunc.body).is_err());
        let empty = v3(&http, &emu, &Call::new("GID_test@@@m3")).await;
        assert_eq!((empty.status, empty.body.as_str()), (200, ""));
        let f = emu.stats().faults_injected;
        assert_eq!(
            (f.malformed_html, f.malformed_truncated, f.malformed_empty),
            (1, 1, 1)
        );
    })
    .await;
}

#[tokio::test]
async fn latency_delays_answers() {
    within(async {
        let (emu, http) = start(faulty(Faults {
            latency_ms: 200,
            jitter_ms: 50,
            ..Faults::default()
        }))
        .await;
        let t0 = Instant::now();
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_test@@@slow")).await.status,
            200
        );
        assert!(t0.elapsed() >= Duration::from_millis(150));
    })
    .await;
}

#[tokio::test]
async fn the_same_seed_injects_the_same_faults() {
    within(async {
        let faults = Faults {
            p_system_overflow: 0.3,
            p_internal_error: 0.3,
            ..Faults::default()
        };
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (emu, http) = start(faulty(faults.clone())).await;
            let mut seq = Vec::new();
            for i in 0..30 {
                seq.push(
                    v3(&http, &emu, &Call::new(&format!("GID_test@@@s{i}")))
                        .await
                        .status,
                );
            }
            runs.push(seq);
        }
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].contains(&200) && runs[0].contains(&500));
    })
    .await;
}

#[tokio::test]
async fn a_registry_file_lists_the_only_registered_credentials() {
    within(async {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut file,
            format!("# fleet\nGID_test@@@any\n{INSTANCE} GID_test@@@pinned\n\nother-inst GID_test@@@elsewhere # comment\n").as_bytes(),
        )
        .unwrap();
        let settings = EmulatorSettings {
            registry: Registry::from_file(file.path()).unwrap(),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        assert_eq!(emu.stats().registry_remaining, Some(3));
        assert_eq!(v3(&http, &emu, &Call::new("GID_test@@@pinned")).await.status, 200);
        assert_eq!(v3(&http, &emu, &Call::new("GID_test@@@any")).await.status, 200);
        assert_eq!(v3(&http, &emu, &Call::new("GID_test@@@elsewhere")).await.code(), "DeviceCredentialNotFound");
        assert_eq!(v3(&http, &emu, &Call::new("GID_test@@@unlisted")).await.code(), "DeviceCredentialNotFound");
        assert_eq!(emu.stats().registry_remaining, Some(1));
    })
    .await;
}

#[tokio::test]
async fn never_registered_ids_are_not_found_from_the_first_call() {
    within(async {
        let settings = EmulatorSettings {
            registry: Registry::all_except(vec![(INSTANCE, "GID_test@@@never")]),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_test@@@never")).await.code(),
            "DeviceCredentialNotFound"
        );
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_test@@@other")).await.status,
            200
        );
    })
    .await;
}

#[tokio::test]
async fn the_stats_endpoint_serves_the_counters_as_json() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        v3(&http, &emu, &Call::new("GID_test@@@s")).await;
        v3(&http, &emu, &Call::new("GID_test@@@s")).await;
        let text = http
            .get(format!("{}/__emulator/stats", emu.endpoint()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let j: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["total_requests"], 2);
        assert_eq!(j["successes"], 1);
        assert_eq!(j["by_code"]["OK"], 1);
        assert_eq!(j["by_code"]["DeviceCredentialNotFound"], 1);
        assert_eq!(j["successes_by_instance"][INSTANCE], 1);
        assert_eq!(j["max_accepted_per_sliding_second"], 2);
        assert_eq!(j["faults_injected"]["reset"], 0);
        assert!(j["registry_remaining"].is_null());
        let typed: Stats = emu.shutdown().await;
        assert_eq!(serde_json::to_value(&typed).unwrap(), j);
    })
    .await;
}

#[tokio::test]
async fn shutdown_stops_accepting_connections() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let endpoint = emu.endpoint();
        emu.shutdown().await;
        assert!(http
            .get(format!("{endpoint}/__emulator/stats"))
            .send()
            .await
            .is_err());
    })
    .await;
}

/// Builds one signed V2 GET as raw HTTP/1.1 bytes (signing done ahead of the measurement).
fn raw_v2_get(emu: &Emulator, client: &str) -> Vec<u8> {
    let c = Call::new(client);
    let mut params = vec![
        ("Action".to_string(), c.action.clone()),
        ("Version".into(), c.version.clone()),
        ("Format".into(), "JSON".into()),
        ("AccessKeyId".into(), c.key_id.clone()),
        ("SignatureMethod".into(), "HMAC-SHA1".into()),
        ("SignatureVersion".into(), "1.0".into()),
        ("SignatureNonce".into(), c.nonce.clone()),
        ("Timestamp".into(), c.timestamp.clone()),
    ];
    params.extend(c.params.iter().cloned());
    let canonical = sorted_query(&params);
    let sts = format!("GET&%2F&{}", pe(&canonical));
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"testsecret&").unwrap();
    mac.update(sts.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "GET /?{canonical}&Signature={} HTTP/1.1\r\nhost: {}\r\n\r\n",
        pe(&sig),
        emu.addr()
    )
    .into_bytes()
}

/// Sends `requests` one after another on one keep-alive connection; returns the 200 count.
async fn drive_connection(addr: std::net::SocketAddr, requests: Vec<Vec<u8>>) -> usize {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut ok = 0;
    let mut line = String::new();
    for req in requests {
        wr.write_all(&req).await.unwrap();
        let mut length = 0;
        let mut first = true;
        loop {
            line.clear();
            rd.read_line(&mut line).await.unwrap();
            if first {
                ok += usize::from(line.starts_with("HTTP/1.1 200"));
                first = false;
            } else if line == "\r\n" {
                break;
            } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        rd.read_exact(&mut body).await.unwrap();
    }
    ok
}

/// Measures the server alone: requests are signed beforehand and sent over raw keep-alive
/// connections, so the client's share of the 2 cores stays small. Run with
/// `cargo test --test emulator -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_on_loopback_exceeds_five_thousand_per_second() {
    let settings = EmulatorSettings {
        rate_limit: u32::MAX,
        ..EmulatorSettings::default()
    };
    let (emu, _) = start(settings).await;
    let (total, connections) = (60_000, 32);
    let batches: Vec<Vec<Vec<u8>>> = (0..connections)
        .map(|c| {
            (0..total / connections)
                .map(|i| raw_v2_get(&emu, &format!("GID_perf@@@{c}x{i}")))
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|b| tokio::spawn(drive_connection(emu.addr(), b)))
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let elapsed = t0.elapsed();
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("{total} signed V2 calls over {connections} keep-alive connections in {elapsed:?}: {rate:.0} requests/s");
    assert_eq!(ok, total);
    assert_eq!(emu.stats().successes, total as u64);
    assert!(rate >= 5000.0, "{rate:.0} requests/s");
}
