//! Source 4: a profile of the `aliyun` CLI's `~/.aliyun/config.json`: the one
//! `credentials.profile` or `ALIBABA_CLOUD_PROFILE` names, else the file's `current`. Modes
//! `AK`, `StsToken`, `RamRoleArn` (AssumeRole with the profile's key), `EcsRamRole` and `OIDC`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::chain::{get, How, Role, Source};
use super::oidc::Oidc;
use super::{Credentials, Secret};
use crate::config::{bad, ConfigError, Settings};

pub(crate) const ENV_PROFILE: &str = "ALIBABA_CLOUD_PROFILE";

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    current: String,
    #[serde(default)]
    profiles: Vec<Profile>,
}

/// The fields deregd reads; the CLI writes more.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Profile {
    name: String,
    mode: String,
    access_key_id: String,
    access_key_secret: String,
    sts_token: String,
    ram_role_name: String,
    ram_role_arn: String,
    ram_session_name: String,
    expired_seconds: u64,
    oidc_provider_arn: String,
    oidc_token_file: String,
}

/// `~/.aliyun/config.json`, from `HOME`.
fn path(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    get(env, "HOME").map(|home| PathBuf::from(home).join(".aliyun").join("config.json"))
}

/// The profile source, if the file exists (or `required`).
pub(super) fn source(
    env: &BTreeMap<String, String>,
    settings: &Settings,
    required: bool,
) -> Result<Option<Source>, ConfigError> {
    let key = "credentials.profile";
    let file = path(env).filter(|p| p.exists());
    let Some(file) = file else {
        if required {
            return Err(bad(key, "~/.aliyun/config.json does not exist"));
        }
        return Ok(None);
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| bad(key, format!("cannot read {}: {e}", file.display())))?;
    let parsed: File = serde_json::from_str(&text).map_err(|e| {
        // The parser's message quotes no value, only where it stopped.
        bad(
            key,
            format!("{} is not the CLI's JSON: {e}", file.display()),
        )
    })?;
    let (name, named_by) = if !settings.credentials.profile.is_empty() {
        (settings.credentials.profile.clone(), key)
    } else if let Some(n) = get(env, ENV_PROFILE) {
        (n.to_string(), ENV_PROFILE)
    } else {
        (parsed.current.clone(), key)
    };
    let Some(p) = parsed.profiles.into_iter().find(|p| p.name == name) else {
        return Err(bad(
            named_by,
            format!("profile {name:?} is not in {}", file.display()),
        ));
    };
    let origin = format!("aliyun CLI profile {name:?} ({})", p.mode);
    let need = |value: &str, field: &str| -> Result<String, ConfigError> {
        if value.trim().is_empty() {
            Err(bad(
                named_by,
                format!("profile {name:?} (mode {}) has no {field}", p.mode),
            ))
        } else {
            Ok(value.trim().to_string())
        }
    };
    let key_of = |token: Option<String>| -> Result<Credentials, ConfigError> {
        Ok(Credentials {
            access_key_id: need(&p.access_key_id, "access_key_id")?,
            access_key_secret: Secret::new(need(&p.access_key_secret, "access_key_secret")?),
            security_token: token.map(Secret::new),
        })
    };
    let role = |arn: String| -> Result<Role, ConfigError> {
        crate::config::check_role_arn(named_by, &arn)?;
        let mut role = Role::from_settings(&arn, settings);
        if !p.ram_session_name.trim().is_empty() {
            crate::config::check_session_name(named_by, p.ram_session_name.trim())?;
            role.session_name = p.ram_session_name.trim().to_string();
        }
        if p.expired_seconds > 0 {
            role.duration = Duration::from_secs(p.expired_seconds.clamp(900, 43200));
        }
        Ok(role)
    };
    let source = match p.mode.as_str() {
        "AK" => Source::new("profile", origin, How::Static(key_of(None)?)),
        "StsToken" => {
            let token = need(&p.sts_token, "sts_token")?;
            Source::new("profile", origin, How::Static(key_of(Some(token))?))
        }
        "RamRoleArn" => {
            let arn = need(&p.ram_role_arn, "ram_role_arn")?;
            let how = How::AssumeRole {
                base: key_of(None)?,
                role: role(arn.clone())?,
            };
            Source::new("profile", format!("{origin}: role {arn}"), how)
        }
        "EcsRamRole" => {
            let role = need(&p.ram_role_name, "ram_role_name")?;
            let mut s = super::ecs::source(env, settings, Some(role));
            s.name = "profile";
            s.what = format!("{origin}: {}", s.what);
            s
        }
        "OIDC" => {
            let arn = need(&p.ram_role_arn, "ram_role_arn")?;
            let provider = need(&p.oidc_provider_arn, "oidc_provider_arn")?;
            let token_file = need(&p.oidc_token_file, "oidc_token_file")?;
            Oidc::source(
                "profile",
                &origin,
                role(arn)?,
                provider,
                PathBuf::from(token_file),
            )
        }
        other => {
            return Err(bad(
                named_by,
                format!(
                    "profile {name:?} has mode {other:?}; deregd reads AK, StsToken, \
                     RamRoleArn, EcsRamRole and OIDC"
                ),
            ))
        }
    };
    Ok(Some(source))
}
