//! The store kept in an etcd cluster (decision 0024), for several control
//! planes at once.
//!
//! Reads come from an in-memory [`Mirror`] fed by an etcd watch from the
//! revision loaded at start, so they stay synchronous and cheap. Writes are
//! etcd transactions comparing the key's `mod_revision` with the expected
//! `resourceVersion` (or its `create_revision` with 0 for a create); a
//! writer then waits, bounded, until the mirror has applied its revision, so
//! it reads its own write and its watchers see it. `resourceVersion` is
//! etcd's `mod_revision`: strictly increasing across the store, as in the
//! embedded store.
//!
//! gRPC calls run on a runtime of their own (one thread), so the
//! synchronous store API can wait for them from any thread, including a
//! current-thread runtime's only one (which waits, as it waits for the
//! embedded store's fsync).

mod mirror;
mod proto;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;
use tonic_prost::ProstCodec;

use self::mirror::Mirror;
use super::{Event, StoreError, Stored};

/// How long one etcd call may take before the next endpoint is tried. A
/// member without quorum holds writes until this runs out.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a writer waits for the watch to bring its own write into the mirror.
const MIRROR_WAIT: Duration = Duration::from_secs(5);
/// Largest message taken from etcd: a full read of the store at start.
const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Pause before the watch is opened again after every endpoint failed.
const WATCH_RETRY: Duration = Duration::from_millis(500);
/// The leader key's lease: a dead leader's controllers move within about this.
pub const LEADER_TTL_SECONDS: i64 = 5;
/// How often a follower checks whether the leader key is gone, and a leader
/// renews its lease.
const ELECTION_TICK: Duration = Duration::from_secs(1);
const LEADER_KEY: &[u8] = b"/trefoil/leader";

/// Who leads the controllers that must run once (rollouts, rule expiry).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Leader {
    /// Whether this process does.
    pub me: bool,
    /// The leader's name (its REST address), if one is known.
    pub holder: Option<String>,
}

/// The etcd endpoints, tried in turn from the last one that answered.
#[derive(Clone)]
struct Client {
    endpoints: Arc<[(String, Channel)]>,
    current: Arc<AtomicUsize>,
}

/// Why a call failed on every endpoint.
#[derive(Debug)]
struct Unreachable(String);

impl Client {
    fn new(endpoints: &[String]) -> Result<Self, String> {
        let mut channels = Vec::new();
        for address in endpoints {
            let endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| format!("etcd endpoint {address:?}: {e}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(3));
            channels.push((address.clone(), endpoint.connect_lazy()));
        }
        Ok(Client { endpoints: channels.into(), current: Arc::new(AtomicUsize::new(0)) })
    }

    fn grpc(channel: &Channel) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The endpoints from the one that last answered, each with its index.
    fn in_turn(&self) -> impl Iterator<Item = (usize, &(String, Channel))> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        (0..n).map(move |i| ((start + i) % n, &self.endpoints[(start + i) % n]))
    }

    /// One unary call, failing over to the next endpoint on any failure.
    async fn unary<Req, Resp>(&self, path: &'static str, request: Req) -> Result<Resp, Unreachable>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut failures = Vec::new();
        for (i, (address, channel)) in self.in_turn() {
            let mut grpc = Self::grpc(channel);
            let call = async {
                grpc.ready().await.map_err(|e| format!("not connected: {}", chain(&e)))?;
                let codec = ProstCodec::<Req, Resp>::default();
                grpc.unary(Request::new(request.clone()), PathAndQuery::from_static(path), codec)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            };
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(response)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(response);
                }
                Ok(Err(e)) => failures.push(format!("{address}: {e}")),
                Err(_) => failures.push(format!("{address}: no answer within {CALL_TIMEOUT:?}")),
            }
        }
        Err(Unreachable(failures.join("; ")))
    }

    /// A one-message bidirectional call (the lease keep-alive), with failover.
    async fn one_of_stream<Req, Resp>(&self, path: &'static str, request: Req) -> Result<Resp, Unreachable>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut failures = Vec::new();
        for (i, (address, channel)) in self.in_turn() {
            let mut grpc = Self::grpc(channel);
            let call = async {
                grpc.ready().await.map_err(|e| format!("not connected: {}", chain(&e)))?;
                let codec = ProstCodec::<Req, Resp>::default();
                let mut stream = grpc
                    .streaming(Request::new(tokio_stream::once(request.clone())), PathAndQuery::from_static(path), codec)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                match stream.message().await {
                    Ok(Some(response)) => Ok(response),
                    Ok(None) => Err("the stream ended without an answer".to_string()),
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                }
            };
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(response)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(response);
                }
                Ok(Err(e)) => failures.push(format!("{address}: {e}")),
                Err(_) => failures.push(format!("{address}: no answer within {CALL_TIMEOUT:?}")),
            }
        }
        Err(Unreachable(failures.join("; ")))
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The etcd backend of [`super::Store`].
pub struct Etcd {
    /// `host:port,...`, as given, for errors.
    endpoints: String,
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    mirror: Arc<Mirror>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn range_all() -> proto::RangeRequest {
    proto::RangeRequest { key: mirror::PREFIX.to_vec(), range_end: mirror::prefix_end(mirror::PREFIX), ..Default::default() }
}

fn header_revision(header: &Option<proto::ResponseHeader>) -> u64 {
    header.as_ref().map_or(0, |h| h.revision.max(0) as u64)
}

impl Etcd {
    /// Connects to `endpoints` (`host:port`), loads every resource and
    /// starts the watch that keeps the mirror current.
    pub fn open(endpoints: &[String], events: tokio::sync::broadcast::Sender<Event>) -> Result<Self, StoreError> {
        let joined = endpoints.join(",");
        let unavailable = |reason: String| StoreError::Unavailable { endpoints: joined.clone(), reason };
        if endpoints.is_empty() {
            return Err(unavailable("no endpoint given".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("cannot start the etcd client's thread: {e}")))?;
        let client = {
            let _entered = runtime.enter();
            Client::new(endpoints).map_err(unavailable)?
        };
        let mirror = Arc::new(Mirror::new(events));
        let etcd = Etcd { endpoints: joined.clone(), runtime: Some(runtime), client: client.clone(), mirror: mirror.clone() };
        let loaded = etcd.block(async move { client.unary::<_, proto::RangeResponse>(proto::RANGE, range_all()).await })?;
        let loaded = loaded.map_err(|e| unavailable(e.0))?;
        mirror.load(header_revision(&loaded.header), &loaded.kvs);
        tracing::info!(endpoints = %joined, revision = mirror.revision(), objects = loaded.kvs.len(), "store: loaded from etcd");
        let (client, watched) = (etcd.client.clone(), mirror);
        etcd.handle().spawn(watch(client, watched));
        Ok(etcd)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("the runtime lives as long as the store").handle()
    }

    /// Runs `future` on the etcd runtime and waits for it here.
    fn block<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let _ = tx.send(future.await);
        });
        // Blocks this thread, as the embedded store's fsync does: the call
        // itself runs on the etcd runtime, so even a current-thread caller
        // cannot deadlock it.
        let result = rx.recv();
        result.map_err(|_| StoreError::Unavailable { endpoints: self.endpoints.clone(), reason: "the etcd client stopped".into() })
    }

    pub fn revision(&self) -> u64 {
        self.mirror.revision()
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<Stored> {
        self.mirror.get(kind, name)
    }

    pub fn list(&self, kind: &str) -> Vec<Stored> {
        self.mirror.list(kind)
    }

    pub fn list_all(&self) -> (u64, Vec<Stored>) {
        self.mirror.list_all()
    }

    pub fn put(&self, kind: &str, name: &str, value: serde_json::Value, expected: Option<u64>) -> Result<u64, StoreError> {
        let key = mirror::key(kind, name);
        let compare = match expected {
            None => vec![],
            Some(0) => vec![compare(&key, proto::TARGET_CREATE, proto::EQUAL, proto::compare::TargetUnion::CreateRevision(0))],
            Some(v) => vec![compare(&key, proto::TARGET_MOD, proto::EQUAL, proto::compare::TargetUnion::ModRevision(v as i64))],
        };
        let value = serde_json::to_vec(&value).unwrap_or_default();
        let put = proto::request_op::Request::Put(proto::PutRequest { key: key.clone(), value, lease: 0 });
        self.txn(Write { kind, name, key, expected: expected.unwrap_or(0), delete: false }, compare, put)
    }

    pub fn delete(&self, kind: &str, name: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        let key = mirror::key(kind, name);
        let compare = match expected {
            None | Some(0) => compare(&key, proto::TARGET_VERSION, proto::GREATER, proto::compare::TargetUnion::Version(0)),
            Some(v) => compare(&key, proto::TARGET_MOD, proto::EQUAL, proto::compare::TargetUnion::ModRevision(v as i64)),
        };
        let delete = proto::request_op::Request::DeleteRange(proto::DeleteRangeRequest { key: key.clone(), range_end: vec![] });
        self.txn(Write { kind, name, key, expected: expected.unwrap_or(0), delete: true }, vec![compare], delete)
    }

    /// `if compare then op else read the key`; the new revision, once the mirror has it.
    fn txn(&self, write: Write<'_>, compare: Vec<proto::Compare>, op: proto::request_op::Request) -> Result<u64, StoreError> {
        let Write { kind, name, key, expected, delete } = write;
        let read = proto::RequestOp { request: Some(proto::request_op::Request::Range(proto::RangeRequest { key, ..Default::default() })) };
        let request = proto::TxnRequest { compare, success: vec![proto::RequestOp { request: Some(op) }], failure: vec![read] };
        let client = self.client.clone();
        let response = self
            .block(async move { client.unary::<_, proto::TxnResponse>(proto::TXN, request).await })?
            .map_err(|e| StoreError::Unavailable { endpoints: self.endpoints.clone(), reason: e.0 })?;
        if !response.succeeded {
            let current = response.responses.iter().find_map(|r| match &r.response {
                Some(proto::response_op::Response::Range(range)) => Some(range.kvs.first().map(|kv| kv.mod_revision as u64)),
                _ => None,
            });
            let current = current.flatten();
            return Err(match (delete, current) {
                (true, None) => StoreError::NotFound { kind: kind.to_string(), name: name.to_string() },
                _ => StoreError::Conflict { kind: kind.to_string(), name: name.to_string(), expected, current },
            });
        }
        let revision = header_revision(&response.header);
        if !self.mirror.wait_for(revision, MIRROR_WAIT) {
            tracing::warn!(
                revision,
                "store: the etcd watch has not delivered this write after {MIRROR_WAIT:?}; it is committed, readers here will see it late"
            );
        }
        Ok(revision)
    }

    /// Campaigns for leadership as `me`, for as long as the store lives.
    pub fn elect(&self, me: String) -> tokio::sync::watch::Receiver<Leader> {
        let (tx, rx) = tokio::sync::watch::channel(Leader::default());
        self.handle().spawn(campaign(self.client.clone(), me, tx));
        rx
    }
}

/// The object a transaction writes, and what its failure means.
struct Write<'a> {
    kind: &'a str,
    name: &'a str,
    key: Vec<u8>,
    /// The version the caller expected, for the conflict it is told of.
    expected: u64,
    /// A refused delete of an absent key is "not found", not a conflict.
    delete: bool,
}

fn compare(key: &[u8], target: i32, result: i32, union: proto::compare::TargetUnion) -> proto::Compare {
    proto::Compare { result, target, key: key.to_vec(), target_union: Some(union) }
}

/// Keeps the mirror current, for ever: a watch from the mirror's revision,
/// opened again on another endpoint when one fails, and a full reload when
/// the revision it needs was compacted away.
async fn watch(client: Client, mirror: Arc<Mirror>) {
    let mut last_problem = String::new();
    loop {
        match watch_once(&client, &mirror).await {
            WatchEnd::Compacted => {
                tracing::warn!("store: the etcd watch fell behind a compaction; reloading everything");
                match client.unary::<_, proto::RangeResponse>(proto::RANGE, range_all()).await {
                    Ok(loaded) => mirror.load(header_revision(&loaded.header), &loaded.kvs),
                    Err(e) => tracing::warn!("store: reloading from etcd failed: {}", e.0),
                }
            }
            WatchEnd::Failed(problem) => {
                if problem != last_problem {
                    tracing::warn!("store: the etcd watch failed on every endpoint ({problem}); retrying");
                    last_problem = problem;
                }
                tokio::time::sleep(WATCH_RETRY).await;
            }
        }
    }
}

enum WatchEnd {
    Compacted,
    Failed(String),
}

async fn watch_once(client: &Client, mirror: &Mirror) -> WatchEnd {
    let mut failures = Vec::new();
    for (i, (address, channel)) in client.in_turn() {
        let create = proto::WatchCreateRequest {
            key: mirror::PREFIX.to_vec(),
            range_end: mirror::prefix_end(mirror::PREFIX),
            start_revision: mirror.revision() as i64 + 1,
            progress_notify: true,
            prev_kv: false,
        };
        let request = proto::WatchRequest { request_union: Some(proto::watch_request::RequestUnion::CreateRequest(create)) };
        // The request stream stays open (and the watch with it) while `_tx` lives.
        let (_tx, rx) = tokio::sync::mpsc::channel::<proto::WatchRequest>(1);
        let requests = tokio_stream::StreamExt::chain(tokio_stream::once(request), tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut request = Request::new(requests);
        // A member cut off from the cluster's leader ends the watch rather than stalling it.
        request.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
        let mut grpc = Client::grpc(channel);
        let opened = tokio::time::timeout(CALL_TIMEOUT, async {
            grpc.ready().await.map_err(|e| format!("not connected: {}", chain(&e)))?;
            let codec = ProstCodec::<proto::WatchRequest, proto::WatchResponse>::default();
            grpc.streaming(request, PathAndQuery::from_static(proto::WATCH), codec)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
        .await;
        let mut stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                failures.push(format!("{address}: {e}"));
                continue;
            }
            Err(_) => {
                failures.push(format!("{address}: no answer within {CALL_TIMEOUT:?}"));
                continue;
            }
        };
        client.current.store(i, Ordering::Relaxed);
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    if response.compact_revision != 0 {
                        return WatchEnd::Compacted;
                    }
                    if response.canceled {
                        failures.push(format!("{address}: watch canceled: {}", response.cancel_reason));
                        break;
                    }
                    mirror.apply(&response.events);
                }
                Ok(None) => {
                    failures.push(format!("{address}: the watch ended"));
                    break;
                }
                Err(s) => {
                    failures.push(format!("{address}: {:?}: {}", s.code(), s.message()));
                    break;
                }
            }
        }
    }
    WatchEnd::Failed(failures.join("; "))
}

/// The election: a leader holds `/trefoil/leader` under a lease it keeps
/// alive; the others check each [`ELECTION_TICK`] whether the key is gone
/// (its leader's lease expired) and try to create it.
async fn campaign(client: Client, me: String, tx: tokio::sync::watch::Sender<Leader>) {
    let read = || proto::RangeRequest { key: LEADER_KEY.to_vec(), ..Default::default() };
    loop {
        let holder = match client.unary::<_, proto::RangeResponse>(proto::RANGE, read()).await {
            Ok(r) => r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            Err(e) => {
                tracing::debug!("leader election: cannot read the leader key: {}", e.0);
                tx.send_if_modified(|l| std::mem::replace(l, Leader { me: false, holder: l.holder.clone() }) != *l);
                tokio::time::sleep(ELECTION_TICK).await;
                continue;
            }
        };
        if let Some(holder) = holder {
            let leader = Leader { me: false, holder: Some(holder) };
            tx.send_if_modified(|l| std::mem::replace(l, leader.clone()) != leader);
            tokio::time::sleep(ELECTION_TICK).await;
            continue;
        }
        match try_lead(&client, &me).await {
            Ok(Some(lease)) => {
                tracing::info!(me = %me, "leader election: this control plane leads; it runs the controllers");
                let _ = tx.send(Leader { me: true, holder: Some(me.clone()) });
                hold(&client, lease).await;
                tracing::warn!(me = %me, "leader election: lost the lease; no longer leading");
                let _ = tx.send(Leader { me: false, holder: None });
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("leader election: {}", e.0),
        }
        tokio::time::sleep(ELECTION_TICK).await;
    }
}

/// Creates the leader key under a new lease if it is absent: the lease if it did.
async fn try_lead(client: &Client, me: &str) -> Result<Option<i64>, Unreachable> {
    let granted: proto::LeaseGrantResponse =
        client.unary(proto::LEASE_GRANT, proto::LeaseGrantRequest { ttl: LEADER_TTL_SECONDS, id: 0 }).await?;
    let put = proto::PutRequest { key: LEADER_KEY.to_vec(), value: me.as_bytes().to_vec(), lease: granted.id };
    let txn = proto::TxnRequest {
        compare: vec![compare(LEADER_KEY, proto::TARGET_CREATE, proto::EQUAL, proto::compare::TargetUnion::CreateRevision(0))],
        success: vec![proto::RequestOp { request: Some(proto::request_op::Request::Put(put)) }],
        failure: vec![],
    };
    let won = client.unary::<_, proto::TxnResponse>(proto::TXN, txn).await.map(|r| r.succeeded);
    if !matches!(won, Ok(true)) {
        let _ = client.unary::<_, proto::LeaseRevokeResponse>(proto::LEASE_REVOKE, proto::LeaseRevokeRequest { id: granted.id }).await;
    }
    Ok(won?.then_some(granted.id))
}

/// Keeps `lease` alive until it is lost: etcd says it is gone, or no renewal
/// succeeded for long enough that it may have expired (stepping down one
/// tick before it could have, so two leaders never overlap by our clock).
async fn hold(client: &Client, lease: i64) {
    let ttl = Duration::from_secs(LEADER_TTL_SECONDS as u64);
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ELECTION_TICK).await;
        match client
            .one_of_stream::<_, proto::LeaseKeepAliveResponse>(proto::LEASE_KEEP_ALIVE, proto::LeaseKeepAliveRequest { id: lease })
            .await
        {
            Ok(r) if r.ttl > 0 => renewed = Instant::now(),
            Ok(_) => return,
            Err(e) => tracing::debug!("leader election: renewing the lease failed: {}", e.0),
        }
        if renewed.elapsed() + ELECTION_TICK * 2 >= ttl {
            return;
        }
    }
}
