//! `trefoil describe KIND NAME`: one resource and what relates to it.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use trefoil_metrics::fetch::{FetchError, Fetcher};
use trefoil_model::resource::KINDS;
use trefoil_model::spec::{CnfSpec, EndpointsSpec, RouteSpec, WorkloadSpec};
use trefoil_model::{Resource, Spec};

use crate::observe::control_plane::{ControlPlane, ProxyStatus};
use crate::output::{current_thread_runtime, exit, print_structured, Format};

/// The long `--help` text.
pub(crate) const ABOUT: &str = "Show a resource and what relates to it:

  Service    its endpoints (static, and discovered ones ready or not), the Workloads serving it,
             the Routes that send to it and its TrafficPolicy
  Route      each backend and how many ready endpoints it has
  Proxy      its status as the control plane sees it (connected, snapshot versions, NACK)
  Workload   its replicas as discovered in Endpoints/<service>
  CNF        each step (function, mode, phase, the function's ready endpoints), the events
             it handles, and the Route rules that send traffic through it
  NetworkFunction  its service's ready endpoints and the CNF steps that use it

KIND is any form the API accepts: Service, service or services.";

#[derive(clap::Args)]
#[command(after_help = "Exit codes: 0 ok, 1 the control plane failed or is unreachable, 2 unknown kind or no such resource.")]
pub(crate) struct Args {
    /// Resource kind: Service, Route, Proxy, Workload, ...
    kind: String,
    /// Resource name.
    name: String,
    /// Control plane REST API.
    #[arg(long, env = "TREFOIL_SERVER", default_value = "http://127.0.0.1:7070")]
    server: String,
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
    Fetch(#[from] FetchError),
}

#[derive(Serialize)]
struct Described {
    /// The resource as stored; absent for a service only implied by Workloads or a proxy known only from its stream.
    resource: Option<Value>,
    related: Related,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Related {
    Service(ServiceRelated),
    Route(RouteRelated),
    Proxy(ProxyRelated),
    Workload(WorkloadRelated),
    Cnf(CnfRelated),
    Function(FunctionRelated),
    Nothing {},
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointView {
    address: String,
    version: String,
    ready: bool,
    /// `static` (declared on the Service) or the workload replica it belongs to.
    source: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadView {
    name: String,
    version: String,
    replicas: u32,
    ready: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceRelated {
    endpoints: Vec<EndpointView>,
    workloads: Vec<WorkloadView>,
    routes: Vec<String>,
    traffic_policies: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackendView {
    rule: usize,
    service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    weight: u32,
    ready_endpoints: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteRelated {
    backends: Vec<BackendView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyRelated {
    status: Option<ProxyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadRelated {
    service: String,
    replicas: u32,
    ready: usize,
    endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StepView {
    step: usize,
    function: String,
    mode: String,
    phase: String,
    /// The function's Service; absent when no NetworkFunction has that name.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    ready_endpoints: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CnfRelated {
    steps: Vec<StepView>,
    /// Events with a handler.
    handlers: Vec<String>,
    /// `route` rule `n` names the CNF: `route#n`.
    routes: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionRelated {
    service: String,
    ready_endpoints: usize,
    /// `cnf#step` for each chain step that runs the function.
    steps: Vec<String>,
}

/// The canonical kind for what the user typed, with the API's rules: `Route`, `route`, `routes`.
fn canonical_kind(typed: &str) -> Option<&'static str> {
    let lower = typed.to_ascii_lowercase();
    let singular = lower
        .strip_suffix("ies")
        .map(|s| format!("{s}y"))
        .or_else(|| lower.strip_suffix('s').map(str::to_string))
        .unwrap_or_else(|| lower.clone());
    KINDS.iter().find(|k| k.to_ascii_lowercase() == lower || k.to_ascii_lowercase() == singular).copied()
}

pub(crate) fn run(args: Args) -> ExitCode {
    let Some(kind) = canonical_kind(&args.kind) else {
        eprintln!("error: unknown kind {:?}; kinds: {}", args.kind, KINDS.join(", "));
        return exit::bad_input();
    };
    let Some(rt) = current_thread_runtime() else { return exit::failure() };
    let fetcher = Fetcher::new(Duration::from_secs(5));
    let control = ControlPlane { fetcher: &fetcher, base: &args.server };
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

async fn describe(control: &ControlPlane<'_>, kind: &'static str, name: &str) -> Result<Described, DescribeError> {
    let resource = control.get(kind, name).await?;
    let related = match kind {
        "Service" => {
            let related = service_related(control, name, resource.as_ref()).await?;
            // A service implied by a Workload has no resource of its own but is still real.
            if resource.is_none() && related.workloads.is_empty() && related.endpoints.is_empty() {
                return Err(DescribeError::NotFound(kind, name.to_string()));
            }
            Related::Service(related)
        }
        "Proxy" => {
            let related = match control.proxies().await {
                Ok(all) => ProxyRelated { status: all.into_iter().find(|p| p.name == name), status_error: None },
                Err(e) => ProxyRelated { status: None, status_error: Some(e.to_string()) },
            };
            if resource.is_none() && related.status.is_none() {
                return Err(DescribeError::NotFound(kind, name.to_string()));
            }
            Related::Proxy(related)
        }
        _ if resource.is_none() => return Err(DescribeError::NotFound(kind, name.to_string())),
        "Route" => Related::Route(route_related(control, resource.as_ref()).await?),
        "Workload" => workload_related(control, resource.as_ref()).await?.map_or(Related::Nothing {}, Related::Workload),
        "CNF" => cnf_related(control, name, resource.as_ref()).await?.map_or(Related::Nothing {}, Related::Cnf),
        "NetworkFunction" => function_related(control, name, resource.as_ref()).await?.map_or(Related::Nothing {}, Related::Function),
        _ => Related::Nothing {},
    };
    Ok(Described { resource, related })
}

fn parse(value: Option<&Value>) -> Option<Resource> {
    value.and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The discovered endpoints of `service`, if any were written.
async fn discovered(control: &ControlPlane<'_>, service: &str) -> Result<EndpointsSpec, FetchError> {
    Ok(match parse(control.get("Endpoints", service).await?.as_ref()).map(|r| r.spec) {
        Some(Spec::Endpoints(e)) => e,
        _ => EndpointsSpec::default(),
    })
}

fn endpoint_views(service: Option<&Resource>, discovered: &EndpointsSpec, workload: Option<&str>) -> Vec<EndpointView> {
    let mut out = Vec::new();
    if let Some(Spec::Service(s)) = service.map(|r| &r.spec) {
        out.extend(s.endpoints.iter().map(|e| EndpointView {
            address: e.address.clone(),
            version: e.version.clone(),
            ready: true,
            source: "static".to_string(),
        }));
    }
    out.extend(discovered.endpoints.iter().filter(|e| !matches!(workload, Some(w) if e.workload != w)).map(|e| EndpointView {
        address: e.address.clone(),
        version: e.version.clone(),
        ready: e.ready,
        source: format!("{} replica {}", e.workload, e.replica),
    }));
    out
}

async fn service_related(control: &ControlPlane<'_>, name: &str, resource: Option<&Value>) -> Result<ServiceRelated, FetchError> {
    let discovered = discovered(control, name).await?;
    let endpoints = endpoint_views(parse(resource).as_ref(), &discovered, None);
    let workloads = control
        .list("Workload")
        .await?
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Workload(w) if w.service == name => Some(WorkloadView {
                name: r.name().to_string(),
                version: w.version.clone(),
                replicas: w.replicas,
                ready: discovered.endpoints.iter().filter(|e| e.ready && e.workload == r.name()).count(),
            }),
            _ => None,
        })
        .collect();
    let routes = control
        .list("Route")
        .await?
        .iter()
        .filter(|r| matches!(&r.spec, Spec::Route(route) if sends_to(route, name)))
        .map(|r| r.name().to_string())
        .collect();
    let traffic_policies = control
        .list("TrafficPolicy")
        .await?
        .iter()
        .filter(|r| matches!(&r.spec, Spec::TrafficPolicy(p) if p.service == name))
        .map(|r| r.name().to_string())
        .collect();
    Ok(ServiceRelated { endpoints, workloads, routes, traffic_policies })
}

/// Whether `route` shapes or sends (or mirrors) traffic to `service`.
fn sends_to(route: &RouteSpec, service: &str) -> bool {
    route.service.as_deref() == Some(service)
        || route.rules.iter().any(|rule| {
            rule.backends.iter().any(|b| b.service == service)
                || rule.filters.request_mirror.as_ref().is_some_and(|m| m.backend.service == service)
        })
}

async fn route_related(control: &ControlPlane<'_>, resource: Option<&Value>) -> Result<RouteRelated, FetchError> {
    let Some(Spec::Route(route)) = parse(resource).map(|r| r.spec) else { return Ok(RouteRelated { backends: Vec::new() }) };
    let mut backends = Vec::new();
    for (i, rule) in route.rules.iter().enumerate() {
        for b in &rule.backends {
            let service = parse(control.get("Service", &b.service).await?.as_ref());
            let discovered = discovered(control, &b.service).await?;
            let ready_endpoints = endpoint_views(service.as_ref(), &discovered, None)
                .iter()
                .filter(|e| e.ready && !matches!(&b.version, Some(v) if &e.version != v))
                .count();
            backends.push(BackendView {
                rule: i,
                service: b.service.clone(),
                version: b.version.clone(),
                weight: b.weight,
                ready_endpoints,
            });
        }
    }
    Ok(RouteRelated { backends })
}

async fn workload_related(control: &ControlPlane<'_>, resource: Option<&Value>) -> Result<Option<WorkloadRelated>, FetchError> {
    let Some(r) = parse(resource) else { return Ok(None) };
    let Spec::Workload(WorkloadSpec { service, replicas, .. }) = &r.spec else { return Ok(None) };
    let endpoints = endpoint_views(None, &discovered(control, service).await?, Some(r.name()));
    let ready = endpoints.iter().filter(|e| e.ready).count();
    Ok(Some(WorkloadRelated { service: service.clone(), replicas: *replicas, ready, endpoints }))
}

/// A unit enum as the resource files spell it (`callout`, `response`).
fn word<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Ready endpoints of `service`, static and discovered.
async fn ready_endpoints(control: &ControlPlane<'_>, service: &str) -> Result<usize, FetchError> {
    let resource = parse(control.get("Service", service).await?.as_ref());
    let discovered = discovered(control, service).await?;
    Ok(endpoint_views(resource.as_ref(), &discovered, None).iter().filter(|e| e.ready).count())
}

async fn cnf_related(control: &ControlPlane<'_>, name: &str, resource: Option<&Value>) -> Result<Option<CnfRelated>, FetchError> {
    let Some(Spec::Cnf(CnfSpec { chain, handlers, .. })) = parse(resource).map(|r| r.spec) else { return Ok(None) };
    let functions = control.list("NetworkFunction").await?;
    let mut steps = Vec::new();
    for (i, step) in chain.iter().enumerate() {
        let service = functions.iter().find(|f| f.name() == step.function).and_then(|f| match &f.spec {
            Spec::NetworkFunction(nf) => Some(nf.service.clone()),
            _ => None,
        });
        let ready_endpoints = match &service {
            Some(s) => ready_endpoints(control, s).await?,
            None => 0,
        };
        steps.push(StepView {
            step: i,
            function: step.function.clone(),
            mode: word(&step.mode),
            phase: word(&step.phase),
            service,
            ready_endpoints,
        });
    }
    let mut routes = Vec::new();
    for r in control.list("Route").await? {
        if let Spec::Route(route) = &r.spec {
            routes.extend(
                route
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.chain.as_deref() == Some(name))
                    .map(|(i, _)| format!("{}#{i}", r.name())),
            );
        }
    }
    Ok(Some(CnfRelated { steps, handlers: handlers.keys().cloned().collect(), routes }))
}

async fn function_related(control: &ControlPlane<'_>, name: &str, resource: Option<&Value>) -> Result<Option<FunctionRelated>, FetchError> {
    let Some(Spec::NetworkFunction(nf)) = parse(resource).map(|r| r.spec) else { return Ok(None) };
    let mut steps = Vec::new();
    for r in control.list("CNF").await? {
        if let Spec::Cnf(cnf) = &r.spec {
            steps.extend(cnf.chain.iter().enumerate().filter(|(_, s)| s.function == name).map(|(i, _)| format!("{}#{i}", r.name())));
        }
    }
    Ok(Some(FunctionRelated { ready_endpoints: ready_endpoints(control, &nf.service).await?, service: nf.service, steps }))
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

#[cfg(test)]
mod tests {
    use super::canonical_kind;

    #[test]
    fn kinds_as_the_api_spells_them() {
        assert_eq!(canonical_kind("services"), Some("Service"));
        assert_eq!(canonical_kind("Proxies"), Some("Proxy"));
        assert_eq!(canonical_kind("endpoints"), Some("Endpoints"));
        assert_eq!(canonical_kind("trafficpolicy"), Some("TrafficPolicy"));
        assert_eq!(canonical_kind("widget"), None);
    }
}
