//! Live state of upstream endpoints: load, passive (outlier) and active
//! health. It outlives config snapshots so a reload forgets nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trefoil_model::spec::OutlierDetection;

use crate::telemetry::metrics::{label, Label};

/// One upstream instance of a service.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub version: Label,
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once rather than per request.
    pub authority: http::uri::Authority,
    /// Requests in flight, for least-request balancing.
    pub in_flight: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Milliseconds since the registry's epoch until which the endpoint is ejected.
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    /// Result of active health checks (true until a check says otherwise).
    healthy: AtomicBool,
    epoch: Instant,
}

/// What an attempt against an endpoint ended with, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// The endpoint answered 5xx other than a gateway error.
    ServerError,
    /// 502/503/504, a connect failure, a reset or a timeout.
    GatewayError,
}

impl EndpointState {
    fn new(version: &str, addr: SocketAddr, epoch: Instant) -> Self {
        EndpointState {
            version: label(version),
            addr,
            authority: authority(addr),
            in_flight: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            epoch,
        }
    }

    /// The one endpoint of a request to its original destination. Made per
    /// request and kept nowhere: destinations are as many as clients choose,
    /// so they get no outlier or health state.
    pub(crate) fn original_destination(addr: SocketAddr) -> Self {
        EndpointState::new("", addr, Instant::now())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the balancer may pick it.
    pub(crate) fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub(crate) fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records an outcome; returns true when it caused an ejection.
    /// `may_eject` says whether the service's ejection cap allows one more.
    pub(crate) fn record(&self, outcome: Outcome, policy: Option<&OutlierDetection>, may_eject: impl FnOnce() -> bool) -> bool {
        let (errors_5xx, gateway) = match outcome {
            Outcome::Success => {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                return false;
            }
            Outcome::ServerError => {
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                (self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1, 0)
            }
            Outcome::GatewayError => {
                (self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1, self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1)
            }
        };
        let Some(policy) = policy else { return false };
        let tripped =
            policy.consecutive5xx.is_some_and(|n| errors_5xx >= n) || policy.consecutive_gateway_errors.is_some_and(|n| gateway >= n);
        if !tripped || self.is_ejected() || !may_eject() {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        // Each repeated ejection lasts longer, so a flapping endpoint stays out.
        let ms = policy.base_ejection_time.get().as_millis() as u64 * n.min(10) as u64;
        self.ejected_until_ms.store(self.now_ms() + ms, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        true
    }

    /// Time left in the current ejection.
    pub(crate) fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

/// Endpoint states by (service, address), shared by every snapshot.
#[derive(Debug)]
pub(crate) struct EndpointRegistry {
    endpoints: Mutex<HashMap<(String, SocketAddr), Arc<EndpointState>>>,
    epoch: Instant,
}

impl Default for EndpointRegistry {
    fn default() -> Self {
        EndpointRegistry { endpoints: Mutex::default(), epoch: Instant::now() }
    }
}

impl EndpointRegistry {
    /// The state of an endpoint, created on first sight.
    pub(crate) fn get(&self, service: &str, version: &str, addr: SocketAddr) -> Arc<EndpointState> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry((service.to_string(), addr)).or_insert_with(|| Arc::new(EndpointState::new(version, addr, self.epoch)));
        if &*entry.version != version {
            // The endpoint now serves another version: start afresh.
            *entry = Arc::new(EndpointState::new(version, addr, self.epoch));
        }
        entry.clone()
    }

    /// Forgets endpoints that no snapshot uses any more.
    pub(crate) fn retain(&self, keep: impl Fn(&str, &SocketAddr) -> bool) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(service, addr), _| keep(service, addr));
    }
}

fn authority(addr: SocketAddr) -> http::uri::Authority {
    // A socket address always renders as a valid authority.
    addr.to_string().parse().unwrap_or_else(|_| http::uri::Authority::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trefoil_model::Duration as D;

    fn policy() -> OutlierDetection {
        OutlierDetection {
            consecutive5xx: Some(3),
            consecutive_gateway_errors: None,
            base_ejection_time: D::from_secs(30),
            max_ejection_percent: 100.0,
        }
    }

    #[test]
    fn ejects_after_consecutive_errors_and_success_resets() {
        let reg = EndpointRegistry::default();
        let e = reg.get("web", "v1", "127.0.0.1:1".parse().unwrap());
        let p = policy();
        assert!(!e.record(Outcome::ServerError, Some(&p), || true));
        assert!(!e.record(Outcome::ServerError, Some(&p), || true));
        assert!(!e.record(Outcome::Success, Some(&p), || true));
        assert!(!e.record(Outcome::ServerError, Some(&p), || true));
        assert!(!e.record(Outcome::GatewayError, Some(&p), || true));
        assert!(e.record(Outcome::ServerError, Some(&p), || true));
        assert!(e.is_ejected() && !e.is_available());
        assert!(e.ejected_for().unwrap() > Duration::from_secs(29));
    }

    #[test]
    fn cap_prevents_ejection() {
        let reg = EndpointRegistry::default();
        let e = reg.get("web", "v1", "127.0.0.1:1".parse().unwrap());
        for _ in 0..5 {
            assert!(!e.record(Outcome::GatewayError, Some(&policy()), || false));
        }
        assert!(!e.is_ejected());
    }

    #[test]
    fn registry_keeps_state_across_lookups() {
        let reg = EndpointRegistry::default();
        let addr = "127.0.0.1:1".parse().unwrap();
        let a = reg.get("web", "v1", addr);
        a.set_healthy(false);
        assert!(!reg.get("web", "v1", addr).is_healthy());
        assert!(reg.get("web", "v2", addr).is_healthy(), "a version change starts afresh");
    }
}
