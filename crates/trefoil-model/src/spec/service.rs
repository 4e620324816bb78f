//! `Service`: a named set of endpoints, grouped by version.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A service and, for services outside the runtime, its static endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Static endpoints; workloads of the runtime add theirs to these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// No endpoints of its own: each request goes to where its connection
    /// was addressed before a datapath rule redirected it to a transparent
    /// listener (Envoy's `ORIGINAL_DST` cluster, Istio's PassthroughCluster).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub original_destination: bool,
}

/// A port a service exposes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: AppProtocol,
}

/// What a service speaks, which decides how the proxy talks to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl AppProtocol {
    /// Whether upstream connections must use HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, AppProtocol::Http2 | AppProtocol::Grpc)
    }
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port`.
    #[serde(deserialize_with = "crate::parsed::socket_addr")]
    pub address: SocketAddr,
    /// The version this instance runs; backends select endpoints by it.
    #[serde(default)]
    pub version: String,
    /// Another proxy's mesh-TLS listener: reached with mutual TLS and this
    /// proxy's SVID. Set by the control plane.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mesh_tls: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}
