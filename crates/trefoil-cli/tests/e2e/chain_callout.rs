//! CNF chains in callout (and tap) mode through a real proxy, calling real
//! network functions: an HTTP/JSON function, one that is down or too slow,
//! and an external authorization service written for Envoy.

use std::time::{Duration, Instant};

use trefoil_model::spec::{AppProtocol, ChainStep, FailurePolicy, FunctionApi, NetworkFunctionSpec, RouteMatch, SendBody, StepMode};
use trefoil_testkit::resources::{
    chained_route, cnf, function, listener, ms, network_function, present, secs, service, service_speaking, step, strings,
};
use trefoil_testkit::{echoed, free_addr, request, wait_until, Function, Proxy, TestServer};

/// A step's condition: header `name` present.
fn with_header(name: &str) -> Option<RouteMatch> {
    Some(RouteMatch { headers: vec![present(name)], ..RouteMatch::default() })
}

#[test]
fn json_function_allows_with_header_edits_denies_and_sees_the_body() {
    let up = TestServer::named("up");
    let acl = Function::start("json_function.py", &["--name", "acl"]);
    let other = Function::start("json_function.py", &["--name", "other"]);
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("acl", &[(acl.addr, "v1")]),
        service("other", &[(other.addr, "v1")]),
        network_function(
            "acl",
            NetworkFunctionSpec { events: strings(&["checked"]), send_body: Some(SendBody { max_bytes: 16 }), ..function("acl") },
        ),
        // Two functions run by one service: each call names its function.
        network_function("tapper", function("other")),
        network_function("second", function("other")),
        cnf(
            "edge",
            vec![
                step("acl"),
                ChainStep { mode: StepMode::Tap, when: with_header("x-tap"), ..step("tapper") },
                ChainStep { when: with_header("x-second"), ..step("second") },
            ],
        ),
        chained_route(&[("/", "edge")]),
    ];
    let proxy = Proxy::start(config);

    let (status, headers, body) = request(public, "GET", "/echo", &[("x-secret", "s3cret"), ("x-tap", "1")], b"");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    let seen = echoed(&body);
    assert_eq!(seen["x-checked-by"], "acl");
    assert_eq!(seen["x-seen-cnf"], "edge", "the function learns the CNF from the payload");
    assert_eq!(seen["x-seen-cnf-header"], "edge", "and from the header");
    assert_eq!(
        seen["x-seen-trace"].as_str(),
        headers.get("x-trefoil-trace-id").map(String::as_str),
        "the function gets the request's trace id"
    );
    assert!(seen.get("x-secret").is_none(), "the verdict removed it: {seen}");

    let (status, _, body) = request(public, "GET", "/echo", &[("x-second", "1")], b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body)["x-checked-by"], "other", "a step whose `when` holds runs after the first, and its edits win");

    let (status, _, body) = request(public, "POST", "/echo", &[("content-type", "text/plain")], b"hello");
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body)["x-seen-body"], "hello", "sendBody passes the body to the function");
    let (status, headers, _) = request(public, "POST", "/echo", &[], &[b'x'; 64]);
    assert_eq!(status, 413, "a body over sendBody.maxBytes is refused, not cut");
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_body_too_large"));

    let (status, headers, body) = request(public, "GET", "/deny/this", &[], b"");
    assert_eq!((status, body.as_str()), (451, "blocked by policy\n"));
    assert_eq!(headers.get("x-denied-by").map(String::as_str), Some("acl"));
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_denied"));
    assert_eq!(up.requests_for("/deny/this"), 0, "a denied request never reaches the upstream");

    assert_eq!(proxy.metric_sum("trefoil_requests_total", &["cnf=\"edge\""]), 5.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"acl\"", "result=\"allow\""]), 3.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"second\""]), 1.0, "`when` skips the step for other requests");
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"acl\"", "result=\"deny\""]), 1.0);
    // The tap runs in the background and only for requests with x-tap.
    wait_until("the tap call", Duration::from_secs(10), || {
        proxy.metric_sum("trefoil_chain_calls_total", &["function=\"tapper\"", "result=\"tapped\""]) == 1.0
    });
    wait_until("access-log lines naming the CNF", Duration::from_secs(10), || {
        proxy.access_log().lines().filter(|l| l.contains(r#""cnf":"edge""#)).count() == 5
    });
}

#[test]
fn failure_policy_open_passes_closed_refuses_when_down_or_slow() {
    let up = TestServer::named("up");
    let slow = Function::start("json_function.py", &["--name", "slow"]);
    let nobody = free_addr(); // free a moment ago; nothing listens there
    let public = free_addr();
    let open = |service| NetworkFunctionSpec { failure_policy: FailurePolicy::Open, ..function(service) };
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("down", &[(nobody, "v1")]),
        service("slow", &[(slow.addr, "v1")]),
        network_function("down-open", open("down")),
        network_function("down-closed", NetworkFunctionSpec { failure_policy: FailurePolicy::Closed, ..function("down") }),
        network_function("slow-open", NetworkFunctionSpec { timeout: ms(200), ..open("slow") }),
        network_function("slow-closed", NetworkFunctionSpec { timeout: ms(200), ..function("slow") }),
        cnf("c-down-open", vec![step("down-open")]),
        cnf("c-down-closed", vec![step("down-closed")]),
        cnf("c-slow-open", vec![step("slow-open")]),
        cnf("c-slow-closed", vec![step("slow-closed")]),
        chained_route(&[
            ("/down-open", "c-down-open"),
            ("/down-closed", "c-down-closed"),
            ("/slow-open", "c-slow-open"),
            ("/slow-closed", "c-slow-closed"),
        ]),
    ];
    let proxy = Proxy::start(config);

    assert_eq!(request(public, "GET", "/down-open", &[], b"").0, 200);
    let (status, headers, _) = request(public, "GET", "/down-closed", &[], b"");
    assert_eq!(status, 503);
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_unavailable"));

    for (path, want) in [("/slow-open", 200), ("/slow-closed", 503)] {
        let started = Instant::now();
        let (status, _, _) = request(public, "GET", path, &[("x-fn-delay", "3")], b"");
        assert_eq!(status, want, "{path}");
        assert!(started.elapsed() < Duration::from_secs(2), "{path}: the function's timeout bounds the wait ({:?})", started.elapsed());
    }
    assert_eq!(up.requests_for("/down-closed") + up.requests_for("/slow-closed"), 0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["result=\"failed_open\""]), 2.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["result=\"failed_closed\""]), 2.0);
}

#[test]
fn an_ext_authz_service_written_for_envoy_works_unchanged() {
    let up = TestServer::named("up");
    let authz = Function::start("ext_authz_server.py", &[]);
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service_speaking("authz", AppProtocol::Grpc, &[(authz.addr, "v1")]),
        network_function("authz", NetworkFunctionSpec { api: FunctionApi::ExtAuthz, timeout: secs(2), ..function("authz") }),
        cnf("gate", vec![step("authz")]),
        chained_route(&[("/", "gate")]),
    ];
    let proxy = Proxy::start(config);

    let (status, _, body) = request(public, "GET", "/echo?x=1", &[("authorization", "Bearer good")], b"");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    let seen = echoed(&body);
    assert_eq!(seen["x-user"], "ann", "ok_response headers reach the upstream");
    assert_eq!(seen["x-seen-cnf"], "gate", "context_extensions carry the CNF");
    assert_eq!(seen["x-seen-path"], "/echo?x=1");
    assert_eq!(seen["x-seen-source"], "127.0.0.1");
    assert!(seen.get("authorization").is_none(), "headers_to_remove applied: {seen}");

    let (status, headers, body) = request(public, "GET", "/echo", &[("authorization", "Bearer bad")], b"");
    assert_eq!((status, body.as_str()), (401, "token required\n"));
    assert_eq!(headers.get("www-authenticate").map(String::as_str), Some("Bearer"));
    assert_eq!(up.requests_for("/echo"), 1);
}
