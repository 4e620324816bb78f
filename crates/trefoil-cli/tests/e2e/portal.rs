//! The operator portal in a real browser: `trefoil up -f
//! examples/edgesecurity` with a real clamd, then `tests/portal/portal.py`
//! (Playwright driving Debian's Chromium headless) opens every page, watches
//! the dashboard change live, makes bad edits of the CNF (nothing stored, no
//! proxy moves), runs the example's walkthrough in the handler editor (the
//! antivirus call added to `inspect_done`, an infected upload denied and
//! seen in CNF Tracing with `virus_found`, the call moved under
//! `policy_check` and downloads no longer scanned), builds a CNF from the
//! form, edits a Route in Resources through the diff, promotes a canary
//! from the Rollouts page and sees the service graph follow, and checks a
//! viewer token is shown no edit button. Screenshots of every page land in
//! the workspace's `target/portal-screenshots/`, for a person to look at.

use std::process::Command;
use std::time::Instant;

use trefoil_testkit::{eicar, find_command, free_addr, http_request, repo_root, request, scratch_dir, trefoil_command, Clamd, Up};

use crate::edgesecurity_e2e::copy_example;

const SHOP: &str = "\
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: shop-v1}
spec: {service: shop, version: v1, command: trefoil, args: [demo-app], health: {http: /healthz}}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata: {name: shop-v2}
spec: {service: shop, version: v2, command: trefoil, args: [demo-app], health: {http: /healthz}}
---
apiVersion: trefoil.dev/v1alpha1
kind: Route
metadata: {name: shop}
spec:
  hosts: [shop.local]
  rules:
  - backends: [{service: shop, version: v1}]
";

/// The browser and its driver, or why the test cannot run.
fn browser() -> Result<std::path::PathBuf, &'static str> {
    find_command("clamd").ok_or("clamd not found (Debian package clamav-daemon), which the walkthrough's antivirus wraps")?;
    let chromium = find_command("chromium").ok_or("chromium not found (Debian package chromium)")?;
    let driver = Command::new("python3").args(["-c", "import playwright.sync_api"]).output();
    match driver {
        Ok(out) if out.status.success() => Ok(chromium),
        _ => Err("python3 cannot import playwright (pip install playwright)"),
    }
}

#[test]
fn the_portal_shows_and_steers_the_edgesecurity_mesh() {
    let chromium = match browser() {
        Ok(path) => path,
        Err(why) => {
            eprintln!("SKIPPED the portal's browser test: {why}; scripts/install-test-deps installs both");
            return;
        }
    };
    // The mesh starts with the antivirus unused; the walkthrough adds it.
    let clamd = Clamd::start();
    let clamd_addr = clamd.addr.to_string();
    let dir = scratch_dir();
    let gateway = free_addr();
    let files = dir.join("edgesecurity");
    copy_example(&files, gateway);
    // The infected file: uploaded by the walkthrough's client, and served by
    // `web` as a download, as in edgesecurity_e2e.
    let infected = format!("attachment: {}\n", eicar());
    std::fs::write(files.join("downloads/setup.exe"), &infected).unwrap();
    // A second service for the Rollouts page: v1 and v2 running, the Route
    // sending all of it to v1; the page's script adds the Rollout.
    std::fs::write(files.join("shop.yaml"), SHOP).unwrap();
    let mut up = Up::start_on(dir, &files, &[("TREFOIL_CLAMD", &clamd_addr)]);
    up.wait_up();
    up.wait("the gateway serving through the chain", |_| {
        matches!(http_request(gateway, "GET", "web.local", "/", &[], b""), Ok((200, _, _)))
    });
    let portal = format!("http://{}/", up.api());
    let summary: serde_json::Value = serde_json::from_str(up.stdout().trim()).expect("up's summary as JSON");
    assert_eq!(summary["portal"], portal.as_str(), "up names the portal first: {summary}");

    // A request the policy denies, whose trace the browser opens.
    let (status, headers, body) = request(gateway, "GET", "/admin", &[], b"");
    assert_eq!(status, 403, "{body}");
    let trace_id = headers.get("x-trefoil-trace-id").cloned().expect("a trace id");

    // The one-time login link the browser opens, as `trefoil portal login-link` prints it.
    let minted = trefoil_command()
        .args(["portal", "login-link", "--server", &format!("http://{}", up.api()), "--token", &up.token(), "-o", "json"])
        .output()
        .expect("running trefoil portal login-link");
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let minted: serde_json::Value = serde_json::from_slice(&minted.stdout).expect("login-link -o json");
    assert_eq!(minted["role"], "admin", "{minted}");
    let login_link = minted["url"].as_str().expect("a url").to_string();
    assert!(login_link.starts_with(&format!("{portal}#login=")), "{login_link}");

    let screenshots = repo_root().join("target/portal-screenshots");
    let script = repo_root().join("crates/trefoil-cli/tests/portal/portal.py");
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .args(["--portal", &portal, "--trace-id", &trace_id, "--token", &up.token(), "--gateway", &gateway.to_string()])
        .args(["--login-link", &login_link])
        .arg("--chromium")
        .arg(&chromium)
        .arg("--screenshots")
        .arg(&screenshots)
        .arg("--change")
        .arg(files.join("changes/1-scan-after-inspect.yaml"))
        .arg("--infected")
        .arg(files.join("downloads/setup.exe"))
        .output()
        .expect("running python3 portal.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser test failed:\n{stdout}\n{stderr}\ntrefoil up:\n{}", up.stderr());
    eprintln!("portal figures: {} (browser run {:?}); screenshots in {}", stdout.trim(), started.elapsed(), screenshots.display());
    // The time-to-data table (measured, not asserted).
    eprintln!("{}", stderr.trim());
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line of figures");
    assert!(figures["dashboardMs"].is_number(), "{figures}");
    for page in [
        "dashboard",
        "cnfs",
        "cnfs-unknown-field",
        "cnfs-lua-error",
        "cnfs-handler-error",
        "cnfs-diff",
        "cnfs-applied",
        "traces-virus-found",
        "cnfs-moved",
        "cnfs-conflict",
        "cnfs-builder-error",
        "cnfs-builder",
        "traces",
        "resources",
        "resources-diff",
        "rollouts",
        "graph",
        "graph-focus",
    ] {
        for width in [1280, 390] {
            let shot = screenshots.join(format!("{page}-{width}.png"));
            assert!(shot.metadata().is_ok_and(|m| m.len() > 0), "no screenshot {}", shot.display());
        }
    }
    assert_eq!(up.stop_with(libc::SIGINT), Some(0), "{}", up.stderr());
    drop(clamd);
}
