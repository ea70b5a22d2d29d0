//! The ECS metadata service: IMDSv2 tokens, the role, its credentials (accepted by the
//! OpenAPI), the credentials URI, and dying and coming back on the same port.

use std::time::Duration;

use onsmqtt_emulator::{EmulatorSettings, MetadataServer, MetadataSettings};
use serde_json::Value;

use super::common::*;

const ROLES: &str = "/latest/meta-data/ram/security-credentials/";

async fn token(http: &reqwest::Client, md: &MetadataServer, ttl: Option<&str>) -> (u16, String) {
    let mut req = http.put(format!("{}/latest/api/token", md.endpoint()));
    if let Some(ttl) = ttl {
        req = req.header("X-aliyun-ecs-metadata-token-ttl-seconds", ttl);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn get(http: &reqwest::Client, url: String, token: Option<&str>) -> (u16, String) {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.header("X-aliyun-ecs-metadata-token", t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn settings(imdsv1_disabled: bool) -> MetadataSettings {
    MetadataSettings {
        role: "DeregdRole".into(),
        imdsv1_disabled,
        ..MetadataSettings::default()
    }
}

#[tokio::test]
async fn imdsv2_hands_out_role_credentials_the_openapi_accepts() {
    within(async {
        let (emu, http) = start(EmulatorSettings {
            sts_duration_secs: 20,
            ..EmulatorSettings::default()
        })
        .await;
        let md = MetadataServer::start(&emu, settings(true)).await.unwrap();
        let (status, session) = token(&http, &md, Some("21600")).await;
        assert_eq!(status, 200);
        assert!(session.len() >= 32);
        let (status, role) = get(&http, format!("{}{ROLES}", md.endpoint()), Some(&session)).await;
        assert_eq!((status, role.as_str()), (200, "DeregdRole"));
        let url = format!("{}{ROLES}DeregdRole", md.endpoint());
        let (status, body) = get(&http, url.clone(), Some(&session)).await;
        assert_eq!(status, 200, "{body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["Code"], "Success");
        for field in [
            "AccessKeyId",
            "AccessKeySecret",
            "SecurityToken",
            "Expiration",
            "LastUpdated",
        ] {
            assert!(doc[field].is_string(), "{field}: {doc}");
        }
        let expires = chrono::NaiveDateTime::parse_from_str(
            doc["Expiration"].as_str().unwrap(),
            "%Y-%m-%dT%H:%M:%SZ",
        )
        .unwrap()
        .and_utc();
        let left = (expires - chrono::Utc::now()).num_seconds();
        assert!((18..=20).contains(&left), "{left}");
        let call = Call::new("GID_ecs@@@a")
            .key(
                doc["AccessKeyId"].as_str().unwrap(),
                doc["AccessKeySecret"].as_str().unwrap(),
            )
            .token(doc["SecurityToken"].as_str().unwrap());
        assert_eq!(v3(&http, &emu, &call).await.status, 200);

        // IMDSv1 disabled: no token, a wrong token, a token request without its ttl.
        assert_eq!(get(&http, url.clone(), None).await.0, 403);
        assert_eq!(get(&http, url.clone(), Some("forged")).await.0, 401);
        assert_eq!(token(&http, &md, None).await.0, 400);
        assert_eq!(token(&http, &md, Some("21601")).await.0, 400);
        assert_eq!(
            get(
                &http,
                format!("{}{ROLES}OtherRole", md.endpoint()),
                Some(&session)
            )
            .await
            .0,
            404
        );
        let stats = emu.stats();
        assert_eq!(stats.metadata.tokens_issued, 1);
        assert_eq!(stats.metadata.credentials_served, 1);
        assert_eq!(stats.metadata.refused, 2);
        assert_eq!(stats.sts.issued_by_source["EcsMetadata"], 1);
        md.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn imdsv1_and_the_credentials_uri_work_without_a_session_token() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let md = MetadataServer::start(&emu, settings(false)).await.unwrap();
        let (status, body) = get(&http, format!("{}{ROLES}DeregdRole", md.endpoint()), None).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = get(&http, format!("{}/credentials", md.endpoint()), None).await;
        assert_eq!(status, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["Code"], "Success");
        assert!(doc["AccessKeyId"].as_str().unwrap().starts_with("STS."));
        assert_eq!(emu.stats().metadata.credentials_served, 2);
    })
    .await;
}

#[tokio::test]
async fn the_service_can_die_and_come_back_on_its_port_while_the_openapi_goes_on() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let md = MetadataServer::start(&emu, settings(true)).await.unwrap();
        let addr = md.addr();
        let (_, session) = token(&http, &md, Some("600")).await;
        let url = format!("http://{addr}{ROLES}DeregdRole");
        let (_, body) = get(&http, url.clone(), Some(&session)).await;
        let doc: Value = serde_json::from_str(&body).unwrap();
        md.shutdown().await;

        let fresh = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        assert!(
            fresh.get(url.clone()).send().await.is_err(),
            "dead: connection refused"
        );
        let call = Call::new("GID_ecs@@@while-down")
            .key(
                doc["AccessKeyId"].as_str().unwrap(),
                doc["AccessKeySecret"].as_str().unwrap(),
            )
            .token(doc["SecurityToken"].as_str().unwrap());
        assert_eq!(
            v3(&http, &emu, &call).await.status,
            200,
            "the OpenAPI is unaffected"
        );

        let back = MetadataServer::start(
            &emu,
            MetadataSettings {
                listen: addr,
                ..settings(true)
            },
        )
        .await
        .expect("restarts on the same port");
        assert_eq!(back.addr(), addr);
        let (status, _) = get(&fresh, url, Some(&session)).await;
        assert_eq!(status, 200, "session tokens survive the restart");
        back.shutdown().await;
    })
    .await;
}
