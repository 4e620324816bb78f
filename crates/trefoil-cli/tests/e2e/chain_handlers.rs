//! CNF event handlers through a real proxy: a JSON network function
//! publishes `checked` with every verdict, and the CNF's Lua handler for it
//! edits headers, denies, calls a second function (on allow and deny verdicts
//! and taps), misbehaves, runs under its CNF's own limits, or is
//! replaced by a reload while traffic flows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trefoil_model::spec::{ChainStep, CnfSpec, HandlerLimits, NetworkFunctionSpec, RouteMatch, RouteRule, StepMode};
use trefoil_model::{Resource, Spec};
use trefoil_testkit::resources::{equals, function, listener, ms, network_function, resource, route, rule_to, service, step, strings};
use trefoil_testkit::{echoed, free_addr, http_request, request, wait_until, Function, Headers, Proxy, TestServer};

/// A mesh: upstream `web`, function `acl` (publishes `checked`) and `scanner`
/// (denies paths under /infected; publishes `scanned`, which has no handler),
/// CNFs named after each path prefix.
struct Mesh {
    up: TestServer,
    _acl: Function,
    scanner: Function,
    public: SocketAddr,
    base: Vec<Resource>,
}

impl Mesh {
    fn start() -> Self {
        let up = TestServer::named("up");
        let acl = Function::start("json_function.py", &["--name", "acl"]);
        let scanner = Function::start("json_function.py", &["--name", "scanner", "--deny-prefix", "/infected", "--event", "scanned"]);
        let public = free_addr();
        let base = vec![
            listener("public", public),
            service("web", &[(up.addr(), "v1")]),
            service("acl", &[(acl.addr, "v1")]),
            service("scanner", &[(scanner.addr, "v1")]),
            network_function("acl", NetworkFunctionSpec { events: strings(&["checked"]), ..function("acl") }),
            network_function("scanner", function("scanner")),
        ];
        Mesh { up, _acl: acl, scanner, public, base }
    }

    /// The base plus one CNF per `(name, checked handler)`, and a route rule for each
    /// taking requests with `?cnf=name` (the upstream echoes only `/echo`).
    fn config(&self, cnfs: &[(&str, &str)]) -> Vec<Resource> {
        let cnfs: Vec<(&str, &str, Option<HandlerLimits>)> = cnfs.iter().map(|(name, script)| (*name, *script, None)).collect();
        self.config_with_limits(&cnfs)
    }

    /// As [`Mesh::config`], each CNF with its own `spec.handlerLimits`, if any.
    fn config_with_limits(&self, cnfs: &[(&str, &str, Option<HandlerLimits>)]) -> Vec<Resource> {
        let cnfs: Vec<(&str, ChainStep, &str, Option<HandlerLimits>)> =
            cnfs.iter().map(|(name, script, limits)| (*name, step("acl"), *script, limits.clone())).collect();
        self.config_with_steps(&cnfs)
    }

    /// As [`Mesh::config_with_limits`], each CNF's chain one step of its own.
    fn config_with_steps(&self, cnfs: &[(&str, ChainStep, &str, Option<HandlerLimits>)]) -> Vec<Resource> {
        let mut out = self.base.clone();
        let mut rules = Vec::new();
        for (name, step, script, limits) in cnfs {
            let handlers = [("checked".to_string(), script.to_string())].into();
            out.push(resource(
                name,
                Spec::Cnf(CnfSpec { chain: vec![step.clone()], handlers, handler_limits: limits.clone(), node: None }),
            ));
            let by_query = RouteMatch { query_params: vec![equals("cnf", name)], ..RouteMatch::default() };
            rules.push(RouteRule { matches: vec![by_query], chain: Some(name.to_string()), ..rule_to("web") });
        }
        out.push(route("web", &["*"], rules));
        out
    }

    fn get(&self, path: &str) -> (u16, Headers, String) {
        request(self.public, "GET", path, &[], b"")
    }
}

#[test]
fn handlers_set_headers_deny_and_call_other_functions() {
    let mesh = Mesh::start();
    let mut proxy = Proxy::start(mesh.config(&[
        ("tag", "trefoil.set_header('x-handled', event.name .. ' ' .. event.data.path)\ntrefoil.log('handled')"),
        ("block", "if request.headers['x-block'] then trefoil.deny(429, 'handler says no\\n') end"),
        ("scan", "local v = trefoil.call('scanner')\ntrefoil.set_header('x-scan', v.verdict)"),
    ]));

    let (status, _, body) = mesh.get("/echo?cnf=tag");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert_eq!(echoed(&body)["x-handled"], "checked /echo?cnf=tag", "the handler's header reaches the upstream");

    assert_eq!(mesh.get("/echo?cnf=block").0, 200, "the handler denies only when told to");
    let (status, headers, body) = http_request(mesh.public, "GET", "web.local", "/echo?cnf=block", &[("x-block", "1")], b"").unwrap();
    assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (429, "handler says no\n"));
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_denied"));

    let (status, _, body) = mesh.get("/echo?cnf=scan");
    assert_eq!(status, 200, "{body}");
    let seen = echoed(&body);
    assert_eq!(
        (seen["x-scan"].as_str(), seen["x-checked-by"].as_str()),
        (Some("allow"), Some("scanner")),
        "the called function's verdict and edits apply: {seen}"
    );

    let proxy2_config = mesh.config(&[("infected", "trefoil.call('scanner')")]);
    proxy.rewrite(proxy2_config);
    wait_until("the reload", Duration::from_secs(10), || proxy.metric_sum("trefoil_config_reloads_total", &["result=\"success\""]) >= 1.0);
    let (status, _, body) = mesh.get("/infected?cnf=infected");
    assert_eq!((status, body.as_str()), (451, "blocked by policy\n"), "a deny from a function the handler called denies the request");
    assert_eq!(mesh.up.requests_for("/infected"), 0);

    assert!(proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"tag\"", "event=\"checked\"", "result=\"ok\""]) >= 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"block\"", "result=\"deny\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"scanner\"", "result=\"deny\""]), 1.0);
}

#[test]
fn runaway_handlers_get_the_failure_policy_and_the_proxy_stays_healthy() {
    let mesh = Mesh::start();
    let proxy = Proxy::start(mesh.config(&[
        ("spin", "while true do end"),
        ("hog", "local t = {}\nfor i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end"),
        ("fine", "trefoil.set_header('x-fine', 'yes')"),
    ]));

    for path in ["/echo?cnf=spin", "/echo?cnf=hog"] {
        let started = Instant::now();
        let (status, headers, body) = mesh.get(path);
        assert_eq!(status, 503, "{path}: acl's failure policy is closed: {body}");
        assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_unavailable"));
        assert!(started.elapsed() < Duration::from_secs(2), "{path} stopped fast: {:?}", started.elapsed());
    }
    assert_eq!(proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"spin\"", "result=\"cpu_limit\""]), 1.0);
    let hog = proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"hog\"", "result=\"memory_limit\""])
        + proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"hog\"", "result=\"cpu_limit\""]);
    assert_eq!(hog, 1.0);

    // The proxy goes on serving, ready as before.
    for _ in 0..5 {
        let (status, _, body) = mesh.get("/echo?cnf=fine");
        assert_eq!(status, 200, "{body}");
        assert_eq!(echoed(&body)["x-fine"], "yes");
    }
    assert_eq!(http_request(proxy.admin, "GET", "admin", "/ready", &[], b"").unwrap().0, 200);
    assert!(proxy.stderr().contains("event handler failed"), "the failure is logged");
}

#[test]
fn a_cnf_sets_its_own_handler_limits() {
    let mesh = Mesh::start();
    // About 100,000 instructions: well inside the default bound, far beyond 5,000.
    let sum = "local n = 0\nfor i = 1, 25000 do n = n + i end\ntrefoil.set_header('x-sum', tostring(n))";
    let proxy = Proxy::start(mesh.config_with_limits(&[
        ("roomy", sum, None),
        ("tight", sum, Some(HandlerLimits { instructions: Some(5000), ..HandlerLimits::default() })),
        (
            "timed",
            "while true do end",
            Some(HandlerLimits { instructions: Some(1_000_000_000), timeout: Some(ms(200)), ..HandlerLimits::default() }),
        ),
    ]));

    let (status, _, body) = mesh.get("/echo?cnf=roomy");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert_eq!(echoed(&body)["x-sum"], "312512500", "the default bound lets the loop finish");

    let (status, headers, body) = mesh.get("/echo?cnf=tight");
    assert_eq!(status, 503, "the CNF's own bound stops the same loop (acl fails closed): {body}");
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_unavailable"));
    assert_eq!(proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"tight\"", "result=\"cpu_limit\""]), 1.0);

    let started = Instant::now();
    assert_eq!(mesh.get("/echo?cnf=timed").0, 503);
    assert!(started.elapsed() < Duration::from_millis(900), "stopped at its own timeout, not the default second: {:?}", started.elapsed());
    assert_eq!(proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"timed\"", "result=\"deadline\""]), 1.0);
    assert!(proxy.stderr().contains("stopped after 5000 Lua instructions"), "{}", proxy.stderr());
}

#[test]
fn deny_verdicts_and_taps_run_their_handlers_too() {
    let mesh = Mesh::start();
    // The deny is final: the handler's own deny and header edit change nothing.
    let on_deny =
        "trefoil.call('scanner')\ntrefoil.tag('seen', event.data.path)\ntrefoil.deny(500, 'ignored')\ntrefoil.set_header('x-ignored', '1')";
    let proxy = Proxy::start(mesh.config_with_steps(&[
        ("denied", step("acl"), on_deny, None),
        (
            "tapped",
            ChainStep { mode: StepMode::Tap, ..step("acl") },
            "trefoil.call('scanner')\ntrefoil.set_header('x-too-late', '1')",
            None,
        ),
        ("broken", step("acl"), "error('boom')", None),
    ]));

    let (status, headers, body) = mesh.get("/deny/x?cnf=denied");
    assert_eq!((status, body.as_str()), (451, "blocked by policy\n"), "the function's deny stands: {}", proxy.stderr());
    assert_eq!(headers.get("x-denied-by").map(String::as_str), Some("acl"));
    let calls = mesh.scanner.received();
    assert!(
        calls.iter().any(|c| c["cnf"] == "denied" && c["function"] == "scanner" && c["path"] == "/deny/x?cnf=denied"),
        "the deny's handler called scanner before the reply: {calls:?}"
    );
    assert_eq!(proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"denied\"", "event=\"checked\"", "result=\"deny\""]), 1.0);

    // A failing handler keeps the deny (acl's policy is closed, but there is nothing left to refuse).
    let (status, headers, _) = mesh.get("/deny/y?cnf=broken");
    assert_eq!((status, headers.get("x-trefoil-flag").map(String::as_str)), (451, Some("chain_denied")));
    assert_eq!(proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"broken\"", "result=\"error\""]), 1.0);

    // A tap's handler runs in the background after the tap's answer; the request went on untouched.
    let (status, _, body) = mesh.get("/echo?cnf=tapped");
    assert_eq!(status, 200, "{body}");
    assert!(echoed(&body).get("x-too-late").is_none(), "{body}");
    wait_until("the tap's handler calling scanner", Duration::from_secs(10), || {
        mesh.scanner.received().iter().any(|c| c["cnf"] == "tapped" && c["path"] == "/echo?cnf=tapped")
    });
    wait_until("the tap's handler run counted", Duration::from_secs(5), || {
        proxy.metric_sum("trefoil_chain_handler_runs_total", &["cnf=\"tapped\"", "result=\"ok\""]) == 1.0
    });
    assert_eq!(mesh.up.requests_for("/deny/x"), 0);
}

#[test]
fn a_reloaded_handler_takes_effect_with_traffic_flowing() {
    let mesh = Mesh::start();
    let v1 = mesh.config(&[("live", "trefoil.set_header('x-handler', 'v1')")]);
    let v2 = mesh.config(&[("live", "trefoil.set_header('x-handler', 'v2')")]);
    let mut proxy = Proxy::start(&v1);
    assert_eq!(echoed(&mesh.get("/echo?cnf=live").2)["x-handler"], "v1");

    proxy.rewrite(&v2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut seen_v2, mut requests) = (false, 0);
    while Instant::now() < deadline && !seen_v2 {
        let (status, _, body) = mesh.get("/echo?cnf=live");
        requests += 1;
        assert_eq!(status, 200, "no request fails during the swap (request {requests}): {body}");
        let handler = echoed(&body)["x-handler"].as_str().map(str::to_string);
        assert!(matches!(handler.as_deref(), Some("v1" | "v2")), "one handler or the other, never none: {handler:?}");
        seen_v2 = handler.as_deref() == Some("v2");
    }
    assert!(seen_v2, "the new handler took effect within 15 s");
    for _ in 0..5 {
        assert_eq!(echoed(&mesh.get("/echo?cnf=live").2)["x-handler"], "v2", "and stays");
    }

    // A syntax error is refused: the proxy keeps the handler it has.
    proxy.rewrite(mesh.config(&[("live", "trefoil.set_header(")]));
    wait_until("the refused reload", Duration::from_secs(10), || {
        proxy.metric_sum("trefoil_config_reloads_total", &["result=\"failure\""]) >= 1.0
    });
    assert_eq!(echoed(&mesh.get("/echo?cnf=live").2)["x-handler"], "v2");
    assert!(proxy.stderr().contains("spec.handlers.checked"), "the error names the handler:\n{}", proxy.stderr());
}

#[test]
fn a_proxy_without_a_control_plane_tells_handlers_where_datapath_rules_cannot_go() {
    let mesh = Mesh::start();
    let proxy =
        Proxy::start(mesh.config(&[("dp", "local name, err = trefoil.datapath.drop('10.0.1.2')\ntrefoil.set_header('x-dp', err)")]));
    let (status, _, body) = mesh.get("/echo?cnf=dp");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    let reason = echoed(&body)["x-dp"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("runs from a config file"), "nil, reason: {reason}");
    assert_eq!(proxy.metric_sum("trefoil_chain_datapath_changes_total", &["cnf=\"dp\"", "result=\"unavailable\""]), 1.0);
}
