//! Picks an endpoint of a cluster: round robin, least request (power of two
//! choices) or a consistent-hash ring keyed by a header or cookie.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use trefoil_model::spec::{HashOn, LoadBalancer};

use crate::upstream::endpoint::EndpointState;

/// Virtual nodes per endpoint on the hash ring; enough for an even spread.
const VNODES: usize = 128;

/// A balancer over a fixed endpoint list.
#[derive(Debug)]
pub(crate) struct Balancer {
    endpoints: Vec<Arc<EndpointState>>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    RoundRobin(AtomicUsize),
    LeastRequest,
    RingHash { on: HashOn, ring: Vec<(u64, usize)> },
}

impl Balancer {
    pub(crate) fn new(policy: &LoadBalancer, endpoints: Vec<Arc<EndpointState>>) -> Self {
        let kind = match policy {
            LoadBalancer::RoundRobin => Kind::RoundRobin(AtomicUsize::new(fastrand::usize(..=endpoints.len()))),
            LoadBalancer::LeastRequest => Kind::LeastRequest,
            LoadBalancer::RingHash(on) => {
                let mut ring: Vec<(u64, usize)> = endpoints
                    .iter()
                    .enumerate()
                    .flat_map(|(i, e)| (0..VNODES).map(move |v| (hash(format!("{}#{v}", e.addr).as_bytes()), i)))
                    .collect();
                ring.sort_unstable();
                Kind::RingHash { on: on.clone(), ring }
            }
        };
        Balancer { endpoints, kind }
    }

    /// What the ring hash keys on, so the caller can extract it from the request.
    pub(crate) fn hash_on(&self) -> Option<&HashOn> {
        match &self.kind {
            Kind::RingHash { on, .. } => Some(on),
            _ => None,
        }
    }

    /// Picks an available endpoint, preferring one other than `avoid` (the
    /// endpoint a retried attempt just failed on).
    pub(crate) fn pick(&self, hash_key: Option<&[u8]>, avoid: Option<SocketAddr>) -> Option<Arc<EndpointState>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let usable = |e: &EndpointState| e.is_available() && Some(e.addr) != avoid;
        let picked = match &self.kind {
            Kind::RoundRobin(next) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| &self.endpoints[(start + i) % n]).find(|e| usable(e))
            }
            Kind::LeastRequest => {
                let candidates: Vec<&Arc<EndpointState>> = self.endpoints.iter().filter(|e| usable(e)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let a = fastrand::usize(..len);
                        let b = (a + 1 + fastrand::usize(..len - 1)) % len;
                        let (ea, eb) = (candidates[a], candidates[b]);
                        Some(if eb.in_flight.load(Ordering::Relaxed) < ea.in_flight.load(Ordering::Relaxed) { eb } else { ea })
                    }
                }
            }
            Kind::RingHash { ring, .. } => {
                let key = match hash_key {
                    Some(k) => hash(k),
                    None => fastrand::u64(..),
                };
                let start = ring.partition_point(|(h, _)| *h < key);
                (0..ring.len()).map(|i| &self.endpoints[ring[(start + i) % ring.len()].1]).find(|e| usable(e))
            }
        };
        // With only the avoided endpoint left, using it beats failing.
        picked.cloned().or_else(|| avoid.and_then(|_| self.endpoints.iter().find(|e| e.is_available()).cloned()))
    }
}

/// FNV-1a with a final mix: stable across processes, so every proxy maps a key alike.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::upstream::endpoint::EndpointRegistry;

    fn endpoints(reg: &EndpointRegistry, n: u16) -> Vec<Arc<EndpointState>> {
        (1..=n).map(|p| reg.get("web", "v1", SocketAddr::from(([127, 0, 0, 1], p)))).collect()
    }

    #[test]
    fn round_robin_is_even_and_skips_unhealthy() {
        let reg = EndpointRegistry::default();
        let eps = endpoints(&reg, 3);
        let b = Balancer::new(&LoadBalancer::RoundRobin, eps.clone());
        let mut counts = HashMap::new();
        for _ in 0..300 {
            *counts.entry(b.pick(None, None).unwrap().addr.port()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|c| *c == 100), "{counts:?}");
        eps[1].set_healthy(false);
        for _ in 0..10 {
            assert_ne!(b.pick(None, None).unwrap().addr.port(), 2);
        }
    }

    #[test]
    fn least_request_prefers_idle() {
        let reg = EndpointRegistry::default();
        let eps = endpoints(&reg, 2);
        eps[0].in_flight.store(10, Ordering::Relaxed);
        let b = Balancer::new(&LoadBalancer::LeastRequest, eps);
        for _ in 0..20 {
            assert_eq!(b.pick(None, None).unwrap().addr.port(), 2);
        }
    }

    #[test]
    fn ring_hash_is_sticky_and_spreads() {
        let reg = EndpointRegistry::default();
        let b = Balancer::new(&LoadBalancer::RingHash(HashOn::Header("x-user".parse().unwrap())), endpoints(&reg, 4));
        let mut seen = HashMap::new();
        for user in 0..400 {
            let key = format!("user-{user}");
            let first = b.pick(Some(key.as_bytes()), None).unwrap().addr;
            assert_eq!(b.pick(Some(key.as_bytes()), None).unwrap().addr, first);
            *seen.entry(first.port()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 4);
        assert!(seen.values().all(|c| *c > 50), "{seen:?}");
    }

    #[test]
    fn avoid_prefers_another_endpoint() {
        let reg = EndpointRegistry::default();
        let eps = endpoints(&reg, 2);
        let b = Balancer::new(&LoadBalancer::RoundRobin, eps.clone());
        for _ in 0..10 {
            assert_eq!(b.pick(None, Some(eps[0].addr)).unwrap().addr, eps[1].addr);
        }
        eps[1].set_healthy(false);
        assert_eq!(b.pick(None, Some(eps[0].addr)).unwrap().addr, eps[0].addr);
    }
}
