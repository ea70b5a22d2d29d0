//! `ListDeviceCredentialClientId`: one page of a group's ClientIds, by offset or by cursor.
//!
//! Offset pages are cut from the live registry at each call, so removals between calls shift
//! later pages; a cursor (the last ClientId returned, encoded) resumes strictly after itself,
//! so removals never make it skip. Numbers are strings, as in the vendor SDK's model.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::super::answer::ApiError;
use super::super::registry::{group_of, Registry};
use super::super::settings::ListPaging;
use super::{invalid, is_valid_group_id, required};

/// Largest `PageSize`.
const MAX_PAGE_SIZE: u32 = 100;

/// Prefix of the cursor tokens issued here.
const TOKEN_PREFIX: &str = "ct1.";

/// How listing answers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListSettings {
    /// Offset or cursor paging.
    pub paging: ListPaging,
    /// `Total` as a JSON number instead of a string.
    pub total_as_number: bool,
}

/// A valid listing request.
#[derive(Debug, Clone)]
pub(crate) struct ListRequest {
    pub instance: String,
    pub group: String,
    /// From 1.
    pub page_no: u32,
    /// 1 to 100.
    pub page_size: u32,
    /// The `NextToken` sent, if any (an empty one counts as none).
    pub token: Option<String>,
}

/// Checks the listing's parameters.
pub(super) fn parse(params: &[(String, String)]) -> Result<ListRequest, ApiError> {
    let instance = required(params, "InstanceId")?.to_string();
    let group = required(params, "GroupId")?.to_string();
    let page_size = required(params, "PageSize")?;
    let page_no = required(params, "PageNo")?;
    if !is_valid_group_id(&group) {
        return Err(invalid("GroupId"));
    }
    let page_size = page_size
        .parse::<u32>()
        .ok()
        .filter(|s| (1..=MAX_PAGE_SIZE).contains(s))
        .ok_or_else(|| invalid("PageSize"))?;
    let page_no = page_no
        .parse::<u32>()
        .ok()
        .filter(|&p| p >= 1)
        .ok_or_else(|| invalid("PageNo"))?;
    let token = super::super::auth::param(params, "NextToken")
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    Ok(ListRequest {
        instance,
        group,
        page_no,
        page_size,
        token,
    })
}

fn encode_token(last: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last);
    format!("{TOKEN_PREFIX}{b64}")
}

fn decode_token(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.strip_prefix(TOKEN_PREFIX)?)
        .ok()?;
    String::from_utf8(raw).ok()
}

/// One page of `req`'s group, as the answer's fields.
pub(super) fn page(
    registry: &Registry,
    req: &ListRequest,
    settings: ListSettings,
) -> Result<Map<String, Value>, ApiError> {
    let set = registry.group(&req.instance, &req.group);
    let total = set.map_or(0, |s| s.len());
    let size = req.page_size as usize;
    let skip = (u64::from(req.page_no) - 1) * u64::from(req.page_size);
    let skip = usize::try_from(skip).unwrap_or(usize::MAX);
    let cursor = settings.paging == ListPaging::Cursor;
    let after = match (&req.token, cursor) {
        (Some(token), true) => {
            let last = decode_token(token)
                .filter(|last| group_of(last) == req.group)
                .ok_or_else(|| invalid("NextToken"))?;
            Some(last)
        }
        _ => None,
    };
    let ids: Vec<&str> = match (set, &after) {
        (None, _) => Vec::new(),
        (Some(set), Some(last)) => set.page_after(last, size),
        (Some(set), None) => set.page_at(skip, size),
    };
    let mut list = json!({
        "ClientIdList": ids,
        "PageNo": req.page_no.to_string(),
        "PageSize": req.page_size.to_string(),
        "Total": if settings.total_as_number { json!(total) } else { json!(total.to_string()) },
    });
    if cursor {
        let more = match (set, ids.last()) {
            (Some(set), Some(last)) if ids.len() == size => !set.page_after(last, 1).is_empty(),
            _ => false,
        };
        let next = ids
            .last()
            .filter(|_| more)
            .map_or(String::new(), |l| encode_token(l));
        list["NextToken"] = Value::String(next);
    }
    Ok(Map::from_iter([(
        "DeviceCredentialClientIdList".to_string(),
        list,
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(page_no: u32, page_size: u32, token: Option<String>) -> ListRequest {
        ListRequest {
            instance: "i".into(),
            group: "GID_meter".into(),
            page_no,
            page_size,
            token,
        }
    }

    fn ids(fields: &Map<String, Value>) -> Vec<String> {
        let list = &fields["DeviceCredentialClientIdList"]["ClientIdList"];
        serde_json::from_value(list.clone()).unwrap()
    }

    #[test]
    fn offset_pages_shift_when_devices_are_removed_meanwhile() {
        let mut r = Registry::groups("i", [("GID_meter", 10)]);
        let offset = ListSettings::default();
        let first = page(&r, &req(1, 4, None), offset).unwrap();
        assert_eq!(first["DeviceCredentialClientIdList"]["Total"], "10");
        assert!(first["DeviceCredentialClientIdList"]
            .get("NextToken")
            .is_none());
        for id in ids(&first) {
            assert!(r.deregister("i", &id));
        }
        // Page 2 of what is left starts at the 9th original id: 4 were skipped.
        let second = page(&r, &req(2, 4, None), offset).unwrap();
        assert_eq!(ids(&second).len(), 2);
        assert_eq!(second["DeviceCredentialClientIdList"]["Total"], "6");
    }

    #[test]
    fn cursor_pages_are_stable_under_removals_and_end_with_an_empty_token() {
        let mut r = Registry::groups("i", [("GID_meter", 10)]);
        let cursor = ListSettings {
            paging: ListPaging::Cursor,
            total_as_number: true,
        };
        let mut seen = Vec::new();
        let mut token = None;
        for page_no in 1.. {
            let fields = page(&r, &req(page_no, 4, token.clone()), cursor).unwrap();
            let list = &fields["DeviceCredentialClientIdList"];
            assert!(list["Total"].is_number());
            for id in ids(&fields) {
                assert!(r.deregister("i", &id));
                seen.push(id);
            }
            let next = list["NextToken"].as_str().unwrap().to_string();
            if next.is_empty() {
                break;
            }
            token = Some(next);
        }
        assert_eq!(seen.len(), 10, "nothing skipped: {seen:?}");
        let other = Registry::groups("i", [("GID_other", 3)]);
        let foreign = req(2, 4, Some(encode_token("GID_other@@@dev-1")));
        assert_eq!(
            page(&other, &foreign, cursor).unwrap_err().code,
            "InvalidParameter.NextToken"
        );
        let garbage = req(2, 4, Some("nonsense".into()));
        assert_eq!(
            page(&other, &garbage, cursor).unwrap_err().code,
            "InvalidParameter.NextToken"
        );
    }

    #[test]
    fn parameters_are_required_and_checked() {
        let p = |pairs: &[(&str, &str)]| {
            let owned: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            parse(&owned).map_err(|e| e.code.to_string())
        };
        let full = [
            ("InstanceId", "i"),
            ("GroupId", "GID_meter"),
            ("PageSize", "100"),
            ("PageNo", "1"),
        ];
        assert!(p(&full).is_ok());
        for (i, code) in [
            "MissingInstanceId",
            "MissingGroupId",
            "MissingPageSize",
            "MissingPageNo",
        ]
        .into_iter()
        .enumerate()
        {
            let mut without = full.to_vec();
            without.remove(i);
            assert_eq!(p(&without).unwrap_err(), code);
        }
        let with = |k: &str, v: &'static str| {
            full.iter()
                .map(|&(n, x)| if n == k { (n, v) } else { (n, x) })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            p(&with("PageSize", "101")).unwrap_err(),
            "InvalidParameter.PageSize"
        );
        assert_eq!(
            p(&with("PageSize", "0")).unwrap_err(),
            "InvalidParameter.PageSize"
        );
        assert_eq!(
            p(&with("PageNo", "0")).unwrap_err(),
            "InvalidParameter.PageNo"
        );
        assert_eq!(
            p(&with("PageNo", "x")).unwrap_err(),
            "InvalidParameter.PageNo"
        );
        assert_eq!(
            p(&with("GroupId", "meter")).unwrap_err(),
            "InvalidParameter.GroupId"
        );
    }
}
