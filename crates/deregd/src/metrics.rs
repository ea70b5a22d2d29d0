//! Prometheus text exposition at `/metrics` and a liveness probe at `/healthz`, served on
//! `metrics.listen` (off by default). Live numbers come from the dispatch loop's shared stats;
//! job counts are read from the database at scrape time (read-only pool). At most
//! [`MAX_CONNECTIONS`] connections at once, each timed out, so idle clients cannot starve it.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::job::Status;
use crate::store::jobs::JobCounts;
use crate::store::Store;
use crate::worker::{DispatchStats, Shared};

/// The loop counts as stuck after this long without a turn, milliseconds.
pub(crate) const STUCK_AFTER_MS: i64 = 30_000;

/// Connections served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 32;
/// A connection that has not sent its request's head by then is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lasts longer (one request each: no keep-alive).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `listen` and serves until `shutdown`. Returns the bound address.
pub(crate) async fn serve(
    listen: SocketAddr,
    db: Store,
    shared: Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => {
                        backoff = Duration::from_millis(10);
                        a
                    }
                    Err(e) => {
                        // Out of file descriptors, say: accepting again at once would spin.
                        tracing::debug!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            // Past the cap a connection is closed at once (not left in the backlog, where it
            // would queue a probe behind every idle client).
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let (db, shared) = (db.clone(), shared.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (db, shared) = (db.clone(), shared.clone());
                    async move { Ok::<_, Infallible>(answer(req.uri().path(), &db, &shared).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            });
        }
    });
    Ok(addr)
}

async fn answer(path: &str, db: &Store, shared: &Shared) -> Response<Full<Bytes>> {
    let stats = shared.stats.lock().expect("not poisoned").clone();
    let (status, content_type, body) = match path {
        "/metrics" => {
            let jobs = crate::store::jobs::counts(db).await;
            (
                200,
                "text/plain; version=0.0.4",
                render(&stats, jobs.as_ref().ok()),
            )
        }
        "/healthz" => {
            if now_ms() - stats.last_progress_ms <= STUCK_AFTER_MS {
                (200, "text/plain", "ok\n".to_string())
            } else {
                (503, "text/plain", "dispatch loop stuck\n".to_string())
            }
        }
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// The exposition text.
pub(crate) fn render(stats: &DispatchStats, jobs: Option<&JobCounts>) -> String {
    let mut out = String::new();
    let mut lines = Vec::new();
    let name = header(
        &mut out,
        "deregd_calls_total",
        "counter",
        "API calls made, by answer code (OK = success).",
    );
    for (code, n) in &stats.calls_by_code {
        lines.push(format!("{name}{{code=\"{}\"}} {n}", escape(code)));
    }
    flush(&mut out, &mut lines);
    let name = header(
        &mut out,
        "deregd_billed_calls_total",
        "counter",
        "Successful calls per instance; each adds to its billed TPS.",
    );
    for (instance, n) in &stats.billed_by_instance {
        lines.push(format!("{name}{{instance=\"{}\"}} {n}", escape(instance)));
    }
    flush(&mut out, &mut lines);
    let name = header(
        &mut out,
        "deregd_jobs",
        "gauge",
        "Jobs in the database by status.",
    );
    if let Some(jobs) = jobs {
        for status in Status::ALL {
            let n = jobs.count(status);
            lines.push(format!("{name}{{status=\"{status}\"}} {n}"));
        }
    }
    flush(&mut out, &mut lines);
    let name = header(
        &mut out,
        "deregd_retries_scheduled",
        "gauge",
        "Pending jobs waiting for a retry.",
    );
    if let Some(jobs) = jobs {
        lines.push(format!("{name} {}", jobs.scheduled_retries));
    }
    flush(&mut out, &mut lines);
    for (name, help, value) in [
        (
            "deregd_pacing_rate_calls_per_second",
            "Current pacing rate (adaptive).",
            stats.rate,
        ),
        (
            "deregd_pacing_ceiling_calls_per_second",
            "Configured ceiling, limits.qps.",
            stats.ceiling,
        ),
        (
            "deregd_calls_in_flight",
            "Calls awaiting an answer.",
            stats.in_flight as f64,
        ),
        (
            "deregd_rejected_total",
            "Malformed jobs rejected without a call.",
            stats.rejected as f64,
        ),
        (
            "deregd_paused",
            "1 while dispatch is paused for the whole account.",
            stats.paused.is_some() as u8 as f64,
        ),
        (
            "deregd_outcomes_unrecorded",
            "Calls whose outcome is not committed yet (in flight or answered).",
            stats.unrecorded as f64,
        ),
        (
            "deregd_recording_failing",
            "1 while outcomes cannot be written (dispatch stops at limits.max_unrecorded).",
            stats.recording.is_some() as u8 as f64,
        ),
        (
            "deregd_claiming_failing",
            "1 while jobs cannot be claimed.",
            stats.claiming.is_some() as u8 as f64,
        ),
        (
            "deregd_last_progress_timestamp_seconds",
            "Last turn of the dispatch loop.",
            stats.last_progress_ms as f64 / 1000.0,
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let name = header(&mut out, name, kind, help);
        lines.push(format!("{name} {value}"));
        flush(&mut out, &mut lines);
    }
    let name = header(
        &mut out,
        "deregd_pause_info",
        "gauge",
        "Present while paused, with the code that caused it.",
    );
    if let Some(p) = &stats.paused {
        lines.push(format!(
            "{name}{{scope=\"account\",code=\"{}\"}} 1",
            escape(&p.code)
        ));
    }
    for (instance, p) in &stats.paused_instances {
        lines.push(format!(
            "{name}{{scope=\"instance\",instance=\"{}\",code=\"{}\"}} 1",
            escape(instance),
            escape(&p.code)
        ));
    }
    // Run labels are the operator's; the reason (free text) stays out of the label set.
    for run in stats.paused_runs.keys() {
        lines.push(format!(
            "{name}{{scope=\"run\",run=\"{}\",code=\"RunPaused\"}} 1",
            escape(run)
        ));
    }
    for run in stats.runs_outside_window.keys() {
        lines.push(format!(
            "{name}{{scope=\"run\",run=\"{}\",code=\"OutsideWindow\"}} 1",
            escape(run)
        ));
    }
    flush(&mut out, &mut lines);
    let name = header(
        &mut out,
        "deregd_maintenance_window_open",
        "gauge",
        "1 inside worker.windows (or with none), 0 outside them: no call then.",
    );
    lines.push(format!(
        "{name} {}",
        u8::from(stats.outside_window.is_none())
    ));
    flush(&mut out, &mut lines);
    let name = header(
        &mut out,
        "deregd_store_problem_info",
        "gauge",
        "Present while the database cannot be written or read as dispatch needs, with why.",
    );
    for (what, problem) in [
        ("recording", &stats.recording),
        ("claiming", &stats.claiming),
    ] {
        if let Some(problem) = problem {
            let reason: String = problem.chars().take(200).collect();
            lines.push(format!(
                "{name}{{what=\"{what}\",reason=\"{}\"}} 1",
                escape(&reason)
            ));
        }
    }
    flush(&mut out, &mut lines);
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) -> String {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name.to_string()
}

fn flush(out: &mut String, lines: &mut Vec<String>) {
    for line in lines.drain(..) {
        out.push_str(&line);
        out.push('\n');
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
