//! `trefoil up -f PATH`: the local runtime. Argument parsing and output
//! only; the work is in `trefoil-runtime`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::sync::mpsc;
use trefoil_runtime::datapath::{DatapathMode, DatapathOptions};
use trefoil_runtime::plan::Role;
use trefoil_runtime::{Event, Events, Summary, UpError, UpOptions};

use crate::output::{current_thread_runtime, exit, print_structured, stop_signal, Format};

/// `trefoil up --help`.
pub(crate) const LONG_ABOUT: &str = "Run a whole mesh on this machine from resource files.

Starts the control plane (`trefoil control`) as a child process, stores every
resource from the files in it, then starts a proxy for each gateway `Proxy`
resource and, for each `Workload` replica, a sidecar proxy and the app. Each
replica is probed (its `health.http` path, else a TCP connect on its port) and
published in `Endpoints/<service>`. Crashed processes restart with back-off
(0.5 s doubling to 30 s). Ctrl-C stops the apps, then the proxies, then the
control plane; a second Ctrl-C kills them all at once.

Process names: `control`, each gateway's Proxy name, `<workload>-<replica>`
(an app) and `<workload>-<replica>-sidecar`; the sidecar registers as Proxy
`<workload>-<replica>`.

An app gets PORT (where to listen), TREFOIL_SERVICE, TREFOIL_VERSION,
TREFOIL_REPLICA, TREFOIL_OUTBOUND (its sidecar's Host-routed outbound
address) and TREFOIL_UPSTREAM_<SERVICE> for every other service; `${VAR}`
expands in a workload's `args` and `env`.

The datapath: when the files hold a DatapathRule (or with --datapath on), up
also runs this node's datapath agent (`trefoil datapath agent`, process name
`datapath`, log logs/datapath.log) on the interfaces of the default routes, or
those named with --datapath-interface, once the proxies are started; `trefoil
is up` waits for its first table to be in the kernel. Stopping up stops the
agent first, which detaches every program and removes its pins. Without
CAP_NET_ADMIN (not root) --datapath auto says which capability is missing and
runs everything else; --datapath on refuses to start. Without CAP_BPF the
agent falls back to nftables (redirect and drop only) and says so.
A redirect goes to the transparent Listener that the `trefoil.dev/listener`
label of the selected Workload, NetworkFunction or CNF names (see `trefoil
datapath agent --help`).

State lives in --state: data/ (the store), logs/<process>.log (see
`trefoil logs NAME`) and up.json (every process: role, pid, addresses,
restarts, ready).";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A YAML file, or a directory of *.yaml / *.yml files.
    #[arg(short = 'f', long = "file")]
    path: PathBuf,
    /// State directory: store, logs, up.json.
    #[arg(long, default_value = ".trefoil")]
    state: PathBuf,
    /// Control plane REST API address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Control plane config stream (gRPC) address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7071")]
    grpc_listen: SocketAddr,
    /// First proxy admin port: gateways get base, base+1, ..., then sidecars; 0 lets the OS choose.
    #[arg(long, default_value_t = 15000)]
    admin_base: u16,
    /// Run this node's datapath agent: auto (when the files hold a DatapathRule), on (always; refuse to start without it), off.
    #[arg(long, value_enum, default_value_t = Datapath::Auto)]
    datapath: Datapath,
    /// An interface the datapath agent programs (repeat for several) [default: those of the default routes].
    #[arg(long = "datapath-interface", value_name = "IF")]
    datapath_interfaces: Vec<String>,
    /// This node's name: DatapathRules naming another node are not programmed here [default: the host name].
    #[arg(long)]
    node: Option<String>,
    /// Format of the summary printed once everything started.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// The mesh's SPIFFE trust domain (`trefoil control --trust-domain`).
    #[arg(long, default_value = "trefoil.local")]
    trust_domain: trefoil_control::identity::TrustDomain,
    /// How long proxies' SVIDs are valid (5s to 30d); they renew at two thirds.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    svid_lifetime: std::time::Duration,
    /// The operator's CA certificate to sign SVIDs with (`trefoil control --ca-cert`).
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Its private key (`trefoil control --ca-key`); never copied.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The root(s) to trust when --ca-cert is an intermediate, or that
    /// --ca-external-command's chains end at (`trefoil control --ca-bundle`).
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// An external CA's signing command (`trefoil control --ca-external-command`); needs --ca-bundle.
    #[arg(long, value_name = "PATH", requires = "ca_bundle", conflicts_with_all = ["ca_cert", "ca_key"])]
    ca_external_command: Option<PathBuf>,
}

/// The control plane's CA flags `up` passes on, with absolute paths (the
/// control plane may run elsewhere than the current directory).
fn ca_args(args: &Args) -> Vec<String> {
    let flags = [
        ("--ca-cert", &args.ca_cert),
        ("--ca-key", &args.ca_key),
        ("--ca-bundle", &args.ca_bundle),
        ("--ca-external-command", &args.ca_external_command),
    ];
    flags
        .into_iter()
        .filter_map(|(flag, path)| path.as_ref().map(|p| (flag, std::path::absolute(p).unwrap_or_else(|_| p.clone()))))
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
}

/// The identity settings of a mesh whose control plane keeps its data in
/// `state/data`: each proxy start gets a join token minted there.
pub(crate) fn identity_plan(
    state: &std::path::Path,
    trust_domain: &trefoil_control::identity::TrustDomain,
    svid_lifetime: std::time::Duration,
) -> trefoil_runtime::plan::IdentityPlan {
    use trefoil_control::identity::join::{JoinIdentity, JoinTokens, DEFAULT_TTL};
    let tokens = JoinTokens::new(&state.join("data"));
    let mint = move |namespace: &str, workload: &str| {
        let identity = JoinIdentity { namespace: namespace.to_string(), workload: workload.to_string() };
        tokens.mint(&identity, DEFAULT_TTL, std::time::SystemTime::now()).map_err(|e| e.to_string())
    };
    trefoil_runtime::plan::IdentityPlan {
        trust_domain: trust_domain.to_string(),
        svid_lifetime,
        minter: Some(trefoil_runtime::plan::JoinMinter(std::sync::Arc::new(mint))),
        trust_bundle: Some(trefoil_control::identity::keep::bundle_path(&state.join("data"), trust_domain)),
        control_args: Vec::new(),
    }
}

/// `--datapath`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Datapath {
    Auto,
    On,
    Off,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find the trefoil binary to run its parts: {e}");
            return exit::failure();
        }
    };
    let node = match args.node.clone().map_or_else(host_name, Ok) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: --node not given and the host name is unreadable: {e}");
            return exit::bad_input();
        }
    };
    let datapath = DatapathOptions {
        mode: match args.datapath {
            Datapath::Auto => DatapathMode::Auto,
            Datapath::On => DatapathMode::On,
            Datapath::Off => DatapathMode::Off,
        },
        node,
        interfaces: args.datapath_interfaces.clone(),
        // Only CAP_NET_ADMIN stops the agent: without CAP_BPF it falls back to nftables.
        missing_capability: trefoil_datapath::missing_capability().filter(|c| *c == "CAP_NET_ADMIN").map(str::to_string),
    };
    let mut identity = identity_plan(&args.state, &args.trust_domain, args.svid_lifetime);
    identity.control_args = ca_args(&args);
    let options = UpOptions {
        identity,
        files: args.path,
        state: args.state,
        listen: args.listen,
        grpc_listen: args.grpc_listen,
        admin_base: args.admin_base,
        exe,
        datapath,
    };
    let format = args.output;
    let result = runtime.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A second Ctrl-C does not wait for the orderly stop: exiting kills
        // every child at once (they die with this process).
        let shutdown = async {
            stop_signal().await;
            tokio::spawn(async {
                stop_signal().await;
                eprintln!("interrupted again: killing everything now");
                #[allow(clippy::disallowed_methods)] // the point: no orderly stop
                std::process::exit(130);
            });
        };
        let up = trefoil_runtime::up(options, Events::new(tx), shutdown);
        tokio::pin!(up);
        loop {
            tokio::select! {
                biased;
                Some(event) = rx.recv() => {
                    if let Event::Up(summary) = &event {
                        wire_context(LOCAL_CONTEXT, summary);
                        print_summary(summary, &login_link(summary).await, format);
                    } else {
                        show(event, format)
                    }
                }
                result = &mut up => {
                    while let Ok(event) = rx.try_recv() {
                        show(event, format);
                    }
                    break result;
                }
            }
        }
    });
    match result {
        Ok(()) => exit::ok(),
        Err(UpError::Invalid(diagnostics)) => {
            for d in &diagnostics.0 {
                eprintln!("{d}");
            }
            eprintln!("nothing started: {} error(s)", diagnostics.0.len());
            exit::bad_input()
        }
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_bad_input() {
                exit::bad_input()
            } else {
                exit::failure()
            }
        }
    }
}

/// The portal's address with a one-time login code in its fragment, as
/// Jupyter prints its login link: the portal exchanges the code for a
/// 12-hour session token and the link is spent (see `trefoil portal
/// --help`); the fragment never reaches a server's logs. Only for a
/// loopback control plane, minted with the admin token `up` wrote; the
/// plain address otherwise, or if the control plane refuses.
pub(crate) async fn login_link(s: &Summary) -> String {
    let loopback = s.portal.starts_with("http://127.") || s.portal.starts_with("http://[::1]") || s.portal.starts_with("http://localhost");
    let token = match std::fs::read_to_string(&s.token_file) {
        Ok(token) if loopback && !token.trim().is_empty() => token,
        _ => return s.portal.clone(),
    };
    let client = trefoil_api::Client::new(s.api.clone()).with_token(Some(token.trim())).with_timeout(std::time::Duration::from_secs(5));
    match client.create_login_code(&trefoil_api::CreateLoginCode::default()).await {
        Ok(code) => super::portal::link(&s.portal, &code.code),
        Err(e) => {
            tracing::warn!(error = %e, "cannot mint a login code; open the portal and paste a token instead");
            s.portal.clone()
        }
    }
}

/// The context `trefoil up` keeps for the control plane it runs.
const LOCAL_CONTEXT: &str = "local";

/// Makes the CLI talk to the control plane just started (see `trefoil
/// config --help`); a config file that cannot be written is a warning, the
/// mesh runs all the same. `Some` of the context that was current before,
/// once wired.
pub(crate) fn wire_context(name: &str, summary: &Summary) -> Option<Option<String>> {
    match super::config::remember(name, &summary.api, std::path::Path::new(&summary.token_file)) {
        Ok((path, previous)) => {
            eprintln!(
                "context {name:?} in {} is current: trefoil get, apply, ... reach {} with its admin token",
                path.display(),
                summary.api
            );
            Some(previous)
        }
        Err(e) => {
            eprintln!("warning: the CLI's config was not updated ({e}); use --server {} --token-file {}", summary.api, summary.token_file);
            None
        }
    }
}

fn host_name() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string())
}

/// Progress on stderr, one line per step; the summary on stdout.
pub(crate) fn show(event: Event, format: Format) {
    match event {
        Event::DatapathSkipped { why } => eprintln!("warning: datapath off: {why}"),
        Event::ResourcesApplied { count } => eprintln!("stored {count} resources in the control plane"),
        Event::Started { role: Role::Control, pid, restarts: 0, .. } => eprintln!("started the control plane (pid {pid})"),
        Event::Started { name, role, pid, restarts: 0 } => eprintln!("started {} {name} (pid {pid})", role_name(role)),
        Event::Started { name, pid, restarts, .. } => eprintln!("restarted {name} (pid {pid}, restart {restarts})"),
        Event::Ready { role: Role::Control, ready: true, .. } => eprintln!("control plane ready"),
        Event::Ready { name, role: Role::App, ready: true } => eprintln!("replica {name} ready"),
        Event::Ready { name, role: Role::App, ready: false } => eprintln!("replica {name} not ready"),
        Event::Ready { name, role, ready } => eprintln!("{} {name} {}", role_name(role), if ready { "ready" } else { "not ready" }),
        Event::Exited { name, how, restart_in } => eprintln!("{name} exited ({how}); restarting in {restart_in:?}"),
        Event::StartFailed { name, error, retry_in } => eprintln!("cannot start {name}: {error}; retrying in {retry_in:?}"),
        Event::Rejected { resource, error } => eprintln!("control plane refused {resource}: {error}"),
        Event::Pruned { resource } => eprintln!("deleted {resource}: left from an earlier run, no longer in the files"),
        Event::Up(summary) => print_summary(&summary, &summary.portal, format),
        Event::Stopping => eprintln!("stopping: apps and the datapath agent, then proxies, then the control plane"),
        Event::Stopped { name } => eprintln!("stopped {name}"),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Control => "control plane",
        Role::Gateway => "gateway",
        Role::Sidecar => "sidecar",
        Role::App => "app",
        Role::Datapath => "datapath agent",
    }
}

fn print_summary(s: &Summary, portal: &str, format: Format) {
    if format != Format::Table {
        print_structured(format, s);
        return;
    }
    println!("trefoil is up");
    println!("  portal         {portal}");
    for url in &s.gateways {
        println!("  gateway        {url}");
    }
    println!("  REST API       {}", s.api);
    println!("  config stream  {}", s.grpc);
    println!("  logs           {}  (trefoil logs NAME)", s.logs);
    println!("  processes      {}", s.state);
    if let Some(d) = &s.datapath {
        println!("  datapath       {}  ({})", if d.ready { "programmed" } else { "NOT READY" }, d.log);
    }
    if !s.replicas.is_empty() {
        println!("  {:<22} {:<16} {:<8} {:<22} READY", "REPLICA", "SERVICE", "VERSION", "ADDRESS");
        for r in &s.replicas {
            println!("  {:<22} {:<16} {:<8} {:<22} {}", r.name, r.service, r.version, r.address, if r.ready { "yes" } else { "no" });
        }
    }
    println!("Ctrl-C stops everything.");
}
