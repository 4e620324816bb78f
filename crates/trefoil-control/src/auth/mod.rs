//! Who may call the REST API, and the record of what they wrote.
//!
//! Every request but the open ones (the OpenAPI document, which is also the
//! readiness probe, and the OTLP span intake, see decision 0016) carries
//! `Authorization: Bearer <token>`: none or a bad one is 401, a role too weak
//! for the request is 403. Reads need `viewer`, writes `editor`, tokens and
//! the audit log `admin`. The caller then rides along with the request, so a
//! handler that writes records it in the audit log.

pub(crate) mod audit;
pub(crate) mod login;
mod routes;
pub(crate) mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use trefoil_api::Role;

pub use routes::router;
pub use tokens::{Caller, BOOTSTRAP_FILE};

use crate::api::ApiError;
use crate::store::Store;

/// The API's callers and their writes, for one store.
pub struct Auth {
    tokens: tokens::Tokens,
    audit: Arc<audit::AuditLog>,
    /// One-time codes for the portal's login link.
    login: login::LoginCodes,
    /// The role of a request without a token: none, unless `--insecure-local`.
    anonymous: Option<Role>,
}

/// Anonymous access was asked for on an address beyond loopback.
#[derive(Debug, thiserror::Error)]
#[error("--insecure-local lets anyone who reaches the API do anything; {0} is not a loopback address, so it is refused")]
pub struct NotLocal(pub SocketAddr);

impl Auth {
    /// Tokens checked against `store`; with `insecure_local`, requests
    /// without a token are let in as admin, if `listen` is loopback.
    pub fn new(store: Arc<Store>, insecure_local: bool, listen: SocketAddr) -> Result<Self, NotLocal> {
        if insecure_local && !listen.ip().to_canonical().is_loopback() {
            return Err(NotLocal(listen));
        }
        Ok(Auth {
            tokens: tokens::Tokens::new(store.clone()),
            audit: Arc::new(audit::AuditLog::new(store)),
            login: login::LoginCodes::new(),
            anonymous: insecure_local.then_some(Role::Admin),
        })
    }

    /// See [`tokens::Tokens::bootstrap`]; logs where the token is.
    pub fn bootstrap(&self, data_dir: &std::path::Path) -> Result<(), crate::store::StoreError> {
        match self.tokens.bootstrap(data_dir)? {
            tokens::Bootstrapped::Kept(path) => tracing::info!(file = %path.display(), "admin token in place"),
            tokens::Bootstrapped::Minted { path, id } => {
                tracing::info!(file = %path.display(), token = %id, "wrote a new admin token (mode 0600); `trefoil up` wires it into the CLI's config")
            }
        }
        Ok(())
    }
}

impl Auth {
    /// The caller a config stream's `authorization` value stands for. A node
    /// agent reads what a viewer may read over REST (the rules and what they
    /// select), so any valid API token will do, and it is the same token its
    /// flow reports carry; without one it is refused, `--insecure-local` or
    /// not: a stream that feeds a kernel is never anonymous.
    pub(crate) fn stream_caller(&self, authorization: Option<&str>) -> Result<Caller, String> {
        let Some(text) = authorization else {
            return Err("a node agent's stream needs `authorization: Bearer <token>` (an API token, as for the REST API)".into());
        };
        self.bearer_caller(text)
    }

    /// The caller an `authorization` value (`Bearer <token>`) stands for.
    pub(crate) fn bearer_caller(&self, text: &str) -> Result<Caller, String> {
        let token = match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
            _ => return Err("the authorization metadata must be `Bearer <token>`".into()),
        };
        self.tokens.check(token, crate::rollout::now_ms()).map_err(|e| e.to_string())
    }

    /// Records a write made other than through the REST API (the Datapath
    /// service) in the same audit log.
    pub(crate) fn record(&self, caller: &Caller, verb: &str, resource: &str, before: Option<u64>, after: Option<u64>) {
        self.audit.record(caller, verb, resource, before, after);
    }

    /// The audit log's entries, for tests of the other writers.
    #[cfg(test)]
    pub(crate) fn audit_for_tests(&self) -> Vec<trefoil_api::AuditEntry> {
        self.audit.entries()
    }

    /// A token of `role` for tests of the streams.
    #[cfg(test)]
    pub(crate) fn mint_for_tests(&self, role: Role) -> String {
        self.tokens.mint(role, None, "test").unwrap().1
    }
}

/// A request's caller and the log its writes go to; handlers that write
/// take it as `Option<Extension<Actor>>` (none when the router runs without
/// this layer, as in unit tests).
#[derive(Clone)]
pub struct Actor {
    pub caller: Caller,
    audit: Arc<audit::AuditLog>,
}

impl Actor {
    /// Records a write by this caller.
    pub(crate) fn record(&self, verb: &str, resource: &str, before: Option<u64>, after: Option<u64>) {
        self.audit.record(&self.caller, verb, resource, before, after);
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    Role(Role),
}

fn need(method: &Method, path: &str) -> Need {
    match path {
        "/api/v1/openapi.json" => Need::Nothing,
        // Spans from proxies: see decision 0016 for why it is open for now.
        "/v1/traces" if method == Method::POST => Need::Nothing,
        // Counters for Prometheus, which scrapes without credentials (decision 0016).
        "/metrics" if method == Method::GET => Need::Nothing,
        // The portal's login link: the code in the body is the credential.
        "/api/v1/login" if method == Method::POST => Need::Nothing,
        // Node agents' flow reports are telemetry, like spans: an agent holds
        // a viewer token, which may add flow records and change no resource.
        "/api/v1/datapath/flows" if method == Method::POST => Need::Role(Role::Viewer),
        p if p.starts_with("/api/v1/tokens") || p == "/api/v1/audit" || p == "/api/v1/login-codes" => Need::Role(Role::Admin),
        // A new root changes whom every proxy trusts.
        "/api/v1/ca/rotate" => Need::Role(Role::Admin),
        _ if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) => Need::Role(Role::Viewer),
        _ => Need::Role(Role::Editor),
    }
}

fn unauthorized(message: String) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"trefoil\""));
    response
}

/// The bearer token of a request; `Err` for an `Authorization` header of another kind.
fn bearer(request: &Request) -> Result<Option<&str>, String> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().map_err(|_| "the Authorization header is not text".to_string())?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(Some(token.trim())),
        _ => Err("the Authorization header must be `Bearer <token>`".to_string()),
    }
}

/// The layer: authenticates, authorises, and hands the caller on.
pub async fn authenticate(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let need = need(request.method(), request.uri().path());
    let caller = match bearer(&request) {
        Err(e) => return unauthorized(e),
        Ok(Some(token)) => match auth.tokens.check(token, crate::rollout::now_ms()) {
            Ok(caller) => Some(caller),
            Err(e) => return unauthorized(e.to_string()),
        },
        Ok(None) => auth.anonymous.map(|role| Caller { token_id: "anonymous".into(), role }),
    };
    if let Need::Role(needed) = need {
        let Some(caller) = &caller else {
            return unauthorized(
                "this needs a bearer token (`trefoil token create`, or the admin token the control plane wrote in its data directory)"
                    .into(),
            );
        };
        if caller.role < needed {
            let what = format!("{} {}", request.method(), request.uri().path());
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {} has role {}; {what} needs {needed}", caller.token_id, caller.role),
            )
            .into_response();
        }
    }
    if let Some(caller) = caller {
        request.extensions_mut().insert(Actor { caller, audit: auth.audit.clone() });
    }
    next.run(request).await
}

#[cfg(test)]
mod tests;
