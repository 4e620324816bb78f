//! The proxy's side of CNF event handlers: when a step's verdict carries
//! events that have handlers, runs them (the sandbox lives in
//! `trefoil_chain::handlers`) and applies what they ask. Calls a handler
//! makes to other functions go through the same call-out as chain steps.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use trefoil_chain::handlers::{self, CallFuture, CallOutcome, Caller, Handlers, RequestView, RunInput};
use trefoil_chain::Event;
use trefoil_model::spec::FailurePolicy;

use crate::http::callout;
use crate::http::chain::{call_for, scheme, Chain, Function, OwnedCall, RequestFacts, Stopped};
use crate::http::proxy::local_reply;
use crate::state::ProxyState;
use crate::telemetry::metrics::{label, ChainLabels, HandlerLabels};

/// Events handled per request at most, emitted ones included: a handler
/// emitting the event it handles must not loop.
const MAX_RUNS_PER_REQUEST: usize = 16;

/// A CNF's handlers and the functions they may call (every NetworkFunction of the snapshot).
pub struct ChainHandlers {
    pub handlers: Handlers,
    pub functions: Arc<HashMap<String, Arc<Function>>>,
}

/// Runs the handlers of `events`, published by `function`'s verdict, and
/// applies their effects to `parts`. A handler that fails gets `function`'s
/// failure policy.
pub async fn run(chain: &Chain, h: &ChainHandlers, state: &Arc<ProxyState>, function: &Function, parts: &mut http::request::Parts, facts: &RequestFacts<'_>, events: Vec<Event>) -> Result<(), Stopped> {
    let mut queue: VecDeque<Event> = events.into();
    let mut runs = 0;
    while let Some(event) = queue.pop_front() {
        let Some(handler) = h.handlers.get(&event.name) else { continue };
        if runs == MAX_RUNS_PER_REQUEST {
            tracing::warn!(cnf = %chain.cnf, trace_id = facts.trace_id, event = %event.name, "too many handler runs for one request; the rest are skipped");
            break;
        }
        runs += 1;
        let event_name = label(&event.name);
        // The handler sees the request as it is now, earlier edits included.
        let call = OwnedCall::from(call_for(&chain.cnf, "", parts, facts, facts.body.clone()));
        let request = Arc::new(RequestView { method: call.method.clone(), path: call.path.clone(), host: call.host.clone(), headers: joined(&call.headers) });
        let caller = Arc::new(ProxyCaller { state: state.clone(), functions: h.functions.clone(), call: Arc::new(call), scheme: scheme(facts.tls), protocol: facts.protocol });
        let input = RunInput { cnf: chain.cnf.to_string(), trace_id: facts.trace_id.to_string(), event, request };
        match handlers::run(handler, &h.handlers.limits, input, caller).await {
            Ok(fx) => {
                // Span attributes are fixed keys today; tags go to the log under the trace id.
                for (key, value) in &fx.tags {
                    tracing::info!(target: "trefoil::chain::handler", cnf = %chain.cnf, trace_id = facts.trace_id, tag = %key, value = %value, "handler tag");
                }
                if let Some((status, reason)) = fx.deny {
                    count(state, chain, event_name, "deny");
                    let reply = local_reply(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN), "chain_denied", reason);
                    return Err(Stopped { reply, flag: "chain_denied" });
                }
                count(state, chain, event_name, "ok");
                for name in fx.remove_headers.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()) {
                    parts.headers.remove(name);
                }
                for (name, value) in &fx.set_headers {
                    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                        parts.headers.insert(n, v);
                    }
                }
                for e in &fx.events {
                    tracing::info!(target: "trefoil::chain::event", cnf = %chain.cnf, trace_id = facts.trace_id, event = %e.name, data = %e.data, "handler event");
                }
                queue.extend(fx.events);
            }
            Err(e) => {
                count(state, chain, event_name.clone(), e.kind());
                tracing::warn!(cnf = %chain.cnf, event = %event_name, function = %function.name, trace_id = facts.trace_id, error = %e, "event handler failed");
                let unavailable = match &e {
                    handlers::HandlerError::Unavailable(name) => Some(name.clone()),
                    _ if function.failure_policy == FailurePolicy::Closed => Some(function.name.to_string()),
                    _ => None,
                };
                if let Some(name) = unavailable {
                    let reply = local_reply(StatusCode::SERVICE_UNAVAILABLE, "chain_unavailable", format!("network function {name} is unavailable\n"));
                    return Err(Stopped { reply, flag: "chain_unavailable" });
                }
            }
        }
    }
    Ok(())
}

/// Runs the handlers of events a function published outside any verdict
/// (`published_events`). There is no request to act on: a handler's deny
/// and header edits are dropped (and logged). Its calls tell the called
/// function about the event: method `EVENT`, path `/events/<name>`, the
/// event as JSON for a body (if the function takes bodies).
pub async fn run_published(chain: &Chain, state: &Arc<ProxyState>, trace_id: &str, events: Vec<Event>) {
    let Some(h) = chain.handlers.as_ref() else { return };
    let mut queue: VecDeque<Event> = events.into();
    let mut runs = 0;
    while let Some(event) = queue.pop_front() {
        let Some(handler) = h.handlers.get(&event.name) else { continue };
        if runs == MAX_RUNS_PER_REQUEST {
            tracing::warn!(cnf = %chain.cnf, trace_id, event = %event.name, "too many handler runs for one publication; the rest are skipped");
            break;
        }
        runs += 1;
        let event_name = label(&event.name);
        let call = OwnedCall {
            cnf: chain.cnf.to_string(),
            function: String::new(),
            method: "EVENT".to_string(),
            path: format!("/events/{}", event.name),
            host: String::new(),
            headers: Vec::new(),
            source: None,
            destination: None,
            trace_id: trace_id.to_string(),
            body: Some(serde_json::to_vec(&event).unwrap_or_default().into()),
            response: None,
        };
        let request = Arc::new(RequestView { method: call.method.clone(), path: call.path.clone(), host: String::new(), headers: Default::default() });
        let caller = Arc::new(ProxyCaller { state: state.clone(), functions: h.functions.clone(), call: Arc::new(call), scheme: "http", protocol: "HTTP/1.1" });
        let input = RunInput { cnf: chain.cnf.to_string(), trace_id: trace_id.to_string(), event, request };
        match handlers::run(handler, &h.handlers.limits, input, caller).await {
            Ok(fx) => {
                count(state, chain, event_name.clone(), "ok");
                if fx.deny.is_some() || !fx.set_headers.is_empty() || !fx.remove_headers.is_empty() {
                    tracing::info!(target: "trefoil::chain::handler", cnf = %chain.cnf, event = %event_name, trace_id, "a published event has no request to deny or edit; the handler's deny and header edits are dropped");
                }
                for (key, value) in &fx.tags {
                    tracing::info!(target: "trefoil::chain::handler", cnf = %chain.cnf, trace_id, tag = %key, value = %value, "handler tag");
                }
                queue.extend(fx.events);
            }
            Err(e) => {
                count(state, chain, event_name.clone(), e.kind());
                tracing::warn!(cnf = %chain.cnf, event = %event_name, trace_id, error = %e, "event handler failed");
            }
        }
    }
}

fn count(state: &ProxyState, chain: &Chain, event: crate::telemetry::metrics::Label, result: &'static str) {
    state.shared.metrics.chain_handler_runs.get_or_create(&HandlerLabels { cnf: chain.cnf.clone(), event, result }).inc();
}

/// Repeated headers joined with ", " (RFC 9110 §5.3), as call-outs send them.
fn joined(headers: &[(String, String)]) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    for (name, value) in headers {
        map.entry(name.clone()).and_modify(|v: &mut String| {
            v.push_str(", ");
            v.push_str(value);
        }).or_insert_with(|| value.clone());
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
}

impl Caller for ProxyCaller {
    fn call(&self, name: &str) -> CallFuture {
        let Some(function) = self.functions.get(name).cloned() else {
            let name = name.to_string();
            return Box::pin(async move { Err(format!("no NetworkFunction named {name:?}")) });
        };
        let (state, call, scheme, protocol) = (self.state.clone(), self.call.clone(), self.scheme, self.protocol);
        Box::pin(async move {
            let mut request = call.as_call();
            request.function = &function.name;
            request.body = function.max_body.and(request.body);
            let outcome = tokio::time::timeout(function.timeout, callout::call(&function, &request, scheme, protocol)).await;
            let metric = |result: &'static str| {
                state.shared.metrics.chain_calls.get_or_create(&ChainLabels { cnf: label(&call.cnf), function: function.name.clone(), result }).inc();
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
}
