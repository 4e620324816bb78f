//! `trefoil-bench-control`: time from applying a route change through the
//! REST API to every connected proxy acknowledging it, for several mesh
//! sizes, with the control plane's memory at each. See `bench/README.md`.

mod cell;
mod control;
mod fleet;
mod mesh;
mod report;
mod rest;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Why the benchmark could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {error}")]
    Api { what: String, error: String },
    #[error("config stream: {0}")]
    Stream(String),
    #[error("timeout: {0}")]
    Timeout(String),
}

#[derive(Parser)]
#[command(about = "Time from a route change to every proxy's ACK, and the control plane's memory, per mesh size")]
struct Args {
    /// The trefoil binary; default `$CARGO_TARGET_DIR/release/trefoil`, else `target/release/trefoil`.
    #[arg(long)]
    trefoil: Option<PathBuf>,
    /// Simulated proxy counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100])]
    proxies: Vec<usize>,
    /// Route counts (each with its own service).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000, 10000])]
    routes: Vec<usize>,
    /// Timed route changes per combination.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// A small subset (1 and 10 proxies, 10 and 100 routes, 3 changes) to check the harness.
    #[arg(long)]
    quick: bool,
    /// Bound, in seconds, on connecting, syncing and the changes of one combination.
    #[arg(long, default_value_t = 120)]
    cell_timeout: u64,
    /// Bound, in seconds, on loading one combination's routes.
    #[arg(long, default_value_t = 600)]
    load_timeout: u64,
    /// Concurrent PUTs while loading.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Where the control planes' data directories go (default: the system's temporary directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The release binary of the build this runs from.
fn default_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("release").join("trefoil")
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.proxies = vec![1, 10];
        args.routes = vec![10, 100];
        args.changes = 3;
    }
    let binary = args.trefoil.clone().unwrap_or_else(default_binary);
    if !binary.is_file() {
        eprintln!(
            "error: no trefoil binary at {} (build it with `cargo build --release -p trefoil-cli`, or pass --trefoil)",
            binary.display()
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let data_root = args.data_root.clone().unwrap_or_else(std::env::temp_dir);
    let settings = cell::Settings {
        binary: &binary,
        data_root: &data_root,
        changes: args.changes,
        concurrency: args.concurrency,
        load_timeout: Duration::from_secs(args.load_timeout),
        cell_timeout: Duration::from_secs(args.cell_timeout),
    };
    let machine = report::machine();
    eprintln!("{machine}; control plane {}", binary.display());
    let mut results = Vec::new();
    for &routes in &args.routes {
        for &proxies in &args.proxies {
            eprintln!("{proxies} proxies x {routes} routes:");
            let result = runtime.block_on(cell::run(&settings, proxies, routes));
            if let Some(failure) = &result.failure {
                eprintln!("  stopped early: {failure}");
            }
            results.push(result);
        }
    }
    println!("{}", report::markdown(&results, args.changes));
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, report::json(&results, &machine, &binary).to_string()) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("results written to {}", path.display());
    }
    if results.iter().any(|r| r.rejected > 0) {
        eprintln!("error: some snapshots were rejected by the simulated proxies; the figures do not measure a working mesh");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
