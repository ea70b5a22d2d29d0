//! Source 3: OIDC (ACK RRSA, CI): `ALIBABA_CLOUD_ROLE_ARN`, `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`
//! and `ALIBABA_CLOUD_OIDC_TOKEN_FILE`, all three, through STS `AssumeRoleWithOIDC` (not
//! signed). The token file is read again on every renewal: the platform rotates it. A partial
//! set of the variables is an error naming the missing one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::chain::{get, How, Role, Source};
use crate::config::{bad, ConfigError, Settings};

pub(crate) const ENV_ROLE_ARN: &str = "ALIBABA_CLOUD_ROLE_ARN";
pub(crate) const ENV_PROVIDER_ARN: &str = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN";
pub(crate) const ENV_TOKEN_FILE: &str = "ALIBABA_CLOUD_OIDC_TOKEN_FILE";
pub(crate) const ENV_SESSION_NAME: &str = "ALIBABA_CLOUD_ROLE_SESSION_NAME";

/// An OIDC role: the role, the identity provider, and where the platform keeps the token.
#[derive(Debug, Clone)]
pub(crate) struct Oidc {
    pub(crate) role: Role,
    pub(crate) provider_arn: String,
    pub(crate) token_file: PathBuf,
}

impl Oidc {
    /// The token, read now (it is never kept).
    pub(crate) fn token(&self) -> Result<String, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("cannot read the OIDC token file: {e}"))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err("the OIDC token file is empty".into());
        }
        Ok(token)
    }

    /// An OIDC source for these values (from the environment or a CLI profile).
    pub(crate) fn source(
        name: &'static str,
        origin: &str,
        role: Role,
        provider_arn: String,
        token_file: PathBuf,
    ) -> Source {
        Source::new(
            name,
            format!("{origin}: OIDC role {} (AssumeRoleWithOIDC)", role.arn),
            How::Oidc(Oidc {
                role,
                provider_arn,
                token_file,
            }),
        )
    }
}

/// The OIDC source, if any of its variables is set (or `required`): all three must be.
pub(super) fn source(
    env: &BTreeMap<String, String>,
    settings: &Settings,
    required: bool,
) -> Result<Option<Source>, ConfigError> {
    let configured_arn = &settings.credentials.role_arn;
    let role_arn = get(env, ENV_ROLE_ARN)
        .map(str::to_string)
        .or_else(|| (!configured_arn.is_empty()).then(|| configured_arn.clone()));
    let provider = get(env, ENV_PROVIDER_ARN);
    let token_file = get(env, ENV_TOKEN_FILE);
    let any = get(env, ENV_ROLE_ARN).is_some() || provider.is_some() || token_file.is_some();
    if !any && !required {
        return Ok(None);
    }
    let missing = |name: &str| {
        bad(
            name,
            format!(
                "is not set: OIDC needs {ENV_ROLE_ARN} (or credentials.role_arn), \
                 {ENV_PROVIDER_ARN} and {ENV_TOKEN_FILE}, all three"
            ),
        )
    };
    let role_arn = role_arn.ok_or_else(|| missing(ENV_ROLE_ARN))?;
    let provider = provider.ok_or_else(|| missing(ENV_PROVIDER_ARN))?;
    let token_file = token_file.ok_or_else(|| missing(ENV_TOKEN_FILE))?;
    crate::config::check_role_arn(ENV_ROLE_ARN, &role_arn)?;
    let mut role = Role::from_settings(&role_arn, settings);
    if let Some(name) = get(env, ENV_SESSION_NAME) {
        crate::config::check_session_name(ENV_SESSION_NAME, name)?;
        role.session_name = name.to_string();
    }
    Ok(Some(Oidc::source(
        "oidc",
        "environment",
        role,
        provider.to_string(),
        PathBuf::from(token_file),
    )))
}
