//! The upstream OpenAPI: [`signer`] (pure signing functions), [`http`] (the transport, with its
//! caps) and [`client`] (one signed call of any action). What an answer means is decided in
//! one place only: [`crate::outcome::classify`].

pub mod client;
pub mod http;
pub mod signer;

pub use client::ApiClient;
pub use http::{Answer, TransportError};

/// Product API version of the onsmqtt actions.
pub const API_VERSION: &str = "2020-04-20";

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
