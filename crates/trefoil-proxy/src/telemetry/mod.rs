//! What the proxy tells about the traffic: metrics, access logs, traces.

pub mod access_log;
pub mod attempt_span;
pub mod chain_span;
pub mod hop_spans;
pub mod metrics;
pub mod otlp;
pub mod trace_context;
