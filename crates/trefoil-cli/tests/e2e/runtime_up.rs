//! Black-box tests of `trefoil up` and `trefoil logs`: a real supervisor
//! running the control plane, proxies and `trefoil-testserver` apps.
//!
//! Needs `trefoil-testserver` built (`cargo build -p trefoil-testkit --bins`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use trefoil_testkit::{
    alive, free_port, http_get, http_request, log_file, pids, run_with_timeout, scratch_dir, send_signal, testserver_path, trefoil_command,
    wait_until, Control, Process, Up,
};

use trefoil_model::spec::{ListenerSpec, ProxySpec, WorkloadSpec};
use trefoil_model::{Resource, Spec};
use trefoil_testkit::resources::{http_health, listener_spec, resource, route_all, workload};
use trefoil_testkit::ToYaml;

/// A Workload running `trefoil-testserver` with `replicas`, probed on `/healthz`.
fn servers(name: &str, service: &str, replicas: u32) -> Resource {
    let server = testserver_path();
    assert!(server.is_file(), "build trefoil-testserver first: cargo build -p trefoil-testkit --bins");
    let server = server.display().to_string();
    let replica_name = format!("{name}-${{TREFOIL_REPLICA}}");
    let args = ["--listen", "127.0.0.1:${PORT}", "--name", &replica_name];
    resource(name, Spec::Workload(WorkloadSpec { replicas, health: http_health("/healthz"), ..workload(service, &server, &args) }))
}

/// Gateway `edge` on 127.0.0.1:`port`, every request to Service `web`.
fn edge_gateway(port: u16) -> Vec<Resource> {
    let listener = ListenerSpec { proxy: Some("edge".into()), ..listener_spec(SocketAddr::from(([127, 0, 0, 1], port))) };
    vec![resource("edge", Spec::Proxy(ProxySpec::with_defaults())), resource("public", Spec::Listener(listener)), route_all("web")]
}

#[test]
fn up_starts_everything_and_publishes_ready_endpoints() {
    let mut up = Up::start(servers("web", "web", 2));
    up.wait_ready(&["web-0", "web-1"]);
    up.wait("Endpoints/web with both replicas ready", |u| u.ready_replicas("web") == [0, 1]);

    let view = up.view();
    for name in ["control", "web-0", "web-0-sidecar", "web-1", "web-1-sidecar"] {
        assert!(view["processes"][name].is_object(), "{name} missing from up.json: {view:#}");
    }
    assert_eq!(view["processes"]["control"]["role"], "control");
    assert_eq!(view["processes"]["web-0"]["role"], "app");
    assert_eq!(view["processes"]["web-0-sidecar"]["role"], "sidecar");
    assert!(view["processes"]["control"]["ready"] == true);

    // Endpoints point at the sidecars' inbound listeners, never the apps.
    let eps = up.endpoints("web");
    for (i, e) in eps.iter().enumerate() {
        assert_eq!(
            e.address.to_string(),
            view["processes"][format!("web-{i}-sidecar")]["addresses"]["inbound"].as_str().unwrap_or_default(),
            "{e:?}"
        );
        assert_eq!(e.version, "v1");
        assert_eq!(e.workload, "web");
    }
    let stored = up.resource("Endpoints", "web").expect("Endpoints/web is stored");
    assert_eq!(stored.metadata.labels.get("trefoil.dev/managed-by").map(String::as_str), Some("runtime"));

    // Each sidecar is registered as a Proxy named after the replica.
    let proxy = up.resource("Proxy", "web-1").expect("Proxy/web-1 is stored");
    assert_eq!(proxy.metadata.labels.get("trefoil.dev/managed-by").map(String::as_str), Some("runtime"));
    let Spec::Proxy(spec) = proxy.spec else { panic!("Proxy/web-1 holds a Proxy spec") };
    let sidecar = spec.sidecar.expect("a sidecar's Proxy says whose");
    assert_eq!((sidecar.service.as_str(), sidecar.replica), ("web", 1));
    assert_eq!(sidecar.app.to_string(), view["processes"]["web-1"]["addresses"]["app"].as_str().unwrap_or_default());
    assert_eq!(spec.admin.to_string(), view["processes"]["web-1-sidecar"]["addresses"]["admin"].as_str().unwrap_or_default());
    // The resources from the files are stored too.
    assert_eq!(up.spec::<WorkloadSpec>("Workload", "web").map(|w| w.replicas), Some(2));

    // The app answers on the port it was given.
    let app: SocketAddr = view["processes"]["web-1"]["addresses"]["app"].as_str().unwrap().parse().unwrap();
    let (status, _, body) = http_get(app, "web", "/");
    assert_eq!((status, body.trim()), (200, "web-1"));

    // The summary (-o json) says where things are.
    up.wait("the summary on stdout", |u| serde_json::from_str::<Value>(&u.stdout()).is_ok());
    let summary: Value = serde_json::from_str(&up.stdout()).unwrap();
    assert_eq!(summary["api"], view["api"]);
    assert_eq!(summary["replicas"].as_array().map(Vec::len), Some(2));
    assert!(summary["logs"].as_str().unwrap().ends_with("logs"), "{summary}");
    let stderr = up.stderr();
    assert!(stderr.contains("control plane ready"), "{stderr}");
    assert!(stderr.contains("replica web-0 ready"), "{stderr}");
}

/// The line `up` prints when the process a "started ROLE NAME (pid N)"
/// line announced is ready.
fn ready_line(started: &str) -> Option<String> {
    let (role_and_name, _) = started.strip_prefix("started ")?.split_once(" (pid")?;
    match role_and_name.split_once(' ')? {
        ("the", "control plane") => Some("control plane ready".to_string()),
        ("app", name) => Some(format!("replica {name} ready")),
        (role, name) => Some(format!("{role} {name} ready")),
    }
}

#[test]
fn up_reports_up_after_every_ready_line_and_writes_no_colour_where_no_one_looks() {
    // Progress (stderr) and summary (stdout) in one file, as with `2>&1`.
    let mut resources = edge_gateway(free_port());
    resources.push(servers("web", "web", 2));
    let mut up = Up::start_one_stream(resources);
    up.wait("trefoil is up", |u| u.stdout().contains("trefoil is up"));
    let output = up.stdout();
    let (before, _) = output.split_once("trefoil is up").expect("waited for it");
    let started: Vec<&str> = before.lines().filter(|l| l.starts_with("started ")).collect();
    // The control plane, the gateway, two apps and their sidecars.
    assert_eq!(started.len(), 6, "{output}");
    for line in started {
        let ready = ready_line(line).unwrap_or_else(|| panic!("an unexpected start line {line:?} in\n{output}"));
        assert!(before.lines().any(|l| l == ready), "{ready:?} must come before \"trefoil is up\":\n{output}");
    }

    // The portal's address first, with a one-time login code, never the admin token.
    let (_, after) = output.split_once("trefoil is up").expect("waited for it");
    let portal = after.lines().find_map(|l| l.trim().strip_prefix("portal")).map(str::trim).expect("a portal line");
    let code = portal.split_once("/#login=").map(|(_, c)| c.to_string()).unwrap_or_else(|| panic!("a login link: {portal}"));
    assert!(!output.contains(up.token().as_str()), "the admin token was printed:\n{output}");
    let login = serde_json::json!({ "code": code }).to_string();
    let exchange = || {
        trefoil_testkit::http_request(
            up.api(),
            "POST",
            "control",
            "/api/v1/login",
            &[("Content-Type", "application/json")],
            login.as_bytes(),
        )
        .unwrap()
    };
    let (status, _, body) = exchange();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"role\":\"admin\""), "{body}");
    let (status, _, body) = exchange();
    assert_eq!(status, 401, "the link logs in once: {}", String::from_utf8_lossy(&body));

    // Not a terminal: no colour codes in the output, the log files or `trefoil logs`.
    assert!(!output.contains('\x1b'), "{output:?}");
    let entries = std::fs::read_dir(up.state.join("logs")).expect("the logs directory");
    let logs: Vec<_> = entries.map(|e| e.expect("a log entry").path()).filter(|p| p.is_file()).collect();
    assert!(logs.len() >= 6, "a log per process: {logs:?}");
    for log in logs {
        let text = std::fs::read(&log).expect("reading a log file");
        assert!(!text.contains(&0x1b), "{}: {}", log.display(), String::from_utf8_lossy(&text));
    }
    let out = up.logs(&["web-0-sidecar"]);
    assert!(out.status.success() && !out.stdout.is_empty() && !out.stdout.contains(&0x1b), "{out:?}");
}

#[test]
fn a_killed_app_is_restarted_and_ready_again() {
    let mut up = Up::start(servers("api", "api", 1));
    up.wait_ready(&["api-0"]);
    up.wait("Endpoints/api ready", |u| u.ready_replicas("api") == [0]);
    let old = up.process("api-0")["pid"].as_u64().unwrap();
    send_signal(old as u32, libc::SIGKILL);
    up.wait("api-0 restarted", |u| {
        let p = u.process("api-0");
        p["restarts"] == 1 && p["pid"].as_u64().is_some_and(|pid| pid != old) && p["ready"] == true
    });
    assert_eq!(up.process("api-0")["lastExit"], "signal 9");
    up.wait("Endpoints/api ready again", |u| u.ready_replicas("api") == [0]);
}

#[test]
fn a_restarted_control_plane_keeps_receiving_endpoints() {
    let mut up = Up::start(servers("db", "db", 1));
    up.wait_ready(&["db-0"]);
    let control = up.process("control")["pid"].as_u64().unwrap();
    send_signal(control as u32, libc::SIGKILL);
    up.wait("the control plane restarted and ready", |u| u.process("control")["restarts"] == 1 && u.process("control")["ready"] == true);
    // The store survived (same data directory) and the writer keeps going.
    up.wait("Endpoints/db still ready", |u| u.ready_replicas("db") == [0]);
    let app = up.process("db-0")["pid"].as_u64().unwrap();
    send_signal(app as u32, libc::SIGKILL);
    up.wait("db-0 restarted", |u| u.process("db-0")["restarts"] == 1 && u.process("db-0")["ready"] == true);
    up.wait("Endpoints/db ready after the app restart", |u| u.ready_replicas("db") == [0]);
}

#[test]
fn logs_prints_a_process_output() {
    let mut up = Up::start(servers("web", "web", 1));
    up.wait_ready(&["web-0"]);
    let out = up.logs(&["web-0"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listening on"), "{text}");
    let out = up.logs(&["control", "--tail", "1"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let out = up.logs(&["nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("control") && err.contains("web-0-sidecar"), "the known names are listed: {err}");
}

#[test]
fn ctrl_c_stops_everything_and_leaves_no_child() {
    let mut up = Up::start(servers("web", "web", 2));
    up.wait_ready(&["web-0", "web-1"]);
    let running = pids(&up.view());
    assert!(running.len() >= 3, "{:#}", up.view());
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
    let left: Vec<u64> = running.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    let view = up.view();
    assert_eq!(view["running"], false);
    assert!(pids(&view).is_empty(), "{view:#}");
    // The replicas were taken out of Endpoints before their apps stopped;
    // the store keeps that (read it with a fresh control plane).
    let data = up.state.join("data");
    let control = Control::start(&data);
    let (status, stored) = control.call("GET", "/api/v1/endpoints/web", "");
    drop(control);
    assert_eq!(status, 200, "{stored}");
    assert!(stored["spec"]["endpoints"].as_array().unwrap().iter().all(|e| e["ready"] == false), "{stored:#}");

    let stderr = up.stderr();
    let app = stderr.find("stopped web-0").expect("apps stopped");
    let control = stderr.find("stopped control").expect("control stopped");
    assert!(app < control, "apps stop before the control plane:\n{stderr}");
}

#[test]
fn children_die_with_a_killed_supervisor() {
    let mut up = Up::start(servers("web", "web", 1));
    up.wait_ready(&["web-0"]);
    let running = pids(&up.view());
    up.stop_with(libc::SIGKILL);
    wait_until("every child gone after SIGKILL of trefoil up", Duration::from_secs(10), || running.iter().all(|p| !alive(*p)));
}

#[test]
fn bad_input_exits_2_with_the_location() {
    let dir = scratch_dir();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: web}\nspec:\n  service: web\n  command: x\n  replicas: 0\n",
    )
    .unwrap();
    let out = trefoil_command().args(["up", "-f"]).arg(&file).arg("--state").arg(dir.join("state")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:7:") && err.contains("spec.replicas"), "{err}");
    assert!(!dir.join("state").join("up.json").exists(), "nothing started");
}

/// Requests through the gateway reach both replicas, through their sidecars.
#[test]
fn traffic_flows_through_the_gateway() {
    let port = free_port();
    let files = [edge_gateway(port), vec![servers("web", "web", 2)]].concat();
    let mut up = Up::start(&files);
    up.wait_ready(&["web-0", "web-1", "edge"]);
    let gateway: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    up.wait("both replicas answer through the gateway", |_| {
        let served = served_by(gateway, 20);
        served.contains(&"200 web-0".to_string()) && served.contains(&"200 web-1".to_string())
    });
}

/// `n` requests through the gateway: `STATUS BODY` for each that was answered.
fn served_by(gateway: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .filter_map(|_| http_request(gateway, "GET", "web", "/", &[], b"").ok())
        .map(|(s, _, b)| format!("{s} {}", String::from_utf8_lossy(&b).trim()))
        .collect()
}

#[test]
fn apps_get_their_ports_and_upstreams_in_the_environment() {
    let server = testserver_path();
    // The shell shows the environment, then becomes the server (same pid).
    let script = format!("env | grep -E '^(PORT|TREFOIL_|GREETING)' | sort; exec '{}' --listen 127.0.0.1:${{PORT}}", server.display());
    let web = WorkloadSpec {
        version: "v2".into(),
        env: [("GREETING".to_string(), "hi from ${TREFOIL_SERVICE}".to_string())].into(),
        ..workload("web", "/bin/sh", &["-c", &script])
    };
    let mut up = Up::start(vec![resource("web", Spec::Workload(web)), servers("api", "payments-api", 1)]);
    up.wait_ready(&["web-0", "api-0"]);
    let log = String::from_utf8_lossy(&up.logs(&["web-0"]).stdout).to_string();
    let sidecar = up.process("web-0-sidecar");
    let app = up.process("web-0");
    let port = app["addresses"]["app"].as_str().unwrap().rsplit(':').next().unwrap().to_string();
    for line in [
        format!("PORT={port}"),
        "TREFOIL_SERVICE=web".into(),
        "TREFOIL_VERSION=v2".into(),
        "TREFOIL_REPLICA=0".into(),
        format!("TREFOIL_OUTBOUND={}", sidecar["addresses"]["outbound"].as_str().unwrap()),
        format!("TREFOIL_UPSTREAM_PAYMENTS_API={}", sidecar["addresses"]["upstream.payments-api"].as_str().unwrap()),
        "GREETING=hi from web".into(),
    ] {
        assert!(log.lines().any(|l| l == line), "{line:?} missing from:\n{log}");
    }
    assert!(!log.contains("TREFOIL_UPSTREAM_WEB="), "no upstream to its own service:\n{log}");
}

#[test]
fn a_second_up_on_the_same_state_is_refused() {
    let mut up = Up::start(servers("web", "web", 1));
    up.wait_ready(&["web-0"]);
    let out = trefoil_command()
        .args(["up", "-f"])
        .arg(up.dir.join("files"))
        .arg("--state")
        .arg(&up.state)
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another `trefoil up`") && err.contains(&up.view()["pid"].to_string()), "{err}");
    assert_eq!(up.process("web-0")["restarts"], 0, "the running one is untouched");
}

#[test]
fn a_control_plane_that_cannot_start_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = scratch_dir();
    std::fs::write(dir.join("mesh.yaml"), servers("web", "web", 1).to_yaml()).unwrap();
    let out = run_with_timeout(
        trefoil_command().args(["up", "-f"]).arg(dir.join("mesh.yaml")).arg("--state").arg(dir.join("state")).args([
            "--listen",
            &taken.local_addr().unwrap().to_string(),
            "--grpc-listen",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the control plane did not start") && err.contains("cannot listen"), "{err}");
}

#[test]
fn a_new_run_deletes_what_an_earlier_one_registered_and_no_longer_runs() {
    let mut first = Up::start(vec![servers("web", "web", 2), servers("old", "old", 1)]);
    first.wait_ready(&["web-0", "web-1", "old-0"]);
    let dir = first.dir.clone();
    assert_eq!(first.stop_with(libc::SIGINT), Some(0));

    let mut second = Up::start_in(dir, servers("web", "web", 1));
    second.wait_ready(&["web-0"]);
    second.wait("Endpoints/web with one replica", |u| u.ready_replicas("web") == [0] && u.endpoints("web").len() == 1);
    let proxies = second.client().list("Proxy").expect("listing proxies");
    let names: Vec<&str> = proxies.items.iter().map(Resource::name).collect();
    assert_eq!(names, ["web-0"], "stale sidecars are gone");
    assert!(second.resource("Endpoints", "old").is_none(), "stale Endpoints are gone");
    assert!(second.resource("Workload", "old").is_some(), "what people wrote is never deleted by the runtime");
    assert!(second.stderr().contains("deleted Proxy/web-1"), "{}", second.stderr());
}

#[test]
fn logs_follow_prints_new_output() {
    let mut up = Up::start(servers("web", "web", 1));
    up.wait_ready(&["web-0"]);
    let out = up.dir.join("follow.out");
    let follow = Process::spawn(
        "trefoil logs --follow",
        trefoil_command()
            .args(["logs", "web-0", "--follow", "--tail", "0", "--state"])
            .arg(&up.state)
            .stdout(log_file(&out))
            .stderr(Stdio::null()),
    );
    // The restarted app writes a new "listening on" line.
    let pid = up.process("web-0")["pid"].as_u64().unwrap();
    send_signal(pid as u32, libc::SIGKILL);
    wait_until("the new output followed", Duration::from_secs(30), || {
        std::fs::read_to_string(&out).unwrap_or_default().contains("listening on")
    });
    drop(follow);
}

#[test]
fn ctrl_c_during_start_up_stops_cleanly() {
    // This replica never becomes ready, so start-up is still waiting for it.
    let mut files = servers("web", "web", 1);
    if let Spec::Workload(spec) = &mut files.spec {
        spec.health = http_health("/status/503");
    }
    let mut up = Up::start(files);
    up.wait("the app running", |u| u.process("web-0")["running"] == true);
    let running = pids(&up.view());
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
    assert!(running.iter().all(|p| !alive(*p)));
    assert!(!up.stdout().contains("\"api\""), "no summary: start-up did not finish");
}

/// What an app does to call another service: its sidecar's per-upstream
/// port (any Host) and its outbound port (by Host) both reach the service's
/// replicas, through their sidecars.
#[test]
fn sidecar_ports_reach_the_other_service() {
    let mut up = Up::start(vec![servers("web", "web", 1), servers("api", "api", 2)]);
    up.wait_ready(&["web-0", "api-0", "api-1", "web-0-sidecar", "api-0-sidecar", "api-1-sidecar"]);
    let sidecar = up.process("web-0-sidecar");
    let upstream: SocketAddr = sidecar["addresses"]["upstream.api"].as_str().unwrap().parse().unwrap();
    let outbound: SocketAddr = sidecar["addresses"]["outbound"].as_str().unwrap().parse().unwrap();
    up.wait("api answers on web-0's upstream and outbound ports", |_| {
        let via = |addr, host| {
            http_request(addr, "GET", host, "/", &[], b"")
                .ok()
                .filter(|(s, _, _)| *s == 200)
                .map(|(_, _, b)| String::from_utf8_lossy(&b).trim().to_string())
        };
        matches!(via(upstream, "anything").as_deref(), Some("api-0" | "api-1"))
            && matches!(via(outbound, "api").as_deref(), Some("api-0" | "api-1"))
    });
}

#[test]
fn an_unhealthy_replica_leaves_the_endpoints_and_gets_no_traffic() {
    let port = free_port();
    let files = [edge_gateway(port), vec![servers("web", "web", 2)]].concat();
    let mut up = Up::start(&files);
    up.wait_ready(&["web-0", "web-1", "edge"]);
    let gateway: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    up.wait("both replicas serve", |_| {
        let served = served_by(gateway, 20);
        served.contains(&"200 web-0".to_string()) && served.contains(&"200 web-1".to_string())
    });

    // web-1 stays up but fails its health probe: it leaves the set; nothing fails.
    let app: SocketAddr = up.process("web-1")["addresses"]["app"].as_str().unwrap().parse().unwrap();
    assert_eq!(http_request(app, "POST", "web", "/__health/fail", &[], b"").unwrap().0, 200);
    up.wait("web-1 marked not ready in Endpoints/web", |u| u.ready_replicas("web") == [0]);
    up.wait("the gateway sends web-1 nothing", |_| served_by(gateway, 20).iter().all(|s| s == "200 web-0"));
    let after = served_by(gateway, 40);
    assert!(after.iter().all(|s| s == "200 web-0"), "{after:?}");
    assert_eq!(up.process("web-1")["restarts"], 0, "an unhealthy app is taken out of traffic, not restarted");

    // Healthy again: back in.
    assert_eq!(http_request(app, "POST", "web", "/__health/ok", &[], b"").unwrap().0, 200);
    up.wait("web-1 serving again", |_| served_by(gateway, 20).contains(&"200 web-1".to_string()));
}

#[test]
fn up_makes_the_cli_reach_its_control_plane_with_its_token() {
    let dir = scratch_dir();
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files").join("mesh.yaml"), servers("web", "web", 1).to_yaml()).unwrap();
    let config = dir.join("config");
    let config_env = config.display().to_string();
    let mut up = Up::start_on(dir.clone(), &dir.join("files"), &[("TREFOIL_CONFIG", &config_env)]);
    up.wait_ready(&["web-0"]);
    up.wait("the summary", |u| u.stdout().contains("tokenFile"));
    // No --server, no --token: the context `up` made current.
    let cli = |args: &[&str]| run_with_timeout(trefoil_command().args(args).env("TREFOIL_CONFIG", &config), Duration::from_secs(30));
    let out = cli(&["get", "workloads"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("web"), "{out:?}");
    let contexts = String::from_utf8_lossy(&cli(&["config", "get-contexts"]).stdout).into_owned();
    assert!(contexts.contains("local") && contexts.contains("admin.token") && !contexts.contains("trf_"), "{contexts}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&config).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Without the context, the same call is refused.
    let anonymous = run_with_timeout(
        trefoil_command().args(["get", "workloads", "--server", &format!("http://{}", up.api())]),
        Duration::from_secs(30),
    );
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("401"), "{anonymous:?}");
}
