//! One signed OpenAPI call: the action, its parameters, a fresh timestamp, nonce and
//! signature on every attempt, over the shared transport ([`super::http`]). Returns the raw
//! answer or the transport error; it never interprets codes ([`crate::outcome`] does).

use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, USER_AGENT};
use hyper::{Method, Request, Uri};
use rand::RngCore;

use super::http::{Answer, Http, HttpOptions, StampedEmpty, TransportError};
use super::signer::{self, sign_v2, sign_v3, CallToSign};
use super::{Action, API_VERSION};
use crate::config::{Settings, SignatureVersion};
use crate::credentials::{Provider, Set};
use crate::pacing::SendTicket;

/// Where signed calls go: `scheme://authority/path?` and the `host` header's value.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `scheme://authority/path?`: each call appends its query.
    url_prefix: Arc<str>,
    host: String,
}

impl Target {
    /// The target of base URL `endpoint` (`what` names it in errors).
    pub(crate) fn parse(endpoint: &str, what: &str) -> anyhow::Result<Target> {
        let url = url::Url::parse(endpoint)?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => anyhow::bail!("{what} has no host"),
        };
        let mut base = url.clone();
        base.set_query(None);
        base.set_fragment(None);
        Ok(Target {
            url_prefix: format!("{base}?").into(),
            host,
        })
    }

    /// A POST of `query` (already encoded) with `headers`, to this target.
    pub(crate) fn request(
        &self,
        query: &str,
        headers: &[(&'static str, std::borrow::Cow<'_, str>)],
        body: StampedEmpty,
    ) -> Result<Request<StampedEmpty>, TransportError> {
        let uri = format!("{}{}", self.url_prefix, query);
        let bad_request = |e: &dyn std::fmt::Display| {
            TransportError::Broken(format!("cannot build the request: {e}"))
        };
        // The request is put together in place: the builder would move it on every header.
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::try_from(uri).map_err(|e| bad_request(&e))?;
        let map = request.headers_mut();
        map.reserve(2 + headers.len());
        map.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        map.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("deregd/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in headers {
            // The signer's names are lower-case constants: no parse or copy of the name.
            let value = HeaderValue::from_str(value).map_err(|e| bad_request(&e))?;
            map.insert(HeaderName::from_static(name), value);
        }
        Ok(request)
    }

    /// `action` of API `version` with `params`, signed now with `set` under `signature`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn signed(
        &self,
        set: &Set,
        signature: SignatureVersion,
        action: &str,
        version: &str,
        params: &[(&str, &str)],
        body: StampedEmpty,
    ) -> Result<Request<StampedEmpty>, TransportError> {
        let timestamp = signer::timestamp(chrono::Utc::now());
        let mut nonce_bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce_bytes);
        let nonce = hex::encode(nonce_bytes);
        let call = CallToSign {
            host: &self.host,
            action,
            version,
            params,
            access_key_id: &set.credentials.access_key_id,
            key: set.key(signature),
            security_token: set.credentials.security_token.as_ref().map(|s| s.expose()),
            timestamp: &timestamp,
            nonce: &nonce,
        };
        let signed = match signature {
            SignatureVersion::V3 => sign_v3(&call),
            SignatureVersion::V2 => sign_v2(&call),
        };
        self.request(&signed.query, &signed.headers, body)
    }
}

/// The signed-call client: endpoint and scheme fixed at start-up; each call signed with the
/// credentials' current set.
#[derive(Clone)]
pub struct ApiClient {
    /// One transport per source address (one for the host's default address).
    sources: Arc<[Http]>,
    target: Target,
    credentials: Provider,
    signature: SignatureVersion,
}

impl ApiClient {
    /// A client for `settings.api`, signing with `credentials` (a [`Provider`], or fixed
    /// [`crate::credentials::Credentials`]).
    pub fn new(settings: &Settings, credentials: impl Into<Provider>) -> anyhow::Result<ApiClient> {
        let target = Target::parse(&settings.api.endpoint, "api.endpoint")?;
        let addresses: Vec<Option<std::net::IpAddr>> = if settings.api.source_addresses.is_empty() {
            vec![None]
        } else {
            settings
                .api
                .source_addresses
                .iter()
                .copied()
                .map(Some)
                .collect()
        };
        let sources = addresses
            .into_iter()
            .map(|local_address| {
                Http::new(&HttpOptions {
                    local_address,
                    ..HttpOptions::for_endpoint(settings, &settings.api.endpoint)?
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
            .into();
        Ok(ApiClient {
            sources,
            target,
            credentials: credentials.into(),
            signature: settings.api.signature,
        })
    }

    /// The AccessKeyId in use (not a secret; shown in `check`).
    pub fn access_key_id(&self) -> String {
        self.credentials.current().credentials.access_key_id.clone()
    }

    /// Where the credentials come from, and their current set.
    pub fn credentials(&self) -> &Provider {
        &self.credentials
    }

    /// `UnRegisterDeviceCredential` for `(instance_id, client_id)`, signed now. `ticket` is
    /// stamped as the request goes to its socket (or dropped unstamped when it never does).
    pub async fn unregister(
        &self,
        instance_id: &str,
        client_id: &str,
        ticket: SendTicket,
    ) -> Result<Answer, TransportError> {
        let params = [("ClientId", client_id), ("InstanceId", instance_id)];
        self.call(Action::UnRegister, 0, &params, StampedEmpty::paced(ticket))
            .await
    }

    /// How many source addresses calls may go from.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// One call of `action` with `params` from source address `source`, signed now with the
    /// current set.
    pub async fn call(
        &self,
        action: Action,
        source: usize,
        params: &[(&str, &str)],
        body: StampedEmpty,
    ) -> Result<Answer, TransportError> {
        let set = self.credentials.current();
        self.call_with(&set, action, source, params, body).await
    }

    /// As [`ApiClient::call`], signed with `set` (which the caller keeps, to tell which set an
    /// answer refused).
    pub async fn call_with(
        &self,
        set: &Set,
        action: Action,
        source: usize,
        params: &[(&str, &str)],
        body: StampedEmpty,
    ) -> Result<Answer, TransportError> {
        let request = self.target.signed(
            set,
            self.signature,
            action.name(),
            API_VERSION,
            params,
            body,
        )?;
        self.sources[source % self.sources.len()]
            .exchange(request)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use tokio::net::TcpListener;

    use super::*;
    use crate::credentials::Credentials;

    fn client(endpoint: &str) -> ApiClient {
        let env = BTreeMap::from([
            ("DEREGD_API__ENDPOINT".to_string(), endpoint.to_string()),
            (
                "DEREGD_API__REQUEST_TIMEOUT_MS".to_string(),
                "2000".to_string(),
            ),
            (
                "ALIBABA_CLOUD_ACCESS_KEY_ID".to_string(),
                "testid".to_string(),
            ),
            (
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET".to_string(),
                "s3cret-value".to_string(),
            ),
        ]);
        let settings = Settings::load_from(None, &env).expect("settings");
        let credentials = Credentials::load_from(&env).expect("credentials");
        ApiClient::new(&settings, credentials).expect("client")
    }

    /// Accepts one connection, returns what the peer sent (up to the blank line) and when it
    /// had read it, after writing `answer`.
    async fn one_exchange(listener: TcpListener, answer: &'static [u8]) -> (String, Instant) {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let read_at = Instant::now();
        socket.write_all(answer).await.unwrap();
        (String::from_utf8_lossy(&seen).into_owned(), read_at)
    }

    #[tokio::test]
    async fn sends_a_signed_post_and_reads_the_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = tokio::spawn(one_exchange(
            listener,
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 16\r\nx-acs-request-id: RID-1\r\n\
              x-acs-retry-after: 1500\r\n\r\n{\"Code\":\"Nope\"}\n",
        ));
        let ticket = SendTicket::unpaced();
        let watch = ticket.watch();
        let asked = Instant::now();
        let answer = client(&format!("http://127.0.0.1:{port}"))
            .unregister("post-cn-0pp12gl0001", "GID_a@@@dev-1", ticket)
            .await
            .expect("an answer");
        assert_eq!(answer.status, 400);
        assert_eq!(answer.request_id.as_deref(), Some("RID-1"));
        assert_eq!(answer.retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(&answer.body[..], b"{\"Code\":\"Nope\"}\n");
        let (request, read_at) = peer.await.unwrap();
        // The ticket was stamped as the request left: after the call began, before the peer
        // had read it.
        let written = watch.written_at().expect("the ticket was stamped");
        assert!(
            asked <= written && written <= read_at,
            "{asked:?} {written:?} {read_at:?}"
        );
        let request = request.to_ascii_lowercase();
        assert!(request.starts_with("post /?clientid="), "{request}");
        assert!(
            request.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert!(request.contains("\r\nx-acs-action: unregisterdevicecredential\r\n"));
        assert!(request.contains("\r\nauthorization: acs3-hmac-sha256 credential=testid,"));
        assert!(request.contains("\r\ncontent-length: 0\r\n"));
        assert!(
            !request.contains("s3cret"),
            "the secret never leaves: {request}"
        );
    }

    #[tokio::test]
    async fn https_to_a_peer_that_is_not_tls_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // It reads the ClientHello and answers in plain HTTP, as a misconfigured endpoint would.
        let peer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let ticket = SendTicket::unpaced();
        let watch = ticket.watch();
        let result = client(&format!("https://127.0.0.1:{port}"))
            .unregister("post-cn-0pp12gl0001", "GID_a@@@dev-1", ticket)
            .await;
        assert!(
            matches!(result, Err(TransportError::Connect(_))),
            "{result:?}"
        );
        assert!(watch.given_up(), "never written: out of the send window");
        peer.abort();
    }

    #[tokio::test]
    async fn no_answer_within_the_request_timeout_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(socket);
        });
        let ticket = SendTicket::unpaced();
        let watch = ticket.watch();
        let result = client(&format!("http://127.0.0.1:{port}"))
            .unregister("post-cn-0pp12gl0001", "GID_a@@@dev-1", ticket)
            .await;
        assert!(matches!(result, Err(TransportError::Timeout)), "{result:?}");
        assert!(watch.written_at().is_some(), "written, then no answer");
        peer.abort();
    }
}
