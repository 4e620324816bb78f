//! `trefoil datapath agent` fed by a real `trefoil control`, in network
//! namespaces the test builds (a client and a server joined by a veth
//! pair; the agent guards the server's side): a drop rule added with
//! `trefoil datapath add` refuses the client's connections; a rule deleted
//! while the agent was killed is gone once it restarts; a rule added live
//! applies; stopping the agent leaves no pins behind. A redirect rule finds
//! its transparent listener through the labels of what it selects;
//! redirected there, raw TCP passes byte-exact, and HTTP runs the
//! edge-security policy before reaching its original destination, with no
//! request lost while the rule comes and goes. `trefoil up` runs the agent
//! on its node and takes down everything it attached when it ends, also
//! when it is killed. The kernel programs themselves are tested in
//! `trefoil-datapath`.
//!
//! Needs root (namespaces, eBPF or nftables); skipped otherwise, saying so.

use std::process::Command;
use std::time::Duration;

use trefoil_model::spec::{ListenerProtocol, ListenerSpec, ProxySpec};
use trefoil_model::Spec;
use trefoil_testkit::control::WAIT;
use trefoil_testkit::resources::{listener_spec, resource};
use trefoil_testkit::{run_with_timeout, scratch_dir, trefoil_command, wait_until, Control, Process, ToYaml};

/// A scratch directory and the pair `net`, if a namespace test can run
/// here: as root, with `tools` installed. If not it says so, and the test
/// passes without running.
fn namespaces(net: u8, tools: &[&str]) -> Option<(std::path::PathBuf, Pair)> {
    if !trefoil_testkit::is_root() || tools.iter().any(|t| trefoil_testkit::find_command(t).is_none()) {
        eprintln!("skipping: needs root (network namespaces, eBPF or nftables) and {}; CI runs it as root", tools.join(", "));
        return None;
    }
    Some((scratch_dir(), Pair::new(net)))
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

    /// `ARGS` to run in the server's namespace.
    fn in_server(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server]).args(args);
        cmd
    }

    /// The raw TCP echo server on the server's port 9000, once the client reaches it.
    fn echo_server(&self, dir: &std::path::Path) -> Process {
        let mut echo =
            Process::spawn_logged("echo server", &mut self.in_server(&["python3", "-c", ECHO, &self.server_ip]), &dir.join("echo.log"));
        echo.wait_for("the echo server to accept the client", WAIT, || self.connects(9000));
        echo
    }

    /// Whether the client's TCP connection to the server's `port` is accepted within 2 s.
    fn connects(&self, port: u16) -> bool {
        let connect = "import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()";
        let out = run_with_timeout(
            Command::new("ip").args(["netns", "exec", &self.client, "python3", "-c", connect, &self.server_ip, &port.to_string()]),
            Duration::from_secs(10),
        );
        out.status.success()
    }

    /// 10 MB from the client to the server's port 9000 and back: `exact`, or what went wrong.
    fn send_10mb(&self) -> String {
        let out = run_with_timeout(
            Command::new("ip").args(["netns", "exec", &self.client, "python3", "-c", SEND, &self.server_ip]),
            Duration::from_secs(60),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
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
    let Some((dir, pair)) = namespaces(231, &["python3"]) else { return };
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
                .args(["--server", &control.url(), "--token", control.token(), "--control", &control.grpc.to_string()]),
            &dir.join(log),
        )
    };
    let trefoil = |args: &[&str]| {
        let out = run_with_timeout(trefoil_command().args(args).args(["--server", &control.url(), "--token", control.token()]), WAIT);
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
    // The control plane shows the agent beside the proxies, with the revision it ACKed.
    let agent = format!("agent/{node}");
    wait_until("the agent's ACK of the new table to show", WAIT, || {
        let list = control.client().proxies().unwrap();
        list.get(&agent)
            .is_some_and(|a| a.connected && a.node.as_deref() == Some(node.as_str()) && a.in_sync() && a.acked_version.is_some())
    });
    let acked = control.client().proxies().unwrap().get(&agent).and_then(|a| a.acked_version).unwrap();
    assert!(log_has(&dir, "agent-2.log", &format!("version={acked}")), "the agent applied version {acked}:\n{}", log(&dir, "agent-2.log"));

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
    let Some((dir, pair)) = namespaces(232, &["python3", "curl"]) else { return };
    let _echo = pair.echo_server(&dir);

    // A proxy in the server's namespace (the node) with a transparent
    // listener; its access log goes to a file the test reads.
    let listen: std::net::SocketAddr = format!("{}:15001", pair.server_ip).parse().unwrap();
    let access = dir.join("access.log");
    let proxy_spec = ProxySpec { access_log: access.display().to_string(), ..ProxySpec::with_defaults() };
    let listener = ListenerSpec { protocol: ListenerProtocol::Tcp, transparent: true, ..listener_spec(listen) };
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, vec![resource("node", Spec::Proxy(proxy_spec)), resource("tproxy", Spec::Listener(listener))].to_yaml())
        .unwrap();
    let _proxy = node_proxy(&dir, &pair, &config);

    let control = Control::start(&dir.join("data"));
    let trefoil = |args: &[&str]| trefoil_ok(&control, args);
    trefoil(&["datapath", "add", &format!("{} 9000 : redirect => app=tproxy", pair.server_ip), "--name", "via-proxy"]);
    let mut agent = redirecting_agent(&dir, &pair, &control);
    // Nothing has the rule's labels yet: the redirect fails closed.
    assert!(log_has(&dir, "agent.log", "rule via-proxy: redirect not resolved, its IPv4 traffic is dropped (fails closed)"));
    assert!(!pair.connects(9000), "an unresolved redirect drops the connection");
    // The control plane says so too, as an event about the rule (`trefoil get events`).
    let events = control.client().list("Event").unwrap().items;
    let unresolved: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.spec {
            Spec::Event(ev) if ev.reason == "Unresolved" && ev.regarding == "DatapathRule/via-proxy" => Some(ev.message.clone()),
            _ => None,
        })
        .collect();
    assert!(
        unresolved.iter().any(|m| m.contains("selects no Workload, NetworkFunction or CNF")),
        "an Unresolved event names the rule and the reason: {unresolved:?}"
    );

    // The agent finds the listener from the resources: the function the
    // rule selects names its transparent Listener by label.
    apply(&control, &dir.join("fronted.yaml"), &fronted_function(listen));
    agent.wait_for("the agent to apply the resolved rule", WAIT, || log(&dir, "agent.log").matches("entries=1").count() == 2);

    // The client talks to the server's own address; the bytes go through
    // the proxy, which forwards them to where they were sent.
    let send = || pair.send_10mb();
    let mut first = String::new();
    wait_until("the echo server to answer through the proxy", WAIT, || {
        first = send();
        first == "exact"
    });
    wait_until("the proxy's access-log line", WAIT, || std::fs::read_to_string(&access).is_ok_and(|l| !l.is_empty()));
    let line = std::fs::read_to_string(&access).unwrap_or_default();
    let original = format!("{}:9000", pair.server_ip);
    assert!(line.contains(&original) && line.contains(&pair.client_ip), "the proxy saw the client and the original destination: {line}");
    // Counted as a TCP connection (and its bytes) to its original destination.
    let admin = ProxySpec::with_defaults().admin;
    let metrics = run_with_timeout(&mut pair.in_server(&["curl", "-s", &format!("http://{admin}/metrics")]), WAIT);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let counted =
        |name: &str| metrics.lines().any(|l| l.starts_with(name) && l.contains("service=\"original-destination\"") && !l.ends_with(" 0"));
    assert!(counted("trefoil_tcp_connections_total") && counted("trefoil_tcp_bytes_total"), "{metrics}");

    // Without the rule the connection goes straight to the server.
    trefoil(&["datapath", "delete", "via-proxy"]);
    agent.wait_for("the agent to apply the empty table", WAIT, || log_has(&dir, "agent.log", "entries=0"));
    let lines_before = std::fs::read_to_string(&access).unwrap_or_default().lines().count();
    assert_eq!(send(), "exact");
    assert_eq!(std::fs::read_to_string(&access).unwrap_or_default().lines().count(), lines_before, "not through the proxy any more");
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", log(&dir, "agent.log"));
}

/// An HTTP/1.1 server on port 80 that answers every GET with the Host it
/// was sent and the path, so the test sees what arrived.
const WEB: &str = "import http.server, sys
class Web(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = f\"host={self.headers.get('Host')} path={self.path}\\n\".encode()
        self.send_response(200)
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer((sys.argv[1], 80), Web).serve_forever()
";

/// A client that keeps asking the server for `/loop`, one connection per
/// request, writing `STATUS direct|proxy` (or `error ...`) per request to
/// the file `argv[2]`; it stops when the file `argv[3]` exists, after 3000
/// requests or after 120 s, whichever comes first.
const LOOP: &str = "import http.client, os, sys, time
host, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 120
with open(out, 'w', buffering=1) as f:
    for _ in range(3000):
        if os.path.exists(stop) or time.monotonic() > deadline:
            break
        try:
            c = http.client.HTTPConnection(host, 80, timeout=5)
            c.request('GET', '/loop')
            r = c.getresponse()
            r.read()
            f.write(f\"{r.status} {'proxy' if r.getheader('x-trefoil-trace-id') else 'direct'}\\n\")
            c.close()
        except Exception as e:
            f.write(f'error {e!r}\\n')
";

/// What the client got for one request: the status, the trace id the
/// proxy adds (none when it came straight from the server), and the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    trace_id: Option<String>,
    body: String,
}

impl Answer {
    fn via_proxy(&self) -> bool {
        self.trace_id.is_some()
    }
}

impl Pair {
    /// `GET path` from the client to the server's port 80 (curl, 5 s at most).
    fn get(&self, path: &str) -> Answer {
        let url = format!("http://{}{path}", self.server_ip);
        let out = run_with_timeout(
            Command::new("ip").args(["netns", "exec", &self.client, "curl", "-s", "-D", "-", "--max-time", "5", &url]),
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let trace_id = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("x-trefoil-trace-id:").map(|v| v.trim().to_string()));
        Answer { status, trace_id, body: body.to_string() }
    }

    /// A second veth pair, from this namespace to the server's, so that
    /// the node's proxy reaches a control plane listening here; returns
    /// this side's address.
    fn link_to_server(&self, net: u8) -> String {
        let id = std::process::id() % 10_000;
        let (here, there) = (format!("tf{net}-h{id}"), format!("tf{net}-hs{id}"));
        let (host_ip, server_ip) = (format!("10.{net}.{}.1", id % 250), format!("10.{net}.{}.2", id % 250));
        // Deleting the server's namespace deletes this pair with it.
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there, "netns", &self.server]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &here]);
        ip(&["link", "set", &here, "up"]);
        ip(&["-n", &self.server, "addr", "add", &format!("{server_ip}/24"), "dev", &there]);
        ip(&["-n", &self.server, "link", "set", &there, "up"]);
        host_ip
    }
}

/// The spans of trace `id` at `control`'s collector, once there are `count`
/// (proxies export in batches about a second apart).
fn trace_spans(control: &Control, id: &str, count: usize) -> Vec<trefoil_api::traces::Span> {
    let mut spans = Vec::new();
    wait_until(&format!("{count} spans of trace {id}"), WAIT, || {
        let out = run_with_timeout(
            trefoil_command().args(["trace", id, "-o", "json", "--server", &control.url(), "--token", control.token()]),
            WAIT,
        );
        spans = serde_json::from_slice::<trefoil_api::traces::Trace>(&out.stdout).map(|t| t.spans).unwrap_or_default();
        spans.len() >= count
    });
    spans
}

/// The main scenario: with a redirect rule for the server's port
/// 80, the client's HTTP goes through the transparent listener, whose
/// route runs the edge-security policy (the example's own rules) and sends
/// what it allows on to the original destination (the access log and the
/// traces at the control plane show the chain); without the rule it
/// goes straight to the server; a client running while the rule comes and
/// goes loses no request.
#[test]
fn redirected_http_runs_the_chain_then_reaches_the_original_destination() {
    let Some((dir, pair)) = namespaces(233, &["python3", "curl"]) else { return };
    let _web = Process::spawn_logged("web server", &mut pair.in_server(&["python3", "-c", WEB, &pair.server_ip]), &dir.join("web.log"));
    wait_until("the server to answer the client directly", WAIT, || pair.get("/").status == 200);

    // The node's proxy and its policy function, in the server's namespace.
    let trefoil_bin = trefoil_testkit::trefoil_path().display().to_string();
    let policy_rules = trefoil_testkit::repo_root().join("examples/edgesecurity/functions/policy.yaml");
    let mut policy = Process::spawn_logged(
        "policy function",
        &mut pair.in_server(&[&trefoil_bin, "nf", "policy", "--listen", "127.0.0.1:9901", "--config", &policy_rules.display().to_string()]),
        &dir.join("policy.log"),
    );
    policy.wait_for("the policy function", WAIT, || log_has(&dir, "policy.log", "network function listening"));
    // The control plane on a link the proxy reaches, so it collects its spans.
    let host_ip = pair.link_to_server(234);
    let api: std::net::SocketAddr = format!("{host_ip}:{}", trefoil_testkit::free_port()).parse().unwrap();
    let control = Control::start_on(&dir.join("data"), api, trefoil_testkit::free_addr());
    let listen = format!("{}:15001", pair.server_ip);
    let access = dir.join("access.log");
    // The node's resources; the CNF the rule selects names the transparent
    // listener in front of it, and the control plane holds them too, for
    // the agent to resolve the rule's target.
    let resources = format!(
        "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {{name: redirected}}\n\
         spec: {{address: \"{listen}\", protocol: auto, transparent: true, routes: [through-edge-security]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: original-destination}}\nspec: {{originalDestination: true}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: policy}}\nspec: {{endpoints: [{{address: \"127.0.0.1:9901\"}}]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: NetworkFunction\nmetadata: {{name: policy}}\nspec: {{service: policy, api: http}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: CNF\n\
         metadata: {{name: edge-security, labels: {{app: edge, trefoil.dev/listener: redirected}}}}\n\
         spec: {{chain: [{{function: policy}}]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {{name: through-edge-security}}\n\
         spec: {{hosts: [\"*\"], rules: [{{backends: [{{service: original-destination}}], chain: edge-security}}]}}\n"
    );
    let proxy = format!(
        "apiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {{name: node}}\n\
         spec: {{accessLog: \"{access}\", tracing: {{otlpEndpoint: \"{otlp}\", samplingPercent: 100}}}}\n---\n",
        access = access.display(),
        otlp = control.url(),
    );
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, proxy + &resources).unwrap();
    let _proxy = node_proxy(&dir, &pair, &config);
    apply(&control, &dir.join("resources.yaml"), &resources);

    let trefoil = |args: &[&str]| trefoil_ok(&control, args);
    let rule = format!("{} 80 : redirect => app=edge", pair.server_ip);
    trefoil(&["datapath", "add", &rule, "--name", "web-through-edge"]);
    let mut agent = redirecting_agent(&dir, &pair, &control);
    let applied = |n: usize| log(&dir, "agent.log").matches("datapath table applied").count() >= n;

    // With the rule: the chain allows `/hello`, which reaches the server
    // with the Host the client sent, and denies `/admin` with 403.
    let allowed = pair.get("/hello");
    assert_eq!((allowed.status, allowed.via_proxy()), (200, true), "{allowed:?}\n{}", log(&dir, "proxy.log"));
    assert_eq!(allowed.body, format!("host={} path=/hello\n", pair.server_ip), "the server got the client's Host");
    let denied = pair.get("/admin");
    assert_eq!((denied.status, denied.via_proxy()), (403, true), "the policy denies /admin: {denied:?}");
    wait_until("both access-log lines", WAIT, || std::fs::read_to_string(&access).is_ok_and(|l| l.lines().count() >= 2));
    let lines = std::fs::read_to_string(&access).unwrap_or_default();
    let line = |path: &str| lines.lines().find(|l| l.contains(&format!("\"path\":\"{path}\""))).unwrap_or_default().to_string();
    let original = format!("\"upstream\":\"{}:80\"", pair.server_ip);
    for wanted in ["\"status\":200", "\"cnf\":\"edge-security\"", "\"service\":\"original-destination\"", &original] {
        assert!(line("/hello").contains(wanted), "the allowed request's line has {wanted}: {lines}");
    }
    for wanted in ["\"status\":403", "\"cnf\":\"edge-security\"", "\"flag\":\"chain_denied\""] {
        assert!(line("/admin").contains(wanted), "the denied request's line has {wanted}: {lines}");
    }
    assert!(!line("/admin").contains("\"upstream\""), "a denied request goes nowhere: {lines}");
    // The traces show the chain: the policy's step, then (when it allows)
    // the attempt at the original destination.
    let attr = |span: &trefoil_api::traces::Span, key: &str| span.attributes.get(key).cloned().unwrap_or_default();
    let spans = trace_spans(&control, allowed.trace_id.as_deref().unwrap_or_default(), 3);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let step = spans.iter().find(|s| s.name == "chain policy").unwrap_or_else(|| panic!("the policy's step: {names:?}"));
    assert_eq!(attr(step, "trefoil.verdict"), "allow", "{step:#?}");
    let attempt = spans.iter().find(|s| s.name == "attempt 1").unwrap_or_else(|| panic!("the upstream attempt: {names:?}"));
    assert_eq!(attr(attempt, "trefoil.upstream"), format!("{}:80", pair.server_ip), "{attempt:#?}");
    assert!(step.end_unix_nano <= attempt.start_unix_nano, "the chain runs before the upstream: {spans:#?}");
    let spans = trace_spans(&control, denied.trace_id.as_deref().unwrap_or_default(), 2);
    let step = spans.iter().find(|s| s.name == "chain policy").unwrap_or_else(|| panic!("the policy's step: {spans:#?}"));
    assert_eq!(attr(step, "trefoil.verdict"), "deny", "{step:#?}");
    assert!(!spans.iter().any(|s| s.name.starts_with("attempt ")), "a denied request has no upstream attempt: {spans:#?}");

    // Without the rule: straight to the server, which answers /admin too.
    trefoil(&["datapath", "delete", "web-through-edge"]);
    agent.wait_for("the agent to apply the empty table", WAIT, || log_has(&dir, "agent.log", "entries=0"));
    let direct = pair.get("/admin");
    assert_eq!((direct.status, direct.via_proxy()), (200, false), "{direct:?}");
    let logged = std::fs::read_to_string(&access).unwrap_or_default().lines().count();

    // A client running while the rule is added and removed: every request
    // succeeds, the redirected ones through the proxy.
    let (answers, stop) = (dir.join("loop.txt"), dir.join("loop.stop"));
    let mut client = Process::spawn_logged(
        "client loop",
        Command::new("ip").args(["netns", "exec", &pair.client, "python3", "-c", LOOP, &pair.server_ip]).arg(&answers).arg(&stop),
        &dir.join("loop.log"),
    );
    let count = |via: &str| std::fs::read_to_string(&answers).unwrap_or_default().lines().filter(|l| l.ends_with(via)).count();
    client.wait_for("direct answers before the rule", WAIT, || count(" direct") >= 20);
    trefoil(&["datapath", "add", &rule, "--name", "web-through-edge"]);
    agent.wait_for("the agent to apply the rule again", WAIT, || applied(3));
    client.wait_for("answers through the proxy", WAIT, || count(" proxy") >= 20);
    let direct_before = count(" direct");
    trefoil(&["datapath", "delete", "web-through-edge"]);
    agent.wait_for("the agent to remove it again", WAIT, || applied(4));
    client.wait_for("direct answers after the rule", WAIT, || count(" direct") >= direct_before + 20);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(client.wait_exit(WAIT), Some(0), "{}", log(&dir, "loop.log"));
    let all = std::fs::read_to_string(&answers).unwrap_or_default();
    let failed: Vec<&str> = all.lines().filter(|l| !l.starts_with("200 ")).collect();
    assert!(failed.is_empty(), "every request of the running client succeeds; failed: {failed:?} of {}", all.lines().count());
    // The access log is written behind the requests: wait for its lines.
    let through = || std::fs::read_to_string(&access).unwrap_or_default().lines().count() - logged;
    wait_until("one access-log line per request that went through the proxy", WAIT, || through() == count(" proxy"));

    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", log(&dir, "agent.log"));
}

/// `trefoil proxy --config CONFIG` in the server's namespace (the node),
/// logging to `proxy.log`; returns once it listens.
fn node_proxy(dir: &std::path::Path, pair: &Pair, config: &std::path::Path) -> Process {
    let trefoil_bin = trefoil_testkit::trefoil_path().display().to_string();
    let mut proxy = Process::spawn_logged(
        "transparent proxy",
        &mut pair.in_server(&[&trefoil_bin, "proxy", "--config", &config.display().to_string()]),
        &dir.join("proxy.log"),
    );
    proxy.wait_for("the transparent listener", WAIT, || log_has(dir, "proxy.log", "listening"));
    proxy
}

/// `trefoil ARGS` against `control`, which must succeed.
fn trefoil_ok(control: &Control, args: &[&str]) {
    let out = run_with_timeout(trefoil_command().args(args).args(["--server", &control.url(), "--token", control.token()]), WAIT);
    assert!(out.status.success(), "trefoil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `YAML`, written to `file`, applied to `control`.
fn apply(control: &Control, file: &std::path::Path, yaml: &str) {
    std::fs::write(file, yaml).unwrap();
    trefoil_ok(control, &["apply", "-f", &file.display().to_string()]);
}

/// The datapath agent of the server's side of `pair` (its node named after
/// the namespace, so tests running at once pin apart), finding where to
/// redirect from the resources at `control`; logs to `agent.log`. Returns
/// once it applied the one rule the test added first.
fn redirecting_agent(dir: &std::path::Path, pair: &Pair, control: &Control) -> Process {
    agent_with(dir, pair, control, &[])
}

/// [`redirecting_agent`], with more arguments.
fn agent_with(dir: &std::path::Path, pair: &Pair, control: &Control, more: &[&str]) -> Process {
    let mut agent = Process::spawn_logged(
        "trefoil datapath agent",
        trefoil_command()
            .args(["datapath", "agent", "--node", &pair.server, "--interface", &pair.server_if, "--pin-root", "/sys/fs/bpf/trefoil-e2e"])
            .arg("--netns")
            .arg(format!("/run/netns/{}", pair.server))
            .args(more)
            .args(["--server", &control.url(), "--token", control.token(), "--control", &control.grpc.to_string()]),
        &dir.join("agent.log"),
    );
    agent.wait_for("the agent to apply the rule", WAIT, || log_has(dir, "agent.log", "entries=1"));
    agent
}

/// A Workload that a redirect rule selects by `app=tproxy`, fronted by the
/// transparent Listener `tproxy` at `listen`, which its label names.
fn fronted_function(listen: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: trefoil.dev/v1alpha1
kind: Listener
metadata: {{name: tproxy}}
spec: {{address: \"{listen}\", protocol: tcp, transparent: true}}
---
apiVersion: trefoil.dev/v1alpha1
kind: Workload
metadata:
  name: fronted
  labels: {{app: tproxy, trefoil.dev/listener: tproxy}}
spec: {{service: fronted, command: trefoil, args: [demo-app]}}
"
    )
}

/// An agent's log so far (read from its file: `wait_for` holds the process).
fn log(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

fn log_has(dir: &std::path::Path, file: &str, text: &str) -> bool {
    log(dir, file).contains(text)
}

#[test]
fn up_runs_the_datapath_agent_and_leaves_nothing_attached_when_it_ends() {
    let Some((dir, pair)) = namespaces(235, &["python3", "nsenter"]) else { return };
    let _echo = pair.echo_server(&dir);

    // The files a user writes for the node: a gateway with a transparent
    // listener, the function it fronts, and a rule sending the server's
    // port 9000 through it.
    let listen: std::net::SocketAddr = format!("{}:15001", pair.server_ip).parse().unwrap();
    let access = dir.join("access.log");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let gateway = format!(
        "apiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {{name: edge}}\nspec: {{accessLog: \"{}\"}}\n---\n",
        access.display()
    );
    let rule = format!(
        "---\napiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {{name: via-proxy}}\n\
         spec: {{match: {{destination: [{}], ports: [9000]}}, action: redirect, to: {{app: tproxy}}}}\n",
        pair.server_ip
    );
    std::fs::write(files.join("node.yaml"), gateway + &fronted_function(listen) + &rule).unwrap();

    // `up` in the server's network namespace (the node), in this mount
    // namespace: its pins land in the host's BPF filesystem, where this
    // test looks for leftovers.
    let node = format!("up{}", std::process::id());
    let start_up = |run: &str| {
        let (stdout, stderr) = (dir.join(format!("{run}.stdout")), dir.join(format!("{run}.stderr")));
        let up = Process::spawn(
            "trefoil up",
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", pair.server))
                .arg(trefoil_testkit::trefoil_path())
                .args(["up", "-f"])
                .arg(&files)
                .arg("--state")
                .arg(dir.join("state"))
                .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--admin-base", "0"])
                .args(["--node", &node, "--datapath-interface", &pair.server_if])
                .stdin(std::process::Stdio::null())
                .stdout(trefoil_testkit::log_file(&stdout))
                .stderr(trefoil_testkit::log_file(&stderr)),
        );
        (up, stdout, stderr)
    };
    let (mut up, stdout, stderr) = start_up("up-1");
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    up.wait_for("trefoil is up", trefoil_testkit::up::START, || read(&stdout).contains("trefoil is up"));
    assert!(read(&stderr).contains("datapath agent datapath ready"), "the agent was ready before `trefoil is up`:\n{}", read(&stderr));
    let agent_log = dir.join("state/logs/datapath.log");
    assert!(read(&agent_log).contains("entries=1"), "the agent's log is with the others:\n{}", read(&agent_log));
    let pins = std::path::Path::new(trefoil_datapath::DEFAULT_PIN_ROOT).join(&node);
    assert!(pins.exists(), "the agent pinned its programs under {}", pins.display());

    // The client talks to the server's own address; the bytes pass through
    // the gateway's transparent listener to where they were sent.
    let mut sent = String::new();
    wait_until("the echo server to answer through the proxy", WAIT, || {
        sent = pair.send_10mb();
        sent == "exact"
    });
    wait_until("the proxy's access-log line", WAIT, || read(&access).contains(&format!("{}:9000", pair.server_ip)));
    assert!(read(&access).contains(&pair.client_ip), "the proxy saw the client: {}", read(&access));

    up.signal(libc::SIGTERM);
    assert_eq!(up.wait_exit(trefoil_testkit::up::START), Some(0), "{}", read(&stderr));
    assert!(read(&agent_log).contains("datapath removed"), "{}", read(&agent_log));

    // Nothing left behind: no classifier on the interface (tc, bpftool and
    // the kernel's own list of TCX programs), no pins, no policy route.
    let in_server = |args: &[&str]| {
        let out = run_with_timeout(&mut pair.in_server(args), WAIT);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(in_server(&["tc", "filter", "show", "dev", &pair.server_if, "ingress"]).trim(), "");
    if trefoil_testkit::find_command("bpftool").is_some() {
        let net = in_server(&["bpftool", "net", "show", "dev", &pair.server_if]);
        assert!(!net.contains("trefoil"), "bpftool still sees a program: {net}");
    }
    let config = trefoil_datapath::AgentConfig {
        netns: Some(format!("/run/netns/{}", pair.server).into()),
        ..trefoil_datapath::AgentConfig::new(&node, [&pair.server_if])
    };
    assert_eq!(trefoil_datapath::attached(&config).expect("listing the attached programs"), []);
    assert!(!pins.exists(), "nothing left pinned under {}", pins.display());
    for family in ["-4", "-6"] {
        let rules = in_server(&["ip", family, "rule", "show"]);
        assert!(!rules.contains("32497"), "the policy route is gone: {rules}");
    }
    assert_eq!(pair.send_10mb(), "exact", "the client's connections go straight to the server again");

    // Killed outright, `up` cannot stop its children in order; the agent
    // is told to stop by the kernel (its parent-death signal) and still
    // takes everything down.
    let (mut up, stdout, stderr) = start_up("up-2");
    up.wait_for("trefoil is up again", trefoil_testkit::up::START, || read(&stdout).contains("trefoil is up"));
    assert!(pins.exists() && !trefoil_datapath::attached(&config).unwrap_or_default().is_empty(), "{}", read(&stderr));
    up.kill();
    wait_until("the agent to remove the datapath after `up` was killed", WAIT, || {
        !pins.exists() && trefoil_datapath::attached(&config).is_ok_and(|a| a.is_empty())
    });
    assert_eq!(in_server(&["tc", "filter", "show", "dev", &pair.server_if, "ingress"]).trim(), "");
}

#[test]
fn up_without_cap_net_admin_names_it_and_runs_the_rest_or_refuses_with_datapath_on() {
    // As root the capability is dropped for `up`; as anyone else it is missing already.
    if trefoil_testkit::is_root() && trefoil_testkit::find_command("setpriv").is_none() {
        eprintln!("skipping: as root this needs setpriv to drop CAP_NET_ADMIN");
        return;
    }
    let dir = scratch_dir();
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let rule = "apiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {name: block}\n\
                spec: {match: {source: [192.0.2.1]}, action: drop}\n";
    std::fs::write(files.join("rules.yaml"), rule).unwrap();
    let up = |run: &str, datapath: &str| {
        let mut cmd = if trefoil_testkit::is_root() {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--bounding-set=-net_admin", "--inh-caps=-net_admin"]).arg(trefoil_testkit::trefoil_path());
            cmd
        } else {
            trefoil_command()
        };
        cmd.args(["up", "-f"])
            .arg(&files)
            .arg("--state")
            .arg(dir.join(run))
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--admin-base", "0", "--datapath", datapath])
            .stdin(std::process::Stdio::null())
            .stdout(trefoil_testkit::log_file(&dir.join(format!("{run}.stdout"))))
            .stderr(trefoil_testkit::log_file(&dir.join(format!("{run}.stderr"))));
        cmd
    };
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();

    let refused = run_with_timeout(&mut up("on", "on"), trefoil_testkit::up::START);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{why}");
    assert!(why.contains("--datapath on: the datapath agent needs CAP_NET_ADMIN"), "{why}");
    assert!(!dir.join("on/logs/control.log").exists(), "nothing started");

    let mut auto = Process::spawn("trefoil up", &mut up("auto", "auto"));
    auto.wait_for("trefoil is up", trefoil_testkit::up::START, || read("auto.stdout").contains("trefoil is up"));
    let warned = read("auto.stderr");
    assert!(
        warned.contains("warning: datapath off: the datapath agent needs CAP_NET_ADMIN")
            && warned.contains("the 1 DatapathRule(s) in the files are stored but not programmed on this node"),
        "{warned}"
    );
    assert!(!read("auto.stdout").contains("datapath"), "no agent runs: {}", read("auto.stdout"));
    auto.signal(libc::SIGTERM);
    assert_eq!(auto.wait_exit(trefoil_testkit::up::START), Some(0), "{}", read("auto.stderr"));
}

/// Issue 14's flow records: a request redirected through the transparent
/// listener shows up in `trefoil datapath flows` (the agent reports it,
/// with its bytes), on the control plane's /metrics, and in `trefoil trace`
/// of that very request: the trace id leads from the handler's spans to the
/// connection's packets.
#[test]
fn a_redirected_request_s_trace_shows_its_datapath_flow() {
    let Some((dir, pair)) = namespaces(241, &["python3", "curl"]) else { return };
    let _web = Process::spawn_logged("web server", &mut pair.in_server(&["python3", "-c", WEB, &pair.server_ip]), &dir.join("web.log"));
    wait_until("the server to answer the client directly", WAIT, || pair.get("/").status == 200);
    let host_ip = pair.link_to_server(242);
    let api: std::net::SocketAddr = format!("{host_ip}:{}", trefoil_testkit::free_port()).parse().unwrap();
    let control = Control::start_on(&dir.join("data"), api, trefoil_testkit::free_addr());
    let listen = format!("{}:15001", pair.server_ip);
    let resources = format!(
        "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {{name: redirected}}\n\
         spec: {{address: \"{listen}\", protocol: auto, transparent: true, routes: [onward]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {{name: original-destination}}\nspec: {{originalDestination: true}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {{name: onward}}\n\
         spec: {{hosts: [\"*\"], rules: [{{backends: [{{service: original-destination}}]}}]}}\n---\n\
         apiVersion: trefoil.dev/v1alpha1\nkind: Workload\n\
         metadata: {{name: web-in, labels: {{app: edge, trefoil.dev/listener: redirected}}}}\n\
         spec: {{service: web-in, command: trefoil, args: [demo-app]}}\n"
    );
    let proxy = format!(
        "apiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {{name: node}}\n\
         spec: {{tracing: {{otlpEndpoint: \"{}\", samplingPercent: 100}}}}\n---\n",
        control.url()
    );
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, proxy + &resources).unwrap();
    let _proxy = node_proxy(&dir, &pair, &config);
    apply(&control, &dir.join("resources.yaml"), &resources);
    trefoil_ok(&control, &["datapath", "add", &format!("{} 80 : redirect => app=edge", pair.server_ip), "--name", "web-in"]);
    let mut agent = agent_with(&dir, &pair, &control, &["--flow-report-interval", "200ms"]);
    if log_has(&dir, "agent.log", "using nftables") {
        eprintln!("skipping the flow checks: eBPF is unavailable here, and the nftables fallback keeps no flow records");
        return;
    }

    let mut watch = Process::spawn(
        "trefoil datapath flows --watch",
        trefoil_command()
            .args(["datapath", "flows", "--watch", "--rule", "web-in", "--server", &control.url(), "--token", control.token()])
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.join("watch.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("watch.log")).unwrap()),
    );
    watch.wait_for("the watch to start", WAIT, || log_has(&dir, "watch.log", "watching the flows of rule web-in"));
    let answer = pair.get("/flows");
    assert_eq!((answer.status, answer.via_proxy()), (200, true), "{answer:?}\n{}", log(&dir, "proxy.log"));
    let trace_id = answer.trace_id.unwrap_or_default();
    let server = format!("{}:80", pair.server_ip);
    let is_ours =
        |f: &trefoil_api::flows::Flow| f.src.ip().to_string() == pair.client_ip && f.dst.to_string() == server && f.rule == "web-in";

    // `trefoil datapath flows -o json`: the flow, with its bytes, once the agent reported it.
    let mut listed = Vec::new();
    wait_until("the flow in `trefoil datapath flows`", WAIT, || {
        let out = run_with_timeout(
            trefoil_command().args([
                "datapath",
                "flows",
                "--rule",
                "web-in",
                "-o",
                "json",
                "--server",
                &control.url(),
                "--token",
                control.token(),
            ]),
            WAIT,
        );
        listed = serde_json::from_slice::<trefoil_api::flows::FlowList>(&out.stdout).map(|l| l.items).unwrap_or_default();
        listed.iter().any(|f| is_ours(f) && f.bytes > 0)
    });
    let flow = listed.iter().find(|f| is_ours(f)).unwrap().clone();
    assert_eq!((flow.node.as_str(), flow.action.as_str(), flow.protocol.as_str()), (pair.server.as_str(), "redirect", "tcp"), "{flow:?}");
    assert!(flow.packets > 0 && flow.start_unix_nano <= flow.end_unix_nano, "{flow:?}");

    let watched = format!("redirect rule=web-in  {} -> {server} tcp", flow.src);
    watch.wait_for("the flow in `trefoil datapath flows --watch`", WAIT, || log_has(&dir, "watch.out", &watched));

    // `trefoil trace ID -o json`: the request's spans and, joined by the 5-tuple, the flow.
    let mut trace = None;
    wait_until("the flow in the request's trace", WAIT, || {
        let out = run_with_timeout(
            trefoil_command().args(["trace", &trace_id, "-o", "json", "--server", &control.url(), "--token", control.token()]),
            WAIT,
        );
        trace = serde_json::from_slice::<trefoil_api::traces::Trace>(&out.stdout).ok();
        trace.as_ref().is_some_and(|t| t.flows.iter().any(|f| f.src == flow.src && f.dst == flow.dst))
    });
    let trace = trace.unwrap();
    assert!(trace.flows.iter().all(|f| f.src == flow.src || f.dst == flow.src), "only this connection's flows: {:#?}", trace.flows);
    let hop = trace.spans.iter().find(|s| s.attributes.contains_key("trefoil.original_destination")).expect("the hop span");
    assert_eq!(hop.attribute("trefoil.original_destination"), server);
    assert_eq!(
        (hop.attribute("client.address"), hop.attribute("client.port")),
        (pair.client_ip.as_str(), flow.src.port().to_string().as_str())
    );
    let table =
        run_with_timeout(trefoil_command().args(["trace", &trace_id, "--server", &control.url(), "--token", control.token()]), WAIT);
    let text = String::from_utf8_lossy(&table.stdout);
    let wanted = format!("datapath  redirect rule=web-in  {} -> {server} tcp", flow.src);
    assert!(text.contains(&wanted), "{wanted} in:\n{text}");

    // The control plane's /metrics counts it.
    let metrics = run_with_timeout(Command::new("curl").args(["-s", "--max-time", "5", &format!("{}/metrics", control.url())]), WAIT);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let flows = format!("trefoil_datapath_flows_total{{rule=\"web-in\",node=\"{}\",action=\"redirect\"}}", pair.server);
    assert!(metrics.contains(&flows), "{flows} in:\n{metrics}");
    assert!(metrics.contains("trefoil_datapath_bytes_total{rule=\"web-in\""), "{metrics}");

    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", log(&dir, "agent.log"));
}
