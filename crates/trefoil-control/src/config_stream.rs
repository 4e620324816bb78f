//! The config stream's control-plane side: one gRPC stream per proxy or
//! node agent, and the task that recompiles every connected one's snapshot
//! when the store changes. A node agent (Hello kind `agent`, with an API
//! token) is sent its node's datapath table instead of resources.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use trefoil_model::Resource;
use trefoil_wire::{proxy_message::Kind, ConfigStream, ProxyMessage, Request, Response, Snapshot, Status, Streaming};

use crate::auth::{Auth, Caller};
use crate::compile::MeshView;
use crate::datapath_tables::DatapathView;
use crate::identity::Issuer;
use crate::proxies::{agent_name, Hello, Proxies};
use crate::rollout::now_ms;
use crate::store::Store;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new stream's headers wait for its Hello.
const HELLO_BEFORE_HEADERS: Duration = Duration::from_secs(1);
/// Store events closer together than this are compiled once: applying a
/// thousand routes compiles a handful of times, not a thousand.
const DEBOUNCE_QUIET: Duration = Duration::from_millis(30);
/// A steady trickle of events still gets compiled this often.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// Certificate requests a proxy may have unanswered; more wait for room.
const PENDING_ANSWERS: usize = 4;

/// The gRPC service: registers each proxy and node agent, relays its ACKs
/// and NACKs, and answers its certificate requests.
pub struct ConfigStreamService {
    compiler: Arc<Compiler>,
    issuer: Arc<Issuer>,
    /// Checks a node agent's token.
    auth: Arc<Auth>,
    /// Served over TLS: a proxy is who its client certificate says, and one
    /// without a certificate may only ask for its first SVID.
    authenticate: bool,
}

impl ConfigStreamService {
    pub fn new(compiler: Arc<Compiler>, issuer: Arc<Issuer>, auth: Arc<Auth>) -> Self {
        ConfigStreamService { compiler, issuer, auth, authenticate: false }
    }

    /// Holds each proxy to the SVID of its connection (see [`Standing`]);
    /// for a server behind TLS that reports client certificates.
    pub fn authenticating(mut self) -> Self {
        self.authenticate = true;
        self
    }

    /// What the connection that carried `request` proves.
    fn standing<T>(&self, request: &Request<T>) -> Result<Standing, Status> {
        if !self.authenticate {
            return Ok(Standing::Open);
        }
        match request.extensions().get::<trefoil_wire::PeerInfo>().and_then(|p| p.certificate.as_deref()) {
            None => Ok(Standing::Bootstrap),
            Some(der) => crate::identity::stream_tls::caller(der).map(Standing::Svid).map_err(Status::unauthenticated),
        }
    }
}

/// What a config stream's connection proves about the proxy on it.
#[derive(Debug, Clone)]
enum Standing {
    /// Plaintext serving (tests, `--insecure-plaintext-stream`): the Hello's name is taken as said.
    Open,
    /// A verified SVID: the Hello must name one of its workload's proxies.
    Svid(crate::identity::SpiffeId),
    /// No client certificate: a proxy may only trade its join token for an SVID.
    Bootstrap,
}

/// Why a stream without a client certificate gets nothing but its first SVID.
const BOOTSTRAP_ONLY: &str = "this connection presents no SVID: it may only ask for one with a join token; \
     reconnect with the SVID as the client certificate to receive configuration";

/// What a stream's Hello registered.
enum Registered {
    /// A proxy or node agent, sent snapshots from now on.
    Session(String, u64),
    /// A proxy without an SVID yet, answered its join-token CSR only.
    Bootstrap(String),
}

impl ConfigStream for ConfigStreamService {
    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

    async fn stream(&self, request: Request<Streaming<ProxyMessage>>) -> Result<Response<Self::SnapshotStream>, Status> {
        let peer_info = request.extensions().get::<trefoil_wire::PeerInfo>().and_then(|p| p.remote);
        let peer = request.remote_addr().or(peer_info).map_or_else(|| "unknown".to_string(), |p| p.to_string());
        let standing = self.standing(&request)?;
        // Checked now, used only if the Hello says it is an agent's stream.
        let authorization = request.metadata().get("authorization").map(|v| v.to_str().map_err(|_| ()));
        let access = match authorization {
            Some(Err(())) => Err("the authorization metadata is not text".to_string()),
            Some(Ok(text)) => self.auth.stream_caller(Some(text)),
            None => self.auth.stream_caller(None),
        };
        let mut inbound = request.into_inner();
        let (outbox, snapshots) = watch::channel(None);
        // Answers to CSRs beside the snapshots: each one matters, where only
        // the newest snapshot does.
        let (answer, answers) = mpsc::channel(PENDING_ANSWERS);
        let snapshots = WatchStream::from_changes(snapshots).filter_map(|s| s.map(Ok)).merge(ReceiverStream::new(answers));
        let talk = Talk { answer, issuer: self.issuer.clone() };
        // A proxy says Hello at once: read it before answering, so that a
        // refusal is the call's own status and the proxy never sees a stream
        // open. One slow to speak gets its headers anyway (they must not wait
        // on its first message), and a refusal then ends the stream instead.
        if let Ok(first) = tokio::time::timeout(HELLO_BEFORE_HEADERS, inbound.message()).await {
            let registered = register(&self.compiler.proxies, first, outbox, &peer, &access, &standing)?;
            tokio::spawn(run_stream(self.compiler.clone(), talk, inbound, registered, peer));
            return Ok(Response::new(Box::pin(snapshots)));
        }
        let (refuse, refused) = oneshot::channel();
        let compiler = self.compiler.clone();
        tokio::spawn(async move {
            let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await.unwrap_or(Ok(None));
            match register(&compiler.proxies, first, outbox, &peer, &access, &standing) {
                Ok(registered) => run_stream(compiler, talk, inbound, registered, peer).await,
                Err(status) => {
                    let _ = refuse.send(status);
                }
            }
        });
        let refusal = futures_util::stream::once(refused).filter_map(|r: Result<Status, _>| r.ok().map(Err));
        Ok(Response::new(Box::pin(snapshots.merge(refusal))))
    }
}

/// A registered stream's session, or a bootstrap's.
async fn run_stream(compiler: Arc<Compiler>, talk: Talk, inbound: Streaming<ProxyMessage>, registered: Registered, peer: String) {
    match registered {
        Registered::Session(name, id) => session(compiler, talk, inbound, name, id, peer).await,
        Registered::Bootstrap(name) => bootstrap(talk, inbound, name, peer).await,
    }
}

/// A proxy without an SVID: each join-token CSR is answered; anything else
/// (or silence) ends the stream with [`BOOTSTRAP_ONLY`].
async fn bootstrap(talk: Talk, mut inbound: Streaming<ProxyMessage>, name: String, peer: String) {
    loop {
        let message = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await;
        let request = match message {
            Ok(Ok(Some(ProxyMessage { kind: Some(Kind::Csr(request)) }))) if !request.join_token.is_empty() => request,
            Ok(Ok(None)) | Ok(Err(_)) => return,
            _ => {
                tracing::warn!(proxy = %name, %peer, "ending a config stream without an SVID that asked for more than its first SVID");
                let _ = talk.answer.send(Err(Status::unauthenticated(BOOTSTRAP_ONLY))).await;
                return;
            }
        };
        let identity = talk.issuer.answer_blocking(&name, &request, std::time::SystemTime::now()).await;
        let answer = Snapshot { trust_bundle_pem: identity.trust_bundle_pem.clone(), identity: Some(identity), ..Default::default() };
        if talk.answer.send(Ok(answer)).await.is_err() {
            return;
        }
    }
}

/// Registers the proxy or node agent a stream's first message names; the
/// status to end the stream with when that is not a Hello naming one, when
/// an agent's token (`access`) is missing or refused, or when another open
/// stream holds the name.
fn register(
    proxies: &Proxies,
    first: Result<Option<ProxyMessage>, Status>,
    outbox: crate::proxies::Outbox,
    peer: &str,
    access: &Result<Caller, String>,
    standing: &Standing,
) -> Result<Registered, Status> {
    let hello = match first {
        Ok(Some(ProxyMessage { kind: Some(Kind::Hello(h)) })) if !h.proxy.is_empty() => h,
        _ => {
            tracing::warn!(%peer, "closing a config stream that did not start with a Hello naming its proxy");
            return Err(Status::invalid_argument("the first message must be a Hello naming the proxy"));
        }
    };
    let node = match hello.kind.as_str() {
        "" => None,
        trefoil_wire::AGENT => match access {
            Ok(caller) => {
                tracing::debug!(node = %hello.proxy, token = %caller.token_id, "node agent authenticated");
                Some(hello.proxy.as_str())
            }
            Err(why) => {
                tracing::warn!(node = %hello.proxy, %peer, "refusing a node agent's stream: {why}");
                return Err(Status::unauthenticated(why.clone()));
            }
        },
        other => return Err(Status::invalid_argument(format!("Hello.kind {other:?} is neither \"\" (a proxy) nor \"agent\""))),
    };
    if node.is_none() {
        match standing {
            Standing::Open => {}
            Standing::Svid(id) if crate::identity::stream_tls::may_use_name(id, &hello.proxy) => {}
            Standing::Svid(id) => {
                tracing::warn!(proxy = %hello.proxy, %peer, identity = %id, "refusing a config stream whose Hello names another workload's proxy");
                return Err(Status::permission_denied(format!(
                    "this connection's SVID is {id}: it may say Hello as {w} or {w}-<replica>, not as {proxy:?}",
                    w = id.workload,
                    proxy = hello.proxy
                )));
            }
            Standing::Bootstrap => {
                tracing::debug!(proxy = %hello.proxy, %peer, "a proxy without an SVID opened a stream to ask for one");
                return Ok(Registered::Bootstrap(hello.proxy));
            }
        }
    }
    let name = node.map_or_else(|| hello.proxy.clone(), agent_name);
    let registered = Hello {
        name: &name,
        admin_address: &hello.admin_address,
        version: hello.version,
        hash: hello.hash,
        pid: hello.pid,
        peer,
        node,
        looked_up: &hello.looked_up,
    };
    match proxies.connect(&registered, outbox) {
        Ok(id) => {
            tracing::info!(proxy = %name, %peer, admin = %hello.admin_address, version = hello.version, pid = hello.pid, "proxy connected");
            Ok(Registered::Session(name, id))
        }
        Err(taken) => {
            tracing::warn!(proxy = %name, %peer, pid = hello.pid, admin = %hello.admin_address, holder = %taken.holder.peer, "refusing a second config stream for a proxy name that is connected");
            Err(Status::already_exists(taken.to_string()))
        }
    }
}

/// Where one stream's certificate requests are answered.
struct Talk {
    answer: mpsc::Sender<Result<Snapshot, Status>>,
    issuer: Arc<Issuer>,
}

/// One registered proxy's stream, until it disconnects.
async fn session(compiler: Arc<Compiler>, talk: Talk, mut inbound: Streaming<ProxyMessage>, name: String, id: u64, peer: String) {
    let proxies = compiler.proxies.clone();
    compiler.refresh_in_background(Some(name.clone())).await;
    let reason = loop {
        match inbound.message().await {
            Ok(Some(ProxyMessage { kind: Some(Kind::Ack(a)) })) => proxies.ack(&name, id, a.version, a.hash),
            Ok(Some(ProxyMessage { kind: Some(Kind::Nack(n)) })) => proxies.nack(&name, id, n.version, n.hash, &n.error),
            Ok(Some(ProxyMessage { kind: Some(Kind::Csr(request)) })) => {
                let identity = talk.issuer.answer_blocking(&name, &request, std::time::SystemTime::now()).await;
                let answer =
                    Snapshot { trust_bundle_pem: identity.trust_bundle_pem.clone(), identity: Some(identity), ..Default::default() };
                if talk.answer.send(Ok(answer)).await.is_err() {
                    break "the stream closed".to_string();
                }
            }
            Ok(Some(ProxyMessage { kind: Some(Kind::Lookup(lookup)) })) => {
                if let Some(miss) = compiler.look_up(&name, id, &lookup.service).await {
                    let answer = Snapshot { lookup_miss: miss, ..Default::default() };
                    if talk.answer.send(Ok(answer)).await.is_err() {
                        break "the stream closed".to_string();
                    }
                }
            }
            Ok(Some(_)) => tracing::warn!(proxy = %name, "ignoring an unexpected message (a second Hello, or an empty one)"),
            Ok(None) => break "stream closed by the proxy".to_string(),
            Err(status) => break status.message().to_string(),
        }
    };
    proxies.disconnect(&name, id);
    tracing::info!(proxy = %name, %peer, reason = %reason, "proxy disconnected");
}

/// Compiles snapshots from the store for the registered proxies. It keeps
/// the shared view of the newest revision it compiled: proxies connecting one
/// after another (all of them, after a control-plane restart) then cost a
/// snapshot each, not a read and decode of the whole store each.
pub struct Compiler {
    store: Arc<Store>,
    proxies: Arc<Proxies>,
    latest: Mutex<Option<(u64, Arc<View>)>>,
    /// The newest view built, for reads (`status.applied`): its lock is held
    /// only to clone it, never while a view is built under `latest`'s.
    published: Mutex<Option<Arc<View>>>,
    /// The trace collector's base URL, for proxies that configure no tracing.
    collector: Option<String>,
    /// One compile at a time: they would only compete for the same cores
    /// and each hold a large mesh in memory.
    turn: tokio::sync::Semaphore,
}

impl Compiler {
    pub fn new(store: Arc<Store>, proxies: Arc<Proxies>, collector: Option<String>) -> Self {
        Compiler { store, proxies, latest: Mutex::new(None), published: Mutex::new(None), collector, turn: tokio::sync::Semaphore::new(1) }
    }

    /// [`Compiler::refresh`] on a blocking thread. Compiling a large mesh for
    /// many proxies takes seconds of CPU; on the runtime thread it would stall
    /// every stream meanwhile: snapshots already compiled would not go out,
    /// ACKs would not be read, and keepalive pings would go unanswered until
    /// the peers drop the connection.
    pub async fn refresh_in_background(self: &Arc<Self>, only: Option<String>) {
        let Ok(_turn) = self.turn.acquire().await else { return };
        let compiler = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || compiler.refresh(only.as_deref())).await {
            tracing::error!(error = %e, "compiling snapshots failed");
        }
    }

    /// Compiles the snapshot of `only` (or of every connected proxy) at the
    /// store's current revision and offers it.
    pub fn refresh(&self, only: Option<&str>) {
        let names = match only {
            Some(name) => vec![name.to_string()],
            None => self.proxies.connected(),
        };
        if names.is_empty() {
            if only.is_none() {
                self.proxies.compiled_at(self.store.revision());
            }
            return;
        }
        let (revision, view) = self.view();
        let now = now_ms();
        for name in &names {
            let snapshot = match self.proxies.node_of(name) {
                Some(node) => view.datapath.snapshot_for(&node, revision, now),
                None => view.mesh.snapshot_with(name, revision, &self.proxies.looked_up(name)),
            };
            self.proxies.offer(name, &snapshot);
        }
        if only.is_none() {
            self.proxies.compiled_at(revision);
        }
    }

    /// `status.applied` of a stored resource at its current version (see
    /// [`Proxies::applied`]); who needs it is judged on the newest view
    /// compiled, with the resource itself as stored. `None` for a value this
    /// build cannot read.
    pub fn applied(&self, stored: &crate::store::Stored) -> Option<trefoil_api::Applied> {
        let resource: Resource = serde_json::from_value(stored.value.clone()).ok()?;
        let latest = self.published.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Reading never compiles, except once before anything was.
        let view = match latest {
            Some(view) => view,
            None => self.view().1,
        };
        let rule_node = match &resource.spec {
            trefoil_model::Spec::DatapathRule(rule) => Some(rule.node.as_deref()),
            _ => None,
        };
        Some(self.proxies.applied(stored.resource_version, |name, node, looked_up| match (node, rule_node) {
            // A node agent needs the rules its node's table holds.
            (Some(node), Some(rule)) => rule.is_none_or(|n| n == node),
            (Some(_), None) | (None, Some(_)) => false,
            (None, None) => view.mesh.needs_with(name, &resource, looked_up),
        }))
    }

    /// A scoped sidecar's on-demand lookup of `service`: a service the mesh
    /// has joins the proxy's scope and its snapshot is compiled again (its
    /// next snapshot is the answer); `Some(service)` when there is no such
    /// service (the answer is a `lookup_miss`). One already in its scope
    /// gets its snapshot offered again, which sends nothing if unchanged:
    /// such a lookup is answered as a miss, so the proxy stops waiting.
    pub async fn look_up(self: &Arc<Self>, name: &str, session: u64, service: &str) -> Option<String> {
        let service = service.to_ascii_lowercase();
        let compiler = self.clone();
        let known = {
            let service = service.clone();
            tokio::task::spawn_blocking(move || compiler.view().1.mesh.knows_service(&service)).await.unwrap_or(false)
        };
        if !known || !self.proxies.look_up(name, session, &service) {
            tracing::debug!(proxy = %name, %service, known, "on-demand lookup answered as a miss");
            return Some(service);
        }
        tracing::info!(proxy = %name, %service, "on-demand lookup: the service joins the proxy's scope");
        self.refresh_in_background(Some(name.to_string())).await;
        None
    }

    /// The shared view at the store's current revision, built only when the
    /// store moved on since the last one; building it records an Event for
    /// each datapath rule that newly does not resolve.
    fn view(&self) -> (u64, Arc<View>) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((revision, view)) = latest.as_ref().filter(|(r, _)| *r == self.store.revision()) {
            return (*revision, view.clone());
        }
        let (revision, stored) = self.store.list_all();
        let resources: Vec<Resource> = stored
            .into_iter()
            .filter_map(|s| match serde_json::from_value::<Resource>(s.value) {
                Ok(mut r) => {
                    // A TTL deadline is for one write of the rule.
                    if matches!(r.spec, trefoil_model::Spec::DatapathRule(_)) {
                        r.metadata.resource_version = Some(s.resource_version.to_string());
                    }
                    Some(r)
                }
                Err(e) => {
                    // Every write was validated; this means a store from another build.
                    tracing::warn!(kind = %s.kind, name = %s.name, error = %e, "skipping a stored object this build cannot read");
                    None
                }
            })
            .collect();
        let view = Arc::new(View {
            mesh: MeshView::new(&resources).with_default_collector(self.collector.as_deref()),
            datapath: DatapathView::new(&resources),
        });
        if let Err(e) = view.datapath.record_unresolved(&self.store, now_ms()) {
            tracing::warn!(error = %e, "cannot record the events of unresolved datapath rules");
        }
        *latest = Some((revision, view.clone()));
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = Some(view.clone());
        (revision, view)
    }
}

/// What every snapshot at one store revision is compiled from.
struct View {
    mesh: MeshView,
    datapath: DatapathView,
}

/// Recompiles for every connected proxy after each burst of store changes.
pub async fn distribute(compiler: Arc<Compiler>) {
    let mut events = compiler.store.subscribe();
    // No proxy has a snapshot yet; each one connecting is compiled at the then-current revision.
    compiler.proxies.compiled_at(compiler.store.revision());
    let noted = |event: &crate::store::Event| {
        if let crate::store::Event::Put(s) = event {
            compiler.proxies.written(s.resource_version, std::time::SystemTime::now());
        }
    };
    loop {
        // A lagged receiver only means many changes: compile all the same.
        match events.recv().await {
            Err(broadcast::error::RecvError::Closed) => return,
            Ok(event) => noted(&event),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
        }
        let burst_end = tokio::time::Instant::now() + DEBOUNCE_MAX;
        while tokio::time::Instant::now() < burst_end {
            match tokio::time::timeout(DEBOUNCE_QUIET, events.recv()).await {
                Ok(Ok(event)) => noted(&event),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_quiet) => break,
            }
        }
        compiler.refresh_in_background(None).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;
    use trefoil_model::datapath::node_table::LineAction;
    use trefoil_wire::{ConfigStreamClient, Hello as WireHello};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// A config stream server over a fresh store, on a loopback port.
    async fn control(test: &str) -> (SocketAddr, Arc<Proxies>) {
        let (addr, proxies, _) = control_with_tokens(test).await;
        (addr, proxies)
    }

    /// A scratch directory for `test` with an empty store, and the proxies
    /// and compiler over it.
    fn fresh(test: &str) -> (std::path::PathBuf, Arc<Store>, Arc<Proxies>, Arc<Compiler>) {
        let dir = std::env::temp_dir().join(format!("trefoil-stream-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(dir.join("store.db")).unwrap());
        let proxies = Arc::new(Proxies::default());
        let compiler = Arc::new(Compiler::new(store.clone(), proxies.clone(), None));
        (dir, store, proxies, compiler)
    }

    /// [`control`], and the join tokens its CA accepts.
    async fn control_with_tokens(test: &str) -> (SocketAddr, Arc<Proxies>, crate::identity::join::JoinTokens) {
        let (dir, store, proxies, compiler) = fresh(test);
        let tokens = crate::identity::join::JoinTokens::new(&dir);
        let issuer = Arc::new(Issuer::for_tests(&dir));
        proxies.set_trust_bundle(&issuer.trust_bundle());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = Arc::new(Auth::new(store.clone(), false, addr).unwrap());
        tokio::spawn(trefoil_wire::serve(listener, ConfigStreamService::new(compiler, issuer, auth), std::future::pending()));
        (addr, proxies, tokens)
    }

    /// One proxy's end of a stream, opened with a Hello from `pid`.
    struct Wire {
        snapshots: Streaming<Snapshot>,
        say: mpsc::UnboundedSender<ProxyMessage>,
        _client: ConfigStreamClient,
    }

    /// Opens a stream; the status it is refused with, if it is.
    async fn open(addr: SocketAddr, name: &str, pid: u32) -> Result<Wire, Status> {
        let mut client = ConfigStreamClient::connect(&addr.to_string(), Duration::from_secs(3)).await.unwrap();
        let (say, said) = mpsc::unbounded_channel();
        say.send(ProxyMessage::hello(WireHello {
            proxy: name.into(),
            admin_address: format!("127.0.0.1:{pid}"),
            version: 0,
            hash: 0,
            pid,
            kind: String::new(),
            looked_up: Vec::new(),
        }))
        .unwrap();
        match client.stream(UnboundedReceiverStream::new(said)).await {
            Ok(snapshots) => Ok(Wire { snapshots, say, _client: client }),
            Err(trefoil_wire::ClientError::Refused(status)) => Err(status),
            Err(e) => panic!("cannot open a stream: {e}"),
        }
    }

    /// The stream's first snapshot.
    async fn first(wire: &mut Wire) -> Snapshot {
        match tokio::time::timeout(WAIT, wire.snapshots.message()).await.expect("the control plane answers") {
            Ok(Some(s)) => s,
            other => panic!("no snapshot: {other:?}"),
        }
    }

    fn already_exists(status: &Status) -> bool {
        status.code() == Status::already_exists("").code()
    }

    /// Opens streams for `name` until one is accepted; panics after `limit`.
    async fn open_until_accepted(addr: SocketAddr, name: &str, pid: u32, limit: Duration) -> Wire {
        let deadline = Instant::now() + limit;
        loop {
            match open(addr, name, pid).await {
                Ok(mut wire) => {
                    first(&mut wire).await;
                    return wire;
                }
                Err(status) if already_exists(&status) && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(status) => panic!("not accepted within {limit:?}: {status:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_second_proxy_under_a_taken_name_is_refused_and_the_first_keeps_its_stream() {
        let (addr, proxies) = control("taken").await;
        let mut holder = open(addr, "edge", 1001).await.unwrap();
        let snapshot = first(&mut holder).await;

        let refused = open(addr, "edge", 1002).await.err().expect("the second is refused");
        assert!(already_exists(&refused), "{refused:?}");
        let message = refused.message();
        assert!(
            message.contains("\"edge\"")
                && message.contains("from 127.0.0.1:")
                && message.contains("pid 1001")
                && message.contains("admin 127.0.0.1:1001"),
            "{message}"
        );

        // The holder's session is the live one: its ACK is taken.
        holder.say.send(ProxyMessage::ack(snapshot.version, snapshot.hash)).unwrap();
        let deadline = Instant::now() + WAIT;
        while proxies.status(&[])[0].acked_version != Some(snapshot.version.into()) {
            assert!(Instant::now() < deadline, "the holder's ACK was not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(proxies.status(&[])[0].admin_address.as_deref(), Some("127.0.0.1:1001"));

        // Once the holder's stream is gone, the name is free again.
        drop(holder);
        let _taken_over = open_until_accepted(addr, "edge", 1002, WAIT).await;
        assert_eq!(proxies.status(&[])[0].admin_address.as_deref(), Some("127.0.0.1:1002"));
    }

    #[tokio::test]
    async fn a_proxy_slow_to_say_hello_gets_its_refusal_as_the_streams_end() {
        let (addr, _proxies) = control("slow").await;
        let mut holder = open(addr, "edge", 3001).await.unwrap();
        first(&mut holder).await;
        // Nothing said before the headers: they come all the same.
        let mut client = ConfigStreamClient::connect(&addr.to_string(), Duration::from_secs(3)).await.unwrap();
        let (say, said) = mpsc::unbounded_channel();
        let mut snapshots = client.stream(UnboundedReceiverStream::new(said)).await.expect("headers without a Hello");
        say.send(ProxyMessage::hello(WireHello {
            proxy: "edge".into(),
            admin_address: "127.0.0.1:3002".into(),
            version: 0,
            hash: 0,
            pid: 3002,
            kind: String::new(),
            looked_up: Vec::new(),
        }))
        .unwrap();
        let end = tokio::time::timeout(WAIT, snapshots.message()).await.expect("the stream ends");
        assert!(end.as_ref().is_err_and(already_exists), "{end:?}");
        // A stream that starts with anything but a Hello is refused as such.
        let mut client = ConfigStreamClient::connect(&addr.to_string(), Duration::from_secs(3)).await.unwrap();
        let (say, said) = mpsc::unbounded_channel();
        say.send(ProxyMessage::ack(1, 1)).unwrap();
        match client.stream(UnboundedReceiverStream::new(said)).await {
            Err(trefoil_wire::ClientError::Refused(status)) => assert_eq!(status.code(), Status::invalid_argument("").code(), "{status:?}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a stream without a Hello was opened"),
        }
    }

    /// Forwards one connection to `to` until `freeze` turns true, then stops
    /// moving bytes but keeps both sockets open: a peer gone without a word.
    async fn freezable_relay(to: SocketAddr) -> (SocketAddr, watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let (freeze, mut frozen) = watch::channel(false);
        tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut server = tokio::net::TcpStream::connect(to).await.unwrap();
            let froze = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                f = frozen.wait_for(|f| *f) => f.is_ok(),
            };
            if froze {
                std::future::pending::<()>().await;
            }
            drop((client, server));
        });
        (at, freeze)
    }

    #[tokio::test]
    async fn a_name_held_by_a_vanished_proxy_is_freed_by_the_keepalive() {
        let (addr, _proxies) = control("vanished").await;
        let (relay, freeze) = freezable_relay(addr).await;
        let mut gone = open(relay, "edge", 2001).await.unwrap();
        first(&mut gone).await;
        freeze.send_replace(true);
        // The control plane cannot tell yet: the connection looks open.
        assert!(open(addr, "edge", 2002).await.is_err_and(|s| already_exists(&s)));
        // Unanswered pings (every 10 s, 5 s to answer) end it, and the name is free.
        let _back = open_until_accepted(addr, "edge", 2002, Duration::from_secs(40)).await;
    }

    /// The next message that answers a CSR, skipping snapshots.
    async fn answer(wire: &mut Wire) -> trefoil_wire::IdentityAnswer {
        loop {
            match tokio::time::timeout(WAIT, wire.snapshots.message()).await.expect("the control plane answers") {
                Ok(Some(Snapshot { identity: Some(answer), .. })) => return answer,
                Ok(Some(_)) => continue,
                other => panic!("no answer: {other:?}"),
            }
        }
    }

    fn csr(key: &rcgen::KeyPair, uri: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uri.map(|u| rcgen::SanType::URI(u.try_into().unwrap())).into_iter().collect();
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[tokio::test]
    async fn a_join_token_buys_one_svid_and_the_svid_buys_its_renewal() {
        let (addr, _proxies, tokens) = control_with_tokens("csr").await;
        let mut wire = open(addr, "web-0", 4001).await.unwrap();
        let snapshot = first(&mut wire).await;
        assert!(snapshot.trust_bundle_pem.starts_with("-----BEGIN CERTIFICATE-----"), "the bundle comes with snapshots");
        let web = crate::identity::join::JoinIdentity { namespace: "default".into(), workload: "web".into() };
        let now = std::time::SystemTime::now();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let request = |csr_der, join_token: &str, current_svid_der| {
            ProxyMessage::csr(trefoil_wire::CertificateRequest { csr_der, join_token: join_token.into(), current_svid_der })
        };

        // Asking for another workload is refused, and spends the token.
        let token = tokens.mint(&web, Duration::from_secs(60), now).unwrap();
        wire.say.send(request(csr(&key, Some("spiffe://trefoil.local/ns/default/sa/payments")), &token, vec![])).unwrap();
        let refused = answer(&mut wire).await;
        assert!(
            refused.error.contains("asks for spiffe://trefoil.local/ns/default/sa/payments") && refused.certificate_chain_pem.is_empty(),
            "{refused:?}"
        );

        let token = tokens.mint(&web, Duration::from_secs(60), now).unwrap();
        wire.say.send(request(csr(&key, None), &token, vec![])).unwrap();
        let issued = answer(&mut wire).await;
        assert!(issued.error.is_empty(), "{}", issued.error);
        assert_eq!(issued.trust_bundle_pem, snapshot.trust_bundle_pem);
        assert_eq!(issued.renew_after_ms, 2400 * 1000, "two thirds of an hour");
        let der = rustls_pemfile::certs(&mut issued.certificate_chain_pem.as_bytes()).next().unwrap().unwrap().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(format!("{:?}", san.value.general_names), "[URI(\"spiffe://trefoil.local/ns/default/sa/web\")]");

        // The same token again: refused, nothing issued.
        wire.say.send(request(csr(&key, None), &token, vec![])).unwrap();
        let reused = answer(&mut wire).await;
        assert!(reused.error.contains("already used") && reused.certificate_chain_pem.is_empty(), "{reused:?}");

        // Renewal: the current SVID, and a CSR signed by its key.
        wire.say.send(request(csr(&key, None), "", der.clone())).unwrap();
        let renewed = answer(&mut wire).await;
        assert!(renewed.error.is_empty() && renewed.certificate_chain_pem != issued.certificate_chain_pem, "{renewed:?}");
        let both = answer_for(&mut wire, request(csr(&key, None), &token, der)).await;
        assert!(both.error.contains("exactly one proof"), "{both:?}");
    }

    /// A control plane with its compile loop, its store, and an API token.
    async fn control_for_agents(test: &str) -> (SocketAddr, Arc<Proxies>, Arc<Store>, String) {
        let (dir, store, proxies, compiler) = fresh(test);
        tokio::spawn(distribute(compiler.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = Arc::new(Auth::new(store.clone(), false, addr).unwrap());
        let token = auth.mint_for_tests(trefoil_api::Role::Viewer);
        let issuer = Arc::new(Issuer::for_tests(&dir));
        tokio::spawn(trefoil_wire::serve(listener, ConfigStreamService::new(compiler, issuer, auth), std::future::pending()));
        (addr, proxies, store, token)
    }

    /// Opens a node agent's stream for `node`, with `token` if any.
    async fn open_agent(addr: SocketAddr, node: &str, token: Option<&str>) -> Result<Wire, Status> {
        let mut client = ConfigStreamClient::connect(&addr.to_string(), Duration::from_secs(3)).await.unwrap();
        if let Some(token) = token {
            client = client.with_bearer(token).unwrap();
        }
        let (say, said) = mpsc::unbounded_channel();
        say.send(ProxyMessage::hello(WireHello { proxy: node.into(), kind: trefoil_wire::AGENT.into(), pid: 9, ..Default::default() }))
            .unwrap();
        match client.stream(UnboundedReceiverStream::new(said)).await {
            Ok(snapshots) => Ok(Wire { snapshots, say, _client: client }),
            Err(trefoil_wire::ClientError::Refused(status)) => Err(status),
            Err(e) => panic!("cannot open a stream: {e}"),
        }
    }

    fn apply(store: &Store, yaml: &str) -> u64 {
        let mut revision = 0;
        for loaded in trefoil_model::load_str(&Arc::from("t.yaml"), yaml).unwrap() {
            let r = loaded.resource;
            revision = store.put(r.kind(), r.name(), serde_json::to_value(&r).unwrap(), None).unwrap();
        }
        revision
    }

    fn rule(name: &str, spec: &str) -> String {
        format!("apiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {{name: {name}}}\nspec: {spec}\n")
    }

    fn table(snapshot: &Snapshot) -> trefoil_model::datapath::node_table::NodeTable {
        serde_json::from_str(&snapshot.resources_json).unwrap_or_else(|e| panic!("{e}: {}", snapshot.resources_json))
    }

    fn rules_in(snapshot: &Snapshot) -> Vec<String> {
        let mut names: Vec<String> = table(snapshot).lines.into_iter().map(|l| l.rule).collect();
        names.dedup();
        names
    }

    /// `status.applied` counts node agents for the DatapathRules of their
    /// node and proxies for what their snapshots hold, and moves once each
    /// acknowledges the compile that holds the write.
    #[test]
    fn applied_counts_agents_for_their_nodes_rules_and_proxies_for_the_mesh() {
        let (_dir, store, proxies, compiler) = fresh("applied");
        let mut outboxes = Vec::new();
        let mut sessions = Vec::new();
        for (name, node) in [("agent/edge", Some("edge")), ("agent/core", Some("core")), ("gw", None)] {
            let (tx, rx) = watch::channel(None);
            let hello = Hello { name, admin_address: "", version: 0, hash: 0, pid: 1, peer: "127.0.0.1:1", node, looked_up: &[] };
            sessions.push((name, proxies.connect(&hello, tx).unwrap()));
            outboxes.push(rx);
        }
        apply(&store, &rule("block", "{match: {source: [10.0.1.2]}, action: drop, node: edge}"));
        apply(&store, &rule("everywhere", "{match: {source: [10.0.9.9]}, action: drop}"));
        apply(
            &store,
            "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {endpoints: [{address: \"127.0.0.1:9000\"}]}\n",
        );
        let applied = |kind: &str, name: &str| compiler.applied(&store.get(kind, name).unwrap()).unwrap();
        let counts = |a: trefoil_api::Applied| (a.acknowledged, a.needed);
        assert_eq!(counts(applied("DatapathRule", "block")), (0, 1));
        assert_eq!(counts(applied("DatapathRule", "everywhere")), (0, 2));
        assert_eq!(counts(applied("Service", "web")), (0, 1), "agents do not get services");
        compiler.refresh(None);
        for ((name, session), rx) in sessions.iter().zip(&outboxes) {
            let sent = rx.borrow().clone().expect("a snapshot was offered");
            proxies.ack(name, *session, sent.version, sent.hash);
        }
        assert_eq!(counts(applied("DatapathRule", "block")), (1, 1));
        assert_eq!(counts(applied("DatapathRule", "everywhere")), (2, 2));
        assert_eq!(counts(applied("Service", "web")), (1, 1));
    }

    #[tokio::test]
    async fn a_node_agent_gets_its_nodes_table_acks_each_revision_and_hears_of_no_other_node() {
        let (addr, proxies, store, token) = control_for_agents("agent").await;

        // Never anonymous, and never with a token the control plane did not issue.
        let anonymous = open_agent(addr, "edge", None).await.err().expect("refused without a token");
        assert_eq!(anonymous.code(), Status::unauthenticated("").code(), "{anonymous:?}");
        assert!(anonymous.message().contains("Bearer"), "{anonymous:?}");
        let forged = open_agent(addr, "edge", Some("trf_00000000000000000000000000000000_x")).await.err().expect("refused");
        assert_eq!(forged.code(), Status::unauthenticated("").code(), "{forged:?}");

        let mut agent = open_agent(addr, "edge", Some(&token)).await.unwrap();
        let empty = first(&mut agent).await;
        assert_eq!(table(&empty).lines, [], "no rules yet");
        agent.say.send(ProxyMessage::ack(empty.version, empty.hash)).unwrap();

        // A rule for another node, then one for this node: the next table
        // this agent is sent has its own rule and not the other node's.
        apply(&store, &rule("elsewhere", "{match: {source: [10.0.9.9]}, action: drop, node: other}"));
        let revision = apply(&store, &rule("block", "{match: {source: [10.0.1.2]}, action: drop, node: edge}"));
        let next = first(&mut agent).await;
        assert!(next.version >= revision && next.version > empty.version, "a new revision: {} after {}", next.version, empty.version);
        assert_eq!(rules_in(&next), ["block"]);
        agent.say.send(ProxyMessage::ack(next.version, next.hash)).unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            let status = proxies.status(&[]).into_iter().find(|p| p.name == "agent/edge").expect("the agent is registered");
            if status.acked_version == Some(next.version.into()) {
                break status;
            }
            assert!(Instant::now() < deadline, "the ACK was not recorded: {status:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!((status.node.as_deref(), status.connected, status.admin_address), (Some("edge"), true, None));

        // A NACK is kept with its reason until a newer revision is in force.
        let revision = apply(&store, &rule("block", "{match: {source: [10.0.1.3]}, action: drop, node: edge}"));
        let refused = first(&mut agent).await;
        assert!(refused.version >= revision);
        agent.say.send(ProxyMessage::nack(refused.version, refused.hash, "missing capability CAP_BPF")).unwrap();
        let deadline = Instant::now() + WAIT;
        while proxies.status(&[]).iter().find(|p| p.name == "agent/edge").and_then(|p| p.nack.clone()).is_none() {
            assert!(Instant::now() < deadline, "the NACK was not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let nack = proxies.status(&[]).into_iter().find(|p| p.name == "agent/edge").unwrap().nack.unwrap();
        assert_eq!((nack.version, nack.error.as_str()), (refused.version.into(), "missing capability CAP_BPF"));
    }

    #[tokio::test]
    async fn a_rule_that_does_not_resolve_is_sent_as_it_fails_and_recorded_as_an_event() {
        let (addr, _proxies, store, token) = control_for_agents("unresolved").await;
        let mut agent = open_agent(addr, "edge", Some(&token)).await.unwrap();
        let empty = first(&mut agent).await;
        agent.say.send(ProxyMessage::ack(empty.version, empty.hash)).unwrap();
        apply(&store, &rule("via-nothing", "{match: {destination: [10.0.3.0/24], ports: [80]}, action: redirect, to: {app: missing}}"));
        let next = first(&mut agent).await;
        let sent = table(&next);
        // Redirect fails closed: its traffic is dropped, and the table says why.
        assert_eq!(sent.lines.iter().map(|l| (&*l.rule, &l.action)).collect::<Vec<_>>(), [("via-nothing", &LineAction::Drop)]);
        let why = "`to` (app=missing) selects no Workload, NetworkFunction or CNF";
        assert_eq!(sent.unresolved.iter().map(|u| (&*u.rule, &*u.reason)).collect::<Vec<_>>(), [("via-nothing", why)]);
        let events: Vec<serde_json::Value> = store.list("Event").into_iter().map(|e| e.value).collect();
        let [event] = &events[..] else { panic!("one event: {events:?}") };
        assert_eq!((&event["spec"]["regarding"], &event["spec"]["reason"]), (&"DatapathRule/via-nothing".into(), &"Unresolved".into()));
        let message = event["spec"]["message"].as_str().unwrap();
        assert!(message.contains("rule via-nothing: redirect not resolved") && message.contains(why), "{message}");
    }

    async fn answer_for(wire: &mut Wire, message: ProxyMessage) -> trefoil_wire::IdentityAnswer {
        wire.say.send(message).unwrap();
        answer(wire).await
    }
}
