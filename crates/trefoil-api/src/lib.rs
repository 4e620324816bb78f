//! The control plane's REST API as types: what `trefoil-control` serves and
//! what every client (the CLI, the local runtime, the benchmark, the test
//! helpers) reads, in one place, so the server and its clients cannot
//! drift apart and no client looks fields up by string.
//!
//! - `resources`: lists, watch lines, deletions, writes (the resources
//!   themselves are `trefoil_model::Resource`);
//! - `proxies`: proxy status and the one "in sync" rule;
//! - `traces`: spans, the recent-traces list, follow lines;
//! - `flows`: datapath flow records, the agents' reports, their follow lines;
//! - `rollouts`: the manual overrides and their answer;
//! - `tokens`: roles, bearer tokens and the audit log;
//! - `error`: the error body every 4xx and 5xx carries;
//! - `client`: the async client; `blocking`: the same for synchronous code.
//!
//! Versions (`resourceVersion`, snapshot versions, `compiledRevision`) are
//! one type, `trefoil_model::ResourceVersion`.

pub mod blocking;
pub mod client;
pub mod error;
pub mod flows;
pub mod proxies;
pub mod resources;
pub mod rollouts;
pub mod tokens;
pub mod traces;

pub use client::{ApiError, Client, Lines};
pub use error::ErrorBody;
pub use proxies::{Applied, AppliedNack, ControlPlaneStatus, Nack, ProxyStatus, ProxyStatusList};
pub use resources::{Deleted, List, WatchEvent, Written};
pub use rollouts::{RolloutActed, RolloutAction};
pub use tokens::{
    AuditEntry, AuditList, CreateLoginCode, CreateToken, CreatedToken, Login, LoginCode, Revoked, Role, TokenInfo, TokenList,
};
pub use trefoil_model::ResourceVersion;
