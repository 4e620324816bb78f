//! Scoped config (issue 16, decision 0027): in a mesh where `web` declares
//! it calls `api` only, web's sidecar holds no config for the unrelated
//! `billing`; the app's first request for `billing` through the sidecar's
//! outbound listener is answered, by an on-demand lookup, and `billing`
//! stays in the sidecar's scope (`trefoil get proxies`); a host the mesh
//! does not have still gets a 404 and stays out of it.

use std::net::SocketAddr;

use serde_json::Value;
use trefoil_model::spec::{ListenerSpec, ProxySpec, WorkloadSpec};
use trefoil_model::Spec;
use trefoil_testkit::resources::{http_health, listener_spec, resource, workload};
use trefoil_testkit::{free_addr, http_get, testserver_path, Up};

fn address(up: &Up, process: &str, name: &str) -> SocketAddr {
    up.process(process)["addresses"][name].as_str().unwrap_or_else(|| panic!("{process} has no {name} address")).parse().unwrap()
}

/// `(kind, name)` of every resource the proxy at `admin` serves.
fn served(admin: SocketAddr) -> Vec<(String, String)> {
    let (_, _, body) = http_get(admin, "admin", "/config");
    let doc: Value = serde_json::from_str(&body).expect("/config is JSON");
    doc["resources"]
        .as_array()
        .expect("/config lists resources")
        .iter()
        .map(|r| (r["kind"].as_str().unwrap_or_default().to_string(), r["metadata"]["name"].as_str().unwrap_or_default().to_string()))
        .collect()
}

fn serves_service(admin: SocketAddr, name: &str) -> bool {
    served(admin).iter().any(|(kind, n)| kind == "Service" && n == name)
}

#[test]
fn a_sidecar_gets_what_its_workload_calls_and_looks_the_rest_up() {
    let server = testserver_path();
    assert!(server.is_file(), "build trefoil-testserver first: cargo build -p trefoil-testkit --bins");
    let server = server.display().to_string();
    let app = |service: &str, calls: Option<Vec<String>>| {
        let args = ["--listen", "127.0.0.1:${PORT}", "--name", &format!("{service}-0")].map(str::to_string);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        resource(service, Spec::Workload(WorkloadSpec { health: http_health("/healthz"), calls, ..workload(service, &server, &args) }))
    };
    let gateway = free_addr();
    let resources = vec![
        resource("edge", Spec::Proxy(ProxySpec::with_defaults())),
        resource("public", Spec::Listener(ListenerSpec { proxy: Some("edge".into()), ..listener_spec(gateway) })),
        app("web", Some(vec!["api".to_string()])),
        app("api", None),
        app("billing", None),
    ];
    let mut up = Up::start(resources);
    up.wait_ready(&["web-0", "api-0", "billing-0"]);
    up.wait_up();

    let admin = address(&up, "web-0-sidecar", "admin");
    let outbound = address(&up, "web-0-sidecar", "outbound");
    assert!(serves_service(admin, "api") && serves_service(admin, "web"), "{:?}", served(admin));
    assert!(!serves_service(admin, "billing"), "no config for a service web does not call: {:?}", served(admin));
    let web = up.proxies().into_iter().find(|p| p.name == "web-0").expect("web-0 registered");
    assert_eq!((web.scoped_services, web.looked_up.len()), (Some(2), 0), "{web:?}");
    // The unscoped sidecar of `api` still gets the whole mesh.
    assert!(serves_service(address(&up, "api-0-sidecar", "admin"), "billing"));

    // The declared call works as before.
    let (status, _, body) = http_get(outbound, "api", "/");
    assert_eq!((status, body.trim()), (200, "api-0"));

    // The first call to billing: looked up, routed, answered.
    let (status, _, body) = http_get(outbound, "billing", "/");
    assert_eq!((status, body.trim()), (200, "billing-0"), "the first request for an undeclared service");
    assert!(serves_service(admin, "billing"), "billing is in web's snapshot now");
    let web = up.proxies().into_iter().find(|p| p.name == "web-0").expect("web-0 registered");
    assert_eq!(web.looked_up, ["billing"], "{web:?}");
    assert_eq!(web.scoped_services, Some(3));
    let (status, _, _) = http_get(outbound, "billing", "/");
    assert_eq!(status, 200);

    // A host the mesh does not have: still no route, and not in the scope.
    let (status, _, _) = http_get(outbound, "nowhere", "/");
    assert_eq!(status, 404, "no route for a service the mesh lacks");
    let listed = up.cli(&["get", "proxies", "-o", "json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("get proxies -o json");
    let web = listed.as_array().and_then(|items| items.iter().find(|p| p["name"] == "web-0")).cloned().unwrap_or_default();
    assert_eq!(web["lookedUp"], serde_json::json!(["billing"]), "{listed}");
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}
