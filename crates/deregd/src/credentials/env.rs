//! Source 1: the AccessKey in `ALIBABA_CLOUD_ACCESS_KEY_ID` / `ALIBABA_CLOUD_ACCESS_KEY_SECRET`,
//! with `ALIBABA_CLOUD_SECURITY_TOKEN` for a fixed STS set. One of the pair without the other
//! is an error naming the missing one.

use std::collections::BTreeMap;

use super::chain::{get, How, Source};
use super::{Credentials, Secret, ENV_KEY_ID, ENV_KEY_SECRET, ENV_TOKEN};
use crate::config::{bad, ConfigError};

/// The env source, if its variables are set.
pub(super) fn source(env: &BTreeMap<String, String>) -> Result<Option<Source>, ConfigError> {
    let (id, secret) = (get(env, ENV_KEY_ID), get(env, ENV_KEY_SECRET));
    let (id, secret) = match (id, secret) {
        (None, None) => return Ok(None),
        (Some(id), Some(secret)) => (id, secret),
        (None, Some(_)) => return Err(missing(ENV_KEY_ID, ENV_KEY_SECRET)),
        (Some(_), None) => return Err(missing(ENV_KEY_SECRET, ENV_KEY_ID)),
    };
    let token = get(env, ENV_TOKEN).map(Secret::new);
    let what = if token.is_some() {
        format!("environment ({ENV_KEY_ID}, STS token)")
    } else {
        format!("environment ({ENV_KEY_ID})")
    };
    Ok(Some(Source::new(
        "env",
        what,
        How::Static(Credentials {
            access_key_id: id.to_string(),
            access_key_secret: Secret::new(secret),
            security_token: token,
        }),
    )))
}

fn missing(name: &str, beside: &str) -> ConfigError {
    bad(name, format!("is not set, but {beside} is: set both"))
}
