//! A span per chain step: one child of the hop's span for each call-out,
//! tap or inline hop to a network function, with its verdict and the events
//! it published, and one per event-handler run, with its result and the
//! handler's tags, so a trace shows the chain in order between the hop and
//! its upstream.

use std::time::SystemTime;

use trefoil_chain::{Event, Verdict};

use crate::telemetry::hop_spans::HopSpans;
use crate::telemetry::otlp::{SpanEventRecord, SpanRecord};
use crate::telemetry::trace_context::random_bytes;

/// A step under way, and the id its span will have (so that what it calls
/// can be its children).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepStart {
    at: SystemTime,
    span_id: [u8; 8],
}

/// How a step ended.
pub(crate) enum StepOutcome<'a> {
    Answered(&'a Verdict),
    /// An inline function answered with this status.
    Inlined(u16),
    Failed(String),
    TimedOut,
}

impl HopSpans {
    pub(crate) fn start_step(&self) -> StepStart {
        StepStart { at: SystemTime::now(), span_id: random_bytes() }
    }

    /// Where the spans of what a step (a handler run) calls go: under its span.
    pub(crate) fn under(&self, step: &StepStart) -> HopSpans {
        self.with_parent(step.span_id)
    }

    /// Sends the step's span: `chain <function>` (`chain <function> response`
    /// on the response phase, `call <function>` for a handler's call), with the CNF, function, mode, phase and
    /// verdict as attributes and the function's events as span events.
    pub(crate) fn finish_step(
        &self,
        started: StepStart,
        cnf: &str,
        function: &str,
        mode: &'static str,
        phase: &'static str,
        outcome: StepOutcome<'_>,
    ) {
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
            ("trefoil.step.phase", phase.to_string()),
            ("trefoil.verdict", verdict.to_string()),
            ("trefoil.proxy", self.proxy().to_string()),
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
        let events = span_events(events, end);
        let name = match (mode, phase) {
            (CALL, _) => format!("call {function}"),
            (_, "response") => format!("chain {function} response"),
            _ => format!("chain {function}"),
        };
        let span = SpanRecord { span_id: started.span_id, ..self.child(name, started.at) };
        // A deny is the function doing its job; only a missing answer is an error.
        self.send(SpanRecord { end, error: failed, attributes, events, ..span });
    }

    /// Sends a handler run's span: `handler <event>`, with the CNF, event,
    /// the verdict that carried the event (`on`), the result (`ok`, `deny`
    /// or the failure's kind) and the handler's tags as `tag.<key>`.
    pub(crate) fn finish_handler(&self, started: StepStart, run: HandlerRun<'_>) {
        let mut attributes = vec![
            ("trefoil.cnf", run.cnf.to_string()),
            ("trefoil.event", run.event.to_string()),
            ("trefoil.handler.on", run.on.to_string()),
            ("trefoil.handler.result", run.result.to_string()),
            ("trefoil.proxy", self.proxy().to_string()),
        ];
        let failed = run.error.is_some();
        if let Some(e) = run.error {
            attributes.push(("error.message", e));
        }
        // A later tag of the same key wins, as an attribute map would have it.
        let mut tags: Vec<(String, String)> = Vec::new();
        for (key, value) in run.tags {
            if let Some(slot) = tags.iter_mut().find(|(k, _)| k[TAG_PREFIX.len()..] == *key) {
                slot.1 = value.clone();
            } else if tags.len() < MAX_TAGS {
                tags.push((format!("{TAG_PREFIX}{key}"), value.clone()));
            }
        }
        let span = SpanRecord { span_id: started.span_id, ..self.child(format!("handler {}", run.event), started.at) };
        // As with steps, a deny is the handler doing its job.
        self.send(SpanRecord { end: SystemTime::now(), error: failed, attributes, extra_attributes: tags, ..span });
    }
}

/// The mode of a call a handler made (`trefoil.call("antivirus")`), as its span tells it.
pub(crate) const CALL: &str = "call";

/// Tags become attributes under this prefix, apart from the proxy's own.
const TAG_PREFIX: &str = "tag.";
/// Tags per handler span at most (OpenTelemetry's default limit is 128 attributes); the rest are dropped.
const MAX_TAGS: usize = 64;

/// What a handler run's span tells.
pub(crate) struct HandlerRun<'a> {
    pub cnf: &'a str,
    pub event: &'a str,
    /// The verdict whose event ran the handler: `allow`, `deny` or `tap`.
    pub on: &'static str,
    /// `ok`, `deny` or the failure's kind (`error`, `cpu_limit`, ...).
    pub result: &'static str,
    pub error: Option<String>,
    pub tags: &'a [(String, String)],
}

/// The span of events a function published on its own (not in a verdict):
/// `events <function>`, the events as span events. It has no parent: the
/// function publishes with the trace id only, often after the request ended.
pub(crate) fn published_span(trace_id: [u8; 16], cnf: &str, function: &str, events: &[Event], proxy: &str, at: SystemTime) -> SpanRecord {
    let name = if function.is_empty() { "events published".to_string() } else { format!("events {function}") };
    SpanRecord {
        trace_id,
        span_id: random_bytes(),
        parent_span_id: None,
        name,
        start: at,
        end: at,
        error: false,
        attributes: vec![
            ("trefoil.cnf", cnf.to_string()),
            ("trefoil.function", function.to_string()),
            ("trefoil.proxy", proxy.to_string()),
        ],
        extra_attributes: Vec::new(),
        events: span_events(events, at),
    }
}

/// A function's events as span events, their data as JSON.
fn span_events(events: &[Event], at: SystemTime) -> Vec<SpanEventRecord> {
    events
        .iter()
        .map(|e| SpanEventRecord {
            name: e.name.clone(),
            time: at,
            attributes: if e.data.is_null() { Vec::new() } else { vec![("data", e.data.to_string())] },
        })
        .collect()
}
