use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

use super::*;

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trefoil-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("store.db")
}

#[test]
fn writes_are_versioned_and_optimistic() {
    let store = Store::open(temp_path("versions")).unwrap();
    let v1 = store.put("Route", "web", json!({"a": 1}), Some(0)).unwrap();
    assert!(matches!(store.put("Route", "web", json!({"a": 2}), Some(0)), Err(StoreError::Conflict { current: Some(c), .. }) if c == v1));
    let v2 = store.put("Route", "web", json!({"a": 2}), Some(v1)).unwrap();
    assert!(v2 > v1);
    assert!(matches!(store.put("Route", "web", json!({"a": 3}), Some(v1)), Err(StoreError::Conflict { .. })));
    store.put("Route", "api", json!({"b": 1}), None).unwrap();
    store.put("Service", "web", json!({}), None).unwrap();
    let routes: Vec<_> = store.list("Route").into_iter().map(|s| s.name).collect();
    assert_eq!(routes, ["api", "web"]);
    assert_eq!(store.get("Route", "web").unwrap().value, json!({"a": 2}));
    assert!(matches!(store.delete("Route", "web", Some(v1)), Err(StoreError::Conflict { .. })));
    store.delete("Route", "web", Some(v2)).unwrap();
    assert!(store.get("Route", "web").is_none());
    assert!(matches!(store.delete("Route", "web", None), Err(StoreError::NotFound { .. })));
}

#[test]
fn reopening_restores_objects_and_revision() {
    let path = temp_path("reopen");
    let rev = {
        let store = Store::open(&path).unwrap();
        store.put("Route", "web", json!({"a": 1}), None).unwrap();
        store.put("Route", "gone", json!({}), None).unwrap();
        store.delete("Route", "gone", None).unwrap()
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.revision(), rev);
    assert_eq!(store.list("Route").len(), 1);
    assert!(store.put("Route", "next", json!({}), None).unwrap() > rev);
}

#[test]
fn a_torn_or_corrupt_tail_is_cut_off() {
    let path = temp_path("torn");
    {
        let store = Store::open(&path).unwrap();
        store.put("Route", "a", json!({"n": 1}), None).unwrap();
        store.put("Route", "b", json!({"n": 2}), None).unwrap();
    }
    let whole = std::fs::read(&path).unwrap();
    // A crash in the middle of the third record's write.
    let third = record::encode(&record::Record { op: record::Op::Put, revision: 3, kind: "Route".into(), name: "c".into(), value: Some(json!({"n": 3})) });
    let mut torn = whole.clone();
    torn.extend_from_slice(&third[..third.len() / 2]);
    std::fs::write(&path, &torn).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list("Route").len(), 2);
    assert_eq!(std::fs::read(&path).unwrap().len(), whole.len(), "the torn bytes are gone from the file");
    store.put("Route", "c", json!({"n": 3}), None).unwrap();
    drop(store);
    assert_eq!(Store::open(&path).unwrap().list("Route").len(), 3);
    // A flipped bit in the last record: its checksum no longer matches.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let names: Vec<_> = Store::open(&path).unwrap().list("Route").into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn compaction_shrinks_the_log_and_keeps_everything() {
    let path = temp_path("compact");
    let big = "x".repeat(16 * 1024);
    let (last, deleted_rev) = {
        let store = Store::open(&path).unwrap();
        let mut last = 0;
        for i in 0..200 {
            last = store.put("Route", "hot", json!({"i": i, "pad": big}), None).unwrap();
        }
        store.put("Route", "cold", json!({"keep": true}), None).unwrap();
        store.put("Route", "tmp", json!({}), None).unwrap();
        (last, store.delete("Route", "tmp", None).unwrap())
    };
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 2 * 1024 * 1024, "200 x 16 KiB updates of one object compact to far less: {size} bytes");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.get("Route", "hot").unwrap().value["i"], 199);
    assert!(store.get("Route", "hot").unwrap().resource_version >= last);
    assert_eq!(store.get("Route", "cold").unwrap().value, json!({"keep": true}));
    assert!(store.get("Route", "tmp").is_none());
    assert_eq!(store.revision(), deleted_rev, "the revision counter survives compaction");
}

/// Writes until killed, printing the number of each acknowledged write:
/// the process `kill_9_loses_no_acknowledged_write` kills.
#[test]
#[ignore = "run as a child process by kill_9_loses_no_acknowledged_write"]
fn crash_writer_child() {
    let Some(path) = std::env::var_os("TREFOIL_STORE_CHILD") else { return };
    let store = Store::open(PathBuf::from(path)).unwrap();
    for i in 0u64.. {
        store.put("Route", &format!("r{i}"), json!({"i": i, "pad": "y".repeat(512)}), None).unwrap();
        println!("acked {i}");
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let path = temp_path("kill9");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::tests::crash_writer_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("TREFOIL_STORE_CHILD", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ").and_then(|n| n.parse::<u64>().ok()) {
            acked = Some(n);
            if n >= 300 {
                // SIGKILL: no destructor, no flush, mid-write if the timing says so.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    let acked = acked.expect("the child acknowledged writes");
    let store = Store::open(&path).unwrap();
    for i in 0..=acked {
        assert_eq!(store.get("Route", &format!("r{i}")).map(|s| s.value["i"].clone()), Some(json!(i)), "acknowledged write r{i} lost");
    }
}
