//! `trefoil datapath agent`: the node agent fed by the control plane. It
//! opens the config stream (the proxies' gRPC stream) as the agent of its
//! node, with an API token; the control plane sends that node's datapath
//! table, resolved and versioned (`trefoil_model::datapath::node_table`);
//! the agent hands it to `trefoil-datapath`, which reconciles the kernel,
//! and ACKs the version, or NACKs it with the kernel's reason. While the
//! stream is down the last table stays in the kernel; the agent reconnects
//! with a back-off and says which version it has, so an unchanged table is
//! not sent again (decision 0021).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use trefoil_datapath::{Action, AgentConfig, Datapath, Entry, IpNet, Protocol as KernelProtocol};
use trefoil_model::datapath::node_table::{Line, LineAction, NodeTable, Unresolved};
use trefoil_model::datapath::Cidr;
use trefoil_model::spec::Protocol;
use trefoil_wire::{ConfigStreamClient, Hello, ProxyMessage, Snapshot};

use super::client::Server;
use super::flow_report::Reporter;
use crate::output::{current_thread_runtime, exit, stop_signal};

pub(crate) const AGENT_HELP: &str = "The agent programs this node's kernel with the rules for it (rules without
`node`, and those naming --node), in precedence order, and keeps them in step
with the control plane: it opens the config stream (--control, as proxies do)
as this node's agent with the API token (--token or --token-file; never
without one), and the control plane sends the node's table, resolved, whenever
it changes. Each table is ACKed with its revision once in the kernel, or NACKed
with the reason (a missing capability, an interface that cannot be attached);
`trefoil get proxies` shows the agent as agent/NODE with its revision and last
NACK. While the control plane is unreachable the last table stays and the agent
reconnects with a back-off. Ctrl-C or SIGTERM removes every program it
attached; after kill -9 a restarted agent adopts what is there and reconciles it
to the first table it is sent. `trefoil up` runs one on its node when the
project has rules.

Where a rule's `to` leads is read from what it selects (a Workload,
NetworkFunction or CNF), by two labels on it:
  trefoil.dev/listener: NAME    redirect: the Listener NAME (`transparent: true`) of the proxy fronting it
  trefoil.dev/interface: IF     copy: the interface, in this node's namespace, that receives the copies
A redirect that resolves to no listener drops its traffic (it fails closed), as
does one whose listener is not accepting (its proxy restarting); a copy that
resolves to no interface sends no copies. Both say why in this log, in an
Unresolved event (`trefoil get events`), in `trefoil describe datapathrule NAME`
and below `trefoil datapath list`.

Every --flow-report-interval (10s) it reports the flows that saw packets since
its last report (at most 2000, the most recently active) and every rule's
packet and byte counters to the control plane: `trefoil datapath flows`, the
trefoil_datapath_* metrics on the control plane's /metrics, and the flows next
to a redirected request's spans in `trefoil trace ID`. No flow records under
nftables (counters only).

Needs CAP_BPF and CAP_NET_ADMIN (eBPF), or falls back to nftables for redirect
and drop; a missing capability is named.

Exit codes: 0 stopped and cleaned up, 1 the datapath could not start or be removed, 2 bad arguments (no token).";

#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// This node's name: it names the pin directory, and rules for other nodes are left out.
    #[arg(long)]
    node: String,
    /// An interface where client and server traffic enters the node (repeat for several).
    #[arg(long = "interface", required = true)]
    interfaces: Vec<String>,
    /// A directory on a BPF filesystem for the pins.
    #[arg(long, default_value = trefoil_datapath::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// The network namespace to program (e.g. /run/netns/edge); the agent's own when absent.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// A file written once the first table is in the kernel and removed on exit (a readiness probe).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// How often the flow records and per-rule counters are reported to the control plane; 0s: never.
    #[arg(long, value_parser = super::proxy::parse_duration, default_value = "10s", value_name = "DURATION")]
    flow_report_interval: Duration,
    /// The control plane's config stream (`trefoil control --grpc-listen`), where the rules come from.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7071")]
    control: String,
    /// The REST API (flow reports) and the token both use.
    #[command(flatten)]
    server: Server,
}

/// Retry delays after the control plane is lost.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// The file holding the mesh root the control plane's certificate must chain to.
const TRUST_BUNDLE_VAR: &str = "TREFOIL_TRUST_BUNDLE";
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn run(a: AgentArgs) -> ExitCode {
    // A file left by an earlier agent (killed) must not say this one is ready.
    if let Some(ready) = &a.ready_file {
        remove_ready_file(ready);
    }
    // Refused by the control plane without one: say so before touching the kernel.
    let Some(token) = a.server.token() else {
        eprintln!("error: the agent needs an API token (--token, --token-file or a context's): the control plane sends rules to no anonymous agent");
        return exit::bad_input();
    };
    let config = AgentConfig { netns: a.netns.clone(), pin_root: a.pin_root.clone(), ..AgentConfig::new(&a.node, &a.interfaces) };
    let mut datapath = match Datapath::start(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: the datapath cannot start: {e}");
            return exit::failure();
        }
    };
    match &datapath {
        Datapath::Nftables { because, .. } => {
            eprintln!("warning: eBPF unavailable ({because}); using nftables: redirect and drop only, no copy, no flow records")
        }
        Datapath::Ebpf(_) => tracing::info!(node = %a.node, interfaces = %a.interfaces.join(","), "datapath started (eBPF)"),
    }
    let Some(rt) = current_thread_runtime() else { return exit::failure() };
    rt.block_on(async {
        let stop = stop_signal();
        tokio::pin!(stop);
        tokio::select! {
            _ = follow(&a, &token, &mut datapath) => {}
            _ = &mut stop => {}
        }
    });
    let removed = datapath.remove_all();
    if let Some(ready) = &a.ready_file {
        remove_ready_file(ready);
    }
    match removed {
        Ok(()) => {
            tracing::info!(node = %a.node, "datapath removed");
            exit::ok()
        }
        Err(e) => {
            eprintln!("error: removing the datapath: {e}");
            exit::failure()
        }
    }
}

fn remove_ready_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the ready file");
        }
    }
}

/// Follows the config stream for ever: one stream at a time, a back-off
/// between them, flow reports meanwhile. The table in the kernel stays
/// while no stream is open.
async fn follow(a: &AgentArgs, token: &str, datapath: &mut Datapath) {
    // Zero turns reports off.
    let reports = (!a.flow_report_interval.is_zero()).then(|| {
        let period = a.flow_report_interval;
        let mut reports = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reports
    });
    let mut follower = Follower {
        a,
        token,
        applier: Applier { node: &a.node, ready_file: a.ready_file.as_deref(), notes: Vec::new(), applied: None, in_force: None },
        reporter: Reporter::new(&a.node, a.server.client()),
        reports,
        delay: RETRY_FIRST,
        lost: None,
    };
    loop {
        let ended = follower.stream_once(datapath).await;
        if follower.lost.as_ref() != Some(&ended) {
            tracing::warn!(control = %a.control, error = %ended, "the config stream is down; keeping the last table");
            follower.lost = Some(ended);
        }
        follower.pause(datapath).await;
    }
}

/// The agent's side of the config stream, across reconnects.
struct Follower<'a> {
    a: &'a AgentArgs,
    token: &'a str,
    applier: Applier<'a>,
    reporter: Reporter,
    reports: Option<tokio::time::Interval>,
    /// The back-off before the next attempt.
    delay: Duration,
    /// Why the last stream ended, said once until one is open again.
    lost: Option<String>,
}

impl Follower<'_> {
    /// One stream: Hello with the version in force, then each table applied
    /// and answered. Returns why it ended.
    async fn stream_once(&mut self, datapath: &mut Datapath) -> String {
        let a = self.a;
        // The mesh root, when the control plane serves the stream over TLS
        // (`trefoil up` sets it): the agent presents no certificate, its
        // token says who it is.
        let tls = match std::env::var_os(TRUST_BUNDLE_VAR).filter(|p| !p.is_empty()) {
            None => None,
            Some(path) => {
                match std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|pem| trefoil_wire::ClientTls::new(&pem, None)) {
                    Ok(tls) => Some(tls),
                    Err(e) => return format!("{TRUST_BUNDLE_VAR}={}: {e}", std::path::Path::new(&path).display()),
                }
            }
        };
        let client = match ConfigStreamClient::connect_with(&a.control, CONNECT_TIMEOUT, tls).await {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        let mut client = match client.with_bearer(self.token) {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        let (say, said) = mpsc::unbounded_channel();
        let (version, hash) = self.applier.in_force.unwrap_or((0, 0));
        let hello =
            Hello { proxy: a.node.clone(), version, hash, pid: std::process::id(), kind: trefoil_wire::AGENT.into(), ..Default::default() };
        let _ = say.send(ProxyMessage::hello(hello));
        let mut snapshots = match client.stream(UnboundedReceiverStream::new(said)).await {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        tracing::info!(control = %a.control, node = %a.node, version, "connected to the control plane");
        self.delay = RETRY_FIRST;
        self.lost = None;
        // A table the kernel refused, tried again now and then: what it
        // lacked (an interface, a listener's socket) may come without any
        // rule changing, and the control plane does not resend it.
        let mut refused: Option<(Snapshot, tokio::time::Instant)> = None;
        loop {
            let retry_at = refused.as_ref().map(|(_, at)| *at);
            let (snapshot, retry) = tokio::select! {
                message = snapshots.message() => match message {
                    Ok(Some(snapshot)) => (snapshot, false),
                    Ok(None) => return "the control plane ended the stream".to_string(),
                    Err(status) => return status.message().to_string(),
                },
                _ = next_tick(&mut self.reports) => {
                    self.applier.report(&mut self.reporter, datapath).await;
                    continue;
                }
                _ = sleep_until(retry_at) => match refused.take() {
                    Some((snapshot, _)) => (snapshot, true),
                    None => continue,
                },
            };
            if snapshot.identity.is_some() {
                continue;
            }
            refused = None;
            let answer = match self.applier.apply(datapath, &snapshot) {
                Ok(()) => ProxyMessage::ack(snapshot.version, snapshot.hash),
                Err(reason) => {
                    let (version, hash) = (snapshot.version, snapshot.hash);
                    refused = Some((snapshot, tokio::time::Instant::now() + RETRY_MAX));
                    if retry {
                        // Said and NACKed already; the control plane keeps that NACK.
                        continue;
                    }
                    tracing::error!(version, error = %reason, "the datapath refused the table; keeping the last one, trying again every 5s");
                    ProxyMessage::nack(version, hash, reason)
                }
            };
            if say.send(answer).is_err() {
                return "the stream closed".to_string();
            }
        }
    }

    /// Waits out the back-off, reporting flows meanwhile, and doubles it.
    async fn pause(&mut self, datapath: &Datapath) {
        let pause = tokio::time::sleep(self.delay);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                _ = next_tick(&mut self.reports) => self.applier.report(&mut self.reporter, datapath).await,
            }
        }
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }
}

/// Sleeps until `at`; never, without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next tick of `interval`; never, without one.
async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => drop(interval.tick().await),
        None => std::future::pending().await,
    }
}

/// Applies tables and says once what a table leaves out.
struct Applier<'a> {
    node: &'a str,
    ready_file: Option<&'a Path>,
    notes: Vec<Unresolved>,
    /// The table the kernel took last: the same one again is not rewritten.
    applied: Option<Vec<Entry>>,
    /// The version and hash of the snapshot in force, said in the next Hello.
    in_force: Option<(u64, u64)>,
}

impl Applier<'_> {
    /// Puts `snapshot`'s table in the kernel; why not, for the NACK. The
    /// kernel keeps the last table it took when it refuses one.
    fn apply(&mut self, datapath: &mut Datapath, snapshot: &Snapshot) -> Result<(), String> {
        let table: NodeTable = serde_json::from_str(&snapshot.resources_json)
            .map_err(|e| format!("snapshot {}: not a datapath table: {e}", snapshot.version))?;
        if table.unresolved != self.notes {
            for note in &table.unresolved {
                tracing::warn!("{note}");
            }
            self.notes = table.unresolved.clone();
        }
        let entries = table.lines.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        if self.applied.as_ref() != Some(&entries) {
            datapath.apply(&entries).map_err(|e| e.to_string())?;
            let rules = {
                let mut names: Vec<&str> = table.lines.iter().map(|l| l.rule.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                names.len()
            };
            tracing::info!(node = self.node, version = snapshot.version, rules, entries = entries.len(), "datapath table applied");
            if self.applied.is_none() {
                self.ready();
            }
            self.applied = Some(entries);
        }
        self.in_force = Some((snapshot.version, snapshot.hash));
        Ok(())
    }

    /// Reports start once a table is in the kernel: a counter's action comes from it.
    async fn report(&self, reporter: &mut Reporter, datapath: &Datapath) {
        if let Some(table) = &self.applied {
            reporter.tick(datapath, table).await;
        }
    }

    fn ready(&self) {
        let Some(path) = self.ready_file else { return };
        if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the ready file");
        }
    }
}

/// One table line as the kernel side takes it.
fn entry(line: &Line) -> Result<Entry, String> {
    let net = |c: Cidr| IpNet::new(c.network(), c.prefix_len()).ok_or_else(|| format!("rule {}: {c} is not a network", line.rule));
    Ok(Entry {
        rule: line.rule.clone(),
        // The order of the list decides; the kernel keeps the priority for reports only.
        priority: u32::try_from(line.priority).unwrap_or(0),
        src: net(line.source)?,
        dst: net(line.destination)?,
        ports: line.ports.first()..=line.ports.last(),
        protocol: match line.protocol {
            Protocol::Tcp => KernelProtocol::Tcp,
            Protocol::Udp => KernelProtocol::Udp,
        },
        action: match &line.action {
            LineAction::Drop => Action::Drop,
            LineAction::Redirect { listener } => Action::Redirect { listener: *listener },
            LineAction::Copy { interface } => Action::Copy { interface: interface.clone() },
        },
    })
}
