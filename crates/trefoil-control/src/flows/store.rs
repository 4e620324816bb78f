//! The bounded store of flow records: per node, the most recently reported
//! flows (a cap, the least recently updated going first, and a TTL), indexed
//! by 5-tuple so a trace finds its connection's flows without a scan. A
//! report brings each flow that saw packets since the last one; a flow
//! reported again replaces what was held. Memory stays bounded whatever
//! agents send: so many nodes, so many flows each.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use trefoil_api::flows::{Flow, FlowReport, FlowReportAccepted};
use trefoil_model::spec::Protocol;

use super::metrics::FlowMetrics;

/// What the store holds at most, and for how long.
#[derive(Clone, Debug)]
pub struct Caps {
    /// Flows held per node; the least recently updated go first.
    pub flows_per_node: usize,
    /// Nodes held; the one that reported least recently goes first.
    pub nodes: usize,
    /// How long a flow no report mentioned is kept.
    pub ttl: Duration,
}

impl Default for Caps {
    fn default() -> Self {
        Caps { flows_per_node: 4096, nodes: 256, ttl: Duration::from_secs(600) }
    }
}

/// Flows and counters in one report, at most (what an agent sends is well under).
pub const MAX_FLOWS_PER_REPORT: usize = 4096;
pub const MAX_COUNTERS_PER_REPORT: usize = 4096;

/// Two records of one 5-tuple whose first packets are this close are one
/// flow: the agent converts the kernel's clock to wall time at each read,
/// so the same first packet can read a few microseconds apart; a 5-tuple
/// reused (TCP's TIME_WAIT alone is a minute) starts much later.
const SAME_FLOW_NANOS: u64 = 1_000_000_000;

/// A connection's 5-tuple, as the kernel keyed it (one direction).
pub type Tuple = (SocketAddr, SocketAddr, Protocol);

struct Held {
    flow: Flow,
    /// Update order: the eviction and expiry order.
    seq: u64,
    at: Instant,
}

#[derive(Default)]
struct NodeFlows {
    by_tuple: HashMap<Tuple, Vec<Held>>,
    order: BTreeMap<u64, Tuple>,
    /// The counters last reported, per rule: the next report's increase is
    /// what the metrics count.
    counters: HashMap<String, (u64, u64)>,
    reported: Option<Instant>,
}

impl NodeFlows {
    fn len(&self) -> usize {
        self.order.len()
    }

    /// Removes the held flow `seq` of `tuple`.
    fn remove(&mut self, seq: u64, tuple: &Tuple) {
        self.order.remove(&seq);
        if let Some(held) = self.by_tuple.get_mut(tuple) {
            held.retain(|h| h.seq != seq);
            if held.is_empty() {
                self.by_tuple.remove(tuple);
            }
        }
    }

    /// Removes the least recently updated flow.
    fn pop_oldest(&mut self) -> bool {
        let Some((&seq, tuple)) = self.order.first_key_value() else { return false };
        let tuple = *tuple;
        self.remove(seq, &tuple);
        true
    }

    fn expire(&mut self, ttl: Duration, now: Instant) {
        while let Some((&seq, tuple)) = self.order.first_key_value() {
            let tuple = *tuple;
            let expired = self.by_tuple.get(&tuple).and_then(|h| h.iter().find(|h| h.seq == seq)).is_none_or(|h| now - h.at >= ttl);
            if !expired {
                break;
            }
            self.remove(seq, &tuple);
        }
    }
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, NodeFlows>,
    seq: u64,
}

/// The control plane's flow records.
pub struct FlowStore {
    inner: Mutex<Inner>,
    caps: Caps,
    metrics: FlowMetrics,
    /// Flows new or updated, for WatchFlows and follow streams.
    updates: broadcast::Sender<Arc<Flow>>,
}

/// Why a report is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("node: must be a non-empty name of at most 253 characters")]
    Node,
    #[error("flows: {0} records, more than the {MAX_FLOWS_PER_REPORT} a report may carry")]
    TooManyFlows(usize),
    #[error("counters: {0} rules, more than the {MAX_COUNTERS_PER_REPORT} a report may carry")]
    TooManyCounters(usize),
}

impl Default for FlowStore {
    /// Default caps, metrics in no registry.
    fn default() -> Self {
        Self::new(Caps::default(), FlowMetrics::default())
    }
}

impl FlowStore {
    pub fn new(caps: Caps, metrics: FlowMetrics) -> Self {
        let caps = Caps { flows_per_node: caps.flows_per_node.max(1), nodes: caps.nodes.max(1), ttl: caps.ttl };
        FlowStore { inner: Mutex::new(Inner::default()), caps, metrics, updates: broadcast::channel(4096).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a node's report: its flows are stored (replacing what was held
    /// of the same flow), its counters' increases counted.
    pub fn report(&self, report: FlowReport) -> Result<FlowReportAccepted, ReportError> {
        let FlowReport { node, flows, counters, dropped } = report;
        if node.is_empty() || node.len() > 253 {
            return Err(ReportError::Node);
        }
        if flows.len() > MAX_FLOWS_PER_REPORT {
            return Err(ReportError::TooManyFlows(flows.len()));
        }
        if counters.len() > MAX_COUNTERS_PER_REPORT {
            return Err(ReportError::TooManyCounters(counters.len()));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if !inner.nodes.contains_key(&node) && inner.nodes.len() >= self.caps.nodes {
            // Room for a new node: the one that reported least recently goes.
            let quiet = inner.nodes.iter().min_by_key(|(_, n)| n.reported).map(|(name, _)| name.clone());
            if let Some(quiet) = quiet {
                inner.nodes.remove(&quiet);
            }
        }
        let mut seq = inner.seq;
        let held = inner.nodes.entry(node.clone()).or_default();
        held.reported = Some(now);
        held.expire(self.caps.ttl, now);
        for counter in counters {
            let last = held.counters.insert(counter.rule.clone(), (counter.packets, counter.bytes));
            self.metrics.counted(&node, &counter, last);
        }
        let accepted = flows.len();
        for mut flow in flows {
            flow.node = node.clone();
            seq += 1;
            let tuple = (flow.src, flow.dst, flow.protocol);
            let same = held.by_tuple.entry(tuple).or_default();
            let known = same.iter_mut().find(|h| h.flow.start_unix_nano.abs_diff(flow.start_unix_nano) < SAME_FLOW_NANOS);
            let _ = self.updates.send(Arc::new(flow.clone()));
            match known {
                Some(h) => {
                    let old = std::mem::replace(&mut h.seq, seq);
                    flow.start_unix_nano = flow.start_unix_nano.min(h.flow.start_unix_nano);
                    (h.flow, h.at) = (flow, now);
                    held.order.remove(&old);
                }
                None => {
                    self.metrics.new_flow(&flow);
                    same.push(Held { flow, seq, at: now });
                }
            }
            held.order.insert(seq, tuple);
        }
        let mut evicted = 0;
        while held.len() > self.caps.flows_per_node && held.pop_oldest() {
            evicted += 1;
        }
        self.metrics.dropped(&node, dropped + evicted as u64);
        inner.seq = seq;
        Ok(FlowReportAccepted { accepted, evicted })
    }

    /// The flows held (of one rule), most recently active first, at most `limit`.
    pub fn list(&self, rule: Option<&str>, limit: usize) -> Vec<Flow> {
        let now = Instant::now();
        let inner = self.lock();
        let mut out: Vec<Flow> = inner
            .nodes
            .values()
            .flat_map(|n| n.by_tuple.values().flatten())
            .filter(|h| now - h.at < self.caps.ttl && rule.is_none_or(|r| h.flow.rule == r))
            .map(|h| h.flow.clone())
            .collect();
        out.sort_by(|a, b| b.end_unix_nano.cmp(&a.end_unix_nano).then_with(|| a.node.cmp(&b.node)).then_with(|| a.src.cmp(&b.src)));
        out.truncate(limit);
        out
    }

    /// The flows of `tuple`, on any node, active at some time within `from..=to` (nanoseconds).
    pub fn during(&self, tuple: &Tuple, from: u64, to: u64) -> Vec<Flow> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .nodes
            .values()
            .filter_map(|n| n.by_tuple.get(tuple))
            .flatten()
            .filter(|h| now - h.at < self.caps.ttl && h.flow.start_unix_nano <= to && h.flow.end_unix_nano >= from)
            .map(|h| h.flow.clone())
            .collect()
    }

    /// Flows as reports bring them.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Flow>> {
        self.updates.subscribe()
    }

    /// Flows held, across all nodes.
    pub fn len(&self) -> usize {
        self.lock().nodes.values().map(NodeFlows::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
