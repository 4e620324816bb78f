//! Trefoil's data plane. The folders are the layers a connection crosses,
//! top to bottom:
//!
//! - `downstream/`: worker threads, listening sockets, accept, TLS
//!   handshake, protocol detection.
//! - `http/`: one request's phases on one context (`http/proxy.rs`: route,
//!   filters, body, request chain, mirror, attempts, response chain, response
//!   edits, record); `tcp.rs` is its counterpart for opaque streams.
//! - `upstream/`: picking an endpoint (`balancer`, with `endpoint` and
//!   `health` state) and the connections to it (`h1/` for plain HTTP/1, the
//!   pooled hyper clients for TLS and HTTP/2).
//!
//! Beside the request path: `config/` compiles resources into the snapshot
//! all of these read, swapped atomically by `lifecycle.rs` on reload (the
//! resources come from files or from the control plane through
//! `config/control_client.rs`); `telemetry/` is what the proxy tells about
//! the traffic, the admin listener included; `sys/` holds process-level
//! helpers (descriptors, memory, timers); `tls.rs` builds the TLS settings of
//! both ends; `identity.rs` holds the proxy's key and SVID.
//!
//! The modules are private: other crates see only the items re-exported
//! below.

mod config;
mod downstream;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod http;
mod identity;
mod lifecycle;
mod mesh_tls;
mod sys;
mod tcp;
mod telemetry;
mod tls;
mod upstream;

// What other crates use, and nothing more, so the compiler finds dead code:
// the binary runs a proxy, checks a config and raises the descriptor limit;
// the control plane's trace collector is tested against the spans proxies
// export.
pub use config::snapshot::check;
pub use lifecycle::{run, ConfigSource, ProxyOptions, StartError};
pub use sys::descriptors;
pub use telemetry::otlp;
