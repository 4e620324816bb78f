//! `trefoil apply`, `get` and `delete`: the control plane's REST API from
//! the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use trefoil_api::{ApiError, Client, ProxyStatus};
use trefoil_model::{ResourceVersion, Spec};

use super::config::{self, Asked, ConfigFile, Target};
use crate::output::{current_thread_runtime, exit, print_structured, Format};

/// Where the control plane's API is, and the token to show it (see `trefoil config --help`).
#[derive(clap::Args)]
pub(crate) struct Server {
    /// Control plane REST API [default: the current context's, else http://127.0.0.1:7070].
    #[arg(long = "server", env = "TREFOIL_SERVER")]
    server_flag: Option<String>,
    /// Bearer token [default: the context's for that server].
    #[arg(long, env = "TREFOIL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bearer token, e.g. a control plane's `<data>/admin.token`.
    #[arg(long, env = "TREFOIL_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// A context of the config file instead of its current one.
    #[arg(long)]
    context: Option<String>,
}

#[derive(clap::Args)]
#[command(after_help = "With --wait, apply returns once every proxy (and node agent) whose snapshot depends on an \
applied object serves its new resourceVersion (its `status.applied`: acknowledged == needed), printing progress on a \
terminal. Exit codes: 0 applied everywhere, 1 a proxy refused it (NACK: the proxy and its reason are printed) or \
the control plane failed, 2 bad input, 3 --timeout passed first. With -o json|yaml the final status of each object \
is in its `applied` field.")]
pub(crate) struct ApplyArgs {
    /// A YAML file, or a directory of *.yaml / *.yml files.
    #[arg(short = 'f', long = "file")]
    path: PathBuf,
    /// Wait until every proxy that needs an applied object acknowledges it, or one refuses it.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (exit 3 after it).
    #[arg(long, value_parser = super::proxy::parse_duration, default_value = "30s", value_name = "DURATION", requires = "wait")]
    timeout: std::time::Duration,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(clap::Args)]
#[command(after_help = "`trefoil get proxies` shows the proxies as the control plane sees them: connected or not, \
the snapshot version each acked and the latest compiled for it, and the last rejection (NACK) with its error. \
Node agents (`trefoil datapath agent`) are among them as agent/NODE: the revision of the datapath table each \
programmed, and why the kernel refused one. `trefoil get Proxy` lists the Proxy resources themselves.")]
pub(crate) struct GetArgs {
    /// Resource kind: Route, routes, service, ...; `proxies` for the proxies'
    /// status; `controlplanes` for the replica --server reaches and the leader.
    kind: String,
    /// One resource; all of the kind when absent.
    name: Option<String>,
    /// With `events`: the audit log (every write through the API: who, what,
    /// resourceVersion before and after) instead of the controllers' events. Admin only.
    #[arg(long)]
    audit: bool,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(clap::Args)]
pub(crate) struct DeleteArgs {
    kind: String,
    name: String,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

impl Server {
    /// The server and token this command uses. A config file that cannot be
    /// read is said on stderr, and the command goes on with the flags alone
    /// (the server's 401 then says a token is missing).
    fn target(&self) -> Target {
        let asked = Asked {
            server: self.server_flag.as_deref(),
            token: self.token.as_deref(),
            token_file: self.token_file.as_deref(),
            context: self.context.as_deref(),
        };
        let file = config::path().map_or_else(|| Ok(ConfigFile::default()), |p| config::load(&p));
        match file.and_then(|f| config::resolve(&asked, &f)) {
            Ok(target) => target,
            Err(e) => {
                eprintln!("warning: {e}");
                Target { server: asked.server.unwrap_or(config::DEFAULT_SERVER).to_string(), token: asked.token.map(str::to_string) }
            }
        }
    }

    /// The API's URL.
    pub(crate) fn url(&self) -> String {
        self.target().server
    }

    /// The bearer token this command presents, if any.
    pub(crate) fn token(&self) -> Option<String> {
        self.target().token
    }

    /// The one API client, for this command's server and token.
    pub(crate) fn client(&self) -> Client {
        let target = self.target();
        Client::new(target.server).with_token(target.token.as_deref())
    }
}

/// What the resource commands say when a call fails.
pub(crate) fn failure_text(server: &str, e: &ApiError) -> String {
    match e {
        ApiError::Unreachable { reason, .. } => {
            format!("cannot reach the control plane at {server}: {reason} (is `trefoil control` running? see --server)")
        }
        ApiError::InvalidUrl { url, reason } => format!("bad request to {url}: {reason}"),
        ApiError::Status { status, body, .. } => format!("{status}: {}", body.with_locations()),
        other => other.to_string(),
    }
}

/// Prints a failed call; the exit code: 2 when the user named something
/// that is not there (a 404) or gave a server address that is not a URL, else 1.
pub(crate) fn report(server: &str, e: &ApiError) -> ExitCode {
    eprintln!("error: {}", failure_text(server, e));
    match e {
        ApiError::InvalidUrl { .. } => exit::bad_input(),
        e if e.is_not_found() => exit::bad_input(),
        _ => exit::failure(),
    }
}

pub(crate) fn run_async<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match current_thread_runtime() {
        Some(rt) => rt.block_on(f),
        None => exit::failure(),
    }
}

#[derive(Serialize)]
struct Applied {
    resource: String,
    result: String,
    #[serde(rename = "resourceVersion", skip_serializing_if = "Option::is_none")]
    resource_version: Option<ResourceVersion>,
    /// With --wait: the object's `status.applied` when the wait ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<trefoil_api::Applied>,
}

/// How often `apply --wait` reads the objects' status.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// `status.applied` of a resource as the API returned it.
fn applied_of(value: &serde_json::Value) -> Option<trefoil_api::Applied> {
    serde_json::from_value(value.get("status")?.get("applied")?.clone()).ok()
}

/// Where `apply --wait` ended.
enum Waited {
    Everywhere,
    Refused,
    TimedOut,
}

/// Polls the status of every written object until each is acknowledged by
/// every proxy that needs it (at its written version or newer), one is
/// refused, or `timeout` passes. Progress goes to stderr on a terminal.
async fn wait_applied(client: &Client, server: &str, results: &mut [Applied], timeout: std::time::Duration) -> Result<Waited, ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut said: Vec<Option<(u64, u64)>> = vec![None; results.len()];
    loop {
        let mut pending = false;
        for (i, r) in results.iter_mut().enumerate() {
            let Some(written) = r.resource_version else { continue };
            let (kind, name) = r.resource.split_once('/').unwrap_or((&r.resource, ""));
            let value = match client.get_value(kind, name).await {
                Ok(v) => v,
                // Deleted since: nothing is left to apply.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(report(server, &e)),
            };
            let current = value["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<ResourceVersion>().ok());
            let Some(applied) = applied_of(&value) else {
                eprintln!("error: the control plane at {server} does not report status.applied (an older version?); cannot --wait");
                return Err(exit::failure());
            };
            // A newer write by someone else counts: its status covers ours.
            let done = applied.complete() && current.is_some_and(|c| c >= written);
            if progress && said[i] != Some((applied.acknowledged, applied.needed)) {
                eprintln!("{}: {}/{} acknowledged", r.resource, applied.acknowledged, applied.needed);
                said[i] = Some((applied.acknowledged, applied.needed));
            }
            pending |= !done;
            let refused = !applied.nacks.is_empty();
            r.applied = Some(applied);
            if refused {
                return Ok(Waited::Refused);
            }
        }
        if !pending {
            return Ok(Waited::Everywhere);
        }
        if tokio::time::Instant::now() + WAIT_POLL > deadline {
            return Ok(Waited::TimedOut);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

pub(crate) fn apply(args: ApplyArgs) -> ExitCode {
    // Check locally first: errors point into the user's own files, all of them at once.
    let loaded = trefoil_model::load_all_path(&args.path);
    let problems = trefoil_model::check_all(&loaded, false);
    let sources = match problems.is_empty() {
        true => loaded.resources,
        false => {
            let d = trefoil_model::Diagnostics(problems);
            for e in &d.0 {
                eprintln!("{e}");
            }
            eprintln!("nothing applied: {} error(s) in {}", d.0.len(), args.path.display());
            return exit::bad_input();
        }
    };
    run_async(async move {
        let client = args.server.client();
        let mut results = Vec::new();
        let mut code = exit::ok();
        for s in &sources {
            let r = &s.resource;
            let id = format!("{}/{}", r.kind(), r.name());
            let (result, rv) = match client.apply(r).await {
                Ok(written) => ((if written.created { "created" } else { "configured" }).to_string(), written.resource_version()),
                // The server refused this one: say why and go on with the rest.
                Err(e @ ApiError::Status { status, .. }) => {
                    code = if status == 409 || status >= 500 { exit::failure() } else { exit::bad_input() };
                    (format!("failed: {}", failure_text(&args.server.url(), &e)), None)
                }
                Err(e) => return report(&args.server.url(), &e),
            };
            if args.output == Format::Table {
                println!("{id} {result}");
            }
            results.push(Applied { resource: id, result, resource_version: rv, applied: None });
        }
        if args.wait && code == exit::ok() {
            code = match wait_applied(&client, &args.server.url(), &mut results, args.timeout).await {
                Err(code) => return code,
                Ok(Waited::Everywhere) => {
                    if args.output == Format::Table {
                        for r in &results {
                            if let Some(a) = &r.applied {
                                println!("{}: applied {}/{}", r.resource, a.acknowledged, a.needed);
                            }
                        }
                    }
                    exit::ok()
                }
                Ok(Waited::Refused) => {
                    for r in &results {
                        for n in r.applied.iter().flat_map(|a| &a.nacks) {
                            let reason = n.reason.lines().collect::<Vec<_>>().join("; ");
                            eprintln!("error: {} refused by {} (snapshot {}): {reason}", r.resource, n.proxy, n.revision);
                        }
                    }
                    exit::failure()
                }
                Ok(Waited::TimedOut) => {
                    for r in results.iter().filter(|r| r.applied.as_ref().is_some_and(|a| !a.complete())) {
                        let a = r.applied.as_ref().map_or((0, 0), |a| (a.acknowledged, a.needed));
                        eprintln!("error: {}: {}/{} acknowledged after {}", r.resource, a.0, a.1, humantime::format_duration(args.timeout));
                    }
                    exit::timed_out()
                }
            };
        }
        if args.output != Format::Table {
            print_structured(args.output, &results);
        }
        code
    })
}

/// `proxies` (lower case, no name) is the status view; any other spelling of the kind lists Proxy resources.
const PROXY_STATUS: &str = "proxies";
/// The control plane's own status view: no resource kind is spelled so.
const CONTROL_PLANES: &str = "controlplanes";

pub(crate) fn get(args: GetArgs) -> ExitCode {
    if args.kind == PROXY_STATUS && args.name.is_none() {
        return get_proxy_status(args);
    }
    if args.kind == CONTROL_PLANES && args.name.is_none() {
        return get_control_planes(args);
    }
    if args.audit {
        return get_audit(args);
    }
    run_async(async move {
        let (server, client) = (&args.server.url(), args.server.client());
        let values = match &args.name {
            Some(name) => match client.get_value(&args.kind, name).await {
                Ok(r) if args.output == Format::Table => vec![r],
                Ok(r) => return printed(args.output, &r),
                Err(e) => return report(server, &e),
            },
            None => match client.list_values(&args.kind).await {
                Ok(list) if args.output == Format::Table => list.items,
                Ok(list) => return printed(args.output, &list),
                Err(e) => return report(server, &e),
            },
        };
        let mut items = Vec::with_capacity(values.len());
        for v in &values {
            match serde_json::from_value::<trefoil_model::Resource>(v.clone()) {
                Ok(r) => items.push((r, applied_of(v))),
                Err(e) => {
                    eprintln!("error: the control plane at {server} answered with a resource this build cannot read: {e}");
                    return exit::failure();
                }
            }
        }
        if items.first().is_some_and(|(i, _)| matches!(i.spec, Spec::Event(_))) {
            let events: Vec<_> = items.into_iter().map(|(r, _)| r).collect();
            crate::commands::rollout::print_events(&events);
            return exit::ok();
        }
        println!("{:<16} {:<32} {:>8} {:>10} {:>8}", "KIND", "NAME", "VERSION", "GENERATION", "APPLIED");
        for (item, applied) in items {
            let m = &item.metadata;
            let generation = m.generation.map_or_else(|| "null".to_string(), |g| g.to_string());
            println!(
                "{:<16} {:<32} {:>8} {generation:>10} {:>8}",
                item.kind(),
                m.name,
                m.resource_version.as_deref().unwrap_or(""),
                applied_text(applied.as_ref())
            );
        }
        exit::ok()
    })
}

fn printed<T: Serialize>(format: Format, value: &T) -> ExitCode {
    print_structured(format, value);
    exit::ok()
}

pub(crate) fn delete(args: DeleteArgs) -> ExitCode {
    run_async(async move {
        match args.server.client().delete(&args.kind, &args.name).await {
            Err(e) => report(&args.server.url(), &e),
            Ok(deleted) => {
                match args.output {
                    Format::Table => println!("{} deleted", deleted.deleted),
                    format => print_structured(format, &deleted),
                }
                exit::ok()
            }
        }
    })
}

/// `trefoil get proxies`: one line per proxy, or the items with `-o json|yaml`.
fn get_proxy_status(args: GetArgs) -> ExitCode {
    run_async(async move {
        let items = match args.server.client().proxies().await {
            Ok(list) => list.items,
            Err(e) => return report(&args.server.url(), &e),
        };
        if args.output != Format::Table {
            return printed(args.output, &items);
        }
        println!("{:<24} {:<9} {:>8} {:>8} {:>5} {:>10}  NACK", "NAME", "CONNECTED", "ACKED", "LATEST", "LAG", "SUBSCRIBED");
        for p in &items {
            let ProxyStatus { name, connected, acked_version, latest_version, nack, lag, subscribed, .. } = p;
            let (lag, subscribed) = (count_text(*lag), count_text(*subscribed));
            let nack = match nack {
                // The first line of the error is the one that says what; the rest is in -o json.
                Some(n) => format!("version {}: {}", n.version, n.error.lines().next().unwrap_or("")),
                None => "-".to_string(),
            };
            let connected = if *connected { "yes" } else { "no" };
            println!(
                "{name:<24} {connected:<9} {:>8} {:>8} {lag:>5} {subscribed:>10}  {nack}",
                version_text(*acked_version),
                version_text(*latest_version)
            );
        }
        exit::ok()
    })
}

/// `trefoil get controlplanes`: the replica --server reaches, its store and
/// the leader; one line, or the object with `-o json|yaml`.
fn get_control_planes(args: GetArgs) -> ExitCode {
    run_async(async move {
        let status = match args.server.client().control_plane().await {
            Ok(status) => status,
            Err(e) => return report(&args.server.url(), &e),
        };
        if args.output != Format::Table {
            return printed(args.output, &status);
        }
        println!("{:<24} {:<7} {:<24} STORE", "NAME", "LEADER", "LEADER NAME");
        let leads = if status.is_leader { "yes" } else { "no" };
        println!("{:<24} {leads:<7} {:<24} {}", status.name, status.leader.as_deref().unwrap_or("(electing)"), status.store);
        exit::ok()
    })
}

/// `trefoil get events --audit`: the audit log, oldest first.
fn get_audit(args: GetArgs) -> ExitCode {
    if trefoil_model::resource::kind_named(&args.kind) != Some("Event") || args.name.is_some() {
        eprintln!("error: --audit goes with `get events` (no name)");
        return exit::bad_input();
    }
    run_async(async move {
        let items = match args.server.client().audit().await {
            Ok(list) => list.items,
            Err(e) => return report(&args.server.url(), &e),
        };
        if args.output != Format::Table {
            return printed(args.output, &items);
        }
        println!(
            "{:>6} {:<24} {:<18} {:<7} {:<13} {:<32} {:>7} {:>7}",
            "SEQ", "TIME", "TOKEN", "ROLE", "VERB", "RESOURCE", "BEFORE", "AFTER"
        );
        for e in &items {
            let time = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.time_ms));
            println!(
                "{:>6} {:<24} {:<18} {:<7} {:<13} {:<32} {:>7} {:>7}",
                e.seq,
                time.to_string(),
                e.token_id,
                e.role.as_str(),
                e.verb,
                e.resource,
                version_text(e.before),
                version_text(e.after)
            );
        }
        exit::ok()
    })
}

/// The APPLIED column: `acknowledged/needed`, `-` when no proxy needs it
/// (or the server does not say), with `!` when a proxy refused it.
fn applied_text(applied: Option<&trefoil_api::Applied>) -> String {
    match applied {
        Some(a) if a.needed > 0 => format!("{}/{}{}", a.acknowledged, a.needed, if a.nacks.is_empty() { "" } else { "!" }),
        _ => "-".to_string(),
    }
}

/// A count for a table: `-` when there is none.
fn count_text(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// A snapshot version for a table: `-` when there is none.
pub(crate) fn version_text(v: Option<ResourceVersion>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}
