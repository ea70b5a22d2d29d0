//! Ranges and cross-field rules of the settings; the first problem wins and names its key.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{bad, ConfigError, LimitsSettings, Settings, ACCOUNT_CALLS_PER_SECOND};

impl Settings {
    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_endpoint(&self.api.endpoint)?;
        self.validate_connectivity()?;
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
        self.worker.schedule()?;
        if self.database.path.as_os_str().is_empty() {
            return Err(bad("database.path", "must not be empty"));
        }
        self.validate_metrics()?;
        self.validate_credentials()?;
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

impl Settings {
    fn validate_credentials(&self) -> Result<(), ConfigError> {
        let c = &self.credentials;
        if !c.role_arn.is_empty() {
            check_role_arn("credentials.role_arn", &c.role_arn)?;
        }
        check_session_name("credentials.role_session_name", &c.role_session_name)?;
        let secs = c.duration.as_secs();
        if !(900..=43200).contains(&secs) {
            return Err(bad(
                "credentials.duration_secs",
                format!("{secs} is out of range: STS allows 900 to 43200"),
            ));
        }
        if !c.policy.is_empty()
            && !serde_json::from_str::<serde_json::Value>(&c.policy).is_ok_and(|v| v.is_object())
        {
            return Err(bad(
                "credentials.policy",
                "is not a JSON policy document (an object)",
            ));
        }
        validate_base_url(
            "credentials.sts_endpoint",
            &c.sts_endpoint,
            is_loopback_host,
        )?;
        validate_base_url("credentials.metadata_endpoint", &c.metadata_endpoint, |h| {
            h == METADATA_HOST || is_loopback_host(h)
        })?;
        Ok(())
    }
}

/// The ECS metadata service's address, the one non-loopback host reached over http.
pub(crate) const METADATA_HOST: &str = "100.100.100.200";

/// `acs:ram::<account>:role/<name>`.
pub(crate) fn check_role_arn(key: &str, arn: &str) -> Result<(), ConfigError> {
    let ok = arn
        .strip_prefix("acs:ram::")
        .and_then(|rest| rest.split_once(":role/"))
        .is_some_and(|(account, name)| !account.is_empty() && !name.is_empty());
    if ok {
        Ok(())
    } else {
        Err(bad(
            key,
            format!("{arn:?} is not a role ARN like acs:ram::1234567890123456:role/deregd"),
        ))
    }
}

/// A `RoleSessionName`: 2-64 of `A-Z a-z 0-9 . @ - _`.
pub(crate) fn check_session_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".@-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(
            key,
            format!("{name:?} must be 2 to 64 of A-Z a-z 0-9 . @ - _"),
        ))
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
        check_share("limits.abort_failure_share", self.abort_failure_share)?;
        within(
            "limits.abort_min_answers",
            self.abort_min_answers,
            1_000_000,
        )?;
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

/// A share between 0.0 and 1.0.
pub(crate) fn check_share(key: &str, share: f64) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&share) {
        return Err(bad(
            key,
            format!("{share} is out of range: must be 0.0 to 1.0"),
        ));
    }
    Ok(())
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
    validate_base_url("api.endpoint", endpoint, is_loopback_host)
}

/// A base URL over https (http only to a host `http_ok` accepts), with no user information,
/// path or query; `key` names it.
pub(crate) fn validate_base_url(
    key: &str,
    endpoint: &str,
    http_ok: impl Fn(&str) -> bool,
) -> Result<(), ConfigError> {
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
            if !http_ok(host) {
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

impl Settings {
    /// `api.proxy` (or the environment's proxy variables) and `api.ca_file`.
    fn validate_connectivity(&self) -> Result<(), ConfigError> {
        if !self.api.proxy.0.trim().is_empty() {
            check_proxy_url(&self.api.proxy.0).map_err(|why| bad("api.proxy", why))?;
        } else {
            let proxies = super::PROXY_VARIABLES
                .iter()
                .filter(|n| !n.eq_ignore_ascii_case("no_proxy"));
            for &name in proxies {
                if let Some(value) = self.proxy_env.get(name).filter(|v| !v.trim().is_empty()) {
                    check_proxy_url(value).map_err(|why| bad(name, why))?;
                }
            }
        }
        if !self.api.ca_file.as_os_str().is_empty() {
            pem_certificates(&self.api.ca_file).map_err(|why| bad("api.ca_file", why))?;
        }
        Ok(())
    }
}

/// A region id as the vendor spells them (`cn-hangzhou`, `ap-southeast-1`).
pub(crate) fn validate_region(region: &str) -> Result<(), ConfigError> {
    let ok = !region.is_empty()
        && region.len() <= 40
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(bad(
            "api.region",
            format!("{region:?} is not a region id such as \"cn-shanghai\""),
        ))
    }
}

/// `value` as a URL, a scheme-less `host:port` taken as http (as curl does).
pub(crate) fn parse_proxy_url(value: &str) -> Result<url::Url, url::ParseError> {
    let value = value.trim();
    if value.contains("://") {
        url::Url::parse(value)
    } else {
        url::Url::parse(&format!("http://{value}"))
    }
}

/// A proxy URL deregd can use: `http://[user:password@]host[:port]` (a scheme-less
/// `host:port` means http, as for curl). The reason never repeats the URL, which may hold a
/// password.
pub(crate) fn check_proxy_url(value: &str) -> Result<(), String> {
    let url = parse_proxy_url(value).map_err(|e| format!("not a proxy URL ({e})"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "proxy scheme {:?} is not supported; use http:// (calls go through it in a CONNECT \
             tunnel, TLS end to end)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the proxy URL has no host".into());
    }
    if url.path() != "/" || url.query().is_some() {
        return Err("the proxy URL must have no path or query".into());
    }
    Ok(())
}

/// The certificates of a PEM file, at least one.
pub(crate) fn pem_certificates(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}
