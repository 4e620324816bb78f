//! The `spec` of each resource kind.

pub mod listener;
pub mod proxy;
pub mod route;
pub mod service;
pub mod traffic_policy;

pub use listener::*;
pub use proxy::*;
pub use route::*;
pub use service::*;
pub use traffic_policy::*;
