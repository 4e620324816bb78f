//! The `inline` chain step: the proxy forwards the request itself to the
//! function (an ordinary HTTP reverse proxy), which sends it back to the
//! proxy's listener with a single-use resume token; that second leg runs the
//! rest of the chain and the upstream, and its response travels back through
//! the function to the first leg, which gives it to the client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;
use tokio::sync::oneshot;
use trefoil_model::spec::{FailurePolicy, StepMode};

use crate::config::state::ProxyState;
use crate::http::body::RequestBody;
use crate::http::chain::{scheme, Chain, Next, RequestFacts, Stopped, CNF_HEADER};
use crate::http::local_reply::LocalReply;
use crate::http::proxy::{build_upstream_request, send_upstream, strip_hop_by_hop, Connection, PEER_IDENTITY_HEADER};
use crate::telemetry::chain_span::StepOutcome;
use crate::telemetry::hop_spans::HopSpans;
use crate::telemetry::metrics::Label;
use crate::upstream::{BoxError, ProxyBody};

/// Carries the token that lets a request coming back from a function resume its chain.
pub(crate) static RESUME_HEADER: HeaderName = HeaderName::from_static("x-trefoil-chain-resume");
/// Where the function sends the request on: the listener it arrived on.
pub(crate) static NEXT_HOP_HEADER: HeaderName = HeaderName::from_static("x-trefoil-next-hop");
/// Inline hops the request has made so far; the loop guard.
pub(crate) static HOPS_HEADER: HeaderName = HeaderName::from_static("x-trefoil-inline-hops");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A request that has made this many inline hops is refused with `508 Loop
/// Detected` instead of making another: a function that drops the resume
/// token (or a route that leads back into the chain) would loop for ever.
pub(crate) const MAX_INLINE_HOPS: u32 = 8;

/// How long a token whose first leg ended before the request came back is
/// remembered, and how many such tokens at most: a function that passes the
/// request on that late is refused rather than let through a second time.
const ABANDONED_TTL: Duration = Duration::from_secs(30);
const MAX_ABANDONED: usize = 65_536;

/// Inline hops under way, by resume token. An entry lives while its first
/// leg waits for the function and goes when the request comes back (the
/// token is single-use) or the first leg ends; in the latter case the token
/// is remembered a while as abandoned.
#[derive(Default)]
pub(crate) struct InFlight {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    live: HashMap<u128, Entry>,
    abandoned: HashSet<u128>,
    /// `abandoned` in the order it was filled, with when each may be forgotten.
    expiry: VecDeque<(Instant, u128)>,
}

/// What an arriving token turned out to be.
enum Found {
    Live(Entry),
    Abandoned,
}

/// What a resume token stands for: where the chain goes on, and the first
/// leg's connection, which the second leg stands in for.
struct Entry {
    cnf: Label,
    step: usize,
    client: SocketAddr,
    /// The first leg's, which the request comes back without: it returns
    /// to the listener's own address.
    original_destination: Option<SocketAddr>,
    tls: bool,
    peer_identity: Option<Arc<str>>,
    /// Tells the first leg that the request came back.
    resumed: oneshot::Sender<()>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a hop; the entry goes when the returned guard drops.
    fn issue(&self, entry: Entry) -> Option<Issued<'_>> {
        let mut bytes = [0u8; 16];
        // Tokens must be unguessable (a guessed token would skip steps), so
        // they come from the TLS stack's secure generator, not the fast one.
        rustls::crypto::ring::default_provider().secure_random.fill(&mut bytes).ok()?;
        let key = u128::from_be_bytes(bytes);
        self.lock().live.insert(key, entry);
        Some(Issued { table: self, key })
    }

    /// The token's entry, taken (single use); `None` for a token never issued or already used.
    fn take(&self, key: u128) -> Option<Found> {
        let mut table = self.lock();
        if let Some(entry) = table.live.remove(&key) {
            return Some(Found::Live(entry));
        }
        table.abandoned.remove(&key).then_some(Found::Abandoned)
    }

    /// The first leg is done: a token still live was never used, and is
    /// remembered as abandoned. Says whether the request came back.
    fn end(&self, key: u128) -> bool {
        let mut table = self.lock();
        if table.live.remove(&key).is_none() {
            return true;
        }
        let now = Instant::now();
        while table.expiry.front().is_some_and(|(until, _)| *until <= now) || table.expiry.len() >= MAX_ABANDONED {
            if let Some((_, old)) = table.expiry.pop_front() {
                table.abandoned.remove(&old);
            }
        }
        table.abandoned.insert(key);
        table.expiry.push_back((now + ABANDONED_TTL, key));
        false
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock().live.len()
    }
}

/// Removes its entry when the first leg is done with it.
struct Issued<'a> {
    table: &'a InFlight,
    key: u128,
}

impl Issued<'_> {
    fn token(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("{:032x}", self.key)).expect("hex is a valid header value")
    }
}

impl Drop for Issued<'_> {
    fn drop(&mut self) {
        self.table.end(self.key);
    }
}

fn parse_token(value: &HeaderValue) -> Option<u128> {
    let s = value.to_str().ok()?.trim();
    (s.len() == 32).then(|| u128::from_str_radix(s, 16).ok()).flatten()
}

/// On a request's extensions: its CNF's chain goes on after `step` (the
/// request came back from an inline step, or that step failed open).
#[derive(Clone, Debug)]
pub(crate) struct ResumeAfter {
    pub cnf: Label,
    pub step: usize,
}

/// On a request's extensions: it came back from a function after its first
/// leg gave up on it (timed out, failed, or had the function's own answer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Late;

impl From<Late> for Stopped {
    fn from(_: Late) -> Self {
        let flag = LocalReply::ChainResumeLate;
        Stopped::new(flag, flag.text())
    }
}

/// On a request's extensions: the inline hops it has made so far.
#[derive(Clone, Copy, Debug)]
struct Hops(u32);

/// Takes the inline headers off an arriving request, so none reaches an
/// upstream or a function. A resume token the proxy issued and has not seen
/// back marks the request to resume its chain, and returns the first leg's
/// connection for it to stand in for; one whose first leg gave up marks it
/// late (its chain refuses it); any other token is ignored.
pub(crate) fn arrive(state: &ProxyState, conn: Arc<Connection>, parts: &mut http::request::Parts) -> Arc<Connection> {
    if let Some(hops) = parts.headers.remove(&HOPS_HEADER).and_then(|v| v.to_str().ok()?.trim().parse().ok()) {
        parts.extensions.insert(Hops(hops));
    }
    parts.headers.remove(&NEXT_HOP_HEADER);
    let entry = match parts.headers.remove(&RESUME_HEADER).as_ref().and_then(parse_token).and_then(|key| state.shared.inline.take(key)) {
        Some(Found::Live(entry)) => entry,
        Some(Found::Abandoned) => {
            parts.extensions.insert(Late);
            return conn;
        }
        None => return conn,
    };
    // Set on the hop for the function; not the upstream's business.
    parts.headers.remove(&CNF_HEADER);
    let _ = entry.resumed.send(());
    parts.extensions.insert(ResumeAfter { cnf: entry.cnf, step: entry.step });
    let mut first = Connection::new(conn.listener.clone(), entry.client);
    first.tls = entry.tls;
    first.original_destination = entry.original_destination;
    first.peer_identity = entry.peer_identity;
    Arc::new(first)
}

impl Chain {
    /// True when a step is inline: the proxy then buffers small bodies, so a
    /// hop that fails open can still send the body on.
    pub(crate) fn has_inline(&self) -> bool {
        self.steps.iter().any(|s| s.mode == StepMode::Inline)
    }

    /// The first step to run: after the one the request resumes from, if
    /// it resumes this chain. A request back from a function after its first
    /// leg gave up is refused: the client has its answer already (the
    /// failure, or the request went on without the function), and running
    /// the chain again would send it upstream a second time.
    pub(crate) fn first_step(&self, parts: &http::request::Parts) -> Result<usize, Late> {
        if let Some(late) = parts.extensions.get::<Late>() {
            return Err(*late);
        }
        Ok(parts.extensions.get::<ResumeAfter>().filter(|r| r.cnf == self.cnf).map_or(0, |r| r.step + 1))
    }
}

/// Forwards the request to the inline step `step`'s function. `Some` is the
/// function's response, for the client; `None` means the hop failed open
/// and the rest of the chain allowed the request: it goes upstream here.
pub(crate) async fn forward(
    state: &Arc<ProxyState>,
    chain: &Chain,
    mut step: usize,
    parts: &mut http::request::Parts,
    body: &mut RequestBody,
    facts: &RequestFacts<'_>,
) -> Result<Option<Response<ProxyBody>>, Stopped> {
    loop {
        if let Some(response) = hop(state, chain, step, parts, body, facts).await? {
            return Ok(Some(response));
        }
        // Failed open: the chain goes on as if the step were skipped.
        parts.extensions.insert(ResumeAfter { cnf: chain.cnf.clone(), step });
        match chain.run_request(state, parts, facts).await? {
            Next::Upstream => return Ok(None),
            Next::Inline(next) => step = next,
        }
    }
}

/// Why a hop brought back no response.
#[derive(Debug, thiserror::Error)]
enum HopError {
    #[error("the function's service has no endpoint")]
    NoEndpoint,
    #[error("cannot build the hop: {0}")]
    Build(#[from] http::Error),
    #[error("hop failed: {0}")]
    Send(BoxError),
    #[error("no response within the function's timeout")]
    TimedOut,
    #[error("cannot make a resume token")]
    Token,
}

/// One hop through the function: `Ok(None)` when it failed and the policy is open.
async fn hop(
    state: &Arc<ProxyState>,
    chain: &Chain,
    step: usize,
    parts: &http::request::Parts,
    body: &mut RequestBody,
    facts: &RequestFacts<'_>,
) -> Result<Option<Response<ProxyBody>>, Stopped> {
    let function = &chain.steps[step].function;
    let hops = parts.extensions.get::<Hops>().map_or(0, |h| h.0);
    if hops >= MAX_INLINE_HOPS {
        chain.count(state, function, "loop");
        tracing::warn!(cnf = %chain.cnf, function = %function.name, trace_id = facts.trace_id, hops, "inline hop loop: the request keeps coming back without its resume token");
        return Err(Stopped::new(LocalReply::ChainLoop, format!("request went through inline functions {hops} times\n")));
    }
    let started = facts.spans.as_ref().map(HopSpans::start_step);
    let (result, came_back) = send(state, chain, step, parts, body, facts, hops + 1).await;
    let spans = facts.spans.as_ref().zip(started);
    match result {
        Ok(response) => {
            if let Some((spans, started)) = spans {
                spans.finish_step(
                    started,
                    &chain.cnf,
                    &function.name,
                    "inline",
                    "request",
                    StepOutcome::Inlined(response.status().as_u16()),
                );
            }
            chain.count(state, function, "inlined");
            Ok(Some(response))
        }
        Err(e) => {
            if let Some((spans, started)) = spans {
                let outcome = if matches!(e, HopError::TimedOut) { StepOutcome::TimedOut } else { StepOutcome::Failed(e.to_string()) };
                spans.finish_step(started, &chain.cnf, &function.name, "inline", "request", outcome);
            }
            tracing::warn!(cnf = %chain.cnf, function = %function.name, trace_id = facts.trace_id, error = %e, came_back, "inline network function failed");
            if came_back {
                // The request is already on its way upstream through the
                // function: going on here would send it twice.
                chain.count(state, function, "failed_after_resume");
                let text = format!("network function {} failed after passing the request on\n", function.name);
                return Err(Stopped::new(LocalReply::ChainHopFailed, text));
            }
            if function.failure_policy == FailurePolicy::Open && matches!(body, RequestBody::Streaming(None, _)) {
                // The streamed body went to the function and cannot be sent again.
                chain.count(state, function, "failed_closed");
                return Err(Stopped::unavailable(&function.name));
            }
            match chain.failed(state, function) {
                Some(stopped) => Err(stopped),
                None => Ok(None),
            }
        }
    }
}

/// Sends the request through the function and waits for its response
/// headers. The function's timeout bounds its own part: until the request
/// comes back to the proxy (or the function answers by itself); after that
/// the response waits on the upstream, which the resumed leg bounds. Also
/// says whether the request came back.
async fn send(
    state: &Arc<ProxyState>,
    chain: &Chain,
    step: usize,
    parts: &http::request::Parts,
    body: &mut RequestBody,
    facts: &RequestFacts<'_>,
    hops: u32,
) -> (Result<Response<ProxyBody>, HopError>, bool) {
    let function = &chain.steps[step].function;
    let service = &function.cluster.service;
    let Some(endpoint) = function.cluster.balancer.pick(None, None) else {
        return (Err(HopError::NoEndpoint), false);
    };
    let (resumed_tx, resumed) = oneshot::channel();
    let peer_identity = parts.headers.get(&PEER_IDENTITY_HEADER).and_then(|v| v.to_str().ok()).map(Arc::from);
    let entry = Entry {
        cnf: chain.cnf.clone(),
        step,
        client: facts.client,
        original_destination: facts.original_destination,
        tls: facts.tls,
        peer_identity,
        resumed: resumed_tx,
    };
    // Held until the response headers come (or the hop fails): the token is dead after that.
    let Some(issued) = state.shared.inline.issue(entry) else {
        return (Err(HopError::Token), false);
    };
    let headers = hop_headers(parts, facts, &chain.cnf, issued.token(), hops);
    let Some(req_body) = body.take() else {
        return (Err(HopError::Send("request body was already streamed".into())), false);
    };
    let req = match build_upstream_request(parts, headers, service, &endpoint, req_body) {
        Ok(r) => r,
        Err(e) => return (Err(e.into()), false),
    };
    let (answer, _) = wait(send_upstream(service, &endpoint, req), resumed, function.timeout).await;
    // Asked of the table rather than of `wait`: the request may have come
    // back just as the timeout passed, and then it is on its way upstream.
    let came_back = state.shared.inline.end(issued.key);
    drop(issued);
    let result = match answer {
        None => Err(HopError::TimedOut),
        Some(Err(e)) => Err(HopError::Send(e.source)),
        Some(Ok(resp)) => {
            let (mut head, incoming) = resp.into_parts();
            strip_hop_by_hop(&mut head.headers);
            Ok(Response::from_parts(head, http_body_util::BodyExt::boxed_unsync(incoming)))
        }
    };
    (result, came_back)
}

/// Awaits `sent`, giving up after `limit` unless `resumed` fires first.
async fn wait<F: Future>(sent: F, mut resumed: oneshot::Receiver<()>, limit: Duration) -> (Option<F::Output>, bool) {
    tokio::pin!(sent);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let (mut heard, mut came_back) = (false, false);
    loop {
        tokio::select! {
            out = &mut sent => return (Some(out), came_back),
            r = &mut resumed, if !heard => {
                heard = true;
                came_back = r.is_ok();
            }
            _ = &mut deadline, if !came_back => return (None, false),
        }
    }
}

/// The request as the function gets it: as earlier steps left it, without
/// hop-by-hop headers, plus what it needs to send the request back.
fn hop_headers(parts: &http::request::Parts, facts: &RequestFacts<'_>, cnf: &str, token: HeaderValue, hops: u32) -> HeaderMap {
    let mut headers = parts.headers.clone();
    let te_trailers = headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut headers);
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // An HTTP/2 client's host is in `:authority`; the function needs a Host to pass on.
    if !headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(header::HOST, a);
        }
    }
    headers.insert(RESUME_HEADER.clone(), token);
    if let Ok(v) = HeaderValue::from_str(cnf) {
        headers.insert(CNF_HEADER.clone(), v);
    }
    headers.insert(TRACEPARENT.clone(), facts.traceparent.clone());
    headers.insert(HOPS_HEADER.clone(), HeaderValue::from(hops));
    if let Some(v) = facts.local.and_then(|local| HeaderValue::from_str(&next_hop(scheme(facts.tls), local)).ok()) {
        headers.insert(NEXT_HOP_HEADER.clone(), v);
    }
    headers
}

/// The URL of the listener a request arrived on, as a function reaches it:
/// an unspecified bind address becomes loopback.
fn next_hop(scheme: &str, local: SocketAddr) -> String {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("{scheme}://{}", SocketAddr::new(ip, local.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(step: usize) -> (Entry, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Entry {
                cnf: crate::telemetry::metrics::label("edge"),
                step,
                client: "10.0.0.7:5000".parse().unwrap(),
                original_destination: None,
                tls: false,
                peer_identity: None,
                resumed: tx,
            },
            rx,
        )
    }

    #[test]
    fn tokens_are_single_use_and_die_with_their_leg() {
        let table = InFlight::default();
        let (e, mut resumed) = entry(1);
        let issued = table.issue(e).unwrap();
        let key = parse_token(&issued.token()).expect("a token parses back");
        let Some(Found::Live(taken)) = table.take(key) else { panic!("a live token resumes") };
        assert_eq!(taken.step, 1);
        taken.resumed.send(()).unwrap();
        assert!(resumed.try_recv().is_ok(), "the first leg hears of it");
        assert!(table.take(key).is_none(), "single use");
        drop(issued);

        let (e, _) = entry(0);
        let issued = table.issue(e).unwrap();
        let key = parse_token(&issued.token()).unwrap();
        drop(issued);
        assert!(matches!(table.take(key), Some(Found::Abandoned)), "a late return is told apart, once");
        assert!(table.take(key).is_none());
        assert_eq!(table.live(), 0);
    }

    #[test]
    fn tokens_differ_and_garbage_is_no_token() {
        let table = InFlight::default();
        let (a, _) = entry(0);
        let (b, _) = entry(0);
        let (a, b) = (table.issue(a).unwrap(), table.issue(b).unwrap());
        assert_ne!(a.key, b.key);
        for bad in ["", "xyz", "0123", &"g".repeat(32), &"0".repeat(33)] {
            assert!(parse_token(&HeaderValue::from_str(bad).unwrap()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn next_hop_turns_unspecified_into_loopback() {
        assert_eq!(next_hop("http", "0.0.0.0:8080".parse().unwrap()), "http://127.0.0.1:8080");
        assert_eq!(next_hop("https", "[::]:8443".parse().unwrap()), "https://[::1]:8443");
        assert_eq!(next_hop("http", "10.1.2.3:80".parse().unwrap()), "http://10.1.2.3:80");
    }

    #[tokio::test]
    async fn the_timeout_stops_counting_once_the_request_came_back() {
        let (tx, rx) = oneshot::channel();
        let slow = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            "answer"
        };
        tx.send(()).unwrap();
        assert_eq!(wait(slow, rx, Duration::from_millis(20)).await, (Some("answer"), true));

        let (_tx, rx) = oneshot::channel::<()>();
        let slow = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            "answer"
        };
        assert_eq!(wait(slow, rx, Duration::from_millis(20)).await, (None, false));
    }
}
