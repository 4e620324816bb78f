use std::sync::Arc;

use super::*;

const MESH: &str = r#"
apiVersion: trefoil.dev/v1alpha1
kind: Proxy
metadata: {name: gateway}
spec: {admin: "127.0.0.1:15000"}
---
apiVersion: trefoil.dev/v1alpha1
kind: Listener
metadata: {name: public}
spec: {address: "127.0.0.1:8080", proxy: gateway, direction: outbound}
---
apiVersion: trefoil.dev/v1alpha1
kind: Listener
metadata: {name: elsewhere}
spec: {address: "127.0.0.1:8081", proxy: other}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: web-v1}
spec: {service: web, version: v1, command: app}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: web-v2}
spec: {service: web, version: v2, command: app}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: api}
spec: {service: api, command: app}
---
apiVersion: trefoil.dev/v1alpha1
kind: Route
metadata: {name: web, resourceVersion: "7", generation: 2}
spec:
  hosts: [web.local]
  service: web
  rules:
  - backends: [{service: web, version: v1, weight: 80}, {service: web, version: v2, weight: 20}]
---
apiVersion: trefoil.dev/v1alpha1
kind: Endpoints
metadata: {name: web}
spec:
  endpoints:
  - {address: "127.0.0.1:9001", version: v1, workload: web-v1, replica: 0, ready: true}
  - {address: "127.0.0.1:9002", version: v2, workload: web-v2, replica: 0, ready: false}
---
apiVersion: trefoil.dev/v1alpha1
kind: Proxy
metadata: {name: api-0}
spec:
  admin: "127.0.0.1:15001"
  sidecar:
    workload: api
    service: api
    version: v1
    inbound: "127.0.0.1:9101"
    outbound: "127.0.0.1:9102"
    app: "127.0.0.1:9103"
    upstreams: {web: "127.0.0.1:9104"}
"#;

fn mesh() -> Vec<Resource> {
    trefoil_model::load_str(&Arc::from("mesh.yaml"), MESH).expect("mesh parses").into_iter().map(|s| s.resource).collect()
}

/// The resources a proxy decodes from the snapshot.
fn resources(snapshot: &ProxySnapshot) -> Vec<Resource> {
    let decoded: Vec<Resource> = serde_json::from_str(&snapshot.resources_json).expect("a snapshot is a JSON array of resources");
    assert_eq!(decoded.len(), snapshot.count);
    decoded
}

fn find(snapshot: &ProxySnapshot, kind: &str, name: &str) -> Option<Resource> {
    resources(snapshot).into_iter().find(|r| r.kind() == kind && r.name() == name)
}

fn service(snapshot: &ProxySnapshot, name: &str) -> ServiceSpec {
    match find(snapshot, "Service", name).expect("service present").spec {
        Spec::Service(s) => s,
        _ => unreachable!(),
    }
}

/// Every snapshot must pass the proxy's own validation, references included,
/// or the proxy would NACK it.
fn assert_valid(snapshot: &ProxySnapshot) {
    let text: Vec<String> = resources(snapshot).iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    let sources = trefoil_model::load_str(&Arc::from("snapshot"), &text.join("\n---\n")).expect("snapshot parses");
    if let Err(e) = trefoil_model::validate(&sources) {
        panic!("snapshot does not validate:\n{e}");
    }
}

#[test]
fn a_gateway_gets_its_listeners_every_route_and_ready_endpoints_only() {
    let snapshot = snapshot_for("gateway", &mesh(), 12);
    assert_valid(&snapshot);
    assert_eq!(snapshot.version, 12);
    assert!(find(&snapshot, "Listener", "public").is_some());
    assert!(find(&snapshot, "Listener", "elsewhere").is_none(), "another proxy's listener");
    let web = service(&snapshot, "web");
    assert_eq!(web.endpoints, vec![Endpoint { address: "127.0.0.1:9001".parse().unwrap(), version: "v1".into(), mesh_tls: false }]);
    assert!(find(&snapshot, "Route", "default-api").is_some(), "a service without a route gets a default one");
    assert!(find(&snapshot, "Route", "default-web").is_none(), "web has a route of its own");
    let route = find(&snapshot, "Route", "web").unwrap();
    assert_eq!(route.metadata.resource_version, None, "server bookkeeping is not part of a snapshot");
}

#[test]
fn a_sidecar_gets_generated_listeners_and_its_own_app_as_its_service() {
    let snapshot = snapshot_for("api-0", &mesh(), 3);
    assert_valid(&snapshot);
    let listeners: Vec<String> = resources(&snapshot).iter().filter(|r| r.kind() == "Listener").map(|r| r.name().to_string()).collect();
    assert_eq!(listeners, ["api-0-inbound", "api-0-outbound", "api-0-to-web"]);
    assert_eq!(
        service(&snapshot, "api").endpoints,
        vec![Endpoint { address: "127.0.0.1:9103".parse().unwrap(), version: "v1".into(), mesh_tls: false }]
    );
    assert_eq!(service(&snapshot, "web").endpoints.len(), 1);
    let Spec::Listener(to_web) = find(&snapshot, "Listener", "api-0-to-web").unwrap().spec else { unreachable!() };
    assert_eq!(to_web.service.as_deref(), Some("web"));
    let Spec::Listener(outbound) = find(&snapshot, "Listener", "api-0-outbound").unwrap().spec else { unreachable!() };
    assert!(!outbound.routes.contains(&"api-0-inbound".to_string()), "the outbound side must not route to the local app by catch-all");
}

/// Mesh TLS by default: a sidecar's inbound listener serves it, and every
/// endpoint that is a sidecar's inbound listener is reached with it, from
/// gateways and sidecars alike; a TrafficPolicy turns it to permissive or off.
#[test]
fn sidecar_inbound_listeners_and_endpoints_on_them_are_mesh_tls() {
    let with_web_sidecar = format!(
        "{MESH}---\napiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {{name: web-v1-0}}\nspec:\n  admin: \"127.0.0.1:15002\"\n  sidecar: {{workload: web-v1, service: web, version: v1, inbound: \"127.0.0.1:9001\", outbound: \"127.0.0.1:9005\", app: \"127.0.0.1:9006\"}}\n"
    );
    let load = |text: &str| -> Vec<Resource> {
        trefoil_model::load_str(&Arc::from("mesh.yaml"), text).expect("mesh parses").into_iter().map(|s| s.resource).collect()
    };
    let inbound = |snapshot: &ProxySnapshot, name: &str| match find(snapshot, "Listener", name).unwrap().spec {
        Spec::Listener(l) => l.mesh_tls,
        _ => unreachable!(),
    };
    let mesh = load(&with_web_sidecar);
    for proxy in ["gateway", "api-0"] {
        let snapshot = snapshot_for(proxy, &mesh, 1);
        assert_valid(&snapshot);
        assert!(service(&snapshot, "web").endpoints.iter().all(|e| e.mesh_tls), "{proxy} reaches web's sidecar with mesh TLS");
    }
    let sidecar = snapshot_for("web-v1-0", &mesh, 1);
    assert_eq!(inbound(&sidecar, "web-v1-0-inbound"), Some(MeshTls::Strict));
    assert!(service(&sidecar, "web").endpoints.iter().all(|e| !e.mesh_tls), "its own app is reached in plaintext");
    assert_eq!(inbound(&snapshot_for("api-0", &mesh, 1), "api-0-inbound"), Some(MeshTls::Strict));

    let policy = |mode: &str| {
        format!("{with_web_sidecar}---\napiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: web}}\nspec: {{service: web, tls: {{mode: {mode}}}}}\n")
    };
    let permissive = load(&policy("permissive"));
    assert_eq!(inbound(&snapshot_for("web-v1-0", &permissive, 1), "web-v1-0-inbound"), Some(MeshTls::Permissive));
    assert!(service(&snapshot_for("gateway", &permissive, 1), "web").endpoints.iter().all(|e| e.mesh_tls), "clients still send mTLS");
    let disabled = load(&policy("disable"));
    assert_eq!(inbound(&snapshot_for("web-v1-0", &disabled, 1), "web-v1-0-inbound"), None);
    assert!(service(&snapshot_for("gateway", &disabled, 1), "web").endpoints.iter().all(|e| !e.mesh_tls), "a plaintext hop");
    assert_eq!(inbound(&snapshot_for("api-0", &disabled, 1), "api-0-inbound"), Some(MeshTls::Strict), "other services keep it");
}

/// An opaque TCP service's sidecar forwards bytes to its app behind mesh
/// TLS, and other sidecars reach it through a TCP listener.
#[test]
fn a_tcp_service_gets_tcp_listeners_behind_mesh_tls() {
    let text = format!(
        "{MESH}---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{name: db, port: 5432, protocol: tcp}}]}}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {{name: web-v1-0}}\nspec:\n  admin: \"127.0.0.1:15002\"\n  sidecar: {{workload: web-v1, service: web, version: v1, inbound: \"127.0.0.1:9001\", outbound: \"127.0.0.1:9005\", app: \"127.0.0.1:9006\"}}\n"
    );
    let mesh: Vec<Resource> =
        trefoil_model::load_str(&Arc::from("mesh.yaml"), &text).expect("mesh parses").into_iter().map(|s| s.resource).collect();
    let listener = |snapshot: &ProxySnapshot, name: &str| match find(snapshot, "Listener", name).unwrap().spec {
        Spec::Listener(l) => l,
        _ => unreachable!(),
    };
    let sidecar = snapshot_for("web-v1-0", &mesh, 1);
    assert_valid(&sidecar);
    let inbound = listener(&sidecar, "web-v1-0-inbound");
    assert_eq!((inbound.protocol, inbound.mesh_tls), (ListenerProtocol::Tcp, Some(MeshTls::Strict)));
    assert_eq!(inbound.tcp_backend, Some(BackendRef { service: "web".into(), version: Some("v1".into()) }));
    let api = snapshot_for("api-0", &mesh, 1);
    assert_valid(&api);
    let to_web = listener(&api, "api-0-to-web");
    assert_eq!((to_web.protocol, to_web.tcp_backend.map(|b| b.service)), (ListenerProtocol::Tcp, Some("web".to_string())));
    assert!(service(&api, "web").endpoints.iter().all(|e| e.mesh_tls));
}

/// A transparent gateway's passthrough route shares the mesh with sidecars,
/// whose listeners are not transparent: it must not reach them, or they
/// would refuse the whole snapshot (seen in the transparent walkthrough).
#[test]
fn routes_to_an_original_destination_stay_off_sidecar_listeners() {
    let passthrough = r#"
---
apiVersion: trefoil.dev/v1alpha1
kind: Listener
metadata: {name: edge}
spec: {address: "10.0.0.1:15001", proxy: gateway, transparent: true}
---
apiVersion: trefoil.dev/v1alpha1
kind: Service
metadata: {name: original}
spec: {originalDestination: true}
---
apiVersion: trefoil.dev/v1alpha1
kind: Route
metadata: {name: through}
spec:
  hosts: ["*"]
  rules: [{backends: [{service: original}]}]
"#;
    let all: Vec<Resource> = trefoil_model::load_str(&Arc::from("mesh.yaml"), &format!("{MESH}{passthrough}"))
        .expect("mesh parses")
        .into_iter()
        .map(|s| s.resource)
        .collect();
    let sidecar = snapshot_for("api-0", &all, 3);
    assert_valid(&sidecar);
    let Spec::Listener(outbound) = find(&sidecar, "Listener", "api-0-outbound").unwrap().spec else { unreachable!() };
    assert!(outbound.routes.contains(&"web".to_string()), "{:?}", outbound.routes);
    assert!(!outbound.routes.contains(&"through".to_string()), "{:?}", outbound.routes);
    let gateway = snapshot_for("gateway", &all, 3);
    assert_valid(&gateway);
    assert!(find(&gateway, "Route", "through").is_some());
    assert!(find(&gateway, "Route", "default-original").is_none(), "an original destination has no name to route by");
}

#[test]
fn the_hash_follows_content_not_bookkeeping() {
    let mut resources = mesh();
    let before = snapshot_for("gateway", &resources, 1);
    for r in resources.iter_mut() {
        r.metadata.resource_version = Some("99".into());
        r.metadata.generation = Some(5);
    }
    let same = snapshot_for("gateway", &resources, 2);
    assert_eq!(before.hash, same.hash);
    for r in resources.iter_mut() {
        if let Spec::Endpoints(e) = &mut r.spec {
            e.endpoints[1].ready = true;
        }
    }
    let changed = snapshot_for("gateway", &resources, 3);
    assert_ne!(before.hash, changed.hash);
    assert_eq!(service(&changed, "web").endpoints.len(), 2);
    // A sidecar of another service sees web's endpoints too.
    assert_ne!(snapshot_for("api-0", &mesh(), 1).hash, snapshot_for("api-0", &resources, 1).hash);
}

#[test]
fn an_unknown_proxy_is_a_default_gateway() {
    let snapshot = snapshot_for("stranger", &mesh(), 1);
    assert_valid(&snapshot);
    assert!(find(&snapshot, "Proxy", "stranger").is_none());
    assert!(find(&snapshot, "Listener", "public").is_none());
    assert!(find(&snapshot, "Listener", "elsewhere").is_none());
}

const CHAINS: &str = r#"
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: acl}
spec: {service: acl, command: acl}
---
apiVersion: trefoil.dev/v1alpha1
kind: NetworkFunction
metadata: {name: acl, labels: {team: sec}}
spec: {service: acl, api: http}
---
apiVersion: trefoil.dev/v1alpha1
kind: NetworkFunction
metadata: {name: unused}
spec: {service: acl, api: http}
---
apiVersion: trefoil.dev/v1alpha1
kind: CNF
metadata: {name: edge}
spec:
  chain: [{function: acl}]
---
apiVersion: trefoil.dev/v1alpha1
kind: CNF
metadata: {name: idle}
spec:
  chain: [{function: unused}]
"#;

#[test]
fn chains_named_by_routes_reach_every_proxy_with_their_functions() {
    let text = MESH.replace(
        "  - backends: [{service: web, version: v1, weight: 80}, {service: web, version: v2, weight: 20}]",
        "  - backends: [{service: web, version: v1, weight: 80}, {service: web, version: v2, weight: 20}]\n    chain: edge",
    );
    let resources: Vec<Resource> = trefoil_model::load_str(&Arc::from("mesh.yaml"), &format!("{text}{CHAINS}"))
        .expect("mesh parses")
        .into_iter()
        .map(|s| s.resource)
        .collect();
    for proxy in ["gateway", "api-0"] {
        let snapshot = snapshot_for(proxy, &resources, 4);
        assert_valid(&snapshot);
        assert!(find(&snapshot, "CNF", "edge").is_some(), "{proxy}: the CNF a rule names");
        let acl = find(&snapshot, "NetworkFunction", "acl").expect("the function the chain calls");
        assert!(acl.metadata.labels.is_empty(), "bookkeeping stays out");
        assert!(find(&snapshot, "CNF", "idle").is_none(), "{proxy}: no rule names it");
        assert!(find(&snapshot, "NetworkFunction", "unused").is_some(), "{proxy}: a handler may call any function by name");
    }
}

#[test]
fn proxies_without_tracing_export_to_the_default_collector() {
    let mut resources = mesh();
    let view = MeshView::new(&resources).with_default_collector(Some("http://127.0.0.1:7070"));
    let tracing_of = |snapshot: &ProxySnapshot, name: &str| match find(snapshot, "Proxy", name).map(|r| r.spec) {
        Some(Spec::Proxy(p)) => p.tracing,
        _ => None,
    };
    let gateway = view.snapshot_for("gateway", 1);
    assert_valid(&gateway);
    assert_eq!(tracing_of(&gateway, "gateway").map(|t| t.otlp_endpoint).as_deref(), Some("http://127.0.0.1:7070"));
    assert_eq!(tracing_of(&view.snapshot_for("api-0", 1), "api-0").map(|t| t.otlp_endpoint).as_deref(), Some("http://127.0.0.1:7070"));
    // Without a collector, snapshots are as before.
    assert_eq!(MeshView::new(&resources).with_default_collector(None).snapshot_for("gateway", 1), snapshot_for("gateway", &resources, 1));
    // A proxy's own tracing settings win.
    for r in resources.iter_mut() {
        if let (Spec::Proxy(p), "gateway") = (&mut r.spec, r.metadata.name.as_str()) {
            p.tracing = Some(TracingSpec { otlp_endpoint: "http://collector:4318".into(), service_name: None, sampling_percent: 5.0 });
        }
    }
    let own = MeshView::new(&resources).with_default_collector(Some("http://127.0.0.1:7070")).snapshot_for("gateway", 1);
    assert_eq!(
        tracing_of(&own, "gateway").map(|t| (t.otlp_endpoint, t.sampling_percent)),
        Some(("http://collector:4318".to_string(), 5.0))
    );
}

const POLICIES: &str = r#"
---
apiVersion: trefoil.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-from-web, resourceVersion: "9"}
spec:
  selector: {service: api}
  action: allow
  rules: [{from: [{principals: ["spiffe://trefoil.local/ns/default/sa/web-v1"]}]}]
---
apiVersion: trefoil.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-no-admin}
spec:
  selector: {service: web}
  action: deny
  rules: [{to: [{paths: ["/admin*"]}]}]
"#;

#[test]
fn policies_go_to_the_proxies_in_front_of_what_they_select() {
    let mut all = mesh();
    all.extend(trefoil_model::load_str(&Arc::from("p.yaml"), POLICIES).unwrap().into_iter().map(|s| s.resource));
    let names = |s: &ProxySnapshot| -> Vec<String> {
        resources(s).iter().filter(|r| r.kind() == "AuthorizationPolicy").map(|r| r.name().to_string()).collect()
    };
    let sidecar = snapshot_for("api-0", &all, 4);
    assert_valid(&sidecar);
    assert_eq!(names(&sidecar), ["api-from-web"], "only the policies selecting the sidecar's service");
    assert_eq!(find(&sidecar, "AuthorizationPolicy", "api-from-web").unwrap().metadata.resource_version, None);
    let gateway = snapshot_for("gateway", &all, 4);
    assert!(names(&gateway).is_empty(), "a gateway with outbound listeners only enforces none");
    let other = snapshot_for("other", &all, 4);
    assert_valid(&other);
    assert_eq!(names(&other), ["api-from-web", "web-no-admin"], "`elsewhere` is an inbound listener (the default direction)");
}

/// `needs` (what `status.applied` counts) says exactly which resources a
/// proxy's snapshot depends on: taking a resource out of the mesh changes a
/// proxy's snapshot if and only if that proxy needs it.
#[test]
fn a_proxy_needs_exactly_the_resources_its_snapshot_depends_on() {
    let text = MESH.replace(
        "  - backends: [{service: web, version: v1, weight: 80}, {service: web, version: v2, weight: 20}]",
        "  - backends: [{service: web, version: v1, weight: 80}, {service: web, version: v2, weight: 20}]\n    chain: edge",
    );
    let mut all: Vec<Resource> = trefoil_model::load_str(&Arc::from("mesh.yaml"), &format!("{text}{CHAINS}"))
        .expect("mesh parses")
        .into_iter()
        .map(|s| s.resource)
        .collect();
    all.extend(trefoil_model::load_str(&Arc::from("p.yaml"), POLICIES).unwrap().into_iter().map(|s| s.resource));
    let view = MeshView::new(&all);
    let mut needed = BTreeMap::new();
    for proxy in ["gateway", "api-0", "other"] {
        let whole = view.snapshot_for(proxy, 1).hash;
        for (i, r) in all.iter().enumerate() {
            let mut without = all.clone();
            without.remove(i);
            let depends = MeshView::new(&without).snapshot_for(proxy, 1).hash != whole;
            assert_eq!(view.needs(proxy, r), depends, "{proxy} and {}/{}", r.kind(), r.name());
            *needed.entry(proxy).or_insert(0) += usize::from(depends);
        }
    }
    // Not everything, and not the same things: the cases above are real.
    assert!(needed.values().all(|n| *n < all.len()), "{needed:?}");
    assert!(!view.needs("gateway", all.iter().find(|r| r.name() == "elsewhere").unwrap()));
    assert!(!view.needs("api-0", all.iter().find(|r| r.name() == "idle").unwrap()));
}

/// A mesh where `web` declares it calls `api` only, and `billing` (with its
/// policy and a CNF on its route) is unrelated.
const SCOPED: &str = r#"
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, command: app, calls: [api]}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: api}
spec: {service: api, command: app, calls: [billing]}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: billing}
spec: {service: billing, command: app}
---
apiVersion: trefoil.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: billing}
spec: {service: billing, loadBalancer: leastRequest}
---
apiVersion: trefoil.dev/v1alpha1
kind: Service
metadata: {name: scanner}
spec: {endpoints: [{address: "127.0.0.1:9301"}]}
---
apiVersion: trefoil.dev/v1alpha1
kind: NetworkFunction
metadata: {name: scan}
spec: {service: scanner}
---
apiVersion: trefoil.dev/v1alpha1
kind: CNF
metadata: {name: inspect}
spec: {chain: [{function: scan}]}
---
apiVersion: trefoil.dev/v1alpha1
kind: Route
metadata: {name: billing}
spec:
  service: billing
  rules: [{chain: inspect, backends: [{service: billing}]}]
---
apiVersion: trefoil.dev/v1alpha1
kind: Proxy
metadata: {name: web-0}
spec:
  admin: "127.0.0.1:15001"
  sidecar:
    workload: web
    service: web
    version: v1
    inbound: "127.0.0.1:9101"
    outbound: "127.0.0.1:9102"
    app: "127.0.0.1:9103"
    upstreams: {api: "127.0.0.1:9104", billing: "127.0.0.1:9105"}
"#;

fn names(snapshot: &ProxySnapshot, kind: &str) -> Vec<String> {
    resources(snapshot).into_iter().filter(|r| r.kind() == kind).map(|r| r.name().to_string()).collect()
}

#[test]
fn a_sidecar_that_declares_its_calls_gets_only_those_services() {
    let mesh: Vec<Resource> =
        trefoil_model::load_str(&Arc::from("scoped.yaml"), SCOPED).expect("mesh parses").into_iter().map(|s| s.resource).collect();
    let view = MeshView::new(&mesh);
    let web = view.snapshot_for("web-0", 1);
    assert_valid(&web);
    assert_eq!(web.scope, Some(vec!["api".to_string(), "web".to_string()]));
    assert_eq!(names(&web, "Service"), ["api", "web"]);
    assert_eq!(names(&web, "Route"), ["web-0-inbound", "default-api", "default-web"]);
    assert_eq!(names(&web, "Workload"), ["api", "web"], "versions of what it calls");
    for kind in ["TrafficPolicy", "CNF", "NetworkFunction"] {
        assert!(names(&web, kind).is_empty(), "{kind} of an unrelated service");
    }
    let Spec::Listener(outbound) = find(&web, "Listener", "web-0-outbound").unwrap().spec else { unreachable!() };
    assert!(outbound.on_demand && outbound.routes == ["default-api", "default-web"], "{outbound:?}");
    assert!(find(&web, "Listener", "web-0-to-billing").is_none(), "no port for an undeclared service");
    let Spec::Workload(api) = find(&web, "Workload", "api").unwrap().spec else { unreachable!() };
    assert_eq!(api.calls, None, "another workload's calls are not the proxy's business");

    // Looked up on demand: billing joins with its route, policy, CNF and
    // the function's service, and the snapshot still validates.
    let looked_up = BTreeSet::from(["billing".to_string()]);
    let wider = view.snapshot_with("web-0", 2, &looked_up);
    assert_valid(&wider);
    assert_eq!(names(&wider, "Service"), ["api", "billing", "scanner", "web"]);
    assert_eq!(names(&wider, "TrafficPolicy"), ["billing"]);
    assert_eq!(names(&wider, "CNF"), ["inspect"]);
    assert_eq!(names(&wider, "NetworkFunction"), ["scan"]);
    assert!(find(&wider, "Listener", "web-0-to-billing").is_some());
    assert!(view.knows_service("billing") && !view.knows_service("nowhere"));

    // What status.applied counts for the scoped sidecar is what its
    // snapshot depends on, before and after the lookup.
    for looked_up in [BTreeSet::new(), looked_up] {
        let whole = view.snapshot_with("web-0", 1, &looked_up).hash;
        for (i, r) in mesh.iter().enumerate() {
            let mut without = mesh.clone();
            without.remove(i);
            let depends = MeshView::new(&without).snapshot_with("web-0", 1, &looked_up).hash != whole;
            assert_eq!(view.needs_with("web-0", r, &looked_up), depends, "{}/{} with {looked_up:?}", r.kind(), r.name());
        }
    }

    // Without `calls`, the whole mesh, as before.
    let unscoped: Vec<Resource> = mesh
        .into_iter()
        .map(|mut r| {
            if let Spec::Workload(w) = &mut r.spec {
                w.calls = None;
            }
            r
        })
        .collect();
    let whole = MeshView::new(&unscoped).snapshot_for("web-0", 1);
    assert_eq!(whole.scope, None);
    assert_eq!(names(&whole, "Service"), ["api", "billing", "scanner", "web"]);
}

#[test]
fn a_gateway_whose_listeners_name_their_routes_gets_only_what_those_need() {
    let text = MESH.replace(
        r#"spec: {address: "127.0.0.1:8080", proxy: gateway, direction: outbound}"#,
        r#"spec: {address: "127.0.0.1:8080", proxy: gateway, direction: outbound, routes: [web]}"#,
    );
    let mesh: Vec<Resource> =
        trefoil_model::load_str(&Arc::from("mesh.yaml"), &text).expect("mesh parses").into_iter().map(|s| s.resource).collect();
    let view = MeshView::new(&mesh);
    let gateway = view.snapshot_for("gateway", 1);
    assert_valid(&gateway);
    assert_eq!(gateway.scope, Some(vec!["web".to_string()]));
    assert_eq!(names(&gateway, "Service"), ["web"]);
    assert_eq!(names(&gateway, "Route"), ["web"]);
    assert_eq!(names(&gateway, "Workload"), ["web-v1", "web-v2"]);
    let whole = gateway.hash;
    for (i, r) in mesh.iter().enumerate() {
        let mut without = mesh.clone();
        without.remove(i);
        let depends = MeshView::new(&without).snapshot_for("gateway", 1).hash != whole;
        assert_eq!(view.needs("gateway", r), depends, "{}/{}", r.kind(), r.name());
    }
    // A listener that serves every route keeps the whole mesh.
    assert_eq!(MeshView::new(&self::mesh()).snapshot_for("gateway", 1).scope, None);
}
