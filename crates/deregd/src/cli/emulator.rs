//! The `emulator` subcommand: runs the local onsmqtt stand-in until SIGTERM/SIGINT.
//!
//! Final stats go to stdout as JSON (so a script can capture them); logs go wherever tracing
//! writes. Binding beyond loopback needs `--allow-remote`, so a fake endpoint that accepts
//! anyone's test keys never ends up public by accident.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use onsmqtt_emulator::{
    is_valid_client_id, AccessKey, CountingProxy, Emulator, EmulatorSettings, Faults, GroupFault,
    ListPaging, MetadataServer, MetadataSettings, PageFault, ProxySettings, Registry,
};

/// Command-line options of the emulator.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on (loopback unless --allow-remote).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Allow a non-loopback --listen address.
    #[arg(long)]
    pub allow_remote: bool,

    /// Accepted key as ID:SECRET or ID:SECRET:STS_TOKEN; repeatable. Default testid:testsecret.
    #[arg(long = "ak", value_name = "ID:SECRET[:TOKEN]", value_parser = parse_access_key)]
    pub ak: Vec<AccessKey>,

    /// Accepted UnRegisterDeviceCredential calls per sliding second per account (a long-term
    /// key, with the temporary keys issued to it); beyond it, Throttling.User.
    #[arg(long, default_value_t = 500)]
    pub rate_limit: u32,

    /// Accepted calls per sliding second per source IP, every action together (no limit when
    /// absent).
    #[arg(long)]
    pub ip_limit: Option<u32>,

    /// Registry file: one `ClientId` or `InstanceId ClientId` per line. Without it and without
    /// --group, every well-formed id starts registered.
    #[arg(long, value_name = "FILE")]
    pub registry: Option<PathBuf>,

    /// Probability (0..=1) of a 500 SystemOverFlow.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub p_system_overflow: f64,

    /// Probability (0..=1) of a 500 InternalError.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub p_internal_error: f64,

    /// Probability (0..=1) of a 400 ApplyTokenOverFlow.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub p_apply_token_overflow: f64,

    /// Probability (0..=1) of a connection reset without answer.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub p_reset: f64,

    /// Probability (0..=1) of no answer for --hang-ms, then close.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub p_hang: f64,

    /// How long a hung request waits before its connection closes, in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub hang_ms: u64,

    /// Probability (0..=1) of a malformed answer (HTML 502, truncated JSON, empty body).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub p_malformed: f64,

    /// Delay added before each answer to a valid request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// Uniform ± spread around --latency-ms, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,

    /// Seed of the fault injection (same seed and request order, same faults).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Add `x-acs-retry-after: <ms>` to throttled answers, in milliseconds.
    #[arg(long)]
    pub retry_after_ms: Option<u64>,

    /// Answer 400 InstancePermissionCheckFailed for this InstanceId (repeatable).
    #[arg(long, value_name = "INSTANCE_ID")]
    pub forbid_instance: Vec<String>,

    /// Listing, failing groups, STS, metadata service and proxy.
    #[command(flatten)]
    pub extra: Box<ExtraArgs>,
}

/// The emulator's options for the actions and services beyond UnRegister (boxed: they would
/// make the subcommand enum large).
#[derive(Debug, Clone, clap::Args)]
pub struct ExtraArgs {
    /// Accepted ListDeviceCredentialClientId calls per sliding second per account.
    #[arg(long, default_value_t = 10)]
    pub list_rate_limit: u32,

    /// Accepted GetDeviceCredential calls per sliding second per account.
    #[arg(long, default_value_t = 500)]
    pub get_rate_limit: u32,

    /// Accepted RegisterDeviceCredential calls per sliding second per account.
    #[arg(long, default_value_t = 500)]
    pub register_rate_limit: u32,

    /// Seed a listable group: COUNT credentials GID@@@dev-0 .. dev-<COUNT-1> on INSTANCE
    /// (repeatable). Without --registry, only the seeded groups are registered.
    #[arg(long = "group", value_name = "INSTANCE:GID:COUNT", value_parser = parse_group_seed)]
    pub groups: Vec<GroupSeed>,

    /// How ListDeviceCredentialClientId pages: `offset` (PageNo over the live registry) or
    /// `cursor` (a NextToken stable under deletes).
    #[arg(long, default_value = "offset", value_parser = clap::value_parser!(ListPaging))]
    pub list_paging: ListPaging,

    /// Emit the listing's Total as a JSON number instead of a string.
    #[arg(long)]
    pub list_total_as_number: bool,

    /// Make listing page N answer CODE, always or only its first TIMES requests (repeatable).
    #[arg(long, value_name = "N:CODE[:TIMES]", value_parser = clap::value_parser!(PageFault))]
    pub fail_list_page: Vec<PageFault>,

    /// Make every UnRegister and Get of a ClientId of GID answer CODE (repeatable).
    #[arg(long, value_name = "GID:CODE", value_parser = clap::value_parser!(GroupFault))]
    pub fail_group: Vec<GroupFault>,

    /// Longest lifetime of issued temporary credentials (STS, metadata), in seconds.
    #[arg(long, default_value_t = 3600)]
    pub sts_duration_secs: u64,

    /// The OIDC token AssumeRoleWithOIDC accepts (none accepted when absent).
    #[arg(long, value_name = "TOKEN")]
    pub oidc_token: Option<String>,

    /// Also serve the ECS metadata service (RAM role credentials) on this address.
    #[arg(long, value_name = "ADDR")]
    pub metadata_listen: Option<SocketAddr>,

    /// The metadata service refuses GETs without an IMDSv2 session token (403).
    #[arg(long)]
    pub imdsv1_disabled: bool,

    /// The RAM role name the metadata service serves.
    #[arg(long, default_value = "EmulatorEcsRole")]
    pub ecs_role: String,

    /// Also run a counting forward proxy (CONNECT and absolute-form, loopback targets only).
    #[arg(long, value_name = "ADDR")]
    pub proxy_listen: Option<SocketAddr>,

    /// Credentials the proxy requires (Proxy-Authorization: Basic); none when absent.
    #[arg(long, value_name = "USER:PASS", value_parser = parse_user_pass)]
    pub proxy_auth: Option<(String, String)>,
}

impl EmulatorArgs {
    /// Turns the options into settings; refuses a non-loopback address without --allow-remote.
    pub fn to_settings(&self) -> anyhow::Result<EmulatorSettings> {
        let listens = [
            Some(self.listen),
            self.extra.metadata_listen,
            self.extra.proxy_listen,
        ];
        for addr in listens.into_iter().flatten() {
            if !addr.ip().is_loopback() && !self.allow_remote {
                anyhow::bail!(
                    "refusing to listen on non-loopback address {addr}: the emulator accepts \
                     test keys and must not become a public endpoint; pass --allow-remote if \
                     you really mean it"
                );
            }
        }
        let base = match &self.registry {
            Some(path) => Registry::from_file(path)?,
            None if self.extra.groups.is_empty() => Registry::everything(),
            None => Registry::only([]),
        };
        let registry = self
            .extra
            .groups
            .iter()
            .fold(base, |r, g| r.with_group(&g.instance, &g.group, g.count));
        let defaults = EmulatorSettings::default();
        let faults = Faults {
            p_system_overflow: self.p_system_overflow,
            p_internal_error: self.p_internal_error,
            p_apply_token_overflow: self.p_apply_token_overflow,
            p_reset: self.p_reset,
            p_hang: self.p_hang,
            hang_ms: self.hang_ms,
            p_malformed: self.p_malformed,
            latency_ms: self.latency_ms,
            jitter_ms: self.jitter_ms,
        };
        faults.validate()?;
        Ok(EmulatorSettings {
            listen: self.listen,
            keys: if self.ak.is_empty() {
                defaults.keys
            } else {
                self.ak.clone()
            },
            rate_limit: self.rate_limit,
            list_rate_limit: self.extra.list_rate_limit,
            get_rate_limit: self.extra.get_rate_limit,
            register_rate_limit: self.extra.register_rate_limit,
            ip_limit: self.ip_limit,
            registry,
            faults,
            seed: self.seed,
            retry_after_ms: self.retry_after_ms,
            forbidden_instances: self.forbid_instance.clone(),
            list_paging: self.extra.list_paging,
            list_total_as_number: self.extra.list_total_as_number,
            list_page_faults: self.extra.fail_list_page.clone(),
            group_faults: self.extra.fail_group.clone(),
            sts_duration_secs: self.extra.sts_duration_secs,
            oidc_token: self.extra.oidc_token.clone(),
        })
    }
}

/// One `--group INSTANCE:GID:COUNT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSeed {
    /// The InstanceId.
    pub instance: String,
    /// The GroupId.
    pub group: String,
    /// How many credentials.
    pub count: usize,
}

/// Parses `INSTANCE:GID:COUNT`.
fn parse_group_seed(s: &str) -> Result<GroupSeed, String> {
    let mut parts = s.rsplitn(3, ':');
    let (Some(count), Some(group), Some(instance)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("expected INSTANCE:GID:COUNT".into());
    };
    let count = count
        .parse()
        .map_err(|_| format!("`{count}` is not a count of credentials"))?;
    if instance.is_empty() || !is_valid_client_id(&format!("{group}@@@dev-0")) {
        return Err(format!(
            "`{group}` is not a GroupId (GID_ or GID- and 7 to 64 letters, digits, - or _), or \
             the instance is empty"
        ));
    }
    Ok(GroupSeed {
        instance: instance.to_string(),
        group: group.to_string(),
        count,
    })
}

/// Parses `USER:PASS`.
fn parse_user_pass(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((user, pass)) if !user.is_empty() => Ok((user.to_string(), pass.to_string())),
        _ => Err("expected USER:PASS".into()),
    }
}

/// Runs the emulator (and the metadata service and proxy when asked) until SIGTERM or SIGINT,
/// then prints the final stats as JSON on stdout (with a `proxy` member when it ran).
pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let settings = args.to_settings()?;
    let emulator = Emulator::start(settings).await?;
    tracing::info!(
        emulator.endpoint = %emulator.endpoint(),
        emulator.rate_limit = args.rate_limit,
        "emulator listening"
    );
    let metadata = match args.extra.metadata_listen {
        Some(listen) => {
            let settings = MetadataSettings {
                listen,
                role: args.extra.ecs_role.clone(),
                imdsv1_disabled: args.extra.imdsv1_disabled,
                ..MetadataSettings::default()
            };
            let server = MetadataServer::start(&emulator, settings).await?;
            tracing::info!(metadata.endpoint = %server.endpoint(), "metadata service listening");
            Some(server)
        }
        None => None,
    };
    let proxy = match args.extra.proxy_listen {
        Some(listen) => {
            let proxy = CountingProxy::start(ProxySettings {
                listen: Some(listen),
                credentials: args.extra.proxy_auth.clone(),
                outgoing_address: None,
            })
            .await?;
            tracing::info!(proxy.url = %proxy.url(), "proxy listening");
            Some(proxy)
        }
        None => None,
    };
    wait_for_stop_signal().await?;
    tracing::info!("emulator stopping");
    if let Some(server) = metadata {
        server.shutdown().await;
    }
    let proxy_stats = match proxy {
        Some(p) => Some(p.shutdown().await),
        None => None,
    };
    let stats = emulator.shutdown().await;
    let mut json = serde_json::to_value(&stats).context("serialising stats")?;
    if let Some(p) = proxy_stats {
        json["proxy"] = serde_json::to_value(p).context("serialising proxy stats")?;
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json).context("serialising stats")?
    );
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Parses `ID:SECRET` or `ID:SECRET:TOKEN`.
fn parse_access_key(s: &str) -> Result<AccessKey, String> {
    let mut parts = s.splitn(3, ':');
    let id = parts.next().unwrap_or_default();
    let secret = parts.next().unwrap_or_default();
    let token = parts.next();
    if id.is_empty() || secret.is_empty() || token == Some("") {
        return Err("expected ID:SECRET or ID:SECRET:TOKEN, each part non-empty".into());
    }
    Ok(AccessKey {
        id: id.to_string(),
        secret: secret.to_string(),
        security_token: token.map(str::to_string),
    })
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number; expected a probability 0.0..=1.0"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("probability must be within 0.0..=1.0, got {p}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    fn parse(argv: &[&str]) -> Result<EmulatorArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("emulator").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_give_the_default_key_on_loopback() {
        let s = parse(&[]).unwrap().to_settings().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.keys, vec![AccessKey::new("testid", "testsecret")]);
        assert_eq!(s.rate_limit, 500);
        assert_eq!(s.faults, Faults::default());
    }

    #[test]
    fn repeated_ak_flags_parse_ids_secrets_and_tokens() {
        let a = parse(&["--ak", "a:b", "--ak", "STS.x:y:tok"]).unwrap();
        assert_eq!(a.ak[0], AccessKey::new("a", "b"));
        assert_eq!(a.ak[1].security_token.as_deref(), Some("tok"));
        assert!(parse(&["--ak", "only-id"]).is_err());
    }

    #[test]
    fn probabilities_outside_zero_to_one_are_refused_clearly() {
        let err = parse(&["--p-reset", "1.5"]).unwrap_err().to_string();
        assert!(err.contains("0.0..=1.0"), "{err}");
        assert!(parse(&["--p-hang", "x"]).is_err());
        let ok = parse(&["--p-malformed", "1", "--seed", "9"]).unwrap();
        assert_eq!(ok.to_settings().unwrap().faults.p_malformed, 1.0);
    }

    #[test]
    fn groups_paging_faults_and_sts_flags_reach_the_settings() {
        let s = parse(&[
            "--group",
            "mqtt-cn-x:GID_meter:5",
            "--group",
            "mqtt-cn-x:GID_other:2",
            "--list-paging",
            "cursor",
            "--list-total-as-number",
            "--fail-list-page",
            "7:InternalError:2",
            "--fail-group",
            "GID_bad:PermissionCheckFailed",
            "--list-rate-limit",
            "3",
            "--sts-duration-secs",
            "20",
            "--oidc-token",
            "tok",
        ])
        .unwrap()
        .to_settings()
        .unwrap();
        assert_eq!(s.registry.group_len("mqtt-cn-x", "GID_meter"), 5);
        assert_eq!(s.registry.remaining(), Some(7), "only the seeded groups");
        assert_eq!(s.list_paging, ListPaging::Cursor);
        assert!(s.list_total_as_number);
        assert_eq!(s.list_page_faults[0].times, Some(2));
        assert_eq!(s.group_faults[0].group, "GID_bad");
        assert_eq!((s.list_rate_limit, s.get_rate_limit), (3, 500));
        assert_eq!(s.sts_duration_secs, 20);
        assert_eq!(s.oidc_token.as_deref(), Some("tok"));
        let d = parse(&[]).unwrap().to_settings().unwrap();
        assert_eq!((d.list_rate_limit, d.list_paging), (10, ListPaging::Offset));
        assert!(parse(&["--group", "mqtt-cn-x:meter:5"]).is_err());
        assert!(parse(&["--group", "GID_meter:5"]).is_err());
        assert!(parse(&["--list-paging", "pages"]).is_err());
        assert!(parse(&["--fail-group", "GID_bad"]).is_err());
        assert!(parse(&["--proxy-auth", "nocolon"]).is_err());
    }

    #[test]
    fn non_loopback_listen_needs_allow_remote() {
        let err = parse(&["--listen", "0.0.0.0:8080"])
            .unwrap()
            .to_settings()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(parse(&["--listen", "0.0.0.0:8080", "--allow-remote"])
            .unwrap()
            .to_settings()
            .is_ok());
        assert!(parse(&["--metadata-listen", "0.0.0.0:80"])
            .unwrap()
            .to_settings()
            .is_err());
        assert!(parse(&["--listen", "[::1]:0"])
            .unwrap()
            .to_settings()
            .is_ok());
    }
}
