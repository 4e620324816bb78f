//! A real `trefoil proxy` process for black-box tests, and helpers around it.
#![allow(dead_code, unused_imports)]

pub(crate) mod chain;
pub(crate) mod clamd;
pub(crate) mod control;
pub(crate) mod load;
pub(crate) mod nginx;
pub(crate) mod up;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub(crate) use trefoil_testkit::{free_port, http_get, http_request, wait_for_port, TestServer};

pub(crate) const API: &str = "apiVersion: trefoil.dev/v1alpha1";

/// The repository's root, for its examples and test scripts.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn trefoil_bin() -> &'static str {
    env!("CARGO_BIN_EXE_trefoil")
}

/// A fresh scratch directory for one test.
pub(crate) fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("trefoil-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating scratch dir");
    dir
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A `Proxy` resource with a given admin address and access log target.
pub(crate) fn proxy_resource(admin: SocketAddr, access_log: &Path) -> String {
    format!(
        "{API}\nkind: Proxy\nmetadata: {{name: test}}\nspec:\n  admin: \"{admin}\"\n  accessLog: \"{}\"\n  drainTimeout: 5s\n---\n",
        access_log.display()
    )
}

pub(crate) fn listener(name: &str, addr: SocketAddr) -> String {
    format!("{API}\nkind: Listener\nmetadata: {{name: {name}}}\nspec:\n  address: \"{addr}\"\n---\n")
}

/// A loopback address whose port was free a moment ago.
pub(crate) fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// A Route named after `service`, for every host, with one rule to it;
/// `rule_extra` adds lines to that rule (indented four spaces).
pub(crate) fn route_all(service: &str, rule_extra: &str) -> String {
    format!("{API}\nkind: Route\nmetadata: {{name: {service}}}\nspec:\n  hosts: [\"*\"]\n  rules:\n  - backends: [{{service: {service}}}]\n{rule_extra}")
}

/// [`route_all`] for Service `web`.
pub(crate) fn web_route(rule_extra: &str) -> String {
    route_all("web", rule_extra)
}

/// A Service with endpoints given as (address, version).
pub(crate) fn service(name: &str, protocol: &str, endpoints: &[(SocketAddr, &str)]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|(a, v)| format!("    - {{address: \"{a}\", version: \"{v}\"}}")).collect();
    format!("{API}\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{name: main, port: 80, protocol: {protocol}}}]\n  endpoints:\n{}\n---\n", eps.join("\n"))
}

/// A running proxy; killed (SIGKILL) when dropped.
pub(crate) struct Proxy {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub access_log: PathBuf,
    stderr: PathBuf,
}

impl Proxy {
    /// Writes `resources` (without a Proxy resource: one is added) and starts the proxy.
    pub(crate) fn start(resources: &str) -> Self {
        Self::start_with_admin(format!("127.0.0.1:{}", free_port()).parse().unwrap(), resources)
    }

    /// Like `start`, with the admin listener on `admin` (known before the proxy runs).
    pub(crate) fn start_with_admin(admin: SocketAddr, resources: &str) -> Self {
        let dir = scratch_dir();
        let access_log = dir.join("access.log");
        let config = dir.join("proxy.yaml");
        std::fs::write(&config, format!("{}{resources}", proxy_resource(admin, &access_log))).unwrap();
        let mut proxy = Proxy { child: None, dir, config, admin, access_log, stderr: PathBuf::new() };
        proxy.spawn(&[]);
        proxy
    }

    pub(crate) fn spawn(&mut self, extra: &[&str]) {
        self.stderr = self.dir.join("proxy.stderr");
        let child = Command::new(trefoil_bin())
            .args(["proxy", "--config"])
            .arg(&self.config)
            .args(["--watch-interval", "100ms", "--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.stderr).unwrap())
            .spawn()
            .expect("starting trefoil proxy");
        self.child = Some(child);
        self.wait_ready();
    }

    pub(crate) fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("proxy exited with {status} before ready:\n{}", self.stderr());
            }
            if let Ok((200, _, _)) = http_request(self.admin, "GET", "admin", "/ready", &[], b"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("proxy not ready within 20s:\n{}", self.stderr());
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("proxy running").id()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub(crate) fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }

    pub(crate) fn metrics(&self) -> String {
        http_get(self.admin, "admin", "/metrics").2
    }

    /// The sum of a metric's samples whose line contains every `filter`.
    pub(crate) fn metric_sum(&self, name: &str, filters: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b'{') || l.as_bytes().get(name.len()) == Some(&b' ')))
            .filter(|l| filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    pub(crate) fn config_version(&self) -> u64 {
        self.metric_sum("trefoil_config_version", &[]) as u64
    }

    /// Replaces the config file atomically (write + rename), as editors and deploy tools do.
    pub(crate) fn rewrite(&self, resources: &str) {
        let tmp = self.dir.join("proxy.yaml.tmp");
        std::fs::write(&tmp, format!("{}{resources}", proxy_resource(self.admin, &self.access_log))).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("proxy did not exit within {timeout:?}");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a command to completion with a deadline; panics if it cannot start.
pub(crate) fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} ran over {timeout:?}:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `n` GETs over one keep-alive curl and returns (status, x-served-by) per request.
pub(crate) fn curl_many(url: &str, n: usize, extra: &[&str]) -> Vec<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code} %header{x-served-by}\\n"]).args(extra);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (code, who) = l.split_once(' ').unwrap_or((l, ""));
            Some((code.parse().ok()?, who.trim().to_string()))
        })
        .collect()
}

pub(crate) fn count<'a>(results: &'a [(u16, String)], pred: impl Fn(&(u16, String)) -> bool + 'a) -> usize {
    results.iter().filter(|r| pred(r)).count()
}
