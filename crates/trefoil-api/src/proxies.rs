//! `GET /api/v1/status/proxies`: each proxy as the control plane sees it,
//! and the one rule for "this proxy runs what was compiled for it".
//!
//! That rule used to be written out five times (the runtime's start-up, the
//! CLI's `check`, the test helpers), each comparing JSON values a little
//! differently; it lives here as `ProxyStatus::in_sync`.

use serde::{Deserialize, Serialize};
use trefoil_model::version::{as_number, option_as_number};
use trefoil_model::ResourceVersion;

/// A snapshot the proxy refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    #[serde(with = "as_number")]
    pub version: ResourceVersion,
    pub error: String,
}

/// One proxy: connected or not, what was compiled for it and what it acked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub name: String,
    /// Set for a node agent (`agent/<node>`): the node whose datapath table it programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub connected: bool,
    #[serde(default)]
    pub admin_address: Option<String>,
    /// The newest snapshot compiled for it (and sent, unless it was rejected before).
    #[serde(default, with = "option_as_number")]
    pub latest_version: Option<ResourceVersion>,
    /// The snapshot it said it serves.
    #[serde(default, with = "option_as_number")]
    pub acked_version: Option<ResourceVersion>,
    #[serde(default)]
    pub nack: Option<Nack>,
    /// RFC 3339: the last message, connect or disconnect.
    #[serde(default)]
    pub last_seen: Option<String>,
    /// Store revisions between the newest snapshot compiled for it and the
    /// one it serves (0: in sync); absent while it is not connected or has
    /// acknowledged nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// How many resources its newest snapshot holds (for an agent: table lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<u64>,
    /// A scoped proxy (a sidecar whose Workload declares `calls`, a gateway
    /// whose listeners name their routes): how many services its latest
    /// snapshot holds; absent for a proxy sent the whole mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoped_services: Option<u32>,
    /// Services it looked up on demand, kept in its scope from then on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub looked_up: Vec<String>,
}

impl ProxyStatus {
    /// A proxy the control plane knows only by name (a `Proxy` resource
    /// whose proxy never connected).
    pub fn declared(name: impl Into<String>) -> Self {
        ProxyStatus {
            name: name.into(),
            node: None,
            connected: false,
            admin_address: None,
            latest_version: None,
            acked_version: None,
            nack: None,
            last_seen: None,
            lag: None,
            subscribed: None,
            scoped_services: None,
            looked_up: Vec::new(),
        }
    }

    /// Connected, and serving the newest snapshot compiled for it. A NACK
    /// of an older snapshot is history once a newer one is acknowledged.
    pub fn in_sync(&self) -> bool {
        self.connected && self.acked_version.is_some() && self.acked_version == self.latest_version
    }
}

/// `status.applied` of a resource: how many of the proxies (and node
/// agents) whose snapshot depends on it serve its current `resourceVersion`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Connected proxies that need it and serve this version or a newer one.
    pub acknowledged: u64,
    /// Connected proxies whose snapshot depends on it.
    pub needed: u64,
    /// Milliseconds from the write to the slowest acknowledgement known;
    /// absent when none is known (nothing acknowledged yet, or the write is
    /// older than the control plane's bounded memory of write times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowest_ms: Option<u64>,
    /// Every proxy that refused a snapshot holding this version.
    #[serde(default)]
    pub nacks: Vec<AppliedNack>,
}

impl Applied {
    /// Every proxy that needs it serves it.
    pub fn complete(&self) -> bool {
        self.acknowledged >= self.needed
    }
}

/// One proxy's refusal of a snapshot holding a resource's current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedNack {
    pub proxy: String,
    pub reason: String,
    /// The snapshot revision it refused.
    #[serde(with = "as_number")]
    pub revision: ResourceVersion,
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatusList {
    /// `ProxyStatusList`.
    pub kind: String,
    /// The store revision the connected proxies' snapshots were last
    /// compiled at: every write up to it is in their latest snapshots.
    #[serde(with = "as_number")]
    pub compiled_revision: ResourceVersion,
    pub items: Vec<ProxyStatus>,
}

impl ProxyStatusList {
    pub fn new(compiled_revision: ResourceVersion, items: Vec<ProxyStatus>) -> Self {
        ProxyStatusList { kind: "ProxyStatusList".to_string(), compiled_revision, items }
    }

    /// The proxy named `name`, if the control plane knows it.
    pub fn get(&self, name: &str) -> Option<&ProxyStatus> {
        self.items.iter().find(|p| p.name == name)
    }

    /// Whether a write the store made at `revision` is served by every
    /// proxy in `names`: compiled into their snapshots, and each of them in
    /// sync.
    pub fn reached<'a>(&self, revision: ResourceVersion, mut names: impl Iterator<Item = &'a str>) -> bool {
        self.compiled_revision >= revision && names.all(|n| self.get(n).is_some_and(ProxyStatus::in_sync))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(v: serde_json::Value) -> ProxyStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn in_sync_means_connected_and_acked_the_latest() {
        assert!(status(json!({"name": "gw", "connected": true, "latestVersion": 7, "ackedVersion": 7})).in_sync());
        assert!(!status(json!({"name": "gw", "connected": false, "latestVersion": 7, "ackedVersion": 7})).in_sync());
        assert!(!status(json!({"name": "gw", "connected": true, "latestVersion": 8, "ackedVersion": 7})).in_sync());
        // Never acknowledged anything, nor was anything compiled for it.
        assert!(!status(json!({"name": "gw", "connected": true})).in_sync());
        assert!(!status(json!({"name": "gw", "connected": true, "latestVersion": "3"})).in_sync());
        // An old NACK does not matter once the newest snapshot is acknowledged.
        let healed = json!({"name": "gw", "connected": true, "latestVersion": 9, "ackedVersion": 9, "nack": {"version": 8, "error": "x"}});
        assert!(status(healed).in_sync());
    }

    #[test]
    fn a_write_reached_the_proxies_once_compiled_and_acked() {
        let list = ProxyStatusList::new(
            10.into(),
            vec![status(json!({"name": "a", "connected": true, "latestVersion": 10, "ackedVersion": 10})), ProxyStatus::declared("b")],
        );
        assert!(list.reached(10.into(), ["a"].into_iter()));
        assert!(!list.reached(11.into(), ["a"].into_iter()), "not compiled yet");
        assert!(!list.reached(10.into(), ["a", "b"].into_iter()), "b never connected");
        assert!(!list.reached(10.into(), ["c"].into_iter()), "c is unknown");
    }

    #[test]
    fn versions_are_integers_on_the_wire() {
        let list = ProxyStatusList::new(3.into(), vec![ProxyStatus { latest_version: Some(3.into()), ..ProxyStatus::declared("gw") }]);
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v["compiledRevision"], json!(3));
        assert_eq!(v["items"][0]["latestVersion"], json!(3));
        assert_eq!(v["items"][0]["ackedVersion"], json!(null));
    }
}

/// `GET /api/v1/status/controlplane`: the replica that answers, where its
/// store is, and which replica leads the controllers that run once
/// (rollouts, datapath rule expiry; decision 0024).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneStatus {
    /// This replica: its REST address.
    pub name: String,
    /// `embedded` or `etcd://host:port,...`.
    pub store: String,
    /// The leader's name; `None` while none is known (an election under way).
    pub leader: Option<String>,
    /// Whether this replica leads.
    pub is_leader: bool,
}
