//! Datapath rules from the operator's side, against a real `trefoil
//! control`: `validate` locating mistakes, the compact form through
//! `trefoil datapath add|list|explain|delete` and `describe`, and a TTL
//! running out. The kernel side is tested where the agent lives.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use trefoil_testkit::control::WAIT;
use trefoil_testkit::{repo_root, run_with_timeout, scratch_dir, trefoil_command, wait_until, Control};

/// `trefoil ARGS --server` the control plane, bounded in time.
fn trefoil(control: &Control, args: &[&str]) -> Output {
    run_with_timeout(trefoil_command().args(args).args(["--server", &control.url(), "--token", control.token()]), Duration::from_secs(30))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const PROXY: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: http-proxy\n  labels: {app: http-proxy}\nspec: {service: http-proxy, command: ./proxy}\n";

#[test]
fn validate_locates_datapath_rule_mistakes() {
    let dir = scratch_dir();
    let file = dir.join("rules.yaml");
    let rule = |name: &str, spec: &str| {
        format!("---\napiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {{name: {name}}}\nspec:\n{spec}")
    };
    let text_of = [
        PROXY.to_string(),
        // Good.
        rule("good", "  match: {destination: [10.0.2.0/24, \"fd00::/64\"], ports: [80, \"8000-8100\"]}\n  action: redirect\n  to: {app: http-proxy}\n"),
        // Line 21: a block with host bits set.
        rule("typo", "  match:\n    destination: [10.0.2.5/24]\n  action: drop\n"),
        // Line 30: a drop that names a target.
        rule("odd", "  match: {destination: [10.0.2.0/24]}\n  action: drop\n  to: {app: http-proxy}\n"),
        // Line 38: labels nothing has.
        rule("nowhere", "  match: {source: [10.0.1.2]}\n  action: copy\n  to: {app: ids}\n"),
    ]
    .concat();
    std::fs::write(&file, &text_of).unwrap();
    let out = run_with_timeout(trefoil_command().args(["validate", "-f"]).arg(&file), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let f = file.display();
    for expected in [
        format!("{f}:21:19: spec.match.destination[0]: \"10.0.2.5/24\" has host bits set: the network is 10.0.2.0/24"),
        format!("{f}:30:3: spec.to: a drop rule sends nothing anywhere"),
        format!("{f}:38:3: spec.to: no Workload, NetworkFunction or CNF has the labels app=ids"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(stderr.matches(&format!("{f}:")).count(), 3, "the good rule passes:\n{stderr}");
    let example = run_with_timeout(
        trefoil_command().args(["validate", "-f"]).arg(repo_root().join("examples/datapath-rules")),
        Duration::from_secs(30),
    );
    assert_eq!(example.status.code(), Some(0), "the documented example is valid: {}", text(&example.stderr));
}

#[test]
fn add_list_explain_describe_delete_through_the_control_plane() {
    let dir = scratch_dir();
    let control = Control::start(&dir);
    let added = trefoil(&control, &["datapath", "add", "10.0.2.0/24 80 : redirect => app=http-proxy", "--name", "to-proxy"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert_eq!(text(&added.stdout), "DatapathRule/to-proxy created: 10.0.2.0/24 80 : redirect => app=http-proxy\n");
    assert!(text(&added.stderr).contains("warning: no Workload, NetworkFunction or CNF has the labels app=http-proxy yet"));
    let block = trefoil(&control, &["datapath", "add", "{10.0.2.5 * : drop}", "--from", "10.0.1.2", "--name", "block-client"]);
    assert!(block.status.success(), "{}", text(&block.stderr));
    let broad = trefoil(&control, &["datapath", "add", "10.0.0.0/16 1-1024 : copy => [app=ids]", "--priority", "-1"]);
    assert!(broad.status.success(), "{}", text(&broad.stderr));
    let broad_name = text(&broad.stdout).split_whitespace().next().unwrap().trim_start_matches("DatapathRule/").to_string();

    // Malformed input is refused before anything is sent, at its column.
    let bad = trefoil(&control, &["datapath", "add", "10.0.2.0/24 80 : forward => app=x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(
        text(&bad.stderr),
        "error: column 18: \"forward\" is not an action: use redirect, copy or drop\n  10.0.2.0/24 80 : forward => app=x\n                   ^\n"
    );
    let twice = trefoil(&control, &["datapath", "add", "10.0.0.0/16 1-1024 : copy => app=ids", "--priority", "-1"]);
    assert_eq!(twice.status.code(), Some(1), "the same rule again is a conflict: {}", text(&twice.stderr));
    assert!(text(&twice.stderr).contains(&format!("DatapathRule/{broad_name} already exists")), "{}", text(&twice.stderr));

    // In the order the datapath tries them.
    let list = trefoil(&control, &["datapath", "list", "-o", "json"]);
    let rows: Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["block-client", "to-proxy", broad_name.as_str()]);
    assert_eq!(rows[0]["rule"], "10.0.2.5 * : drop");
    assert_eq!(rows[0]["from"], serde_json::json!(["10.0.1.2/32"]));
    let table = text(&trefoil(&control, &["datapath", "list"]).stdout);
    assert!(
        table.lines().nth(2).is_some_and(|l| l.starts_with("to-proxy") && l.contains("10.0.2.0/24 80 : redirect => app=http-proxy")),
        "{table}"
    );
    // Where a rule's targets lead is said too, and why not when they lead nowhere.
    assert!(
        table.contains("\n  to-proxy: `to` (app=http-proxy) selects no Workload, NetworkFunction or CNF\n")
            && table.contains(&format!("\n  {broad_name}: `to` (app=ids) selects")),
        "{table}"
    );
    assert_eq!(rows[1]["unresolved"], "`to` (app=http-proxy) selects no Workload, NetworkFunction or CNF");
    assert_eq!(rows[0].get("unresolved"), None, "a drop has no target");

    let explain = trefoil(&control, &["datapath", "explain", "10.0.2.5:80/tcp", "--from", "10.0.1.2"]);
    assert!(explain.status.success(), "{}", text(&explain.stderr));
    let said = text(&explain.stdout);
    assert!(said.starts_with("10.0.2.5:80/tcp from 10.0.1.2: drop by block-client (priority 0)\n"), "{said}");
    assert!(said.contains("  to-proxy (redirect): destination 10.0.2.0/24 is less specific than block-client's 10.0.2.5/32\n"), "{said}");
    assert!(said.contains(&format!("  {broad_name} (copy): priority -1 is below block-client's 0\n")), "{said}");
    let other_source = trefoil(&control, &["datapath", "explain", "10.0.2.5:80", "--from", "10.0.1.3", "-o", "json"]);
    let decision: Value = serde_json::from_slice(&other_source.stdout).unwrap();
    assert_eq!(decision["winner"]["rule"], "to-proxy");
    let unknown_source = text(&trefoil(&control, &["datapath", "explain", "10.0.2.5:80"]).stdout);
    assert!(unknown_source.contains("block-client (drop): wins over to-proxy for traffic from 10.0.1.2/32"), "{unknown_source}");
    let pinned =
        trefoil(&control, &["datapath", "add", "10.0.2.5 80 : drop", "--node", "edge-2", "--priority", "9", "--name", "edge-2-only"]);
    assert!(pinned.status.success(), "{}", text(&pinned.stderr));
    let on = |node: &str| -> Value {
        serde_json::from_slice(&trefoil(&control, &["datapath", "explain", "10.0.2.5:80", "--node", node, "-o", "json"]).stdout).unwrap()
    };
    assert_eq!(on("edge-2")["winner"]["rule"], "edge-2-only");
    assert_eq!(on("edge-1")["winner"]["rule"], "to-proxy", "another node's rule does not count");
    assert!(trefoil(&control, &["datapath", "delete", "edge-2-only"]).status.success());
    let nothing = trefoil(&control, &["datapath", "explain", "192.0.2.1:443"]);
    assert_eq!(text(&nothing.stdout), "192.0.2.1:443/tcp: no rule matches; the traffic goes its own way\n");
    assert_eq!(trefoil(&control, &["datapath", "explain", "10.0.2.5"]).status.code(), Some(2));

    // What the rule selects, once it exists, and where it overlaps.
    control.put_yaml("Workload", "http-proxy", PROXY);
    let described = trefoil(&control, &["describe", "datapathrule", "to-proxy"]);
    let said = text(&described.stdout);
    assert!(said.contains("Rule: 10.0.2.0/24 80 : redirect => app=http-proxy\nSends to:\n  Workload/http-proxy\n"), "{said}");
    assert!(said.contains("  Workload/http-proxy has no trefoil.dev/listener label naming its transparent Listener\n"), "{said}");
    assert!(
        said.contains("loses to block-client (drop): destination 10.0.2.0/24 is less specific than block-client's 10.0.2.5/32"),
        "{said}"
    );
    assert!(said.contains(&format!("wins over {broad_name} (copy): priority -1 is below to-proxy's 0")), "{said}");
    let got = text(&trefoil(&control, &["get", "datapathrules"]).stdout);
    assert_eq!(got.lines().filter(|l| l.starts_with("DatapathRule ")).count(), 3, "{got}");

    let deleted = trefoil(&control, &["datapath", "delete", "block-client"]);
    assert_eq!(text(&deleted.stdout), "DatapathRule/block-client deleted\n");
    assert_eq!(trefoil(&control, &["datapath", "delete", "block-client"]).status.code(), Some(2), "no such rule is bad input");
    let decision: Value = serde_json::from_slice(&trefoil(&control, &["datapath", "explain", "10.0.2.5:80", "-o", "json"]).stdout).unwrap();
    assert_eq!(decision["winner"]["rule"], "to-proxy");
}

#[test]
fn a_rule_with_a_ttl_is_deleted_when_due_with_an_event() {
    let dir = scratch_dir();
    let control = Control::start(&dir);
    let added = trefoil(&control, &["datapath", "add", "10.0.2.5 * : drop", "--from", "10.0.1.2", "--ttl", "2s", "--name", "block"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let stays = trefoil(&control, &["datapath", "add", "10.0.3.5 * : drop", "--name", "stays"]);
    assert!(stays.status.success(), "{}", text(&stays.stderr));
    // The controller sets the deadline, which `list` shows...
    wait_until("the expiry controller to set the deadline", WAIT, || control.call("GET", "/api/v1/datapathrulestatus/block", "").0 == 200);
    // Only the control plane writes deadlines.
    let (status, _) = control.call("DELETE", "/api/v1/datapathrulestatus/block", "");
    assert_eq!(status, 403, "a client cannot lift a TTL by deleting its deadline");
    let rows: Value = serde_json::from_slice(&trefoil(&control, &["datapath", "list", "-o", "json"]).stdout).unwrap();
    let block = rows.as_array().unwrap().iter().find(|r| r["name"] == "block").unwrap();
    assert!(block["expiresAtMs"].as_u64().is_some(), "{rows}");
    // ...and deletes the rule when it is due, saying so.
    wait_until("the rule to expire", WAIT, || control.call("GET", "/api/v1/datapathrules/block", "").0 == 404);
    let (_, events) = control.call("GET", "/api/v1/events", "");
    let expired: Vec<&Value> =
        events["items"].as_array().unwrap().iter().filter(|e| e["spec"]["regarding"] == "DatapathRule/block").collect();
    assert_eq!(expired.len(), 1, "{events}");
    assert_eq!(expired[0]["spec"]["reason"], "Expired");
    assert!(expired[0]["spec"]["message"].as_str().unwrap().contains("TTL of 2s ran out"), "{events}");
    assert_eq!(control.call("GET", "/api/v1/datapathrulestatus/block", "").0, 404, "the deadline goes with the rule");
    assert_eq!(control.call("GET", "/api/v1/datapathrules/stays", "").0, 200, "a rule without a TTL stays");
}

#[test]
fn apply_sends_rules_and_the_api_refuses_bad_ones_where_written() {
    let dir = scratch_dir();
    let control = Control::start(&dir);
    let example = repo_root().join("examples/datapath-rules");
    let applied = trefoil(&control, &["apply", "-f", example.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    let decision: Value =
        serde_json::from_slice(&trefoil(&control, &["datapath", "explain", "10.0.2.7:8050", "--from", "10.0.1.9", "-o", "json"]).stdout)
            .unwrap();
    assert_eq!(decision["winner"]["rule"], "web-through-proxy");
    assert_eq!(decision["shadowed"][0]["rule"], "tap-everything");
    let listed = text(&trefoil(&control, &["datapath", "list"]).stdout);
    assert!(!listed.contains("not resolved"), "the example's targets lead somewhere: {listed}");
    // The API checks what it is sent as `validate` does, pointing into the body.
    let bad = "apiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {name: bad}\nspec:\n  match: {destination: [10.0.2.0/24]}\n  action: copy\n";
    let (status, reply) = control.call("PUT", "/api/v1/datapathrules/bad", bad);
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["errors"][0]["field"], "spec.to");
    assert_eq!(reply["errors"][0]["line"], 4, "{reply}");
}
