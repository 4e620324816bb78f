//! Decoding of OTLP/HTTP JSON export requests (`POST /v1/traces`) into
//! [`Span`]s. Lenient where the format allows two spellings (64-bit numbers
//! as strings or numbers), strict about ids: a span without a valid trace
//! and span id cannot be placed in a trace, so it is rejected and counted.
//! The envelope (objects and arrays down to each span) must have its shape:
//! a request that does not is refused whole.

use std::collections::BTreeMap;

use serde_json::Value;

use super::span::{Span, SpanEvent};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the body is not an OTLP export request (no resourceSpans array)")]
    Shape,
    /// The envelope around the spans is malformed: the whole request is, so
    /// it is refused (OTLP/HTTP: 400) rather than half read.
    #[error("the body is not an OTLP export request: {at} must be {expected}")]
    Malformed { at: String, expected: &'static str },
}

/// The spans of one export request, and how many were unusable.
#[derive(Debug, Default)]
pub struct Decoded {
    pub spans: Vec<Span>,
    pub rejected: usize,
}

pub fn decode(body: &[u8]) -> Result<Decoded, DecodeError> {
    let doc: Value = serde_json::from_slice(body)?;
    let resource_spans = doc.get("resourceSpans").and_then(Value::as_array).ok_or(DecodeError::Shape)?;
    let mut out = Decoded::default();
    for (i, rs) in resource_spans.iter().enumerate() {
        let at = format!("resourceSpans[{i}]");
        let rs = object(rs, &at)?;
        if let Some(resource) = rs.get("resource") {
            let resource = object(resource, &format!("{at}.resource"))?;
            if let Some(a) = resource.get("attributes") {
                array(a, &format!("{at}.resource.attributes"))?;
            }
        }
        let resource = attributes(rs.get("resource").and_then(|r| r.get("attributes")));
        let service = resource.get("service.name").cloned().unwrap_or_default();
        let scopes = match rs.get("scopeSpans") {
            Some(v) => array(v, &format!("{at}.scopeSpans"))?,
            None => &[],
        };
        for (j, scope) in scopes.iter().enumerate() {
            let at = format!("{at}.scopeSpans[{j}]");
            let spans = match object(scope, &at)?.get("spans") {
                Some(v) => array(v, &format!("{at}.spans"))?,
                None => &[],
            };
            for (k, span) in spans.iter().enumerate() {
                object(span, &format!("{at}.spans[{k}]"))?;
                match decode_span(span, &service) {
                    Some(s) => out.spans.push(s),
                    None => out.rejected += 1,
                }
            }
        }
    }
    Ok(out)
}

/// `v` as a JSON object, or the error naming where it is not one.
fn object<'a>(v: &'a Value, at: &str) -> Result<&'a serde_json::Map<String, Value>, DecodeError> {
    v.as_object().ok_or_else(|| DecodeError::Malformed { at: at.to_string(), expected: "an object" })
}

fn array<'a>(v: &'a Value, at: &str) -> Result<&'a [Value], DecodeError> {
    v.as_array().map(Vec::as_slice).ok_or_else(|| DecodeError::Malformed { at: at.to_string(), expected: "an array" })
}

fn decode_span(v: &Value, service: &str) -> Option<Span> {
    let trace_id = id(v.get("traceId"), 32)?;
    let span_id = id(v.get("spanId"), 16)?;
    let parent_span_id = id(v.get("parentSpanId"), 16);
    let start = nanos(v.get("startTimeUnixNano"))?;
    let end = nanos(v.get("endTimeUnixNano")).unwrap_or(start).max(start);
    let events = v
        .get("events")
        .and_then(Value::as_array)
        .map(|events| {
            events
                .iter()
                .map(|e| SpanEvent {
                    name: e.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                    time_unix_nano: nanos(e.get("timeUnixNano")).unwrap_or(start),
                    attributes: attributes(e.get("attributes")),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Span {
        trace_id,
        span_id,
        parent_span_id,
        name: v.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
        service: service.to_string(),
        start_unix_nano: start,
        end_unix_nano: end,
        // OTLP status code 2 is ERROR; unset (0) and OK (1) are not.
        error: v.pointer("/status/code").and_then(Value::as_i64) == Some(2),
        attributes: attributes(v.get("attributes")),
        events,
    })
}

/// A lower-case hex id of `len` digits, not all zero (invalid by W3C Trace Context).
fn id(v: Option<&Value>, len: usize) -> Option<String> {
    let s = v?.as_str()?.to_ascii_lowercase();
    let valid = s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0');
    valid.then_some(s)
}

/// OTLP JSON writes 64-bit integers as strings, but numbers are accepted too.
fn nanos(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// OTLP key/value lists as plain strings (the collector only shows them).
fn attributes(v: Option<&Value>) -> BTreeMap<String, String> {
    let Some(list) = v.and_then(Value::as_array) else { return BTreeMap::new() };
    list.iter()
        .filter_map(|kv| {
            let key = kv.get("key")?.as_str()?.to_string();
            let value = kv.get("value").map(any_value).unwrap_or_default();
            Some((key, value))
        })
        .collect()
}

fn any_value(v: &Value) -> String {
    if let Some(s) = v.get("stringValue").and_then(Value::as_str) {
        return s.to_string();
    }
    for key in ["intValue", "doubleValue", "boolValue"] {
        match v.get(key) {
            Some(Value::String(s)) => return s.clone(),
            Some(other) if !other.is_null() => return other.to_string(),
            _ => {}
        }
    }
    // Arrays, maps and bytes are shown as their JSON.
    v.as_object().and_then(|o| o.values().next()).map(Value::to_string).unwrap_or_default()
}
