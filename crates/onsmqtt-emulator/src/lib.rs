//! A local stand-in of the onsmqtt 2020-04-20 OpenAPI, for tests, demos and benchmarks.
//!
//! Serves `UnRegisterDeviceCredential`, `ListDeviceCredentialClientId`, `GetDeviceCredential`
//! and `RegisterDeviceCredential` over plain HTTP/1.1 on loopback and behaves like the vendor
//! gateway: both signature schemes, timestamps, nonces, sliding-second throttling per account
//! and action and per source address, a credential registry, and faults. The same listener
//! serves STS (`AssumeRole`, `AssumeRoleWithOIDC`); [`MetadataServer`] is the ECS metadata
//! service and [`CountingProxy`] a forward proxy, each started and stopped on its own.
//!
//! Layout: `server` (accept loop, connections), `handler` (one request, in the gateway's order
//! of checks), `auth` and `verify` (signatures), `actions` (the onsmqtt actions), `registry`
//! and `idset` (credentials), `state`, `window` and `stats` (bookkeeping), `faults`, `answer`
//! (response bodies), `sts` and `tempkeys` (temporary credentials), `metadata`, `proxy`.
//! Invariant: no lock is ever held across an await.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use onsmqtt_emulator::{Emulator, EmulatorSettings, Faults, Registry};
//! let emulator = Emulator::start(EmulatorSettings {
//!     rate_limit: 20,
//!     registry: Registry::groups("mqtt-cn-x", [("GID_meter", 5_000), ("GID_other", 10)]),
//!     faults: Faults { p_system_overflow: 0.1, ..Faults::default() },
//!     ..EmulatorSettings::default()
//! })
//! .await?;
//! let base_url = emulator.endpoint(); // point the client here, key testid / testsecret
//! let stats = emulator.shutdown().await;
//! assert!(stats.max_accepted_per_sliding_second <= 20);
//! # Ok(()) }
//! ```

mod actions;
mod answer;
mod auth;
mod faults;
mod handler;
mod idset;
mod metadata;
mod proxy;
mod registry;
mod server;
mod settings;
mod shared;
mod stamp;
mod state;
mod stats;
mod sts;
mod tempkeys;
mod verify;
mod window;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use actions::{is_valid_client_id, API_VERSION};
pub use faults::Faults;
pub use metadata::{MetadataServer, MetadataSettings};
pub use proxy::{CountingProxy, ProxySettings, ProxyStats};
pub use registry::{DeviceCredential, Registry};
pub use server::STATS_PATH;
pub use settings::{AccessKey, EmulatorSettings, GroupFault, ListPaging, PageFault};
pub use stats::{ActionStats, FaultCounts, MetadataStats, SourceStats, Stats, StsStats};
pub use tempkeys::StsCredentials;
pub use window::max_in_window;

use server::Server;
use shared::Shared;

/// A running emulator. Dropping it stops the server; [`Emulator::shutdown`] also waits for it.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Server,
}

impl Emulator {
    /// Binds `settings.listen` and starts serving on the current tokio runtime.
    pub async fn start(settings: EmulatorSettings) -> anyhow::Result<Emulator> {
        settings.validate()?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding emulator to {}", settings.listen))?;
        stamp::stamp_listener(&listener);
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(settings));
        let for_server = shared.clone();
        let server = Server::spawn(listener, move |stream, peer, cancel| {
            server::serve_api_connection(stream, peer, for_server.clone(), cancel)
        });
        Ok(Emulator {
            addr,
            shared,
            server,
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
        self.shared.snapshot()
    }

    /// Offsets (since start) of every accepted onsmqtt call of any action, i.e. calls that
    /// passed throttling, in arrival order (capped at one million).
    pub fn accepted_offsets(&self) -> Vec<Duration> {
        self.shared.lock().state.accepted_offsets.clone()
    }

    /// Offsets (since start) of every successful deregistration, in order (capped likewise).
    pub fn success_offsets(&self) -> Vec<Duration> {
        self.shared.lock().state.success_offsets.clone()
    }

    /// Whether `(instance, client)` is still registered.
    pub fn is_registered(&self, instance: &str, client: &str) -> bool {
        self.shared
            .lock()
            .state
            .registry
            .is_registered(instance, client)
    }

    /// Registers `(instance, client)` now, as `RegisterDeviceCredential` would, without a call
    /// (listable in its group, with a fresh secret); `false` if it was registered already.
    pub fn register(&self, instance: &str, client: &str) -> bool {
        self.shared.lock().state.registry.register(instance, client)
    }

    /// The credential of `(instance, client)`, if registered (its secret included).
    pub fn credential(&self, instance: &str, client: &str) -> Option<DeviceCredential> {
        self.shared
            .lock()
            .state
            .registry
            .credential(instance, client)
    }

    /// The `DeviceAccessKeySecret` that `GetDeviceCredential` answers for `(instance,
    /// client)`, so a test can search its client's logs and files for it.
    pub fn device_secret(&self, instance: &str, client: &str) -> Option<String> {
        self.credential(instance, client)
            .map(|c| c.access_key_secret)
    }

    /// Number of listable credentials of `(instance, group)`.
    pub fn group_len(&self, instance: &str, group: &str) -> usize {
        self.shared.lock().state.registry.group_len(instance, group)
    }

    /// Issues temporary credentials for the first key's account, as STS would, living
    /// min(`lifetime`, `sts_duration_secs`) (whole seconds).
    pub fn issue_credentials(&self, lifetime: Duration) -> StsCredentials {
        let account = self.shared.default_account.clone();
        self.shared.issue(&account, lifetime.as_secs(), "Direct")
    }

    /// Changes the OIDC token `AssumeRoleWithOIDC` accepts (as a platform rotating it would);
    /// `None` refuses every token.
    pub fn set_oidc_token(&self, token: Option<String>) {
        *self.shared.oidc_token.lock().expect("oidc lock") = token;
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets in-flight requests finish briefly, and returns the final stats.
    pub async fn shutdown(mut self) -> Stats {
        self.server.stop().await;
        self.stats()
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
