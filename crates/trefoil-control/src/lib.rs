//! Trefoil's control plane: the embedded crash-safe resource store, the REST
//! API over it, the config stream that sends each proxy its snapshot, and
//! the rollout controller.

pub mod api;
pub mod compile;
pub mod config_stream;
mod expanded;
pub mod openapi;
pub mod proxies;
pub mod rollout;
pub mod server;
pub mod status;
pub mod store;
pub mod traces;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Where the control plane keeps its data and listens.
pub struct ControlOptions {
    /// Directory of the store file (`store.db`).
    pub data_dir: PathBuf,
    /// REST API address.
    pub listen: SocketAddr,
    /// Config stream (gRPC) address, where proxies connect.
    pub grpc_listen: SocketAddr,
    /// What one REST client may cost.
    pub limits: server::Limits,
}

/// The store file in a data directory.
pub fn store_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store.db")
}

/// The config stream's default address.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7071";

/// How long open config streams get to close at shutdown.
const STREAM_CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("config stream server: {0}")]
    Grpc(#[from] trefoil_wire::TransportError),
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ControlError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ControlError::Bind { addr, source })
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(options: ControlOptions, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), ControlError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| ControlError::DataDir { path: options.data_dir.clone(), source })?;
    let store = Arc::new(store::Store::open(store_path(&options.data_dir))?);
    // Both sockets first: a control plane that cannot serve either does not start.
    let rest = bind(options.listen).await?;
    let grpc = bind(options.grpc_listen).await?;
    // The bound addresses, not the requested ones: port 0 picks a free port.
    let local = |l: &tokio::net::TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
    tracing::info!(address = %local(&rest, options.listen), grpc = %local(&grpc, options.grpc_listen), data = %options.data_dir.display(), revision = store.revision(), "control plane listening");

    let proxies = Arc::new(proxies::Proxies::default());
    let (stop, stop_rx) = watch::channel(false);
    let closing = proxies.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
        // Streams never end on their own: end ours so the gRPC server can finish.
        closing.close_all();
    });
    // Proxies reach the collector at the REST address; a wildcard listen
    // address is reached over loopback (proxies elsewhere configure tracing).
    let mut collector_addr = local(&rest, options.listen);
    match collector_addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => collector_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into()),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => collector_addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    let compiler = Arc::new(config_stream::Compiler::new(store.clone(), proxies.clone(), Some(format!("http://{collector_addr}"))));
    let distributor = tokio::spawn(config_stream::distribute(compiler.clone()));
    let service = config_stream::ConfigStreamService::new(compiler);
    let rollouts = tokio::spawn(rollout::run(store.clone(), proxies.clone()));
    let grpc = tokio::spawn(trefoil_wire::serve(grpc, service, stopped(stop_rx.clone())));
    let app = api::router(store.clone())
        .merge(traces::api::router(Arc::new(traces::TraceStore::default()))).merge(rollout::actions::router(store.clone())).merge(status::router(store, proxies))
        .layer(axum::middleware::map_response(api::rescue));
    server::serve(rest, app, options.limits, stopped(stop_rx)).await;
    distributor.abort();
    rollouts.abort();
    match tokio::time::timeout(STREAM_CLOSE_GRACE, grpc).await {
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(_) => {}
        Err(_) => tracing::warn!("config streams did not close in time"),
    }
    Ok(())
}
