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
    let third = record::encode(&record::Record {
        op: record::Op::Put,
        revision: 3,
        kind: "Route".into(),
        name: "c".into(),
        value: Some(json!({"n": 3})),
    });
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

/// Where each record of a whole log starts, and the end of the log.
fn boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = vec![0];
    while at < bytes.len() {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push(at);
    }
    out
}

/// A store of Routes `a`..`e` (revisions 1..5), closed; its bytes and record boundaries.
fn five_routes(name: &str) -> (PathBuf, Vec<u8>, Vec<usize>) {
    let path = temp_path(name);
    let store = Store::open(&path).unwrap();
    for n in ["a", "b", "c", "d", "e"] {
        store.put("Route", n, json!({"spec": {"hosts": [format!("{n}.example")]}}), None).unwrap();
    }
    drop(store);
    let bytes = std::fs::read(&path).unwrap();
    let at = boundaries(&bytes);
    (path, bytes, at)
}

fn names(store: &Store) -> Vec<String> {
    store.list("Route").into_iter().map(|s| s.name).collect()
}

#[test]
fn damage_followed_by_an_intact_record_is_refused_and_the_file_left_alone() {
    let (path, whole, at) = five_routes("damaged");
    // One flipped bit in the middle of the second record's payload.
    let mut bytes = whole.clone();
    bytes[at[1] + 30] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let e = Store::open(&path).err().expect("a store damaged in the middle does not open");
    assert!(matches!(e, StoreError::Damaged { bad, next, .. } if bad == at[1] && next == at[2]), "{e}");
    let text = e.to_string();
    assert!(text.contains(&format!("byte {}", at[1])) && text.contains(&path.display().to_string()) && text.contains("--repair"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is untouched");

    // A damaged length field: the record's extent itself is wrong.
    let mut bytes = whole.clone();
    bytes[at[3]] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Store::open(&path), Err(StoreError::Damaged { bad, next, .. }) if bad == at[3] && next == at[4]));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // The same flip in the last record is a torn tail: cut off, as before.
    let mut bytes = whole.clone();
    bytes[at[4] + 30] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(names(&Store::open(&path).unwrap()), ["a", "b", "c", "d"]);
    assert_eq!(std::fs::read(&path).unwrap(), whole[..at[4]], "the torn record is gone from the file");
}

#[test]
fn repair_keeps_the_records_before_and_after_the_damage() {
    let (path, whole, at) = five_routes("repair");
    let mut bytes = whole;
    // The second record's checksum, and the fourth record zeroed from its
    // middle into the fifth's header: two damaged stretches.
    bytes[at[1] + 5] ^= 0x80;
    bytes[at[3] + 70..at[4] + 6].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Store::open(&path), Err(StoreError::Damaged { .. })));

    let report = repair(&path).unwrap();
    assert_eq!(report.kept, 2, "{report}");
    assert_eq!(report.dropped, [at[1]..at[2], at[3]..at[5]], "the second record, and the fourth to the end");
    // The fifth record lost only its header: its payload still names it.
    assert_eq!(report.named, ["Route/b (put, revision 2)", "Route/d (put, revision 4)", "Route/e (put, revision 5)"], "{report}");
    let aside = report.aside.clone().expect("the damaged original is set aside");
    assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept byte for byte");
    let text = report.to_string();
    assert!(
        text.contains(&format!("bytes {}..{}", at[1], at[2])) && text.contains(&aside.display().to_string()) && text.contains("Route/d"),
        "{text}"
    );

    let store = Store::open(&path).unwrap();
    assert_eq!(names(&store), ["a", "c"]);
    assert_eq!(store.get("Route", "c").unwrap().resource_version, 3);
    assert!(store.put("Route", "f", json!({}), None).unwrap() > 3);
    drop(store);
    let again = repair(&path).unwrap();
    assert!(again.aside.is_none() && again.dropped.is_empty(), "{again}");
}

#[test]
fn a_damaged_stretch_in_a_record_and_a_torn_tail_are_both_salvaged() {
    let (_, whole, at) = five_routes("salvage");
    let mut bytes = whole.clone();
    bytes[at[2] + 20] = b'X';
    bytes.extend_from_slice(&whole[at[1]..at[1] + 10]);
    let found = record::salvage(&bytes);
    let revisions: Vec<u64> = found.records.iter().map(|(r, _)| r.revision).collect();
    assert_eq!(revisions, [1, 2, 4, 5]);
    assert_eq!(found.gaps, [at[2]..at[3], at[5]..bytes.len()]);
    // Garbage alone holds nothing, and does not take long to say so.
    assert!(record::salvage(&vec![0u8; 1 << 20]).records.is_empty());
    assert!(record::salvage(&vec![0xffu8; 1 << 20]).records.is_empty());
}

#[test]
fn a_store_in_use_is_not_opened_twice() {
    let path = temp_path("locked");
    let store = Store::open(&path).unwrap();
    assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
    assert!(matches!(repair(&path), Err(StoreError::Locked { .. })));
    drop(store);
    Store::open(&path).unwrap();
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
