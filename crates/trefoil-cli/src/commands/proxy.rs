//! `trefoil proxy --config FILE` or `trefoil proxy --control ADDR --name NAME`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use trefoil_proxy::{ConfigSource, ProxyOptions, StartError};

use crate::output::{current_thread_runtime, exit};

/// Where `trefoil up` puts the one-use token a proxy proves its identity with.
const JOIN_TOKEN_VAR: &str = "TREFOIL_JOIN_TOKEN";
/// The file holding the mesh root the control plane's certificate must chain to.
const TRUST_BUNDLE_VAR: &str = "TREFOIL_TRUST_BUNDLE";

/// `trefoil proxy --help`: the two modes.
pub(crate) const LONG_ABOUT: &str = "Run a proxy. Its config comes from one of two places:

  file mode     --config FILE: Proxy, Listener, Service, Route, TrafficPolicy,
                NetworkFunction and CNF resources in a YAML file or directory.
                Reloads on SIGHUP and when the files change; an invalid edit is
                logged with file:line:column and the running config stays.

  control mode  --control ADDR --name NAME: connects to the control plane's
                config stream (`trefoil control --grpc-listen`), receives the
                snapshot compiled for the Proxy named NAME, and answers each with
                an ACK or a NACK (the errors, located in `snapshot <version>`).
                The admin listener starts at once and /ready answers 503 until the
                first snapshot is in force. If the stream breaks the proxy keeps
                serving its last good snapshot and reconnects (100 ms doubling to 2 s).
                `--control a:7071,b:7071` names several control-plane replicas
                (one etcd store, docs/local-runtime.md): a stream that breaks is
                tried again on the same replica, then on the next, round the list.
                With a join token in the environment (TREFOIL_JOIN_TOKEN, as
                `trefoil up` sets it), the proxy makes a key and gets an X.509-SVID
                for it over the stream, renewed at two thirds of its life; the
                admin listener shows it at /identity. With TREFOIL_TRUST_BUNDLE
                (a PEM file of the mesh root, as `trefoil up` sets it) the stream
                is TLS: the control plane's certificate must chain to that root,
                and the proxy presents its SVID (until it has one, it only asks
                for it with the join token).

Either way, changes apply without dropping connections (new listeners are bound
before the switch), and SIGTERM or SIGINT stop accepting and drain in-flight
requests up to the Proxy's drainTimeout.";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// File mode: config file, or directory of *.yaml files (Proxy, Listener, Service, Route, TrafficPolicy, NetworkFunction, CNF).
    #[arg(short = 'c', long = "config", required_unless_present = "control", conflicts_with_all = ["control", "name"])]
    config: Option<PathBuf>,
    /// Control mode: the control plane's config stream address, e.g. 127.0.0.1:7071; several replicas as `a:7071,b:7071`.
    #[arg(long, requires = "name")]
    control: Option<String>,
    /// Control mode: this proxy's name, the Proxy resource whose snapshot it serves.
    #[arg(long, requires = "control")]
    name: Option<String>,
    /// Admin listener address (overrides the Proxy resource's `admin`; in control mode, default 127.0.0.1:15000).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// File mode: reload only on SIGHUP, not when the config file changes.
    #[arg(long)]
    no_watch: bool,
    /// File mode: how often to look for config file changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    watch_interval: Duration,
    /// Data-plane worker threads, each with its own event loop (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<trefoil_model::Duration>().map(|d| d.get()).map_err(|e| e.to_string())
}

pub(crate) fn run(args: Args) -> ExitCode {
    // Control work (admin, reloads, health checks, span export, the config
    // stream) is light and runs on this thread; traffic runs on the proxy's
    // own worker threads.
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    let workers = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let source = match (args.config, args.control, args.name) {
        (Some(path), _, _) => ConfigSource::File { path, watch: !args.no_watch, watch_interval: args.watch_interval },
        (None, Some(address), Some(name)) => {
            if address.split(',').any(|a| a.trim().is_empty()) {
                eprintln!("error: --control {address:?}: expected ADDR or ADDR,ADDR,... (each host:port)");
                return exit::bad_input();
            }
            // From the environment, never the command line, where any user could read it.
            let join_token = std::env::var(JOIN_TOKEN_VAR).ok().filter(|t| !t.is_empty());
            let trust_bundle = match std::env::var_os(TRUST_BUNDLE_VAR).filter(|p| !p.is_empty()) {
                None => None,
                Some(path) => match std::fs::read_to_string(&path) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        eprintln!("error: {TRUST_BUNDLE_VAR}={}: {e}", std::path::Path::new(&path).display());
                        return exit::bad_input();
                    }
                },
            };
            ConfigSource::Control { address, name, join_token, trust_bundle }
        }
        // clap's `required_unless_present` and `requires` rule this out.
        _ => {
            eprintln!("error: give --config FILE, or --control ADDR with --name NAME");
            return exit::bad_input();
        }
    };
    let options = ProxyOptions { source, admin: args.admin, workers, shutdown: None };
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
