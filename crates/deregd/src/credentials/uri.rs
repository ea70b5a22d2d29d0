//! Source 6: `ALIBABA_CLOUD_CREDENTIALS_URI`, an HTTP endpoint answering the metadata
//! service's JSON (a sidecar, a credentials broker). http only to loopback (or the metadata
//! address): the answer holds a secret.

use std::collections::BTreeMap;

use hyper::{Method, Request};

use super::chain::{get, How, Source};
use super::Issued;
use crate::api::http::{Http, StampedEmpty};
use crate::config::{bad, ConfigError};

pub(crate) const ENV_URI: &str = "ALIBABA_CLOUD_CREDENTIALS_URI";

/// The URI source, if set.
pub(super) fn source(env: &BTreeMap<String, String>) -> Result<Option<Source>, ConfigError> {
    let Some(uri) = get(env, ENV_URI) else {
        return Ok(None);
    };
    let url = url::Url::parse(uri).map_err(|e| bad(ENV_URI, format!("not a URL: {e}")))?;
    let host = url.host_str().unwrap_or("");
    let ok = match url.scheme() {
        "https" => !host.is_empty(),
        "http" => crate::config::is_loopback_host(host) || host == crate::config::METADATA_HOST,
        _ => false,
    };
    if !ok || !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            ENV_URI,
            "must be https://, or http:// to a loopback host, with no user or password",
        ));
    }
    let shown = format!("{}://{}{}", url.scheme(), url.authority(), url.path());
    Ok(Some(Source::new(
        "uri",
        format!("{ENV_URI} ({shown})"),
        How::Uri(uri.to_string()),
    )))
}

/// A set from `uri`.
pub(crate) async fn fetch(http: &Http, uri: &str) -> Result<Issued, String> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(StampedEmpty::unpaced())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let answer = http.exchange(request).await.map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!(
            "credentials URI: HTTP {}: {}",
            answer.status,
            crate::outcome::sanitize::foreign_body(answer.status, &answer.body)
        ));
    }
    let body = String::from_utf8_lossy(&answer.body);
    super::ecs::parse_json(&body).map_err(|e| format!("credentials URI: {e}"))
}
