//! Trefoil's data plane. A request's path, top to bottom:
//! [`listener`] (accept, TLS, detect) -> [`http::proxy`] (the phases of one
//! request context: route, filters, body, request chain, mirror, attempts,
//! response chain, response edits, record) -> [`balancer`] -> [`upstream`]; [`tcp`] for opaque
//! streams. [`snapshot`] compiles resources into the tables all of these
//! read, swapped atomically by [`runtime`] on reload; the resources come from
//! files or from the control plane through [`control_client`].

pub mod admin;
pub mod balancer;
mod coarse_timer;
pub mod control_client;
mod datapath_link;
pub mod descriptors;
pub mod endpoint;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod h1_codec;
pub mod h1_pool;
pub mod health;
pub mod http;
pub mod listener;
pub mod listener_set;
mod memory;
pub mod runtime;
pub mod snapshot;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
mod woken;

pub use runtime::{load, run, ConfigSource, ProxyOptions, StartError};
