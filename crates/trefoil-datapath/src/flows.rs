//! Flow records: what the classifier saw of each flow that matched a rule,
//! read from its LRU flow table (5-tuple, rule, action, bytes, packets, first
//! and last packet), and the per-rule counters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::SystemTime;

use crate::abi::{self, FlowKey};
use crate::entry::Protocol;
use crate::sys;

/// What the datapath did with a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowAction {
    /// Delivered to a transparent listener (or would have been, for a
    /// connection that started before the rule).
    Redirect,
    /// Copied to a function's interface.
    Copy,
    /// Dropped.
    Drop,
}

/// One direction of one flow, as the kernel recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The rule that matched, when the agent knows its name (a rule applied
    /// before a restart and not since is known only by its hash).
    pub rule: Option<String>,
    /// What was done.
    pub action: FlowAction,
    /// Bytes seen (IP packets with their link-layer header).
    pub bytes: u64,
    /// Packets seen.
    pub packets: u64,
    /// First packet.
    pub start: SystemTime,
    /// Latest packet.
    pub end: SystemTime,
}

/// Packets and bytes that matched one rule, since it was first applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounter {
    /// The rule.
    pub rule: String,
    /// Packets matched (for a drop rule: packets dropped).
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
}

fn addr(family: u8, words: [u32; 4], port: u16) -> SocketAddr {
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let ip =
        if family == 4 { IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15])) } else { IpAddr::V6(Ipv6Addr::from(bytes)) };
    SocketAddr::new(ip, u16::from_be(port))
}

/// Builds a record from a flow table entry; `None` for flows no rule matched.
pub(crate) fn record(key: &FlowKey, flow: &abi::Flow, rule: Option<String>, clock: &sys::MonotonicClock) -> Option<FlowRecord> {
    let action = match flow.action {
        abi::ACTION_REDIRECT => FlowAction::Redirect,
        abi::ACTION_COPY => FlowAction::Copy,
        abi::ACTION_DROP => FlowAction::Drop,
        _ => return None,
    };
    let protocol = match key.protocol {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    Some(FlowRecord {
        src: addr(key.family, key.src, key.sport),
        dst: addr(key.family, key.dst, key.dport),
        protocol,
        rule,
        action,
        bytes: flow.bytes,
        packets: flow.packets,
        start: clock.to_wall(flow.first_ns),
        end: clock.to_wall(flow.last_ns),
    })
}
