//! Ranges and cross-field rules of the settings; the first problem wins and names its key.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{bad, ConfigError, LimitsSettings, Settings, ACCOUNT_CALLS_PER_SECOND};

impl Settings {
    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_endpoint(&self.api.endpoint)?;
        let addresses = &self.api.source_addresses;
        if let Some(twice) = addresses
            .iter()
            .enumerate()
            .find(|(i, a)| addresses[..*i].contains(a))
        {
            return Err(bad(
                "api.source_addresses",
                format!("{} is listed twice", twice.1),
            ));
        }
        within_ms("api.connect_timeout_ms", self.api.connect_timeout, 600_000)?;
        within_ms(
            "api.request_timeout_ms",
            self.api.request_timeout,
            3_600_000,
        )?;
        self.limits.validate(self)?;
        within("retry.max_attempts", self.retry.max_attempts, 1000)?;
        within_ms("retry.base_delay_ms", self.retry.base_delay, 86_400_000)?;
        within_ms("retry.max_delay_ms", self.retry.max_delay, 86_400_000)?;
        if self.retry.max_delay < self.retry.base_delay {
            return Err(bad(
                "retry.max_delay_ms",
                "must be at least retry.base_delay_ms",
            ));
        }
        within_secs("worker.lease_secs", self.worker.lease, 86_400)?;
        within_ms("worker.poll_interval_ms", self.worker.poll_interval, 60_000)?;
        if self.worker.shutdown_grace > Duration::from_secs(3600) {
            return Err(bad(
                "worker.shutdown_grace_secs",
                "must be between 0 and 3600",
            ));
        }
        let request_secs = self.api.request_timeout.as_millis().div_ceil(1000) as u64;
        if self.worker.lease.as_secs() <= request_secs {
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
        self.validate_metrics()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
            ));
        }
        Ok(())
    }

    fn validate_metrics(&self) -> Result<(), ConfigError> {
        if self.metrics.listen.is_empty() {
            return Ok(());
        }
        let addr: SocketAddr = self.metrics.listen.parse().map_err(|_| {
            bad(
                "metrics.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.metrics.listen
                ),
            )
        })?;
        if !addr.ip().is_loopback() && !self.metrics.allow_remote {
            return Err(bad(
                "metrics.listen",
                format!(
                    "{addr} is reachable beyond this host and /metrics has no authentication; \
                     listen on 127.0.0.1, or set metrics.allow_remote = true"
                ),
            ));
        }
        Ok(())
    }
}

impl LimitsSettings {
    /// The ranges that also apply on a SIGHUP reload. `settings` tells which keys the operator
    /// set, so that a conflict names the key they wrote.
    pub fn validate(&self, settings: &Settings) -> Result<(), ConfigError> {
        if self.qps < 1 {
            return Err(bad(
                "limits.qps",
                format!("{} is not a rate: must be 1 to 499", self.qps),
            ));
        }
        if self.qps >= ACCOUNT_CALLS_PER_SECOND {
            return Err(bad(
                "limits.qps",
                format!(
                    "{} is too high: the vendor allows {ACCOUNT_CALLS_PER_SECOND} calls/s per \
                     account for UnRegisterDeviceCredential; use at most 499",
                    self.qps
                ),
            ));
        }
        if self.burst < 1 || self.burst * 2 > self.qps.max(2) {
            let key = if settings.is_set("limits.burst") || !settings.is_set("limits.qps") {
                "limits.burst"
            } else {
                "limits.qps"
            };
            return Err(bad(
                key,
                format!(
                    "limits.burst {} must be between 1 and half of limits.qps ({}), since a \
                     burst is taken out of the steady rate",
                    self.burst, self.qps
                ),
            ));
        }
        within("limits.list_qps", self.list_qps, 499)?;
        within("limits.get_qps", self.get_qps, 499)?;
        within("limits.source_qps", self.source_qps, 300)?;
        within("limits.max_in_flight", self.max_in_flight, 10_000)?;
        within("limits.max_unrecorded", self.max_unrecorded, 1_000_000)?;
        if self.max_unrecorded < self.max_in_flight {
            return Err(bad(
                "limits.max_unrecorded",
                "must be at least limits.max_in_flight (a call in flight is not yet recorded)",
            ));
        }
        within_secs("limits.pause_probe_secs", self.pause_probe, 86_400)?;
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

fn within(key: &str, value: u32, max: u32) -> Result<(), ConfigError> {
    if value < 1 || value > max {
        return Err(bad(
            key,
            format!("{value} is out of range: must be 1 to {max}"),
        ));
    }
    Ok(())
}

fn within_ms(key: &str, value: Duration, max_ms: u64) -> Result<(), ConfigError> {
    let ms = value.as_millis() as u64;
    if ms < 1 || ms > max_ms {
        return Err(bad(
            key,
            format!("{ms} is out of range: must be 1 to {max_ms}"),
        ));
    }
    Ok(())
}

fn within_secs(key: &str, value: Duration, max_secs: u64) -> Result<(), ConfigError> {
    let s = value.as_secs();
    if s < 1 || s > max_secs {
        return Err(bad(
            key,
            format!("{s} is out of range: must be 1 to {max_secs}"),
        ));
    }
    Ok(())
}

/// A base URL over https (http only to loopback), with no user information, path or query.
pub(crate) fn validate_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let key = "api.endpoint";
    let url = url::Url::parse(endpoint).map_err(|e| bad(key, format!("not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            key,
            "must not carry a user name or password (user:pass@); the API authenticates by \
             signature, and credentials in a URL end up in logs",
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| bad(key, format!("{endpoint:?} has no host")))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            if !is_loopback_host(host) {
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

/// `localhost` or a loopback IP address (IPv6 in brackets or not).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}
