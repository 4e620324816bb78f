//! The control plane's REST API, driven over HTTP against a real
//! `trefoil control` process, including a kill -9 and restart.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use trefoil_model::spec::{RouteRule, WeightedBackend};
use trefoil_testkit::control::WAIT;
use trefoil_testkit::resources::{backend, route};
use trefoil_testkit::{
    free_addr, free_port, repo_root, run_with_timeout, scratch_dir, trefoil_command, wait_until, Control, StreamProxy, ToYaml,
};

/// Route `name` for host `web`, all of it to Service `web` with `weight`, as
/// an API body; with `rv`, a write expecting that resourceVersion.
fn route_body(name: &str, weight: u32, rv: Option<&str>) -> String {
    let mut route =
        route(name, &["web"], vec![RouteRule { backends: vec![WeightedBackend { weight, ..backend("web") }], ..RouteRule::default() }]);
    route.metadata.resource_version = rv.map(str::to_string);
    route.to_yaml()
}

/// Text, not a typed Route: no Route can hold this weight, and the error's line (7) is the point.
const ROUTE_WEIGHING_LOTS: &str =
    "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules:\n  - backends: [{service: web, weight: lots}]\n";

#[test]
fn crud_with_optimistic_concurrency_and_located_errors() {
    let dir = scratch_dir();
    let control = Control::start(&dir);
    let (status, created) = control.call("POST", "/api/v1/routes", &route_body("web", 1, None));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(control.call("POST", "/api/v1/routes", &route_body("web", 1, None)).0, 409, "create refuses an existing name");
    // The same spec again keeps the generation; a new spec bumps it.
    let (status, same) = control.call("PUT", "/api/v1/routes/web", &route_body("web", 1, Some(&rv)));
    assert_eq!(status, 200);
    assert_eq!(same["metadata"]["generation"], 1);
    let rv2 = same["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let (status, stale) = control.call("PUT", "/api/v1/routes/web", &route_body("web", 5, Some(&rv)));
    assert_eq!(status, 409, "a stale resourceVersion is refused: {stale}");
    let (status, changed) = control.call("PUT", "/api/v1/routes/web", &route_body("web", 5, Some(&rv2)));
    assert_eq!(status, 200);
    assert_eq!(changed["metadata"]["generation"], 2);
    let (status, invalid) = control.call("PUT", "/api/v1/routes/web", ROUTE_WEIGHING_LOTS);
    assert_eq!(status, 422);
    assert_eq!(invalid["errors"][0]["field"], "spec.rules[0].backends[0].weight");
    assert_eq!(invalid["errors"][0]["line"], 7);
    assert_eq!(control.call("PUT", "/api/v1/routes/other", &route_body("web", 1, None)).0, 400, "path and body names must agree");
    assert_eq!(control.call("GET", "/api/v1/widgets", "").0, 404);
    let (_, list) = control.call("GET", "/api/v1/Route", "");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["spec"]["rules"][0]["backends"][0]["weight"], 5);
    let (status, openapi) = control.call("GET", "/api/v1/openapi.json", "");
    assert_eq!(status, 200);
    assert_eq!(openapi["openapi"], "3.0.3");
    assert_eq!(control.call("DELETE", "/api/v1/routes/web?resourceVersion=1", "").0, 409);
    assert_eq!(control.call("DELETE", "/api/v1/routes/web", "").0, 200);
    assert_eq!(control.call("GET", "/api/v1/routes/web", "").0, 404);
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = scratch_dir();
    let mut control = Control::start(&dir);
    for i in 0..50 {
        assert_eq!(control.call("PUT", &format!("/api/v1/routes/r{i}"), &route_body(&format!("r{i}"), i + 1, None)).0, 201);
    }
    control.kill_9();
    let restarted = Control::start_on(&dir, control.api, control.grpc);
    let (_, list) = restarted.call("GET", "/api/v1/routes", "");
    assert_eq!(list["items"].as_array().unwrap().len(), 50);
    let (_, r49) = restarted.call("GET", "/api/v1/routes/r49", "");
    assert_eq!(r49["spec"]["rules"][0]["backends"][0]["weight"], 50);
    drop(control);
}

/// Where each record of a store file starts (`len: u32 LE | crc: u32 | payload`).
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        starts.push(at);
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    starts
}

#[test]
fn a_store_damaged_in_the_middle_is_refused_then_repaired_by_hand() {
    let dir = scratch_dir();
    let data = dir.join("data");
    let mut control = Control::start(&data);
    for (name, weight) in [("a", 1), ("b", 2), ("c", 3)] {
        control.put_yaml("routes", name, &route_body(name, weight, None));
    }
    control.kill_9();
    let store = data.join("store.db");
    let mut bytes = std::fs::read(&store).unwrap();
    let starts = record_starts(&bytes);
    // Besides the three routes: the admin token and each write's audit entry.
    let payload = |i: usize| -> Value {
        let end = starts.get(i + 1).copied().unwrap_or(bytes.len());
        serde_json::from_slice(&bytes[starts[i] + 8..end]).unwrap()
    };
    let b = (0..starts.len()).find(|i| payload(*i)["kind"] == "Route" && payload(*i)["name"] == "b").expect("Route/b's record");
    let b_revision = payload(b)["revision"].as_u64().unwrap();
    let kept = starts.len() - 1;
    let starts: Vec<usize> = starts[b - 1..].to_vec();
    // One flipped bit inside Route/b's record, whose value is still readable.
    bytes[starts[1] + 60] ^= 0x10;
    std::fs::write(&store, &bytes).unwrap();

    let (api, grpc) = (free_addr(), free_addr());
    let refused = run_with_timeout(
        trefoil_command().args(["control", "--listen", &api.to_string(), "--grpc-listen", &grpc.to_string(), "--data"]).arg(&data),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("damaged at byte {}", starts[1]))
            && stderr.contains(&format!("byte {}", starts[2]))
            && stderr.contains("--repair"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&store).unwrap(), bytes, "a refused store is left as it was");

    let repaired = run_with_timeout(trefoil_command().args(["control", "--repair", "--data"]).arg(&data), Duration::from_secs(20));
    let report = String::from_utf8_lossy(&repaired.stdout);
    assert_eq!(repaired.status.code(), Some(0), "{report}{}", String::from_utf8_lossy(&repaired.stderr));
    assert!(
        report.contains(&format!("kept {kept} intact records"))
            && report.contains(&format!("bytes {}..{}", starts[1], starts[2]))
            && report.contains(&format!("Route/b (put, revision {b_revision})")),
        "{report}"
    );
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("store.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged original is set aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), bytes);

    let restarted = Control::start_on(&data, api, grpc);
    let (_, list) = restarted.call("GET", "/api/v1/routes", "");
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().filter_map(|r| r["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["a", "c"], "the records before and after the damage are served");
}

#[test]
fn listening_beyond_loopback_is_warned_about() {
    let dir = scratch_dir();
    // A documentation address no interface has: the warning comes first, then
    // the bind fails, so nothing listens beyond loopback during the test.
    let out = run_with_timeout(
        trefoil_command()
            .args(["control", "--listen", "192.0.2.1:7070", "--grpc-listen", &free_addr().to_string(), "--data"])
            .arg(dir.join("data")),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("WARNING: the REST API's span intake on 192.0.2.1:7070 listen beyond loopback WITHOUT AUTHENTICATION"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot listen on 192.0.2.1:7070"), "{stderr}");
    // On loopback, not a word.
    let control = Control::start(&dir.join("quiet"));
    wait_until("the control plane's first log line", WAIT, || control.log().contains("control plane listening"));
    assert!(!control.log().contains("WITHOUT AUTHENTICATION"), "{}", control.log());
}

#[test]
fn a_second_proxy_under_a_taken_name_is_refused_and_backs_off() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("data"));
    let holds = |admin: SocketAddr| control.status("edge").is_some_and(|s| s.connected && s.admin_address == Some(admin.to_string()));
    let first = StreamProxy::start(&dir, control.grpc, "edge", 1);
    wait_until("the first proxy to connect", WAIT, || holds(first.admin));

    let second = StreamProxy::start(&dir, control.grpc, "edge", 1);
    wait_until("the second proxy to be refused twice", WAIT, || second.log().matches("the control plane refuses this proxy").count() >= 2);
    let log = second.log();
    assert!(
        log.contains("a proxy named \"edge\" is already connected from 127.0.0.1:") && log.contains(&format!("admin {}", first.admin)),
        "{log}"
    );
    // Backing off, not hammering: the waits grow.
    assert!(log.contains("retry_in=1s") && log.contains("retry_in=2s"), "{log}");
    assert!(!log.contains("connected to the control plane"), "{log}");
    assert_eq!(first.log().matches("connected to the control plane").count(), 1, "the first proxy kept its stream:\n{}", first.log());
    assert!(holds(first.admin));
    assert!(control.log().contains("refusing a second config stream"), "{}", control.log());

    // Once the first is gone, the second gets the name on its next try.
    drop(first);
    wait_until("the second proxy to take the name over", Duration::from_secs(30), || holds(second.admin));
}

#[test]
fn watch_streams_current_objects_then_changes() {
    let dir = scratch_dir();
    let control = Control::start(&dir);
    control.call("PUT", "/api/v1/routes/a", &route_body("a", 1, None));
    let mut stream = TcpStream::connect(control.api).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET /api/v1/routes?watch=true HTTP/1.1\r\nHost: control\r\nAuthorization: Bearer {}\r\n\r\n", control.token());
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut events = Vec::new();
    let mut line = String::new();
    let mut applied = false;
    while events.len() < 3 {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(line.trim()) {
            events.push((
                event["type"].as_str().unwrap_or("").to_string(),
                event["object"]["metadata"]["name"].as_str().unwrap_or("").to_string(),
            ));
            if !applied {
                applied = true;
                control.call("PUT", "/api/v1/routes/b", &route_body("b", 1, None));
                control.call("DELETE", "/api/v1/routes/a", "");
            }
        }
    }
    let expected = [("ADDED", "a"), ("MODIFIED", "b"), ("DELETED", "a")].map(|(t, n)| (t.to_string(), n.to_string()));
    assert_eq!(events, expected);
}

#[test]
fn malformed_requests_get_the_documented_json_errors() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("data"));
    control.put_yaml("routes", "web", &route_body("web", 1, None));
    for (method, path, body, status) in [
        ("DELETE", "/api/v1/routes/web?resourceVersion=null", "", 400),
        ("GET", "/api/v1/traces?limit=null", "", 400),
        ("GET", "/api/v1/traces?limit=-1", "", 400),
        ("POST", "/v1/traces", r#"{"resourceSpans": [[null]]}"#, 400),
        ("POST", "/v1/traces", r#"{"resourceSpans": [{"scopeSpans": [{"spans": [null]}]}]}"#, 400),
        ("PATCH", "/api/v1/routes/web", "", 405),
        ("GET", "/api/v2/nothing", "", 404),
    ] {
        let (got, reply) = control.call(method, path, body);
        assert_eq!(got, status, "{method} {path}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()) && reply["errors"].is_array(),
            "{method} {path}: not the Error schema: {reply}"
        );
    }
    // A limit past what any integer type holds is just "all of them".
    assert_eq!(control.call("GET", "/api/v1/traces?limit=99999999999999999999999999", "").0, 200);
    // The document's name rule is the server's: an empty name is outside both.
    let (_, doc) = control.call("GET", "/api/v1/openapi.json", "");
    let name = &doc["components"]["schemas"]["Resource"]["properties"]["metadata"]["properties"]["name"];
    assert_eq!((name["minLength"].as_u64(), name["maxLength"].as_u64()), (Some(1), Some(253)), "{name}");
    assert_eq!(control.call("POST", "/api/v1/routes", &route_body("", 1, None)).0, 422);
}

/// A YAML body of 10^9 aliased strings in 1 KiB ("billion laughs").
fn laughs() -> String {
    let mut text = String::from("apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: lol}\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        text.push_str(&format!("x{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", ")));
    }
    text.push_str("spec: {hosts: *a8}\n");
    text
}

#[test]
fn bodies_that_would_take_the_control_plane_down_are_refused() {
    let dir = scratch_dir();
    // Bounded, so that a regression fails this test instead of the machine:
    // the body below once took a control plane to 23 GiB.
    let mut control = Control::start_capped(&dir.join("data"), 2 << 30);
    let call = |method: &str, path: &str, body: &[u8]| control.try_call(method, path, body).unwrap_or((0, Value::Null));
    // The model's loader bounds alias expansion: a located 422.
    let (status, reply) = call("POST", "/api/v1/routes", laughs().as_bytes());
    assert_eq!(status, 422, "{reply}");
    assert!(reply["errors"][0]["message"].as_str().is_some_and(|e| e.contains("expands to more than")), "{reply}");
    let (status, reply) = call("POST", "/api/v1/routes", &vec![b'#'; 3 << 20]);
    assert_eq!(status, 413, "{reply}");
    // Nesting deeper than the parsers go is a located error, not a crash.
    let deep = format!(
        "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {{name: deep}}\nspec: {{x: {}{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(call("POST", "/api/v1/routes", deep.as_bytes()).0, 422);
    let deep_otlp = format!("{{\"resourceSpans\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(call("POST", "/v1/traces", deep_otlp.as_bytes()).0, 400);
    assert_eq!(call("GET", "/api/v1/routes", b"").0, 200, "still serving");
    assert!(control.running(), "the control plane died");
}

/// Schema-valid resource writes the server may still refuse: the document
/// cannot say that a body's kind and name must match the path's (400), nor
/// the rules `trefoil-model` checks inside each kind's spec (422). Every
/// other operation keeps the check's defaults.
const SCHEMATHESIS_CONFIG: &str = r#"
[[operations]]
include-path = "/api/v1/{kind}"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "403", "404", "409", "422"]

[[operations]]
include-path = "/api/v1/{kind}/{name}"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "403", "404", "409", "422"]
"#;

#[test]
fn schemathesis_finds_the_server_and_its_document_agree() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("data"));
    control.call("PUT", "/api/v1/routes/web", &route_body("web", 1, None));
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_CONFIG).unwrap();
    // Every check, including the stateful ones that follow the document's
    // links; the watch streams never end by design and are left out, and so
    // is revoking a token (it would revoke the one the run uses), and so are
    // login codes (a generated code is never valid, and minting is bounded
    // at 16 outstanding: control_auth tests both ends).
    let out = run_with_timeout(
        Command::new("st")
            .arg("--config-file")
            .arg(&config)
            .args([
                "--no-color",
                "run",
                &format!("http://{}/api/v1/openapi.json", control.api),
                "--checks",
                "all",
                "--max-examples",
                "50",
                "--seed",
                "20261127",
                "--request-timeout",
                "10",
                "--exclude-path-regex",
                "watch|/api/v1/tokens/|/api/v1/login",
                "--header",
                &format!("Authorization: Bearer {}", control.token()),
            ])
            // Its cache goes to the scratch directory, not the source tree.
            .current_dir(&dir),
        Duration::from_secs(300),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn apply_get_delete_from_the_command_line() {
    let dir = scratch_dir();
    let control = Control::start(&dir);
    let server = format!("http://{}", control.api);
    let trefoil = |args: &[&str]| trefoil_command().args(args).args(["--server", &server, "--token", control.token()]).output().unwrap();
    let example = repo_root().join("examples/proxy/quickstart.yaml");
    let example = example.to_str().unwrap();
    let first = trefoil(&["apply", "-f", example]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        "Proxy/edge created\nListener/public created\nService/web created\nRoute/web created\n"
    );
    let again = trefoil(&["apply", "-f", example, "-o", "json"]);
    let results: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(results.as_array().unwrap().iter().all(|r| r["result"] == "configured"), "{results}");
    let get = trefoil(&["get", "routes", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    let table = String::from_utf8_lossy(&trefoil(&["get", "route", "web"]).stdout).to_string();
    assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("Route") && l.contains("web")), "{table}");
    assert!(trefoil(&["delete", "route", "web"]).status.success());
    assert_eq!(trefoil(&["get", "route", "web"]).status.code(), Some(2), "a missing resource is bad input");
    // Local validation first: the error names the user's file and line, and nothing is sent.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: broken}\nspec:\n  hosts: [x]\n  rules:\n  - backends: [{service: web, weight: -1}]\n",
    )
    .unwrap();
    let refused = trefoil(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("{}:7:", bad.display())),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(trefoil(&["get", "route", "broken"]).status.code(), Some(2));
    // A control plane that is not there: a runtime failure with a hint.
    let down = trefoil_command().args(["get", "routes", "--server", &format!("http://127.0.0.1:{}", free_port())]).output().unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the control plane"));
}
