//! The transport under every call: one pooled HTTP/1.1 client over rustls (webpki roots), built
//! once, with connect and request timeouts, no redirects, and a cap on the answer read. An
//! answer larger than the cap is never buffered whole: it is an [`TransportError::Oversized`]
//! answer, a transient error like a reset. It knows nothing of the API: [`super::client`] signs.

use std::convert::Infallible;
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

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

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
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
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

/// Maps the HTTP client's error to ours by its innermost cause. The URL is never part of it
/// (it holds the signature for V2).
fn transport_error(error: hyper_util::client::legacy::Error) -> TransportError {
    if error.is_connect() {
        TransportError::Connect(innermost(&error))
    } else {
        TransportError::Broken(innermost(&error))
    }
}

fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(inner) = last.source() {
        last = inner;
    }
    last.to_string()
}
