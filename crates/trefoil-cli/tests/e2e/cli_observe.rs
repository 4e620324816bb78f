//! `trefoil top`, `check` and `describe` against real processes: a proxy in
//! file mode with real upstreams for the metrics side, and a control plane
//! with applied resources for the rest.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use trefoil_model::spec::{
    ChainStep, DiscoveredEndpoint, EndpointsSpec, LoadBalancer, NetworkFunctionSpec, Phase, ProxySpec, RouteRule, ServiceSpec,
    TrafficPolicySpec, WorkloadSpec,
};
use trefoil_model::{Resource, Spec};
use trefoil_testkit::resources::{
    cnf_with_handler, function, listener, network_function, resource, route, route_all, rule_to, service, step, strings, workload,
};
use trefoil_testkit::{
    free_addr, http_get, http_request, run_with_timeout, scratch_dir, trefoil_command, wait_until, Control, Proxy, TestServer,
};

fn trefoil(args: &[&str]) -> Output {
    run_with_timeout(trefoil_command().args(args), Duration::from_secs(60))
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}):\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Sends GETs through `listener` from a thread until the returned flag is set.
fn traffic(listener: SocketAddr) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut sent = 0;
        // Bounded even if the test forgets to stop it.
        while !flag.load(Ordering::Relaxed) && sent < 200_000 {
            let _ = http_request(listener, "GET", "web", "/", &[], b"");
            sent += 1;
        }
        sent
    });
    (stop, handle)
}

#[test]
fn top_shows_rates_success_and_latency_per_version_and_lists_dead_proxies() {
    let v1 = TestServer::named("v1");
    // Every second request to v2 fails with 503.
    let v2 = TestServer::spawn(&["--name", "v2", "--fail-every", "2"]);
    let listen = free_addr();
    let proxy = Proxy::start(vec![listener("main", listen), service("web", &[(v1.addr(), "v1"), (v2.addr(), "v2")]), route_all("web")]);
    let dead = free_addr();
    let (stop, sender) = traffic(listen);
    wait_until("traffic through the proxy", Duration::from_secs(20), || proxy.metric_sum("trefoil_requests_total", &[]) >= 10.0);

    let out =
        trefoil(&["top", "--once", "--interval", "1s", "-o", "json", "--proxy", &proxy.admin.to_string(), "--proxy", &dead.to_string()]);
    let table = trefoil(&["top", "--once", "--interval", "500ms", "--proxy", &proxy.admin.to_string()]);
    stop.store(true, Ordering::Relaxed);
    assert!(sender.join().unwrap() > 0);
    assert!(out.status.success(), "{}", text(&out));
    let report = json_of(&out);

    let rows = report["services"].as_array().expect("services");
    let row = |version: &str| {
        rows.iter()
            .find(|r| r["service"] == "web" && r["version"] == version)
            .unwrap_or_else(|| panic!("no web/{version} row in {report:#}"))
    };
    for version in ["v1", "v2"] {
        let r = row(version);
        assert_eq!(r["direction"], "inbound", "{r}");
        assert!(r["rps"].as_f64().unwrap() > 0.0, "{r}");
        let (p50, p99) = (r["p50Seconds"].as_f64().expect("p50"), r["p99Seconds"].as_f64().expect("p99"));
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 1.0, "{r}");
    }
    assert_eq!(row("v1")["successRate"].as_f64(), Some(1.0));
    let v2_success = row("v2")["successRate"].as_f64().unwrap();
    assert!((0.3..=0.7).contains(&v2_success), "about half of v2 fails: {v2_success}");

    let proxies = report["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2);
    let live = proxies.iter().find(|p| p["adminAddress"] == proxy.admin.to_string()).unwrap();
    assert_eq!(live["reachable"], true);
    let gone = proxies.iter().find(|p| p["adminAddress"] == dead.to_string()).unwrap();
    assert_eq!(gone["reachable"], false);
    assert!(gone["error"].as_str().unwrap().contains("is not reachable"), "{gone}");

    assert!(table.status.success(), "{}", text(&table));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("SERVICE") && table.contains("SUCCESS") && table.contains("P99"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("web ") && l.contains(" v2 ")), "{table}");
}

#[test]
fn top_once_after_the_traffic_stopped_shows_the_totals_since_start() {
    // The README's step: one curl, then `trefoil top --once`. The window
    // sees nothing, so top shows what each proxy counted since it started.
    let v1 = TestServer::named("v1");
    let listen = free_addr();
    let proxy = Proxy::start(vec![listener("main", listen), service("web", &[(v1.addr(), "v1")]), route_all("web")]);
    for _ in 0..3 {
        assert_eq!(http_get(listen, "web.test", "/").0, 200);
    }
    wait_until("the proxy to count three requests", Duration::from_secs(20), || proxy.metric_sum("trefoil_requests_total", &[]) >= 3.0);

    let out = trefoil(&["top", "--once", "--interval", "200ms", "-o", "json", "--proxy", &proxy.admin.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let report = json_of(&out);
    assert_eq!(report["sinceStart"], true, "{report:#}");
    let rows = report["services"].as_array().expect("services");
    let row = rows.iter().find(|r| r["service"] == "web" && r["version"] == "v1").unwrap_or_else(|| panic!("no web/v1 row: {report:#}"));
    assert_eq!(row["requests"].as_f64(), Some(3.0), "{row}");
    assert_eq!(row["successRate"].as_f64(), Some(1.0), "{row}");

    // The table says so rather than showing an empty window.
    let table = trefoil(&["top", "--once", "--interval", "200ms", "--proxy", &proxy.admin.to_string()]);
    assert!(table.status.success(), "{}", text(&table));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("totals since the proxies started"), "{table}");
    let web = table.lines().find(|l| l.starts_with("web ")).unwrap_or_else(|| panic!("no web row: {table}"));
    let columns: Vec<&str> = web.split_whitespace().collect();
    // SERVICE VERSION RPS SUCCESS P50 P99 REQUESTS: no rate without a window.
    assert_eq!((&columns[..4], columns.last()), (&["web", "v1", "-", "100.0%"][..], Some(&"3")), "{table}");
}

#[test]
fn top_says_which_control_plane_it_cannot_reach() {
    let nowhere = format!("http://{}", free_addr());
    let out = trefoil(&["top", "--once", "--server", &nowhere]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains(&format!("control plane at {nowhere} is not reachable: connection refused")), "{}", text(&out));
    assert_eq!(trefoil(&["top", "--interval", "soon"]).status.code(), Some(2));
}

/// Workload `web-v1`: two replicas of web v1 (never run: no runtime here).
fn web_workload() -> Resource {
    resource("web-v1", Spec::Workload(WorkloadSpec { replicas: 2, ..workload("web", "/bin/true", &[]) }))
}

/// Endpoints of `web`, as a runtime would publish them for [`web_workload`]: replica 0 ready.
fn endpoints(second_ready: bool) -> Resource {
    let replica = |replica: u32, port: u16, ready| DiscoveredEndpoint {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        version: "v1".into(),
        workload: "web-v1".into(),
        replica,
        ready,
    };
    resource("web", Spec::Endpoints(EndpointsSpec { endpoints: vec![replica(0, 20001, true), replica(1, 20002, second_ready)] }))
}

fn checks_of(out: &Output) -> Vec<Value> {
    json_of(out)["checks"].as_array().cloned().unwrap_or_default()
}

#[test]
fn check_reports_each_part_and_fails_on_unready_replicas() {
    let dir = scratch_dir();
    let nowhere = format!("http://{}", free_addr());
    let out = trefoil(&["check", "--server", &nowhere]);
    assert_eq!(out.status.code(), Some(1));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.starts_with("FAIL") && line.contains(&format!("control plane at {nowhere} is not reachable: connection refused")),
        "{line}"
    );

    let control = Control::start(&dir.join("data"));
    control.apply(&dir, vec![web_workload(), endpoints(false)]);
    let out = trefoil(&["check", "--server", &control.url(), "--token", control.token(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let checks = checks_of(&out);
    assert_eq!(json_of(&out)["ok"], false);
    let named = |name: &str| checks.iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| panic!("no check {name}: {checks:?}"));
    assert_eq!(named("control plane")["ok"], true);
    let workload = named("workload web-v1");
    assert_eq!(workload["ok"], false);
    assert!(workload["detail"].as_str().unwrap().starts_with("1/2 replicas ready"), "{workload}");
    // No proxy runs here. A control plane that reports proxies has none to
    // list; one without the status endpoint yet fails that check by name.
    let proxies = named("proxies");
    let detail = proxies["detail"].as_str().unwrap();
    assert!((proxies["ok"] == true && detail.contains("no proxies")) || detail.contains("/api/v1/status/proxies"), "{proxies}");

    control.apply(&dir, endpoints(true));
    let out = trefoil(&["check", "--server", &control.url(), "--token", control.token()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("ok ") && l.contains("workload web-v1") && l.contains("2/2 replicas ready")), "{table}");
    let all_ok = table.lines().all(|l| l.starts_with("ok "));
    assert_eq!(out.status.code(), Some(if all_ok { 0 } else { 1 }), "{table}");
}

#[test]
fn describe_shows_a_resource_with_what_relates_to_it() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("data"));
    control.apply(
        &dir,
        vec![
            service("web", &[("127.0.0.1:20000".parse().unwrap(), "v0")]),
            web_workload(),
            endpoints(false),
            route_all("web"),
            resource(
                "web-policy",
                Spec::TrafficPolicy(TrafficPolicySpec {
                    service: "web".into(),
                    load_balancer: LoadBalancer::LeastRequest,
                    ..TrafficPolicySpec::default()
                }),
            ),
            route_all("ghost"),
        ],
    );

    let out = trefoil(&["describe", "services", "web", "--server", &control.url(), "--token", control.token(), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let d = json_of(&out);
    assert_eq!(d["resource"]["kind"], "Service");
    assert_eq!(d["resource"]["metadata"]["name"], "web");
    let related = &d["related"];
    let eps = related["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 3, "one static and two discovered: {related}");
    assert!(eps.iter().any(|e| e["address"] == "127.0.0.1:20000" && e["source"] == "static" && e["ready"] == true));
    assert!(eps.iter().any(|e| e["address"] == "127.0.0.1:20002" && e["ready"] == false && e["source"] == "web-v1 replica 1"));
    assert_eq!(related["workloads"][0]["name"], "web-v1");
    assert_eq!(related["workloads"][0]["ready"], 1);
    assert_eq!(related["workloads"][0]["replicas"], 2);
    assert_eq!(related["routes"], serde_json::json!(["web"]));
    assert_eq!(related["trafficPolicies"], serde_json::json!(["web-policy"]));

    let out = trefoil(&["describe", "Service", "web", "--server", &control.url(), "--token", control.token()]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("kind: Service")
            && human.contains("Endpoints:")
            && human.contains("NOT READY")
            && human.contains("web-v1 (version v1): 1/2 replicas ready"),
        "{human}"
    );

    let out = trefoil(&["describe", "route", "web", "--server", &control.url(), "--token", control.token(), "-o", "json"]);
    assert_eq!(json_of(&out)["related"]["backends"][0]["readyEndpoints"], 2, "the static one and the ready replica");
    let out = trefoil(&["describe", "route", "ghost", "--server", &control.url(), "--token", control.token()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("NO READY ENDPOINTS"), "{}", text(&out));

    let out = trefoil(&["describe", "workload", "web-v1", "--server", &control.url(), "--token", control.token(), "-o", "yaml"]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && yaml.contains("related:") && yaml.contains("ready: 1") && yaml.contains("replicas: 2"),
        "{}",
        text(&out)
    );

    // Bad input exits 2 and says what was wrong.
    let out = trefoil(&["describe", "widget", "web", "--server", &control.url(), "--token", control.token()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("unknown kind \"widget\""), "{}", text(&out));
    let out = trefoil(&["describe", "route", "nope", "--server", &control.url(), "--token", control.token()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("Route/nope not found"), "{}", text(&out));
    let out = trefoil(&["describe", "proxy", "nope", "--server", &control.url(), "--token", control.token()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // A Proxy shows its status; a control plane without the status endpoint yet says so instead.
    control.apply(&dir, resource("gw", Spec::Proxy(ProxySpec { admin: free_addr(), ..ProxySpec::with_defaults() })));
    let out = trefoil(&["describe", "proxy", "gw", "--server", &control.url(), "--token", control.token(), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let d = json_of(&out);
    assert_eq!(d["resource"]["kind"], "Proxy");
    let related = &d["related"];
    assert!(
        related["status"]["name"] == "gw" || related["statusError"].as_str().is_some_and(|e| e.contains("/api/v1/status/proxies")),
        "{related}"
    );
    drop(control);
    let out = trefoil(&["describe", "route", "web", "--server", &format!("http://{}", free_addr())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is not reachable: connection refused"), "{}", text(&out));
}

#[test]
fn describe_shows_a_cnf_its_steps_and_where_it_is_used() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("data"));
    control.apply(
        &dir,
        vec![
            service("web", &[("127.0.0.1:20000".parse().unwrap(), "v1")]),
            service("acl", &[("127.0.0.1:20001".parse().unwrap(), "v1")]),
            resource("av", Spec::Service(ServiceSpec::default())),
            network_function("acl", NetworkFunctionSpec { events: strings(&["checked"]), ..function("acl") }),
            network_function("antivirus", function("av")),
            cnf_with_handler(
                "edge",
                vec![step("acl"), ChainStep { phase: Phase::Response, ..step("antivirus") }],
                "checked",
                "trefoil.log('seen')",
            ),
            route("web", &["*"], vec![RouteRule { chain: Some("edge".into()), ..rule_to("web") }]),
        ],
    );

    let out = trefoil(&["describe", "cnf", "edge", "--server", &control.url(), "--token", control.token(), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let related = &json_of(&out)["related"];
    assert_eq!(
        related["steps"],
        serde_json::json!([
            {"step": 0, "function": "acl", "mode": "callout", "phase": "request", "service": "acl", "readyEndpoints": 1},
            {"step": 1, "function": "antivirus", "mode": "callout", "phase": "response", "service": "av", "readyEndpoints": 0},
        ])
    );
    assert_eq!(related["handlers"], serde_json::json!(["checked"]));
    assert_eq!(related["routes"], serde_json::json!(["web#0"]));
    let human =
        String::from_utf8_lossy(&trefoil(&["describe", "CNF", "edge", "--server", &control.url(), "--token", control.token()]).stdout)
            .into_owned();
    assert!(human.contains("1: antivirus (callout on the response phase), service av: NO READY ENDPOINTS"), "{human}");

    let out = trefoil(&["describe", "networkfunctions", "acl", "--server", &control.url(), "--token", control.token(), "-o", "json"]);
    assert_eq!(json_of(&out)["related"], serde_json::json!({"service": "acl", "readyEndpoints": 1, "steps": ["edge#0"]}), "{}", text(&out));
}

/// The first log line of `trefoil control` run on a terminal (`script`
/// gives it one), with `env` set.
fn control_log_line_on_a_terminal(env: &[(&str, &str)]) -> String {
    let dir = scratch_dir();
    let control = format!(
        "{} control --data {} --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0",
        trefoil_testkit::trefoil_path().display(),
        dir.join("data").display()
    );
    let output = dir.join("terminal");
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qfec", &control, "/dev/null"])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(trefoil_testkit::log_file(&output))
        .stderr(std::process::Stdio::null());
    let mut script = trefoil_testkit::Process::spawn("trefoil control on a terminal", &mut cmd);
    let read = || std::fs::read_to_string(&output).unwrap_or_default();
    script.wait_for("its first log line", Duration::from_secs(20), || read().contains("control plane listening"));
    script.signal(libc::SIGTERM);
    read().lines().find(|l| l.contains("control plane listening")).unwrap_or_default().to_string()
}

#[test]
fn logs_are_coloured_on_a_terminal_unless_no_color_is_set() {
    let coloured = control_log_line_on_a_terminal(&[]);
    assert!(coloured.contains("\x1b["), "a person at a terminal gets colour: {coloured:?}");
    let plain = control_log_line_on_a_terminal(&[("NO_COLOR", "1")]);
    assert!(!plain.contains('\x1b'), "NO_COLOR (no-color.org) turns it off: {plain:?}");
}
