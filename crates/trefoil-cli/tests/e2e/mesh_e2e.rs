//! The quickstart mesh end to end, as a user runs it: `trefoil up` on
//! `examples/quickstart/mesh.yaml`, traffic through the gateway from curl
//! and a Python client, a live route change, the control plane killed and
//! back, a workload killed and back; and `trefoil demo`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use trefoil_model::spec::RouteSpec;
use trefoil_model::{Resource, ResourceVersion};
use trefoil_testkit::{
    count, curl_many, free_addr, free_port, http_get, quickstart_mesh, quickstart_resources, repo_root, run_with_timeout, send_signal,
    trefoil_command, wait_until, Load, ToYaml, Up,
};

/// `trefoil apply -f FILE` against this mesh; returns the route's new resourceVersion.
fn apply(up: &Up, file: &Path) -> ResourceVersion {
    up.apply(file);
    route_version(up)
}

fn route_version(up: &Up) -> ResourceVersion {
    up.resource_version("Route", "edge").unwrap_or_default()
}

#[test]
fn the_quickstart_mesh_serves_shifts_and_survives_failures() {
    let gateway = free_addr();
    let mut up = Up::start(quickstart_mesh(gateway));
    up.wait_ready(&["web-v1-0", "web-v2-0", "api-0", "api-1"]);
    up.wait_up();
    let first = route_version(&up);
    up.wait("every proxy acknowledged the mesh", |u| u.all_acked(first));
    wait_until("the gateway serving web", Duration::from_secs(30), || http_get(gateway, "edge", "/").0 == 200);

    // curl: web answers (after calling api through its sidecar) at 80/20 by version.
    let url = format!("http://{gateway}/");
    let results = curl_many(&url, 100, &[]);
    assert_eq!(count(&results, |(s, _)| *s == 200), 100, "{results:?}");
    let v1 = count(&results, |(_, who)| who == "web v1");
    assert!((75..=85).contains(&v1), "web v1 served {v1} of 100");
    let (_, _, body) = http_get(gateway, "edge", "/");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["calls"]["api"]["status"], 200, "web reaches api through its sidecar: {answer}");
    assert_eq!(answer["calls"]["api"]["answer"]["service"], "api");
    let api = curl_many(&format!("http://{gateway}/api"), 20, &[]);
    assert_eq!(count(&api, |(s, who)| *s == 200 && who == "api v1"), 20, "{api:?}");

    // A Python client runs through everything below; none of its requests may fail.
    let load = Load::start(&up.dir, gateway);

    // A route change reaches every proxy and moves all of web to v2.
    let shifted = apply(&up, &repo_root().join("examples/quickstart/canary-to-v2.yaml"));
    up.wait("every proxy acknowledged the route change", |u| u.all_acked(shifted));
    let results = curl_many(&url, 30, &[]);
    assert_eq!(count(&results, |(s, who)| *s == 200 && who == "web v2"), 30, "{results:?}");

    // The control plane dies: traffic goes on; it comes back with every acknowledged write.
    let control_pid = up.process("control")["pid"].as_u64().unwrap();
    send_signal(control_pid as u32, libc::SIGKILL);
    let during = curl_many(&url, 20, &[]);
    assert_eq!(count(&during, |(s, who)| *s == 200 && who == "web v2"), 20, "{during:?}");
    up.wait("the control plane restarted", |u| {
        u.process("control")["restarts"].as_u64() >= Some(1) && u.process("control")["ready"] == true
    });
    assert_ne!(up.process("control")["pid"].as_u64(), Some(control_pid));
    // The runtime writes what it owns again (Endpoints), and only that: the
    // route as applied, not as in the files, is still there afterwards.
    up.wait("the runtime rewrote Endpoints/web", |u| u.resource_version("Endpoints", "web") > Some(shifted));
    up.wait("proxies reconnected", |u| u.all_acked(shifted));
    assert_eq!(up.resource_version("Route", "edge"), Some(shifted));
    let kept = up.spec::<RouteSpec>("Route", "edge").expect("the route is stored");
    assert_eq!(kept.rules[1].backends[0].version.as_deref(), Some("v2"), "{kept:#?}");

    // And it still drives the proxies: back to 80/20.
    let mesh = up.dir.join("edge.yaml");
    let edge_only: Vec<Resource> = quickstart_resources(gateway).into_iter().filter(|r| r.kind() == "Route").collect();
    std::fs::write(&mesh, edge_only.to_yaml()).unwrap();
    let restored = apply(&up, &mesh);
    assert!(restored > shifted);
    up.wait("every proxy acknowledged the restored route", |u| u.all_acked(restored));
    let traffic = load.finish();
    assert_eq!(traffic["failed"], 0, "requests failed during the route change or the control plane's restart: {traffic}");
    assert!(traffic["sent"].as_u64().unwrap() > 50, "{traffic}");
    assert!(traffic["served"]["web v2"].as_u64().unwrap_or(0) > 0, "{traffic}");

    // A workload dies: it is restarted, published again, and serves again.
    let app_pid = up.process("web-v1-0")["pid"].as_u64().unwrap();
    send_signal(app_pid as u32, libc::SIGKILL);
    up.wait("web-v1-0 restarted and ready", |u| {
        u.process("web-v1-0")["restarts"].as_u64() >= Some(1) && u.process("web-v1-0")["ready"] == true
    });
    wait_until("web v1 serving through the gateway again", Duration::from_secs(30), || {
        curl_many(&url, 10, &[]).iter().any(|(s, who)| *s == 200 && who == "web v1")
    });
    let after = curl_many(&url, 50, &[]);
    assert_eq!(count(&after, |(s, _)| *s == 200), 50, "{after:?}");
    assert!(count(&after, |(_, who)| who == "web v1") >= 35, "{after:?}");
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}

#[test]
fn demo_runs_a_live_split_with_no_errors() {
    let port = free_port().to_string();
    let args = [
        "demo",
        "--duration",
        "4s",
        "--rps",
        "100",
        "-o",
        "json",
        "--port",
        &port,
        "--admin-base",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ];
    let out = run_with_timeout(trefoil_command().args(args), Duration::from_secs(120));
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["errors"], 0, "{summary}");
    let served = |who: &str| summary["served"][who].as_u64().unwrap_or(0);
    assert!(served("api v1") > 100, "{summary}");
    let share = served("web v1") as f64 / (served("web v1") + served("web v2")) as f64;
    assert!((share - 0.8).abs() < 0.05, "{summary}");
}
