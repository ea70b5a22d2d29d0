//! The test client: a deliberately tiny second signer written from the API notes, so the
//! emulator's verifier is checked against something other than itself or deregd's signer.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use onsmqtt_emulator::{Emulator, EmulatorSettings};
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub(crate) const ACTION: &str = "UnRegisterDeviceCredential";
pub(crate) const INSTANCE: &str = "mqtt-cn-test0001";
pub(crate) const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- test signer

pub(crate) fn pe(s: &str) -> String {
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

pub(crate) fn now_stamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn fresh_nonce() -> String {
    hex::encode(rand::thread_rng().gen::<[u8; 16]>())
}

/// One call to make; fields default to a valid UnRegisterDeviceCredential with testid.
#[derive(Clone)]
pub(crate) struct Call {
    pub(crate) key_id: String,
    pub(crate) secret: String,
    pub(crate) token: Option<String>,
    pub(crate) action: String,
    pub(crate) version: String,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) timestamp: String,
    pub(crate) nonce: String,
    pub(crate) method: reqwest::Method,
    /// V3 only: extra headers the client sends and signs.
    pub(crate) extra_signed: Vec<(String, String)>,
    /// V3 only: extra headers the client sends without signing them.
    pub(crate) extra_unsigned: Vec<(String, String)>,
    /// V3 only: a body sent while the signature claims an empty one.
    pub(crate) tampered_body: Option<String>,
}

impl Call {
    pub(crate) fn new(client: &str) -> Call {
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

    /// A call of `action` (onsmqtt 2020-04-20) with exactly these parameters.
    pub(crate) fn action(action: &str, params: &[(&str, &str)]) -> Call {
        let mut c = Call::new("unused");
        c.action = action.into();
        c.params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c
    }

    /// A call of an STS (2015-04-01) action.
    pub(crate) fn sts(action: &str, params: &[(&str, &str)]) -> Call {
        let mut c = Call::action(action, params);
        c.version = "2015-04-01".into();
        c
    }

    /// A `GetDeviceCredential` of `client` on [`INSTANCE`].
    pub(crate) fn get(client: &str) -> Call {
        Call::action(
            "GetDeviceCredential",
            &[("ClientId", client), ("InstanceId", INSTANCE)],
        )
    }

    /// A listing page of `group` on [`INSTANCE`].
    pub(crate) fn list(group: &str, page_no: u32, page_size: u32, token: Option<&str>) -> Call {
        let (no, size) = (page_no.to_string(), page_size.to_string());
        let mut params = vec![
            ("InstanceId", INSTANCE),
            ("GroupId", group),
            ("PageNo", no.as_str()),
            ("PageSize", size.as_str()),
        ];
        if let Some(t) = token {
            params.push(("NextToken", t));
        }
        Call::action("ListDeviceCredentialClientId", &params)
    }

    pub(crate) fn secret(mut self, s: &str) -> Call {
        self.secret = s.into();
        self
    }

    pub(crate) fn key(mut self, id: &str, secret: &str) -> Call {
        self.key_id = id.into();
        self.secret = secret.into();
        self
    }

    pub(crate) fn token(mut self, t: &str) -> Call {
        self.token = Some(t.into());
        self
    }
}

#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    pub(crate) fn code(&self) -> String {
        self.json()["Code"].as_str().unwrap_or("").to_string()
    }
}

pub(crate) async fn read(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("body");
    Answer {
        status,
        headers,
        body,
    }
}

pub(crate) fn sorted_query(params: &[(String, String)]) -> String {
    let mut q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", pe(k), pe(v)))
        .collect();
    q.sort();
    q.join("&")
}

pub(crate) async fn try_v3(
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

pub(crate) async fn v3(http: &reqwest::Client, emu: &Emulator, c: &Call) -> Answer {
    read(try_v3(http, emu, c).await.expect("transport")).await
}

/// The V2-signed parameters of `c` (for its method), `Signature` last.
pub(crate) fn signed_v2(c: &Call) -> String {
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
    format!("{canonical}&Signature={}", pe(&sig))
}

/// V2 call; `form` puts the parameters in a form body instead of the query string.
pub(crate) async fn v2(http: &reqwest::Client, emu: &Emulator, c: &Call, form: bool) -> Answer {
    let all = signed_v2(c);
    let req = if form {
        http.request(c.method.clone(), format!("{}/", emu.endpoint()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(all)
    } else {
        http.request(c.method.clone(), format!("{}/?{all}", emu.endpoint()))
    };
    read(req.send().await.expect("transport")).await
}

pub(crate) async fn start(settings: EmulatorSettings) -> (Emulator, reqwest::Client) {
    let emu = Emulator::start(settings).await.expect("emulator starts");
    (emu, reqwest::Client::new())
}

pub(crate) async fn within<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out");
}

pub(crate) fn assert_request_id(id: &str) {
    assert_eq!(id.len(), 36, "{id}");
    assert!(id
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || ('A'..='F').contains(&c)));
}
