//! `trefoil describe KIND NAME`: one resource and what relates to it.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use trefoil_api::{ApiError, Client, ProxyStatus};
use trefoil_model::datapath::relations::RuleRelations;
use trefoil_model::relations::{
    self, CnfRelations, EndpointView, FunctionRelations, Mesh, RouteRelations, ServiceRelations, WorkloadRelations,
};
use trefoil_model::resource::{kind_named, KINDS};
use trefoil_model::{Resource, Spec};

use crate::output::{current_thread_runtime, exit, print_structured, Format};

/// The long `--help` text.
pub(crate) const ABOUT: &str = "Show a resource and what relates to it:

  Service    its endpoints (static, and discovered ones ready or not), the Workloads serving it,
             the Routes that send to it, its TrafficPolicy and its effective AuthorizationPolicies
  Route      each backend and how many ready endpoints it has
  Proxy      its status as the control plane sees it (connected, snapshot versions, NACK)
  Workload   its replicas as discovered in Endpoints/<service>
  CNF        each step (function, mode, phase, the function's ready endpoints), the events
             it handles, and the Route rules that send traffic through it
  NetworkFunction  its service's ready endpoints and the CNF steps that use it
  DatapathRule     its compact form, what `to` selects, every rule it overlaps and which
             one wins where they meet (and why), and when its TTL runs out

KIND is any form the API accepts: Service, service or services.";

#[derive(clap::Args)]
#[command(after_help = "Exit codes: 0 ok, 1 the control plane failed or is unreachable, 2 unknown kind or no such resource.")]
pub(crate) struct Args {
    /// Resource kind: Service, Route, Proxy, Workload, ...
    kind: String,
    /// Resource name.
    name: String,
    #[command(flatten)]
    server: super::client::Server,
    /// Output format (json/yaml: {resource, related}).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// Why nothing was described.
#[derive(Debug, thiserror::Error)]
enum DescribeError {
    #[error("{0}/{1} not found")]
    NotFound(&'static str, String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

#[derive(Serialize)]
struct Described {
    /// The resource as stored; absent for a service only implied by Workloads or a proxy known only from its stream.
    resource: Option<Resource>,
    related: Related,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Related {
    Service(ServiceRelations),
    Route(RouteRelations),
    Proxy(ProxyRelated),
    Workload(WorkloadRelations),
    Cnf(CnfRelations),
    Function(FunctionRelations),
    Datapath(RuleRelations),
    Nothing {},
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyRelated {
    status: Option<ProxyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_error: Option<String>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let Some(kind) = kind_named(&args.kind) else {
        eprintln!("error: unknown kind {:?}; kinds: {}", args.kind, KINDS.join(", "));
        return exit::bad_input();
    };
    let Some(rt) = current_thread_runtime() else { return exit::failure() };
    let control = args.server.client().with_timeout(Duration::from_secs(5));
    match rt.block_on(describe(&control, kind, &args.name)) {
        Ok(d) => {
            match args.output {
                Format::Table => print_human(kind, &args.name, &d),
                format => print_structured(format, &d),
            }
            exit::ok()
        }
        Err(e @ DescribeError::NotFound(..)) => {
            eprintln!("error: {e}");
            exit::bad_input()
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::failure()
        }
    }
}

async fn describe(control: &Client, kind: &'static str, name: &str) -> Result<Described, DescribeError> {
    let resource = control.find(kind, name).await?;
    let mut related_resources = Vec::new();
    for kind in relations::reads(kind) {
        related_resources.extend(control.list(kind).await?.items);
    }
    let mesh = Mesh::new(&related_resources);
    let related = match (kind, resource.as_ref().map(|r| &r.spec)) {
        ("Service", _) => {
            let related = mesh.service(name);
            // A service implied by a Workload has no resource of its own but is still real.
            if resource.is_none() && related.workloads.is_empty() && related.endpoints.is_empty() {
                return Err(DescribeError::NotFound(kind, name.to_string()));
            }
            Related::Service(related)
        }
        ("Proxy", _) => {
            let related = match control.proxies().await {
                Ok(all) => ProxyRelated { status: all.items.into_iter().find(|p| p.name == name), status_error: None },
                Err(e) => ProxyRelated { status: None, status_error: Some(e.to_string()) },
            };
            if resource.is_none() && related.status.is_none() {
                return Err(DescribeError::NotFound(kind, name.to_string()));
            }
            Related::Proxy(related)
        }
        (_, None) => return Err(DescribeError::NotFound(kind, name.to_string())),
        (_, Some(Spec::Route(route))) => Related::Route(mesh.route(route)),
        (_, Some(Spec::Workload(workload))) => Related::Workload(mesh.workload(name, workload)),
        (_, Some(Spec::Cnf(cnf))) => Related::Cnf(mesh.cnf(name, cnf)),
        (_, Some(Spec::NetworkFunction(function))) => Related::Function(mesh.function(name, function)),
        (_, Some(Spec::DatapathRule(rule))) => {
            Related::Datapath(trefoil_model::datapath::relations::relations(&related_resources, name, rule))
        }
        _ => Related::Nothing {},
    };
    Ok(Described { resource, related })
}

fn print_human(kind: &str, name: &str, d: &Described) {
    match &d.resource {
        Some(r) => print_structured(Format::Yaml, r),
        None => println!("# {kind}/{name} has no resource of its own"),
    }
    println!("---");
    match &d.related {
        Related::Service(s) => {
            println!("Endpoints:");
            print_endpoints(&s.endpoints);
            println!("Workloads:");
            list_or_none(
                s.workloads.iter().map(|w| format!("{} (version {}): {}/{} replicas ready", w.name, w.version, w.ready, w.replicas)),
            );
            println!("Routes:");
            list_or_none(s.routes.iter().cloned());
            println!("TrafficPolicy:");
            list_or_none(s.traffic_policies.iter().cloned());
            println!("AuthorizationPolicies (deny first, then audit, then allow):");
            list_or_none(s.authorization_policies.iter().map(|p| {
                let only = p.workload.as_ref().map(|w| format!(", workload {w} only")).unwrap_or_default();
                format!("{} ({}, {} rule(s){only})", p.name, p.action.as_str(), p.rules)
            }));
            println!(
                "Default: {}",
                if s.default_deny { "deny (an allow policy applies: what no allow rule matches is refused)" } else { "allow" }
            );
        }
        Related::Route(r) => {
            println!("Backends:");
            list_or_none(r.backends.iter().map(|b| {
                let target = match &b.version {
                    Some(v) => format!("{} version {v}", b.service),
                    None => b.service.clone(),
                };
                let state = if b.ready_endpoints > 0 { "ok" } else { "NO READY ENDPOINTS" };
                format!("rule {}: {target} weight {}: {} ready endpoint(s) {state}", b.rule, b.weight, b.ready_endpoints)
            }));
        }
        Related::Proxy(p) => {
            println!("Status:");
            match (&p.status, &p.status_error) {
                (Some(s), _) => print_structured(Format::Yaml, s),
                (None, Some(e)) => println!("  unavailable: {e}"),
                (None, None) => println!("  not known to the control plane's config stream"),
            }
        }
        Related::Workload(w) => {
            println!("Replicas: {}/{} ready (service {})", w.ready, w.replicas, w.service);
            print_endpoints(&w.endpoints);
        }
        Related::Cnf(c) => {
            println!("Steps:");
            list_or_none(c.steps.iter().map(|s| {
                let state = match (&s.service, s.ready_endpoints) {
                    (None, _) => "NO SUCH NetworkFunction".to_string(),
                    (Some(service), 0) => format!("service {service}: NO READY ENDPOINTS"),
                    (Some(service), n) => format!("service {service}: {n} ready endpoint(s)"),
                };
                format!("{}: {} ({} on the {} phase), {state}", s.step, s.function, s.mode, s.phase)
            }));
            println!("Handlers:");
            list_or_none(c.handlers.iter().cloned());
            println!("Route rules:");
            list_or_none(c.routes.iter().cloned());
        }
        Related::Function(f) => {
            let state = if f.ready_endpoints > 0 { "" } else { " NO READY ENDPOINTS" };
            println!("Service: {} ({} ready endpoint(s)){state}", f.service, f.ready_endpoints);
            println!("CNF steps:");
            list_or_none(f.steps.iter().cloned());
        }
        Related::Datapath(d) => {
            println!("Rule: {}", d.compact);
            if d.action.needs_target() {
                println!("Sends to:");
                match d.targets.is_empty() {
                    true => println!("  (nothing has these labels yet)"),
                    false => list_or_none(d.targets.iter().cloned()),
                }
                if !d.unresolved.is_empty() {
                    // Said here because node agents act on it: closed for redirect, open for copy.
                    println!("Not resolved (a redirect left with no transparent listener drops its traffic; a copy with no interface sends none):");
                    list_or_none(d.unresolved.iter().cloned());
                }
            }
            println!("Overlaps:");
            list_or_none(d.overlaps.iter().map(|o| {
                let outcome = if o.wins { "wins over" } else { "loses to" };
                format!("{outcome} {} ({}): {}", o.rule, o.action.as_str(), o.why)
            }));
            if let Some(at) = d.expires_at_ms {
                println!("Expires: {}", crate::output::time_until(at));
            }
        }
        Related::Nothing {} => println!("(nothing related)"),
    }
}

fn print_endpoints(endpoints: &[EndpointView]) {
    list_or_none(
        endpoints
            .iter()
            .map(|e| format!("{} version {} {} ({})", e.address, e.version, if e.ready { "ready" } else { "NOT READY" }, e.source)),
    );
}

fn list_or_none(lines: impl Iterator<Item = String>) {
    let mut any = false;
    for l in lines {
        println!("  {l}");
        any = true;
    }
    if !any {
        println!("  (none)");
    }
}
