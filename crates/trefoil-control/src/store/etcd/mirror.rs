//! The etcd store's in-memory mirror: every resource as of the last etcd
//! revision the watch delivered, so reads stay synchronous and cheap, and
//! the events watchers see, in revision order.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::proto;
use crate::store::{Event, Stored};

/// Where resources live in etcd: `/trefoil/resources/<kind>/<name>`.
pub(crate) const PREFIX: &[u8] = b"/trefoil/resources/";

/// The etcd key of an object.
pub(crate) fn key(kind: &str, name: &str) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(kind.as_bytes());
    key.push(b'/');
    key.extend_from_slice(name.as_bytes());
    key
}

/// The kind and name of an etcd key under [`PREFIX`]; `None` for anything else.
pub(crate) fn parse_key(key: &[u8]) -> Option<(String, String)> {
    let rest = std::str::from_utf8(key.strip_prefix(PREFIX)?).ok()?;
    let (kind, name) = rest.split_once('/')?;
    (!kind.is_empty() && !name.is_empty()).then(|| (kind.to_string(), name.to_string()))
}

/// The end of the range of every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space.
    vec![0]
}

#[derive(Default)]
struct State {
    revision: u64,
    objects: BTreeMap<(String, String), Stored>,
}

/// The mirror, shared by the readers, the writers waiting for their own
/// write, and the watch that feeds it.
pub(crate) struct Mirror {
    state: Mutex<State>,
    applied: Condvar,
    events: tokio::sync::broadcast::Sender<Event>,
}

/// A stored value etcd holds that is not a JSON object we wrote: skipped with a warning.
fn decode(kv: &proto::KeyValue) -> Option<Stored> {
    let (kind, name) = parse_key(&kv.key)?;
    match serde_json::from_slice(&kv.value) {
        Ok(value) => Some(Stored { kind, name, resource_version: kv.mod_revision as u64, value }),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "etcd holds a value that is not JSON under the store's prefix; ignored");
            None
        }
    }
}

impl Mirror {
    pub(crate) fn new(events: tokio::sync::broadcast::Sender<Event>) -> Self {
        Mirror { state: Mutex::new(State::default()), applied: Condvar::new(), events }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> Option<Stored> {
        self.lock().objects.get(&(kind.to_string(), name.to_string())).cloned()
    }

    pub(crate) fn list(&self, kind: &str) -> Vec<Stored> {
        self.lock().objects.range((kind.to_string(), String::new())..).take_while(|((k, _), _)| k == kind).map(|(_, s)| s.clone()).collect()
    }

    pub(crate) fn list_all(&self) -> (u64, Vec<Stored>) {
        let state = self.lock();
        (state.revision, state.objects.values().filter(|s| !crate::store::is_internal(&s.kind)).cloned().collect())
    }

    /// Replaces the mirror with a full read of etcd at `revision` (at start,
    /// or after the watch fell behind a compaction), telling watchers what
    /// changed since the mirror's last state.
    pub(crate) fn load(&self, revision: u64, kvs: &[proto::KeyValue]) {
        let mut state = self.lock();
        let fresh: BTreeMap<(String, String), Stored> =
            kvs.iter().filter_map(decode).map(|s| ((s.kind.clone(), s.name.clone()), s)).collect();
        let revision = revision.max(state.revision);
        for (key, old) in &state.objects {
            if !fresh.contains_key(key) {
                let mut gone = old.clone();
                gone.resource_version = revision;
                let _ = self.events.send(Event::Deleted(gone));
            }
        }
        for (key, new) in &fresh {
            if state.objects.get(key) != Some(new) {
                let _ = self.events.send(Event::Put(new.clone()));
            }
        }
        state.objects = fresh;
        state.revision = revision;
        drop(state);
        self.applied.notify_all();
    }

    /// Applies the events of one watch response, in order.
    pub(crate) fn apply(&self, events: &[proto::Event]) {
        let mut state = self.lock();
        for event in events {
            let Some(kv) = &event.kv else { continue };
            let revision = kv.mod_revision as u64;
            if revision <= state.revision {
                // Already in the mirror (a watch resumed from an older revision).
                continue;
            }
            state.revision = revision;
            match event.r#type {
                proto::EVENT_DELETE => {
                    let Some(key) = parse_key(&kv.key) else { continue };
                    if let Some(mut gone) = state.objects.remove(&key) {
                        gone.resource_version = revision;
                        let _ = self.events.send(Event::Deleted(gone));
                    }
                }
                proto::EVENT_PUT => {
                    let Some(stored) = decode(kv) else { continue };
                    state.objects.insert((stored.kind.clone(), stored.name.clone()), stored.clone());
                    let _ = self.events.send(Event::Put(stored));
                }
                _ => {}
            }
        }
        drop(state);
        self.applied.notify_all();
    }

    /// Waits until the mirror has applied `revision`, at most `timeout`;
    /// whether it has.
    pub(crate) fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.revision < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.applied.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(kind: &str, name: &str, rev: i64, value: serde_json::Value) -> proto::KeyValue {
        proto::KeyValue { key: key(kind, name), mod_revision: rev, value: serde_json::to_vec(&value).unwrap(), ..Default::default() }
    }

    fn put(kind: &str, name: &str, rev: i64, value: serde_json::Value) -> proto::Event {
        proto::Event { r#type: proto::EVENT_PUT, kv: Some(kv(kind, name, rev, value)), prev_kv: None }
    }

    fn delete(kind: &str, name: &str, rev: i64) -> proto::Event {
        let kv = proto::KeyValue { key: key(kind, name), mod_revision: rev, ..Default::default() };
        proto::Event { r#type: proto::EVENT_DELETE, kv: Some(kv), prev_kv: None }
    }

    #[test]
    fn keys_round_trip_and_foreign_keys_are_not_resources() {
        assert_eq!(parse_key(&key("Route", "web/v2")), Some(("Route".into(), "web/v2".into())));
        assert_eq!(parse_key(b"/trefoil/leader"), None);
        assert_eq!(parse_key(b"/trefoil/resources/Route"), None);
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }

    #[test]
    fn watch_events_update_the_mirror_and_reach_subscribers_in_order() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(16);
        let mirror = Mirror::new(tx);
        mirror.load(10, &[kv("Route", "a", 7, json!({"v": 1}))]);
        assert_eq!(mirror.revision(), 10);
        assert_eq!(mirror.get("Route", "a").unwrap().resource_version, 7);
        assert!(matches!(rx.try_recv().unwrap(), Event::Put(s) if s.name == "a"));
        mirror.apply(&[put("Route", "b", 11, json!({"v": 2})), delete("Route", "a", 12)]);
        assert_eq!(mirror.revision(), 12);
        assert_eq!(mirror.list("Route").iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(matches!(rx.try_recv().unwrap(), Event::Put(s) if s.name == "b" && s.resource_version == 11));
        assert!(matches!(rx.try_recv().unwrap(), Event::Deleted(s) if s.name == "a" && s.resource_version == 12));
        // A resumed watch replaying what the mirror has is ignored.
        mirror.apply(&[put("Route", "b", 11, json!({"v": 2}))]);
        assert!(rx.try_recv().is_err());
        assert!(mirror.wait_for(12, Duration::ZERO));
        assert!(!mirror.wait_for(13, Duration::from_millis(1)));
    }

    #[test]
    fn a_reload_tells_watchers_only_what_changed() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(16);
        let mirror = Mirror::new(tx);
        mirror.load(5, &[kv("Route", "a", 3, json!(1)), kv("Route", "b", 4, json!(2))]);
        while rx.try_recv().is_ok() {}
        // After a compaction: a unchanged, b deleted, c new.
        mirror.load(20, &[kv("Route", "a", 3, json!(1)), kv("Route", "c", 19, json!(3))]);
        assert!(matches!(rx.try_recv().unwrap(), Event::Deleted(s) if s.name == "b" && s.resource_version == 20));
        assert!(matches!(rx.try_recv().unwrap(), Event::Put(s) if s.name == "c"));
        assert!(rx.try_recv().is_err());
        assert_eq!(mirror.list_all(), (20, vec![mirror.get("Route", "a").unwrap(), mirror.get("Route", "c").unwrap()]));
    }

    #[test]
    fn a_writer_waiting_for_its_revision_wakes_when_the_watch_applies_it() {
        let (tx, _rx) = tokio::sync::broadcast::channel(16);
        let mirror = std::sync::Arc::new(Mirror::new(tx));
        let feeder = mirror.clone();
        let handle = std::thread::spawn(move || feeder.apply(&[put("Route", "a", 1, json!(1))]));
        assert!(mirror.wait_for(1, Duration::from_secs(30)));
        handle.join().unwrap();
    }
}
