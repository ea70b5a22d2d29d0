//! `GetDeviceCredential` and `RegisterDeviceCredential` answers: one device credential.
//!
//! Field names and types follow the vendor SDK's model: times in unix milliseconds as numbers,
//! everything else strings. The answer carries the device's secret; nothing here logs it.

use serde_json::{json, Map, Value};

use super::super::answer::ApiError;
use super::super::registry::DeviceCredential;

/// `{"DeviceCredential": {..}}`.
pub(super) fn body(c: &DeviceCredential) -> Map<String, Value> {
    let credential = json!({
        "ClientId": c.client_id,
        "CreateTime": c.create_time_ms,
        "DeviceAccessKeyId": c.access_key_id,
        "DeviceAccessKeySecret": c.access_key_secret,
        "InstanceId": c.instance_id,
        "UpdateTime": c.update_time_ms,
    });
    Map::from_iter([("DeviceCredential".to_string(), credential)])
}

/// 400 `DeviceCredentialNotFound`.
pub(super) fn not_found() -> ApiError {
    ApiError::new(
        400,
        "DeviceCredentialNotFound",
        "The device credential is not found.",
    )
}
