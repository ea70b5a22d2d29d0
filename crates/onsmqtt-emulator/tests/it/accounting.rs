//! Accounting across actions: the per-source-address limit and stats (all actions together),
//! the account-wide and per-action maxima, and the peak of requests handled at once.

use std::net::IpAddr;
use std::time::Duration;

use onsmqtt_emulator::{EmulatorSettings, Faults};

use super::common::*;

fn from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().unwrap();
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_ip_limit_counts_every_action_of_one_source_address_together() {
    within(async {
        let settings = EmulatorSettings {
            ip_limit: Some(4),
            ..EmulatorSettings::default()
        };
        let (emu, _) = start(settings).await;
        let (a, b) = (from("127.0.0.1"), from("127.0.0.2"));
        let mut codes = Vec::new();
        for call in [
            Call::new("GID_ipaddr@@@u1"),
            Call::new("GID_ipaddr@@@u2"),
            Call::get("GID_ipaddr@@@g1"),
            Call::list("GID_ip_x", 1, 10, None),
            Call::get("GID_ipaddr@@@g2"),
        ] {
            codes.push(v3(&a, &emu, &call).await.code());
        }
        assert_eq!(codes, ["", "", "", "", "Throttling"]);
        // Another source address has a budget of its own.
        assert_eq!(
            v3(&b, &emu, &Call::new("GID_ipaddr@@@u3")).await.status,
            200
        );
        let stats = emu.stats();
        let one = &stats.by_source_ip["127.0.0.1"];
        assert_eq!((one.calls, one.accepted, one.throttled), (5, 4, 1));
        assert_eq!(one.max_accepted_per_sliding_second, 4);
        assert_eq!(stats.by_source_ip["127.0.0.2"].accepted, 1);
        assert_eq!(stats.throttled_by_ip, 1);
        assert_eq!(
            stats.max_accepted_per_sliding_second, 5,
            "account-wide, all actions"
        );
        let by_action = |name: &str| stats.by_action[name].max_accepted_per_sliding_second;
        assert_eq!(by_action("UnRegisterDeviceCredential"), 3);
        assert_eq!(by_action("GetDeviceCredential"), 1);
        assert_eq!(by_action("ListDeviceCredentialClientId"), 1);
    })
    .await;
}

#[tokio::test]
async fn the_peak_of_requests_handled_at_once_is_recorded() {
    within(async {
        let settings = EmulatorSettings {
            faults: Faults {
                latency_ms: 300,
                ..Faults::default()
            },
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let calls = (0..8).map(|i| {
            let (http, emu) = (http.clone(), &emu);
            async move {
                v3(&http, emu, &Call::new(&format!("GID_conc@@@{i}")))
                    .await
                    .status
            }
        });
        let statuses = futures_util::future::join_all(calls).await;
        assert!(statuses.iter().all(|&s| s == 200));
        assert_eq!(emu.stats().max_concurrent, 8);
        for i in 0..3 {
            v3(&http, &emu, &Call::new(&format!("GID_conc@@@seq{i}"))).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            emu.stats().max_concurrent,
            8,
            "one at a time does not raise it"
        );
    })
    .await;
}
