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
use crate::tokens::{AuditList, CreateToken, CreatedToken, Revoked, TokenList};
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

    /// Sends `token` as the bearer credential of every call.
    pub fn with_token(self, token: Option<&str>) -> Self {
        Client { runtime: self.runtime, inner: self.inner.with_token(token) }
    }

    /// The API's address, as given.
    pub fn base(&self) -> &str {
        self.inner.base()
    }

    /// Answers when the API serves its OpenAPI document.
    pub fn reachable(&self) -> Result<(), ApiError> {
        self.runtime.block_on(self.inner.reachable())
    }

    /// `GET /api/v1/<kind>`: every resource of a kind.
    pub fn list(&self, kind: &str) -> Result<List, ApiError> {
        self.runtime.block_on(self.inner.list(kind))
    }

    /// `GET /api/v1/<kind>/<name>`; a 404 is `ApiError::Status`.
    pub fn get(&self, kind: &str, name: &str) -> Result<Resource, ApiError> {
        self.runtime.block_on(self.inner.get(kind, name))
    }

    /// `get`, with `None` for a resource that does not exist.
    pub fn find(&self, kind: &str, name: &str) -> Result<Option<Resource>, ApiError> {
        self.runtime.block_on(self.inner.find(kind, name))
    }

    /// `PUT`: creates or replaces `resource` (only if its `resourceVersion` is current, when it has one).
    pub fn apply(&self, resource: &Resource) -> Result<Written, ApiError> {
        self.runtime.block_on(self.inner.apply(resource))
    }

    /// `POST`: creates `resource`; 409 if it exists.
    pub fn create(&self, resource: &Resource) -> Result<Option<Resource>, ApiError> {
        self.runtime.block_on(self.inner.create(resource))
    }

    /// `DELETE /api/v1/<kind>/<name>`.
    pub fn delete(&self, kind: &str, name: &str) -> Result<Deleted, ApiError> {
        self.runtime.block_on(self.inner.delete(kind, name))
    }

    /// The objects of a kind as `Added`, then each change, as an iterator.
    pub fn watch(&self, kind: &str) -> Result<Lines<WatchEvent>, ApiError> {
        let lines = self.runtime.block_on(self.inner.watch(kind))?;
        Ok(Lines { runtime: self.runtime.clone(), lines })
    }

    /// `GET /api/v1/status/proxies`.
    pub fn proxies(&self) -> Result<ProxyStatusList, ApiError> {
        self.runtime.block_on(self.inner.proxies())
    }

    /// The most recent traces, newest first.
    pub fn traces(&self, limit: usize) -> Result<TraceList, ApiError> {
        self.runtime.block_on(self.inner.traces(limit))
    }

    /// Every span of one trace; a 404 is `ApiError::Status`.
    pub fn trace(&self, trace_id: &str) -> Result<Trace, ApiError> {
        self.runtime.block_on(self.inner.trace(trace_id))
    }

    /// Spans as they arrive (of one trace, those held first), as an iterator.
    pub fn follow_traces(&self, trace_id: Option<&str>) -> Result<Lines<FollowEvent>, ApiError> {
        let lines = self.runtime.block_on(self.inner.follow_traces(trace_id))?;
        Ok(Lines { runtime: self.runtime.clone(), lines })
    }

    /// `POST /api/v1/rollouts/<name>/<action>`.
    pub fn rollout_action(&self, name: &str, action: RolloutAction) -> Result<RolloutActed, ApiError> {
        self.runtime.block_on(self.inner.rollout_action(name, action))
    }

    /// `POST /api/v1/tokens`.
    pub fn create_token(&self, request: &CreateToken) -> Result<CreatedToken, ApiError> {
        self.runtime.block_on(self.inner.create_token(request))
    }

    /// `GET /api/v1/tokens`.
    pub fn tokens(&self) -> Result<TokenList, ApiError> {
        self.runtime.block_on(self.inner.tokens())
    }

    /// `DELETE /api/v1/tokens/<id>`.
    pub fn revoke_token(&self, id: &str) -> Result<Revoked, ApiError> {
        self.runtime.block_on(self.inner.revoke_token(id))
    }

    /// `GET /api/v1/audit`.
    pub fn audit(&self) -> Result<AuditList, ApiError> {
        self.runtime.block_on(self.inner.audit())
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
