//! `Proxy`: settings of one proxy process that are not about traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Duration;

/// Process-wide proxy settings: admin listener, access log, tracing, draining.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySpec {
    /// Address of the admin listener (`/metrics`, `/ready`, `/config`, `/stats`).
    #[serde(default = "default_admin", deserialize_with = "crate::parsed::socket_addr")]
    pub admin: SocketAddr,
    /// Where JSON access-log lines go: `stdout` (default), `off`, or a file path.
    #[serde(default = "default_access_log")]
    pub access_log: String,
    /// Span export; absent means traces are propagated but not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(default = "default_drain")]
    pub drain_timeout: Duration,
    /// Set when the local runtime registered this proxy as a workload's sidecar;
    /// the control plane then generates its listeners and routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,
}

/// Where a sidecar listens and what it sits in front of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    pub workload: String,
    pub service: String,
    pub version: String,
    #[serde(default)]
    pub replica: u32,
    /// `ip:port` other proxies send this replica's traffic to.
    #[serde(deserialize_with = "crate::parsed::socket_addr")]
    pub inbound: SocketAddr,
    /// `ip:port` the app sends any outbound request to; routed by Host.
    #[serde(deserialize_with = "crate::parsed::socket_addr")]
    pub outbound: SocketAddr,
    /// `ip:port` the app itself listens on.
    #[serde(deserialize_with = "crate::parsed::socket_addr")]
    pub app: SocketAddr,
    /// Service name -> `ip:port` that reaches that service whatever the Host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "crate::parsed::socket_addrs")]
    pub upstreams: BTreeMap<String, SocketAddr>,
}

/// OTLP span export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSpec {
    /// OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318` (spans go to `/v1/traces`).
    pub otlp_endpoint: String,
    /// `service.name` of exported spans; defaults to the proxy's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Percentage of new traces that are sampled (incoming sampled flags are kept).
    #[serde(default = "default_sampling")]
    pub sampling_percent: f64,
}

pub fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_access_log() -> String {
    "stdout".to_string()
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}
fn default_sampling() -> f64 {
    100.0
}

impl ProxySpec {
    pub fn with_defaults() -> Self {
        ProxySpec { admin: default_admin(), access_log: default_access_log(), tracing: None, drain_timeout: default_drain(), sidecar: None }
    }
}
