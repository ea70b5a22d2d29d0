//! `deregd run [--until-empty]`: the service. Takes the dispatcher lock, opens and migrates the
//! database, tells systemd it is ready, and dispatches until SIGTERM/SIGINT (or until nothing is
//! left). SIGHUP reloads `limits.*` and probes a paused dispatch at once.

use std::path::PathBuf;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::config::Settings;
use crate::credentials::Provider;
use crate::store::Store;
use crate::worker::{self, RunOptions, Shared};
use crate::{metrics, systemd};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Exit 0 once nothing is pending, running or awaiting a retry.
    #[arg(long)]
    pub until_empty: bool,
}

pub async fn run(settings: Settings, args: RunArgs, config: Option<PathBuf>) -> anyhow::Result<()> {
    // Before anything else: until the handlers exist, SIGTERM or SIGHUP (a `systemctl reload`
    // right after start) would kill the process outright, mid-migration or mid-claim.
    let signals = Signals::install();
    let credentials = Provider::load(&settings).await?;
    let _lock = crate::lock::lock(&settings.database.path)?;
    let db = Store::open(&settings.database.path).await?;
    let client = ApiClient::new(&settings, credentials.clone())?;
    let shutdown = CancellationToken::new();
    let shared = Shared::new(&settings.limits);
    let background = CancellationToken::new();
    if !settings.metrics.listen.is_empty() {
        let listen = settings.metrics.listen.parse()?;
        let addr = metrics::serve(listen, db.clone(), shared.clone(), background.clone()).await?;
        tracing::info!(metrics.listen = %addr, "serving /metrics and /healthz");
    }
    tracing::info!(
        database = %settings.database.path.display(),
        api.endpoint = %settings.api.endpoint,
        api.signature = ?settings.api.signature,
        credentials.source = credentials.source(),
        credentials.expires = %credentials.expires_text(),
        limits.qps = settings.limits.qps,
        limits.max_in_flight = settings.limits.max_in_flight,
        limits.max_unrecorded = settings.limits.max_unrecorded,
        "dispatching"
    );
    systemd::ready();
    tokio::spawn(systemd::supervise(
        db.clone(),
        shared.clone(),
        background.clone(),
    ));
    if let Some(signals) = signals {
        signals.handle(shutdown.clone(), shared.clone(), config);
    }
    let options = RunOptions {
        until_empty: args.until_empty,
    };
    let result = worker::run(db.clone(), client, settings, shutdown, options, shared).await;
    systemd::stopping();
    background.cancel();
    // A connection may still be waiting on another process's lock: closing is not waited
    // out (SQLite rolls back whatever it was doing when the process ends).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), db.close()).await;
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// The service's signal streams. Installed, they replace the default actions at once; a signal
/// that arrives before they are handled waits in its stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Some(Signals { term, int, hup }),
            _ => {
                tracing::warn!("cannot install signal handlers");
                None
            }
        }
    }

    /// SIGTERM/SIGINT: graceful stop; a second one exits at once (leases are rescued on
    /// restart). SIGHUP: reload `limits.*` from the configuration.
    fn handle(self, shutdown: CancellationToken, shared: Shared, config: Option<PathBuf>) {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = self;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {
                        reload(&shared, config.as_deref());
                        continue;
                    }
                }
                if shutdown.is_cancelled() {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(130);
                }
                tracing::info!(
                    "stopping: finishing calls in flight (signal again to exit at once)"
                );
                systemd::stopping();
                shutdown.cancel();
            }
        });
    }
}

fn reload(shared: &Shared, config: Option<&std::path::Path>) {
    systemd::reloading();
    match Settings::load(config) {
        Ok(settings) => {
            if let Ok(schedule) = settings.worker.schedule() {
                shared.reload_schedule(schedule);
            }
            shared.reload(settings.limits);
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: configuration not reloaded; keeping the current limits");
            // Even without new limits, a reload probes a paused dispatch at once.
            shared.probe_now();
        }
    }
    systemd::ready();
}
