//! STS (`Version=2015-04-01`) on the emulator's own listener: `AssumeRole`, signed with a
//! long-term key exactly like the OpenAPI calls, and `AssumeRoleWithOIDC`, not signed.
//!
//! Both issue sets from the shared temporary-key store, so the OpenAPI accepts them until
//! they expire. A set lives min(`DurationSeconds`, `sts_duration_secs`).

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::actions::{invalid, required};
use super::answer::ApiError;
use super::auth::{authenticate, Authenticated, Params};
use super::handler::{rejected, use_nonce, Incoming};
use super::shared::Shared;
use super::state::Product;
use super::tempkeys::StsCredentials;

/// The STS API version.
pub(crate) const STS_VERSION: &str = "2015-04-01";

/// Lifetime when `DurationSeconds` is absent, in seconds.
const DEFAULT_DURATION_SECS: u64 = 3600;

/// The `Credentials` object of an STS answer (also the metadata service's fields).
pub(crate) fn credentials_fields(c: &StsCredentials) -> Map<String, Value> {
    Map::from_iter([
        ("AccessKeyId".to_string(), json!(c.access_key_id)),
        ("AccessKeySecret".to_string(), json!(c.access_key_secret)),
        ("SecurityToken".to_string(), json!(c.security_token)),
        ("Expiration".to_string(), json!(c.expiration)),
    ])
}

/// Handles one STS request; counts its answer.
pub(crate) fn handle(
    shared: &Shared,
    req: &Incoming,
    params: &Params,
    action: &str,
    now: Instant,
) -> Result<Map<String, Value>, ApiError> {
    let result = if action == "AssumeRoleWithOIDC" {
        assume_role_with_oidc(shared, &params.all())
    } else {
        let auth = match authenticate(shared, req, params) {
            (Ok(auth), _) => auth,
            (Err(e), seen) => {
                rejected(shared, Product::Sts, seen, &e, now);
                return Err(e);
            }
        };
        {
            let mut inner = shared.lock();
            inner.state.record_key_arrival(&auth.key_id, now);
            use_nonce(&mut inner.state, &auth, Product::Sts, now)?;
        }
        match auth.action.as_str() {
            "AssumeRole" => assume_role(shared, &auth),
            _ => Err(ApiError::new(
                404,
                "InvalidAction.NotFound",
                "Specified api is not found, please check your url and method.",
            )),
        }
    };
    let code = result
        .as_ref()
        .map_or_else(|e| e.code.to_string(), |_| "OK".into());
    shared.lock().state.count_code(Product::Sts, &code);
    result
}

/// `DurationSeconds`: 900–43200, 3600 when absent.
fn duration(params: &[(String, String)]) -> Result<u64, ApiError> {
    match super::auth::param(params, "DurationSeconds").filter(|d| !d.is_empty()) {
        None => Ok(DEFAULT_DURATION_SECS),
        Some(d) => d
            .parse::<u64>()
            .ok()
            .filter(|d| (900..=43200).contains(d))
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    "InvalidParameter.DurationSeconds",
                    "The Min/Max value of DurationSeconds is 15min/12hr.",
                )
            }),
    }
}

/// `acs:ram::<account>:<kind>/<name>`.
fn valid_arn(arn: &str, kind: &str) -> bool {
    arn.strip_prefix("acs:ram::")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(account, rest)| {
            !account.is_empty()
                && rest
                    .strip_prefix(kind)
                    .and_then(|r| r.strip_prefix('/'))
                    .is_some_and(|name| !name.is_empty())
        })
}

fn session_name(params: &[(String, String)], needed: bool) -> Result<String, ApiError> {
    let name = if needed {
        required(params, "RoleSessionName")?
    } else {
        match super::auth::param(params, "RoleSessionName").filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => return Ok("emulator-session".into()),
        }
    };
    let ok = (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".@-_".contains(&b));
    if ok {
        Ok(name.to_string())
    } else {
        Err(invalid("RoleSessionName"))
    }
}

fn role(params: &[(String, String)]) -> Result<String, ApiError> {
    let arn = required(params, "RoleArn")?;
    if valid_arn(arn, "role") {
        Ok(arn.to_string())
    } else {
        Err(invalid("RoleArn"))
    }
}

/// The answer's fields: `AssumedRoleUser` and `Credentials`.
fn answer(role_arn: &str, session: &str, issued: &StsCredentials) -> Map<String, Value> {
    let role_id: u64 = role_arn
        .bytes()
        .fold(7, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let user = json!({
        "Arn": format!("{role_arn}/{session}"),
        "AssumedRoleId": format!("3{:017}:{session}", role_id % 100_000_000_000_000_000),
    });
    Map::from_iter([
        ("AssumedRoleUser".to_string(), user),
        (
            "Credentials".to_string(),
            Value::Object(credentials_fields(issued)),
        ),
    ])
}

fn assume_role(shared: &Shared, auth: &Authenticated) -> Result<Map<String, Value>, ApiError> {
    let p = &auth.params;
    let role_arn = role(p)?;
    let session = session_name(p, true)?;
    let lifetime = duration(p)?;
    if let Some(policy) = super::auth::param(p, "Policy").filter(|x| !x.is_empty()) {
        if !serde_json::from_str::<Value>(policy).is_ok_and(|v| v.is_object()) {
            return Err(ApiError::new(
                400,
                "InvalidParameter.PolicyGrammar",
                "The parameter Policy has not passed grammar check.",
            ));
        }
    }
    let issued = shared.issue(&auth.account, lifetime, "AssumeRole");
    Ok(answer(&role_arn, &session, &issued))
}

fn oidc_refused(code: &'static str, message: &str) -> ApiError {
    ApiError::new(401, code, message)
}

fn assume_role_with_oidc(
    shared: &Shared,
    p: &[(String, String)],
) -> Result<Map<String, Value>, ApiError> {
    let role_arn = role(p)?;
    let provider = required(p, "OIDCProviderArn")?;
    if !valid_arn(provider, "oidc-provider") {
        return Err(invalid("OIDCProviderArn"));
    }
    let token = super::auth::param(p, "OIDCToken").unwrap_or("");
    if token.is_empty() {
        return Err(oidc_refused(
            "AuthenticationFail.OIDCToken.Invalid",
            "The OIDCToken can not empty.",
        ));
    }
    let session = session_name(p, false)?;
    let lifetime = duration(p)?;
    let accepted = shared.oidc_token.lock().expect("oidc lock").clone();
    match accepted {
        None => {
            return Err(oidc_refused(
                "AuthenticationFail.NoPermission",
                "No such OIDC Provider registered.",
            ))
        }
        Some(want) if !super::verify::constant_time_eq(want.as_bytes(), token.as_bytes()) => {
            return Err(oidc_refused(
                "AuthenticationFail.OIDCToken.Invalid",
                "The Jwt content is invalid that cannot be recognized.",
            ))
        }
        Some(_) => {}
    }
    let issued = shared.issue(&shared.default_account, lifetime, "AssumeRoleWithOIDC");
    let mut fields = answer(&role_arn, &session, &issued);
    fields.insert(
        "OIDCTokenInfo".into(),
        json!({
            "Subject": "system:serviceaccount:emulator:deregd",
            "Issuer": "https://oidc.emulator.invalid",
            "ClientIds": "sts.aliyuncs.com",
        }),
    );
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_durations_and_session_names_are_checked() {
        assert!(valid_arn("acs:ram::123456:role/deregd", "role"));
        assert!(valid_arn(
            "acs:ram::123456:oidc-provider/ack",
            "oidc-provider"
        ));
        assert!(!valid_arn("acs:ram::123456:role/", "role"));
        assert!(!valid_arn("acs:ram:::role/x", "role"));
        assert!(!valid_arn("arn:aws:iam::1:role/x", "role"));
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(duration(&[]).unwrap(), 3600);
        assert_eq!(duration(&p("DurationSeconds", "900")).unwrap(), 900);
        for bad in ["899", "43201", "x"] {
            assert_eq!(
                duration(&p("DurationSeconds", bad)).unwrap_err().code,
                "InvalidParameter.DurationSeconds"
            );
        }
        assert_eq!(
            session_name(&[], true).unwrap_err().code,
            "MissingRoleSessionName"
        );
        assert_eq!(session_name(&[], false).unwrap(), "emulator-session");
        assert_eq!(
            session_name(&p("RoleSessionName", "a b"), true)
                .unwrap_err()
                .code,
            "InvalidParameter.RoleSessionName"
        );
    }
}
