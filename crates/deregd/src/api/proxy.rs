//! The forward proxy, if any, that carries the calls to one endpoint: `api.proxy`, else the
//! environment's `HTTPS_PROXY` (https endpoints), `HTTP_PROXY` (http ones) or `ALL_PROXY`
//! (lower-case names too), minus the hosts of `api.no_proxy` and `NO_PROXY` (suffixes, IPs,
//! CIDR ranges, `*`). hyper-util's matcher decides, as curl does. Every proxied connection is a
//! `CONNECT` tunnel, for http endpoints as for https ones, so a signed request never passes
//! through the proxy in the clear as a request the proxy could rewrite or log. Used for the
//! OpenAPI and STS, never for the metadata service.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::http::innermost;
use crate::config::check_proxy_url;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy chosen for an endpoint.
#[derive(Clone)]
pub(crate) struct ProxyRoute {
    /// The proxy's own address, without credentials.
    uri: Uri,
    /// `Proxy-Authorization: Basic ...`, marked sensitive.
    auth: Option<HeaderValue>,
}

impl ProxyRoute {
    /// The proxy as shown in `check` and the logs: its address, with a user but never the
    /// password.
    pub(crate) fn shown(&self) -> String {
        match &self.auth {
            Some(_) => format!("{} (with credentials)", self.uri),
            None => self.uri.to_string(),
        }
    }
}

impl std::fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// The first of `names` set (and not blank) in `env`.
fn first<'a>(env: &'a BTreeMap<String, String>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .filter_map(|n| env.get(*n))
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
}

/// The proxy for `endpoint`: `configured` (`api.proxy`) when not empty, else the environment's;
/// `None` when none applies or the host is exempt. A proxy URL that is not `http://host[:port]`
/// is an error naming where it came from (without its credentials).
pub(crate) fn route(
    configured: &str,
    no_proxy: &str,
    env: &BTreeMap<String, String>,
    endpoint: &str,
) -> Result<Option<ProxyRoute>, String> {
    let mut builder = Matcher::builder();
    let mut sources: Vec<(&str, &str)> = Vec::new();
    if configured.trim().is_empty() {
        for (names, key) in [
            (&["ALL_PROXY", "all_proxy"][..], "ALL_PROXY"),
            (&["HTTP_PROXY", "http_proxy"][..], "HTTP_PROXY"),
            (&["HTTPS_PROXY", "https_proxy"][..], "HTTPS_PROXY"),
        ] {
            if let Some(value) = first(env, names) {
                sources.push((key, value));
                builder = match key {
                    "ALL_PROXY" => builder.all(value),
                    "HTTP_PROXY" => builder.http(value),
                    _ => builder.https(value),
                };
            }
        }
    } else {
        sources.push(("api.proxy", configured.trim()));
        builder = builder.all(configured.trim());
    }
    for (from, value) in &sources {
        check_proxy_url(value).map_err(|why| format!("{from}: {why}"))?;
    }
    let exempt = [
        no_proxy.trim(),
        first(env, &["NO_PROXY", "no_proxy"]).unwrap_or(""),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(",");
    let matcher = builder.no(exempt).build();
    let endpoint: Uri = endpoint
        .parse()
        .map_err(|e| format!("endpoint is not a URL: {e}"))?;
    Ok(matcher.intercept(&endpoint).map(|intercept| ProxyRoute {
        uri: intercept.uri().clone(),
        auth: intercept.basic_auth().cloned().map(|mut v| {
            v.set_sensitive(true);
            v
        }),
    }))
}

/// The connector under TLS: straight to the endpoint, or through a `CONNECT` tunnel.
#[derive(Clone)]
pub(crate) enum Route {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

impl Route {
    pub(crate) fn new(tcp: HttpConnector, proxy: Option<&ProxyRoute>) -> Route {
        match proxy {
            None => Route::Direct(tcp),
            Some(p) => {
                let tunnel = Tunnel::new(p.uri.clone(), tcp);
                Route::Tunnel(match &p.auth {
                    Some(auth) => tunnel.with_auth(auth.clone()),
                    None => tunnel,
                })
            }
        }
    }
}

impl tower_service::Service<Uri> for Route {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Route::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Route::Tunnel(t) => t.poll_ready(cx).map_err(|e| proxy_error(e).into()),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Route::Direct(c) => {
                let connecting = c.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Route::Tunnel(t) => {
                // The tunnel asks for port 443 when the URI has none, whatever its scheme.
                let dst = with_port(dst);
                let connecting = t.call(dst);
                Box::pin(async move { connecting.await.map_err(|e| proxy_error(e).into()) })
            }
        }
    }
}

/// `dst` with its scheme's default port made explicit.
fn with_port(dst: Uri) -> Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = if dst.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let Some(host) = dst.host() else {
        return dst;
    };
    let mut parts = dst.clone().into_parts();
    match format!("{host}:{port}").parse() {
        Ok(authority) => {
            parts.authority = Some(authority);
            Uri::from_parts(parts).unwrap_or(dst)
        }
        Err(_) => dst,
    }
}

/// A tunnel's failure, said as what the operator must fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("the proxy refused its credentials (407 Proxy Authentication Required); check the user and password of api.proxy or HTTPS_PROXY")]
    AuthRequired,
    #[error("could not reach the proxy: {0}")]
    Unreachable(String),
    #[error("the proxy did not open a tunnel: {0}")]
    Refused(String),
}

/// hyper-util does not export its tunnel error type, so it is told apart by what it says.
fn proxy_error(e: impl std::error::Error + 'static) -> ProxyError {
    let said = e.to_string();
    if said.contains("proxy authorization required") {
        ProxyError::AuthRequired
    } else if said.contains("underlying connection") {
        ProxyError::Unreachable(innermost(&e))
    } else {
        ProxyError::Refused(innermost(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_env as env;

    fn shown(r: Result<Option<ProxyRoute>, String>) -> Option<String> {
        r.unwrap().map(|p| p.shown())
    }

    #[test]
    fn the_configured_proxy_wins_over_the_environment() {
        let e = env(&[("HTTPS_PROXY", "http://env-proxy:1")]);
        assert_eq!(
            shown(route("http://cfg:3128", "", &e, "https://a.example.com")),
            Some("http://cfg:3128/".into())
        );
        assert_eq!(
            shown(route("", "", &e, "https://a.example.com")),
            Some("http://env-proxy:1/".into())
        );
    }

    #[test]
    fn each_scheme_takes_its_own_variable_and_all_proxy_fills_in() {
        let e = env(&[("https_proxy", "http://s:1"), ("ALL_PROXY", "http://all:2")]);
        assert_eq!(
            shown(route("", "", &e, "https://a.example.com")),
            Some("http://s:1/".into())
        );
        assert_eq!(
            shown(route("", "", &e, "http://127.0.0.1:8080")),
            Some("http://all:2/".into())
        );
        assert_eq!(
            shown(route("", "", &env(&[]), "https://a.example.com")),
            None
        );
    }

    #[test]
    fn no_proxy_exempts_suffixes_addresses_and_everything() {
        let e = env(&[
            ("HTTPS_PROXY", "http://p:1"),
            ("HTTP_PROXY", "http://p:1"),
            ("NO_PROXY", ".aliyuncs.com,127.0.0.1"),
        ]);
        assert_eq!(
            shown(route(
                "",
                "",
                &e,
                "https://onsmqtt.cn-hangzhou.aliyuncs.com"
            )),
            None
        );
        assert_eq!(shown(route("", "", &e, "http://127.0.0.1:9")), None);
        assert!(shown(route("", "", &e, "https://example.com")).is_some());
        // api.no_proxy adds to NO_PROXY, and applies to api.proxy too.
        assert_eq!(
            shown(route(
                "http://p:1",
                "example.com",
                &e,
                "https://example.com"
            )),
            None
        );
        assert_eq!(
            shown(route("http://p:1", "*", &env(&[]), "https://x.y")),
            None
        );
    }

    #[test]
    fn credentials_are_sent_but_never_shown() {
        let r = route("http://user:s3cret@p:3128", "", &env(&[]), "https://a.b")
            .unwrap()
            .unwrap();
        assert!(r.auth.as_ref().unwrap().is_sensitive());
        assert!(!r.shown().contains("s3cret"), "{}", r.shown());
        assert!(!format!("{r:?}").contains("s3cret"));
    }

    #[test]
    fn an_unusable_proxy_url_is_refused_without_repeating_it() {
        let err = route("socks5://user:s3cret@p:1", "", &env(&[]), "https://a.b").unwrap_err();
        assert!(err.starts_with("api.proxy:"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = route(
            "",
            "",
            &env(&[("HTTPS_PROXY", "https://p:1")]),
            "https://a.b",
        )
        .unwrap_err();
        assert!(err.starts_with("HTTPS_PROXY:"), "{err}");
        assert!(route("p:3128", "", &env(&[]), "https://a.b")
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_tunnel_gets_the_default_port_of_its_scheme() {
        assert_eq!(
            with_port("http://h/x".parse().unwrap()).port_u16(),
            Some(80)
        );
        assert_eq!(
            with_port("https://h".parse().unwrap()).port_u16(),
            Some(443)
        );
        assert_eq!(with_port("http://h:8".parse().unwrap()).port_u16(), Some(8));
    }
}
