//! The settings tree: built-in defaults, then a TOML file, then `DEREGD_<SECTION>__<KEY>` env vars
//! ([`load`]). Every value is typed (durations are `Duration`s, counts unsigned) and validated
//! once, at start-up ([`validate`]); a bad one is a [`ConfigError`] naming its key, which the
//! binary turns into exit status 2. Credentials live apart from the tree ([`crate::credentials`]).

mod load;
mod units;
mod validate;

pub(crate) use validate::{
    check_proxy_url, check_role_arn, check_session_name, is_loopback_host, pem_certificates,
    METADATA_HOST,
};

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
    pub credentials: CredentialsSettings,
    /// The dotted keys an operator set in the file or the environment (not the defaults).
    #[serde(skip)]
    pub(crate) set_by_operator: Arc<BTreeSet<String>>,
    /// The proxy variables of the environment the settings were loaded from.
    #[serde(skip)]
    pub(crate) proxy_env: Arc<BTreeMap<String, String>>,
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
    /// Base URL, `https://onsmqtt.<region>.aliyuncs.com`; empty in the file: derived from
    /// `region` and `network` when loaded.
    pub endpoint: String,
    /// Region id, e.g. `cn-shanghai`: with `network`, the endpoint when none is set.
    pub region: String,
    pub network: Network,
    /// Forward proxy for the OpenAPI and STS (`http://[user:pass@]host:port`); empty: the
    /// environment's `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`, if any.
    pub proxy: ProxyUrl,
    /// Hosts never proxied, as `NO_PROXY` (which adds to it): suffixes, IPs, CIDRs, `*`.
    pub no_proxy: String,
    /// PEM file of extra root certificates (a TLS-intercepting corporate proxy), trusted in
    /// addition to the built-in roots; empty: none.
    pub ca_file: PathBuf,
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

/// Which of the vendor's endpoints a region has: over the internet, or inside a VPC.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Public,
    Vpc,
}

impl ApiSettings {
    /// `https://onsmqtt[-vpc].<region>.aliyuncs.com`.
    pub(crate) fn regional_endpoint(&self) -> String {
        let vpc = match self.network {
            Network::Public => "",
            Network::Vpc => "-vpc",
        };
        format!("https://onsmqtt{vpc}.{}.aliyuncs.com", self.region)
    }
}

/// A proxy URL, which may hold a password: its `Debug` and `Serialize` (what `check` prints)
/// mask the password.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct ProxyUrl(pub String);

impl ProxyUrl {
    /// The URL with any password replaced by `***`.
    pub fn masked(&self) -> String {
        let raw = self.0.trim();
        if raw.is_empty() {
            return String::new();
        }
        match validate::parse_proxy_url(raw) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "<not a URL>".into(),
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl Serialize for ProxyUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// The environment variables a proxy is taken from.
pub(crate) const PROXY_VARIABLES: [&str; 8] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
];

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
    /// The abort rule: a run is paused when this share of its last `abort_min_answers` final
    /// answers (succeeded or failed) failed. 0 turns the rule off; a run may set its own.
    pub abort_failure_share: f64,
    /// How many final answers the abort rule looks at.
    pub abort_min_answers: u32,
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
    /// Maintenance windows (`"Mon-Fri 01:00-06:00"`): outside every one, no call is made.
    /// Empty: always. A run may have its own (`submit --window`, `deregd schedule`).
    pub windows: Vec<String>,
    /// The IANA time zone the windows are read in.
    pub timezone: String,
}

impl WorkerSettings {
    /// The maintenance windows, as validated.
    pub fn schedule(&self) -> Result<crate::schedule::Schedule, ConfigError> {
        crate::schedule::Schedule::parse(&self.windows, &self.timezone).map_err(|e| match e {
            crate::schedule::ScheduleError::Zone(_) => bad("worker.timezone", e.to_string()),
            crate::schedule::ScheduleError::Spec { .. } => bad("worker.windows", e.to_string()),
        })
    }
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

/// Where the credentials come from: the vendor's default chain, or one source by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSource {
    /// The first configured of: env, files, oidc, profile, ecs, uri.
    Auto,
    /// `ALIBABA_CLOUD_ACCESS_KEY_ID` / `_SECRET` (/ `ALIBABA_CLOUD_SECURITY_TOKEN`).
    Env,
    /// Files in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    Files,
    /// `AssumeRoleWithOIDC` with `ALIBABA_CLOUD_OIDC_*` (ACK RRSA, CI).
    Oidc,
    /// A profile of the `aliyun` CLI's `~/.aliyun/config.json`.
    Profile,
    /// The ECS instance's RAM role, from the metadata service.
    Ecs,
    /// `ALIBABA_CLOUD_CREDENTIALS_URI`.
    Uri,
}

/// Where credentials come from and how roles are assumed. Holds no secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSettings {
    pub source: CredentialSource,
    /// Role to assume with the AccessKey of the env or files source (OIDC: instead of
    /// `ALIBABA_CLOUD_ROLE_ARN`); empty: none.
    pub role_arn: String,
    /// `RoleSessionName` of AssumeRole and AssumeRoleWithOIDC (2-64 of `A-Za-z0-9.@-_`).
    pub role_session_name: String,
    /// Lifetime asked of STS, seconds (900-43200; the role's maximum caps it).
    #[serde(rename = "duration_secs", with = "secs")]
    pub duration: Duration,
    /// Profile of the `aliyun` CLI's file (instead of `ALIBABA_CLOUD_PROFILE` or `current`).
    pub profile: String,
    /// A JSON policy narrowing the assumed role's permissions; empty: none.
    pub policy: String,
    /// STS base URL.
    pub sts_endpoint: String,
    /// ECS metadata service base URL.
    pub metadata_endpoint: String,
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
        if settings.api.endpoint.trim().is_empty() {
            validate::validate_region(&settings.api.region)?;
            settings.api.endpoint = settings.api.regional_endpoint();
        }
        settings.proxy_env = Arc::new(
            PROXY_VARIABLES
                .iter()
                .filter_map(|k| env.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect(),
        );
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
