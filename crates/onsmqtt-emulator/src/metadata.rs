//! The ECS instance metadata service (RAM role credentials, IMDSv2 session tokens) and the
//! `ALIBABA_CLOUD_CREDENTIALS_URI` endpoint, as a server of its own next to the emulator.
//!
//! It shares the emulator's temporary-key store, so what it hands out is accepted by the
//! OpenAPI until it expires; it can be stopped and started again on the same port while the
//! emulator goes on. Session tokens live in the emulator, so they survive such a restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use rand::Rng;
use serde_json::Value;
use tokio::net::TcpListener;

use super::answer::{raw_response, Body};
use super::server::{serve_http, Server};
use super::shared::Shared;
use super::sts::credentials_fields;
use super::tempkeys::{format_utc, now_unix};
use super::Emulator;

/// Path of the IMDSv2 session token.
const TOKEN_PATH: &str = "/latest/api/token";
/// Path of the RAM role listing; a role's credentials are below it.
const ROLES_PATH: &str = "/latest/meta-data/ram/security-credentials/";
/// Header asking for a session token's lifetime, in seconds (1–21600).
const TTL_HEADER: &str = "x-aliyun-ecs-metadata-token-ttl-seconds";
/// Header carrying a session token.
const TOKEN_HEADER: &str = "x-aliyun-ecs-metadata-token";
/// Upper bound on remembered session tokens.
const MAX_SESSION_TOKENS: usize = 10_000;

/// How the metadata service is started.
#[derive(Debug, Clone)]
pub struct MetadataSettings {
    /// Address to listen on; port 0 picks a free port (pass the old address to restart).
    pub listen: SocketAddr,
    /// The RAM role attached to the "instance".
    pub role: String,
    /// Refuse (403) a GET without a valid session token, as with IMDSv2 enforced.
    pub imdsv1_disabled: bool,
    /// Path that serves the credentials JSON for `ALIBABA_CLOUD_CREDENTIALS_URI`.
    pub credentials_path: String,
    /// Added to the `Expiration` it tells, in seconds, as a service whose clock is behind
    /// would: the OpenAPI refuses a set (`InvalidSecurityToken.Expired`) before its holder
    /// expects. 0: the truth.
    pub expiration_skew_secs: u64,
}

impl Default for MetadataSettings {
    fn default() -> Self {
        MetadataSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            role: "EmulatorEcsRole".into(),
            imdsv1_disabled: false,
            credentials_path: "/credentials".into(),
            expiration_skew_secs: 0,
        }
    }
}

/// IMDSv2 session tokens, by value, with their expiry in unix seconds.
#[derive(Debug, Default)]
pub(crate) struct SessionTokens(HashMap<String, i64>);

/// A running metadata service.
#[derive(Debug)]
pub struct MetadataServer {
    addr: SocketAddr,
    server: Server,
}

struct Service {
    shared: Arc<Shared>,
    settings: MetadataSettings,
}

impl MetadataServer {
    /// Starts the service for `emulator`'s credentials.
    pub async fn start(
        emulator: &Emulator,
        settings: MetadataSettings,
    ) -> anyhow::Result<MetadataServer> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding the metadata service to {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let service = Arc::new(Service {
            shared: emulator.shared().clone(),
            settings,
        });
        let server = Server::spawn(listener, move |stream, _peer, cancel| {
            let service = service.clone();
            let svc = service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(service.answer(&req)) }
            });
            serve_http(stream, svc, cancel)
        });
        Ok(MetadataServer { addr, server })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, `http://127.0.0.1:PORT` (for `credentials.metadata_endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the service: its port refuses connections until it is started again.
    pub async fn shutdown(mut self) {
        self.server.stop().await;
    }
}

fn text(status: u16, body: &str) -> Response<Body> {
    raw_response(status, "text/plain", body)
}

impl Service {
    fn tokens(&self) -> std::sync::MutexGuard<'_, SessionTokens> {
        self.shared
            .metadata_tokens
            .lock()
            .expect("metadata tokens lock")
    }

    fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Body> {
        self.shared.lock().state.stats.metadata.requests += 1;
        let path = req.uri().path();
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        if path == TOKEN_PATH {
            if req.method() != Method::PUT {
                return text(405, "Method Not Allowed");
            }
            return match header(TTL_HEADER).and_then(|t| t.parse::<i64>().ok()) {
                Some(ttl) if (1..=21600).contains(&ttl) => self.new_token(ttl),
                _ => text(400, "Bad Request: token ttl must be 1 to 21600 seconds"),
            };
        }
        if req.method() != Method::GET {
            return text(405, "Method Not Allowed");
        }
        if path == self.settings.credentials_path {
            return self.credentials();
        }
        if let Some(refused) = self.check_session(header(TOKEN_HEADER)) {
            self.shared.lock().state.stats.metadata.refused += 1;
            return refused;
        }
        match path.strip_prefix(ROLES_PATH) {
            Some("") => text(200, &self.settings.role),
            Some(role) if role == self.settings.role => self.credentials(),
            _ if path == ROLES_PATH.trim_end_matches('/') => text(200, &self.settings.role),
            _ => text(404, "Not Found"),
        }
    }

    fn new_token(&self, ttl: i64) -> Response<Body> {
        let token: String = rand::thread_rng()
            .sample_iter(rand::distributions::Alphanumeric)
            .take(56)
            .map(char::from)
            .collect();
        let now = now_unix();
        let mut tokens = self.tokens();
        if tokens.0.len() >= MAX_SESSION_TOKENS {
            tokens.0.retain(|_, &mut expires| expires > now);
        }
        if tokens.0.len() < MAX_SESSION_TOKENS {
            tokens.0.insert(token.clone(), now + ttl);
        }
        drop(tokens);
        self.shared.lock().state.stats.metadata.tokens_issued += 1;
        text(200, &token)
    }

    /// `None` when the request may go on; else the refusal.
    fn check_session(&self, token: Option<&str>) -> Option<Response<Body>> {
        match token {
            None if self.settings.imdsv1_disabled => Some(text(403, "Forbidden")),
            None => None,
            Some(t) => {
                let valid = self
                    .tokens()
                    .0
                    .get(t)
                    .is_some_and(|&expires| now_unix() < expires);
                (!valid).then(|| text(401, "Unauthorized"))
            }
        }
    }

    fn credentials(&self) -> Response<Body> {
        let account = self.shared.default_account.clone();
        let issued = self
            .shared
            .issue(&account, self.shared.sts_duration_secs, "EcsMetadata");
        self.shared.lock().state.stats.metadata.credentials_served += 1;
        let mut fields = credentials_fields(&issued);
        if self.settings.expiration_skew_secs > 0 {
            let told = issued
                .expires_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                + self.settings.expiration_skew_secs;
            fields.insert(
                "Expiration".into(),
                Value::String(format_utc(i64::try_from(told).unwrap_or(i64::MAX))),
            );
        }
        fields.insert("LastUpdated".into(), Value::String(format_utc(now_unix())));
        fields.insert("Code".into(), Value::String("Success".into()));
        raw_response(200, "text/plain", &Value::Object(fields).to_string())
    }
}

/// The shared home of session tokens.
pub(crate) type SharedTokens = Mutex<SessionTokens>;
