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

use trefoil_testkit::control::WAIT;
use trefoil_testkit::{run_with_timeout, scratch_dir, trefoil_command, wait_until, Control, Process};

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
    fn new() -> Pair {
        let id = std::process::id() % 10_000;
        let pair = Pair {
            client: format!("tfa-c{id}"),
            server: format!("tfa-s{id}"),
            server_if: format!("tfa-vs{id}"),
            client_ip: format!("10.231.{}.1", id % 250),
            server_ip: format!("10.231.{}.2", id % 250),
        };
        let client_if = format!("tfa-vc{id}");
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
    let pair = Pair::new();
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

/// An agent's log so far (read from its file: `wait_for` holds the process).
fn log(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

fn log_has(dir: &std::path::Path, file: &str, text: &str) -> bool {
    log(dir, file).contains(text)
}
