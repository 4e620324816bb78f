//! `trefoil control`: the control plane's store and REST API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use trefoil_control::ControlOptions;

use crate::output::{current_thread_runtime, exit};

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the store file; created if missing.
    #[arg(long, default_value = ".trefoil")]
    data: PathBuf,
    /// REST API address (`/api/v1/<kind>[/<name>]`, `/api/v1/openapi.json`).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Config stream address (gRPC) for proxies run with `trefoil proxy --control`.
    /// Accepted so `trefoil up` can pass it; the config stream itself is not served by this build yet.
    #[arg(long, default_value = "127.0.0.1:7071")]
    grpc_listen: SocketAddr,
}

pub fn run(args: Args) -> ExitCode {
    let _ = args.grpc_listen;
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
        }
    };
    let stop = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = terminate => {},
        }
        tracing::info!("shutting down");
    };
    match runtime.block_on(trefoil_control::run(ControlOptions { data_dir: args.data, listen: args.listen }, stop)) {
        Ok(()) => exit::ok(),
        Err(e) => {
            eprintln!("error: {e}");
            exit::failure()
        }
    }
}
