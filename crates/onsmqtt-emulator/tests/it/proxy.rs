//! The counting proxy: absolute-form http and CONNECT tunnels, proxy authentication, and its
//! refusal of non-loopback targets.

use onsmqtt_emulator::{CountingProxy, EmulatorSettings, ProxySettings};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::common::*;

fn through(proxy: reqwest::Proxy) -> reqwest::Client {
    reqwest::Client::builder().proxy(proxy).build().unwrap()
}

#[tokio::test]
async fn http_requests_go_through_the_proxy_and_are_counted_per_target() {
    within(async {
        let (emu, _) = start(EmulatorSettings::default()).await;
        let proxy = CountingProxy::start(ProxySettings::default())
            .await
            .unwrap();
        let http = through(reqwest::Proxy::http(proxy.url()).unwrap());
        for i in 0..3 {
            let a = v3(&http, &emu, &Call::new(&format!("GID_proxy@@@{i}"))).await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
        assert_eq!(emu.stats().successes, 3);
        let stats = proxy.shutdown().await;
        assert_eq!(stats.requests_by_target[&emu.addr().to_string()], 3);
        assert!(stats.tunnels_by_target.is_empty());
    })
    .await;
}

#[tokio::test]
async fn proxy_credentials_are_required_and_wrong_ones_get_407() {
    within(async {
        let (emu, _) = start(EmulatorSettings::default()).await;
        let proxy = CountingProxy::start(ProxySettings {
            listen: None,
            credentials: Some(("deregd".into(), "s3cret-pass".into())),
            outgoing_address: None,
        })
        .await
        .unwrap();
        let good = through(
            reqwest::Proxy::http(proxy.url())
                .unwrap()
                .basic_auth("deregd", "s3cret-pass"),
        );
        assert_eq!(
            v3(&good, &emu, &Call::new("GID_proxy@@@ok")).await.status,
            200
        );
        let bad = through(
            reqwest::Proxy::http(proxy.url())
                .unwrap()
                .basic_auth("deregd", "nope"),
        );
        let resp = try_v3(&bad, &emu, &Call::new("GID_proxy@@@bad"))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 407);
        assert!(resp.headers()["proxy-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        let none = through(reqwest::Proxy::http(proxy.url()).unwrap());
        let resp = try_v3(&none, &emu, &Call::new("GID_proxy@@@none"))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 407);
        assert!(emu.is_registered(INSTANCE, "GID_proxy@@@bad"));
        let stats = proxy.stats();
        assert_eq!(stats.auth_refused, 2);
        assert_eq!(stats.requests_by_target.values().sum::<u64>(), 1);
        assert!(!serde_json::to_string(&stats)
            .unwrap()
            .contains("s3cret-pass"));
    })
    .await;
}

/// Sends a CONNECT for `target` on a fresh connection; returns the status line and the stream.
async fn connect(
    proxy: &CountingProxy,
    target: &str,
) -> (String, BufReader<tokio::net::TcpStream>) {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    (status, reader)
}

#[tokio::test]
async fn connect_tunnels_carry_bytes_both_ways_to_loopback_targets_only() {
    within(async {
        let (emu, _) = start(EmulatorSettings::default()).await;
        let proxy = CountingProxy::start(ProxySettings::default())
            .await
            .unwrap();
        let (status, mut tunnel) = connect(&proxy, &emu.addr().to_string()).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let request = format!(
            "GET /__emulator/stats HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            emu.addr()
        );
        tunnel
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tunnel.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"total_requests\""));
        // A documentation-range address: refused before any connection is tried.
        let (status, _) = connect(&proxy, "192.0.2.1:443").await;
        assert!(status.starts_with("HTTP/1.1 403"), "{status}");
        let stats = proxy.stats();
        assert_eq!(stats.tunnels_by_target[&emu.addr().to_string()], 1);
        assert_eq!(stats.refused, 1);
        // The proxy's own stats route.
        let own = reqwest::get(format!("{}/__proxy/stats", proxy.url()))
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&own.text().await.unwrap()).unwrap();
        assert_eq!(json["refused"], 1);
    })
    .await;
}
