//! `TestServer`: the `trefoil-testserver` upstream as a child process of
//! the test, on a port it picks itself, killed with the test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::binaries::testserver_path;
use crate::client::{http_request, Headers};

/// How long `TestServer` waits for the `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `trefoil-testserver`, killed when dropped.
pub struct TestServer {
    child: Child,
    addr: SocketAddr,
    // Held open so the server (started with --exit-on-stdin-close) exits when
    // this test process dies without running Drop.
    _stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts a server on a free loopback port with `--name name`.
    pub fn named(name: &str) -> Self {
        Self::spawn(&["--name", name])
    }

    /// Starts a server with extra command-line arguments (see `trefoil-testserver
    /// --help`). Adds `--listen 127.0.0.1:0` unless `args` has `--listen`.
    /// Panics if the binary is missing or does not report readiness in 20 s.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_binary(&testserver_path(), args)
    }

    /// Like [`TestServer::spawn`] with an explicit binary path.
    pub fn spawn_binary(binary: &Path, args: &[&str]) -> Self {
        if !binary.is_file() {
            panic!(
                "trefoil-testserver not found at {}; build it first with \
                 `cargo build -p trefoil-testkit --bins` (or `cargo build --workspace --bins`), \
                 or set TREFOIL_TESTSERVER to its path",
                binary.display()
            );
        }
        let mut cmd = Command::new(binary);
        if !args.iter().any(|a| *a == "--listen" || a.starts_with("--listen=")) {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args).arg("--exit-on-stdin-close").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", binary.display()));

        let stderr = Arc::new(Mutex::new(String::new()));
        // Drain both pipes for the child's whole life so it never blocks on a
        // full pipe; stderr is kept for failure messages.
        let err_pipe = child.stderr.take().expect("child stderr is piped");
        let err_buf = stderr.clone();
        let err_thread = thread::spawn(move || {
            let mut reader = BufReader::new(err_pipe);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                err_buf.lock().unwrap_or_else(|e| e.into_inner()).push_str(&line);
                line.clear();
            }
        });
        let out_pipe = child.stdout.take().expect("child stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });

        let addr = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let _ = err_thread.join();
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no `listening on` line within {STARTUP_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited before listening ({status:?})")
                    }
                };
                panic!("trefoil-testserver {args:?}: {why}; stderr:\n{}", stderr.lock().unwrap_or_else(|e| e.into_inner()));
            }
        };
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("trefoil-testserver printed unparsable address {addr:?}: {e}"));
        let stdin = child.stdin.take();
        TestServer { child, addr, _stdin: stdin, stderr }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for configs that take a URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `GET /__stats`: `{"requests": N, "by_path": {path: N}}`, where N excludes
    /// `/healthz` and `/__*` control paths.
    pub fn stats(&self) -> serde_json::Value {
        let (status, _, body) = self.control("GET", "/__stats");
        assert_eq!(status, 200, "GET /__stats on {} answered {status}", self.addr);
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("GET /__stats on {} returned invalid JSON ({e}): {}", self.addr, String::from_utf8_lossy(&body)))
    }

    /// Total counted requests (`stats()["requests"]`).
    pub fn requests(&self) -> u64 {
        self.stats()["requests"].as_u64().expect("stats has a numeric `requests`")
    }

    /// Counted requests for one path (0 if never requested).
    pub fn requests_for(&self, path: &str) -> u64 {
        self.stats()["by_path"][path].as_u64().unwrap_or(0)
    }

    /// `POST /__stats/reset`; also restarts the `--fail-every` sequence.
    pub fn reset_stats(&self) {
        let (status, _, _) = self.control("POST", "/__stats/reset");
        assert_eq!(status, 200, "POST /__stats/reset on {} answered {status}", self.addr);
    }

    /// Makes `/healthz` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        let path = if healthy { "/__health/ok" } else { "/__health/fail" };
        let (status, _, _) = self.control("POST", path);
        assert_eq!(status, 200, "POST {path} on {} answered {status}", self.addr);
    }

    fn control(&self, method: &str, path: &str) -> (u16, Headers, Vec<u8>) {
        http_request(self.addr, method, &self.addr.to_string(), path, &[], b"")
            .unwrap_or_else(|e| panic!("{method} {path} on testserver {}: {e}; stderr:\n{}", self.addr, self.stderr()))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The headers the upstream received, from a `TestServer`'s `/echo` answer.
pub fn echoed(body: &str) -> serde_json::Value {
    crate::client::json(body)["headers"].clone()
}
