//! The collector's HTTP face: the OTLP/HTTP JSON receiver proxies export to,
//! and the query API `trefoil trace` reads.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use trefoil_api::traces::{FollowEvent, Trace, TraceList};
use trefoil_api::ErrorBody;

use super::otlp;
use super::span::Span;
use super::store::TraceStore;
use crate::flows::{correlate, FlowStore};

/// Default and largest `?limit` of the recent-traces list.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1_000;

/// The spans, and the flows a trace is joined with.
#[derive(Clone)]
struct Collector {
    traces: Arc<TraceStore>,
    flows: Arc<FlowStore>,
}

impl FromRef<Collector> for Arc<TraceStore> {
    fn from_ref(c: &Collector) -> Self {
        c.traces.clone()
    }
}

pub fn router(store: Arc<TraceStore>, flows: Arc<FlowStore>) -> Router {
    Router::new()
        .route("/v1/traces", post(receive))
        .route("/api/v1/traces", get(list))
        .route("/api/v1/watch/traces", get(watch_all))
        .route("/api/v1/traces/{trace_id}", get(read))
        .with_state(Collector { traces: store, flows })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

/// OTLP/HTTP: answers 200 with a partial success naming the spans it could
/// not use, 400 for a body that is not an export request.
async fn receive(State(store): State<Arc<TraceStore>>, body: Bytes) -> Response {
    match otlp::decode(&body) {
        Ok(decoded) => {
            let rejected = decoded.rejected + store.insert(decoded.spans);
            let partial = if rejected > 0 { json!({"rejectedSpans": rejected.to_string()}) } else { json!({}) };
            Json(json!({"partialSuccess": partial})).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default, deserialize_with = "saturating")]
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
}

async fn list(State(store): State<Arc<TraceStore>>, Query(q): Query<ListQuery>) -> Response {
    if q.follow {
        return follow(store, None);
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    Json(TraceList::new(store.recent(limit))).into_response()
}

/// Any non-negative integer, however large (the list is capped anyway):
/// `?limit=` with more digits than a `usize` holds means "as many as you have".
fn saturating<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(format!("limit {text:?} is not a non-negative integer")));
    }
    Ok(Some(text.parse().unwrap_or(usize::MAX)))
}

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(rename = "traceId")]
    trace_id: Option<String>,
}

async fn watch_all(State(store): State<Arc<TraceStore>>, Query(q): Query<WatchQuery>) -> Response {
    follow(store, q.trace_id.map(|t| t.to_ascii_lowercase()))
}

#[derive(Deserialize)]
struct ReadQuery {
    #[serde(default)]
    follow: bool,
}

async fn read(State(c): State<Collector>, Path(trace_id): Path<String>, Query(q): Query<ReadQuery>) -> Response {
    let trace_id = trace_id.to_ascii_lowercase();
    if q.follow {
        return follow(c.traces, Some(trace_id));
    }
    match c.traces.trace(&trace_id) {
        Some(spans) => {
            let flows = correlate::flows_of(&spans, &c.flows);
            Json(Trace { flows, ..Trace::new(trace_id, spans) }).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no trace {trace_id} (never seen, or evicted)")),
    }
}

/// JSON lines `{type: SPAN, span}`: for one trace, the spans held so far and
/// then each new one; for all traces, new spans only.
fn follow(store: Arc<TraceStore>, trace_id: Option<String>) -> Response {
    // Subscribe before reading, so no span falls between the two.
    let rx = store.subscribe();
    let held = trace_id.as_deref().and_then(|id| store.trace(id)).unwrap_or_default();
    // A span stored between subscribing and reading arrives both ways: once is enough.
    let already: Arc<HashSet<String>> = Arc::new(held.iter().map(|s| s.span_id.clone()).collect());
    // Encoded now, while `held` is at hand.
    #[allow(clippy::needless_collect)]
    let lines: Vec<Bytes> = held.iter().map(|span| line(&FollowEvent::Span { span: span.clone() })).collect();
    let new = futures_util::stream::unfold(rx, move |mut rx| {
        let (trace_id, already) = (trace_id.clone(), already.clone());
        async move {
            loop {
                match rx.recv().await {
                    Ok(span) if trace_id.as_deref().is_none_or(|t| t == span.trace_id) && !already.contains(&span.span_id) => {
                        return Some((Ok::<_, std::convert::Infallible>(line(&FollowEvent::Span { span: Span::clone(&span) })), rx));
                    }
                    Ok(_) => continue,
                    // The follower fell behind and missed spans: say so and go on.
                    Err(RecvError::Lagged(n)) => return Some((Ok(line(&FollowEvent::Lagged { missed: n })), rx)),
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    let stream = futures_util::stream::iter(lines.into_iter().map(Ok)).chain(new);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn line(event: &FollowEvent) -> Bytes {
    let mut out = serde_json::to_vec(event).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}
