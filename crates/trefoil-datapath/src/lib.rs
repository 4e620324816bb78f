//! Trefoil's programmable datapath: eBPF programs that redirect, copy or drop
//! transport traffic not addressed to Trefoil, the loader and node agent core
//! that keep them attached and reconciled, and the flow records they keep.
//! The control side (the `DatapathRule` resource, priorities, the CLI) lives
//! elsewhere; this crate takes a flat, ordered list of [`Entry`] values.

mod abi;
mod agent;
mod datapath;
mod entry;
mod error;
mod flows;
mod nft;
mod programs;
mod routing;
mod sys;
mod table;

pub use agent::{attached, remove_node, Agent, AgentConfig, Attachment, DEFAULT_PIN_ROOT, MAX_ENTRIES};
pub use datapath::Datapath;
pub use entry::{Action, Entry, IpNet, IpNetError, Protocol};
pub use error::Error;
pub use flows::{FlowAction, FlowRecord, RuleCounter};
pub use nft::NftAgent;
pub use sys::missing_capability;
