//! A span per upstream attempt: one child of the hop's span for each try
//! at an endpoint, retries included, with the endpoint, what it answered (or
//! why it failed) and whether another attempt followed, so a trace shows
//! where a hop's time went and why it retried.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::http::retry::AttemptFailure;
use crate::telemetry::hop_spans::HopSpans;
use crate::telemetry::otlp::SpanRecord;

/// An attempt under way: what it is sent to and when it started. Dropped
/// unfinished (the rule's timeout cancelled the attempts), it is sent as
/// failed with `cancelled`.
pub(crate) struct AttemptSpan {
    spans: HopSpans,
    sent: bool,
    number: u32,
    upstream: SocketAddr,
    service: String,
    version: String,
    start: SystemTime,
}

/// How an attempt ended: the upstream's status, or why there was none.
pub(crate) type AttemptEnd = Result<u16, AttemptFailure>;

impl HopSpans {
    /// Starts attempt `number` (1 for the first) at `upstream`.
    pub(crate) fn start_attempt(&self, number: u32, upstream: SocketAddr, service: &str, version: &str) -> AttemptSpan {
        AttemptSpan {
            spans: self.clone(),
            sent: false,
            number,
            upstream,
            service: service.to_string(),
            version: version.to_string(),
            start: SystemTime::now(),
        }
    }
}

impl AttemptSpan {
    /// Sends the span `attempt N`; `retrying` says whether another attempt follows.
    pub(crate) fn finish(mut self, end: AttemptEnd, retrying: bool) {
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
            ("trefoil.proxy", self.spans.proxy().to_string()),
        ];
        if let Some(status) = status {
            attributes.push(("trefoil.attempt.status", status.to_string()));
        }
        if let Some(failure) = failure {
            attributes.push(("trefoil.attempt.failure", failure.to_string()));
        }
        let failed = failure.is_some() || status.is_some_and(|s| s >= 500);
        let span = self.spans.child(format!("attempt {}", self.number), self.start);
        self.spans.send(SpanRecord { end: SystemTime::now(), error: failed, attributes, ..span });
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
pub(crate) fn finish(span: Option<AttemptSpan>, end: AttemptEnd, retrying: bool) {
    if let Some(span) = span {
        span.finish(end, retrying);
    }
}
