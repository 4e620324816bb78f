//! Ports and waits: tests run in parallel on one machine, so they take
//! free ports rather than fixed ones, and wait on a condition (bounded, polled)
//! rather than sleeping for a guessed time.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How often [`wait_until`] looks again: quick enough that a test waits no
/// longer than it must, slow enough to leave the processes it waits on the CPU.
const POLL: Duration = Duration::from_millis(20);

/// A port that was free a moment ago on 127.0.0.1. Another process may take it
/// before the caller binds it; prefer letting servers bind port 0 where they can.
pub fn free_port() -> u16 {
    // Below the kernel's range for outgoing connections' local ports, so a
    // port released here is not taken by a connection before its user binds it.
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    // Every test of a binary runs in one process: a port handed out once
    // is not handed out again, or two servers of one test (a proxy's admin
    // and its listener, say) could be given the same port before either binds.
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let listener = (0..64)
        .filter(|_| ephemeral_start > 21000)
        .map(|_| fastrand::u16(20000..ephemeral_start))
        .filter(|port| !given.contains(port))
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .unwrap_or_else(|| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port"));
    let port = listener.local_addr().expect("reading local address of probe listener").port();
    given.insert(port);
    port
}

/// A loopback address whose port was free a moment ago (see [`free_port`]).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `connect()` every 20 ms until `addr` accepts or `timeout` passes.
/// Returns whether it became reachable.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let attempt = (deadline - now).min(Duration::from_millis(200));
        if TcpStream::connect_timeout(&addr, attempt).is_ok() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep((deadline - now).min(POLL));
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        thread::sleep(POLL);
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("free port can be bound");
    }

    #[test]
    fn no_port_is_handed_out_twice() {
        let ports: BTreeSet<u16> = (0..500).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 500);
    }

    #[test]
    fn wait_for_port_reports_both_outcomes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(wait_for_port(addr, Duration::from_secs(1)));
        drop(listener);
        let start = Instant::now();
        assert!(!wait_for_port(addr, Duration::from_millis(150)));
        assert!(start.elapsed() < Duration::from_secs(2), "wait_for_port overran its timeout");
    }

    #[test]
    fn wait_until_returns_once_the_condition_holds() {
        let mut calls = 0;
        wait_until("the third call", Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        });
        assert_eq!(calls, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for nothing")]
    fn wait_until_panics_with_what_it_waited_for() {
        wait_until("nothing", Duration::from_millis(50), || false);
    }
}
