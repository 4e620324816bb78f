//! The flow records' REST face: node agents `POST /api/v1/datapath/flows`
//! their reports (unauthenticated, like every call the agent makes today:
//! the API has no authentication yet); `GET` lists what is held, and
//! `GET /api/v1/watch/datapath/flows` follows each flow as reports bring it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use trefoil_api::flows::{FlowEvent, FlowList, FlowReport};
use trefoil_api::ErrorBody;

use super::store::FlowStore;

/// The most flows one list answers with.
const MAX_LIST: usize = 1_000;

pub fn router(store: Arc<FlowStore>) -> Router {
    Router::new()
        .route("/api/v1/datapath/flows", get(list).post(report))
        .route("/api/v1/watch/datapath/flows", get(watch))
        .with_state(store)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

async fn report(State(store): State<Arc<FlowStore>>, body: Bytes) -> Response {
    let report: FlowReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a flow report: {e}")),
    };
    match store.report(report) {
        Ok(accepted) => Json(accepted).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Deserialize)]
struct RuleQuery {
    rule: Option<String>,
}

async fn list(State(store): State<Arc<FlowStore>>, Query(q): Query<RuleQuery>) -> Response {
    Json(FlowList::new(store.list(q.rule.as_deref(), MAX_LIST))).into_response()
}

/// JSON lines `{type: FLOW, flow}` of each flow a report brings (of one rule).
async fn watch(State(store): State<Arc<FlowStore>>, Query(q): Query<RuleQuery>) -> Response {
    let rx = store.subscribe();
    let stream = futures_util::stream::unfold((rx, q.rule), |(mut rx, rule)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(flow) if rule.as_deref().is_none_or(|r| r == flow.rule) => FlowEvent::Flow { flow: (*flow).clone() },
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => FlowEvent::Lagged { missed },
                Err(RecvError::Closed) => return None,
            };
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), (rx, rule)));
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream.boxed()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
