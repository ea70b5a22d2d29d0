//! The chain: which source the credentials come from, in the vendor's default order (the first
//! one configured wins), or the one `credentials.source` names; and the [`Fetcher`] that
//! obtains a set from it. A source configured halfway is an error naming what is missing,
//! never a silent skip to the next one.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ecs, env, files, oidc, profile, sts, uri, Credentials, Issued};
use crate::api::http::{Http, HttpOptions};
use crate::config::{bad, ConfigError, CredentialSource, Settings};

/// A role to assume with STS.
#[derive(Debug, Clone)]
pub(crate) struct Role {
    pub(crate) arn: String,
    pub(crate) session_name: String,
    pub(crate) duration: Duration,
    pub(crate) policy: Option<String>,
}

impl Role {
    /// `arn` with the session name, lifetime and policy of `credentials.*`.
    pub(crate) fn from_settings(arn: &str, settings: &Settings) -> Role {
        let c = &settings.credentials;
        Role {
            arn: arn.to_string(),
            session_name: c.role_session_name.clone(),
            duration: c.duration,
            policy: (!c.policy.is_empty()).then(|| c.policy.clone()),
        }
    }
}

/// How a source obtains a set.
#[derive(Debug, Clone)]
pub(crate) enum How {
    /// A long-term AccessKey (or a fixed STS token), used as it is.
    Static(Credentials),
    /// STS `AssumeRole`, signed with a long-term AccessKey.
    AssumeRole { base: Credentials, role: Role },
    /// STS `AssumeRoleWithOIDC`, with a token file re-read every time.
    Oidc(oidc::Oidc),
    /// The ECS metadata service.
    Ecs(ecs::Ecs),
    /// `ALIBABA_CLOUD_CREDENTIALS_URI`.
    Uri(String),
}

/// The source the chain chose.
#[derive(Debug, Clone)]
pub struct Source {
    /// `env`, `files`, `oidc`, `profile`, `ecs` or `uri`.
    pub(crate) name: &'static str,
    /// In words, for `check` and the logs (no secret).
    pub(crate) what: String,
    pub(crate) how: How,
}

impl Source {
    pub(crate) fn new(name: &'static str, what: impl Into<String>, how: How) -> Source {
        Source {
            name,
            what: what.into(),
            how,
        }
    }

    /// What the chain chose, in words.
    pub fn describe(&self) -> String {
        self.what.clone()
    }

    /// The source's short name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// With `credentials.role_arn` set, a long-term key assumes that role.
    fn with_role(self, settings: &Settings) -> Source {
        let arn = &settings.credentials.role_arn;
        match self.how {
            How::Static(base) if !arn.is_empty() => Source {
                what: format!("{}, assuming role {arn}", self.what),
                how: How::AssumeRole {
                    base,
                    role: Role::from_settings(arn, settings),
                },
                ..self
            },
            _ => self,
        }
    }
}

/// The trimmed value of `name`, unless unset or blank.
pub(crate) fn get<'e>(env: &'e BTreeMap<String, String>, name: &str) -> Option<&'e str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A boolean variable: `true` (any case) or `1`.
pub(crate) fn flag(env: &BTreeMap<String, String>, name: &str) -> bool {
    get(env, name).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Picks the source: with `credentials.source = "auto"` the first configured of env, files,
/// OIDC, profile, ECS (a role named by `ALIBABA_CLOUD_ECS_METADATA`) and URI; when none is,
/// the ECS role the metadata service names (unless `ALIBABA_CLOUD_ECS_METADATA_DISABLED`).
pub(crate) fn resolve(
    settings: &Settings,
    env: &BTreeMap<String, String>,
) -> Result<Source, ConfigError> {
    let wanted = settings.credentials.source;
    let tries = |kind: CredentialSource| wanted == CredentialSource::Auto || wanted == kind;
    let only = |kind: CredentialSource| wanted == kind;
    if tries(CredentialSource::Env) {
        if let Some(s) = env::source(env)? {
            return Ok(s.with_role(settings));
        }
        if only(CredentialSource::Env) {
            return Err(bad(
                super::ENV_KEY_ID,
                format!(
                    "is not set (credentials.source = \"env\"): set {} and {}",
                    super::ENV_KEY_ID,
                    super::ENV_KEY_SECRET
                ),
            ));
        }
    }
    if tries(CredentialSource::Files) {
        if let Some(s) = files::source(env, settings)? {
            return Ok(s.with_role(settings));
        }
        if only(CredentialSource::Files) {
            return Err(bad(
                "CREDENTIALS_DIRECTORY",
                "holds no access_key_id and access_key_secret (credentials.source = \"files\")",
            ));
        }
    }
    if tries(CredentialSource::Oidc) {
        if let Some(s) = oidc::source(env, settings, only(CredentialSource::Oidc))? {
            return Ok(s);
        }
    }
    if tries(CredentialSource::Profile) {
        if let Some(s) = profile::source(env, settings, only(CredentialSource::Profile))? {
            return Ok(s);
        }
    }
    let ecs_off = flag(env, ecs::ENV_DISABLED);
    if tries(CredentialSource::Ecs) && !ecs_off {
        if let Some(role) = get(env, ecs::ENV_ROLE) {
            return Ok(ecs::source(env, settings, Some(role.to_string())));
        }
        if only(CredentialSource::Ecs) {
            return Ok(ecs::source(env, settings, None));
        }
    }
    if tries(CredentialSource::Uri) {
        if let Some(s) = uri::source(env)? {
            return Ok(s);
        }
        if only(CredentialSource::Uri) {
            return Err(bad(
                uri::ENV_URI,
                "is not set (credentials.source = \"uri\")",
            ));
        }
    }
    if only(CredentialSource::Ecs) && ecs_off {
        return Err(bad(
            ecs::ENV_DISABLED,
            "is true, but credentials.source = \"ecs\"",
        ));
    }
    if wanted == CredentialSource::Auto && !ecs_off {
        return Ok(ecs::source(env, settings, None));
    }
    Err(bad(
        "credentials",
        format!(
            "none are configured: set {} and {}, put access_key_id and access_key_secret in \
             $CREDENTIALS_DIRECTORY, set {}, {} and {} (OIDC), write ~/.aliyun/config.json, \
             set {} (ECS RAM role) or {}",
            super::ENV_KEY_ID,
            super::ENV_KEY_SECRET,
            oidc::ENV_ROLE_ARN,
            oidc::ENV_PROVIDER_ARN,
            oidc::ENV_TOKEN_FILE,
            ecs::ENV_ROLE,
            uri::ENV_URI
        ),
    ))
}

/// Obtains sets: STS over the API's transport (and proxy), the metadata service and the
/// credentials URI over one of their own, never through a proxy.
pub(crate) struct Fetcher {
    sts: sts::Sts,
    local: Http,
}

impl Fetcher {
    pub(crate) fn new(settings: &Settings) -> anyhow::Result<Fetcher> {
        let local = Http::new(&HttpOptions::local(
            Duration::from_secs(1),
            Duration::from_secs(5),
        ))?;
        Ok(Fetcher {
            sts: sts::Sts::new(settings)?,
            local,
        })
    }

    /// A set from `source`; the error says why not (no secret in it).
    pub(crate) async fn fetch(&self, source: &Source) -> Result<Issued, String> {
        match &source.how {
            How::Static(credentials) => Ok(Issued {
                credentials: credentials.clone(),
                expires_at: None,
            }),
            How::AssumeRole { base, role } => self.sts.assume_role(base, role).await,
            How::Oidc(o) => {
                let token = o.token()?;
                self.sts.assume_role_with_oidc(o, &token).await
            }
            How::Ecs(e) => e.fetch(&self.local).await,
            How::Uri(u) => uri::fetch(&self.local, u).await,
        }
    }
}

#[cfg(test)]
mod tests;
