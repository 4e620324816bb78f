//! Simulated proxies: each opens a config stream with its own name, parses
//! every snapshot into resources as a proxy would, and acknowledges it.
//! What the benchmark watches is the version each one last acknowledged.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use trefoil_model::Resource;
use trefoil_wire::{ConfigStreamClient, Hello, ProxyMessage, Snapshot};

use crate::BenchError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one simulated proxy has done so far.
#[derive(Default)]
struct ProxyState {
    acked: AtomicU64,
    snapshot_bytes: AtomicUsize,
    rejected: AtomicU64,
}

/// The simulated proxies of one measurement. Dropping it closes their streams.
pub(crate) struct Fleet {
    states: Vec<Arc<ProxyState>>,
    /// Woken on every ACK, so a waiter re-checks the versions.
    acked: Arc<Notify>,
    tasks: JoinSet<Result<(), String>>,
}

impl Fleet {
    /// Connects `count` proxies to the config stream at `grpc`.
    pub(crate) async fn connect(grpc: SocketAddr, count: usize) -> Result<Self, BenchError> {
        let acked = Arc::new(Notify::new());
        let mut states = Vec::with_capacity(count);
        let mut tasks = JoinSet::new();
        for i in 0..count {
            let state = Arc::new(ProxyState::default());
            states.push(state.clone());
            let name = format!("bench-proxy-{i:03}");
            let client = ConfigStreamClient::connect(&grpc.to_string(), CONNECT_TIMEOUT)
                .await
                .map_err(|e| BenchError::Stream(format!("{name}: {e}")))?;
            tasks.spawn(run(client, name, state, acked.clone()));
        }
        Ok(Fleet { states, acked, tasks })
    }

    /// Waits until every proxy acknowledged a snapshot of version `version`
    /// or newer, or until `deadline`. Returns how many had, if not all.
    pub(crate) async fn wait_acked(&mut self, version: u64, deadline: Instant) -> Result<(), usize> {
        loop {
            // Registered before the check, so an ACK in between still wakes us.
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let done = self.states.iter().filter(|s| s.acked.load(Ordering::Acquire) >= version).count();
            if done == self.states.len() {
                return Ok(());
            }
            if let Some(Ok(Err(e))) = self.tasks.try_join_next() {
                eprintln!("  a simulated proxy stopped: {e}");
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(done);
            }
        }
    }

    /// The largest snapshot any proxy received last, in bytes of JSON.
    pub(crate) fn snapshot_bytes(&self) -> usize {
        self.states.iter().map(|s| s.snapshot_bytes.load(Ordering::Relaxed)).max().unwrap_or(0)
    }

    /// Snapshots the proxies could not parse (a broken benchmark, not a slow one).
    pub(crate) fn rejected(&self) -> u64 {
        self.states.iter().map(|s| s.rejected.load(Ordering::Relaxed)).sum()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// One proxy's stream: Hello, then parse and answer each snapshot.
async fn run(mut client: ConfigStreamClient, name: String, state: Arc<ProxyState>, acked: Arc<Notify>) -> Result<(), String> {
    let (say, said) = mpsc::unbounded_channel();
    let hello = Hello {
        proxy: name.clone(),
        admin_address: "127.0.0.1:0".to_string(),
        version: 0,
        hash: 0,
        pid: std::process::id(),
        ..Default::default()
    };
    say.send(ProxyMessage::hello(hello)).map_err(|_| format!("{name}: stream gone before Hello"))?;
    let mut snapshots = client.stream(UnboundedReceiverStream::new(said)).await.map_err(|e| format!("{name}: {e}"))?;
    loop {
        let snapshot = match snapshots.message().await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(format!("{name}: the control plane closed the stream")),
            Err(status) => return Err(format!("{name}: {status}")),
        };
        state.snapshot_bytes.store(snapshot.resources_json.len(), Ordering::Relaxed);
        match parse(&snapshot) {
            Ok(_) => {
                say.send(ProxyMessage::ack(snapshot.version, snapshot.hash)).map_err(|_| format!("{name}: stream gone"))?;
                // Counted once the ACK is on its way: on loopback the control
                // plane reads it a moment later.
                state.acked.fetch_max(snapshot.version, Ordering::AcqRel);
                acked.notify_waiters();
            }
            Err(error) => {
                state.rejected.fetch_add(1, Ordering::Relaxed);
                say.send(ProxyMessage::nack(snapshot.version, snapshot.hash, error)).map_err(|_| format!("{name}: stream gone"))?;
            }
        }
    }
}

/// The resources of a snapshot, typed: the decoding every proxy does before
/// it validates and compiles them.
fn parse(snapshot: &Snapshot) -> Result<Vec<Resource>, String> {
    serde_json::from_str(&snapshot.resources_json).map_err(|e| format!("snapshot {}: not a JSON array of resources: {e}", snapshot.version))
}
