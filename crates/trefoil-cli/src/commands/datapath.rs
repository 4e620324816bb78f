//! `trefoil datapath add|list|delete|explain`: datapath rules in the seed's
//! compact form, through the control plane's API. The rules' logic (the
//! grammar, precedence, explain) lives in `trefoil_model::datapath`; this is
//! arguments and output.

use std::net::IpAddr;
use std::process::ExitCode;

use serde::Serialize;
use trefoil_api::{ApiError, Client};
use trefoil_model::datapath::{self, compact, Cidr, Decision, Flow, Rule};
use trefoil_model::spec::{DatapathAction, DatapathRuleSpec, Origin};
use trefoil_model::{Duration, Metadata, Resource, Spec, API_VERSION};

use super::client::{report, run_async, Server};
use crate::output::{exit, print_structured, Format};

/// The long `--help` text.
pub(crate) const ABOUT: &str = "Datapath rules: traffic addressed to other hosts that this mesh's nodes
redirect through a CNF, copy to a function, or drop.

  add RULE        create a rule from its compact form (see `trefoil datapath add --help`)
  list            every rule, in the order the datapath tries them
  delete NAME     remove a rule
  explain FLOW    which rule decides a connection, and why the others that match lose
  flows           the flows the node agents reported (--rule R, --watch)
  agent           program this node's kernel with its rules (see `trefoil datapath agent --help`)

Overlapping rules are allowed. The higher priority wins; then the more specific:
the longer destination prefix, then the longer source prefix, then the narrower
port range; then the name, in alphabetical order.";

const ADD_HELP: &str = "The compact form, the seed's own:

  [{] <destinations> <ports>[/tcp|/udp] : redirect|copy|drop [=> [label=value,...]] [}]

  destinations  addresses or networks, IPv4 or IPv6, comma-separated; * for any
  ports         80, 8000-8100, or a comma-separated list of those; * for any
  redirect      steer matching connections through the Workload/NetworkFunction/CNF with these labels
  copy          send a copy of each matching packet to it; the flow is untouched
  drop          drop matching packets (no `=> ...`)

Examples:
  trefoil datapath add '10.0.2.0/24 80 : redirect => app=http-proxy'
  trefoil datapath add '{fd00::5 8000-8100/udp : copy => [app=ids, tier=edge]}' --priority 5
  trefoil datapath add '10.0.2.5 * : drop' --from 10.0.1.2 --ttl 10m --name block-client

Without --name the rule is named after its action and a hash of its content, so
adding the same rule twice is refused (409) rather than doubled.

Exit codes: 0 created, 1 the control plane refused or failed (409: the name is taken),
2 the rule or an option is malformed (the error points at the column).";

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: DatapathCommand,
}

#[derive(clap::Subcommand)]
enum DatapathCommand {
    /// Create a rule from its compact form: '10.0.2.0/24 80 : redirect => app=http-proxy'.
    #[command(after_help = ADD_HELP)]
    Add(AddArgs),
    /// Every rule in the order the datapath tries them, in the compact form.
    #[command(after_help = "Columns: NAME, PRIORITY, RULE (the compact form), FROM (source blocks), NODE, EXPIRES (for rules with a TTL).
Exit codes: 0 ok, 1 the control plane failed or is unreachable.")]
    List(ListArgs),
    /// Delete a rule by name.
    #[command(after_help = "Exit codes: 0 deleted, 1 the control plane failed or is unreachable, 2 no such rule.")]
    Delete(DeleteArgs),
    /// Which rule decides a connection: `trefoil datapath explain 10.0.2.5:80/tcp --from 10.0.1.2`.
    #[command(after_help = "FLOW is the destination as ADDRESS:PORT, with /tcp (the default) or /udp:
  10.0.2.5:80   10.0.2.5:53/udp   [fd00::5]:443/tcp

The answer names the winning rule, then every other matching rule with the first
difference that ranks it lower. Without --from, rules that match only some sources
are listed apart, with the sources for which they would win. With --node, only
the rules that node's agent programs count (those without `node`, and its own).

Exit codes: 0 ok (whether or not a rule matches), 1 the control plane failed, 2 a malformed FLOW or --from.")]
    Explain(ExplainArgs),
    /// The flows the node agents reported: `trefoil datapath flows --rule web --watch`.
    #[command(after_help = super::datapath_flows::FLOWS_HELP)]
    Flows(super::datapath_flows::FlowsArgs),
    /// Run this node's agent: program the kernel with the rules for this node, kept in step with the control plane.
    #[command(after_help = super::datapath_agent::AGENT_HELP)]
    Agent(super::datapath_agent::AgentArgs),
}

#[derive(clap::Args)]
struct AddArgs {
    /// The rule in the compact form (quote it).
    rule: String,
    /// The rule's name; derived from its content when absent.
    #[arg(long)]
    name: Option<String>,
    /// Source addresses or networks, comma-separated (the compact form gives destinations).
    #[arg(long = "from", value_name = "CIDRS")]
    from: Option<String>,
    /// Higher wins where rules overlap.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// The node whose agent programs the rule; every node's when absent.
    #[arg(long)]
    node: Option<String>,
    /// Delete the rule this long after it is written: 30s, 10m, 1h.
    #[arg(long)]
    ttl: Option<Duration>,
    /// Record the CNF that asked for the rule (its origin).
    #[arg(long, value_name = "CNF")]
    origin_cnf: Option<String>,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(clap::Args)]
struct DeleteArgs {
    name: String,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The destination: ADDRESS:PORT[/tcp|/udp].
    flow: String,
    /// The connection's source address.
    #[arg(long = "from", value_name = "ADDRESS")]
    from: Option<String>,
    /// As the agent of this node sees it: rules pinned to other nodes left out.
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    server: Server,
    /// Output format (json/yaml: {flow, winner, shadowed, dependsOnSource}).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

pub(crate) fn run(args: Args) -> ExitCode {
    match args.command {
        DatapathCommand::Add(a) => add(a),
        DatapathCommand::List(a) => list(a),
        DatapathCommand::Delete(a) => delete(a),
        DatapathCommand::Explain(a) => explain(a),
        DatapathCommand::Flows(a) => super::datapath_flows::run(a),
        DatapathCommand::Agent(a) => super::datapath_agent::run(a),
    }
}

/// Prints a bad-input error and gives its exit code.
fn bad_input(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    exit::bad_input()
}

fn add(a: AddArgs) -> ExitCode {
    let mut spec = match compact::parse(&a.rule) {
        Ok(c) => c.into_spec(),
        Err(e) => return bad_input(e.pointed(&a.rule)),
    };
    if let Some(from) = &a.from {
        match from.split(',').map(|b| b.trim().parse::<Cidr>()).collect::<Result<Vec<_>, _>>() {
            Ok(blocks) => spec.traffic.source = blocks,
            Err(e) => return bad_input(format!("--from: {e}")),
        }
    }
    spec.priority = a.priority;
    spec.node = a.node.clone();
    spec.ttl = a.ttl;
    spec.origin = a.origin_cnf.clone().map(|cnf| Origin { cnf: Some(cnf), ..Origin::default() });
    let problems = spec.problems();
    if !problems.is_empty() {
        for (field, message) in problems {
            eprintln!("error: {field}: {message}");
        }
        return exit::bad_input();
    }
    let name = a.name.clone().unwrap_or_else(|| spec.derived_name());
    let resource = Resource {
        api_version: API_VERSION.to_string(),
        metadata: Metadata { name: name.clone(), ..Metadata::default() },
        spec: Spec::DatapathRule(spec.clone()),
    };
    run_async(async move {
        let client = a.server.client();
        let stored = match client.create(&resource).await {
            Ok(stored) => stored.unwrap_or(resource),
            Err(e) if e.status() == Some(409) => {
                eprintln!("error: DatapathRule/{name} already exists (this same rule, or the name is taken): `trefoil datapath delete {name}` first, or give another --name");
                return exit::failure();
            }
            Err(e) => return report(&a.server.url(), &e),
        };
        match a.output {
            Format::Table => println!("DatapathRule/{name} created: {}", compact::format(&spec)),
            format => print_structured(format, &stored),
        }
        // Accepted either way (the function may come later), but say so now.
        if spec.action.needs_target() {
            match selectable(&client).await {
                Ok(all) if datapath::relations::selected(&spec, &all).is_empty() => {
                    eprintln!("warning: no Workload, NetworkFunction or CNF has the labels {} yet", spec.to);
                }
                Ok(_) => {}
                Err(e) => eprintln!("warning: cannot check what {} selects: {e}", spec.to),
            }
        }
        exit::ok()
    })
}

async fn selectable(client: &Client) -> Result<Vec<Resource>, ApiError> {
    let mut all = Vec::new();
    for kind in ["Workload", "NetworkFunction", "CNF"] {
        all.extend(client.list(kind).await?.items);
    }
    Ok(all)
}

/// One line of `datapath list`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    name: String,
    priority: i32,
    rule: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    from: Vec<Cidr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<Origin>,
    /// Why no target of `to` resolves, when none does: node agents drop a
    /// redirect's traffic and send no copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    unresolved: Option<String>,
}

/// Why none of a rule's targets resolves (`targets::resolve`), if none does.
fn unresolved(spec: &DatapathRuleSpec, all: &[Resource]) -> Option<String> {
    let targets = datapath::targets::resolve(spec, all);
    let none = match spec.action {
        DatapathAction::Drop => false,
        DatapathAction::Redirect => targets.listeners.is_empty(),
        DatapathAction::Copy => targets.interfaces.is_empty(),
    };
    none.then(|| targets.problems.join("; "))
}

async fn fetch_rules(client: &Client) -> Result<Vec<Resource>, ApiError> {
    let mut all = client.list("DatapathRule").await?.items;
    all.extend(client.list("DatapathRuleStatus").await?.items);
    Ok(all)
}

/// The rules and what their targets are resolved from (`targets::resolve`).
async fn fetch_rules_and_targets(client: &Client) -> Result<Vec<Resource>, ApiError> {
    let mut all = fetch_rules(client).await?;
    all.extend(selectable(client).await?);
    all.extend(client.list("Listener").await?.items);
    Ok(all)
}

fn list(a: ListArgs) -> ExitCode {
    run_async(async move {
        let all = match fetch_rules_and_targets(&a.server.client()).await {
            Ok(all) => all,
            Err(e) => return report(&a.server.url(), &e),
        };
        let rules = Rule::all_in(&all);
        let rows: Vec<Row> = datapath::ordered(&rules)
            .into_iter()
            .map(|r| Row {
                name: r.name.to_string(),
                priority: r.spec.priority,
                rule: compact::format(r.spec),
                from: r.spec.traffic.source.clone(),
                node: r.spec.node.clone(),
                ttl: r.spec.ttl,
                expires_at_ms: datapath::relations::relations(&all, r.name, r.spec).expires_at_ms,
                origin: r.spec.origin.clone(),
                unresolved: unresolved(r.spec, &all),
            })
            .collect();
        if a.output != Format::Table {
            print_structured(a.output, &rows);
            return exit::ok();
        }
        println!("{:<24} {:>8}  {:<48} {:<18} {:<10} EXPIRES", "NAME", "PRIORITY", "RULE", "FROM", "NODE");
        for r in &rows {
            let from = if r.from.is_empty() { "*".to_string() } else { r.from.iter().map(Cidr::to_string).collect::<Vec<_>>().join(",") };
            let expires = match (r.expires_at_ms, r.ttl) {
                (Some(at), _) => crate::output::time_until(at),
                (None, Some(ttl)) => format!("{ttl} after written"),
                (None, None) => "-".to_string(),
            };
            println!("{:<24} {:>8}  {:<48} {from:<18} {:<10} {expires}", r.name, r.priority, r.rule, r.node.as_deref().unwrap_or("*"));
        }
        let unresolved: Vec<(&str, &str)> = rows.iter().filter_map(|r| Some((r.name.as_str(), r.unresolved.as_deref()?))).collect();
        if !unresolved.is_empty() {
            println!("not resolved (a redirect's traffic is dropped, a copy sends nothing; see `trefoil describe datapathrule NAME`):");
            for (name, why) in unresolved {
                println!("  {name}: {why}");
            }
        }
        exit::ok()
    })
}

fn delete(a: DeleteArgs) -> ExitCode {
    run_async(async move {
        match a.server.client().delete("DatapathRule", &a.name).await {
            Ok(deleted) => {
                match a.output {
                    Format::Table => println!("{} deleted", deleted.deleted),
                    format => print_structured(format, &deleted),
                }
                exit::ok()
            }
            Err(e) => report(&a.server.url(), &e),
        }
    })
}

/// `datapath explain -o json|yaml`.
#[derive(Serialize)]
struct Explained {
    flow: String,
    #[serde(flatten)]
    decision: Decision,
}

fn explain(a: ExplainArgs) -> ExitCode {
    let mut flow: Flow = match a.flow.parse() {
        Ok(f) => f,
        Err(e) => return bad_input(e),
    };
    if let Some(from) = &a.from {
        match from.parse::<IpAddr>() {
            Ok(ip) => flow.source = Some(ip.to_canonical()),
            Err(_) => return bad_input(format!("--from: {from:?} is not an IP address")),
        }
    }
    run_async(async move {
        let all = match fetch_rules(&a.server.client()).await {
            Ok(all) => all,
            Err(e) => return report(&a.server.url(), &e),
        };
        let mut rules = Rule::all_in(&all);
        if let Some(node) = &a.node {
            rules.retain(|r| r.spec.node.as_deref().is_none_or(|n| n == node));
        }
        let decision = datapath::explain(&rules, &flow);
        if a.output != Format::Table {
            print_structured(a.output, &Explained { flow: flow.to_string(), decision });
            return exit::ok();
        }
        print!("{}", explained_text(&flow, &decision, &rules));
        exit::ok()
    })
}

/// The human answer of `explain`.
fn explained_text(flow: &Flow, d: &Decision, rules: &[Rule<'_>]) -> String {
    let compact_of = |name: &str| rules.iter().find(|r| r.name == name).map_or_else(String::new, |r| compact::format(r.spec));
    let mut out = String::new();
    match &d.winner {
        None => out.push_str(&format!("{flow}: no rule matches; the traffic goes its own way\n")),
        Some(w) => {
            out.push_str(&format!("{flow}: {} by {} (priority {})\n", w.action.as_str(), w.rule, w.priority));
            out.push_str(&format!("  rule: {}\n", compact_of(&w.rule)));
        }
    }
    if !d.shadowed.is_empty() {
        out.push_str("also matched, and lost:\n");
        for v in &d.shadowed {
            out.push_str(&format!("  {} ({}): {}\n", v.rule, v.action.as_str(), v.why));
        }
    }
    if !d.depends_on_source.is_empty() {
        out.push_str("depends on the source (give --from):\n");
        for v in &d.depends_on_source {
            out.push_str(&format!("  {} ({}): {}\n", v.rule, v.action.as_str(), v.why));
        }
    }
    out
}
