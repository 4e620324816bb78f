//! The data plane's sockets and threads: worker threads with their own
//! event loops, and the listening sockets each of them accepts on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::listener;
use crate::runtime::StartError;
use crate::snapshot::Snapshot;
use crate::state::ProxyState;
use crate::telemetry::metrics::Label;

struct RunningListener {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// A listener's sockets, one per worker, bound before the snapshot that needs them goes live.
pub type Bound = (Label, SocketAddr, Vec<std::net::TcpListener>);

/// Work handed to a data-plane thread.
struct AcceptOn {
    state: Arc<ProxyState>,
    name: Label,
    socket: std::net::TcpListener,
    stop: watch::Receiver<bool>,
    drain: listener::Drain,
}

/// Data-plane threads, each running a single-threaded event loop: a
/// connection, its requests and their upstream connections stay on one
/// thread, with no cross-thread wake-ups on the hot path.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<AcceptOn>>,
}

impl Workers {
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut senders = Vec::new();
        for index in 0..count {
            let (tx, mut rx) = mpsc::unbounded_channel::<AcceptOn>();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::Builder::new().name(format!("trefoil-worker-{index}")).spawn(move || {
                crate::upstream::set_worker(index);
                runtime.block_on(async move {
                    tokio::spawn(crate::h1_pool::sweep_every(std::time::Duration::from_secs(5)));
                    while let Some(work) = rx.recv().await {
                        tokio::spawn(listener::accept_loop(work.state, work.name, work.socket, work.stop, work.drain));
                    }
                });
            })?;
            senders.push(tx);
        }
        Ok(Workers { senders })
    }
}

/// The listeners in force, by name, and the drain signal their connections watch.
pub struct Listeners {
    running: HashMap<Label, RunningListener>,
    /// Sends the drain signal; `closed()` resolves once every connection is gone.
    drain: watch::Sender<bool>,
    workers: Workers,
}

impl Listeners {
    pub fn new(workers: Workers) -> Self {
        Listeners { running: HashMap::new(), drain: watch::channel(false).0, workers }
    }

    /// Stops accepting on every listener.
    pub fn stop_all(&self) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
    }

    /// Asks every connection to finish and resolves once all are gone.
    pub async fn drain(&self) {
        let _ = self.drain.send(true);
        self.drain.closed().await;
    }

    /// Binds what `snapshot` adds before it goes live, so a bind failure rejects the reload.
    pub fn bind_new(&self, snapshot: &Snapshot) -> Result<Vec<Bound>, StartError> {
        let mut bound = Vec::new();
        let shared = self.workers.senders.len() > 1;
        for l in &snapshot.listeners {
            let moved = self.running.get(&l.name).is_none_or(|r| r.addr != l.addr);
            if moved {
                let taken_by_other = self.running.iter().any(|(n, r)| r.addr == l.addr && *n != l.name);
                if taken_by_other {
                    return Err(StartError::Other(anyhow::anyhow!("listener {} wants {}, which another listener still holds; rename or move in two steps", l.name, l.addr)));
                }
                let bind_err = |source| StartError::Bind { what: format!("listener {}", l.name), addr: l.addr, source };
                let first = listener::bind(l.addr, shared).map_err(bind_err)?;
                // Port 0 means "any": every worker must share the port the first socket got.
                let addr = first.local_addr().map_err(bind_err)?;
                let mut sockets = vec![first];
                for _ in 1..self.workers.senders.len() {
                    sockets.push(listener::bind(addr, shared).map_err(bind_err)?);
                }
                bound.push((l.name.clone(), l.addr, sockets));
            }
        }
        Ok(bound)
    }

    pub fn start(&mut self, state: &Arc<ProxyState>, bound: Vec<Bound>) {
        for (name, addr, sockets) in bound {
            let (stop, _) = watch::channel(false);
            for (worker, socket) in self.workers.senders.iter().zip(sockets) {
                if let Ok(real) = socket.local_addr() {
                    tracing::debug!(listener = %name, address = %real, "worker socket bound");
                }
                let work = AcceptOn { state: state.clone(), name: name.clone(), socket, stop: stop.subscribe(), drain: self.drain.subscribe() };
                if worker.send(work).is_err() {
                    tracing::error!(listener = %name, "a worker thread is gone; its share of connections will not be served");
                }
            }
            tracing::info!(listener = %name, address = %addr, workers = self.workers.senders.len(), "listening");
            if let Some(old) = self.running.insert(name.clone(), RunningListener { addr, stop }) {
                let _ = old.stop.send(true);
            }
        }
        let live: Vec<Label> = state.snapshot.load().listeners.iter().map(|l| l.name.clone()).collect();
        self.running.retain(|name, r| {
            let keep = live.contains(name);
            if !keep {
                tracing::info!(listener = %name, "listener removed; draining its connections");
                let _ = r.stop.send(true);
            }
            keep
        });
    }
}
