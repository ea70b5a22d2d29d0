//! The upstream OpenAPI: [`signer`] (pure signing functions), [`http`] (the transport, with its
//! caps) and [`client`] (one signed call of any action). What an answer means is decided in
//! one place only: [`crate::outcome::classify`].

pub(crate) mod client;
pub(crate) mod http;
pub(crate) mod proxy;
pub(crate) mod registry;
pub mod signer;

pub use client::ApiClient;
pub use http::{Answer, StampedEmpty, TransportError};

/// Product API version of the onsmqtt actions.
pub const API_VERSION: &str = "2020-04-20";

pub use crate::action::Action;
