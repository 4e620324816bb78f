//! Datapath flow records as the REST API carries them: what a node agent
//! reports (`POST /api/v1/datapath/flows`), what the control plane keeps and
//! lists (`GET /api/v1/datapath/flows`, and its follow stream), and the
//! flows a trace shows next to its spans.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use trefoil_model::spec::{DatapathAction, Protocol};

use crate::traces::nanos;

/// One direction of one flow that matched a datapath rule, as a node's
/// kernel recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// The node whose agent reported it (set by the control plane from the report).
    #[serde(default)]
    pub node: String,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    pub protocol: Protocol,
    /// The rule that matched; empty when the agent knows only its hash (a
    /// rule applied by an earlier agent and not since).
    #[serde(default)]
    pub rule: String,
    pub action: DatapathAction,
    /// Bytes of the IP packets seen, link-layer header included.
    pub bytes: u64,
    pub packets: u64,
    /// First packet.
    #[serde(with = "nanos")]
    pub start_unix_nano: u64,
    /// Latest packet.
    #[serde(with = "nanos")]
    pub end_unix_nano: u64,
}

impl Flow {
    /// The rule's name, or `-` when it is not known.
    pub fn rule_or_dash(&self) -> &str {
        if self.rule.is_empty() {
            "-"
        } else {
            &self.rule
        }
    }
}

/// Packets and bytes that matched one rule on one node since it was first
/// applied there (kept by the kernel across agent restarts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleCounter {
    pub rule: String,
    /// What the node does with the rule's traffic (`drop` also for a
    /// redirect that fails closed there).
    pub action: DatapathAction,
    /// For a drop: packets dropped.
    pub packets: u64,
    pub bytes: u64,
}

/// What a node agent sends every report interval: the flows that saw
/// packets since its last report, and every rule's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowReport {
    pub node: String,
    #[serde(default)]
    pub flows: Vec<Flow>,
    #[serde(default)]
    pub counters: Vec<RuleCounter>,
    /// Flow records the agent left out of this report to keep it small
    /// (the oldest ones).
    #[serde(default)]
    pub dropped: u64,
}

/// The control plane's answer to a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowReportAccepted {
    /// Flows stored (new or updated).
    pub accepted: usize,
    /// Flows of this node the control plane no longer holds to make room.
    pub evicted: usize,
}

/// `GET /api/v1/datapath/flows`: most recent first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowList {
    /// `FlowList`.
    pub kind: String,
    pub items: Vec<Flow>,
}

impl FlowList {
    pub fn new(items: Vec<Flow>) -> Self {
        FlowList { kind: "FlowList".to_string(), items }
    }
}

/// One line of `GET /api/v1/watch/datapath/flows` (`application/x-ndjson`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowEvent {
    /// A flow new or updated by a report.
    Flow { flow: Flow },
    /// The follower fell behind and this many updates went by unseen.
    Lagged { missed: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_reads_back_with_addresses_and_nanoseconds_as_strings() {
        let flow = Flow {
            node: "edge".into(),
            src: "10.0.1.2:40112".parse().unwrap(),
            dst: "[fd00::5]:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            rule: "web".into(),
            action: DatapathAction::Redirect,
            bytes: 3100,
            packets: 14,
            start_unix_nano: 1_700_000_000_000_000_001,
            end_unix_nano: 1_700_000_000_000_000_002,
        };
        let v = serde_json::to_value(&flow).unwrap();
        assert_eq!(
            (v["src"].as_str(), v["dst"].as_str(), v["action"].as_str()),
            (Some("10.0.1.2:40112"), Some("[fd00::5]:80"), Some("redirect"))
        );
        assert_eq!(v["startUnixNano"], "1700000000000000001");
        assert_eq!(serde_json::from_value::<Flow>(v).unwrap(), flow);
    }
}
