//! Source 2: systemd credential files in `$CREDENTIALS_DIRECTORY` (`LoadCredential=`):
//! `access_key_id`, `access_key_secret`, optionally `security_token`; or, with `role_arn` (and
//! optionally `role_session_name`) beside the key, the role that key assumes.

use std::collections::BTreeMap;
use std::path::Path;

use super::chain::{get, How, Role, Source};
use super::{Credentials, Secret};
use crate::config::{bad, ConfigError, Settings};

/// A file's trimmed content, unless missing or blank.
fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The files source, if the directory holds a key.
pub(super) fn source(
    env: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<Option<Source>, ConfigError> {
    let Some(dir) = get(env, "CREDENTIALS_DIRECTORY").map(Path::new) else {
        return Ok(None);
    };
    let id = read(dir, "access_key_id");
    let secret = read(dir, "access_key_secret");
    let role_arn = read(dir, "role_arn");
    let (id, secret) = match (id, secret) {
        (Some(id), Some(secret)) => (id, secret),
        (None, None) if role_arn.is_none() => return Ok(None),
        (id, _) => {
            let file = if id.is_none() {
                "access_key_id"
            } else {
                "access_key_secret"
            };
            return Err(bad(
                "CREDENTIALS_DIRECTORY",
                format!("the credential file {file} is missing or empty (the others are there)"),
            ));
        }
    };
    let base = Credentials {
        access_key_id: id,
        access_key_secret: Secret::new(secret),
        security_token: read(dir, "security_token").map(Secret::new),
    };
    let Some(arn) = role_arn else {
        return Ok(Some(Source::new(
            "files",
            "systemd credentials ($CREDENTIALS_DIRECTORY)",
            How::Static(base),
        )));
    };
    crate::config::check_role_arn("CREDENTIALS_DIRECTORY/role_arn", &arn)?;
    let mut role = Role::from_settings(&arn, settings);
    if let Some(name) = read(dir, "role_session_name") {
        crate::config::check_session_name("CREDENTIALS_DIRECTORY/role_session_name", &name)?;
        role.session_name = name;
    }
    Ok(Some(Source::new(
        "files",
        format!("systemd credentials ($CREDENTIALS_DIRECTORY), assuming role {arn}"),
        How::AssumeRole { base, role },
    )))
}
