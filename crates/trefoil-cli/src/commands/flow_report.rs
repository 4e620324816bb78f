//! The node agent's flow reports: every interval it reads the kernel's flow
//! table and per-rule counters and sends the control plane what changed
//! since its last report that went through. A report stays small: only
//! flows that saw packets since then, at most [`MAX_FLOWS`] of them (the
//! most recently active; the rest are counted as dropped), over the REST
//! API with the token the agent's config stream presents. One report is in flight at
//! a time, and sending never holds up applying the rules.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use trefoil_api::flows::{Flow, FlowReport, RuleCounter};
use trefoil_api::{ApiError, Client};
use trefoil_datapath::{Action, Datapath, Entry, FlowAction, FlowRecord, Protocol as KernelProtocol};
use trefoil_model::spec::{DatapathAction, Protocol};

/// Flow records in one report at most: a report is about 250 bytes a flow
/// as JSON, so this keeps it near half a megabyte.
pub(crate) const MAX_FLOWS: usize = 2000;

/// A flow last active this long before the previous report's read is sent
/// again: the kernel's clock is converted to wall time at each read, which
/// can shift a flow's last packet by a little; the control plane merges repeats.
const OVERLAP: Duration = Duration::from_secs(1);

pub(crate) struct Reporter {
    node: String,
    client: Client,
    /// Flows last active before this went out in a report that was taken.
    since: Option<SystemTime>,
    /// The report being sent, and when its flows were read.
    sending: Option<(JoinHandle<Result<(), ApiError>>, SystemTime)>,
    /// Whether the last report failed (said once until one goes through).
    failing: bool,
}

impl Reporter {
    pub(crate) fn new(node: &str, client: Client) -> Self {
        Reporter { node: node.to_string(), client, since: None, sending: None, failing: false }
    }

    /// Sends a report of what changed, unless the last one is still on its way.
    pub(crate) async fn tick(&mut self, datapath: &Datapath, table: &[Entry]) {
        if let Some((sending, read_at)) = self.sending.take() {
            if !sending.is_finished() {
                self.sending = Some((sending, read_at));
                return;
            }
            // Finished: this does not wait.
            self.settle(sending.await, read_at);
        }
        let read_at = SystemTime::now();
        let report = match self.read(datapath, table) {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the datapath's flows and counters; no report this time");
                return;
            }
        };
        let client = self.client.clone();
        self.sending = Some((tokio::spawn(async move { client.report_flows(&report).await.map(drop) }), read_at));
    }

    /// Takes a finished send's result: the next report starts where it ended, or (it failed) where it started.
    fn settle(&mut self, result: Result<Result<(), ApiError>, tokio::task::JoinError>, read_at: SystemTime) {
        match result {
            Ok(Ok(())) => {
                self.since = Some(read_at - OVERLAP);
                if std::mem::take(&mut self.failing) {
                    tracing::info!("flow reports go through again");
                }
            }
            Ok(Err(e)) if !self.failing => {
                self.failing = true;
                tracing::warn!(error = %e, "cannot report flows to the control plane; the next report sends them");
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!(error = %e, "the flow report task failed"),
        }
    }

    fn read(&self, datapath: &Datapath, table: &[Entry]) -> Result<FlowReport, trefoil_datapath::Error> {
        let mut records: Vec<FlowRecord> = datapath.flows()?.into_iter().filter(|f| self.since.is_none_or(|s| f.end >= s)).collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.end));
        let dropped = records.len().saturating_sub(MAX_FLOWS) as u64;
        records.truncate(MAX_FLOWS);
        let actions = actions(table);
        let counters = datapath
            .counters()?
            .into_iter()
            .filter_map(|c| {
                let action = *actions.get(c.rule.as_str())?;
                Some(RuleCounter { rule: c.rule, action, packets: c.packets, bytes: c.bytes })
            })
            .collect();
        Ok(FlowReport { node: self.node.clone(), flows: records.into_iter().map(flow).collect(), counters, dropped })
    }
}

/// What the node does with each rule's traffic: its first line's action
/// (a redirect that fails closed is a drop here).
fn actions(table: &[Entry]) -> BTreeMap<&str, DatapathAction> {
    let mut out = BTreeMap::new();
    for entry in table {
        out.entry(entry.rule.as_str()).or_insert(match entry.action {
            Action::Redirect { .. } => DatapathAction::Redirect,
            Action::Copy { .. } => DatapathAction::Copy,
            Action::Drop => DatapathAction::Drop,
        });
    }
    out
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn flow(r: FlowRecord) -> Flow {
    Flow {
        node: String::new(),
        src: r.src,
        dst: r.dst,
        protocol: match r.protocol {
            KernelProtocol::Tcp => Protocol::Tcp,
            KernelProtocol::Udp => Protocol::Udp,
        },
        rule: r.rule.unwrap_or_default(),
        action: match r.action {
            FlowAction::Redirect => DatapathAction::Redirect,
            FlowAction::Copy => DatapathAction::Copy,
            FlowAction::Drop => DatapathAction::Drop,
        },
        bytes: r.bytes,
        packets: r.packets,
        start_unix_nano: nanos(r.start),
        end_unix_nano: nanos(r.end),
    }
}
