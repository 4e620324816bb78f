//! Datapath flow records at the control plane: node agents report what
//! their kernels saw (flows and per-rule counters), the control plane keeps
//! the recent ones, bounded, counts them on `/metrics`, serves them to
//! `trefoil datapath flows` and WatchFlows, and joins them to traces by the
//! connection's 5-tuple.

pub mod api;
pub mod correlate;
pub mod metrics;
pub mod store;

pub use store::{Caps, FlowStore};

#[cfg(test)]
mod tests;
