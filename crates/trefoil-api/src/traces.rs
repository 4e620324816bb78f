//! The trace collector's query API (`/api/v1/traces`, `/api/v1/traces/<id>`,
//! `/api/v1/watch/traces`): spans as the collector keeps and serves them,
//! the recent-traces list, and the lines of a follow stream.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One span.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `service.name` of the exporter: for proxies, the proxy's name unless configured.
    pub service: String,
    #[serde(with = "nanos")]
    pub start_unix_nano: u64,
    #[serde(with = "nanos")]
    pub end_unix_nano: u64,
    pub error: bool,
    pub attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
}

impl Span {
    pub fn duration_ms(&self) -> f64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano) as f64 / 1e6
    }

    /// An attribute's value, `""` when the span has none by that key.
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// Something that happened within a span (a chain step's published event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanEvent {
    pub name: String,
    #[serde(with = "nanos")]
    pub time_unix_nano: u64,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Whether any span of a trace failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceStatus {
    Ok,
    Error,
}

impl TraceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceStatus::Ok => "ok",
            TraceStatus::Error => "error",
        }
    }
}

/// One line of the recent-traces list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub trace_id: String,
    /// The name of the earliest span whose parent is not in the trace.
    pub root: String,
    /// Its service.
    pub service: String,
    #[serde(with = "nanos")]
    pub start_unix_nano: u64,
    pub duration_ms: f64,
    pub spans: usize,
    pub status: TraceStatus,
    /// What the trace's spans say, for filtering a list without reading
    /// each trace: the CNFs whose chains ran (`trefoil.cnf`), the events
    /// (`trefoil.event` and span event names) and the request paths
    /// (`url.path`); each sorted, without repeats, at most
    /// [`SUMMARY_FACTS`] long.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cnfs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// The most values a summary's `cnfs`, `events` or `paths` holds.
pub const SUMMARY_FACTS: usize = 32;

/// `GET /api/v1/traces`: newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceList {
    /// `TraceList`.
    pub kind: String,
    pub items: Vec<TraceSummary>,
}

impl TraceList {
    pub fn new(items: Vec<TraceSummary>) -> Self {
        TraceList { kind: "TraceList".to_string(), items }
    }
}

/// `GET /api/v1/traces/<id>`: every span, by start time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// `Trace`.
    pub kind: String,
    pub trace_id: String,
    pub spans: Vec<Span>,
    /// The datapath flows of the connections the trace's requests came on
    /// (same 5-tuple, overlapping time), as node agents reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<crate::flows::Flow>,
}

impl Trace {
    pub fn new(trace_id: String, spans: Vec<Span>) -> Self {
        Trace { kind: "Trace".to_string(), trace_id, spans, flows: Vec::new() }
    }
}

/// One line of a follow stream (`application/x-ndjson`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FollowEvent {
    Span {
        span: Span,
    },
    /// The follower fell behind and this many spans went by unseen; the
    /// stream goes on.
    Lagged {
        missed: u64,
    },
}

/// Nanosecond timestamps exceed what JSON numbers hold exactly in many
/// clients, so they are strings, as OTLP JSON writes them; a number is read too.
pub(crate) mod nanos {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelled {
            Number(u64),
            Text(String),
        }
        match Spelled::deserialize(d)? {
            Spelled::Number(n) => Ok(n),
            Spelled::Text(t) => t.parse().map_err(|_| serde::de::Error::custom(format!("{t:?} is not a count of nanoseconds"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn spans_round_trip_with_nanoseconds_as_strings() {
        let span = Span {
            trace_id: "t".into(),
            span_id: "s".into(),
            parent_span_id: None,
            name: "GET".into(),
            service: "edge".into(),
            start_unix_nano: 1_700_000_000_000_000_001,
            end_unix_nano: 1_700_000_000_000_000_002,
            error: false,
            attributes: BTreeMap::new(),
            events: vec![],
        };
        let v = serde_json::to_value(&span).unwrap();
        assert_eq!(v["startUnixNano"], json!("1700000000000000001"));
        assert!(v.get("parentSpanId").is_none() && v.get("events").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<Span>(v).unwrap(), span);
    }

    #[test]
    fn follow_lines_are_tagged_by_type() {
        let lagged: FollowEvent = serde_json::from_str(r#"{"type":"LAGGED","missed":3}"#).unwrap();
        assert_eq!(lagged, FollowEvent::Lagged { missed: 3 });
    }
}
