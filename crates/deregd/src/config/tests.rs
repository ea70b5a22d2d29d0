//! The settings' layering, strict types and validation.

use super::*;
use crate::config::validate::validate_endpoint;

use crate::test_env as env;

fn load_toml(text: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deregd.toml");
    std::fs::write(&path, text).unwrap();
    Settings::load_from(Some(&path), &BTreeMap::new())
}

#[test]
fn the_documented_defaults_load_and_validate() {
    let s = Settings::load_from(None, &BTreeMap::new()).unwrap();
    assert_eq!(s.database.path, PathBuf::from("deregd.db"));
    assert_eq!(s.api.endpoint, "https://onsmqtt.cn-hangzhou.aliyuncs.com");
    assert_eq!(s.api.signature, SignatureVersion::V3);
    assert_eq!(
        (s.api.connect_timeout, s.api.request_timeout),
        (Duration::from_millis(5000), Duration::from_millis(10000))
    );
    assert_eq!(s.limits.qps, 280);
    assert!(s.limits.instance_tps.is_empty());
}

#[test]
fn env_vars_override_the_file_which_overrides_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(
        &path,
        "[limits]\nqps = 200\n[limits.instance_tps]\n\"post-cn-0pp12gl0001\" = 50\n",
    )
    .unwrap();
    let s = Settings::load_from(Some(&path), &env(&[("DEREGD_LIMITS__QPS", "300")])).unwrap();
    assert_eq!(s.limits.qps, 300);
    assert_eq!(s.limits.instance_tps.get("post-cn-0pp12gl0001"), Some(&50));
    let via_env = Settings::load_from(
        None,
        &env(&[
            ("DEREGD_CONFIG", path.to_str().unwrap()),
            ("DEREGD_API__SIGNATURE", "v2"),
        ]),
    )
    .unwrap();
    assert_eq!(via_env.limits.qps, 200);
    assert_eq!(via_env.api.signature, SignatureVersion::V2);
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let cases = [
        ("[limits]\nqps = 600\n", "limits.qps", "500"),
        ("[limits]\nqps = 500\n", "limits.qps", "500"),
        ("[limits]\nqps = 0\n", "limits.qps", ""),
        (
            "[api]\nrequest_timeout_ms = -5\n",
            "api.request_timeout_ms",
            "",
        ),
        (
            "[api]\nendpoint = \"http://example.com\"\n",
            "api.endpoint",
            "https",
        ),
        ("[api]\nendpoint = \"nonsense\"\n", "api.endpoint", ""),
        ("[retry]\nmax_attempts = 0\n", "retry.max_attempts", ""),
        (
            "[limits.instance_tps]\n\"post-cn-x\" = 0\n",
            "limits.instance_tps.post-cn-x",
            "",
        ),
        (
            "[worker]\nlease_secs = 5\n",
            "worker.lease_secs",
            "request_timeout",
        ),
    ];
    for (toml, key, needle) in cases {
        let err = load_toml(toml).expect_err(toml);
        assert_eq!(err.key, key, "{toml}: {err}");
        assert!(err.to_string().contains(needle), "{toml}: {err}");
    }
}

#[test]
fn unknown_keys_broken_toml_and_wrong_types_are_refused() {
    let err = load_toml("[limits]\nqpss = 10\n").unwrap_err();
    assert!(err.to_string().contains("qpss"), "{err}");
    let err = load_toml("[limits\nqps = 10\n").unwrap_err();
    assert!(err.to_string().contains("line"), "{err}");
    let err = load_toml("[limits]\nqps = \"fast\"\n").unwrap_err();
    assert!(err.to_string().contains("qps"), "{err}");
    let err = Settings::load_from(None, &env(&[("DEREGD_LIMITS__QPS", "lots")])).unwrap_err();
    assert!(err.to_string().contains("qps"), "{err}");
}

#[test]
fn http_is_allowed_only_to_loopback() {
    for ok in [
        "http://127.0.0.1:8080",
        "http://localhost:1",
        "http://[::1]:9",
    ] {
        validate_endpoint(ok).unwrap();
    }
    assert!(validate_endpoint("http://10.0.0.1").is_err());
}

#[test]
fn values_of_the_wrong_type_are_refused_never_coerced() {
    for (toml, key) in [
        ("[limits]\nqps = 280.6\n", "limits.qps"),
        ("[limits]\nqps = \"280\"\n", "limits.qps"),
        ("[limits]\nqps = true\n", "limits.qps"),
        ("[limits]\nmax_in_flight = 64.4\n", "limits.max_in_flight"),
        (
            "[api]\nrequest_timeout_ms = 1.5\n",
            "api.request_timeout_ms",
        ),
        (
            "[limits.instance_tps]\n\"post-cn-0pp12gl0001\" = 50.5\n",
            "limits.instance_tps.post-cn-0pp12gl0001",
        ),
    ] {
        let err = load_toml(toml).expect_err(toml);
        assert_eq!(err.key, key, "{toml}: {err}");
    }
    // The environment holds strings: a plain integer string is an integer, nothing else is.
    let s = Settings::load_from(None, &env(&[("DEREGD_LIMITS__QPS", "200")])).unwrap();
    assert_eq!(s.limits.qps, 200);
    for raw in ["280.6", "true", "2e2", "+200", ""] {
        let err = Settings::load_from(None, &env(&[("DEREGD_LIMITS__QPS", raw)])).unwrap_err();
        assert_eq!(err.key, "limits.qps", "{raw:?}: {err}");
        assert!(err.to_string().contains("DEREGD_LIMITS__QPS"), "{err}");
    }
}

#[test]
fn an_endpoint_with_a_password_is_refused_without_repeating_it() {
    let err =
        load_toml("[api]\nendpoint = \"https://user:hunter2@onsmqtt.cn-hangzhou.aliyuncs.com\"\n")
            .unwrap_err();
    assert_eq!(err.key, "api.endpoint");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn metrics_beyond_loopback_need_allow_remote() {
    let err = load_toml("[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap_err();
    assert_eq!(err.key, "metrics.listen");
    assert!(err.to_string().contains("allow_remote"), "{err}");
    let s = load_toml("[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n").unwrap();
    assert_eq!(s.metrics.listen, "0.0.0.0:9464");
    load_toml("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
}

#[test]
fn a_low_ceiling_lowers_the_default_burst_and_a_conflict_names_the_key_that_was_set() {
    let s = load_toml("[limits]\nqps = 5\n").unwrap();
    assert_eq!((s.limits.qps, s.limits.burst), (5, 2));
    let s = load_toml("[limits]\nqps = 1\n").unwrap();
    assert_eq!(s.limits.burst, 1);
    let err = load_toml("[limits]\nqps = 5\nburst = 3\n").unwrap_err();
    assert_eq!(err.key, "limits.burst", "{err}");
    let err = load_toml("[limits]\nburst = 200\n").unwrap_err();
    assert_eq!(err.key, "limits.burst", "{err}");
}

#[test]
fn credentials_keys_are_checked_and_named() {
    let cases = [
        ("[credentials]\nsource = \"vault\"\n", "credentials.source"),
        (
            "[credentials]\nrole_arn = \"arn:aws:iam::1:role/x\"\n",
            "credentials.role_arn",
        ),
        (
            "[credentials]\nrole_session_name = \"a b\"\n",
            "credentials.role_session_name",
        ),
        (
            "[credentials]\nduration_secs = 60\n",
            "credentials.duration_secs",
        ),
        ("[credentials]\npolicy = \"[1]\"\n", "credentials.policy"),
        (
            "[credentials]\nsts_endpoint = \"http://sts.example.com\"\n",
            "credentials.sts_endpoint",
        ),
        (
            "[credentials]\nmetadata_endpoint = \"http://10.0.0.1\"\n",
            "credentials.metadata_endpoint",
        ),
    ];
    for (text, key) in cases {
        let err = load_toml(text).unwrap_err();
        assert_eq!(err.key, key, "{text}: {err}");
    }
    let s = load_toml(
        "[credentials]\nsource = \"oidc\"\nrole_arn = \"acs:ram::1:role/r\"\n\
         metadata_endpoint = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    assert_eq!(s.credentials.source, CredentialSource::Oidc);
    assert_eq!(s.credentials.duration, Duration::from_secs(3600));
}

#[test]
fn region_and_network_derive_the_endpoint_unless_one_is_set() {
    let s = load_toml("[api]\nregion = \"cn-shanghai\"\n").unwrap();
    assert_eq!(s.api.endpoint, "https://onsmqtt.cn-shanghai.aliyuncs.com");
    let s = load_toml("[api]\nregion = \"cn-shanghai\"\nnetwork = \"vpc\"\n").unwrap();
    assert_eq!(
        s.api.endpoint,
        "https://onsmqtt-vpc.cn-shanghai.aliyuncs.com"
    );
    let s = Settings::load_from(
        None,
        &env(&[
            ("DEREGD_API__REGION", "ap-southeast-1"),
            ("DEREGD_API__ENDPOINT", "https://onsmqtt.example.test"),
        ]),
    )
    .unwrap();
    assert_eq!(s.api.endpoint, "https://onsmqtt.example.test");
    for (toml, key) in [
        ("[api]\nregion = \"CN Shanghai\"\n", "api.region"),
        ("[api]\nregion = \"\"\n", "api.region"),
        ("[api]\nnetwork = \"intranet\"\n", "api.network"),
    ] {
        let err = load_toml(toml).expect_err(toml);
        assert_eq!(err.key, key, "{toml}: {err}");
    }
}

#[test]
fn proxies_are_checked_naming_where_they_came_from_and_their_password_is_masked() {
    let err = load_toml("[api]\nproxy = \"socks5://u:hunter2@p:1080\"\n").unwrap_err();
    assert_eq!(err.key, "api.proxy", "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = Settings::load_from(None, &env(&[("https_proxy", "ftp://p:21")])).unwrap_err();
    assert_eq!(err.key, "https_proxy", "{err}");
    let s = load_toml("[api]\nproxy = \"http://ops:hunter2@proxy.corp:3128\"\n").unwrap();
    assert_eq!(s.api.proxy.masked(), "http://ops:***@proxy.corp:3128/");
    assert!(!s.to_toml().contains("hunter2"), "{}", s.to_toml());
    assert!(!format!("{s:?}").contains("hunter2"));
    let err = load_toml("[api]\nca_file = \"/nonexistent/roots.pem\"\n").unwrap_err();
    assert_eq!(err.key, "api.ca_file", "{err}");
}
