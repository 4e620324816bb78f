//! Trefoil's data plane. The folders are the layers a connection crosses,
//! top to bottom:
//!
//! - [`downstream`]: worker threads, listening sockets, accept, TLS
//!   handshake, protocol detection.
//! - [`http`]: one request's phases on one context ([`http::proxy`]: route,
//!   filters, body, request chain, mirror, attempts, response chain, response
//!   edits, record); [`tcp`] is its counterpart for opaque streams.
//! - [`upstream`]: picking an endpoint ([`upstream::balancer`], with
//!   [`upstream::endpoint`] and [`upstream::health`] state) and the
//!   connections to it ([`upstream::h1`], pooled hyper clients).
//!
//! Beside the request path: [`config`] compiles resources into the snapshot
//! all of these read, swapped atomically by [`runtime`] on reload (the
//! resources come from files or from the control plane through
//! [`config::control_client`]); [`telemetry`] is what the proxy tells about
//! the traffic, the admin listener included; [`sys`] holds process-level
//! helpers (descriptors, memory, timers); [`tls`] builds the TLS settings of
//! both ends.

pub mod config;
pub mod downstream;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod runtime;
pub mod sys;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use runtime::{load, run, ConfigSource, ProxyOptions, StartError};
