//! `deregd check`: validate configuration, database and credentials; no API call.

use clap::Args;

use crate::config::Settings;
use crate::credentials::Credentials;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, args: CheckArgs) -> anyhow::Result<()> {
    let credentials = Credentials::load();
    let db_state = if settings.database.path.exists() {
        let db = Store::open_unmigrated(&settings.database.path).await?;
        let pending = db.pending_migrations().await?;
        db.close().await;
        if pending.is_empty() {
            "migrated".to_string()
        } else {
            format!(
                "needs `deregd migrate` ({} pending migrations)",
                pending.len()
            )
        }
    } else {
        "missing (created by `deregd migrate` or `deregd run`)".to_string()
    };
    let (key_id, token) = match &credentials {
        Ok(c) => (Some(mask(&c.access_key_id)), c.security_token.is_some()),
        Err(_) => (None, false),
    };
    if args.json {
        let out = serde_json::json!({
            "settings": settings,
            "database": db_state,
            "credentials": {
                "access_key_id": key_id,
                "access_key_secret": if credentials.is_ok() { Some("***") } else { None },
                "security_token": if token { Some("***") } else { None },
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("# effective settings\n{}", settings.to_toml());
        println!(
            "database: {} ({db_state})",
            settings.database.path.display()
        );
        match &key_id {
            Some(id) => println!(
                "credentials: AccessKeyId {id}, AccessKeySecret ***{}",
                if token { ", STS token ***" } else { "" }
            ),
            None => println!("credentials: missing"),
        }
    }
    credentials?;
    Ok(())
}

/// Shows the first and last 3 characters of an AccessKeyId.
fn mask(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 8 {
        return "***".into();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}***{tail}")
}
