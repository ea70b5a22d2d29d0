//! Snapshotting a group: `deregd submit --group` lists a whole group from the emulator's
//! registry and queues it. The ideal is the pages over `limits.list_qps` (the listing's
//! budget, the only bound); the figure is that ideal over the measured time.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{ensure, Result};

use crate::{count_jobs, deregd, EmulatorProc, Report, INSTANCE};

/// `PageSize` deregd asks for (the API's largest).
const PAGE_SIZE: usize = 100;
/// The emulator's own limit on List calls per sliding second (above every `list_qps` run).
const EMULATOR_LIST_LIMIT: u32 = 100;
const GROUP: &str = "GID_bench_listing";

pub(crate) fn section(dir: &Path, report: &mut Report, group_size: usize) -> Result<()> {
    for list_qps in [10u32, 100] {
        let emulator = EmulatorProc::start_with(
            dir,
            &format!("listing-{list_qps}"),
            &[
                "--list-rate-limit".into(),
                EMULATOR_LIST_LIMIT.to_string(),
                "--group".into(),
                format!("{INSTANCE}:{GROUP}:{group_size}"),
            ],
        )?;
        let db = dir.join(format!("listing-{list_qps}.db"));
        let started = Instant::now();
        let out = deregd(&db, Some(&emulator), 280)
            .env("DEREGD_LIMITS__LIST_QPS", list_qps.to_string())
            .args([
                "submit",
                "--instance",
                INSTANCE,
                "--group",
                GROUP,
                "--run",
                "listing",
            ])
            .stderr(Stdio::piped())
            .output()?;
        let secs = started.elapsed().as_secs_f64();
        ensure!(
            out.status.success(),
            "deregd submit --group failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats = emulator.stop()?;
        let queued = count_jobs(&db)?;
        ensure!(
            queued == group_size as u64,
            "submit --group queued {queued} of {group_size}"
        );
        let throttled = stats["by_action"]["ListDeviceCredentialClientId"]["throttled"]
            .as_u64()
            .unwrap_or(0);
        let pages = group_size.div_ceil(PAGE_SIZE);
        let ideal = pages as f64 / list_qps as f64;
        let ratio = ideal / secs;
        report.add(
            "submit --group",
            &format!("{group_size} credentials at list_qps {list_qps}: seconds"),
            format!("{secs:.1} s"),
            &format!("ideal {ideal:.1} s ({pages} pages / {list_qps})"),
            None,
        );
        report.add(
            "submit --group",
            &format!("ideal / measured at list_qps {list_qps}"),
            format!("{ratio:.3}"),
            "≥ 0.90, 0 throttled",
            Some(ratio >= 0.90 && throttled == 0),
        );
    }
    Ok(())
}
