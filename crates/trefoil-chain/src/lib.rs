//! CNF service chains: the call-out protocol between a proxy and the network
//! functions a chain calls. Transport-free: the proxy sends the bytes.

pub mod call;
pub mod ext_authz;
pub mod handlers;
pub mod json;

pub use call::{Call, Event, ResponseHead, Verdict};

/// Why a function's answer could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON verdict: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid verdict: {0}")]
    Invalid(String),
}
