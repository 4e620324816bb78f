//! `trefoil datapath flows`: the flows the node agents reported, from the
//! control plane (most recently active first), or each one as a report
//! brings it (`--watch`); and the one-line form of a flow that `trefoil
//! trace` prints next to a request's spans.

use std::process::ExitCode;

use trefoil_api::flows::{Flow, FlowEvent};
use trefoil_api::ApiError;

use super::client::{report, run_async, Server};
use crate::output::{exit, print_structured, Format};

pub(crate) const FLOWS_HELP: &str = "Each line is one direction of one flow a datapath rule matched, as the node's
agent last reported it (agents report every --flow-report-interval, 10s by
default): the node, the action and rule, sender -> receiver, protocol, packets
and bytes, and when its latest packet was seen. The control plane keeps each
node's 4096 most recent flows for 10 minutes. No flow records come from nodes
on the nftables fallback.

Exit codes: 0 ok, 1 the control plane failed or is unreachable, 2 a bad --rule or server address.";

#[derive(clap::Args)]
pub(crate) struct FlowsArgs {
    /// Only this rule's flows.
    #[arg(long)]
    rule: Option<String>,
    /// Keep printing flows as the agents report them (until interrupted).
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

pub(crate) fn run(a: FlowsArgs) -> ExitCode {
    if let Some(rule) =
        a.rule.as_deref().filter(|r| r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        eprintln!("error: --rule {rule:?} is not a rule name");
        return exit::bad_input();
    }
    run_async(async move {
        let client = a.server.client();
        if a.watch {
            return watch(&a, client).await;
        }
        let list = match client.flows(a.rule.as_deref()).await {
            Ok(list) => list,
            Err(e) => return fail(&a, &e),
        };
        if a.output != Format::Table {
            print_structured(a.output, &list);
            return exit::ok();
        }
        if list.items.is_empty() {
            println!("no flows reported (agents report every --flow-report-interval)");
            return exit::ok();
        }
        for flow in &list.items {
            println!("{:<16}  {}", flow.node, line(flow));
        }
        exit::ok()
    })
}

async fn watch(a: &FlowsArgs, client: trefoil_api::Client) -> ExitCode {
    let mut lines = match client.watch_flows(a.rule.as_deref()).await {
        Ok(lines) => lines,
        Err(e) => return fail(a, &e),
    };
    // On stderr, so that `-o json` stays JSON lines: from here on no report is missed.
    eprintln!(
        "watching the flows of {} as the agents report them",
        a.rule.as_deref().map_or("every rule".to_string(), |r| format!("rule {r}"))
    );
    while let Some(event) = lines.next().await {
        match (event, a.output) {
            (Ok(FlowEvent::Flow { flow }), Format::Table) => println!("{:<16}  {}", flow.node, line(&flow)),
            (Ok(FlowEvent::Lagged { missed }), Format::Table) => {
                eprintln!("warning: missed {missed} flow updates (this terminal fell behind)")
            }
            (Ok(event), _) => println!("{}", serde_json::to_string(&event).unwrap_or_default()),
            (Err(ApiError::Broken { .. }), _) => {
                eprintln!("error: the watch stream broke off");
                return exit::failure();
            }
            // A line this build cannot read (a newer server): skip it.
            (Err(_), _) => {}
        }
    }
    exit::ok()
}

fn fail(a: &FlowsArgs, e: &ApiError) -> ExitCode {
    report(&a.server.url(), e)
}

/// `redirect rule=web-in  10.77.0.1:40112 -> 10.77.0.2:80 tcp  14 pkts 3.1 KB`.
pub(crate) fn line(flow: &Flow) -> String {
    format!(
        "{} rule={}  {} -> {} {}  {} pkts {}",
        flow.action.as_str(),
        flow.rule_or_dash(),
        flow.src,
        flow.dst,
        flow.protocol.as_str(),
        flow.packets,
        bytes(flow.bytes)
    )
}

fn bytes(n: u64) -> String {
    let units = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use trefoil_model::spec::{DatapathAction, Protocol};

    use super::*;

    #[test]
    fn a_flow_reads_as_one_line() {
        let flow = Flow {
            node: "edge".into(),
            src: "10.77.0.1:40112".parse().unwrap(),
            dst: "10.77.0.2:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            rule: "web-in".into(),
            action: DatapathAction::Redirect,
            bytes: 3100,
            packets: 14,
            start_unix_nano: 1,
            end_unix_nano: 2,
        };
        assert_eq!(line(&flow), "redirect rule=web-in  10.77.0.1:40112 -> 10.77.0.2:80 tcp  14 pkts 3.1 KB");
        assert_eq!(
            line(&Flow { rule: String::new(), bytes: 999, ..flow }),
            "redirect rule=-  10.77.0.1:40112 -> 10.77.0.2:80 tcp  14 pkts 999 B"
        );
        assert_eq!(bytes(10_500_000), "10.5 MB");
    }
}
