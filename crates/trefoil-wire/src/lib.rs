//! The config stream between the control plane and its proxies: the gRPC
//! messages (prost, written by hand; `proto/config.proto` documents them)
//! and the client and server glue for its one method,
//! `/trefoil.config.v1.ConfigStream/Stream`; and, on the same port, the
//! `trefoil.datapath.v1.Datapath` rules service (`datapath`).

pub mod client;
pub mod datapath;
pub mod messages;
pub mod server;
mod service;
pub mod tls;

use std::time::Duration;

pub use client::{BadToken, ClientError, ConfigStreamClient};
pub use messages::{proxy_message, Ack, CertificateRequest, Hello, IdentityAnswer, Lookup, Nack, ProxyMessage, Snapshot, AGENT};
pub use server::{serve, serve_with_datapath, serve_with_datapath_tls, ConfigStream, ConfigStreamServer};
pub use tls::{ClientTls, PeerInfo};
pub use tonic::transport::Error as TransportError;
pub use tonic::{Code, Request, Response, Status, Streaming};

/// The gRPC service name.
pub const SERVICE: &str = "trefoil.config.v1.ConfigStream";
/// The path of the stream method.
pub const STREAM_PATH: &str = "/trefoil.config.v1.ConfigStream/Stream";
/// Snapshots of large configs outgrow gRPC's 4 MiB default.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How often an idle connection is pinged, and how long an answer may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
