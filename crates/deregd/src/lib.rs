//! deregd: deregisters ApsaraMQ for MQTT device credentials in bulk, through the vendor's
//! `UnRegisterDeviceCredential` OpenAPI, from a SQLite job queue.
//!
//! Layout: [`config`] (settings), [`db`] (pools, migrations), [`queue`] (the jobs table),
//! [`billing`] (tps_usage), [`job`] (input rules), [`api`] (signing, HTTP), [`outcome`] (the one
//! classifier), [`limiter`] (pacing), [`retry`] (delays), [`worker`] (the dispatch loop),
//! [`dispatcher`] (single-instance lock, heartbeat), [`systemd`] (notify, watchdog),
//! [`metrics`] (Prometheus), [`emulator`] (local stand-in of the API),
//! [`intake`] (bulk submission), [`runs`] (operator queries and bulk changes over runs),
//! [`cli`] (one module per subcommand).

pub mod api;
pub mod billing;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod db;
pub mod dispatcher;
pub mod intake;
pub mod job;
pub mod limiter;
pub mod metrics;
pub mod outcome;
pub mod queue;
pub mod retry;
pub mod runs;
pub mod systemd;
pub mod telemetry;
pub mod worker;
