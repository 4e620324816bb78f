//! The data plane's sockets and threads: worker threads with their own
//! event loops, and the listening sockets each of them accepts on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::snapshot::Snapshot;
use crate::config::state::ProxyState;
use crate::downstream::listener;
use crate::lifecycle::StartError;
use crate::telemetry::metrics::Label;

struct RunningListener {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// A listener's sockets, one per worker, bound before the snapshot that needs them goes live.
pub(crate) type Bound = (Label, SocketAddr, Vec<std::net::TcpListener>);

/// Work handed to a data-plane thread.
enum Work {
    /// Accept on a listening socket until told to stop.
    Accept(AcceptOn),
    /// Serve a connection another worker accepted.
    Serve(listener::Accepted<std::net::TcpStream>),
}

/// A listening socket to accept on, and the signals its connections watch.
struct AcceptOn {
    state: Arc<ProxyState>,
    name: Label,
    socket: std::net::TcpListener,
    stop: watch::Receiver<bool>,
    drain: listener::Drain,
}

/// How many connections each worker serves, and how to hand one over.
///
/// `SO_REUSEPORT` spreads connections over the workers' sockets by a hash
/// of their addresses, which leaves one worker with noticeably more than
/// another (32 connections over 2 workers landed 24/17, 22/16, 21/15): the
/// busier worker's requests wait longer, and the tail latency is its. A
/// worker that accepts a connection while another serves fewer hands it
/// over, once, when it is accepted; its requests then never cross threads.
pub(crate) struct WorkerLoad {
    open: Vec<AtomicUsize>,
    senders: Vec<mpsc::UnboundedSender<Work>>,
}

impl WorkerLoad {
    /// The worker that should serve a connection `accepted_by` just
    /// accepted: itself unless another serves fewer connections.
    fn pick(&self, accepted_by: usize) -> usize {
        let mut best = accepted_by;
        let mut fewest = self.open[accepted_by].load(Ordering::Relaxed);
        for (i, open) in self.open.iter().enumerate() {
            let n = open.load(Ordering::Relaxed);
            if n < fewest {
                (best, fewest) = (i, n);
            }
        }
        best
    }

    /// Serves `accepted` on the worker with the fewest connections: this
    /// one (returned, for the caller to spawn), or another (sent there; `None`).
    pub(crate) fn place(self: &Arc<Self>, accepted_by: usize, accepted: listener::Accepted) -> Option<(listener::Accepted, OpenGuard)> {
        let to = self.pick(accepted_by);
        if to == accepted_by {
            return Some((accepted, self.enter(to)));
        }
        match accepted.into_std() {
            Ok(moved) => {
                if let Err(mpsc::error::SendError(Work::Serve(back))) = self.senders[to].send(Work::Serve(moved)) {
                    // The other worker is gone: serve it here after all.
                    return back.into_tokio().ok().map(|a| (a, self.enter(accepted_by)));
                }
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection to another worker");
                None
            }
        }
    }

    /// Counts a connection `worker` serves until the guard drops.
    pub(crate) fn enter(self: &Arc<Self>, worker: usize) -> OpenGuard {
        self.open[worker].fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone(), worker)
    }
}

/// One open connection on a worker; the count drops with it.
pub(crate) struct OpenGuard(Arc<WorkerLoad>, usize);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Data-plane threads, each running a single-threaded event loop: a
/// connection, its requests and their upstream connections stay on one
/// thread, with no cross-thread wake-ups on the hot path.
pub(crate) struct Workers {
    worker_load: Arc<WorkerLoad>,
}

impl Workers {
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        let mut senders = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..count {
            let (tx, rx) = mpsc::unbounded_channel::<Work>();
            senders.push(tx);
            inboxes.push(rx);
        }
        let worker_load = Arc::new(WorkerLoad { open: (0..count).map(|_| AtomicUsize::new(0)).collect(), senders });
        for (index, mut rx) in inboxes.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            // Weak: the worker loops end when `Workers` (the last strong owner of the senders) is dropped.
            let worker_load = Arc::downgrade(&worker_load);
            std::thread::Builder::new().name(format!("trefoil-worker-{index}")).spawn(move || {
                crate::upstream::set_worker(index);
                runtime.block_on(async move {
                    tokio::spawn(crate::upstream::h1::pool::sweep_every(std::time::Duration::from_secs(5)));
                    while let Some(work) = rx.recv().await {
                        let Some(worker_load) = worker_load.upgrade() else { break };
                        match work {
                            Work::Accept(w) => {
                                tokio::spawn(listener::accept_loop(w.state, w.name, w.socket, w.stop, w.drain, worker_load, index));
                            }
                            Work::Serve(moved) => match moved.into_tokio() {
                                Ok(accepted) => {
                                    let open = worker_load.enter(index);
                                    tokio::spawn(async move {
                                        accepted.serve().await;
                                        drop(open);
                                    });
                                }
                                Err(e) => tracing::debug!(error = %e, "cannot take over a connection from another worker"),
                            },
                        }
                    }
                });
            })?;
        }
        Ok(Workers { worker_load })
    }

    fn len(&self) -> usize {
        self.worker_load.senders.len()
    }
}

/// The listeners in force, by name, and the drain signal their connections watch.
pub(crate) struct Listeners {
    running: HashMap<Label, RunningListener>,
    /// Sends the drain signal; `closed()` resolves once every connection is gone.
    drain: watch::Sender<bool>,
    workers: Workers,
}

impl Listeners {
    pub(crate) fn new(workers: Workers) -> Self {
        Listeners { running: HashMap::new(), drain: watch::channel(false).0, workers }
    }

    /// Stops accepting on every listener.
    pub(crate) fn stop_all(&self) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
    }

    /// Asks every connection to finish and resolves once all are gone.
    pub(crate) async fn drain(&self) {
        let _ = self.drain.send(true);
        self.drain.closed().await;
    }

    /// Binds what `snapshot` adds before it goes live, so a bind failure rejects the reload.
    pub(crate) fn bind_new(&self, snapshot: &Snapshot) -> Result<Vec<Bound>, StartError> {
        let mut bound = Vec::new();
        let shared = self.workers.len() > 1;
        for l in &snapshot.listeners {
            let moved = self.running.get(&l.name).is_none_or(|r| r.addr != l.addr);
            if moved {
                let taken_by_other = self.running.iter().any(|(n, r)| r.addr == l.addr && *n != l.name);
                if taken_by_other {
                    return Err(StartError::Other(anyhow::anyhow!(
                        "listener {} wants {}, which another listener still holds; rename or move in two steps",
                        l.name,
                        l.addr
                    )));
                }
                let bind_err = |source| StartError::Bind { what: format!("listener {}", l.name), addr: l.addr, source };
                let first = listener::bind(l.addr, shared, l.transparent).map_err(bind_err)?;
                // Port 0 means "any": every worker must share the port the first socket got.
                let addr = first.local_addr().map_err(bind_err)?;
                let mut sockets = vec![first];
                for _ in 1..self.workers.len() {
                    sockets.push(listener::bind(addr, shared, l.transparent).map_err(bind_err)?);
                }
                listener::ensure_sole_listener(addr).map_err(bind_err)?;
                bound.push((l.name.clone(), l.addr, sockets));
            }
        }
        Ok(bound)
    }

    pub(crate) fn start(&mut self, state: &Arc<ProxyState>, bound: Vec<Bound>) {
        for (name, addr, sockets) in bound {
            let (stop, _) = watch::channel(false);
            for (worker, socket) in self.workers.worker_load.senders.iter().zip(sockets) {
                if let Ok(real) = socket.local_addr() {
                    tracing::debug!(listener = %name, address = %real, "worker socket bound");
                }
                let work =
                    AcceptOn { state: state.clone(), name: name.clone(), socket, stop: stop.subscribe(), drain: self.drain.subscribe() };
                if worker.send(Work::Accept(work)).is_err() {
                    tracing::error!(listener = %name, "a worker thread is gone; its share of connections will not be served");
                }
            }
            tracing::info!(listener = %name, address = %addr, workers = self.workers.len(), "listening");
            let authenticated = state.snapshot.load().listeners.iter().any(|l| l.name == name && l.client_auth);
            if !addr.ip().is_loopback() && !authenticated {
                tracing::warn!(listener = %name, address = %addr, "listener {name} accepts connections from the network without authenticating them (no tls.clientCa): every client is anonymous");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_load(open: &[usize]) -> WorkerLoad {
        WorkerLoad { open: open.iter().map(|n| AtomicUsize::new(*n)).collect(), senders: Vec::new() }
    }

    #[test]
    fn a_connection_goes_to_the_worker_serving_fewest() {
        assert_eq!(worker_load(&[3, 1]).pick(0), 1);
        assert_eq!(worker_load(&[3, 1, 0]).pick(0), 2);
        assert_eq!(worker_load(&[1, 3]).pick(0), 0);
    }

    #[test]
    fn ties_stay_on_the_accepting_worker() {
        assert_eq!(worker_load(&[2, 2]).pick(1), 1);
        assert_eq!(worker_load(&[2, 1, 1]).pick(2), 2);
    }

    #[test]
    fn open_connections_are_counted_until_their_guard_drops() {
        let b = Arc::new(worker_load(&[0, 0]));
        let guard = b.enter(1);
        assert_eq!(b.pick(1), 0);
        drop(guard);
        assert_eq!(b.pick(1), 1);
    }
}
