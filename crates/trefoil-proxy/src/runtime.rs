//! Running a proxy from a config file: start, hot reload (SIGHUP or file
//! change), graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use trefoil_model::Diagnostics;

use crate::listener_set::{Listeners, Workers};
use crate::snapshot::{compile, Shared, Snapshot};
use crate::state::{ProxyState, Telemetry};
use crate::telemetry::metrics::ResultLabels;
use crate::{admin, health, listener};

/// Why a proxy could not start.
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

pub struct ProxyOptions {
    pub config: PathBuf,
    /// Reload when the file changes, not only on SIGHUP.
    pub watch: bool,
    pub watch_interval: Duration,
    /// Overrides the admin address of the config.
    pub admin: Option<SocketAddr>,
    /// Data-plane threads, each with its own event loop, sockets and upstream pools.
    pub workers: usize,
    /// Turning true starts a graceful shutdown, as SIGTERM does (for embedding).
    pub shutdown: Option<watch::Receiver<bool>>,
}

/// Loads and compiles the config at `path`.
pub fn load(path: &Path, shared: &Shared, version: u64) -> Result<Snapshot, Diagnostics> {
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
    let mut first = load(&options.config, &shared, 1).map_err(StartError::Config)?;
    if let Some(admin) = options.admin {
        first.settings.admin = admin.to_string();
    }
    let name = first
        .resources
        .iter()
        .find(|r| r.kind() == "Proxy")
        .map(|r| r.name().to_string())
        .unwrap_or_else(|| "proxy".to_string());
    let telemetry = Telemetry::build(&first.settings, &name, &shared)?;
    let admin_addr: SocketAddr = first.settings.admin.parse().map_err(|_| anyhow::anyhow!("invalid admin address {}", first.settings.admin))?;
    let drain = first.settings.drain_timeout.get();
    shared.metrics.config_version.set(first.version as i64);
    let state = Arc::new(ProxyState {
        name,
        snapshot: ArcSwap::from_pointee(first),
        shared: shared.clone(),
        telemetry: ArcSwap::from_pointee(telemetry),
        ready: AtomicBool::new(false),
    });

    let admin_socket = listener::bind(admin_addr, false).map_err(|source| StartError::Bind { what: "admin".into(), addr: admin_addr, source })?;
    let (admin_stop, admin_stopped) = watch::channel(false);
    tokio::spawn(admin::serve(state.clone(), admin_socket, admin_stopped));
    tracing::info!(address = %admin_addr, "admin listening");

    let mut listeners = Listeners::new(Workers::start(workers).map_err(anyhow::Error::from)?);
    let bound = listeners.bind_new(&state.snapshot.load())?;
    listeners.start(&state, bound);
    let mut checks = health::start(&state.snapshot.load(), shared.clone());
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(version = 1, config = %options.config.display(), "proxy ready");

    let mut hangup = signal(SignalKind::hangup()).map_err(anyhow::Error::from)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(anyhow::Error::from)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(anyhow::Error::from)?;
    let mut ticker = tokio::time::interval(options.watch_interval);
    let mut seen = fingerprint(&options.config);
    let mut version = 1;
    let mut shutdown = options.shutdown.clone();
    loop {
        let trigger = tokio::select! {
            _ = hangup.recv() => "SIGHUP",
            _ = ticker.tick(), if options.watch => {
                let now = fingerprint(&options.config);
                if now == seen { continue }
                seen = now;
                "file change"
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = async { match shutdown.as_mut() { Some(rx) => { let _ = rx.wait_for(|stop| *stop).await; } None => std::future::pending().await } } => break,
        };
        version += 1;
        match reload(&state, &options, &mut listeners, version) {
            Ok(()) => {
                checks = health::start(&state.snapshot.load(), shared.clone());
                shared.metrics.config_reloads.get_or_create(&ResultLabels { result: "success" }).inc();
                shared.metrics.config_version.set(version as i64);
                tracing::info!(version, trigger, "configuration reloaded");
            }
            Err(e) => {
                version -= 1;
                shared.metrics.config_reloads.get_or_create(&ResultLabels { result: "failure" }).inc();
                for line in e.to_string().lines() {
                    tracing::error!(trigger, "reload rejected, keeping config version {version}: {line}");
                }
            }
        }
    }

    tracing::info!(deadline = ?drain, "shutting down: no new connections, draining in-flight requests");
    state.ready.store(false, Ordering::Relaxed);
    listeners.stop_all();
    let _ = admin_stop.send(true);
    drop(checks);
    match tokio::time::timeout(drain, listeners.drain()).await {
        Ok(()) => tracing::info!("drained; bye"),
        Err(_) => tracing::warn!("drain deadline passed; closing remaining connections"),
    }
    Ok(())
}

fn reload(state: &Arc<ProxyState>, options: &ProxyOptions, listeners: &mut Listeners, version: u64) -> Result<(), StartError> {
    let shared = &state.shared;
    let mut next = load(&options.config, shared, version).map_err(StartError::Config)?;
    if let Some(admin) = options.admin {
        next.settings.admin = admin.to_string();
    }
    let current = state.snapshot.load();
    // The admin socket is bound once; a different address takes a restart.
    if next.settings.admin != current.settings.admin {
        tracing::warn!(from = %current.settings.admin, to = %next.settings.admin, "admin address changes need a restart; keeping the old one");
        next.settings.admin = current.settings.admin.clone();
    }
    let bound = listeners.bind_new(&next)?;
    if !state.telemetry.load().matches(&next.settings) {
        state.telemetry.store(Arc::new(Telemetry::build(&next.settings, &state.name, shared)?));
    }
    let next = Arc::new(next);
    state.snapshot.store(next.clone());
    listeners.start(state, bound);
    shared.clients.retain(next.services.values().map(|s| &s.client_key));
    shared.endpoints.retain(|svc, addr| next.services.get(svc).is_some_and(|s| s.endpoints.iter().any(|e| e.addr == *addr)));
    Ok(())
}
