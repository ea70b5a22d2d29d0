//! The settings tree: built-in defaults, then a TOML file, then `DEREGD_<SECTION>__<KEY>` env vars.
//! Every value is validated here once, at start-up; a bad one is a [`ConfigError`] naming its key,
//! which the binary turns into exit status 2. Credentials live apart from the tree ([`Credentials`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The documented defaults, embedded so the binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The vendor's per-account limit on this operation, calls per second.
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
    /// Connect timeout, milliseconds.
    pub connect_timeout_ms: i64,
    /// Whole-request timeout, milliseconds.
    pub request_timeout_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Upper bound on calls per second, account-wide, over any sliding second.
    pub qps: i64,
    /// Calls that may start back to back after an idle spell (counted inside `qps`).
    pub burst: i64,
    /// Upper bound on calls awaiting an answer at once.
    pub max_in_flight: i64,
    /// Upper bound on calls whose outcome is not yet committed (in flight or answered): what a
    /// crash can leave sent but unrecorded. Dispatch waits when it is reached.
    pub max_unrecorded: i64,
    /// Seconds between probe calls while paused.
    pub pause_probe_secs: i64,
    /// Per-instance caps, successful calls per second.
    #[serde(default)]
    pub instance_tps: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Calls per job before it is marked failed.
    pub max_attempts: i64,
    /// First retry delay, milliseconds.
    pub base_delay_ms: i64,
    /// Largest retry delay, milliseconds.
    pub max_delay_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Lease on a claimed job, seconds.
    pub lease_secs: i64,
    /// Idle poll interval, milliseconds.
    pub poll_interval_ms: i64,
    /// Drain time on SIGTERM, seconds.
    pub shutdown_grace_secs: i64,
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

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
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
        use config::{Config, Environment, File, FileFormat};
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("DEREGD_CONFIG").map(PathBuf::from));
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
            // Parse ourselves first so a syntax error carries line and column.
            if let Err(e) = text.parse::<toml::Table>() {
                return Err(bad("", format!("{}: {e}", path.display())));
            }
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        }
        // Only DEREGD_<SECTION>__<KEY> variables are settings; DEREGD_CONFIG and friends are not.
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("DEREGD_") && k.contains("__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("DEREGD")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let raw = builder.build().map_err(|e| bad("", e.to_string()))?;
        let settings: Settings = raw.try_deserialize().map_err(|e| {
            let text = e.to_string();
            // config names the key in its message; keep it whole.
            bad("", text)
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and cross-field rules; the first problem wins.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_endpoint(&self.api.endpoint)?;
        positive(
            "api.connect_timeout_ms",
            self.api.connect_timeout_ms,
            600_000,
        )?;
        positive(
            "api.request_timeout_ms",
            self.api.request_timeout_ms,
            3_600_000,
        )?;
        self.limits.validate()?;
        positive("retry.max_attempts", self.retry.max_attempts, 1000)?;
        positive("retry.base_delay_ms", self.retry.base_delay_ms, 86_400_000)?;
        positive("retry.max_delay_ms", self.retry.max_delay_ms, 86_400_000)?;
        if self.retry.max_delay_ms < self.retry.base_delay_ms {
            return Err(bad(
                "retry.max_delay_ms",
                "must be at least retry.base_delay_ms",
            ));
        }
        positive("worker.lease_secs", self.worker.lease_secs, 86_400)?;
        positive(
            "worker.poll_interval_ms",
            self.worker.poll_interval_ms,
            60_000,
        )?;
        if self.worker.shutdown_grace_secs < 0 || self.worker.shutdown_grace_secs > 3600 {
            return Err(bad(
                "worker.shutdown_grace_secs",
                "must be between 0 and 3600",
            ));
        }
        let request_secs = (self.api.request_timeout_ms + 999) / 1000;
        if self.worker.lease_secs <= request_secs {
            return Err(bad(
                "worker.lease_secs",
                format!(
                    "must be longer than api.request_timeout_ms ({request_secs} s), or a slow \
                     call's job could be rescued while still in flight"
                ),
            ));
        }
        if self.database.path.as_os_str().is_empty() {
            return Err(bad("database.path", "must not be empty"));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "metrics.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.metrics.listen
                ),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
            ));
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.api.connect_timeout_ms as u64)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.api.request_timeout_ms as u64)
    }

    /// The effective settings as TOML, for `deregd check` (holds no secret).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

impl LimitsSettings {
    /// The ranges that also apply on a SIGHUP reload.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.qps < 1 {
            return Err(bad(
                "limits.qps",
                format!("{} is not a rate: must be 1 to 499", self.qps),
            ));
        }
        if self.qps >= ACCOUNT_CALLS_PER_SECOND as i64 {
            return Err(bad(
                "limits.qps",
                format!(
                    "{} is too high: the vendor allows {ACCOUNT_CALLS_PER_SECOND} calls/s per \
                     account for UnRegisterDeviceCredential; use at most 499",
                    self.qps
                ),
            ));
        }
        if self.burst < 1 || self.burst > self.qps {
            return Err(bad("limits.burst", "must be between 1 and limits.qps"));
        }
        if self.burst * 2 > self.qps.max(2) {
            return Err(bad(
                "limits.burst",
                "must be at most half of limits.qps, since a burst is taken out of the steady rate",
            ));
        }
        positive("limits.max_in_flight", self.max_in_flight, 10_000)?;
        positive("limits.max_unrecorded", self.max_unrecorded, 1_000_000)?;
        if self.max_unrecorded < self.max_in_flight {
            return Err(bad(
                "limits.max_unrecorded",
                "must be at least limits.max_in_flight (a call in flight is not yet recorded)",
            ));
        }
        positive("limits.pause_probe_secs", self.pause_probe_secs, 86_400)?;
        for (instance, cap) in &self.instance_tps {
            let key = format!("limits.instance_tps.{instance}");
            if *cap < 1 || *cap > self.qps {
                return Err(bad(&key, "must be between 1 and limits.qps"));
            }
            if let Err(reason) = crate::job::check_instance_id(instance) {
                return Err(bad(&key, format!("not an instance id: {reason}")));
            }
        }
        Ok(())
    }
}

fn positive(key: &str, value: i64, max: i64) -> Result<(), ConfigError> {
    if value < 1 || value > max {
        return Err(bad(
            key,
            format!("{value} is out of range: must be 1 to {max}"),
        ));
    }
    Ok(())
}

fn validate_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let key = "api.endpoint";
    let url = url::Url::parse(endpoint)
        .map_err(|e| bad(key, format!("{endpoint:?} is not a URL: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| bad(key, format!("{endpoint:?} has no host")))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false);
            if !loopback {
                return Err(bad(
                    key,
                    format!(
                        "{endpoint:?} uses http:// to a non-loopback host; credentials and \
                         signatures must travel over https (http is only for a local emulator)"
                    ),
                ));
            }
        }
        other => return Err(bad(key, format!("scheme {other:?} is not http or https"))),
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(bad(key, "must be a base URL with no path or query"));
    }
    Ok(())
}

/// A secret string: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An AccessKey pair, with an optional STS token.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub security_token: Option<Secret>,
}

pub const ENV_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
pub const ENV_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
pub const ENV_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";

impl Credentials {
    /// From the vendor's env vars, else from files `access_key_id`, `access_key_secret`,
    /// `security_token` in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub fn load() -> Result<Credentials, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(&env)
    }

    pub fn load_from(env: &BTreeMap<String, String>) -> Result<Credentials, ConfigError> {
        let dir = env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let read = |var: &str, file: &str| -> Option<String> {
            if let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) {
                return Some(v.trim().to_string());
            }
            let path = dir.as_ref()?.join(file);
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let id = read(ENV_KEY_ID, "access_key_id");
        let secret = read(ENV_KEY_SECRET, "access_key_secret");
        let token = read(ENV_TOKEN, "security_token");
        match (id, secret) {
            (Some(id), Some(secret)) => Ok(Credentials {
                access_key_id: id,
                access_key_secret: Secret(secret),
                security_token: token.map(Secret),
            }),
            (id, _) => {
                Err(bad(
                    "credentials",
                    format!(
                    "{} is not set: set {ENV_KEY_ID} and {ENV_KEY_SECRET} (and {ENV_TOKEN} for \
                     STS), or put files access_key_id and access_key_secret in \
                     $CREDENTIALS_DIRECTORY",
                    if id.is_none() { ENV_KEY_ID } else { ENV_KEY_SECRET }
                ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_toml(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deregd.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load_from(Some(&path), &BTreeMap::new())
    }

    #[test]
    fn the_documented_defaults_load_and_validate() {
        let s = Settings::load_from(None, &BTreeMap::new()).unwrap();
        assert_eq!(s.database.path, PathBuf::from("deregd.db"));
        assert_eq!(s.api.endpoint, "https://onsmqtt.cn-hangzhou.aliyuncs.com");
        assert_eq!(s.api.signature, SignatureVersion::V3);
        assert_eq!(
            (s.api.connect_timeout_ms, s.api.request_timeout_ms),
            (5000, 10000)
        );
        assert_eq!(s.limits.qps, 280);
        assert!(s.limits.instance_tps.is_empty());
    }

    #[test]
    fn env_vars_override_the_file_which_overrides_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "[limits]\nqps = 200\n[limits.instance_tps]\n\"post-cn-0pp12gl0001\" = 50\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&path), &env(&[("DEREGD_LIMITS__QPS", "300")])).unwrap();
        assert_eq!(s.limits.qps, 300);
        assert_eq!(s.limits.instance_tps.get("post-cn-0pp12gl0001"), Some(&50));
        let via_env = Settings::load_from(
            None,
            &env(&[
                ("DEREGD_CONFIG", path.to_str().unwrap()),
                ("DEREGD_API__SIGNATURE", "v2"),
            ]),
        )
        .unwrap();
        assert_eq!(via_env.limits.qps, 200);
        assert_eq!(via_env.api.signature, SignatureVersion::V2);
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let cases = [
            ("[limits]\nqps = 600\n", "limits.qps", "500"),
            ("[limits]\nqps = 500\n", "limits.qps", "500"),
            ("[limits]\nqps = 0\n", "limits.qps", ""),
            (
                "[api]\nrequest_timeout_ms = -5\n",
                "api.request_timeout_ms",
                "",
            ),
            (
                "[api]\nendpoint = \"http://example.com\"\n",
                "api.endpoint",
                "https",
            ),
            ("[api]\nendpoint = \"nonsense\"\n", "api.endpoint", ""),
            ("[retry]\nmax_attempts = 0\n", "retry.max_attempts", ""),
            (
                "[limits.instance_tps]\n\"post-cn-x\" = 0\n",
                "limits.instance_tps.post-cn-x",
                "",
            ),
            (
                "[worker]\nlease_secs = 5\n",
                "worker.lease_secs",
                "request_timeout",
            ),
        ];
        for (toml, key, needle) in cases {
            let err = load_toml(toml).expect_err(toml);
            assert_eq!(err.key, key, "{toml}: {err}");
            assert!(err.to_string().contains(needle), "{toml}: {err}");
        }
    }

    #[test]
    fn unknown_keys_broken_toml_and_wrong_types_are_refused() {
        let err = load_toml("[limits]\nqpss = 10\n").unwrap_err();
        assert!(err.to_string().contains("qpss"), "{err}");
        let err = load_toml("[limits\nqps = 10\n").unwrap_err();
        assert!(err.to_string().contains("line"), "{err}");
        let err = load_toml("[limits]\nqps = \"fast\"\n").unwrap_err();
        assert!(err.to_string().contains("qps"), "{err}");
        let err = Settings::load_from(None, &env(&[("DEREGD_LIMITS__QPS", "lots")])).unwrap_err();
        assert!(err.to_string().contains("qps"), "{err}");
    }

    #[test]
    fn http_is_allowed_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            validate_endpoint(ok).unwrap();
        }
        assert!(validate_endpoint("http://10.0.0.1").is_err());
    }

    #[test]
    fn credentials_come_from_env_or_the_credentials_directory_and_never_print() {
        let err = Credentials::load_from(&BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains(ENV_KEY_ID));
        assert!(err.to_string().contains(ENV_KEY_SECRET));
        let c = Credentials::load_from(&env(&[(ENV_KEY_ID, "id1"), (ENV_KEY_SECRET, "s3cr3t")]))
            .unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("access_key_id"), "id2\n").unwrap();
        std::fs::write(dir.path().join("access_key_secret"), "sec2\n").unwrap();
        let c = Credentials::load_from(&env(&[(
            "CREDENTIALS_DIRECTORY",
            dir.path().to_str().unwrap(),
        )]))
        .unwrap();
        assert_eq!(c.access_key_id, "id2");
        assert_eq!(c.access_key_secret.expose(), "sec2");
    }
}
