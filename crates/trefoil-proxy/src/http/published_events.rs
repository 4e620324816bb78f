//! Events a network function publishes on its own time rather than in a
//! verdict: a scan that ends after the response went out, a threshold
//! crossed, a tap's findings. The function POSTs them to its proxy (in the
//! local runtime its sidecar's admin listener, `TREFOIL_EVENTS`); the proxy
//! logs them under their trace id, records them in the trace, and runs the
//! CNF's handlers for them, detached from any request.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::Semaphore;
use trefoil_chain::Event;

use crate::config::state::ProxyState;
use crate::http::body;
use crate::http::chain_handlers;
use crate::telemetry::chain_span::published_span;
use crate::telemetry::trace_context::hex_into;
use crate::upstream::ProxyBody;

/// A publication's body may be at most this large.
pub(crate) const MAX_PUBLICATION_BYTES: usize = 64 * 1024;
/// Events in one publication at most.
const MAX_EVENTS: usize = 32;
/// Publications whose handlers run at once, per proxy; more are refused with
/// 429 so a chatty function cannot queue work without bound.
static HANDLER_SLOTS: Semaphore = Semaphore::const_new(64);

/// What a function POSTs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Publication {
    /// The CNF the events belong to: its handlers run.
    cnf: String,
    /// The publishing function, for logs and the trace.
    #[serde(default)]
    function: Option<String>,
    /// The request the events are about (32 hex digits), when there is one.
    #[serde(default)]
    trace_id: Option<String>,
    events: Vec<Event>,
}

/// Serves `POST /events` on the admin listener.
pub(crate) async fn publish(state: Arc<ProxyState>, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::POST {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "POST a publication: {\"cnf\": ..., \"traceId\": ..., \"events\": [{\"name\": ..., \"data\": ...}]}"}),
        );
    }
    let bytes = match http_body_util::Limited::new(req.into_body(), MAX_PUBLICATION_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": format!("a publication is at most {MAX_PUBLICATION_BYTES} bytes")}),
            );
        }
        Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": format!("reading the body: {e}")})),
    };
    let publication: Publication = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": format!("invalid publication: {e}")})),
    };
    if let Err(problem) = check(&publication) {
        return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": problem}));
    }
    let snapshot = state.snapshot.load_full();
    let Some(chain) = snapshot.chains.get(&publication.cnf).cloned() else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no CNF named {:?} in this proxy's configuration", publication.cnf)}),
        );
    };
    let Publication { cnf, function, trace_id, events } = publication;
    let function = function.unwrap_or_default();
    let trace_id = trace_id.unwrap_or_default();
    for event in &events {
        tracing::info!(target: "trefoil::chain::event", cnf, function, trace_id, event = %event.name, data = %event.data, "published event");
    }
    if let (Some(sink), Some(id)) = (state.telemetry.load().spans.as_ref(), hex_into::<16>(&trace_id)) {
        sink.send(published_span(id, &cnf, &function, &events, &state.name, SystemTime::now()));
    }
    let handled = chain.handlers.as_ref().map_or(0, |h| events.iter().filter(|e| h.handlers.get(&e.name).is_some()).count());
    if handled > 0 {
        let Ok(slot) = HANDLER_SLOTS.try_acquire() else {
            return json(
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({"error": "too many published events are being handled; retry later"}),
            );
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            chain_handlers::run_published(&chain, &state, &trace_id, events).await;
        });
    }
    json(StatusCode::ACCEPTED, serde_json::json!({"accepted": true, "handled": handled}))
}

fn check(p: &Publication) -> Result<(), String> {
    if p.events.is_empty() || p.events.len() > MAX_EVENTS {
        return Err(format!("`events` needs 1 to {MAX_EVENTS} events, got {}", p.events.len()));
    }
    if let Some((i, e)) = p.events.iter().enumerate().find(|(_, e)| !trefoil_model::validate::valid_event(&e.name)) {
        return Err(format!("events[{i}].name: invalid event name {:?}: use lower-case letters, digits, '_', '-' and '.'", e.name));
    }
    if let Some(id) = p.trace_id.as_deref().filter(|id| hex_into::<16>(id).is_none()) {
        return Err(format!("traceId: {id:?} is not 32 lower-case hex digits"));
    }
    Ok(())
}

fn json(status: StatusCode, doc: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(serde_json::to_vec(&doc).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_are_checked() {
        let p = |doc: &str| check(&serde_json::from_str(doc).unwrap());
        assert!(p(
            r#"{"cnf": "edge", "traceId": "0af7651916cd43dd8448eb211c80319c", "events": [{"name": "virus_found", "data": {"v": 1}}]}"#
        )
        .is_ok());
        assert!(p(r#"{"cnf": "edge", "events": []}"#).unwrap_err().contains("1 to 32"));
        assert!(p(r#"{"cnf": "edge", "events": [{"name": "Bad"}]}"#).unwrap_err().starts_with("events[0].name"));
        assert!(p(r#"{"cnf": "edge", "traceId": "xyz", "events": [{"name": "a"}]}"#).unwrap_err().starts_with("traceId"));
        assert!(serde_json::from_str::<Publication>(r#"{"cnf": "edge", "events": [], "extra": 1}"#).is_err(), "unknown fields are refused");
    }
}
