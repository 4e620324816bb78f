//! Events a network function publishes on its own, after its verdict, to
//! its proxy's `/events`: the CNF's handler runs for them, detached from the
//! request (which has already been answered), and may call other functions.

use std::time::Duration;

use trefoil_model::spec::{ChainStep, NetworkFunctionSpec, SendBody, StepMode};
use trefoil_testkit::resources::{chained_route, cnf, cnf_with_handler, function, listener, network_function, service, step, strings};
use trefoil_testkit::{free_addr, http_request, request, wait_until, Function, Proxy, TestServer};

#[test]
fn a_tap_function_publishes_a_late_finding_and_the_handler_calls_another_function() {
    let up = TestServer::named("up");
    let admin = free_addr();
    let finder = Function::start("json_function.py", &["--name", "finder", "--publish", &format!("http://{admin}/events")]);
    let recorder = Function::json("recorder");
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("finder", &[(finder.addr, "v1")]),
        service("recorder", &[(recorder.addr, "v1")]),
        network_function("finder", NetworkFunctionSpec { events: strings(&["checked", "late_finding"]), ..function("finder") }),
        network_function("recorder", NetworkFunctionSpec { send_body: Some(SendBody { max_bytes: 4096 }), ..function("recorder") }),
        cnf_with_handler(
            "edge",
            vec![ChainStep { mode: StepMode::Tap, ..step("finder") }],
            "late_finding",
            &[
                "trefoil.tag(\"finding\", event.data.path)",
                "local v = trefoil.call(\"recorder\")",
                "trefoil.log(\"recorded: \" .. v.verdict)",
                "trefoil.set_header(\"x-too-late\", \"1\")",
            ]
            .join("\n"),
        ),
        chained_route(&[("/", "edge")]),
    ];
    let proxy = Proxy::start_with_admin(admin, config);

    let (status, headers, body) = request(public, "GET", "/echo", &[], b"");
    assert_eq!(status, 200, "{body}");
    let trace_id = headers.get("x-trefoil-trace-id").cloned().expect("a trace id");
    wait_until("the handler of the published event", Duration::from_secs(10), || {
        proxy.metric_sum("trefoil_chain_handler_runs_total", &["event=\"late_finding\"", "result=\"ok\""]) == 1.0
    });
    assert_eq!(
        proxy.metric_sum("trefoil_chain_calls_total", &["function=\"recorder\"", "result=\"allow\""]),
        1.0,
        "the handler called the recorder"
    );
    let log = proxy.stderr();
    let line = |needle: &str| log.lines().any(|l| l.contains(needle) && l.contains(&trace_id));
    assert!(line("published event") && line("late_finding"), "the event is logged under the request's trace id:\n{log}");
    assert!(line("recorded: allow"), "the handler's log line carries the trace id:\n{log}");
    assert!(line("nothing left to deny or edit"), "the header edit had nothing to apply to, and says so:\n{log}");
}

#[test]
fn bad_publications_are_refused_with_the_reason() {
    let up = TestServer::named("up");
    let fun = Function::json("fun");
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("fun", &[(fun.addr, "v1")]),
        network_function("fun", NetworkFunctionSpec { events: strings(&["found"]), ..function("fun") }),
        cnf("edge", vec![step("fun")]),
        chained_route(&[("/", "edge")]),
    ];
    let proxy = Proxy::start(config);
    let publish = |method: &str, body: &str| {
        let (status, _, body) =
            http_request(proxy.admin, method, "admin", "/events", &[("content-type", "application/json")], body.as_bytes())
                .expect("the admin listener answers");
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = publish("POST", r#"{"cnf": "edge", "events": [{"name": "found"}]}"#);
    assert_eq!((status, body.as_str()), (202, r#"{"accepted":true,"handled":0}"#), "accepted; no handler for it");
    let (status, body) = publish("POST", r#"{"cnf": "nope", "events": [{"name": "found"}]}"#);
    assert_eq!(status, 404);
    assert!(body.contains("no CNF named \\\"nope\\\""), "{body}");
    let (status, body) = publish("POST", r#"{"cnf": "edge", "events": [{"name": "Found!"}]}"#);
    assert_eq!(status, 400);
    assert!(body.contains("events[0].name"), "{body}");
    let (status, body) = publish("POST", r#"{"cnf": "edge", "event": []}"#);
    assert_eq!(status, 400);
    assert!(body.contains("unknown field `event`"), "{body}");
    assert_eq!(publish("GET", "").0, 405);
}
