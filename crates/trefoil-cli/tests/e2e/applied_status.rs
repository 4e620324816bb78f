//! Applied status end to end (decision 0025): a real `trefoil control` and a
//! real `trefoil proxy --control`. `apply --wait` returns once the proxy
//! acknowledged the change, names the proxy and its reason when it refused
//! it, and gives up with exit 3 when a stopped proxy never answers;
//! `get routes` shows APPLIED, `get proxies` the lag, and `check` flags a
//! proxy that fell behind.

use std::net::{SocketAddr, TcpListener};
use std::process::Output;

use serde_json::Value;
use trefoil_model::spec::{Endpoint, ProxySpec, ServiceSpec};
use trefoil_model::{Resource, Spec};
use trefoil_testkit::control::WAIT;
use trefoil_testkit::resources::{listener, resource, route, rule_to, secs, ToYaml};
use trefoil_testkit::{free_addr, run_with_timeout, scratch_dir, wait_until, Control, StreamProxy, TestServer};

/// A Service with one endpoint.
fn service(name: &str, endpoint: SocketAddr) -> Resource {
    let endpoints = vec![Endpoint { address: endpoint, version: "v1".into(), mesh_tls: false }];
    resource(name, Spec::Service(ServiceSpec { endpoints, ..ServiceSpec::default() }))
}

/// `trefoil ARGS` against `control`, bounded.
fn trefoil(control: &Control, args: &[&str]) -> Output {
    run_with_timeout(&mut control.command(args), WAIT * 2)
}

/// `trefoil apply -f FILE --wait ARGS` of `resources`.
fn apply_wait(control: &Control, dir: &std::path::Path, resources: &[Resource], args: &[&str]) -> Output {
    let file = dir.join("wait.yaml");
    std::fs::write(&file, resources.to_yaml()).unwrap();
    let mut all = vec!["apply", "-f", file.to_str().unwrap(), "--wait"];
    all.extend_from_slice(args);
    trefoil(control, &all)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// The proxy named `name` in `get proxies -o json`.
fn proxy_json(control: &Control, name: &str) -> Value {
    let out = trefoil(control, &["get", "proxies", "-o", "json"]);
    let items: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    items.as_array().and_then(|i| i.iter().find(|p| p["name"] == name).cloned()).unwrap_or(Value::Null)
}

#[test]
fn apply_waits_for_the_proxies_that_need_a_change_and_names_who_refused_it() {
    let dir = scratch_dir();
    let (api, grpc, public) = (free_addr(), free_addr(), free_addr());
    let (one, two) = (TestServer::named("one"), TestServer::named("two"));
    let control = Control::start_on(&dir.join("data"), api, grpc);
    let proxy = StreamProxy::start(&dir, grpc, "edge", 2);
    let gateway = ProxySpec { access_log: "off".into(), drain_timeout: secs(2), ..ProxySpec::with_defaults() };
    control.put(&resource("edge", Spec::Proxy(gateway)));
    control.put(&listener("public", public));
    control.put(&service("one", one.addr()));
    control.put(&service("two", two.addr()));
    control.put(&route("web", &["*"], vec![rule_to("one")]));
    control.wait_in_sync("edge");

    // A route change: --wait returns once the one proxy serves it.
    let out = apply_wait(&control, &dir, &[route("web", &["*"], vec![rule_to("two")])], &["-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out.stderr), control.log());
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    let applied = &results[0]["applied"];
    assert_eq!((applied["acknowledged"].as_u64(), applied["needed"].as_u64()), (Some(1), Some(1)), "{results}");
    assert_eq!(applied["nacks"], Value::Array(vec![]), "{results}");
    assert!(applied["slowestMs"].is_u64(), "{results}");
    // The object itself says so, and the table shows it.
    let got: Value = serde_json::from_slice(&trefoil(&control, &["get", "route", "web", "-o", "json"]).stdout).unwrap();
    assert_eq!(got["status"]["applied"]["acknowledged"], 1, "{got}");
    let table = text(&trefoil(&control, &["get", "routes"]).stdout);
    assert!(table.lines().next().is_some_and(|h| h.contains("APPLIED")), "{table}");
    let web = table.lines().find(|l| l.starts_with("Route") && l.contains(" web ")).unwrap_or_default();
    assert!(web.trim_end().ends_with("1/1"), "{table}");
    let proxies = text(&trefoil(&control, &["get", "proxies"]).stdout);
    assert!(proxies.lines().next().is_some_and(|h| h.contains("LAG") && h.contains("SUBSCRIBED")), "{proxies}");
    let edge = proxy_json(&control, "edge");
    assert_eq!(edge["lag"], 0, "{edge}");
    assert!(edge["subscribed"].as_u64().is_some_and(|n| n >= 5), "{edge}");

    // A listener on an address another socket holds: the proxy refuses it.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let out = apply_wait(&control, &dir, &[listener("taken", taken)], &["-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", text(&out.stderr), text(&out.stdout));
    let said = text(&out.stderr);
    assert!(said.contains("Listener/taken refused by edge") && said.contains("in use"), "{said}");
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nack = &results[0]["applied"]["nacks"][0];
    assert_eq!(nack["proxy"], "edge", "{results}");
    assert!(nack["reason"].as_str().is_some_and(|r| r.contains(&taken.to_string())), "{results}");
    let got: Value = serde_json::from_slice(&trefoil(&control, &["get", "listener", "taken", "-o", "json"]).stdout).unwrap();
    assert_eq!(got["status"]["applied"]["nacks"][0]["proxy"], "edge", "{got}");
    control.delete("Listener", "taken");
    control.wait_in_sync("edge");
    drop(squatter);

    // A stopped proxy: --wait gives up after its timeout (exit 3), the lag
    // shows, and `check` flags it. SIGCONT comes before the control plane's
    // keepalive (15 s) would drop the stream.
    proxy.signal(libc::SIGSTOP);
    let out = apply_wait(&control, &dir, &[route("web", &["*"], vec![rule_to("one")])], &["--timeout", "1s"]);
    let lagging = proxy_json(&control, "edge");
    let check = trefoil(&control, &["check", "--max-lag", "0", "-o", "json"]);
    proxy.signal(libc::SIGCONT);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("Route/web: 0/1 acknowledged"), "{}", text(&out.stderr));
    assert!(lagging["lag"].as_u64().is_some_and(|lag| lag >= 1), "{lagging}");
    let checks: Value = serde_json::from_slice(&check.stdout).unwrap();
    let flagged = checks["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "proxy edge lag").cloned());
    assert!(flagged.as_ref().is_some_and(|c| c["warning"] == true), "{checks}");
    // Resumed, it catches up and the wait is over.
    control.wait_in_sync("edge");
    wait_until("edge's lag back to 0", WAIT, || proxy_json(&control, "edge")["lag"] == 0);
    let got: Value = serde_json::from_slice(&trefoil(&control, &["get", "route", "web", "-o", "json"]).stdout).unwrap();
    assert_eq!(got["status"]["applied"]["acknowledged"], 1, "{got}");
    drop(proxy);
}
