//! The datapath's metrics on the control plane's `/metrics`, from the
//! agents' reports: flows seen, bytes and drops per rule and node. The
//! kernel's per-rule counters are totals since the rule was applied; each
//! report's increase over the last is what is counted, so a counter of the
//! control plane rises as the node's does (and a node's counter that went
//! back, its rule applied anew, counts from zero again).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use trefoil_api::flows::{Flow, RuleCounter};
use trefoil_model::spec::DatapathAction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
    node: String,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    rule: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// The families, registered once with the control plane's registry.
#[derive(Clone, Default)]
pub struct FlowMetrics {
    flows: Family<RuleLabels, Counter>,
    bytes: Family<RuleLabels, Counter>,
    drops: Family<DropLabels, Counter>,
    records_dropped: Family<NodeLabels, Counter>,
}

impl FlowMetrics {
    /// The families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = FlowMetrics::default();
        registry.register("trefoil_datapath_flows", "Flows that matched a datapath rule, as node agents reported them", m.flows.clone());
        registry.register(
            "trefoil_datapath_bytes",
            "Bytes that matched a datapath rule (IP packets with link-layer header)",
            m.bytes.clone(),
        );
        registry.register("trefoil_datapath_drops", "Packets dropped by a datapath rule", m.drops.clone());
        registry.register(
            "trefoil_datapath_flow_records_dropped",
            "Flow records left out of agents' reports or evicted by the control plane's cap",
            m.records_dropped.clone(),
        );
        m
    }

    pub(super) fn new_flow(&self, flow: &Flow) {
        let labels = RuleLabels { rule: flow.rule.clone(), node: flow.node.clone(), action: flow.action.as_str() };
        self.flows.get_or_create(&labels).inc();
    }

    /// Counts what `counter` rose by since `last` (packets, bytes).
    pub(super) fn counted(&self, node: &str, counter: &RuleCounter, last: Option<(u64, u64)>) {
        let (packets, bytes) = match last {
            Some((p, b)) if counter.packets >= p && counter.bytes >= b => (counter.packets - p, counter.bytes - b),
            // New here, or the node's counter went back: all of it is new.
            _ => (counter.packets, counter.bytes),
        };
        let labels = RuleLabels { rule: counter.rule.clone(), node: node.to_string(), action: counter.action.as_str() };
        self.bytes.get_or_create(&labels).inc_by(bytes);
        if counter.action == DatapathAction::Drop {
            self.drops.get_or_create(&DropLabels { rule: counter.rule.clone(), node: node.to_string() }).inc_by(packets);
        }
    }

    pub(super) fn dropped(&self, node: &str, records: u64) {
        if records > 0 {
            self.records_dropped.get_or_create(&NodeLabels { node: node.to_string() }).inc_by(records);
        }
    }
}
