//! `trefoil trace`: the control plane's trace collector from the command
//! line: recent traces, one request's call tree, or spans as they arrive.

use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::commands::client::{call, client, run_async, server_error, Server};
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
    let (status, body) =
        match call(&client(), &args.server.server, http::Method::GET, &format!("/api/v1/traces?limit={}", args.limit), None).await {
            Ok(r) => r,
            Err(f) => return fail(&f.message, f.code),
        };
    if status != 200 {
        return fail(&server_error(status, &body), exit::failure());
    }
    if args.output != Format::Table {
        print_structured(args.output, &body);
        return exit::ok();
    }
    let items = body["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no traces yet (proxies send spans about a second after a request)");
        return exit::ok();
    }
    println!("{:<32}  {:>5}  {:>10}  {:<6}  ROOT", "TRACE", "SPANS", "DURATION", "STATUS");
    for t in items {
        let root = format!("{}: {}", t["service"].as_str().unwrap_or(""), t["root"].as_str().unwrap_or(""));
        println!(
            "{:<32}  {:>5}  {:>8.2}ms  {:<6}  {root}",
            t["traceId"].as_str().unwrap_or(""),
            t["spans"].as_u64().unwrap_or(0),
            t["durationMs"].as_f64().unwrap_or(0.0),
            t["status"].as_str().unwrap_or("")
        );
    }
    exit::ok()
}

async fn show(args: &Args, id: &str) -> ExitCode {
    let (status, body) =
        match call(&client(), &args.server.server, http::Method::GET, &format!("/api/v1/traces/{}", id.to_ascii_lowercase()), None).await {
            Ok(r) => r,
            Err(f) => return fail(&f.message, f.code),
        };
    match status {
        200 => {}
        404 => {
            return fail(
                &format!(
                    "no trace {id} in the collector (not seen, evicted, or its spans are not exported yet: they go out within a second)"
                ),
                exit::bad_input(),
            )
        }
        _ => return fail(&server_error(status, &body), exit::failure()),
    }
    if args.output != Format::Table {
        print_structured(args.output, &body);
        return exit::ok();
    }
    let spans = body["spans"].as_array().cloned().unwrap_or_default();
    println!("trace {id}: {} spans", spans.len());
    println!("{:>11} {:>11}  CALL", "OFFSET", "DURATION");
    for line in trace_tree::render(&spans) {
        println!("{line}");
    }
    exit::ok()
}

/// Prints each span of the ndjson stream as it arrives; ends when the server does.
async fn follow(args: &Args) -> ExitCode {
    let path = match &args.trace_id {
        Some(id) => format!("/api/v1/traces/{}?follow=true", id.to_ascii_lowercase()),
        None => "/api/v1/watch/traces".to_string(),
    };
    let url = format!("{}{path}", args.server.server.trim_end_matches('/'));
    let req = match http::Request::get(&url).body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return fail(&format!("bad server address {url}: {e}"), exit::bad_input()),
    };
    let resp = match client().request(req).await {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot reach the control plane at {}: {e} (see --server)", args.server.server), exit::failure()),
    };
    if !resp.status().is_success() {
        return fail(&format!("{} from {url}", resp.status()), exit::failure());
    }
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return fail("the follow stream broke off", exit::failure()) };
        let Some(data) = frame.data_ref() else { continue };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            print_line(args.output, &line);
        }
    }
    exit::ok()
}

fn print_line(format: Format, line: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Value>(line) else { return };
    match (format, event["type"].as_str()) {
        (Format::Table, Some("SPAN")) => {
            let span = &event["span"];
            let ms = |k: &str| span[k].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            let duration = ms("endUnixNano").saturating_sub(ms("startUnixNano")) as f64 / 1e6;
            println!("{}  {:>9.3}ms  {}", span["traceId"].as_str().unwrap_or(""), duration, trace_tree::label(span));
        }
        (Format::Table, Some("LAGGED")) => eprintln!("warning: missed {} spans (this terminal fell behind)", event["missed"]),
        (Format::Table, _) => {}
        _ => println!("{}", serde_json::to_string(&event).unwrap_or_default()),
    }
}

fn fail(message: &str, code: ExitCode) -> ExitCode {
    eprintln!("error: {message}");
    code
}
