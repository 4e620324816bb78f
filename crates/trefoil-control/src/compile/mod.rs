//! The config compiler: from every stored resource to the list of resources
//! one proxy runs with, the same shape as a standalone proxy's config file.
//! Pure functions of their input, so a snapshot is reproducible from the store.

use std::collections::{BTreeMap, BTreeSet};

use trefoil_model::spec::*;
use trefoil_model::{Metadata, Resource, Spec, API_VERSION};

/// What one proxy gets: its resources, and a hash of them that changes only
/// when their content does.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySnapshot {
    /// The store revision the snapshot was compiled at.
    pub version: u64,
    pub hash: u64,
    pub resources: Vec<Resource>,
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
    /// User routes, then a default route for each service no route shapes.
    routes: Vec<Resource>,
    /// Traffic policies and workloads (the latter so every version a route
    /// names is known even while none of its replicas is ready).
    passthrough: Vec<Resource>,
}

impl MeshView {
    pub fn new(resources: &[Resource]) -> Self {
        let mut view = MeshView { proxies: BTreeMap::new(), listeners: Vec::new(), services: BTreeMap::new(), routes: Vec::new(), passthrough: Vec::new() };
        let mut discovered: BTreeMap<&str, &EndpointsSpec> = BTreeMap::new();
        let mut workload_ports: BTreeMap<&str, u16> = BTreeMap::new();
        for r in resources {
            match &r.spec {
                Spec::Proxy(p) => {
                    view.proxies.insert(r.name().to_string(), p.clone());
                }
                Spec::Listener(l) => view.listeners.push((r.name().to_string(), l.clone())),
                Spec::Service(s) => {
                    view.services.insert(r.name().to_string(), s.clone());
                }
                Spec::Route(_) => view.routes.push(clean(r)),
                Spec::TrafficPolicy(_) => view.passthrough.push(clean(r)),
                Spec::Workload(w) => {
                    workload_ports.entry(&w.service).or_insert(w.port.unwrap_or(80));
                    view.passthrough.push(clean(r));
                }
                Spec::Endpoints(e) => {
                    discovered.insert(r.name(), e);
                }
                // Rollouts act through the Route they rewrite; proxies never see them.
                Spec::Rollout(_) | Spec::RolloutStatus(_) | Spec::Event(_) => {}
            }
        }
        for (service, port) in workload_ports {
            view.services.entry(service.to_string()).or_insert_with(|| ServiceSpec {
                ports: vec![ServicePort { name: "http".to_string(), port, protocol: AppProtocol::Http }],
                endpoints: Vec::new(),
            });
        }
        for (service, spec) in view.services.iter_mut() {
            if let Some(found) = discovered.get(service.as_str()) {
                let mut ready: Vec<&DiscoveredEndpoint> = found.endpoints.iter().filter(|e| e.ready).collect();
                ready.sort_by(|a, b| (&a.workload, a.replica, &a.address).cmp(&(&b.workload, b.replica, &b.address)));
                for e in ready {
                    if !spec.endpoints.iter().any(|s| s.address == e.address) {
                        spec.endpoints.push(Endpoint { address: e.address.clone(), version: e.version.clone() });
                    }
                }
            }
        }
        let shaped: BTreeSet<String> = view
            .routes
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Route(route) => route.service.clone(),
                _ => None,
            })
            .collect();
        let named: BTreeSet<String> = view.routes.iter().map(|r| r.name().to_string()).collect();
        for service in view.services.keys() {
            let name = format!("default-{service}");
            if !shaped.contains(service) && !named.contains(&name) {
                view.routes.push(resource(
                    &name,
                    Spec::Route(RouteSpec {
                        hosts: Vec::new(),
                        service: Some(service.clone()),
                        rules: vec![RouteRule { backends: vec![WeightedBackend { service: service.clone(), version: None, weight: 1 }], ..Default::default() }],
                    }),
                ));
            }
        }
        view.routes.sort_by(|a, b| a.name().cmp(b.name()));
        view.passthrough.sort_by(|a, b| (a.kind(), a.name()).cmp(&(b.kind(), b.name())));
        view
    }

    /// Names of the proxies declared by `Proxy` resources.
    pub fn proxy_names(&self) -> impl Iterator<Item = &str> {
        self.proxies.keys().map(String::as_str)
    }

    /// The snapshot of `proxy`; a proxy without a `Proxy` resource is a gateway with default settings.
    pub fn snapshot_for(&self, proxy: &str, version: u64) -> ProxySnapshot {
        let spec = self.proxies.get(proxy);
        let mut out = Vec::new();
        if let Some(spec) = spec {
            out.push(resource(proxy, Spec::Proxy(spec.clone())));
        }
        match spec.and_then(|p| p.sidecar.as_ref()) {
            Some(sidecar) => self.sidecar(proxy, sidecar, &mut out),
            None => self.gateway(proxy, &mut out),
        }
        let hash = fnv1a(&serde_json::to_vec(&out).unwrap_or_default());
        ProxySnapshot { version, hash, resources: out }
    }

    fn gateway(&self, proxy: &str, out: &mut Vec<Resource>) {
        for (name, listener) in &self.listeners {
            if listener.proxy.as_deref().is_none_or(|p| p == proxy) {
                out.push(resource(name, Spec::Listener(listener.clone())));
            }
        }
        for (name, service) in &self.services {
            out.push(resource(name, Spec::Service(service.clone())));
        }
        out.extend(self.routes.iter().cloned());
        out.extend(self.passthrough.iter().cloned());
    }

    /// Generated listeners in front of the app and towards other services; the
    /// replica's own service resolves to its own app only.
    fn sidecar(&self, proxy: &str, sidecar: &SidecarSpec, out: &mut Vec<Resource>) {
        let inbound_route = format!("{proxy}-inbound");
        out.push(resource(&format!("{proxy}-inbound"), Spec::Listener(listener(&sidecar.inbound, "inbound", vec![inbound_route.clone()], None))));
        let mesh_routes: Vec<String> = self.routes.iter().map(|r| r.name().to_string()).collect();
        out.push(resource(&format!("{proxy}-outbound"), Spec::Listener(listener(&sidecar.outbound, "outbound", mesh_routes, None))));
        for (service, address) in &sidecar.upstreams {
            if self.services.contains_key(service) {
                out.push(resource(&format!("{proxy}-to-{service}"), Spec::Listener(listener(address, "outbound", Vec::new(), Some(service.clone())))));
            }
        }
        for (name, service) in &self.services {
            let mut service = service.clone();
            if *name == sidecar.service {
                service.endpoints = vec![Endpoint { address: sidecar.app.clone(), version: sidecar.version.clone() }];
            }
            out.push(resource(name, Spec::Service(service)));
        }
        if !self.services.contains_key(&sidecar.service) {
            out.push(resource(
                &sidecar.service,
                Spec::Service(ServiceSpec { ports: Vec::new(), endpoints: vec![Endpoint { address: sidecar.app.clone(), version: sidecar.version.clone() }] }),
            ));
        }
        out.push(resource(
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
        out.extend(self.routes.iter().cloned());
        out.extend(self.passthrough.iter().cloned());
    }
}

fn listener(address: &str, direction: &str, routes: Vec<String>, service: Option<String>) -> ListenerSpec {
    ListenerSpec {
        address: address.to_string(),
        protocol: ListenerProtocol::Http,
        tls: None,
        routes,
        tcp_backend: None,
        proxy: None,
        service,
        direction: direction.to_string(),
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
