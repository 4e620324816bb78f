//! `/api/v1/tokens` (create, list, revoke) and `/api/v1/audit`: admin only,
//! which the layer in `auth` enforces before these run; and
//! `/api/v1/whoami`, any reader's own token and role (the portal shows no
//! edit buttons to a viewer); `/api/v1/login-codes` (admin) and
//! `/api/v1/login` (open: the code is the credential), the portal's
//! one-time login link (see `login`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use trefoil_api::{AuditList, CreateLoginCode, CreateToken, CreatedToken, Login, LoginCode, Revoked, Role, TokenList};

use super::login::{self, CodeError};
use super::{Actor, Auth, Caller};
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
        .route("/api/v1/login-codes", post(create_login_code))
        .route("/api/v1/login", post(log_in))
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

async fn create_login_code(State(auth): State<Arc<Auth>>, actor: Option<Extension<Actor>>, body: Bytes) -> Result<Response, ApiError> {
    let request: CreateLoginCode = if body.iter().all(u8::is_ascii_whitespace) {
        CreateLoginCode::default()
    } else {
        // An object only: serde would also take a struct from an array.
        let invalid = |e: &dyn std::fmt::Display| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("a login code request is {{\"role\", \"ttlSeconds\"}}, both optional: {e}"),
            )
        };
        match serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| invalid(&e))? {
            object @ serde_json::Value::Object(_) => serde_json::from_value(object).map_err(|e| invalid(&e))?,
            _ => return Err(invalid(&"the body is not a JSON object")),
        }
    };
    let max_s = login::MAX_TTL_MS / 1000;
    if let Some(ttl) = request.ttl_seconds.filter(|t| *t == 0 || *t > max_s) {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("ttlSeconds {ttl} is not between 1 and {max_s}")));
    }
    let role = request.role.unwrap_or(Role::Admin);
    let ttl_ms = request.ttl_seconds.map_or(login::DEFAULT_TTL_MS, |s| s * 1000);
    let creator = actor.as_ref().map_or("anonymous", |a| a.caller.token_id.as_str());
    let (id, code, expires_ms) = auth.login.mint(role, ttl_ms, creator, crate::rollout::now_ms()).map_err(|e| match e {
        CodeError::TooMany(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    if let Some(Extension(actor)) = &actor {
        actor.record("login-code-create", &format!("LoginCode/{id}"), None, None);
    }
    Ok((StatusCode::CREATED, Json(LoginCode { id, role, expires_ms, code })).into_response())
}

/// Exchanges a login code for a session token: a normal API token of the
/// code's role that expires in twelve hours; the audit log records the
/// session token logging in with the code.
async fn log_in(State(auth): State<Arc<Auth>>, body: Bytes) -> Result<Response, ApiError> {
    let request: Login = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("a login is {{\"code\"}}: {e}")))?;
    let redeemed = auth.login.redeem(&request.code, crate::rollout::now_ms()).map_err(|e| match e {
        CodeError::Random | CodeError::TooMany(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        e => ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
    })?;
    let (info, token) = auth.tokens.mint(redeemed.role, Some(login::SESSION_TTL_MS), &redeemed.creator)?;
    let session = Caller { token_id: info.id.clone(), role: info.role };
    auth.audit.record(&session, "login", &format!("LoginCode/{}", redeemed.id), None, None);
    Ok(Json(CreatedToken { info, token }).into_response())
}
