//! Active health checks: each endpoint of a service with a `healthCheck`
//! policy is probed on an interval and leaves the balancer while it fails.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::task::JoinSet;
use trefoil_model::spec::HealthCheck;

use crate::config::snapshot::{ServiceConfig, Snapshot};
use crate::http::body;
use crate::telemetry::metrics::{EndpointLabels, Metrics};
use crate::upstream::endpoint::EndpointState;

/// Starts the checkers a snapshot asks for; dropping the set stops them.
pub(crate) fn start(snapshot: &Snapshot, shared: Arc<crate::config::snapshot::Shared>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for service in snapshot.services.values() {
        let Some(check) = service.policy.health_check.clone() else {
            // Without checks nothing may hold an endpoint down from an earlier config.
            for e in &service.endpoints {
                e.set_healthy(true);
            }
            continue;
        };
        for endpoint in &service.endpoints {
            let (service, endpoint, check, shared) = (service.clone(), endpoint.clone(), check.clone(), shared.clone());
            set.spawn(async move { run(service, endpoint, check, &shared.metrics).await });
        }
    }
    set
}

async fn run(service: Arc<ServiceConfig>, endpoint: Arc<EndpointState>, check: HealthCheck, metrics: &Metrics) {
    let labels = EndpointLabels { service: service.name.clone(), version: endpoint.version.clone(), endpoint: endpoint.addr.to_string() };
    let gauge = metrics.endpoint_healthy.get_or_create(&labels).clone();
    gauge.set(endpoint.is_healthy() as i64);
    // Spread first probes so a large config does not probe everything at once.
    tokio::time::sleep(check.interval.get().mul_f64(fastrand::f64() * 0.2)).await;
    let (mut fails, mut passes) = (0u32, 0u32);
    loop {
        let ok = probe(&service, &endpoint, &check).await;
        if ok {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        let verdict = if !ok && fails >= check.unhealthy_threshold {
            Some(false)
        } else if ok && passes >= check.healthy_threshold {
            Some(true)
        } else {
            None
        };
        if let Some(healthy) = verdict {
            if endpoint.set_healthy(healthy) {
                tracing::info!(service = %service.name, endpoint = %endpoint.addr, healthy, "health check changed endpoint state");
            }
            gauge.set(healthy as i64);
        }
        tokio::time::sleep(check.interval.get()).await;
    }
}

/// The largest health page read; a larger one fails the check.
const MAX_BODY: usize = 64 * 1024;

async fn probe(service: &ServiceConfig, endpoint: &EndpointState, check: &HealthCheck) -> bool {
    let timeout = check.timeout.get().max(Duration::from_millis(1));
    match &check.http_path {
        None => matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(endpoint.addr)).await, Ok(Ok(_))),
        Some(path) => {
            let version = if service.protocol.is_http2() { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
            let Ok(req) = http::Request::get(format!("{}://{}{}", service.scheme_for(endpoint.addr), endpoint.addr, path))
                .version(version)
                .header(http::header::HOST, &*service.name)
                .header(http::header::USER_AGENT, "trefoil-health-check")
                .body(body::empty())
            else {
                return false;
            };
            // The answer and its body within the timeout, the body read to a
            // bound: an endpoint that trickles or floods its health page must
            // not hold this check, or the proxy's memory, forever.
            let probe = async {
                let resp = service.client.current().request(req).await.ok()?;
                let ok = resp.status().is_success();
                http_body_util::Limited::new(resp.into_body(), MAX_BODY).collect().await.ok()?;
                Some(ok)
            };
            matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(true)))
        }
    }
}
