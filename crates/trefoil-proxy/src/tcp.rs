//! Opaque TCP forwarding to a service's endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::descriptors;
use crate::endpoint::Outcome;
use crate::snapshot::ListenerConfig;
use crate::state::ProxyState;
use crate::telemetry::metrics::{TcpBytesLabels, TcpLabels};

const CONNECT_ATTEMPTS: usize = 3;

/// Connects to an endpoint of the listener's TCP backend and splices bytes both ways.
pub async fn forward(state: &Arc<ProxyState>, listener: &ListenerConfig, mut downstream: TcpStream, client: SocketAddr) {
    let Some(cluster) = &listener.tcp_backend else {
        tracing::warn!(listener = %listener.name, %client, "no tcpBackend for non-HTTP traffic; closing");
        return;
    };
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
    let Some((mut upstream, endpoint)) = upstream else {
        tracing::warn!(listener = %listener.name, service = %service.name, %client, "no TCP endpoint reachable");
        return;
    };
    let _ = upstream.set_nodelay(true);
    let version = endpoint.version.clone();
    let metrics = &state.shared.metrics;
    metrics
        .tcp_connections
        .get_or_create(&TcpLabels { direction: listener.direction.clone(), service: service.name.clone(), version: version.clone() })
        .inc();
    endpoint.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    drop(held);
    endpoint.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let (to_upstream, to_downstream) = result.unwrap_or((0, 0));
    for (flow, n) in [("upstream", to_upstream), ("downstream", to_downstream)] {
        metrics
            .tcp_bytes
            .get_or_create(&TcpBytesLabels {
                direction: listener.direction.clone(),
                service: service.name.clone(),
                version: version.clone(),
                flow,
            })
            .inc_by(n);
    }
}
