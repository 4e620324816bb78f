//! `trefoil trace`: the control plane's trace collector from the command
//! line: recent traces, one request's call tree, or spans as they arrive.

use std::process::ExitCode;

use trefoil_api::traces::FollowEvent;
use trefoil_api::ApiError;

use crate::commands::client::{failure_text, run_async, Server};
use crate::commands::trace_tree;
use crate::output::{exit, print_structured, Format};

pub(crate) const ABOUT: &str = "Show what the control plane's trace collector holds.

Every proxy exports a span per request it handles (and one per chain step:
each call-out or tap to a network function, with its verdict and events;
one per event-handler run, with its result and tags; one per upstream
attempt, retries included) to the control plane, unless its Proxy sets `tracing` itself. All spans of a
request share its trace id: the one in the response header
x-trefoil-trace-id, in the access log's trace_id, and in the `traceparent`
a client sends.

  trefoil trace                 recent traces, newest first
  trefoil trace TRACE_ID        the request's calls as a tree in time order:
                                offset from the first span, duration, then
                                the hop (proxy, direction, request, status,
                                service and upstream), chain step,
                                handler run or upstream attempt
                                then, for a request that came through a
                                datapath redirect, its connection's flows
                                (same 5-tuple, overlapping time):
                                datapath  redirect rule=R  CLIENT -> DEST tcp  N pkts BYTES
  trefoil trace --follow        spans of all requests as they arrive
  trefoil trace ID --follow     that trace's spans so far, then new ones

The collector keeps recent spans in memory only (bounded; the oldest traces
go first). Exit 2 for a trace id it does not hold.";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A trace id: 32 hex digits, as in x-trefoil-trace-id or `traceparent`.
    trace_id: Option<String>,
    /// Keep printing spans as proxies export them (until interrupted).
    #[arg(long)]
    follow: bool,
    /// How many recent traces to list.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn run(args: Args) -> ExitCode {
    if let Some(id) = args.trace_id.as_deref().filter(|id| !valid_id(id)) {
        eprintln!("error: {id:?} is not a trace id (32 hex digits)");
        return exit::bad_input();
    }
    run_async(async move {
        match (&args.trace_id, args.follow) {
            (_, true) => follow(&args).await,
            (Some(id), false) => show(&args, id).await,
            (None, false) => list(&args).await,
        }
    })
}

async fn list(args: &Args) -> ExitCode {
    let list = match args.server.client().traces(args.limit).await {
        Ok(list) => list,
        Err(e) => return fail(&failure_text(&args.server.url(), &e), code_of(&e)),
    };
    if args.output != Format::Table {
        print_structured(args.output, &list);
        return exit::ok();
    }
    if list.items.is_empty() {
        println!("no traces yet (proxies send spans about a second after a request)");
        return exit::ok();
    }
    println!("{:<32}  {:>5}  {:>10}  {:<6}  ROOT", "TRACE", "SPANS", "DURATION", "STATUS");
    for t in &list.items {
        let root = format!("{}: {}", t.service, t.root);
        println!("{:<32}  {:>5}  {:>8.2}ms  {:<6}  {root}", t.trace_id, t.spans, t.duration_ms, t.status.as_str());
    }
    exit::ok()
}

/// 2 for a server address that is not a URL, else 1.
fn code_of(e: &ApiError) -> ExitCode {
    match e {
        ApiError::InvalidUrl { .. } => exit::bad_input(),
        _ => exit::failure(),
    }
}

async fn show(args: &Args, id: &str) -> ExitCode {
    let trace = match args.server.client().trace(id).await {
        Ok(trace) => trace,
        Err(e) if e.is_not_found() => {
            return fail(
                &format!(
                    "no trace {id} in the collector (not seen, evicted, or its spans are not exported yet: they go out within a second)"
                ),
                exit::bad_input(),
            )
        }
        Err(e) => return fail(&failure_text(&args.server.url(), &e), code_of(&e)),
    };
    if args.output != Format::Table {
        print_structured(args.output, &trace);
        return exit::ok();
    }
    println!("trace {id}: {} spans", trace.spans.len());
    println!("{:>11} {:>11}  CALL", "OFFSET", "DURATION");
    for line in trace_tree::render(&trace.spans) {
        println!("{line}");
    }
    // The connections' packets, as the node agents recorded them.
    for flow in &trace.flows {
        println!("datapath  {}  on {}", super::datapath_flows::line(flow), flow.node);
    }
    exit::ok()
}

/// Prints each span of the stream as it arrives; ends when the server does.
async fn follow(args: &Args) -> ExitCode {
    let server = &args.server.url();
    let mut lines = match args.server.client().follow_traces(args.trace_id.as_deref()).await {
        Ok(lines) => lines,
        Err(ApiError::Unreachable { reason, .. }) => {
            return fail(&format!("cannot reach the control plane at {server}: {reason} (see --server)"), exit::failure())
        }
        Err(ApiError::InvalidUrl { url, reason }) => return fail(&format!("bad server address {url}: {reason}"), exit::bad_input()),
        Err(e) => return fail(&e.to_string(), exit::failure()),
    };
    while let Some(line) = lines.next().await {
        match line {
            Ok(event) => print_line(args.output, &event),
            Err(ApiError::Broken { .. }) => return fail("the follow stream broke off", exit::failure()),
            // A line this build cannot read: skip it, as a newer server may send kinds this one does not know.
            Err(_) => {}
        }
    }
    exit::ok()
}

fn print_line(format: Format, event: &FollowEvent) {
    match (format, event) {
        (Format::Table, FollowEvent::Span { span }) => {
            println!("{}  {:>9.3}ms  {}", span.trace_id, span.duration_ms(), trace_tree::label(span));
        }
        (Format::Table, FollowEvent::Lagged { missed }) => eprintln!("warning: missed {missed} spans (this terminal fell behind)"),
        // Through a JSON value: its keys in the order the lines always had.
        _ => println!("{}", serde_json::to_value(event).map(|v| v.to_string()).unwrap_or_default()),
    }
}

fn fail(message: &str, code: ExitCode) -> ExitCode {
    eprintln!("error: {message}");
    code
}
