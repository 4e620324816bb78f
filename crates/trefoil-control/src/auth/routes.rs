//! `/api/v1/tokens` (create, list, revoke) and `/api/v1/audit`: admin only,
//! which the layer in `auth` enforces before these run; and
//! `/api/v1/whoami`, any reader's own token and role (the portal shows no
//! edit buttons to a viewer).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use trefoil_api::{AuditList, CreateToken, CreatedToken, Revoked, TokenList};

use super::{Actor, Auth};
use crate::api::ApiError;
use crate::store::StoreError;

/// The longest lifetime a token may be given: ten years, in seconds. Longer
/// is a typo, and milliseconds past it would overflow.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

pub fn router(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/whoami", get(whoami))
        .with_state(auth)
}

async fn create(State(auth): State<Arc<Auth>>, actor: Option<Extension<Actor>>, body: Bytes) -> Result<Response, ApiError> {
    let request: CreateToken = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("a token request is {{\"role\", \"ttlSeconds\"}}: {e}")))?;
    if let Some(ttl) = request.ttl_seconds.filter(|t| *t == 0 || *t > MAX_TTL_SECONDS) {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("ttlSeconds {ttl} is not between 1 and {MAX_TTL_SECONDS}")));
    }
    let creator = actor.as_ref().map_or("anonymous", |a| a.caller.token_id.as_str());
    let (info, token) = auth.tokens.mint(request.role, request.ttl_seconds.map(|s| s * 1000), creator)?;
    if let Some(Extension(actor)) = &actor {
        actor.record("token-create", &format!("Token/{}", info.id), None, None);
    }
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token })).into_response())
}

async fn list(State(auth): State<Arc<Auth>>) -> Json<TokenList> {
    Json(TokenList { items: auth.tokens.list() })
}

async fn revoke(State(auth): State<Arc<Auth>>, actor: Option<Extension<Actor>>, Path(id): Path<String>) -> Result<Json<Revoked>, ApiError> {
    auth.tokens.revoke(&id).map_err(|e| match e {
        StoreError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, format!("token {id} not found")),
        e => e.into(),
    })?;
    if let Some(Extension(actor)) = &actor {
        actor.record("token-revoke", &format!("Token/{id}"), None, None);
    }
    Ok(Json(Revoked { revoked: id }))
}

async fn audit(State(auth): State<Arc<Auth>>) -> Json<AuditList> {
    Json(AuditList { items: auth.audit.entries() })
}

/// The caller's token and role; a request let in without one (no
/// authentication layer) answers nulls.
async fn whoami(actor: Option<Extension<Actor>>) -> Json<serde_json::Value> {
    Json(match actor {
        Some(Extension(actor)) => serde_json::json!({ "tokenId": actor.caller.token_id, "role": actor.caller.role }),
        None => serde_json::json!({ "tokenId": null, "role": null }),
    })
}
