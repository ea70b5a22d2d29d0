//! `deregd migrate`: create or upgrade the database and exit.

use crate::config::Settings;
use crate::store::Store;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let db = Store::open(&settings.database.path).await?;
    db.close().await;
    println!(
        "database {} is up to date",
        settings.database.path.display()
    );
    Ok(())
}
