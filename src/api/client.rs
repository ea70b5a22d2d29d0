//! One signed `UnRegisterDeviceCredential` call over HTTP. Returns the raw answer (status, the
//! headers we use, body) or the transport error; it never interprets codes. One `reqwest::Client`
//! is built at start-up and shared; every call gets a fresh timestamp, nonce and signature.

use std::time::Duration;

use bytes::Bytes;
use rand::RngCore;

use super::signer::{sign_v2, sign_v3, CallToSign};
use super::{ACTION, API_VERSION};
use crate::config::{Credentials, Settings, SignatureVersion};

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// `x-acs-request-id`, when the gateway sent it.
    pub request_id: Option<String>,
    /// `x-acs-retry-after`, when the gateway sent it.
    pub retry_after: Option<Duration>,
}

/// No HTTP answer at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("no answer within the request timeout")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("connection failed: {0}")]
    Broken(String),
}

/// The signed-call client: endpoint, credentials and scheme fixed at start-up.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    url: reqwest::Url,
    host: String,
    credentials: Credentials,
    signature: SignatureVersion,
}

impl ApiClient {
    pub fn new(settings: &Settings, credentials: Credentials) -> anyhow::Result<ApiClient> {
        let url = reqwest::Url::parse(&settings.api.endpoint)?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => anyhow::bail!("api.endpoint has no host"),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout())
            .timeout(settings.request_timeout())
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(settings.limits.max_in_flight as usize)
            .tcp_nodelay(true)
            // The API never redirects, and a signed call must not follow one to another host;
            // without a policy reqwest also skips re-parsing the URL on every request.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("deregd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ApiClient {
            http,
            url,
            host,
            credentials,
            signature: settings.api.signature,
        })
    }

    /// The AccessKeyId in use (not a secret; shown in `check`).
    pub fn access_key_id(&self) -> &str {
        &self.credentials.access_key_id
    }

    /// Sends one call for `(instance_id, client_id)`, signed now.
    pub async fn unregister(
        &self,
        instance_id: &str,
        client_id: &str,
    ) -> Result<Answer, TransportError> {
        let timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut nonce_bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce_bytes);
        let nonce = hex::encode(nonce_bytes);
        let params = [("ClientId", client_id), ("InstanceId", instance_id)];
        let call = CallToSign {
            host: &self.host,
            action: ACTION,
            version: API_VERSION,
            params: &params,
            access_key_id: &self.credentials.access_key_id,
            access_key_secret: self.credentials.access_key_secret.expose(),
            security_token: self.credentials.security_token.as_ref().map(|s| s.expose()),
            timestamp: &timestamp,
            nonce: &nonce,
        };
        let signed = match self.signature {
            SignatureVersion::V3 => sign_v3(&call),
            SignatureVersion::V2 => sign_v2(&call),
        };
        let mut url = self.url.clone();
        url.set_query(Some(&signed.query));
        let mut request = self.http.post(url).header("content-length", "0");
        for (name, value) in &signed.headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("x-acs-request-id");
        let retry_after = header("x-acs-retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        let body = response.bytes().await.map_err(transport_error)?;
        Ok(Answer {
            status,
            body,
            request_id,
            retry_after,
        })
    }
}

/// Maps reqwest's error to ours, keeping the cause chain but never the URL (it holds the
/// signature for V2).
fn transport_error(error: reqwest::Error) -> TransportError {
    if error.is_timeout() {
        return TransportError::Timeout;
    }
    let connect = error.is_connect();
    let mut cause = String::new();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        cause = error.without_url().to_string();
    }
    if connect {
        TransportError::Connect(cause)
    } else {
        TransportError::Broken(cause)
    }
}
