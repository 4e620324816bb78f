//! Span export over OTLP/HTTP with the JSON encoding, batched off the request path.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prometheus_client::metrics::counter::Counter;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::telemetry::trace_context::hex;
use crate::upstream::{BoxError, HttpClient};

/// A finished span of one hop.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub error: bool,
    pub attributes: Vec<(&'static str, String)>,
    /// Attributes whose keys are known only at run time (a handler's `tag.<key>`).
    pub extra_attributes: Vec<(String, String)>,
    /// Things that happened during the span, e.g. a network function's events.
    pub events: Vec<SpanEventRecord>,
}

/// A timestamped event inside a span.
#[derive(Debug, Clone)]
pub struct SpanEventRecord {
    pub name: String,
    pub time: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
}

/// Hands spans to the exporter task; never blocks.
#[derive(Clone, Debug)]
pub(crate) struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
    dropped: Counter,
}

impl SpanSink {
    pub(crate) fn send(&self, span: SpanRecord) {
        // A full queue means the collector is slow or away; dropping beats
        // stalling requests, and the loss is counted.
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

const BATCH: usize = 512;

/// Starts the exporter; spans go to `{endpoint}/v1/traces`.
pub(crate) fn start(endpoint: &str, service_name: String, client: HttpClient, dropped: Counter) -> SpanSink {
    let (tx, mut rx) = mpsc::channel::<SpanRecord>(16 * 1024);
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            let deadline = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(deadline);
            while batch.len() < BATCH {
                tokio::select! {
                    s = rx.recv() => match s { Some(s) => batch.push(s), None => break },
                    _ = &mut deadline => break,
                }
            }
            let body = encode(&service_name, &batch);
            batch.clear();
            if let Err(e) = post(&client, &url, body).await {
                tracing::warn!(error = %e, url = %url, "span export failed");
            }
        }
    });
    SpanSink { tx, dropped }
}

async fn post(client: &HttpClient, url: &str, body: Vec<u8>) -> Result<(), BoxError> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::HOST, url.split('/').nth(2).unwrap_or(""))
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed_unsync())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await??;
    if !resp.status().is_success() {
        return Err(format!("collector answered {}", resp.status()).into());
    }
    Ok(())
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string()
}

fn attributes(list: &[(&'static str, String)]) -> Vec<Value> {
    list.iter().map(|(k, v)| attribute(k, v)).collect()
}

fn attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

/// The OTLP JSON request for a batch of spans.
pub fn encode(service_name: &str, spans: &[SpanRecord]) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes(&s.attributes).into_iter().chain(s.extra_attributes.iter().map(|(k, v)| attribute(k, v))).collect::<Vec<_>>(),
                "status": {"code": if s.error { 2 } else { 1 }},
            });
            if !s.events.is_empty() {
                span["events"] = s
                    .events
                    .iter()
                    .map(|e| json!({"timeUnixNano": nanos(e.time), "name": e.name, "attributes": attributes(&e.attributes)}))
                    .collect();
            }
            if let Some(p) = s.parent_span_id {
                span["parentSpanId"] = json!(hex(&p));
            }
            span
        })
        .collect();
    let doc = json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]},
            "scopeSpans": [{"scope": {"name": "trefoil-proxy"}, "spans": spans}]
        }]
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_ids_as_hex() {
        let span = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            name: "GET /".into(),
            start: UNIX_EPOCH + Duration::from_secs(1),
            end: UNIX_EPOCH + Duration::from_secs(2),
            error: false,
            attributes: vec![("http.status_code", "200".into())],
            extra_attributes: vec![("tag.user".into(), "ann".into())],
            events: vec![SpanEventRecord {
                name: "found".into(),
                time: UNIX_EPOCH + Duration::from_millis(1500),
                attributes: vec![("data", "{}".into())],
            }],
        };
        let v: Value = serde_json::from_slice(&encode("edge", &[span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "01010101010101010101010101010101");
        assert_eq!(s["parentSpanId"], "0303030303030303");
        assert_eq!(s["startTimeUnixNano"], "1000000000");
        assert_eq!(s["events"][0]["timeUnixNano"], "1500000000");
        assert_eq!(s["events"][0]["attributes"][0]["key"], "data");
        assert_eq!(s["attributes"][1]["key"], "tag.user", "run-time keys follow the fixed ones");
    }
}
