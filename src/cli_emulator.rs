//! Placeholder until the emulator lands.
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {}
pub async fn run(_args: EmulatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
