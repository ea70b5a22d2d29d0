//! The transport under every call: one pooled HTTP/1.1 client over rustls (webpki roots), built
//! once, with connect and request timeouts, no redirects, and a cap on the answer read. An
//! answer larger than the cap is never buffered whole: it is an [`TransportError::Oversized`]
//! answer, a transient error like a reset. It knows nothing of the API: [`super::client`] signs.

use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Frame, SizeHint};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::proxy::{ProxyRoute, Route};
use crate::pacing::SendTicket;

/// Largest answer read, bytes: real answers are under 1 KiB.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// `x-acs-request-id`, when the gateway sent it (not yet sanitised).
    pub request_id: Option<String>,
    /// `x-acs-retry-after`, when the gateway sent it.
    pub retry_after: Option<Duration>,
}

/// No usable HTTP answer at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("no answer within the request timeout")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("connection failed: {0}")]
    Broken(String),
    /// The answer's body passed [`MAX_ANSWER_BYTES`]; it was not read further.
    #[error("HTTP {status} answer larger than {limit} bytes; not read")]
    Oversized { status: u16, limit: usize },
}

impl TransportError {
    /// True for errors that say the endpoint cannot be reached at all (refused, DNS, TLS, a
    /// timeout), rather than that one exchange broke.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, TransportError::Timeout | TransportError::Connect(_))
    }
}

type Connector = hyper_rustls::HttpsConnector<Route>;

/// A call's empty request body, carrying its send ticket. hyper asks a request's body whether
/// it has ended just as its connection takes the request to write the head, and flushes the
/// head to the socket in the same turn: that moment stamps the ticket, so the pacer's window
/// counts the call from when it left, not from its permit. (hyper 1 asks nowhere else on
/// this path; the client's tests pin the stamp between the permit and the peer's read.)
pub struct StampedEmpty(Option<SendTicket>);

impl StampedEmpty {
    /// A paced call's body: `ticket` is stamped as the request is written.
    pub fn paced(ticket: SendTicket) -> StampedEmpty {
        StampedEmpty(Some(ticket))
    }

    /// A call outside any budget (credential services).
    pub fn unpaced() -> StampedEmpty {
        StampedEmpty(None)
    }
}

impl Body for StampedEmpty {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        if let Some(ticket) = &self.0 {
            ticket.writing();
        }
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(0)
    }
}

/// How a transport is built.
#[derive(Debug, Clone)]
pub(crate) struct HttpOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Idle connections kept per host (about the calls in flight at once).
    pub max_idle_per_host: usize,
    /// The local address connections are bound to (`None`: the system's choice).
    pub local_address: Option<std::net::IpAddr>,
    /// The forward proxy the connections go through (`None`: straight).
    pub proxy: Option<ProxyRoute>,
    /// A PEM file of roots trusted besides the built-in ones (empty: none).
    pub ca_file: PathBuf,
}

impl HttpOptions {
    /// The OpenAPI's (and STS's) timeouts, pool, proxy and roots for `endpoint`, from the
    /// host's default address.
    pub(crate) fn for_endpoint(
        settings: &crate::config::Settings,
        endpoint: &str,
    ) -> anyhow::Result<HttpOptions> {
        let api = &settings.api;
        let proxy = super::proxy::route(&api.proxy.0, &api.no_proxy, &settings.proxy_env, endpoint)
            .map_err(|why| anyhow::anyhow!("the proxy for {endpoint}: {why}"))?;
        Ok(HttpOptions {
            connect_timeout: api.connect_timeout,
            request_timeout: api.request_timeout,
            max_idle_per_host: settings.limits.max_in_flight as usize,
            local_address: None,
            proxy,
            ca_file: api.ca_file.clone(),
        })
    }

    /// A transport to a host-local service (the metadata service): no proxy, built-in roots.
    pub(crate) fn local(connect_timeout: Duration, request_timeout: Duration) -> HttpOptions {
        HttpOptions {
            connect_timeout,
            request_timeout,
            max_idle_per_host: 1,
            local_address: None,
            proxy: None,
            ca_file: PathBuf::new(),
        }
    }
}

/// One pooled client; cheap to clone.
#[derive(Clone)]
pub(crate) struct Http {
    client: Client<Connector, StampedEmpty>,
    timeout: Duration,
}

impl Http {
    pub(crate) fn new(options: &HttpOptions) -> anyhow::Result<Http> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(options.connect_timeout));
        tcp.set_local_address(options.local_address);
        let roots = root_store(&options.ca_file)?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(Route::new(tcp, options.proxy.as_ref()));
        // hyper's pooled client without reqwest's layers: those (URL re-parsing, header maps
        // built twice, per-request policy objects) cost about a quarter of the CPU of a call.
        // No redirects are followed: the API never redirects, and a signed call must not go on
        // to another host.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(options.max_idle_per_host)
            .build(connector);
        Ok(Http {
            client,
            timeout: options.request_timeout,
        })
    }

    /// Sends `request` and reads its answer, within the request timeout and
    /// [`MAX_ANSWER_BYTES`].
    pub(crate) async fn exchange(
        &self,
        request: Request<StampedEmpty>,
    ) -> Result<Answer, TransportError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(transport_error)?;
            let (head, body) = response.into_parts();
            let status = head.status.as_u16();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        TransportError::Oversized {
                            status,
                            limit: MAX_ANSWER_BYTES,
                        }
                    } else {
                        TransportError::Broken(innermost(e.as_ref()))
                    }
                })?
                .to_bytes();
            Ok::<_, TransportError>((head, body))
        };
        let (head, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout)??;
        let header = |name: &str| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Answer {
            status: head.status.as_u16(),
            body,
            request_id: header("x-acs-request-id"),
            retry_after: header("x-acs-retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis),
        })
    }
}

/// The built-in web roots, plus those of `ca_file` (when not empty): never instead of them.
fn root_store(ca_file: &std::path::Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !ca_file.as_os_str().is_empty() {
        let certs = crate::config::pem_certificates(ca_file)
            .map_err(|why| anyhow::anyhow!("api.ca_file: {why}"))?;
        let (_, refused) = roots.add_parsable_certificates(certs);
        if refused > 0 {
            anyhow::bail!(
                "api.ca_file: {refused} certificate(s) of {} are not usable as roots",
                ca_file.display()
            );
        }
    }
    Ok(roots)
}

/// Maps the HTTP client's error to ours by its innermost cause. The URL is never part of it
/// (it holds the signature for V2).
fn transport_error(error: hyper_util::client::legacy::Error) -> TransportError {
    if error.is_connect() {
        TransportError::Connect(innermost(&error))
    } else {
        TransportError::Broken(innermost(&error))
    }
}

/// The innermost cause of `error`, said.
pub(crate) fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(inner) = last.source() {
        last = inner;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A private CA and a TLS server for `localhost` with a certificate it signed, answering
    /// every connection's first request with `200 ok`.
    async fn private_tls_server() -> (String, std::net::SocketAddr) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "corporate test root");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (ca_cert.pem(), addr)
    }

    fn options(ca_file: PathBuf) -> HttpOptions {
        HttpOptions {
            ca_file,
            ..HttpOptions::local(Duration::from_secs(2), Duration::from_secs(5))
        }
    }

    async fn get(http: &Http, addr: std::net::SocketAddr) -> Result<Answer, TransportError> {
        let request = Request::get(format!("https://localhost:{}/", addr.port()))
            .body(StampedEmpty::unpaced())
            .unwrap();
        http.exchange(request).await
    }

    #[tokio::test]
    async fn a_ca_file_adds_a_private_root_to_the_built_in_ones() {
        let (ca_pem, addr) = private_tls_server().await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("corporate.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();

        let built_in = Http::new(&options(PathBuf::new())).unwrap();
        let refused = get(&built_in, addr).await.unwrap_err();
        assert!(matches!(refused, TransportError::Connect(_)), "{refused}");

        let with_ca = Http::new(&options(ca_file.clone())).unwrap();
        let answer = get(&with_ca, addr).await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));

        // Added to the web roots, never instead of them.
        let roots = root_store(&ca_file).unwrap();
        assert_eq!(roots.len(), webpki_roots::TLS_SERVER_ROOTS.len() + 1);
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = root_store(&empty).unwrap_err().to_string();
        assert!(err.starts_with("api.ca_file:"), "{err}");
        let missing = root_store(&dir.path().join("missing.pem")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }
}
