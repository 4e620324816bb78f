//! The sample network functions (`trefoil nf ...`) as real processes in a
//! real proxy's CNF chain, in front of a real upstream; the antivirus
//! function talks to a real ClamAV daemon the test starts with its own
//! signature database (the EICAR test signature): on the request phase it
//! scans uploads, on the response phase downloads (served by a real nginx).

use std::path::Path;
use std::time::Duration;

use trefoil_model::spec::{AppProtocol, ChainStep, FunctionApi, NetworkFunctionSpec, Phase, SendBody, ServiceSpec, WorkloadSpec};
use trefoil_model::Spec;
use trefoil_testkit::resources::{
    chained_route, cnf, function, gateway, http_health, listener, network_function, resource, secs, service, service_speaking, step,
    strings, workload,
};
use trefoil_testkit::{eicar, free_addr, http_request, request, scratch_dir, wait_until, Clamd, Nf, Nginx, Proxy, TestServer, Up};

/// The antivirus function's spec for `service`: bodies up to 1 MiB, 5 s to scan them.
fn scanner(service: &str) -> NetworkFunctionSpec {
    NetworkFunctionSpec { timeout: secs(5), send_body: Some(SendBody { max_bytes: 1_048_576 }), ..function(service) }
}

/// A NetworkFunction's spec: `service`, publishing `events`.
fn publishing(service: &str, events: &[&str]) -> NetworkFunctionSpec {
    NetworkFunctionSpec { events: strings(events), ..function(service) }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn antivirus_with_real_clamd_passes_clean_uploads_and_blocks_infected_ones() {
    let clamd = Clamd::start();
    let up = TestServer::named("up");
    let dir = scratch_dir();
    // First in the chain, a policy that lets everything through but reports its check,
    // so the trace shows the functions in chain order.
    let policy = Nf::start(&["policy", "--config", &write(&dir, "policy.yaml", "default: allow\n")]);
    let av = Nf::start(&["antivirus", "--clamd", &clamd.addr.to_string(), "--deny-status", "451", "--clamd-timeout", "5s"]);
    let nobody = free_addr(); // free a moment ago: a clamd that is down
    let av_down = Nf::start(&["antivirus", "--clamd", &nobody.to_string()]);
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("policy", &[(policy.addr, "v1")]),
        service("av", &[(av.addr, "v1")]),
        service("av-down", &[(av_down.addr, "v1")]),
        network_function("policy", publishing("policy", &["policy_check"])),
        network_function("antivirus", NetworkFunctionSpec { events: strings(&["scan_clean", "virus_found"]), ..scanner("av") }),
        network_function("antivirus-down", scanner("av-down")),
        cnf("scan", vec![step("policy"), step("antivirus")]),
        cnf("scan-down", vec![step("antivirus-down")]),
        chained_route(&[("/down", "scan-down"), ("/", "scan")]),
    ];
    let proxy = Proxy::start(config);

    let clean = "just a report\n".repeat(10_000); // over one INSTREAM chunk
    let (status, _, body) = request(public, "POST", "/upload/clean", &[("content-type", "text/plain")], clean.as_bytes());
    assert_eq!(status, 200, "{body}\n{}\n{}", proxy.stderr(), av.stderr());
    assert_eq!(up.requests_for("/upload/clean"), 1);

    let infected = format!("a document with a surprise: {} inside\n", eicar());
    let (status, headers, body) = request(public, "POST", "/upload/infected", &[("content-type", "text/plain")], infected.as_bytes());
    assert_eq!(status, 451, "the configured status: {body}\n{}", av.stderr());
    assert!(body.contains("Trefoil.Test.EICAR"), "the refusal names what clamd found: {body}");
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_denied"));
    assert_eq!(up.requests_for("/upload/infected"), 0, "an infected upload never reaches the upstream");

    // The trace: the access log line of the refused request, and the chain's
    // events under the same trace id, in chain order.
    let trace_id = headers.get("x-trefoil-trace-id").cloned().expect("the refusal carries the trace id");
    wait_until("the access-log line of the refused upload", Duration::from_secs(10), || {
        proxy
            .access_log()
            .lines()
            .any(|l| l.contains(&format!(r#""trace_id":"{trace_id}""#)) && l.contains(r#""cnf":"scan""#) && l.contains(r#""status":451"#))
    });
    assert_eq!(chain_events(&proxy, &trace_id), ["policy_check", "virus_found"], "{}", proxy.stderr());

    // clamd down: no verdict, so the failure policy (closed by default) answers.
    let (status, headers, _) = request(public, "POST", "/down/upload", &[], b"anything");
    assert_eq!(status, 503);
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_unavailable"));
    assert_eq!(up.requests_for("/down/upload"), 0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"antivirus\"", "result=\"deny\""]), 1.0);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"antivirus\"", "result=\"allow\""]), 1.0);
}

/// The chain's events logged under `trace_id`, in the order they happened.
fn chain_events(proxy: &Proxy, trace_id: &str) -> Vec<&'static str> {
    proxy
        .stderr()
        .lines()
        .filter(|l| l.contains(trace_id) && l.contains("network function event"))
        .filter_map(|l| ["policy_check", "virus_found", "scan_clean"].into_iter().find(|e| l.contains(e)))
        .collect()
}

#[test]
fn antivirus_on_the_response_phase_passes_clean_downloads_and_blocks_infected_ones() {
    let clamd = Clamd::start();
    let clean = "quarterly figures\n".repeat(20_000); // several INSTREAM chunks
    let infected = format!("an installer with a surprise: {} inside\n", eicar());
    let files = Nginx::static_files(&[("report.txt", clean.as_bytes()), ("setup.exe", infected.as_bytes())]);
    let dir = scratch_dir();
    let policy = Nf::start(&["policy", "--config", &write(&dir, "policy.yaml", "default: allow\n")]);
    let av = Nf::start(&["antivirus", "--clamd", &clamd.addr.to_string(), "--deny-status", "451", "--clamd-timeout", "5s"]);
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(files.addr, "v1")]),
        service("policy", &[(policy.addr, "v1")]),
        service("av", &[(av.addr, "v1")]),
        network_function("policy", publishing("policy", &["policy_check"])),
        network_function("antivirus", NetworkFunctionSpec { events: strings(&["scan_clean", "virus_found"]), ..scanner("av") }),
        // The policy judges the request; the antivirus what comes back.
        cnf("downloads", vec![step("policy"), ChainStep { phase: Phase::Response, ..step("antivirus") }]),
        chained_route(&[("/", "downloads")]),
    ];
    let proxy = Proxy::start(config);

    let (status, headers, body) = request(public, "GET", "/report.txt", &[], b"");
    assert_eq!(status, 200, "{}\n{}", proxy.stderr(), av.stderr());
    assert!(body == clean, "the clean download arrives whole ({} of {} bytes)", body.len(), clean.len());
    let trace_id = headers.get("x-trefoil-trace-id").cloned().expect("a trace id");
    wait_until("the clean download's events", Duration::from_secs(10), || {
        chain_events(&proxy, &trace_id) == ["policy_check", "scan_clean"]
    });

    let (status, headers, body) = request(public, "GET", "/setup.exe", &[], b"");
    assert_eq!(status, 451, "the configured status: {body}\n{}", av.stderr());
    assert!(body.contains("Trefoil.Test.EICAR") && !body.contains("surprise"), "the refusal, not the file: {body}");
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_denied"));
    let trace_id = headers.get("x-trefoil-trace-id").cloned().expect("a trace id");
    wait_until("the infected download's access-log line", Duration::from_secs(10), || {
        proxy.access_log().lines().any(|l| {
            l.contains(&format!(r#""trace_id":"{trace_id}""#)) && l.contains(r#""cnf":"downloads""#) && l.contains(r#""status":451"#)
        })
    });
    assert_eq!(chain_events(&proxy, &trace_id), ["policy_check", "virus_found"], "the chain in order: {}", proxy.stderr());
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"antivirus\"", "result=\"deny\""]), 1.0);
}

#[test]
fn policy_inspect_and_ratelimit_functions_in_a_proxy_chain() {
    let up = TestServer::named("up");
    let dir = scratch_dir();
    let policy = Nf::start(&[
        "policy",
        "--config",
        &write(
            &dir,
            "policy.yaml",
            "default: allow\ndenyStatus: 401\ndenyReason: \"admins only\\n\"\nrules:\n- {name: admins, action: allow, sources: [127.0.0.0/8], paths: [/admin], headers: [{name: x-role, value: admin}]}\n- {name: no-admin, action: deny, paths: [/admin]}\n- {name: read-only, action: deny, methods: [DELETE]}\n",
        ),
    ]);
    let inspect = Nf::start(&[
        "inspect",
        "--signatures",
        &write(&dir, "signatures.txt", "# test\nsql-union: UNION SELECT\nscanner: user-agent: sqlmap\n"),
    ]);
    let ratelimit = Nf::start(&["ratelimit", "--rate", "0.01", "--burst", "2", "--key-header", "x-api-key"]);
    let public = free_addr();
    let config = vec![
        listener("public", public),
        service("web", &[(up.addr(), "v1")]),
        service("policy", &[(policy.addr, "v1")]),
        service("inspect", &[(inspect.addr, "v1")]),
        service("ratelimit", &[(ratelimit.addr, "v1")]),
        // The same policy process, called over ext_authz (gRPC) instead of JSON.
        service_speaking("policy-grpc", AppProtocol::Grpc, &[(policy.addr, "v1")]),
        network_function("policy", function("policy")),
        network_function("policy-authz", NetworkFunctionSpec { api: FunctionApi::ExtAuthz, timeout: secs(2), ..function("policy-grpc") }),
        network_function("inspect", NetworkFunctionSpec { send_body: Some(SendBody { max_bytes: 65536 }), ..function("inspect") }),
        network_function("ratelimit", function("ratelimit")),
        cnf("guard", vec![step("policy"), step("inspect")]),
        cnf("limited", vec![step("ratelimit")]),
        cnf("authz", vec![step("policy-authz")]),
        chained_route(&[("/limited", "limited"), ("/grpc", "authz"), ("/", "guard")]),
    ];
    let proxy = Proxy::start(config);

    // policy: first match wins, with the configured status and reason.
    let (status, headers, body) = request(public, "GET", "/admin/users", &[], b"");
    assert_eq!((status, body.as_str()), (401, "admins only\n"), "{}", policy.stderr());
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_denied"));
    assert_eq!(request(public, "GET", "/admin/users", &[("x-role", "admin")], b"").0, 200);
    assert_eq!(request(public, "DELETE", "/things/1", &[], b"").0, 401);
    assert_eq!(request(public, "GET", "/things/1", &[], b"").0, 200);

    // The same rules over ext_authz: the DELETE is refused with the same status and reason.
    let (status, headers, body) = request(public, "DELETE", "/grpc/things/1", &[], b"");
    assert_eq!((status, body.as_str()), (401, "admins only\n"), "{}", proxy.stderr());
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_denied"));
    assert_eq!(request(public, "GET", "/grpc/things/1", &[], b"").0, 200);
    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["function=\"policy-authz\"", "result=\"allow\""]), 1.0);

    // inspect: signatures in the body or in a header deny, with the signature's name.
    let (status, _, body) = request(public, "POST", "/search", &[], b"q=1 UNION SELECT password FROM users");
    assert_eq!(status, 403);
    assert!(body.contains("sql-union"), "{body}");
    let (status, _, body) = request(public, "GET", "/search", &[("user-agent", "sqlmap/1.7")], b"");
    assert_eq!(status, 403);
    assert!(body.contains("scanner"), "{body}");
    assert_eq!(request(public, "POST", "/search", &[], b"q=weather").0, 200);
    assert_eq!(
        up.requests_for("/admin/users") + up.requests_for("/things/1") + up.requests_for("/search"),
        3,
        "only allowed requests arrive"
    );

    // ratelimit: a burst of 2 per key, then 429 with retry-after; other keys unaffected.
    let key_a = [("x-api-key", "a")];
    assert_eq!(request(public, "GET", "/limited", &key_a, b"").0, 200);
    assert_eq!(request(public, "GET", "/limited", &key_a, b"").0, 200);
    let (status, headers, body) = request(public, "GET", "/limited", &key_a, b"");
    assert_eq!((status, body.as_str()), (429, "too many requests\n"));
    let retry: u64 = headers.get("retry-after").and_then(|v| v.parse().ok()).expect("retry-after in seconds");
    assert!((1..=100).contains(&retry), "one token at 0.01/s is at most 100 s away: {retry}");
    assert_eq!(request(public, "GET", "/limited", &[("x-api-key", "b")], b"").0, 200);
    assert_eq!(up.requests_for("/limited"), 3);

    assert_eq!(proxy.metric_sum("trefoil_chain_calls_total", &["result=\"deny\""]), 6.0);
    wait_until("the events of the chain's functions in the proxy's log", Duration::from_secs(10), || {
        let log = proxy.stderr();
        ["policy_check", "inspect_done", "rate_limited"].iter().all(|e| log.contains(e))
    });
}

#[test]
fn the_local_runtime_runs_a_function_as_a_workload_in_a_chain() {
    let dir = scratch_dir();
    // Beside the resource files, not among them: `up` reads every *.yaml of its directory.
    std::fs::create_dir_all(dir.join("files/functions")).unwrap();
    std::fs::write(dir.join("files/functions/policy.yaml"), "rules: [{name: no-admin, action: deny, paths: [/admin]}]\n").unwrap();
    let gateway_addr = free_addr();
    let app = |service: &str, args: &[&str]| {
        resource(service, Spec::Workload(WorkloadSpec { health: http_health("/healthz"), ..workload(service, "trefoil", args) }))
    };
    let files = [
        gateway("gateway", "gw", gateway_addr),
        vec![
            app("web", &["demo-app"]),
            app("policy", &["nf", "policy", "--config", "functions/policy.yaml"]),
            resource("policy", Spec::Service(ServiceSpec::default())),
            network_function("policy", publishing("policy", &["policy_check"])),
            cnf("edge", vec![step("policy")]),
            chained_route(&[("/", "edge")]),
        ],
    ]
    .concat();
    let mut up = Up::start_in(dir, files);
    up.wait_ready(&["web-0", "policy-0"]);
    up.wait("the gateway serving through the chain", |_| {
        matches!(http_request(gateway_addr, "GET", "web.local", "/", &[], b""), Ok((200, _, _)))
    });
    let (status, headers, body) = request(gateway_addr, "GET", "/admin/x", &[], b"");
    assert_eq!((status, body.as_str()), (403, "denied by policy\n"), "{}", up.stderr());
    assert_eq!(headers.get("x-trefoil-flag").map(String::as_str), Some("chain_denied"));
}
