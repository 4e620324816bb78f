//! Where a CNF handler's datapath changes (`trefoil.datapath.*`) go: the
//! control plane's Datapath service, on the config stream's address. The
//! control plane checks and stores each rule exactly as `trefoil datapath
//! add` would, and node agents program it; the proxy keeps no rules itself.
//!
//! A handler waits for the answer, so every call is bounded in time, and the
//! calls in flight across the proxy are bounded in number: a flood of events
//! cannot turn into a flood of writes or of waiting handlers.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};
use trefoil_chain::handlers::{DatapathChange, DatapathRule};
use trefoil_wire::datapath::{DatapathClient, Rule};
use trefoil_wire::Code;

/// Connecting and one answer, each at most this long.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Changes waiting for the control plane across the proxy; more are refused at once.
const MAX_IN_FLIGHT: usize = 64;

/// The proxy's one way to the Datapath service; connected on first use.
pub(crate) struct DatapathLink {
    /// The control plane's gRPC address; unset while the config comes from a file.
    address: OnceLock<String>,
    /// How to reach it over TLS: the mesh root and this proxy's identity.
    tls: OnceLock<Option<(String, std::sync::Arc<crate::identity::Identity>)>>,
    client: Mutex<Option<DatapathClient>>,
    in_flight: Semaphore,
}

impl Default for DatapathLink {
    fn default() -> Self {
        DatapathLink { address: OnceLock::new(), tls: OnceLock::new(), client: Mutex::new(None), in_flight: Semaphore::new(MAX_IN_FLIGHT) }
    }
}

/// How one change ended, for the metric and the handler.
pub(crate) enum Sent {
    Done(String),
    /// The control plane answered no: the reason is its message.
    Refused(String),
    /// No control plane, or it did not answer.
    Unavailable(String),
}

impl DatapathLink {
    /// From now on changes go to the control plane at `address`.
    /// With a trust bundle, over TLS, presenting `identity`'s SVID (no call is made without one).
    pub(crate) fn use_control_plane(&self, address: &str, bundle: Option<&str>, identity: std::sync::Arc<crate::identity::Identity>) {
        let _ = self.tls.set(bundle.map(|b| (b.to_string(), identity)));
        let _ = self.address.set(address.to_string());
    }

    /// Sends one change and waits (bounded) for the control plane's answer.
    pub(crate) async fn send(&self, change: DatapathChange) -> Sent {
        let Some(address) = self.address.get() else {
            return Sent::Unavailable(
                "this proxy runs from a config file, not a control plane: there is nowhere to keep datapath rules".into(),
            );
        };
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Sent::Unavailable(format!("{MAX_IN_FLIGHT} datapath changes already wait for the control plane"));
        };
        let mut client = match self.connected(address).await {
            Ok(client) => client,
            Err(reason) => return Sent::Unavailable(reason),
        };
        let answer = tokio::time::timeout(TIMEOUT, async {
            match change {
                DatapathChange::Add(rule) => client.add_rule(wire(rule)).await.map(|r| r.name),
                DatapathChange::Remove(name) => client.remove_rule(&name).await.map(|r| r.name),
            }
        })
        .await;
        match answer {
            Ok(Ok(name)) => Sent::Done(name),
            Ok(Err(status)) if matches!(status.code(), Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition) => {
                Sent::Refused(status.message().to_string())
            }
            Ok(Err(status)) => {
                self.forget().await;
                Sent::Unavailable(format!("the control plane at {address} failed: {}", status.message()))
            }
            Err(_) => {
                self.forget().await;
                Sent::Unavailable(format!("the control plane at {address} did not answer within {TIMEOUT:?}"))
            }
        }
    }

    /// The connection, made now if there is none.
    async fn connected(&self, address: &str) -> Result<DatapathClient, String> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let tls = match self.tls.get().and_then(Option::as_ref) {
            None => None,
            // The SVID is how the control plane knows whose handler writes:
            // without one every call would be refused, so none is made.
            Some((bundle, identity)) => {
                let Some(svid) = identity.current() else {
                    return Err(format!("this proxy holds no SVID yet to present to the control plane at {address}"));
                };
                Some(
                    trefoil_wire::ClientTls::new(bundle, Some(svid.certified.clone()))
                        .map_err(|e| format!("cannot reach the control plane at {address} over TLS: {e}"))?,
                )
            }
        };
        let client = match tokio::time::timeout(TIMEOUT, DatapathClient::connect_with(address, tls)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(format!("cannot reach the control plane at {address}: {e}")),
            Err(_) => return Err(format!("cannot reach the control plane at {address} within {TIMEOUT:?}")),
        };
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Drops a connection that failed, so the next change connects afresh.
    async fn forget(&self) {
        *self.client.lock().await = None;
    }
}

fn wire(rule: DatapathRule) -> Rule {
    Rule {
        name: String::new(),
        compact: rule.compact,
        source: rule.source,
        priority: rule.priority,
        node: String::new(),
        ttl: rule.ttl.unwrap_or_default(),
        origin_cnf: rule.origin_cnf,
        origin_handler: rule.origin_handler,
        origin_trace_id: rule.origin_trace_id,
    }
}
