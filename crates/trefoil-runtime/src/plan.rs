//! From validated resources to the list of processes to run: what each one
//! is, its command line, environment, addresses and readiness probe. Pure
//! apart from asking the OS for free ports, so it is tested without running
//! anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trefoil_model::spec::{DiscoveredEndpoint, EndpointsSpec, ProxySpec, SidecarSpec, WorkloadSpec};
use trefoil_model::{Metadata, Resource, Spec, API_VERSION};

use crate::expand::{expand, ExpandError};
use crate::ports::PortAllocator;

/// Label on every resource the runtime writes, so people can tell them apart.
pub const MANAGED_BY: (&str, &str) = ("trefoil.dev/managed-by", "runtime");

/// What a process is to the mesh; decides the stop order (apps first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Control,
    Gateway,
    Sidecar,
    App,
    /// The node's datapath agent (`trefoil datapath agent`).
    Datapath,
}

/// How to tell that a process serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `GET path` answers 2xx.
    Http { addr: SocketAddr, path: String },
    /// The address accepts a TCP connection.
    Tcp(SocketAddr),
    /// The file exists: the process writes it once it serves. The supervisor
    /// removes it before each start, so a file left by a killed process
    /// does not say its successor is ready.
    File(PathBuf),
}

/// One process to run and keep running.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Unique; names the log file `logs/<name>.log`.
    pub name: String,
    pub role: Role,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Set on top of the environment `trefoil up` runs in.
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    /// Named addresses shown in `up.json` (`app`, `admin`, `inbound`, ...).
    pub addresses: BTreeMap<String, String>,
    pub probe: Probe,
    /// For proxies: the workload identity a fresh join token proves, minted
    /// at each start (a restarted proxy has a new key and needs a new one).
    pub join: Option<Join>,
}

/// Where a proxy's join token comes from, and for which identity.
#[derive(Clone, Debug)]
pub struct Join {
    pub namespace: String,
    pub workload: String,
    pub minter: JoinMinter,
}

/// The environment variable a proxy reads its join token from: never the
/// command line, which every user on the machine can read.
pub const JOIN_TOKEN_VAR: &str = "TREFOIL_JOIN_TOKEN";

/// Mints one-use join tokens for `(namespace, workload)`; given by whoever
/// runs the control plane (the runtime does not know how tokens are kept).
#[derive(Clone)]
pub struct JoinMinter(pub std::sync::Arc<MintFn>);

/// `(namespace, workload)` to a token, or why none was minted.
pub type MintFn = dyn Fn(&str, &str) -> Result<String, String> + Send + Sync;

impl std::fmt::Debug for JoinMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinMinter")
    }
}

impl Join {
    /// `spec` with a new join token in its environment; unchanged (logged) if none can be minted.
    pub fn apply(&self, spec: &ProcessSpec) -> ProcessSpec {
        let mut spec = spec.clone();
        match (self.minter.0)(&self.namespace, &self.workload) {
            Ok(token) => {
                spec.env.insert(JOIN_TOKEN_VAR.to_string(), token);
            }
            Err(e) => tracing::warn!(process = %spec.name, error = %e, "cannot mint a join token; the proxy starts without an identity"),
        }
        spec
    }
}

/// One replica of a workload: its app, its sidecar and how it is discovered.
#[derive(Clone, Debug)]
pub struct ReplicaPlan {
    pub workload: String,
    pub service: String,
    pub version: String,
    pub index: u32,
    pub app: ProcessSpec,
    pub sidecar: ProcessSpec,
    /// The sidecar's `Proxy` resource (named `<workload>-<index>`).
    pub proxy: Resource,
    /// Where other proxies send this replica's traffic: the sidecar's inbound listener.
    pub inbound: SocketAddr,
}

/// Everything `trefoil up` runs, in start order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub control: ProcessSpec,
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    pub gateways: Vec<ProcessSpec>,
    pub replicas: Vec<ReplicaPlan>,
    /// `http(s)://address` of every listener a gateway serves.
    pub gateway_urls: Vec<String>,
    /// The node's datapath agent, when it runs.
    pub datapath: Option<ProcessSpec>,
}

/// What the node's datapath agent programs, when `trefoil up` runs one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPlan {
    /// This node's name (rules naming another node are left out).
    pub node: String,
    /// Where client and server traffic enters the node.
    pub interfaces: Vec<String>,
}

/// What the plan is built from, besides the resources.
pub struct PlanContext<'a> {
    /// The `trefoil` binary, run as `control` and `proxy`.
    pub exe: &'a Path,
    /// Absolute state directory (`data/`, `logs/`).
    pub state: &'a Path,
    /// Where relative workload commands are found and apps run: the directory of the files.
    pub workdir: &'a Path,
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    /// The environment `trefoil up` runs in, for `${VAR}` not set by the runtime or workload.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The datapath agent to run, if any.
    pub datapath: Option<&'a AgentPlan>,
    /// The mesh identity settings and the join tokens proxies prove theirs with.
    pub identity: &'a IdentityPlan,
}

/// How the control plane issues identities, and how proxies get theirs.
#[derive(Clone, Debug)]
pub struct IdentityPlan {
    pub trust_domain: String,
    pub svid_lifetime: std::time::Duration,
    /// `None`: proxies start without a join token (and get no SVID).
    pub minter: Option<JoinMinter>,
    /// The mesh root (a PEM file the control plane writes at its first
    /// start): proxies and the node agent verify the config stream's TLS
    /// certificate against it. `None`: the stream is plaintext.
    pub trust_bundle: Option<PathBuf>,
    /// More arguments for the control plane (an operator's CA files).
    pub control_args: Vec<String>,
}

/// The environment variable naming the trust bundle file.
pub const TRUST_BUNDLE_VAR: &str = "TREFOIL_TRUST_BUNDLE";

/// `spec` told where the trust bundle is, if there is one.
fn with_bundle(ctx: &PlanContext<'_>, spec: &mut ProcessSpec) {
    if let Some(bundle) = &ctx.identity.trust_bundle {
        spec.env.insert(TRUST_BUNDLE_VAR.to_string(), bundle.display().to_string());
    }
}

/// The namespace workloads of `trefoil up` live in.
pub const NAMESPACE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("Workload {workload}: {field}: {source}")]
    Expand { workload: String, field: String, source: ExpandError },
    #[error("two processes would be named {0:?} (a gateway Proxy is named like the control plane or a workload replica); rename one")]
    NameClash(String),
    #[error("cannot allocate a port: {0}")]
    Ports(#[from] std::io::Error),
}

/// Builds the plan; ports come from `ports` (which must outlive the starts).
pub fn build(resources: &[Resource], ctx: &PlanContext<'_>, ports: &mut PortAllocator) -> Result<Plan, PlanError> {
    let api = ports.resolve(ctx.api)?;
    let grpc = ports.resolve(ctx.grpc)?;
    let exe = ctx.exe.to_path_buf();
    let control = ProcessSpec {
        name: "control".into(),
        role: Role::Control,
        program: exe.clone(),
        args: vec![
            "control".into(),
            "--data".into(),
            ctx.state.join("data").display().to_string(),
            "--listen".into(),
            api.to_string(),
            "--grpc-listen".into(),
            grpc.to_string(),
            "--trust-domain".into(),
            ctx.identity.trust_domain.clone(),
            "--svid-lifetime".into(),
            humantime::format_duration(ctx.identity.svid_lifetime).to_string(),
        ]
        .into_iter()
        .chain(ctx.identity.control_args.iter().cloned())
        .collect(),
        env: BTreeMap::new(),
        cwd: None,
        addresses: BTreeMap::from([("api".into(), format!("http://{api}")), ("grpc".into(), grpc.to_string())]),
        probe: Probe::Http { addr: api, path: "/api/v1/openapi.json".into() },
        join: None,
    };

    // Gateways first so their admin ports come right after --admin-base.
    let mut gateways = Vec::new();
    for r in resources {
        if let Spec::Proxy(p) = &r.spec {
            if p.sidecar.is_none() {
                let admin = ports.admin()?;
                let mut gateway = proxy_process(&exe, grpc, r.name(), r.name(), Role::Gateway, admin, BTreeMap::new());
                gateway.join = join(ctx, r.name());
                with_bundle(ctx, &mut gateway);
                gateways.push(gateway);
            }
        }
    }
    let gateway_names: BTreeSet<&str> = gateways.iter().map(|g| g.name.as_str()).collect();
    let gateway_urls = resources
        .iter()
        .filter_map(|r| match &r.spec {
            // A transparent listener takes redirected connections, not requests addressed to it.
            Spec::Listener(l)
                if l.service.is_none()
                    && !l.transparent
                    && !gateway_names.is_empty()
                    && l.proxy.as_deref().map(|p| gateway_names.contains(p)).unwrap_or(true) =>
            {
                Some(format!("{}://{}", if l.tls.is_some() { "https" } else { "http" }, l.address))
            }
            _ => None,
        })
        .collect();

    let services: BTreeSet<&str> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Service(_) => Some(r.name()),
            Spec::Workload(w) => Some(w.service.as_str()),
            _ => None,
        })
        .collect();

    let mut replicas = Vec::new();
    for r in resources {
        if let Spec::Workload(w) = &r.spec {
            for index in 0..w.replicas {
                replicas.push(replica(r.name(), w, index, &services, ctx, &exe, grpc, ports)?);
            }
        }
    }
    let datapath = ctx.datapath.map(|agent| {
        let mut process = agent_process(&exe, api, grpc, ctx.state, agent);
        with_bundle(ctx, &mut process);
        process
    });
    let plan = Plan { control, api, grpc, gateways, replicas, gateway_urls, datapath };
    // Names key log files, up.json and the sidecars' Proxy resources.
    let mut names = BTreeSet::new();
    if let Some(clash) = plan.processes().map(|p| p.name.as_str()).find(|name| !names.insert(*name)) {
        return Err(PlanError::NameClash(clash.to_string()));
    }
    Ok(plan)
}

/// The join token source of a proxy fronting `workload`.
fn join(ctx: &PlanContext<'_>, workload: &str) -> Option<Join> {
    let minter = ctx.identity.minter.clone()?;
    Some(Join { namespace: NAMESPACE.to_string(), workload: workload.to_string(), minter })
}

fn proxy_process(
    exe: &Path,
    grpc: SocketAddr,
    process: &str,
    proxy: &str,
    role: Role,
    admin: SocketAddr,
    mut addresses: BTreeMap<String, String>,
) -> ProcessSpec {
    addresses.insert("admin".into(), admin.to_string());
    ProcessSpec {
        name: process.to_string(),
        role,
        program: exe.to_path_buf(),
        args: vec![
            "proxy".into(),
            "--control".into(),
            grpc.to_string(),
            "--name".into(),
            proxy.to_string(),
            "--admin".into(),
            admin.to_string(),
        ],
        env: BTreeMap::new(),
        cwd: None,
        addresses,
        probe: Probe::Http { addr: admin, path: "/ready".into() },
        join: None,
    }
}

/// `trefoil datapath agent` for this node, on the control plane's config
/// stream (its flow reports go to the REST API); ready once its first table
/// is in the kernel.
fn agent_process(exe: &Path, api: SocketAddr, grpc: SocketAddr, state: &Path, agent: &AgentPlan) -> ProcessSpec {
    let ready = state.join("datapath.ready");
    let mut args: Vec<String> = vec!["datapath".into(), "agent".into(), "--node".into(), agent.node.clone()];
    for interface in &agent.interfaces {
        args.extend(["--interface".to_string(), interface.clone()]);
    }
    args.extend(["--ready-file".to_string(), ready.display().to_string(), "--server".to_string(), format!("http://{api}")]);
    args.extend(["--control".to_string(), grpc.to_string()]);
    ProcessSpec {
        name: DATAPATH_PROCESS.to_string(),
        role: Role::Datapath,
        program: exe.to_path_buf(),
        args,
        // The path, not the token: the environment is the owner's to read only.
        env: BTreeMap::from([("TREFOIL_TOKEN_FILE".to_string(), crate::api::agent_token_file(state).display().to_string())]),
        cwd: None,
        addresses: BTreeMap::new(),
        probe: Probe::File(ready),
        join: None,
    }
}

/// The datapath agent's process name (and log file).
pub const DATAPATH_PROCESS: &str = "datapath";

/// `TREFOIL_UPSTREAM_<SERVICE>`: upper-cased, `-` and `.` as `_`.
pub fn upstream_var(service: &str) -> String {
    let name: String = service.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("TREFOIL_UPSTREAM_{name}")
}

#[allow(clippy::too_many_arguments)]
fn replica(
    workload: &str,
    w: &WorkloadSpec,
    index: u32,
    services: &BTreeSet<&str>,
    ctx: &PlanContext<'_>,
    exe: &Path,
    grpc: SocketAddr,
    ports: &mut PortAllocator,
) -> Result<ReplicaPlan, PlanError> {
    let proxy_name = format!("{workload}-{index}");
    let app_addr = match w.port {
        Some(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        None => ports.free()?,
    };
    let inbound = ports.free()?;
    let outbound = ports.free()?;
    let admin = ports.admin()?;
    let mut upstreams = BTreeMap::new();
    // A workload that declares its calls gets a port for each of them; any
    // other service it reaches through the outbound listener, by Host.
    let declared = |s: &str| w.calls.as_ref().is_none_or(|calls| calls.iter().any(|c| c == s));
    for service in services.iter().filter(|s| **s != w.service && declared(s)) {
        upstreams.insert(service.to_string(), ports.free()?);
    }

    // The runtime's own variables win over the workload's env, which wins
    // over the environment `trefoil up` inherited.
    let mut runtime_env = BTreeMap::from([
        ("PORT".to_string(), app_addr.port().to_string()),
        ("TREFOIL_SERVICE".to_string(), w.service.clone()),
        ("TREFOIL_VERSION".to_string(), w.version.clone()),
        ("TREFOIL_REPLICA".to_string(), index.to_string()),
        ("TREFOIL_OUTBOUND".to_string(), outbound.to_string()),
        // Where a network function publishes events outside its verdicts.
        ("TREFOIL_EVENTS".to_string(), format!("http://{admin}/events")),
    ]);
    for (service, address) in &upstreams {
        runtime_env.insert(upstream_var(service), address.to_string());
    }
    let failed = |field: String| move |source| PlanError::Expand { workload: workload.to_string(), field, source };
    let mut env = BTreeMap::new();
    for (key, value) in &w.env {
        let lookup = |name: &str| runtime_env.get(name).cloned().or_else(|| (ctx.env)(name));
        env.insert(key.clone(), expand(value, lookup).map_err(failed(format!("spec.env.{key}")))?);
    }
    env.extend(runtime_env.clone());
    let mut args = Vec::new();
    for (i, arg) in w.args.iter().enumerate() {
        let lookup = |name: &str| env.get(name).cloned().or_else(|| (ctx.env)(name));
        args.push(expand(arg, lookup).map_err(failed(format!("spec.args[{i}]")))?);
    }

    let probe = match w.health.as_ref().and_then(|h| h.http.clone()) {
        Some(path) => Probe::Http { addr: app_addr, path },
        None => Probe::Tcp(app_addr),
    };
    let app = ProcessSpec {
        name: proxy_name.clone(),
        role: Role::App,
        program: resolve_command(&w.command, ctx.workdir, exe),
        args,
        env,
        cwd: Some(ctx.workdir.to_path_buf()),
        addresses: BTreeMap::from([("app".into(), app_addr.to_string())]),
        probe,
        join: None,
    };
    let mut sidecar_addresses =
        BTreeMap::from([("inbound".to_string(), inbound.to_string()), ("outbound".to_string(), outbound.to_string())]);
    for (service, address) in &upstreams {
        sidecar_addresses.insert(format!("upstream.{service}"), address.to_string());
    }
    let mut sidecar = proxy_process(exe, grpc, &format!("{proxy_name}-sidecar"), &proxy_name, Role::Sidecar, admin, sidecar_addresses);
    sidecar.join = join(ctx, workload);
    with_bundle(ctx, &mut sidecar);
    let spec = ProxySpec {
        admin,
        access_log: ctx.state.join("logs").join("access").join(format!("{proxy_name}.log")).display().to_string(),
        sidecar: Some(SidecarSpec {
            workload: workload.to_string(),
            service: w.service.clone(),
            version: w.version.clone(),
            replica: index,
            inbound,
            outbound,
            app: app_addr,
            upstreams,
        }),
        ..ProxySpec::with_defaults()
    };
    let proxy = managed(&proxy_name, Spec::Proxy(spec));
    Ok(ReplicaPlan {
        workload: workload.to_string(),
        service: w.service.clone(),
        version: w.version.clone(),
        index,
        app,
        sidecar,
        proxy,
        inbound,
    })
}

/// A command with a `/` is a path, relative to the files' directory; a bare
/// name is looked up in `PATH` when it runs, except `trefoil`, which is the
/// running binary (its `demo-app` serves examples without installing anything).
fn resolve_command(command: &str, workdir: &Path, exe: &Path) -> PathBuf {
    let path = Path::new(command);
    if command == "trefoil" {
        exe.to_path_buf()
    } else if command.contains('/') && path.is_relative() {
        workdir.join(path)
    } else {
        path.to_path_buf()
    }
}

/// A resource carrying the runtime's `managed-by` label.
pub fn managed(name: &str, spec: Spec) -> Resource {
    let labels = BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]);
    Resource { api_version: API_VERSION.to_string(), metadata: Metadata { name: name.to_string(), labels, ..Metadata::default() }, spec }
}

impl Plan {
    /// Every process, in start order: control plane, gateways, then per replica sidecar and app.
    pub fn processes(&self) -> impl Iterator<Item = &ProcessSpec> {
        std::iter::once(&self.control)
            .chain(&self.gateways)
            .chain(self.replicas.iter().flat_map(|r| [&r.sidecar, &r.app]))
            .chain(&self.datapath)
    }

    /// `Endpoints/<service>` for every service that has workloads, given
    /// which processes are ready (by process name): a replica is ready when
    /// its app and its sidecar are, since the sidecar refuses mesh TLS
    /// until it holds an SVID.
    pub fn endpoints(&self, ready: &BTreeMap<String, bool>) -> Vec<Resource> {
        let mut by_service: BTreeMap<&str, Vec<DiscoveredEndpoint>> = BTreeMap::new();
        for r in &self.replicas {
            by_service.entry(&r.service).or_default().push(DiscoveredEndpoint {
                address: r.inbound,
                version: r.version.clone(),
                workload: r.workload.clone(),
                replica: r.index,
                ready: [&r.app.name, &r.sidecar.name].iter().all(|name| ready.get(*name).copied().unwrap_or(false)),
            });
        }
        by_service.into_iter().map(|(service, endpoints)| managed(service, Spec::Endpoints(EndpointsSpec { endpoints }))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn resources(yaml: &str) -> Vec<Resource> {
        trefoil_model::load_str(&Arc::from("test.yaml"), yaml).unwrap().into_iter().map(|s| s.resource).collect()
    }

    const MESH: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {name: edge}\nspec: {}\n---\n\
apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: public}\nspec: {address: 127.0.0.1:8080}\n---\n\
apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: payments-api}\nspec: {}\n---\n\
apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: web-v1}\nspec:\n  service: web\n  command: bin/web\n  replicas: 2\n  args: [\"--listen\", \"127.0.0.1:${PORT}\", \"--name\", \"${GREETING}-${TREFOIL_REPLICA}\"]\n  env: {GREETING: \"hi ${USER}\"}\n  health: {http: /healthz}\n";

    fn env(name: &str) -> Option<String> {
        (name == "USER").then(|| "ada".to_string())
    }

    const BUNDLE: &str = "/state/data/ca/trefoil.local/root.pem";

    fn plan(yaml: &str, admin_base: u16) -> Result<Plan, PlanError> {
        plan_with(yaml, admin_base, None)
    }

    fn plan_with(yaml: &str, admin_base: u16, datapath: Option<&AgentPlan>) -> Result<Plan, PlanError> {
        let ctx = PlanContext {
            exe: Path::new("/bin/trefoil"),
            state: Path::new("/state"),
            workdir: Path::new("/files"),
            api: "127.0.0.1:0".parse().unwrap(),
            grpc: "127.0.0.1:7071".parse().unwrap(),
            env: &env,
            datapath,
            identity: &IdentityPlan {
                trust_domain: "trefoil.local".into(),
                svid_lifetime: std::time::Duration::from_secs(3600),
                minter: None,
                trust_bundle: Some(PathBuf::from(BUNDLE)),
                control_args: Vec::new(),
            },
        };
        build(&resources(yaml), &ctx, &mut PortAllocator::new(admin_base))
    }

    #[test]
    fn processes_and_names() {
        let p = plan(MESH, 15000).unwrap();
        let names: Vec<(&str, Role)> = p.processes().map(|s| (s.name.as_str(), s.role)).collect();
        assert_eq!(
            names,
            [
                ("control", Role::Control),
                ("edge", Role::Gateway),
                ("web-v1-0-sidecar", Role::Sidecar),
                ("web-v1-0", Role::App),
                ("web-v1-1-sidecar", Role::Sidecar),
                ("web-v1-1", Role::App)
            ]
        );
        assert_ne!(p.api.port(), 0, "port 0 is resolved to a real port");
        assert_eq!(p.control.args[..3], ["control", "--data", "/state/data"]);
        assert!(p.control.args.windows(2).any(|w| w == ["--grpc-listen", "127.0.0.1:7071"]));
        assert_eq!(p.gateway_urls, ["http://127.0.0.1:8080"]);
    }

    #[test]
    fn admin_ports_gateways_first_then_sidecars() {
        let p = plan(MESH, 15000).unwrap();
        assert_eq!(p.gateways[0].args, ["proxy", "--control", "127.0.0.1:7071", "--name", "edge", "--admin", "127.0.0.1:15000"]);
        assert_eq!(p.replicas[0].sidecar.addresses["admin"], "127.0.0.1:15001");
        assert_eq!(p.replicas[1].sidecar.args[4], "web-v1-1", "the sidecar's proxy name has no -sidecar suffix");
        assert_eq!(p.replicas[1].sidecar.addresses["admin"], "127.0.0.1:15002");
        let p = plan(MESH, 0).unwrap();
        assert_ne!(p.replicas[0].sidecar.addresses["admin"], "127.0.0.1:15001");
    }

    #[test]
    fn app_environment_and_expansion() {
        let p = plan(MESH, 0).unwrap();
        let r = &p.replicas[1];
        let port = r.app.env["PORT"].clone();
        assert_eq!(r.app.addresses["app"], format!("127.0.0.1:{port}"));
        assert_eq!(r.app.args, ["--listen".to_string(), format!("127.0.0.1:{port}"), "--name".into(), "hi ada-1".into()]);
        assert_eq!(r.app.env["TREFOIL_SERVICE"], "web");
        assert_eq!(r.app.env["TREFOIL_VERSION"], "v1");
        assert!(r.app.env["TREFOIL_EVENTS"].starts_with("http://127.0.0.1:") && r.app.env["TREFOIL_EVENTS"].ends_with("/events"));
        assert_eq!(r.app.env["GREETING"], "hi ada");
        let Spec::Proxy(proxy) = &r.proxy.spec else { panic!() };
        let sidecar = proxy.sidecar.as_ref().unwrap();
        assert_eq!(r.app.env["TREFOIL_OUTBOUND"], sidecar.outbound.to_string());
        assert_eq!(r.app.env["TREFOIL_UPSTREAM_PAYMENTS_API"], sidecar.upstreams["payments-api"].to_string());
        assert!(!r.app.env.contains_key("TREFOIL_UPSTREAM_WEB"), "no upstream to its own service");
        assert_eq!(r.app.program, Path::new("/files/bin/web"));
        assert_eq!(r.app.probe, Probe::Http { addr: r.app.addresses["app"].parse().unwrap(), path: "/healthz".into() });
        assert_eq!(r.proxy.metadata.labels[MANAGED_BY.0], MANAGED_BY.1);
        assert_eq!(r.proxy.name(), "web-v1-1");
        assert_eq!(proxy.access_log, "/state/logs/access/web-v1-1.log");
    }

    #[test]
    fn unset_variables_name_the_field() {
        let yaml =
            "apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {service: s, command: x, args: [\"${NOPE}\"]}\n";
        let err = plan(yaml, 0).unwrap_err().to_string();
        assert!(err.starts_with("Workload w: spec.args[0]: `${NOPE}` is not set"), "{err}");
    }

    #[test]
    fn endpoints_follow_readiness() {
        let p = plan(MESH, 0).unwrap();
        let ready =
            BTreeMap::from([("web-v1-0".to_string(), true), ("web-v1-1".to_string(), true), ("web-v1-1-sidecar".to_string(), true)]);
        let eps = p.endpoints(&ready);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].name(), "web");
        let Spec::Endpoints(e) = &eps[0].spec else { panic!() };
        assert_eq!(e.endpoints.iter().map(|e| (e.replica, e.ready)).collect::<Vec<_>>(), [(0, false), (1, true)]);
        assert_eq!(e.endpoints[1].address, p.replicas[1].inbound);
        assert_eq!(e.endpoints[1].workload, "web-v1");
    }

    #[test]
    fn process_names_must_not_clash() {
        let yaml = "apiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {name: web-0}\nspec: {}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: web}\nspec: {service: web, command: x}\n";
        assert!(matches!(plan(yaml, 0), Err(PlanError::NameClash(n)) if n == "web-0"));
        let yaml = "apiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {name: control}\nspec: {}\n";
        assert!(matches!(plan(yaml, 0), Err(PlanError::NameClash(n)) if n == "control"));
    }

    #[test]
    fn every_stream_client_is_told_the_trust_bundle_and_apps_are_not() {
        let agent = AgentPlan { node: "edge-1".into(), interfaces: vec!["eth0".into()] };
        let p = plan_with(MESH, 0, Some(&agent)).unwrap();
        let told = |spec: &ProcessSpec| spec.env.get(TRUST_BUNDLE_VAR).map(String::as_str) == Some(BUNDLE);
        assert!(p.gateways.iter().all(told) && !p.gateways.is_empty());
        assert!(p.replicas.iter().all(|r| told(&r.sidecar) && !r.app.env.contains_key(TRUST_BUNDLE_VAR)));
        assert!(told(p.datapath.as_ref().unwrap()));
        assert!(!p.control.env.contains_key(TRUST_BUNDLE_VAR), "the control plane makes the bundle");
    }

    #[test]
    fn the_datapath_agent_runs_last_and_is_ready_by_its_file() {
        let agent = AgentPlan { node: "edge-1".into(), interfaces: vec!["eth0".into(), "eth1".into()] };
        let p = plan_with(MESH, 0, Some(&agent)).unwrap();
        let last = p.processes().last().unwrap();
        assert_eq!((last.name.as_str(), last.role), (DATAPATH_PROCESS, Role::Datapath));
        assert_eq!(
            last.args,
            [
                "datapath",
                "agent",
                "--node",
                "edge-1",
                "--interface",
                "eth0",
                "--interface",
                "eth1",
                "--ready-file",
                "/state/datapath.ready",
                "--server",
                &format!("http://{}", p.api),
                "--control",
                &p.grpc.to_string()
            ]
        );
        assert_eq!(last.probe, Probe::File("/state/datapath.ready".into()));
        assert!(plan(MESH, 0).unwrap().datapath.is_none());
    }

    #[test]
    fn fixed_port_and_tcp_probe() {
        let yaml = "apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: db}\nspec: {service: db, command: db, port: 5432}\n";
        let p = plan(yaml, 0).unwrap();
        assert_eq!(p.replicas[0].app.probe, Probe::Tcp("127.0.0.1:5432".parse().unwrap()));
        assert_eq!(p.replicas[0].app.program, Path::new("db"));
        assert!(p.gateway_urls.is_empty());
    }
}
