//! Compiles validated resources into the immutable tables a proxy serves
//! from. A snapshot is swapped atomically; requests in flight keep theirs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use trefoil_model::authz::{NamedPolicy, PolicySet};
use trefoil_model::spec::*;
use trefoil_model::{Diagnostic, Diagnostics, Resource, SourcedResource, Spec};

use crate::http::chain::{Chain, Function, Step};
use crate::http::chain_handlers::ChainHandlers;
use crate::http::filters::{HeaderEdits, RateLimiter};
use crate::http::inline::InFlight;
use crate::http::retry::Budget;
use crate::http::route_match::RequestMatcher;
use crate::http::split::WeightedSplit;
use crate::telemetry::metrics::{label, Label, Metrics};
use crate::tls;
use crate::upstream::balancer::Balancer;
use crate::upstream::endpoint::{EndpointRegistry, EndpointState};
use crate::upstream::{self, ClientCache, ClientKey, ClientSet};
use trefoil_chain::handlers::{Handlers, Limits};

/// State that outlives snapshots.
pub(crate) struct Shared {
    pub endpoints: EndpointRegistry,
    pub clients: ClientCache,
    pub metrics: Metrics,
    /// In-flight and pending counts of each service, for circuit breaking.
    loads: Carried<String, ServiceLoad>,
    /// Token buckets, by route, rule and settings.
    rate_limiters: Carried<String, RateLimiter>,
    /// Retry budgets, by route, rule and settings.
    budgets: Carried<String, Budget>,
    /// Inline chain hops under way, by resume token.
    pub inline: InFlight,
    /// A descriptor kept to shed connections the accept loop cannot take.
    pub spare: crate::sys::descriptors::Spare,
    /// Where handlers' datapath changes go.
    pub datapath: crate::config::datapath_link::DatapathLink,
    /// The proxy's SVID and key, in control mode.
    pub identity: std::sync::OnceLock<Arc<crate::identity::Identity>>,
    /// Mesh TLS settings over that identity, in control mode.
    pub mesh: std::sync::OnceLock<Arc<crate::mesh_tls::MeshConfigs>>,
    /// Services looked up on demand, in control mode.
    pub on_demand: Arc<crate::config::on_demand::OnDemand>,
}

impl Shared {
    /// State for a proxy with `workers` data-plane threads.
    pub(crate) fn new(workers: usize) -> Self {
        Shared {
            endpoints: EndpointRegistry::default(),
            clients: ClientCache::new(workers),
            metrics: Metrics::default(),
            loads: Carried::default(),
            rate_limiters: Carried::default(),
            budgets: Carried::default(),
            inline: InFlight::default(),
            spare: crate::sys::descriptors::Spare::new(),
            datapath: crate::config::datapath_link::DatapathLink::default(),
            identity: std::sync::OnceLock::new(),
            mesh: std::sync::OnceLock::new(),
            on_demand: Arc::default(),
        }
    }
}

/// Objects a reload hands over to the next snapshot while their key is
/// unchanged, so limits keep counting across reloads instead of starting
/// afresh. Entries go when no snapshot holds them any more.
struct Carried<K, V> {
    entries: Mutex<HashMap<K, Weak<V>>>,
}

impl<K, V> Default for Carried<K, V> {
    fn default() -> Self {
        Carried { entries: Mutex::new(HashMap::new()) }
    }
}

impl<K: std::hash::Hash + Eq, V> Carried<K, V> {
    /// Forgets entries no snapshot holds; once per compile, not per lookup,
    /// so a config with many rules compiles in linear time.
    fn prune(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, v| v.strong_count() > 0);
    }

    fn get_or(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = entries.get(&key).and_then(Weak::upgrade) {
            return v;
        }
        let v = Arc::new(make());
        entries.insert(key, Arc::downgrade(&v));
        v
    }
}

/// Requests of one service in flight and waiting for a connection.
#[derive(Debug, Default)]
pub(crate) struct ServiceLoad {
    pub in_flight: AtomicU32,
    pub pending: AtomicU32,
}

/// Everything a proxy needs to serve, at one config version.
pub(crate) struct Snapshot {
    pub version: u64,
    pub loaded_at: SystemTime,
    pub resources: Vec<Resource>,
    pub settings: ProxySpec,
    /// Whether a listener or an endpoint uses mesh TLS, so the proxy is
    /// ready only once it holds an SVID.
    pub needs_svid: bool,
    pub listeners: Vec<Arc<ListenerConfig>>,
    pub services: BTreeMap<String, Arc<ServiceConfig>>,
    /// CNF name -> its chain, for events functions publish outside a request.
    pub chains: HashMap<String, Arc<Chain>>,
}

pub(crate) struct ListenerConfig {
    pub name: Label,
    pub addr: SocketAddr,
    pub protocol: ListenerProtocol,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub direction: Label,
    pub router: Router,
    pub tcp_backend: Option<Arc<Cluster>>,
    pub path_normalization: PathNormalization,
    pub timeouts: ListenerTimeouts,
    /// Whether clients must present a certificate (`tls.clientCa`).
    pub client_auth: bool,
    /// Bound with `IP_TRANSPARENT`; each connection goes to its original destination.
    pub transparent: bool,
    /// Mesh TLS that also takes plaintext (`tls: permissive`).
    pub permissive: bool,
    /// Serves mesh TLS.
    pub mesh: bool,
    /// An inbound listener enforces its rules' authorization policies.
    pub enforce_authz: bool,
    /// On an inbound listener, the policies selecting its `tcpBackend`,
    /// checked once per forwarded connection; `None` when none does.
    pub tcp_authz: Option<Arc<PolicySet>>,
    /// A request no route serves looks its host up on demand (a scoped
    /// sidecar's outbound listener).
    pub on_demand: bool,
}

impl ServiceConfig {
    /// The scheme towards `endpoint`: mesh TLS where it is another proxy's
    /// mesh listener, else the service's.
    pub(crate) fn scheme_for(&self, endpoint: SocketAddr) -> &'static str {
        if self.mesh_endpoints.contains(&endpoint) {
            "https"
        } else {
            self.scheme
        }
    }
}

/// Why mesh TLS cannot be had from a config file.
const MESH_NEEDS_CONTROL: &str = "mesh TLS needs the proxy's SVID, which only a proxy fed by a control plane (`--control`) holds";

/// How a proxy talks to one service.
pub(crate) struct ServiceConfig {
    pub name: Label,
    pub protocol: AppProtocol,
    pub policy: TrafficPolicySpec,
    pub limits: ConnectionPool,
    /// Pooled clients, one per worker thread: use `client.current()`.
    pub client: ClientSet,
    pub client_key: ClientKey,
    pub scheme: &'static str,
    /// Endpoints that are other proxies' mesh-TLS listeners.
    pub mesh_endpoints: std::collections::HashSet<SocketAddr>,
    /// Plain HTTP/1: attempts use the worker's own connection pool.
    pub worker_pooled: bool,
    pub endpoints: Vec<Arc<EndpointState>>,
    /// Per-endpoint connection caps (HTTP/1 needs one connection per request in flight).
    pub connection_slots: HashMap<SocketAddr, Arc<Semaphore>>,
    /// Carried across reloads while the service exists.
    pub load: Arc<ServiceLoad>,
    /// No endpoints: each request goes to its connection's original destination.
    pub original_destination: bool,
}

impl ServiceConfig {
    /// Whether outlier detection may eject one more endpoint of this service.
    pub(crate) fn may_eject(&self) -> bool {
        let Some(od) = &self.policy.outlier_detection else { return false };
        let n = self.endpoints.len();
        let allowed = if od.max_ejection_percent <= 0.0 { 0 } else { ((n as f64 * od.max_ejection_percent / 100.0) as usize).max(1) };
        self.endpoints.iter().filter(|e| e.is_ejected()).count() < allowed
    }

    pub(crate) fn slot(&self, addr: &SocketAddr) -> Option<&Arc<Semaphore>> {
        self.connection_slots.get(addr)
    }

    pub(crate) fn enter(&self) -> bool {
        if self.load.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limits.max_requests {
            self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn leave(&self) {
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service, or one version of it: what a route backend points at.
pub(crate) struct Cluster {
    pub service: Arc<ServiceConfig>,
    pub version: Label,
    pub balancer: Balancer,
}

impl Cluster {
    /// The cluster of one request to an `originalDestination` service: its
    /// one endpoint is `addr`. Upstream connections are pooled by endpoint
    /// address, so a reused connection always leads to the same destination.
    pub(crate) fn to_original_destination(&self, addr: SocketAddr) -> Cluster {
        let endpoint = Arc::new(EndpointState::original_destination(addr));
        Cluster {
            service: self.service.clone(),
            version: self.version.clone(),
            balancer: Balancer::new(&LoadBalancer::RoundRobin, vec![endpoint]),
        }
    }
}

/// Routes by host: exact names first, then the longest matching `*.suffix`, then `*`.
#[derive(Default)]
pub(crate) struct Router {
    exact: HashMap<String, Vec<Arc<CompiledRoute>>>,
    wildcard: Vec<(String, Arc<CompiledRoute>)>,
    catch_all: Vec<Arc<CompiledRoute>>,
}

impl Router {
    fn add(&mut self, route: Arc<CompiledRoute>, hosts: &[String]) {
        for host in hosts {
            let host = host.to_ascii_lowercase();
            if host == "*" {
                self.catch_all.push(route.clone());
            } else if let Some(suffix) = host.strip_prefix('*') {
                self.wildcard.push((suffix.to_string(), route.clone()));
            } else {
                self.exact.entry(host).or_default().push(route.clone());
            }
        }
        self.wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
    }

    /// The first `found` result over the routes for `host`, most specific first.
    pub(crate) fn find<'a, T>(&'a self, host: &str, mut found: impl FnMut(&'a Arc<CompiledRoute>) -> Option<T>) -> Option<T> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let exact = self.exact.get(host).into_iter().flatten();
        let wild = self.wildcard.iter().filter(|(suffix, _)| host.ends_with(suffix.as_str())).map(|(_, r)| r);
        exact.chain(wild).chain(self.catch_all.iter()).find_map(&mut found)
    }
}

pub(crate) struct CompiledRoute {
    pub name: Label,
    pub rules: Vec<CompiledRule>,
}

pub(crate) struct CompiledRule {
    pub matchers: Vec<RequestMatcher>,
    pub request_headers: Option<HeaderEdits>,
    pub response_headers: Option<HeaderEdits>,
    pub mirror: Option<(Arc<Cluster>, f64)>,
    pub fault: Option<FaultInjection>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub split: WeightedSplit<Arc<Cluster>>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub budget: Option<Arc<Budget>>,
    /// The CNF chain the rule's requests go through.
    pub chain: Option<Arc<Chain>>,
    /// The authorization policies selecting the rule's backends, checked
    /// on inbound listeners before the chain.
    pub authz: Option<Arc<PolicySet>>,
}

impl CompiledRule {
    pub(crate) fn matches(&self, req: &http::request::Parts) -> bool {
        self.matchers.is_empty() || self.matchers.iter().any(|m| m.matches(req))
    }
}

struct Compiler<'a> {
    shared: &'a Shared,
    problems: Vec<Diagnostic>,
    services: BTreeMap<String, Arc<ServiceConfig>>,
    clusters: BTreeMap<BackendRef, Arc<Cluster>>,
    /// CNF name -> its compiled chain.
    chains: HashMap<String, Arc<Chain>>,
    /// Every AuthorizationPolicy of the config.
    policies: Vec<NamedPolicy>,
    /// The workload a sidecar fronts: policies naming another one do not apply.
    workload: Option<String>,
}

/// Compiles `sources` as a proxy would and keeps only the verdict: the
/// checks the data plane adds to the model's (certificates that parse, TLS
/// settings, the Routes a Listener names), for `trefoil validate`.
pub fn check(sources: &[SourcedResource]) -> Result<(), Diagnostics> {
    compile(sources, &Shared::new(1), 0).map(drop)
}

/// Validates and compiles; on any problem returns every diagnostic and builds nothing.
pub(crate) fn compile(sources: &[SourcedResource], shared: &Shared, version: u64) -> Result<Snapshot, Diagnostics> {
    trefoil_model::validate(sources)?;
    shared.loads.prune();
    shared.rate_limiters.prune();
    shared.budgets.prune();
    let settings = sources
        .iter()
        .find_map(|s| match &s.resource.spec {
            Spec::Proxy(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap_or_else(ProxySpec::with_defaults);
    let policies = sources
        .iter()
        .filter_map(|s| match &s.resource.spec {
            Spec::AuthorizationPolicy(p) => Some(NamedPolicy { name: s.resource.name().to_string(), spec: p.clone() }),
            _ => None,
        })
        .collect();
    let mut c = Compiler {
        shared,
        problems: Vec::new(),
        services: BTreeMap::new(),
        clusters: BTreeMap::new(),
        chains: HashMap::new(),
        policies,
        workload: settings.sidecar.as_ref().map(|s| s.workload.clone()),
    };
    let policies: HashMap<&str, (&SourcedResource, &TrafficPolicySpec)> = sources
        .iter()
        .filter_map(|s| match &s.resource.spec {
            Spec::TrafficPolicy(p) => Some((p.service.as_str(), (s, p))),
            _ => None,
        })
        .collect();
    for s in sources {
        if let Spec::Service(spec) = &s.resource.spec {
            c.service(s, s.resource.name(), spec, policies.get(s.resource.name()).copied());
        }
    }
    // A mesh file names services through its Workloads and the Endpoints a
    // runtime found: they get the Service the control plane would make
    // (the ready endpoints, none until replicas run), so routes to them
    // compile with their backends rather than without.
    let mut declared: BTreeMap<&str, (&SourcedResource, ServiceSpec)> = BTreeMap::new();
    for s in sources {
        match &s.resource.spec {
            Spec::Workload(w) if !c.services.contains_key(&w.service) => {
                let port = ServicePort { name: "http".to_string(), port: w.port.unwrap_or(80), protocol: AppProtocol::Http };
                declared.entry(&w.service).or_insert_with(|| (s, ServiceSpec { ports: vec![port], ..ServiceSpec::default() }));
            }
            Spec::Endpoints(e) if !c.services.contains_key(s.resource.name()) => {
                let spec = &mut declared.entry(s.resource.name()).or_insert_with(|| (s, ServiceSpec::default())).1;
                spec.endpoints.extend(e.endpoints.iter().filter(|e| e.ready).map(|e| Endpoint {
                    address: e.address,
                    version: e.version.clone(),
                    mesh_tls: false,
                }));
            }
            _ => {}
        }
    }
    for (name, (s, spec)) in &declared {
        c.service(s, name, spec, policies.get(name).copied());
    }
    c.chains(sources);
    let mut routes = Vec::new();
    for s in sources {
        if let Spec::Route(spec) = &s.resource.spec {
            routes.push((s.resource.name().to_string(), c.route(s, spec), spec));
        }
    }
    let mut listeners = Vec::new();
    for s in sources {
        if let Spec::Listener(spec) = &s.resource.spec {
            listeners.push(Arc::new(c.listener(s, spec, &routes)));
        }
    }
    if !c.problems.is_empty() {
        return Err(Diagnostics(c.problems));
    }
    Ok(Snapshot {
        version,
        loaded_at: SystemTime::now(),
        resources: sources.iter().map(|s| s.resource.clone()).collect(),
        settings,
        needs_svid: listeners.iter().any(|l| l.mesh) || c.services.values().any(|s| s.client_key.mesh.is_some()),
        listeners,
        services: c.services,
        chains: c.chains,
    })
}

impl Compiler<'_> {
    /// Compiles Service `name`, declared by `s`.
    fn service(&mut self, s: &SourcedResource, name: &str, spec: &ServiceSpec, policy: Option<(&SourcedResource, &TrafficPolicySpec)>) {
        let protocol = spec.ports.first().map(|p| p.protocol).unwrap_or_default();
        let policy_spec =
            policy.map(|(_, p)| p.clone()).unwrap_or_else(|| TrafficPolicySpec { service: name.to_string(), ..Default::default() });
        let limits = policy_spec.connection_pool.clone().unwrap_or_default();
        // Files' TLS for `simple` and `mutual`; the mesh's own is per endpoint.
        let tls = policy_spec.tls.clone().filter(|t| matches!(t.mode, TlsMode::Simple | TlsMode::Mutual)).map(|t| {
            let sni = t.sni.clone().unwrap_or_else(|| name.to_string());
            (t, sni)
        });
        let tls_files = upstream::tls_files_hash(tls.as_ref().map(|(t, _)| t));
        let client_key = ClientKey {
            http2: protocol.is_http2(),
            connect_timeout: limits.connect_timeout.get(),
            idle_timeout: limits.idle_timeout.get(),
            tls,
            tls_files,
            mesh: None,
        };
        let mut client_key = client_key;
        let mesh_endpoints: std::collections::HashSet<SocketAddr> =
            spec.endpoints.iter().filter(|e| e.mesh_tls).map(|e| e.address).collect();
        if !mesh_endpoints.is_empty() {
            match self.shared.mesh.get() {
                Some(mesh) if client_key.tls.is_none() => client_key.mesh = Some(upstream::MeshClient(mesh.client.clone())),
                Some(_) => {
                    self.problems.push(
                        s.diagnostic("spec.endpoints", "an endpoint with `meshTls` in a service whose TrafficPolicy sets TLS from files"),
                    );
                    return;
                }
                None => {
                    self.problems.push(s.diagnostic("spec.endpoints", MESH_NEEDS_CONTROL));
                    return;
                }
            }
        }
        let client = match self.shared.clients.get(&client_key) {
            Ok(c) => c,
            Err(e) => {
                let (src, field) = policy.map(|(p, _)| (p, "spec.tls")).unwrap_or((s, "spec"));
                self.problems.push(src.diagnostic(field, e.to_string()));
                return;
            }
        };
        let endpoints: Vec<Arc<EndpointState>> =
            spec.endpoints.iter().map(|e| self.shared.endpoints.get(name, &e.version, e.address)).collect();
        // HTTP/2 multiplexes: one connection per endpoint, whatever the load.
        let connection_slots = if protocol.is_http2() {
            HashMap::new()
        } else {
            endpoints.iter().map(|e| (e.addr, Arc::new(Semaphore::new(limits.max_connections as usize)))).collect()
        };
        let config = ServiceConfig {
            name: label(name),
            protocol,
            scheme: upstream::scheme(&client_key),
            worker_pooled: !protocol.is_http2() && client_key.tls.is_none() && client_key.mesh.is_none(),
            mesh_endpoints,
            policy: policy_spec,
            limits,
            client,
            client_key,
            endpoints,
            connection_slots,
            load: self.shared.loads.get_or(name.to_string(), ServiceLoad::default),
            original_destination: spec.original_destination,
        };
        self.services.insert(name.to_string(), Arc::new(config));
    }

    /// The cluster `backend` points at; when its Service is not among those
    /// compiled, a problem at `field` of `s` (the snapshot is then refused,
    /// never served without the backend).
    fn cluster(&mut self, s: &SourcedResource, field: &str, backend: &BackendRef) -> Option<Arc<Cluster>> {
        if let Some(c) = self.clusters.get(backend) {
            return Some(c.clone());
        }
        let Some(service) = self.services.get(&backend.service).cloned() else {
            self.problems.push(s.diagnostic(field, format!("no usable Service named {:?}", backend.service)));
            return None;
        };
        let endpoints =
            service.endpoints.iter().filter(|e| backend.version.as_ref().is_none_or(|v| &*e.version == v.as_str())).cloned().collect();
        let cluster = Arc::new(Cluster {
            version: label(backend.version.as_deref().unwrap_or("")),
            balancer: Balancer::new(&service.policy.load_balancer, endpoints),
            service,
        });
        self.clusters.insert(backend.clone(), cluster.clone());
        Some(cluster)
    }

    /// Compiles every CNF's chain, calling the NetworkFunctions it names.
    fn chains(&mut self, sources: &[SourcedResource]) {
        let mut functions: HashMap<&str, Arc<Function>> = HashMap::new();
        for s in sources {
            let Spec::NetworkFunction(f) = &s.resource.spec else { continue };
            let Some(cluster) = self.cluster(s, "spec.service", &BackendRef { service: f.service.clone(), version: None }) else {
                continue;
            };
            functions.insert(
                s.resource.name(),
                Arc::new(Function {
                    name: label(s.resource.name()),
                    api: f.api,
                    cluster,
                    failure_policy: f.failure_policy,
                    timeout: f.timeout.get(),
                    max_body: f.send_body.as_ref().map(|b| b.max_bytes as usize),
                }),
            );
        }
        // Shared by every CNF with handlers: a handler may call any function by name.
        let callable: Arc<HashMap<String, Arc<Function>>> = Arc::new(functions.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
        for s in sources {
            let Spec::Cnf(cnf) = &s.resource.spec else { continue };
            let handlers = self.handlers(s, cnf, &callable);
            let (mut steps, mut response_steps) = (Vec::new(), Vec::new());
            for (i, step) in cnf.chain.iter().enumerate() {
                let Some(function) = functions.get(step.function.as_str()) else {
                    self.problems.push(
                        s.diagnostic(&format!("spec.chain[{i}].function"), format!("no usable NetworkFunction named {:?}", step.function)),
                    );
                    continue;
                };
                let when = step.when.as_ref().map(RequestMatcher::compile);
                let compiled = Step { function: function.clone(), mode: step.mode, when };
                match step.phase {
                    Phase::Request => steps.push(compiled),
                    Phase::Response => response_steps.push(compiled),
                }
            }
            // An inline function gets the body itself, streamed: it asks for no buffering.
            let largest_body =
                |steps: &[Step]| steps.iter().filter(|s| s.mode != StepMode::Inline).filter_map(|s| s.function.max_body).max();
            let max_body = largest_body(&steps);
            let chain = Chain { cnf: label(s.resource.name()), steps, max_body, response_steps, handlers };
            self.chains.insert(s.resource.name().to_string(), Arc::new(chain));
        }
    }

    /// Compiles a CNF's handler scripts; a syntax error is a problem at `spec.handlers.EVENT`.
    fn handlers(
        &mut self,
        s: &SourcedResource,
        cnf: &CnfSpec,
        callable: &Arc<HashMap<String, Arc<Function>>>,
    ) -> Option<Arc<ChainHandlers>> {
        if cnf.handlers.is_empty() {
            return None;
        }
        match Handlers::compile(s.resource.name(), &cnf.handlers, handler_limits(cnf.handler_limits.as_ref())) {
            Ok(handlers) => Some(Arc::new(ChainHandlers { handlers, functions: callable.clone() })),
            Err(problems) => {
                for (event, e) in problems {
                    let mut d = s.diagnostic(&format!("spec.handlers.{event}"), e.to_string());
                    d.line += e.lines_below_key(s.resource.name(), &event, &cnf.handlers[&event]);
                    self.problems.push(d);
                }
                None
            }
        }
    }

    fn route(&mut self, s: &SourcedResource, spec: &RouteSpec) -> Arc<CompiledRoute> {
        let mut rules = Vec::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            let matchers = rule.matches.iter().map(RequestMatcher::compile).collect();
            let request_headers = rule.filters.request_header_modifier.as_ref().map(HeaderEdits::compile);
            let response_headers = rule.filters.response_header_modifier.as_ref().map(HeaderEdits::compile);
            let mirror =
                rule.filters.request_mirror.as_ref().and_then(|m| {
                    self.cluster(s, &format!("{at}.filters.requestMirror.backend.service"), &m.backend).map(|c| (c, m.percent))
                });
            let mut backends = Vec::new();
            for (j, b) in rule.backends.iter().enumerate() {
                // A backend without a cluster is a problem already reported: the snapshot is refused.
                backends.extend(self.cluster(s, &format!("{at}.backends[{j}].service"), &b.backend_ref()).map(|c| (c, b.weight)));
            }
            let chain = rule.chain.as_ref().and_then(|name| {
                let chain = self.chains.get(name).cloned();
                if chain.is_none() {
                    self.problems.push(s.diagnostic(&format!("{at}.chain"), format!("no usable CNF named {name:?}")));
                }
                chain
            });
            let authz = self.authz(rule);
            rules.push(CompiledRule {
                authz,
                matchers,
                request_headers,
                response_headers,
                mirror,
                fault: rule.filters.fault.clone(),
                rate_limit: rule
                    .filters
                    .rate_limit
                    .as_ref()
                    .map(|rl| self.shared.rate_limiters.get_or(format!("{}/{i}/{rl:?}", s.resource.name()), || RateLimiter::new(rl))),
                split: WeightedSplit::new(backends),
                timeout: rule.effective_timeout(),
                budget: rule
                    .retry
                    .as_ref()
                    .and_then(|r| r.budget.as_ref())
                    .map(|b| self.shared.budgets.get_or(format!("{}/{i}/{b:?}", s.resource.name()), || Budget::new(b))),
                retry: rule.retry.clone(),
                chain,
            });
        }
        Arc::new(CompiledRoute { name: label(s.resource.name()), rules })
    }

    /// The policies selecting any backend of `rule`; `None` when none does.
    fn authz(&self, rule: &RouteRule) -> Option<Arc<PolicySet>> {
        let services: Vec<String> = rule.backends.iter().map(|b| b.service.clone()).collect();
        self.policies_selecting(&services)
    }

    /// The policies selecting any of `services`; `None` when none does.
    fn policies_selecting(&self, services: &[String]) -> Option<Arc<PolicySet>> {
        let workload = self.workload.as_deref();
        let selected = self.policies.iter().filter(|p| services.iter().any(|s| p.spec.selector.selects(s, workload))).cloned();
        let set = PolicySet::new(selected);
        (!set.is_empty()).then(|| Arc::new(set))
    }

    /// Whether any backend of `route` is an `originalDestination` Service.
    fn to_original_destination(&self, route: &RouteSpec) -> bool {
        route.rules.iter().flat_map(|r| &r.backends).any(|b| self.services.get(&b.service).is_some_and(|s| s.original_destination))
    }

    fn listener(
        &mut self,
        s: &SourcedResource,
        spec: &ListenerSpec,
        routes: &[(String, Arc<CompiledRoute>, &RouteSpec)],
    ) -> ListenerConfig {
        let alpn: &[&[u8]] = match spec.protocol {
            ListenerProtocol::Http2 => &[b"h2"],
            _ => &[b"h2", b"http/1.1"],
        };
        let mut tls = spec.tls.as_ref().and_then(|t| match tls::server_config(t, alpn) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problems.push(s.diagnostic("spec.tls", e.to_string()));
                None
            }
        });
        if spec.mesh_tls.is_some() {
            match self.shared.mesh.get() {
                Some(mesh) => {
                    let config = if spec.protocol == ListenerProtocol::Http2 { &mesh.server_h2 } else { &mesh.server };
                    tls = Some(config.clone());
                }
                None => self.problems.push(s.diagnostic("spec.meshTls", MESH_NEEDS_CONTROL)),
            }
        }
        if spec.on_demand && self.shared.mesh.get().is_none() {
            self.problems
                .push(s.diagnostic("spec.onDemand", "looks services up on the config stream: needs a proxy fed by a control plane"));
        }
        let mut router = Router::default();
        for (name, route, route_spec) in routes {
            let served = if spec.routes.is_empty() {
                // "Every Route" means every Route this listener can serve: one
                // that goes to an original destination needs a transparent listener.
                spec.transparent || !self.to_original_destination(route_spec)
            } else {
                spec.routes.contains(name)
            };
            if !served {
                continue;
            }
            match &spec.service {
                // A listener for one service serves that service's routes whatever the Host says.
                Some(service) if route_spec.service.as_ref() == Some(service) => router.add(route.clone(), &["*".to_string()]),
                Some(_) => {}
                None => {
                    let mut hosts = route_spec.hosts.clone();
                    if let Some(svc) = &route_spec.service {
                        hosts.push(svc.clone());
                    }
                    router.add(route.clone(), &hosts);
                }
            }
        }
        ListenerConfig {
            name: label(s.resource.name()),
            addr: spec.address,
            protocol: spec.protocol,
            tls,
            direction: label(&spec.direction),
            router,
            tcp_backend: spec.tcp_backend.as_ref().and_then(|b| self.cluster(s, "spec.tcpBackend.service", b)),
            path_normalization: spec.path_normalization,
            timeouts: spec.timeouts,
            client_auth: spec.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) || spec.mesh_tls.is_some(),
            transparent: spec.transparent,
            permissive: spec.mesh_tls == Some(MeshTls::Permissive),
            mesh: spec.mesh_tls.is_some(),
            enforce_authz: spec.direction == "inbound",
            tcp_authz: spec
                .tcp_backend
                .as_ref()
                .filter(|_| spec.direction == "inbound")
                .and_then(|b| self.policies_selecting(std::slice::from_ref(&b.service))),
            on_demand: spec.on_demand,
        }
    }
}

/// A CNF's `handlerLimits` as the sandbox's bounds; unset fields keep the defaults.
fn handler_limits(spec: Option<&HandlerLimits>) -> Limits {
    let spec = spec.cloned().unwrap_or_default();
    Limits {
        instructions: spec.instructions(),
        memory: usize::try_from(spec.memory()).unwrap_or(usize::MAX),
        wall: spec.timeout().get(),
        runs_per_request: spec.runs_per_request() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: public}\nspec: {address: \"127.0.0.1:0\"}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoints: [{address: \"127.0.0.1:9001\"}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: acl}\nspec:\n  ports: [{name: main, port: 80, protocol: http}]\n  endpoints: [{address: \"127.0.0.1:9002\"}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [\"*\"]\n  rules:\n  - backends: [{service: web}]\n    chain: edge\n  - backends: [{service: web}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge}\nspec:\n  chain: [{function: acl}, {function: acl, mode: tap}]\n---\n";

    fn compiled(function: &str) -> Result<Snapshot, Diagnostics> {
        let sources = trefoil_model::load_str(&std::sync::Arc::from("c.yaml"), &format!("{BASE}{function}")).unwrap();
        compile(&sources, &Shared::new(1), 1)
    }

    #[test]
    fn rules_naming_a_cnf_get_its_chain() {
        let snapshot = compiled("apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: acl}\nspec: {service: acl, api: http, sendBody: {maxBytes: 100}}\n").unwrap();
        let web = snapshot.listeners[0].router.find("any", |r| Some(r.clone())).expect("the route");
        let chain = web.rules[0].chain.as_ref().expect("the first rule names edge");
        assert_eq!(&*chain.cnf, "edge");
        assert_eq!(chain.steps.len(), 2);
        assert_eq!(chain.max_body, Some(100));
        assert!(Arc::ptr_eq(&chain.steps[0].function, &chain.steps[1].function), "one function, compiled once");
        assert!(web.rules[1].chain.is_none(), "a rule without `chain` has none");
        assert!(chain.handlers.is_none(), "a CNF without handlers pays nothing for them");
    }

    #[test]
    fn handler_scripts_compile_with_the_snapshot() {
        let nf = "apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: acl}\nspec: {service: acl, api: http, events: [seen]}\n";
        let with = |script: &str| {
            let base = BASE.replace(
                "chain: [{function: acl}, {function: acl, mode: tap}]\n",
                &format!("chain: [{{function: acl}}]\n  handlers: {{seen: {script:?}}}\n"),
            );
            let sources = trefoil_model::load_str(&std::sync::Arc::from("c.yaml"), &format!("{base}{nf}")).unwrap();
            compile(&sources, &Shared::new(1), 1)
        };
        let snapshot = with("trefoil.log(event.name)").unwrap();
        let web = snapshot.listeners[0].router.find("any", |r| Some(r.clone())).expect("the route");
        let chain = web.rules[0].chain.clone().expect("a chain");
        assert!(chain.handlers.as_ref().is_some_and(|h| h.handlers.get("seen").is_some() && h.functions.contains_key("acl")));
        let err = with("trefoil.log(").err().expect("a syntax error refuses the snapshot");
        assert_eq!(err.0[0].field, "spec.handlers.seen", "{err}");
        assert!(err.to_string().contains("edge/seen:1:"), "located: {err}");
    }

    fn parts(method: &str, uri: &str) -> http::request::Parts {
        http::Request::builder().method(method).uri(uri).body(()).unwrap().into_parts().0
    }

    /// A step's `when` and a rule's method were compiled with `.ok()`: one
    /// that failed ran the step always and matched any method.
    #[test]
    fn a_steps_when_and_a_rules_method_always_hold() {
        let base = BASE
            .replace(
                "chain: [{function: acl}, {function: acl, mode: tap}]",
                "chain: [{function: acl, when: {method: POST, path: {regex: '/x/[0-9]+'}}}]",
            )
            .replace(
                "  - backends: [{service: web}]\n    chain: edge",
                "  - matches: [{method: PUT}]\n    backends: [{service: web}]\n    chain: edge",
            );
        let nf = "apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: acl}\nspec: {service: acl, api: http}\n";
        let sources = trefoil_model::load_str(&Arc::from("c.yaml"), &format!("{base}{nf}")).unwrap();
        let snapshot = compile(&sources, &Shared::new(1), 1).unwrap();
        let web = snapshot.listeners[0].router.find("any", |r| Some(r.clone())).expect("the route");
        assert!(web.rules[0].matches(&parts("PUT", "/")) && !web.rules[0].matches(&parts("GET", "/")));
        let when = web.rules[0].chain.as_ref().unwrap().steps[0].when.as_ref().expect("the step keeps its condition");
        assert!(when.matches(&parts("POST", "/x/1")));
        assert!(!when.matches(&parts("GET", "/x/1")) && !when.matches(&parts("POST", "/x/1/y")));
    }

    /// A backend whose Service did not compile was left out of its rule,
    /// and the rule served the others: now the snapshot is refused, the
    /// backend named with the Service's own problem.
    #[test]
    fn a_backend_whose_service_did_not_compile_is_refused_not_dropped() {
        let ca = std::env::temp_dir().join(format!("trefoil-snapshot-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let policy = format!("apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: web}}\nspec:\n  service: web\n  tls: {{mode: simple, ca: {:?}}}\n", ca.display().to_string());
        let err = compiled(&format!("apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {{name: acl}}\nspec: {{service: acl, api: http}}\n---\n{policy}")).err().expect("refused");
        std::fs::remove_file(&ca).unwrap();
        let fields: Vec<&str> = err.0.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["spec.tls", "spec.rules[0].backends[0].service", "spec.rules[1].backends[0].service"], "{err}");
        assert!(err.0[1].message.contains("no usable Service named \"web\""), "{err}");
    }

    /// A mesh file's services come from its Workloads and Endpoints: their
    /// backends compile, with the ready endpoints, not left out.
    #[test]
    fn services_a_mesh_declares_by_workload_keep_their_backends() {
        let text = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: public}\nspec: {address: \"127.0.0.1:0\"}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: api-v1}\nspec: {service: api, version: v1, command: ./api}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Endpoints\nmetadata: {name: api}\nspec:\n  endpoints:\n  - {address: \"127.0.0.1:9101\", version: v1, ready: true}\n  - {address: \"127.0.0.1:9102\", version: v1, ready: false}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: api}\nspec:\n  hosts: [\"*\"]\n  rules: [{backends: [{service: api, version: v1}]}]\n";
        let sources = trefoil_model::load_str(&Arc::from("c.yaml"), text).unwrap();
        let snapshot = compile(&sources, &Shared::new(1), 1).unwrap();
        let api = &snapshot.services["api"];
        let addresses: Vec<SocketAddr> = api.endpoints.iter().map(|e| e.addr).collect();
        assert_eq!(addresses, ["127.0.0.1:9101".parse::<SocketAddr>().unwrap()], "the ready endpoint only");
        let backend = snapshot.listeners[0].router.find("api.example", |route| route.rules[0].split.pick().map(|c| c.service.name.clone()));
        assert_eq!(backend, Some(label("api")), "the route's backend has its cluster");
    }

    #[test]
    fn ext_authz_needs_an_http2_service() {
        let err = compiled(
            "apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: acl}\nspec: {service: acl, api: extAuthz}\n",
        )
        .err()
        .expect("refused");
        assert_eq!(err.0[0].field, "spec.api", "{err}");
    }
}
