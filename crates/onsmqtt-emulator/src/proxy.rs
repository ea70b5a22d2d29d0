//! A small counting forward proxy: `CONNECT` tunnels (for https) and absolute-form http
//! requests, optionally behind `Proxy-Authorization: Basic`, so tests can prove which calls went
//! through it. It serves loopback targets only and refuses any other with 403.
//!
//! An absolute-form request is forwarded with `Connection: close`, so every request on a
//! connection is seen (and counted) here; a tunnel is counted once, whatever it carries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::Server;
use super::verify::constant_time_eq;

/// Largest request head read, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The proxy's own stats route (an origin-form GET to the proxy).
const STATS_PATH: &str = "/__proxy/stats";

/// How the proxy is started. `Debug` redacts the password.
#[derive(Clone, Default)]
pub struct ProxySettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: Option<SocketAddr>,
    /// `(user, password)` every request must present; `None`: no authentication.
    pub credentials: Option<(String, String)>,
    /// Local address the proxy's own connections to targets are bound to (e.g. `127.0.0.2`),
    /// so a target can tell calls that came through the proxy from direct ones by their source
    /// address. `None`: the system's choice.
    pub outgoing_address: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySettings")
            .field("listen", &self.listen)
            .field("outgoing_address", &self.outgoing_address)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .finish()
    }
}

/// What the proxy carried. Also served as JSON at `GET /__proxy/stats` on the proxy.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ProxyStats {
    /// `CONNECT` tunnels opened, per `host:port`.
    pub tunnels_by_target: BTreeMap<String, u64>,
    /// Absolute-form requests forwarded, per `host:port`.
    pub requests_by_target: BTreeMap<String, u64>,
    /// Requests refused with 407 (credentials missing or wrong).
    pub auth_refused: u64,
    /// Requests refused with 403 (not a loopback target) or 400 (unparsable).
    pub refused: u64,
    /// Targets that could not be reached (answered 502).
    pub unreachable: u64,
}

/// A running proxy.
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    stats: Arc<Mutex<ProxyStats>>,
    server: Server,
}

struct Proxy {
    /// The expected `Proxy-Authorization` value.
    expected: Option<String>,
    outgoing_address: Option<std::net::IpAddr>,
    stats: Arc<Mutex<ProxyStats>>,
}

impl CountingProxy {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(settings: ProxySettings) -> anyhow::Result<CountingProxy> {
        let listen = settings
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the proxy to {listen}"))?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Mutex::new(ProxyStats::default()));
        let proxy = Arc::new(Proxy {
            expected: settings.credentials.map(|(user, pass)| {
                let b64 =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                format!("Basic {b64}")
            }),
            outgoing_address: settings.outgoing_address,
            stats: stats.clone(),
        });
        let server = Server::spawn(listener, move |stream, _peer, _cancel| {
            let proxy = proxy.clone();
            async move { proxy.serve(stream).await }
        });
        Ok(CountingProxy {
            addr,
            stats,
            server,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the proxy URL without credentials.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.stats.lock().expect("proxy stats lock").clone()
    }

    /// Stops the proxy and returns the final counters.
    pub async fn shutdown(mut self) -> ProxyStats {
        self.server.stop().await;
        self.stats()
    }
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

/// Reads up to the end of the head; returns the head and the bytes read after it.
async fn read_head(stream: &mut TcpStream) -> Option<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return None;
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = buf[end + 4..].to_vec();
    Some((
        Head {
            method: method.to_string(),
            target: target.to_string(),
            version: version.to_string(),
            headers,
        },
        rest,
    ))
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `host:port` and the origin-form path of an absolute-form http target.
fn split_absolute(target: &str) -> Option<(String, String)> {
    let rest = target.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Some((authority, path.to_string()))
}

async fn reply(stream: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Connects to `authority` if every address it names is a loopback one, from `local` when
/// given.
async fn connect_loopback(
    authority: &str,
    local: Option<std::net::IpAddr>,
) -> Result<TcpStream, &'static str> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority)
        .await
        .map_err(|_| "403 Forbidden")?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err("403 Forbidden");
    }
    let Some(local) = local else {
        return TcpStream::connect(&addrs[..])
            .await
            .map_err(|_| "502 Bad Gateway");
    };
    for addr in addrs.iter().filter(|a| a.is_ipv4() == local.is_ipv4()) {
        let socket = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let Ok(socket) = socket else { continue };
        if socket.bind(SocketAddr::new(local, 0)).is_err() {
            continue;
        }
        if let Ok(stream) = socket.connect(*addr).await {
            return Ok(stream);
        }
    }
    Err("502 Bad Gateway")
}

impl Proxy {
    fn count(&self, f: impl FnOnce(&mut ProxyStats)) {
        f(&mut self.stats.lock().expect("proxy stats lock"));
    }

    async fn serve(&self, mut client: TcpStream) {
        let Ok(Some((head, rest))) =
            tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await
        else {
            return;
        };
        if head.method == "GET" && head.target == STATS_PATH {
            let json = serde_json::to_string_pretty(&*self.stats.lock().expect("proxy stats lock"))
                .expect("stats serialise");
            return reply(
                &mut client,
                "200 OK",
                "Content-Type: application/json\r\n",
                &json,
            )
            .await;
        }
        if let Some(expected) = &self.expected {
            let got = head.header("proxy-authorization").unwrap_or("");
            if !constant_time_eq(got.as_bytes(), expected.as_bytes()) {
                self.count(|s| s.auth_refused += 1);
                let challenge = "Proxy-Authenticate: Basic realm=\"onsmqtt-emulator\"\r\n";
                return reply(
                    &mut client,
                    "407 Proxy Authentication Required",
                    challenge,
                    "",
                )
                .await;
            }
        }
        let tunnel = head.method.eq_ignore_ascii_case("CONNECT");
        let target = if tunnel {
            Some((head.target.clone(), String::new()))
        } else {
            split_absolute(&head.target)
        };
        let Some((authority, path)) = target else {
            self.count(|s| s.refused += 1);
            return reply(
                &mut client,
                "400 Bad Request",
                "",
                "absolute-form or CONNECT only",
            )
            .await;
        };
        let mut upstream = match connect_loopback(&authority, self.outgoing_address).await {
            Ok(s) => s,
            Err(status) => {
                self.count(|s| {
                    if status.starts_with("403") {
                        s.refused += 1;
                    } else {
                        s.unreachable += 1;
                    }
                });
                return reply(&mut client, status, "", "").await;
            }
        };
        let sent = if tunnel {
            self.count(|s| *s.tunnels_by_target.entry(authority.clone()).or_default() += 1);
            client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
        } else {
            self.count(|s| *s.requests_by_target.entry(authority.clone()).or_default() += 1);
            let mut forwarded = format!("{} {path} {}\r\n", head.method, head.version);
            for (k, v) in &head.headers {
                let hop = [
                    "proxy-authorization",
                    "proxy-connection",
                    "connection",
                    "keep-alive",
                ];
                if !hop.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                    forwarded.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            forwarded.push_str("Connection: close\r\n\r\n");
            upstream.write_all(forwarded.as_bytes()).await
        };
        if sent.is_err() || upstream.write_all(&rest).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_split_into_authority_and_path() {
        assert_eq!(
            split_absolute("http://127.0.0.1:8080/?a=b"),
            Some(("127.0.0.1:8080".into(), "/?a=b".into()))
        );
        assert_eq!(
            split_absolute("http://localhost"),
            Some(("localhost:80".into(), "/".into()))
        );
        assert_eq!(split_absolute("/relative"), None);
        let shown = format!(
            "{:?}",
            ProxySettings {
                listen: None,
                credentials: Some(("user".into(), "hunter2".into())),
                outgoing_address: None,
            }
        );
        assert!(
            shown.contains("user") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
