//! The CA over REST: `GET /api/v1/ca` (viewer) shows the signing
//! certificate and the roots in the trust bundle, with fingerprints and
//! expiry; `POST /api/v1/ca/rotate` (admin) makes a new root, the old one
//! kept in the bundle for `overlap`. Certificates only: no key is ever in
//! an answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{extract::State, Extension, Json, Router};
use trefoil_api::ErrorBody;

use super::{Issuer, RotateError, DEFAULT_OVERLAP};
use crate::auth::Actor;

/// The body of `POST /api/v1/ca/rotate`; empty means the default overlap.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the old root stays trusted, e.g. `24h` (humantime).
    #[serde(default)]
    overlap: Option<String>,
}

/// Routes of the CA.
pub fn router(issuer: Arc<Issuer>) -> Router {
    Router::new().route("/api/v1/ca", get(status)).route("/api/v1/ca/rotate", post(rotate)).with_state(issuer)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

async fn status(State(issuer): State<Arc<Issuer>>) -> Response {
    Json(issuer.status(SystemTime::now())).into_response()
}

async fn rotate(State(issuer): State<Arc<Issuer>>, actor: Option<Extension<Actor>>, body: axum::body::Bytes) -> Response {
    if body.len() > 4096 {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "a rotation request is a few bytes of JSON");
    }
    let request: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body: {e} (expected {{\"overlap\": \"24h\"}})")),
        }
    };
    let overlap = match request.overlap.as_deref().map(humantime::parse_duration) {
        None => default_overlap(issuer.lifetime()),
        Some(Ok(d)) => d,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("overlap: {e} (a duration like 24h or 90s)")),
    };
    let before = issuer.generation();
    // Generating the key and writing the files blocks; not on the runtime's threads.
    let rotating = issuer.clone();
    let result = tokio::task::spawn_blocking(move || rotating.rotate(overlap, SystemTime::now())).await;
    match result {
        Ok(Ok(status)) => {
            if let Some(Extension(actor)) = &actor {
                actor.record("rotate", "CA/root", Some(before), Some(status.generation));
            }
            Json(status).into_response()
        }
        Ok(Err(e @ (RotateError::Operator | RotateError::NotKept | RotateError::TooManyRetiring(_)))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e @ (RotateError::OverlapTooShort { .. } | RotateError::OverlapTooLong(_)))) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the rotation did not finish: {e}")),
    }
}

/// The default overlap for an issuer of SVIDs living `lifetime`.
pub fn default_overlap(lifetime: Duration) -> Duration {
    DEFAULT_OVERLAP.max(lifetime)
}
