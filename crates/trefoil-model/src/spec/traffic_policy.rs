//! `TrafficPolicy`: how a proxy talks to the endpoints of one service.

use serde::{Deserialize, Serialize};

use crate::parsed::HeaderName;
use crate::Duration;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    pub service: String,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// Written `roundRobin`, `leastRequest`, or `{ringHash: {header: NAME}}` / `{ringHash: {cookie: NAME}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    /// Power of two random choices by in-flight requests.
    LeastRequest,
    RingHash(HashOn),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
}

/// Limits that trip the circuit breaker (503 with `x-trefoil-overflow`).
/// The defaults are Envoy's: bounded, so that one client cannot make the
/// proxy open connections (and file descriptors) without end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// Upstream connections per endpoint (HTTP/1: one per request in flight).
    #[serde(default = "bounded")]
    pub max_connections: u32,
    /// Requests waiting for a connection, per service.
    #[serde(default = "bounded")]
    pub max_pending_requests: u32,
    /// Concurrent requests, per service.
    #[serde(default = "bounded")]
    pub max_requests: u32,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    #[serde(default = "default_idle")]
    pub idle_timeout: Duration,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool {
            max_connections: bounded(),
            max_pending_requests: bounded(),
            max_requests: bounded(),
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle(),
        }
    }
}

fn bounded() -> u32 {
    1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}

/// Passive health: endpoints that keep failing are ejected for a while.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default = "five", skip_serializing_if = "Option::is_none")]
    pub consecutive5xx: Option<u32>,
    #[serde(default = "five", skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// First ejection lasts this long; the n-th lasts n times as long.
    #[serde(default = "thirty_s")]
    pub base_ejection_time: Duration,
    /// Never eject more than this share of a service's endpoints.
    #[serde(default = "ten_pct")]
    pub max_ejection_percent: f64,
}

fn five() -> Option<u32> {
    Some(5)
}
fn thirty_s() -> Duration {
    Duration::from_secs(30)
}
fn ten_pct() -> f64 {
    10.0
}

/// Active health checks against every endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP GET of this path must answer 2xx; absent means a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    #[serde(default = "five_s")]
    pub interval: Duration,
    #[serde(default = "one_s")]
    pub timeout: Duration,
    #[serde(default = "two")]
    pub unhealthy_threshold: u32,
    #[serde(default = "one")]
    pub healthy_threshold: u32,
}

fn five_s() -> Duration {
    Duration::from_secs(5)
}
fn one_s() -> Duration {
    Duration::from_secs(1)
}
fn two() -> u32 {
    2
}
fn one() -> u32 {
    1
}

/// TLS origination to the service's endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    pub mode: TlsMode,
    /// CA bundle that must have signed the endpoints' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Client certificate and key presented for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Server name to verify; defaults to the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    /// Mesh mutual TLS with the proxies' SVIDs, and nothing else: the
    /// default between proxies of a mesh (no `ca`, `certificate`, `key`).
    Strict,
    /// Mesh mutual TLS from the proxies; the service's sidecars also accept
    /// plaintext (to migrate clients outside the mesh).
    Permissive,
    /// TLS from files, verifying the server only.
    Simple,
    /// TLS from files, with a client certificate.
    Mutual,
    /// Plaintext, also between proxies of a mesh (`trefoil check` warns).
    Disable,
}

impl TlsMode {
    /// Whether the mode is the mesh's own mutual TLS (SVIDs, no files).
    pub fn is_mesh(self) -> bool {
        matches!(self, TlsMode::Strict | TlsMode::Permissive)
    }
}
