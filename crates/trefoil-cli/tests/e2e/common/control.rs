//! A real `trefoil control` for black-box tests: its REST API, its proxy
//! status, `trefoil apply` against it, and kill -9.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{addr, http_request, run_with_timeout, trefoil_bin, wait_for_port, wait_until};

/// How long starting and awaited conditions may take.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A running control plane; killed (SIGKILL) when dropped.
pub(crate) struct Control {
    child: Child,
    pub api: SocketAddr,
    /// The config stream's address.
    pub grpc: SocketAddr,
    stderr: PathBuf,
}

impl Control {
    /// On free ports: tests run in parallel, so never the default ones.
    pub(crate) fn start(data: &Path) -> Self {
        Self::start_on(data, addr(), addr())
    }

    /// On given addresses, e.g. those of a control plane this one replaces.
    pub(crate) fn start_on(data: &Path, api: SocketAddr, grpc: SocketAddr) -> Self {
        let stderr = data.with_extension(format!("control-{}.log", api.port()));
        let child = Command::new(trefoil_bin())
            .args(["control", "--data"])
            .arg(data)
            .args(["--listen", &api.to_string(), "--grpc-listen", &grpc.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting trefoil control");
        assert!(wait_for_port(api, WAIT), "control plane did not listen on {api}");
        Control { child, api, grpc, stderr }
    }

    /// `http://` address of the REST API, for `--server`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// One REST call; the status and the JSON body (`Null` if none).
    pub(crate) fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, _, body) = http_request(self.api, method, "control", path, &[], body.as_bytes()).unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub(crate) fn put(&self, kind: &str, name: &str, body: &str) {
        let (status, reply) = self.call("PUT", &format!("/api/v1/{kind}/{name}"), body);
        assert!(status == 200 || status == 201, "PUT {kind}/{name}: {status} {reply}");
    }

    pub(crate) fn delete(&self, kind: &str, name: &str) {
        let (status, reply) = self.call("DELETE", &format!("/api/v1/{kind}/{name}"), "");
        assert_eq!(status, 200, "DELETE {kind}/{name}: {reply}");
    }

    /// `trefoil apply` of `yaml`, written to a file in `dir`.
    pub(crate) fn apply(&self, dir: &Path, yaml: &str) {
        let file = dir.join("apply.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = run_with_timeout(
            Command::new(trefoil_bin()).args(["apply", "-f", file.to_str().unwrap(), "--server", &self.url()]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The status of proxy `name`, if the control plane lists it.
    pub(crate) fn status(&self, name: &str) -> Option<Value> {
        let (status, list) = self.call("GET", "/api/v1/status/proxies", "");
        assert_eq!(status, 200);
        list["items"].as_array()?.iter().find(|p| p["name"] == name).cloned()
    }

    /// Waits until `name` is connected and has acked the latest snapshot compiled for it.
    pub(crate) fn wait_in_sync(&self, name: &str) -> Value {
        let mut last = None;
        wait_until(&format!("proxy {name} to ack its latest snapshot"), WAIT, || {
            last = self.status(name);
            last.as_ref().is_some_and(|s| s["connected"] == true && !s["ackedVersion"].is_null() && s["ackedVersion"] == s["latestVersion"])
        });
        last.unwrap()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote on stderr.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub(crate) fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill_9();
    }
}
