//! `deregd run [--until-empty]`: the service. Takes the dispatcher lock, opens and migrates the
//! database, and dispatches until SIGTERM/SIGINT (or until nothing is left).

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::config::{Credentials, Settings};
use crate::db::Db;
use crate::worker::{self, RunOptions, Shared};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Exit 0 once nothing is pending, running or awaiting a retry.
    #[arg(long)]
    pub until_empty: bool,
}

pub async fn run(settings: Settings, args: RunArgs) -> anyhow::Result<()> {
    let credentials = Credentials::load()?;
    let _lock = crate::dispatcher::lock(&settings.database.path)?;
    let db = Db::open(&settings.database.path).await?;
    let client = ApiClient::new(&settings, credentials)?;
    tracing::info!(
        database = %settings.database.path.display(),
        api.endpoint = %settings.api.endpoint,
        limits.qps = settings.limits.qps,
        "dispatching"
    );
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let shared = Shared::default();
    let options = RunOptions {
        until_empty: args.until_empty,
    };
    let result = worker::run(db.clone(), client, settings, shutdown, options, shared).await;
    db.close().await;
    result
}

/// First SIGTERM/SIGINT: graceful stop. Second: exit at once (leases are rescued on restart).
fn spawn_signal_handler(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping: finishing calls in flight (signal again to exit at once)");
        shutdown.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}
