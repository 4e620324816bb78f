//! The few REST calls the runtime makes to the control plane.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// One call may take this long before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    #[error("control plane did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    /// A 4xx: retrying the same request will not help.
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    /// A 409 or 5xx: worth retrying.
    #[error("{status}: {message}")]
    Transient { status: u16, message: String },
}

impl ApiError {
    /// Whether the same write may succeed later.
    pub fn is_transient(&self) -> bool {
        !matches!(self, ApiError::Refused { .. })
    }
}

/// A client of `/api/v1`.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    pub fn new(api: SocketAddr) -> Self {
        ApiClient { base: format!("http://{api}"), http: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// `PUT /api/v1/<kind>/<name>` with `body`.
    pub async fn put(&self, kind: &str, name: &str, body: &Value) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Refused { status: 0, message: e.to_string() })?;
        self.call(http::Method::PUT, &format!("/api/v1/{kind}/{name}"), bytes).await.map(drop)
    }

    /// `GET /api/v1/<kind>`: the stored objects of a kind.
    pub async fn list(&self, kind: &str) -> Result<Vec<Value>, ApiError> {
        let body = self.call(http::Method::GET, &format!("/api/v1/{kind}"), Vec::new()).await?;
        Ok(body["items"].as_array().cloned().unwrap_or_default())
    }

    /// `GET path`: the JSON body of a 2xx answer.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(http::Method::GET, path, Vec::new()).await
    }

    /// `DELETE /api/v1/<kind>/<name>`; an object already gone is fine.
    pub async fn delete(&self, kind: &str, name: &str) -> Result<(), ApiError> {
        match self.call(http::Method::DELETE, &format!("/api/v1/{kind}/{name}"), Vec::new()).await {
            Ok(_) | Err(ApiError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One request; a 2xx answer's JSON body (`Null` if it has none).
    async fn call(&self, method: http::Method, path: &str, body: Vec<u8>) -> Result<Value, ApiError> {
        let url = format!("{}{path}", self.base);
        let request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ApiError::Refused { status: 0, message: e.to_string() })?;
        let call = async {
            let response = self.http.request(request).await.map_err(|e| ApiError::Unreachable(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if (200..300).contains(&status) {
                return Ok(json);
            }
            let message = explain(&json);
            if status == 409 || status >= 500 {
                Err(ApiError::Transient { status, message })
            } else {
                Err(ApiError::Refused { status, message })
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| ApiError::Timeout)?
    }
}

/// The API's error body as one line: its message and each located error.
fn explain(body: &Value) -> String {
    let mut message = body["error"].as_str().unwrap_or("request failed").to_string();
    for e in body["errors"].as_array().into_iter().flatten() {
        message.push_str(&format!("; {}: {}", e["field"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")));
    }
    message
}
