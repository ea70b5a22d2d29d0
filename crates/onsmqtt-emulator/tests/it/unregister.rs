//! UnRegisterDeviceCredential end to end: parameters, throttling, faults, the registry, the
//! stats endpoint and the server's throughput.

use std::time::{Duration, Instant};

use onsmqtt_emulator::{
    max_in_window, AccessKey, Emulator, EmulatorSettings, Faults, Registry, Stats,
};
use serde_json::Value;

use super::common::*;
#[tokio::test]
async fn missing_and_malformed_parameters_are_refused() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("x");
        c.params = vec![("InstanceId".into(), INSTANCE.into())];
        assert_eq!(v3(&http, &emu, &c).await.code(), "MissingClientId");
        c.params = vec![("ClientId".into(), "GID_test@@@x".into())];
        c.nonce = fresh_nonce();
        assert_eq!(v2(&http, &emu, &c, false).await.code(), "MissingInstanceId");
        for bad in [
            "GID_te@@@x",
            "group_test@@@x",
            "GID_test@@x",
            "GID_test@@@",
            "GID_test@@@a b",
        ] {
            let a = v3(&http, &emu, &Call::new(bad)).await;
            assert_eq!(
                (a.status, a.code().as_str()),
                (400, "InvalidParameter.ClientId"),
                "{bad}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_actions_other_apis_and_wrong_versions_are_refused() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let mut c = Call::new("GID_test@@@a");
        c.action = "DescribeRegions".into();
        let a = v3(&http, &emu, &c).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (404, "InvalidAction.NotFound")
        );
        c.action = "ListGroupId".into();
        c.nonce = fresh_nonce();
        let b = v2(&http, &emu, &c, false).await;
        assert_eq!((b.status, b.code().as_str()), (404, "ApiNotSupport"));
        c.action = ACTION.into();
        c.version = "2019-01-01".into();
        c.nonce = fresh_nonce();
        let v = v3(&http, &emu, &c).await;
        assert_eq!((v.status, v.code().as_str()), (400, "InvalidVersion"));
    })
    .await;
}

#[tokio::test]
async fn calls_beyond_the_rate_limit_in_a_sliding_second_are_throttled() {
    within(async {
        let settings = EmulatorSettings {
            rate_limit: 20,
            retry_after_ms: Some(250),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let calls = (0..40).map(|i| {
            let http = http.clone();
            let c = Call::new(&format!("GID_test@@@r{i}"));
            let emu = &emu;
            async move { v3(&http, emu, &c).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        let ok = answers.iter().filter(|a| a.status == 200).count();
        let throttled: Vec<_> = answers.iter().filter(|a| a.status == 400).collect();
        assert_eq!(ok, 20);
        assert_eq!(throttled.len(), 20);
        for t in &throttled {
            assert_eq!(t.code(), "Throttling.User");
            assert_eq!(
                t.json()["Message"],
                "Request was denied due to user flow control."
            );
            assert_eq!(t.headers["x-acs-retry-after"], "250");
        }
        let stats = emu.stats();
        assert_eq!(stats.throttled, 20);
        assert_eq!(stats.accepted, 20);
        assert_eq!(stats.max_accepted_per_sliding_second, 20);
        assert_eq!(stats.max_accepted_per_sliding_second_by_key["testid"], 20);
        assert_eq!(stats.max_arrivals_per_sliding_second, 40);
        assert_eq!(stats.max_arrivals_per_sliding_second_by_key["testid"], 40);
        assert_eq!(
            max_in_window(&emu.accepted_offsets(), Duration::from_secs(1)),
            20
        );

        // A second later the window has slid past the burst.
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let later = v3(&http, &emu, &Call::new("GID_test@@@later")).await;
        assert_eq!(later.status, 200, "{}", later.body);
    })
    .await;
}

#[tokio::test]
async fn the_per_ip_limit_throttles_across_keys() {
    within(async {
        let settings = EmulatorSettings {
            keys: vec![
                AccessKey::new("testid", "testsecret"),
                AccessKey::new("k2", "s2"),
            ],
            ip_limit: Some(3),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let mut codes = Vec::new();
        for i in 0..6 {
            let c = Call::new(&format!("GID_test@@@ip{i}"));
            let c = if i % 2 == 0 { c } else { c.key("k2", "s2") };
            codes.push(v3(&http, &emu, &c).await.status);
        }
        assert_eq!(codes, vec![200, 200, 200, 400, 400, 400]);
        let stats = emu.stats();
        assert_eq!(stats.throttled_by_ip, 3);
        assert_eq!(stats.by_code["Throttling"], 3);
    })
    .await;
}

fn faulty(faults: Faults) -> EmulatorSettings {
    EmulatorSettings {
        faults,
        seed: 42,
        ..EmulatorSettings::default()
    }
}

#[tokio::test]
async fn certain_answer_faults_produce_their_codes_and_leave_the_credential() {
    within(async {
        let cases = [
            (
                Faults {
                    p_system_overflow: 1.0,
                    ..Faults::default()
                },
                500,
                "SystemOverFlow",
            ),
            (
                Faults {
                    p_internal_error: 1.0,
                    ..Faults::default()
                },
                500,
                "InternalError",
            ),
            (
                Faults {
                    p_apply_token_overflow: 1.0,
                    ..Faults::default()
                },
                400,
                "ApplyTokenOverFlow",
            ),
        ];
        for (faults, status, code) in cases {
            let (emu, http) = start(faulty(faults)).await;
            let a = v3(&http, &emu, &Call::new("GID_test@@@f")).await;
            assert_eq!((a.status, a.code().as_str()), (status, code));
            assert!(emu.is_registered(INSTANCE, "GID_test@@@f"));
            let stats = emu.shutdown().await;
            assert_eq!(stats.by_code[code], 1);
            assert_eq!(stats.successes, 0);
        }
    })
    .await;
}

#[tokio::test]
async fn faults_apply_only_after_authentication() {
    within(async {
        let (emu, http) = start(faulty(Faults {
            p_reset: 1.0,
            ..Faults::default()
        }))
        .await;
        let a = v3(&http, &emu, &Call::new("GID_test@@@f").secret("bad")).await;
        assert_eq!(a.code(), "SignatureDoesNotMatch");
        assert_eq!(emu.stats().faults_injected.reset, 0);
    })
    .await;
}

#[tokio::test]
async fn a_certain_reset_is_a_transport_error_and_sometimes_deregisters_first() {
    within(async {
        let (emu, http) = start(faulty(Faults {
            p_reset: 1.0,
            ..Faults::default()
        }))
        .await;
        let mut errors = 0;
        for i in 0..20 {
            let r = try_v3(&http, &emu, &Call::new(&format!("GID_test@@@reset{i}"))).await;
            if r.is_err() {
                errors += 1;
            }
        }
        assert_eq!(errors, 20);
        let stats = emu.stats();
        assert_eq!(stats.faults_injected.reset, 20);
        assert!(
            (1..20).contains(&stats.deregistered_under_fault),
            "{}",
            stats.deregistered_under_fault
        );
        let gone = (0..20)
            .filter(|i| !emu.is_registered(INSTANCE, &format!("GID_test@@@reset{i}")))
            .count() as u64;
        assert_eq!(gone, stats.deregistered_under_fault);
        assert_eq!(stats.successes, 0);
    })
    .await;
}

#[tokio::test]
async fn a_certain_hang_holds_the_request_then_closes() {
    within(async {
        let (emu, _) = start(faulty(Faults {
            p_hang: 1.0,
            hang_ms: 300,
            ..Faults::default()
        }))
        .await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let t0 = Instant::now();
        let r = try_v3(&http, &emu, &Call::new("GID_test@@@hang")).await;
        assert!(r.is_err(), "{r:?}");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(emu.stats().faults_injected.hang, 1);
    })
    .await;
}

#[tokio::test]
async fn certain_malformed_answers_rotate_html_truncated_and_empty() {
    within(async {
        let (emu, http) = start(faulty(Faults {
            p_malformed: 1.0,
            ..Faults::default()
        }))
        .await;
        let html = v3(&http, &emu, &Call::new("GID_test@@@m1")).await;
        assert_eq!(html.status, 502);
        assert!(html.body.contains("<html>"), "{}", html.body);
        let trunc = v3(&http, &emu, &Call::new("GID_test@@@m2")).await;
        assert_eq!(trunc.status, 200);
        assert!(trunc.body.starts_with('{') && serde_json::from_str::<Value>(&trunc.body).is_err());
        let empty = v3(&http, &emu, &Call::new("GID_test@@@m3")).await;
        assert_eq!((empty.status, empty.body.as_str()), (200, ""));
        let f = emu.stats().faults_injected;
        assert_eq!(
            (f.malformed_html, f.malformed_truncated, f.malformed_empty),
            (1, 1, 1)
        );
    })
    .await;
}

#[tokio::test]
async fn latency_delays_answers() {
    within(async {
        let (emu, http) = start(faulty(Faults {
            latency_ms: 200,
            jitter_ms: 50,
            ..Faults::default()
        }))
        .await;
        let t0 = Instant::now();
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_test@@@slow")).await.status,
            200
        );
        assert!(t0.elapsed() >= Duration::from_millis(150));
    })
    .await;
}

#[tokio::test]
async fn the_same_seed_injects_the_same_faults() {
    within(async {
        let faults = Faults {
            p_system_overflow: 0.3,
            p_internal_error: 0.3,
            ..Faults::default()
        };
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (emu, http) = start(faulty(faults.clone())).await;
            let mut seq = Vec::new();
            for i in 0..30 {
                seq.push(
                    v3(&http, &emu, &Call::new(&format!("GID_test@@@s{i}")))
                        .await
                        .status,
                );
            }
            runs.push(seq);
        }
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].contains(&200) && runs[0].contains(&500));
    })
    .await;
}

#[tokio::test]
async fn a_registry_file_lists_the_only_registered_credentials() {
    within(async {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut file,
            format!("# fleet\nGID_test@@@any\n{INSTANCE} GID_test@@@pinned\n\nother-inst GID_test@@@elsewhere # comment\n").as_bytes(),
        )
        .unwrap();
        let settings = EmulatorSettings {
            registry: Registry::from_file(file.path()).unwrap(),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        assert_eq!(emu.stats().registry_remaining, Some(3));
        assert_eq!(v3(&http, &emu, &Call::new("GID_test@@@pinned")).await.status, 200);
        assert_eq!(v3(&http, &emu, &Call::new("GID_test@@@any")).await.status, 200);
        assert_eq!(v3(&http, &emu, &Call::new("GID_test@@@elsewhere")).await.code(), "DeviceCredentialNotFound");
        assert_eq!(v3(&http, &emu, &Call::new("GID_test@@@unlisted")).await.code(), "DeviceCredentialNotFound");
        assert_eq!(emu.stats().registry_remaining, Some(1));
    })
    .await;
}

#[tokio::test]
async fn never_registered_ids_are_not_found_from_the_first_call() {
    within(async {
        let settings = EmulatorSettings {
            registry: Registry::all_except(vec![(INSTANCE, "GID_test@@@never")]),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_test@@@never")).await.code(),
            "DeviceCredentialNotFound"
        );
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_test@@@other")).await.status,
            200
        );
    })
    .await;
}

#[tokio::test]
async fn the_stats_endpoint_serves_the_counters_as_json() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        v3(&http, &emu, &Call::new("GID_test@@@s")).await;
        v3(&http, &emu, &Call::new("GID_test@@@s")).await;
        let text = http
            .get(format!("{}/__emulator/stats", emu.endpoint()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let j: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["total_requests"], 2);
        assert_eq!(j["successes"], 1);
        assert_eq!(j["by_code"]["OK"], 1);
        assert_eq!(j["by_code"]["DeviceCredentialNotFound"], 1);
        assert_eq!(j["successes_by_instance"][INSTANCE], 1);
        assert_eq!(j["max_accepted_per_sliding_second"], 2);
        assert_eq!(j["faults_injected"]["reset"], 0);
        assert!(j["registry_remaining"].is_null());
        let typed: Stats = emu.shutdown().await;
        assert_eq!(serde_json::to_value(&typed).unwrap(), j);
    })
    .await;
}

#[tokio::test]
async fn shutdown_stops_accepting_connections() {
    within(async {
        let (emu, http) = start(EmulatorSettings::default()).await;
        let endpoint = emu.endpoint();
        emu.shutdown().await;
        assert!(http
            .get(format!("{endpoint}/__emulator/stats"))
            .send()
            .await
            .is_err());
    })
    .await;
}

/// Builds one signed V2 GET as raw HTTP/1.1 bytes (signing done ahead of the measurement).
fn raw_v2_get(emu: &Emulator, client: &str) -> Vec<u8> {
    let mut c = Call::new(client);
    c.method = reqwest::Method::GET;
    format!(
        "GET /?{} HTTP/1.1\r\nhost: {}\r\n\r\n",
        signed_v2(&c),
        emu.addr()
    )
    .into_bytes()
}

/// Sends `requests` one after another on one keep-alive connection; returns the 200 count.
async fn drive_connection(addr: std::net::SocketAddr, requests: Vec<Vec<u8>>) -> usize {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut ok = 0;
    let mut line = String::new();
    for req in requests {
        wr.write_all(&req).await.unwrap();
        let mut length = 0;
        let mut first = true;
        loop {
            line.clear();
            rd.read_line(&mut line).await.unwrap();
            if first {
                ok += usize::from(line.starts_with("HTTP/1.1 200"));
                first = false;
            } else if line == "\r\n" {
                break;
            } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        rd.read_exact(&mut body).await.unwrap();
    }
    ok
}

/// Measures the server alone: requests are signed beforehand and sent over raw keep-alive
/// connections, so the client's share of the 2 cores stays small. Run with
/// `cargo test --test emulator -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_on_loopback_exceeds_five_thousand_per_second() {
    let settings = EmulatorSettings {
        rate_limit: u32::MAX,
        ..EmulatorSettings::default()
    };
    let (emu, _) = start(settings).await;
    let (total, connections) = (60_000, 32);
    let batches: Vec<Vec<Vec<u8>>> = (0..connections)
        .map(|c| {
            (0..total / connections)
                .map(|i| raw_v2_get(&emu, &format!("GID_perf@@@{c}x{i}")))
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|b| tokio::spawn(drive_connection(emu.addr(), b)))
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let elapsed = t0.elapsed();
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("{total} signed V2 calls over {connections} keep-alive connections in {elapsed:?}: {rate:.0} requests/s");
    assert_eq!(ok, total);
    assert_eq!(emu.stats().successes, total as u64);
    assert!(rate >= 5000.0, "{rate:.0} requests/s");
}
