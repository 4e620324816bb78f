//! The service graph the portal draws: services, gateways, CNFs (with their
//! chain of steps) and network functions as nodes; edges from the routes
//! (gateway to CNF or service, CNF to the services behind it, with each
//! backend's weight) and from the CNFs (to each function in the chain, and
//! to those its handlers call), with the live request rate and error rate
//! of the service each edge leads to.
//!
//! Nodes are grouped by the `namespace` label (`default` without one), so a
//! page can fold a thousand services into a few groups.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use trefoil_model::spec::{CnfSpec, Phase, StepMode};
use trefoil_model::{Resource, Spec};

use crate::live::Traffic;

/// The kinds a graph is built from.
pub const KINDS: [&str; 8] = ["Service", "Workload", "Proxy", "Listener", "Route", "CNF", "NetworkFunction", "Rollout"];

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `Kind/name`: `Service/web`, `Gateway/gateway`, `CNF/edge`, `Function/policy`.
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    pub group: String,
    /// The portal page that shows it.
    pub href: String,
    /// A CNF's chain, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Requests per second into it (a service, or a function's service).
    pub rps: f64,
    /// Share of those answered with an error, 0..1; `None` without requests.
    pub error_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub function: String,
    pub mode: StepMode,
    pub phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// `route`, `chain` (a CNF's step) or `call` (a handler's call).
    pub kind: &'static str,
    /// The Route it comes from, for route edges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The backend's version, when the route names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The backend's share of its rule's traffic, in percent, when the rule
    /// has several backends or names a version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// How the step meets traffic, for chain edges (`callout / request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub rps: f64,
    pub error_rate: Option<f64>,
}

fn group_of(r: &Resource) -> String {
    r.metadata.labels.get("namespace").cloned().unwrap_or_else(|| "default".to_string())
}

/// Requests per second into `service` (one version, or all) and their error rate.
fn rate(traffic: &[Traffic], service: &str, version: Option<&str>) -> (f64, Option<f64>) {
    rates(traffic, &[(service, version)])
}

/// The same, summed over several backends.
fn rates(traffic: &[Traffic], backends: &[(&str, Option<&str>)]) -> (f64, Option<f64>) {
    let (mut rps, mut requests, mut failures) = (0.0, 0.0, 0.0);
    for t in traffic {
        if backends.iter().any(|(service, version)| t.row.service == *service && version.is_none_or(|v| t.row.version == v)) {
            rps += t.row.rps;
            requests += t.row.requests;
            failures += t.row.requests * (1.0 - t.row.success_rate.unwrap_or(1.0));
        }
    }
    (rps, (requests > 0.0).then(|| failures / requests))
}

/// The functions a CNF's handlers call (`trefoil.call("name")`).
fn called(cnf: &CnfSpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for script in cnf.handlers.values() {
        let mut rest = script.as_str();
        while let Some(at) = rest.find("trefoil.call(") {
            rest = &rest[at + "trefoil.call(".len()..];
            let quoted = rest.trim_start();
            let Some(quote) = quoted.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
            if let Some(end) = quoted[1..].find(quote) {
                out.insert(quoted[1..1 + end].to_string());
            }
        }
    }
    out
}

fn mode_name(mode: StepMode) -> &'static str {
    match mode {
        StepMode::Callout => "callout",
        StepMode::Inline => "inline",
        StepMode::Tap => "tap",
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Request => "request",
        Phase::Response => "response",
    }
}

/// Adds a node unless one with `id` is there.
fn add(
    nodes: &mut BTreeMap<String, Node>,
    id: String,
    kind: &'static str,
    name: &str,
    group: String,
    href: String,
    rate: (f64, Option<f64>),
) {
    nodes.entry(id.clone()).or_insert(Node {
        id,
        kind,
        name: name.to_string(),
        group,
        href,
        steps: Vec::new(),
        rps: rate.0,
        error_rate: rate.1,
    });
}

/// The graph of `resources`, with `traffic` on its nodes and edges.
pub fn build(resources: &[Resource], traffic: &[Traffic]) -> Graph {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut edges = Vec::new();
    let resource_href = |kind: &str, name: &str| format!("/resources#{kind}/{name}");
    let service_node = |name: &str| format!("Service/{name}");
    let mut functions: BTreeMap<&str, &str> = BTreeMap::new();
    let mut gateways = Vec::new();
    let mut listeners = Vec::new();
    let mut rollouts = Vec::new();
    for r in resources {
        let name = r.name();
        let group = group_of(r);
        match &r.spec {
            Spec::Service(_) => {
                add(&mut nodes, service_node(name), "service", name, group, resource_href("Service", name), rate(traffic, name, None))
            }
            Spec::Workload(w) => add(
                &mut nodes,
                service_node(&w.service),
                "service",
                &w.service,
                group,
                resource_href("Service", &w.service),
                rate(traffic, &w.service, None),
            ),
            Spec::Proxy(p) if p.sidecar.is_none() => {
                gateways.push(name);
                add(&mut nodes, format!("Gateway/{name}"), "gateway", name, group, resource_href("Proxy", name), (0.0, None));
            }
            Spec::Listener(l) => listeners.push(l),
            Spec::NetworkFunction(f) => {
                functions.insert(name, f.service.as_str());
                add(
                    &mut nodes,
                    format!("Function/{name}"),
                    "function",
                    name,
                    group,
                    resource_href("NetworkFunction", name),
                    rate(traffic, &f.service, None),
                );
            }
            Spec::Cnf(_) => add(&mut nodes, format!("CNF/{name}"), "cnf", name, group, format!("/cnfs#{name}"), (0.0, None)),
            Spec::Rollout(rollout) => rollouts.push((name, rollout.service.as_str(), group)),
            _ => {}
        }
    }
    // A rolled-out service's page is its rollout.
    for (name, service, group) in rollouts {
        let id = service_node(service);
        add(&mut nodes, id.clone(), "service", service, group, String::new(), rate(traffic, service, None));
        if let Some(n) = nodes.get_mut(&id) {
            n.href = format!("/rollouts#{name}");
        }
    }
    for r in resources {
        let Spec::Cnf(cnf) = &r.spec else { continue };
        let id = format!("CNF/{}", r.name());
        if let Some(n) = nodes.get_mut(&id) {
            n.steps = cnf.chain.iter().map(|s| Step { function: s.function.clone(), mode: s.mode, phase: s.phase }).collect();
        }
        let mut seen = BTreeSet::new();
        for step in &cnf.chain {
            if !seen.insert(&step.function) {
                continue;
            }
            let (rps, error_rate) = functions.get(step.function.as_str()).map_or((0.0, None), |service| rate(traffic, service, None));
            let how: Vec<String> = cnf
                .chain
                .iter()
                .filter(|s| s.function == step.function)
                .map(|s| format!("{} / {}", mode_name(s.mode), phase_name(s.phase)))
                .collect();
            edges.push(Edge {
                from: id.clone(),
                to: format!("Function/{}", step.function),
                kind: "chain",
                route: None,
                version: None,
                weight: None,
                step: Some(how.join(", ")),
                rps,
                error_rate,
            });
        }
        for function in called(cnf) {
            let (rps, error_rate) = functions.get(function.as_str()).map_or((0.0, None), |service| rate(traffic, service, None));
            edges.push(Edge {
                from: id.clone(),
                to: format!("Function/{function}"),
                kind: "call",
                route: None,
                version: None,
                weight: None,
                step: None,
                rps,
                error_rate,
            });
        }
    }
    for r in resources {
        let Spec::Route(route) = &r.spec else { continue };
        let route_name = r.name();
        // Who sends this route's traffic: the gateways serving it, or the
        // service it shapes (a mesh route, reached through sidecars).
        let mut sources: Vec<String> = if route.hosts.is_empty() {
            Vec::new()
        } else {
            gateways
                .iter()
                .filter(|g| {
                    listeners.iter().any(|l| {
                        l.service.is_none()
                            && l.proxy.as_deref().is_none_or(|p| p == **g)
                            && (l.routes.is_empty() || l.routes.iter().any(|n| n == route_name))
                    })
                })
                .map(|g| format!("Gateway/{g}"))
                .collect()
        };
        if sources.is_empty() {
            if let Some(service) = &route.service {
                sources.push(service_node(service));
            }
        }
        for rule in &route.rules {
            let total: u32 = rule.backends.iter().map(|b| b.weight).sum();
            let through = rule.chain.as_ref().map(|c| format!("CNF/{c}"));
            let mut froms = sources.clone();
            if let Some(cnf) = &through {
                for from in &sources {
                    let backends: Vec<(&str, Option<&str>)> =
                        rule.backends.iter().map(|b| (b.service.as_str(), b.version.as_deref())).collect();
                    let (rps, error_rate) = rates(traffic, &backends);
                    edges.push(Edge {
                        from: from.clone(),
                        to: cnf.clone(),
                        kind: "route",
                        route: Some(route_name.to_string()),
                        version: None,
                        weight: None,
                        step: None,
                        rps,
                        error_rate,
                    });
                }
                froms = vec![cnf.clone()];
            }
            for backend in &rule.backends {
                let to = service_node(&backend.service);
                add(
                    &mut nodes,
                    to.clone(),
                    "service",
                    &backend.service,
                    group_of(r),
                    resource_href("Service", &backend.service),
                    rate(traffic, &backend.service, None),
                );
                let (rps, error_rate) = rate(traffic, &backend.service, backend.version.as_deref());
                // A version's share is shown even alone (100%): a finished rollout leaves one backend.
                let weight = (total > 0 && (rule.backends.len() > 1 || backend.version.is_some())).then(|| backend.weight * 100 / total);
                for from in froms.iter().filter(|f| **f != to || backend.version.is_some()) {
                    edges.push(Edge {
                        from: from.clone(),
                        to: to.clone(),
                        kind: "route",
                        route: Some(route_name.to_string()),
                        version: backend.version.clone(),
                        weight,
                        step: None,
                        rps,
                        error_rate,
                    });
                }
            }
        }
    }
    // An edge to something that does not exist (a CNF naming a missing
    // function) would point nowhere: the node is drawn, marked by its kind.
    for e in &edges {
        if !nodes.contains_key(&e.to) {
            let (kind, name) = e.to.split_once('/').unwrap_or(("", &e.to));
            let kind = if kind == "Function" { "function" } else { "service" };
            nodes.insert(
                e.to.clone(),
                Node {
                    id: e.to.clone(),
                    kind,
                    name: name.to_string(),
                    group: "default".into(),
                    href: String::new(),
                    steps: Vec::new(),
                    rps: 0.0,
                    error_rate: None,
                },
            );
        }
    }
    // A function's service is drawn as the function (its rate is on it),
    // unless something routes to it directly.
    let backing: BTreeSet<String> = functions.values().map(|s| service_node(s)).collect();
    nodes.retain(|id, _| !backing.contains(id) || edges.iter().any(|e| e.to == *id || e.from == *id));
    Graph { nodes: nodes.into_values().collect(), edges }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use trefoil_metrics::Row;

    use super::*;

    fn load(yaml: &str) -> Vec<Resource> {
        trefoil_model::load_str(&Arc::from("test"), yaml).unwrap().into_iter().map(|s| s.resource).collect()
    }

    const MESH: &str = "\
apiVersion: trefoil.dev/v1alpha1
kind: Proxy
metadata: {name: gateway}
spec: {}
---
apiVersion: trefoil.dev/v1alpha1
kind: Listener
metadata: {name: gateway-http}
spec: {address: \"127.0.0.1:8088\", proxy: gateway}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: web-v1, labels: {namespace: shop}}
spec: {service: web, version: v1, command: x}
---
apiVersion: trefoil.dev/v1alpha1
kind: Service
metadata: {name: policy}
spec: {}
---
apiVersion: trefoil.dev/v1alpha1
kind: NetworkFunction
metadata: {name: policy}
spec: {service: policy, api: http}
---
apiVersion: trefoil.dev/v1alpha1
kind: NetworkFunction
metadata: {name: antivirus}
spec: {service: antivirus, api: http}
---
apiVersion: trefoil.dev/v1alpha1
kind: CNF
metadata: {name: edge}
spec:
  chain:
  - function: policy
  - {function: policy, mode: tap, phase: response}
  handlers:
    policy_check: |
      trefoil.call(\"antivirus\")
---
apiVersion: trefoil.dev/v1alpha1
kind: Route
metadata: {name: front}
spec:
  hosts: [\"*\"]
  rules:
  - backends: [{service: web, version: v1, weight: 80}, {service: web, version: v2, weight: 20}]
    chain: edge
";

    fn traffic(service: &str, version: &str, rps: f64, success: f64) -> Traffic {
        let row = Row {
            service: service.into(),
            version: version.into(),
            direction: "inbound".into(),
            requests: rps * 2.0,
            rps,
            success_rate: Some(success),
            p50_seconds: None,
            p99_seconds: None,
        };
        Traffic { row, total: rps * 10.0 }
    }

    #[test]
    fn routes_cnfs_and_calls_become_edges_with_weights_and_rates() {
        let live = [traffic("web", "v1", 8.0, 1.0), traffic("web", "v2", 2.0, 0.5), traffic("policy", "", 10.0, 1.0)];
        let g = build(&load(MESH), &live);
        let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        // Service/policy is drawn as Function/policy.
        assert_eq!(ids, ["CNF/edge", "Function/antivirus", "Function/policy", "Gateway/gateway", "Service/web"]);
        let cnf = &g.nodes[0];
        let steps: Vec<(&str, StepMode, Phase)> = cnf.steps.iter().map(|s| (s.function.as_str(), s.mode, s.phase)).collect();
        assert_eq!(steps, [("policy", StepMode::Callout, Phase::Request), ("policy", StepMode::Tap, Phase::Response)]);
        let web = g.nodes.iter().find(|n| n.id == "Service/web").unwrap();
        assert_eq!((web.group.as_str(), web.rps), ("shop", 10.0));
        assert_eq!(web.error_rate, Some(0.1));

        let edge = |from: &str, to: &str, version: Option<&str>| {
            g.edges
                .iter()
                .find(|e| e.from == from && e.to == to && e.version.as_deref() == version)
                .unwrap_or_else(|| panic!("{from} -> {to} {version:?}: {:#?}", g.edges))
        };
        assert_eq!(edge("Gateway/gateway", "CNF/edge", None).rps, 10.0);
        let v1 = edge("CNF/edge", "Service/web", Some("v1"));
        assert_eq!((v1.weight, v1.rps, v1.error_rate), (Some(80), 8.0, Some(0.0)));
        let v2 = edge("CNF/edge", "Service/web", Some("v2"));
        assert_eq!((v2.weight, v2.rps, v2.error_rate), (Some(20), 2.0, Some(0.5)));
        let step = edge("CNF/edge", "Function/policy", None);
        assert_eq!((step.kind, step.step.as_deref(), step.rps), ("chain", Some("callout / request, tap / response"), 10.0));
        assert_eq!(edge("CNF/edge", "Function/antivirus", None).kind, "call");
        assert_eq!(g.edges.len(), 5, "one edge per function, however many steps use it: {:#?}", g.edges);
    }

    #[test]
    fn a_thousand_services_fall_into_their_namespaces() {
        let mut yaml = String::new();
        for i in 0..1000 {
            yaml.push_str(&format!(
                "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{i}, labels: {{namespace: ns{}}}}}\nspec: {{}}\n---\n\
                 apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {{name: r{i}}}\nspec:\n  service: s{i}\n  rules:\n  - backends: [{{service: s{}}}]\n---\n",
                i % 10,
                (i + 1) % 1000
            ));
        }
        let g = build(&load(&yaml), &[]);
        assert_eq!(g.nodes.len(), 1000);
        assert_eq!(g.edges.len(), 1000);
        let groups: BTreeSet<&str> = g.nodes.iter().map(|n| n.group.as_str()).collect();
        assert_eq!(groups.len(), 10);
        assert!(g.edges.iter().all(|e| e.from != e.to));
    }

    #[test]
    fn handler_calls_are_found_in_either_quote() {
        let cnf: CnfSpec = serde_json::from_value(serde_json::json!({
            "chain": [{"function": "a"}],
            "handlers": {"x": "trefoil.call('b')\nif y then trefoil.call( \"c\" ) end\ntrefoil.call(name)"}
        }))
        .unwrap();
        assert_eq!(called(&cnf).into_iter().collect::<Vec<_>>(), ["b", "c"]);
    }
}
