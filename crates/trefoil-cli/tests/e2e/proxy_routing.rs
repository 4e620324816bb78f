//! Routing, splitting and filters of a real proxy against real upstreams.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use trefoil_model::spec::{
    BackendRef, ConnectionPool, FaultAbort, FaultInjection, HashOn, HeaderModifier, HealthCheck, LoadBalancer, LocalRateLimit,
    OutlierDetection, RequestMirror, RetryBudget, RetryOn, RetryPolicy, RouteFilters, RouteMatch, RouteRule, TrafficPolicySpec,
};
use trefoil_testkit::resources::{
    equals, listener, ms, path_prefix, retry, route, route_all, rule_to, secs, service, traffic_policy, version_backend,
};
use trefoil_testkit::{count, curl_many, free_addr, http_get, http_request, raw_exchange, wait_until, Proxy, TestServer};

/// A TrafficPolicy's spec for Service `web`, with every default.
fn web_policy() -> TrafficPolicySpec {
    TrafficPolicySpec { service: "web".into(), ..TrafficPolicySpec::default() }
}

/// Filters that mirror every request to `service`.
fn mirror_to(service: &str) -> RouteFilters {
    let mirror = RequestMirror { backend: BackendRef { service: service.into(), version: None }, percent: 100.0 };
    RouteFilters { request_mirror: Some(mirror), ..RouteFilters::default() }
}

#[test]
fn weighted_split_holds_its_proportions() {
    let (v1, v2) = (TestServer::named("v1"), TestServer::named("v2"));
    let public = free_addr();
    let split = RouteRule { backends: vec![version_backend("web", "v1", 80), version_backend("web", "v2", 20)], ..RouteRule::default() };
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(v1.addr(), "v1"), (v2.addr(), "v2")]),
        route("web", &["*"], vec![split]),
    ]);
    let results = curl_many(&format!("http://{public}/"), 1000, &[]);
    assert_eq!(results.len(), 1000);
    assert_eq!(count(&results, |r| r.0 == 200), 1000);
    let to_v1 = count(&results, |r| r.1 == "v1") as f64 / 1000.0;
    assert!((to_v1 - 0.80).abs() <= 0.02, "v1 got {to_v1}, want 0.80 ± 0.02");
    assert_eq!(
        proxy.metric_sum("trefoil_requests_total", &["version=\"v2\"", "status_code=\"200\""]) as usize,
        count(&results, |r| r.1 == "v2")
    );
}

#[test]
fn header_query_and_method_matches_route_requests() {
    let (stable, canary) = (TestServer::named("stable"), TestServer::named("canary"));
    let public = free_addr();
    let to_canary = RouteRule {
        matches: vec![
            RouteMatch { headers: vec![equals("x-canary", "yes")], ..RouteMatch::default() },
            RouteMatch { query_params: vec![equals("track", "beta")], method: Some("GET".parse().unwrap()), ..RouteMatch::default() },
        ],
        backends: vec![version_backend("web", "canary", 1)],
        ..RouteRule::default()
    };
    let to_stable =
        RouteRule { matches: vec![path_prefix("/")], backends: vec![version_backend("web", "stable", 1)], ..RouteRule::default() };
    let _proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(stable.addr(), "stable"), (canary.addr(), "canary")]),
        route("web", &["web.example.com"], vec![to_canary, to_stable]),
    ]);
    let who = |headers: &[(&str, &str)], method: &str, path: &str| {
        let (status, h, _) = http_request(public, method, "web.example.com", path, headers, b"").unwrap();
        assert_eq!(status, 200);
        h.get("x-served-by").cloned().unwrap_or_default()
    };
    assert_eq!(who(&[("x-canary", "yes")], "GET", "/"), "canary");
    assert_eq!(who(&[("x-canary", "no")], "GET", "/"), "stable");
    assert_eq!(who(&[], "GET", "/a?track=beta"), "canary");
    assert_eq!(who(&[], "POST", "/a?track=beta"), "stable");
    // An unknown host has no route.
    let (status, headers, _) = http_get(public, "other.example.com", "/");
    assert_eq!(status, 404);
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("no_route"));
}

#[test]
fn mirror_receives_copies_and_never_changes_the_response() {
    let (primary, shadow) = (TestServer::named("primary"), TestServer::spawn(&["--name", "shadow", "--fail-every", "1"]));
    let public = free_addr();
    let _proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(primary.addr(), "v1")]),
        service("shadow", &[(shadow.addr(), "v1")]),
        route("web", &["*"], vec![RouteRule { filters: mirror_to("shadow"), ..rule_to("web") }]),
    ]);
    let results = curl_many(&format!("http://{public}/mirrored"), 50, &[]);
    assert!(results.iter().all(|r| r.0 == 200 && r.1 == "primary"), "{results:?}");
    wait_until("50 mirrored copies", Duration::from_secs(10), || shadow.requests_for("/mirrored") == 50);
    assert_eq!(primary.requests_for("/mirrored"), 50);
}

#[test]
fn mirror_answers_are_read_to_the_end() {
    let (primary, shadow) = (TestServer::named("primary"), TestServer::named("shadow"));
    let public = free_addr();
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(primary.addr(), "v1")]),
        service("shadow", &[(shadow.addr(), "v1")]),
        route("web", &["*"], vec![RouteRule { filters: mirror_to("shadow"), ..rule_to("web") }]),
    ]);
    // Answers larger than socket buffers arrive only while the proxy reads them.
    let results = curl_many(&format!("http://{public}/bytes/1000000"), 5, &[]);
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
    wait_until("5 mirror answers read", Duration::from_secs(10), || {
        proxy.metric_sum("trefoil_mirror_requests_total", &["result=\"sent\""]) == 5.0
    });
}

#[test]
fn retries_recover_from_an_upstream_failing_every_other_request() {
    let flaky = TestServer::spawn(&["--name", "flaky", "--fail-every", "2"]);
    let public = free_addr();
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(flaky.addr(), "v1")]),
        route("web", &["*"], vec![RouteRule { retry: Some(retry(2, &[RetryOn::ServerError], ms(1))), ..rule_to("web") }]),
    ]);
    let results = curl_many(&format!("http://{public}/"), 100, &[]);
    assert_eq!(count(&results, |r| r.0 == 200), 100, "{results:?}");
    assert!(proxy.metric_sum("trefoil_retries_total", &[]) >= 49.0);
}

#[test]
fn retry_budget_caps_retries() {
    let broken = TestServer::spawn(&["--name", "broken", "--fail-every", "1"]);
    let public = free_addr();
    let budget = RetryBudget { percent: 10.0, min_retries_per_second: 0 };
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(broken.addr(), "v1")]),
        route(
            "web",
            &["*"],
            vec![RouteRule {
                retry: Some(RetryPolicy { budget: Some(budget), ..retry(3, &[RetryOn::ServerError], ms(1)) }),
                ..rule_to("web")
            }],
        ),
    ]);
    let results = curl_many(&format!("http://{public}/"), 100, &[]);
    assert_eq!(count(&results, |r| r.0 == 503), 100);
    let retries = proxy.metric_sum("trefoil_retries_total", &[]);
    assert!(retries <= 10.0, "budget of 10% allowed {retries} retries for 100 requests");
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint() {
    let (good, bad) = (TestServer::named("good"), TestServer::spawn(&["--name", "bad", "--fail-every", "1"]));
    let public = free_addr();
    // Gateway errors keep the model's default threshold.
    let outliers = OutlierDetection {
        consecutive5xx: Some(3),
        consecutive_gateway_errors: Some(5),
        base_ejection_time: secs(60),
        max_ejection_percent: 50.0,
    };
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(good.addr(), "v1"), (bad.addr(), "v1")]),
        traffic_policy(TrafficPolicySpec { outlier_detection: Some(outliers), ..web_policy() }),
        route_all("web"),
    ]);
    // Round robin sends every other request to the bad endpoint until it is ejected.
    let warmup = curl_many(&format!("http://{public}/"), 20, &[]);
    assert_eq!(count(&warmup, |r| r.1 == "bad"), 3, "ejected after 3 consecutive 5xx: {warmup:?}");
    assert_eq!(proxy.metric_sum("trefoil_outlier_ejections_total", &["service=\"web\""]), 1.0);
    bad.reset_stats();
    let after = curl_many(&format!("http://{public}/"), 100, &[]);
    assert!(after.iter().all(|r| r.0 == 200 && r.1 == "good"), "{after:?}");
    assert_eq!(bad.requests(), 0);
}

#[test]
fn timeouts_answer_504() {
    let slow = TestServer::named("slow");
    let public = free_addr();
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(slow.addr(), "v1")]),
        route("web", &["*"], vec![RouteRule { timeout: Some(ms(200)), ..rule_to("web") }]),
    ]);
    let (status, headers, _) = http_get(public, "x", "/?delay_ms=3000");
    assert_eq!(status, 504);
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("timeout"));
    assert_eq!(http_get(public, "x", "/?delay_ms=10").0, 200);
    assert_eq!(proxy.metric_sum("trefoil_requests_total", &["status_code=\"504\""]), 1.0);
}

#[test]
fn malformed_requests_get_400_and_the_proxy_stays_up() {
    let up = TestServer::named("up");
    let public = free_addr();
    let _proxy = Proxy::start(vec![listener("public", public), service("web", &[(up.addr(), "v1")]), route_all("web")]);
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n"[..],
        b"\x00\x01\x02 nonsense\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    ] {
        let reply = raw_exchange(public, garbage, false).text();
        assert!(reply.starts_with("HTTP/1.1 400"), "{garbage:?} got {reply:?}");
    }
    assert_eq!(http_get(public, "x", "/").0, 200);
}

#[test]
fn faults_rate_limits_and_header_edits() {
    let up = TestServer::named("up");
    let public = free_addr();
    let fault = FaultInjection { delay: None, abort: Some(FaultAbort { status: 418, percent: 100.0 }) };
    let limit = LocalRateLimit { requests_per_second: 0.001, burst: Some(5), status: 429 };
    let edits = RouteFilters {
        request_header_modifier: Some(HeaderModifier {
            set: [("x-set".parse().unwrap(), "one".parse().unwrap())].into(),
            remove: vec!["x-drop".parse().unwrap()],
            ..HeaderModifier::default()
        }),
        response_header_modifier: Some(HeaderModifier {
            add: [("x-resp".parse().unwrap(), "two".parse().unwrap())].into(),
            ..HeaderModifier::default()
        }),
        ..RouteFilters::default()
    };
    let _proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        route(
            "web",
            &["*"],
            vec![
                RouteRule {
                    matches: vec![path_prefix("/fault")],
                    filters: RouteFilters { fault: Some(fault), ..RouteFilters::default() },
                    ..rule_to("web")
                },
                RouteRule {
                    matches: vec![path_prefix("/limited")],
                    filters: RouteFilters { rate_limit: Some(limit), ..RouteFilters::default() },
                    ..rule_to("web")
                },
                RouteRule { matches: vec![path_prefix("/echo")], filters: edits, ..rule_to("web") },
            ],
        ),
    ]);
    assert_eq!(http_get(public, "x", "/fault").0, 418);
    assert_eq!(up.requests_for("/fault"), 0);
    let limited = curl_many(&format!("http://{public}/limited"), 8, &[]);
    assert_eq!(count(&limited, |r| r.0 == 200), 5);
    assert_eq!(count(&limited, |r| r.0 == 429), 3);
    let (status, headers, body) = {
        let (s, h, b) = http_request(
            public,
            "GET",
            "x",
            "/echo",
            &[("x-drop", "1"), ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
            b"",
        )
        .unwrap();
        (s, h, String::from_utf8(b).unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(headers.get("x-resp").map(String::as_str), Some("two"));
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-set"], "one");
    assert!(echo["headers"].get("x-drop").is_none());
    let traceparent = echo["headers"]["traceparent"].as_str().unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !traceparent.contains("00f067aa0ba902b7"), "{traceparent}");
    assert_eq!(headers.get("x-trefoil-trace-id").map(String::as_str), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
}

#[test]
fn circuit_breaker_refuses_over_max_requests() {
    // `--delay` holds requests after counting them, so the count shows arrival.
    let slow = TestServer::spawn(&["--name", "slow", "--delay", "1500"]);
    let public = free_addr();
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(slow.addr(), "v1")]),
        traffic_policy(TrafficPolicySpec {
            connection_pool: Some(ConnectionPool { max_requests: 1, ..ConnectionPool::default() }),
            ..web_policy()
        }),
        route_all("web"),
    ]);
    let hold = std::thread::spawn(move || http_get(public, "x", "/").0);
    wait_until("the slow request to reach the upstream", Duration::from_secs(10), || slow.requests() == 1);
    let (status, headers, _) = http_get(public, "x", "/");
    assert_eq!(status, 503);
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("overflow"));
    assert_eq!(hold.join().unwrap(), 200);
    assert_eq!(http_get(public, "x", "/").0, 200);
    assert_eq!(proxy.metric_sum("trefoil_upstream_overflows_total", &["max_requests"]), 1.0);
}

#[test]
fn ring_hash_keeps_a_user_on_one_endpoint_and_least_request_spreads() {
    let servers: Vec<TestServer> = (0..3).map(|i| TestServer::named(&format!("e{i}"))).collect();
    let public = free_addr();
    let eps: Vec<(SocketAddr, &str)> = servers.iter().map(|s| (s.addr(), "v1")).collect();
    let _proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &eps),
        traffic_policy(TrafficPolicySpec {
            load_balancer: LoadBalancer::RingHash(HashOn::Header("x-user".parse().unwrap())),
            ..web_policy()
        }),
        route_all("web"),
    ]);
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..30 {
        let header = format!("x-user: user-{user}");
        let results = curl_many(&format!("http://{public}/"), 5, &["-H", &header]);
        let first = &results[0].1;
        assert!(results.iter().all(|r| &r.1 == first), "user-{user} moved: {results:?}");
        owners.insert(first.clone());
    }
    assert!(owners.len() >= 2, "30 users all hashed to {owners:?}");
}

#[test]
fn active_health_checks_take_endpoints_out_and_back() {
    let (a, b) = (TestServer::named("a"), TestServer::named("b"));
    let public = free_addr();
    let check = HealthCheck {
        http_path: Some("/healthz".into()),
        interval: ms(100),
        timeout: secs(1),
        unhealthy_threshold: 2,
        healthy_threshold: 1,
    };
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(a.addr(), "v1"), (b.addr(), "v1")]),
        traffic_policy(TrafficPolicySpec { health_check: Some(check), ..web_policy() }),
        route_all("web"),
    ]);
    b.set_healthy(false);
    let b_addr = b.addr().to_string();
    wait_until("b marked unhealthy", Duration::from_secs(10), || {
        proxy.metric_sum("trefoil_endpoint_healthy", &[&b_addr]) == 0.0 && proxy.metrics().contains(&b_addr)
    });
    b.reset_stats();
    let results = curl_many(&format!("http://{public}/"), 40, &[]);
    assert!(results.iter().all(|r| r.0 == 200 && r.1 == "a"), "{results:?}");
    b.set_healthy(true);
    wait_until("b healthy again", Duration::from_secs(10), || proxy.metric_sum("trefoil_endpoint_healthy", &[&b_addr]) == 1.0);
    let results = curl_many(&format!("http://{public}/"), 40, &[]);
    assert_eq!(count(&results, |r| r.1 == "b"), 20);
}

#[test]
fn connect_failures_are_retried_on_another_endpoint() {
    let up = TestServer::named("up");
    let dead: SocketAddr = free_addr();
    let public = free_addr();
    let _proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1"), (dead, "v1")]),
        route("web", &["*"], vec![RouteRule { retry: Some(retry(1, &[RetryOn::ConnectFailure], ms(1))), ..rule_to("web") }]),
    ]);
    let results = curl_many(&format!("http://{public}/"), 20, &[]);
    assert!(results.iter().all(|r| r.0 == 200 && r.1 == "up"), "{results:?}");
}

#[test]
fn access_log_is_json_with_trace_ids_and_spans_are_exported() {
    let up = TestServer::named("up");
    let collector = TestServer::named("collector");
    let public = free_addr();
    let mut proxy = Proxy::start(vec![listener("public", public), service("web", &[(up.addr(), "v1")]), route_all("web")]);
    // Turn on OTLP export by rewriting the Proxy resource.
    proxy.export_traces_to(&collector.url());
    proxy.signal(libc::SIGHUP);
    // The file watcher may reload it first, and the signal once more.
    wait_until("config version 2", Duration::from_secs(10), || proxy.config_version() >= 2);
    let (_, headers, _) =
        http_request(public, "GET", "x", "/logged", &[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], b"")
            .unwrap();
    assert_eq!(headers.get("x-trefoil-trace-id").map(String::as_str), Some("0af7651916cd43dd8448eb211c80319c"));
    wait_until("the access-log line", Duration::from_secs(5), || proxy.access_log().contains("/logged"));
    let line = proxy.access_log().lines().find(|l| l.contains("/logged")).unwrap().to_string();
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(record["status"], 200);
    assert_eq!(record["route"], "web");
    wait_until("an OTLP export", Duration::from_secs(10), || collector.requests_for("/v1/traces") >= 1);
    proxy.wait_ready();
}

/// A bare TCP upstream that answers every request with its request head, so
/// tests can see exactly what the proxy wrote on the wire.
fn raw_echo_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}", head.len());
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn upstream_requests_are_origin_form_with_the_client_host_and_forwarding_headers() {
    let upstream = raw_echo_upstream();
    let public = free_addr();
    let _proxy = Proxy::start(vec![listener("public", public), service("web", &[(upstream, "v1")]), route_all("web")]);
    for _ in 0..3 {
        let (status, _, head) =
            http_request(public, "GET", "shop.example.com", "/cart?id=7", &[("connection", "close, x-secret"), ("x-secret", "1")], b"")
                .unwrap();
        assert_eq!(status, 200);
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /cart?id=7 http/1.1\r\n"), "request line must be origin-form: {head}");
        assert!(head.contains("\r\nhost: shop.example.com"), "{head}");
        assert!(head.contains("\r\nx-forwarded-for: 127.0.0.1"), "{head}");
        assert!(head.contains("\r\nx-forwarded-proto: http"), "{head}");
        assert!(head.contains("\r\ntraceparent: 00-"), "{head}");
        assert!(!head.contains("x-secret"), "headers named in Connection are hop-by-hop: {head}");
    }
}

#[test]
fn large_bodies_stream_both_ways() {
    let up = TestServer::named("up");
    let public = free_addr();
    let _proxy = Proxy::start(vec![listener("public", public), service("web", &[(up.addr(), "v1")]), route_all("web")]);
    for _ in 0..3 {
        let (status, _, body) = http_request(public, "GET", "x", "/bytes/5000000", &[], b"").unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.len(), 5_000_000);
        let upload = vec![b'u'; 2_000_000];
        let (status, _, echo) = http_request(public, "POST", "x", "/echo", &[], &upload).unwrap();
        assert_eq!(status, 200);
        let echo: serde_json::Value = serde_json::from_slice(&echo).unwrap();
        assert_eq!(echo["body_len"], 2_000_000);
    }
    // Many keep-alive requests in a row reuse pooled upstream connections.
    let results = curl_many(&format!("http://{public}/bytes/70000"), 200, &[]);
    assert_eq!(count(&results, |r| r.0 == 200), 200);
}

#[test]
fn tcp_health_checks_keep_traffic_off_a_dead_endpoint() {
    let live = TestServer::named("live");
    let dead = free_addr();
    let public = free_addr();
    // A TCP check (no path); the healthy threshold is the model's default.
    let check = HealthCheck { http_path: None, interval: ms(100), timeout: ms(200), unhealthy_threshold: 1, healthy_threshold: 1 };
    let proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(live.addr(), "v1"), (dead, "v1")]),
        traffic_policy(TrafficPolicySpec { health_check: Some(check), ..web_policy() }),
        route_all("web"),
    ]);
    let dead_label = dead.to_string();
    wait_until("the dead endpoint marked unhealthy", Duration::from_secs(10), || {
        proxy.metrics().contains(&dead_label) && proxy.metric_sum("trefoil_endpoint_healthy", &[&dead_label]) == 0.0
    });
    // No retries configured: only the health check keeps requests off the dead port.
    let results = curl_many(&format!("http://{public}/"), 40, &[]);
    assert!(results.iter().all(|r| r.0 == 200 && r.1 == "live"), "{results:?}");
}
