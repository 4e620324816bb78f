//! The embedded resource store: one file, an append-only log of
//! checksummed records, replayed into memory at open.
//!
//! A write is acknowledged only after its record is on disk (`fdatasync`),
//! so a crash (even `kill -9` or power loss) loses nothing that was
//! acknowledged. A crash mid-write leaves a torn last record; opening the
//! store finds it by its length or checksum and cuts it off. Damage with an
//! intact record after it is not a torn write (a bad disk, a stray write):
//! cutting there would silently drop acknowledged writes, so opening refuses
//! and names the byte offset, and [`repair`] keeps every intact record on
//! an operator's word. When the log has grown to several times the live
//! data, it is rewritten as a snapshot into a new file that atomically
//! replaces the old one. One process at a time: a lock file next to the
//! store keeps a second control plane (or a repair) off a store in use.
//!
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload (JSON)`.

pub mod etcd;
mod record;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use record::{Op, Prefix, Record};

/// One stored object.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub kind: String,
    pub name: String,
    /// The store revision of its last write; strictly increasing across the store.
    pub resource_version: u64,
    pub value: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An optimistic write named a version that is no longer current.
    #[error("{kind}/{name} is at resourceVersion {}, not {expected}", describe(*.current))]
    Conflict { kind: String, name: String, expected: u64, current: Option<u64> },
    #[error("{kind}/{name} not found")]
    NotFound { kind: String, name: String },
    /// Damage that is not a torn tail: an intact record follows it.
    #[error(
        "store file {path} is damaged at byte {bad}: no intact record starts there, but one starts at byte {next}, so this is not a write torn by a crash; \
         nothing was cut off and the file is unchanged. Run `trefoil control --repair` (with the same --data) to keep every intact record: \
         it sets the damaged file aside and reports what was lost"
    )]
    Damaged { path: PathBuf, bad: usize, next: usize },
    #[error("store file {path} is in use by another process (a control plane, or a repair, on the same data directory)")]
    Locked { path: PathBuf },
    /// A write (or the first read) that no etcd member could commit: the
    /// members are down, or too few are up for a quorum.
    #[error("etcd cluster at {endpoints} has no quorum or is unreachable: {reason}")]
    Unavailable { endpoints: String, reason: String },
}

fn describe(version: Option<u64>) -> String {
    version.map_or_else(|| "none (it does not exist)".to_string(), |v| v.to_string())
}

/// Log size below which compaction is never worth it.
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// Compact when the log is this many times larger than the live data.
const COMPACT_RATIO: u64 = 4;

struct Inner {
    file: File,
    /// Held for the store's life: the advisory lock on `<store>.lock`.
    _lock: File,
    /// Bytes in the log.
    log_bytes: u64,
    /// Bytes a snapshot of the live objects would take.
    live_bytes: u64,
    revision: u64,
    objects: BTreeMap<(String, String), (Stored, u64)>,
}

/// A change, as watchers see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Put(Stored),
    Deleted(Stored),
}

/// Whether a kind is the control plane's own bookkeeping (`_Token`,
/// `_Audit`): never a resource, so never compiled into a snapshot, and out of
/// the API's reach since no resource kind starts with `_`.
pub fn is_internal(kind: &str) -> bool {
    kind.starts_with('_')
}

/// A store of JSON objects keyed by kind and name: the embedded file (the
/// default) or an etcd cluster shared by several control planes.
pub struct Store {
    backend: Backend,
    events: tokio::sync::broadcast::Sender<Event>,
}

enum Backend {
    Embedded(Embedded),
    Etcd(etcd::Etcd),
}

/// Where the store is: `--store`.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Location {
    /// `store.db` in the data directory.
    #[default]
    Embedded,
    /// An etcd cluster: its members' `host:port`.
    Etcd(Vec<String>),
}

impl std::str::FromStr for Location {
    type Err = String;

    /// `embedded`, or `etcd://host:port,host:port,...`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "embedded" {
            return Ok(Location::Embedded);
        }
        let Some(list) = s.strip_prefix("etcd://") else {
            return Err(format!("{s:?} is neither `embedded` nor `etcd://host:port,host:port,...`"));
        };
        let endpoints: Vec<String> = list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect();
        if endpoints.is_empty() {
            return Err(format!("{s:?} names no etcd endpoint"));
        }
        for e in &endpoints {
            match e.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(format!("etcd endpoint {e:?} is not host:port")),
            }
        }
        Ok(Location::Etcd(endpoints))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Embedded => f.write_str("embedded"),
            Location::Etcd(endpoints) => write!(f, "etcd://{}", endpoints.join(",")),
        }
    }
}

/// The crash-safe embedded store: one file.
struct Embedded {
    path: PathBuf,
    inner: Mutex<Inner>,
    events: tokio::sync::broadcast::Sender<Event>,
}

fn channel() -> tokio::sync::broadcast::Sender<Event> {
    tokio::sync::broadcast::channel(1024).0
}

impl Store {
    /// Opens (or creates) the embedded store at `path`, recovering from a
    /// torn tail; refuses ([`StoreError::Damaged`]) a log damaged anywhere else.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let events = channel();
        Ok(Store { backend: Backend::Embedded(Embedded::open(path.into(), events.clone())?), events })
    }

    /// Connects to an etcd cluster and loads the store from it.
    pub fn open_etcd(endpoints: &[String]) -> Result<Self, StoreError> {
        let events = channel();
        Ok(Store { backend: Backend::Etcd(etcd::Etcd::open(endpoints, events.clone())?), events })
    }

    /// Opens the store at `location`; the embedded one in `data_dir`.
    pub fn open_at(location: &Location, data_dir: &Path) -> Result<Self, StoreError> {
        match location {
            Location::Embedded => Self::open(data_dir.join("store.db")),
            Location::Etcd(endpoints) => Self::open_etcd(endpoints),
        }
    }

    /// Changes from now on, in revision order. A watcher that falls more than
    /// 1024 events behind gets `Lagged` and must list again.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The latest revision written.
    pub fn revision(&self) -> u64 {
        match &self.backend {
            Backend::Embedded(s) => s.revision(),
            Backend::Etcd(s) => s.revision(),
        }
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<Stored> {
        match &self.backend {
            Backend::Embedded(s) => s.get(kind, name),
            Backend::Etcd(s) => s.get(kind, name),
        }
    }

    /// Every object of `kind`, by name.
    pub fn list(&self, kind: &str) -> Vec<Stored> {
        match &self.backend {
            Backend::Embedded(s) => s.list(kind),
            Backend::Etcd(s) => s.list(kind),
        }
    }

    /// Every object and the revision they are at, read at one instant, so a
    /// compile sees a consistent state labelled with its own revision.
    /// Internal kinds (tokens, the audit log: see [`is_internal`]) are left out.
    pub fn list_all(&self) -> (u64, Vec<Stored>) {
        match &self.backend {
            Backend::Embedded(s) => s.list_all(),
            Backend::Etcd(s) => s.list_all(),
        }
    }

    /// Creates or replaces an object. With `expected`, the write happens only
    /// if the object's current version is that one (0: it must not exist).
    /// Returns the new version once the write is durable (on disk, or
    /// committed by a quorum of etcd members) and readable here.
    pub fn put(&self, kind: &str, name: &str, value: Value, expected: Option<u64>) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(s) => s.put(kind, name, value, expected),
            Backend::Etcd(s) => s.put(kind, name, value, expected),
        }
    }

    /// Deletes an object, optionally only at version `expected`.
    pub fn delete(&self, kind: &str, name: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(s) => s.delete(kind, name, expected),
            Backend::Etcd(s) => s.delete(kind, name, expected),
        }
    }

    /// Who leads the controllers that must run once. With the embedded
    /// store this process always does (the store file's lock keeps any
    /// other off it); with etcd, the replicas elect one (decision 0024).
    pub fn elect(&self, me: String) -> tokio::sync::watch::Receiver<etcd::Leader> {
        match &self.backend {
            Backend::Embedded(_) => tokio::sync::watch::channel(etcd::Leader { me: true, holder: Some(me) }).1,
            Backend::Etcd(s) => s.elect(me),
        }
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// Takes the advisory lock on `<store>.lock`; it lasts as long as the file
/// stays open. A lock file apart from the store, because compaction and
/// repair replace the store file itself.
#[allow(unsafe_code)] // flock has no safe form in std
fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = sibling(path, ".lock");
    let file = OpenOptions::new().write(true).create(true).truncate(false).open(&lock_path).map_err(io_error(&lock_path))?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.kind() {
            std::io::ErrorKind::WouldBlock => StoreError::Locked { path: path.to_path_buf() },
            _ => StoreError::Io { path: lock_path, source: e },
        });
    }
    Ok(file)
}

/// `store.db` + `suffix`, in the same directory.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()),
        None => File::open(".").and_then(|d| d.sync_all()),
    }
}

impl Embedded {
    fn open(path: PathBuf, events: tokio::sync::broadcast::Sender<Event>) -> Result<Self, StoreError> {
        let lock = lock(&path)?;
        let err = io_error(&path);
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(&err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(&err)?;
        let (records, good) = match record::read_prefix(&bytes) {
            Prefix::Whole(records) => (records, bytes.len()),
            Prefix::TornTail { records, good } => {
                tracing::warn!(path = %path.display(), kept = good, dropped = bytes.len() - good, "store log ends in a torn record (a crash mid-write); cutting it off");
                file.set_len(good as u64).map_err(&err)?;
                file.sync_all().map_err(&err)?;
                (records, good)
            }
            Prefix::Damaged { bad, next } => {
                drop(err);
                return Err(StoreError::Damaged { path, bad, next });
            }
        };
        file.seek(SeekFrom::End(0)).map_err(&err)?;
        let mut inner = Inner { file, _lock: lock, log_bytes: good as u64, live_bytes: 0, revision: 0, objects: BTreeMap::new() };
        for r in records {
            inner.apply(r);
        }
        drop(err);
        Ok(Embedded { path, inner: Mutex::new(inner), events })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn revision(&self) -> u64 {
        self.lock().revision
    }

    fn get(&self, kind: &str, name: &str) -> Option<Stored> {
        self.lock().objects.get(&(kind.to_string(), name.to_string())).map(|(s, _)| s.clone())
    }

    fn list(&self, kind: &str) -> Vec<Stored> {
        self.lock()
            .objects
            .range((kind.to_string(), String::new())..)
            .take_while(|((k, _), _)| k == kind)
            .map(|(_, (s, _))| s.clone())
            .collect()
    }

    fn list_all(&self) -> (u64, Vec<Stored>) {
        let inner = self.lock();
        (inner.revision, inner.objects.values().filter(|(s, _)| !is_internal(&s.kind)).map(|(s, _)| s.clone()).collect())
    }

    fn put(&self, kind: &str, name: &str, value: Value, expected: Option<u64>) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        inner.check(kind, name, expected)?;
        let record =
            Record { op: Op::Put, revision: inner.revision + 1, kind: kind.to_string(), name: name.to_string(), value: Some(value) };
        self.append(&mut inner, record)
    }

    /// Deletes an object, optionally only at version `expected`.
    fn delete(&self, kind: &str, name: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        if !inner.objects.contains_key(&(kind.to_string(), name.to_string())) {
            return Err(StoreError::NotFound { kind: kind.to_string(), name: name.to_string() });
        }
        inner.check(kind, name, expected)?;
        let record = Record { op: Op::Delete, revision: inner.revision + 1, kind: kind.to_string(), name: name.to_string(), value: None };
        self.append(&mut inner, record)
    }

    fn append(&self, inner: &mut Inner, record: Record) -> Result<u64, StoreError> {
        let err = io_error(&self.path);
        let bytes = record::encode(&record);
        inner.file.write_all(&bytes).map_err(&err)?;
        // The acknowledgement promises durability: wait for the disk.
        inner.file.sync_data().map_err(&err)?;
        inner.log_bytes += bytes.len() as u64;
        let revision = record.revision;
        let key = (record.kind.clone(), record.name.clone());
        let before = inner.objects.get(&key).map(|(s, _)| s.clone());
        inner.apply(record);
        // Sent under the lock, so watchers see events in revision order.
        let event = match inner.objects.get(&key) {
            Some((stored, _)) => Some(Event::Put(stored.clone())),
            None => before.map(|mut gone| {
                gone.resource_version = revision;
                Event::Deleted(gone)
            }),
        };
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
        if inner.log_bytes > COMPACT_MIN_BYTES && inner.log_bytes > inner.live_bytes * COMPACT_RATIO {
            if let Err(e) = self.compact(inner) {
                // The log is still whole and correct; compaction can wait.
                tracing::warn!(error = %e, "store compaction failed");
            }
        }
        Ok(revision)
    }

    /// Rewrites the log as one record per live object, replacing the file atomically.
    fn compact(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let err = io_error(&self.path);
        let tmp = self.path.with_extension("compacting");
        let mut out = File::create(&tmp).map_err(&err)?;
        let mut bytes = 0u64;
        for (stored, _) in inner.objects.values() {
            let record = Record {
                op: Op::Put,
                revision: stored.resource_version,
                kind: stored.kind.clone(),
                name: stored.name.clone(),
                value: Some(stored.value.clone()),
            };
            let encoded = record::encode(&record);
            out.write_all(&encoded).map_err(&err)?;
            bytes += encoded.len() as u64;
        }
        // The latest revision may belong to a deleted object; keep the counter.
        let marker =
            record::encode(&Record { op: Op::Revision, revision: inner.revision, kind: String::new(), name: String::new(), value: None });
        out.write_all(&marker).map_err(&err)?;
        bytes += marker.len() as u64;
        out.sync_all().map_err(&err)?;
        std::fs::rename(&tmp, &self.path).map_err(&err)?;
        sync_dir(&self.path).map_err(&err)?;
        let mut file = OpenOptions::new().read(true).append(true).open(&self.path).map_err(&err)?;
        file.seek(SeekFrom::End(0)).map_err(&err)?;
        inner.file = file;
        inner.log_bytes = bytes;
        Ok(())
    }
}

/// What [`repair`] found and did.
#[derive(Debug)]
pub struct Repaired {
    pub path: PathBuf,
    /// Intact records kept, in their order.
    pub kept: usize,
    /// Byte ranges of the original file that held no intact record, dropped.
    pub dropped: Vec<Range<usize>>,
    /// The writes the dropped bytes still name (`Kind/name (op, revision N)`).
    pub named: Vec<String>,
    /// Where the damaged original was set aside; `None` when nothing needed repair.
    pub aside: Option<PathBuf>,
    /// Objects in the repaired store.
    pub objects: usize,
}

impl std::fmt::Display for Repaired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(aside) = &self.aside else {
            return writeln!(f, "store {}: {} intact records, no damage found; nothing changed", self.path.display(), self.kept);
        };
        let lost: usize = self.dropped.iter().map(|r| r.len()).sum();
        writeln!(
            f,
            "store {}: kept {} intact records ({} objects); dropped {lost} damaged bytes:",
            self.path.display(),
            self.kept,
            self.objects
        )?;
        for range in &self.dropped {
            writeln!(f, "  bytes {}..{} ({} bytes)", range.start, range.end, range.len())?;
        }
        if self.named.is_empty() {
            writeln!(f, "the dropped bytes name no write that can still be read")?;
        } else {
            writeln!(f, "writes the dropped bytes still name (check them, and apply again what is missing or stale):")?;
            for named in &self.named {
                writeln!(f, "  {named}")?;
            }
        }
        writeln!(f, "the damaged original is kept as {}", aside.display())
    }
}

/// Rewrites a damaged store file with every intact record it holds, skipping
/// each damaged stretch to the next intact record; the original is kept as
/// `<store>.corrupt-<unix time>`. A store without damage is left alone.
///
/// Records after a damaged stretch are replayed as they are, so an object
/// whose last write was lost comes back as it was before that write (or, for
/// a lost delete, comes back at all): the report names what the damaged bytes
/// still show, for the operator to check.
pub fn repair(path: &Path) -> Result<Repaired, StoreError> {
    let err = io_error(path);
    // Said before taking the lock, which would create a file in a directory that may not exist.
    if !path.try_exists().map_err(&err)? {
        return Err(err(std::io::ErrorKind::NotFound.into()));
    }
    let _lock = lock(path)?;
    let bytes = std::fs::read(path).map_err(&err)?;
    let salvage = record::salvage(&bytes);
    let mut report = Repaired {
        path: path.to_path_buf(),
        kept: salvage.records.len(),
        dropped: salvage.gaps.clone(),
        named: Vec::new(),
        aside: None,
        objects: 0,
    };
    if salvage.gaps.is_empty() {
        return Ok(report);
    }
    report.named = salvage.gaps.iter().flat_map(|g| record::named_in(&bytes[g.clone()])).collect();
    // The intact records' bytes, unchanged, in their order.
    let tmp = sibling(path, ".repairing");
    let mut out = File::create(&tmp).map_err(&err)?;
    for (_, range) in &salvage.records {
        out.write_all(&bytes[range.clone()]).map_err(&err)?;
    }
    out.sync_all().map_err(&err)?;
    drop(out);
    let aside = set_aside(path)?;
    std::fs::rename(&tmp, path).map_err(&err)?;
    sync_dir(path).map_err(&err)?;
    let mut objects = BTreeMap::new();
    for (r, _) in salvage.records {
        match r.op {
            Op::Put => objects.insert((r.kind, r.name), ()),
            Op::Delete => objects.remove(&(r.kind, r.name)),
            Op::Revision => None,
        };
    }
    report.objects = objects.len();
    report.aside = Some(aside);
    tracing::warn!(path = %path.display(), kept = report.kept, dropped = ?report.dropped, aside = %report.aside.as_ref().map(|a| a.display().to_string()).unwrap_or_default(), "store repaired");
    Ok(report)
}

/// Keeps the current store file under a new name, `<store>.corrupt-<unix
/// time>`: a hard link (instant, whatever the size), or a copy where the file
/// system has none.
fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let mut aside = sibling(path, &format!(".corrupt-{now}"));
    for n in 2.. {
        if !aside.exists() {
            break;
        }
        aside = sibling(path, &format!(".corrupt-{now}-{n}"));
    }
    if std::fs::hard_link(path, &aside).is_err() {
        std::fs::copy(path, &aside).and_then(|_| File::open(&aside)?.sync_all()).map_err(io_error(&aside))?;
    }
    sync_dir(&aside).map_err(io_error(&aside))?;
    Ok(aside)
}

impl Inner {
    fn check(&self, kind: &str, name: &str, expected: Option<u64>) -> Result<(), StoreError> {
        let Some(expected) = expected else { return Ok(()) };
        let current = self.objects.get(&(kind.to_string(), name.to_string())).map(|(s, _)| s.resource_version);
        if current.unwrap_or(0) != expected {
            return Err(StoreError::Conflict { kind: kind.to_string(), name: name.to_string(), expected, current });
        }
        Ok(())
    }

    fn apply(&mut self, r: Record) {
        self.revision = self.revision.max(r.revision);
        let key = (r.kind.clone(), r.name.clone());
        match r.op {
            Op::Put => {
                let size = record::encode(&r).len() as u64;
                let stored = Stored { kind: r.kind, name: r.name, resource_version: r.revision, value: r.value.unwrap_or(Value::Null) };
                if let Some((_, old)) = self.objects.insert(key, (stored, size)) {
                    self.live_bytes -= old;
                }
                self.live_bytes += size;
            }
            Op::Delete => {
                if let Some((_, old)) = self.objects.remove(&key) {
                    self.live_bytes -= old;
                }
            }
            Op::Revision => {}
        }
    }
}

#[cfg(test)]
mod tests;
