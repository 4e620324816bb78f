//! Where workloads run: the local process supervisor behind `trefoil up`.
//!
//! From validated resources it builds a [`plan::Plan`] (control plane,
//! gateway proxies, and per `Workload` replica an app and its sidecar),
//! runs each process under a [`supervisor`] (log file, restart with
//! back-off, ordered stop, no orphans), probes readiness and keeps the
//! control plane's `Endpoints` and sidecar `Proxy` resources current. On a
//! node with DatapathRules it also runs the datapath agent ([`datapath`]).

pub mod api;
pub mod backoff;
pub mod child;
pub mod datapath;
pub mod event;
pub mod expand;
pub mod logs;
pub mod plan;
pub mod ports;
pub mod probe;
pub mod reconcile;
pub mod supervisor;
pub mod up;
pub mod view;

pub use event::{Event, Events, Summary};
pub use up::{up, UpError, UpOptions};
