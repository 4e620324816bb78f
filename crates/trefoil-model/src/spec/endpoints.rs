//! `Endpoints`: the instances of a service that the runtime discovered.
//! Written by the runtime, not by people; named after the service.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Discovered instances of one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointsSpec {
    /// Every known instance, ready or not; only ready ones receive traffic.
    #[serde(default)]
    pub endpoints: Vec<DiscoveredEndpoint>,
}

/// One running replica, reached through its sidecar's inbound listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscoveredEndpoint {
    /// `ip:port` traffic for this replica goes to (its sidecar's inbound listener).
    #[serde(deserialize_with = "crate::parsed::socket_addr")]
    pub address: SocketAddr,
    pub version: String,
    /// The Workload and replica index it belongs to.
    #[serde(default)]
    pub workload: String,
    #[serde(default)]
    pub replica: u32,
    /// Whether its health probe passes right now.
    pub ready: bool,
}
