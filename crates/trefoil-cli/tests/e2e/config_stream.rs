//! The config stream end to end: a real `trefoil control` and a real
//! `trefoil proxy --control` on loopback. Resources applied through the REST
//! API reach the proxy; a snapshot the proxy cannot apply is NACKed and the
//! old config keeps serving; the proxy outlives a kill -9 of the control
//! plane and reconnects to its successor; a CNF chain applied through the API
//! runs on the proxy, and its handler adds and removes datapath rules there.

use std::net::{SocketAddr, TcpListener};

use serde_json::Value;
use trefoil_api::ProxyStatus;
use trefoil_model::spec::{DatapathAction, Endpoint, NetworkFunctionSpec, ProxySpec, RouteRule, ServiceSpec};
use trefoil_model::{Resource, Spec};
use trefoil_testkit::control::WAIT;
use trefoil_testkit::resources::{
    cnf, cnf_with_handler, function, listener, network_function, resource, route, rule_to, secs, step, strings,
};
use trefoil_testkit::{
    echoed, free_addr, http_request, scratch_dir, trefoil_command, wait_until, Control, Function, StreamProxy, TestServer,
};

/// Who answered a GET through `addr`, or `None` if the request failed.
fn served_by(addr: SocketAddr) -> Option<(u16, String)> {
    let (status, headers, _) = http_request(addr, "GET", "web.local", "/", &[], b"").ok()?;
    Some((status, headers.get("x-served-by").cloned().unwrap_or_default()))
}

/// The status of proxy `name` once it carries a NACK.
fn wait_for_nack(control: &Control, name: &str) -> ProxyStatus {
    let mut status = None;
    wait_until(&format!("a NACK from {name}"), WAIT, || {
        status = control.status(name).filter(|s| s.nack.is_some());
        status.is_some()
    });
    status.expect("wait_until returned, so the NACK was seen")
}

fn wait_served_by(addr: SocketAddr, who: &str) {
    wait_until(&format!("{who} to answer on {addr}"), WAIT, || served_by(addr).is_some_and(|(s, by)| s == 200 && by == who));
}

/// A Service with one endpoint of version v1 and no ports.
fn service_doc(name: &str, endpoint: SocketAddr) -> Resource {
    let endpoints = vec![Endpoint { address: endpoint, version: "v1".into(), mesh_tls: false }];
    resource(name, Spec::Service(ServiceSpec { endpoints, ..ServiceSpec::default() }))
}

/// Route `web` for every host, all of it to `service`.
fn route_doc(service: &str) -> Resource {
    route("web", &["*"], vec![rule_to(service)])
}

/// Proxy `name`: no access log, a short drain.
fn proxy_doc(name: &str) -> Resource {
    resource(name, Spec::Proxy(ProxySpec { access_log: "off".into(), drain_timeout: secs(2), ..ProxySpec::with_defaults() }))
}

/// Applies a gateway: Proxy, a Listener, Services `one` and `two`, and the Route to `one`.
fn apply_gateway(control: &Control, proxy: &str, public: SocketAddr, one: &TestServer, two: &TestServer) {
    control.put(&proxy_doc(proxy));
    control.put(&listener("public", public));
    control.put(&service_doc("one", one.addr()));
    control.put(&service_doc("two", two.addr()));
    control.put(&route_doc("one"));
}

#[test]
fn applied_resources_reach_the_proxy_and_a_rejected_snapshot_keeps_the_old_config() {
    let dir = scratch_dir();
    let (api, grpc, public) = (free_addr(), free_addr(), free_addr());
    let (one, two) = (TestServer::named("one"), TestServer::named("two"));

    // The proxy comes first: its admin answers at once, not ready without a snapshot.
    let proxy = StreamProxy::start(&dir, grpc, "edge", 2);
    assert_eq!(proxy.ready(), 503, "no snapshot yet:\n{}", proxy.log());
    let control = Control::start_on(&dir.join("data"), api, grpc);

    // (a) Resources applied through the API are served, and the status says acked == latest.
    apply_gateway(&control, "edge", public, &one, &two);
    wait_served_by(public, "one");
    assert_eq!(proxy.ready(), 200);
    let status = control.wait_in_sync("edge");
    assert_eq!(status.admin_address, Some(proxy.admin.to_string()));
    assert_eq!(status.nack, None);
    // A Proxy resource that never connected is listed too.
    control.put(&proxy_doc("idle"));
    wait_until("the idle proxy in the status list", WAIT, || control.status("idle").is_some_and(|s| !s.connected));

    // (b) A route change takes effect.
    control.put(&route_doc("two"));
    wait_served_by(public, "two");
    let acked = control.wait_in_sync("edge").acked_version.expect("in sync, so acked");

    // (c) A listener on an address another socket holds cannot be bound: NACK.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    control.put(&listener("taken", taken));
    let rejected = wait_for_nack(&control, "edge");
    let error = &rejected.nack.as_ref().expect("waited for the NACK").error;
    assert!(error.contains(&taken.to_string()) && error.contains("in use"), "{rejected:?}");
    assert_eq!(rejected.acked_version, Some(acked), "the proxy still serves the old snapshot: {rejected:?}");
    assert!(rejected.latest_version > Some(acked), "{rejected:?}");
    for _ in 0..20 {
        assert_eq!(served_by(public), Some((200, "two".to_string())), "the old config keeps serving");
    }
    assert!(proxy.log().contains("NACK sent"), "{}", proxy.log());
    // The CLI shows it too.
    let out =
        trefoil_command().args(["get", "proxies", "--server", &format!("http://{api}"), "--token", control.token()]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let edge_line = table.lines().find(|l| l.starts_with("edge")).unwrap_or_default();
    assert!(edge_line.contains("yes") && edge_line.contains("in use"), "{table}");
    let out = trefoil_command()
        .args(["get", "proxies", "-o", "json", "--server", &format!("http://{api}"), "--token", control.token()])
        .output()
        .unwrap();
    let items: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(items.as_array().is_some_and(|i| i.iter().any(|p| p["name"] == "edge" && !p["nack"].is_null())), "{items}");

    // The rejected content is not sent again (a write that changes nothing
    // for this proxy), the next different content is.
    control.put(&route_doc("two"));
    control.delete("Listener", "taken");
    let status = control.wait_in_sync("edge");
    assert_eq!(status.nack, None, "a newer acked snapshot clears the rejection");
    assert_eq!(control.log().matches("snapshot rejected").count(), 1, "{}", control.log());
    drop(squatter);
}

#[test]
fn the_proxy_outlives_a_killed_control_plane_and_reconnects() {
    let dir = scratch_dir();
    let data = dir.join("data");
    let (api, grpc, public) = (free_addr(), free_addr(), free_addr());
    let (one, two) = (TestServer::named("one"), TestServer::named("two"));
    let mut control = Control::start_on(&data, api, grpc);
    let mut proxy = StreamProxy::start(&dir, grpc, "edge", 2);
    apply_gateway(&control, "edge", public, &one, &two);
    wait_served_by(public, "one");
    let before = control.wait_in_sync("edge").acked_version.expect("in sync, so acked");

    // (d) kill -9: traffic keeps flowing from the last good snapshot.
    control.kill_9();
    wait_until("the proxy to notice", WAIT, || proxy.log().contains("lost the control plane"));
    for _ in 0..20 {
        assert_eq!(served_by(public), Some((200, "one".to_string())), "traffic without a control plane");
    }
    assert_eq!(proxy.ready(), 200, "still ready: it serves its last good snapshot");

    // A new control plane on the same data: the proxy reconnects, and as
    // nothing changed it is in sync at the version it already had.
    let control = Control::start_on(&data, control.api, control.grpc);
    let status = control.wait_in_sync("edge");
    assert_eq!(status.acked_version, Some(before), "{status:?}");
    // The control plane counts the proxy as connected when its stream
    // opens; the proxy logs it a moment later, so wait for the line.
    wait_until("the proxy to log its second connection", WAIT, || proxy.log().matches("connected to the control plane").count() >= 2);

    // And a new apply reaches it.
    control.put(&route_doc("two"));
    wait_served_by(public, "two");
    assert!(control.wait_in_sync("edge").acked_version > Some(before));

    // SIGTERM still drains and exits cleanly; the control plane sees it go.
    assert_eq!(proxy.terminate(), Some(0), "{}", proxy.log());
    assert!(proxy.log().contains("drained"), "{}", proxy.log());
    wait_until("the control plane to see the proxy go", WAIT, || control.status("edge").is_some_and(|s| !s.connected));
}

#[test]
fn a_burst_of_writes_is_compiled_a_few_times_and_rejections_are_located() {
    let dir = scratch_dir();
    let (api, grpc, public) = (free_addr(), free_addr(), free_addr());
    let one = TestServer::named("one");
    let control = Control::start_on(&dir.join("data"), api, grpc);
    let _proxy = StreamProxy::start(&dir, grpc, "edge", 2);
    control.put(&listener("public", public));
    control.put(&service_doc("one", one.addr()));
    control.wait_in_sync("edge");
    let sent_before = control.log().matches("sending snapshot").count();

    // 300 writes as fast as the API takes them: debounced into a few snapshots.
    const ROUTES: usize = 300;
    for i in 0..ROUTES {
        control.put(&route(&format!("r{i}"), &[&format!("r{i}.local")], vec![rule_to("one")]));
    }
    let last = format!("r{}.local", ROUTES - 1);
    wait_until("the last route to be served", WAIT, || http_request(public, "GET", &last, "/", &[], b"").is_ok_and(|r| r.0 == 200));
    control.wait_in_sync("edge");
    let sent = control.log().matches("sending snapshot").count() - sent_before;
    assert!(sent < ROUTES / 10, "{sent} snapshots for {ROUTES} writes");

    // A reference the API accepts (resources may arrive in any order) but the
    // proxy's compile rejects: the NACK points into the snapshot.
    control.put(&route("broken", &["broken.local"], vec![rule_to("nowhere")]));
    let nack = wait_for_nack(&control, "edge").nack.expect("waited for the NACK");
    let (error, version) = (nack.error, nack.version);
    assert!(
        error.starts_with(&format!("snapshot {version}:"))
            && error.contains("spec.rules[0].backends[0].service")
            && error.contains("nowhere"),
        "{error}"
    );
    assert_eq!(http_request(public, "GET", &last, "/", &[], b"").map(|r| r.0).ok(), Some(200), "the old config keeps serving");
}

#[test]
fn a_cnf_applied_through_the_api_runs_on_the_proxy() {
    let dir = scratch_dir();
    let (api, grpc, public) = (free_addr(), free_addr(), free_addr());
    let (one, two) = (TestServer::named("one"), TestServer::named("two"));
    let acl = Function::start("json_function.py", &[]);
    let control = Control::start_on(&dir.join("data"), api, grpc);
    let _proxy = StreamProxy::start(&dir, grpc, "edge", 2);
    apply_gateway(&control, "edge", public, &one, &two);
    wait_served_by(public, "one");

    control.put(&service_doc("acl", acl.addr));
    control.put(&network_function("acl", function("acl")));
    control.put(&cnf("guard", vec![step("acl")]));
    control.put(&route("web", &["*"], vec![RouteRule { chain: Some("guard".into()), ..rule_to("one") }]));
    // The function denies paths under /deny: once it does, the chain is in force.
    wait_until("the chain to deny /deny", WAIT, || http_request(public, "GET", "web.local", "/deny", &[], b"").is_ok_and(|r| r.0 == 451));
    assert_eq!(served_by(public), Some((200, "one".to_string())), "allowed requests still pass");
    control.wait_in_sync("edge");
}

/// The seed's loop: a function publishes an event, the operator's handler
/// reacts by programming the datapath. Here the handler blocks the address a
/// request names (`trefoil.datapath.drop`) and lifts the block again
/// (`remove`); the rules land in the control plane's store with the run
/// that made them as their origin, and a rule the control plane refuses
/// comes back to the script as `nil, reason`.
#[test]
fn a_handler_adds_and_removes_datapath_rules_through_the_control_plane() {
    let dir = scratch_dir();
    let (api, grpc, public) = (free_addr(), free_addr(), free_addr());
    let (one, two) = (TestServer::named("one"), TestServer::named("two"));
    let acl = Function::start("json_function.py", &["--name", "acl"]);
    let control = Control::start_on(&dir.join("data"), api, grpc);
    let proxy = StreamProxy::start(&dir, grpc, "edge", 2);
    apply_gateway(&control, "edge", public, &one, &two);
    wait_served_by(public, "one");

    let script = "local block, unblock = request.headers['x-block'], request.headers['x-unblock']\n\
                  if block then\n\
                    local name, err = trefoil.datapath.drop(block, {ttl = '10m'})\n\
                    trefoil.set_header('x-rule', name or ('refused: ' .. err))\n\
                  end\n\
                  if unblock then trefoil.set_header('x-removed', assert(trefoil.datapath.remove(unblock))) end";
    control.put(&service_doc("acl", acl.addr));
    control.put(&network_function("acl", NetworkFunctionSpec { events: strings(&["checked"]), ..function("acl") }));
    control.put(&cnf_with_handler("guard", vec![step("acl")], "checked", script));
    control.put(&route("web", &["*"], vec![RouteRule { chain: Some("guard".into()), ..rule_to("one") }]));
    let send = |headers: &[(&str, &str)]| {
        let (status, _, body) = http_request(public, "GET", "web.local", "/echo", headers, b"").expect("the proxy answers");
        assert_eq!(status, 200, "{}\n{}", String::from_utf8_lossy(&body), proxy.log());
        echoed(&String::from_utf8_lossy(&body))
    };
    // The function marks what it checked: once it does, the chain and its handler are in force.
    wait_until("the chain to run", WAIT, || send(&[])["x-checked-by"] == "acl");

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let seen = send(&[("x-block", "10.0.1.2"), ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))]);
    let name = seen["x-rule"].as_str().unwrap_or_else(|| panic!("the handler got no rule name: {seen}\n{}", proxy.log())).to_string();
    let stored = control.client().get("DatapathRule", &name).expect("the rule is stored");
    let Spec::DatapathRule(rule) = stored.spec else { panic!("not a DatapathRule: {stored:?}") };
    assert_eq!(rule.action, DatapathAction::Drop);
    assert_eq!(rule.traffic.source.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.1.2/32"]);
    assert_eq!(rule.ttl.map(|t| t.to_string()).as_deref(), Some("600s"));
    let origin = rule.origin.expect("the run is recorded as the rule's origin");
    assert_eq!(
        (origin.cnf.as_deref(), origin.handler.as_deref(), origin.trace_id.as_deref()),
        (Some("guard"), Some("checked"), Some(trace))
    );

    let refused = send(&[("x-block", "not-an-address")]);
    let reason = refused["x-rule"].as_str().unwrap_or_default();
    assert!(reason.starts_with("refused: source:"), "the control plane's reason reaches the script: {refused}");

    assert_eq!(send(&[("x-unblock", &name)])["x-removed"].as_str(), Some(name.as_str()));
    assert!(control.client().find("DatapathRule", &name).expect("the API answers").is_none(), "the rule is gone");

    let (_, _, metrics) = http_request(proxy.admin, "GET", "admin", "/metrics", &[], b"").expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    for result in ["added", "refused", "removed"] {
        let line = format!("trefoil_chain_datapath_changes_total{{cnf=\"guard\",result=\"{result}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

/// `--control a,b`: a proxy given two control-plane replicas connects to
/// the first that answers, and when that one dies it moves to the other,
/// serving its last good snapshot throughout (issue 16). The two replicas
/// here hold the same resources in their own stores, standing in for two
/// replicas of one etcd store (`etcd_e2e` covers those).
#[test]
fn a_proxy_fails_over_between_control_plane_replicas_and_keeps_serving() {
    let dir = scratch_dir();
    let public = free_addr();
    let (one, two) = (TestServer::named("one"), TestServer::named("two"));
    let (api_a, grpc_a, api_b, grpc_b) = (free_addr(), free_addr(), free_addr(), free_addr());
    let mut a = Control::start_on(&dir.join("a"), api_a, grpc_a);
    let b = Control::start_on(&dir.join("b"), api_b, grpc_b);
    apply_gateway(&a, "edge", public, &one, &two);
    apply_gateway(&b, "edge", public, &one, &two);
    // A dead address first: the proxy goes on to the next.
    let dead = free_addr();
    let proxy = StreamProxy::start_with_controls(&dir, &format!("{dead},{grpc_a},{grpc_b}"), "edge", 1);
    wait_served_by(public, "one");
    a.wait_in_sync("edge");
    assert!(b.status("edge").is_none_or(|s| !s.connected), "connected to one replica at a time");

    a.kill_9();
    // Traffic all along: the last good snapshot keeps serving while it moves.
    wait_until("the proxy on replica b", WAIT, || {
        assert_eq!(served_by(public), Some((200, "one".to_string())), "served throughout:\n{}", proxy.log());
        b.status("edge").is_some_and(|s| s.connected && s.in_sync())
    });
    // And it takes b's changes.
    b.put(&route_doc("two"));
    wait_served_by(public, "two");
    assert!(proxy.log().contains(&dead.to_string()), "it tried the dead address first:\n{}", proxy.log());
}
