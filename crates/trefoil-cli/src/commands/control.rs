//! `trefoil control`: the control plane's store, REST API and config stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use trefoil_control::ControlOptions;

use crate::output::{current_thread_runtime, exit, stop_signal};

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the store file; created if missing.
    #[arg(long, default_value = ".trefoil")]
    data: PathBuf,
    /// REST API address (`/api/v1/<kind>[/<name>]`, `/api/v1/openapi.json`).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Config stream address (gRPC): proxies started with `trefoil proxy --control ADDR` connect here.
    #[arg(long, default_value = trefoil_control::DEFAULT_GRPC_LISTEN)]
    grpc_listen: SocketAddr,
}

pub fn run(args: Args) -> ExitCode {
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    let stop = async {
        stop_signal().await;
        tracing::info!("shutting down");
    };
    match runtime.block_on(trefoil_control::run(ControlOptions { data_dir: args.data, listen: args.listen, grpc_listen: args.grpc_listen }, stop)) {
        Ok(()) => exit::ok(),
        Err(e) => {
            eprintln!("error: {e}");
            exit::failure()
        }
    }
}
