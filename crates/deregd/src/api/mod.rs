//! The upstream OpenAPI: [`signer`] (pure signing functions) and [`client`] (one signed HTTP call).
//! What an answer means is decided in one place only: [`crate::outcome::classify`].

pub mod client;
pub mod signer;

pub use client::{Answer, ApiClient, TransportError};

/// Product API version of `UnRegisterDeviceCredential`.
pub const API_VERSION: &str = "2020-04-20";
/// The one action this daemon calls.
pub const ACTION: &str = "UnRegisterDeviceCredential";
