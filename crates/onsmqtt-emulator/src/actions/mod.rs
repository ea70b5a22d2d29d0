//! The onsmqtt actions served: their names, their parameters and what each does to the registry.
//!
//! `parse` is pure (it runs outside the state lock); `perform` runs under it and is the only
//! place an action changes the registry. Parameter errors follow the gateway: `Missing<Name>`
//! for an absent parameter, `InvalidParameter.<Name>` for a malformed one.

mod credential;
mod list;

use serde_json::{Map, Value};

pub(crate) use list::ListSettings;

use super::answer::ApiError;
use super::auth::{param, Authenticated};
use super::state::State;

/// The only onsmqtt API version served.
pub const API_VERSION: &str = "2020-04-20";

/// Other real onsmqtt 2020-04-20 actions: known to the gateway, not served here.
const OTHER_ACTIONS: &[&str] = &[
    "RefreshDeviceCredential",
    "QueryTokenStatus",
    "ApplyToken",
    "RevokeToken",
    "BatchQuerySessionByClientIds",
    "QuerySessionByClientId",
    "QueryMqttTraceDevice",
    "QueryMqttTraceMessageOfClient",
    "QueryMqttTraceMessagePublish",
    "QueryMqttTraceMessageSubscribe",
    "SendMessage",
    "ListGroupId",
    "CreateGroupId",
    "DeleteGroupId",
    "QueryCustomAuthConnectBlack",
    "AddCustomAuthConnectBlack",
    "DeleteCustomAuthConnectBlack",
    "QueryCustomAuthIdentity",
    "AddCustomAuthIdentity",
    "UpdateCustomAuthIdentity",
    "DeleteCustomAuthIdentity",
    "QueryCustomAuthPermission",
    "AddCustomAuthPermission",
    "UpdateCustomAuthPermission",
    "DeleteCustomAuthPermission",
];

/// An onsmqtt action, for budgets and stats; `Other` stands for every action not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ActionKind {
    UnRegister,
    List,
    Get,
    Register,
    Other,
}

impl ActionKind {
    /// The kind of the action named `name`.
    pub(crate) fn from_name(name: &str) -> ActionKind {
        [
            ActionKind::UnRegister,
            ActionKind::List,
            ActionKind::Get,
            ActionKind::Register,
        ]
        .into_iter()
        .find(|k| k.name() == name)
        .unwrap_or(ActionKind::Other)
    }

    /// The action's name as the API spells it (`Other` for the rest).
    pub(crate) fn name(self) -> &'static str {
        match self {
            ActionKind::UnRegister => "UnRegisterDeviceCredential",
            ActionKind::List => "ListDeviceCredentialClientId",
            ActionKind::Get => "GetDeviceCredential",
            ActionKind::Register => "RegisterDeviceCredential",
            ActionKind::Other => "Other",
        }
    }
}

/// A parsed, valid request of a served action.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    UnRegister { instance: String, client: String },
    Get { instance: String, client: String },
    Register { instance: String, client: String },
    List(list::ListRequest),
}

impl Op {
    /// The request's InstanceId.
    pub(crate) fn instance(&self) -> &str {
        match self {
            Op::UnRegister { instance, .. }
            | Op::Get { instance, .. }
            | Op::Register { instance, .. } => instance,
            Op::List(l) => &l.instance,
        }
    }

    /// The kind of action.
    pub(crate) fn kind(&self) -> ActionKind {
        match self {
            Op::UnRegister { .. } => ActionKind::UnRegister,
            Op::Get { .. } => ActionKind::Get,
            Op::Register { .. } => ActionKind::Register,
            Op::List(_) => ActionKind::List,
        }
    }
}

/// `Missing<name>`: a required parameter is absent or empty.
pub(crate) fn required<'a>(
    params: &'a [(String, String)],
    name: &'static str,
) -> Result<&'a str, ApiError> {
    param(params, name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                400,
                format!("Missing{name}"),
                format!("{name} is mandatory for this action."),
            )
        })
}

/// `InvalidParameter.<name>`.
pub(crate) fn invalid(name: &str) -> ApiError {
    ApiError::new(
        400,
        format!("InvalidParameter.{name}"),
        format!("The specified parameter {name} is invalid."),
    )
}

/// Version, action and parameters of an authenticated request.
pub(crate) fn parse(auth: &Authenticated) -> Result<Op, ApiError> {
    if auth.version != API_VERSION {
        return Err(ApiError::new(
            400,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
        ));
    }
    let kind = ActionKind::from_name(&auth.action);
    if kind == ActionKind::Other {
        return Err(if OTHER_ACTIONS.contains(&auth.action.as_str()) {
            ApiError::new(404, "ApiNotSupport", "The API is not supported.")
        } else {
            ApiError::new(
                404,
                "InvalidAction.NotFound",
                "Specified api is not found, please check your url and method.",
            )
        });
    }
    if kind == ActionKind::List {
        return list::parse(&auth.params).map(Op::List);
    }
    let client = required(&auth.params, "ClientId")?.to_string();
    let instance = required(&auth.params, "InstanceId")?.to_string();
    if !is_valid_client_id(&client) {
        return Err(invalid("ClientId"));
    }
    Ok(match kind {
        ActionKind::UnRegister => Op::UnRegister { instance, client },
        ActionKind::Get => Op::Get { instance, client },
        _ => Op::Register { instance, client },
    })
}

/// Carries out `op` on the registry; returns the answer's fields (besides `RequestId`).
/// A deregistration that happens is counted in `stats.deregistered`.
pub(crate) fn perform(
    op: &Op,
    state: &mut State,
    list: ListSettings,
) -> Result<Map<String, Value>, ApiError> {
    match op {
        Op::UnRegister { instance, client } => {
            if state.registry.deregister(instance, client) {
                state.stats.deregistered += 1;
                Ok(Map::new())
            } else {
                Err(credential::not_found())
            }
        }
        Op::Get { instance, client } => state
            .registry
            .credential(instance, client)
            .map(|c| credential::body(&c))
            .ok_or_else(credential::not_found),
        Op::Register { instance, client } => {
            if !state.registry.register(instance, client) {
                return Err(ApiError::new(
                    400,
                    "DeviceCredentialExsit",
                    "The device credential already exists.",
                ));
            }
            let c = state.registry.credential(instance, client);
            Ok(credential::body(&c.expect("just registered")))
        }
        Op::List(req) => list::page(&state.registry, req, list),
    }
}

/// The documented ClientId rule: `GroupId@@@DeviceId`, at most 64 characters, letters, digits,
/// `-` and `_` besides the one separator; GroupId 7–64 characters starting `GID_` or `GID-`.
pub fn is_valid_client_id(client: &str) -> bool {
    if client.len() > 64 {
        return false;
    }
    let mut parts = client.split("@@@");
    let (Some(group), Some(device), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    is_valid_group_id(group) && !device.is_empty() && allowed(device)
}

fn allowed(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The documented GroupId rule: 7–64 characters, starting `GID_` or `GID-`, letters, digits,
/// `-` and `_`.
pub(crate) fn is_valid_group_id(group: &str) -> bool {
    (7..=64).contains(&group.len())
        && (group.starts_with("GID_") || group.starts_with("GID-"))
        && allowed(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_rule_matches_the_documentation() {
        assert!(is_valid_client_id("GID_test@@@test"));
        assert!(is_valid_client_id("GID-abc@@@d-1_x"));
        assert!(!is_valid_client_id("GID_te@@@x"), "GroupId shorter than 7");
        assert!(!is_valid_client_id("GROUP_test@@@x"));
        assert!(!is_valid_client_id("GID_test@@@"));
        assert!(!is_valid_client_id("GID_test@@test"));
        assert!(!is_valid_client_id("GID_test@@@a@@@b"));
        assert!(!is_valid_client_id("GID_test@@@a b"));
        assert!(!is_valid_client_id(&format!(
            "GID_test@@@{}",
            "x".repeat(55)
        )));
        assert!(is_valid_client_id(&format!(
            "GID_test@@@{}",
            "x".repeat(53)
        )));
    }

    #[test]
    fn action_names_round_trip_and_unknown_ones_are_other() {
        for k in [
            ActionKind::UnRegister,
            ActionKind::List,
            ActionKind::Get,
            ActionKind::Register,
        ] {
            assert_eq!(ActionKind::from_name(k.name()), k);
        }
        assert_eq!(ActionKind::from_name("ListGroupId"), ActionKind::Other);
    }
}
