//! Who may call the control plane's REST API (decision 0016): bearer tokens
//! with roles, against a real `trefoil control`, through raw HTTP and the
//! `trefoil token` and `trefoil get events --audit` commands.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use trefoil_model::spec::{RouteRule, WeightedBackend};
use trefoil_testkit::control::WAIT;
use trefoil_testkit::resources::{backend, route};
use trefoil_testkit::{free_addr, run_with_timeout, scratch_dir, trefoil_command, wait_until, Control, ToYaml};

/// Route `web` sending all of host `web` to Service `web` with `weight`.
fn web_route(weight: u32) -> String {
    route("web", &["web"], vec![RouteRule { backends: vec![WeightedBackend { weight, ..backend("web") }], ..RouteRule::default() }])
        .to_yaml()
}

fn run(cmd: &mut std::process::Command) -> Output {
    run_with_timeout(cmd, Duration::from_secs(30))
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `trefoil token create --role ROLE [--ttl TTL] -o json` as admin: (id, secret).
fn create_token(control: &Control, role: &str, ttl: Option<&str>) -> (String, String) {
    let mut args = vec!["token", "create", "--role", role, "-o", "json"];
    args.extend(ttl.iter().flat_map(|t| ["--ttl", *t]));
    let created = json(&run(&mut control.command(&args)));
    (created["id"].as_str().unwrap().to_string(), created["token"].as_str().unwrap().to_string())
}

#[test]
fn the_api_answers_only_tokens_and_each_role_does_what_it_may() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("data"));
    let token_file = dir.join("data").join("admin.token");
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600, "the admin token is its owner's only");
    assert!(control.log().contains("admin.token"), "the log says where the admin token is: {}", control.log());
    let route = web_route(1);

    // Anonymous: 401 for reads and writes, with the API's error body; the contract stays open.
    for (method, path, body) in
        [("GET", "/api/v1/routes", ""), ("PUT", "/api/v1/routes/web", route.as_str()), ("GET", "/api/v1/status/proxies", "")]
    {
        let (status, reply) = control.call_with(None, method, path, body.as_bytes()).unwrap();
        assert_eq!(status, 401, "{method} {path}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains("needs a bearer token"), "{reply}");
    }
    assert_eq!(control.call_with(None, "POST", "/api/v1/routes", route.as_bytes()).unwrap().0, 401);
    assert_eq!(control.call_with(None, "GET", "/api/v1/openapi.json", b"").unwrap().0, 200);
    let (status, reply) = control.call_with(Some("trf_0123456789abcdef_nope"), "GET", "/api/v1/routes", b"").unwrap();
    assert_eq!((status, reply["error"].as_str().unwrap()), (401, "token 0123456789abcdef is unknown or was revoked"));

    let (viewer_id, viewer) = create_token(&control, "viewer", None);
    // The portal asks who it is to hide edit buttons from a viewer.
    let (status, me) = control.call_with(Some(&viewer), "GET", "/api/v1/whoami", b"").unwrap();
    assert_eq!((status, me["tokenId"].as_str(), me["role"].as_str()), (200, Some(viewer_id.as_str()), Some("viewer")), "{me}");
    assert_eq!(control.call_with(None, "GET", "/api/v1/whoami", b"").unwrap().0, 401);
    let (editor_id, editor) = create_token(&control, "editor", Some("24h"));

    // A viewer reads, and may not write: 403 naming what it lacks.
    assert_eq!(control.call_with(Some(&viewer), "GET", "/api/v1/routes", b"").unwrap().0, 200);
    let (status, reply) = control.call_with(Some(&viewer), "PUT", "/api/v1/routes/web", route.as_bytes()).unwrap();
    assert_eq!(status, 403, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains(&format!("token {viewer_id} has role viewer; PUT /api/v1/routes/web needs editor")),
        "{reply}"
    );
    let file = dir.join("route.yaml");
    std::fs::write(&file, &route).unwrap();
    let refused = run(trefoil_command().args(["apply", "-f", file.to_str().unwrap(), "--server", &control.url(), "--token", &viewer]));
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stdout).contains("403"), "{refused:?}");

    // An editor writes, and may not touch tokens.
    let applied = run(trefoil_command()
        .args(["apply", "-f", file.to_str().unwrap(), "--server", &control.url(), "-o", "json"])
        .env("TREFOIL_TOKEN", &editor));
    let after = json(&applied)[0]["resourceVersion"].as_str().unwrap().to_string();
    let (status, changed) = control.call_with(Some(&editor), "PUT", "/api/v1/routes/web", web_route(2).as_bytes()).unwrap();
    assert_eq!(status, 200, "{changed}");
    let changed_rv = changed["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(control.call_with(Some(&editor), "GET", "/api/v1/tokens", b"").unwrap().0, 403);
    assert_eq!(control.call_with(Some(&editor), "DELETE", &format!("/api/v1/tokens/{viewer_id}"), b"").unwrap().0, 403);

    // Expired: refused once its second is over.
    let (status, short) = control.call("POST", "/api/v1/tokens", r#"{"role": "editor", "ttlSeconds": 1}"#);
    assert_eq!(status, 201, "{short}");
    let short = short["token"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    wait_until("the one-second token to expire", WAIT, || {
        let (status, reply) = control.call_with(Some(&short), "GET", "/api/v1/routes", b"").unwrap();
        last = reply;
        status == 401
    });
    assert!(last["error"].as_str().unwrap().contains("expired"), "{last}");

    // Revoked: refused at once.
    let revoked = run(&mut control.command(&["token", "revoke", &viewer_id]));
    assert!(revoked.status.success(), "{revoked:?}");
    let (status, reply) = control.call_with(Some(&viewer), "GET", "/api/v1/routes", b"").unwrap();
    assert_eq!(status, 401, "{reply}");

    // Lists show ids and roles, never a secret.
    let admin = control.token().to_string();
    for args in [&["token", "list"][..], &["token", "list", "-o", "json"]] {
        let out = run(&mut control.command(args));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success() && text.contains(&editor_id) && text.contains("editor"), "{text}");
        for secret in [&admin, &editor, &viewer] {
            assert!(!text.contains(secret.rsplit('_').next().unwrap()), "a secret in `trefoil {}`:\n{text}", args.join(" "));
        }
        assert!(!text.contains(&viewer_id), "a revoked token is not listed: {text}");
    }

    // The audit log: who wrote what, from which version to which.
    let audit = json(&run(&mut control.command(&["get", "events", "--audit", "-o", "json"])));
    let entries = audit.as_array().unwrap();
    let writes: Vec<&Value> = entries.iter().filter(|e| e["resource"] == "Route/web").collect();
    assert_eq!(writes.len(), 2, "{audit:#}");
    assert_eq!(
        (&writes[0]["tokenId"], &writes[0]["role"], &writes[0]["verb"]),
        (&Value::from(editor_id.clone()), &Value::from("editor"), &Value::from("apply"))
    );
    assert!(writes[0].get("before").is_none() && writes[0]["after"] == after.as_str(), "{audit:#}");
    assert!(writes[1]["before"] == after.as_str() && writes[1]["after"] == changed_rv.as_str(), "{audit:#}");
    assert!(entries.iter().any(|e| e["verb"] == "token-revoke" && e["resource"] == format!("Token/{viewer_id}")), "{audit:#}");
    assert!(entries.iter().any(|e| e["verb"] == "token-create" && e["resource"] == format!("Token/{editor_id}")), "{audit:#}");
    let table = run(&mut control.command(&["get", "events", "--audit"]));
    assert!(String::from_utf8_lossy(&table.stdout).contains("Route/web"), "{table:?}");
    let denied = run(trefoil_command().args(["get", "events", "--audit", "--server", &control.url(), "--token", &editor]));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"), "the audit log is for admins: {denied:?}");
}

#[test]
fn anonymous_access_is_refused_beyond_loopback() {
    let dir = scratch_dir();
    let out = run(trefoil_command()
        .args(["control", "--insecure-local", "--listen", "0.0.0.0:0", "--grpc-listen", &free_addr().to_string(), "--data"])
        .arg(dir.join("data")));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0.0.0.0:0 is not a loopback address"), "{out:?}");
}

#[test]
fn a_login_code_opens_one_session_of_its_role_and_is_refused_after() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("data"));
    let server = format!("http://{}", control.api);
    let (_, viewer) = create_token(&control, "viewer", None);
    // Only an admin mints codes.
    assert_eq!(control.call_with(Some(&viewer), "POST", "/api/v1/login-codes", b"").unwrap().0, 403);

    // The CLI prints a link with the code in its fragment.
    let out = run(trefoil_command().args([
        "portal",
        "login-link",
        "--role",
        "editor",
        "--server",
        &server,
        "--token",
        control.token(),
        "-o",
        "json",
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let minted = json(&out);
    let code = minted["code"].as_str().unwrap().to_string();
    assert_eq!(minted["url"].as_str().unwrap(), format!("{server}/#login={code}"), "{minted}");
    assert_eq!(minted["role"], "editor", "{minted}");

    // Exchanged without any token: a session token of the code's role, with an expiry.
    let body = serde_json::json!({ "code": code }).to_string();
    let (status, session) = control.call_with(None, "POST", "/api/v1/login", body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["role"], "editor", "{session}");
    assert!(session["expiresMs"].as_u64().is_some(), "a session token expires: {session}");
    let token = session["token"].as_str().unwrap();
    let (status, me) = control.call_with(Some(token), "GET", "/api/v1/whoami", b"").unwrap();
    assert_eq!((status, me["role"].as_str()), (200, Some("editor")), "{me}");

    // Once only, and said so.
    let (status, again) = control.call_with(None, "POST", "/api/v1/login", body.as_bytes()).unwrap();
    assert_eq!(status, 401, "{again}");
    assert!(again["error"].as_str().unwrap().contains("already used"), "{again}");
    let (status, unknown) = control.call_with(None, "POST", "/api/v1/login", br#"{"code": "00ff"}"#).unwrap();
    assert_eq!(status, 401, "{unknown}");
    assert!(unknown["error"].as_str().unwrap().contains("not valid"), "{unknown}");

    // The audit log names the code's minting and the login it gave.
    let (_, audit) = control.call_with(Some(control.token()), "GET", "/api/v1/audit", b"").unwrap();
    let verbs: Vec<(&str, &str)> =
        audit["items"].as_array().unwrap().iter().map(|e| (e["verb"].as_str().unwrap(), e["resource"].as_str().unwrap())).collect();
    let id = minted["id"].as_str().unwrap();
    let code_resource = format!("LoginCode/{id}");
    assert!(verbs.contains(&("login-code-create", code_resource.as_str())), "{verbs:?}");
    assert!(verbs.contains(&("login", code_resource.as_str())), "{verbs:?}");

    // Outstanding codes are bounded: the 17th unused one is refused.
    for _ in 0..16 {
        assert_eq!(control.call_with(Some(control.token()), "POST", "/api/v1/login-codes", b"").unwrap().0, 201);
    }
    let out = run(trefoil_command().args(["portal", "login-link", "--server", &server, "--token", control.token()]));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outstanding"), "{}", String::from_utf8_lossy(&out.stderr));
}
