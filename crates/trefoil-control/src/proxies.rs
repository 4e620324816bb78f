//! The registry of proxies and node agents: who is connected, what each was
//! sent, acked or rejected. It decides whether a freshly compiled snapshot
//! goes out. A node agent is registered as `agent/<node>` (a name no proxy
//! can have) with its node beside it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;
use trefoil_api::{Applied, AppliedNack, Nack, ProxyStatus};
use trefoil_model::ResourceVersion;
use trefoil_wire::Snapshot;

use crate::compile::ProxySnapshot;

/// The latest snapshot for a session's outbound stream; a slow proxy only
/// ever gets the newest one, never a backlog.
pub type Outbox = watch::Sender<Option<Snapshot>>;

/// One open stream.
struct Session {
    id: u64,
    /// Who holds the name: said to a second proxy that asks for it.
    holder: Holder,
    outbox: Outbox,
    /// The content the proxy has or is about to get.
    sent_hash: u64,
    /// The newest store revision offered to this session, so a compile that
    /// lost a race with a newer one cannot overtake it.
    offered_revision: u64,
    /// Services a scoped sidecar looked up on demand (at most
    /// [`MAX_LOOKED_UP`]): its snapshots hold them from then on.
    looked_up: BTreeSet<String>,
}

/// Most services one proxy may look up on demand: each makes its snapshot
/// bigger, and a proxy asking for more is better sent the whole mesh.
pub const MAX_LOOKED_UP: usize = 1024;

#[derive(Default)]
struct Entry {
    /// Set for a node agent: the node whose datapath table it is sent.
    node: Option<String>,
    admin_address: Option<String>,
    latest: Option<(u64, u64)>,
    acked: Option<(u64, u64)>,
    nack: Option<Nack>,
    /// Content this proxy rejected: not sent to it again.
    nacked_hash: Option<u64>,
    last_seen: Option<SystemTime>,
    session: Option<Session>,
    /// The newest snapshot compiled for it (revision, hash, resources),
    /// sent or not: one equal to what it acked is in force at that revision.
    compiled: Option<(u64, u64, usize)>,
    /// When the revision in force (see [`Entry::in_force`]) last rose, the
    /// newest [`REACHED_KEPT`]: how long an acknowledgement took.
    reached: VecDeque<(u64, SystemTime)>,
    /// Services in the latest scoped snapshot offered; `None`: the whole mesh.
    scoped_services: Option<u32>,
}

/// Advances of a proxy's revision in force kept for `slowestMs`: a constant,
/// whatever the mesh's size.
const REACHED_KEPT: usize = 32;
/// Write times kept for `slowestMs`.
const WRITES_KEPT: usize = 4096;

impl Entry {
    /// The newest store revision whose content this proxy serves: what it
    /// acked, or a later compile for it whose content is the same (a write
    /// that changes nothing it gets needs no new ACK).
    fn in_force(&self) -> Option<u64> {
        let (version, hash) = self.acked?;
        Some(match self.compiled {
            Some((compiled, same, _)) if same == hash && compiled > version => compiled,
            _ => version,
        })
    }

    /// The newest revision it refused: a later compile with the refused
    /// content (not sent again) is refused too.
    fn refused(&self) -> Option<(u64, &str)> {
        let nack = self.nack.as_ref()?;
        let revision = match (self.compiled, self.nacked_hash) {
            (Some((compiled, hash, _)), Some(nacked)) if hash == nacked => compiled.max(nack.version.get()),
            _ => nack.version.get(),
        };
        Some((revision, nack.error.as_str()))
    }

    /// Records the time the revision in force rose, if it did.
    fn note_reached(&mut self, now: SystemTime) {
        let Some(revision) = self.in_force() else { return };
        if self.reached.back().is_none_or(|(r, _)| *r < revision) {
            if self.reached.len() == REACHED_KEPT {
                self.reached.pop_front();
            }
            self.reached.push_back((revision, now));
        }
    }

    /// When it first served `revision` or a newer one, if still known.
    fn reached_at(&self, revision: u64) -> Option<SystemTime> {
        self.reached.iter().find(|(r, _)| *r >= revision).map(|(_, t)| *t)
    }
}

/// Every proxy that has connected since the control plane started.
#[derive(Default)]
pub struct Proxies {
    entries: Mutex<BTreeMap<String, Entry>>,
    next_session: AtomicU64,
    /// Store revision of the last compile for every connected proxy.
    compiled_revision: AtomicU64,
    /// The mesh CA's roots, sent with every snapshot.
    trust_bundle: Mutex<String>,
    /// When recent store revisions were written, oldest first, bounded.
    writes: Mutex<VecDeque<(u64, SystemTime)>>,
}

/// What a proxy says in its Hello.
pub struct Hello<'a> {
    pub name: &'a str,
    pub admin_address: &'a str,
    pub version: u64,
    pub hash: u64,
    pub pid: u32,
    /// The stream's remote address, as the control plane sees it.
    pub peer: &'a str,
    /// Set for a node agent: its node (then `name` is [`agent_name`] of it).
    pub node: Option<&'a str>,
    /// Services it looked up on demand before this stream.
    pub looked_up: &'a [String],
}

/// The registry name of the agent of `node`: `/` keeps it apart from every
/// proxy name.
pub fn agent_name(node: &str) -> String {
    format!("agent/{node}")
}

/// The proxy connected under a name.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    pub peer: String,
    pub admin_address: String,
    pub pid: u32,
    pub since: SystemTime,
}

/// A second stream asked for a name an open stream holds.
#[derive(Debug, thiserror::Error)]
#[error(
    "a proxy named {name:?} is already connected from {} (pid {}, admin {}) since {}; two proxies must not share a name: \
     give one of them another name, or stop it",
    .holder.peer, .holder.pid, .holder.admin_address, humantime::format_rfc3339_seconds(.holder.since)
)]
pub struct NameTaken {
    pub name: String,
    pub holder: Holder,
}

impl Proxies {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that every connected proxy's snapshot reflects the store at `revision`.
    pub fn compiled_at(&self, revision: u64) {
        self.compiled_revision.fetch_max(revision, Ordering::Relaxed);
    }

    /// The store revision every connected proxy's latest snapshot reflects:
    /// a client that wrote at revision R and sees this >= R, with every proxy
    /// in sync (`ProxyStatus::in_sync`), knows its write reached them all.
    pub fn compiled_revision(&self) -> ResourceVersion {
        ResourceVersion::new(self.compiled_revision.load(Ordering::Relaxed))
    }

    /// Registers a stream; returns its session id. A name is held by one
    /// stream at a time: while it is open, another stream under the same name
    /// is refused. Replacing the older one instead made two proxies sharing a
    /// name knock each other off in turn, each reconnect replacing the other.
    /// A proxy whose old stream is gone gets its name back as soon as the
    /// control plane sees that stream end: at once when its connection
    /// closes, within the HTTP/2 keepalive (10 s pings, 5 s to answer) when
    /// it vanished without closing.
    pub fn connect(&self, hello: &Hello<'_>, outbox: Outbox) -> Result<u64, NameTaken> {
        let mut entries = self.lock();
        let entry = entries.entry(hello.name.to_string()).or_default();
        if let Some(held) = &entry.session {
            return Err(NameTaken { name: hello.name.to_string(), holder: held.holder.clone() });
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let holder = Holder {
            peer: hello.peer.to_string(),
            admin_address: hello.admin_address.to_string(),
            pid: hello.pid,
            since: SystemTime::now(),
        };
        entry.node = hello.node.map(str::to_string);
        // A kernel refuses a table for what the node lacks (a capability, an
        // interface), not for its content: a new agent stream may take what
        // the last one refused.
        if entry.node.is_some() {
            entry.nacked_hash = None;
        }
        entry.admin_address = Some(hello.admin_address.to_string()).filter(|a| !a.is_empty());
        entry.last_seen = Some(SystemTime::now());
        // A proxy that already serves something (it reconnects after a
        // break or a control-plane restart) says so; that counts as acked.
        if hello.hash != 0 {
            entry.acked = Some((hello.version, hello.hash));
            entry.latest = Some((hello.version, hello.hash));
            entry.note_reached(SystemTime::now());
        }
        let looked_up = hello.looked_up.iter().filter(|s| valid_service(s)).take(MAX_LOOKED_UP).cloned().collect();
        entry.session = Some(Session { id, holder, outbox, sent_hash: hello.hash, offered_revision: 0, looked_up });
        Ok(id)
    }

    /// Marks a stream gone, unless a newer one took its place.
    pub fn disconnect(&self, name: &str, session: u64) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(name).filter(|e| e.session.as_ref().is_some_and(|s| s.id == session)) {
            entry.session = None;
            entry.last_seen = Some(SystemTime::now());
        }
    }

    /// Ends every stream (shutdown): their outbound streams finish.
    pub fn close_all(&self) {
        for entry in self.lock().values_mut() {
            entry.session = None;
        }
    }

    /// The roots sent with every snapshot from now on. When they change,
    /// every proxy with a stream gets its last snapshot again with the new
    /// roots (same version and hash: only the bundle is new), so that a
    /// rotation reaches proxies without waiting for a config change.
    /// Returns whether the bundle changed.
    pub fn set_trust_bundle(&self, pem: &str) -> bool {
        {
            let mut bundle = self.trust_bundle.lock().unwrap_or_else(|e| e.into_inner());
            if *bundle == pem {
                return false;
            }
            *bundle = pem.to_string();
        }
        for (name, entry) in self.lock().iter_mut() {
            let Some(session) = entry.session.as_mut() else { continue };
            let last = session.outbox.borrow().clone();
            if let Some(mut snapshot) = last.filter(|s| s.identity.is_none()) {
                snapshot.trust_bundle_pem = pem.to_string();
                session.outbox.send_replace(Some(snapshot));
                tracing::info!(proxy = %name, "sending the new trust bundle");
            }
        }
        true
    }

    /// The services proxy `name` looked up on demand.
    pub fn looked_up(&self, name: &str) -> BTreeSet<String> {
        self.lock().get(name).and_then(|e| e.session.as_ref()).map(|s| s.looked_up.clone()).unwrap_or_default()
    }

    /// Adds `service` to what the session `session` of proxy `name` looked
    /// up; whether it is new there (and room was left).
    pub fn look_up(&self, name: &str, session: u64, service: &str) -> bool {
        let mut entries = self.lock();
        let Some(held) = entries.get_mut(name).and_then(|e| e.session.as_mut()).filter(|s| s.id == session) else { return false };
        if held.looked_up.len() >= MAX_LOOKED_UP || !valid_service(service) {
            return false;
        }
        held.looked_up.insert(service.to_string())
    }

    /// Names of the proxies and agents with an open stream.
    pub fn connected(&self) -> Vec<String> {
        self.lock().iter().filter(|(_, e)| e.session.is_some()).map(|(n, _)| n.clone()).collect()
    }

    /// The node of `name`, if it is a node agent's.
    pub fn node_of(&self, name: &str) -> Option<String> {
        self.lock().get(name).and_then(|e| e.node.clone())
    }

    /// Sends `snapshot` to proxy `name` if its content is new to that proxy
    /// and not content it rejected. Returns whether it was sent.
    pub fn offer(&self, name: &str, snapshot: &ProxySnapshot) -> bool {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(name) else { return false };
        let nacked = entry.nacked_hash;
        entry.scoped_services = snapshot.scope.as_ref().map(|s| u32::try_from(s.len()).unwrap_or(u32::MAX));
        let Some(session) = entry.session.as_mut() else { return false };
        if snapshot.version < session.offered_revision {
            return false;
        }
        session.offered_revision = snapshot.version;
        entry.compiled = Some((snapshot.version, snapshot.hash, snapshot.count));
        entry.note_reached(SystemTime::now());
        let Some(session) = entry.session.as_mut() else { return false };
        if snapshot.hash == session.sent_hash || Some(snapshot.hash) == nacked {
            return false;
        }
        if snapshot.resources_json.is_empty() {
            tracing::error!(proxy = name, version = snapshot.version, "cannot encode a snapshot");
            return false;
        }
        session.sent_hash = snapshot.hash;
        session.outbox.send_replace(Some(Snapshot {
            version: snapshot.version,
            hash: snapshot.hash,
            resources_json: snapshot.resources_json.clone(),
            trust_bundle_pem: self.trust_bundle.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            identity: None,
            lookup_miss: String::new(),
        }));
        entry.latest = Some((snapshot.version, snapshot.hash));
        tracing::info!(
            proxy = name,
            version = snapshot.version,
            hash = format_args!("{:016x}", snapshot.hash),
            resources = snapshot.count,
            "sending snapshot"
        );
        true
    }

    /// Records an ACK from session `session` of proxy `name`.
    pub fn ack(&self, name: &str, session: u64, version: u64, hash: u64) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(name).filter(|e| e.session.as_ref().is_some_and(|s| s.id == session)) else { return };
        entry.last_seen = Some(SystemTime::now());
        entry.acked = Some((version, hash));
        entry.note_reached(SystemTime::now());
        // A newer snapshot in force supersedes an older rejection.
        if entry.nack.as_ref().is_some_and(|n| n.version.get() <= version) {
            entry.nack = None;
        }
        tracing::info!(proxy = name, version, "snapshot acked");
    }

    /// Records a NACK: the error is kept for status, and that content is not sent again.
    pub fn nack(&self, name: &str, session: u64, version: u64, hash: u64, error: &str) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(name).filter(|e| e.session.as_ref().is_some_and(|s| s.id == session)) else { return };
        entry.last_seen = Some(SystemTime::now());
        entry.nack = Some(Nack { version: ResourceVersion::new(version), error: error.to_string() });
        entry.nacked_hash = Some(hash);
        for line in error.lines() {
            tracing::error!(proxy = name, version, "snapshot rejected: {line}");
        }
    }

    /// Records that the store wrote `revision` at `at` (for `slowestMs`).
    pub fn written(&self, revision: u64, at: SystemTime) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        if writes.back().is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        if writes.len() == WRITES_KEPT {
            writes.pop_front();
        }
        writes.push_back((revision, at));
    }

    /// `status.applied` of a resource whose current version is `version`:
    /// among the connected proxies `needs` says depend on it (given each
    /// one's name and, for an agent, node), how many serve that version or
    /// a newer one, the slowest to get there, and who refused it. Computed
    /// from what each proxy acked: nothing is kept per resource.
    pub fn applied(&self, version: u64, mut needs: impl FnMut(&str, Option<&str>, &BTreeSet<String>) -> bool) -> Applied {
        let written = {
            let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            writes.iter().find(|(r, _)| *r == version).map(|(_, t)| *t)
        };
        let entries = self.lock();
        let mut out = Applied::default();
        for (name, e) in entries.iter().filter(|(_, e)| e.session.is_some()) {
            let looked_up = e.session.as_ref().map(|s| &s.looked_up);
            if !needs(name.as_str(), e.node.as_deref(), looked_up.unwrap_or(&BTreeSet::new())) {
                continue;
            }
            out.needed += 1;
            if e.in_force().is_some_and(|r| r >= version) {
                out.acknowledged += 1;
                let took = written.zip(e.reached_at(version)).and_then(|(w, r)| r.duration_since(w).ok());
                if let Some(ms) = took.map(|d| d.as_millis() as u64) {
                    out.slowest_ms = Some(out.slowest_ms.map_or(ms, |s| s.max(ms)));
                }
            } else if let Some((revision, reason)) = e.refused().filter(|(r, _)| *r >= version) {
                out.nacks.push(AppliedNack { proxy: name.clone(), reason: reason.to_string(), revision: ResourceVersion::new(revision) });
            }
        }
        out
    }

    /// Every proxy that has connected, plus those named by `declared`
    /// (`Proxy` resources) that never did, by name.
    pub fn status(&self, declared: &[String]) -> Vec<ProxyStatus> {
        let entries = self.lock();
        let mut out: BTreeMap<&str, ProxyStatus> = BTreeMap::new();
        for name in declared {
            out.insert(name, ProxyStatus::declared(name.clone()));
        }
        for (name, e) in entries.iter() {
            out.insert(
                name,
                ProxyStatus {
                    name: name.clone(),
                    node: e.node.clone(),
                    connected: e.session.is_some(),
                    admin_address: e.admin_address.clone(),
                    latest_version: e.latest.map(|(v, _)| ResourceVersion::new(v)),
                    acked_version: e.acked.map(|(v, _)| ResourceVersion::new(v)),
                    nack: e.nack.clone(),
                    last_seen: e.last_seen.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    lag: match (&e.session, e.compiled, e.in_force()) {
                        (Some(_), Some((compiled, _, _)), Some(in_force)) => Some(compiled.saturating_sub(in_force)),
                        (Some(_), None, Some(_)) => Some(0),
                        _ => None,
                    },
                    subscribed: e.session.as_ref().and(e.compiled).map(|(_, _, count)| count as u64),
                    scoped_services: e.scoped_services,
                    looked_up: e.session.as_ref().map(|s| s.looked_up.iter().cloned().collect()).unwrap_or_default(),
                },
            );
        }
        out.into_values().collect()
    }
}

/// A name a Service could have (what a lookup may add): the API's own
/// rule for resource names, so a proxy cannot fill its set with junk.
fn valid_service(name: &str) -> bool {
    trefoil_model::valid_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64, hash: u64) -> ProxySnapshot {
        ProxySnapshot { version, hash, resources_json: "[]".to_string(), count: 0, scope: None }
    }

    fn hello(version: u64, hash: u64) -> Hello<'static> {
        Hello { name: "edge", admin_address: "127.0.0.1:15000", version, hash, pid: 7, peer: "127.0.0.1:40000", node: None, looked_up: &[] }
    }

    #[test]
    fn a_name_is_held_by_one_stream_until_it_ends() {
        let proxies = Proxies::default();
        let (tx, rx) = watch::channel(None);
        let first = proxies.connect(&hello(0, 0), tx).unwrap();
        let (tx2, _rx2) = watch::channel(None);
        let other = Hello {
            name: "edge",
            admin_address: "127.0.0.1:15001",
            version: 0,
            hash: 0,
            pid: 8,
            peer: "127.0.0.1:40001",
            node: None,
            looked_up: &[],
        };
        let taken = proxies.connect(&other, tx2).unwrap_err();
        let text = taken.to_string();
        assert!(text.contains("\"edge\"") && text.contains("127.0.0.1:40000") && text.contains("pid 7"), "{text}");
        // The holder keeps its stream: it is still offered snapshots.
        assert!(proxies.offer("edge", &snapshot(3, 30)));
        assert_eq!(rx.borrow().as_ref().map(|s| s.version), Some(3));
        assert_eq!(proxies.status(&[])[0].admin_address.as_deref(), Some("127.0.0.1:15000"));
        // Once it is gone the name is free.
        proxies.disconnect("edge", first);
        let (tx3, _rx3) = watch::channel(None);
        assert!(proxies.connect(&other, tx3).is_ok());
    }

    #[test]
    fn sends_new_content_once_and_never_rejected_content_again() {
        let proxies = Proxies::default();
        let (tx, rx) = watch::channel(None);
        let s = proxies.connect(&hello(0, 0), tx).unwrap();
        assert!(proxies.offer("edge", &snapshot(3, 30)));
        assert_eq!(rx.borrow().as_ref().map(|s| s.version), Some(3));
        assert!(!proxies.offer("edge", &snapshot(4, 30)), "same content, new revision: nothing to send");
        proxies.ack("edge", s, 3, 30);
        assert!(proxies.offer("edge", &snapshot(5, 50)));
        proxies.nack("edge", s, 5, 50, "snapshot 5:1:1: bad");
        assert!(!proxies.offer("edge", &snapshot(6, 50)), "rejected content is not resent");
        let status = &proxies.status(&[])[0];
        assert_eq!((status.latest_version, status.acked_version), (Some(5.into()), Some(3.into())));
        assert_eq!(status.nack.as_ref().map(|n| n.version), Some(5.into()));
        assert!(proxies.offer("edge", &snapshot(7, 70)));
        proxies.ack("edge", s, 7, 70);
        assert_eq!(proxies.status(&[])[0].nack, None, "a newer ack clears the rejection");
        assert!(!proxies.offer("edge", &snapshot(6, 60)), "an older compile never overtakes a newer one");
    }

    #[test]
    fn a_reconnect_with_the_current_hash_gets_nothing_and_counts_as_acked() {
        let proxies = Proxies::default();
        let (tx, _rx) = watch::channel(None);
        let s = proxies.connect(&hello(9, 90), tx).unwrap();
        assert!(!proxies.offer("edge", &snapshot(12, 90)));
        let status = &proxies.status(&["edge".into(), "idle".into()]);
        assert_eq!((status[0].connected, status[0].acked_version, status[0].latest_version), (true, Some(9.into()), Some(9.into())));
        assert!(status[0].in_sync());
        assert_eq!((status[1].name.as_str(), status[1].connected), ("idle", false));
        proxies.disconnect("edge", s);
        assert!(!proxies.status(&[])[0].connected);
        assert!(!proxies.offer("edge", &snapshot(13, 130)), "nothing is sent to a gone proxy");
    }

    #[test]
    fn a_node_agents_new_stream_may_take_what_the_kernel_refused_before() {
        let proxies = Proxies::default();
        let agent = Hello {
            name: "agent/edge",
            admin_address: "",
            version: 0,
            hash: 0,
            pid: 9,
            peer: "127.0.0.1:40002",
            node: Some("edge"),
            looked_up: &[],
        };
        let (tx, _rx) = watch::channel(None);
        let s = proxies.connect(&agent, tx).unwrap();
        assert!(proxies.offer("agent/edge", &snapshot(3, 30)));
        proxies.nack("agent/edge", s, 3, 30, "missing capability CAP_BPF");
        assert!(!proxies.offer("agent/edge", &snapshot(4, 30)), "not again on the same stream");
        let status = &proxies.status(&[])[0];
        assert_eq!((status.node.as_deref(), status.admin_address.as_deref()), (Some("edge"), None));
        proxies.disconnect("agent/edge", s);
        let (tx, _rx) = watch::channel(None);
        proxies.connect(&agent, tx).unwrap();
        assert!(proxies.offer("agent/edge", &snapshot(5, 30)), "a new agent stream gets it again");
    }

    /// Every proxy needs the resource in these tests.
    fn everyone(_: &str, node: Option<&str>, _: &BTreeSet<String>) -> bool {
        node.is_none()
    }

    #[test]
    fn applied_counts_the_proxies_serving_a_version_and_names_who_refused_it() {
        let proxies = Proxies::default();
        let connect = |name: &'static str| {
            let (tx, rx) = watch::channel(None);
            let s = proxies.connect(&Hello { name, ..hello(0, 0) }, tx).unwrap();
            (s, rx)
        };
        let ((a, _ra), (b, _rb), (c, _rc)) = (connect("a"), connect("b"), connect("c"));
        let t0 = SystemTime::now() - std::time::Duration::from_secs(1);
        proxies.written(5, t0);
        // Written, not compiled yet: nobody serves it.
        assert_eq!(proxies.applied(5, everyone), Applied { acknowledged: 0, needed: 3, slowest_ms: None, nacks: vec![] });
        for name in ["a", "b", "c"] {
            assert!(proxies.offer(name, &snapshot(5, 50)));
        }
        proxies.ack("a", a, 5, 50);
        proxies.nack("b", b, 5, 50, "route web: unknown service\nmore detail");
        let applied = proxies.applied(5, everyone);
        assert_eq!((applied.acknowledged, applied.needed), (1, 3));
        assert!(applied.slowest_ms.is_some_and(|ms| ms >= 1000), "{applied:?}");
        assert_eq!(applied.nacks.len(), 1);
        assert_eq!((applied.nacks[0].proxy.as_str(), applied.nacks[0].revision), ("b", 5.into()));
        assert!(applied.nacks[0].reason.starts_with("route web: unknown service"));
        // A later write that leaves a's snapshot as it was needs no new ACK
        // from a; b's refused content is refused at the new revision too.
        proxies.written(6, SystemTime::now());
        for name in ["a", "b", "c"] {
            proxies.offer(name, &snapshot(6, 50));
        }
        let applied = proxies.applied(6, everyone);
        assert_eq!((applied.acknowledged, applied.needed, applied.nacks.len()), (1, 3, 1));
        proxies.ack("c", c, 5, 50);
        assert_eq!(proxies.applied(6, everyone).acknowledged, 2, "c serves the content of revision 6");
        // Who does not need it is not counted.
        let only_a = proxies.applied(6, |name, _, _| name == "a");
        assert_eq!((only_a.acknowledged, only_a.needed, only_a.nacks.len()), (1, 1, 0));
        assert_eq!(proxies.applied(6, |_, _, _| false), Applied::default());
        // A gone proxy needs nothing.
        proxies.disconnect("b", b);
        assert_eq!(proxies.applied(6, everyone).needed, 2);
    }

    #[test]
    fn lag_is_the_revisions_between_the_newest_compile_and_what_it_serves() {
        let proxies = Proxies::default();
        let (tx, _rx) = watch::channel(None);
        let s = proxies.connect(&hello(0, 0), tx).unwrap();
        assert_eq!(proxies.status(&[])[0].lag, None, "nothing acknowledged yet");
        proxies.offer("edge", &ProxySnapshot { count: 4, ..snapshot(3, 30) });
        proxies.ack("edge", s, 3, 30);
        assert_eq!((proxies.status(&[])[0].lag, proxies.status(&[])[0].subscribed), (Some(0), Some(4)));
        proxies.offer("edge", &snapshot(9, 90));
        assert_eq!(proxies.status(&[])[0].lag, Some(6));
        proxies.offer("edge", &snapshot(12, 90));
        assert_eq!(proxies.status(&[])[0].lag, Some(9), "still on 3");
        proxies.ack("edge", s, 9, 90);
        assert_eq!(proxies.status(&[])[0].lag, Some(0), "90 is the content of 12 too");
        proxies.disconnect("edge", s);
        assert_eq!(proxies.status(&[])[0].lag, None);
    }

    #[test]
    fn memory_of_write_and_ack_times_is_bounded() {
        let proxies = Proxies::default();
        let now = SystemTime::now();
        for revision in 1..=(WRITES_KEPT as u64 + 10) {
            proxies.written(revision, now);
        }
        assert_eq!(proxies.writes.lock().unwrap().len(), WRITES_KEPT);
        let (tx, _rx) = watch::channel(None);
        let s = proxies.connect(&hello(0, 0), tx).unwrap();
        for revision in 1..=(REACHED_KEPT as u64 * 2) {
            proxies.offer("edge", &snapshot(revision, revision));
            proxies.ack("edge", s, revision, revision);
        }
        assert_eq!(proxies.lock()["edge"].reached.len(), REACHED_KEPT);
    }
}
