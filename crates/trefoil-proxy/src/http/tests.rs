//! The request phases in process: a snapshot compiled from YAML, the proxy's
//! `serve` behind a hyper server on loopback, a real loopback upstream, no
//! binary. Each test drives phases (route, filters, request chain
//! verdicts, attempts with retries, per-try and rule timeouts, circuit
//! breaking, response edits) and reads the answer and what the record
//! phase counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::snapshot::{compile, Shared};
use crate::config::state::{ProxyState, TelemetrySinks};
use crate::http::body::Downstream;
use crate::http::proxy::{self, Connection};
use crate::telemetry::metrics::label;

/// An upstream on loopback: `/ok` answers 200; `/flaky` 503 every other
/// time (first time included); `/slow...` after 2 s; `/hold` holds the
/// answer while `release` is false (bounded at 5 s).
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn upstream(release: Arc<AtomicBool>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (hits, release) = (counted.clone(), release.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = hits.fetch_add(1, Ordering::SeqCst);
                    let release = release.clone();
                    async move {
                        let status = match req.uri().path() {
                            "/flaky" if n % 2 == 0 => StatusCode::SERVICE_UNAVAILABLE,
                            path if path.starts_with("/slow") => {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                StatusCode::OK
                            }
                            "/hold" => {
                                for _ in 0..500 {
                                    if release.load(Ordering::SeqCst) {
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                                StatusCode::OK
                            }
                            _ => StatusCode::OK,
                        };
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"up\n")));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Upstream { addr, hits }
}

/// The proxy, compiled from `yaml` (with `UPSTREAM` replaced by the
/// upstream's address), serving on loopback.
struct Harness {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    /// With `transparent`: the original destination of the connections
    /// accepted from now on, as a datapath redirect would have left it.
    original: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    /// The verified peer identity of the connections accepted from now on,
    /// as a client certificate's handshake would have left it.
    peer: Arc<std::sync::Mutex<Option<Arc<str>>>>,
}

async fn harness(yaml: &str, upstream: SocketAddr) -> Harness {
    harness_on(false, yaml, upstream).await
}

/// [`harness`], its listener `transparent` or not.
async fn harness_on(transparent: bool, yaml: &str, upstream: SocketAddr) -> Harness {
    let text = format!(
        "apiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {{name: test}}\nspec: {{accessLog: \"off\"}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {{name: public}}\n\
         spec: {{address: 127.0.0.1:1, protocol: http, transparent: {transparent}}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\n\
         spec: {{ports: [{{name: http, port: 80, protocol: http}}], endpoints: [{{address: \"{upstream}\", version: v1}}]}}\n---\n{yaml}"
    );
    let sources = trefoil_model::load_str(&Arc::from("phases.yaml"), &text).unwrap_or_else(|e| panic!("{e:?}"));
    let shared = Arc::new(Shared::new(1));
    let snapshot = compile(&sources, &shared, 1).unwrap_or_else(|e| panic!("{e:?}"));
    let telemetry = TelemetrySinks::build(&snapshot.settings, "test", &shared).unwrap();
    let state = Arc::new(ProxyState {
        name: "test".into(),
        snapshot: ArcSwap::from_pointee(snapshot),
        shared,
        telemetry: ArcSwap::from_pointee(telemetry),
        ready: AtomicBool::new(true),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (serving, original) = (state.clone(), Arc::new(std::sync::Mutex::new(None)));
    let originals = original.clone();
    let peer = Arc::new(std::sync::Mutex::new(None));
    let peers = peer.clone();
    tokio::spawn(async move {
        while let Ok((stream, client)) = listener.accept().await {
            let mut conn = Connection::new(label("public"), client);
            conn.original_destination = *originals.lock().unwrap();
            conn.peer_identity = peers.lock().unwrap().clone();
            let (state, conn) = (serving.clone(), Arc::new(conn));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    proxy::serve(state.clone(), conn.clone(), req.map(Downstream::Left))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Harness { addr, state, original, peer }
}

impl Harness {
    /// `GET path`: the status, the `x-trefoil-flag` if any, and one header's value.
    async fn get(&self, path: &str, header: &str) -> (u16, String, String) {
        self.send("GET", path, &[], header).await
    }

    /// `method path` with `headers`: the status, the `x-trefoil-flag` if any, and one header's value.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], header: &str) -> (u16, String, String) {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let mut req = Request::builder().method(method).uri(path).header("host", "web");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let value = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let (status, flag, header) = (resp.status().as_u16(), value("x-trefoil-flag"), value(header));
        let _ = resp.into_body().collect().await;
        (status, flag, header)
    }

    /// The `trefoil_requests_total` samples with `status_code` `status`.
    fn counted(&self, status: u16) -> f64 {
        let text = self.state.shared.metrics.encode_prometheus();
        let wanted = format!("status_code=\"{status}\"");
        text.lines()
            .filter(|l| l.starts_with("trefoil_requests_total{") && l.contains(&wanted))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

const ROUTE: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [\"*\"]\n  rules:\n";

#[tokio::test]
async fn route_and_filters_answer_before_any_upstream() {
    let up = upstream(Arc::new(AtomicBool::new(true))).await;
    let rules = "    - matches: [{path: {prefix: /teapot}}]\n      filters: {fault: {abort: {status: 418, percent: 100}}}\n      backends: [{service: web}]\n\
                 \x20   - matches: [{path: {prefix: /ok}}]\n      filters: {responseHeaderModifier: {set: {x-edited: \"yes\"}}}\n      backends: [{service: web}]\n";
    let proxy = harness(&format!("{ROUTE}{rules}"), up.addr).await;
    assert_eq!(proxy.get("/nowhere", "").await, (404, "no_route".into(), String::new()), "route");
    assert_eq!(proxy.get("/teapot", "").await, (418, "fault_abort".into(), String::new()), "filters");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "neither reached the upstream");
    assert_eq!(proxy.get("/ok", "x-edited").await, (200, String::new(), "yes".into()), "response edits");
    assert_eq!((proxy.counted(404), proxy.counted(418), proxy.counted(200)), (1.0, 1.0, 1.0), "record");
}

#[tokio::test]
async fn attempts_retry_and_time_out() {
    let up = upstream(Arc::new(AtomicBool::new(true))).await;
    let rules = "    - matches: [{path: {prefix: /flaky}}]\n      backends: [{service: web}]\n      retry: {attempts: 1, on: [gateway-error]}\n\
                 \x20   - matches: [{path: {exact: /slow-try}}]\n      backends: [{service: web}]\n      retry: {attempts: 0, perTryTimeout: 200ms, on: [per-try-timeout]}\n\
                 \x20   - matches: [{path: {prefix: /slow}}]\n      backends: [{service: web}]\n      timeout: 300ms\n";
    let proxy = harness(&format!("{ROUTE}{rules}"), up.addr).await;
    assert_eq!(proxy.get("/flaky", "").await.0, 200, "the 503 of the first attempt is retried");
    assert_eq!(up.hits.load(Ordering::SeqCst), 2);
    assert_eq!(proxy.get("/slow", "").await, (504, "timeout".into(), String::new()), "the rule's timeout");
    assert_eq!(proxy.get("/slow-try", "").await, (504, "per_try_timeout".into(), String::new()), "the per-try timeout");
}

#[tokio::test]
async fn the_circuit_breaker_refuses_past_max_requests() {
    let release = Arc::new(AtomicBool::new(false));
    let up = upstream(release.clone()).await;
    let policy = "---\napiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web}\n\
                  spec: {service: web, connectionPool: {maxRequests: 1}}\n";
    let rules = "    - matches: [{path: {prefix: /}}]\n      backends: [{service: web}]\n";
    let proxy = Arc::new(harness(&format!("{ROUTE}{rules}{policy}"), up.addr).await);
    let held = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.get("/hold", "").await.0 }
    });
    // Bounded wait until the held request is in flight at the upstream.
    for _ in 0..500 {
        if up.hits.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 1, "the first request reached the upstream");
    assert_eq!(proxy.get("/ok", "").await, (503, "overflow".into(), String::new()));
    release.store(true, Ordering::SeqCst);
    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(proxy.get("/ok", "").await.0, 200, "the place is free again");
}

/// Bounded wait until `done` holds: readiness, not a sleep.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn attempts_wait_for_a_connection_slot_or_overflow() {
    let release = Arc::new(AtomicBool::new(false));
    let up = upstream(release.clone()).await;
    let policy = "---\napiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web}\n\
                  spec: {service: web, connectionPool: {maxConnections: 1, maxPendingRequests: 1, connectTimeout: 1s}}\n";
    let rules = "    - matches: [{path: {prefix: /}}]\n      backends: [{service: web}]\n";
    let proxy = Arc::new(harness(&format!("{ROUTE}{rules}{policy}"), up.addr).await);
    let load = proxy.state.snapshot.load().services["web"].load.clone();
    let get = |path: &'static str| {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.get(path, "").await })
    };
    let held = get("/hold");
    until("the held request reaching the upstream", || up.hits.load(Ordering::SeqCst) == 1).await;
    // The one connection is taken: the next request waits for it, the one after overflows.
    let pending = get("/ok");
    until("a request pending", || load.pending.load(Ordering::SeqCst) == 1).await;
    assert_eq!(proxy.get("/ok", "").await, (503, "overflow".into(), String::new()), "past maxPendingRequests");
    assert_eq!(pending.await.unwrap(), (503, "overflow".into(), String::new()), "no slot within connectTimeout");
    assert_eq!(load.pending.load(Ordering::SeqCst), 0);
    // A pending request gets the connection when the held one gives it back.
    let pending = get("/ok");
    until("a request pending", || load.pending.load(Ordering::SeqCst) == 1).await;
    release.store(true, Ordering::SeqCst);
    assert_eq!(held.await.unwrap().0, 200);
    assert_eq!(pending.await.unwrap(), (200, String::new(), String::new()), "served once the slot was free");
    assert_eq!(up.hits.load(Ordering::SeqCst), 2, "refused requests never reached the upstream");
}

/// A network function speaking the HTTP/JSON call-out: it denies with 451
/// a request for a path under `/admin` and allows the rest.
async fn acl_function() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let call: serde_json::Value = serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
                    let verdict = if call["path"].as_str().unwrap_or_default().starts_with("/admin") {
                        serde_json::json!({"verdict": "deny", "status": 451, "reason": "not here\n"})
                    } else {
                        serde_json::json!({"verdict": "allow"})
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(verdict.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_request_chain_denies_or_lets_through() {
    let up = upstream(Arc::new(AtomicBool::new(true))).await;
    let acl = acl_function().await;
    let chain = format!(
        "---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: acl}}\n\
         spec: {{ports: [{{name: http, port: 80, protocol: http}}], endpoints: [{{address: \"{acl}\"}}]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {{name: acl}}\nspec: {{service: acl, timeout: 2s}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {{name: edge}}\nspec: {{chain: [{{function: acl}}]}}\n"
    );
    let rules = "    - matches: [{path: {prefix: /}}]\n      backends: [{service: web}]\n      chain: edge\n";
    let proxy = harness(&format!("{ROUTE}{rules}{chain}"), up.addr).await;
    assert_eq!(proxy.get("/admin/users", "").await, (451, "chain_denied".into(), String::new()), "a deny verdict");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "a denied request never reaches the upstream");
    assert_eq!(proxy.get("/ok", "").await.0, 200, "an allow verdict");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

/// The upstream phase of an `originalDestination` backend: each connection
/// goes where it was addressed, and pooled upstream connections are never
/// shared between destinations.
#[tokio::test]
async fn an_original_destination_backend_goes_where_each_connection_was_addressed() {
    let (a, b) = (upstream(Arc::new(AtomicBool::new(true))).await, upstream(Arc::new(AtomicBool::new(true))).await);
    let passthrough =
        "---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: original}\nspec: {originalDestination: true}\n";
    let rules = "    - matches: [{path: {prefix: /}}]\n      backends: [{service: original}]\n";
    let proxy = harness_on(true, &format!("{ROUTE}{rules}{passthrough}"), a.addr).await;
    assert_eq!(proxy.get("/ok", "").await, (503, "no_original_destination".into(), String::new()), "addressed to the listener itself");
    for (to, n) in [(a.addr, 1), (b.addr, 1), (a.addr, 2), (b.addr, 2)] {
        *proxy.original.lock().unwrap() = Some(to);
        assert_eq!(proxy.get("/ok", "").await.0, 200, "to {to}");
        let hits = if to == a.addr { &a.hits } else { &b.hits };
        assert_eq!(hits.load(Ordering::SeqCst), n, "the request went to {to}, on a connection of its own destination");
    }
}

/// The authorization phase: by the connection's verified identity only,
/// before the chain (its function never hears of a denied request), deny
/// over allow, counted by policy and rule.
#[tokio::test]
async fn authorization_decides_before_the_chain_by_the_verified_identity() {
    let up = upstream(Arc::new(AtomicBool::new(true))).await;
    let acl = acl_function().await;
    let web = "spiffe://trefoil.local/ns/default/sa/web";
    let config = format!(
        "---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: acl}}\n\
         spec: {{ports: [{{name: http, port: 80, protocol: http}}], endpoints: [{{address: \"{acl}\"}}]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {{name: acl}}\nspec: {{service: acl, timeout: 2s}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {{name: edge}}\nspec: {{chain: [{{function: acl}}]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: from-web}}\n\
         spec: {{selector: {{service: web}}, action: allow, rules: [{{from: [{{principals: ['spiffe://trefoil.local/ns/*/sa/web']}}]}}]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin}}\n\
         spec: {{selector: {{service: web}}, action: deny, rules: [{{to: [{{methods: [DELETE]}}]}}, {{to: [{{paths: ['/admin/*']}}]}}]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: watch}}\n\
         spec: {{selector: {{service: web}}, action: audit, rules: [{{to: [{{paths: ['/ok']}}]}}]}}\n"
    );
    let rules = "    - matches: [{path: {prefix: /}}]\n      backends: [{service: web}]\n      chain: edge\n";
    let proxy = harness(&format!("{ROUTE}{rules}{config}"), up.addr).await;
    let forged = [("x-trefoil-peer-identity", web)];
    assert_eq!(proxy.get("/ok", "").await, (403, "rbac_denied".into(), String::new()), "no identity: default deny");
    assert_eq!(proxy.send("GET", "/ok", &forged, "").await, (403, "rbac_denied".into(), String::new()), "a forged header is no identity");
    *proxy.peer.lock().unwrap() = Some(Arc::from(web));
    assert_eq!(proxy.get("/ok", "").await.0, 200, "the allowed principal");
    assert_eq!(
        proxy.get("/admin/users", "").await,
        (403, "rbac_denied".into(), String::new()),
        "deny overrides allow, before the chain's 451"
    );
    assert_eq!(proxy.send("DELETE", "/ok", &[], "").await.1, "rbac_denied");
    assert_eq!(proxy.get("/x/../admin/users", "").await.1, "rbac_denied", "policies see the normalized path");
    assert_eq!(proxy.get("//admin/users", "").await.1, "rbac_denied", "merged slashes too");
    *proxy.peer.lock().unwrap() = Some(Arc::from("spiffe://trefoil.local/ns/default/sa/batch"));
    assert_eq!(proxy.get("/ok", "").await.0, 403, "another principal");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1, "only the allowed request reached the upstream");
    let text = proxy.state.shared.metrics.encode_prometheus();
    let count = |labels: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("trefoil_authz_denied_total{{{labels}}}")))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(count("policy=\"\",rule=\"default-deny\"").as_deref(), Some("3"), "{text}");
    assert_eq!(count("policy=\"no-admin\",rule=\"1\"").as_deref(), Some("3"), "{text}");
    let audited = text.lines().find(|l| l.starts_with("trefoil_authz_audited_total{policy=\"watch\",rule=\"0\"}"));
    // Every GET /ok is audited, those then refused by default included; a deny rule's match ends first.
    assert_eq!(audited.and_then(|l| l.rsplit(' ').next()), Some("4"), "{text}");
    assert_eq!(count("policy=\"no-admin\",rule=\"0\"").as_deref(), Some("1"), "{text}");
}
