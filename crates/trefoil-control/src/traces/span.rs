//! A span as the collector keeps and serves it.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `service.name` of the exporter: for proxies, the proxy's name unless configured.
    pub service: String,
    #[serde(serialize_with = "as_string")]
    pub start_unix_nano: u64,
    #[serde(serialize_with = "as_string")]
    pub end_unix_nano: u64,
    pub error: bool,
    pub attributes: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanEvent {
    pub name: String,
    #[serde(serialize_with = "as_string")]
    pub time_unix_nano: u64,
    pub attributes: BTreeMap<String, String>,
}

/// Nanosecond timestamps exceed what JSON numbers hold exactly in many
/// clients, so they are strings, as OTLP JSON writes them.
fn as_string<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Span {
    pub fn duration_ms(&self) -> f64 {
        (self.end_unix_nano - self.start_unix_nano) as f64 / 1e6
    }
}
