//! The controller against a real store and a stand-in proxy admin whose
//! `/metrics` grows by a fixed amount of canary traffic at every scrape.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::routing::get;
use trefoil_model::spec::*;
use trefoil_model::{Duration, Metadata, Resource, Spec, API_VERSION};

use super::*;
use crate::proxies::Hello;

fn temp_store(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trefoil-rollout-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("store.db")
}

fn put_resource(store: &Store, name: &str, spec: Spec) {
    let r = Resource {
        api_version: API_VERSION.into(),
        metadata: Metadata { name: name.into(), generation: Some(1), ..Default::default() },
        spec,
    };
    let kind = r.kind();
    store.put(kind, name, serde_json::to_value(&r).unwrap(), None).unwrap();
}

/// A proxy admin whose canary series grow by 20 requests per scrape, `errors` of them 5xx.
async fn fake_admin(errors: u64) -> String {
    fake_admin_with(errors, false).await
}

/// Like [`fake_admin`]; with `grpc` the errors are gRPC calls that ended
/// UNAVAILABLE, sent (as gRPC does) with HTTP 200.
async fn fake_admin_with(errors: u64, grpc: bool) -> String {
    let scrapes = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let n = scrapes.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                let labels = "direction=\"inbound\",route=\"web\",service=\"web\",version=\"v2\"";
                let (ok, bad) = (n * (20 - errors), n * errors);
                let buckets = format!(
                    "trefoil_request_duration_seconds_bucket{{{labels},le=\"0.01\"}} {t}\ntrefoil_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {t}\n",
                    t = ok + bad
                );
                let requests = if grpc {
                    format!(
                        "trefoil_requests_total{{{labels},status_code=\"200\"}} {t}\n\
                         trefoil_grpc_responses_total{{{labels},grpc_status=\"0\"}} {ok}\ntrefoil_grpc_responses_total{{{labels},grpc_status=\"14\"}} {bad}\n",
                        t = ok + bad
                    )
                } else {
                    format!("trefoil_requests_total{{{labels},status_code=\"200\"}} {ok}\ntrefoil_requests_total{{{labels},status_code=\"503\"}} {bad}\n")
                };
                requests + &buckets
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

fn proxies_with(admin: &str) -> (Arc<Proxies>, tokio::sync::watch::Receiver<Option<trefoil_wire::Snapshot>>) {
    let proxies = Arc::new(Proxies::default());
    let (tx, rx) = tokio::sync::watch::channel(None);
    proxies
        .connect(
            &Hello { name: "web-v2-0", admin_address: admin, version: 0, hash: 0, pid: 0, peer: "127.0.0.1:1", node: None, looked_up: &[] },
            tx,
        )
        .unwrap();
    (proxies, rx)
}

fn seed(store: &Store) {
    let ready = DiscoveredEndpoint {
        address: "127.0.0.1:1".parse().unwrap(),
        version: "v2".into(),
        workload: "web-v2".into(),
        replica: 0,
        ready: true,
    };
    put_resource(store, "web", Spec::Endpoints(EndpointsSpec { endpoints: vec![ready] }));
    let backend = WeightedBackend { service: "web".into(), version: Some("v1".into()), weight: 1 };
    put_resource(
        store,
        "web",
        Spec::Route(RouteSpec {
            service: Some("web".into()),
            hosts: vec![],
            rules: vec![RouteRule { backends: vec![backend], ..Default::default() }],
        }),
    );
    let analysis = Analysis {
        interval: Duration::from_millis(100),
        threshold: 2,
        min_requests: 10,
        metrics: vec![AnalysisMetric::SuccessRate(MinBound { min: 99.0 })],
    };
    let steps = vec![
        CanaryStep::SetWeight(20),
        CanaryStep::Analysis(AnalysisStep { checks: 2 }),
        CanaryStep::SetWeight(50),
        CanaryStep::Analysis(AnalysisStep { checks: 2 }),
    ];
    let spec = RolloutSpec {
        service: "web".into(),
        stable: "v1".into(),
        canary: "v2".into(),
        route: "web".into(),
        strategy: Strategy::Canary(CanaryStrategy { steps }),
        analysis: Some(analysis),
    };
    put_resource(store, "web", Spec::Rollout(spec));
}

fn status(store: &Store) -> Option<RolloutStatusSpec> {
    status_of(store, "web").unwrap().0
}

/// Waits (bounded) until the rollout's status satisfies `done`.
async fn wait_for(store: &Store, what: &str, done: impl Fn(&RolloutStatusSpec) -> bool) -> RolloutStatusSpec {
    for _ in 0..200 {
        if let Some(s) = status(store).filter(|s| done(s)) {
            return s;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}: {:?}", status(store));
}

/// Backends of the Route's only rule, once the controller settled.
fn weights(store: &Store) -> Vec<(Option<String>, u32)> {
    let r: Resource = serde_json::from_value(store.get("Route", "web").unwrap().value).unwrap();
    let Spec::Route(route) = r.spec else { panic!() };
    route.rules[0].backends.iter().map(|b| (b.version.clone(), b.weight)).collect()
}

fn reasons(store: &Store) -> Vec<String> {
    let mut events: Vec<(u64, String)> = store
        .list("Event")
        .into_iter()
        .map(|s| {
            let seq = s.name.rsplit('-').next().unwrap().parse().unwrap();
            (seq, s.value["spec"]["reason"].as_str().unwrap().to_string())
        })
        .collect();
    events.sort();
    events.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_step_by_step() {
    let store = Arc::new(Store::open(temp_store("healthy")).unwrap());
    seed(&store);
    let (proxies, _rx) = proxies_with(&fake_admin(0).await);
    let controller = tokio::spawn(run(store.clone(), proxies));
    wait_for(&store, "promotion", |s| s.settled).await;
    controller.abort();
    assert_eq!(weights(&store), [(Some("v2".into()), 100)]);
    assert_eq!(reasons(&store), ["Started", "WeightChanged", "AnalysisPassed", "WeightChanged", "AnalysisPassed", "Promoted"]);
    let s = status(&store).unwrap();
    assert_eq!((s.phase, s.failed_checks), (RolloutPhase::Succeeded, 0));
    assert_eq!(s.last_check.unwrap().figures[0].value, Some(100.0));
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_with_its_figures() {
    let store = Arc::new(Store::open(temp_store("failing")).unwrap());
    seed(&store);
    let (proxies, _rx) = proxies_with(&fake_admin(10).await);
    let controller = tokio::spawn(run(store.clone(), proxies));
    let s = wait_for(&store, "roll back", |s| s.settled).await;
    controller.abort();
    assert_eq!((s.phase, s.failed_checks), (RolloutPhase::RolledBack, 2));
    assert_eq!(weights(&store), [(Some("v1".into()), 100)]);
    assert_eq!(reasons(&store), ["Started", "WeightChanged", "CheckFailed", "CheckFailed", "RolledBack"]);
    let rolled_back = store.get("Event", "web-4").unwrap().value;
    assert_eq!(rolled_back["spec"]["figures"][0]["value"], 50.0, "{rolled_back}");
}

#[tokio::test]
async fn grpc_errors_sent_as_200_fail_the_analysis_too() {
    let store = Arc::new(Store::open(temp_store("failing-grpc")).unwrap());
    seed(&store);
    let (proxies, _rx) = proxies_with(&fake_admin_with(10, true).await);
    let controller = tokio::spawn(run(store.clone(), proxies));
    let s = wait_for(&store, "roll back", |s| s.settled).await;
    controller.abort();
    assert_eq!((s.phase, s.failed_checks), (RolloutPhase::RolledBack, 2));
    let rolled_back = store.get("Event", "web-4").unwrap().value;
    assert_eq!(rolled_back["spec"]["figures"][0]["value"], 50.0, "{rolled_back}");
}

#[tokio::test]
async fn a_restarted_controller_resumes_from_the_stored_status() {
    let path = temp_store("restart");
    let store = Arc::new(Store::open(&path).unwrap());
    seed(&store);
    let admin = fake_admin(0).await;
    let (proxies, _rx) = proxies_with(&admin);
    let controller = tokio::spawn(run(store.clone(), proxies.clone()));
    wait_for(&store, "the canary at 20%", |s| s.weight == 20).await;
    controller.abort();
    let _ = controller.await;
    assert_eq!(weights(&store), [(Some("v1".into()), 80), (Some("v2".into()), 20)]);
    drop(store);

    let store = Arc::new(Store::open(&path).unwrap());
    let controller = tokio::spawn(run(store.clone(), proxies));
    wait_for(&store, "promotion", |s| s.settled).await;
    controller.abort();
    let reasons = reasons(&store);
    assert_eq!(reasons.iter().filter(|r| *r == "Started").count(), 1, "resumed, not restarted: {reasons:?}");
    assert_eq!(reasons.last().map(String::as_str), Some("Promoted"));
}

#[tokio::test]
async fn manual_actions_are_recorded_and_obeyed() {
    let store = Arc::new(Store::open(temp_store("manual")).unwrap());
    seed(&store);
    let (proxies, _rx) = proxies_with(&fake_admin(0).await);
    store
        .put(
            "Rollout",
            "web",
            {
                let mut v = store.get("Rollout", "web").unwrap().value;
                // No analysis: the canary would wait at its first gate forever.
                v["spec"]["strategy"]["canary"]["steps"] = serde_json::json!([{"setWeight": 30}, {"pause": "1h"}]);
                v
            },
            None,
        )
        .unwrap();
    let controller = tokio::spawn(run(store.clone(), proxies));
    wait_for(&store, "the canary at 30%", |s| s.weight == 30).await;
    let (spec, _) = rollout_of(&store.get("Rollout", "web").unwrap()).unwrap();
    let (s, rv) = status_of(&store, "web").unwrap();
    let mut s = s.unwrap();
    let note = plan::act(&spec, &mut s, Action::Abort, now_ms()).unwrap();
    persist(&store, "web", &mut s, vec![note], rv).unwrap();
    wait_for(&store, "the abort to settle", |s| s.settled).await;
    controller.abort();
    assert_eq!(weights(&store), [(Some("v1".into()), 100)]);
    assert_eq!(reasons(&store).last().map(String::as_str), Some("Aborted"));
}

/// The status code of a bodiless request.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn the_action_endpoints_sit_beside_the_resource_api() {
    let store = Arc::new(Store::open(temp_store("api")).unwrap());
    seed(&store);
    let app = crate::api::router(store.clone()).merge(actions::router(store.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(request(addr, "POST", "/api/v1/rollouts/web/pause").await, 404, "not started yet");
    let (status, _) = plan::start(1, now_ms());
    put_resource(&store, "web", Spec::RolloutStatus(status));
    assert_eq!(request(addr, "POST", "/api/v1/rollouts/web/pause").await, 200);
    assert_eq!(request(addr, "POST", "/api/v1/rollouts/web/pause").await, 409, "already paused");
    assert_eq!(request(addr, "POST", "/api/v1/rollouts/web/jump").await, 404);
    assert_eq!(request(addr, "POST", "/api/v1/rollouts/nope/abort").await, 404);
    assert_eq!(request(addr, "GET", "/api/v1/rollouts/web").await, 200, "the resource API still answers");
    assert_eq!(request(addr, "GET", "/api/v1/rolloutstatus/web").await, 200);
    assert_eq!(request(addr, "DELETE", "/api/v1/rolloutstatus/web").await, 403, "the controller's own");
    assert_eq!(status_of(&store, "web").unwrap().0.unwrap().phase, RolloutPhase::Paused);
    assert_eq!(reasons(&store), ["Paused"]);
}

#[tokio::test]
async fn a_rollout_without_its_route_says_it_waits_and_starts_once_the_route_exists() {
    let store = Arc::new(Store::open(temp_store("no-route")).unwrap());
    seed(&store);
    let route = store.get("Route", "web").unwrap();
    store.delete("Route", "web", None).unwrap();
    let (proxies, _rx) = proxies_with(&fake_admin(0).await);
    let controller = tokio::spawn(run(store.clone(), proxies));
    let s = wait_for(&store, "the waiting message", |s| s.message == "waiting for Route/web").await;
    assert_eq!(s.weight, 0);
    store.put("Route", "web", route.value, None).unwrap();
    wait_for(&store, "the canary at 20%", |s| s.weight == 20).await;
    controller.abort();
    assert_eq!(reasons(&store)[..2], ["Started", "WeightChanged"]);
}

#[tokio::test]
async fn no_traffic_moves_before_the_canary_has_a_ready_endpoint() {
    let store = Arc::new(Store::open(temp_store("unready")).unwrap());
    seed(&store);
    let mut endpoints = store.get("Endpoints", "web").unwrap().value;
    endpoints["spec"]["endpoints"][0]["ready"] = serde_json::json!(false);
    store.put("Endpoints", "web", endpoints.clone(), None).unwrap();
    let (proxies, _rx) = proxies_with(&fake_admin(0).await);
    let controller = tokio::spawn(run(store.clone(), proxies));
    wait_for(&store, "the waiting message", |s| s.message == "waiting for a ready endpoint of web v2").await;
    assert_eq!(weights(&store), [(Some("v1".into()), 1)], "the Route is untouched");
    endpoints["spec"]["endpoints"][0]["ready"] = serde_json::json!(true);
    store.put("Endpoints", "web", endpoints, None).unwrap();
    wait_for(&store, "the canary at 20%", |s| s.weight == 20).await;
    controller.abort();
}
