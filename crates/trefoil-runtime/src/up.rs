//! `trefoil up`: start everything in order, keep it running and published,
//! stop it in reverse order.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use trefoil_api::{ApiError, Client};
use trefoil_model::{Diagnostics, Resource, Spec};

use crate::api;
use crate::datapath::{self, DatapathOptions, Decision};
use crate::event::{DatapathSummary, Event, Events, ReplicaSummary, Summary};
use crate::plan::{self, Plan, PlanContext, PlanError, ProcessSpec, Role};
use crate::ports::PortAllocator;
use crate::reconcile::{self, Writer};
use crate::supervisor::{supervise, Supervised};
use crate::view::{self, UpView, View};

/// How long the control plane may take to answer its API at start.
pub const CONTROL_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Start-up gives up after the control plane exited this many times without answering.
pub const CONTROL_START_ATTEMPTS: u32 = 3;
/// How long start-up waits for replicas to become ready before summarizing anyway.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long start-up then waits for every proxy to acknowledge a snapshot
/// with the ready replicas, so "up" means requests can flow.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long stopping waits for the control plane to take the replicas out of
/// `Endpoints` before it stops the apps anyway.
pub const UNPUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// What `trefoil up` was asked to do.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// A YAML file or a directory of them.
    pub files: PathBuf,
    /// State directory: `data/`, `logs/`, `up.json`.
    pub state: PathBuf,
    /// Control plane REST address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Control plane gRPC address; port 0 picks a free one.
    pub grpc_listen: SocketAddr,
    /// First admin port (gateways, then sidecars); 0 lets the OS choose each.
    pub admin_base: u16,
    /// The `trefoil` binary to run as `control` and `proxy`.
    pub exe: PathBuf,
    /// Whether and where the node's datapath agent runs.
    pub datapath: DatapathOptions,
    /// The mesh CA's settings, and the join tokens each proxy start gets.
    pub identity: crate::plan::IdentityPlan,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("state directory {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
    #[error("the control plane did not start; the end of {log}:\n{tail}")]
    ControlNotReady { log: String, tail: String },
    #[error("another `trefoil up` (pid {pid}) uses state directory {path}")]
    Busy { path: PathBuf, pid: String },
    #[error("the control plane refused resources:\n{0}")]
    Refused(String),
    #[error("{0}")]
    Datapath(String),
    #[error("cannot use the control plane's admin token {path}: {reason}")]
    Token { path: PathBuf, reason: String },
}

impl UpError {
    /// Whether the user's input is at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, UpError::Invalid(_) | UpError::Plan(PlanError::Expand { .. } | PlanError::NameClash(_)))
    }
}

/// Grace between SIGTERM and SIGKILL, by role: proxies drain connections.
fn grace(role: Role) -> Duration {
    match role {
        Role::Gateway | Role::Sidecar => Duration::from_secs(12),
        // The agent detaches its programs on SIGTERM in milliseconds; a
        // SIGKILL would leave them for the next agent to reconcile.
        Role::Control | Role::App | Role::Datapath => Duration::from_secs(5),
    }
}

/// Runs until `shutdown` resolves, then stops everything and returns.
pub async fn up(options: UpOptions, events: Events, shutdown: impl Future<Output = ()>) -> Result<(), UpError> {
    let sources = trefoil_model::load_path(&options.files).map_err(UpError::Invalid)?;
    trefoil_model::validate(&sources).map_err(UpError::Invalid)?;
    let resources: Vec<Resource> = sources.into_iter().map(|s| s.resource).collect();
    let rules = resources.iter().filter(|r| matches!(r.spec, Spec::DatapathRule(_))).count();
    let agent = match datapath::decide(&options.datapath, rules, datapath::default_route_interfaces).map_err(UpError::Datapath)? {
        Decision::Run(agent) => Some(agent),
        Decision::Quiet => None,
        Decision::Skip(why) => {
            events.send(Event::DatapathSkipped { why });
            None
        }
    };

    let state = prepare_state(&options.state)?;
    let _lock = lock_state(&state)?;
    let workdir = files_dir(&options.files);
    let env = |name: &str| std::env::var(name).ok();
    let plan = {
        let mut ports = PortAllocator::new(options.admin_base);
        let ctx = PlanContext {
            exe: &options.exe,
            state: &state,
            workdir: &workdir,
            api: options.listen,
            grpc: options.grpc_listen,
            env: &env,
            datapath: agent.as_ref(),
            identity: &options.identity,
        };
        plan::build(&resources, &ctx, &mut ports)?
        // The allocator's sockets close here, so the children can bind the ports.
    };

    let (view, view_rx) = watch::channel(UpView {
        pid: std::process::id(),
        api: format!("http://{}", plan.api),
        grpc: plan.grpc.to_string(),
        running: true,
        processes: BTreeMap::new(),
    });
    let writer_task = tokio::spawn(view::write_on_change(state.clone(), view_rx));
    let mut running = Running {
        state: state.clone(),
        view: view.clone(),
        events: events.clone(),
        processes: Vec::new(),
        tasks: Vec::new(),
        writer: None,
    };

    tokio::pin!(shutdown);
    // A stop asked for during start-up ends the start where it is.
    let mut stop_asked = false;
    let started = tokio::select! {
        result = start(&plan, &resources, &mut running) => result,
        _ = &mut shutdown => {
            stop_asked = true;
            Ok(())
        }
    };
    if started.is_ok() && !stop_asked {
        shutdown.await;
    }
    events.send(Event::Stopping);
    running.stop().await;
    view.send_modify(|v| v.running = false);
    let last = view.borrow().clone();
    // The writer ends once every handle on the view is gone.
    drop(running);
    drop(view);
    let _ = writer_task.await;
    if let Err(e) = view::write(&state, &last) {
        tracing::warn!(error = %e, "cannot write up.json");
    }
    started
}

/// What has been started so far, to be stopped in reverse order.
struct Running {
    state: PathBuf,
    view: View,
    events: Events,
    processes: Vec<(Role, Supervised)>,
    /// Background work that derives state from the view.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The resource writer, with the plan its Endpoints come from.
    writer: Option<(Plan, Writer, tokio::task::JoinHandle<()>)>,
}

impl Running {
    fn supervise(&mut self, spec: &ProcessSpec) {
        let log = crate::logs::path(&self.state, &spec.name);
        let s = supervise(spec.clone(), log, grace(spec.role), self.view.clone(), self.events.clone());
        self.processes.push((spec.role, s));
    }

    /// Apps and the datapath agent first (apps may still call through their
    /// sidecars; without the agent, redirected traffic goes direct again
    /// before the transparent listeners close), then proxies, then the
    /// control plane; each group stops in parallel.
    async fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        // Take every replica out of traffic before its app goes away, so
        // proxies stop sending to it and the stored Endpoints do not claim
        // ready replicas after `up` ended.
        if let Some((plan, writer, task)) = self.writer.take() {
            let generation = writer.set(plan.endpoints(&BTreeMap::new()).iter().map(keyed));
            let _ = tokio::time::timeout(UNPUBLISH_TIMEOUT, writer.settled(generation)).await;
            task.abort();
        }
        let mut all = std::mem::take(&mut self.processes);
        for group in [&[Role::App, Role::Datapath][..], &[Role::Sidecar, Role::Gateway], &[Role::Control]] {
            let (now, later): (Vec<_>, Vec<_>) = all.into_iter().partition(|(role, _)| group.contains(role));
            all = later;
            let stops: Vec<_> = now.into_iter().map(|(_, s)| tokio::spawn(s.stop())).collect();
            for stop in stops {
                let _ = stop.await;
            }
        }
    }
}

async fn start(plan: &Plan, resources: &[Resource], running: &mut Running) -> Result<(), UpError> {
    running.supervise(&plan.control);
    let mut view_rx = running.view.subscribe();
    // A control plane that keeps exiting before it ever answers (a taken
    // port, an unreadable store) will not get better by waiting.
    let settled = view_rx.wait_for(|v| v.processes.get("control").is_some_and(|p| p.ready || p.restarts >= CONTROL_START_ATTEMPTS));
    let ready = matches!(tokio::time::timeout(CONTROL_START_TIMEOUT, settled).await, Ok(Ok(v)) if v.processes.get("control").is_some_and(|p| p.ready));
    if !ready {
        let log = crate::logs::path(&running.state, "control");
        let text = std::fs::read(&log).unwrap_or_default();
        let tail = String::from_utf8_lossy(crate::logs::tail(&text, Some(5))).trim_end().to_string();
        return Err(UpError::ControlNotReady { log: log.display().to_string(), tail });
    }

    // Written by the control plane before it answers, so it is there now.
    let token_file = api::admin_token_file(&running.state);
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| UpError::Token { path: token_file.clone(), reason: e.to_string() })?
        .trim()
        .to_string();
    let client = api::client(plan.api, &token);
    let (restarts_tx, restarts_rx) = watch::channel(0u64);
    let (writer, writer_task) = reconcile::start(client.clone(), restarts_rx, running.events.clone());
    running.writer = Some((plan.clone(), writer.clone(), writer_task));
    prune(&client, plan, &running.events).await;
    running.tasks.push(tokio::spawn(watch_control_restarts(running.view.subscribe(), restarts_tx)));

    // What the files say, then each sidecar's registration: both must be
    // stored before the proxies ask for their snapshots.
    let wanted: Vec<_> = resources.iter().chain(plan.replicas.iter().map(|r| &r.proxy)).map(keyed).collect();
    let count = wanted.len();
    let refused = writer.settled(writer.set(wanted)).await;
    if !refused.is_empty() {
        let lines: Vec<String> = refused.iter().map(|((kind, name), error)| format!("  {kind}/{name}: {error}")).collect();
        return Err(UpError::Refused(lines.join("\n")));
    }
    writer.forget(resources.iter().map(|r| keyed(r).0));
    running.events.send(Event::ResourcesApplied { count });

    // Endpoints are published from here on, not-ready replicas included.
    running.tasks.push(tokio::spawn(publish_endpoints(plan.clone(), running.view.subscribe(), writer.clone())));
    for gateway in &plan.gateways {
        running.supervise(gateway);
    }
    for replica in &plan.replicas {
        running.supervise(&replica.sidecar);
        running.supervise(&replica.app);
    }
    // After the proxies, so a transparent listener is there when the first
    // redirect is programmed.
    if let Some(agent) = &plan.datapath {
        agent_token(&client, &running.state).await?;
        running.supervise(agent);
    }

    // Every process this started, proxies included: "trefoil is up" comes
    // after each one's "ready" line, never before it.
    let started: Vec<String> = plan
        .gateways
        .iter()
        .map(|g| g.name.clone())
        .chain(plan.replicas.iter().flat_map(|r| [r.sidecar.name.clone(), r.app.name.clone()]))
        .chain(plan.datapath.iter().map(|d| d.name.clone()))
        .collect();
    let all_ready = |v: &UpView| started.iter().all(|name| v.processes.get(name).is_some_and(|p| p.ready));
    let _ = tokio::time::timeout(READY_TIMEOUT, view_rx.wait_for(all_ready)).await;
    let _ = tokio::time::timeout(SYNC_TIMEOUT, proxies_in_sync(&client, plan, &running.view)).await;
    running.events.send(Event::Up(summary(plan, &running.state, &running.view.borrow())));
    Ok(())
}

/// Mints the datapath agent's viewer token (it only reads rules) and writes
/// it where the agent's `TREFOIL_TOKEN_FILE` points; the token an earlier run
/// minted is revoked first, so runs do not pile tokens up.
async fn agent_token(client: &Client, state: &Path) -> Result<(), UpError> {
    let path = api::agent_token_file(state);
    let failed = |reason: String| UpError::Token { path: path.clone(), reason };
    if let Ok(old) = std::fs::read_to_string(&path) {
        if let Some(id) = old.trim().strip_prefix("trf_").and_then(|rest| rest.split_once('_')).map(|(id, _)| id) {
            match client.revoke_token(id).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(failed(format!("cannot revoke the earlier run's token: {}", api::refusal(&e)))),
            }
        }
    }
    let created = client
        .create_token(&trefoil_api::CreateToken { role: trefoil_api::Role::Viewer, ttl_seconds: None })
        .await
        .map_err(|e| failed(format!("cannot mint the datapath agent's token: {}", api::refusal(&e))))?;
    trefoil_api::tokens::write_secret(&path, &created.token).map_err(|e| failed(e.to_string()))
}

/// Returns once the control plane has compiled the published readiness of
/// every replica and every proxy of the plan has acknowledged its latest
/// snapshot; polls, as the proxies' acknowledgements arrive on their own.
async fn proxies_in_sync(client: &Client, plan: &Plan, view: &View) {
    let proxies: Vec<&str> = plan.gateways.iter().map(|g| g.name.as_str()).chain(plan.replicas.iter().map(|r| r.proxy.name())).collect();
    loop {
        // A copy: a borrow held across the await would block every view update.
        let now = view.borrow().clone();
        if let Ok(true) = in_sync(client, plan, &proxies, &now).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn in_sync(client: &Client, plan: &Plan, proxies: &[&str], view: &UpView) -> Result<bool, ApiError> {
    // What the store says of readiness must match what the supervisor sees...
    let endpoints = client.list("Endpoints").await?;
    let published: BTreeMap<String, bool> = endpoints
        .items
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Endpoints(e) => Some(e),
            _ => None,
        })
        .flat_map(|e| &e.endpoints)
        .map(|e| (format!("{}-{}", e.workload, e.replica), e.ready))
        .collect();
    let matches =
        plan.replicas.iter().all(|r| published.get(&r.app.name).copied() == Some(view.processes.get(&r.app.name).is_some_and(|p| p.ready)));
    if !matches {
        return Ok(false);
    }
    // ...and be compiled into snapshots every proxy acknowledged.
    Ok(client.proxies().await?.reached(endpoints.resource_version, proxies.iter().copied()))
}

/// Deletes what an earlier `up` with the same store registered and this
/// plan no longer has (a removed workload's sidecars and Endpoints), so the
/// control plane does not keep compiling for proxies that will never come.
/// Only the runtime's own resources (by label) are touched; a failure is
/// reported and start-up goes on.
async fn prune(client: &Client, plan: &Plan, events: &Events) {
    let endpoints = plan.endpoints(&BTreeMap::new());
    let keep: std::collections::BTreeSet<(&str, &str)> =
        plan.replicas.iter().map(|r| &r.proxy).chain(&endpoints).map(|r| (r.kind(), r.name())).collect();
    for kind in ["Proxy", "Endpoints"] {
        let items = match client.list(kind).await {
            Ok(list) => list.items,
            Err(e) => {
                events.send(Event::Rejected { resource: format!("{kind} (listing stale ones)"), error: e.to_string() });
                continue;
            }
        };
        for item in items {
            let managed = item.metadata.labels.get(plan::MANAGED_BY.0).is_some_and(|v| v == plan::MANAGED_BY.1);
            let name = item.name();
            if managed && !keep.contains(&(kind, name)) {
                match client.delete(kind, name).await {
                    // Already gone is as good as deleted.
                    Ok(_) => events.send(Event::Pruned { resource: format!("{kind}/{name}") }),
                    Err(e) if e.is_not_found() => events.send(Event::Pruned { resource: format!("{kind}/{name}") }),
                    Err(e) => events
                        .send(Event::Rejected { resource: format!("{kind}/{name}"), error: format!("cannot delete a stale one: {e}") }),
                }
            }
        }
    }
}

fn keyed(r: &Resource) -> ((String, String), Resource) {
    ((r.kind().to_string(), r.name().to_string()), r.clone())
}

/// Rewrites `Endpoints/<service>` whenever the readiness of an app or its
/// sidecar changes (a sidecar is ready once it holds its SVID for mesh TLS).
async fn publish_endpoints(plan: Plan, mut view: watch::Receiver<UpView>, writer: Writer) {
    let mut last = None;
    loop {
        let ready: BTreeMap<String, bool> = view
            .borrow_and_update()
            .processes
            .iter()
            .filter(|(_, p)| matches!(p.role, Role::App | Role::Sidecar))
            .map(|(name, p)| (name.clone(), p.ready))
            .collect();
        if last.as_ref() != Some(&ready) {
            writer.set(plan.endpoints(&ready).iter().map(keyed));
            last = Some(ready);
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// Counts control plane starts after the first: each may have lost writes.
async fn watch_control_restarts(mut view: watch::Receiver<UpView>, restarts: watch::Sender<u64>) {
    let mut pid = None;
    loop {
        let now = view.borrow_and_update().processes.get("control").and_then(|p| p.pid);
        if now.is_some() && now != pid {
            if pid.is_some() {
                restarts.send_modify(|n| *n += 1);
            }
            pid = now;
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

fn summary(plan: &Plan, state: &Path, view: &UpView) -> Summary {
    Summary {
        portal: format!("http://{}/", plan.api),
        gateways: plan.gateway_urls.clone(),
        api: format!("http://{}", plan.api),
        grpc: plan.grpc.to_string(),
        logs: crate::logs::dir(state).display().to_string(),
        state: view::path(state).display().to_string(),
        token_file: api::admin_token_file(state).display().to_string(),
        datapath: plan.datapath.as_ref().map(|d| DatapathSummary {
            ready: view.processes.get(&d.name).is_some_and(|p| p.ready),
            log: crate::logs::path(state, &d.name).display().to_string(),
        }),
        replicas: plan
            .replicas
            .iter()
            .map(|r| ReplicaSummary {
                name: r.app.name.clone(),
                service: r.service.clone(),
                version: r.version.clone(),
                address: r.inbound.to_string(),
                ready: view.processes.get(&r.app.name).is_some_and(|p| p.ready),
            })
            .collect(),
    }
}

/// Creates the state directory's layout and returns it as an absolute path,
/// since children run in other directories.
fn prepare_state(state: &Path) -> Result<PathBuf, UpError> {
    let fail = |source| UpError::State { path: state.to_path_buf(), source };
    for dir in [state.join("data"), state.join("logs").join("access")] {
        std::fs::create_dir_all(&dir).map_err(fail)?;
    }
    std::fs::canonicalize(state).map_err(fail)
}

/// Holds `STATE/up.lock` while `up` runs, so two supervisors never share a
/// store; the OS releases the lock when the process ends, however it ends.
#[allow(unsafe_code)] // flock has no safe form in std
fn lock_state(state: &Path) -> Result<std::fs::File, UpError> {
    use std::os::fd::AsRawFd;
    let path = state.join("up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| UpError::State { path: path.clone(), source })?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = view::read(state).map(|v| v.pid.to_string()).unwrap_or_else(|| "unknown".into());
        return Err(UpError::Busy { path: state.to_path_buf(), pid });
    }
    Ok(file)
}

/// The directory relative workload commands are found in.
fn files_dir(files: &Path) -> PathBuf {
    let dir = if files.is_dir() { files.to_path_buf() } else { files.parent().map(Path::to_path_buf).unwrap_or_default() };
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    std::fs::canonicalize(&dir).unwrap_or(dir)
}
