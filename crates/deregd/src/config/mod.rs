//! The settings tree: built-in defaults, then a TOML file, then `DEREGD_<SECTION>__<KEY>` env vars
//! ([`load`]). Every value is typed (durations are `Duration`s, counts unsigned) and validated
//! once, at start-up ([`validate`]); a bad one is a [`ConfigError`] naming its key, which the
//! binary turns into exit status 2. Credentials live apart from the tree ([`crate::credentials`]).

mod load;
mod units;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use units::{millis, secs};

/// The documented defaults, embedded so the binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// The vendor's per-account limit on `UnRegisterDeviceCredential`, calls per second.
pub const ACCOUNT_CALLS_PER_SECOND: u32 = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub limits: LimitsSettings,
    pub retry: RetrySettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    /// The dotted keys an operator set in the file or the environment (not the defaults).
    #[serde(skip)]
    pub(crate) set_by_operator: Arc<BTreeSet<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// SQLite database file.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureVersion {
    /// ACS3-HMAC-SHA256 in the Authorization header.
    V3,
    /// Legacy RPC HMAC-SHA1 in the query string.
    V2,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Base URL, `https://onsmqtt.<region>.aliyuncs.com`.
    pub endpoint: String,
    pub signature: SignatureVersion,
    /// TCP + TLS connect timeout.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Whole-request timeout, from sending to the answer's last byte.
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// Local addresses outgoing connections are bound to; calls are spread over them, each its
    /// own budget of `limits.source_qps`. Empty: the host's default address, one budget.
    pub source_addresses: Vec<IpAddr>,
}

/// The limits a SIGHUP reloads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Upper bound on `UnRegisterDeviceCredential` calls per second, account-wide, over any
    /// sliding second.
    pub qps: u32,
    /// Upper bound on `ListDeviceCredentialClientId` calls per second, account-wide.
    pub list_qps: u32,
    /// Upper bound on `GetDeviceCredential` calls per second, account-wide.
    pub get_qps: u32,
    /// Upper bound on calls per second from one source address, all actions together (the
    /// vendor blocks a source IP above 300/s).
    pub source_qps: u32,
    /// Calls that may start back to back after a late wake-up (counted inside `qps`).
    pub burst: u32,
    /// Upper bound on calls awaiting an answer at once.
    pub max_in_flight: u32,
    /// Upper bound on calls whose outcome is not yet committed (in flight or answered): what a
    /// crash can leave sent but unrecorded. Dispatch waits when it is reached.
    pub max_unrecorded: u32,
    /// Time between probe calls while paused.
    #[serde(rename = "pause_probe_secs", with = "secs")]
    pub pause_probe: Duration,
    /// Per-instance caps, successful calls per second.
    #[serde(default)]
    pub instance_tps: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Calls per job before it is marked failed.
    pub max_attempts: u32,
    /// First retry delay.
    #[serde(rename = "base_delay_ms", with = "millis")]
    pub base_delay: Duration,
    /// Largest retry delay.
    #[serde(rename = "max_delay_ms", with = "millis")]
    pub max_delay: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Lease on a claimed job.
    #[serde(rename = "lease_secs", with = "secs")]
    pub lease: Duration,
    /// How often an idle daemon looks for new rows.
    #[serde(rename = "poll_interval_ms", with = "millis")]
    pub poll_interval: Duration,
    /// Drain time on SIGTERM, on top of the request timeout.
    #[serde(rename = "shutdown_grace_secs", with = "secs")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Default filter when RUST_LOG is unset (`info`, `debug`, `deregd=trace`, ...).
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Listen address for `/metrics` and `/healthz`; empty = off.
    pub listen: String,
    /// Allow a `listen` address beyond loopback (the endpoint has no authentication).
    pub allow_remote: bool,
}

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration: {}: {}", self.key, self.message)
        }
    }
}

pub(crate) fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The burst when the operator set none: the default, or less for a ceiling too low for it.
const fn default_burst(default: u32, qps: u32) -> u32 {
    let half = qps / 2;
    let most = if half == 0 { 1 } else { half };
    if default < most {
        default
    } else {
        most
    }
}

impl Settings {
    /// Defaults, then `file` (or `$DEREGD_CONFIG`), then `DEREGD_*__*` env vars; validated.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let layers = load::layers(file, env)?;
        let mut settings = load::deserialize(layers.table)?;
        if !layers.set.contains("limits.burst") {
            settings.limits.burst = default_burst(settings.limits.burst, settings.limits.qps);
        }
        settings.set_by_operator = Arc::new(layers.set);
        settings.validate()?;
        Ok(settings)
    }

    /// True when the operator set `key` (dotted) in the file or the environment.
    pub(crate) fn is_set(&self, key: &str) -> bool {
        self.set_by_operator.contains(key)
    }

    /// The effective settings as TOML, for `deregd check` (holds no secret).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
