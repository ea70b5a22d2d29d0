//! `deregd check`: validate configuration, database and credentials (obtaining a set from the
//! chosen source, which may ask STS or the metadata service); no OpenAPI call. Prints the
//! source chosen and the expiry, never a secret.

use clap::Args;

use crate::config::Settings;
use crate::credentials::Provider;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, args: CheckArgs) -> anyhow::Result<()> {
    let credentials = Provider::load(&settings).await;
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
    let api = &settings.api;
    let route = |endpoint: &str| {
        crate::api::proxy::route(&api.proxy.0, &api.no_proxy, &settings.proxy_env, endpoint)
            .map(|p| p.map_or_else(|| "none (direct)".to_string(), |p| p.shown()))
            .unwrap_or_else(|why| format!("unusable: {why}"))
    };
    let connectivity = serde_json::json!({
        "endpoint": api.endpoint,
        "region": api.region,
        "network": api.network,
        "proxy": route(&api.endpoint),
        "sts_endpoint": settings.credentials.sts_endpoint,
        "sts_proxy": route(&settings.credentials.sts_endpoint),
        "extra_roots": (!api.ca_file.as_os_str().is_empty()).then(|| api.ca_file.display().to_string()),
    });
    let shown = credentials.as_ref().ok().map(|p| {
        let set = p.current();
        (
            p.source(),
            p.describe().to_string(),
            mask(&set.credentials.access_key_id),
            set.credentials.security_token.is_some(),
            p.expires_text(),
            p.renewable(),
        )
    });
    if args.json {
        let creds = match &shown {
            Some((source, described, id, token, expires, renewable)) => serde_json::json!({
                "source": source,
                "described": described,
                "access_key_id": id,
                "access_key_secret": "***",
                "security_token": if *token { Some("***") } else { None },
                "expires": expires,
                "renewed_in_background": renewable,
            }),
            None => serde_json::json!({
                "error": credentials.as_ref().err().map(|e| format!("{e:#}")),
            }),
        };
        let out = serde_json::json!({
            "settings": settings,
            "database": db_state,
            "connectivity": connectivity,
            "credentials": creds,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("# effective settings\n{}", settings.to_toml());
        println!(
            "database: {} ({db_state})",
            settings.database.path.display()
        );
        println!(
            "api: {} (region {}, {:?} network), proxy {}",
            api.endpoint,
            api.region,
            api.network,
            route(&api.endpoint)
        );
        println!(
            "sts: {}, proxy {}",
            settings.credentials.sts_endpoint,
            route(&settings.credentials.sts_endpoint)
        );
        if !api.ca_file.as_os_str().is_empty() {
            println!("tls: built-in roots plus {}", api.ca_file.display());
        }
        match &shown {
            Some((source, described, id, token, expires, renewable)) => {
                println!("credentials: source {source}: {described}");
                println!(
                    "credentials: AccessKeyId {id}, AccessKeySecret ***{}, expires {expires}{}",
                    if *token { ", STS token ***" } else { "" },
                    if *renewable {
                        " (renewed in the background)"
                    } else {
                        ""
                    }
                );
            }
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
