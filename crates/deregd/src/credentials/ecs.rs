//! Source 5: the ECS instance's RAM role, from the metadata service
//! (`credentials.metadata_endpoint`, `http://100.100.100.200`): IMDSv2 first (a session token,
//! then the role's credentials with it), IMDSv1 only when `ALIBABA_CLOUD_IMDSV1_DISABLED` is
//! not true. The role is `ALIBABA_CLOUD_ECS_METADATA`, or the one the service names.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use hyper::{Method, Request};
use serde::Deserialize;

use super::chain::{flag, How, Source};
use super::{Credentials, Issued, Secret};
use crate::api::http::{Http, StampedEmpty};
use crate::config::Settings;

pub(crate) const ENV_ROLE: &str = "ALIBABA_CLOUD_ECS_METADATA";
pub(crate) const ENV_DISABLED: &str = "ALIBABA_CLOUD_ECS_METADATA_DISABLED";
pub(crate) const ENV_IMDSV1_DISABLED: &str = "ALIBABA_CLOUD_IMDSV1_DISABLED";

const TOKEN_PATH: &str = "/latest/api/token";
const ROLES_PATH: &str = "/latest/meta-data/ram/security-credentials/";
/// Lifetime asked for an IMDSv2 session token, seconds.
const TOKEN_TTL_SECS: &str = "21600";

/// The metadata service and the role.
#[derive(Debug, Clone)]
pub(crate) struct Ecs {
    /// Base URL, without a trailing slash.
    base: String,
    role: Option<String>,
    imdsv1_allowed: bool,
}

/// The ECS source for `role` (`None`: ask the service which).
pub(crate) fn source(
    env: &BTreeMap<String, String>,
    settings: &Settings,
    role: Option<String>,
) -> Source {
    let base = settings
        .credentials
        .metadata_endpoint
        .trim_end_matches('/')
        .to_string();
    let what = match &role {
        Some(r) => format!("ECS instance RAM role {r:?} (metadata service)"),
        None => "ECS instance RAM role named by the metadata service".to_string(),
    };
    Source::new(
        "ecs",
        what,
        How::Ecs(Ecs {
            base,
            role,
            imdsv1_allowed: !flag(env, ENV_IMDSV1_DISABLED),
        }),
    )
}

/// A GET or PUT of `path` with `headers`; the body of a 200 answer, else why not.
async fn ask(
    http: &Http,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(StampedEmpty::unpaced())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let answer = http.exchange(request).await.map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!(
            "HTTP {}: {}",
            answer.status,
            crate::outcome::sanitize::foreign_body(answer.status, &answer.body)
        ));
    }
    String::from_utf8(answer.body.to_vec()).map_err(|_| "the answer is not text".to_string())
}

impl Ecs {
    pub(crate) async fn fetch(&self, http: &Http) -> Result<Issued, String> {
        let token = ask(
            http,
            Method::PUT,
            &format!("{}{TOKEN_PATH}", self.base),
            &[("x-aliyun-ecs-metadata-token-ttl-seconds", TOKEN_TTL_SECS)],
        )
        .await;
        let token = match token {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) if !self.imdsv1_allowed => {
                return Err(format!(
                    "metadata service: no IMDSv2 session token ({e}), and IMDSv1 is disabled"
                ))
            }
            Err(_) => None,
        };
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| ("x-aliyun-ecs-metadata-token", t))
            .into_iter()
            .collect();
        let role = match &self.role {
            Some(r) => r.clone(),
            None => {
                let listed = ask(
                    http,
                    Method::GET,
                    &format!("{}{ROLES_PATH}", self.base),
                    &headers,
                )
                .await
                .map_err(|e| format!("metadata service: no RAM role: {e}"))?;
                listed
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .ok_or("metadata service: no RAM role is attached to this instance")?
                    .to_string()
            }
        };
        let body = ask(
            http,
            Method::GET,
            &format!("{}{ROLES_PATH}{role}", self.base),
            &headers,
        )
        .await
        .map_err(|e| format!("metadata service: role {role:?}: {e}"))?;
        parse_json(&body).map_err(|e| format!("metadata service: role {role:?}: {e}"))
    }
}

/// The metadata service's (and a credentials URI's) JSON.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Json {
    access_key_id: Option<String>,
    access_key_secret: Option<String>,
    security_token: Option<String>,
    expiration: Option<String>,
    code: Option<String>,
}

/// `YYYY-MM-DDTHH:MM:SSZ` as a time.
pub(crate) fn parse_expiration(text: &str) -> Result<SystemTime, String> {
    let at = chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%SZ")
        .map_err(|_| format!("Expiration {text:?} is not YYYY-MM-DDTHH:MM:SSZ"))?
        .and_utc()
        .timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(at.max(0) as u64))
}

/// A set from the metadata JSON: `AccessKeyId`, `AccessKeySecret`, `SecurityToken`,
/// `Expiration`, and `Code` = `Success` when present.
pub(crate) fn parse_json(body: &str) -> Result<Issued, String> {
    let json: Json =
        serde_json::from_str(body).map_err(|_| "the answer is not the credentials JSON")?;
    if let Some(code) = json.code.as_deref().filter(|c| *c != "Success") {
        return Err(format!(
            "the answer's Code is {}",
            crate::outcome::sanitize::code(code)
        ));
    }
    let (Some(id), Some(secret), Some(token), Some(expiration)) = (
        json.access_key_id,
        json.access_key_secret,
        json.security_token,
        json.expiration,
    ) else {
        return Err(
            "the answer lacks AccessKeyId, AccessKeySecret, SecurityToken or Expiration".into(),
        );
    };
    Ok(Issued {
        credentials: Credentials {
            access_key_id: id,
            access_key_secret: Secret::new(secret),
            security_token: Some(Secret::new(token)),
        },
        expires_at: Some(parse_expiration(&expiration)?),
    })
}
