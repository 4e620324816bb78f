//! The one client of the control plane's REST API: typed methods over
//! hyper, each answer read into the contract's types, each failure an
//! `ApiError` that says who did not answer what and why (with the API's
//! error body when it sent one).
//!
//! The CLI, the local runtime and the benchmark each had their own client
//! before (six in all, with the test helpers), each reading answers as
//! `serde_json::Value` and each with its own idea of an error.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use trefoil_model::Resource;

use crate::error::ErrorBody;
use crate::flows::{FlowEvent, FlowList, FlowReport, FlowReportAccepted};
use crate::proxies::ProxyStatusList;
use crate::resources::{Deleted, List, WatchEvent, Written};
use crate::rollouts::{RolloutActed, RolloutAction};
use crate::tokens::{AuditList, CreateToken, CreatedToken, Revoked, TokenList};
use crate::traces::{FollowEvent, Trace, TraceList};

/// How long one call may take by default: the store waits for the disk on
/// every write, and a loaded machine can be slow, but not this slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call gave nothing usable. Each message names the control plane's
/// address, so it stands on its own.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{url:?} is not a URL ({reason})")]
    InvalidUrl { url: String, reason: String },
    #[error("control plane at {base} is not reachable: {reason}")]
    Unreachable { base: String, reason: String },
    #[error("control plane at {base} did not answer {request} within {timeout:?}")]
    Timeout { base: String, request: String, timeout: Duration },
    /// An answer other than 2xx, with the API's error body.
    #[error("control plane at {base} answered {status} to {request}: {}", .body.error)]
    Status { base: String, request: String, status: u16, body: ErrorBody },
    #[error("control plane at {base} sent an unreadable answer to {request}: {reason}")]
    Unreadable { base: String, request: String, reason: String },
    /// A stream (watch, follow) ended in the middle of a line or an error.
    #[error("control plane at {base}: the stream of {request} broke off: {reason}")]
    Broken { base: String, request: String, reason: String },
}

impl ApiError {
    /// The HTTP status, when the server answered with one other than 2xx.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error body, when the server answered with one.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ApiError::Status { body, .. } => Some(body),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether the same request may succeed later: the control plane was
    /// away or busy, or a concurrent write won (409). Any other 4xx will
    /// be refused again.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::InvalidUrl { .. } => false,
            ApiError::Status { status, .. } => *status == 409 || *status >= 500,
            _ => true,
        }
    }
}

type Http = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A client of one control plane. Cheap to clone: clones share connections.
///
/// Every method needs a tokio runtime; `crate::blocking::Client` brings its
/// own for synchronous callers.
#[derive(Clone)]
pub struct Client {
    http: Http,
    base: String,
    timeout: Duration,
    /// `Authorization` of every request, when the client has a token.
    authorization: Option<http::HeaderValue>,
}

impl Client {
    /// A client of the API at `base`, e.g. `http://127.0.0.1:7070`.
    pub fn new(base: impl Into<String>) -> Self {
        let base = base.into().trim_end_matches('/').to_string();
        Client {
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
            base,
            timeout: DEFAULT_TIMEOUT,
            authorization: None,
        }
    }

    /// A client of the API listening on `addr`.
    pub fn for_addr(addr: SocketAddr) -> Self {
        Self::new(format!("http://{addr}"))
    }

    /// Bounds each call (for a stream, until its first byte) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `token` as the bearer credential of every call. A token that
    /// cannot be a header value (a control character) is sent as none, and
    /// the server's 401 says so.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.authorization = token.and_then(|t| {
            let mut value = http::HeaderValue::from_str(&format!("Bearer {}", t.trim())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        self
    }

    /// Keeps up to `connections` idle connections open, for callers that
    /// send that many requests at once.
    pub fn with_idle_connections(mut self, connections: usize) -> Self {
        self.http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).pool_max_idle_per_host(connections).build_http();
        self
    }

    /// The API's address, as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Answers when the API serves its OpenAPI document.
    pub async fn reachable(&self) -> Result<(), ApiError> {
        self.openapi().await.map(drop)
    }

    /// `GET /api/v1/openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, ApiError> {
        self.json(Method::GET, "/api/v1/openapi.json", None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/<kind>`: every resource of a kind (`Route`, `route` or `routes`).
    pub async fn list(&self, kind: &str) -> Result<List, ApiError> {
        self.json(Method::GET, &format!("/api/v1/{kind}"), None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/<kind>/<name>`; a 404 is `ApiError::Status`.
    pub async fn get(&self, kind: &str, name: &str) -> Result<Resource, ApiError> {
        self.json(Method::GET, &format!("/api/v1/{kind}/{name}"), None).await.map(|(_, v)| v)
    }

    /// `get`, as the server wrote it: with `status` (`status.applied`).
    pub async fn get_value(&self, kind: &str, name: &str) -> Result<serde_json::Value, ApiError> {
        self.json(Method::GET, &format!("/api/v1/{kind}/{name}"), None).await.map(|(_, v)| v)
    }

    /// `list`, as the server wrote it: each item with its `status`.
    pub async fn list_values(&self, kind: &str) -> Result<List<serde_json::Value>, ApiError> {
        self.json(Method::GET, &format!("/api/v1/{kind}"), None).await.map(|(_, v)| v)
    }

    /// `get`, with `None` for a resource that does not exist.
    pub async fn find(&self, kind: &str, name: &str) -> Result<Option<Resource>, ApiError> {
        match self.get(kind, name).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /api/v1/<kind>/<name>`: creates or replaces `resource`; only if
    /// its `metadata.resourceVersion` is current, when it has one.
    pub async fn apply(&self, resource: &Resource) -> Result<Written, ApiError> {
        let path = format!("/api/v1/{}/{}", resource.kind(), resource.name());
        let (status, stored) = self.json::<Option<Resource>>(Method::PUT, &path, Some(body_of(resource))).await?;
        Ok(Written { created: status == StatusCode::CREATED, resource: stored })
    }

    /// `POST /api/v1/<kind>`: creates `resource`; 409 if it exists.
    pub async fn create(&self, resource: &Resource) -> Result<Option<Resource>, ApiError> {
        let path = format!("/api/v1/{}", resource.kind());
        self.json(Method::POST, &path, Some(body_of(resource))).await.map(|(_, v)| v)
    }

    /// `DELETE /api/v1/<kind>/<name>`.
    pub async fn delete(&self, kind: &str, name: &str) -> Result<Deleted, ApiError> {
        self.json(Method::DELETE, &format!("/api/v1/{kind}/{name}"), None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/watch/<kind>`: the objects as `Added`, then each change.
    pub async fn watch(&self, kind: &str) -> Result<Lines<WatchEvent>, ApiError> {
        self.stream(&format!("/api/v1/watch/{kind}")).await
    }

    /// `GET /api/v1/status/proxies`.
    pub async fn proxies(&self) -> Result<ProxyStatusList, ApiError> {
        self.json(Method::GET, "/api/v1/status/proxies", None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/status/controlplane`.
    pub async fn control_plane(&self) -> Result<crate::ControlPlaneStatus, ApiError> {
        self.json(Method::GET, "/api/v1/status/controlplane", None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/traces?limit=N`: the most recent traces, newest first.
    pub async fn traces(&self, limit: usize) -> Result<TraceList, ApiError> {
        self.json(Method::GET, &format!("/api/v1/traces?limit={limit}"), None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/traces/<id>`; a 404 is `ApiError::Status`.
    pub async fn trace(&self, trace_id: &str) -> Result<Trace, ApiError> {
        self.json(Method::GET, &format!("/api/v1/traces/{}", trace_id.to_ascii_lowercase()), None).await.map(|(_, v)| v)
    }

    /// Spans as they arrive: of one trace (those held first), or of all.
    pub async fn follow_traces(&self, trace_id: Option<&str>) -> Result<Lines<FollowEvent>, ApiError> {
        let path = match trace_id {
            Some(id) => format!("/api/v1/traces/{}?follow=true", id.to_ascii_lowercase()),
            None => "/api/v1/watch/traces".to_string(),
        };
        self.stream(&path).await
    }

    /// `POST /api/v1/datapath/flows`: a node agent's flow report.
    pub async fn report_flows(&self, report: &FlowReport) -> Result<FlowReportAccepted, ApiError> {
        // Plain data: serialising it cannot fail.
        let body = Bytes::from(serde_json::to_vec(report).unwrap_or_default());
        self.json(Method::POST, "/api/v1/datapath/flows", Some(body)).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/datapath/flows[?rule=R]`: the flows held, most recent first.
    pub async fn flows(&self, rule: Option<&str>) -> Result<FlowList, ApiError> {
        self.json(Method::GET, &flows_path("/api/v1/datapath/flows", rule), None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/watch/datapath/flows[?rule=R]`: each flow as a report brings it.
    pub async fn watch_flows(&self, rule: Option<&str>) -> Result<Lines<FlowEvent>, ApiError> {
        self.stream(&flows_path("/api/v1/watch/datapath/flows", rule)).await
    }

    /// `POST /api/v1/rollouts/<name>/<action>`.
    pub async fn rollout_action(&self, name: &str, action: RolloutAction) -> Result<RolloutActed, ApiError> {
        self.json(Method::POST, &format!("/api/v1/rollouts/{name}/{action}"), None).await.map(|(_, v)| v)
    }

    /// `POST /api/v1/tokens`: a new token; its secret is in the answer only.
    pub async fn create_token(&self, request: &CreateToken) -> Result<CreatedToken, ApiError> {
        let body = Bytes::from(serde_json::to_vec(request).unwrap_or_default());
        self.json(Method::POST, "/api/v1/tokens", Some(body)).await.map(|(_, v)| v)
    }

    /// `POST /api/v1/login-codes`: a one-time code for the portal's login link.
    pub async fn create_login_code(&self, request: &crate::CreateLoginCode) -> Result<crate::LoginCode, ApiError> {
        let body = Bytes::from(serde_json::to_vec(request).unwrap_or_default());
        self.json(Method::POST, "/api/v1/login-codes", Some(body)).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/tokens`: every live token, without secrets.
    pub async fn tokens(&self) -> Result<TokenList, ApiError> {
        self.json(Method::GET, "/api/v1/tokens", None).await.map(|(_, v)| v)
    }

    /// `DELETE /api/v1/tokens/<id>`.
    pub async fn revoke_token(&self, id: &str) -> Result<Revoked, ApiError> {
        self.json(Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/audit`: the writes the control plane recorded, oldest first.
    pub async fn audit(&self) -> Result<AuditList, ApiError> {
        self.json(Method::GET, "/api/v1/audit", None).await.map(|(_, v)| v)
    }

    /// `GET /api/v1/ca`: the mesh CA's signer and roots.
    pub async fn ca_status(&self) -> Result<serde_json::Value, ApiError> {
        self.json(Method::GET, "/api/v1/ca", None).await.map(|(_, v)| v)
    }

    /// `POST /api/v1/ca/rotate` (admin): a new root, the old one trusted for `overlap` (e.g. `24h`).
    pub async fn rotate_ca(&self, overlap: Option<&str>) -> Result<serde_json::Value, ApiError> {
        let body = Bytes::from(serde_json::to_vec(&serde_json::json!({ "overlap": overlap })).unwrap_or_default());
        self.json(Method::POST, "/api/v1/ca/rotate", Some(body)).await.map(|(_, v)| v)
    }

    /// One request; the status and body of a 2xx answer read as `T`.
    async fn json<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<(StatusCode, T), ApiError> {
        let request = format!("{method} {path}");
        let call = async {
            let (status, incoming) = self.send(method, path, body).await?;
            let bytes = incoming.collect().await.map_err(|e| self.unreadable(&request, root_cause(&e)))?.to_bytes();
            if !status.is_success() {
                return Err(ApiError::Status {
                    base: self.base.clone(),
                    request: request.clone(),
                    status: status.as_u16(),
                    body: ErrorBody::from_bytes(&bytes),
                });
            }
            let value = serde_json::from_slice(&bytes).map_err(|e| self.unreadable(&request, e.to_string()))?;
            Ok((status, value))
        };
        tokio::time::timeout(self.timeout, call).await.map_err(|_| self.timed_out(&request))?
    }

    /// A GET whose answer is a stream of JSON lines.
    async fn stream<T: DeserializeOwned>(&self, path: &str) -> Result<Lines<T>, ApiError> {
        let request = format!("GET {path}");
        let (status, body) =
            tokio::time::timeout(self.timeout, self.send(Method::GET, path, None)).await.map_err(|_| self.timed_out(&request))??;
        if !status.is_success() {
            let bytes = tokio::time::timeout(self.timeout, body.collect()).await.ok().and_then(Result::ok).map(|b| b.to_bytes());
            let body = ErrorBody::from_bytes(&bytes.unwrap_or_default());
            return Err(ApiError::Status { base: self.base.clone(), request, status: status.as_u16(), body });
        }
        Ok(Lines { body, pending: Vec::new(), done: false, base: self.base.clone(), request, item: PhantomData })
    }

    /// Sends a request; the answer's status and its body, unread.
    async fn send(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<(StatusCode, Incoming), ApiError> {
        let url = format!("{}{path}", self.base);
        let invalid = |reason: String| ApiError::InvalidUrl { url: url.clone(), reason };
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        let mut builder = http::Request::builder().method(method).uri(uri);
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header(http::header::AUTHORIZATION, authorization.clone());
        }
        let request = builder.body(Full::new(body.unwrap_or_default())).map_err(|e| invalid(e.to_string()))?;
        let response =
            self.http.request(request).await.map_err(|e| ApiError::Unreachable { base: self.base.clone(), reason: root_cause(&e) })?;
        Ok((response.status(), response.into_body()))
    }

    fn unreadable(&self, request: &str, reason: String) -> ApiError {
        ApiError::Unreadable { base: self.base.clone(), request: request.to_string(), reason }
    }

    fn timed_out(&self, request: &str) -> ApiError {
        ApiError::Timeout { base: self.base.clone(), request: request.to_string(), timeout: self.timeout }
    }
}

/// `path`, narrowed to one rule. Rule names are DNS labels, which need no escaping.
fn flows_path(path: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("{path}?rule={rule}"),
        None => path.to_string(),
    }
}

fn body_of(resource: &Resource) -> Bytes {
    // A Resource is plain data: serialising it cannot fail.
    Bytes::from(serde_json::to_vec(resource).unwrap_or_default())
}

/// The lines of a JSON-lines stream, read as they arrive.
pub struct Lines<T> {
    body: Incoming,
    pending: Vec<u8>,
    done: bool,
    base: String,
    request: String,
    item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Lines<T> {
    /// The next line; `None` when the server ended the stream. A line that
    /// does not read as `T` is `ApiError::Unreadable` and the stream goes
    /// on; a broken connection is `ApiError::Broken` and ends it.
    pub async fn next(&mut self) -> Option<Result<T, ApiError>> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).map_err(|e| ApiError::Unreadable {
                    base: self.base.clone(),
                    request: self.request.clone(),
                    reason: e.to_string(),
                }));
            }
            if self.done {
                return None;
            }
            match self.body.frame().await {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ApiError::Broken { base: self.base.clone(), request: self.request.clone(), reason: root_cause(&e) }));
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.pending.extend_from_slice(data);
                    }
                }
            }
        }
    }
}

/// The innermost cause: "connection refused" says more than "client error (Connect)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    match cause.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() != std::io::ErrorKind::Other => io.kind().to_string(),
        _ => cause.to_string(),
    }
}
