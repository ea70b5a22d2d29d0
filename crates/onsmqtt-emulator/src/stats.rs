//! The counters the emulator reports: a plain snapshot, served as JSON and printed at stop.
//!
//! Top-level fields keep the meaning they had when UnRegister was the only action (successes
//! are deregistrations); everything per action, per source address, STS and metadata is in
//! the nested maps and structs.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counts of injected faults, by kind.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct FaultCounts {
    /// 500 `SystemOverFlow` answers.
    pub system_overflow: u64,
    /// 500 `InternalError` answers.
    pub internal_error: u64,
    /// 400 `ApplyTokenOverFlow` answers.
    pub apply_token_overflow: u64,
    /// Connections reset without an answer.
    pub reset: u64,
    /// Requests left unanswered for `hang_ms`, then closed.
    pub hang: u64,
    /// HTML 502 pages.
    pub malformed_html: u64,
    /// 200 answers with a truncated JSON body.
    pub malformed_truncated: u64,
    /// 200 answers with an empty body.
    pub malformed_empty: u64,
    /// Answers of a failing group (`EmulatorSettings::group_faults`).
    pub group: u64,
    /// Failed listing pages (`EmulatorSettings::list_page_faults`).
    pub list_page: u64,
}

/// What one onsmqtt action saw.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ActionStats {
    /// Requests naming this action (any outcome, authentication failures included).
    pub calls: u64,
    /// Requests that passed authentication and throttling.
    pub accepted: u64,
    /// Throttled answers (its own per-account limit and the per-IP limit).
    pub throttled: u64,
    /// Successful answers (each adds one to the instance's billed TPS).
    pub successes: u64,
    /// Successful answers per InstanceId.
    pub successes_by_instance: BTreeMap<String, u64>,
    /// Answers per `Code`; successes count under `"OK"`.
    pub by_code: BTreeMap<String, u64>,
    /// Most accepted requests of this action in any sliding second, all keys together.
    pub max_accepted_per_sliding_second: u64,
    /// Most successes of this action in any sliding second.
    pub max_successes_per_sliding_second: u64,
}

/// What one source address sent, all onsmqtt actions together (the vendor's per-IP limit).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct SourceStats {
    /// Requests from this address (any outcome, STS excluded).
    pub calls: u64,
    /// Requests that passed authentication and throttling.
    pub accepted: u64,
    /// Throttled answers to this address (by any limit).
    pub throttled: u64,
    /// Most accepted requests in any sliding second from this address.
    pub max_accepted_per_sliding_second: u64,
}

/// What the STS endpoint (`Version=2015-04-01`) did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct StsStats {
    /// STS requests (any outcome).
    pub calls: u64,
    /// STS answers per `Code`; successes count under `"OK"`.
    pub by_code: BTreeMap<String, u64>,
    /// Temporary credential sets issued, by every source together.
    pub issued: u64,
    /// Issued sets per source: `AssumeRole`, `AssumeRoleWithOIDC`, `EcsMetadata`, `Direct`.
    pub issued_by_source: BTreeMap<String, u64>,
    /// OpenAPI calls refused because their temporary credentials had expired.
    pub expired_rejected: u64,
}

/// What the ECS metadata service did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct MetadataStats {
    /// Requests to the metadata service (any path, any outcome).
    pub requests: u64,
    /// IMDSv2 session tokens handed out.
    pub tokens_issued: u64,
    /// Credential documents served (role path and credentials URI).
    pub credentials_served: u64,
    /// Requests refused: a missing (IMDSv1 disabled), unknown or expired session token.
    pub refused: u64,
}

/// A snapshot of what the emulator saw. Also served as JSON at `GET /__emulator/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Every API request that reached the emulator (the stats endpoint excluded).
    pub total_requests: u64,
    /// Answers per error `Code`, every onsmqtt action together (STS apart); successes of any
    /// action count under `"OK"`.
    pub by_code: BTreeMap<String, u64>,
    /// Successful deregistrations (HTTP 200 with a RequestId, not faulted).
    pub successes: u64,
    /// Successful deregistrations per InstanceId.
    pub successes_by_instance: BTreeMap<String, u64>,
    /// Successful calls of every onsmqtt action per InstanceId (what the billed TPS counts).
    pub billed_by_instance: BTreeMap<String, u64>,
    /// onsmqtt requests that passed authentication and throttling, every action together.
    pub accepted: u64,
    /// Most accepted onsmqtt requests in any sliding one-second window, every key and action
    /// together (account-wide across actions).
    pub max_accepted_per_sliding_second: u64,
    /// Most accepted requests in any sliding one-second window, per AccessKeyId.
    pub max_accepted_per_sliding_second_by_key: BTreeMap<String, u64>,
    /// Most accepted requests in any sliding one-second window, per account (a long-term key
    /// is its own account; temporary keys count for the account that they were issued to).
    pub max_accepted_per_sliding_second_by_account: BTreeMap<String, u64>,
    /// Most arrivals (any outcome) in any sliding one-second window.
    pub max_arrivals_per_sliding_second: u64,
    /// Most arrivals with a known AccessKeyId in any sliding one-second window, per key.
    pub max_arrivals_per_sliding_second_by_key: BTreeMap<String, u64>,
    /// Most successful deregistrations in any sliding one-second window.
    pub max_successes_per_sliding_second: u64,
    /// Most successful onsmqtt calls of any action in any sliding one-second window.
    pub max_billed_per_sliding_second: u64,
    /// Most API requests being handled at once (from the request read to the answer written,
    /// added latency and hangs included).
    pub max_concurrent: u64,
    /// `SignatureDoesNotMatch` answers.
    pub signature_failures: u64,
    /// Throttled answers (per-account-and-action and per-IP together).
    pub throttled: u64,
    /// Throttled answers caused by the per-IP limit.
    pub throttled_by_ip: u64,
    /// Per onsmqtt action (`UnRegisterDeviceCredential`, `ListDeviceCredentialClientId`,
    /// `GetDeviceCredential`, `RegisterDeviceCredential`, `Other`).
    pub by_action: BTreeMap<String, ActionStats>,
    /// Per source IP address, every onsmqtt action together.
    pub by_source_ip: BTreeMap<String, SourceStats>,
    /// Faults injected, per kind.
    pub faults_injected: FaultCounts,
    /// Deregistrations that happened server-side although the client got a fault.
    pub deregistered_under_fault: u64,
    /// All deregistrations that happened server-side (successes plus those under a fault).
    pub deregistered: u64,
    /// Registered credentials remaining, when the registry is finite.
    pub registry_remaining: Option<u64>,
    /// Nonces currently remembered (bounded by the TTL and a hard cap).
    pub nonces_remembered: u64,
    /// STS calls and issued temporary credentials.
    pub sts: StsStats,
    /// The ECS metadata service.
    pub metadata: MetadataStats,
    /// Wall-clock time of the first API request, unix microseconds (for rate measurements
    /// by another process).
    pub first_arrival_unix_us: Option<u64>,
    /// Wall-clock time of the latest API request, unix microseconds.
    pub last_arrival_unix_us: Option<u64>,
}
