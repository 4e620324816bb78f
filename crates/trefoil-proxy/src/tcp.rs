//! Opaque TCP forwarding: to a service's endpoints, or, on a transparent
//! listener, to the address each connection was sent to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::snapshot::ListenerConfig;
use crate::config::state::ProxyState;
use crate::sys::{descriptors, splice};
use crate::telemetry::access_log::{now_rfc3339, AccessRecord};
use crate::telemetry::metrics::{label, AuthzLabels, Label, TcpBytesLabels, TcpLabels};
use crate::upstream::endpoint::Outcome;
use trefoil_model::authz::{PolicySet, Request as AuthzRequest};

const CONNECT_ATTEMPTS: usize = 3;
/// The `service` label of passed-through connections: they have none.
const ORIGINAL_DESTINATION: &str = "original-destination";
/// How long a transparent listener waits to reach an original destination
/// (it has no service, so no `connectTimeout`): Envoy's default.
const ORIGINAL_DESTINATION_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection accepted for TCP forwarding: as it came, or after a mesh TLS handshake.
pub(crate) enum Downstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The connection to the endpoint: plain, or mesh TLS to another proxy.
enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Either end of a relay that is not two plain sockets.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// Connects to an endpoint of the listener's TCP backend and splices bytes
/// both ways; an endpoint that is another proxy's mesh listener is reached
/// with mesh TLS. `peer` is the SPIFFE id the handshake verified, which the
/// backend's authorization policies decide the connection by.
pub(crate) async fn forward(
    state: &Arc<ProxyState>,
    listener: &ListenerConfig,
    downstream: Downstream,
    client: SocketAddr,
    peer: Option<&str>,
) {
    let Some(cluster) = &listener.tcp_backend else {
        tracing::warn!(listener = %listener.name, %client, "no tcpBackend for non-HTTP traffic; closing");
        return;
    };
    if let Some(policies) = &listener.tcp_authz {
        let sni = match &downstream {
            Downstream::Tls(tls) => tls.get_ref().1.server_name().map(str::to_string),
            Downstream::Plain(_) => None,
        };
        if !authorize(state, listener, policies, client, peer, sni.as_deref(), &cluster.service.name) {
            return;
        }
    }
    let service = &cluster.service;
    let connect_timeout = service.limits.connect_timeout.get().max(Duration::from_millis(1));
    let mut previous = None;
    let mut upstream = None;
    let Some(held) = descriptors::try_hold_upstream() else {
        tracing::warn!(listener = %listener.name, service = %service.name, %client, "too many open connections; closing this one");
        return;
    };
    // A connect failure can go to another endpoint: no byte has been sent yet.
    for _ in 0..CONNECT_ATTEMPTS {
        let Some(endpoint) = cluster.balancer.pick(None, previous) else { break };
        match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint.addr)).await {
            Ok(Err(e)) if descriptors::is_exhaustion(&e) => break,
            Ok(Ok(s)) => {
                endpoint.record(Outcome::Success, service.policy.outlier_detection.as_ref(), || false);
                upstream = Some((s, endpoint));
                break;
            }
            _ => {
                endpoint.record(Outcome::GatewayError, service.policy.outlier_detection.as_ref(), || service.may_eject());
                previous = Some(endpoint.addr);
            }
        }
    }
    let Some((upstream, endpoint)) = upstream else {
        tracing::warn!(listener = %listener.name, service = %service.name, %client, "no TCP endpoint reachable");
        return;
    };
    let _ = upstream.set_nodelay(true);
    // Mesh TLS towards another proxy: the handshake before any byte moves.
    let mesh = service.client_key.mesh.as_ref().filter(|_| service.mesh_endpoints.contains(&endpoint.addr));
    let upstream = match mesh {
        None => Upstream::Plain(upstream),
        Some(mesh) => {
            // SVIDs carry no names: the mesh verifier checks the SPIFFE id.
            let name = rustls::pki_types::ServerName::from(endpoint.addr.ip());
            let connector = tokio_rustls::TlsConnector::from(mesh.0.clone());
            match tokio::time::timeout(connect_timeout, connector.connect(name, upstream)).await {
                Ok(Ok(tls)) => Upstream::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    tracing::warn!(listener = %listener.name, service = %service.name, endpoint = %endpoint.addr, error = %e, "mesh TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(listener = %listener.name, service = %service.name, endpoint = %endpoint.addr, "mesh TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let version = endpoint.version.clone();
    let metrics = &state.shared.metrics;
    metrics
        .tcp_connections
        .get_or_create(&TcpLabels { direction: listener.direction.clone(), service: service.name.clone(), version: version.clone() })
        .inc();
    endpoint.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result = match (downstream, upstream) {
        // Two plain sockets: spliced in the kernel.
        (Downstream::Plain(mut downstream), Upstream::Plain(mut upstream)) => relay(&mut downstream, &mut upstream).await,
        (downstream, upstream) => {
            let mut down: Box<dyn Duplex> = match downstream {
                Downstream::Plain(s) => Box::new(s),
                Downstream::Tls(s) => s,
            };
            let mut up: Box<dyn Duplex> = match upstream {
                Upstream::Plain(s) => Box::new(s),
                Upstream::Tls(s) => s,
            };
            tokio::io::copy_bidirectional(&mut *down, &mut *up).await
        }
    };
    drop(held);
    endpoint.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    count_bytes(state, listener, &service.name, &version, result.unwrap_or((0, 0)));
}

/// Phase: authorization of a whole connection, before any endpoint is
/// reached ([`PolicySet::evaluate_connection`]: HTTP-only fields never
/// grant it, and never spare it a deny). A refusal closes the connection,
/// is counted in `trefoil_authz_denied_total` and logged with the flag
/// `rbac_denied`, as a refused request is.
fn authorize(
    state: &ProxyState,
    listener: &ListenerConfig,
    policies: &PolicySet,
    client: SocketAddr,
    peer: Option<&str>,
    sni: Option<&str>,
    service: &str,
) -> bool {
    let headers = http::HeaderMap::new();
    let decision = policies.evaluate_connection(&AuthzRequest {
        principal: peer,
        source: Some(client.ip()),
        method: "",
        path: "",
        port: Some(listener.addr.port()),
        host: "",
        sni,
        headers: &headers,
    });
    let metrics = &state.shared.metrics;
    for audit in &decision.audited {
        metrics.authz_audited.get_or_create(&AuthzLabels { policy: audit.policy.clone(), rule: audit.rule.to_string() }).inc();
    }
    if decision.allowed {
        return true;
    }
    let (policy, rule) = decision.labels();
    let authz = match &decision.rule {
        Some(r) => format!("deny {}/{}", r.policy, r.rule),
        None => "default-deny".to_string(),
    };
    metrics.authz_denied.get_or_create(&AuthzLabels { policy, rule }).inc();
    tracing::info!(listener = %listener.name, %client, peer = peer.unwrap_or("(none)"), %authz, "connection refused by authorization policy");
    state.telemetry.load().access_log.write(&AccessRecord {
        time: now_rfc3339(),
        direction: &listener.direction,
        listener: &listener.name,
        client: client.to_string(),
        peer_identity: peer,
        protocol: "tcp",
        service,
        flag: "rbac_denied",
        authz: &authz,
        ..AccessRecord::default()
    });
    false
}

/// Bytes both ways until both ends are done, `(to upstream, to downstream)`:
/// in the kernel ([`splice::relay`]) when pipes can be had, else through
/// buffers here.
async fn relay(downstream: &mut TcpStream, upstream: &mut TcpStream) -> std::io::Result<(u64, u64)> {
    match splice::relay(downstream, upstream).await {
        Some(result) => result,
        None => tokio::io::copy_bidirectional(downstream, upstream).await,
    }
}

/// `trefoil_tcp_bytes_total` for one spliced connection: `(to upstream, to downstream)`.
fn count_bytes(state: &ProxyState, listener: &ListenerConfig, service: &Label, version: &Label, (up, down): (u64, u64)) {
    for (flow, n) in [("upstream", up), ("downstream", down)] {
        let labels = TcpBytesLabels { direction: listener.direction.clone(), service: service.clone(), version: version.clone(), flow };
        state.shared.metrics.tcp_bytes.get_or_create(&labels).inc_by(n);
    }
}

/// Where a connection accepted on a transparent listener was addressed: the
/// accepted socket's own address. `None` (logged) when it was addressed to
/// the listener itself, which has no other destination: forwarding would
/// connect the proxy to itself.
pub(crate) fn original_destination(listener: &ListenerConfig, downstream: &TcpStream, client: SocketAddr) -> Option<SocketAddr> {
    match downstream.local_addr() {
        Ok(original) if original == listener.addr => {
            // Normal for HTTP (an inline function's hop back); for bytes, `passthrough` says so.
            tracing::debug!(listener = %listener.name, %client, "a connection to the transparent listener's own address has no original destination");
            None
        }
        Ok(original) => Some(original),
        Err(e) => {
            tracing::warn!(listener = %listener.name, %client, error = %e, "no original destination");
            None
        }
    }
}

/// A connection a datapath rule steered to a transparent listener: it was
/// addressed to another host, `original` ([`original_destination`], found
/// once when it was accepted). Connects there and copies bytes both ways,
/// unchanged; one access-log line when it ends.
pub(crate) async fn passthrough(
    state: &Arc<ProxyState>,
    listener: &ListenerConfig,
    mut downstream: TcpStream,
    client: SocketAddr,
    original: Option<SocketAddr>,
) {
    let started = Instant::now();
    let Some(original) = original else {
        tracing::warn!(listener = %listener.name, %client, "no original destination to pass these bytes to; closing");
        return;
    };
    let Some(held) = descriptors::try_hold_upstream() else {
        tracing::warn!(listener = %listener.name, %client, "too many open connections; closing this one");
        return;
    };
    let (flag, bytes) = match tokio::time::timeout(ORIGINAL_DESTINATION_CONNECT_TIMEOUT, TcpStream::connect(original)).await {
        Ok(Ok(mut upstream)) => {
            let _ = upstream.set_nodelay(true);
            let labels =
                TcpLabels { direction: listener.direction.clone(), service: label(ORIGINAL_DESTINATION), version: Label::default() };
            state.shared.metrics.tcp_connections.get_or_create(&labels).inc();
            ("", relay(&mut downstream, &mut upstream).await.unwrap_or((0, 0)))
        }
        Ok(Err(_)) => ("upstream_connect_failure", (0, 0)),
        Err(_) => ("upstream_connect_timeout", (0, 0)),
    };
    drop(held);
    count_bytes(state, listener, &label(ORIGINAL_DESTINATION), &Label::default(), bytes);
    let telemetry = state.telemetry.load_full();
    let authority = original.to_string();
    telemetry.access_log.write(&AccessRecord {
        time: now_rfc3339(),
        direction: &listener.direction,
        listener: &listener.name,
        client: client.to_string(),
        protocol: "tcp",
        authority: &authority,
        upstream: flag.is_empty().then(|| authority.clone()),
        attempts: 1,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        flag,
        ..AccessRecord::default()
    });
}
