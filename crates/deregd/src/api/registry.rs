//! What a successful answer of the registry's actions carries: a page of a group's ClientIds
//! (`ListDeviceCredentialClientId`), or one credential (`GetDeviceCredential`). Whether an
//! answer is a success is [`crate::outcome::classify`]'s to say; this only reads the payload.
//! A Get answer carries the device's secret: only the ClientId is read from it, and nothing of
//! the body is kept.

use serde::{Deserialize, Deserializer};

/// Largest page the API serves.
pub(crate) const PAGE_SIZE: u32 = 100;

/// One page of a group's listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Page {
    pub(crate) client_ids: Vec<String>,
    /// The cursor to the next page, when the API pages by cursor (empty: the last page).
    pub(crate) next_token: Option<String>,
    /// Credentials in the group, when the answer says.
    pub(crate) total: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBody {
    device_credential_client_id_list: ListInner,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListInner {
    #[serde(default)]
    client_id_list: Vec<String>,
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    total: Option<u64>,
}

/// A count the vendor sends as a string ("250") in its metadata and as a number in one sample.
fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        Number(u64),
        Text(String),
    }
    Ok(match Option::<Count>::deserialize(d)? {
        None => None,
        Some(Count::Number(n)) => Some(n),
        Some(Count::Text(t)) => t.trim().parse().ok(),
    })
}

/// Reads a List answer's page.
pub(crate) fn parse_page(body: &[u8]) -> Result<Page, String> {
    let body: ListBody = serde_json::from_slice(body)
        .map_err(|e| format!("the listing's answer is not the expected JSON ({e})"))?;
    let inner = body.device_credential_client_id_list;
    Ok(Page {
        client_ids: inner.client_id_list,
        next_token: inner.next_token.filter(|t| !t.is_empty()),
        total: inner.total,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetBody {
    device_credential: GetInner,
}

/// Only the ClientId: the rest (the device's AccessKey and secret) is never read.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetInner {
    client_id: String,
}

/// Reads the ClientId of a Get answer's credential.
pub(crate) fn parse_credential(body: &[u8]) -> Result<String, String> {
    let body: GetBody = serde_json::from_slice(body)
        .map_err(|_| "the credential's answer is not the expected JSON".to_string())?;
    Ok(body.device_credential.client_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_its_ids_cursor_and_total_as_a_string_or_a_number() {
        let page = parse_page(
            br#"{"RequestId":"r","DeviceCredentialClientIdList":{"ClientIdList":["GID_a@@@1","GID_a@@@2"],
                "NextToken":"abc","PageNo":"1","PageSize":"2","Total":"250"}}"#,
        )
        .unwrap();
        assert_eq!(page.client_ids, ["GID_a@@@1", "GID_a@@@2"]);
        assert_eq!(page.next_token.as_deref(), Some("abc"));
        assert_eq!(page.total, Some(250));
        let page = parse_page(
            br#"{"DeviceCredentialClientIdList":{"ClientIdList":[],"NextToken":"","Total":0}}"#,
        )
        .unwrap();
        assert_eq!(
            page,
            Page {
                total: Some(0),
                ..Page::default()
            }
        );
        assert!(parse_page(b"{}").is_err());
    }

    #[test]
    fn a_credential_gives_its_client_id_and_its_secret_is_never_echoed() {
        let body = br#"{"RequestId":"r","DeviceCredential":{"ClientId":"GID_a@@@1","CreateTime":1,
            "DeviceAccessKeyId":"ak","DeviceAccessKeySecret":"TOPSECRET","InstanceId":"i","UpdateTime":2}}"#;
        assert_eq!(parse_credential(body).unwrap(), "GID_a@@@1");
        let bad = br#"{"DeviceCredential":{"DeviceAccessKeySecret":"TOPSECRET"}}"#;
        assert!(!parse_credential(bad).unwrap_err().contains("TOPSECRET"));
    }
}
