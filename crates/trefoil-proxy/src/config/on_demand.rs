//! On-demand lookups: a scoped sidecar's snapshot holds only the services
//! its workload declares it calls; a request for any other host asks the
//! control plane for that service and waits, a bounded time, for the
//! snapshot that brings it (Envoy's on-demand discovery, Linkerd's
//! destination lookups). The service then stays in the proxy's scope, and
//! the proxy names it again in its Hello after a reconnect.
//!
//! A lookup the control plane answers with a miss is remembered until the
//! next snapshot, so requests for a host the mesh does not have fail fast
//! instead of each waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Longest a request waits for the snapshot its lookup brings.
pub(crate) const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Most services one proxy looks up (the control plane keeps as many).
const MAX_LOOKED_UP: usize = 1024;
/// Most misses remembered between two snapshots.
const MAX_MISSES: usize = 4096;

#[derive(Default)]
struct Inner {
    /// Asked for, not yet sent on the stream.
    pending: Vec<String>,
    /// Every service asked for (and sent, or pending).
    asked: BTreeSet<String>,
    /// Services the control plane said it does not have, with the snapshot
    /// version in force when it said so.
    misses: BTreeMap<String, u64>,
}

/// The proxy's lookups, shared by the request path and the stream client.
pub(crate) struct OnDemand {
    inner: Mutex<Inner>,
    /// Wakes the stream client when there is something to send.
    wake: Notify,
    /// Bumped on every answer: a snapshot applied or a miss.
    answered: watch::Sender<u64>,
}

impl Default for OnDemand {
    fn default() -> Self {
        OnDemand { inner: Mutex::default(), wake: Notify::new(), answered: watch::Sender::new(0) }
    }
}

/// What became of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Looked {
    /// A newer snapshot is in force: route the request again.
    NewSnapshot,
    /// The mesh has no such service, or no answer came in time.
    Nothing,
}

impl OnDemand {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for `service` (unless a miss for it stands at `version`, the
    /// snapshot in force) and waits until a newer snapshot is in force, the
    /// control plane says it has no such service, or [`LOOKUP_WAIT`] passes.
    /// `current` reads the version in force.
    pub(crate) async fn look_up(&self, service: &str, version: u64, current: impl Fn() -> u64) -> Looked {
        let mut answers = self.answered.subscribe();
        {
            let mut inner = self.lock();
            if inner.misses.get(service) == Some(&version) {
                return Looked::Nothing;
            }
            if inner.asked.len() >= MAX_LOOKED_UP && !inner.asked.contains(service) {
                return Looked::Nothing;
            }
            // Asked again even if asked before: the answer may have been
            // lost with a stream, and the control plane's answer is cheap.
            inner.asked.insert(service.to_string());
            if !inner.pending.iter().any(|p| p == service) {
                inner.pending.push(service.to_string());
            }
        }
        self.wake.notify_one();
        let waiting = async {
            loop {
                if current() > version {
                    return Looked::NewSnapshot;
                }
                if self.lock().misses.contains_key(service) {
                    return Looked::Nothing;
                }
                if answers.changed().await.is_err() {
                    return Looked::Nothing;
                }
            }
        };
        tokio::time::timeout(LOOKUP_WAIT, waiting).await.unwrap_or(Looked::Nothing)
    }

    /// Waits until a lookup is pending, then takes them all (the stream
    /// client sends each).
    pub(crate) async fn pending(&self) -> Vec<String> {
        loop {
            let notified = self.wake.notified();
            let taken = std::mem::take(&mut self.lock().pending);
            if !taken.is_empty() {
                return taken;
            }
            notified.await;
        }
    }

    /// Every service looked up so far, for the Hello of a new stream.
    pub(crate) fn looked_up(&self) -> Vec<String> {
        self.lock().asked.iter().cloned().collect()
    }

    /// A new snapshot is in force: misses are worth asking again.
    pub(crate) fn snapshot_applied(&self) {
        self.lock().misses.clear();
        self.answered.send_modify(|n| *n += 1);
    }

    /// The control plane has no `service` (as of snapshot `version`).
    pub(crate) fn missed(&self, service: &str, version: u64) {
        {
            let mut inner = self.lock();
            if inner.misses.len() >= MAX_MISSES {
                inner.misses.clear();
            }
            inner.misses.insert(service.to_string(), version);
            inner.asked.remove(service);
        }
        self.answered.send_modify(|n| *n += 1);
    }
}

/// The service a request's host names: the host without a port, in lower
/// case (a sidecar's app calls `api` or `api:8080`); `None` for an address.
pub(crate) fn service_of(host: &str) -> Option<String> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.to_ascii_lowercase();
    trefoil_model::valid_name(&name).then_some(name).filter(|n| n.parse::<std::net::IpAddr>().is_err())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn hosts_name_services() {
        assert_eq!(service_of("api"), Some("api".to_string()));
        assert_eq!(service_of("API:8080"), Some("api".to_string()));
        assert_eq!(service_of("10.0.0.1"), None);
        assert_eq!(service_of("10.0.0.1:80"), None);
        assert_eq!(service_of("bad/name"), None);
        assert_eq!(service_of(""), None);
    }

    #[tokio::test]
    async fn a_lookup_waits_for_the_next_snapshot() {
        let on_demand = Arc::new(OnDemand::default());
        let version = Arc::new(AtomicU64::new(3));
        let waiter = {
            let (on_demand, version) = (on_demand.clone(), version.clone());
            tokio::spawn(async move { on_demand.look_up("api", 3, || version.load(Ordering::Relaxed)).await })
        };
        assert_eq!(on_demand.pending().await, ["api"]);
        assert_eq!(on_demand.looked_up(), ["api"]);
        version.store(4, Ordering::Relaxed);
        on_demand.snapshot_applied();
        assert_eq!(waiter.await.unwrap(), Looked::NewSnapshot);
    }

    #[tokio::test]
    async fn a_miss_ends_the_wait_and_holds_until_the_next_snapshot() {
        let on_demand = Arc::new(OnDemand::default());
        let waiter = {
            let on_demand = on_demand.clone();
            tokio::spawn(async move { on_demand.look_up("nope", 3, || 3).await })
        };
        assert_eq!(on_demand.pending().await, ["nope"]);
        on_demand.missed("nope", 3);
        assert_eq!(waiter.await.unwrap(), Looked::Nothing);
        assert!(on_demand.looked_up().is_empty(), "a miss is not in the scope");
        // Answered at once, without asking again, while snapshot 3 is in force.
        assert_eq!(on_demand.look_up("nope", 3, || 3).await, Looked::Nothing);
        assert!(on_demand.lock().pending.is_empty());
    }
}
