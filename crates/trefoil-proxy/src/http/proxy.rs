//! A request's life through the proxy, as named phases of one per-request
//! context ([`Exchange`], after Pingora's), run top to bottom by
//! `Exchange::run`: route -> filters -> body -> request chain (the rule's
//! CNF) -> upstream request -> mirror -> attempts (endpoint pick, send,
//! retry decision) -> response chain -> response edits; then the record
//! (`record.rs`: access log, metrics, span).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use hyper::rt::Timer;

use futures_util::future::{Either, FutureExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use trefoil_model::authz::{PolicySet, Request as AuthzRequest};
use trefoil_model::spec::HashOn;

use crate::config::on_demand;
use crate::config::snapshot::{Cluster, CompiledRoute, CompiledRule, ListenerConfig, ServiceConfig};
use crate::config::state::ProxyState;
use crate::http::body::{self, BufferError, Downstream, Guarded, RequestBody, Upload, UpstreamBody};
use crate::http::chain::{Chain, Next, RequestFacts, Stopped};
use crate::http::chain_handlers::RunCount;
use crate::http::filters::{decide_fault, mirror_chance};
use crate::http::head;
use crate::http::inline;
use crate::http::local_reply::LocalReply;
use crate::http::record::{version_name, Arrival, Outcomes, Record};
use crate::http::retry::{backoff, AttemptFailure};
use crate::sys::descriptors;
use crate::telemetry::attempt_span;
use crate::telemetry::metrics::{AuthzLabels, EndpointLabels, Label, Metrics, RetryLabels, ServiceLabels};
use crate::telemetry::trace_context::TraceContext;
use crate::upstream::endpoint::{EndpointState, Outcome};
use crate::upstream::h1;
use crate::upstream::h1::pool::SendError;
use crate::upstream::ProxyBody;

/// Facts about the downstream connection a request arrived on.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub listener: Label,
    pub client: SocketAddr,
    /// SPIFFE id or common name of a verified client certificate.
    pub peer_identity: Option<Arc<str>>,
    /// The TLS server name the client asked for.
    pub sni: Option<Arc<str>>,
    pub tls: bool,
    /// Where the client addressed the connection, when a datapath rule
    /// redirected it to a transparent listener (the accepted socket's own
    /// address): the upstream of an `originalDestination` service.
    pub original_destination: Option<SocketAddr>,
    /// `client`'s address as a header value, made once per connection for `x-forwarded-for`.
    pub client_ip: HeaderValue,
}

impl Connection {
    pub(crate) fn new(listener: Label, client: SocketAddr) -> Self {
        let client_ip = HeaderValue::from_str(&client.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Connection { listener, client, peer_identity: None, sni: None, tls: false, original_destination: None, client_ip }
    }
}

pub(crate) static TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-trefoil-trace-id");
/// The verified client-certificate identity, set by the proxy (never taken
/// from the client) so routes can match on it and upstreams can read it.
pub(crate) static PEER_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-trefoil-peer-identity");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Connection-scoped headers that must not cross a hop (RFC 9110 §7.6.1);
/// `Present::scan` knows them too.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

impl Outcomes {
    /// Answers the request itself with `flag`'s status and a body saying more.
    fn local(&mut self, flag: LocalReply, text: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
        self.flag = Some(flag);
        flag.reply_text(text)
    }

    /// Answers the request itself with `flag`'s status and body.
    fn plainly(&mut self, flag: LocalReply) -> Response<ProxyBody> {
        self.flag = Some(flag);
        flag.reply()
    }

    /// Ends the request with the chain's reply.
    fn stopped(&mut self, stopped: Stopped) -> Response<ProxyBody> {
        self.flag = Some(stopped.flag);
        stopped.reply
    }

    /// Answers the request itself with the status the configuration chose.
    fn configured(&mut self, flag: LocalReply, status: u16) -> Response<ProxyBody> {
        self.flag = Some(flag);
        flag.reply_with(StatusCode::from_u16(status).unwrap_or(flag.status()), flag.text())
    }
}

/// Serves one request; never fails (errors become local replies).
///
/// Not an `async fn`: its request would be kept twice in the future, once as
/// the argument and once taken apart (see `send_upstream`).
pub(crate) fn serve(
    state: Arc<ProxyState>,
    conn: Arc<Connection>,
    req: Request<Downstream>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
    let (mut parts, incoming) = req.into_parts();
    async move {
        let started = Instant::now();
        let mut snapshot = state.snapshot.load_full();
        let telemetry = state.telemetry.load_full();
        let wall_start = telemetry.spans.is_some().then(SystemTime::now);
        let Some(mut listener) = snapshot.listeners.iter().find(|l| l.name == conn.listener).cloned() else {
            return Ok(LocalReply::ListenerRemoved.reply());
        };
        let trace = TraceContext::continue_or_start(parts.headers.get(&TRACEPARENT), telemetry.sampling_percent);
        // Most requests carry none of the proxy's own headers: one pass over the
        // names is cheaper than looking each of them up to remove it.
        let ours = parts.headers.keys().any(|name| name.as_str().starts_with("x-trefoil-"));
        // A request back from an inline function stands in for its first leg's connection.
        let conn = if ours { inline::arrive(&state, conn, &mut parts) } else { conn };
        // Set before routing, so a route's header match can select on the identity.
        if ours {
            parts.headers.remove(&PEER_IDENTITY_HEADER);
        }
        if let Some(v) = conn.peer_identity.as_deref().and_then(|id| HeaderValue::from_str(id).ok()) {
            parts.headers.insert(PEER_IDENTITY_HEADER.clone(), v);
        }
        // Phase: the head, before anything is decided by its host or path.
        let checked = head::check(&mut parts, &listener.path_normalization);
        let host = request_host(&parts).to_string();
        // Phase: on-demand lookup, for a scoped sidecar's call to a service
        // outside its snapshot; the request is routed on the one it brings.
        if listener.on_demand && checked.is_ok() && find_route(&listener, &host, &parts).is_none() {
            if let Some(service) = on_demand::service_of(&host) {
                let current = || state.snapshot.load().version;
                if state.shared.on_demand.look_up(&service, snapshot.version, current).await == on_demand::Looked::NewSnapshot {
                    snapshot = state.snapshot.load_full();
                    let Some(now) = snapshot.listeners.iter().find(|l| l.name == conn.listener).cloned() else {
                        return Ok(LocalReply::ListenerRemoved.reply());
                    };
                    listener = now;
                }
            }
        }
        let arrival = Arrival { started, wall_start, telemetry, config_version: snapshot.version };
        let mut record = Record::new(state.clone(), arrival, listener, &conn, trace, &parts, host);
        let Record { listener, host, out, .. } = &mut record;
        let mut response = match checked {
            Err(refused) => out.local(refused.flag, refused.text),
            Ok(()) => {
                let mut exchange = Exchange { state: &state, listener, conn: &conn, trace: &trace, host, parts: &mut parts, out };
                match exchange.run(incoming).await {
                    Ok(r) => r,
                    Err(reply) => reply,
                }
            }
        };
        response.headers_mut().insert(TRACE_ID_HEADER.clone(), trace.trace_id_value());
        let response = record.respond(response);
        Ok(response)
    }
}

/// A reply the proxy sends instead of going on: a local reply, or a
/// chain's answer.
type Reply = Response<ProxyBody>;

/// One request on its way through the proxy (Pingora's per-request context):
/// what every phase reads, and the outcomes each leaves for the record.
/// Each phase is a method, run in order by [`Exchange::run`].
struct Exchange<'a> {
    state: &'a Arc<ProxyState>,
    listener: &'a ListenerConfig,
    conn: &'a Connection,
    trace: &'a TraceContext,
    host: &'a str,
    parts: &'a mut http::request::Parts,
    out: &'a mut Outcomes,
}

impl<'a> Exchange<'a> {
    /// The phases, top to bottom; an `Err` is the reply that ends the request early.
    ///
    /// An awaited phase is a future of its own, copied whole into this one
    /// when it starts and dropped when it ends: one such phase costs some
    /// 100 instructions per request even when it has nothing to do. So the
    /// phases most requests skip (filters, the chain's) are awaited, boxed,
    /// only when the rule has them, and the attempts are awaited here, under
    /// the rule's deadline, without a phase around them (docs/performance.md,
    /// issue 18).
    async fn run(&mut self, incoming: Downstream) -> Result<Response<ProxyBody>, Reply> {
        let Some((route, rule)) = self.route() else { return Err(self.no_route()) };
        // A request back from an inline function was authorized on its first leg.
        let resumed = self.parts.extensions.get::<inline::ResumeAfter>().is_some();
        if let Some(policies) = rule.authz.as_ref().filter(|_| self.listener.enforce_authz && !resumed) {
            if !self.authorize(policies) {
                return Err(self.out.plainly(LocalReply::RbacDenied));
            }
        }
        if rule.rate_limit.is_some() || rule.fault.is_some() {
            Box::pin(self.filters(rule)).await?;
        }
        self.out.cnf = rule.chain.as_ref().map(|c| c.cnf.clone());
        let mut body = self.body(rule, incoming).await?;
        // Handler runs of the request, both phases: the CNF's `runsPerRequest` bounds them all.
        let runs = rule.chain.as_ref().map(|_| RunCount::default());
        if let Some(chain) = &rule.chain {
            if let Some(answer) = Box::pin(self.request_chain(chain, &mut body, &runs)).await? {
                // The function's response (the rest of the chain and the upstream ran in the leg it sent back).
                return Ok(answer);
            }
        }
        // The response phase asks about the request as the chain left it.
        let asked = rule.chain.as_ref().filter(|c| !c.response_steps.is_empty()).map(|c| (c, self.parts.clone()));
        let cluster = self.upstream_request(rule).map_err(|flag| self.out.plainly(flag))?;
        self.mirror(rule, &body);
        let upload = body.upload().cloned();
        let attempts = self.attempts(route, rule, &cluster, &mut body);
        let mut response = match rule.timeout {
            Some(limit) => match Box::pin(deadline_after_upload(limit, attempts, upload)).await {
                Some(r) => r?,
                None => return Err(self.out.plainly(LocalReply::Timeout)),
            },
            None => attempts.await?,
        };
        if let Some((chain, request)) = asked {
            response = Box::pin(self.response_chain(chain, request, response, runs)).await?;
        }
        Ok(self.response_edits(rule, response))
    }

    /// Phase: route, by host and the rule matches.
    fn route(&mut self) -> Option<(&'a CompiledRoute, &'a CompiledRule)> {
        let (route, rule) = find_route(self.listener, self.host, self.parts)?;
        self.out.route = Some(route.name.clone());
        Some((route, rule))
    }

    /// Phase: authorization, before filters and the chain, by the peer
    /// identity the connection's handshake established (the client's
    /// `x-trefoil-peer-identity` header was dropped on arrival).
    /// Whether the request may go on; a refusal is counted and logged here.
    fn authorize(&mut self, policies: &PolicySet) -> bool {
        let decision = policies.evaluate(&AuthzRequest {
            principal: self.conn.peer_identity.as_deref(),
            source: Some(self.conn.client.ip()),
            method: self.parts.method.as_str(),
            path: self.parts.uri.path(),
            port: Some(self.listener.addr.port()),
            host: self.host,
            sni: self.conn.sni.as_deref(),
            headers: &self.parts.headers,
        });
        let metrics = &self.state.shared.metrics;
        for audit in &decision.audited {
            let labels = AuthzLabels { policy: audit.policy.clone(), rule: audit.rule.to_string() };
            metrics.authz_audited.get_or_create(&labels).inc();
            let sep = if self.out.authz.is_empty() { "" } else { ", " };
            self.out.authz = format!("{}{sep}audit {}/{}", self.out.authz, audit.policy, audit.rule);
        }
        if decision.allowed {
            return true;
        }
        let (policy, rule) = decision.labels();
        self.out.authz = match &decision.rule {
            Some(r) => format!("deny {}/{}", r.policy, r.rule),
            None => "default-deny".to_string(),
        };
        metrics.authz_denied.get_or_create(&AuthzLabels { policy, rule }).inc();
        false
    }

    fn no_route(&mut self) -> Reply {
        let text = format!("no route for {}{}\n", self.host, self.parts.uri.path());
        self.out.local(LocalReply::NoRoute, text)
    }

    /// Phase: request filters (rate limit, injected faults), for a rule that has them.
    async fn filters(&mut self, rule: &CompiledRule) -> Result<(), Reply> {
        if let Some(rl) = &rule.rate_limit {
            if !rl.try_acquire() {
                return Err(self.out.configured(LocalReply::RateLimited, rl.status));
            }
        }
        if let Some(fault) = &rule.fault {
            let decision = decide_fault(fault);
            if let Some(delay) = decision.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = decision.abort {
                return Err(self.out.configured(LocalReply::FaultAbort, status));
            }
        }
        Ok(())
    }

    /// Phase: body, read before the chain when a function wants it, kept
    /// for a replay when a retry or a mirror may need one.
    async fn body(&mut self, rule: &CompiledRule, incoming: Downstream) -> Result<RequestBody, Reply> {
        let want_replay = rule.retry.as_ref().is_some_and(|r| r.attempts > 0)
            || rule.mirror.is_some()
            || rule.chain.as_ref().is_some_and(|c| c.has_inline());
        // The chain's phases are boxed: their futures are large and most
        // requests have no chain, and an unboxed future is copied whole every
        // time the request's future moves.
        let incoming = body::Idle::new(incoming, self.listener.timeouts.request_body_idle.get(), "request body");
        let prepared = match rule.chain.as_ref().and_then(|c| c.max_body) {
            Some(limit) => Box::pin(RequestBody::buffer(incoming, limit)).await,
            None => match RequestBody::prepare(incoming, want_replay) {
                Ok(b) => Ok(b),
                // Boxed: only a small body kept for a replay is read here.
                Err(small) => Box::pin(RequestBody::read(small)).await.map_err(BufferError::Read),
            },
        };
        match prepared {
            Ok(b) => Ok(b),
            Err(BufferError::TooLarge) => Err(self.out.plainly(LocalReply::ChainBodyTooLarge)),
            Err(BufferError::Read(e)) => Err(client_body_failed(&*e, self.out)),
        }
    }

    /// Phase: request chain (the rule's CNF), on the request as the client
    /// sent it. `Some` is an inline function's answer.
    async fn request_chain(
        &mut self,
        chain: &Arc<Chain>,
        body: &mut RequestBody,
        runs: &Option<RunCount>,
    ) -> Result<Option<Response<ProxyBody>>, Reply> {
        let trace_id = self.trace.trace_id_hex();
        let facts = self.facts(&trace_id, self.parts.version, body.buffered(), runs.clone().unwrap_or_default());
        let (state, parts) = (self.state, &mut *self.parts);
        let next = match chain.run_request(state, parts, &facts).await {
            Ok(Next::Inline(step)) => inline::forward(state, chain, step, parts, body, &facts).await,
            Ok(Next::Upstream) => Ok(None),
            Err(stopped) => Err(stopped),
        };
        next.map_err(|stopped| self.out.stopped(stopped))
    }

    /// Phase: the request as the upstream gets it (hop-by-hop headers
    /// dropped, forwarding headers added, the rule's edits) and the backend
    /// the split picks; an `originalDestination` backend becomes the
    /// connection's original destination.
    fn upstream_request(&mut self, rule: &CompiledRule) -> Result<Arc<Cluster>, LocalReply> {
        prepare_upstream_headers(self.parts, self.conn, self.trace);
        if let Some(edits) = &rule.request_headers {
            edits.apply(&mut self.parts.headers);
        }
        let Some(cluster) = rule.split.pick() else { return Err(LocalReply::NoBackend) };
        self.out.service = Some(cluster.service.name.clone());
        self.out.version = Some(cluster.version.clone());
        if !cluster.service.original_destination {
            return Ok(cluster.clone());
        }
        match self.conn.original_destination {
            Some(addr) => Ok(Arc::new(cluster.to_original_destination(addr))),
            None => Err(LocalReply::NoOriginalDestination),
        }
    }

    /// Phase: mirror (fire and forget).
    fn mirror(&self, rule: &CompiledRule, body: &RequestBody) {
        if let Some((mirror, percent)) = &rule.mirror {
            if mirror_chance(*percent) {
                spawn_mirror(self.state, mirror.clone(), self.parts, body.buffered(), self.host);
            }
        }
    }

    /// Phase: response chain (the rule's CNF), on the response as the
    /// upstream sent it; `request` is the request as the chain left it.
    async fn response_chain(
        &mut self,
        chain: &Chain,
        request: http::request::Parts,
        response: Response<ProxyBody>,
        runs: Option<RunCount>,
    ) -> Result<Response<ProxyBody>, Reply> {
        let trace_id = self.trace.trace_id_hex();
        let facts = self.facts(&trace_id, request.version, None, runs.unwrap_or_default());
        chain.run_response(self.state, &request, response, &facts).await.map_err(|stopped| self.out.stopped(stopped))
    }

    /// Phase: response edits.
    fn response_edits(&self, rule: &CompiledRule, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        if let Some(edits) = &rule.response_headers {
            edits.apply(response.headers_mut());
        }
        response
    }

    /// What the chain's functions are told besides the request's head.
    fn facts<'t>(&self, trace_id: &'t str, version: Version, body: Option<bytes::Bytes>, runs: RunCount) -> RequestFacts<'t>
    where
        'a: 't,
    {
        RequestFacts {
            host: self.host,
            client: self.conn.client,
            local: Some(self.listener.addr),
            original_destination: self.conn.original_destination,
            trace_id,
            tls: self.conn.tls,
            protocol: version_name(version),
            body,
            spans: self.out.spans.clone(),
            traceparent: self.trace.traceparent(),
            runs,
        }
    }

    /// Phase: upstream attempts (`run` puts them under the rule's deadline):
    /// for each, claim a place and pick an endpoint, send, then decide on
    /// the answer or the failure whether to try again.
    async fn attempts(
        &mut self,
        route: &CompiledRoute,
        rule: &CompiledRule,
        cluster: &Arc<Cluster>,
        req_body: &mut RequestBody,
    ) -> Result<Response<ProxyBody>, Reply> {
        let (state, direction, parts, out) = (self.state, &self.listener.direction, &mut *self.parts, &mut *self.out);
        let response_idle = self.listener.timeouts.response_body_idle.get();
        let service = &cluster.service;
        let metrics = &state.shared.metrics;
        let max_attempts = 1 + rule.retry.as_ref().map(|r| r.attempts).unwrap_or(0);
        if let Some(budget) = &rule.budget {
            budget.record_request();
        }
        let hash_key = cluster.balancer.hash_on().and_then(|on| hash_key(on, &parts.headers));
        let mut previous: Option<SocketAddr> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            out.attempts = attempt;
            // Step: endpoint pick, under the service's circuit breakers.
            let Claim { endpoint, mut guard, wait } = claim_endpoint(metrics, cluster, hash_key.as_deref(), previous, out)?;
            if let Some(slots) = wait {
                // Boxed: a rare wait, kept out of every request's future.
                guard._slot = Some(Box::pin(wait_for_slot(metrics, service, slots, out)).await?);
            }
            let Some(body) = req_body.take() else {
                return Err(out.plainly(LocalReply::BodyConsumed));
            };
            // The last possible attempt takes the headers; earlier ones copy them for a retry.
            let headers = if attempt < max_attempts { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
            let Ok(upstream_req) = build_upstream_request(parts, headers, service, &endpoint, body) else {
                return Err(out.plainly(LocalReply::BadRequest));
            };
            let per_try = rule.retry.as_ref().and_then(|r| r.per_try_timeout).map(|d| d.get());
            let span = out.spans.as_ref().map(|s| s.start_attempt(attempt, endpoint.addr, &service.name, &endpoint.version));
            // Step: send.
            let sent = send_upstream(service, &endpoint, upstream_req);
            let result = match per_try {
                // Boxed so that requests without a per-try timeout do not carry its timer.
                Some(limit) => Box::pin(tokio::time::timeout(limit, sent)).await.map_err(|_| AttemptFailure::PerTryTimeout),
                None => Ok(sent.await),
            };
            // Step: retry decision. Each failed attempt decides once whether
            // to retry: asking twice would spend budget twice.
            let failure = match result {
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let outcome = match status {
                        502..=504 => Outcome::GatewayError,
                        500..=599 => Outcome::ServerError,
                        _ => Outcome::Success,
                    };
                    record_outcome(state, service, &endpoint, outcome);
                    if status < 500 && !rule.retry.as_ref().is_some_and(|r| r.status_codes.contains(&status)) {
                        attempt_span::finish(span, Ok(status), false);
                        return Ok(answered(resp, guard, response_idle));
                    }
                    let failure = AttemptFailure::Status(status);
                    if !may_retry(rule, failure, attempt, max_attempts, req_body) {
                        // Out of retries: the client gets the upstream's own answer.
                        attempt_span::finish(span, Ok(status), false);
                        return Ok(answered(resp, guard, response_idle));
                    }
                    (failure, true)
                }
                Ok(Err(e)) if req_body.upload().is_some_and(Upload::broken) => {
                    // The client broke its body off, mangled it or stalled: its
                    // fault, not the upstream's, and there is nothing left to send again.
                    attempt_span::finish(span, Err(AttemptFailure::Reset), false);
                    return Err(client_body_failed(&*e.source, out));
                }
                Ok(Err(e)) if e.connect && descriptors::caused_by_exhaustion(&*e.source) => {
                    // This process is out of descriptors: shed the request, and
                    // do not blame the endpoint for it.
                    attempt_span::finish(span, Err(AttemptFailure::ConnectFailure), false);
                    metrics.overflows.get_or_create(&ServiceLabels { service: service.name.clone(), reason: "descriptors" }).inc();
                    return Err(out.local(LocalReply::Overflow, "upstream overflow: too many open connections\n"));
                }
                Ok(Err(e)) => {
                    record_outcome(state, service, &endpoint, Outcome::GatewayError);
                    let failure = if e.connect { AttemptFailure::ConnectFailure } else { AttemptFailure::Reset };
                    tracing::debug!(error = %e, upstream = %endpoint.addr, "upstream attempt failed");
                    (failure, may_retry(rule, failure, attempt, max_attempts, req_body))
                }
                Err(timeout) => {
                    // An upstream waiting for a body the client is still trickling is not slow.
                    if !req_body.upload().is_some_and(Upload::sending) {
                        record_outcome(state, service, &endpoint, Outcome::GatewayError);
                    }
                    (timeout, may_retry(rule, timeout, attempt, max_attempts, req_body))
                }
            };
            let (failure, retrying) = failure;
            attempt_span::finish(span, Err(failure), retrying);
            drop(guard);
            if !retrying {
                return Err(out.plainly(failure.local_reply()));
            }
            metrics
                .retries
                .get_or_create(&RetryLabels {
                    direction: direction.clone(),
                    route: route.name.clone(),
                    service: service.name.clone(),
                    version: endpoint.version.clone(),
                    reason: failure.reason(),
                })
                .inc();
            previous = Some(endpoint.addr);
            if let Some(policy) = &rule.retry {
                tokio::time::sleep(backoff(policy.backoff.get(), attempt - 1)).await;
            }
        }
    }
}

/// The reply to a request whose body the client failed to send: 408 when
/// it stalled past `requestBodyIdle`, 400 otherwise.
fn client_body_failed(e: &(dyn std::error::Error + 'static), out: &mut Outcomes) -> Response<ProxyBody> {
    out.plainly(if body::IdleTimeout::caused(e) { LocalReply::RequestBodyTimeout } else { LocalReply::DownstreamReset })
}

fn find_route<'a>(
    listener: &'a ListenerConfig,
    host: &str,
    parts: &http::request::Parts,
) -> Option<(&'a Arc<CompiledRoute>, &'a CompiledRule)> {
    listener.router.find(host, |route| route.rules.iter().find(|r| r.matches(parts)).map(|rule| (route, rule)))
}

/// Runs `attempts` until `limit` has passed since the client finished
/// sending its body (as Envoy counts a route timeout): an upload in
/// progress is not the upstream being slow, and a stalled one is cut by
/// `requestBodyIdle`. `None` when the deadline passed.
async fn deadline_after_upload<T>(limit: Duration, attempts: impl Future<Output = T>, upload: Option<Upload>) -> Option<T> {
    // Long limits (the 15 s default) on the coarse timer: cheaper than tokio's per request.
    let sleep = |limit: Duration| -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if limit >= Duration::from_secs(10) {
            Box::pin(crate::sys::coarse_timer::CoarseTimer.sleep(limit))
        } else {
            Box::pin(tokio::time::sleep(limit))
        }
    };
    tokio::pin!(attempts);
    let mut deadline = sleep(limit);
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(r) = attempts.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !upload.as_ref().is_some_and(Upload::sending) {
            return Poll::Ready(None);
        }
        deadline = sleep(limit);
    })
    .await
}

/// Releases what an attempt claimed when the response body ends (or the attempt fails).
struct AttemptGuard {
    endpoint: Arc<EndpointState>,
    service: Arc<ServiceConfig>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.service.leave();
    }
}

/// The upstream's answer as the client gets it: without hop-by-hop headers,
/// its body holding the attempt's claims until it ends.
fn answered(resp: Response<UpstreamBody>, guard: AttemptGuard, idle: Duration) -> Response<ProxyBody> {
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Guarded::wrap(incoming, guard, idle))
}

/// What an attempt claimed before it sends.
struct Claim {
    endpoint: Arc<EndpointState>,
    guard: AttemptGuard,
    /// The endpoint's connection slots, to wait on: none was free.
    wait: Option<Arc<tokio::sync::Semaphore>>,
}

/// Claims a place in the service (its circuit breakers) and picks an
/// endpoint other than `previous` if it can; the guard gives both back.
/// Not async: a free connection slot is taken at once, and the wait for
/// one, which few requests need, is `wait_for_slot`.
#[allow(clippy::result_large_err)] // the reply is the request's answer, as every phase's `Err` is; boxed, it would cost an allocation
fn claim_endpoint(
    metrics: &Metrics,
    cluster: &Arc<Cluster>,
    hash_key: Option<&[u8]>,
    previous: Option<SocketAddr>,
    out: &mut Outcomes,
) -> Result<Claim, Reply> {
    let service = &cluster.service;
    if !service.enter() {
        metrics.overflows.get_or_create(&ServiceLabels { service: service.name.clone(), reason: "max_requests" }).inc();
        return Err(out.local(LocalReply::Overflow, "upstream overflow: too many requests in flight\n"));
    }
    let Some(endpoint) = cluster.balancer.pick(hash_key, previous) else {
        service.leave();
        metrics.overflows.get_or_create(&ServiceLabels { service: service.name.clone(), reason: "no_healthy_upstream" }).inc();
        return Err(out.plainly(LocalReply::NoHealthyUpstream));
    };
    endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
    out.upstream = Some(endpoint.addr);
    if !endpoint.version.is_empty() {
        out.version = Some(endpoint.version.clone());
    }
    let mut guard = AttemptGuard { endpoint: endpoint.clone(), service: service.clone(), _slot: None };
    let mut wait = None;
    if let Some(slots) = service.slot(&endpoint.addr) {
        match slots.clone().try_acquire_owned() {
            Ok(p) => guard._slot = Some(p),
            Err(_) => {
                if service.load.pending.fetch_add(1, Ordering::AcqRel) >= service.limits.max_pending_requests {
                    service.load.pending.fetch_sub(1, Ordering::AcqRel);
                    metrics.overflows.get_or_create(&ServiceLabels { service: service.name.clone(), reason: "max_pending" }).inc();
                    return Err(out.local(LocalReply::Overflow, "upstream overflow: too many pending requests\n"));
                }
                wait = Some(slots.clone());
            }
        }
    }
    Ok(Claim { endpoint, guard, wait })
}

/// Waits for a connection slot that `claim_endpoint` found taken, counted
/// as pending; at most as long as a connect may take.
async fn wait_for_slot(
    metrics: &Metrics,
    service: &ServiceConfig,
    slots: Arc<tokio::sync::Semaphore>,
    out: &mut Outcomes,
) -> Result<tokio::sync::OwnedSemaphorePermit, Reply> {
    let permit = tokio::time::timeout(service.limits.connect_timeout.get(), slots.acquire_owned()).await;
    service.load.pending.fetch_sub(1, Ordering::AcqRel);
    match permit {
        Ok(Ok(p)) => Ok(p),
        _ => {
            metrics.overflows.get_or_create(&ServiceLabels { service: service.name.clone(), reason: "pending_timeout" }).inc();
            Err(out.local(LocalReply::Overflow, "upstream overflow: no connection became free in time\n"))
        }
    }
}

/// Sends one attempt: plain HTTP/1 through this worker's own connection
/// pool, anything else (TLS, HTTP/2) through the general pooled client.
///
/// Not an `async fn`: that would wrap the chosen future in one more state
/// machine holding a second copy of the request, and every request's future
/// is moved whole several times.
pub(crate) fn send_upstream(
    service: &ServiceConfig,
    endpoint: &EndpointState,
    req: Request<ProxyBody>,
) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'static {
    if service.worker_pooled {
        let sent = h1::pool::send(endpoint.addr, req, service.limits.connect_timeout.get(), service.limits.idle_timeout.get());
        return Either::Left(sent.map(|sent| sent.map(|resp| resp.map(UpstreamBody::Left))));
    }
    let sent = service.client.current().request(req);
    Either::Right(sent.map(|sent| match sent {
        Ok(resp) => Ok(resp.map(UpstreamBody::Right)),
        Err(e) => Err(SendError { connect: e.is_connect(), source: Box::new(e) }),
    }))
}

fn may_retry(rule: &CompiledRule, failure: AttemptFailure, attempt: u32, max: u32, body: &RequestBody) -> bool {
    let Some(policy) = &rule.retry else { return false };
    attempt < max && body.is_replayable() && failure.is_retriable(policy) && rule.budget.as_ref().is_none_or(|b| b.try_retry())
}

fn record_outcome(state: &ProxyState, service: &Arc<ServiceConfig>, endpoint: &Arc<EndpointState>, outcome: Outcome) {
    let policy = service.policy.outlier_detection.as_ref();
    if endpoint.record(outcome, policy, || service.may_eject()) {
        tracing::warn!(service = %service.name, endpoint = %endpoint.addr, ejections = endpoint.ejection_count(), "outlier detection ejected an endpoint");
        state
            .shared
            .metrics
            .outlier_ejections
            .get_or_create(&EndpointLabels {
                service: service.name.clone(),
                version: endpoint.version.clone(),
                endpoint: endpoint.addr.to_string(),
            })
            .inc();
    }
}

fn hash_key(on: &HashOn, headers: &HeaderMap) -> Option<Vec<u8>> {
    match on {
        HashOn::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
        HashOn::Cookie(name) => headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookies| {
            cookies
                .split(';')
                .map(str::trim)
                .find_map(|c| c.strip_prefix(name.as_str()).and_then(|rest| rest.strip_prefix('=')).map(|v| v.as_bytes().to_vec()))
        }),
    }
}

/// The host a request is for, without port: `:authority` or `Host`.
pub(crate) fn request_host(parts: &http::request::Parts) -> &str {
    let raw =
        parts.uri.authority().map(|a| a.as_str()).or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok())).unwrap_or("");
    strip_port(raw)
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split(']').next().map(|h| &authority[..h.len() + 1]).unwrap_or(authority);
    }
    authority.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(h, _)| h).unwrap_or(authority)
}

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if Present::scan(headers).hop_by_hop {
        strip_present_hop_by_hop(headers);
    }
}

fn strip_present_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        strip_connection_named(headers);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Which of the headers the proxy edits a message carries. Most messages
/// carry few of them: one pass over the names is cheaper than hashing each
/// name the proxy might edit to look it up.
#[derive(Default)]
struct Present {
    hop_by_hop: bool,
    te: bool,
    forwarded_for: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Present {
        let mut present = Present::default();
        for name in headers.keys() {
            match name.as_str() {
                "connection" | "proxy-connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "proxy-authorization" => {
                    present.hop_by_hop = true
                }
                "te" => present.te = true,
                "x-forwarded-for" => present.forwarded_for = true,
                _ => {}
            }
        }
        present
    }
}

/// Headers named in `Connection` are hop-by-hop too, except those the
/// proxy routes, frames or identifies by: `Connection: host` must not send
/// the upstream a request without the host it was routed by.
fn strip_connection_named(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()))
        .filter(|name| !is_end_to_end_for_us(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// End-to-end headers a client may not declare hop-by-hop.
fn is_end_to_end_for_us(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::CONTENT_TYPE
        || name == TRACEPARENT
        || name.as_str() == "tracestate"
        || name.as_str().starts_with("x-forwarded-")
        || name.as_str().starts_with("x-trefoil-")
}

fn prepare_upstream_headers(parts: &mut http::request::Parts, conn: &Connection, trace: &TraceContext) {
    let headers = &mut parts.headers;
    let present = Present::scan(headers);
    if present.hop_by_hop {
        strip_present_hop_by_hop(headers);
    }
    if present.te {
        // gRPC needs `te: trailers` end to end; any other `te` stays on this hop.
        let te_trailers = headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    headers.insert(TRACEPARENT.clone(), trace.traceparent());
    let xff = match present.forwarded_for.then(|| headers.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok())).flatten() {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", conn.client.ip())).ok(),
        None => Some(conn.client_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(FORWARDED_FOR.clone(), v);
    }
    headers.insert(FORWARDED_PROTO.clone(), HeaderValue::from_static(if conn.tls { "https" } else { "http" }));
}

pub(crate) fn build_upstream_request(
    parts: &http::request::Parts,
    headers: HeaderMap,
    service: &ServiceConfig,
    endpoint: &EndpointState,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, http::Error> {
    // The worker pool writes the request target from the URI's path and
    // query whatever its form; the general client wants an absolute URI to
    // know where to connect, and writes origin-form itself.
    let uri = if service.worker_pooled {
        parts.uri.clone()
    } else {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(if service.scheme_for(endpoint.addr) == "https" { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
        Uri::from_parts(uri).map_err(http::Error::from)?
    };
    // Filled in place: the builder moves the whole request at each step.
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if service.protocol.is_http2() { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    if service.protocol.is_http2() {
        // HTTP/2 carries the host in `:authority`, here the endpoint's
        // address; a Host header would contradict it, so the original host
        // travels as `x-forwarded-host`.
        if let Some(host) = req.headers_mut().remove(header::HOST) {
            req.headers_mut().entry(FORWARDED_HOST.clone()).or_insert(host);
        }
    } else if !req.headers().contains_key(header::HOST) {
        // An HTTP/1.0 request that named no host goes on as HTTP/1.1, which needs one.
        if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    Ok(req)
}

fn spawn_mirror(state: &Arc<ProxyState>, cluster: Arc<Cluster>, parts: &http::request::Parts, body: Option<bytes::Bytes>, host: &str) {
    let metrics = &state.shared.metrics;
    let Some(body) = body else {
        // The body streams to the primary; a copy would have to hold it all.
        metrics.mirrors.get_or_create(&crate::telemetry::metrics::ResultLabels { result: "skipped_streaming_body" }).inc();
        return;
    };
    let mut parts = parts.clone();
    if let Ok(v) = HeaderValue::from_str(&format!("{host}-shadow")) {
        parts.headers.insert(header::HOST, v);
    }
    let state = state.clone();
    tokio::spawn(async move {
        let service = &cluster.service;
        let result = match cluster.balancer.pick(None, None) {
            None => "no_endpoint",
            Some(endpoint) => match build_upstream_request(&parts, parts.headers.clone(), service, &endpoint, body::full(body)) {
                Err(_) => "bad_request",
                Ok(req) => match tokio::time::timeout(Duration::from_secs(30), send_upstream(service, &endpoint, req)).await {
                    Ok(Ok(resp)) => {
                        // Read to the end so the connection can be reused: a
                        // worker-pooled one goes back to the pool at the end.
                        match tokio::time::timeout(Duration::from_secs(30), http_body_util::BodyExt::collect(resp.into_body())).await {
                            Ok(_) => "sent",
                            Err(_) => "timeout",
                        }
                    }
                    Ok(Err(_)) => "failed",
                    Err(_) => "timeout",
                },
            },
        };
        state.shared.metrics.mirrors.get_or_create(&crate::telemetry::metrics::ResultLabels { result }).inc();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports_from_hosts() {
        assert_eq!(strip_port("web.local:8080"), "web.local");
        assert_eq!(strip_port("web.local"), "web.local");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn cookie_hash_keys() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; session=abc; z=2"));
        assert_eq!(hash_key(&HashOn::Cookie("session".into()), &h).unwrap(), b"abc");
        assert!(hash_key(&HashOn::Cookie("sess".into()), &h).is_none());
    }
}
