//! Rollouts end to end in the local runtime: `trefoil up` runs a gateway,
//! web v1 and a v2 canary (`trefoil demo-app`, healthy, failing or slow),
//! a Python client sends live traffic through the gateway, and the control
//! plane's rollout controller judges v2 from the sidecars' metrics.

use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;
use trefoil_model::spec::{
    AbTestStrategy, Analysis, AnalysisMetric, AnalysisStep, CanaryStep, CanaryStrategy, JudgedStrategy, LatencyBound, MinBound,
    MirrorStrategy, NameValue, PrometheusMetric, RolloutPhase, RolloutSpec, RolloutStatusSpec, RouteRule, RouteSpec, SignificanceBound,
    Strategy, WorkloadSpec,
};
use trefoil_model::{Resource, Spec};
use trefoil_testkit::resources::{http_health, ms, resource, route, secs, version_backend, workload};
use trefoil_testkit::{
    count, curl_many, free_addr, http_get, http_request, repo_root, run_with_timeout, scratch_dir, send_signal, trefoil_command,
    wait_until, Load, Prometheus, Up,
};

/// A gateway on `gateway`, web v1 and v2 (v2 run with `canary_args`), a
/// Route sending everything to v1, and the Rollout `strategy` of web to v2.
fn mesh(gateway: SocketAddr, canary_args: &[&str], strategy: Strategy, analysis: Analysis) -> Vec<Resource> {
    let web = |version: &str, args: &[&str]| {
        let args = [&["demo-app"], args].concat();
        let spec = WorkloadSpec { version: version.into(), health: http_health("/healthz"), ..workload("web", "trefoil", &args) };
        resource(&format!("web-{version}"), Spec::Workload(spec))
    };
    let to_v1 = RouteRule { backends: vec![version_backend("web", "v1", 1)], timeout: Some(secs(5)), ..RouteRule::default() };
    let rollout = RolloutSpec {
        service: "web".into(),
        stable: "v1".into(),
        canary: "v2".into(),
        route: "edge".into(),
        strategy,
        analysis: Some(analysis),
    };
    [
        trefoil_testkit::resources::gateway("gateway", "gateway-http", gateway),
        vec![web("v1", &[]), web("v2", canary_args), route("edge", &["*"], vec![to_v1]), resource("web", Spec::Rollout(rollout))],
    ]
    .concat()
}

/// Canary steps: to each weight, then two passing checks a second apart.
fn canary(weights: &[u32]) -> Strategy {
    let steps = weights.iter().flat_map(|w| [CanaryStep::SetWeight(*w), CanaryStep::Analysis(AnalysisStep { checks: 2 })]).collect();
    Strategy::Canary(CanaryStrategy { steps })
}

/// 20% then 50%, each held for two passing checks a second apart.
fn steps() -> Strategy {
    canary(&[20, 50])
}

/// The classic flow: 20%, 50%, then 100% and judged once more there before it is promoted.
fn classic() -> Strategy {
    canary(&[20, 50, 100])
}

/// Checks a second apart, two failures to roll back, five requests to judge, on `metrics`.
fn judged_by(metrics: Vec<AnalysisMetric>) -> Analysis {
    Analysis { interval: secs(1), threshold: 2, min_requests: 5, metrics }
}

/// A success rate of 95% and a p99 latency under `p99`.
fn success_and_latency(p99: trefoil_model::Duration) -> Analysis {
    judged_by(vec![AnalysisMetric::SuccessRate(MinBound { min: 95.0 }), AnalysisMetric::LatencyP99(LatencyBound { max: p99 })])
}

/// The latency bound is loose: a busy test machine must not fail a healthy canary.
fn analysis() -> Analysis {
    success_and_latency(secs(1))
}

/// An A/B test on `header` or `cookie` (name, value) the test itself ends.
fn ab_test(header: Option<(&str, &str)>, cookie: Option<(&str, &str)>) -> Strategy {
    let header = header.map(|(name, value)| NameValue { name: name.parse().unwrap(), value: value.into() });
    let cookie = cookie.map(|(name, value)| NameValue { name: name.into(), value: value.into() });
    // Many checks: the test, not the analysis, ends this A/B test.
    Strategy::AbTest(AbTestStrategy { header, cookie, checks: 100 })
}

/// How many meshes of this file run at once. Each picks free ports by
/// binding and releasing them, so many meshes starting together can pick
/// the same port; a few at a time keeps that rare.
const MESHES_AT_ONCE: usize = 3;
static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A place among the running meshes, given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let (count, freed) = &RUNNING;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MESHES_AT_ONCE {
            n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (count, freed) = &RUNNING;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// A running mesh; its slot is given back after `trefoil up` stopped.
struct Mesh {
    up: Up,
    _slot: Slot,
}

impl std::ops::Deref for Mesh {
    type Target = Up;
    fn deref(&self) -> &Up {
        &self.up
    }
}

impl std::ops::DerefMut for Mesh {
    fn deref_mut(&mut self) -> &mut Up {
        &mut self.up
    }
}

/// Starts the mesh and waits until the gateway serves web v1.
fn start(files: Vec<Resource>, gateway: SocketAddr) -> Mesh {
    let slot = Slot::take();
    let mut up = Up::start(files);
    up.wait_ready(&["web-v1-0", "web-v2-0"]);
    // The gateway may not listen yet: a refused connection is "not yet".
    wait_until("the gateway serving web", Duration::from_secs(30), || {
        matches!(http_request(gateway, "GET", "edge", "/", &[], b""), Ok((200, ..)))
    });
    Mesh { up, _slot: slot }
}

/// The rollout's status; the default (Progressing, step 0) until the controller writes one.
fn status(up: &Up) -> RolloutStatusSpec {
    up.spec::<RolloutStatusSpec>("RolloutStatus", "web").unwrap_or_default()
}

fn wait_phase(up: &mut Up, phase: RolloutPhase) {
    up.wait(&format!("the rollout {phase:?} and settled"), |u| {
        let s = status(u);
        s.phase == phase && s.settled
    });
}

/// The Route `edge`, as stored now.
fn stored_route(up: &Up) -> RouteSpec {
    up.spec::<RouteSpec>("Route", "edge").expect("the Route is stored")
}

/// How many rules the Route has now (0 while it is not readable).
fn rule_count(up: &Up) -> usize {
    up.spec::<RouteSpec>("Route", "edge").map_or(0, |r| r.rules.len())
}

/// The Route's backends for web: (version, weight).
fn backends(up: &Up) -> Vec<(String, u32)> {
    let route = stored_route(up);
    route.rules[0].backends.iter().map(|b| (b.version.clone().unwrap_or_default(), b.weight)).collect()
}

fn reasons(up: &Up) -> Vec<String> {
    let out = up.cli(&["rollout", "status", "web", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["events"].as_array().into_iter().flatten().map(|e| e["spec"]["reason"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn a_healthy_canary_is_promoted_through_a_control_plane_restart_with_no_failed_request() {
    let gateway = free_addr();
    let mut up = start(mesh(gateway, &[], classic(), analysis()), gateway);
    let load = Load::start(&up.dir, gateway);
    up.wait("the canary at 20%", |u| status(u).weight == 20);

    // The control plane dies mid-rollout; the restarted one resumes from the stored status.
    let control_pid = up.process("control")["pid"].as_u64().unwrap();
    send_signal(control_pid as u32, libc::SIGKILL);
    up.wait("the control plane restarted", |u| {
        u.process("control")["restarts"].as_u64() >= Some(1) && u.process("control")["ready"] == true
    });

    wait_phase(&mut up, RolloutPhase::Succeeded);
    assert_eq!(backends(&up), [("v2".to_string(), 100)]);
    let reasons = reasons(&up);
    assert_eq!(reasons.iter().filter(|r| *r == "Started").count(), 1, "resumed, not started over: {reasons:?}");
    assert_eq!(reasons.iter().filter(|r| *r == "AnalysisPassed").count(), 3, "judged at 20%, 50% and 100%: {reasons:?}");
    assert_eq!(reasons.last().map(String::as_str), Some("Promoted"), "{reasons:?}");
    up.wait("web v2 serving everything", |_| http_get(gateway, "edge", "/").2.contains("\"v2\""));
    let traffic = load.finish();
    assert_eq!(traffic["failed"], 0, "a request failed during the weight changes or the restart: {traffic}");
    assert!(traffic["served"]["web v2"].as_u64().unwrap_or(0) > 0, "{traffic}");

    // The status command and the events list read the same story.
    let out = up.cli(&["rollout", "status", "web"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("phase       Succeeded") && text.contains("Promoted"), "{text}");
    let out = up.cli(&["get", "events"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Rollout/web"), "{}", String::from_utf8_lossy(&out.stdout));
    // A finished rollout refuses manual actions (exit 1); an unknown one is bad input (exit 2).
    assert_eq!(up.cli(&["rollout", "abort", "web"]).status.code(), Some(1));
    assert_eq!(up.cli(&["rollout", "status", "nope"]).status.code(), Some(2));
}

/// Runs the rollout against a bad canary and expects it rolled back on `metric`.
fn rolled_back(canary_args: &[&str], analysis: Analysis, metric: &str, clients: usize) {
    let gateway = free_addr();
    let mut up = start(mesh(gateway, canary_args, steps(), analysis), gateway);
    let loads: Vec<Load> = (0..clients).map(|i| Load::start_as(&up.dir, gateway, &format!("load{i}"), &[])).collect();
    wait_phase(&mut up, RolloutPhase::RolledBack);
    assert_eq!(backends(&up), [("v1".to_string(), 100)]);
    let s = status(&up);
    assert_eq!(s.failed_checks, 2, "{s:#?}");
    let figures = s.last_check.as_ref().map(|c| c.figures.as_slice()).unwrap_or_default();
    assert!(figures.iter().any(|f| !f.ok && f.metric == metric), "{s:#?}");
    assert_eq!(reasons(&up).last().map(String::as_str), Some("RolledBack"));
    for load in loads {
        load.finish();
    }
    let after = curl_many(&format!("http://{gateway}/"), 20, &[]);
    assert_eq!(count(&after, |(s, who)| *s == 200 && who == "web v1"), 20, "{after:?}");
}

#[test]
fn a_canary_answering_5xx_is_rolled_back() {
    rolled_back(&["--fail-percent", "50"], analysis(), "successRate", 1);
}

#[test]
fn a_slow_canary_is_rolled_back() {
    // Slow answers slow each client down: several keep the canary above the volume floor.
    rolled_back(&["--delay", "300ms"], success_and_latency(ms(200)), "latencyP99", 4);
}

#[test]
fn a_canary_slower_than_stable_is_rolled_back_by_a_mann_whitney_comparison() {
    // No fixed latency bound: only "significantly slower than v1".
    let analysis = judged_by(vec![AnalysisMetric::LatencyVsStable(SignificanceBound { alpha: 0.01 })]);
    rolled_back(&["--delay", "100ms"], analysis, "latencyVsStable", 4);
}

/// Every proxy connected and serving the Route's current version.
fn route_everywhere(up: &Up) -> bool {
    up.resource_version("Route", "edge").is_some_and(|version| up.all_acked(version))
}

#[test]
fn an_ab_test_sends_exactly_the_matching_requests_to_the_canary_until_promoted_by_hand() {
    let gateway = free_addr();
    let mut up = start(mesh(gateway, &[], ab_test(Some(("x-canary", "yes")), None), analysis()), gateway);
    up.wait("the A/B rule in the Route", |u| rule_count(u) == 2);
    up.wait("every proxy serving the A/B rule", route_everywhere);
    let url = format!("http://{gateway}/");
    let matching = curl_many(&url, 40, &["-H", "x-canary: yes"]);
    let other = curl_many(&url, 40, &["-H", "x-canary: no"]);
    let plain = curl_many(&url, 40, &[]);
    assert_eq!(count(&matching, |(s, who)| *s == 200 && who == "web v2"), 40, "{matching:?}");
    assert_eq!(count(&other, |(s, who)| *s == 200 && who == "web v1"), 40, "{other:?}");
    assert_eq!(count(&plain, |(s, who)| *s == 200 && who == "web v1"), 40, "{plain:?}");

    // Paused, resumed, then promoted by hand: everything to v2, the A/B rule gone.
    assert!(up.cli(&["rollout", "pause", "web"]).status.success());
    assert_eq!(status(&up).phase, RolloutPhase::Paused);
    assert!(up.cli(&["rollout", "resume", "web"]).status.success());
    let out = up.cli(&["rollout", "promote", "web", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_phase(&mut up, RolloutPhase::Succeeded);
    assert_eq!(rule_count(&up), 1, "{:#?}", stored_route(&up));
    assert_eq!(backends(&up), [("v2".to_string(), 100)]);
    assert_eq!(reasons(&up), ["Started", "Paused", "Resumed", "Promoted"]);
}

#[test]
fn a_mirrored_canary_never_changes_a_response_and_is_judged_on_the_copies() {
    let gateway = free_addr();
    // The canary fails every request it gets: clients must not notice.
    let mirror = Strategy::Mirror(MirrorStrategy { percent: 100.0, checks: 100 });
    let mut up = start(mesh(gateway, &["--fail-percent", "100"], mirror, analysis()), gateway);
    let load = Load::start(&up.dir, gateway);
    wait_phase(&mut up, RolloutPhase::RolledBack);
    let traffic = load.finish();
    assert_eq!(traffic["failed"], 0, "a client saw the mirror's failure: {traffic}");
    let served = traffic["served"].as_object().unwrap();
    assert_eq!(served.keys().collect::<Vec<_>>(), ["web v1"], "{traffic}");
    let s = status(&up);
    assert!(s.last_check.as_ref().is_some_and(|c| c.requests >= 5.0), "judged on the copies: {s:#?}");
    let route = stored_route(&up);
    assert!(route.rules[0].filters.request_mirror.is_none(), "the mirror is removed: {route:#?}");
}

/// A Prometheus server scraping every proxy's admin `/metrics` each second.
fn scrape_every_proxy(up: &Up, listen: SocketAddr) -> Prometheus {
    let admins: Vec<String> = up.proxies().into_iter().filter_map(|p| p.admin_address).collect();
    assert!(admins.len() >= 3, "the gateway and both sidecars: {admins:?}");
    Prometheus::start(&up.dir.join("prometheus"), listen, &admins)
}

/// The same rollout judged only by a PromQL success rate of v2's inbound traffic.
fn judged_by_prometheus(canary_args: &[&str], phase: RolloutPhase) {
    let (gateway, prometheus) = (free_addr(), free_addr());
    let series = "trefoil_requests_total{service=\"web\",version=\"v2\",direction=\"inbound\"";
    let query = format!("sum(rate({series},status_code!~\"5..\"}}[5s])) / sum(rate({series}}}[5s]))");
    let promql = PrometheusMetric { address: format!("http://{prometheus}"), query: query.clone(), min: Some(0.95), max: None };
    let mut up = start(mesh(gateway, canary_args, steps(), judged_by(vec![AnalysisMetric::Prometheus(promql)])), gateway);
    let _server = scrape_every_proxy(&up, prometheus);
    let load = Load::start(&up.dir, gateway);
    wait_phase(&mut up, phase);
    load.finish();
    let s = status(&up);
    let figure = s.last_check.as_ref().and_then(|c| c.figures.first()).expect("a check with a figure");
    assert_eq!(figure.metric, query, "{s:#?}");
    assert!(figure.value.is_some(), "the query answered: {s:#?}");
}

#[test]
fn a_promql_analysis_promotes_a_healthy_canary() {
    judged_by_prometheus(&[], RolloutPhase::Succeeded);
}

#[test]
fn a_promql_analysis_rolls_back_a_failing_canary() {
    judged_by_prometheus(&["--fail-percent", "50"], RolloutPhase::RolledBack);
}

#[test]
fn a_cookie_ab_test_matches_the_whole_cookie_value() {
    let gateway = free_addr();
    let mut up = start(mesh(gateway, &[], ab_test(None, Some(("beta", "on"))), analysis()), gateway);
    up.wait("the A/B rule in the Route", |u| rule_count(u) == 2);
    up.wait("every proxy serving the A/B rule", route_everywhere);
    let url = format!("http://{gateway}/");
    let with = curl_many(&url, 20, &["-H", "cookie: theme=dark; beta=on; lang=en"]);
    let other = curl_many(&url, 20, &["-H", "cookie: beta=onward; xbeta=on"]);
    assert_eq!(count(&with, |(s, who)| *s == 200 && who == "web v2"), 20, "{with:?}");
    assert_eq!(count(&other, |(s, who)| *s == 200 && who == "web v1"), 20, "{other:?}");
    // Aborted by hand: the A/B rule goes, everything to v1.
    assert!(up.cli(&["rollout", "abort", "web"]).status.success());
    wait_phase(&mut up, RolloutPhase::Aborted);
    assert_eq!(rule_count(&up), 1);
    assert_eq!(backends(&up), [("v1".to_string(), 100)]);
}

#[test]
fn a_blue_green_switch_moves_everything_and_back_when_checks_fail() {
    let gateway = free_addr();
    let blue_green = Strategy::BlueGreen(JudgedStrategy { checks: 3 });
    let mut up = start(mesh(gateway, &["--fail-percent", "50"], blue_green, analysis()), gateway);
    up.wait("all traffic switched to v2", |u| backends(u) == [("v2".to_string(), 100)]);
    let load = Load::start(&up.dir, gateway);
    wait_phase(&mut up, RolloutPhase::RolledBack);
    load.finish();
    assert_eq!(backends(&up), [("v1".to_string(), 100)]);
    assert_eq!(reasons(&up), ["Started", "CheckFailed", "CheckFailed", "RolledBack"]);
}

#[test]
fn the_quickstart_rollout_example_is_valid_with_the_quickstart_mesh() {
    let root = repo_root().join("examples/quickstart");
    let dir = scratch_dir();
    for file in ["mesh.yaml", "rollout.yaml"] {
        std::fs::copy(root.join(file), dir.join(file)).unwrap();
    }
    let out = run_with_timeout(trefoil_command().args(["validate", "-f"]).arg(&dir), Duration::from_secs(30));
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
