//! Credentials: the AccessKey pair (and STS token) calls are signed with, where they come from
//! ([`chain`]: the vendor's default chain, one module per source) and how temporary ones are
//! renewed ([`provider`]). Secrets are [`Secret`]s, which never print; they are never written to
//! the configuration, the database, the logs or any output.

mod chain;
mod ecs;
mod env;
mod files;
mod oidc;
mod profile;
mod provider;
mod sts;
mod uri;

pub use chain::Source;
pub(crate) use provider::State;
pub use provider::{Provider, Set, Status};

/// A set as a source hands it out.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) credentials: Credentials,
    /// `None` for a long-term AccessKey.
    pub(crate) expires_at: Option<std::time::SystemTime>,
}

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::config::{bad, ConfigError};

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

    use crate::test_env as env;

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
