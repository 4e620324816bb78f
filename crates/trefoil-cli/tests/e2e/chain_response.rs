//! CNF chain steps on the response phase, through a real proxy in front of a
//! real upstream, calling real HTTP/JSON network functions: header edits of
//! the answer, a deny that replaces it, response bodies sent to the function
//! up to `sendBody`, larger ones under the failure policy, `when`, and taps.

use std::time::Duration;

use trefoil_model::spec::{ChainStep, FailurePolicy, NetworkFunctionSpec, Phase, SendBody, StepMode};
use trefoil_testkit::resources::{
    chained_route, cnf, cnf_with_handler, function, listener, network_function, path_prefix, service, step, strings,
};
use trefoil_testkit::{echoed, free_addr, request, wait_until, Function, Proxy, TestServer};

/// A chain step calling `function` out on the response phase.
fn on_response(function: &str) -> ChainStep {
    ChainStep { phase: Phase::Response, ..step(function) }
}

#[test]
fn response_steps_edit_the_answer_replace_it_and_see_its_body() {
    let up = TestServer::named("up");
    let guard = Function::json("guard");
    let checker = Function::start("json_function.py", &["--name", "checker", "--deny-prefix", "/bad-download"]);
    let public = free_addr();
    let body_of_4k = Some(SendBody { max_bytes: 4096 });
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("guard", &[(guard.addr, "v1")]),
        service("checker", &[(checker.addr, "v1")]),
        network_function("guard", function("guard")),
        network_function(
            "checker",
            NetworkFunctionSpec { events: strings(&["checked"]), send_body: body_of_4k.clone(), ..function("checker") },
        ),
        network_function(
            "checker-open",
            NetworkFunctionSpec { failure_policy: FailurePolicy::Open, send_body: body_of_4k, ..function("checker") },
        ),
        network_function("watcher", function("checker")),
        cnf("both", vec![step("guard"), on_response("checker"), ChainStep { mode: StepMode::Tap, ..on_response("watcher") }]),
        cnf("open", vec![on_response("checker-open")]),
        cnf("some", vec![ChainStep { when: Some(path_prefix("/some/yes")), ..on_response("checker") }]),
        chained_route(&[("/bytes/5000", "open"), ("/some", "some"), ("/", "both")]),
    ];
    let proxy = Proxy::start(config);

    // Allow: the request phase edited the request, the response phase the answer.
    let (status, headers, body) = request(public, "GET", "/echo", &[], b"");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert_eq!(echoed(&body)["x-checked-by"], "guard", "the request-phase step edited the request");
    assert_eq!(headers.get("x-checked-by").map(String::as_str), Some("checker"), "the response-phase step edited the response");
    assert_eq!(headers.get("x-seen-status").map(String::as_str), Some("200"));
    assert_eq!(headers.get("x-seen-served-by").map(String::as_str), Some("up"), "the function saw the upstream's headers");
    assert_eq!(headers.get("x-seen-body-len").map(|l| l.parse::<usize>().unwrap()), Some(body.len()), "and its whole body");
    assert!(!headers.contains_key("x-served-by"), "the verdict removed the upstream's header");

    let (status, headers, body) = request(public, "GET", "/bytes/50", &[], b"");
    assert_eq!((status, body.as_str()), (200, "x".repeat(50).as_str()), "the body goes on intact after the function saw it");
    assert_eq!(headers.get("x-seen-body-len").map(String::as_str), Some("50"));

    // Deny: the upstream answered, but the client gets the function's refusal.
    let (status, headers, body) = request(public, "GET", "/bad-download/file", &[], b"");
    assert_eq!((status, body.as_str()), (451, "blocked by policy\n"));
    assert_eq!(headers.get("x-denied-by").map(String::as_str), Some("checker"));
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_denied"));
    assert_eq!(up.requests_for("/bad-download/file"), 1, "the request reached the upstream; its answer was replaced");

    // A response over sendBody.maxBytes cannot be judged: the failure policy decides.
    let (status, headers, _) = request(public, "GET", "/bytes/4097", &[], b"");
    assert_eq!(status, 502, "closed: refused");
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_body_too_large"));
    let (status, headers, body) = request(public, "GET", "/bytes/5000", &[], b"");
    assert_eq!((status, body.len()), (200, 5000), "open: the whole body passes, unjudged");
    assert!(body.bytes().all(|b| b == b'x'));
    assert!(!headers.contains_key("x-checked-by"));

    // `when` selects on the request.
    assert!(request(public, "GET", "/some/yes", &[], b"").1.contains_key("x-checked-by"));
    assert!(!request(public, "GET", "/some/no", &[], b"").1.contains_key("x-checked-by"));

    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"checker\"", "result=\"allow\""]), 3.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"checker\"", "result=\"deny\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"checker\"", "result=\"failed_closed\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"checker-open\"", "result=\"failed_open\""]), 1.0);
    // The tap follows the checker, so only answers the checker allowed reach it.
    wait_until("the response taps", Duration::from_secs(10), || {
        proxy.metric_sum("trefoil_chain_calls_total", &["function=\"watcher\"", "result=\"tapped\""]) == 2.0
    });
}

#[test]
fn handlers_of_response_verdicts_edit_the_response_and_call_functions_about_it() {
    let up = TestServer::named("up");
    let checker = Function::start("json_function.py", &["--name", "checker", "--deny-prefix", "/bad"]);
    // Its own event name: were it `checked` too, the handler would handle the events of the calls it makes.
    let recorder = Function::start("json_function.py", &["--name", "recorder", "--event", "recorded"]);
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("checker", &[(checker.addr, "v1")]),
        service("recorder", &[(recorder.addr, "v1")]),
        network_function("checker", NetworkFunctionSpec { events: strings(&["checked"]), ..function("checker") }),
        network_function("recorder", function("recorder")),
        cnf_with_handler(
            "edge",
            vec![on_response("checker")],
            "checked",
            &[
                "trefoil.set_header(\"x-handled\", event.data.path)",
                "trefoil.call(\"recorder\")",
                "if event.data.path == \"/refuse\" then trefoil.deny(409, \"refused by the handler\\n\") end",
            ]
            .join("\n"),
        ),
        chained_route(&[("/", "edge")]),
    ];
    let proxy = Proxy::start(config);

    let (status, headers, body) = request(public, "GET", "/echo", &[], b"");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert_eq!(headers.get("x-handled").map(String::as_str), Some("/echo"), "the handler edited the response");
    assert_eq!(
        headers.get("x-checked-by").map(String::as_str),
        Some("recorder"),
        "the called function's allow edits the response too, after the verdict's own edits"
    );

    let (status, _, body) = request(public, "GET", "/refuse", &[], b"");
    assert_eq!((status, body.as_str()), (409, "refused by the handler\n"), "a handler's deny replaces the response");
    assert_eq!(up.requests_for("/refuse"), 1);

    // A deny verdict's handler runs too; the deny stands.
    let (status, headers, _) = request(public, "GET", "/bad/file", &[], b"");
    assert_eq!(status, 451);
    assert!(!headers.contains_key("x-handled"), "nothing left to edit after a deny");

    let calls: Vec<(String, u64)> =
        recorder.received().iter().map(|c| (c["path"].as_str().unwrap_or("").to_string(), c["status"].as_u64().unwrap_or(0))).collect();
    assert_eq!(
        calls,
        [("/echo".to_string(), 200), ("/refuse".to_string(), 200), ("/bad/file".to_string(), 200)],
        "each handler's call told the recorder about the upstream's answer"
    );
    assert_eq!(proxy.metric_sum("trefoil_chain_handler_runs_total", &["event=\"checked\""]), 3.0);
}
