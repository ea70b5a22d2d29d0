//! Runs taken straight from the vendor's registry: a group's whole listing queued as a run's
//! jobs ([`submit`]), and a run checked against the registry afterwards ([`verify`]): its
//! groups listed again, or a sample of its finished jobs asked for one by one. Invariants: no
//! job of a group is queued before its whole listing is in hand, and a group's run never
//! holds a ClientId of another group.

use std::collections::HashSet;

use serde::Serialize;

use crate::clock::now_ms;
use crate::registry::{ListError, Registry};
use crate::store::groups::{self as run_groups, RunGroup};
use crate::store::{listings, runs, submit, verifications, Store};

/// What submitting one group did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct GroupSubmitted {
    pub(crate) group: String,
    pub(crate) listed: u64,
    pub(crate) queued: u64,
    /// Listed pairs already pending or running (in this run or another).
    pub(crate) duplicates: u64,
    /// Why nothing of the group was queued, if nothing was.
    pub(crate) error: Option<String>,
}

/// Lists each of `groups` on `instance` whole, then queues it as jobs of `run`. A group whose
/// listing fails (retries spent, a pause-class answer, an id of another group) queues nothing;
/// the others go on.
pub(crate) async fn submit(
    store: &Store,
    registry: &mut Registry<'_>,
    instance: &str,
    groups: &[String],
    run: &str,
) -> anyhow::Result<Vec<GroupSubmitted>> {
    listings::purge_stale(store).await?;
    let token = format!("{:016x}", rand::random::<u64>());
    let mut results = Vec::with_capacity(groups.len());
    for group in groups {
        let started = now_ms();
        let listed = registry
            .list_group(instance, group, async |ids: Vec<String>| {
                listings::add(store, &token, instance, group, &ids).await?;
                Ok(())
            })
            .await;
        let mut result = GroupSubmitted {
            group: group.clone(),
            ..GroupSubmitted::default()
        };
        match listed {
            Ok(listed) => {
                let inserted = listings::queue(store, &token, instance, group, run).await?;
                run_groups::record(
                    store,
                    run,
                    &RunGroup {
                        instance_id: instance.to_string(),
                        group_id: group.clone(),
                        listed_at: started,
                        listed: listed as i64,
                    },
                )
                .await?;
                result.listed = listed;
                result.queued = inserted.queued;
                result.duplicates = inserted.already_open;
                tracing::info!(group = %group, listed, queued = inserted.queued, "group queued");
            }
            Err(e) => {
                listings::discard(store, &token, group).await?;
                tracing::error!(group = %group, error = %e, "group not queued");
                result.error = Some(e.to_string());
            }
        }
        results.push(result);
    }
    Ok(results)
}

/// What listing one of a run's groups again found.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct GroupFindings {
    pub(crate) instance_id: String,
    pub(crate) group: String,
    /// Credentials listed now.
    pub(crate) listed: u64,
    /// Ids of the run listed again whose job is not finished yet.
    pub(crate) still_registered_open: Vec<String>,
    /// Ids of the run listed again whose job ended `succeeded` or `not_found`: a deletion that
    /// did not hold.
    pub(crate) still_registered_done: Vec<String>,
    /// Listed ids the run never had.
    pub(crate) new_since_snapshot: Vec<String>,
    /// Jobs put back to pending or added (with `--requeue`).
    pub(crate) requeued: u64,
    pub(crate) added: u64,
}

/// What asking for a sample of a run's finished jobs found.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SampleFindings {
    pub(crate) asked: u64,
    /// `DeviceCredentialNotFound`: the job's end holds.
    pub(crate) confirmed: u64,
    /// Credentials that still exist: `instance_id`, `client_id`.
    pub(crate) found: Vec<(String, String)>,
    pub(crate) requeued: u64,
}

/// A verification of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Verified {
    pub(crate) run: String,
    pub(crate) groups: Vec<GroupFindings>,
    pub(crate) sample: Option<SampleFindings>,
}

impl Verified {
    /// True when nothing of the run is registered any more (as far as this verification saw).
    pub(crate) fn clean(&self) -> bool {
        self.groups.iter().all(|g| g.listed == 0)
            && self.sample.as_ref().is_none_or(|s| s.found.is_empty())
    }
}

/// Lists each of `run`'s groups again, and asks for `sample` of its finished jobs; with
/// `requeue`, still-registered ids go back to pending and new ids join the run. Records the
/// verification.
pub(crate) async fn verify(
    store: &Store,
    registry: &mut Registry<'_>,
    run: &str,
    sample: Option<u32>,
    requeue: bool,
) -> Result<Verified, VerifyError> {
    let mut verified = Verified {
        run: run.to_string(),
        ..Verified::default()
    };
    for group in run_groups::of_run(store, run).await? {
        let mut findings = GroupFindings {
            instance_id: group.instance_id.clone(),
            group: group.group_id.clone(),
            ..GroupFindings::default()
        };
        let listed = registry
            .list_group(
                &group.instance_id,
                &group.group_id,
                async |ids: Vec<String>| {
                    let known = runs::statuses_of(store, run, &group.instance_id, &ids).await?;
                    let known_ids: HashSet<&str> = known.iter().map(|(c, _)| c.as_str()).collect();
                    for (client, status) in &known {
                        match status.as_str() {
                            "pending" | "running" => {
                                findings.still_registered_open.push(client.clone())
                            }
                            _ => findings.still_registered_done.push(client.clone()),
                        }
                    }
                    findings.new_since_snapshot.extend(
                        ids.iter()
                            .filter(|id| !known_ids.contains(id.as_str()))
                            .cloned(),
                    );
                    Ok(())
                },
            )
            .await?;
        findings.listed = listed;
        if requeue {
            findings.requeued = runs::requeue_pairs(
                store,
                run,
                &group.instance_id,
                &findings.still_registered_done,
            )
            .await?;
            let pairs: Vec<(&str, &str)> = findings
                .new_since_snapshot
                .iter()
                .map(|c| (group.instance_id.as_str(), c.as_str()))
                .collect();
            findings.added = submit::submit(store, &pairs, run).await?.queued;
        }
        verified.groups.push(findings);
    }
    if let Some(n) = sample {
        let mut findings = SampleFindings::default();
        let pairs = runs::sample_finished(store, run, n).await?;
        let mut exists = vec![false; pairs.len()];
        registry
            .exist_many(&pairs, |i, found| exists[i] = found)
            .await?;
        findings.asked = pairs.len() as u64;
        for (pair, found) in pairs.into_iter().zip(exists) {
            if found {
                findings.found.push(pair);
            } else {
                findings.confirmed += 1;
            }
        }
        if requeue {
            for (instance, client) in &findings.found {
                findings.requeued +=
                    runs::requeue_pairs(store, run, instance, std::slice::from_ref(client)).await?;
            }
        }
        verified.sample = Some(findings);
    }
    let kind = if verified.groups.is_empty() {
        "sample"
    } else {
        "groups"
    };
    verifications::record(store, run, kind, &verified.summary()).await?;
    Ok(verified)
}

impl Verified {
    /// The counts of each finding, for the record (the ids themselves can be many).
    pub(crate) fn summary(&self) -> serde_json::Value {
        let groups: Vec<serde_json::Value> = self
            .groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "instance_id": g.instance_id,
                    "group": g.group,
                    "listed": g.listed,
                    "still_registered_open": g.still_registered_open.len(),
                    "still_registered_done": g.still_registered_done.len(),
                    "new_since_snapshot": g.new_since_snapshot.len(),
                    "requeued": g.requeued,
                    "added": g.added,
                })
            })
            .collect();
        let sample = self.sample.as_ref().map(|s| {
            serde_json::json!({
                "asked": s.asked,
                "confirmed": s.confirmed,
                "found": s.found.len(),
                "requeued": s.requeued,
            })
        });
        serde_json::json!({ "clean": self.clean(), "groups": groups, "sample": sample })
    }
}

/// Why a verification could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error(transparent)]
    List(#[from] ListError),
    #[error("asking for a credential: {0}")]
    Get(#[from] crate::registry::CallError),
    #[error("the database: {0}")]
    Store(#[from] sqlx::Error),
}
