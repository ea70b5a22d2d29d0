//! The OpenAPI actions deregd calls (onsmqtt 2020-04-20), by name. Each has its own
//! per-account budget in the pacing.

/// The OpenAPI actions deregd calls; each has its own per-account budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `UnRegisterDeviceCredential`: the job.
    UnRegister,
    /// `ListDeviceCredentialClientId`: a page of a group's ClientIds.
    List,
    /// `GetDeviceCredential`: whether one credential exists.
    Get,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::UnRegister, Action::List, Action::Get];

    /// The action's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Action::UnRegister => "UnRegisterDeviceCredential",
            Action::List => "ListDeviceCredentialClientId",
            Action::Get => "GetDeviceCredential",
        }
    }
}
