//! The `spec` of each resource kind.

pub mod authorization_policy;
pub mod cnf;
pub mod datapath_rule;
pub mod endpoints;
pub mod event;
pub mod listener;
pub mod proxy;
pub mod rollout;
pub mod rollout_status;
pub mod route;
pub mod service;
pub mod traffic_policy;
pub mod workload;

pub use authorization_policy::*;
pub use cnf::*;
pub use datapath_rule::*;
pub use endpoints::*;
pub use event::*;
pub use listener::*;
pub use proxy::*;
pub use rollout::*;
pub use rollout_status::*;
pub use route::*;
pub use service::*;
pub use traffic_policy::*;
pub use workload::*;
