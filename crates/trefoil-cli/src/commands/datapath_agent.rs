//! `trefoil datapath agent`: the node agent fed by the control plane. It
//! watches the DatapathRules, compiles them with the one precedence the CLI
//! explains (`trefoil_model::datapath::compile`), keeps the lines for its
//! node, resolves each rule's `to` against the functions this node runs,
//! and hands the table to `trefoil-datapath`, which reconciles the kernel.
//!
//! Where a rule's labels lead is not in the resources yet (the proxy's
//! transparent listener is not a resource field), so the command line says
//! it: `--redirect-to app=http-proxy@127.0.0.1:15001`, `--copy-to
//! app=ids@veth-ids`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use trefoil_api::WatchEvent;
use trefoil_datapath::{Action, AgentConfig, Datapath, Entry, IpNet, Protocol as KernelProtocol};
use trefoil_model::datapath::{compile, Cidr, Entry as Line, Family, Rule};
use trefoil_model::spec::{DatapathAction, DatapathRuleSpec, LabelSelector, Protocol};
use trefoil_model::Spec;

use super::client::Server;
use crate::output::{current_thread_runtime, exit, stop_signal};

pub(crate) const AGENT_HELP: &str = "The agent programs this node's kernel with the rules for it (rules without
`node`, and those naming --node), in precedence order, and keeps them in step
with the control plane: a change is applied within a moment of its write; while
the control plane is unreachable the last table stays. Ctrl-C or SIGTERM removes
every program it attached; after kill -9 a restarted agent adopts and reconciles
what is there.

A rule's `to` names labels; which local function they mean is given here:
  --redirect-to app=http-proxy@127.0.0.1:15001   a redirect to these labels goes to this transparent listener
  --copy-to app=ids@veth-ids                     a copy to these labels goes out of this interface
A rule whose labels match none of these has no line on this node (and says so).

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
    /// LABELS@ADDRESS: redirect rules whose `to` selects these labels go to this transparent listener.
    #[arg(long = "redirect-to", value_name = "LABELS@ADDRESS")]
    redirect_to: Vec<Local<SocketAddr>>,
    /// LABELS@INTERFACE: copy rules whose `to` selects these labels send copies out of this interface.
    #[arg(long = "copy-to", value_name = "LABELS@INTERFACE")]
    copy_to: Vec<Local<String>>,
    /// A directory on a BPF filesystem for the pins.
    #[arg(long, default_value = trefoil_datapath::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// The network namespace to program (e.g. /run/netns/edge); the agent's own when absent.
    #[arg(long)]
    netns: Option<PathBuf>,
    #[command(flatten)]
    server: Server,
}

/// A local function as the command line names it: its labels and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Local<T> {
    labels: BTreeMap<String, String>,
    at: T,
}

impl<T: FromStr> FromStr for Local<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (labels, at) = s.rsplit_once('@').ok_or_else(|| format!("{s:?}: expected LABELS@TARGET, e.g. app=ids@veth-ids"))?;
        let mut map = BTreeMap::new();
        for pair in labels.split(',') {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not a label: write label=value"))?;
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        let at = at.parse().map_err(|e| format!("{at:?}: {e}"))?;
        Ok(Local { labels: map, at })
    }
}

/// Where this node's functions are.
#[derive(Default)]
struct Locals {
    listeners: Vec<Local<SocketAddr>>,
    interfaces: Vec<Local<String>>,
}

/// What a rule's `to` resolves to on this node.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Listener(SocketAddr),
    Interface(String),
}

impl Locals {
    fn resolve(&self, to: &LabelSelector) -> Vec<Target> {
        let listeners = self.listeners.iter().filter(|l| to.matches(&l.labels)).map(|l| Target::Listener(l.at));
        let interfaces = self.interfaces.iter().filter(|l| to.matches(&l.labels)).map(|l| Target::Interface(l.at.clone()));
        listeners.chain(interfaces).collect()
    }
}

/// The kernel table for `node`, in precedence order, and a note for each
/// rule that gets no line here because nothing local matches its labels.
fn kernel_table(rules: &[Rule<'_>], node: &str, locals: &Locals) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for line in compile(rules, |to| locals.resolve(to)).into_iter().filter(|l| l.is_for(node)) {
        let action = match line.action {
            DatapathAction::Drop => Some(Action::Drop),
            DatapathAction::Redirect => line.targets.iter().find_map(|t| match t {
                Target::Listener(listener) => Some(Action::Redirect { listener: *listener }),
                Target::Interface(_) => None,
            }),
            DatapathAction::Copy => line.targets.iter().find_map(|t| match t {
                Target::Interface(interface) => Some(Action::Copy { interface: interface.clone() }),
                Target::Listener(_) => None,
            }),
        };
        let Some(action) = action else {
            let note = format!(
                "rule {} ({}) has no local target here: no --{}-to matches its labels",
                line.rule,
                line.action.as_str(),
                line.action.as_str()
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
            continue;
        };
        entries.extend(kernel_lines(&line, action));
    }
    (entries, notes)
}

/// One table line as the kernel takes it: "any" becomes the any-network of
/// the line's IP version, both versions when the line gives no block.
fn kernel_lines<T>(line: &Line<T>, action: Action) -> Vec<Entry> {
    let net = |c: Cidr| IpNet::new(c.network(), c.prefix_len());
    let families = match line.family() {
        Some(f) => vec![f],
        None => vec![Family::Ipv4, Family::Ipv6],
    };
    let any = |f: Family| if f == Family::Ipv4 { IpNet::any_v4() } else { IpNet::any_v6() };
    families
        .into_iter()
        .filter_map(|f| {
            Some(Entry {
                rule: line.rule.clone(),
                // The order of the list decides; the kernel keeps the priority for reports only.
                priority: u32::try_from(line.priority).unwrap_or(0),
                src: line.source.map_or(Some(any(f)), net)?,
                dst: line.destination.map_or(Some(any(f)), net)?,
                ports: line.ports.first()..=line.ports.last(),
                protocol: match line.protocol {
                    Protocol::Tcp => KernelProtocol::Tcp,
                    Protocol::Udp => KernelProtocol::Udp,
                },
                action: action.clone(),
            })
        })
        .collect()
}

/// How long a burst of watch events is gathered before the table is applied.
const SETTLE: Duration = Duration::from_millis(50);
/// Retry delays after the control plane is lost.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

pub(crate) fn run(a: AgentArgs) -> ExitCode {
    let locals = Locals { listeners: a.redirect_to.clone(), interfaces: a.copy_to.clone() };
    let config = AgentConfig { netns: a.netns.clone(), pin_root: a.pin_root.clone(), ..AgentConfig::new(&a.node, &a.interfaces) };
    let mut datapath = match Datapath::start(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: the datapath cannot start: {e}");
            return exit::failure();
        }
    };
    if let Datapath::Nftables { because, .. } = &datapath {
        eprintln!("warning: eBPF unavailable ({because}); using nftables: redirect and drop only, no copy, no flow records");
    }
    let Some(rt) = current_thread_runtime() else { return exit::failure() };
    rt.block_on(async {
        let stop = stop_signal();
        tokio::pin!(stop);
        tokio::select! {
            _ = follow(&a, &locals, &mut datapath) => {}
            _ = &mut stop => {}
        }
    });
    match datapath.remove_all() {
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

/// Follows the rules for ever: the list applied first, then a watch with
/// the table applied after each burst of changes; a lost watch is opened
/// again, keeping the last table.
async fn follow(a: &AgentArgs, locals: &Locals, datapath: &mut Datapath) {
    let client = a.server.client();
    let mut delay = RETRY_FIRST;
    let mut applier = Applier { node: &a.node, locals, notes: Vec::new(), applied: None };
    loop {
        // The list first: a restarted agent (after kill -9) must drop what was
        // deleted meanwhile even when no rule is left to announce itself.
        let followed = match client.list("DatapathRule").await {
            Ok(listed) => client.watch("DatapathRule").await.map(|watch| (listed, watch)),
            Err(e) => Err(e),
        };
        let (listed, mut watch) = match followed {
            Ok(both) => both,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the datapath rules; keeping the last table");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        delay = RETRY_FIRST;
        let mut rules: BTreeMap<String, DatapathRuleSpec> = listed
            .items
            .into_iter()
            .filter_map(|r| match r.spec {
                Spec::DatapathRule(spec) => Some((r.metadata.name, spec)),
                _ => None,
            })
            .collect();
        applier.apply(datapath, &rules);
        // The watch starts with every current rule: that burst replaces the
        // list (a rule deleted between the two is not in it).
        let mut fresh = true;
        loop {
            let Some(first) = watch.next().await else { break };
            let mut events = vec![first];
            // Gather the rest of a burst (the initial listing, a batch apply) to apply once.
            while let Ok(Some(more)) = tokio::time::timeout(SETTLE, watch.next()).await {
                events.push(more);
            }
            if std::mem::take(&mut fresh) {
                rules.clear();
            }
            let mut ended = false;
            for event in events {
                match event {
                    Ok(WatchEvent::Added { object } | WatchEvent::Modified { object }) => {
                        if let Spec::DatapathRule(spec) = object.spec {
                            rules.insert(object.metadata.name, spec);
                        }
                    }
                    Ok(WatchEvent::Deleted { object }) => {
                        rules.remove(&object.metadata.name);
                    }
                    Ok(WatchEvent::Error { error }) => {
                        tracing::warn!(%error, "the rules watch ended; following again");
                        ended = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the rules watch broke; following again");
                        ended = true;
                    }
                }
            }
            if ended {
                break;
            }
            applier.apply(datapath, &rules);
        }
    }
}

/// Applies tables and says once what a table leaves out.
struct Applier<'a> {
    node: &'a str,
    locals: &'a Locals,
    notes: Vec<String>,
    /// The table the kernel took last: the same one again is not rewritten.
    applied: Option<Vec<Entry>>,
}

impl Applier<'_> {
    fn apply(&mut self, datapath: &mut Datapath, rules: &BTreeMap<String, DatapathRuleSpec>) {
        let named: Vec<Rule<'_>> = rules.iter().map(|(name, spec)| Rule { name, spec }).collect();
        let (entries, notes) = kernel_table(&named, self.node, self.locals);
        if notes != self.notes {
            for note in &notes {
                tracing::warn!("{note}");
            }
            self.notes = notes;
        }
        if self.applied.as_ref() == Some(&entries) {
            return;
        }
        match datapath.apply(&entries) {
            Ok(()) => {
                tracing::info!(rules = rules.len(), entries = entries.len(), "datapath table applied");
                self.applied = Some(entries);
            }
            // The kernel keeps the last table it took; the next change tries again.
            Err(e) => tracing::error!(error = %e, "the datapath refused the table; keeping the last one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use trefoil_model::datapath::compact;

    use super::*;

    fn spec(text: &str, from: &[&str], node: Option<&str>) -> DatapathRuleSpec {
        let mut s = compact::parse(text).unwrap().into_spec();
        s.traffic.source = from.iter().map(|f| f.parse().unwrap()).collect();
        s.node = node.map(str::to_string);
        s
    }

    #[test]
    fn the_table_for_a_node_resolves_targets_and_fills_any() {
        let locals = Locals {
            listeners: vec!["app=http-proxy@127.0.0.1:15001".parse().unwrap()],
            interfaces: vec!["app=ids,tier=edge@veth-ids".parse().unwrap()],
        };
        let specs = [
            ("web", spec("10.0.2.0/24 80 : redirect => app=http-proxy", &[], None)),
            ("tap", spec("fd00::/64 * : copy => app=ids", &[], None)),
            ("block", spec("* * : drop", &["10.0.1.2"], Some("edge"))),
            ("elsewhere", spec("10.0.9.0/24 80 : drop", &[], Some("other"))),
            ("nowhere", spec("10.0.3.0/24 80 : redirect => app=missing", &[], None)),
        ];
        let rules: Vec<Rule<'_>> = specs.iter().map(|(name, spec)| Rule { name, spec }).collect();
        let (entries, notes) = kernel_table(&rules, "edge", &locals);
        let names: Vec<&str> = entries.iter().map(|e| e.rule.as_str()).collect();
        // Longer destination prefixes first; only this node's; only those with a target.
        assert_eq!(names, ["tap", "web", "block"]);
        let [tap, web, block] = &entries[..] else { panic!("{entries:?}") };
        assert_eq!(block.dst, IpNet::any_v4(), "any destination of the source's IP version");
        assert_eq!(block.src.to_string(), "10.0.1.2/32");
        assert_eq!(web.action, Action::Redirect { listener: "127.0.0.1:15001".parse().unwrap() });
        assert_eq!(web.ports, 80..=80);
        assert_eq!(tap.action, Action::Copy { interface: "veth-ids".into() });
        assert_eq!((tap.src, tap.ports.clone()), (IpNet::any_v6(), 1..=65535));
        assert_eq!(notes, ["rule nowhere (redirect) has no local target here: no --redirect-to matches its labels"]);
    }

    #[test]
    fn local_targets_are_read_from_the_command_line() {
        let l: Local<SocketAddr> = "app=http-proxy,tier=edge@[fd00::1]:15001".parse().unwrap();
        assert_eq!(l.labels.len(), 2);
        assert_eq!(l.at, "[fd00::1]:15001".parse().unwrap());
        assert!("app=x".parse::<Local<String>>().is_err());
        assert!("app@veth0".parse::<Local<String>>().is_err());
        assert!("app=x@nowhere".parse::<Local<SocketAddr>>().is_err());
    }
}
