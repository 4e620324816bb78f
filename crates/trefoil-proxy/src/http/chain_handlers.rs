//! The proxy's side of CNF event handlers: when a step's verdict carries
//! events that have handlers, runs them (the sandbox lives in
//! `trefoil_chain::handlers`) and, for an allow, applies what they ask. Calls
//! a handler makes to other functions go through the same call-out as chain
//! steps. Each run gets a span (see `telemetry::chain_span`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use trefoil_chain::handlers::{
    self, CallFuture, CallOutcome, Caller, DatapathChange, DatapathFuture, Effects, Handlers, RequestView, RunInput,
};
use trefoil_chain::Event;
use trefoil_model::spec::FailurePolicy;

use crate::config::datapath_link::Sent;
use crate::config::state::ProxyState;
use crate::http::callout;
use crate::http::chain::{call_for, scheme, step_outcome, Chain, Function, OwnedCall, RequestFacts, Stopped};
use crate::telemetry::chain_span::{HandlerRun, CALL};
use crate::telemetry::hop_spans::HopSpans;
use crate::telemetry::metrics::{label, ChainLabels, DatapathLabels, HandlerLabels, Label};

/// A CNF's handlers and the functions they may call (every NetworkFunction of the snapshot).
pub(crate) struct ChainHandlers {
    pub handlers: Handlers,
    pub functions: Arc<HashMap<String, Arc<Function>>>,
}

/// Handler runs a request has had, shared with its taps' background tasks so
/// `runsPerRequest` bounds them all.
pub(crate) type RunCount = Arc<AtomicUsize>;

/// What a run's effects apply to.
pub(crate) enum Target<'p> {
    /// After a request-phase allow: the request going upstream, which each
    /// run sees as it is then (earlier edits included).
    Request(&'p mut http::request::Parts),
    /// After a response-phase allow: the response going back.
    Response(&'p mut http::HeaderMap),
}

impl Target<'_> {
    fn headers(&mut self) -> &mut http::HeaderMap {
        match self {
            Target::Request(parts) => &mut parts.headers,
            Target::Response(headers) => headers,
        }
    }
}

/// How handlers run for one verdict.
pub(crate) struct Runner<'a> {
    pub(crate) cnf: &'a Label,
    pub(crate) h: &'a ChainHandlers,
    pub(crate) state: &'a Arc<ProxyState>,
    /// The function whose verdict carried the events: its failure policy
    /// applies to a failed handler. None for published events.
    pub(crate) function: Option<&'a Function>,
    pub(crate) scheme: &'static str,
    pub(crate) protocol: &'static str,
    pub(crate) spans: Option<&'a HopSpans>,
    pub(crate) runs: &'a RunCount,
    /// The verdict that carried the events: `allow`, `deny` or `tap`, on the
    /// runs' spans (`published` for events published outside verdicts).
    pub(crate) on: &'static str,
}

impl<'a> Runner<'a> {
    /// The runner of handlers for the events of `function`'s verdict `on`
    /// (`allow` or `deny`); a handler that fails gets `function`'s failure policy.
    pub(crate) fn for_verdict(
        chain: &'a Chain,
        h: &'a ChainHandlers,
        state: &'a Arc<ProxyState>,
        function: &'a Function,
        facts: &'a RequestFacts<'_>,
        on: &'static str,
    ) -> Self {
        Runner {
            cnf: &chain.cnf,
            h,
            state,
            function: Some(function),
            scheme: scheme(facts.tls),
            protocol: facts.protocol,
            spans: facts.spans.as_ref(),
            runs: &facts.runs,
            on,
        }
    }

    /// Runs the handlers of `events` of an allow verdict on the request and
    /// applies their effects to `parts`.
    pub(crate) async fn on_request(
        self,
        parts: &mut http::request::Parts,
        facts: &RequestFacts<'_>,
        events: Vec<Event>,
    ) -> Result<(), Stopped> {
        let request = OwnedCall::from(call_for(self.cnf, "", parts, facts, facts.body.clone()));
        self.run(request, Some(Target::Request(parts)), events.into()).await
    }

    /// Runs the handlers of `events` of an allow verdict on the response
    /// phase and applies their effects to the response's `headers` (a deny
    /// replaces the response). `response` is what they see and what their
    /// calls send: the request, with the upstream's answer and the buffered
    /// response body.
    pub(crate) async fn on_response(self, response: OwnedCall, headers: &mut http::HeaderMap, events: Vec<Event>) -> Result<(), Stopped> {
        self.run(response, Some(Target::Response(headers)), events.into()).await
    }

    /// Runs the handlers of a deny verdict's events before the reply goes
    /// out. The request is refused already: header edits and a further deny
    /// change nothing, and a failed handler keeps the deny; calls, logs,
    /// tags and emitted events work.
    pub(crate) async fn on_deny(self, request: OwnedCall, events: Vec<Event>) {
        // Without a request to change, a run never stops anything.
        let _ = self.run(request, None, events.into()).await;
    }

    /// Runs handlers for `queue` (and the events they emit) against `request`.
    /// With a `target`, effects apply to it and a deny or a failure under a
    /// closed policy stops the request; without, the request is past
    /// changing and effects other than calls, logs, tags and events are dropped.
    pub(crate) async fn run(
        &self,
        mut request: OwnedCall,
        mut target: Option<Target<'_>>,
        mut queue: VecDeque<Event>,
    ) -> Result<(), Stopped> {
        let trace_id = request.trace_id.clone();
        while let Some(event) = queue.pop_front() {
            let Some(handler) = self.h.handlers.get(&event.name) else { continue };
            if self.runs.fetch_add(1, Ordering::Relaxed) >= self.h.handlers.limits.runs_per_request {
                tracing::warn!(cnf = %self.cnf, trace_id, event = %event.name, "too many handler runs for one request; the rest are skipped");
                break;
            }
            let event_name = label(&event.name);
            if let Some(Target::Request(parts)) = &target {
                // The handler sees the request as it is now, earlier edits included.
                request.headers =
                    parts.headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.to_string(), v.to_string()))).collect();
            }
            if self.function.is_none() {
                // A published event has no request: calls describe the event itself.
                request.path = format!("/events/{}", event.name);
                request.body = Some(serde_json::to_vec(&event).unwrap_or_default().into());
            }
            let view = Arc::new(RequestView {
                method: request.method.clone(),
                path: request.path.clone(),
                host: request.host.clone(),
                headers: joined(&request.headers),
                source: request.source,
            });
            let call = Arc::new(request.clone());
            let started = self.spans.map(HopSpans::start_step);
            let caller = Arc::new(ProxyCaller {
                state: self.state.clone(),
                functions: self.h.functions.clone(),
                call,
                scheme: self.scheme,
                protocol: self.protocol,
                // What the handler calls shows under its run in the trace.
                spans: self.spans.zip(started.as_ref()).map(|(spans, run)| spans.under(run)),
            });
            let input = RunInput { cnf: self.cnf.to_string(), trace_id: trace_id.clone(), event, request: view };
            let outcome = handlers::run(handler, &self.h.handlers.limits, input, caller).await;
            let result = match &outcome {
                Ok(fx) if fx.deny.is_some() => "deny",
                Ok(_) => "ok",
                Err(e) => e.kind(),
            };
            count(self.state, self.cnf, event_name.clone(), result);
            if let (Some(spans), Some(started)) = (self.spans, started) {
                let tags = outcome.as_ref().map(|fx| fx.tags.as_slice()).unwrap_or_default();
                let error = outcome.as_ref().err().map(|e| e.to_string());
                spans.finish_handler(started, HandlerRun { cnf: self.cnf, event: &event_name, on: self.on, result, error, tags });
            }
            match outcome {
                Ok(fx) => {
                    self.log(&event_name, &trace_id, &fx);
                    match target.as_mut() {
                        Some(target) => {
                            if let Some((status, reason)) = fx.deny {
                                return Err(Stopped::denied(status, reason));
                            }
                            apply(target.headers(), &fx);
                        }
                        None if fx.deny.is_some() || !fx.set_headers.is_empty() || !fx.remove_headers.is_empty() => {
                            tracing::info!(target: "trefoil::chain::handler", cnf = %self.cnf, event = %event_name, trace_id, on = self.on, "nothing left to deny or edit: the handler's deny and header edits are dropped");
                        }
                        None => {}
                    }
                    queue.extend(fx.events);
                }
                Err(e) => {
                    let function: &str = self.function.map(|f| f.name.as_ref()).unwrap_or_default();
                    tracing::warn!(cnf = %self.cnf, event = %event_name, function, trace_id, on = self.on, error = %e, "event handler failed");
                    if target.is_none() {
                        continue;
                    }
                    let unavailable = match &e {
                        handlers::HandlerError::Unavailable(name) => Some(name.clone()),
                        _ if self.function.is_some_and(|f| f.failure_policy == FailurePolicy::Closed) => Some(function.to_string()),
                        _ => None,
                    };
                    if let Some(name) = unavailable {
                        return Err(Stopped::unavailable(&name));
                    }
                }
            }
        }
        Ok(())
    }

    /// Tags and emitted events go to the log under the trace id as well as on the run's span.
    fn log(&self, event: &str, trace_id: &str, fx: &Effects) {
        for (key, value) in &fx.tags {
            tracing::info!(target: "trefoil::chain::handler", cnf = %self.cnf, event, trace_id, tag = %key, value = %value, "handler tag");
        }
        for e in &fx.events {
            tracing::info!(target: "trefoil::chain::event", cnf = %self.cnf, trace_id, event = %e.name, data = %e.data, "handler event");
        }
    }
}

/// A handler's header edits: removals, then sets.
fn apply(headers: &mut http::HeaderMap, fx: &Effects) {
    for name in fx.remove_headers.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()) {
        headers.remove(name);
    }
    for (name, value) in &fx.set_headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
}

/// Runs the handlers of events a function published outside any verdict
/// (`published_events`). There is no request to act on: a handler's deny
/// and header edits are dropped (and logged). Its calls tell the called
/// function about the event: method `EVENT`, path `/events/<name>`, the
/// event as JSON for a body (if the function takes bodies).
pub(crate) async fn run_published(chain: &Chain, state: &Arc<ProxyState>, trace_id: &str, events: Vec<Event>) {
    let Some(h) = chain.handlers.as_ref() else { return };
    let request = OwnedCall {
        cnf: chain.cnf.to_string(),
        function: String::new(),
        method: "EVENT".to_string(),
        path: String::new(),
        host: String::new(),
        headers: Vec::new(),
        source: None,
        destination: None,
        trace_id: trace_id.to_string(),
        body: None,
        response: None,
    };
    let runs = RunCount::default();
    let runner = Runner {
        cnf: &chain.cnf,
        h,
        state,
        function: None,
        scheme: "http",
        protocol: "HTTP/1.1",
        spans: None,
        runs: &runs,
        on: "published",
    };
    let _ = runner.run(request, None, events.into()).await;
}

fn count(state: &ProxyState, cnf: &Label, event: Label, result: &'static str) {
    state.shared.metrics.chain_handler_runs.get_or_create(&HandlerLabels { cnf: cnf.clone(), event, result }).inc();
}

/// Repeated headers joined with ", " (RFC 9110 §5.3), as call-outs send them.
fn joined(headers: &[(String, String)]) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    for (name, value) in headers {
        map.entry(name.clone())
            .and_modify(|v: &mut String| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    map
}

/// Calls a NetworkFunction by name for a handler, as a chain step would.
struct ProxyCaller {
    state: Arc<ProxyState>,
    functions: Arc<HashMap<String, Arc<Function>>>,
    /// The request as the handler saw it; `function` is filled in per call.
    call: Arc<OwnedCall>,
    scheme: &'static str,
    protocol: &'static str,
    /// Where the calls' spans go: under the handler run's span, when traced.
    spans: Option<HopSpans>,
}

impl Caller for ProxyCaller {
    fn call(&self, name: &str) -> CallFuture {
        let Some(function) = self.functions.get(name).cloned() else {
            let name = name.to_string();
            return Box::pin(async move { Err(format!("no NetworkFunction named {name:?}")) });
        };
        let (state, call, scheme, protocol) = (self.state.clone(), self.call.clone(), self.scheme, self.protocol);
        let spans = self.spans.clone();
        Box::pin(async move {
            let mut request = call.as_call();
            request.function = &function.name;
            request.body = function.max_body.and(request.body);
            let started = spans.as_ref().map(HopSpans::start_step);
            let outcome = tokio::time::timeout(function.timeout, callout::call(&function, &request, scheme, protocol)).await;
            if let (Some(spans), Some(started)) = (&spans, started) {
                spans.finish_step(started, &call.cnf, &function.name, CALL, "handler", step_outcome(&outcome));
            }
            let metric = |result: &'static str| {
                state
                    .shared
                    .metrics
                    .chain_calls
                    .get_or_create(&ChainLabels { cnf: label(&call.cnf), function: function.name.clone(), result })
                    .inc();
            };
            let failure = match outcome {
                Ok(Ok(verdict)) => {
                    metric(if matches!(verdict, trefoil_chain::Verdict::Allow { .. }) { "allow" } else { "deny" });
                    return Ok(CallOutcome::Verdict(verdict));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("timed out after {:?}", function.timeout),
            };
            tracing::warn!(cnf = %call.cnf, function = %function.name, trace_id = %call.trace_id, error = %failure, "network function called by a handler failed");
            Ok(match function.failure_policy {
                FailurePolicy::Open => {
                    metric("failed_open");
                    CallOutcome::FailedOpen(failure)
                }
                FailurePolicy::Closed => {
                    metric("failed_closed");
                    CallOutcome::FailedClosed
                }
            })
        })
    }

    fn datapath(&self, change: DatapathChange) -> DatapathFuture {
        let (state, cnf) = (self.state.clone(), label(&self.call.cnf));
        Box::pin(async move {
            let done = if matches!(change, DatapathChange::Add(_)) { "added" } else { "removed" };
            let (result, answer) = match state.shared.datapath.send(change).await {
                Sent::Done(name) => (done, Ok(name)),
                Sent::Refused(reason) => ("refused", Err(reason)),
                Sent::Unavailable(reason) => ("unavailable", Err(reason)),
            };
            state.shared.metrics.chain_datapath_changes.get_or_create(&DatapathLabels { cnf, result }).inc();
            answer
        })
    }
}
