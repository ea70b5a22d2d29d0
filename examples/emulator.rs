//! Runs the onsmqtt emulator standalone (the same options as `deregd emulator`).
//!
//! `cargo run --example emulator -- --listen 127.0.0.1:8080 --p-system-overflow 0.1`

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "emulator",
    about = "Local stand-in of the onsmqtt 2020-04-20 API"
)]
struct Cli {
    #[command(flatten)]
    args: deregd::cli_emulator::EmulatorArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    deregd::cli_emulator::run(Cli::parse().args).await
}
