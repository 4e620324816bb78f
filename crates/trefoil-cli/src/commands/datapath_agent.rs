//! `trefoil datapath agent`: the node agent fed by the control plane. It
//! follows the DatapathRules and the resources their `to` leads to
//! (Workloads, NetworkFunctions, CNFs and the transparent Listeners they
//! name), compiles the rules with the one precedence the CLI explains
//! (`trefoil_model::datapath::compile`), keeps the lines for its node,
//! resolves each rule's targets with `trefoil_model::datapath::targets` (the
//! same answer `trefoil describe datapathrule` gives), and hands the table to
//! `trefoil-datapath`, which reconciles the kernel.
//!
//! A redirect whose target does not resolve fails closed: its lines become
//! drop lines, counted under the rule, because a rule that says "this
//! traffic goes through the security chain" must not let it go around the
//! chain while a label is missing. A copy with no interface fails open: the
//! traffic itself was never to be touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;
use trefoil_api::{ApiError, Client, WatchEvent};
use trefoil_datapath::{Action, AgentConfig, Datapath, Entry, IpNet, Protocol as KernelProtocol};
use trefoil_model::datapath::targets::{self, Targets};
use trefoil_model::datapath::{compile, Cidr, Entry as Line, Family, Rule};
use trefoil_model::spec::{DatapathAction, Protocol};
use trefoil_model::Resource;

use super::client::Server;
use super::flow_report::Reporter;
use crate::output::{current_thread_runtime, exit, stop_signal};

pub(crate) const AGENT_HELP: &str = "The agent programs this node's kernel with the rules for it (rules without
`node`, and those naming --node), in precedence order, and keeps them in step
with the control plane: a change is applied within a moment of its write; while
the control plane is unreachable the last table stays. Ctrl-C or SIGTERM removes
every program it attached; after kill -9 a restarted agent adopts and reconciles
what is there. `trefoil up` runs one on its node when the project has rules.

Where a rule's `to` leads is read from what it selects (a Workload,
NetworkFunction or CNF), by two labels on it:
  trefoil.dev/listener: NAME    redirect: the Listener NAME (`transparent: true`) of the proxy fronting it
  trefoil.dev/interface: IF     copy: the interface, in this node's namespace, that receives the copies
A redirect that resolves to no listener drops its traffic (it fails closed), as
does one whose listener is not accepting (its proxy restarting); a copy that
resolves to no interface sends no copies. Both say why in this log, in `trefoil
describe datapathrule NAME` and below `trefoil datapath list`.

Every --flow-report-interval (10s) it reports the flows that saw packets since
its last report (at most 2000, the most recently active) and every rule's
packet and byte counters to the control plane: `trefoil datapath flows`, the
trefoil_datapath_* metrics on the control plane's /metrics, and the flows next
to a redirected request's spans in `trefoil trace ID`. No flow records under
nftables (counters only).

Needs CAP_BPF and CAP_NET_ADMIN (eBPF), or falls back to nftables for redirect
and drop; a missing capability is named.

Exit codes: 0 stopped and cleaned up, 1 the datapath could not start or be removed, 2 bad arguments.";

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
    #[command(flatten)]
    server: Server,
}

/// The kinds a node's table is made from.
const KINDS: [&str; 5] = ["DatapathRule", "Listener", "Workload", "NetworkFunction", "CNF"];

/// The kernel table for `node`, in precedence order, and one note for each
/// rule whose target does not resolve (what the agent did instead, and why).
fn kernel_table(resources: &[Resource], node: &str) -> (Vec<Entry>, Vec<String>) {
    let rules: Vec<Rule<'_>> = Rule::all_in(resources);
    let targets: BTreeMap<&str, Targets> = rules.iter().map(|r| (r.name, targets::resolve(r.spec, resources))).collect();
    let mut entries = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    // The targets are resolved per rule above; the table only needs the lines.
    for line in compile(&rules, |_| Vec::<()>::new()).into_iter().filter(|l| l.is_for(node)) {
        let resolved = &targets[line.rule.as_str()];
        for family in families(&line) {
            let action = match line.action {
                DatapathAction::Drop => Ok(Action::Drop),
                DatapathAction::Redirect => resolved.listener(family).map(|listener| Action::Redirect { listener }),
                DatapathAction::Copy => resolved.interface().map(|interface| Action::Copy { interface: interface.to_string() }),
            };
            let action = match (action, line.action) {
                (Ok(action), _) => action,
                (Err(why), DatapathAction::Redirect) => {
                    note(
                        &mut notes,
                        format!("rule {}: redirect not resolved, its {family} traffic is dropped (fails closed): {why}", line.rule),
                    );
                    Action::Drop
                }
                (Err(why), _) => {
                    note(&mut notes, format!("rule {}: copy not resolved, no copies are sent: {why}", line.rule));
                    continue;
                }
            };
            entries.extend(kernel_entry(&line, family, action));
        }
    }
    (entries, notes)
}

fn note(notes: &mut Vec<String>, note: String) {
    if !notes.contains(&note) {
        notes.push(note);
    }
}

/// The IP versions a line's packets can have: its block's, or both when it gives none.
fn families<T>(line: &Line<T>) -> Vec<Family> {
    match line.family() {
        Some(f) => vec![f],
        None => vec![Family::Ipv4, Family::Ipv6],
    }
}

/// One table line of one IP version as the kernel takes it: "any" becomes
/// the any-network of that version.
fn kernel_entry<T>(line: &Line<T>, family: Family, action: Action) -> Option<Entry> {
    let net = |c: Cidr| IpNet::new(c.network(), c.prefix_len());
    let any = if family == Family::Ipv4 { IpNet::any_v4() } else { IpNet::any_v6() };
    Some(Entry {
        rule: line.rule.clone(),
        // The order of the list decides; the kernel keeps the priority for reports only.
        priority: u32::try_from(line.priority).unwrap_or(0),
        src: line.source.map_or(Some(any), net)?,
        dst: line.destination.map_or(Some(any), net)?,
        ports: line.ports.first()..=line.ports.last(),
        protocol: match line.protocol {
            Protocol::Tcp => KernelProtocol::Tcp,
            Protocol::Udp => KernelProtocol::Udp,
        },
        action,
    })
}

/// Retry delays after the control plane is lost.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a burst of changes is gathered before the table is applied.
const SETTLE: Duration = Duration::from_millis(50);

pub(crate) fn run(a: AgentArgs) -> ExitCode {
    // A file left by an earlier agent (killed) must not say this one is ready.
    if let Some(ready) = &a.ready_file {
        remove_ready_file(ready);
    }
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
            _ = follow(&a, &mut datapath) => {}
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

/// What a kind's follower tells the agent.
enum Update {
    /// Every object of a kind, as just listed.
    Listed(&'static str, Vec<Resource>),
    Put(&'static str, Box<Resource>),
    Deleted(&'static str, String),
    Lost(&'static str, String),
}

/// Follows every kind for ever and applies the table after each burst of
/// changes, once every kind has been listed: a restarted agent (after
/// kill -9) keeps the pinned table until it knows the whole picture, then
/// drops what was deleted meanwhile.
async fn follow(a: &AgentArgs, datapath: &mut Datapath) {
    let client = a.server.client();
    let (tx, mut rx) = mpsc::channel(256);
    for kind in KINDS {
        tokio::spawn(follow_kind(client.clone(), kind, tx.clone()));
    }
    drop(tx);
    let mut known: BTreeMap<&'static str, BTreeMap<String, Resource>> = BTreeMap::new();
    let mut down: BTreeSet<&'static str> = BTreeSet::new();
    let mut applier = Applier { node: &a.node, ready_file: a.ready_file.as_deref(), notes: Vec::new(), applied: None };
    let mut reporter = Reporter::new(&a.node, client);
    // Zero turns reports off.
    let mut reports = (!a.flow_report_interval.is_zero()).then(|| {
        let period = a.flow_report_interval;
        let mut reports = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reports
    });
    loop {
        let first = tokio::select! {
            update = rx.recv() => match update {
                Some(update) => update,
                None => return,
            },
            _ = next_tick(&mut reports) => {
                // Reports start once a table is in the kernel: a counter's action comes from it.
                if let Some(table) = &applier.applied {
                    reporter.tick(datapath, table).await;
                }
                continue;
            }
        };
        let mut updates = vec![first];
        // Gather the rest of a burst (the initial listings, a batch apply) to apply once.
        while let Ok(Some(more)) = tokio::time::timeout(SETTLE, rx.recv()).await {
            updates.push(more);
        }
        for update in updates {
            match update {
                Update::Listed(kind, items) => {
                    down.remove(kind);
                    known.insert(kind, items.into_iter().map(|r| (r.name().to_string(), r)).collect());
                }
                Update::Put(kind, r) => {
                    known.entry(kind).or_default().insert(r.name().to_string(), *r);
                }
                Update::Deleted(kind, name) => {
                    known.entry(kind).or_default().remove(&name);
                }
                Update::Lost(kind, error) => {
                    if down.insert(kind) {
                        tracing::warn!(kind, %error, "cannot follow the control plane; keeping the last table");
                    }
                }
            }
        }
        if KINDS.iter().all(|k| known.contains_key(k)) {
            let resources: Vec<Resource> = known.values().flat_map(|m| m.values().cloned()).collect();
            applier.apply(datapath, &resources);
        }
    }
}

/// The next tick of `interval`; never, without one.
async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => drop(interval.tick().await),
        None => std::future::pending().await,
    }
}

/// Follows one kind: a watch, then a list (changes after the watch began
/// arrive on it, so none falls between), then each change; on any loss the
/// same again after a back-off.
async fn follow_kind(client: Client, kind: &'static str, tx: mpsc::Sender<Update>) {
    let mut delay = RETRY_FIRST;
    loop {
        let error = match watch_once(&client, kind, &tx, &mut delay).await {
            Ok(()) => "the control plane ended the watch".to_string(),
            Err(e) => e.to_string(),
        };
        if tx.send(Update::Lost(kind, error)).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn watch_once(client: &Client, kind: &'static str, tx: &mpsc::Sender<Update>, delay: &mut Duration) -> Result<(), ApiError> {
    let mut watch = client.watch(kind).await?;
    let listed = client.list(kind).await?;
    *delay = RETRY_FIRST;
    if tx.send(Update::Listed(kind, listed.items)).await.is_err() {
        return Ok(());
    }
    while let Some(event) = watch.next().await {
        let update = match event? {
            WatchEvent::Added { object } | WatchEvent::Modified { object } => Update::Put(kind, Box::new(object)),
            WatchEvent::Deleted { object } => Update::Deleted(kind, object.metadata.name),
            // Fell behind: list again.
            WatchEvent::Error { .. } => return Ok(()),
        };
        if tx.send(update).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Applies tables and says once what a table leaves out.
struct Applier<'a> {
    node: &'a str,
    ready_file: Option<&'a Path>,
    notes: Vec<String>,
    /// The table the kernel took last: the same one again is not rewritten.
    applied: Option<Vec<Entry>>,
}

impl Applier<'_> {
    fn apply(&mut self, datapath: &mut Datapath, resources: &[Resource]) {
        let (entries, notes) = kernel_table(resources, self.node);
        if notes != self.notes {
            for note in &notes {
                tracing::warn!("{note}");
            }
            self.notes = notes;
        }
        if self.applied.as_ref() == Some(&entries) {
            return;
        }
        let rules = resources.iter().filter(|r| r.kind() == "DatapathRule").count();
        match datapath.apply(&entries) {
            Ok(()) => {
                tracing::info!(rules, entries = entries.len(), "datapath table applied");
                if self.applied.is_none() {
                    self.ready();
                }
                self.applied = Some(entries);
            }
            // The kernel keeps the last table it took; the next change tries again.
            Err(e) => tracing::error!(error = %e, "the datapath refused the table; keeping the last one"),
        }
    }

    fn ready(&self) {
        let Some(path) = self.ready_file else { return };
        if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the ready file");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn load(yaml: &str) -> Vec<Resource> {
        trefoil_model::load_str(&Arc::from("t.yaml"), yaml).unwrap().into_iter().map(|s| s.resource).collect()
    }

    const FUNCTIONS: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: tproxy}\nspec: {address: 127.0.0.1:15001, protocol: tcp, transparent: true}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge, labels: {app: http-proxy, trefoil.dev/listener: tproxy}}\nspec: {chain: [{function: policy}]}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: ids, labels: {app: ids, tier: edge, trefoil.dev/interface: veth-ids}}\nspec: {service: ids, command: ids}\n";

    fn rule(name: &str, spec: &str) -> String {
        format!("---\napiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {{name: {name}}}\nspec: {spec}\n")
    }

    #[test]
    fn the_table_for_a_node_resolves_targets_from_the_resources_and_fills_any() {
        let yaml = [
            FUNCTIONS.to_string(),
            rule("web", "{match: {destination: [10.0.2.0/24], ports: [80]}, action: redirect, to: {app: http-proxy}}"),
            rule("tap", "{match: {destination: [\"fd00::/64\"]}, action: copy, to: {app: ids}}"),
            rule("block", "{match: {source: [10.0.1.2]}, action: drop, node: edge}"),
            rule("elsewhere", "{match: {destination: [10.0.9.0/24], ports: [80]}, action: drop, node: other}"),
        ]
        .concat();
        let (entries, notes) = kernel_table(&load(&yaml), "edge");
        let names: Vec<&str> = entries.iter().map(|e| e.rule.as_str()).collect();
        // Longer destination prefixes first; only this node's.
        assert_eq!(names, ["tap", "web", "block"]);
        let [tap, web, block] = &entries[..] else { panic!("{entries:?}") };
        assert_eq!(block.dst, IpNet::any_v4(), "any destination of the source's IP version");
        assert_eq!(block.src.to_string(), "10.0.1.2/32");
        assert_eq!(web.action, Action::Redirect { listener: "127.0.0.1:15001".parse().unwrap() });
        assert_eq!(web.ports, 80..=80);
        assert_eq!(tap.action, Action::Copy { interface: "veth-ids".into() });
        assert_eq!((tap.src, tap.ports.clone()), (IpNet::any_v6(), 1..=65535));
        assert_eq!(notes, Vec::<String>::new());
    }

    #[test]
    fn an_unresolved_redirect_drops_and_an_unresolved_copy_is_left_out() {
        let yaml = [
            FUNCTIONS.to_string(),
            rule("nowhere", "{match: {destination: [10.0.3.0/24], ports: [80]}, action: redirect, to: {app: missing}}"),
            rule("v6", "{match: {destination: [\"fd00::/64\"], ports: [80]}, action: redirect, to: {app: http-proxy}}"),
            rule("no-tap", "{match: {destination: [10.0.4.0/24]}, action: copy, to: {app: http-proxy}}"),
        ]
        .concat();
        let (entries, notes) = kernel_table(&load(&yaml), "edge");
        let lines: Vec<(&str, &Action)> = entries.iter().map(|e| (e.rule.as_str(), &e.action)).collect();
        // fd00::/64 is the longer prefix, so `v6` comes first.
        assert_eq!(lines, [("v6", &Action::Drop), ("nowhere", &Action::Drop)]);
        assert_eq!(
            notes,
            [
                "rule v6: redirect not resolved, its IPv6 traffic is dropped (fails closed): no transparent listener takes IPv6 traffic (only 127.0.0.1:15001)",
                "rule nowhere: redirect not resolved, its IPv4 traffic is dropped (fails closed): `to` (app=missing) selects no Workload, NetworkFunction or CNF",
                "rule no-tap: copy not resolved, no copies are sent: CNF/edge has no trefoil.dev/interface label naming the interface that receives copies",
            ]
        );
    }
}
