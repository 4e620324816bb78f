//! Sample network functions for CNF chains. Each is a small HTTP server
//! speaking the HTTP/JSON call-out of `trefoil-chain`: the proxy POSTs a
//! call, the function answers with a verdict and the events it publishes.
//!
//! - [`policy`]: an access list by source address, path, header and method;
//! - [`inspect`]: multi-pattern content inspection of path, headers and body;
//! - [`antivirus`]: an adapter to a ClamAV daemon (a legacy network function
//!   wrapped into a chain step);
//! - [`ratelimit`]: token buckets keyed by client.
//!
//! Every function also answers Envoy's ext_authz `Check` on the same port
//! ([`ext_authz`]), for NetworkFunctions with `api: extAuthz`.
//!
//! The transport ([`server`]) and what a call looks like once decoded
//! ([`request`]) are shared; each function module only decides.

pub mod antivirus;
pub mod ext_authz;
pub mod inspect;
pub mod policy;
pub mod ratelimit;
pub mod request;
pub mod server;
pub mod verdict;

pub use request::Request;
pub use server::{serve, serve_connections, Function};
