//! CNF chains with an `inline` step through a real proxy: a real nginx is
//! the inline function (a reverse proxy that knows nothing of Trefoil but
//! the next-hop header), between HTTP/JSON call-out functions.

use std::time::{Duration, Instant};

use trefoil_model::spec::{ChainStep, FailurePolicy, NetworkFunctionSpec, Phase, SendBody, StepMode};
use trefoil_testkit::resources::{chained_route, cnf, function, listener, ms, network_function, secs, service, step};
use trefoil_testkit::{echoed, free_addr, request, wait_until, Function, Headers, Nginx, Proxy, TestServer};

/// A chain step handing the request to `function` inline.
fn inline(function: &str) -> ChainStep {
    ChainStep { mode: StepMode::Inline, ..step(function) }
}

/// A NetworkFunction's spec: `service` with `policy` when it fails.
fn with_policy(service: &str, policy: FailurePolicy) -> NetworkFunctionSpec {
    NetworkFunctionSpec { failure_policy: policy, ..function(service) }
}

/// An nginx that passes each request on to `x-trefoil-next-hop`, adding a
/// request header and a response header; `extra` adds directives to its
/// location (e.g. dropping the resume token, to make a loop).
fn inline_nginx(extra: &str) -> Nginx {
    Nginx::start(&format!(
        "  server {{
    listen 127.0.0.1:{{port}};
    client_max_body_size 0;
    location / {{
      proxy_pass $http_x_trefoil_next_hop;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Connection \"\";
      proxy_set_header x-inline nginx;
      proxy_request_buffering off;
      proxy_buffering off;
      add_header x-inline-response nginx always;
      {extra}
    }}
  }}"
    ))
}

/// A proxy whose every request goes through `nginx` as the only (inline)
/// step of CNF `edge`, named `function` with its `timeout`, then to `up`.
fn through_one_inline_function(
    up: &TestServer,
    name: &str,
    nginx: &Nginx,
    timeout: trefoil_model::Duration,
) -> (std::net::SocketAddr, Proxy) {
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service(name, &[(nginx.addr, "v1")]),
        network_function(name, NetworkFunctionSpec { timeout, ..function(name) }),
        cnf("edge", vec![inline(name)]),
        chained_route(&[("/", "edge")]),
    ];
    (public, Proxy::start(config))
}

fn flag(headers: &Headers) -> Option<&str> {
    headers.get("x-trefoil-flag").map(String::as_str)
}

/// Headers only the proxy and its functions may see.
const INTERNAL: [&str; 4] = ["x-trefoil-chain-resume", "x-trefoil-next-hop", "x-trefoil-inline-hops", "x-trefoil-cnf"];

#[test]
fn nginx_inline_between_callouts_sees_both_directions_and_the_chain_runs_once() {
    let up = TestServer::named("up");
    let a = Function::json("a");
    let b = Function::json("b");
    let r = Function::json("r");
    let nginx = inline_nginx("");
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("a", &[(a.addr, "v1")]),
        service("b", &[(b.addr, "v1")]),
        service("r", &[(r.addr, "v1")]),
        network_function("r", function("r")),
        service("waf", &[(nginx.addr, "v1")]),
        network_function("a", function("a")),
        network_function("b", NetworkFunctionSpec { send_body: Some(SendBody { max_bytes: 1024 }), ..function("b") }),
        // Its own part (out and back) takes milliseconds; the upstream's time does not count.
        network_function("waf", NetworkFunctionSpec { timeout: ms(300), ..function("waf") }),
        cnf("edge", vec![step("a"), inline("waf"), step("b"), ChainStep { phase: Phase::Response, ..step("r") }]),
        chained_route(&[("/", "edge")]),
    ];
    let proxy = Proxy::start(config);

    let (status, headers, body) = request(public, "GET", "/echo?q=1", &[("x-secret", "s3cret")], b"");
    assert_eq!(status, 200, "{body}\n{}\n{}", proxy.stderr(), nginx.error_log());
    assert_eq!(headers.get("x-checked-by").map(String::as_str), Some("r"), "the response step edited the answer before nginx saw it");
    let seen = echoed(&body);
    assert_eq!(seen["x-inline"], "nginx", "the upstream sees the header nginx added: {seen}");
    assert_eq!(headers.get("x-inline-response").map(String::as_str), Some("nginx"), "the client sees nginx's response header");
    assert_eq!(seen["x-checked-a"], "1", "a ran before the hop, and its edits crossed it: {seen}");
    assert_eq!(seen["x-checked-b"], "1", "b ran after the hop: {seen}");
    assert!(seen.get("x-secret").is_none(), "{seen}");
    for h in INTERNAL {
        assert!(seen.get(h).is_none(), "{h} reached the upstream: {seen}");
    }
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((echo["path"].as_str(), echo["query"].as_str()), (Some("/echo"), Some("q=1")), "nginx passes the original URI");
    assert_eq!(
        (a.calls(), b.calls(), r.calls(), up.requests_for("/echo")),
        (1, 1, 1, 1),
        "each step once (the response step in the leg that reached the upstream), the upstream once"
    );
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"waf\"", "result=\"inlined\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"a\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"b\""]), 1.0);

    // A client cannot skip the chain with a resume token of its own.
    let forged = format!("{:032x}", 0x0123_4567_89ab_cdef_0123_4567_89ab_cdefu128);
    for token in [forged.as_str(), "not-a-token"] {
        let (status, _, body) = request(public, "GET", "/echo", &[("x-trefoil-chain-resume", token)], b"");
        assert_eq!(status, 200, "{body}");
        let seen = echoed(&body);
        assert_eq!(
            (seen["x-checked-a"].as_str(), seen["x-inline"].as_str(), seen["x-checked-b"].as_str()),
            (Some("1"), Some("nginx"), Some("1")),
            "the whole chain ran: {seen}"
        );
        assert!(seen.get("x-trefoil-chain-resume").is_none(), "{seen}");
    }
    assert_eq!((a.calls(), b.calls(), up.requests_for("/echo")), (3, 3, 3));

    // The body crosses the hop intact, and the step after it sees it.
    let (status, _, body) = request(public, "POST", "/echo", &[("content-type", "text/plain")], b"hello through nginx");
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-seen-body"], "hello through nginx");
    assert_eq!(echo["body_len"], 19);

    // The upstream's own time is not the function's: a slow upstream still answers.
    let (status, _, body) = request(public, "GET", "/echo?delay_ms=600", &[], b"");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    // The upstream's 5xx comes back through the hop as it is.
    let (status, headers, _) = request(public, "GET", "/status/503", &[], b"");
    assert_eq!((status, headers.get("x-inline-response").map(String::as_str)), (503, Some("nginx")));
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"waf\"", "result=\"inlined\""]), 6.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["result=\"failed_closed\""]), 0.0);
}

#[test]
fn a_large_body_streams_through_the_hop() {
    let up = TestServer::named("up");
    let nginx = inline_nginx("");
    let (public, proxy) = through_one_inline_function(&up, "waf", &nginx, secs(5));
    let big = vec![b'z'; 3 << 20];
    let (status, _, body) = request(public, "POST", "/echo", &[("content-type", "application/octet-stream")], &big);
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["body_len"], 3 << 20);
    assert_eq!(echo["headers"]["x-inline"], "nginx");
}

#[test]
fn a_function_that_drops_the_token_loops_until_the_hop_limit() {
    let up = TestServer::named("up");
    let forgetful = inline_nginx("proxy_set_header x-trefoil-chain-resume \"\";");
    let (public, proxy) = through_one_inline_function(&up, "forgetful", &forgetful, secs(10));
    let (status, headers, body) = request(public, "GET", "/echo", &[], b"");
    assert_eq!(status, 508, "{body}\n{}", proxy.stderr());
    assert_eq!(flag(&headers), Some("chain_loop"));
    assert_eq!(up.requests_for("/echo"), 0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["result=\"loop\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["result=\"inlined\""]), 8.0, "eight hops, each answered by the next");
}

#[test]
fn failure_policy_applies_when_the_inline_function_is_down() {
    let up = TestServer::named("up");
    let b = Function::json("b");
    let nobody = free_addr(); // free a moment ago; nothing listens there
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("b", &[(b.addr, "v1")]),
        service("down", &[(nobody, "v1")]),
        network_function("b", function("b")),
        network_function("down-open", with_policy("down", FailurePolicy::Open)),
        network_function("down-closed", with_policy("down", FailurePolicy::Closed)),
        cnf("c-open", vec![inline("down-open"), step("b")]),
        cnf("c-closed", vec![inline("down-closed"), step("b")]),
        chained_route(&[("/echo", "c-open"), ("/closed", "c-closed")]),
    ];
    let proxy = Proxy::start(config);

    let started = Instant::now();
    let (status, _, body) = request(public, "GET", "/echo", &[], b"");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert_eq!(echoed(&body)["x-checked-b"], "1", "open: the chain goes on after the step");
    let (status, _, body) = request(public, "POST", "/echo", &[("content-type", "text/plain")], b"kept for the upstream");
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["body_len"], 21, "the body the failed hop took is still sent upstream");

    let (status, headers, _) = request(public, "GET", "/closed", &[], b"");
    assert_eq!((status, flag(&headers)), (503, Some("chain_unavailable")));
    assert!(started.elapsed() < Duration::from_secs(5), "a refused connection fails at once");
    assert_eq!(up.requests_for("/closed"), 0);
    assert_eq!(b.calls(), 2, "b runs for the open chain only");
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"down-open\"", "result=\"failed_open\""]), 2.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"down-closed\"", "result=\"failed_closed\""]), 1.0);
}

#[test]
fn a_function_past_its_timeout_gets_the_policy_and_its_late_request_goes_nowhere() {
    let up = TestServer::named("up");
    let b = Function::json("b");
    // Passes each request on 0.8 s after it came: well after the 200 ms timeout.
    let slow = Function::start("slow_hop.py", &["--delay", "0.8"]);
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("b", &[(b.addr, "v1")]),
        service("slow", &[(slow.addr, "v1")]),
        network_function("b", function("b")),
        network_function("slow-open", NetworkFunctionSpec { timeout: ms(200), ..with_policy("slow", FailurePolicy::Open) }),
        network_function("slow-closed", NetworkFunctionSpec { timeout: ms(200), ..with_policy("slow", FailurePolicy::Closed) }),
        cnf("c-open", vec![inline("slow-open"), step("b")]),
        cnf("c-closed", vec![inline("slow-closed")]),
        chained_route(&[("/echo", "c-open"), ("/closed", "c-closed")]),
    ];
    let proxy = Proxy::start(config);

    let started = Instant::now();
    let (status, _, body) = request(public, "GET", "/echo", &[], b"");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert!(started.elapsed() < Duration::from_millis(700), "the function's timeout bounds the wait ({:?})", started.elapsed());
    assert_eq!(echoed(&body)["x-checked-b"], "1", "open: the chain went on after the step");
    let (status, headers, _) = request(public, "GET", "/closed", &[], b"");
    assert_eq!((status, flag(&headers)), (503, Some("chain_unavailable")));

    // Both requests come back from the function late: refused, so neither reaches the upstream again.
    wait_until("the late requests", Duration::from_secs(10), || proxy.access_log().matches(r#""flag":"chain_resume_late""#).count() == 2);
    assert_eq!((up.requests_for("/echo"), up.requests_for("/closed")), (1, 0), "the upstream saw the open one once");
    assert_eq!(b.calls(), 1);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["result=\"failed_open\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["result=\"failed_closed\""]), 1.0);
}
