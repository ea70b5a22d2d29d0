//! Credentials the way the vendor's tools get them: every source of the chain against the
//! emulator's STS and metadata service, `check` naming the source and expiry, and no secret,
//! security token or OIDC token in any log, the database or `check --json`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use deregd::api::{Action, ApiClient, StampedEmpty};
use deregd::config::{CredentialSource, Settings};
use deregd::credentials::Provider;
use onsmqtt_emulator::{EmulatorSettings, MetadataServer, MetadataSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::*;

pub(crate) const ROLE: &str = "acs:ram::1234567890:role/deregd";
pub(crate) const PROVIDER: &str = "acs:ram::1234567890:oidc-provider/ack";
pub(crate) const OIDC_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.oidc-token-under-test.c2lnbmF0dXJl";

pub(crate) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The app's settings with STS and the metadata service on the emulator's side.
pub(crate) fn with_endpoints(app: &App, metadata: Option<&MetadataServer>) -> Settings {
    let mut s = app.settings.clone();
    s.credentials.sts_endpoint = app.emulator.endpoint();
    if let Some(m) = metadata {
        s.credentials.metadata_endpoint = m.endpoint();
    }
    s
}

/// Serves `body` as a 200 JSON answer to every request, until dropped.
pub(crate) async fn serve_json(body: String) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// One call with `provider`'s current set: success or `DeviceCredentialNotFound` proves it was
/// accepted.
async fn accepted(settings: &Settings, provider: Provider) -> bool {
    let client = ApiClient::new(settings, provider).unwrap();
    let params = [("ClientId", "GID_probe@@@nobody"), ("InstanceId", INSTANCE)];
    let answer = client
        .call(Action::UnRegister, 0, &params, StampedEmpty::unpaced())
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(
        answer.status == 200 || body.contains("DeviceCredentialNotFound"),
        "{body}"
    );
    true
}

#[tokio::test]
async fn every_source_of_the_chain_obtains_credentials_the_api_accepts() {
    let _cpu = cpu_shared().await;
    within(60, async {
        let app = spawn_app(EmulatorSettings {
            oidc_token: Some(OIDC_TOKEN.into()),
            ..EmulatorSettings::default()
        })
        .await;
        let metadata = MetadataServer::start(
            &app.emulator,
            MetadataSettings {
                role: "DeregdRole".into(),
                imdsv1_disabled: true,
                ..MetadataSettings::default()
            },
        )
        .await
        .unwrap();
        let settings = with_endpoints(&app, Some(&metadata));
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, OIDC_TOKEN).unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("access_key_id"), "testid").unwrap();
        std::fs::write(creds.join("access_key_secret"), "testsecret").unwrap();
        std::fs::write(creds.join("role_arn"), ROLE).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".aliyun")).unwrap();
        std::fs::write(
            home.join(".aliyun/config.json"),
            format!(
                r#"{{"current":"ops","profiles":[{{"name":"ops","mode":"RamRoleArn",
                "access_key_id":"testid","access_key_secret":"testsecret",
                "ram_role_arn":"{ROLE}","ram_session_name":"ops-session"}}]}}"#
            ),
        )
        .unwrap();
        let uri = format!("{}/credentials", metadata.endpoint());
        let cases: Vec<(&str, BTreeMap<String, String>)> = vec![
            (
                "env",
                env(&[
                    ("ALIBABA_CLOUD_ACCESS_KEY_ID", "testid"),
                    ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "testsecret"),
                ]),
            ),
            (
                "files",
                env(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]),
            ),
            (
                "oidc",
                env(&[
                    ("ALIBABA_CLOUD_ROLE_ARN", ROLE),
                    ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", PROVIDER),
                    ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.to_str().unwrap()),
                ]),
            ),
            ("profile", env(&[("HOME", home.to_str().unwrap())])),
            ("ecs", env(&[("ALIBABA_CLOUD_ECS_METADATA", "DeregdRole")])),
            ("uri", env(&[("ALIBABA_CLOUD_CREDENTIALS_URI", &uri)])),
            // Nothing configured: the role the metadata service names.
            ("ecs", env(&[])),
        ];
        let before = app.emulator.stats().sts.issued_by_source;
        for (name, env) in cases {
            let provider = Provider::start(&settings, &env)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(provider.source(), name, "{}", provider.describe());
            assert_eq!(provider.renewable(), name != "env", "{name}");
            assert!(accepted(&settings, provider).await);
        }
        let issued = app.emulator.stats().sts.issued_by_source;
        let more =
            |k: &str| issued.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        assert_eq!(more("AssumeRole"), 2, "files and profile: {issued:?}");
        assert_eq!(more("AssumeRoleWithOIDC"), 1, "{issued:?}");
        assert_eq!(more("EcsMetadata"), 3, "ecs twice, and the URI: {issued:?}");
        // A wrong OIDC token is refused by STS, and said so.
        std::fs::write(&token, "not-the-token").unwrap();
        let mut s = settings.clone();
        s.credentials.source = CredentialSource::Oidc;
        let err = Provider::start(
            &s,
            &env(&[
                ("ALIBABA_CLOUD_ROLE_ARN", ROLE),
                ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", PROVIDER),
                ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.to_str().unwrap()),
            ]),
        )
        .await
        .err()
        .expect("refused");
        let err = format!("{err:#}");
        assert!(
            err.contains("AuthenticationFail.OIDCToken.Invalid"),
            "{err}"
        );
        assert!(!err.contains("not-the-token"), "{err}");
        metadata.shutdown().await;
    })
    .await;
}

/// `deregd` for `app` with no credentials in its environment.
fn bare_deregd(app: &App) -> tokio::process::Command {
    let mut cmd = deregd(app);
    cmd.env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        .env("DEREGD_CREDENTIALS__STS_ENDPOINT", app.emulator.endpoint());
    cmd
}

#[tokio::test]
async fn a_partial_oidc_set_exits_2_naming_the_missing_variable() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    for command in ["check", "run"] {
        let mut cmd = bare_deregd(&app);
        cmd.arg(command)
            .env("ALIBABA_CLOUD_ROLE_ARN", ROLE)
            .env("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/nonexistent/token");
        if command == "run" {
            cmd.arg("--until-empty");
        }
        let out = within(30, cmd.output()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("ALIBABA_CLOUD_OIDC_PROVIDER_ARN"),
            "{command}: {stderr}"
        );
    }
}

#[tokio::test]
async fn no_secret_token_or_oidc_token_reaches_a_log_the_database_or_check() {
    let _cpu = cpu_shared().await;
    within(120, async {
        let app = spawn_app(EmulatorSettings {
            oidc_token: Some(OIDC_TOKEN.into()),
            ..EmulatorSettings::default()
        })
        .await;
        // A set whose secret and token this test knows, handed out by a credentials URI.
        let issued = app.emulator.issue_credentials(Duration::from_secs(3600));
        let json = serde_json::json!({
            "AccessKeyId": issued.access_key_id,
            "AccessKeySecret": issued.access_key_secret,
            "SecurityToken": issued.security_token,
            "Expiration": issued.expiration,
            "Code": "Success",
        });
        let (addr, _server) = serve_json(json.to_string()).await;
        let uri = format!("http://{addr}/creds");
        let clients = devices("secret", 30);
        for c in &clients {
            app.emulator.register(INSTANCE, c);
        }
        app.insert(INSTANCE, &clients).await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, OIDC_TOKEN).unwrap();
        let mut outputs = String::new();
        for (source, vars) in [
            ("uri", vec![("ALIBABA_CLOUD_CREDENTIALS_URI", uri.clone())]),
            (
                "oidc",
                vec![
                    ("ALIBABA_CLOUD_ROLE_ARN", ROLE.to_string()),
                    ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", PROVIDER.to_string()),
                    (
                        "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
                        token.to_str().unwrap().to_string(),
                    ),
                ],
            ),
        ] {
            for args in [
                &["check", "--json"][..],
                &["check"],
                &["run", "--until-empty"],
            ] {
                let mut cmd = bare_deregd(&app);
                cmd.args(args).env("RUST_LOG", "trace");
                for (k, v) in &vars {
                    cmd.env(k, v);
                }
                let out = within(60, cmd.output()).await.unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                assert_eq!(out.status.code(), Some(0), "{source} {args:?}: {stderr}");
                if args == ["check", "--json"] {
                    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                    assert_eq!(v["credentials"]["source"], source, "{stdout}");
                    if source == "uri" {
                        assert_eq!(v["credentials"]["expires"], issued.expiration.as_str());
                    }
                    assert!(v["credentials"]["expires"].as_str().unwrap().ends_with('Z'));
                } else if args == ["check"] {
                    assert!(stdout.contains(&format!("source {source}")), "{stdout}");
                }
                outputs.push_str(&stdout);
                outputs.push_str(&stderr);
            }
        }
        assert_eq!(app.count("succeeded").await, 30);
        let database = std::fs::read(app.db_path()).unwrap();
        let wal = std::fs::read(app.db_path().with_extension("db-wal")).unwrap_or_default();
        for secret in [
            issued.access_key_secret.as_str(),
            issued.security_token.as_str(),
            OIDC_TOKEN,
            "CAIS",
        ] {
            assert!(!outputs.contains(secret), "{secret} in the output");
            for bytes in [&database, &wal] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} in the database"
                );
            }
        }
        assert!(outputs.contains("TRACE"), "trace logs were on");
    })
    .await;
}
