//! Trefoil's control plane: the embedded crash-safe resource store and the
//! REST API over it. The config compiler and the stream to proxies come next.

pub mod api;
pub mod compile;
pub mod openapi;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the control plane keeps its data and listens.
pub struct ControlOptions {
    /// Directory of the store file (`store.db`).
    pub data_dir: PathBuf,
    /// REST API address.
    pub listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("API server: {0}")]
    Serve(std::io::Error),
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(options: ControlOptions, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), ControlError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| ControlError::DataDir { path: options.data_dir.clone(), source })?;
    let store = Arc::new(store::Store::open(options.data_dir.join("store.db"))?);
    let listener = tokio::net::TcpListener::bind(options.listen).await.map_err(|source| ControlError::Bind { addr: options.listen, source })?;
    tracing::info!(address = %options.listen, data = %options.data_dir.display(), revision = store.revision(), "control plane listening");
    axum::serve(listener, api::router(store)).with_graceful_shutdown(shutdown).await.map_err(ControlError::Serve)
}
