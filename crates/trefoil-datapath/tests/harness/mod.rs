//! The namespace topology the datapath tests build for themselves: `client`,
//! `edge` (the node the agent programs, a router) and `server`, plus `tap`
//! (a function's namespace that receives copies). Names are unique per test
//! and everything is deleted on drop, also when the test fails.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]
#![allow(unsafe_code, reason = "setns has no safe wrapper; tests run client and server threads inside namespaces")]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use trefoil_datapath::{Action, AgentConfig, Entry, IpNet, Protocol};

pub(crate) const CLIENT_IP: &str = "10.1.0.2";
pub(crate) const EDGE_CLIENT_SIDE_IP: &str = "10.1.0.1";
pub(crate) const SERVER_IP: &str = "10.2.0.2";
pub(crate) const CLIENT_IP6: &str = "fd00:1::2";
pub(crate) const EDGE_CLIENT_SIDE_IP6: &str = "fd00:1::1";
pub(crate) const SERVER_IP6: &str = "fd00:2::2";
/// Edge's interfaces towards client, server and the tap function.
pub(crate) const EDGE_TO_CLIENT: &str = "ec";
pub(crate) const EDGE_TO_SERVER: &str = "es";
pub(crate) const EDGE_TO_TAP: &str = "et";
/// Where the test agents pin (a directory of their own, per node).
pub(crate) const PIN_ROOT: &str = "/sys/fs/bpf/trefoil-test";

/// Whether the tests can build namespaces; prints why not when they cannot.
pub(crate) fn can_run(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false);
    if !root {
        eprintln!("skipping {test}: needs root (network namespaces and eBPF); CI runs it as root");
    }
    root
}

pub(crate) fn sh(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

pub(crate) fn sh_output(args: &[&str]) -> String {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Four namespaces wired as client - edge - server, with tap hanging off edge.
pub(crate) struct Topology {
    pub(crate) id: String,
}

impl Topology {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!("tdp{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let topology = Self { id };
        for role in ["client", "edge", "server", "tap"] {
            sh(&["ip", "netns", "add", &topology.ns(role)]);
            sh(&["ip", "-n", &topology.ns(role), "link", "set", "lo", "up"]);
        }
        let (client, edge, server, tap) = (topology.ns("client"), topology.ns("edge"), topology.ns("server"), topology.ns("tap"));
        for (edge_if, peer_ns, peer_if) in [(EDGE_TO_CLIENT, &client, "c0"), (EDGE_TO_SERVER, &server, "s0"), (EDGE_TO_TAP, &tap, "t0")] {
            sh(&["ip", "-n", &edge, "link", "add", edge_if, "type", "veth", "peer", "name", peer_if, "netns", peer_ns]);
            sh(&["ip", "-n", &edge, "link", "set", edge_if, "up"]);
            sh(&["ip", "-n", peer_ns, "link", "set", peer_if, "up"]);
        }
        sh(&["ip", "-n", &edge, "addr", "add", "10.1.0.1/24", "dev", EDGE_TO_CLIENT]);
        sh(&["ip", "-n", &edge, "addr", "add", "10.2.0.1/24", "dev", EDGE_TO_SERVER]);
        sh(&["ip", "-n", &client, "addr", "add", "10.1.0.2/24", "dev", "c0"]);
        sh(&["ip", "-n", &server, "addr", "add", "10.2.0.2/24", "dev", "s0"]);
        sh(&["ip", "-n", &client, "route", "add", "default", "via", "10.1.0.1"]);
        sh(&["ip", "-n", &server, "route", "add", "default", "via", "10.2.0.1"]);
        sh(&["ip", "netns", "exec", &edge, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        // IPv6 too; nodad so the addresses are usable at once.
        for (ns, addr, dev) in [
            (&edge, "fd00:1::1/64", EDGE_TO_CLIENT),
            (&edge, "fd00:2::1/64", EDGE_TO_SERVER),
            (&client, "fd00:1::2/64", "c0"),
            (&server, "fd00:2::2/64", "s0"),
        ] {
            sh(&["ip", "-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
        }
        sh(&["ip", "-n", &client, "-6", "route", "add", "default", "via", "fd00:1::1"]);
        sh(&["ip", "-n", &server, "-6", "route", "add", "default", "via", "fd00:2::1"]);
        sh(&["ip", "netns", "exec", &edge, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
        topology
    }

    pub(crate) fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.id)
    }

    pub(crate) fn ns_path(&self, role: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns(role)))
    }

    /// An agent configuration for the edge node of this topology.
    pub(crate) fn agent_config(&self) -> AgentConfig {
        agent_config(&self.id)
    }

    /// Runs `work` on a thread inside namespace `role`.
    pub(crate) fn spawn<T: Send + 'static>(&self, role: &str, work: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = self.ns_path(role);
        std::thread::spawn(move || {
            enter(&path);
            work()
        })
    }

    /// Runs `work` inside namespace `role` and waits for it.
    pub(crate) fn run<T: Send + 'static>(&self, role: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(role, work).join().expect("namespace thread panicked")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Whatever the test left attached goes first, then the namespaces
        // (and with them the veths).
        if let Err(error) = trefoil_datapath::remove_node(&self.agent_config()) {
            eprintln!("cleanup of {}: {error}", self.id);
        }
        for role in ["client", "edge", "server", "tap"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(role)]).status();
        }
    }
}

/// The edge agent's configuration of topology `id` (also for agent processes).
pub(crate) fn agent_config(id: &str) -> AgentConfig {
    let mut config = AgentConfig::new(id, [EDGE_TO_CLIENT, EDGE_TO_SERVER]);
    config.pin_root = PathBuf::from(PIN_ROOT);
    config.netns = Some(PathBuf::from(format!("/run/netns/{id}-edge")));
    config
}

fn enter(path: &PathBuf) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: the descriptor is open for the call; setns affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {}: {}", path.display(), io::Error::last_os_error());
}

/// A TCP echo server on `addr`; runs until the process ends.
pub(crate) fn echo_server(topology: &Topology, role: &str, addr: SocketAddr) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    topology.spawn(role, move || {
        let listener = std::net::TcpListener::bind(addr).expect("bind echo server");
        ready_tx.send(()).unwrap();
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(Shutdown::Write);
            });
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("echo server ready");
}

/// Connects from `role` to `to`, sends `payload`, and returns what came back
/// (the echo), or the connect error.
pub(crate) fn echo_roundtrip(topology: &Topology, role: &str, to: SocketAddr, payload: Vec<u8>) -> io::Result<Vec<u8>> {
    topology.run(role, move || {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut writer = stream.try_clone()?;
        let sender = std::thread::spawn(move || {
            writer.write_all(&payload)?;
            writer.shutdown(Shutdown::Write)
        });
        let mut received = Vec::new();
        let mut reader = stream;
        reader.read_to_end(&mut received)?;
        sender.join().expect("sender thread")?;
        Ok(received)
    })
}

/// A connection opened from inside `role` (a socket keeps its namespace).
pub(crate) fn connect(topology: &Topology, role: &str, to: SocketAddr) -> io::Result<TcpStream> {
    topology.run(role, move || {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    })
}

/// Sends `message` on a connection to an echo server and reads it back.
pub(crate) fn echo_on(stream: &mut TcpStream, message: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(message)?;
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back)?;
    Ok(back)
}

/// Raises a socket's receive buffer past net.core.rmem_max (root only), so a
/// capture keeps up with a transfer that runs at memory speed.
pub(crate) fn force_recv_buffer(socket: &impl AsRawFd, bytes: i32) {
    // SAFETY: the descriptor is open and the option value is a valid i32 for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
}

pub(crate) fn server_http() -> SocketAddr {
    SocketAddr::new(SERVER_IP.parse().unwrap(), 80)
}

/// A rule for TCP to the server's port 80 from `src`.
pub(crate) fn entry(rule: &str, src: &str, action: Action) -> Entry {
    Entry {
        rule: rule.to_owned(),
        priority: 100,
        src: src.parse::<IpNet>().unwrap(),
        dst: format!("{SERVER_IP}/32").parse().unwrap(),
        ports: 80..=80,
        protocol: Protocol::Tcp,
        action,
    }
}

/// A transparent proxy in edge: reports each connection's local address (the
/// original destination), then forwards to it byte for byte.
pub(crate) fn transparent_proxy(topology: &Topology, listen: SocketAddr) -> mpsc::Receiver<SocketAddr> {
    let (seen_tx, seen_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    topology.spawn("edge", move || {
        let socket = socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::STREAM, None).unwrap();
        // Replies leave from the original destination, an address edge does not own.
        if listen.is_ipv4() {
            socket.set_ip_transparent_v4(true).unwrap();
        } else {
            socket.set_ip_transparent_v6(true).unwrap();
        }
        socket.set_reuse_address(true).unwrap();
        socket.bind(&listen.into()).unwrap();
        socket.listen(128).unwrap();
        let listener: std::net::TcpListener = socket.into();
        ready_tx.send(()).unwrap();
        for downstream in listener.incoming().flatten() {
            let original = downstream.local_addr().unwrap();
            seen_tx.send(original).unwrap();
            std::thread::spawn(move || {
                let upstream = TcpStream::connect(original).unwrap();
                let (mut down_r, mut down_w) = (downstream.try_clone().unwrap(), downstream);
                let (mut up_r, mut up_w) = (upstream.try_clone().unwrap(), upstream);
                let forward = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down_r, &mut up_w);
                    let _ = up_w.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut up_r, &mut down_w);
                let _ = down_w.shutdown(std::net::Shutdown::Write);
                let _ = forward.join();
            });
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("proxy ready");
    seen_rx
}

pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(0x7ef1);
    (0..len).map(|_| rng.u8(..)).collect()
}
