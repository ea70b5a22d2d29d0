//! STS (`Version=2015-04-01`): `AssumeRole`, signed with a long-term key by the project's own
//! signer, and `AssumeRoleWithOIDC`, not signed; both over the API's transport (and proxy),
//! to `credentials.sts_endpoint`. Errors carry the STS code and a sanitised message only.

use serde::Deserialize;

use super::chain::Role;
use super::oidc::Oidc;
use super::provider::Set;
use super::{Credentials, Issued, Secret};
use crate::api::client::Target;
use crate::api::http::{Http, HttpOptions, StampedEmpty};
use crate::api::signer;
use crate::config::{Settings, SignatureVersion};
use crate::outcome::sanitize;

/// The STS API version.
pub(crate) const STS_VERSION: &str = "2015-04-01";

pub(crate) struct Sts {
    http: Http,
    target: Target,
    signature: SignatureVersion,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    credentials: Option<Issue>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Issue {
    access_key_id: String,
    access_key_secret: String,
    security_token: String,
    expiration: String,
}

impl Sts {
    pub(crate) fn new(settings: &Settings) -> anyhow::Result<Sts> {
        Ok(Sts {
            http: Http::new(&HttpOptions {
                max_idle_per_host: 1,
                ..HttpOptions::for_endpoint(settings, &settings.credentials.sts_endpoint)?
            })?,
            target: Target::parse(
                &settings.credentials.sts_endpoint,
                "credentials.sts_endpoint",
            )?,
            signature: settings.api.signature,
        })
    }

    /// `AssumeRole` of `role`, signed with `base`.
    pub(crate) async fn assume_role(
        &self,
        base: &Credentials,
        role: &Role,
    ) -> Result<Issued, String> {
        let duration = role.duration.as_secs().to_string();
        let mut params = vec![
            ("RoleArn", role.arn.as_str()),
            ("RoleSessionName", role.session_name.as_str()),
            ("DurationSeconds", duration.as_str()),
        ];
        if let Some(policy) = &role.policy {
            params.push(("Policy", policy.as_str()));
        }
        let set = Set::of(base.clone());
        let request = self
            .target
            .signed(
                &set,
                self.signature,
                "AssumeRole",
                STS_VERSION,
                &params,
                StampedEmpty::unpaced(),
            )
            .map_err(|e| e.to_string())?;
        self.exchange("AssumeRole", request).await
    }

    /// `AssumeRoleWithOIDC` of `oidc`'s role with `token` (not signed).
    pub(crate) async fn assume_role_with_oidc(
        &self,
        oidc: &Oidc,
        token: &str,
    ) -> Result<Issued, String> {
        let timestamp = signer::timestamp(chrono::Utc::now());
        let duration = oidc.role.duration.as_secs().to_string();
        let mut params = vec![
            ("Action", "AssumeRoleWithOIDC"),
            ("Version", STS_VERSION),
            ("Format", "JSON"),
            ("Timestamp", timestamp.as_str()),
            ("RoleArn", oidc.role.arn.as_str()),
            ("OIDCProviderArn", oidc.provider_arn.as_str()),
            ("OIDCToken", token),
            ("RoleSessionName", oidc.role.session_name.as_str()),
            ("DurationSeconds", duration.as_str()),
        ];
        if let Some(policy) = &oidc.role.policy {
            params.push(("Policy", policy.as_str()));
        }
        let query = signer::canonical_query(&params);
        let request = self
            .target
            .request(&query, &[], StampedEmpty::unpaced())
            .map_err(|e| e.to_string())?;
        self.exchange("AssumeRoleWithOIDC", request).await
    }

    async fn exchange(
        &self,
        action: &str,
        request: hyper::Request<StampedEmpty>,
    ) -> Result<Issued, String> {
        let answer = self
            .http
            .exchange(request)
            .await
            .map_err(|e| format!("STS {action}: {e}"))?;
        let parsed: Option<Answer> = serde_json::from_slice(&answer.body).ok();
        match parsed {
            Some(Answer {
                credentials: Some(c),
                ..
            }) if answer.status == 200 => Ok(Issued {
                credentials: Credentials {
                    access_key_id: c.access_key_id,
                    access_key_secret: Secret::new(c.access_key_secret),
                    security_token: Some(Secret::new(c.security_token)),
                },
                expires_at: Some(super::ecs::parse_expiration(&c.expiration)?),
            }),
            Some(Answer {
                code: Some(code),
                message,
                ..
            }) => Err(format!(
                "STS {action}: HTTP {} {}: {}",
                answer.status,
                sanitize::code(&code),
                sanitize::message(message.as_deref().unwrap_or(""))
            )),
            _ => Err(format!(
                "STS {action}: {}",
                sanitize::foreign_body(answer.status, &answer.body)
            )),
        }
    }
}
