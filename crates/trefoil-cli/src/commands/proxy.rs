//! `trefoil proxy --config FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use trefoil_proxy::{ProxyOptions, StartError};

use crate::output::{current_thread_runtime, exit};

#[derive(clap::Args)]
pub struct Args {
    /// Config file, or directory of *.yaml files: Proxy, Listener, Service, Route, TrafficPolicy resources.
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// Admin listener address (overrides the Proxy resource's `admin`).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Reload only on SIGHUP, not when the config file changes.
    #[arg(long)]
    no_watch: bool,
    /// How often to look for config file changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    watch_interval: Duration,
    /// Data-plane worker threads, each with its own event loop (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<trefoil_model::Duration>().map(|d| d.get()).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> ExitCode {
    // Control work (admin, reloads, health checks, span export) is light and
    // runs on this thread; traffic runs on the proxy's own worker threads.
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    let workers = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let options = ProxyOptions { config: args.config, watch: !args.no_watch, watch_interval: args.watch_interval, admin: args.admin, workers, shutdown: None };
    match runtime.block_on(trefoil_proxy::run(options)) {
        Ok(()) => exit::ok(),
        Err(StartError::Config(diagnostics)) => {
            for d in &diagnostics.0 {
                eprintln!("{d}");
            }
            eprintln!("error: invalid configuration, proxy not started");
            exit::bad_input()
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::failure()
        }
    }
}
