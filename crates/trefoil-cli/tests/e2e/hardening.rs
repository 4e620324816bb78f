//! Inputs an attacker would send, against real processes: each test is a
//! finding of a security probe that once crashed a component or slipped past
//! its rules. Processes that could run away get a memory limit (`RLIMIT_DATA`)
//! so a regression fails the test instead of taking the machine down.

use std::process::Command;
use std::time::Duration;

use trefoil_model::spec::{
    Endpoint, EscapedSlashes, FaultAbort, FaultInjection, HealthCheck, ListenerSpec, ListenerTimeouts, OutlierDetection, PathNormalization,
    RouteFilters, RouteRule, ServiceSpec, TrafficPolicySpec,
};
use trefoil_model::{Resource, Spec};
use trefoil_testkit::resources::{
    listener, listener_spec, ms, path_prefix, resource, route, route_all, rule_to, secs, service, traffic_policy,
};
use trefoil_testkit::{
    free_addr, free_port, http_get, json, proxy_resource, raw_exchange, raw_request, run_with_timeout, scratch_dir, set_limit,
    trefoil_command, wait_until, Control, Proxy, TestServer, ToYaml,
};

/// A cap on a child's heap, far above what any of these inputs needs once
/// handled and far below what they take when they are not.
const MEMORY_CAP: u64 = 1 << 30;

fn cap_memory(pid: u32) {
    set_limit(pid, libc::RLIMIT_DATA, MEMORY_CAP);
}

/// A Route whose labels hold nine levels of ten aliases: 10^9 strings in 900 bytes.
fn billion_laughs() -> String {
    let mut text =
        String::from("apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata:\n  name: laughs\n  labels:\n    a0: &a0 [lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!("    a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    text.push_str("spec: {hosts: [x], rules: [{backends: [{service: web}]}]}\n");
    text
}

/// 20,000 nested block sequences (40 KB): a recursive loader overflows its stack.
fn deep_nesting() -> String {
    format!("apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {{name: deep}}\nspec:\n  hosts:\n    {}x\n", "- ".repeat(20_000))
}

#[test]
fn validate_refuses_yaml_bombs_with_a_location() {
    let dir = scratch_dir();
    for (name, text, message) in
        [("laughs.yaml", billion_laughs(), "expands to more than"), ("deep.yaml", deep_nesting(), "nests more than 64 levels")]
    {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let child = trefoil_command()
            .args(["validate", "-f"])
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        cap_memory(child.id());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {:?}\n{stderr}", out.status);
        assert!(stderr.contains(&format!("{}:", file.display())) && stderr.contains(message), "{name}: {stderr}");
    }
}

#[test]
fn the_api_refuses_yaml_bombs_and_keeps_serving() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("store"));
    cap_memory(control.pid());
    for (body, message) in [(billion_laughs(), "expands to more than"), (deep_nesting(), "nests more than 64 levels")] {
        let (status, reply) = control.call("POST", "/api/v1/routes", &body);
        assert_eq!(status, 422, "{reply}");
        let errors = reply["errors"].as_array().unwrap();
        assert!(errors[0]["message"].as_str().unwrap().contains(message), "{reply}");
        assert!(errors[0]["line"].as_u64().unwrap() >= 1, "{reply}");
    }
    let (status, _) = control.call("GET", "/api/v1/routes", "");
    assert_eq!(status, 200, "the control plane still answers:\n{}", control.log());
}

#[test]
fn a_watched_proxy_keeps_its_config_through_yaml_bombs() {
    let up = TestServer::named("up");
    let public = free_addr();
    let config = vec![listener("public", public), service("web", &[(up.addr(), "v1")]), route_all("web")];
    let mut proxy = Proxy::start(&config);
    cap_memory(proxy.pid());
    for (i, bomb) in [billion_laughs(), deep_nesting()].into_iter().enumerate() {
        proxy.rewrite(format!("{}---\n{bomb}", config.to_yaml()));
        let want = i as f64 + 1.0;
        wait_until("the rejected reload", Duration::from_secs(20), || {
            proxy.metric_sum("trefoil_config_reloads_total", &["failure"]) >= want
        });
        assert_eq!(proxy.config_version(), 1);
        assert_eq!(http_get(public, "x", "/").0, 200);
    }
}

/// A proxy in front of one test server, with `/admin` denied (403) for
/// host `secure.test` and everything else routed to the server.
fn guarded_proxy(up: &TestServer, paths: PathNormalization) -> (Proxy, std::net::SocketAddr) {
    let public = free_addr();
    let forbidden = FaultInjection { delay: None, abort: Some(FaultAbort { status: 403, percent: 100.0 }) };
    let admin = RouteRule {
        matches: vec![path_prefix("/admin")],
        filters: RouteFilters { fault: Some(forbidden), ..RouteFilters::default() },
        ..rule_to("web")
    };
    let proxy = Proxy::start(vec![
        resource("public", Spec::Listener(ListenerSpec { path_normalization: paths, ..listener_spec(public) })),
        service("web", &[(up.addr(), "v1")]),
        route("secure", &["secure.test"], vec![admin, rule_to("web")]),
        route_all("web"),
    ]);
    (proxy, public)
}

#[test]
fn the_upstream_sees_the_host_the_request_was_routed_by() {
    let up = TestServer::named("up");
    let (proxy, public) = guarded_proxy(&up, PathNormalization::default());
    // Two Host headers: refused, not routed by the first and forwarded with both.
    let (status, _) = raw_request(public, "GET /admin HTTP/1.1\r\nHost: other.test\r\nHost: secure.test\r\n\r\n");
    assert_eq!(status, 400);
    // HTTP/1.1 without Host: refused. HTTP/1.0 without Host: forwarded with one.
    assert_eq!(raw_request(public, "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n").0, 400);
    let (status, body) = raw_request(public, "GET /echo HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["authority"], up.addr().to_string());
    // The absolute-form target picks the route, so it is the host the upstream sees.
    let (status, _) = raw_request(public, "GET http://secure.test/admin HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 403);
    let (status, body) = raw_request(public, "GET http://secure.test/echo HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["headers"]["host"], "secure.test");
    // `Connection: host` does not strip the Host the request was routed by.
    let (status, body) = raw_request(public, "GET /echo HTTP/1.1\r\nHost: secure.test\r\nConnection: host, x-drop\r\nX-Drop: 1\r\n\r\n");
    assert_eq!(status, 200);
    let seen = json(&body);
    assert_eq!(seen["headers"]["host"], "secure.test");
    assert!(seen["headers"]["x-drop"].is_null(), "{seen}");
    // CONNECT is answered, not left hanging with an empty reply.
    assert_eq!(raw_request(public, "CONNECT secure.test:443 HTTP/1.1\r\nHost: secure.test:443\r\n\r\n").0, 501);
    // Each refusal is logged with its flag.
    wait_until("the refusals in the access log", Duration::from_secs(10), || {
        let log = proxy.access_log();
        ["\"invalid_host\"", "\"missing_host\"", "\"connect_unsupported\""].iter().all(|flag| log.contains(flag))
    });
}

#[test]
fn the_upstream_sees_the_authority_of_an_http2_request() {
    let up = TestServer::named("up");
    let (_proxy, public) = guarded_proxy(&up, PathNormalization::default());
    let out = run_with_timeout(
        Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--http2-prior-knowledge",
            "--connect-to",
            &format!("secure.test:80:{public}"),
            "http://secure.test/x/../admin",
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let out = run_with_timeout(
        Command::new("curl").args([
            "-s",
            "--http2-prior-knowledge",
            "--connect-to",
            &format!("secure.test:80:{public}"),
            "http://secure.test/echo",
        ]),
        Duration::from_secs(20),
    );
    let seen = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(seen["headers"]["host"], "secure.test", "{seen}");
}

#[test]
fn every_spelling_of_a_denied_path_is_denied() {
    let up = TestServer::named("up");
    let (_proxy, public) = guarded_proxy(&up, PathNormalization::default());
    for path in ["/admin", "/x/../admin", "/./admin", "//admin", "/%61dmin", "/%2e%2e/admin", "/admin/./", "/ADMIN/../admin"] {
        let (status, _) = raw_request(public, &format!("GET {path} HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n"));
        assert_eq!(status, 403, "{path}");
    }
    // An escaped slash is refused by default: upstreams disagree on what it means.
    assert_eq!(raw_request(public, "GET /x/..%2fadmin HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n").0, 400);
    // The upstream receives the normalised path, with the query as sent.
    let (status, body) = raw_request(public, "GET /x/..//%65cho?a=/../b HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    let seen = json(&body);
    assert_eq!((seen["path"].as_str(), seen["query"].as_str()), (Some("/echo"), Some("a=/../b")));
    assert_eq!(up.requests_for("/admin"), 0);
}

#[test]
fn path_normalisation_follows_the_listener() {
    let up = TestServer::named("up");
    let (_proxy, public) =
        guarded_proxy(&up, PathNormalization { escaped_slashes: EscapedSlashes::Unescape, ..PathNormalization::default() });
    assert_eq!(raw_request(public, "GET /x/..%2fadmin HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n").0, 403);
    let up2 = TestServer::named("up2");
    let (_proxy, public) =
        guarded_proxy(&up2, PathNormalization { normalize: false, merge_slashes: false, escaped_slashes: EscapedSlashes::Keep });
    assert_eq!(raw_request(public, "GET /x/..%2Fadmin HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n").0, 200);
    assert_eq!(raw_request(public, "GET //admin HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n").0, 200);
    assert_eq!(up2.requests_for("/x/..%2Fadmin") + up2.requests_for("//admin"), 2, "{}", up2.stats());
}

#[test]
fn client_faults_never_count_against_the_upstream() {
    let up = TestServer::named("up");
    let public = free_addr();
    // The ejection time is the model's default.
    let outliers = OutlierDetection {
        consecutive5xx: Some(2),
        consecutive_gateway_errors: Some(2),
        base_ejection_time: secs(30),
        max_ejection_percent: 100.0,
    };
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        traffic_policy(TrafficPolicySpec { service: "web".into(), outlier_detection: Some(outliers), ..TrafficPolicySpec::default() }),
        route_all("web"),
    ]);
    for i in 0..5 {
        // A malformed chunk size, then a body cut short by the client.
        let malformed =
            raw_exchange(public, b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", false)
                .status();
        assert!(malformed.is_none_or(|s| s == 400), "round {i}: malformed chunked body answered {malformed:?}");
        let cut = raw_exchange(public, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nonly a little", true).status();
        assert!(cut.is_none_or(|s| s == 400), "round {i}: cut upload answered {cut:?}");
    }
    assert_eq!(http_get(public, "x", "/").0, 200, "the only endpoint is still in service");
    assert_eq!(proxy.metric_sum("trefoil_outlier_ejections_total", &[]), 0.0);
    assert!(!proxy.access_log().contains("upstream_reset"), "{}", proxy.access_log());
}

#[test]
fn a_reader_that_stops_early_gets_no_panic() {
    use std::io::Read;
    // Two thousand bad Services: more output than a pipe holds, so the
    // command is still writing when its reader goes away.
    let dir = scratch_dir();
    let file = dir.join("many.yaml");
    // Each lists its one endpoint twice.
    let twice = || vec![Endpoint { address: "127.0.0.1:9".parse().unwrap(), version: String::new(), mesh_tls: false }; 2];
    let services: Vec<Resource> = (0..2000)
        .map(|i| resource(&format!("s{i}"), Spec::Service(ServiceSpec { endpoints: twice(), ..ServiceSpec::default() })))
        .collect();
    std::fs::write(&file, services.to_yaml()).unwrap();
    let mut child = trefoil_command()
        .args(["validate", "-o", "json", "-f"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

fn set_open_files_limit(pid: u32, n: u64) {
    set_limit(pid, libc::RLIMIT_NOFILE, n);
}

#[test]
fn one_greedy_connection_cannot_take_every_descriptor() {
    let slow = TestServer::spawn(&["--name", "slow", "--delay", "4000"]);
    let public = free_addr();
    let proxy = Proxy::start(vec![listener("public", public), service("web", &[(slow.addr(), "v1")]), route_all("web")]);
    let open = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid())).unwrap().count() as u64;
    // Room for the proxy's own descriptors and 100 more: fewer than the streams below.
    set_open_files_limit(proxy.pid(), open + 100);
    let url = format!("http://{public}/");
    let greedy = std::thread::spawn(move || {
        run_with_timeout(Command::new("h2load").args(["-n", "300", "-c", "1", "-m", "300", &url]), Duration::from_secs(60))
    });
    wait_until("the greedy connection to fill the upstream budget", Duration::from_secs(20), || {
        proxy.metric_sum("trefoil_upstream_overflows_total", &["descriptors"]) > 0.0
    });
    // A new client is still accepted and answered at once, by a 503 while the upstreams are busy.
    let (status, headers, _) = http_get(public, "x", "/");
    assert_eq!((status, headers.get("x-trefoil-flag").map(String::as_str)), (503, Some("overflow")));
    assert_eq!(http_get(proxy.admin, "admin", "/ready").0, 200);
    greedy.join().unwrap();
    assert_eq!(proxy.metric_sum("trefoil_outlier_ejections_total", &[]), 0.0);
    // Served again once the greedy streams are done, and every worker has
    // given up the idle upstream connections they left.
    wait_until("a request served again", Duration::from_secs(20), || http_get(public, "x", "/").0 == 200);
}

#[test]
fn a_stalled_upload_is_cut_and_a_slow_one_is_not_a_timeout() {
    use std::io::{Read, Write};
    let up = TestServer::named("up");
    let public = free_addr();
    let timeouts = ListenerTimeouts { request_body_idle: secs(1), ..ListenerTimeouts::default() };
    let proxy = Proxy::start(vec![
        resource("public", Spec::Listener(ListenerSpec { timeouts, ..listener_spec(public) })),
        service("web", &[(up.addr(), "v1")]),
        route("web", &["*"], vec![RouteRule { timeout: Some(ms(500)), ..rule_to("web") }]),
    ]);
    // A body that stops coming: 408 once it has been idle for a second, the upstream not blamed.
    let reply = raw_exchange(public, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nten bytes.", false).text();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_body_timeout"), "{reply}");
    // A body that keeps coming, in three parts over more than the route's
    // 500 ms: the route's deadline counts from the end of the upload.
    let mut slow = std::net::TcpStream::connect(public).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\nabc").unwrap();
    for part in [b"def", b"ghi"] {
        std::thread::sleep(Duration::from_millis(400));
        slow.write_all(part).unwrap();
    }
    let mut reply = String::new();
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"body_len\":9"), "{reply}");
    assert_eq!(proxy.metric_sum("trefoil_outlier_ejections_total", &[]), 0.0);
}

#[test]
fn an_upstream_that_stalls_mid_response_is_cut() {
    use std::io::{Read, Write};
    // An upstream that sends headers and a few bytes of a 100-byte body, then nothing.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().unwrap();
        let mut head = [0u8; 4096];
        let _ = conn.read(&mut head);
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc").unwrap();
        // Held open, silent, until the proxy gives up on it.
        let _ = conn.read(&mut head);
    });
    let public = free_addr();
    let timeouts = ListenerTimeouts { response_body_idle: secs(1), ..ListenerTimeouts::default() };
    let _proxy = Proxy::start(vec![
        resource("public", Spec::Listener(ListenerSpec { timeouts, ..listener_spec(public) })),
        service("web", &[(upstream_addr, "v1")]),
        route_all("web"),
    ]);
    // The proxy closes the connection once the body has been idle for a second.
    let reply = raw_exchange(public, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    let (ended, text) = (&reply.end, reply.text());
    assert!(ended.is_ok() || ended.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{ended:?}: {text}");
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("abc"), "{text}");
}

#[test]
fn a_second_proxy_on_the_same_address_is_refused() {
    let up = TestServer::named("up");
    let public = free_addr();
    let resources = vec![listener("public", public), service("web", &[(up.addr(), "v1")]), route_all("web")];
    let _first = Proxy::start(&resources);
    let dir = scratch_dir();
    let config = dir.join("second.yaml");
    std::fs::write(&config, [vec![proxy_resource(free_addr(), &dir.join("access.log"))], resources].concat().to_yaml()).unwrap();
    let out = run_with_timeout(trefoil_command().args(["proxy", "--threads", "2", "--config"]).arg(&config), Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("another process already listens on {public}")), "{stderr}");
}

#[test]
fn unauthenticated_addresses_on_the_network_are_announced() {
    let up = TestServer::named("up");
    let port = free_port();
    let admin: std::net::SocketAddr = format!("0.0.0.0:{}", free_port()).parse().unwrap();
    let resources = vec![listener("open", ([0, 0, 0, 0], port).into()), service("web", &[(up.addr(), "v1")]), route_all("web")];
    let proxy = Proxy::start_with_admin(admin, resources);
    let stderr = proxy.stderr();
    assert!(stderr.contains("ADMIN ENDPOINT IS REACHABLE FROM THE NETWORK WITHOUT AUTHENTICATION"), "{stderr}");
    assert!(stderr.contains("listener open accepts connections from the network without authenticating them"), "{stderr}");
    // Loopback-only proxies say nothing of the kind.
    let quiet = Proxy::start(vec![listener("local", free_addr()), service("web", &[(up.addr(), "v1")]), route_all("web")]);
    assert!(!quiet.stderr().contains("without authenticat"), "{}", quiet.stderr());
}

#[test]
fn a_health_page_that_never_ends_fails_its_check() {
    use std::io::{Read, Write};
    // Answers 200 with a body it never finishes, on every connection.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in upstream.incoming().take(64) {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nok");
                let _ = conn.read(&mut head);
            });
        }
    });
    // The healthy threshold is the model's default.
    let check = HealthCheck {
        http_path: Some("/healthz".into()),
        interval: ms(100),
        timeout: ms(300),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
    };
    let proxy = Proxy::start(vec![
        listener("public", free_addr()),
        service("web", &[(upstream_addr, "v1")]),
        traffic_policy(TrafficPolicySpec { service: "web".into(), health_check: Some(check), ..TrafficPolicySpec::default() }),
        route_all("web"),
    ]);
    wait_until("the endpoint to be marked unhealthy", Duration::from_secs(20), || {
        proxy.metrics().lines().any(|l| l.starts_with("trefoil_endpoint_healthy{") && l.ends_with(" 0"))
    });
}
