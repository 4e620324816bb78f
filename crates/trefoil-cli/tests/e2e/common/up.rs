//! A real `trefoil up` for black-box tests: start it on files, read its
//! `up.json`, call its control plane, stop it with a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{run_with_timeout, scratch_dir, trefoil_bin};

/// How long start-up and each awaited condition may take.
pub(crate) const START: Duration = Duration::from_secs(60);

/// A running `trefoil up`; interrupted (then killed) when dropped.
pub(crate) struct Up {
    child: Option<Child>,
    pub dir: PathBuf,
    pub state: PathBuf,
}

impl Up {
    pub(crate) fn start(files: &str) -> Self {
        Self::start_in(scratch_dir(), files)
    }

    /// Starts in `dir`, reusing its state directory if an earlier run left one.
    pub(crate) fn start_in(dir: PathBuf, files: &str) -> Self {
        std::fs::create_dir_all(dir.join("files")).unwrap();
        std::fs::write(dir.join("files").join("mesh.yaml"), files).unwrap();
        Self::start_on(dir.clone(), &dir.join("files"), &[])
    }

    /// `up -f files` with extra environment, its state and output in `dir`.
    pub(crate) fn start_on(dir: PathBuf, files: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let state = dir.join("state");
        let child = Command::new(trefoil_bin())
            .args(["up", "-f"])
            .arg(files)
            .envs(env.iter().copied())
            .arg("--state")
            .arg(&state)
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--admin-base", "0", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("starting trefoil up");
        Up { child: Some(child), dir, state }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// `up.json`, once it exists.
    pub(crate) fn view(&self) -> Value {
        std::fs::read(self.state.join("up.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
    }

    pub(crate) fn process(&self, name: &str) -> Value {
        self.view()["processes"][name].clone()
    }

    pub(crate) fn api(&self) -> SocketAddr {
        let url = self.view()["api"].as_str().expect("up.json names the API").to_string();
        url.trim_start_matches("http://").parse().unwrap()
    }

    /// GET on the control plane's API; `Null` unless it answers 200 with JSON.
    pub(crate) fn get(&self, path: &str) -> Value {
        match trefoil_testkit::http_request(self.api(), "GET", "control", path, &[], b"") {
            Ok((200, _, body)) => serde_json::from_slice(&body).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    pub(crate) fn wait(&mut self, what: &str, cond: impl Fn(&Up) -> bool) {
        let deadline = std::time::Instant::now() + START;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("trefoil up exited with {status} while waiting for {what}:\n{}", self.stderr());
            }
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}\nup.json: {:#}\nstderr:\n{}", self.view(), self.stderr());
    }

    pub(crate) fn wait_ready(&mut self, apps: &[&str]) {
        self.wait("every app ready", |u| apps.iter().all(|a| u.process(a)["ready"] == true));
    }

    /// Waits for `up`'s summary on stdout, which it prints once every proxy
    /// has acknowledged a snapshot with the ready replicas: from then on
    /// traffic can flow everywhere.
    pub(crate) fn wait_up(&mut self) {
        self.wait("trefoil up's summary (every proxy in sync)", |u| u.stdout().contains("\"gateways\""));
    }

    /// Sends `signal` to `trefoil up` and waits for its exit code.
    pub(crate) fn stop_with(&mut self, signal: i32) -> Option<i32> {
        let mut child = self.child.take()?;
        trefoil_testkit::send_signal(child.id(), signal);
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("trefoil up did not exit after signal {signal}:\n{}", self.stderr());
    }

    pub(crate) fn logs(&self, args: &[&str]) -> std::process::Output {
        Command::new(trefoil_bin()).arg("logs").args(args).arg("--state").arg(&self.state).output().expect("running trefoil logs")
    }
}

impl Up {
    /// `trefoil ARGS --server <this mesh's API>`.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        let server = format!("http://{}", self.api());
        run_with_timeout(Command::new(trefoil_bin()).args(args).args(["--server", &server]), Duration::from_secs(30))
    }

    /// Whether every proxy is connected and has acknowledged `version` or newer.
    pub(crate) fn all_acked(&self, version: u64) -> bool {
        let items = self.get("/api/v1/status/proxies")["items"].as_array().cloned().unwrap_or_default();
        !items.is_empty() && items.iter().all(|p| p["connected"] == true && p["ackedVersion"].as_u64().unwrap_or(0) >= version)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_with(libc::SIGINT);
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
pub(crate) fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

pub(crate) fn pids(view: &Value) -> Vec<u64> {
    view["processes"].as_object().into_iter().flatten().filter_map(|(_, p)| p["pid"].as_u64()).collect()
}

pub(crate) fn endpoints(up: &Up, service: &str) -> Vec<Value> {
    up.get(&format!("/api/v1/endpoints/{service}"))["spec"]["endpoints"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn ready_replicas(up: &Up, service: &str) -> Vec<u64> {
    endpoints(up, service).iter().filter(|e| e["ready"] == true).filter_map(|e| e["replica"].as_u64()).collect()
}
