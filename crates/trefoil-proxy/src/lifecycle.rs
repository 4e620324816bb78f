//! Running a proxy: start, hot reload, graceful shutdown. The config comes
//! from a file (reloaded on SIGHUP or file change) or from the control
//! plane's config stream; both go through the same apply step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use trefoil_model::{Diagnostics, SourcedResource};

use crate::config::control_client::{self, Apply};
use crate::config::snapshot::{compile, Shared, Snapshot};
use crate::config::state::{ProxyState, TelemetrySinks};
use crate::downstream::listener;
use crate::downstream::listener_set::{Listeners, Workers};
use crate::telemetry::admin;
use crate::telemetry::metrics::ResultLabels;
use crate::upstream::health;

/// Why a proxy could not start, or why a config was not applied.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid (exit code 2).
    #[error("{0}")]
    Config(Diagnostics),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: String, addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

/// Where the proxy's config comes from.
pub enum ConfigSource {
    /// A file or a directory of files; reloaded on SIGHUP and, with `watch`,
    /// when the files change.
    File { path: PathBuf, watch: bool, watch_interval: Duration },
    /// Snapshots from the control plane's config stream at `address`, for the
    /// proxy called `name`; with a `join_token`, an SVID too. With a
    /// `trust_bundle` (PEM), the stream is TLS: the control plane's
    /// certificate must chain to it, and the proxy presents its SVID.
    Control { address: String, name: String, join_token: Option<String>, trust_bundle: Option<String> },
}

pub struct ProxyOptions {
    pub source: ConfigSource,
    /// Overrides the admin address of the config (in control mode: where the
    /// admin listener is before any snapshot arrives).
    pub admin: Option<SocketAddr>,
    /// Data-plane threads, each with its own event loop, sockets and upstream pools.
    pub workers: usize,
    /// Turning true starts a graceful shutdown, as SIGTERM does (for embedding).
    pub shutdown: Option<watch::Receiver<bool>>,
}

/// Loads and compiles the config at `path`.
pub(crate) fn load(path: &Path, shared: &Shared, version: u64) -> Result<Snapshot, Diagnostics> {
    let sources = trefoil_model::load_path(path)?;
    compile(&sources, shared, version)
}

/// Fingerprint of the config files, to notice edits without a file-watch API.
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => vec![path.to_path_buf()],
    };
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            (f, meta.as_ref().map(|m| m.len()).unwrap_or(0), meta.and_then(|m| m.modified().ok()))
        })
        .collect()
}

/// Runs until SIGTERM or SIGINT, then drains.
pub async fn run(options: ProxyOptions) -> Result<(), StartError> {
    let workers = options.workers.max(1);
    let shared = Arc::new(Shared::new(workers));
    let mut signals = Signals::new(options.shutdown)?;
    match options.source {
        ConfigSource::File { ref path, watch, watch_interval } => {
            let first = load(path, &shared, 1).map_err(StartError::Config)?;
            let name =
                first.resources.iter().find(|r| r.kind() == "Proxy").map(|r| r.name().to_string()).unwrap_or_else(|| "proxy".to_string());
            let mut running = Running::start(first, name, options.admin, &shared, workers)?;
            running.state.ready.store(true, Ordering::Relaxed);
            tracing::info!(version = 1, config = %path.display(), "proxy ready");
            let mut ticker = tokio::time::interval(watch_interval);
            let mut seen = fingerprint(path);
            loop {
                let trigger = tokio::select! {
                    _ = signals.hangup.recv() => {
                        // The file as the signal reloads it: the watcher must not load it again.
                        seen = fingerprint(path);
                        "SIGHUP"
                    }
                    _ = ticker.tick(), if watch => {
                        let now = fingerprint(path);
                        if now == seen { continue }
                        seen = now;
                        "file change"
                    }
                    _ = signals.stop.wait() => break,
                };
                let version = running.version() + 1;
                let _ = running.reload(trefoil_model::load_path(path), version, trigger);
            }
            running.drain().await;
        }
        ConfigSource::Control { ref address, ref name, ref join_token, ref trust_bundle } => {
            let identity = Arc::new(crate::identity::Identity::new(join_token.clone()).map_err(anyhow::Error::from)?);
            // Set once, before anything reads it.
            let _ = shared.identity.set(identity.clone());
            let mesh = crate::mesh_tls::MeshConfigs::new(identity.clone()).map_err(anyhow::Error::from)?;
            let _ = shared.mesh.set(Arc::new(mesh));
            // The admin listener answers at once; /ready says 503 until the
            // first snapshot is in force.
            let mut empty = compile(&[], &shared, 0).map_err(StartError::Config)?;
            if options.admin.is_none() {
                tracing::info!(address = %empty.settings.admin, "no --admin given; using the default admin address");
            }
            empty.settings.admin = options.admin.unwrap_or(empty.settings.admin);
            let mut running = Running::start(empty, name.clone(), options.admin, &shared, workers)?;
            let admin_address = running.state.snapshot.load().settings.admin.to_string();
            // `a,b,c`: the control plane's replicas, tried in turn.
            let addresses: Vec<String> = address.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect();
            let first = addresses.first().cloned().unwrap_or_default();
            shared.datapath.use_control_plane(&first, trust_bundle.as_deref(), identity.clone());
            let (applies, mut incoming) = mpsc::channel::<Apply>(1);
            let client = tokio::spawn(control_client::run(
                addresses,
                name.clone(),
                admin_address,
                identity,
                trust_bundle.clone(),
                applies,
                shared.on_demand.clone(),
            ));
            tracing::info!(control = %address, proxy = %name, "waiting for the first snapshot from the control plane");
            loop {
                tokio::select! {
                    apply = incoming.recv() => {
                        let Some(apply) = apply else { break };
                        let result = running.reload(apply.sources, apply.version, "control plane");
                        if result.is_ok() && !running.state.ready.swap(true, Ordering::Relaxed) {
                            tracing::info!(version = apply.version, control = %address, "proxy ready");
                        }
                        let _ = apply.done.send(result.map_err(|e| e.to_string()));
                    }
                    _ = signals.hangup.recv() => tracing::info!("SIGHUP ignored: the config comes from the control plane"),
                    _ = signals.stop.wait() => break,
                }
            }
            client.abort();
            running.drain().await;
        }
    }
    Ok(())
}

/// The signals a proxy reacts to.
struct Signals {
    hangup: Signal,
    stop: Stop,
}

/// What ends a proxy: SIGTERM, SIGINT or the embedder's shutdown signal.
struct Stop {
    terminate: Signal,
    interrupt: Signal,
    shutdown: Option<watch::Receiver<bool>>,
}

impl Signals {
    fn new(shutdown: Option<watch::Receiver<bool>>) -> Result<Self, StartError> {
        let listen = |kind| signal(kind).map_err(anyhow::Error::from);
        Ok(Signals {
            hangup: listen(SignalKind::hangup())?,
            stop: Stop { terminate: listen(SignalKind::terminate())?, interrupt: listen(SignalKind::interrupt())?, shutdown },
        })
    }
}

impl Stop {
    /// Resolves when the proxy should shut down.
    async fn wait(&mut self) {
        let Stop { terminate, interrupt, shutdown } = self;
        let embedder = async {
            match shutdown.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|stop| *stop).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            _ = embedder => {}
        }
    }
}

/// A proxy serving: its state, sockets, health checks and admin listener.
struct Running {
    state: Arc<ProxyState>,
    listeners: Listeners,
    checks: JoinSet<()>,
    admin_stop: watch::Sender<bool>,
    /// `--admin`, which wins over every config's `admin`.
    admin_override: Option<SocketAddr>,
}

impl Running {
    /// Binds the admin listener and the first snapshot's listeners and starts serving (not yet ready).
    fn start(
        mut first: Snapshot,
        name: String,
        admin_override: Option<SocketAddr>,
        shared: &Arc<Shared>,
        workers: usize,
    ) -> Result<Self, StartError> {
        if let Some(admin) = admin_override {
            first.settings.admin = admin;
        }
        let telemetry = TelemetrySinks::build(&first.settings, &name, shared)?;
        let admin_addr = first.settings.admin;
        shared.metrics.config_version.set(first.version as i64);
        let state = Arc::new(ProxyState {
            name,
            snapshot: ArcSwap::from_pointee(first),
            shared: shared.clone(),
            telemetry: ArcSwap::from_pointee(telemetry),
            ready: AtomicBool::new(false),
        });

        let admin_socket = listener::bind(admin_addr, false, false).map_err(|source| StartError::Bind {
            what: "admin".into(),
            addr: admin_addr,
            source,
        })?;
        let (admin_stop, admin_stopped) = watch::channel(false);
        tokio::spawn(admin::serve(state.clone(), admin_socket, admin_stopped));
        tokio::spawn(crate::sys::memory::give_back_when_quiet(crate::sys::memory::CHECK_EVERY));
        tracing::info!(address = %admin_addr, "admin listening");
        if !admin_addr.ip().is_loopback() {
            tracing::warn!(address = %admin_addr, "THE ADMIN ENDPOINT IS REACHABLE FROM THE NETWORK WITHOUT AUTHENTICATION: anyone who can reach it reads the running config, metrics and endpoints; bind it to 127.0.0.1 unless a firewall guards it");
        }

        let mut listeners = Listeners::new(Workers::start(workers).map_err(anyhow::Error::from)?);
        let bound = listeners.bind_new(&state.snapshot.load())?;
        listeners.start(&state, bound);
        let checks = health::start(&state.snapshot.load(), shared.clone());
        Ok(Running { state, listeners, checks, admin_stop, admin_override })
    }

    /// The config version in force.
    fn version(&self) -> u64 {
        self.state.snapshot.load().version
    }

    /// Puts `sources` in force as `version`, or keeps the running config and
    /// says why not; counts and logs either way.
    fn reload(&mut self, sources: Result<Vec<SourcedResource>, Diagnostics>, version: u64, trigger: &str) -> Result<(), StartError> {
        let result = sources.map_err(StartError::Config).and_then(|s| self.apply(&s, version));
        let metrics = &self.state.shared.metrics;
        match &result {
            Ok(()) => {
                metrics.config_reloads.get_or_create(&ResultLabels { result: "success" }).inc();
                metrics.config_version.set(version as i64);
                tracing::info!(version, trigger, "configuration reloaded");
            }
            Err(e) => {
                metrics.config_reloads.get_or_create(&ResultLabels { result: "failure" }).inc();
                let current = self.version();
                for line in e.to_string().lines() {
                    tracing::error!(trigger, "reload rejected, keeping config version {current}: {line}");
                }
            }
        }
        result
    }

    /// Compiles, binds what is new, then swaps: a bind failure rejects the
    /// config before anything changed, and limits carry over.
    fn apply(&mut self, sources: &[SourcedResource], version: u64) -> Result<(), StartError> {
        let state = &self.state;
        let shared = &state.shared;
        let mut next = compile(sources, shared, version).map_err(StartError::Config)?;
        if let Some(admin) = self.admin_override {
            next.settings.admin = admin;
        }
        let current = state.snapshot.load();
        // The admin socket is bound once; a different address takes a restart.
        if next.settings.admin != current.settings.admin {
            tracing::warn!(from = %current.settings.admin, to = %next.settings.admin, "admin address changes need a restart; keeping the old one");
            next.settings.admin = current.settings.admin;
        }
        let bound = self.listeners.bind_new(&next)?;
        if !state.telemetry.load().matches(&next.settings) {
            state.telemetry.store(Arc::new(TelemetrySinks::build(&next.settings, &state.name, shared)?));
        }
        let next = Arc::new(next);
        state.snapshot.store(next.clone());
        self.listeners.start(state, bound);
        shared.clients.retain(next.services.values().map(|s| &s.client_key));
        shared.endpoints.retain(|svc, addr| next.services.get(svc).is_some_and(|s| s.endpoints.iter().any(|e| e.addr == *addr)));
        self.checks = health::start(&next, shared.clone());
        Ok(())
    }

    /// Stops accepting, then waits for in-flight requests up to the drain timeout.
    async fn drain(self) {
        let drain = self.state.snapshot.load().settings.drain_timeout.get();
        tracing::info!(deadline = ?drain, "shutting down: no new connections, draining in-flight requests");
        self.state.ready.store(false, Ordering::Relaxed);
        self.listeners.stop_all();
        let _ = self.admin_stop.send(true);
        drop(self.checks);
        match tokio::time::timeout(drain, self.listeners.drain()).await {
            Ok(()) => tracing::info!("drained; bye"),
            Err(_) => tracing::warn!("drain deadline passed; closing remaining connections"),
        }
    }
}
