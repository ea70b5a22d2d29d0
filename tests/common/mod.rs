//! Test helpers: a fresh database and an in-process emulator per test, settings tuned for speed
//! (millisecond backoffs, generous quotas), and a timeout around every end-to-end run.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use deregd::api::ApiClient;
use deregd::config::{Credentials, Secret, Settings};
use deregd::db::Db;
use deregd::emulator::{Emulator, EmulatorSettings};
use deregd::worker::{self, RunOptions, Shared};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

pub struct App {
    pub dir: tempfile::TempDir,
    pub db: Db,
    pub settings: Settings,
    pub emulator: Emulator,
}

/// Fails the test if `future` takes longer than `secs`.
pub async fn within<T>(secs: u64, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s"))
}

pub fn fast_settings(db_path: PathBuf, endpoint: &str) -> Settings {
    let mut s = Settings::load_from(None, &BTreeMap::new()).expect("defaults are valid");
    s.database.path = db_path;
    s.api.endpoint = endpoint.to_string();
    s.api.request_timeout_ms = 2000;
    s.api.connect_timeout_ms = 1000;
    s.limits.qps = 450;
    s.limits.max_in_flight = 32;
    s.limits.pause_probe_secs = 60;
    s.retry.base_delay_ms = 10;
    s.retry.max_delay_ms = 100;
    s.retry.max_attempts = 8;
    s.worker.poll_interval_ms = 50;
    s.worker.lease_secs = 30;
    s.worker.shutdown_grace_secs = 2;
    s.validate().expect("test settings are valid");
    s
}

pub fn credentials(secret: &str) -> Credentials {
    Credentials {
        access_key_id: "testid".into(),
        access_key_secret: Secret::new(secret),
        security_token: None,
    }
}

pub async fn spawn_app(emulator: EmulatorSettings) -> App {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deregd.db");
    let emulator = Emulator::start(emulator).await.unwrap();
    let settings = fast_settings(path.clone(), &emulator.endpoint());
    let db = Db::open(&path).await.unwrap();
    App {
        dir,
        db,
        settings,
        emulator,
    }
}

impl App {
    pub fn db_path(&self) -> PathBuf {
        self.settings.database.path.clone()
    }

    /// Inserts jobs the way an operator does, by plain SQL.
    pub async fn insert(&self, instance: &str, clients: &[String]) {
        let mut tx = self.db.begin_write().await.unwrap();
        for c in clients {
            sqlx::query("INSERT INTO jobs (instance_id, client_id) VALUES (?1, ?2)")
                .bind(instance)
                .bind(c)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Runs the worker until the queue is empty, with the given credentials secret.
    pub async fn run_until_empty(&self, secret: &str) {
        self.run_with(
            credentials(secret),
            RunOptions { until_empty: true },
            CancellationToken::new(),
        )
        .await
        .unwrap();
    }

    pub async fn run_with(
        &self,
        credentials: Credentials,
        options: RunOptions,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let client = ApiClient::new(&self.settings, credentials).unwrap();
        worker::run(
            self.db.clone(),
            client,
            self.settings.clone(),
            shutdown,
            options,
            Shared::default(),
        )
        .await
    }

    pub async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = ?1")
            .bind(status)
            .fetch_one(&self.db.reader)
            .await
            .unwrap()
    }

    pub async fn billed_total(&self) -> i64 {
        sqlx::query_scalar("SELECT COALESCE(SUM(calls), 0) FROM tps_usage")
            .fetch_one(&self.db.reader)
            .await
            .unwrap()
    }

    /// (status, attempts, last_code, last_message, request_id) of one job.
    pub async fn job(
        &self,
        client: &str,
    ) -> (String, i64, Option<String>, Option<String>, Option<String>) {
        let r = sqlx::query(
            "SELECT status, attempts, last_code, last_message, request_id FROM jobs WHERE client_id = ?1",
        )
        .bind(client)
        .fetch_one(&self.db.reader)
        .await
        .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    }
}

pub fn devices(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("GID_fleet@@@{prefix}-{i}"))
        .collect()
}

pub const INSTANCE: &str = "post-cn-0pp12gl0001";
