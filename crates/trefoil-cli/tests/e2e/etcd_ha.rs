//! The control plane on etcd (decision 0024): a 3-member etcd cluster on
//! loopback (Debian's etcd-server), two `trefoil control --store etcd://...`
//! replicas, and the failures HA is for: a replica killed -9 (its
//! controllers move to the other), one etcd member down (nothing changes),
//! two down (writes fail with a clear error, reads still answer).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use trefoil_api::ControlPlaneStatus;
use trefoil_model::spec::{RouteRule, WeightedBackend};
use trefoil_testkit::resources::{backend, route};
use trefoil_testkit::{is_root, run_with_timeout, scratch_dir, wait_until, Control, EtcdCluster, ToYaml};

/// How long a replica may take to see another's write, or to take over as leader.
const CONVERGE: Duration = Duration::from_secs(30);

fn route_body(name: &str, weight: u32, rv: Option<&str>) -> String {
    let mut route =
        route(name, &["web"], vec![RouteRule { backends: vec![WeightedBackend { weight, ..backend("web") }], ..RouteRule::default() }]);
    route.metadata.resource_version = rv.map(str::to_string);
    route.to_yaml()
}

fn weight_of(route: &Value) -> u64 {
    route["spec"]["rules"][0]["backends"][0]["weight"].as_u64().unwrap_or(0)
}

fn rv_of(resource: &Value) -> String {
    resource["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string()
}

/// Installs Debian's etcd-server if it is missing and we may; whether etcd is there.
fn etcd_present() -> Result<(), String> {
    if EtcdCluster::binary().is_ok() {
        return Ok(());
    }
    if !is_root() {
        return Err("etcd is not installed and installing it needs root".into());
    }
    let mut apt = std::process::Command::new("apt-get");
    apt.args(["install", "-y", "-qq", "--no-install-recommends", "etcd-server"]).env("DEBIAN_FRONTEND", "noninteractive");
    let out = run_with_timeout(&mut apt, Duration::from_secs(300));
    EtcdCluster::binary().map(drop).map_err(|e| format!("{e}; apt-get install etcd-server said: {}", String::from_utf8_lossy(&out.stderr)))
}

fn control_plane(control: &Control) -> ControlPlaneStatus {
    let (status, body) = control.call("GET", "/api/v1/status/controlplane", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("a ControlPlaneStatus")
}

#[test]
fn etcd_replicas_share_writes_elect_one_leader_and_survive_member_loss() {
    if let Err(reason) = etcd_present() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let dir = scratch_dir();
    let mut cluster = EtcdCluster::start(&dir, 3);
    let store = cluster.url();
    let (data_a, data_b) = (dir.join("a"), dir.join("b"));
    let mut a = Control::start_with(&data_a, &["--store", &store]);
    let mut b = Control::start_with(&data_b, &["--store", &store]);
    // Every acknowledged write: name → weight.
    let mut acknowledged = BTreeMap::new();

    // Written through A, read through B.
    for i in 0..10u32 {
        let (status, reply) = a.call("PUT", &format!("/api/v1/routes/r{i}"), &route_body(&format!("r{i}"), i + 1, None));
        assert_eq!(status, 201, "{reply}\n{}", a.log());
        acknowledged.insert(format!("r{i}"), u64::from(i + 1));
    }
    wait_until("replica B to see every route written through A", CONVERGE, || {
        b.call("GET", "/api/v1/routes", "").1["items"].as_array().map_or(0, Vec::len) == 10
    });
    let (_, on_b) = b.call("GET", "/api/v1/routes/r3", "");
    assert_eq!(weight_of(&on_b), 4);
    let (_, on_a) = a.call("GET", "/api/v1/routes/r3", "");
    assert_eq!(rv_of(&on_a), rv_of(&on_b), "one resourceVersion on both replicas");

    // A stale write through B is refused, though A made it stale.
    let stale = rv_of(&on_b);
    let (status, reply) = a.call("PUT", "/api/v1/routes/r3", &route_body("r3", 40, Some(&stale)));
    assert_eq!(status, 200, "{reply}");
    acknowledged.insert("r3".into(), 40);
    let (status, reply) = b.call("PUT", "/api/v1/routes/r3", &route_body("r3", 41, Some(&stale)));
    assert_eq!(status, 409, "a stale resourceVersion is refused on the other replica: {reply}");
    assert!(reply.to_string().contains("resourceVersion"), "{reply}");

    // One leader; kill -9 it and the other takes over.
    wait_until("one replica to lead", CONVERGE, || {
        let (la, lb) = (control_plane(&a), control_plane(&b));
        la.is_leader != lb.is_leader && la.leader.is_some() && la.leader == lb.leader
    });
    let status_a = control_plane(&a);
    assert_eq!(status_a.store, store);
    let a_leads = status_a.is_leader;
    let (leader, survivor) = if a_leads { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert_eq!(control_plane(survivor).leader, Some(leader.api.to_string()));
    leader.kill_9();
    wait_until("the surviving replica to take over as leader", CONVERGE, || control_plane(survivor).is_leader);
    assert!(survivor.log().contains("leader election: this control plane leads"), "{}", survivor.log());
    let shown = run_with_timeout(&mut survivor.command(&["get", "controlplanes", "-o", "json"]), Duration::from_secs(30));
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown: ControlPlaneStatus = serde_json::from_slice(&shown.stdout).expect("`get controlplanes -o json` prints JSON");
    assert!(shown.is_leader && shown.leader == Some(survivor.api.to_string()), "{shown:?}");
    let survivor = &*survivor;

    // One etcd member down: writes still succeed.
    cluster.members[0].kill();
    for i in 10..15u32 {
        let (status, reply) = survivor.call("PUT", &format!("/api/v1/routes/r{i}"), &route_body(&format!("r{i}"), i + 1, None));
        assert_eq!(status, 201, "with one etcd member down: {reply}\n{}", survivor.log());
        acknowledged.insert(format!("r{i}"), u64::from(i + 1));
    }
    // Two down: no quorum; a write fails and says why; reads still answer.
    cluster.members[1].kill();
    let (status, reply) = survivor.call("PUT", "/api/v1/routes/lost", &route_body("lost", 1, None));
    assert_eq!(status, 503, "{reply}");
    let message = reply.to_string();
    assert!(message.contains("etcd cluster at") && message.contains("has no quorum or is unreachable"), "{message}");
    let (status, list) = survivor.call("GET", "/api/v1/routes", "");
    assert_eq!(status, 200, "reads still answer: {list}");

    // Every acknowledged write is there, as written.
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let found: BTreeMap<String, u64> =
        items.iter().map(|r| (r["metadata"]["name"].as_str().unwrap_or_default().to_string(), weight_of(r))).collect();
    assert_eq!(found, acknowledged);
    drop(cluster);
}
