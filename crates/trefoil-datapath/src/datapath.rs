//! The datapath a node gets: eBPF where it loads, else the nftables fallback
//! for redirect and drop, with the reason eBPF was not used logged and kept.

use crate::agent::{Agent, AgentConfig};
use crate::entry::Entry;
use crate::error::Error;
use crate::flows::{FlowRecord, RuleCounter};
use crate::nft::NftAgent;

/// A node's datapath, whichever kernel mechanism carries it.
#[derive(Debug)]
pub enum Datapath {
    /// The eBPF classifier: redirect, copy, drop, flow records.
    Ebpf(Agent),
    /// The nftables fallback: redirect (TPROXY) and drop only.
    Nftables {
        /// The fallback agent.
        agent: NftAgent,
        /// Why eBPF was not used.
        because: Error,
    },
}

impl Datapath {
    /// Starts the eBPF agent; where eBPF cannot load (kernel too old, no
    /// CAP_BPF, built without clang) falls back to nftables. Any other
    /// failure, or a failing fallback, is returned (the fallback's error
    /// names both).
    pub fn start(config: AgentConfig) -> Result<Self, Error> {
        match Agent::start(config.clone()) {
            Ok(agent) => Ok(Self::Ebpf(agent)),
            Err(because @ (Error::KernelTooOld { .. } | Error::MissingCapability("CAP_BPF") | Error::ProgramsMissing(_))) => {
                tracing::warn!(reason = %because, "eBPF datapath unavailable; falling back to nftables (no copy, no flow records)");
                match NftAgent::start(config) {
                    Ok(agent) => Ok(Self::Nftables { agent, because }),
                    Err(fallback) => Err(Error::NoDatapath { ebpf: Box::new(because), nftables: Box::new(fallback) }),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Reconciles the kernel to exactly `entries` (see [`Agent::apply`]).
    pub fn apply(&mut self, entries: &[Entry]) -> Result<(), Error> {
        match self {
            Self::Ebpf(agent) => agent.apply(entries),
            Self::Nftables { agent, .. } => agent.apply(entries),
        }
    }

    /// Flow records (none under nftables).
    pub fn flows(&self) -> Result<Vec<FlowRecord>, Error> {
        match self {
            Self::Ebpf(agent) => agent.flows(),
            Self::Nftables { .. } => Ok(Vec::new()),
        }
    }

    /// Per-rule counters.
    pub fn counters(&self) -> Result<Vec<RuleCounter>, Error> {
        match self {
            Self::Ebpf(agent) => agent.counters(),
            Self::Nftables { agent, .. } => agent.counters(),
        }
    }

    /// Takes the node's datapath down, leaving nothing behind.
    pub fn remove_all(self) -> Result<(), Error> {
        match self {
            Self::Ebpf(agent) => agent.remove_all(),
            Self::Nftables { agent, .. } => agent.remove_all(),
        }
    }
}
