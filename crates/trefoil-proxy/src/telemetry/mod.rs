//! What the proxy tells about the traffic: metrics, access logs, traces,
//! and the admin listener that serves them with readiness and the config.

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod attempt_span;
pub(crate) mod chain_span;
pub(crate) mod hop_spans;
pub(crate) mod metrics;
pub mod otlp;
pub(crate) mod trace_context;
