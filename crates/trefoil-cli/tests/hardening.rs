//! Inputs an attacker would send, against real processes: each test is a
//! finding of a security probe that once crashed a component or slipped past
//! its rules. Processes that could run away get a memory limit (`RLIMIT_DATA`)
//! so a regression fails the test instead of taking the machine down.

mod common;

use std::process::Command;
use std::time::Duration;

use common::control::Control;
use common::*;

/// A cap on a child's heap, far above what any of these inputs needs once
/// handled and far below what they take when they are not.
const MEMORY_CAP: u64 = 1 << 30;

fn cap_memory(pid: u32) {
    let limit = libc::rlimit { rlim_cur: MEMORY_CAP, rlim_max: MEMORY_CAP };
    // SAFETY: prlimit only reads `limit`; the old-limit pointer may be null.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_DATA, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit on {pid}: {}", std::io::Error::last_os_error());
}

/// A Route whose labels hold nine levels of ten aliases: 10^9 strings in 900 bytes.
fn billion_laughs() -> String {
    let mut text = format!("{API}\nkind: Route\nmetadata:\n  name: laughs\n  labels:\n    a0: &a0 [lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!("    a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    text.push_str("spec: {hosts: [x], rules: [{backends: [{service: web}]}]}\n");
    text
}

/// 20,000 nested block sequences (40 KB): a recursive loader overflows its stack.
fn deep_nesting() -> String {
    format!("{API}\nkind: Route\nmetadata: {{name: deep}}\nspec:\n  hosts:\n    {}x\n", "- ".repeat(20_000))
}

#[test]
fn validate_refuses_yaml_bombs_with_a_location() {
    let dir = scratch_dir();
    for (name, text, message) in [("laughs.yaml", billion_laughs(), "expands to more than"), ("deep.yaml", deep_nesting(), "nests more than 64 levels")] {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let child = Command::new(trefoil_bin()).args(["validate", "-f"]).arg(&file).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        cap_memory(child.id());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {:?}\n{stderr}", out.status);
        assert!(stderr.contains(&format!("{}:", file.display())) && stderr.contains(message), "{name}: {stderr}");
    }
}

#[test]
fn the_api_refuses_yaml_bombs_and_keeps_serving() {
    let dir = scratch_dir();
    let control = Control::start(&dir.join("store"));
    cap_memory(control.pid());
    for (body, message) in [(billion_laughs(), "expands to more than"), (deep_nesting(), "nests more than 64 levels")] {
        let (status, reply) = control.call("POST", "/api/v1/routes", &body);
        assert_eq!(status, 422, "{reply}");
        let errors = reply["errors"].as_array().unwrap();
        assert!(errors[0]["message"].as_str().unwrap().contains(message), "{reply}");
        assert!(errors[0]["line"].as_u64().unwrap() >= 1, "{reply}");
    }
    let (status, _) = control.call("GET", "/api/v1/routes", "");
    assert_eq!(status, 200, "the control plane still answers:\n{}", control.log());
}

#[test]
fn a_watched_proxy_keeps_its_config_through_yaml_bombs() {
    let up = TestServer::named("up");
    let public = addr();
    let base = format!("{}{}", listener("public", public), service("web", "http", &[(up.addr(), "v1")]));
    let proxy = Proxy::start(&format!("{base}{}", web_route("")));
    cap_memory(proxy.pid());
    for (i, bomb) in [billion_laughs(), deep_nesting()].into_iter().enumerate() {
        proxy.rewrite(&format!("{base}{}---\n{bomb}", web_route("")));
        let want = i as f64 + 1.0;
        wait_until("the rejected reload", Duration::from_secs(20), || proxy.metric_sum("trefoil_config_reloads_total", &["failure"]) >= want);
        assert_eq!(proxy.config_version(), 1);
        assert_eq!(http_get(public, "x", "/").0, 200);
    }
}
