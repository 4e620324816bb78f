//! The control plane's REST API as the benchmark uses it: trefoil-api's
//! client over keep-alive connections, and the bulk load of the mesh.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use trefoil_api::Client;
use trefoil_model::Resource;

use crate::BenchError;

/// One request's bound: the store waits for the disk on every write.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(crate) struct Rest {
    client: Client,
}

impl Rest {
    /// A client keeping up to `connections` idle connections open, showing `token`.
    pub(crate) fn new(api: SocketAddr, connections: usize, token: Option<&str>) -> Self {
        Rest { client: Client::for_addr(api).with_idle_connections(connections).with_timeout(REQUEST_TIMEOUT).with_token(token) }
    }

    /// Whether the API answers.
    pub(crate) async fn ready(&self) -> bool {
        self.client.reachable().await.is_ok()
    }

    /// `PUT`s `resource`; returns the stored object's `resourceVersion`,
    /// the store revision of the write.
    pub(crate) async fn put(&self, resource: &Resource) -> Result<u64, BenchError> {
        let what = format!("PUT {}/{}", resource.kind(), resource.name());
        let written = self.client.apply(resource).await.map_err(|e| BenchError::Api { what: what.clone(), error: e.to_string() })?;
        written
            .resource_version()
            .map(|v| v.get())
            .ok_or_else(|| BenchError::Api { what, error: "the answer has no metadata.resourceVersion".to_string() })
    }

    /// PUTs every resource, `concurrency` at a time, printing progress to
    /// stderr. Returns the highest revision written.
    pub(crate) async fn put_all(&self, items: Vec<Resource>, concurrency: usize, label: &str) -> Result<u64, BenchError> {
        let total = items.len();
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut done = 0usize;
        let mut revision = 0u64;
        let mut writes = futures_util::stream::iter(items).map(|r| async move { self.put(&r).await }).buffer_unordered(concurrency.max(1));
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
