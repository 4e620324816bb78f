//! One request, one trace id, across the mesh: `trefoil up` on the
//! quickstart mesh (a gateway; web calling api through its sidecar), one
//! request with a known `traceparent`, then `trefoil trace` shows every hop
//! under that id, each the child of the hop before it; with a CNF on the
//! gateway's route, the chain step and its event handler sit between the
//! gateway and web. Every upstream attempt is a span of its hop; a retried
//! request shows both attempts.

use std::process::Output;
use std::time::Duration;

use trefoil_api::traces::{Span, Trace, TraceList};
use trefoil_model::spec::{AppProtocol, Endpoint, NetworkFunctionSpec, RetryOn, RouteRule, ServicePort, ServiceSpec};
use trefoil_model::Spec;
use trefoil_testkit::resources::{
    cnf_with_handler, function, listener, ms, network_function, resource, retry, route, rule_to, service, step, strings, version_backend,
};
use trefoil_testkit::{
    free_addr, http_request, quickstart_mesh, quickstart_resources, scratch_dir, wait_until, Control, Function, Proxy, TestServer, ToYaml,
    Up,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Starts the quickstart mesh and waits until the gateway serves web.
fn start(mesh: impl ToYaml, gateway: std::net::SocketAddr) -> Up {
    let mut up = Up::start(mesh);
    up.wait_ready(&["web-v1-0", "web-v2-0", "api-0", "api-1"]);
    up.wait("every proxy acknowledged its snapshot", |u| u.all_acked(1.into()));
    wait_until("the gateway serving web", Duration::from_secs(30), || {
        http_request(gateway, "GET", "edge", "/", &[], b"").is_ok_and(|r| r.0 == 200)
    });
    up
}

/// One request with a known trace id; then the trace's spans once `count` arrived.
fn traced_request(up: &Up, gateway: std::net::SocketAddr, count: usize) -> Vec<Span> {
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let (status, headers, body) = http_request(gateway, "GET", "edge", "/", &[("traceparent", &traceparent)], b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers.get("x-trefoil-trace-id").map(String::as_str), Some(TRACE_ID), "{headers:?}");
    // Proxies export in batches about a second apart: wait for every span.
    let mut spans: Vec<Span> = Vec::new();
    wait_until("the trace's spans at the collector", Duration::from_secs(30), || {
        let out = trace(up, &[TRACE_ID, "-o", "json"]);
        spans = serde_json::from_slice::<Trace>(&out.stdout).map(|t| t.spans).unwrap_or_default();
        spans.len() >= count
    });
    assert_eq!(spans.len(), count, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == TRACE_ID), "{spans:#?}");
    spans
}

fn trace(up: &Up, args: &[&str]) -> Output {
    up.cli(&[&["trace"], args].concat())
}

fn attr<'a>(span: &'a Span, key: &str) -> &'a str {
    span.attributes.get(key).map_or("", String::as_str)
}

fn is_attempt(span: &Span) -> bool {
    span.name.starts_with("attempt ")
}

/// Whether `child`'s parent is `parent`.
fn child_of(child: &Span, parent: &Span) -> bool {
    child.parent_span_id.as_ref() == Some(&parent.span_id)
}

/// The spans that are not upstream attempts; asserts that each hop has exactly one attempt, its child.
fn without_attempts(spans: &[Span]) -> Vec<Span> {
    let (attempts, others): (Vec<Span>, Vec<Span>) = spans.iter().cloned().partition(is_attempt);
    for hop in others.iter().filter(|s| !attr(s, "trefoil.direction").is_empty()) {
        let mine: Vec<&Span> = attempts.iter().filter(|a| child_of(a, hop)).collect();
        assert_eq!(mine.len(), 1, "one attempt per hop: {spans:#?}");
        assert_eq!((mine[0].name.as_str(), attr(mine[0], "trefoil.upstream")), ("attempt 1", attr(hop, "trefoil.upstream")), "{spans:#?}");
        assert_eq!(
            (attr(mine[0], "trefoil.attempt.status"), attr(mine[0], "trefoil.retry")),
            (attr(hop, "http.response.status_code"), "false"),
            "{spans:#?}"
        );
    }
    others
}

#[test]
fn one_request_is_one_trace_across_gateway_and_sidecars() {
    let gateway = free_addr();
    let mut up = start(quickstart_mesh(gateway), gateway);
    let spans = without_attempts(&traced_request(&up, gateway, 8));
    let (gw, web_in, web_out, api_in) = (&spans[0], &spans[1], &spans[2], &spans[3]);
    assert_eq!(gw.service, "gateway", "{spans:#?}");
    assert_eq!(gw.parent_span_id.as_deref(), Some(CLIENT_SPAN), "the gateway continues the client's trace");
    assert!(web_in.service.starts_with("web-v"), "{spans:#?}");
    assert_eq!(attr(web_in, "trefoil.direction"), "inbound");
    assert!(child_of(web_in, gw), "web's sidecar is called by the gateway: {spans:#?}");
    assert_eq!(web_out.service, web_in.service, "{spans:#?}");
    assert_eq!(attr(web_out, "trefoil.direction"), "outbound");
    assert_eq!(attr(web_out, "trefoil.service"), "api");
    assert!(child_of(web_out, web_in), "the app's onward call carries the trace on: {spans:#?}");
    assert!(api_in.service.starts_with("api-"), "{spans:#?}");
    assert_eq!(attr(api_in, "trefoil.direction"), "inbound");
    assert!(child_of(api_in, web_out), "{spans:#?}");

    // The table: one line per hop, each deeper than the one before.
    let out = trace(&up, &[TRACE_ID]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let hops: Vec<&str> = text.lines().filter(|l| l.starts_with('+') && !l.contains(": attempt ")).collect();
    assert_eq!(hops.len(), 4, "{text}");
    assert!(text.contains("  gateway: attempt 1 -> web v"), "{text}");
    assert!(hops[0].contains("  gateway outbound: GET / -> 200 via web"), "{text}");
    assert!(hops[3].contains("        api-"), "{text}");

    // Listed among recent traces, rooted at the gateway.
    let out = trace(&up, &["-o", "json"]);
    let list: TraceList = serde_json::from_slice(&out.stdout).expect("trace -o json prints a TraceList");
    let item = list.items.iter().find(|t| t.trace_id == TRACE_ID);
    assert_eq!(item.map(|t| (t.service.as_str(), t.spans)), Some(("gateway", 8)), "{list:#?}");

    // An id the collector does not hold is bad input.
    let out = trace(&up, &["0123456789abcdef0123456789abcdef"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}

#[test]
fn the_trace_shows_the_chain_step_between_gateway_and_upstream() {
    let acl_function = Function::json("acl");
    let gateway = free_addr();
    let mut mesh = quickstart_resources(gateway);
    let web_rule = mesh
        .iter_mut()
        .filter_map(|r| match &mut r.spec {
            Spec::Route(route) => Some(route),
            _ => None,
        })
        .flat_map(|route| route.rules.iter_mut())
        .find(|rule| rule.backends.contains(&version_backend("web", "v1", 80)))
        .expect("the quickstart's web rule moved");
    web_rule.chain = Some("scan".into());
    let acl = ServiceSpec {
        ports: vec![ServicePort { name: "http".into(), port: 80, protocol: AppProtocol::Http }],
        endpoints: vec![Endpoint { address: acl_function.addr, version: "v1".into(), mesh_tls: false }],
        ..ServiceSpec::default()
    };
    mesh.extend([
        resource("acl", Spec::Service(acl)),
        network_function("acl", NetworkFunctionSpec { events: strings(&["checked"]), ..function("acl") }),
        cnf_with_handler("scan", vec![step("acl")], "checked", "trefoil.tag('user', 'ann')"),
    ]);
    let mut up = start(mesh, gateway);
    let spans = without_attempts(&traced_request(&up, gateway, 10));
    let (gw, step, handler, web_in) = (&spans[0], &spans[1], &spans[2], &spans[3]);
    assert_eq!(gw.service, "gateway", "{spans:#?}");
    assert_eq!(attr(gw, "trefoil.cnf"), "scan");
    assert_eq!(step.name, "chain acl", "the chain runs before the upstream: {spans:#?}");
    assert!(child_of(step, gw), "{spans:#?}");
    assert_eq!(
        (attr(step, "trefoil.function"), attr(step, "trefoil.step.mode"), attr(step, "trefoil.verdict")),
        ("acl", "callout", "allow")
    );
    let event = step.events.first().unwrap_or_else(|| panic!("the function's event is on its step: {step:#?}"));
    assert_eq!(event.name, "checked", "{step:#?}");
    assert!(event.attributes.get("data").is_some_and(|d| d.contains("\"path\"")), "{step:#?}");
    assert_eq!(handler.name, "handler checked", "the handler of the step's event runs after it: {spans:#?}");
    assert!(child_of(handler, gw), "{spans:#?}");
    assert_eq!(
        (
            attr(handler, "trefoil.cnf"),
            attr(handler, "trefoil.event"),
            attr(handler, "trefoil.handler.on"),
            attr(handler, "trefoil.handler.result")
        ),
        ("scan", "checked", "allow", "ok")
    );
    assert_eq!(attr(handler, "tag.user"), "ann", "the handler's tag is on its span: {handler:#?}");
    assert!(step.end_unix_nano <= handler.start_unix_nano, "{spans:#?}");
    assert!(handler.end_unix_nano <= web_in.start_unix_nano, "the step and its handler end before web is called: {spans:#?}");
    assert!(child_of(web_in, gw), "{spans:#?}");

    let out = trace(&up, &[TRACE_ID]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('+') && !l.contains(": attempt ")).collect();
    assert!(lines[1].contains("    gateway: chain acl (scan, callout) allow"), "{text}");
    assert!(lines[2].contains("event checked"), "{text}");
    assert!(lines[3].contains("    gateway: handler scan checked (on allow) ok user=ann"), "{text}");
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
}

#[test]
fn a_retried_request_shows_each_attempt_as_a_span() {
    let control = Control::start(&scratch_dir().join("control"));
    let flaky = TestServer::spawn(&["--name", "flaky", "--fail-every", "2"]);
    let public = free_addr();
    let mut proxy = Proxy::start(vec![
        listener("public", public),
        service("web", &[(flaky.addr(), "v1")]),
        route("web", &["*"], vec![RouteRule { retry: Some(retry(2, &[RetryOn::ServerError], ms(1))), ..rule_to("web") }]),
    ]);
    // A standalone proxy exports only when its Proxy resource says where.
    proxy.export_traces_to(&control.url());
    proxy.signal(libc::SIGHUP);
    wait_until("config version 2", Duration::from_secs(10), || proxy.config_version() >= 2);
    proxy.wait_ready();

    // The upstream fails its 2nd, 4th... request: the traced one fails first, then its retry succeeds.
    flaky.reset_stats();
    assert_eq!(http_request(public, "GET", "web.local", "/first", &[], b"").unwrap().0, 200);
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let traceparent = format!("00-{trace_id}-{CLIENT_SPAN}-01");
    let (status, _, body) = http_request(public, "GET", "web.local", "/retried", &[("traceparent", &traceparent)], b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let mut spans: Vec<Span> = Vec::new();
    wait_until("the trace's three spans", Duration::from_secs(15), || {
        // Not found until the proxy's first export arrives.
        spans = control.client().trace(trace_id).map(|t| t.spans).unwrap_or_default();
        spans.len() >= 3
    });
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let hop = spans.iter().find(|s| !is_attempt(s)).unwrap();
    assert_eq!((attr(hop, "trefoil.attempts"), attr(hop, "http.response.status_code")), ("2", "200"), "{spans:#?}");
    let attempts: Vec<&Span> = spans.iter().filter(|s| is_attempt(s)).collect();
    assert_eq!((attempts[0].name.as_str(), attempts[1].name.as_str()), ("attempt 1", "attempt 2"), "in time order: {spans:#?}");
    for a in &attempts {
        assert!(child_of(a, hop), "{spans:#?}");
        assert_eq!(
            (attr(a, "trefoil.service"), attr(a, "trefoil.version"), attr(a, "trefoil.upstream")),
            ("web", "v1", flaky.addr().to_string().as_str())
        );
    }
    let (first, second) = (attempts[0], attempts[1]);
    assert!(attr(first, "trefoil.attempt.status").starts_with('5'), "{first:#?}");
    assert_eq!((attr(first, "trefoil.attempt.failure"), attr(first, "trefoil.retry"), first.error), ("status", "true", true), "{first:#?}");
    assert_eq!(
        (attr(second, "trefoil.attempt.status"), attr(second, "trefoil.retry"), second.error),
        ("200", "false", false),
        "{second:#?}"
    );
    assert!(first.end_unix_nano <= second.start_unix_nano, "{spans:#?}");
}
