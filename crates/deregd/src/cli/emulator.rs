//! The `emulator` subcommand: runs the local onsmqtt stand-in until SIGTERM/SIGINT.
//!
//! Final stats go to stdout as JSON (so a script can capture them); logs go wherever tracing
//! writes. Binding beyond loopback needs `--allow-remote`, so a fake endpoint that accepts
//! anyone's test keys never ends up public by accident.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use onsmqtt_emulator::{AccessKey, Emulator, EmulatorSettings, Faults, Registry};

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

    /// Accepted calls per sliding second per AccessKeyId; beyond it, Throttling.User.
    #[arg(long, default_value_t = 500)]
    pub rate_limit: u32,

    /// Accepted calls per sliding second per source IP (no limit when absent).
    #[arg(long)]
    pub ip_limit: Option<u32>,

    /// Registry file: one `ClientId` or `InstanceId ClientId` per line. Without it, every
    /// well-formed id starts registered.
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
}

impl EmulatorArgs {
    /// Turns the options into settings; refuses a non-loopback address without --allow-remote.
    pub fn to_settings(&self) -> anyhow::Result<EmulatorSettings> {
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            anyhow::bail!(
                "refusing to listen on non-loopback address {}: the emulator accepts test keys \
                 and must not become a public endpoint; pass --allow-remote if you really mean it",
                self.listen
            );
        }
        let registry = match &self.registry {
            Some(path) => Registry::from_file(path)?,
            None => Registry::everything(),
        };
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
            ip_limit: self.ip_limit,
            registry,
            faults,
            seed: self.seed,
            retry_after_ms: self.retry_after_ms,
            forbidden_instances: self.forbid_instance.clone(),
        })
    }
}

/// Runs the emulator until SIGTERM or SIGINT, then prints the final stats as JSON on stdout.
pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let settings = args.to_settings()?;
    let emulator = Emulator::start(settings).await?;
    tracing::info!(
        emulator.endpoint = %emulator.endpoint(),
        emulator.rate_limit = args.rate_limit,
        "emulator listening"
    );
    wait_for_stop_signal().await?;
    tracing::info!("emulator stopping");
    let stats = emulator.shutdown().await;
    println!(
        "{}",
        serde_json::to_string_pretty(&stats).context("serialising stats")?
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
        assert!(parse(&["--listen", "[::1]:0"])
            .unwrap()
            .to_settings()
            .is_ok());
    }
}
