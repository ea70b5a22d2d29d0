//! deregd: deregisters ApsaraMQ for MQTT device credentials in bulk, through the vendor's
//! `UnRegisterDeviceCredential` OpenAPI, from a SQLite job queue.
//!
//! Layout: [`config`] (settings), [`credentials`] (what calls are signed with), [`api`]
//! (signing, the transport, one signed call), [`outcome`] (the one classifier of answers, and
//! what each writes), [`pacing`] (budgets: GCRA, send window, adaptive rate), [`worker`] (the
//! dispatch loop, claims, pauses, the recorder), [`store`] (every SQL statement, by table),
//! [`intake`] (parsing submissions), [`job`] (input rules), [`retry`] (delays), [`lock`] (one
//! dispatcher per database), [`systemd`] (notify, watchdog), [`metrics`] (Prometheus),
//! [`plan`] (what a run will take, before it runs), [`cli`] (one module per subcommand).

pub mod action;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub(crate) mod groups;
pub(crate) mod intake;
pub mod job;
pub(crate) mod lock;
pub(crate) mod metrics;
pub mod outcome;
pub(crate) mod pacing;
pub mod plan;
pub(crate) mod registry;
pub(crate) mod retry;
pub mod schedule;
pub mod store;
pub(crate) mod systemd;
pub(crate) mod telemetry;
pub mod worker;

/// An environment of `pairs`, for the unit tests of whatever reads one.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
