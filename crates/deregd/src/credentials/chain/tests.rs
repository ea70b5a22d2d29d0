//! The chain's order and its refusals.

use super::*;

use crate::test_env as env;

fn settings() -> Settings {
    Settings::load_from(None, &BTreeMap::new()).unwrap()
}

const ROLE: &str = "acs:ram::1234567890:role/deregd";
const PROVIDER: &str = "acs:ram::1234567890:oidc-provider/ack";

/// Every source configured at once, in a home and credentials directory of their own.
struct Everything {
    _dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

fn everything() -> Everything {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("access_key_id"), "file-id\n").unwrap();
    std::fs::write(creds.join("access_key_secret"), "file-secret\n").unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".aliyun")).unwrap();
    std::fs::write(
        home.join(".aliyun/config.json"),
        r#"{"current":"main","profiles":[{"name":"main","mode":"AK","access_key_id":"p-id","access_key_secret":"p-secret"},
            {"name":"role","mode":"RamRoleArn","access_key_id":"p-id","access_key_secret":"p-secret","ram_role_arn":"acs:ram::1:role/r","ram_session_name":"s1","expired_seconds":900},
            {"name":"ecs","mode":"EcsRamRole","ram_role_name":"Worker"},
            {"name":"bad","mode":"ChainableRamRoleArn"}]}"#,
    )
    .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "jwt").unwrap();
    let env = env(&[
        (crate::credentials::ENV_KEY_ID, "env-id"),
        (crate::credentials::ENV_KEY_SECRET, "env-secret"),
        ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
        (oidc::ENV_ROLE_ARN, ROLE),
        (oidc::ENV_PROVIDER_ARN, PROVIDER),
        (oidc::ENV_TOKEN_FILE, token.to_str().unwrap()),
        ("HOME", home.to_str().unwrap()),
        (ecs::ENV_ROLE, "Worker"),
        (uri::ENV_URI, "http://127.0.0.1:9/creds"),
    ]);
    Everything { _dir: dir, env }
}

#[test]
fn each_source_is_chosen_in_the_documented_order() {
    let all = everything();
    let mut env = all.env.clone();
    let order = ["env", "files", "oidc", "profile", "ecs", "uri"];
    let removals: [&[&str]; 6] = [
        &[
            crate::credentials::ENV_KEY_ID,
            crate::credentials::ENV_KEY_SECRET,
        ],
        &["CREDENTIALS_DIRECTORY"],
        &[
            oidc::ENV_ROLE_ARN,
            oidc::ENV_PROVIDER_ARN,
            oidc::ENV_TOKEN_FILE,
        ],
        &["HOME"],
        &[ecs::ENV_ROLE],
        &[uri::ENV_URI],
    ];
    for (name, remove) in order.iter().zip(removals) {
        let chosen = resolve(&settings(), &env).unwrap();
        assert_eq!(chosen.name(), *name, "{}", chosen.describe());
        for var in remove {
            env.remove(*var);
        }
    }
    // Nothing configured: the role the metadata service names, unless that is off.
    let last = resolve(&settings(), &env).unwrap();
    assert!(matches!(last.how, How::Ecs(_)), "{}", last.describe());
    env.insert(ecs::ENV_DISABLED.into(), "true".into());
    let err = resolve(&settings(), &env).unwrap_err();
    assert_eq!(err.key, "credentials");
}

#[test]
fn credentials_source_picks_one_source_by_name() {
    let all = everything();
    let mut s = settings();
    for (kind, name) in [
        (CredentialSource::Files, "files"),
        (CredentialSource::Oidc, "oidc"),
        (CredentialSource::Profile, "profile"),
        (CredentialSource::Ecs, "ecs"),
        (CredentialSource::Uri, "uri"),
    ] {
        s.credentials.source = kind;
        assert_eq!(resolve(&s, &all.env).unwrap().name(), name);
    }
    s.credentials.source = CredentialSource::Uri;
    let err = resolve(&s, &BTreeMap::new()).unwrap_err();
    assert_eq!(err.key, uri::ENV_URI);
}

#[test]
fn a_partial_oidc_set_names_the_missing_variable() {
    for missing in [
        oidc::ENV_ROLE_ARN,
        oidc::ENV_PROVIDER_ARN,
        oidc::ENV_TOKEN_FILE,
    ] {
        let mut env = env(&[
            (oidc::ENV_ROLE_ARN, ROLE),
            (oidc::ENV_PROVIDER_ARN, PROVIDER),
            (oidc::ENV_TOKEN_FILE, "/run/token"),
        ]);
        env.remove(missing);
        let err = resolve(&settings(), &env).unwrap_err();
        assert_eq!(err.key, missing, "{err}");
    }
}

#[test]
fn half_a_key_is_an_error_naming_the_other_half() {
    let err = resolve(&settings(), &env(&[(crate::credentials::ENV_KEY_ID, "id")])).unwrap_err();
    assert_eq!(err.key, crate::credentials::ENV_KEY_SECRET);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("access_key_id"), "id").unwrap();
    std::fs::write(dir.path().join("role_arn"), ROLE).unwrap();
    let err = resolve(
        &settings(),
        &env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]),
    )
    .unwrap_err();
    assert!(err.message.contains("access_key_secret"), "{err}");
}

#[test]
fn a_key_with_a_role_assumes_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("access_key_id"), "id").unwrap();
    std::fs::write(dir.path().join("access_key_secret"), "secret").unwrap();
    std::fs::write(dir.path().join("role_arn"), ROLE).unwrap();
    let files = resolve(
        &settings(),
        &env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]),
    )
    .unwrap();
    assert!(
        matches!(&files.how, How::AssumeRole { role, .. } if role.arn == ROLE),
        "{files:?}"
    );
    let mut s = settings();
    s.credentials.role_arn = ROLE.into();
    let from_env = resolve(
        &s,
        &env(&[
            (crate::credentials::ENV_KEY_ID, "id"),
            (crate::credentials::ENV_KEY_SECRET, "secret"),
        ]),
    )
    .unwrap();
    assert!(matches!(from_env.how, How::AssumeRole { .. }));
    assert!(
        !format!("{from_env:?}").contains("secret\""),
        "{from_env:?}"
    );
}

#[test]
fn profiles_are_picked_by_setting_variable_or_current_and_read_by_mode() {
    let all = everything();
    let mut env = all.env.clone();
    for var in [
        crate::credentials::ENV_KEY_ID,
        crate::credentials::ENV_KEY_SECRET,
        "CREDENTIALS_DIRECTORY",
        oidc::ENV_ROLE_ARN,
        oidc::ENV_PROVIDER_ARN,
        oidc::ENV_TOKEN_FILE,
    ] {
        env.remove(var);
    }
    let current = resolve(&settings(), &env).unwrap();
    assert!(matches!(current.how, How::Static(_)), "{current:?}");
    env.insert(profile::ENV_PROFILE.into(), "role".into());
    let role = resolve(&settings(), &env).unwrap();
    match &role.how {
        How::AssumeRole { role, .. } => {
            assert_eq!(role.session_name, "s1");
            assert_eq!(role.duration.as_secs(), 900);
        }
        other => panic!("{other:?}"),
    }
    let mut s = settings();
    s.credentials.profile = "ecs".into();
    assert!(matches!(resolve(&s, &env).unwrap().how, How::Ecs(_)));
    s.credentials.profile = "bad".into();
    assert!(resolve(&s, &env).unwrap_err().message.contains("mode"));
    s.credentials.profile = "nobody".into();
    assert_eq!(resolve(&s, &env).unwrap_err().key, "credentials.profile");
}
