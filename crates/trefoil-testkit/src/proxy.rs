//! A real `trefoil proxy`: in file mode ([`Proxy`]), configured by a YAML
//! file in its scratch directory that the test can rewrite, or fed by a
//! control plane's config stream ([`StreamProxy`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use trefoil_model::spec::{ProxySpec, TracingSpec};
use trefoil_model::{Metadata, Resource, Spec, API_VERSION};

use crate::binaries::trefoil_command;
use crate::client::{http_get, http_request};
use crate::process::Process;
use crate::resources::ToYaml;
use crate::scratch::scratch_dir;
use crate::wait::{free_addr, wait_for_port};

/// How long a proxy may take to start, and to exit once told to.
const START: Duration = Duration::from_secs(20);

/// The `Proxy` resource [`Proxy`] writes first in its config: the admin
/// listener and the access log where the test expects them, and a drain
/// short enough for tests that stop the proxy.
pub fn proxy_resource(admin: SocketAddr, access_log: &Path) -> Resource {
    let spec = ProxySpec {
        admin,
        access_log: access_log.display().to_string(),
        drain_timeout: trefoil_model::Duration::from_secs(5),
        ..ProxySpec::with_defaults()
    };
    Resource {
        api_version: API_VERSION.to_string(),
        metadata: Metadata { name: "test".into(), ..Metadata::default() },
        spec: Spec::Proxy(spec),
    }
}

/// A `trefoil proxy --config` in a scratch directory; killed (SIGKILL) when dropped.
pub struct Proxy {
    process: Process,
    pub dir: PathBuf,
    /// The config file the proxy watches.
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub access_log: PathBuf,
    /// Its own resource, written first in the config.
    proxy: Resource,
    /// The rest of the config, as last written.
    resources: String,
}

impl Proxy {
    /// Writes `resources` (without a Proxy resource: [`proxy_resource`] is
    /// added) and starts the proxy; returns once it is ready.
    pub fn start(resources: impl ToYaml) -> Self {
        Self::start_with_admin(free_addr(), resources)
    }

    /// Like [`Proxy::start`], with the admin listener on `admin` (known before the proxy runs).
    pub fn start_with_admin(admin: SocketAddr, resources: impl ToYaml) -> Self {
        let dir = scratch_dir();
        let access_log = dir.join("access.log");
        let config = dir.join("proxy.yaml");
        let proxy = proxy_resource(admin, &access_log);
        let resources = resources.to_yaml();
        std::fs::write(&config, format!("{}---\n{resources}", proxy.to_yaml())).expect("writing the proxy's config");
        let process = Process::spawn_logged(
            "trefoil proxy",
            trefoil_command().args(["proxy", "--config"]).arg(&config).args(["--watch-interval", "100ms", "--log-level", "info"]),
            &dir.join("proxy.stderr"),
        );
        let mut proxy = Proxy { process, dir, config, admin, access_log, proxy, resources };
        proxy.wait_ready();
        proxy
    }

    /// Waits until `/ready` answers 200; panics with its log if it exits or 20 s pass.
    pub fn wait_ready(&mut self) {
        let admin = self.admin;
        self.process
            .wait_for("/ready to answer 200", START, || matches!(http_request(admin, "GET", "admin", "/ready", &[], b""), Ok((200, _, _))));
    }

    /// Its process id, e.g. to set its limits.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// What it wrote on stderr: its log.
    pub fn stderr(&self) -> String {
        self.process.log()
    }

    /// Its access log (JSON lines) so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }

    /// Its admin `/metrics`.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "admin", "/metrics").2
    }

    /// The sum of a metric's samples whose line contains every `filter`.
    pub fn metric_sum(&self, name: &str, filters: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' ')))
            .filter(|l| filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// The version of the config it runs (`trefoil_config_version`): 1, then one more per reload.
    pub fn config_version(&self) -> u64 {
        self.metric_sum("trefoil_config_version", &[]) as u64
    }

    /// Replaces the resources after its own, atomically (write + rename), as editors and deploy tools do.
    pub fn rewrite(&mut self, resources: impl ToYaml) {
        self.resources = resources.to_yaml();
        self.write_config();
    }

    /// Rewrites its own resource to export spans to `otlp_endpoint`; a
    /// standalone proxy exports only when its Proxy resource says where.
    pub fn export_traces_to(&mut self, otlp_endpoint: &str) {
        if let Spec::Proxy(spec) = &mut self.proxy.spec {
            spec.tracing = Some(TracingSpec { otlp_endpoint: otlp_endpoint.to_string(), service_name: None, sampling_percent: 100.0 });
        }
        self.write_config();
    }

    fn write_config(&self) {
        let tmp = self.dir.join("proxy.yaml.tmp");
        std::fs::write(&tmp, format!("{}---\n{}", self.proxy.to_yaml(), self.resources)).expect("writing the proxy's new config");
        std::fs::rename(&tmp, &self.config).expect("replacing the proxy's config");
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`: reload; `libc::SIGTERM`: drain and exit).
    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.process.wait_exit(timeout)
    }
}

/// A `trefoil proxy --control` fed by a control plane's config stream;
/// killed (SIGKILL) when dropped.
pub struct StreamProxy {
    process: Process,
    pub admin: SocketAddr,
}

impl StreamProxy {
    /// Starts proxy `name` with `threads` workers against the config stream
    /// at `grpc`, its log in `dir`; returns once its admin listener accepts
    /// (not once ready: without a snapshot it is not).
    pub fn start(dir: &Path, grpc: SocketAddr, name: &str, threads: u32) -> Self {
        Self::start_with_controls(dir, &grpc.to_string(), name, threads)
    }

    /// [`StreamProxy::start`] with `--control` as given (`a,b`: replicas).
    pub fn start_with_controls(dir: &Path, controls: &str, name: &str, threads: u32) -> Self {
        let admin = free_addr();
        let mut process = Process::spawn_logged(
            &format!("trefoil proxy --control (proxy {name})"),
            trefoil_command()
                .args(["proxy", "--control", controls, "--name", name, "--admin", &admin.to_string()])
                .args(["--threads", &threads.to_string()])
                // Plain log lines, so fields read as `key=value`.
                .env("NO_COLOR", "1"),
            &dir.join(format!("proxy-{name}-{}.log", admin.port())),
        );
        process.wait_for("its admin listener", START, || wait_for_port(admin, Duration::from_millis(100)));
        StreamProxy { process, admin }
    }

    /// The status of its `/ready` (0 if it does not answer).
    pub fn ready(&self) -> u16 {
        http_request(self.admin, "GET", "admin", "/ready", &[], b"").map(|r| r.0).unwrap_or(0)
    }

    /// What it wrote on stderr: its log.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Sends it `signal` (SIGSTOP: a proxy that stops answering; SIGCONT to resume).
    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// SIGTERM, then its exit code once it has drained.
    pub fn terminate(&mut self) -> Option<i32> {
        self.process.signal(libc::SIGTERM);
        self.process.wait_exit(START)
    }
}
