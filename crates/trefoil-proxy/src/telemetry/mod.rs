//! What the proxy tells about the traffic: metrics, access logs, traces,
//! and the admin listener that serves them with readiness and the config.

pub mod access_log;
pub mod admin;
pub mod attempt_span;
pub mod chain_span;
pub mod hop_spans;
pub mod metrics;
pub mod otlp;
pub mod trace_context;
