//! The `verifications` table: each `deregd verify` of a run, when, what it looked at (its
//! groups listed again, or a sample of its finished jobs) and what it found, as JSON.

use super::Store;
use crate::clock::now_ms;

/// One recorded verification.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verification {
    /// Unix ms.
    pub at: i64,
    /// `groups` or `sample`.
    pub kind: String,
    /// The counts of each finding (see `deregd verify --json` for the ids).
    pub report: serde_json::Value,
}

impl Verification {
    /// One line: when, of what, and whether the run was gone.
    pub fn describe(&self) -> String {
        let clean = self.report["clean"].as_bool().unwrap_or(false);
        let listed: u64 = self.report["groups"]
            .as_array()
            .map_or(0, |g| g.iter().filter_map(|g| g["listed"].as_u64()).sum());
        let found = self.report["sample"]["found"].as_u64().unwrap_or(0);
        let verdict = if clean {
            "gone from the registry".to_string()
        } else {
            format!("NOT gone ({listed} listed again, {found} of the sample still registered)")
        };
        format!(
            "{} by {}: {verdict}",
            crate::clock::format_ms(self.at),
            self.kind
        )
    }
}

/// Records a verification of `run`.
pub(crate) async fn record(
    store: &Store,
    run: &str,
    kind: &str,
    report: &serde_json::Value,
) -> sqlx::Result<()> {
    store
        .execute(
            sqlx::query(
                "INSERT INTO verifications (run, at, kind, report) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(run)
            .bind(now_ms())
            .bind(kind)
            .bind(report.to_string()),
        )
        .await?;
    Ok(())
}

/// The last verification of `run`, if any.
pub(crate) async fn last(store: &Store, run: &str) -> sqlx::Result<Option<Verification>> {
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "SELECT at, kind, report FROM verifications WHERE run = ?1 ORDER BY id DESC LIMIT 1",
    )
    .bind(run)
    .fetch_optional(&store.reader)
    .await?;
    Ok(row.map(|(at, kind, report)| Verification {
        at,
        kind,
        report: serde_json::from_str(&report).unwrap_or(serde_json::Value::Null),
    }))
}
