//! Where a hop's child spans go: each chain step, handler run and upstream
//! attempt is a child of the hop's own span, in the hop's trace.

use std::time::SystemTime;

use crate::telemetry::otlp::{SpanRecord, SpanSink};
use crate::telemetry::trace_context::{random_bytes, TraceContext};

/// Present only when the hop's trace is sampled and exported.
#[derive(Clone, Debug)]
pub(crate) struct HopSpans {
    sink: SpanSink,
    trace_id: [u8; 16],
    /// The hop's span: every span sent here is its child.
    parent: [u8; 8],
    proxy: String,
}

impl HopSpans {
    pub(crate) fn new(sink: Option<&SpanSink>, trace: &TraceContext, proxy: &str) -> Option<Self> {
        let sink = sink.filter(|_| trace.sampled)?.clone();
        Some(HopSpans { sink, trace_id: trace.trace_id, parent: trace.span_id, proxy: proxy.to_string() })
    }

    /// The proxy's name, an attribute of every span it sends.
    pub(crate) fn proxy(&self) -> &str {
        &self.proxy
    }

    /// A child span named `name` that started at `start`, with nothing else
    /// told yet: the caller fills in the rest, then `send`s it.
    pub(crate) fn child(&self, name: String, start: SystemTime) -> SpanRecord {
        SpanRecord {
            trace_id: self.trace_id,
            span_id: random_bytes(),
            parent_span_id: Some(self.parent),
            name,
            start,
            end: start,
            error: false,
            attributes: Vec::new(),
            extra_attributes: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The same hop's spans, sent as children of span `parent` instead.
    pub(crate) fn with_parent(&self, parent: [u8; 8]) -> HopSpans {
        HopSpans { parent, ..self.clone() }
    }

    pub(crate) fn send(&self, span: SpanRecord) {
        self.sink.send(span);
    }
}
