//! STS on the emulator's listener: AssumeRole (signed) and AssumeRoleWithOIDC (not), and the
//! OpenAPI's acceptance of the temporary credentials they issue, until they expire.

use std::time::{Duration, SystemTime};

use onsmqtt_emulator::{EmulatorSettings, StsCredentials};
use serde_json::Value;

use super::common::*;

const ROLE: &str = "acs:ram::1234567890:role/deregd";
const PROVIDER: &str = "acs:ram::1234567890:oidc-provider/ack";

fn assume_role(duration: &str) -> Call {
    Call::sts(
        "AssumeRole",
        &[
            ("RoleArn", ROLE),
            ("RoleSessionName", "deregd-test"),
            ("DurationSeconds", duration),
        ],
    )
}

/// The issued set of a successful STS answer, checked for shape.
fn credentials_of(a: &Answer) -> StsCredentials {
    assert_eq!(a.status, 200, "{}", a.body);
    let c = &a.json()["Credentials"];
    let field = |name: &str| {
        c[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {c}"))
            .to_string()
    };
    let expiration = field("Expiration");
    let at = chrono::NaiveDateTime::parse_from_str(&expiration, "%Y-%m-%dT%H:%M:%SZ")
        .expect("YYYY-MM-DDTHH:MM:SSZ")
        .and_utc();
    assert!(field("AccessKeyId").starts_with("STS."));
    StsCredentials {
        access_key_id: field("AccessKeyId"),
        access_key_secret: field("AccessKeySecret"),
        security_token: field("SecurityToken"),
        expiration,
        expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at.timestamp() as u64),
    }
}

fn unregister_with(c: &StsCredentials, client: &str) -> Call {
    Call::new(client)
        .key(&c.access_key_id, &c.access_key_secret)
        .token(&c.security_token)
}

fn seconds_left(c: &StsCredentials) -> i64 {
    let left = c
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    left.as_secs() as i64
}

#[tokio::test]
async fn assume_role_issues_credentials_the_openapi_accepts_with_their_token() {
    within(async {
        let settings = EmulatorSettings {
            sts_duration_secs: 20,
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let a = v3(&http, &emu, &assume_role("3600")).await;
        let creds = credentials_of(&a);
        assert!((18..=20).contains(&seconds_left(&creds)), "capped at 20 s");
        let user = &a.json()["AssumedRoleUser"];
        assert_eq!(user["Arn"], format!("{ROLE}/deregd-test"));
        assert!(user["AssumedRoleId"]
            .as_str()
            .unwrap()
            .ends_with(":deregd-test"));
        let b = credentials_of(&v2(&http, &emu, &assume_role("900"), false).await);
        assert_ne!(
            a.json()["Credentials"]["AccessKeyId"],
            b.access_key_id.as_str()
        );

        assert_eq!(
            v3(&http, &emu, &unregister_with(&creds, "GID_sts@@@v3"))
                .await
                .status,
            200
        );
        let by_v2 = v2(&http, &emu, &unregister_with(&creds, "GID_sts@@@v2"), false).await;
        assert_eq!(by_v2.status, 200, "{}", by_v2.body);
        let code = |c: Call| {
            let (http, emu) = (&http, &emu);
            async move { v3(http, emu, &c).await.code() }
        };
        let theirs = Call::new("GID_sts@@@x")
            .key(&creds.access_key_id, &creds.access_key_secret)
            .token(&b.security_token);
        assert_eq!(
            code(theirs).await,
            "InvalidSecurityToken.MismatchWithAccessKey"
        );
        let garbage = Call::new("GID_sts@@@x")
            .key(&creds.access_key_id, &creds.access_key_secret)
            .token("garbage");
        assert_eq!(code(garbage).await, "InvalidSecurityToken.Malformed");
        let none = Call::new("GID_sts@@@x").key(&creds.access_key_id, &creds.access_key_secret);
        assert_eq!(code(none).await, "InvalidSecurityToken.Missing");
        let wrong_secret = unregister_with(&creds, "GID_sts@@@x").secret("nope");
        assert_eq!(code(wrong_secret).await, "SignatureDoesNotMatch");

        let stats = emu.stats();
        assert_eq!((stats.sts.calls, stats.sts.issued), (2, 2));
        assert_eq!(stats.sts.issued_by_source["AssumeRole"], 2);
        assert_eq!(stats.sts.by_code["OK"], 2);
        assert_eq!(stats.successes, 2);
        assert_eq!(
            stats.max_accepted_per_sliding_second_by_account["testid"],
            2
        );
        assert!(
            stats.by_code.get("OK") == Some(&2),
            "STS answers are not onsmqtt answers"
        );
    })
    .await;
}

#[tokio::test]
async fn an_expired_set_is_refused_with_invalid_security_token_expired() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let creds = emu.issue_credentials(Duration::from_secs(1));
        assert!(seconds_left(&creds) <= 1);
        let first = v3(&http, &emu, &unregister_with(&creds, "GID_sts@@@early")).await;
        // Issued within its last second, the set may already be gone: both are fine here.
        assert!(first.status == 200 || first.code() == "InvalidSecurityToken.Expired");
        let wait = creds
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
        let late = v3(&http, &emu, &unregister_with(&creds, "GID_sts@@@late")).await;
        assert_eq!(
            (late.status, late.code().as_str()),
            (400, "InvalidSecurityToken.Expired")
        );
        assert!(emu.is_registered(INSTANCE, "GID_sts@@@late"));
        let stats = emu.stats();
        assert!(stats.sts.expired_rejected >= 1);
        assert_eq!(stats.sts.issued_by_source["Direct"], 1);
    })
    .await;
}

#[tokio::test]
async fn temporary_keys_share_the_budget_of_the_account_they_were_issued_to() {
    within(async {
        let settings = EmulatorSettings {
            rate_limit: 3,
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let old = credentials_of(&v3(&http, &emu, &assume_role("900")).await);
        let new = credentials_of(&v3(&http, &emu, &assume_role("900")).await);
        assert_eq!(v3(&http, &emu, &Call::new("GID_sts@@@a")).await.status, 200);
        assert_eq!(
            v3(&http, &emu, &unregister_with(&old, "GID_sts@@@b"))
                .await
                .status,
            200
        );
        assert_eq!(
            v3(&http, &emu, &unregister_with(&new, "GID_sts@@@c"))
                .await
                .status,
            200
        );
        let over = v3(&http, &emu, &unregister_with(&new, "GID_sts@@@d")).await;
        assert_eq!(
            over.code(),
            "Throttling.User",
            "a refreshed key gets no fresh budget"
        );
        let stats = emu.stats();
        assert_eq!(
            stats.max_accepted_per_sliding_second_by_account["testid"],
            3
        );
        assert_eq!(
            stats.max_accepted_per_sliding_second_by_key[&new.access_key_id],
            1
        );
    })
    .await;
}

#[tokio::test]
async fn assume_role_checks_its_signature_and_parameters() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let code = |c: Call| {
            let (http, emu) = (&http, &emu);
            async move {
                let a = v3(http, emu, &c).await;
                (a.status, a.code())
            }
        };
        let s = |v: &str| v.to_string();
        assert_eq!(
            code(assume_role("3600").secret("nope")).await,
            (400, s("SignatureDoesNotMatch"))
        );
        assert_eq!(
            code(assume_role("100")).await,
            (400, s("InvalidParameter.DurationSeconds"))
        );
        assert_eq!(
            code(assume_role("43201")).await,
            (400, s("InvalidParameter.DurationSeconds"))
        );
        let no_role = Call::sts("AssumeRole", &[("RoleSessionName", "x1")]);
        assert_eq!(code(no_role).await, (400, s("MissingRoleArn")));
        let bad_role = Call::sts(
            "AssumeRole",
            &[("RoleArn", "role/x"), ("RoleSessionName", "x1")],
        );
        assert_eq!(code(bad_role).await, (400, s("InvalidParameter.RoleArn")));
        let bad_policy = Call::sts(
            "AssumeRole",
            &[
                ("RoleArn", ROLE),
                ("RoleSessionName", "x1"),
                ("Policy", "{not json"),
            ],
        );
        assert_eq!(
            code(bad_policy).await,
            (400, s("InvalidParameter.PolicyGrammar"))
        );
        let unknown = Call::sts("GetCallerIdentity", &[]);
        assert_eq!(code(unknown).await, (404, s("InvalidAction.NotFound")));
        let mut reused = assume_role("900");
        reused.nonce = "same".into();
        assert_eq!(v3(&http, &emu, &reused).await.status, 200);
        let mut again = assume_role("900");
        again.nonce = "same".into();
        assert_eq!(code(again).await, (400, s("SignatureNonceUsed")));
        let stats = emu.stats();
        assert_eq!(stats.sts.issued, 1);
        assert_eq!(stats.sts.by_code["InvalidParameter.DurationSeconds"], 2);
        assert!(stats.by_action.is_empty(), "no onsmqtt call was made");
    })
    .await;
}

/// An unsigned `AssumeRoleWithOIDC`, parameters in a form body as the vendor's libraries send.
async fn oidc(http: &reqwest::Client, endpoint: &str, token: &str) -> Answer {
    let query = "Action=AssumeRoleWithOIDC&Format=JSON&Version=2015-04-01&Timestamp=2024-01-01T00%3A00%3A00Z";
    let form = [
        ("RoleArn", ROLE),
        ("OIDCProviderArn", PROVIDER),
        ("OIDCToken", token),
        ("RoleSessionName", "ci-run"),
        ("DurationSeconds", "3600"),
    ];
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", pe(v)))
        .collect::<Vec<_>>()
        .join("&");
    read(
        http.post(format!("{endpoint}/?{query}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn assume_role_with_oidc_needs_no_signature_but_the_current_token() {
    within(async {
        let settings = EmulatorSettings {
            oidc_token: Some("eyJ.first.token".into()),
            sts_duration_secs: 60,
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let ep = emu.endpoint();
        let ok = oidc(&http, &ep, "eyJ.first.token").await;
        let creds = credentials_of(&ok);
        assert!((58..=60).contains(&seconds_left(&creds)));
        assert!(ok.json()["OIDCTokenInfo"]["Subject"].is_string());
        assert_eq!(
            v3(&http, &emu, &unregister_with(&creds, "GID_oidc@@@a"))
                .await
                .status,
            200
        );
        let wrong = oidc(&http, &ep, "eyJ.other.token").await;
        assert_eq!(
            (wrong.status, wrong.code().as_str()),
            (401, "AuthenticationFail.OIDCToken.Invalid")
        );
        let empty = oidc(&http, &ep, "").await;
        assert_eq!(empty.code(), "AuthenticationFail.OIDCToken.Invalid");
        // The platform rotates the token: the old one stops working, the new one works.
        emu.set_oidc_token(Some("eyJ.second.token".into()));
        assert_eq!(oidc(&http, &ep, "eyJ.first.token").await.status, 401);
        credentials_of(&oidc(&http, &ep, "eyJ.second.token").await);
        emu.set_oidc_token(None);
        assert_eq!(
            oidc(&http, &ep, "eyJ.second.token").await.code(),
            "AuthenticationFail.NoPermission"
        );
        let stats = emu.stats();
        assert_eq!(stats.sts.issued_by_source["AssumeRoleWithOIDC"], 2);
        assert_eq!(stats.sts.by_code["AuthenticationFail.OIDCToken.Invalid"], 3);
        let body: Value = ok.json();
        assert!(body["RequestId"].is_string());
    })
    .await;
}
