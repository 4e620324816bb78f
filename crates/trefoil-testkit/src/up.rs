//! A real `trefoil up`: start it on resource files, read its `up.json`, call
//! its control plane, stop it with a signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use trefoil_api::blocking::Client;
use trefoil_api::ProxyStatus;
use trefoil_model::spec::{DiscoveredEndpoint, EndpointsSpec};
use trefoil_model::{Resource, ResourceVersion};

use crate::binaries::{repo_root, trefoil_command};
use crate::process::{log_file, run_with_timeout, Process};
use crate::resources::{FromSpec, ToYaml};
use crate::scratch::scratch_dir;

/// How long start-up and each awaited condition may take.
pub const START: Duration = Duration::from_secs(60);

/// A running `trefoil up`; interrupted (then killed) when dropped.
pub struct Up {
    process: Option<Process>,
    client: OnceLock<Client>,
    pub dir: PathBuf,
    pub state: PathBuf,
}

impl Up {
    /// Writes `files` as `files/mesh.yaml` in a scratch directory and runs `up -f files`.
    pub fn start(files: impl ToYaml) -> Self {
        Self::start_in(scratch_dir(), files)
    }

    /// Starts in `dir`, reusing its state directory if an earlier run left one.
    pub fn start_in(dir: PathBuf, files: impl ToYaml) -> Self {
        std::fs::create_dir_all(dir.join("files")).expect("creating the files directory");
        std::fs::write(dir.join("files").join("mesh.yaml"), files.to_yaml()).expect("writing the mesh's resources");
        Self::start_on(dir.clone(), &dir.join("files"), &[])
    }

    /// [`Up::start`] with extra arguments to `up` (`--svid-lifetime 6s`).
    pub fn start_with_args(files: impl ToYaml, extra: &[&str]) -> Self {
        let dir = scratch_dir();
        std::fs::create_dir_all(dir.join("files")).expect("creating the files directory");
        std::fs::write(dir.join("files").join("mesh.yaml"), files.to_yaml()).expect("writing the mesh's resources");
        let mut cmd = Self::command(&dir, &dir.join("files"));
        cmd.args(extra).args(["-o", "json"]).stdout(log_file(&dir.join("stdout"))).stderr(log_file(&dir.join("stderr")));
        Self::spawn(dir, cmd)
    }

    /// `up -f files` with extra environment, its state and output in `dir`.
    pub fn start_on(dir: PathBuf, files: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Self::command(&dir, files);
        cmd.envs(env.iter().copied()).args(["-o", "json"]).stdout(log_file(&dir.join("stdout"))).stderr(log_file(&dir.join("stderr")));
        Self::spawn(dir, cmd)
    }

    /// `up` on `files` as a person runs it with `2>&1` into a file: the
    /// table summary, and progress and summary in one stream (`stdout()`
    /// and `stderr()` both read it), in the order they were written.
    pub fn start_one_stream(files: impl ToYaml) -> Self {
        let dir = scratch_dir();
        std::fs::create_dir_all(dir.join("files")).expect("creating the files directory");
        std::fs::write(dir.join("files").join("mesh.yaml"), files.to_yaml()).expect("writing the mesh's resources");
        let output = std::fs::File::create(dir.join("stdout")).expect("creating the output file");
        let both = output.try_clone().expect("a second descriptor of the output file");
        std::os::unix::fs::symlink("stdout", dir.join("stderr")).expect("linking stderr to the one output");
        let mut cmd = Self::command(&dir, &dir.join("files"));
        cmd.stdout(output).stderr(both);
        Self::spawn(dir, cmd)
    }

    fn command(dir: &Path, files: &Path) -> std::process::Command {
        let mut cmd = trefoil_command();
        cmd.args(["up", "-f"])
            .arg(files)
            .arg("--state")
            .arg(dir.join("state"))
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--admin-base", "0"])
            .stdin(std::process::Stdio::null());
        cmd
    }

    fn spawn(dir: PathBuf, mut cmd: std::process::Command) -> Self {
        let process = Process::spawn("trefoil up", &mut cmd);
        Up { process: Some(process), client: OnceLock::new(), state: dir.join("state"), dir }
    }

    /// Its progress and errors so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Its summary (`-o json`), once it printed it.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// `up.json`, once it exists.
    pub fn view(&self) -> Value {
        std::fs::read(self.state.join("up.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
    }

    /// One process of `up.json` (`control`, `web-0`, `web-0-sidecar`...).
    pub fn process(&self, name: &str) -> Value {
        self.view()["processes"][name].clone()
    }

    /// The control plane's REST API.
    pub fn api(&self) -> SocketAddr {
        let url = self.view()["api"].as_str().expect("up.json names the API").to_string();
        url.trim_start_matches("http://").parse().expect("up.json's API is an address")
    }

    /// The typed client of its control plane (`trefoil-api`), made on first use.
    pub fn client(&self) -> &Client {
        self.client.get_or_init(|| {
            Client::for_addr(self.api()).expect("a runtime for the API client").with_timeout(START).with_token(Some(&self.token()))
        })
    }

    /// The stored `kind`/`name`; `None` while the API does not answer with it.
    pub fn resource(&self, kind: &str, name: &str) -> Option<Resource> {
        self.client().find(kind, name).ok().flatten()
    }

    /// The stored `kind`/`name`'s spec, if stored and of type `T`.
    pub fn spec<T: FromSpec>(&self, kind: &str, name: &str) -> Option<T> {
        T::from_spec(self.resource(kind, name)?.spec)
    }

    /// The `metadata.resourceVersion` of `kind`/`name`, if stored.
    pub fn resource_version(&self, kind: &str, name: &str) -> Option<ResourceVersion> {
        self.resource(kind, name)?.metadata.resource_version?.parse().ok()
    }

    /// Every proxy the control plane knows; empty while it does not answer.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.client().proxies().map(|list| list.items).unwrap_or_default()
    }

    /// Polls `cond` every 50 ms for up to a minute; panics with `up.json`
    /// and the log if `trefoil up` exits first or the time passes.
    pub fn wait(&mut self, what: &str, cond: impl Fn(&Up) -> bool) {
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if let Some(process) = self.process.as_mut() {
                if let Some(status) = process.exited() {
                    panic!("trefoil up exited with {status} while waiting for {what}:\n{}", self.stderr());
                }
            }
            if cond(self) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}\nup.json: {:#}\nstderr:\n{}", self.view(), self.stderr());
    }

    /// Waits until every one of `apps` (process names) is ready.
    pub fn wait_ready(&mut self, apps: &[&str]) {
        self.wait("every app ready", |u| apps.iter().all(|a| u.process(a)["ready"] == true));
    }

    /// Waits for `up`'s summary on stdout, which it prints once every proxy
    /// has acknowledged a snapshot with the ready replicas: from then on
    /// traffic can flow everywhere.
    pub fn wait_up(&mut self) {
        self.wait("trefoil up's summary (every proxy in sync)", |u| u.stdout().contains("\"gateways\""));
    }

    /// Sends `signal` to `trefoil up` and waits for its exit code.
    pub fn stop_with(&mut self, signal: i32) -> Option<i32> {
        let mut process = self.process.take()?;
        process.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Some(status) = process.exited() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(50));
        }
        process.kill();
        panic!("trefoil up did not exit after signal {signal}:\n{}", self.stderr());
    }

    /// `trefoil logs ARGS` on this run's state.
    pub fn logs(&self, args: &[&str]) -> Output {
        trefoil_command().arg("logs").args(args).arg("--state").arg(&self.state).output().expect("running trefoil logs")
    }

    /// The admin token its control plane wrote in the state directory.
    pub fn token(&self) -> String {
        crate::control::admin_token(&self.state.join("data"))
    }

    /// `trefoil ARGS --server <this mesh's API>` with its admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        let server = format!("http://{}", self.api());
        run_with_timeout(
            trefoil_command().args(args).args(["--server", &server]).env("TREFOIL_TOKEN", self.token()),
            Duration::from_secs(30),
        )
    }

    /// `trefoil apply -f FILE` against this mesh; panics unless it succeeds.
    pub fn apply(&self, file: &Path) {
        let out = self.cli(&["apply", "-f", &file.display().to_string()]);
        assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Whether every proxy is connected and has acknowledged `version` or newer.
    pub fn all_acked(&self, version: ResourceVersion) -> bool {
        let proxies = self.proxies();
        !proxies.is_empty() && proxies.iter().all(|p| p.connected && p.acked_version >= Some(version))
    }

    /// The endpoints of `Endpoints/<service>`, as the runtime published them.
    pub fn endpoints(&self, service: &str) -> Vec<DiscoveredEndpoint> {
        self.spec::<EndpointsSpec>("Endpoints", service).map(|s| s.endpoints).unwrap_or_default()
    }

    /// The replica numbers of `service`'s ready endpoints.
    pub fn ready_replicas(&self, service: &str) -> Vec<u32> {
        self.endpoints(service).iter().filter(|e| e.ready).map(|e| e.replica).collect()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // Not after it exited on its own: there is nothing left to signal.
        if self.process.as_mut().is_some_and(Process::running) {
            let _ = self.stop_with(libc::SIGINT);
        }
    }
}

/// The quickstart example (`examples/quickstart/mesh.yaml`, the mesh
/// `trefoil demo` runs) with its gateway on `gateway` instead of port 8080.
pub fn quickstart_mesh(gateway: SocketAddr) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart/mesh.yaml")).expect("reading the quickstart example");
    assert!(text.contains("127.0.0.1:8080"), "the quickstart's gateway address moved");
    text.replace("127.0.0.1:8080", &gateway.to_string())
}

/// [`quickstart_mesh`] as typed resources, for tests that change it.
pub fn quickstart_resources(gateway: SocketAddr) -> Vec<Resource> {
    let loaded = trefoil_model::load_str(&"examples/quickstart/mesh.yaml".into(), &quickstart_mesh(gateway))
        .unwrap_or_else(|e| panic!("the quickstart example does not load: {e:?}"));
    loaded.into_iter().map(|r| r.resource).collect()
}

/// The pids of every process in an `up.json`.
pub fn pids(view: &Value) -> Vec<u64> {
    view["processes"].as_object().into_iter().flatten().filter_map(|(_, p)| p["pid"].as_u64()).collect()
}
