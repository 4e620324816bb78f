//! The embedded resource store: one file, an append-only log of
//! checksummed records, replayed into memory at open.
//!
//! A write is acknowledged only after its record is on disk (`fdatasync`),
//! so a crash (even `kill -9` or power loss) loses nothing that was
//! acknowledged. A crash mid-write leaves a torn last record; opening the
//! store finds it by its length or checksum and cuts it off. When the log
//! has grown to several times the live data, it is rewritten as a snapshot
//! into a new file that atomically replaces the old one.
//!
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload (JSON)`.

mod record;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use record::{Op, Record};

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

/// A crash-safe store of JSON objects keyed by kind and name.
pub struct Store {
    path: PathBuf,
    inner: Mutex<Inner>,
    events: tokio::sync::broadcast::Sender<Event>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

impl Store {
    /// Opens (or creates) the store at `path`, recovering from a torn tail.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let err = io_error(&path);
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(&err)?;
        let bytes = std::fs::read(&path).map_err(&err)?;
        let (records, good) = record::decode_all(&bytes);
        if good < bytes.len() {
            tracing::warn!(path = %path.display(), kept = good, dropped = bytes.len() - good, "store log ends in a torn record (a crash mid-write); cutting it off");
            file.set_len(good as u64).map_err(&err)?;
            file.sync_all().map_err(&err)?;
        }
        file.seek(SeekFrom::End(0)).map_err(&err)?;
        let mut inner = Inner { file, log_bytes: good as u64, live_bytes: 0, revision: 0, objects: BTreeMap::new() };
        for r in records {
            inner.apply(r);
        }
        drop(err);
        Ok(Store { path, inner: Mutex::new(inner), events: tokio::sync::broadcast::channel(1024).0 })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes from now on, in revision order. A watcher that falls more than
    /// 1024 events behind gets `Lagged` and must list again.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The latest revision written.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<Stored> {
        self.lock().objects.get(&(kind.to_string(), name.to_string())).map(|(s, _)| s.clone())
    }

    /// Every object of `kind`, by name.
    pub fn list(&self, kind: &str) -> Vec<Stored> {
        self.lock().objects.range((kind.to_string(), String::new())..).take_while(|((k, _), _)| k == kind).map(|(_, (s, _))| s.clone()).collect()
    }

    /// Every object and the revision they are at, read at one instant, so a
    /// compile sees a consistent state labelled with its own revision.
    pub fn list_all(&self) -> (u64, Vec<Stored>) {
        let inner = self.lock();
        (inner.revision, inner.objects.values().map(|(s, _)| s.clone()).collect())
    }

    /// Creates or replaces an object. With `expected`, the write happens only
    /// if the object's current version is that one (0: it must not exist).
    /// Returns the new version once the write is on disk.
    pub fn put(&self, kind: &str, name: &str, value: Value, expected: Option<u64>) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        inner.check(kind, name, expected)?;
        let record = Record { op: Op::Put, revision: inner.revision + 1, kind: kind.to_string(), name: name.to_string(), value: Some(value) };
        self.append(&mut inner, record)
    }

    /// Deletes an object, optionally only at version `expected`.
    pub fn delete(&self, kind: &str, name: &str, expected: Option<u64>) -> Result<u64, StoreError> {
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
            let record = Record { op: Op::Put, revision: stored.resource_version, kind: stored.kind.clone(), name: stored.name.clone(), value: Some(stored.value.clone()) };
            let encoded = record::encode(&record);
            out.write_all(&encoded).map_err(&err)?;
            bytes += encoded.len() as u64;
        }
        // The latest revision may belong to a deleted object; keep the counter.
        let marker = record::encode(&Record { op: Op::Revision, revision: inner.revision, kind: String::new(), name: String::new(), value: None });
        out.write_all(&marker).map_err(&err)?;
        bytes += marker.len() as u64;
        out.sync_all().map_err(&err)?;
        std::fs::rename(&tmp, &self.path).map_err(&err)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(&err)?;
        }
        let mut file = OpenOptions::new().read(true).append(true).open(&self.path).map_err(&err)?;
        file.seek(SeekFrom::End(0)).map_err(&err)?;
        inner.file = file;
        inner.log_bytes = bytes;
        Ok(())
    }
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
