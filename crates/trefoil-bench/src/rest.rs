//! A small client for the control plane's REST API over keep-alive
//! connections, and the bulk load of the mesh.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::BenchError;

/// One request's bound: the store waits for the disk on every write.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(crate) struct Rest {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Rest {
    /// A client keeping up to `connections` idle connections open.
    pub(crate) fn new(api: SocketAddr, connections: usize) -> Self {
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(connections).build_http();
        Rest { client, base: format!("http://{api}") }
    }

    /// Whether `GET path` answers 200.
    pub(crate) async fn get_ok(&self, path: &str) -> bool {
        let Ok(uri) = format!("{}{path}", self.base).parse::<http::Uri>() else { return false };
        matches!(tokio::time::timeout(REQUEST_TIMEOUT, self.client.get(uri)).await, Ok(Ok(r)) if r.status().is_success())
    }

    /// `PUT /api/v1/<kind>/<name>`; returns the stored object's `resourceVersion`,
    /// the store revision of the write.
    pub(crate) async fn put(&self, kind: &str, name: &str, body: &Value) -> Result<u64, BenchError> {
        let what = format!("PUT {kind}/{name}");
        let request = http::Request::put(format!("{}/api/v1/{kind}/{name}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| BenchError::Api { what: what.clone(), error: e.to_string() })?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| BenchError::Api { what: what.clone(), error: format!("no answer within {REQUEST_TIMEOUT:?}") })?
            .map_err(|error| BenchError::Api { what: what.clone(), error })?;
        if !status.is_success() {
            return Err(BenchError::Api { what, error: format!("{status}: {}", String::from_utf8_lossy(&body)) });
        }
        let stored: Value =
            serde_json::from_slice(&body).map_err(|e| BenchError::Api { what: what.clone(), error: format!("answer is not JSON: {e}") })?;
        stored["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| BenchError::Api { what, error: "the answer has no numeric metadata.resourceVersion".to_string() })
    }

    /// PUTs every `(kind, name, body)`, `concurrency` at a time, printing
    /// progress to stderr. Returns the highest revision written.
    pub(crate) async fn put_all(
        &self,
        items: Vec<(&'static str, String, Value)>,
        concurrency: usize,
        label: &str,
    ) -> Result<u64, BenchError> {
        let total = items.len();
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut done = 0usize;
        let mut revision = 0u64;
        let mut writes = futures_util::stream::iter(items)
            .map(|(kind, name, body)| async move { self.put(kind, &name, &body).await })
            .buffer_unordered(concurrency.max(1));
        while let Some(written) = writes.next().await {
            revision = revision.max(written?);
            done += 1;
            if last_report.elapsed() >= Duration::from_secs(2) || done == total {
                eprintln!("  {label}: loaded {done}/{total} resources in {:.1}s", started.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
        }
        Ok(revision)
    }
}
