//! The admin listener: metrics, readiness, the running config, a human view.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::state::ProxyState;
use crate::http::body;
use crate::upstream::ProxyBody;

pub(crate) async fn serve(state: Arc<ProxyState>, listener: std::net::TcpListener, mut stop: watch::Receiver<bool>) {
    let Ok(listener) = TcpListener::from_std(listener) else { return };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = stop.changed() => return,
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, text: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

async fn handle(state: Arc<ProxyState>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let snapshot = state.snapshot.load_full();
    Ok(match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            if accept.contains("application/openmetrics-text") {
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    state.shared.metrics.encode_openmetrics(),
                )
            } else {
                reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", state.shared.metrics.encode_prometheus())
            }
        }
        "/ready" => {
            // Mesh TLS without an SVID would refuse every handshake.
            let svid = !snapshot.needs_svid || state.shared.identity.get().is_some_and(|i| i.current().is_some());
            if state.ready.load(Ordering::Relaxed) && svid {
                reply(StatusCode::OK, "text/plain", format!("ready (config version {})\n", snapshot.version))
            } else {
                let why = if svid { "not ready\n" } else { "not ready: waiting for an SVID for mesh TLS\n" };
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", why)
            }
        }
        "/config" => {
            let doc = serde_json::json!({
                "version": snapshot.version,
                "loadedAt": humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
                "resources": snapshot.resources,
            });
            reply(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&doc).unwrap_or_default())
        }
        "/stats" => reply(StatusCode::OK, "text/plain; charset=utf-8", stats(&state)),
        "/identity" => match state.shared.identity.get() {
            Some(identity) => {
                reply(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&identity.describe()).unwrap_or_default())
            }
            None => reply(StatusCode::NOT_FOUND, "text/plain", "no identity: this proxy reads its config from files\n"),
        },
        "/events" => crate::http::published_events::publish(state.clone(), req).await,
        "/" => reply(StatusCode::OK, "text/plain", "trefoil proxy admin: /metrics /ready /config /stats /identity, POST /events\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics /ready /config /stats /identity, POST /events\n"),
    })
}

/// A page a person can read at a glance: listeners, services, endpoint health.
fn stats(state: &ProxyState) -> String {
    let s = state.snapshot.load();
    let mut out = String::new();
    let _ = writeln!(out, "proxy {}  config version {}  ready {}", state.name, s.version, state.ready.load(Ordering::Relaxed));
    let _ = writeln!(out, "\nlisteners:");
    for l in &s.listeners {
        let _ = writeln!(out, "  {:<20} {:<22} {:?}{}", l.name, l.addr, l.protocol, if l.tls.is_some() { " tls" } else { "" });
    }
    let _ = writeln!(out, "\nservices:");
    for (name, svc) in &s.services {
        let _ = writeln!(
            out,
            "  {name} ({:?}, {} in flight, {} pending)",
            svc.protocol,
            svc.load.in_flight.load(Ordering::Relaxed),
            svc.load.pending.load(Ordering::Relaxed)
        );
        for e in &svc.endpoints {
            let status = if !e.is_healthy() {
                "unhealthy".to_string()
            } else if let Some(left) = e.ejected_for() {
                format!("ejected for {:.1}s", left.as_secs_f64())
            } else {
                "ok".to_string()
            };
            let _ = writeln!(
                out,
                "    {:<22} version {:<8} in flight {:<5} ejections {:<3} {}",
                e.addr,
                if e.version.is_empty() { "-" } else { &e.version },
                e.in_flight.load(Ordering::Relaxed),
                e.ejection_count(),
                status
            );
        }
    }
    out
}
