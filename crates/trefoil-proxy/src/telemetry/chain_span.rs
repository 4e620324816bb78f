//! A span per chain step: one child of the hop's span for each call-out,
//! tap or inline hop to a network function, with its verdict and the events it published,
//! so a trace shows the chain in order between the hop and its upstream.

use std::time::SystemTime;

use trefoil_chain::Verdict;

use crate::telemetry::otlp::{SpanEventRecord, SpanRecord, SpanSink};
use crate::telemetry::trace_context::{random_bytes, TraceContext};

/// Where a request's chain-step spans go; present only when the request's
/// trace is sampled and exported.
#[derive(Clone, Debug)]
pub struct StepSpans {
    sink: SpanSink,
    trace_id: [u8; 16],
    /// The hop's span: every step is its child.
    parent: [u8; 8],
    proxy: String,
}

/// A step under way.
#[derive(Clone, Copy, Debug)]
pub struct StepStart {
    at: SystemTime,
}

/// How a step ended.
pub enum StepOutcome<'a> {
    Answered(&'a Verdict),
    /// An inline function answered with this status.
    Inlined(u16),
    Failed(String),
    TimedOut,
}

impl StepSpans {
    pub fn new(sink: Option<&SpanSink>, trace: &TraceContext, proxy: &str) -> Option<Self> {
        let sink = sink.filter(|_| trace.sampled)?.clone();
        Some(StepSpans { sink, trace_id: trace.trace_id, parent: trace.span_id, proxy: proxy.to_string() })
    }

    pub fn start(&self) -> StepStart {
        StepStart { at: SystemTime::now() }
    }

    /// Sends the step's span: `chain <function>`, with the CNF, function,
    /// mode and verdict as attributes and the function's events as span events.
    pub fn finish(&self, started: StepStart, cnf: &str, function: &str, mode: &'static str, outcome: StepOutcome<'_>) {
        let end = SystemTime::now();
        let inlined_status = if let StepOutcome::Inlined(s) = outcome { Some(s) } else { None };
        let (verdict, error, status, events) = match outcome {
            StepOutcome::Answered(Verdict::Allow { events, .. }) => ("allow", None, String::new(), events.as_slice()),
            StepOutcome::Answered(Verdict::Deny { status, events, .. }) => ("deny", None, status.to_string(), events.as_slice()),
            StepOutcome::Inlined(_) => ("inlined", None, String::new(), &[][..]),
            StepOutcome::Failed(e) => ("error", Some(e), String::new(), &[][..]),
            StepOutcome::TimedOut => ("timeout", Some("no answer within the function's timeout".to_string()), String::new(), &[][..]),
        };
        let mut attributes = vec![
            ("trefoil.cnf", cnf.to_string()),
            ("trefoil.function", function.to_string()),
            ("trefoil.step.mode", mode.to_string()),
            ("trefoil.verdict", verdict.to_string()),
            ("trefoil.proxy", self.proxy.clone()),
        ];
        if !status.is_empty() {
            attributes.push(("trefoil.deny.status", status));
        }
        if let Some(status) = inlined_status {
            attributes.push(("http.response.status_code", status.to_string()));
        }
        let failed = error.is_some();
        if let Some(e) = error {
            attributes.push(("error.message", e));
        }
        let events = events
            .iter()
            .map(|e| SpanEventRecord { name: e.name.clone(), time: end, attributes: if e.data.is_null() { Vec::new() } else { vec![("data", e.data.to_string())] } })
            .collect();
        self.sink.send(SpanRecord {
            trace_id: self.trace_id,
            span_id: random_bytes(),
            parent_span_id: Some(self.parent),
            name: format!("chain {function}"),
            start: started.at,
            end,
            // A deny is the function doing its job; only a missing answer is an error.
            error: failed,
            attributes,
            events,
        });
    }
}
