//! What the emulator is started with: keys, limits, registry, faults, listing and STS options.
//!
//! Every field has a default matching the vendor's documented behaviour, so callers write
//! `EmulatorSettings { x, ..EmulatorSettings::default() }`; `Debug` never shows a secret.

use std::net::SocketAddr;
use std::str::FromStr;

use super::{Faults, Registry};

/// One AccessKey the emulator accepts. `Debug` redacts the secret and the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// The AccessKeyId.
    pub id: String,
    /// The AccessKeySecret.
    pub secret: String,
    /// When set, requests with this key must present exactly this STS SecurityToken.
    pub security_token: Option<String>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AccessKey {
    /// A long-term key (no STS token).
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> AccessKey {
        AccessKey {
            id: id.into(),
            secret: secret.into(),
            security_token: None,
        }
    }
}

/// How `ListDeviceCredentialClientId` pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListPaging {
    /// By `PageNo` over the live registry: deleting while listing shifts later pages, so a
    /// client that deletes as it lists skips devices. Answers carry no `NextToken`.
    #[default]
    Offset,
    /// By `NextToken` (an opaque encoding of the last ClientId returned), stable under
    /// deletes; the last page carries an empty `NextToken`. A request without a token starts
    /// at `PageNo`.
    Cursor,
}

impl FromStr for ListPaging {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "offset" => Ok(ListPaging::Offset),
            "cursor" => Ok(ListPaging::Cursor),
            _ => Err(format!("expected `offset` or `cursor`, got `{s}`")),
        }
    }
}

/// Every UnRegister and Get of a ClientId of `group` answers `code` (after authentication,
/// throttling and parameter checks, before the seeded faults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFault {
    /// The GroupId (the part of the ClientId before `@@@`).
    pub group: String,
    /// The error `Code`, e.g. `InvalidParameter.GroupId` or `PermissionCheckFailed`; its HTTP
    /// status follows the gateway (500 for `InternalError`/`SystemOverFlow`, else 400).
    pub code: String,
}

impl FromStr for GroupFault {
    type Err = String;
    /// Parses `GID_x:CODE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((group, code)) if !group.is_empty() && valid_code(code) => Ok(GroupFault {
                group: group.to_string(),
                code: code.to_string(),
            }),
            _ => Err(format!("expected GROUP_ID:CODE, got `{s}`")),
        }
    }
}

/// `ListDeviceCredentialClientId` with `PageNo` = `page` answers `code`, for every such request
/// or only the first `times` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFault {
    /// The `PageNo` that fails (from 1).
    pub page: u32,
    /// The error `Code` (status as for [`GroupFault::code`]).
    pub code: String,
    /// How many times it fails before the page is served; `None`: always.
    pub times: Option<u32>,
}

impl FromStr for PageFault {
    type Err = String;
    /// Parses `N:CODE` or `N:CODE:TIMES`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("expected PAGE_NO:CODE or PAGE_NO:CODE:TIMES, got `{s}`");
        let mut parts = s.split(':');
        let page = parts
            .next()
            .and_then(|p| p.parse().ok())
            .filter(|&p| p >= 1);
        let code = parts.next().filter(|c| valid_code(c));
        let times = match parts.next() {
            None => Ok(None),
            Some(t) => t.parse().map(Some).map_err(|_| err()),
        };
        match (page, code, times, parts.next()) {
            (Some(page), Some(code), Ok(times), None) => Ok(PageFault {
                page,
                code: code.to_string(),
                times,
            }),
            _ => Err(err()),
        }
    }
}

fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
}

/// Everything the emulator is started with.
#[derive(Clone)]
pub struct EmulatorSettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Accepted long-term keys (each its own account). The first one's account also owns the
    /// role behind `AssumeRoleWithOIDC` and the ECS metadata service.
    pub keys: Vec<AccessKey>,
    /// Accepted `UnRegisterDeviceCredential` calls per sliding second, per account (the
    /// vendor's 500/s); requests of actions not served get a budget of this size of their own.
    /// STS calls are not throttled.
    pub rate_limit: u32,
    /// Accepted `ListDeviceCredentialClientId` calls per sliding second, per account.
    pub list_rate_limit: u32,
    /// Accepted `GetDeviceCredential` calls per sliding second, per account.
    pub get_rate_limit: u32,
    /// Accepted `RegisterDeviceCredential` calls per sliding second, per account.
    pub register_rate_limit: u32,
    /// Accepted calls per sliding second, per source IP, every onsmqtt action together;
    /// `None` for no limit.
    pub ip_limit: Option<u32>,
    /// Which credentials exist.
    pub registry: Registry,
    /// Faults to inject into otherwise-valid requests of every onsmqtt action.
    pub faults: Faults,
    /// Seed of the fault plan.
    pub seed: u64,
    /// When set, throttled answers carry `x-acs-retry-after: <ms>`, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// Instances the key has no permission on: accepted calls for them answer 400
    /// `InstancePermissionCheckFailed` (after throttling, before faults). Empty by default.
    pub forbidden_instances: Vec<String>,
    /// How listing pages.
    pub list_paging: ListPaging,
    /// Emit the listing's `Total` as a JSON number (one vendor sample does) instead of a string.
    pub list_total_as_number: bool,
    /// Listing pages that fail.
    pub list_page_faults: Vec<PageFault>,
    /// Groups whose UnRegister and Get calls fail.
    pub group_faults: Vec<GroupFault>,
    /// Longest lifetime of issued temporary credentials, in seconds: a set lives
    /// min(requested `DurationSeconds`, this).
    pub sts_duration_secs: u64,
    /// The OIDC token `AssumeRoleWithOIDC` accepts; `None`: no OIDC provider is registered.
    pub oidc_token: Option<String>,
}

impl std::fmt::Debug for EmulatorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorSettings")
            .field("listen", &self.listen)
            .field("keys", &self.keys)
            .field("rate_limit", &self.rate_limit)
            .field("list_rate_limit", &self.list_rate_limit)
            .field("get_rate_limit", &self.get_rate_limit)
            .field("register_rate_limit", &self.register_rate_limit)
            .field("ip_limit", &self.ip_limit)
            .field("registry", &format_args!("Registry {{ .. }}"))
            .field("faults", &self.faults)
            .field("seed", &self.seed)
            .field("retry_after_ms", &self.retry_after_ms)
            .field("forbidden_instances", &self.forbidden_instances)
            .field("list_paging", &self.list_paging)
            .field("list_total_as_number", &self.list_total_as_number)
            .field("list_page_faults", &self.list_page_faults)
            .field("group_faults", &self.group_faults)
            .field("sts_duration_secs", &self.sts_duration_secs)
            .field(
                "oidc_token",
                &self.oidc_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        EmulatorSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            keys: vec![AccessKey::new("testid", "testsecret")],
            rate_limit: 500,
            list_rate_limit: 10,
            get_rate_limit: 500,
            register_rate_limit: 500,
            ip_limit: None,
            registry: Registry::everything(),
            faults: Faults::default(),
            seed: 0,
            retry_after_ms: None,
            forbidden_instances: Vec::new(),
            list_paging: ListPaging::Offset,
            list_total_as_number: false,
            list_page_faults: Vec::new(),
            group_faults: Vec::new(),
            sts_duration_secs: 3600,
            oidc_token: None,
        }
    }
}

impl EmulatorSettings {
    /// Refuses settings the emulator cannot serve.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        self.faults.validate()?;
        anyhow::ensure!(!self.keys.is_empty(), "at least one access key is needed");
        for (name, limit) in [
            ("rate_limit", self.rate_limit),
            ("list_rate_limit", self.list_rate_limit),
            ("get_rate_limit", self.get_rate_limit),
            ("register_rate_limit", self.register_rate_limit),
        ] {
            anyhow::ensure!(limit > 0, "{name} must be at least 1");
        }
        anyhow::ensure!(
            self.sts_duration_secs > 0,
            "sts_duration_secs must be at least 1"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse_and_bad_ones_are_refused() {
        let g: GroupFault = "GID_bad:InvalidParameter.GroupId".parse().unwrap();
        assert_eq!(
            (g.group.as_str(), g.code.as_str()),
            ("GID_bad", "InvalidParameter.GroupId")
        );
        assert!("GID_bad".parse::<GroupFault>().is_err());
        assert!("GID_bad:".parse::<GroupFault>().is_err());
        assert!("GID_bad:bad code".parse::<GroupFault>().is_err());
        let p: PageFault = "7:InternalError".parse().unwrap();
        assert_eq!(
            (p.page, p.code.as_str(), p.times),
            (7, "InternalError", None)
        );
        let p: PageFault = "2:SystemOverFlow:3".parse().unwrap();
        assert_eq!(p.times, Some(3));
        for bad in [
            "0:InternalError",
            "x:InternalError",
            "7",
            "7:InternalError:x",
            "7:A:1:2",
        ] {
            assert!(bad.parse::<PageFault>().is_err(), "{bad}");
        }
        assert_eq!("cursor".parse::<ListPaging>(), Ok(ListPaging::Cursor));
        assert!("pages".parse::<ListPaging>().is_err());
    }
}
