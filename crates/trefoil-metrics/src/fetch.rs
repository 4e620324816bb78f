//! HTTP GETs to the control plane and to proxies' admin listeners, each
//! with a deadline and an error that says who did not answer and why.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

/// Why a GET gave nothing usable. `what` names the party ("control plane",
/// "proxy web-0"), so the message stands on its own.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what} at {base} is not reachable: {reason}")]
    Unreachable { what: String, base: String, reason: String },
    #[error("{what} at {base} did not answer GET {path} within {timeout:?}")]
    Timeout { what: String, base: String, path: String, timeout: Duration },
    #[error("{what} at {base} answered {status} to GET {path}: {message}")]
    Status { what: String, base: String, path: String, status: u16, message: String },
    #[error("{what} at {base} sent an unreadable answer to GET {path}: {reason}")]
    Unreadable { what: String, base: String, path: String, reason: String },
}

impl FetchError {
    /// The HTTP status, when the server answered with an unexpected one.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A plain-HTTP client with one deadline per request.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(timeout: Duration) -> Self {
        Fetcher { client: Client::builder(TokioExecutor::new()).build_http(), timeout }
    }

    /// GETs `base` + `path`; returns the status and body, whatever the status.
    pub async fn get(&self, what: &str, base: &str, path: &str) -> Result<(u16, Bytes), FetchError> {
        let base = base.trim_end_matches('/');
        let unreachable = |reason: String| FetchError::Unreachable { what: what.to_string(), base: base.to_string(), reason };
        let uri: http::Uri =
            format!("{base}{path}").parse().map_err(|e: http::uri::InvalidUri| unreachable(format!("{base:?} is not a URL ({e})")))?;
        let request = async {
            let resp = self.client.get(uri).await.map_err(|e| unreachable(root_cause(&e)))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| FetchError::Unreadable {
                what: what.to_string(),
                base: base.to_string(),
                path: path.to_string(),
                reason: root_cause(&e),
            })?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, request).await.map_err(|_| FetchError::Timeout {
            what: what.to_string(),
            base: base.to_string(),
            path: path.to_string(),
            timeout: self.timeout,
        })?
    }

    /// The body of a 2xx answer as text.
    pub async fn text(&self, what: &str, base: &str, path: &str) -> Result<String, FetchError> {
        let body = self.ok_body(what, base, path).await?;
        String::from_utf8(body.to_vec()).map_err(|e| FetchError::Unreadable {
            what: what.to_string(),
            base: base.trim_end_matches('/').to_string(),
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// The body of a 2xx answer as JSON of type `T`.
    pub async fn json<T: DeserializeOwned>(&self, what: &str, base: &str, path: &str) -> Result<T, FetchError> {
        let body = self.ok_body(what, base, path).await?;
        serde_json::from_slice(&body).map_err(|e| FetchError::Unreadable {
            what: what.to_string(),
            base: base.trim_end_matches('/').to_string(),
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    async fn ok_body(&self, what: &str, base: &str, path: &str) -> Result<Bytes, FetchError> {
        let (status, body) = self.get(what, base, path).await?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(FetchError::Status {
            what: what.to_string(),
            base: base.trim_end_matches('/').to_string(),
            path: path.to_string(),
            status,
            message: message_of(&body),
        })
    }
}

/// The API's `{"error": ...}` message, else the start of the body.
fn message_of(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = v["error"].as_str() {
            return e.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
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
