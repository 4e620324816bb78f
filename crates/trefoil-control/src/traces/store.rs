//! The collector's bounded in-memory store: spans grouped by trace, the
//! oldest traces evicted first once the span cap is reached. Memory stays
//! bounded whatever the proxies send; a trace is for looking at a request
//! just made, not for keeping.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use trefoil_api::traces::{TraceStatus, TraceSummary, SUMMARY_FACTS};

use super::span::Span;

/// Default cap on spans held across all traces.
pub const MAX_SPANS: usize = 50_000;
/// Default cap on spans of one trace; later ones are dropped (a loop or a
/// storm of retries must not push every other trace out).
pub const MAX_SPANS_PER_TRACE: usize = 1_000;

#[derive(Default)]
struct Inner {
    traces: HashMap<String, Vec<Span>>,
    /// Trace ids by first arrival, oldest first: the eviction order.
    arrival: VecDeque<String>,
    total: usize,
}

pub struct TraceStore {
    inner: Mutex<Inner>,
    max_spans: usize,
    max_per_trace: usize,
    /// New spans, for follow streams.
    new_spans: broadcast::Sender<Arc<Span>>,
}

impl Default for TraceStore {
    fn default() -> Self {
        Self::with_caps(MAX_SPANS, MAX_SPANS_PER_TRACE)
    }
}

impl TraceStore {
    pub fn with_caps(max_spans: usize, max_per_trace: usize) -> Self {
        TraceStore {
            inner: Mutex::new(Inner::default()),
            max_spans: max_spans.max(1),
            max_per_trace: max_per_trace.max(1),
            new_spans: broadcast::channel(4096).0,
        }
    }

    /// Adds spans; returns how many were dropped by the per-trace cap.
    pub fn insert(&self, spans: Vec<Span>) -> usize {
        let mut dropped = 0;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for span in spans {
            let known = inner.traces.contains_key(&span.trace_id);
            if !known {
                inner.arrival.push_back(span.trace_id.clone());
            }
            let trace = inner.traces.entry(span.trace_id.clone()).or_default();
            // An exporter retrying a batch sends spans again: keep one of each.
            if trace.len() >= self.max_per_trace || trace.iter().any(|s| s.span_id == span.span_id) {
                dropped += 1;
                continue;
            }
            trace.push(span.clone());
            inner.total += 1;
            let _ = self.new_spans.send(Arc::new(span));
            while inner.total > self.max_spans {
                let Some(oldest) = inner.arrival.pop_front() else { break };
                if let Some(evicted) = inner.traces.remove(&oldest) {
                    inner.total -= evicted.len();
                }
            }
        }
        dropped
    }

    /// All spans of a trace, by start time (then end time, so a parent
    /// starting in the same nanosecond as its child comes first).
    pub fn trace(&self, trace_id: &str) -> Option<Vec<Span>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut spans = inner.traces.get(&trace_id.to_ascii_lowercase())?.clone();
        spans.sort_by(|a, b| a.start_unix_nano.cmp(&b.start_unix_nano).then(b.end_unix_nano.cmp(&a.end_unix_nano)));
        Some(spans)
    }

    /// The most recent traces (by start), newest first.
    pub fn recent(&self, limit: usize) -> Vec<TraceSummary> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Which traces first (by start only), then the summaries of those:
        // the list costs its length, not the store's.
        let mut starts: Vec<(u64, &String)> =
            inner.traces.iter().filter_map(|(id, spans)| Some((spans.iter().map(|s| s.start_unix_nano).min()?, id))).collect();
        starts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        starts.truncate(limit);
        starts.into_iter().filter_map(|(_, id)| summarize(id, &inner.traces[id])).collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Span>> {
        self.new_spans.subscribe()
    }

    /// Spans held, across all traces.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn summarize(id: &str, spans: &[Span]) -> Option<TraceSummary> {
    let start = spans.iter().map(|s| s.start_unix_nano).min()?;
    let end = spans.iter().map(|s| s.end_unix_nano).max()?;
    let is_root = |s: &&Span| s.parent_span_id.as_ref().is_none_or(|p| !spans.iter().any(|o| &o.span_id == p));
    let root = spans.iter().filter(is_root).min_by_key(|s| s.start_unix_nano);
    Some(TraceSummary {
        trace_id: id.to_string(),
        root: root.map(|s| s.name.clone()).unwrap_or_default(),
        service: root.map(|s| s.service.clone()).unwrap_or_default(),
        start_unix_nano: start,
        duration_ms: (end - start) as f64 / 1e6,
        spans: spans.len(),
        status: if spans.iter().any(|s| s.error) { TraceStatus::Error } else { TraceStatus::Ok },
        cnfs: facts(spans.iter().filter_map(|s| s.attributes.get("trefoil.cnf"))),
        events: facts(spans.iter().flat_map(|s| s.attributes.get("trefoil.event").into_iter().chain(s.events.iter().map(|e| &e.name)))),
        paths: facts(spans.iter().filter_map(|s| s.attributes.get("url.path"))),
    })
}

/// Distinct values, sorted, the first [`SUMMARY_FACTS`] of them.
fn facts<'a>(values: impl Iterator<Item = &'a String>) -> Vec<String> {
    let set: BTreeSet<&String> = values.filter(|v| !v.is_empty()).collect();
    set.into_iter().take(SUMMARY_FACTS).cloned().collect()
}
