//! A real `trefoil control`: its REST API, its proxy status, `trefoil apply`
//! against it, and kill -9.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use trefoil_api::blocking::Client;
use trefoil_api::ProxyStatus;
use trefoil_model::Resource;

use crate::binaries::trefoil_command;
use crate::client::http_request;
use crate::process::{limit_before_exec, run_with_timeout, Process};
use crate::resources::ToYaml;
use crate::wait::{free_addr, wait_for_port, wait_until};

/// How long starting and awaited conditions may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// The admin token a control plane wrote in data directory `data`.
pub fn admin_token(data: &Path) -> String {
    let file = data.join("admin.token");
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display())).trim().to_string()
}

/// A running control plane; killed (SIGKILL) when dropped.
pub struct Control {
    process: Process,
    client: Client,
    /// The admin token it wrote in its data directory.
    token: String,
    pub data: std::path::PathBuf,
    pub api: SocketAddr,
    /// The config stream's address.
    pub grpc: SocketAddr,
}

impl Control {
    /// On free ports: tests run in parallel, so never the default ones.
    pub fn start(data: &Path) -> Self {
        Self::start_on(data, free_addr(), free_addr())
    }

    /// On given addresses, e.g. those of a control plane this one replaces.
    pub fn start_on(data: &Path, api: SocketAddr, grpc: SocketAddr) -> Self {
        Self::spawn(data, api, grpc, None, true, &[])
    }

    /// On free ports, with more `trefoil control` arguments (`--store ...`).
    pub fn start_with(data: &Path, extra: &[&str]) -> Self {
        Self::spawn(data, free_addr(), free_addr(), None, true, extra)
    }

    /// On free ports, with the config stream as `trefoil up` runs it: TLS,
    /// each proxy held to its SVID. (The others serve it in plaintext, so
    /// that tests of the stream itself can run proxies without identities.)
    pub fn start_authenticated(data: &Path) -> Self {
        Self::spawn(data, free_addr(), free_addr(), None, false, &[])
    }

    /// On free ports, its address space capped at `bytes` from its first
    /// instruction on, so that a regression fails the test instead of the machine.
    pub fn start_capped(data: &Path, bytes: u64) -> Self {
        Self::spawn(data, free_addr(), free_addr(), Some(bytes), true, &[])
    }

    fn spawn(data: &Path, api: SocketAddr, grpc: SocketAddr, address_space: Option<u64>, plaintext_stream: bool, extra: &[&str]) -> Self {
        let mut cmd = trefoil_command();
        cmd.args(["control", "--data"]).arg(data).args(["--listen", &api.to_string(), "--grpc-listen", &grpc.to_string()]).args(extra);
        if plaintext_stream {
            cmd.arg("--insecure-plaintext-stream");
        }
        if let Some(bytes) = address_space {
            limit_before_exec(&mut cmd, libc::RLIMIT_AS, bytes);
        }
        let log = data.with_extension(format!("control-{}.log", api.port()));
        let mut process = Process::spawn_logged("trefoil control", &mut cmd, &log);
        process.wait_for(&format!("the control plane to listen on {api}"), WAIT, || wait_for_port(api, Duration::from_millis(100)));
        // Written before the sockets are bound, so it is there once they are.
        let token = admin_token(data);
        let client = Client::for_addr(api).expect("a runtime for the API client").with_timeout(WAIT).with_token(Some(&token));
        Control { process, client, token, data: data.to_path_buf(), api, grpc }
    }

    /// The admin token it wrote in its data directory (`admin.token`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `trefoil ARGS` with this control plane's `--server` and admin token.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = trefoil_command();
        cmd.args(args).args(["--server", &self.url()]).env("TREFOIL_TOKEN", &self.token);
        cmd
    }

    /// `http://` address of the REST API, for `--server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The typed API client every tool uses (`trefoil-api`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One raw REST call, for tests of the HTTP contract itself; the status
    /// and the JSON body (`Null` if none).
    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.try_call(method, path, body.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// Like [`Control::call`] with any bytes as the body, and a failed
    /// exchange (a connection the server closed early) as an error.
    pub fn try_call(&self, method: &str, path: &str, body: &[u8]) -> io::Result<(u16, Value)> {
        self.call_with(Some(&self.token), method, path, body)
    }

    /// One raw REST call with `token` as the bearer (none: anonymous).
    pub fn call_with(&self, token: Option<&str>, method: &str, path: &str, body: &[u8]) -> io::Result<(u16, Value)> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        let (status, _, body) = http_request(self.api, method, "control", path, &headers, body)?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// `PUT /api/v1/KIND/NAME` of `resource`; panics unless it is created or updated.
    pub fn put(&self, resource: &Resource) {
        if let Err(e) = self.client.apply(resource) {
            panic!("PUT {}/{}: {e}\n{}", resource.kind(), resource.name(), self.log());
        }
    }

    /// `PUT /api/v1/KIND/NAME` of a YAML body.
    pub fn put_yaml(&self, kind: &str, name: &str, body: &str) {
        let (status, reply) = self.call("PUT", &format!("/api/v1/{kind}/{name}"), body);
        assert!(status == 200 || status == 201, "PUT {kind}/{name}: {status} {reply}");
    }

    /// `DELETE /api/v1/KIND/NAME`; panics unless it answers 200.
    pub fn delete(&self, kind: &str, name: &str) {
        if let Err(e) = self.client.delete(kind, name) {
            panic!("DELETE {kind}/{name}: {e}\n{}", self.log());
        }
    }

    /// `trefoil apply` of `resources`, written to a file in `dir`.
    pub fn apply(&self, dir: &Path, resources: impl ToYaml) {
        let file = dir.join("apply.yaml");
        std::fs::write(&file, resources.to_yaml()).expect("writing the file to apply");
        let out = run_with_timeout(&mut self.command(&["apply", "-f", &file.display().to_string()]), Duration::from_secs(60));
        assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The status of proxy `name`, if the control plane lists it.
    pub fn status(&self, name: &str) -> Option<ProxyStatus> {
        let list = self.client.proxies().unwrap_or_else(|e| panic!("GET /api/v1/status/proxies: {e}\n{}", self.log()));
        list.get(name).cloned()
    }

    /// Waits until `name` is connected and has acked the latest snapshot
    /// compiled for it (the API's one in-sync rule).
    pub fn wait_in_sync(&self, name: &str) -> ProxyStatus {
        let mut last = None;
        wait_until(&format!("proxy {name} to ack its latest snapshot"), WAIT, || {
            last = self.status(name);
            last.as_ref().is_some_and(ProxyStatus::in_sync)
        });
        last.expect("wait_until returned, so the status was found")
    }

    /// Its process id, e.g. to cap its memory.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    /// What it wrote on stderr.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// SIGKILL: the crash its store must survive.
    pub fn kill_9(&mut self) {
        self.process.kill();
    }
}
