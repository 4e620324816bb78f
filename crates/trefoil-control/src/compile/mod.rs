//! The config compiler: from every stored resource to the list of resources
//! one proxy runs with, the same shape as a standalone proxy's config file.
//! Pure functions of their input, so a snapshot is reproducible from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use trefoil_model::spec::*;
use trefoil_model::{Metadata, Resource, Spec, API_VERSION};

/// What one proxy gets: its resources, and a hash of them that changes only
/// when their content does.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySnapshot {
    /// The store revision the snapshot was compiled at.
    pub version: u64,
    pub hash: u64,
    /// The resources as the JSON array that is hashed and sent.
    pub resources_json: String,
    /// How many resources it holds.
    pub count: usize,
    /// A scoped proxy's services: a sidecar's own, what it calls and what
    /// those routes send to; a gateway's, what its listeners' named routes
    /// send to. `None`: the whole mesh.
    pub scope: Option<Vec<String>>,
}

/// Compiles the snapshot of `proxy` from every stored resource.
pub fn snapshot_for(proxy: &str, resources: &[Resource], version: u64) -> ProxySnapshot {
    MeshView::new(resources).snapshot_for(proxy, version)
}

/// The parts of a mesh every proxy's snapshot shares, computed once per store
/// revision; each proxy then adds what is its own.
pub struct MeshView {
    proxies: BTreeMap<String, ProxySpec>,
    listeners: Vec<(String, ListenerSpec)>,
    /// Services with their static and ready discovered endpoints.
    services: BTreeMap<String, ServiceSpec>,
    /// Each of `services` as a snapshot carries it, encoded once.
    services_json: BTreeMap<String, String>,
    /// User routes, then a default route for each service no route shapes.
    route_names: Vec<String>,
    /// The routes, traffic policies and workloads (the latter so every version
    /// a route names is known while none of its replicas is ready), and the
    /// CNFs route rules name with their NetworkFunctions, encoded once: every proxy's snapshot ends with them, and encoding them per
    /// proxy was most of a large mesh's compile.
    shared_json: JsonArray,
    /// Services whose TrafficPolicy sets a `tls` mode; the rest are `strict`.
    tls_modes: BTreeMap<String, TlsMode>,
    /// Authorization policies, each encoded once: a sidecar gets those
    /// selecting its service, a proxy with inbound listeners all of them.
    policies: Vec<(PolicySelector, String)>,
    /// CNFs a route rule names (those snapshots carry), and whether any
    /// does (then every NetworkFunction goes too).
    chained_cnfs: BTreeSet<String>,
    /// What a scoped sidecar's snapshot is picked from: the same resources
    /// as `shared_json`, each encoded once with what it depends on.
    parts: ScopeParts,
}

/// The shared resources by what they concern, for sidecars whose Workload
/// declares `calls`: such a sidecar gets its own service, the ones it
/// calls and, transitively, what their routes need, instead of the mesh.
#[derive(Default)]
struct ScopeParts {
    /// Workload name -> the services it declares it calls.
    calls: BTreeMap<String, BTreeSet<String>>,
    /// Every route (user and default), by name.
    routes: Vec<RouteEntry>,
    /// TrafficPolicies and Workloads, by the service they concern.
    by_service: BTreeMap<String, Vec<String>>,
    /// CNFs a route names, by name.
    cnfs: BTreeMap<String, String>,
    /// Every NetworkFunction, and the services they run on: a chain may
    /// reach any of them (see [`chained`]).
    functions: Vec<String>,
    function_services: BTreeSet<String>,
}

/// One route with the services it concerns.
struct RouteEntry {
    name: String,
    /// Its `service`, and every backend and mirror it sends to.
    concerns: BTreeSet<String>,
    /// What it sends to (what the snapshot must then hold).
    sends_to: BTreeSet<String>,
    chains: BTreeSet<String>,
    json: String,
}

impl RouteEntry {
    fn new(r: &Resource) -> Option<Self> {
        let Spec::Route(route) = &r.spec else { return None };
        let mut sends_to = BTreeSet::new();
        let mut chains = BTreeSet::new();
        for rule in &route.rules {
            sends_to.extend(rule.backends.iter().map(|b| b.service.clone()));
            if let Some(mirror) = &rule.filters.request_mirror {
                sends_to.insert(mirror.backend.service.clone());
            }
            chains.extend(rule.chain.clone());
        }
        let mut concerns = sends_to.clone();
        concerns.extend(route.service.clone());
        Some(RouteEntry { name: r.name().to_string(), concerns, sends_to, chains, json: encode(r) })
    }
}

/// What one scoped sidecar gets.
struct Scope<'a> {
    routes: Vec<&'a RouteEntry>,
    services: BTreeSet<String>,
    cnfs: BTreeSet<&'a str>,
}

/// How a sidecar's inbound listener serves a service whose policy says `mode`
/// (none: `strict`): mesh TLS unless the policy turns it off or uses files.
fn inbound_tls(mode: Option<TlsMode>) -> Option<MeshTls> {
    match mode.unwrap_or(TlsMode::Strict) {
        TlsMode::Strict => Some(MeshTls::Strict),
        TlsMode::Permissive => Some(MeshTls::Permissive),
        TlsMode::Simple | TlsMode::Mutual | TlsMode::Disable => None,
    }
}

impl MeshView {
    pub fn new(resources: &[Resource]) -> Self {
        let (mut proxies, mut listeners, mut services) = (BTreeMap::new(), Vec::new(), BTreeMap::new());
        let (mut routes, mut passthrough) = (Vec::new(), Vec::new());
        let mut discovered: BTreeMap<&str, &EndpointsSpec> = BTreeMap::new();
        let mut workload_ports: BTreeMap<&str, u16> = BTreeMap::new();
        let mut cnfs: BTreeMap<&str, &Resource> = BTreeMap::new();
        let mut tls_modes: BTreeMap<String, TlsMode> = BTreeMap::new();
        let mut functions: BTreeMap<&str, &Resource> = BTreeMap::new();
        let mut policies = Vec::new();
        let mut parts = ScopeParts::default();
        for r in resources {
            match &r.spec {
                Spec::Proxy(p) => {
                    proxies.insert(r.name().to_string(), p.clone());
                }
                Spec::Listener(l) => listeners.push((r.name().to_string(), l.clone())),
                Spec::Service(s) => {
                    services.insert(r.name().to_string(), s.clone());
                }
                Spec::Route(_) => routes.push(clean(r)),
                Spec::TrafficPolicy(p) => {
                    if let Some(tls) = &p.tls {
                        tls_modes.insert(p.service.clone(), tls.mode);
                    }
                    parts.by_service.entry(p.service.clone()).or_default().push(encode(&clean(r)));
                    passthrough.push(clean(r));
                }
                Spec::Workload(w) => {
                    workload_ports.entry(&w.service).or_insert(w.port.unwrap_or(80));
                    if let Some(calls) = &w.calls {
                        parts.calls.insert(r.name().to_string(), calls.iter().cloned().collect());
                    }
                    // Proxies do not use `calls`, and a proxy checking one
                    // against its scoped snapshot would miss services.
                    let mut sent = clean(r);
                    if let Spec::Workload(w) = &mut sent.spec {
                        w.calls = None;
                    }
                    parts.by_service.entry(w.service.clone()).or_default().push(encode(&sent));
                    passthrough.push(sent);
                }
                Spec::Endpoints(e) => {
                    discovered.insert(r.name(), e);
                }
                Spec::Cnf(_) => {
                    cnfs.insert(r.name(), r);
                }
                Spec::NetworkFunction(f) => {
                    parts.function_services.insert(f.service.clone());
                    functions.insert(r.name(), r);
                }
                // Rollouts act through the Route they rewrite; proxies never see them.
                Spec::Rollout(_) | Spec::RolloutStatus(_) | Spec::Event(_) => {}
                // Datapath rules go to node agents, not to proxies.
                Spec::DatapathRule(_) | Spec::DatapathRuleStatus(_) => {}
                Spec::AuthorizationPolicy(p) => policies.push((r.name().to_string(), p.selector.clone(), encode(&clean(r)))),
            }
        }
        let chain_resources = chained(&routes, &cnfs, &functions);
        let chained_cnfs = chain_resources.iter().filter(|r| matches!(r.spec, Spec::Cnf(_))).map(|r| r.name().to_string()).collect();
        for r in &chain_resources {
            match r.spec {
                Spec::Cnf(_) => {
                    parts.cnfs.insert(r.name().to_string(), encode(r));
                }
                _ => parts.functions.push(encode(r)),
            }
        }
        passthrough.extend(chain_resources);
        for (service, port) in workload_ports {
            services.entry(service.to_string()).or_insert_with(|| ServiceSpec {
                ports: vec![ServicePort { name: "http".to_string(), port, protocol: AppProtocol::Http }],
                ..ServiceSpec::default()
            });
        }
        // Every sidecar's inbound listener that serves mesh TLS: endpoints
        // there are reached with it, by sidecars and gateways alike.
        let mesh_inbound: BTreeSet<SocketAddr> = proxies
            .values()
            .filter_map(|p| p.sidecar.as_ref())
            .filter(|s| inbound_tls(tls_modes.get(&s.service).copied()).is_some())
            .map(|s| s.inbound)
            .collect();
        for (service, spec) in services.iter_mut() {
            if let Some(found) = discovered.get(service.as_str()) {
                let mut ready: Vec<&DiscoveredEndpoint> = found.endpoints.iter().filter(|e| e.ready).collect();
                ready.sort_by(|a, b| (&a.workload, a.replica, &a.address).cmp(&(&b.workload, b.replica, &b.address)));
                for e in ready {
                    if !spec.endpoints.iter().any(|s| s.address == e.address) {
                        spec.endpoints.push(Endpoint { address: e.address, version: e.version.clone(), mesh_tls: false });
                    }
                }
            }
            for e in &mut spec.endpoints {
                e.mesh_tls = mesh_inbound.contains(&e.address);
            }
        }
        let shaped: BTreeSet<String> = routes
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Route(route) => route.service.clone(),
                _ => None,
            })
            .collect();
        let named: BTreeSet<String> = routes.iter().map(|r| r.name().to_string()).collect();
        // An original destination has no name a request could be sent to.
        for service in services.iter().filter(|(_, spec)| !spec.original_destination).map(|(name, _)| name) {
            let name = format!("default-{service}");
            if !shaped.contains(service) && !named.contains(&name) {
                routes.push(resource(
                    &name,
                    Spec::Route(RouteSpec {
                        hosts: Vec::new(),
                        service: Some(service.clone()),
                        rules: vec![RouteRule {
                            backends: vec![WeightedBackend { service: service.clone(), version: None, weight: 1 }],
                            ..Default::default()
                        }],
                    }),
                ));
            }
        }
        routes.sort_by(|a, b| a.name().cmp(b.name()));
        parts.routes = routes.iter().filter_map(RouteEntry::new).collect();
        passthrough.sort_by(|a, b| (a.kind(), a.name()).cmp(&(b.kind(), b.name())));
        let mut shared_json = JsonArray::default();
        for r in routes.iter().chain(&passthrough) {
            shared_json.push(r);
        }
        let services_json =
            services.iter().map(|(name, spec)| (name.clone(), encode(&resource(name, Spec::Service(spec.clone()))))).collect();
        // A sidecar's outbound listener is not transparent: routes to an
        // original destination are the transparent listeners' alone.
        let passthrough_only = |r: &&Resource| match &r.spec {
            Spec::Route(route) => {
                route.rules.iter().flat_map(|rule| &rule.backends).any(|b| services.get(&b.service).is_some_and(|s| s.original_destination))
            }
            _ => false,
        };
        let route_names = routes.iter().filter(|r| !passthrough_only(r)).map(|r| r.name().to_string()).collect();
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        let policies = policies.into_iter().map(|(_, selector, json)| (selector, json)).collect();
        MeshView { proxies, listeners, services, services_json, route_names, shared_json, tls_modes, policies, chained_cnfs, parts }
    }

    /// Points every declared proxy without tracing settings at `endpoint`
    /// (the control plane's own trace collector), so a request's spans are
    /// collected with no setup. Proxies that configure tracing keep theirs.
    pub fn with_default_collector(mut self, endpoint: Option<&str>) -> Self {
        if let Some(endpoint) = endpoint {
            for spec in self.proxies.values_mut().filter(|p| p.tracing.is_none()) {
                // Every trace sampled, as a declared `tracing` without a percentage is.
                spec.tracing = Some(TracingSpec { otlp_endpoint: endpoint.to_string(), service_name: None, sampling_percent: 100.0 });
            }
        }
        self
    }

    /// Names of the proxies declared by `Proxy` resources.
    pub fn proxy_names(&self) -> impl Iterator<Item = &str> {
        self.proxies.keys().map(String::as_str)
    }

    /// Whether the snapshot of `proxy` depends on `r` (decision 0025): its
    /// own Proxy; a gateway's listeners; every Service, Endpoints, Route,
    /// TrafficPolicy and Workload (every proxy serves every route); the
    /// CNFs a route names and, when one does, every NetworkFunction; the
    /// AuthorizationPolicies its inbound listeners enforce. Nothing else
    /// (rollouts, events, datapath rules) reaches a proxy.
    pub fn needs(&self, proxy: &str, r: &Resource) -> bool {
        self.needs_with(proxy, r, &BTreeSet::new())
    }

    /// [`MeshView::needs`] for a proxy that looked `looked_up` up on
    /// demand: a scoped sidecar (decision 0027) needs only what its scope
    /// holds.
    pub fn needs_with(&self, proxy: &str, r: &Resource, looked_up: &BTreeSet<String>) -> bool {
        let sidecar = self.proxies.get(proxy).and_then(|p| p.sidecar.as_ref());
        let scope = match sidecar {
            Some(s) => self.scope(s, looked_up),
            None => self.gateway_scope(proxy),
        };
        if let Some(scope) = scope {
            match &r.spec {
                Spec::Service(_) | Spec::Endpoints(_) => return scope.services.contains(r.name()),
                Spec::TrafficPolicy(p) => return scope.services.contains(&p.service),
                Spec::Workload(w) => return scope.services.contains(&w.service),
                Spec::Route(_) => return scope.routes.iter().any(|route| route.name == r.name()),
                Spec::Cnf(_) => return scope.cnfs.contains(r.name()),
                Spec::NetworkFunction(_) => return !scope.cnfs.is_empty(),
                _ => {}
            }
        }
        match &r.spec {
            Spec::Proxy(_) => r.name() == proxy,
            Spec::Listener(l) => sidecar.is_none() && l.proxy.as_deref().is_none_or(|p| p == proxy),
            Spec::Service(_) | Spec::Endpoints(_) | Spec::Route(_) | Spec::TrafficPolicy(_) | Spec::Workload(_) => true,
            Spec::Cnf(_) => self.chained_cnfs.contains(r.name()),
            Spec::NetworkFunction(_) => !self.chained_cnfs.is_empty(),
            Spec::AuthorizationPolicy(p) => match sidecar {
                Some(s) => p.selector.selects(&s.service, Some(&s.workload)),
                None => self.listeners.iter().any(|(_, l)| l.direction == "inbound" && l.proxy.as_deref().is_none_or(|p| p == proxy)),
            },
            Spec::Rollout(_) | Spec::RolloutStatus(_) | Spec::Event(_) | Spec::DatapathRule(_) | Spec::DatapathRuleStatus(_) => false,
        }
    }

    /// The snapshot of `proxy`; a proxy without a `Proxy` resource is a gateway with default settings.
    pub fn snapshot_for(&self, proxy: &str, version: u64) -> ProxySnapshot {
        self.snapshot_with(proxy, version, &BTreeSet::new())
    }

    /// The snapshot of `proxy`, a scoped sidecar's also holding the services
    /// in `looked_up` (those it asked for on demand).
    pub fn snapshot_with(&self, proxy: &str, version: u64, looked_up: &BTreeSet<String>) -> ProxySnapshot {
        let spec = self.proxies.get(proxy);
        let mut out = JsonArray::default();
        if let Some(spec) = spec {
            out.push(&resource(proxy, Spec::Proxy(spec.clone())));
        }
        let sidecar = spec.and_then(|p| p.sidecar.as_ref());
        let scope = match sidecar {
            Some(s) => self.scope(s, looked_up),
            None => self.gateway_scope(proxy),
        };
        match sidecar {
            Some(sidecar) => self.sidecar(proxy, sidecar, scope.as_ref(), &mut out),
            None => self.gateway(proxy, scope.as_ref(), &mut out),
        }
        match &scope {
            Some(scope) => self.scoped_shared(scope, &mut out),
            None => out.append(&self.shared_json),
        }
        let (resources_json, count) = out.finish();
        let hash = fnv1a(resources_json.as_bytes());
        ProxySnapshot { version, hash, resources_json, count, scope: scope.map(|s| s.services.into_iter().collect()) }
    }

    /// Whether `service` can be looked up on demand: a service a snapshot
    /// can hold (a request to anything else stays unrouted).
    pub fn knows_service(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|s| !s.original_destination)
    }

    /// What a sidecar whose Workload declares `calls` gets; `None` for one
    /// that declares nothing, which gets the whole mesh.
    fn scope(&self, sidecar: &SidecarSpec, looked_up: &BTreeSet<String>) -> Option<Scope<'_>> {
        let calls = self.parts.calls.get(&sidecar.workload)?;
        let wanted: BTreeSet<&String> = std::iter::once(&sidecar.service)
            .chain(calls)
            .chain(looked_up)
            .filter(|s| self.services.contains_key(*s) || **s == sidecar.service)
            .collect();
        let routes: Vec<&RouteEntry> = self.parts.routes.iter().filter(|r| r.concerns.iter().any(|s| wanted.contains(s))).collect();
        Some(self.closed(routes, wanted.into_iter().cloned().collect()))
    }

    /// What a gateway whose listeners all name their routes gets: those
    /// routes and what they need; `None` (the whole mesh) for one with a
    /// listener that serves every route, or an inbound one (it enforces
    /// the policies of the services behind it, and those may name any).
    fn gateway_scope(&self, proxy: &str) -> Option<Scope<'_>> {
        let mine: Vec<&ListenerSpec> =
            self.listeners.iter().map(|(_, l)| l).filter(|l| l.proxy.as_deref().is_none_or(|p| p == proxy)).collect();
        if mine.is_empty() || mine.iter().any(|l| l.routes.is_empty() || l.direction == "inbound") {
            return None;
        }
        let named: BTreeSet<&str> = mine.iter().flat_map(|l| l.routes.iter().map(String::as_str)).collect();
        let routes: Vec<&RouteEntry> = self.parts.routes.iter().filter(|r| named.contains(r.name.as_str())).collect();
        let backends = mine.iter().filter_map(|l| l.tcp_backend.as_ref()).map(|b| b.service.clone());
        Some(self.closed(routes, backends.filter(|s| self.services.contains_key(s)).collect()))
    }

    /// The scope of `routes` and `services`: with what the routes send to,
    /// the CNFs they name and, when they name one, the functions' services.
    fn closed<'a>(&'a self, routes: Vec<&'a RouteEntry>, mut services: BTreeSet<String>) -> Scope<'a> {
        let mut cnfs = BTreeSet::new();
        for route in &routes {
            services.extend(route.sends_to.iter().filter(|s| self.services.contains_key(*s)).cloned());
            cnfs.extend(route.chains.iter().filter(|c| self.parts.cnfs.contains_key(*c)).map(String::as_str));
        }
        if !cnfs.is_empty() {
            services.extend(self.parts.function_services.iter().filter(|s| self.services.contains_key(*s)).cloned());
        }
        Scope { routes, services, cnfs }
    }

    /// A scoped sidecar's part of what every other proxy gets whole.
    fn scoped_shared(&self, scope: &Scope<'_>, out: &mut JsonArray) {
        for route in &scope.routes {
            out.push_encoded(&route.json);
        }
        for service in &scope.services {
            for encoded in self.parts.by_service.get(service).into_iter().flatten() {
                out.push_encoded(encoded);
            }
        }
        for cnf in &scope.cnfs {
            out.push_encoded(&self.parts.cnfs[*cnf]);
        }
        if !scope.cnfs.is_empty() {
            for encoded in &self.parts.functions {
                out.push_encoded(encoded);
            }
        }
    }

    fn gateway(&self, proxy: &str, scope: Option<&Scope<'_>>, out: &mut JsonArray) {
        let mut inbound = false;
        for (name, listener) in &self.listeners {
            if listener.proxy.as_deref().is_none_or(|p| p == proxy) {
                inbound |= listener.direction == "inbound";
                out.push(&resource(name, Spec::Listener(listener.clone())));
            }
        }
        // Policies are enforced on inbound listeners only: a gateway whose
        // listeners all face clients outside the mesh needs none of them.
        if inbound {
            for (_, encoded) in &self.policies {
                out.push_encoded(encoded);
            }
        }
        for (name, encoded) in &self.services_json {
            if scope.is_none_or(|s| s.services.contains(name)) {
                out.push_encoded(encoded);
            }
        }
    }

    /// Whether `service` is opaque TCP (its first port says `tcp`).
    fn speaks_tcp(&self, service: &str) -> bool {
        self.services.get(service).and_then(|s| s.ports.first()).is_some_and(|p| p.protocol == AppProtocol::Tcp)
    }

    /// Generated listeners in front of the app and towards other services; the
    /// replica's own service resolves to its own app only.
    fn sidecar(&self, proxy: &str, sidecar: &SidecarSpec, scope: Option<&Scope<'_>>, out: &mut JsonArray) {
        let in_scope = |service: &str| scope.is_none_or(|s| s.services.contains(service));
        let inbound_route = format!("{proxy}-inbound");
        let mut inbound = ListenerSpec {
            mesh_tls: inbound_tls(self.tls_modes.get(&sidecar.service).copied()),
            ..listener(sidecar.inbound, "inbound", vec![inbound_route.clone()], None)
        };
        if self.speaks_tcp(&sidecar.service) {
            // Opaque bytes to the own app, behind mesh TLS all the same.
            inbound.protocol = ListenerProtocol::Tcp;
            inbound.tcp_backend = Some(BackendRef { service: sidecar.service.clone(), version: Some(sidecar.version.clone()) });
        }
        out.push(&resource(&format!("{proxy}-inbound"), Spec::Listener(inbound)));
        let outbound_routes = match scope {
            Some(scope) => {
                let picked: BTreeSet<&str> = scope.routes.iter().map(|r| r.name.as_str()).collect();
                self.route_names.iter().filter(|r| picked.contains(r.as_str())).cloned().collect()
            }
            None => self.route_names.clone(),
        };
        let mut outbound = listener(sidecar.outbound, "outbound", outbound_routes, None);
        // A request for a service outside the scope asks the control plane.
        outbound.on_demand = scope.is_some();
        out.push(&resource(&format!("{proxy}-outbound"), Spec::Listener(outbound)));
        for (service, address) in &sidecar.upstreams {
            if self.services.contains_key(service) && in_scope(service) {
                let mut to = listener(*address, "outbound", Vec::new(), Some(service.clone()));
                if self.speaks_tcp(service) {
                    to.protocol = ListenerProtocol::Tcp;
                    to.tcp_backend = Some(BackendRef { service: service.clone(), version: None });
                }
                out.push(&resource(&format!("{proxy}-to-{service}"), Spec::Listener(to)));
            }
        }
        let own_app = vec![Endpoint { address: sidecar.app, version: sidecar.version.clone(), mesh_tls: false }];
        for (name, encoded) in self.services_json.iter().filter(|(name, _)| in_scope(name)) {
            if *name == sidecar.service {
                let mut own = self.services[name].clone();
                own.endpoints = own_app.clone();
                out.push(&resource(name, Spec::Service(own)));
            } else {
                out.push_encoded(encoded);
            }
        }
        if !self.services.contains_key(&sidecar.service) {
            out.push(&resource(&sidecar.service, Spec::Service(ServiceSpec { endpoints: own_app, ..ServiceSpec::default() })));
        }
        // The policies its inbound listener enforces.
        for (selector, encoded) in &self.policies {
            if selector.selects(&sidecar.service, Some(&sidecar.workload)) {
                out.push_encoded(encoded);
            }
        }
        out.push(&resource(
            &inbound_route,
            Spec::Route(RouteSpec {
                hosts: vec!["*".to_string()],
                service: None,
                rules: vec![RouteRule {
                    backends: vec![WeightedBackend { service: sidecar.service.clone(), version: Some(sidecar.version.clone()), weight: 1 }],
                    ..Default::default()
                }],
            }),
        ));
    }
}

/// A JSON array built from resources and from resources encoded earlier.
#[derive(Default)]
struct JsonArray {
    /// The elements, comma-separated, without the brackets.
    text: String,
    count: usize,
}

impl JsonArray {
    fn push(&mut self, r: &Resource) {
        self.push_encoded(&encode(r));
    }

    fn push_encoded(&mut self, json: &str) {
        if self.count > 0 {
            self.text.push(',');
        }
        self.text.push_str(json);
        self.count += 1;
    }

    fn append(&mut self, other: &JsonArray) {
        if other.count == 0 {
            return;
        }
        if self.count > 0 {
            self.text.push(',');
        }
        self.text.push_str(&other.text);
        self.count += other.count;
    }

    fn finish(self) -> (String, usize) {
        let mut json = String::with_capacity(self.text.len() + 2);
        json.push('[');
        json.push_str(&self.text);
        json.push(']');
        (json, self.count)
    }
}

/// A resource as JSON; resources always encode (their maps have string keys).
fn encode(r: &Resource) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// The CNFs that route rules name, and every NetworkFunction: a proxy
/// compiles them into the rules' chains. Functions all go, not only those a
/// chain step names, because handlers may call any function by name
/// (`trefoil.call("antivirus")`) and scripts are not parsed for names.
/// Every proxy serves every route, so every proxy gets them; a CNF no rule
/// names stays out.
fn chained(routes: &[Resource], cnfs: &BTreeMap<&str, &Resource>, functions: &BTreeMap<&str, &Resource>) -> Vec<Resource> {
    let named: BTreeSet<&str> = routes
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Route(route) => Some(route.rules.iter().filter_map(|rule| rule.chain.as_deref())),
            _ => None,
        })
        .flatten()
        .collect();
    let mut out: Vec<Resource> = named.iter().filter_map(|name| cnfs.get(name)).map(|cnf| clean(cnf)).collect();
    if !out.is_empty() {
        out.extend(functions.values().map(|f| clean(f)));
    }
    out
}

fn listener(address: SocketAddr, direction: &str, routes: Vec<String>, service: Option<String>) -> ListenerSpec {
    ListenerSpec {
        address,
        protocol: ListenerProtocol::Http,
        tls: None,
        routes,
        tcp_backend: None,
        proxy: None,
        service,
        direction: direction.to_string(),
        path_normalization: PathNormalization::default(),
        timeouts: ListenerTimeouts::default(),
        transparent: false,
        mesh_tls: None,
        on_demand: false,
    }
}

fn resource(name: &str, spec: Spec) -> Resource {
    Resource { api_version: API_VERSION.to_string(), metadata: Metadata { name: name.to_string(), ..Default::default() }, spec }
}

/// The resource without server-set bookkeeping, which would change the hash
/// on writes that change nothing a proxy uses.
fn clean(r: &Resource) -> Resource {
    let mut r = r.clone();
    r.metadata.resource_version = None;
    r.metadata.generation = None;
    r.metadata.labels.clear();
    r
}

/// FNV-1a: stable across processes and builds, unlike `DefaultHasher`, so a
/// restarted control plane recognises what a proxy already has.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
