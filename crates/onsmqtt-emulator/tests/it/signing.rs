//! Authentication end to end: both signature schemes, headers, bodies, keys, STS tokens
//! configured on a key, timestamps and nonces.

use onsmqtt_emulator::{AccessKey, EmulatorSettings};

use super::common::*;

#[tokio::test]
async fn valid_v3_call_deregisters_and_a_repeat_finds_nothing() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let a = v3(&http, &emu, &Call::new("GID_test@@@dev1")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let id = a.json()["RequestId"].as_str().unwrap().to_string();
        assert_request_id(&id);
        assert_eq!(a.headers["x-acs-request-id"], id.as_str());
        assert!(!emu.is_registered(INSTANCE, "GID_test@@@dev1"));

        let again = v3(&http, &emu, &Call::new("GID_test@@@dev1")).await;
        assert_eq!(again.status, 400);
        let j = again.json();
        assert_eq!(j["Code"], "DeviceCredentialNotFound");
        for field in ["RequestId", "Message", "HostId", "Code", "Recommend"] {
            assert!(j[field].is_string(), "missing {field}: {j}");
        }
        assert_eq!(
            again.headers["x-acs-request-id"],
            j["RequestId"].as_str().unwrap()
        );

        let stats = emu.shutdown().await;
        assert_eq!(stats.successes, 1);
        assert_eq!(stats.by_code["OK"], 1);
        assert_eq!(stats.by_code["DeviceCredentialNotFound"], 1);
        assert_eq!(stats.successes_by_instance[INSTANCE], 1);
    })
    .await;
}

#[tokio::test]
async fn valid_v2_calls_succeed_by_query_by_form_body_and_by_get() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let a = v2(&http, &emu, &Call::new("GID_test@@@q"), false).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_request_id(a.json()["RequestId"].as_str().unwrap());
        let b = v2(&http, &emu, &Call::new("GID_test@@@form"), true).await;
        assert_eq!(b.status, 200, "{}", b.body);
        let mut get = Call::new("GID_test@@@get");
        get.method = reqwest::Method::GET;
        let c = v2(&http, &emu, &get, false).await;
        assert_eq!(c.status, 200, "{}", c.body);
        let again = v2(&http, &emu, &Call::new("GID_test@@@form"), false).await;
        assert_eq!(again.code(), "DeviceCredentialNotFound");
        assert_eq!(emu.stats().successes, 3);
    })
    .await;
}

#[tokio::test]
async fn wrong_secret_gets_signature_mismatch_with_the_server_string_to_sign() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let a = v3(&http, &emu, &Call::new("GID_test@@@x").secret("nope")).await;
        assert_eq!((a.status, a.code().as_str()), (400, "SignatureDoesNotMatch"));
        let msg = a.json()["Message"].as_str().unwrap().to_string();
        assert!(
            msg.starts_with("Specified signature is not matched with our calculation. server string to sign is:ACS3-HMAC-SHA256\n"),
            "{msg}"
        );
        let b = v2(&http, &emu, &Call::new("GID_test@@@x").secret("nope"), false).await;
        assert_eq!(b.code(), "SignatureDoesNotMatch");
        let msg = b.json()["Message"].as_str().unwrap().to_string();
        assert!(msg.contains(" server string to sign is:POST&%2F&AccessKeyId%3Dtestid%26Action%3DUnRegisterDeviceCredential%26ClientId%3DGID_test%2540%2540%2540x%26"), "{msg}");
        let stats = emu.stats();
        assert_eq!(stats.signature_failures, 2);
        assert_eq!(stats.accepted, 0);
        assert!(emu.is_registered(INSTANCE, "GID_test@@@x"));
    })
    .await;
}

#[tokio::test]
async fn the_verifier_follows_the_headers_the_client_chose_to_sign() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("GID_test@@@hdr");
        c.extra_signed = vec![
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("user-agent".into(), "  AlibabaCloud (test) padded  ".into()),
        ];
        // Unsigned ordinary headers are fine; they are simply not covered.
        c.extra_unsigned = vec![("x-extra".into(), "whatever".into())];
        let a = v3(&http, &emu, &c).await;
        assert_eq!(a.status, 200, "{}", a.body);
    })
    .await;
}

#[tokio::test]
async fn an_unsigned_acs_header_is_an_incomplete_signature() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("GID_test@@@unsigned");
        c.extra_unsigned = vec![("x-acs-security-token".into(), "sneaky".into())];
        let a = v3(&http, &emu, &c).await;
        assert_eq!((a.status, a.code().as_str()), (400, "IncompleteSignature"));
    })
    .await;
}

#[tokio::test]
async fn a_body_that_differs_from_its_declared_hash_is_refused() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("GID_test@@@body");
        c.tampered_body = Some("ClientId=GID_test%40%40%40other".into());
        let a = v3(&http, &emu, &c).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "SignatureDoesNotMatch")
        );
        assert!(emu.is_registered(INSTANCE, "GID_test@@@body"));
    })
    .await;
}

#[tokio::test]
async fn unknown_access_key_is_not_found() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let a = v3(&http, &emu, &Call::new("GID_test@@@x").key("ghost", "s")).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (404, "InvalidAccessKeyId.NotFound")
        );
        let b = v2(
            &http,
            &emu,
            &Call::new("GID_test@@@x").key("ghost", "s"),
            false,
        )
        .await;
        assert_eq!(
            (b.status, b.code().as_str()),
            (404, "InvalidAccessKeyId.NotFound")
        );
    })
    .await;
}

#[tokio::test]
async fn missing_or_garbled_authentication_is_an_incomplete_signature() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let bare = read(
            http.post(format!(
                "{}/?ClientId=GID_test%40%40%40x&InstanceId=i",
                emu.endpoint()
            ))
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(
            (bare.status, bare.code().as_str()),
            (400, "IncompleteSignature")
        );
        let garbled = read(
            http.post(format!("{}/", emu.endpoint()))
                .header("authorization", "ACS3-HMAC-SHA256 Credential=testid")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(garbled.code(), "IncompleteSignature");
        let other = read(
            http.post(format!("{}/", emu.endpoint()))
                .header("authorization", "Bearer abc")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(other.code(), "IncompleteSignature");
    })
    .await;
}

#[tokio::test]
async fn a_key_with_an_sts_token_requires_that_exact_token() {
    within(async {
        let settings = EmulatorSettings {
            keys: vec![AccessKey {
                id: "STS.tmp".into(),
                secret: "tmpsecret".into(),
                security_token: Some("tok-123".into()),
            }],
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let base = || Call::new("GID_test@@@sts").key("STS.tmp", "tmpsecret");
        let none = v3(&http, &emu, &base()).await;
        assert!(
            none.code().starts_with("InvalidSecurityToken."),
            "{}",
            none.body
        );
        let wrong = v3(&http, &emu, &base().token("tok-999")).await;
        assert_eq!(
            (wrong.status, wrong.code().as_str()),
            (400, "InvalidSecurityToken.Expired")
        );
        let wrong2 = v2(&http, &emu, &base().token("tok-999"), false).await;
        assert_eq!(wrong2.code(), "InvalidSecurityToken.Expired");
        let ok = v3(&http, &emu, &base().token("tok-123")).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let ok2 = v2(
            &http,
            &emu,
            &Call::new("GID_test@@@sts2")
                .key("STS.tmp", "tmpsecret")
                .token("tok-123"),
            false,
        )
        .await;
        assert_eq!(ok2.status, 200, "{}", ok2.body);
    })
    .await;
}

#[tokio::test]
async fn stale_and_malformed_timestamps_are_refused() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let stale = (chrono::Utc::now() - chrono::TimeDelta::minutes(16))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut c = Call::new("GID_test@@@t");
        c.timestamp = stale.clone();
        assert_eq!(v3(&http, &emu, &c).await.code(), "InvalidTimeStamp.Expired");
        assert_eq!(
            v2(&http, &emu, &c, false).await.code(),
            "InvalidTimeStamp.Expired"
        );
        c.timestamp = "01/01/2024 00:00".into();
        assert_eq!(v3(&http, &emu, &c).await.code(), "InvalidTimeStamp.Format");
        assert_eq!(
            v2(&http, &emu, &c, true).await.code(),
            "InvalidTimeStamp.Format"
        );
        c.timestamp = (chrono::Utc::now() - chrono::TimeDelta::minutes(14))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        assert_eq!(v3(&http, &emu, &c).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_reused_nonce_is_refused_per_key() {
    within(async {
        let settings = EmulatorSettings {
            keys: vec![
                AccessKey::new("testid", "testsecret"),
                AccessKey::new("k2", "s2"),
            ],
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let mut c = Call::new("GID_test@@@n1");
        c.nonce = "fixed-nonce".into();
        assert_eq!(v3(&http, &emu, &c).await.status, 200);
        c.params[0].1 = "GID_test@@@n2".into();
        let again = v3(&http, &emu, &c).await;
        assert_eq!(
            (again.status, again.code().as_str()),
            (400, "SignatureNonceUsed")
        );
        assert_eq!(
            v2(&http, &emu, &c, false).await.code(),
            "SignatureNonceUsed"
        );
        let other_key = c.clone().key("k2", "s2");
        assert_eq!(v3(&http, &emu, &other_key).await.status, 200);
    })
    .await;
}
