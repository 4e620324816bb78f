//! The chain stage: a route rule's CNF, run on the request after routing and
//! filters, and on the upstream's response before it goes back. Each
//! `callout` step asks its function and follows the verdict (allow with
//! header edits, or deny); a `tap` step sends the function the same call in
//! the background and ignores the answer; an `inline` step hands the request
//! to `inline` to forward through the function. A function that cannot
//! answer in time is handled by its failure policy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use trefoil_chain::{Call, ResponseHead, Verdict};
use trefoil_model::spec::{FailurePolicy, FunctionApi, StepMode};

use crate::config::snapshot::Cluster;
use crate::config::state::ProxyState;
use crate::http::body::{self, Collected};
use crate::http::callout;
use crate::http::chain_handlers::{ChainHandlers, RunCount, Runner};
use crate::http::local_reply::LocalReply;
use crate::http::route_match::RequestMatcher;
use crate::telemetry::chain_span::StepOutcome;
use crate::telemetry::hop_spans::HopSpans;
use crate::telemetry::metrics::{ChainLabels, Label};
use crate::upstream::ProxyBody;

/// Names the CNF a call belongs to, on HTTP call-outs and as gRPC metadata.
pub(crate) static CNF_HEADER: HeaderName = HeaderName::from_static("x-trefoil-cnf");

/// A NetworkFunction, ready to call.
pub(crate) struct Function {
    pub name: Label,
    pub api: FunctionApi,
    pub cluster: Arc<Cluster>,
    pub failure_policy: FailurePolicy,
    pub timeout: Duration,
    /// Largest body sent along; `None` sends metadata only.
    pub max_body: Option<usize>,
}

/// One step of a compiled chain.
pub(crate) struct Step {
    pub function: Arc<Function>,
    pub mode: StepMode,
    /// Runs the step only for requests that match.
    pub when: Option<RequestMatcher>,
}

/// A CNF's chain, shared by every rule that names it.
pub(crate) struct Chain {
    pub cnf: Label,
    /// The request-phase steps, in chain order.
    pub steps: Vec<Step>,
    /// The largest body a request-phase step asks for: the proxy buffers that much before the chain runs.
    pub max_body: Option<usize>,
    /// The response-phase steps, in chain order; run on the upstream's answer.
    pub response_steps: Vec<Step>,
    /// The CNF's event handlers; `None` when it has none, so such chains pay nothing.
    pub handlers: Option<Arc<ChainHandlers>>,
}

/// What the chain needs to know about the request besides its head.
pub(crate) struct RequestFacts<'a> {
    pub host: &'a str,
    pub client: SocketAddr,
    pub local: Option<SocketAddr>,
    /// Where the client addressed the connection, on a transparent listener.
    pub original_destination: Option<SocketAddr>,
    pub trace_id: &'a str,
    pub tls: bool,
    pub protocol: &'static str,
    /// This hop's `traceparent`, for an inline function.
    pub traceparent: HeaderValue,
    /// The buffered body, when the chain asked for it.
    pub body: Option<Bytes>,
    /// Where each step's span goes, when the request is traced.
    pub spans: Option<HopSpans>,
    /// Handler runs of the request so far, both phases and its taps:
    /// `runsPerRequest` bounds them all.
    pub runs: RunCount,
}

/// Where a request goes once the chain let it on.
pub(crate) enum Next {
    /// To the rule's upstream.
    Upstream,
    /// Through the function of the inline step at this index (see `inline::forward`).
    Inline(usize),
}

/// Why the chain stopped a request: the reply to send and its flag.
pub(crate) struct Stopped {
    pub reply: Response<ProxyBody>,
    pub flag: LocalReply,
}

impl Stopped {
    /// Stopped with `flag`'s status and a body saying more.
    pub(crate) fn new(flag: LocalReply, text: impl Into<bytes::Bytes>) -> Self {
        Stopped { reply: flag.reply_text(text), flag }
    }

    /// Refused because network function `name` failed under `failurePolicy: closed`.
    pub(crate) fn unavailable(name: &str) -> Self {
        Stopped::new(LocalReply::ChainUnavailable, format!("network function {name} is unavailable\n"))
    }

    /// Denied by a verdict or a handler, with the status and reason it gave.
    pub(crate) fn denied(status: u16, reason: String) -> Self {
        let flag = LocalReply::ChainDenied;
        Stopped { reply: flag.reply_with(StatusCode::from_u16(status).unwrap_or(flag.status()), reason), flag }
    }
}

impl Chain {
    /// Runs the request-phase steps in order (from after the step the
    /// request resumes from, if any); `Ok` lets the request go on (with the
    /// verdicts' header edits applied to `parts`), to the upstream or
    /// through an inline step's function.
    pub(crate) async fn run_request(
        &self,
        state: &Arc<ProxyState>,
        parts: &mut http::request::Parts,
        facts: &RequestFacts<'_>,
    ) -> Result<Next, Stopped> {
        for (i, step) in self.steps.iter().enumerate().skip(self.first_step(parts)?) {
            if step.when.as_ref().is_some_and(|m| !m.matches(parts)) {
                continue;
            }
            if step.mode == StepMode::Inline {
                return Ok(Next::Inline(i));
            }
            let function = &step.function;
            let body = function.max_body.and(facts.body.clone());
            let call = call_for(&self.cnf, &function.name, parts, facts, body);
            if step.mode == StepMode::Tap {
                self.tap(state, function, OwnedCall::from(call), facts, facts.body.clone());
                continue;
            }
            let Some(verdict) = self.ask(state, function, &call, facts, "request").await? else { continue };
            match verdict {
                Verdict::Allow { set_headers, remove_headers, events } => {
                    self.count(state, function, "allow");
                    edit_headers(&mut parts.headers, &remove_headers, &set_headers);
                    if let Some(h) = self.handlers.as_ref().filter(|h| h.handlers.handles_any(&events)) {
                        Runner::for_verdict(self, h, state, function, facts, "allow").on_request(parts, facts, events).await?;
                    }
                }
                Verdict::Deny { status, reason, headers, events } => {
                    self.count(state, function, "deny");
                    if let Some(h) = self.handlers.as_ref().filter(|h| h.handlers.handles_any(&events)) {
                        let request = OwnedCall::from(call_for(&self.cnf, "", parts, facts, facts.body.clone()));
                        Runner::for_verdict(self, h, state, function, facts, "deny").on_deny(request, events).await;
                    }
                    return Err(denied(status, reason, &headers));
                }
            }
        }
        Ok(Next::Upstream)
    }

    /// Runs the response-phase steps on the upstream's answer. An allow's
    /// header edits apply to the response; a deny replaces it. The response
    /// body is buffered first (up to the largest `sendBody` of these steps)
    /// when a step wants it; a larger one cannot be judged by such a step,
    /// so that step's failure policy decides.
    pub(crate) async fn run_response(
        &self,
        state: &Arc<ProxyState>,
        request: &http::request::Parts,
        response: Response<ProxyBody>,
        facts: &RequestFacts<'_>,
    ) -> Result<Response<ProxyBody>, Stopped> {
        let steps: Vec<&Step> = self.response_steps.iter().filter(|s| s.when.as_ref().is_none_or(|m| m.matches(request))).collect();
        if steps.is_empty() {
            return Ok(response);
        }
        let (mut head, body) = response.into_parts();
        let wanted = steps.iter().filter_map(|s| s.function.max_body).max();
        let (body, buffered) = match wanted {
            None => (body, None),
            Some(limit) => match body::collect_up_to(body, limit).await {
                Ok(Collected::Whole { data, trailers }) => (body::replay(data.clone(), trailers), Some(data)),
                Ok(Collected::Over(body)) => (body, None),
                Err(e) => {
                    tracing::debug!(error = %e, trace_id = facts.trace_id, "upstream response body could not be read for the chain");
                    return Err(Stopped::new(LocalReply::UpstreamReset, "upstream reset the response\n"));
                }
            },
        };
        for step in steps {
            let function = &step.function;
            let call_body = match (function.max_body, &buffered) {
                (None, _) => None,
                (Some(limit), Some(data)) if data.len() <= limit => Some(data.clone()),
                (Some(limit), _) => {
                    tracing::warn!(cnf = %self.cnf, function = %function.name, trace_id = facts.trace_id, limit, "response body larger than the network function accepts");
                    if let Some(mut stopped) = self.failed(state, function) {
                        let flag = LocalReply::ChainBodyTooLarge;
                        let text = format!("response body exceeds what network function {} accepts\n", function.name);
                        // The upstream's answer is what is too large: a gateway error, not the client's 413.
                        stopped.reply = flag.reply_with(StatusCode::BAD_GATEWAY, text);
                        stopped.flag = flag;
                        return Err(stopped);
                    }
                    continue;
                }
            };
            let call = response_call(&self.cnf, &function.name, request, &head, facts, call_body);
            if step.mode == StepMode::Tap {
                self.tap(state, function, OwnedCall::from(call), facts, buffered.clone());
                continue;
            }
            let Some(verdict) = self.ask(state, function, &call, facts, "response").await? else { continue };
            // Handlers see the response as it is now and the whole buffered body.
            let seen = |head: &http::response::Parts| OwnedCall::from(response_call(&self.cnf, "", request, head, facts, buffered.clone()));
            match verdict {
                Verdict::Allow { set_headers, remove_headers, events } => {
                    self.count(state, function, "allow");
                    edit_headers(&mut head.headers, &remove_headers, &set_headers);
                    if let Some(h) = self.handlers.as_ref().filter(|h| h.handlers.handles_any(&events)) {
                        let response = seen(&head);
                        Runner::for_verdict(self, h, state, function, facts, "allow")
                            .on_response(response, &mut head.headers, events)
                            .await?;
                    }
                }
                Verdict::Deny { status, reason, headers, events } => {
                    self.count(state, function, "deny");
                    if let Some(h) = self.handlers.as_ref().filter(|h| h.handlers.handles_any(&events)) {
                        Runner::for_verdict(self, h, state, function, facts, "deny").on_deny(seen(&head), events).await;
                    }
                    return Err(denied(status, reason, &headers));
                }
            }
        }
        Ok(Response::from_parts(head, body))
    }

    /// Asks `function` once, bounded by its timeout, and sends the step's
    /// span. `Ok(None)`: the function failed and its policy lets the
    /// request go on; `Err`: it failed closed.
    async fn ask(
        &self,
        state: &ProxyState,
        function: &Function,
        call: &Call<'_>,
        facts: &RequestFacts<'_>,
        phase: &'static str,
    ) -> Result<Option<Verdict>, Stopped> {
        let started = facts.spans.as_ref().map(HopSpans::start_step);
        let outcome = tokio::time::timeout(function.timeout, callout::call(function, call, scheme(facts.tls), facts.protocol)).await;
        if let (Some(spans), Some(started)) = (&facts.spans, started) {
            spans.finish_step(started, &self.cnf, &function.name, "callout", phase, step_outcome(&outcome));
        }
        match outcome {
            Ok(Ok(verdict)) => {
                log_events(&self.cnf, function, facts.trace_id, &verdict);
                return Ok(Some(verdict));
            }
            Ok(Err(e)) => {
                tracing::warn!(cnf = %self.cnf, function = %function.name, trace_id = facts.trace_id, error = %e, "network function failed")
            }
            Err(_) => {
                tracing::warn!(cnf = %self.cnf, function = %function.name, trace_id = facts.trace_id, timeout = ?function.timeout, "network function timed out")
            }
        }
        match self.failed(state, function) {
            Some(stopped) => Err(stopped),
            None => Ok(None),
        }
    }

    /// Applies the failure policy: open goes on (`None`), closed refuses with 503.
    pub(crate) fn failed(&self, state: &ProxyState, function: &Function) -> Option<Stopped> {
        match function.failure_policy {
            FailurePolicy::Open => {
                self.count(state, function, "failed_open");
                None
            }
            FailurePolicy::Closed => {
                self.count(state, function, "failed_closed");
                Some(Stopped::unavailable(&function.name))
            }
        }
    }

    pub(crate) fn count(&self, state: &ProxyState, function: &Function, result: &'static str) {
        state
            .shared
            .metrics
            .chain_calls
            .get_or_create(&ChainLabels { cnf: self.cnf.clone(), function: function.name.clone(), result })
            .inc();
    }

    /// Sends the call in the background, bounded by the function's timeout;
    /// the answer affects nothing. The handlers of its events run there too,
    /// seeing `full_body` (the phase's whole buffered body, not the tap's
    /// share of it): the exchange has moved on, so they may call, log, tag
    /// and emit, and nothing else.
    fn tap(&self, state: &Arc<ProxyState>, function: &Arc<Function>, call: OwnedCall, facts: &RequestFacts<'_>, full_body: Option<Bytes>) {
        let (state, function, cnf) = (state.clone(), function.clone(), self.cnf.clone());
        let (scheme, protocol) = (scheme(facts.tls), facts.protocol);
        let spans = facts.spans.clone();
        let handlers = self.handlers.clone().map(|h| (h, facts.runs.clone(), full_body));
        let phase = if call.response.is_some() { "response" } else { "request" };
        tokio::spawn(async move {
            let call_ref = call.as_call();
            let started = spans.as_ref().map(HopSpans::start_step);
            let outcome = tokio::time::timeout(function.timeout, callout::call(&function, &call_ref, scheme, protocol)).await;
            if let (Some(spans), Some(started)) = (&spans, started) {
                spans.finish_step(started, &cnf, &function.name, "tap", phase, step_outcome(&outcome));
            }
            let verdict = match outcome {
                Ok(Ok(verdict)) => {
                    log_events(&cnf, &function, &call.trace_id, &verdict);
                    Some(verdict)
                }
                _ => None,
            };
            let result = if verdict.is_some() { "tapped" } else { "tap_failed" };
            state
                .shared
                .metrics
                .chain_calls
                .get_or_create(&ChainLabels { cnf: cnf.clone(), function: function.name.clone(), result })
                .inc();
            let events = verdict.map(Verdict::into_events).unwrap_or_default();
            if let Some((h, runs, full_body)) = handlers.as_ref().filter(|(h, ..)| h.handlers.handles_any(&events)) {
                let request = OwnedCall { function: String::new(), body: full_body.clone(), ..call };
                let runner = Runner {
                    cnf: &cnf,
                    h,
                    state: &state,
                    function: Some(&function),
                    scheme,
                    protocol,
                    spans: spans.as_ref(),
                    runs,
                    on: "tap",
                };
                let _ = runner.run(request, None, events.into()).await;
            }
        });
    }
}

/// An allow's header edits: removals first, then sets (replacing).
fn edit_headers(headers: &mut http::HeaderMap, remove: &[String], set: &[(String, String)]) {
    for name in remove.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()) {
        headers.remove(name);
    }
    for (name, value) in set {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
}

/// The client's answer to a deny verdict.
fn denied(status: u16, reason: String, headers: &[(String, String)]) -> Stopped {
    let mut stopped = Stopped::denied(status, reason);
    edit_headers(stopped.reply.headers_mut(), &[], headers);
    stopped
}

/// A call-out's result as its step span tells it.
pub(crate) fn step_outcome<E: std::fmt::Display>(outcome: &Result<Result<Verdict, E>, tokio::time::error::Elapsed>) -> StepOutcome<'_> {
    match outcome {
        Ok(Ok(verdict)) => StepOutcome::Answered(verdict),
        Ok(Err(e)) => StepOutcome::Failed(e.to_string()),
        Err(_) => StepOutcome::TimedOut,
    }
}

pub(crate) fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Events a function published with its verdict, logged under the request's
/// trace id until operator handlers run them.
fn log_events(cnf: &str, function: &Function, trace_id: &str, verdict: &Verdict) {
    for event in verdict.events() {
        tracing::info!(target: "trefoil::chain::event", cnf, function = %function.name, trace_id, event = %event.name, data = %event.data, "network function event");
    }
}

/// A response-phase call: the request as the chain left it, plus the upstream's answer so far.
fn response_call<'a>(
    cnf: &'a str,
    function: &'a str,
    request: &'a http::request::Parts,
    head: &'a http::response::Parts,
    facts: &'a RequestFacts<'a>,
    body: Option<Bytes>,
) -> Call<'a> {
    let headers = head.headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v))).collect();
    Call { response: Some(ResponseHead { status: head.status.as_u16(), headers }), ..call_for(cnf, function, request, facts, body) }
}

pub(crate) fn call_for<'a>(
    cnf: &'a str,
    function: &'a str,
    parts: &'a http::request::Parts,
    facts: &'a RequestFacts<'a>,
    body: Option<Bytes>,
) -> Call<'a> {
    Call {
        cnf,
        function,
        method: parts.method.as_str(),
        path: parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        host: facts.host,
        headers: parts.headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v))).collect(),
        source: Some(facts.client),
        destination: facts.original_destination.or(facts.local),
        trace_id: facts.trace_id,
        body,
        response: None,
    }
}

/// A call that outlives the request, for taps and handlers.
#[derive(Clone)]
pub(crate) struct OwnedCall {
    pub(crate) cnf: String,
    pub(crate) function: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) host: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) source: Option<SocketAddr>,
    pub(crate) destination: Option<SocketAddr>,
    pub(crate) trace_id: String,
    pub(crate) body: Option<Bytes>,
    /// A response-phase call's upstream status and headers.
    pub(crate) response: Option<(u16, Vec<(String, String)>)>,
}

impl From<Call<'_>> for OwnedCall {
    fn from(call: Call<'_>) -> Self {
        let c = call;
        OwnedCall {
            cnf: c.cnf.to_string(),
            function: c.function.to_string(),
            method: c.method.to_string(),
            path: c.path.to_string(),
            host: c.host.to_string(),
            headers: c.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            source: c.source,
            destination: c.destination,
            trace_id: c.trace_id.to_string(),
            body: c.body,
            response: c.response.map(|r| (r.status, r.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())),
        }
    }
}

impl OwnedCall {
    pub(crate) fn as_call(&self) -> Call<'_> {
        Call {
            cnf: &self.cnf,
            function: &self.function,
            method: &self.method,
            path: &self.path,
            host: &self.host,
            headers: self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            source: self.source,
            destination: self.destination,
            trace_id: &self.trace_id,
            body: self.body.clone(),
            response: self.response.as_ref().map(|(status, headers)| ResponseHead {
                status: *status,
                headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            }),
        }
    }
}
