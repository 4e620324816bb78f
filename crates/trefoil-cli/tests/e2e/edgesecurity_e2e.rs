//! The edge-security walkthrough of `examples/edgesecurity`, as an operator
//! runs it: `trefoil up` with a gateway, policy and inspection in front of
//! `web`; then, live and with traffic flowing, the antivirus function added
//! by a handler on `inspect_done` (scanning uploads and downloads), then
//! moved under `policy_check` and narrowed to uploads. Real clamd, real
//! functions, no request lost; `trefoil trace` shows a blocked download's
//! chain in order. And `examples/edgesecurity-transparent`'s walkthrough
//! script, run as a user runs it (as root: it builds network namespaces).

use std::path::{Path, PathBuf};

use trefoil_model::ResourceVersion;
use trefoil_testkit::{eicar, free_addr, http_request, repo_root, request, scratch_dir, wait_until, Clamd, Load, Up};

pub(crate) fn example() -> PathBuf {
    repo_root().join("examples/edgesecurity")
}

/// Copies the example with its gateway on `gateway`, keeping its layout.
pub(crate) fn copy_example(to: &Path, gateway: std::net::SocketAddr) {
    for sub in ["", "functions", "changes", "downloads"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for entry in std::fs::read_dir(example().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let text = std::fs::read_to_string(&path).unwrap().replace("127.0.0.1:8088", &gateway.to_string());
                std::fs::write(to.join(sub).join(path.file_name().unwrap()), text).unwrap();
            }
        }
    }
}

/// `trefoil apply` of one of the example's changes; returns the CNF's new resourceVersion.
fn apply(up: &Up, file: &Path) -> ResourceVersion {
    up.apply(file);
    up.resource_version("CNF", "edge-security").expect("the CNF is stored")
}

#[test]
fn antivirus_is_added_then_narrowed_live_with_no_request_lost() {
    let clamd = Clamd::start();
    let dir = scratch_dir();
    let gateway = free_addr();
    let files = dir.join("edgesecurity");
    copy_example(&files, gateway);
    let infected = format!("attachment: {}\n", eicar());
    std::fs::write(files.join("downloads/setup.exe"), &infected).unwrap();
    let clean_download = std::fs::read_to_string(files.join("downloads/report.txt")).unwrap();
    let clamd_addr = clamd.addr.to_string();
    let mut up = Up::start_on(dir.clone(), &files, &[("TREFOIL_CLAMD", &clamd_addr)]);
    up.wait_ready(&["web-0", "policy-0", "inspect-0", "antivirus-0"]);
    // Not `request`, which panics while the gateway is not listening yet.
    up.wait("the gateway serving through the chain", |_| {
        matches!(http_request(gateway, "GET", "web.local", "/", &[], b""), Ok((200, _, _)))
    });

    let upload = |path: &str, body: &str| request(gateway, "POST", path, &[("content-type", "text/plain")], body.as_bytes());
    let download = |path: &str| request(gateway, "GET", path, &[], b"");

    // Policy and inspection only: the chain works, nothing is scanned yet.
    assert_eq!(request(gateway, "GET", "/admin", &[], b"").0, 403, "the policy denies /admin");
    assert_eq!(upload("/search", "q=1 UNION SELECT pw").0, 403, "inspection finds a signature");
    assert_eq!(upload("/upload", &infected).0, 200, "no antivirus in the chain yet");
    assert_eq!(download("/files/setup.exe").0, 200, "nor for downloads");

    // Clients keep coming through both changes; none of their requests may fail.
    let load = Load::start(&dir, gateway);

    // 1: a handler on inspect_done calls the antivirus: everything is scanned.
    let v1 = apply(&up, &files.join("changes/1-scan-after-inspect.yaml"));
    up.wait("every proxy acknowledged the handler", |u| u.all_acked(v1));
    let (status, _, body) = upload("/upload", &infected);
    assert_eq!(status, 451, "{body}");
    assert!(body.contains("Trefoil.Test.EICAR"), "{body}");
    assert_eq!(upload("/notes", &infected).0, 451, "inspected requests are all scanned");
    assert_eq!(upload("/upload", "a clean file\n").0, 200);
    let (status, headers, body) = download("/files/setup.exe");
    assert_eq!(status, 451, "an infected download is blocked: {body}");
    assert!(body.contains("Trefoil.Test.EICAR") && !body.contains("attachment"), "the refusal, not the file: {body}");
    let (status, _, body) = download("/files/report.txt");
    assert_eq!((status, body.as_str()), (200, clean_download.as_str()), "a clean download arrives whole");
    let trace_id = headers.get("x-trefoil-trace-id").cloned().expect("a trace id");
    assert_chain_in_order(&up, &trace_id);

    // 2: the call moves under the policy's event, for uploads only.
    let v2 = apply(&up, &files.join("changes/2-scan-uploads-on-policy.yaml"));
    up.wait("every proxy acknowledged the narrowed handler", |u| u.all_acked(v2));
    assert_eq!(upload("/upload", &infected).0, 451, "uploads are still scanned");
    assert_eq!(upload("/notes", &infected).0, 200, "what the policy does not call an upload is no longer scanned");
    assert_eq!(download("/files/setup.exe").0, 200, "nor are downloads");
    assert_eq!(upload("/upload", "a clean file\n").0, 200);

    let traffic = load.finish();
    assert_eq!(traffic["failed"], 0, "a client request failed while the chain changed: {traffic}");
    // The client had its first answer before change 1 and stopped after change 2.
    assert!(traffic["sent"].as_u64().unwrap_or(0) > 1, "{traffic}");
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
    drop(clamd);
}

/// The gateway's spans of the blocked download, by start time: the request
/// steps, the upstream attempt, the response step, and the handler runs with
/// their calls of the antivirus, whose deny blocked the download.
fn assert_chain_in_order(up: &Up, trace_id: &str) {
    let wanted = [
        "chain policy",
        "chain inspect",
        "handler inspect_done",
        "call antivirus",
        "attempt 1",
        "chain inspect response",
        "handler inspect_done",
        "call antivirus",
    ];
    let mut names: Vec<String> = Vec::new();
    let mut kept: Vec<serde_json::Value> = Vec::new();
    wait_until("the blocked download's trace at the collector", std::time::Duration::from_secs(30), || {
        let out = up.cli(&["trace", trace_id, "-o", "json"]);
        let mut spans: Vec<serde_json::Value> =
            serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().and_then(|v| v["spans"].as_array().cloned()).unwrap_or_default();
        spans.retain(|s| s["attributes"]["trefoil.proxy"] == "gateway");
        // OTLP JSON carries nanoseconds as decimal strings.
        spans.sort_by_key(|s| s["startUnixNano"].as_str().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0));
        spans.retain(|s| s["name"].as_str().is_some_and(|n| wanted.contains(&n)));
        names = spans.iter().filter_map(|s| s["name"].as_str()).map(str::to_string).collect();
        kept = spans;
        names.len() >= wanted.len()
    });
    assert_eq!(names, wanted, "the chain in order");
    // The download's scan: a child of the response-phase handler run, with the antivirus's deny.
    let (run, call) = (&kept[6], &kept[7]);
    assert_eq!(call["parentSpanId"], run["spanId"], "{call}");
    assert_eq!(call["attributes"]["trefoil.verdict"], "deny", "{call}");
    let tree = String::from_utf8_lossy(&up.cli(&["trace", trace_id]).stdout).to_string();
    assert!(tree.contains("gateway: chain inspect response ("), "{tree}");
    assert!(tree.contains("gateway: call antivirus (") && tree.contains(") deny"), "{tree}");
}

/// The transparent variant's script, exactly as its README says to run it:
/// the redirect through the chain, the inspection tap's handler blocking a
/// scanning client at the datapath until the TTL (issue 14's drop test
/// against the real kernel), the rule deleted, nothing left attached.
#[test]
fn the_transparent_walkthrough_runs_as_written() {
    if !trefoil_testkit::is_root() || ["python3", "curl", "nsenter"].iter().any(|c| trefoil_testkit::find_command(c).is_none()) {
        eprintln!("skipping: needs root (network namespaces, eBPF), python3, curl and nsenter; CI runs it as root");
        return;
    }
    let script = repo_root().join("examples/edgesecurity-transparent/walkthrough.sh");
    let out = trefoil_testkit::run_with_timeout(
        // `up` adds a CLI context: to a scratch file, not the user's config.
        std::process::Command::new(&script)
            .env("TREFOIL", trefoil_testkit::trefoil_path())
            .env("NO_COLOR", "1")
            .env("TREFOIL_CONFIG", scratch_dir().join("config")),
        std::time::Duration::from_secs(300),
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the walkthrough failed:\n{stdout}\n{stderr}");
    for step in [
        "HTTP/1.0 200",
        "edge: chain policy (edge-security, callout) allow",
        "edge: handler edge-security inspect_done (on tap) ok",
        "GET /admin -> 403",
        "GET / as sqlmap -> 200",
        "GET / -> 000",
        "handler: inspect_done",
        "GET / -> 200",
        "DatapathRule/web-through-edge deleted",
        "GET /admin -> 404",
        "walkthrough done",
    ] {
        assert!(stdout.contains(step), "{step:?} missing from the walkthrough's output:\n{stdout}\n{stderr}");
    }
}
