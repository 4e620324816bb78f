//! The config stream's control-plane side: one gRPC stream per proxy, and
//! the task that recompiles every connected proxy's snapshot when the store
//! changes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use trefoil_model::Resource;
use trefoil_wire::{proxy_message::Kind, ConfigStream, ProxyMessage, Request, Response, Snapshot, Status, Streaming};

use crate::compile::MeshView;
use crate::proxies::{Hello, Proxies};
use crate::store::Store;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Store events closer together than this are compiled once: applying a
/// thousand routes compiles a handful of times, not a thousand.
const DEBOUNCE_QUIET: Duration = Duration::from_millis(30);
/// A steady trickle of events still gets compiled this often.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// The gRPC service: registers each proxy and relays its ACKs and NACKs.
pub struct ConfigStreamService {
    compiler: Arc<Compiler>,
}

impl ConfigStreamService {
    pub fn new(compiler: Arc<Compiler>) -> Self {
        ConfigStreamService { compiler }
    }
}

impl ConfigStream for ConfigStreamService {
    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

    async fn stream(&self, request: Request<Streaming<ProxyMessage>>) -> Result<Response<Self::SnapshotStream>, Status> {
        let peer = request.remote_addr();
        let (outbox, snapshots) = watch::channel(None);
        // Answer at once and read the Hello in the session task: the stream's
        // headers must not wait on the proxy's first message.
        tokio::spawn(session(self.compiler.clone(), request.into_inner(), outbox, peer));
        let out = WatchStream::from_changes(snapshots).filter_map(|s| s.map(Ok));
        Ok(Response::new(Box::pin(out)))
    }
}

/// One proxy's stream, from Hello to disconnect.
async fn session(compiler: Arc<Compiler>, mut inbound: Streaming<ProxyMessage>, outbox: crate::proxies::Outbox, peer: Option<SocketAddr>) {
    let proxies = compiler.proxies.clone();
    let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(ProxyMessage { kind: Some(Kind::Hello(h)) }))) if !h.proxy.is_empty() => h,
        _ => {
            tracing::warn!(%peer, "closing a config stream that did not start with a Hello naming its proxy");
            return;
        }
    };
    let name = hello.proxy.clone();
    let id = proxies.connect(&Hello { name: &name, admin_address: &hello.admin_address, version: hello.version, hash: hello.hash }, outbox);
    tracing::info!(proxy = %name, %peer, admin = %hello.admin_address, version = hello.version, pid = hello.pid, "proxy connected");
    compiler.refresh_in_background(Some(name.clone())).await;
    let reason = loop {
        match inbound.message().await {
            Ok(Some(ProxyMessage { kind: Some(Kind::Ack(a)) })) => proxies.ack(&name, id, a.version, a.hash),
            Ok(Some(ProxyMessage { kind: Some(Kind::Nack(n)) })) => proxies.nack(&name, id, n.version, n.hash, &n.error),
            Ok(Some(_)) => tracing::warn!(proxy = %name, "ignoring an unexpected message (a second Hello, or an empty one)"),
            Ok(None) => break "stream closed by the proxy".to_string(),
            Err(status) => break status.message().to_string(),
        }
    };
    proxies.disconnect(&name, id);
    tracing::info!(proxy = %name, %peer, reason = %reason, "proxy disconnected");
}

/// Compiles snapshots from the store for the registered proxies. It keeps
/// the shared view of the newest revision it compiled: proxies connecting one
/// after another (all of them, after a control-plane restart) then cost a
/// snapshot each, not a read and decode of the whole store each.
pub struct Compiler {
    store: Arc<Store>,
    proxies: Arc<Proxies>,
    latest: Mutex<Option<(u64, Arc<MeshView>)>>,
    /// The trace collector's base URL, for proxies that configure no tracing.
    collector: Option<String>,
    /// One compile at a time: they would only compete for the same cores
    /// and each hold a large mesh in memory.
    turn: tokio::sync::Semaphore,
}

impl Compiler {
    pub fn new(store: Arc<Store>, proxies: Arc<Proxies>, collector: Option<String>) -> Self {
        Compiler { store, proxies, latest: Mutex::new(None), collector, turn: tokio::sync::Semaphore::new(1) }
    }

    /// [`Compiler::refresh`] on a blocking thread. Compiling a large mesh for
    /// many proxies takes seconds of CPU; on the runtime thread it would stall
    /// every stream meanwhile: snapshots already compiled would not go out,
    /// ACKs would not be read, and keepalive pings would go unanswered until
    /// the peers drop the connection.
    pub async fn refresh_in_background(self: &Arc<Self>, only: Option<String>) {
        let Ok(_turn) = self.turn.acquire().await else { return };
        let compiler = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || compiler.refresh(only.as_deref())).await {
            tracing::error!(error = %e, "compiling snapshots failed");
        }
    }

    /// Compiles the snapshot of `only` (or of every connected proxy) at the
    /// store's current revision and offers it.
    pub fn refresh(&self, only: Option<&str>) {
        let names = match only {
            Some(name) => vec![name.to_string()],
            None => self.proxies.connected(),
        };
        if names.is_empty() {
            if only.is_none() {
                self.proxies.compiled_at(self.store.revision());
            }
            return;
        }
        let (revision, view) = self.view();
        for name in &names {
            self.proxies.offer(name, &view.snapshot_for(name, revision));
        }
        if only.is_none() {
            self.proxies.compiled_at(revision);
        }
    }

    /// The shared view at the store's current revision, built only when the
    /// store moved on since the last one.
    fn view(&self) -> (u64, Arc<MeshView>) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((revision, view)) = latest.as_ref().filter(|(r, _)| *r == self.store.revision()) {
            return (*revision, view.clone());
        }
        let (revision, stored) = self.store.list_all();
        let resources: Vec<Resource> = stored
            .into_iter()
            .filter_map(|s| match serde_json::from_value(s.value) {
                Ok(r) => Some(r),
                Err(e) => {
                    // Every write was validated; this means a store from another build.
                    tracing::warn!(kind = %s.kind, name = %s.name, error = %e, "skipping a stored object this build cannot read");
                    None
                }
            })
            .collect();
        let view = Arc::new(MeshView::new(&resources).with_default_collector(self.collector.as_deref()));
        *latest = Some((revision, view.clone()));
        (revision, view)
    }
}

/// Recompiles for every connected proxy after each burst of store changes.
pub async fn distribute(compiler: Arc<Compiler>) {
    let mut events = compiler.store.subscribe();
    // No proxy has a snapshot yet; each one connecting is compiled at the then-current revision.
    compiler.proxies.compiled_at(compiler.store.revision());
    loop {
        // A lagged receiver only means many changes: compile all the same.
        if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
            return;
        }
        let burst_end = tokio::time::Instant::now() + DEBOUNCE_MAX;
        while tokio::time::Instant::now() < burst_end {
            match tokio::time::timeout(DEBOUNCE_QUIET, events.recv()).await {
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_quiet) => break,
            }
        }
        compiler.refresh_in_background(None).await;
    }
}
