//! GetDeviceCredential and RegisterDeviceCredential end to end, failing groups, and billing.

use onsmqtt_emulator::{EmulatorSettings, GroupFault, Registry};

use super::common::*;

fn two_groups() -> Registry {
    Registry::groups(INSTANCE, [("GID_meter", 3), ("GID_bad", 3)])
}

fn register(client: &str) -> Call {
    Call::action(
        "RegisterDeviceCredential",
        &[("ClientId", client), ("InstanceId", INSTANCE)],
    )
}

#[tokio::test]
async fn get_answers_the_credential_with_its_secret_and_leaves_it_registered() {
    within(async {
        let settings = EmulatorSettings {
            registry: two_groups(),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let a = v3(&http, &emu, &Call::get("GID_meter@@@dev-1")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let c = a.json()["DeviceCredential"].clone();
        assert_eq!(c["ClientId"], "GID_meter@@@dev-1");
        assert_eq!(c["InstanceId"], INSTANCE);
        let secret = emu.device_secret(INSTANCE, "GID_meter@@@dev-1").unwrap();
        assert_eq!(c["DeviceAccessKeySecret"], secret.as_str());
        assert!(secret.len() >= 20);
        assert!(c["DeviceAccessKeyId"]
            .as_str()
            .is_some_and(|k| !k.is_empty() && k != secret));
        let now_ms = chrono::Utc::now().timestamp_millis();
        let created = c["CreateTime"].as_i64().expect("milliseconds, as a number");
        assert!((now_ms - 60_000..=now_ms).contains(&created), "{created}");
        assert!(c["UpdateTime"].as_i64().is_some());
        let other = emu.device_secret(INSTANCE, "GID_meter@@@dev-2").unwrap();
        assert_ne!(secret, other, "one secret per credential");
        // By V2 too, and the credential is still there afterwards.
        let again = v2(&http, &emu, &Call::get("GID_meter@@@dev-1"), false).await;
        assert_eq!(
            again.json()["DeviceCredential"]["DeviceAccessKeySecret"],
            secret.as_str()
        );
        assert!(emu.is_registered(INSTANCE, "GID_meter@@@dev-1"));
        let missing = v3(&http, &emu, &Call::get("GID_meter@@@dev-9")).await;
        assert_eq!(
            (missing.status, missing.code().as_str()),
            (400, "DeviceCredentialNotFound")
        );
        let malformed = v3(&http, &emu, &Call::get("nope")).await;
        assert_eq!(malformed.code(), "InvalidParameter.ClientId");
        let stats = emu.stats();
        let get = &stats.by_action["GetDeviceCredential"];
        assert_eq!((get.calls, get.successes), (4, 2));
        assert_eq!(get.by_code["DeviceCredentialNotFound"], 1);
        assert_eq!(stats.billed_by_instance[INSTANCE], 2);
        assert!(!serde_json::to_string(&stats).unwrap().contains(&secret));
    })
    .await;
}

#[tokio::test]
async fn register_creates_a_new_listable_credential_once() {
    within(async {
        let settings = EmulatorSettings {
            registry: two_groups(),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let a = v3(&http, &emu, &register("GID_meter@@@new-1")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let secret = a.json()["DeviceCredential"]["DeviceAccessKeySecret"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            emu.device_secret(INSTANCE, "GID_meter@@@new-1"),
            Some(secret.clone())
        );
        assert_eq!(emu.group_len(INSTANCE, "GID_meter"), 4);
        let twice = v3(&http, &emu, &register("GID_meter@@@new-1")).await;
        assert_eq!(
            (twice.status, twice.code().as_str()),
            (400, "DeviceCredentialExsit")
        );
        let got = v3(&http, &emu, &Call::get("GID_meter@@@new-1")).await;
        assert_eq!(
            got.json()["DeviceCredential"]["DeviceAccessKeySecret"],
            secret.as_str()
        );
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_meter@@@new-1"))
                .await
                .status,
            200
        );
        let gone = v3(&http, &emu, &Call::get("GID_meter@@@new-1")).await;
        assert_eq!(gone.code(), "DeviceCredentialNotFound");
        let back = v3(&http, &emu, &register("GID_meter@@@new-1")).await;
        let new_secret = back.json()["DeviceCredential"]["DeviceAccessKeySecret"].clone();
        assert_ne!(
            new_secret,
            secret.as_str(),
            "registered again: a new secret"
        );
        let stats = emu.stats();
        assert_eq!(stats.by_action["RegisterDeviceCredential"].successes, 2);
        assert_eq!(stats.billed_by_instance[INSTANCE], 4);
        assert_eq!(stats.successes, 1);
    })
    .await;
}

#[tokio::test]
async fn get_has_its_own_per_account_rate_limit() {
    within(async {
        let settings = EmulatorSettings {
            get_rate_limit: 2,
            rate_limit: 2,
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let mut statuses = Vec::new();
        for i in 0..3 {
            statuses.push(
                v3(&http, &emu, &Call::get(&format!("GID_meter@@@g{i}")))
                    .await
                    .code(),
            );
        }
        assert_eq!(statuses, ["", "", "Throttling.User"]);
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_meter@@@u0")).await.status,
            200
        );
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_meter@@@u1")).await.status,
            200
        );
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_meter@@@u2")).await.code(),
            "Throttling.User"
        );
    })
    .await;
}

#[tokio::test]
async fn a_failing_group_answers_its_error_after_authentication_and_throttling() {
    within(async {
        let settings = EmulatorSettings {
            registry: two_groups(),
            rate_limit: 2,
            group_faults: vec![
                "GID_bad:PermissionCheckFailed"
                    .parse::<GroupFault>()
                    .unwrap(),
                "GID_meter:InternalError".parse().unwrap(),
            ],
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let un = v3(&http, &emu, &Call::new("GID_bad@@@dev-0")).await;
        assert_eq!(
            (un.status, un.code().as_str()),
            (400, "PermissionCheckFailed")
        );
        let get = v3(&http, &emu, &Call::get("GID_bad@@@dev-1")).await;
        assert_eq!(
            (get.status, get.code().as_str()),
            (400, "PermissionCheckFailed")
        );
        let transient = v3(&http, &emu, &Call::new("GID_meter@@@dev-0")).await;
        assert_eq!(
            (transient.status, transient.code().as_str()),
            (500, "InternalError")
        );
        let unsigned = v3(&http, &emu, &Call::new("GID_bad@@@dev-0").secret("x")).await;
        assert_eq!(unsigned.code(), "SignatureDoesNotMatch");
        let throttled = v3(&http, &emu, &Call::new("GID_bad@@@dev-2")).await;
        assert_eq!(throttled.code(), "Throttling.User");
        assert!(emu.is_registered(INSTANCE, "GID_bad@@@dev-0"));
        assert!(emu.is_registered(INSTANCE, "GID_meter@@@dev-0"));
        // Listing a failing group still works.
        assert_eq!(
            v3(&http, &emu, &Call::list("GID_bad", 1, 10, None))
                .await
                .status,
            200
        );
        let stats = emu.stats();
        assert_eq!(stats.faults_injected.group, 3);
        assert_eq!(stats.successes, 0);
    })
    .await;
}
