//! Hot reload, graceful shutdown, config errors and the metrics format of a
//! real proxy process.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use trefoil_model::spec::{LocalRateLimit, RetryOn, RouteFilters, RouteRule};
use trefoil_model::Resource;
use trefoil_testkit::resources::{listener, ms, retry, route, route_all, rule_to, secs, service, version_backend};
use trefoil_testkit::{
    count, curl_many, free_addr, http_get, repo_root, run_with_timeout, scratch_dir, trefoil_command, wait_until, Proxy, TestServer, ToYaml,
};

fn split_route(w1: u32, w2: u32) -> Resource {
    route(
        "web",
        &["*"],
        vec![RouteRule { backends: vec![version_backend("web", "v1", w1), version_backend("web", "v2", w2)], ..RouteRule::default() }],
    )
}

/// wrk's summary: (requests, non-2xx responses, socket errors).
fn wrk_summary(text: &str) -> (u64, u64, String) {
    let requests = text.lines().find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok())).unwrap_or(0);
    let non_2xx =
        text.lines().find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:").and_then(|n| n.trim().parse().ok())).unwrap_or(0);
    let socket_errors = text.lines().find(|l| l.contains("Socket errors")).unwrap_or("").to_string();
    (requests, non_2xx, socket_errors)
}

#[test]
fn hot_reload_under_load_loses_no_request() {
    let (v1, v2) = (TestServer::named("v1"), TestServer::named("v2"));
    let public = free_addr();
    let base = [listener("public", public), service("web", &[(v1.addr(), "v1"), (v2.addr(), "v2")])];
    let mut proxy = Proxy::start([&base[..], &[split_route(100, 0)]].concat());
    let url = format!("http://{public}/");
    let load =
        std::thread::spawn(move || run_with_timeout(Command::new("wrk").args(["-t2", "-c16", "-d4s", &url]), Duration::from_secs(30)));
    // Wait until wrk is sending, then reload five times while it runs:
    // by file change and by SIGHUP, moving traffic between versions.
    wait_until("load to reach v1", Duration::from_secs(10), || v1.requests() > 100);
    for (i, (w1, w2)) in [(50, 50), (0, 100), (90, 10), (10, 90), (100, 0)].into_iter().enumerate() {
        proxy.rewrite([&base[..], &[split_route(w1, w2)]].concat());
        if i % 2 == 1 {
            proxy.signal(libc::SIGHUP);
        }
        let want = i as u64 + 2;
        wait_until(&format!("config version {want}"), Duration::from_secs(10), || proxy.config_version() >= want);
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = load.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (requests, non_2xx, socket_errors) = wrk_summary(&text);
    assert!(requests > 1000, "wrk made only {requests} requests:\n{text}");
    assert_eq!(non_2xx, 0, "{text}");
    assert!(socket_errors.is_empty(), "{socket_errors}");
    assert!(v2.requests() > 0, "the reloads moved traffic to v2");
    assert_eq!(proxy.metric_sum("trefoil_config_reloads_total", &["failure"]), 0.0);
}

#[test]
fn an_invalid_reload_keeps_the_running_config_and_says_where() {
    let v1 = TestServer::named("v1");
    let public = free_addr();
    let base = [listener("public", public), service("web", &[(v1.addr(), "v1")])];
    let mut proxy = Proxy::start([&base[..], &[route_all("web")]].concat());
    // Text, not a typed Route: no Route can hold this weight, and the error's line is the point.
    let heavy = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [\"*\"]\n  rules:\n  - backends:\n    - service: web\n      weight: heavy\n";
    proxy.rewrite(format!("{}---\n{heavy}", base.to_yaml()));
    wait_until("the rejected reload", Duration::from_secs(10), || proxy.metric_sum("trefoil_config_reloads_total", &["failure"]) >= 1.0);
    assert_eq!(proxy.config_version(), 1);
    assert_eq!(http_get(public, "x", "/").0, 200);
    let stderr = proxy.stderr();
    let config = proxy.config.display().to_string();
    assert!(stderr.contains(&format!("{config}:")) && stderr.contains("spec.rules[0].backends[0].weight"), "{stderr}");
    // The line number points at `weight: heavy`.
    let line = std::fs::read_to_string(&proxy.config).unwrap().lines().position(|l| l.contains("weight: heavy")).unwrap() + 1;
    assert!(stderr.contains(&format!("{config}:{line}:")), "expected line {line} in:\n{stderr}");
    // A reload that binds a new listener, then one that drops it.
    let extra = free_addr();
    proxy.rewrite([&base[..], &[listener("extra", extra), route_all("web")]].concat());
    wait_until("the extra listener", Duration::from_secs(10), || TcpStream::connect(extra).is_ok());
    assert_eq!(http_get(extra, "x", "/").0, 200);
    proxy.rewrite([&base[..], &[route_all("web")]].concat());
    wait_until("the extra listener to close", Duration::from_secs(10), || TcpStream::connect(extra).is_err());
    assert_eq!(http_get(public, "x", "/").0, 200);
}

#[test]
fn graceful_shutdown_drains_in_flight_requests() {
    let slow = TestServer::spawn(&["--name", "slow", "--delay", "1000"]);
    let public = free_addr();
    let mut proxy = Proxy::start(vec![listener("public", public), service("web", &[(slow.addr(), "v1")]), route_all("web")]);
    let in_flight = std::thread::spawn(move || http_get(public, "x", "/").0);
    wait_until("the request to reach the upstream", Duration::from_secs(10), || slow.requests() == 1);
    proxy.signal(libc::SIGTERM);
    wait_until("the listener to stop accepting", Duration::from_secs(5), || TcpStream::connect(public).is_err());
    assert_eq!(in_flight.join().unwrap(), 200, "the in-flight request completes");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn validate_reports_every_error_with_location_and_exit_code_2() {
    let dir = scratch_dir();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoints: [{address: \"not-an-address\"}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [\"*\"]\n  rules:\n  - matches: [{path: {regex: \"([\"}}]\n    backends: [{service: missing}]\n",
    )
    .unwrap();
    let out = trefoil_command().args(["validate", "-f"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert!(stderr.contains(&format!("{f}:5:")) && stderr.contains("spec.endpoints[0].address"), "{stderr}");
    assert!(stderr.contains(&format!("{f}:13:")) && stderr.contains("spec.rules[0].matches[0].path.regex"), "{stderr}");
    assert!(stderr.contains(&format!("{f}:14:")) && stderr.contains("no Service named \"missing\""), "{stderr}");
    let json = trefoil_command().args(["validate", "-o", "json", "-f"]).arg(&file).output().unwrap();
    assert_eq!(json.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"].as_array().unwrap().len(), 3);
    assert_eq!(report["errors"][0]["line"], 5);
    let good = trefoil_command().args(["validate", "-f"]).arg(repo_root().join("examples/proxy")).output().unwrap();
    assert_eq!(good.status.code(), Some(0), "{}", String::from_utf8_lossy(&good.stderr));
    // A proxy refuses to start on a bad config, with the same exit code.
    let start = trefoil_command().args(["proxy", "--config"]).arg(&file).output().unwrap();
    assert_eq!(start.status.code(), Some(2));
}

/// Values the proxy once parsed again and dropped when that failed (a bad
/// method matched any method, a bad `when` ran its step always, a bad
/// address was skipped) are refused by `validate`, each where it is written.
#[test]
fn validate_refuses_what_the_proxy_once_dropped() {
    let dir = scratch_dir();
    let file = dir.join("dropped.yaml");
    std::fs::write(
        &file,
        "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: public}\nspec: {address: 'localhost:80'}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoints: [{address: 'web'}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: ['*']\n  rules:\n  - matches: [{method: Get, headers: [{name: 'x user'}]}]\n    filters: {requestHeaderModifier: {set: {x-a: \"line\\nbreak\"}}}\n    backends: [{service: web}]\n    chain: edge\n---\napiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {name: acl}\nspec: {service: web}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge}\nspec:\n  chain:\n  - function: acl\n    when: {path: {regex: '(['}}\n",
    )
    .unwrap();
    let out = trefoil_command().args(["validate", "-f"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    for (line, field) in [
        (4, "spec.address"),
        (10, "spec.endpoints[0].address"),
        (18, "spec.rules[0].matches[0].method"),
        (18, "spec.rules[0].matches[0].headers[0].name"),
        (19, "spec.rules[0].filters.requestHeaderModifier.set.x-a"),
        (34, "spec.chain[0].when.path.regex"),
    ] {
        assert!(stderr.lines().any(|l| l.starts_with(&format!("{f}:{line}:")) && l.contains(&format!(" {field}: "))), "{field}:\n{stderr}");
    }
    assert!(stderr.contains("6 errors in"), "{stderr}");
}

#[test]
fn metrics_pass_promtool() {
    let up = TestServer::named("up");
    let public = free_addr();
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        // One retry on the model's default conditions and back-off.
        route(
            "web",
            &["*"],
            vec![RouteRule {
                retry: Some(retry(1, &[RetryOn::ConnectFailure, RetryOn::GatewayError, RetryOn::Reset], ms(25))),
                ..rule_to("web")
            }],
        ),
    ]);
    curl_many(&format!("http://{public}/"), 5, &[]);
    curl_many(&format!("http://{public}/status/503"), 2, &[]);
    let metrics = proxy.metrics();
    for family in ["trefoil_requests_total", "trefoil_request_duration_seconds", "trefoil_retries_total"] {
        assert!(metrics.contains(&format!("# TYPE {family} ")), "{family} missing:\n{metrics}");
    }
    let dir = scratch_dir();
    std::fs::write(dir.join("metrics.txt"), &metrics).unwrap();
    let out = Command::new("sh").arg("-c").arg(format!("promtool check metrics < {}", dir.join("metrics.txt").display())).output().unwrap();
    assert!(out.status.success(), "promtool: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // /config shows the running resources as JSON.
    let (status, _, body) = http_get(proxy.admin, "admin", "/config");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["version"], 1);
    assert!(config["resources"].as_array().unwrap().iter().any(|r| r["kind"] == "Route" && r["metadata"]["name"] == "web"));
    let (status, _, stats) = http_get(proxy.admin, "admin", "/stats");
    assert_eq!(status, 200);
    assert!(stats.contains(&up.addr().to_string()), "{stats}");
}

#[test]
fn validate_checks_what_the_proxy_checks() {
    let dir = scratch_dir();
    let file = dir.join("listener.yaml");
    std::fs::write(&file, "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: public}\nspec:\n  address: 127.0.0.1:8080\n  routes: [web, wbe]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {endpoints: [{address: \"127.0.0.1:9\"}]}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [\"*\"]\n  rules:\n  - backends: [{service: web}]\n").unwrap();
    let out = trefoil_command().args(["validate", "-f"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:6:", file.display())) && stderr.contains("spec.routes[1]: no Route named \"wbe\""), "{stderr}");
}

#[test]
fn limits_keep_counting_across_reloads() {
    let up = TestServer::named("up");
    let public = free_addr();
    let base = [listener("public", public), service("web", &[(up.addr(), "v1")])];
    let limited = |timeout: u64| {
        let limit = LocalRateLimit { requests_per_second: 0.001, burst: Some(3), status: 429 };
        let filters = RouteFilters { rate_limit: Some(limit), ..RouteFilters::default() };
        [&base[..], &[route("web", &["*"], vec![RouteRule { filters, timeout: Some(secs(timeout)), ..rule_to("web") }])]].concat()
    };
    let mut proxy = Proxy::start(limited(5));
    let first = curl_many(&format!("http://{public}/"), 3, &[]);
    assert_eq!(count(&first, |r| r.0 == 200), 3);
    // An unrelated change reloads the config; the spent burst stays spent.
    proxy.rewrite(limited(6));
    wait_until("config version 2", Duration::from_secs(10), || proxy.config_version() == 2);
    assert_eq!(http_get(public, "x", "/").0, 429);
}
