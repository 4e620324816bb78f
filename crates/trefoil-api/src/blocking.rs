//! The client for synchronous callers (the black-box test helpers are
//! blocking std code): the same methods and types as `crate::Client`, each
//! run to completion on a single-threaded runtime the facade owns.
//!
//! ```no_run
//! let api = trefoil_api::blocking::Client::new("http://127.0.0.1:7070").unwrap();
//! let proxies = api.proxies().unwrap();
//! assert!(proxies.get("edge").is_some_and(|p| p.in_sync()));
//! ```
//!
//! Not for use inside an async runtime: each call blocks its thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use trefoil_model::Resource;

use crate::client::{self, ApiError};
use crate::proxies::ProxyStatusList;
use crate::resources::{Deleted, List, WatchEvent, Written};
use crate::rollouts::{RolloutActed, RolloutAction};
use crate::traces::{FollowEvent, Trace, TraceList};

/// A blocking client of one control plane.
pub struct Client {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: client::Client,
}

impl Client {
    /// A client of the API at `base`, e.g. `http://127.0.0.1:7070`; fails
    /// only when the OS refuses the runtime's resources.
    pub fn new(base: impl Into<String>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let inner = {
            let _in_runtime = runtime.enter();
            client::Client::new(base)
        };
        Ok(Client { runtime: Arc::new(runtime), inner })
    }

    /// A client of the API listening on `addr`.
    pub fn for_addr(addr: SocketAddr) -> std::io::Result<Self> {
        Self::new(format!("http://{addr}"))
    }

    /// Bounds each call (for a stream, until its first byte) by `timeout`.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Client { runtime: self.runtime, inner: self.inner.with_timeout(timeout) }
    }

    pub fn base(&self) -> &str {
        self.inner.base()
    }

    pub fn reachable(&self) -> Result<(), ApiError> {
        self.runtime.block_on(self.inner.reachable())
    }

    pub fn list(&self, kind: &str) -> Result<List, ApiError> {
        self.runtime.block_on(self.inner.list(kind))
    }

    pub fn get(&self, kind: &str, name: &str) -> Result<Resource, ApiError> {
        self.runtime.block_on(self.inner.get(kind, name))
    }

    pub fn find(&self, kind: &str, name: &str) -> Result<Option<Resource>, ApiError> {
        self.runtime.block_on(self.inner.find(kind, name))
    }

    pub fn apply(&self, resource: &Resource) -> Result<Written, ApiError> {
        self.runtime.block_on(self.inner.apply(resource))
    }

    pub fn create(&self, resource: &Resource) -> Result<Option<Resource>, ApiError> {
        self.runtime.block_on(self.inner.create(resource))
    }

    pub fn delete(&self, kind: &str, name: &str) -> Result<Deleted, ApiError> {
        self.runtime.block_on(self.inner.delete(kind, name))
    }

    pub fn watch(&self, kind: &str) -> Result<Lines<WatchEvent>, ApiError> {
        let lines = self.runtime.block_on(self.inner.watch(kind))?;
        Ok(Lines { runtime: self.runtime.clone(), lines })
    }

    pub fn proxies(&self) -> Result<ProxyStatusList, ApiError> {
        self.runtime.block_on(self.inner.proxies())
    }

    pub fn traces(&self, limit: usize) -> Result<TraceList, ApiError> {
        self.runtime.block_on(self.inner.traces(limit))
    }

    pub fn trace(&self, trace_id: &str) -> Result<Trace, ApiError> {
        self.runtime.block_on(self.inner.trace(trace_id))
    }

    pub fn follow_traces(&self, trace_id: Option<&str>) -> Result<Lines<FollowEvent>, ApiError> {
        let lines = self.runtime.block_on(self.inner.follow_traces(trace_id))?;
        Ok(Lines { runtime: self.runtime.clone(), lines })
    }

    pub fn rollout_action(&self, name: &str, action: RolloutAction) -> Result<RolloutActed, ApiError> {
        self.runtime.block_on(self.inner.rollout_action(name, action))
    }
}

/// A JSON-lines stream read by blocking calls.
pub struct Lines<T> {
    runtime: Arc<tokio::runtime::Runtime>,
    lines: client::Lines<T>,
}

impl<T: serde::de::DeserializeOwned> Iterator for Lines<T> {
    type Item = Result<T, ApiError>;

    /// Blocks until the next line, or the end of the stream.
    fn next(&mut self) -> Option<Self::Item> {
        self.runtime.block_on(self.lines.next())
    }
}
