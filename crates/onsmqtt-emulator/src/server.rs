//! Listening and connections: the accept loop shared by every server of the crate, and how the
//! emulator serves one connection (receive stamps, the stats route, faults that drop it).
//!
//! Invariant: stopping a server stops accepting at once, lets requests in flight finish for a
//! short grace, then drops whatever is left, so a stopped server's port refuses connections.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::answer::{self, Body};
use super::handler::{self, Action, Incoming};
use super::shared::Shared;
use super::stamp::{Received, StampedStream};

/// Path of the stats endpoint (JSON of [`super::Stats`]).
pub const STATS_PATH: &str = "/__emulator/stats";

/// Largest request body read, in bytes; the real API's bodies are empty or a few hundred bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long stopping lets in-flight requests finish before dropping their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running accept loop.
#[derive(Debug)]
pub(crate) struct Server {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Accepts on `listener` until stopped, serving each connection with `serve`.
    pub(crate) fn spawn<F, Fut>(listener: TcpListener, serve: F) -> Server
    where
        F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, serve, cancel.clone()));
        Server {
            cancel,
            task: Some(task),
        }
    }

    /// Stops accepting and waits for the connections to finish (within the grace).
    pub(crate) async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, serve: F, cancel: CancellationToken)
where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve(stream, peer, cancel.clone()));
                }
                Err(e) => {
                    // Usually EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.shutdown().await;
    }
}

/// Serves HTTP/1.1 on `io` with `service` until the peer leaves or `cancel` fires.
pub(crate) async fn serve_http<I, S>(io: I, service: S, cancel: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<hyper::body::Incoming>, Response = Response<Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

/// Returned by the service to make hyper drop the connection without answering.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("emulated connection fault")
    }
}

impl std::error::Error for DropConnection {}

/// Serves one connection of the OpenAPI listener, stamping each request with its receive time.
pub(crate) async fn serve_api_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let fd = stream.as_raw_fd();
    let (stream, last_receive) = StampedStream::new(stream);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        // Clients send one request at a time per connection, so the last bytes read are
        // this request's.
        let received = last_receive.get();
        async move { serve_request(shared, peer, fd, received, req).await }
    });
    serve_http(stream, service, cancel).await;
}

/// Reads a whole body, up to [`MAX_BODY_BYTES`].
pub(crate) async fn read_body(body: hyper::body::Incoming) -> Option<Bytes> {
    Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

async fn serve_request(
    shared: Arc<Shared>,
    peer: SocketAddr,
    fd: std::os::fd::RawFd,
    received: Option<Received>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == STATS_PATH {
        let json = serde_json::to_string_pretty(&shared.snapshot()).expect("stats serialise");
        return Ok(answer::raw_response(200, "application/json", &json));
    }
    let _in_flight = shared.enter();
    let Some(body) = read_body(body).await else {
        return Ok(answer::raw_response(
            413,
            "text/plain",
            "request body too large",
        ));
    };
    let incoming = Incoming {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body,
        peer: peer.ip(),
        received,
    };
    match handler::handle(&shared, &incoming) {
        Action::Answer(resp, delay) => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(resp)
        }
        Action::Reset(delay) => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            set_zero_linger(fd);
            Err(DropConnection)
        }
        Action::Hang(wait) => {
            tokio::time::sleep(wait).await;
            Err(DropConnection)
        }
    }
}

/// Makes the coming close send an RST instead of a FIN, as a crashed proxy would.
fn set_zero_linger(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` belongs to the connection whose service is running this call, so it is still
    // open; SO_LINGER takes a `struct linger` of exactly this size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!("SO_LINGER could not be set; the fault closes with a FIN instead");
    }
}
