//! What relates to what across resources: a Service's endpoints, the
//! Workloads serving it, the Routes sending to it and its TrafficPolicy; a
//! Route's backends and their ready endpoints; a CNF's steps; each
//! Workload's ready replicas. `trefoil describe` and `trefoil check` show
//! these; they are pure functions of the resources, so they live here with
//! the types and are tested without a control plane (they were computed
//! inside the CLI, between HTTP calls).
//!
//! The answers serialize as `trefoil describe -o json` prints them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::{CnfSpec, EndpointsSpec, NetworkFunctionSpec, RouteSpec, WorkloadSpec};
use crate::{Resource, Spec};

/// The resources a relation query reads: whatever a control plane holds of
/// the kinds `reads` names, in any order.
pub struct Mesh<'a> {
    resources: Vec<&'a Resource>,
}

/// One endpoint of a service, static or discovered.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub address: std::net::SocketAddr,
    pub version: String,
    pub ready: bool,
    /// `static` (declared on the Service) or the workload replica it belongs to.
    pub source: String,
}

/// A Workload serving a service, and how many of its replicas are ready.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadView {
    pub name: String,
    pub version: String,
    pub replicas: u32,
    pub ready: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRelations {
    pub endpoints: Vec<EndpointView>,
    pub workloads: Vec<WorkloadView>,
    /// Routes that shape, send or mirror traffic to it.
    pub routes: Vec<String>,
    pub traffic_policies: Vec<String>,
    /// The authorization policies in front of it, in the order they are evaluated.
    pub authorization_policies: Vec<PolicyView>,
    /// Whether a request no allow rule matches is refused (some allow policy applies).
    pub default_deny: bool,
}

/// One authorization policy selecting a service.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub name: String,
    pub action: crate::spec::AuthzAction,
    /// Set when the policy applies to one workload of the service only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    pub rules: usize,
}

/// One backend of one rule of a Route.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    pub rule: usize,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub weight: u32,
    /// Ready endpoints of the service, of the backend's version if it names one.
    pub ready_endpoints: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRelations {
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRelations {
    pub service: String,
    pub replicas: u32,
    pub ready: usize,
    /// Its replicas as discovered in `Endpoints/<service>`.
    pub endpoints: Vec<EndpointView>,
}

/// One step of a CNF's chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub step: usize,
    pub function: String,
    pub mode: String,
    pub phase: String,
    /// The function's Service; absent when no NetworkFunction has that name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub ready_endpoints: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnfRelations {
    pub steps: Vec<StepView>,
    /// Events with a handler.
    pub handlers: Vec<String>,
    /// `route` rule `n` names the CNF: `route#n`.
    pub routes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionRelations {
    pub service: String,
    pub ready_endpoints: usize,
    /// `cnf#step` for each chain step that runs the function.
    pub steps: Vec<String>,
}

/// A Workload against what it asks for: `ready` of `replicas` replicas.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadReadiness {
    pub name: String,
    pub service: String,
    pub replicas: u32,
    pub ready: usize,
}

impl WorkloadReadiness {
    /// As many ready replicas as it asks for.
    pub fn is_ready(&self) -> bool {
        self.ready >= self.replicas as usize
    }
}

/// The kinds the relations of a resource of `kind` are computed from: what
/// a client fetches before asking.
pub fn reads(kind: &str) -> &'static [&'static str] {
    match kind {
        "Service" => &["Service", "Endpoints", "Workload", "Route", "TrafficPolicy", "AuthorizationPolicy"],
        "Route" => &["Service", "Endpoints"],
        "Workload" => &["Endpoints"],
        "CNF" => &["NetworkFunction", "Service", "Endpoints", "Route"],
        "NetworkFunction" => &["CNF", "Service", "Endpoints"],
        "check" => &["Workload", "Endpoints", "TrafficPolicy"],
        "DatapathRule" => crate::datapath::relations::READS,
        _ => &[],
    }
}

/// A unit enum as the resource files spell it (`callout`, `response`).
fn word<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Whether `route` shapes or sends (or mirrors) traffic to `service`.
pub fn sends_to(route: &RouteSpec, service: &str) -> bool {
    route.service.as_deref() == Some(service)
        || route.rules.iter().any(|rule| {
            rule.backends.iter().any(|b| b.service == service)
                || rule.filters.request_mirror.as_ref().is_some_and(|m| m.backend.service == service)
        })
}

impl<'a> Mesh<'a> {
    pub fn new(resources: impl IntoIterator<Item = &'a Resource>) -> Self {
        Mesh { resources: resources.into_iter().collect() }
    }

    fn of(&self, kind: &'static str) -> impl Iterator<Item = &'a Resource> + '_ {
        self.resources.iter().copied().filter(move |r| r.kind() == kind)
    }

    fn named(&self, kind: &'static str, name: &str) -> Option<&'a Resource> {
        self.of(kind).find(|r| r.name() == name)
    }

    /// `Endpoints/<service>`: what the runtime discovered, if it wrote any.
    fn discovered(&self, service: &str) -> Option<&'a EndpointsSpec> {
        match self.named("Endpoints", service).map(|r| &r.spec) {
            Some(Spec::Endpoints(e)) => Some(e),
            _ => None,
        }
    }

    /// The endpoints of `service`: the Service's static ones (always ready),
    /// then the discovered ones.
    pub fn endpoints(&self, service: &str) -> Vec<EndpointView> {
        let mut out = Vec::new();
        if let Some(Spec::Service(s)) = self.named("Service", service).map(|r| &r.spec) {
            out.extend(s.endpoints.iter().map(|e| EndpointView {
                address: e.address,
                version: e.version.clone(),
                ready: true,
                source: "static".to_string(),
            }));
        }
        out.extend(self.discovered_endpoints(service, None));
        out
    }

    /// The discovered endpoints of `service`, only `workload`'s when given.
    fn discovered_endpoints(&self, service: &str, workload: Option<&str>) -> Vec<EndpointView> {
        let discovered = self.discovered(service).map(|e| e.endpoints.as_slice()).unwrap_or_default();
        discovered
            .iter()
            .filter(|e| workload.is_none_or(|w| e.workload == w))
            .map(|e| EndpointView {
                address: e.address,
                version: e.version.clone(),
                ready: e.ready,
                source: format!("{} replica {}", e.workload, e.replica),
            })
            .collect()
    }

    /// Ready endpoints of `service`, static and discovered.
    pub fn ready_endpoints(&self, service: &str) -> usize {
        self.endpoints(service).iter().filter(|e| e.ready).count()
    }

    /// Ready discovered replicas of `workload` in `Endpoints/<service>`.
    fn ready_replicas(&self, service: &str, workload: &str) -> usize {
        self.discovered(service).map_or(0, |d| d.endpoints.iter().filter(|e| e.ready && e.workload == workload).count())
    }

    pub fn service(&self, name: &str) -> ServiceRelations {
        let workloads = self
            .of("Workload")
            .filter_map(|r| match &r.spec {
                Spec::Workload(w) if w.service == name => Some(WorkloadView {
                    name: r.name().to_string(),
                    version: w.version.clone(),
                    replicas: w.replicas,
                    ready: self.ready_replicas(name, r.name()),
                }),
                _ => None,
            })
            .collect();
        let routes = self
            .of("Route")
            .filter(|r| matches!(&r.spec, Spec::Route(route) if sends_to(route, name)))
            .map(|r| r.name().to_string())
            .collect();
        let traffic_policies = self
            .of("TrafficPolicy")
            .filter(|r| matches!(&r.spec, Spec::TrafficPolicy(p) if p.service == name))
            .map(|r| r.name().to_string())
            .collect();
        // Every policy naming the service, those for one workload of it included.
        let selecting = self.of("AuthorizationPolicy").filter_map(|r| match &r.spec {
            Spec::AuthorizationPolicy(p) if p.selector.service.as_deref() == Some(name) => {
                Some(crate::authz::NamedPolicy { name: r.name().to_string(), spec: p.clone() })
            }
            _ => None,
        });
        let set = crate::authz::PolicySet::new(selecting);
        let authorization_policies: Vec<PolicyView> = set
            .policies()
            .iter()
            .map(|p| PolicyView {
                name: p.name.clone(),
                action: p.spec.action,
                workload: p.spec.selector.workload.clone(),
                rules: p.spec.rules.len(),
            })
            .collect();
        let default_deny = authorization_policies.iter().any(|p| p.action == crate::spec::AuthzAction::Allow);
        ServiceRelations { endpoints: self.endpoints(name), workloads, routes, traffic_policies, authorization_policies, default_deny }
    }

    pub fn route(&self, route: &RouteSpec) -> RouteRelations {
        let mut backends = Vec::new();
        for (i, rule) in route.rules.iter().enumerate() {
            for b in &rule.backends {
                let ready_endpoints =
                    self.endpoints(&b.service).iter().filter(|e| e.ready && b.version.as_ref().is_none_or(|v| &e.version == v)).count();
                backends.push(BackendView {
                    rule: i,
                    service: b.service.clone(),
                    version: b.version.clone(),
                    weight: b.weight,
                    ready_endpoints,
                });
            }
        }
        RouteRelations { backends }
    }

    pub fn workload(&self, name: &str, spec: &WorkloadSpec) -> WorkloadRelations {
        // A Workload's replicas are discovered ones, never the Service's static endpoints.
        let endpoints = self.discovered_endpoints(&spec.service, Some(name));
        let ready = endpoints.iter().filter(|e| e.ready).count();
        WorkloadRelations { service: spec.service.clone(), replicas: spec.replicas, ready, endpoints }
    }

    pub fn cnf(&self, name: &str, spec: &CnfSpec) -> CnfRelations {
        let steps = spec
            .chain
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let service = match self.named("NetworkFunction", &step.function).map(|f| &f.spec) {
                    Some(Spec::NetworkFunction(nf)) => Some(nf.service.clone()),
                    _ => None,
                };
                StepView {
                    step: i,
                    function: step.function.clone(),
                    mode: word(&step.mode),
                    phase: word(&step.phase),
                    ready_endpoints: service.as_deref().map_or(0, |s| self.ready_endpoints(s)),
                    service,
                }
            })
            .collect();
        let mut routes = Vec::new();
        for r in self.of("Route") {
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
        CnfRelations { steps, handlers: spec.handlers.keys().cloned().collect(), routes }
    }

    pub fn function(&self, name: &str, spec: &NetworkFunctionSpec) -> FunctionRelations {
        let mut steps = Vec::new();
        for r in self.of("CNF") {
            if let Spec::Cnf(cnf) = &r.spec {
                steps.extend(cnf.chain.iter().enumerate().filter(|(_, s)| s.function == name).map(|(i, _)| format!("{}#{i}", r.name())));
            }
        }
        FunctionRelations { service: spec.service.clone(), ready_endpoints: self.ready_endpoints(&spec.service), steps }
    }

    /// Every Workload against its ready replicas (the entries of its
    /// service's `Endpoints` that name it and are ready).
    pub fn workload_readiness(&self) -> Vec<WorkloadReadiness> {
        let mut ready: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for r in self.of("Endpoints") {
            if let Spec::Endpoints(e) = &r.spec {
                for ep in e.endpoints.iter().filter(|ep| ep.ready) {
                    *ready.entry((r.name(), ep.workload.as_str())).or_default() += 1;
                }
            }
        }
        self.of("Workload")
            .filter_map(|w| match &w.spec {
                Spec::Workload(spec) => Some(WorkloadReadiness {
                    name: w.name().to_string(),
                    service: spec.service.clone(),
                    replicas: spec.replicas,
                    ready: ready.get(&(spec.service.as_str(), w.name())).copied().unwrap_or(0),
                }),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MESH: &str = r#"
apiVersion: trefoil.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  endpoints: [{address: "127.0.0.1:9000", version: v0}]
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: web-v1}
spec: {service: web, version: v1, command: /bin/true, replicas: 2}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: api-v1}
spec: {service: api, version: v1, command: /bin/true, replicas: 1}
---
apiVersion: trefoil.dev/v1alpha1
kind: Endpoints
metadata: {name: web}
spec:
  endpoints:
  - {address: "127.0.0.1:9001", version: v1, workload: web-v1, replica: 0, ready: true}
  - {address: "127.0.0.1:9002", version: v1, workload: web-v1, replica: 1, ready: false}
---
apiVersion: trefoil.dev/v1alpha1
kind: Route
metadata: {name: edge}
spec:
  hosts: ["*"]
  rules:
  - backends: [{service: web, version: v1, weight: 80}, {service: web, weight: 20}]
    chain: scan
  - backends: [{service: api}]
---
apiVersion: trefoil.dev/v1alpha1
kind: Route
metadata: {name: other}
spec:
  hosts: ["other"]
  rules:
  - backends: [{service: api}]
---
apiVersion: trefoil.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: web-policy}
spec: {service: web}
---
apiVersion: trefoil.dev/v1alpha1
kind: NetworkFunction
metadata: {name: scanner}
spec: {service: web, api: http}
---
apiVersion: trefoil.dev/v1alpha1
kind: CNF
metadata: {name: scan}
spec:
  chain:
  - {function: scanner, mode: callout, phase: request}
  - {function: missing, mode: tap, phase: response}
  handlers: {checked: "return"}
"#;

    fn mesh() -> Vec<Resource> {
        crate::load_str(&Arc::from("mesh.yaml"), MESH).unwrap().into_iter().map(|s| s.resource).collect()
    }

    #[test]
    fn a_service_relates_its_endpoints_workloads_routes_and_policy() {
        let resources = mesh();
        let s = Mesh::new(&resources).service("web");
        let sources: Vec<(&str, bool)> = s.endpoints.iter().map(|e| (e.source.as_str(), e.ready)).collect();
        assert_eq!(sources, [("static", true), ("web-v1 replica 0", true), ("web-v1 replica 1", false)]);
        assert_eq!(s.workloads, [WorkloadView { name: "web-v1".into(), version: "v1".into(), replicas: 2, ready: 1 }]);
        assert_eq!((s.routes, s.traffic_policies), (vec!["edge".to_string()], vec!["web-policy".to_string()]));
        assert_eq!(Mesh::new(&resources).service("api").routes, ["edge", "other"]);
    }

    #[test]
    fn a_route_counts_each_backends_ready_endpoints_of_its_version() {
        let resources = mesh();
        let Some(Spec::Route(route)) = resources.iter().find(|r| r.name() == "edge").map(|r| &r.spec) else { panic!("no route") };
        let related = Mesh::new(&resources).route(route);
        let ready: Vec<(usize, &str, usize)> = related.backends.iter().map(|b| (b.rule, b.service.as_str(), b.ready_endpoints)).collect();
        // v1: one ready replica; any version: the static endpoint too; api: none.
        assert_eq!(ready, [(0, "web", 1), (0, "web", 2), (1, "api", 0)]);
    }

    #[test]
    fn a_workload_shows_its_own_replicas_only() {
        let resources = mesh();
        let Some(Spec::Workload(spec)) = resources.iter().find(|r| r.name() == "web-v1").map(|r| &r.spec) else { panic!() };
        let w = Mesh::new(&resources).workload("web-v1", spec);
        assert_eq!((w.replicas, w.ready, w.endpoints.len()), (2, 1, 2));
        assert!(w.endpoints.iter().all(|e| e.source != "static"));
    }

    #[test]
    fn a_cnf_and_its_functions_point_at_each_other() {
        let resources = mesh();
        let mesh = Mesh::new(&resources);
        let Some(Spec::Cnf(cnf)) = resources.iter().find(|r| r.name() == "scan").map(|r| &r.spec) else { panic!() };
        let c = mesh.cnf("scan", cnf);
        assert_eq!(
            c.steps[0],
            StepView {
                step: 0,
                function: "scanner".into(),
                mode: "callout".into(),
                phase: "request".into(),
                service: Some("web".into()),
                ready_endpoints: 2
            }
        );
        assert_eq!((c.steps[1].service.as_deref(), c.steps[1].mode.as_str()), (None, "tap"));
        assert_eq!((c.handlers, c.routes), (vec!["checked".to_string()], vec!["edge#0".to_string()]));
        let Some(Spec::NetworkFunction(nf)) = resources.iter().find(|r| r.name() == "scanner").map(|r| &r.spec) else { panic!() };
        assert_eq!(
            mesh.function("scanner", nf),
            FunctionRelations { service: "web".into(), ready_endpoints: 2, steps: vec!["scan#0".into()] }
        );
    }

    #[test]
    fn each_workload_against_its_ready_replicas() {
        let resources = mesh();
        let readiness = Mesh::new(&resources).workload_readiness();
        let seen: Vec<(&str, usize, bool)> = readiness.iter().map(|w| (w.name.as_str(), w.ready, w.is_ready())).collect();
        assert_eq!(seen, [("web-v1", 1, false), ("api-v1", 0, false)]);
    }
}
