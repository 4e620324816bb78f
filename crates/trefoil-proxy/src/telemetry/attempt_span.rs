//! A span per upstream attempt: one child of the hop's span for each try
//! at an endpoint, retries included, with the endpoint, what it answered (or
//! why it failed) and whether another attempt followed, so a trace shows
//! where a hop's time went and why it retried.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::http::retry::AttemptFailure;
use crate::telemetry::otlp::{SpanRecord, SpanSink};
use crate::telemetry::trace_context::{random_bytes, TraceContext};

/// Where a request's attempt spans go; present only when its trace is sampled and exported.
#[derive(Clone, Debug)]
pub struct AttemptSpans {
    sink: SpanSink,
    trace_id: [u8; 16],
    /// The hop's span: every attempt is its child.
    parent: [u8; 8],
    proxy: String,
}

/// An attempt under way: what it is sent to and when it started. Dropped
/// unfinished (the rule's timeout cancelled the attempts), it is sent as
/// failed with `cancelled`.
pub struct AttemptSpan {
    spans: AttemptSpans,
    sent: bool,
    number: u32,
    upstream: SocketAddr,
    service: String,
    version: String,
    start: SystemTime,
}

/// How an attempt ended: the upstream's status, or why there was none.
pub type AttemptEnd = Result<u16, AttemptFailure>;

impl AttemptSpans {
    pub fn new(sink: Option<&SpanSink>, trace: &TraceContext, proxy: &str) -> Option<Self> {
        let sink = sink.filter(|_| trace.sampled)?.clone();
        Some(AttemptSpans { sink, trace_id: trace.trace_id, parent: trace.span_id, proxy: proxy.to_string() })
    }

    /// Starts attempt `number` (1 for the first) at `upstream`.
    pub fn start(&self, number: u32, upstream: SocketAddr, service: &str, version: &str) -> AttemptSpan {
        AttemptSpan { spans: self.clone(), sent: false, number, upstream, service: service.to_string(), version: version.to_string(), start: SystemTime::now() }
    }
}

impl AttemptSpan {
    /// Sends the span `attempt N`; `retrying` says whether another attempt follows.
    pub fn finish(mut self, end: AttemptEnd, retrying: bool) {
        match end {
            Ok(status) => self.send(Some(status), None, retrying),
            Err(AttemptFailure::Status(status)) => self.send(Some(status), Some("status"), retrying),
            Err(failure) => self.send(None, Some(failure.reason()), retrying),
        }
    }

    /// A status of 500 or more, or any failure, marks the span failed.
    fn send(&mut self, status: Option<u16>, failure: Option<&'static str>, retrying: bool) {
        self.sent = true;
        let mut attributes = vec![
            ("trefoil.attempt", self.number.to_string()),
            ("trefoil.upstream", self.upstream.to_string()),
            ("trefoil.service", self.service.clone()),
            ("trefoil.version", self.version.clone()),
            ("trefoil.retry", retrying.to_string()),
            ("trefoil.proxy", self.spans.proxy.clone()),
        ];
        if let Some(status) = status {
            attributes.push(("trefoil.attempt.status", status.to_string()));
        }
        if let Some(failure) = failure {
            attributes.push(("trefoil.attempt.failure", failure.to_string()));
        }
        let failed = failure.is_some() || status.is_some_and(|s| s >= 500);
        let spans = &self.spans;
        spans.sink.send(SpanRecord {
            trace_id: spans.trace_id,
            span_id: random_bytes(),
            parent_span_id: Some(spans.parent),
            name: format!("attempt {}", self.number),
            start: self.start,
            end: SystemTime::now(),
            error: failed,
            attributes,
            extra_attributes: Vec::new(),
            events: Vec::new(),
        });
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if !self.sent {
            self.send(None, Some("cancelled"), false);
        }
    }
}

/// Ends `span`, if the request has one.
pub fn finish(span: Option<AttemptSpan>, end: AttemptEnd, retrying: bool) {
    if let Some(span) = span {
        span.finish(end, retrying);
    }
}
