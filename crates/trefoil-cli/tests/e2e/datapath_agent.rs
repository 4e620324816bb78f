//! `trefoil datapath agent` fed by a real `trefoil control`, in network
//! namespaces the test builds (a client and a server joined by a veth
//! pair; the agent guards the server's side): a drop rule added with
//! `trefoil datapath add` refuses the client's connections; a rule deleted
//! while the agent was killed is gone once it restarts; a rule added live
//! applies; stopping the agent leaves no pins behind. The kernel programs
//! themselves are tested in `trefoil-datapath`.
//!
//! Needs root (namespaces, eBPF or nftables); skipped otherwise, saying so.

use std::process::Command;
use std::time::Duration;

use trefoil_model::spec::{ListenerProtocol, ListenerSpec, ProxySpec};
use trefoil_model::Spec;
use trefoil_testkit::control::WAIT;
use trefoil_testkit::resources::{listener_spec, resource};
use trefoil_testkit::{run_with_timeout, scratch_dir, trefoil_command, wait_until, Control, Process, ToYaml};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = run_with_timeout(Command::new("ip").args(args), Duration::from_secs(10));
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A client and a server namespace joined by a veth pair; deleted on drop.
struct Pair {
    client: String,
    server: String,
    /// The server's end of the pair, the interface the agent guards.
    server_if: String,
    client_ip: String,
    server_ip: String,
}

impl Pair {
    /// `net` tells apart the pairs of tests running at once in one process.
    fn new(net: u8) -> Pair {
        let id = std::process::id() % 10_000;
        let pair = Pair {
            client: format!("tf{net}-c{id}"),
            server: format!("tf{net}-s{id}"),
            server_if: format!("tf{net}-vs{id}"),
            client_ip: format!("10.{net}.{}.1", id % 250),
            server_ip: format!("10.{net}.{}.2", id % 250),
        };
        let client_if = format!("tf{net}-vc{id}");
        ip(&["netns", "add", &pair.client]);
        ip(&["netns", "add", &pair.server]);
        ip(&["link", "add", &client_if, "netns", &pair.client, "type", "veth", "peer", "name", &pair.server_if, "netns", &pair.server]);
        for (ns, dev, addr) in [(&pair.client, &client_if, &pair.client_ip), (&pair.server, &pair.server_if, &pair.server_ip)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Whether the client gets an answer from the server's port 8080 within 2 s.
    fn client_connects(&self) -> bool {
        let url = format!("http://{}:8080/", self.server_ip);
        let out = run_with_timeout(
            Command::new("ip").args(["netns", "exec", &self.client, "curl", "-s", "-o", "/dev/null", "--max-time", "2", &url]),
            Duration::from_secs(10),
        );
        out.status.success()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pair with it.
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}

#[test]
fn the_agent_follows_rules_added_and_deleted_through_the_control_plane() {
    if !is_root() || trefoil_testkit::find_command("python3").is_none() {
        eprintln!("skipping: needs root (network namespaces, eBPF or nftables) and python3; CI runs it as root");
        return;
    }
    let dir = scratch_dir();
    let pair = Pair::new(231);
    let mut server = Process::spawn_logged(
        "HTTP server in the server namespace",
        Command::new("ip").args(["netns", "exec", &pair.server, "python3", "-m", "http.server", "8080", "--bind", &pair.server_ip]),
        &dir.join("server.log"),
    );
    server.wait_for("the server to answer the client", WAIT, || pair.client_connects());

    let control = Control::start(&dir.join("data"));
    let node = format!("edge{}", std::process::id());
    let pins = std::path::Path::new("/sys/fs/bpf/trefoil-e2e").join(&node);
    let start_agent = |log: &str| {
        Process::spawn_logged(
            "trefoil datapath agent",
            trefoil_command()
                .args(["datapath", "agent", "--node", &node, "--interface", &pair.server_if, "--pin-root", "/sys/fs/bpf/trefoil-e2e"])
                .arg("--netns")
                .arg(format!("/run/netns/{}", pair.server))
                .args(["--server", &control.url()]),
            &dir.join(log),
        )
    };
    let trefoil = |args: &[&str]| {
        let out = run_with_timeout(trefoil_command().args(args).args(["--server", &control.url()]), WAIT);
        assert!(out.status.success(), "trefoil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };

    let block = format!("{} 8080 : drop", pair.server_ip);
    trefoil(&["datapath", "add", &block, "--from", &pair.client_ip, "--name", "block-client"]);
    let mut first = start_agent("agent-1.log");
    first.wait_for("the agent to apply the rule", WAIT, || log_has(&dir, "agent-1.log", "entries=1"));
    assert!(!pair.client_connects(), "the drop rule refuses the client:\n{}", log(&dir, "agent-1.log"));

    // Killed, the agent leaves the datapath as it was; the rule is deleted
    // meanwhile, and the next agent, finding no rule to announce it, still
    // takes it out.
    first.kill();
    assert!(!pair.client_connects(), "the datapath outlives its agent");
    trefoil(&["datapath", "delete", "block-client"]);
    let mut second = start_agent("agent-2.log");
    second.wait_for("the restarted agent to apply the empty table", WAIT, || log_has(&dir, "agent-2.log", "entries=0"));
    wait_until("the client to connect again", WAIT, || pair.client_connects());

    // A rule added while it runs is applied live.
    trefoil(&["datapath", "add", &block, "--from", &pair.client_ip, "--name", "block-client"]);
    second.wait_for("the agent to apply the new rule", WAIT, || log_has(&dir, "agent-2.log", "entries=1"));
    assert!(!pair.client_connects(), "the rule added live refuses the client");

    second.signal(libc::SIGTERM);
    assert_eq!(second.wait_exit(WAIT), Some(0), "a stopped agent removes its datapath:\n{}", log(&dir, "agent-2.log"));
    assert!(!pins.exists(), "nothing left pinned under {}", pins.display());
    wait_until("the client to connect once the agent is gone", WAIT, || pair.client_connects());
    assert_eq!(log(&dir, "agent-2.log").matches("datapath table applied").count(), 2, "each table once:\n{}", log(&dir, "agent-2.log"));
    drop(server);
}

/// Echoes every byte back, one connection at a time.
const ECHO: &str = "import socket, sys
s = socket.create_server((sys.argv[1], 9000))
while True:
    c, _ = s.accept()
    while (d := c.recv(65536)):
        c.sendall(d)
    c.close()
";

/// Sends 10 MB of random bytes and prints `exact` if the same came back.
const SEND: &str = "import os, socket, sys, threading
data = os.urandom(10 * 1024 * 1024)
c = socket.create_connection((sys.argv[1], 9000), timeout=20)
threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR))).start()
got = bytearray()
while (d := c.recv(65536)):
    got += d
print('exact' if bytes(got) == data else f'differs: {len(got)} bytes back')
";

#[test]
fn a_redirected_connection_passes_through_the_transparent_listener_byte_exact() {
    if !is_root() || trefoil_testkit::find_command("python3").is_none() {
        eprintln!("skipping: needs root (network namespaces, eBPF or nftables) and python3; CI runs it as root");
        return;
    }
    let dir = scratch_dir();
    let pair = Pair::new(232);
    let in_server = |args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.server]).args(args);
        cmd
    };
    let _echo = Process::spawn_logged("echo server", &mut in_server(&["python3", "-c", ECHO, &pair.server_ip]), &dir.join("echo.log"));

    // A proxy in the server's namespace (the node) with a transparent
    // listener; its access log goes to a file the test reads.
    let listen: std::net::SocketAddr = format!("{}:15001", pair.server_ip).parse().unwrap();
    let access = dir.join("access.log");
    let proxy_spec = ProxySpec { access_log: access.display().to_string(), ..ProxySpec::with_defaults() };
    let listener = ListenerSpec { protocol: ListenerProtocol::Tcp, transparent: true, ..listener_spec(listen) };
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, vec![resource("node", Spec::Proxy(proxy_spec)), resource("tproxy", Spec::Listener(listener))].to_yaml())
        .unwrap();
    let trefoil_bin = trefoil_testkit::trefoil_path().display().to_string();
    let mut proxy = Process::spawn_logged(
        "transparent proxy",
        &mut in_server(&[&trefoil_bin, "proxy", "--config", &config.display().to_string()]),
        &dir.join("proxy.log"),
    );
    proxy.wait_for("the transparent listener", WAIT, || log_has(&dir, "proxy.log", "listening"));

    let control = Control::start(&dir.join("data"));
    let trefoil = |args: &[&str]| {
        let out = run_with_timeout(trefoil_command().args(args).args(["--server", &control.url()]), WAIT);
        assert!(out.status.success(), "trefoil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    trefoil(&["datapath", "add", &format!("{} 9000 : redirect => app=tproxy", pair.server_ip), "--name", "via-proxy"]);
    let node = format!("tp{}", std::process::id());
    let mut agent = Process::spawn_logged(
        "trefoil datapath agent",
        trefoil_command()
            .args(["datapath", "agent", "--node", &node, "--interface", &pair.server_if, "--pin-root", "/sys/fs/bpf/trefoil-e2e"])
            .args(["--redirect-to", &format!("app=tproxy@{listen}")])
            .arg("--netns")
            .arg(format!("/run/netns/{}", pair.server))
            .args(["--server", &control.url()]),
        &dir.join("agent.log"),
    );
    agent.wait_for("the agent to apply the rule", WAIT, || log_has(&dir, "agent.log", "entries=1"));

    // The client talks to the server's own address; the bytes go through
    // the proxy, which forwards them to where they were sent.
    let send = || {
        let out = run_with_timeout(
            Command::new("ip").args(["netns", "exec", &pair.client, "python3", "-c", SEND, &pair.server_ip]),
            Duration::from_secs(60),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let mut first = String::new();
    wait_until("the echo server to answer through the proxy", WAIT, || {
        first = send();
        first == "exact"
    });
    wait_until("the proxy's access-log line", WAIT, || std::fs::read_to_string(&access).is_ok_and(|l| !l.is_empty()));
    let line = std::fs::read_to_string(&access).unwrap_or_default();
    let original = format!("{}:9000", pair.server_ip);
    assert!(line.contains(&original) && line.contains(&pair.client_ip), "the proxy saw the client and the original destination: {line}");

    // Without the rule the connection goes straight to the server.
    trefoil(&["datapath", "delete", "via-proxy"]);
    agent.wait_for("the agent to apply the empty table", WAIT, || log_has(&dir, "agent.log", "entries=0"));
    let lines_before = std::fs::read_to_string(&access).unwrap_or_default().lines().count();
    assert_eq!(send(), "exact");
    assert_eq!(std::fs::read_to_string(&access).unwrap_or_default().lines().count(), lines_before, "not through the proxy any more");
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", log(&dir, "agent.log"));
}

/// An agent's log so far (read from its file: `wait_for` holds the process).
fn log(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

fn log_has(dir: &std::path::Path, file: &str, text: &str) -> bool {
    log(dir, file).contains(text)
}
