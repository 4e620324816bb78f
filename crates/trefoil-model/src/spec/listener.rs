//! `Listener`: where a proxy accepts traffic and what it speaks there.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::spec::BackendRef;
use crate::Duration;

/// One accepting socket of a proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerSpec {
    /// `ip:port` to bind.
    #[serde(deserialize_with = "crate::parsed::socket_addr")]
    pub address: SocketAddr,
    /// What the listener speaks.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// TLS termination; with `clientCa` the client must present a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Names of the routes served here; empty means every route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Where opaque TCP goes (`tcp`, and `auto` when the bytes are not HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_backend: Option<BackendRef>,
    /// The Proxy that serves this listener; absent means every proxy that is not a sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Every request here is addressed to this service, whatever its Host:
    /// the service's routes apply (a per-upstream port of a sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Value of the `direction` metric label.
    #[serde(default = "default_direction")]
    pub direction: String,
    /// How request paths are brought to one spelling before routing; on by default.
    #[serde(default, skip_serializing_if = "PathNormalization::is_default")]
    pub path_normalization: PathNormalization,
    /// How long a request's or response's body may go without progress.
    #[serde(default, skip_serializing_if = "ListenerTimeouts::is_default")]
    pub timeouts: ListenerTimeouts,
    /// Accepts connections addressed to other hosts that a datapath rule
    /// redirects here (bound with `IP_TRANSPARENT`), and forwards each to its
    /// original destination: bytes as they are (`tcp`, and `auto` when they
    /// are not HTTP), HTTP through the routes, whose `originalDestination`
    /// Service sends each request on to it. No `tcpBackend`, no `tls`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub transparent: bool,
    /// Mutual TLS with the proxy's SVID, peers verified against the mesh's
    /// trust bundle: set by the control plane on a sidecar's inbound
    /// listener, needs a proxy fed by a control plane. No `tls` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_tls: Option<MeshTls>,
    /// A request for a host no route here serves asks the control plane for
    /// that service and waits a bounded time for it (set by the control
    /// plane on the outbound listener of a sidecar whose Workload declares
    /// `calls`); needs a proxy fed by a control plane.
    #[serde(default, skip_serializing_if = "is_false")]
    pub on_demand: bool,
}

/// Whether a mesh-TLS listener also takes plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MeshTls {
    /// Mutual TLS only: a client without an SVID of the mesh is refused at the handshake.
    Strict,
    /// Mutual TLS or plaintext, told apart by the first byte (0x16 opens a TLS handshake).
    Permissive,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Idle limits on bodies, so that a client trickling (or never finishing) an
/// upload, or an upstream that stops mid-response, cannot hold a request,
/// its upstream connection and its descriptors forever. `0s` turns one off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTimeouts {
    /// Longest wait for the next bytes of a request body (nginx's
    /// `client_body_timeout`): 60 s.
    #[serde(default = "sixty_seconds")]
    pub request_body_idle: Duration,
    /// Longest wait for the next bytes of an upstream's response body once
    /// its headers arrived (Envoy's stream idle timeout): 5 min.
    #[serde(default = "five_minutes")]
    pub response_body_idle: Duration,
}

fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        ListenerTimeouts { request_body_idle: sixty_seconds(), response_body_idle: five_minutes() }
    }
}

impl ListenerTimeouts {
    fn is_default(&self) -> bool {
        *self == ListenerTimeouts::default()
    }
}

/// Path normalisation before routing, so `/x/../admin`, `//admin` and
/// `/%61dmin` meet the rules written for `/admin`. The upstream receives the
/// normalised path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathNormalization {
    /// Remove `.` and `..` segments (RFC 3986 §5.2.4) and decode escaped
    /// unreserved characters (`%61` is `a`).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Merge runs of slashes into one.
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// What an escaped slash (`%2F`, `%5C`) does.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

fn yes() -> bool {
    true
}

impl Default for PathNormalization {
    fn default() -> Self {
        PathNormalization { normalize: true, merge_slashes: true, escaped_slashes: EscapedSlashes::default() }
    }
}

impl PathNormalization {
    fn is_default(&self) -> bool {
        *self == PathNormalization::default()
    }
}

/// The action for an escaped slash in a path. Upstreams disagree on whether
/// `%2F` separates segments, so by default a request with one is refused
/// (400) rather than routed by one reading and served by the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// Refuse the request with 400.
    #[default]
    Reject,
    /// Forward it escaped, as part of the segment.
    Keep,
    /// Decode it into a slash, then normalise.
    Unescape,
}

fn default_direction() -> String {
    "inbound".to_string()
}

/// Listener protocols.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN under TLS); gRPC rides on HTTP/2.
    #[default]
    Http,
    /// HTTP/2 only.
    Http2,
    /// Opaque TCP to `tcpBackend`.
    Tcp,
    /// Sniff the first bytes: HTTP goes to the router, anything else to `tcpBackend`.
    Auto,
}

/// Server-side TLS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain file.
    pub certificate: String,
    /// PEM private key file.
    pub key: String,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}
