//! Temporary credentials (AccessKeyId `STS.…`, secret, SecurityToken, expiry) issued by STS
//! and the ECS metadata service, and the OpenAPI's check of a presented token.
//!
//! Invariant: a set is accepted only with its own token and only until its expiry (whole
//! seconds, as the `Expiration` it was issued with says); the store is bounded, oldest first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::Rng;

use super::answer::ApiError;
use super::verify::constant_time_eq;

/// Upper bound on remembered temporary keys; beyond it the oldest issued are forgotten.
const MAX_TEMP_KEYS: usize = 100_000;

/// Prefix of every SecurityToken issued here (as the vendor's are).
const TOKEN_PREFIX: &str = "CAIS";

/// Random bytes behind a token (base64 after the prefix).
const TOKEN_BYTES: usize = 96;

/// A set of temporary credentials as handed to a client. `Debug` redacts the secret and token.
#[derive(Clone, PartialEq, Eq)]
pub struct StsCredentials {
    /// The AccessKeyId, `STS.` and 28 letters or digits.
    pub access_key_id: String,
    /// The AccessKeySecret.
    pub access_key_secret: String,
    /// The SecurityToken (base64 characters, `+`, `/` and `=` included).
    pub security_token: String,
    /// When it expires, `YYYY-MM-DDTHH:MM:SSZ` (UTC).
    pub expiration: String,
    /// When it expires.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for StsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("security_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// One issued set, as the OpenAPI checks it.
#[derive(Debug, Clone)]
pub(crate) struct TempKey {
    pub secret: String,
    pub token: String,
    /// The account whose budgets the key's calls use.
    pub account: String,
    /// Unix seconds from which the set is refused.
    pub expires_unix: i64,
}

/// Every temporary key issued, by AccessKeyId.
#[derive(Debug, Default)]
pub(crate) struct TempKeys {
    by_id: HashMap<String, TempKey>,
    order: VecDeque<String>,
}

fn alphanumeric(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a unix time in seconds.
pub(crate) fn format_utc(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Unix seconds now.
pub(crate) fn now_unix() -> i64 {
    Utc::now().timestamp()
}

impl TempKeys {
    /// Issues a set for `account` that lives `lifetime` whole seconds from this second on.
    pub(crate) fn issue(&mut self, account: &str, lifetime: u64) -> StsCredentials {
        let raw: Vec<u8> = (0..TOKEN_BYTES).map(|_| rand::random::<u8>()).collect();
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        let id = format!("STS.{}", alphanumeric(28));
        let secret = alphanumeric(44);
        let expires_unix = now_unix() + i64::try_from(lifetime).unwrap_or(i64::MAX / 2);
        while self.by_id.len() >= MAX_TEMP_KEYS {
            match self.order.pop_front() {
                Some(old) => self.by_id.remove(&old),
                None => break,
            };
        }
        self.by_id.insert(
            id.clone(),
            TempKey {
                secret: secret.clone(),
                token: token.clone(),
                account: account.to_string(),
                expires_unix,
            },
        );
        self.order.push_back(id.clone());
        StsCredentials {
            access_key_id: id,
            access_key_secret: secret,
            security_token: token,
            expiration: format_utc(expires_unix),
            expires_at: UNIX_EPOCH + Duration::from_secs(expires_unix.max(0) as u64),
        }
    }

    /// The issued key with this AccessKeyId, if any.
    pub(crate) fn get(&self, id: &str) -> Option<&TempKey> {
        self.by_id.get(id)
    }
}

/// Whether `token` has the shape of a token issued here.
fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|b64| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .is_ok_and(|raw| raw.len() == TOKEN_BYTES)
    })
}

/// The OpenAPI's check of the token presented with a temporary key.
pub(crate) fn check_temp_token(key: &TempKey, presented: Option<&str>) -> Result<(), ApiError> {
    let Some(got) = presented else {
        return Err(ApiError::new(
            400,
            "InvalidSecurityToken.Missing",
            "The SecurityToken is required for this AccessKeyId.",
        ));
    };
    if !well_formed(got) {
        return Err(ApiError::new(
            400,
            "InvalidSecurityToken.Malformed",
            "Specified SecurityToken is malformed.",
        ));
    }
    if !constant_time_eq(got.as_bytes(), key.token.as_bytes()) {
        return Err(ApiError::new(
            400,
            "InvalidSecurityToken.MismatchWithAccessKey",
            "Specified SecurityToken mismatch with the AccessKey.",
        ));
    }
    if now_unix() >= key.expires_unix {
        return Err(ApiError::new(
            400,
            "InvalidSecurityToken.Expired",
            "Specified SecurityToken is expired.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_set_needs_its_own_token_until_it_expires() {
        let mut keys = TempKeys::default();
        let a = keys.issue("acct", 60);
        let b = keys.issue("acct", 0);
        assert!(a.access_key_id.starts_with("STS.") && a.access_key_id.len() == 32);
        assert_ne!(a.access_key_id, b.access_key_id);
        assert!(a.security_token.starts_with("CAIS"));
        let key_a = keys.get(&a.access_key_id).unwrap().clone();
        assert_eq!(key_a.account, "acct");
        assert!(check_temp_token(&key_a, Some(&a.security_token)).is_ok());
        let code = |r: Result<(), ApiError>| r.unwrap_err().code.to_string();
        assert_eq!(
            code(check_temp_token(&key_a, Some(&b.security_token))),
            "InvalidSecurityToken.MismatchWithAccessKey"
        );
        assert_eq!(
            code(check_temp_token(&key_a, Some("garbage"))),
            "InvalidSecurityToken.Malformed"
        );
        assert_eq!(
            code(check_temp_token(&key_a, None)),
            "InvalidSecurityToken.Missing"
        );
        let key_b = keys.get(&b.access_key_id).unwrap().clone();
        assert_eq!(
            code(check_temp_token(&key_b, Some(&b.security_token))),
            "InvalidSecurityToken.Expired"
        );
        let parsed = chrono::NaiveDateTime::parse_from_str(&a.expiration, "%Y-%m-%dT%H:%M:%SZ")
            .unwrap()
            .and_utc()
            .timestamp();
        assert_eq!(parsed, key_a.expires_unix);
        assert!(!format!("{a:?}").contains(&a.access_key_secret));
        assert!(!format!("{a:?}").contains(&a.security_token));
    }
}
