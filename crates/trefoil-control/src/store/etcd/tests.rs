//! The etcd backend against a real one-member etcd (Debian's etcd-server):
//! the same optimistic-concurrency answers as the embedded store.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::store::{Event, Store, StoreError};

/// A one-member etcd on free loopback ports, killed when dropped.
struct OneEtcd {
    child: Child,
    client: String,
}

impl Drop for OneEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// `None` (the test says it skipped) without an `etcd` binary.
fn start() -> Option<OneEtcd> {
    let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"].into_iter().find(|p| std::path::Path::new(p).exists())?;
    let dir = std::env::temp_dir().join(format!("trefoil-etcd-unit-{}-{}", std::process::id(), fastrand::u64(..)));
    let (client, peer) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let child = Command::new(binary)
        .args(["--name", "unit", "--data-dir"])
        .arg(&dir)
        .args(["--listen-client-urls", &format!("http://{client}"), "--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &format!("http://{peer}"), "--initial-advertise-peer-urls", &format!("http://{peer}")])
        .args(["--initial-cluster", &format!("unit=http://{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd");
    Some(OneEtcd { child, client })
}

/// Opens the store once etcd answers (bounded).
fn open(etcd: &OneEtcd) -> Store {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Store::open_etcd(std::slice::from_ref(&etcd.client)) {
            Ok(store) => return store,
            Err(e) if Instant::now() > deadline => panic!("etcd never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn etcd_store_answers_like_the_embedded_one() {
    let Some(etcd) = start() else {
        eprintln!("SKIPPED: no etcd binary (Debian's etcd-server; scripts/install-test-deps installs it)");
        return;
    };
    let store = open(&etcd);
    let mut events = store.subscribe();
    let v1 = store.put("Route", "web", json!({"w": 1}), Some(0)).unwrap();
    // Read back at once: the writer waited for its own write to reach the mirror.
    assert_eq!(store.get("Route", "web").unwrap().resource_version, v1);
    assert!(matches!(events.try_recv(), Ok(Event::Put(s)) if s.resource_version == v1));
    match store.put("Route", "web", json!({"w": 2}), Some(0)) {
        Err(StoreError::Conflict { expected: 0, current: Some(c), .. }) => assert_eq!(c, v1),
        other => panic!("a create of an existing name: {other:?}"),
    }
    let v2 = store.put("Route", "web", json!({"w": 2}), Some(v1)).unwrap();
    assert!(v2 > v1, "versions increase");
    assert!(matches!(store.put("Route", "web", json!({"w": 3}), Some(v1)), Err(StoreError::Conflict { current: Some(c), .. }) if c == v2));
    assert!(matches!(store.delete("Route", "web", Some(v1)), Err(StoreError::Conflict { .. })));
    let gone = store.delete("Route", "web", None).unwrap();
    assert!(store.get("Route", "web").is_none());
    assert!(matches!(store.delete("Route", "web", None), Err(StoreError::NotFound { .. })));
    assert_eq!(store.revision(), gone);
    // A second store (another replica) loads what the first wrote.
    store.put("Route", "api", json!({"w": 9}), None).unwrap();
    let other = open(&etcd);
    assert_eq!(other.get("Route", "api").unwrap().value, json!({"w": 9}));
    // One of the two leads; the other names it.
    let (a, b) = (store.elect("a".into()), other.elect("b".into()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let agreed = loop {
        let (la, lb) = (a.borrow().clone(), b.borrow().clone());
        if la.me != lb.me && la.holder.is_some() && la.holder == lb.holder {
            break la.holder;
        }
        assert!(Instant::now() < deadline, "no leader agreed on: {la:?} {lb:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(matches!(agreed.as_deref(), Some("a" | "b")), "{agreed:?}");
}

#[test]
fn an_unreachable_cluster_is_a_clear_error() {
    let port = free_port();
    let e = Store::open_etcd(&[format!("127.0.0.1:{port}")]).err().expect("nothing listens there");
    let text = e.to_string();
    assert!(text.starts_with(&format!("etcd cluster at 127.0.0.1:{port} has no quorum or is unreachable: 127.0.0.1:{port}: ")), "{text}");
}
