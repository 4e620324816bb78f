//! What the runtime tells whoever runs it (the CLI prints these as progress).

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::plan::Role;

/// Something worth one line of progress.
#[derive(Clone, Debug)]
pub enum Event {
    /// The files hold DatapathRules but the node's agent does not run: why.
    DatapathSkipped {
        why: String,
    },
    /// Every resource from the files and every sidecar `Proxy` is stored.
    ResourcesApplied {
        count: usize,
    },
    Started {
        name: String,
        role: Role,
        pid: u32,
        restarts: u32,
    },
    /// The process's readiness probe started or stopped passing.
    Ready {
        name: String,
        role: Role,
        ready: bool,
    },
    /// It exited on its own; it starts again after `restart_in`.
    Exited {
        name: String,
        how: String,
        restart_in: Duration,
    },
    /// It could not be started at all; retried after `retry_in`.
    StartFailed {
        name: String,
        error: String,
        retry_in: Duration,
    },
    /// The control plane refused a resource the runtime wrote.
    Rejected {
        resource: String,
        error: String,
    },
    /// A resource an earlier run registered and this one does not run was deleted.
    Pruned {
        resource: String,
    },
    /// Everything is started; what to tell the user.
    Up(Summary),
    /// Shutting down, in order: apps, proxies, control plane.
    Stopping,
    Stopped {
        name: String,
    },
}

/// What runs and where to find it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The operator portal, served by the control plane: what a person opens first.
    pub portal: String,
    /// URLs of the gateways' listeners.
    pub gateways: Vec<String>,
    /// Control plane REST API.
    pub api: String,
    pub grpc: String,
    /// `logs/<process>.log`; read with `trefoil logs NAME`.
    pub logs: String,
    /// The supervisor's view, rewritten on every change.
    pub state: String,
    /// The control plane's admin token (mode 0600), for the CLI's context.
    pub token_file: String,
    /// The node's datapath agent, when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathSummary>,
    pub replicas: Vec<ReplicaSummary>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathSummary {
    /// Its first table is in the kernel.
    pub ready: bool,
    pub log: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSummary {
    pub name: String,
    pub service: String,
    pub version: String,
    /// Sidecar inbound address, as published in `Endpoints`.
    pub address: String,
    pub ready: bool,
}

/// Where events go; sending never blocks, and a gone receiver is ignored.
#[derive(Clone)]
pub struct Events(mpsc::UnboundedSender<Event>);

impl Events {
    pub fn new(tx: mpsc::UnboundedSender<Event>) -> Self {
        Events(tx)
    }
    pub fn send(&self, event: Event) {
        let _ = self.0.send(event);
    }
}
