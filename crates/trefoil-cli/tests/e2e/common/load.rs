//! Live HTTP traffic for black-box tests: `tests/mesh/traffic.py` as a
//! client of a gateway, counting every response and failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{repo_root, wait_until};

/// `tests/mesh/traffic.py` sending requests until `stop` exists.
pub(crate) struct Load {
    child: Child,
    stop: PathBuf,
}

impl Load {
    pub(crate) fn start(dir: &Path, gateway: SocketAddr) -> Load {
        Self::start_as(dir, gateway, "load", &[])
    }

    /// One of several clients: `name` keeps its files apart; `extra` are
    /// more arguments for traffic.py (e.g. `--header x-canary:yes`).
    pub(crate) fn start_as(dir: &Path, gateway: SocketAddr, name: &str, extra: &[&str]) -> Load {
        let (stop, ready) = (dir.join(format!("{name}.stop")), dir.join(format!("{name}.ready")));
        let child = Command::new("python3")
            .arg(repo_root().join("tests/mesh/traffic.py"))
            .args(["--target", &gateway.to_string(), "--max-seconds", "120", "--interval", "0.005"])
            .args(extra)
            .arg("--until")
            .arg(&stop)
            .arg("--ready")
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 tests/mesh/traffic.py");
        wait_until("the Python client's first response", Duration::from_secs(30), || ready.exists());
        Load { child, stop }
    }

    /// Stops the client; its JSON summary.
    pub(crate) fn finish(self) -> Value {
        std::fs::write(&self.stop, b"").unwrap();
        let out = self.child.wait_with_output().expect("waiting for the Python client");
        assert!(out.status.success(), "traffic.py failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("traffic.py printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }
}
