//! A local stand-in of the onsmqtt 2020-04-20 OpenAPI, for tests, demos and benchmarks.
//!
//! Serves `UnRegisterDeviceCredential` over plain HTTP/1.1 on loopback and behaves like the
//! vendor gateway: both signature schemes, timestamps, nonces, sliding-second throttling,
//! a credential registry, and seeded faults. Layout: `handler` (one request, in the gateway's
//! order of checks), `auth` and `verify` (signatures), `state` (registry, nonces, windows,
//! stats), `faults` (seeded fault plan), `answer` (response bodies).
//! Invariant: the state lock is never held across an await.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use onsmqtt_emulator::{Emulator, EmulatorSettings, Faults, Registry};
//! let emulator = Emulator::start(EmulatorSettings {
//!     rate_limit: 20,
//!     registry: Registry::all_except(vec![("mqtt-cn-x", "GID_test@@@never")]),
//!     faults: Faults { p_system_overflow: 0.1, ..Faults::default() },
//!     ..EmulatorSettings::default()
//! })
//! .await?;
//! let base_url = emulator.endpoint(); // point the client here, key testid / testsecret
//! let stats = emulator.shutdown().await;
//! assert!(stats.max_accepted_per_sliding_second <= 20);
//! # Ok(()) }
//! ```

mod answer;
mod auth;
mod faults;
mod handler;
mod stamp;
mod state;
mod verify;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use faults::Faults;
pub use handler::{is_valid_client_id, API_VERSION};
pub use state::{max_in_window, FaultCounts, Registry, Stats};

use answer::Body;
use faults::FaultPlan;
use handler::{Action, Incoming, Inner, Shared};
use stamp::{Received, StampedStream};
use state::State;

/// Path of the stats endpoint (JSON of [`Stats`]).
pub const STATS_PATH: &str = "/__emulator/stats";

/// Largest request body read, in bytes; the real API's bodies are empty or a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long shutdown lets in-flight requests finish before dropping their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// One AccessKey the emulator accepts. `Debug` redacts the secret and the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// The AccessKeyId.
    pub id: String,
    /// The AccessKeySecret.
    pub secret: String,
    /// When set, requests with this key must present exactly this STS SecurityToken.
    pub security_token: Option<String>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AccessKey {
    /// A long-term key (no STS token).
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> AccessKey {
        AccessKey {
            id: id.into(),
            secret: secret.into(),
            security_token: None,
        }
    }
}

/// Everything the emulator is started with.
#[derive(Debug, Clone)]
pub struct EmulatorSettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Accepted keys.
    pub keys: Vec<AccessKey>,
    /// Accepted calls allowed per sliding second, per AccessKeyId (the account's 500/s).
    pub rate_limit: u32,
    /// Accepted calls allowed per sliding second, per source IP; `None` for no limit.
    pub ip_limit: Option<u32>,
    /// Which credentials exist.
    pub registry: Registry,
    /// Faults to inject into otherwise-valid requests.
    pub faults: Faults,
    /// Seed of the fault plan.
    pub seed: u64,
    /// When set, throttled answers carry `x-acs-retry-after: <ms>`, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// Instances the key has no permission on: accepted calls for them answer 400
    /// `InstancePermissionCheckFailed` (after throttling, before faults). Empty by default.
    pub forbidden_instances: Vec<String>,
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        EmulatorSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            keys: vec![AccessKey::new("testid", "testsecret")],
            rate_limit: 500,
            ip_limit: None,
            registry: Registry::everything(),
            faults: Faults::default(),
            seed: 0,
            retry_after_ms: None,
            forbidden_instances: Vec::new(),
        }
    }
}

/// A running emulator. Dropping it stops the server; [`Emulator::shutdown`] also waits for it.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    server: Option<JoinHandle<()>>,
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

impl Emulator {
    /// Binds `settings.listen` and starts serving on the current tokio runtime.
    pub async fn start(settings: EmulatorSettings) -> anyhow::Result<Emulator> {
        settings.faults.validate()?;
        anyhow::ensure!(
            !settings.keys.is_empty(),
            "at least one access key is needed"
        );
        anyhow::ensure!(settings.rate_limit > 0, "rate_limit must be at least 1");
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding emulator to {}", settings.listen))?;
        stamp::stamp_listener(&listener);
        let addr = listener.local_addr()?;
        let keys: HashMap<String, AccessKey> = settings
            .keys
            .into_iter()
            .map(|k| (k.id.clone(), k))
            .collect();
        let shared = Arc::new(Shared {
            keys,
            rate_limit: settings.rate_limit,
            ip_limit: settings.ip_limit,
            retry_after_ms: settings.retry_after_ms,
            forbidden_instances: settings.forbidden_instances.into_iter().collect(),
            inner: Mutex::new(Inner {
                state: State::new(settings.registry),
                plan: FaultPlan::new(settings.faults, settings.seed),
            }),
        });
        let cancel = CancellationToken::new();
        let server = tokio::spawn(accept_loop(listener, shared.clone(), cancel.clone()));
        Ok(Emulator {
            addr,
            shared,
            cancel,
            server: Some(server),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared
            .inner
            .lock()
            .expect("state lock")
            .state
            .snapshot()
    }

    /// Offsets (since start) of every accepted call, i.e. calls that passed throttling, in
    /// arrival order (capped at one million).
    pub fn accepted_offsets(&self) -> Vec<Duration> {
        let inner = self.shared.inner.lock().expect("state lock");
        inner.state.accepted_offsets.clone()
    }

    /// Offsets (since start) of every successful deregistration, in order (capped likewise).
    pub fn success_offsets(&self) -> Vec<Duration> {
        let inner = self.shared.inner.lock().expect("state lock");
        inner.state.success_offsets.clone()
    }

    /// Whether `(instance, client)` is still registered.
    pub fn is_registered(&self, instance: &str, client: &str) -> bool {
        let inner = self.shared.inner.lock().expect("state lock");
        inner.state.registry.is_registered(instance, client)
    }

    /// Stops accepting, lets in-flight requests finish briefly, and returns the final stats.
    pub async fn shutdown(mut self) -> Stats {
        self.cancel.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.stats()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, peer, shared.clone(), cancel.clone()));
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

async fn serve_connection(
    stream: tokio::net::TcpStream,
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
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
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
        let stats = shared.inner.lock().expect("state lock").state.snapshot();
        let json = serde_json::to_string_pretty(&stats).expect("stats serialise");
        return Ok(answer::raw_response(200, "application/json", &json));
    }
    let body: Bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(answer::raw_response(
                413,
                "text/plain",
                "request body too large",
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets_or_tokens() {
        let key = AccessKey {
            id: "id1".into(),
            secret: "s3cret".into(),
            security_token: Some("t0ken".into()),
        };
        let shown = format!(
            "{:?}",
            EmulatorSettings {
                keys: vec![key],
                ..EmulatorSettings::default()
            }
        );
        assert!(shown.contains("id1"));
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }
}
