//! The datapath on the real kernel: redirect, copy and drop between network
//! namespaces the tests build, rules changed live, flow records and counters
//! read back, and an agent killed with SIGKILL converging on restart.

mod harness;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::*;
use trefoil_datapath::{Action, Agent, Entry, FlowAction, Protocol};

/// The topology with an echo server on the server's port 80 and an agent on
/// edge; `None` (after saying why) where the test cannot run.
fn start(test: &str) -> Option<(Topology, Agent)> {
    if !can_run(test) {
        return None;
    }
    let topology = Topology::new();
    echo_server(&topology, "server", server_http());
    let agent = Agent::start(topology.agent_config()).expect("agent starts");
    Some((topology, agent))
}

#[test]
fn redirect_steers_connections_to_the_transparent_listener() {
    let Some((topology, mut agent)) = start("redirect_steers_connections_to_the_transparent_listener") else { return };
    let listener: SocketAddr = format!("{EDGE_CLIENT_SIDE_IP}:15001").parse().unwrap();
    let seen = transparent_proxy(&topology, listener);
    agent.apply(&[entry("to-proxy", "0.0.0.0/0", Action::Redirect { listener })]).unwrap();

    let payload = random_bytes(10 * 1024 * 1024);
    let echoed = echo_roundtrip(&topology, "client", server_http(), payload.clone()).expect("redirected echo");
    assert!(echoed == payload, "10 MB through the redirect arrive byte-exact ({} bytes back)", echoed.len());
    let original = seen.recv_timeout(Duration::from_secs(5)).expect("the proxy accepted the client's connection");
    assert_eq!(original, server_http(), "getsockname on the accepted socket is the original destination");

    let flows = agent.flows().unwrap();
    let redirected = flows
        .iter()
        .find(|f| f.dst == server_http() && f.action == FlowAction::Redirect)
        .unwrap_or_else(|| panic!("a redirect flow record in {flows:?}"));
    assert_eq!(redirected.rule.as_deref(), Some("to-proxy"));
    assert!(redirected.bytes >= payload.len() as u64, "{redirected:?}");
    assert!(redirected.start <= redirected.end);

    // Without the rule the same traffic goes straight to the server.
    agent.apply(&[]).unwrap();
    let echoed = echo_roundtrip(&topology, "client", server_http(), b"direct".to_vec()).expect("direct echo");
    assert_eq!(echoed, b"direct");
    assert!(seen.try_recv().is_err(), "the proxy saw no connection once the rule was gone");
    agent.remove_all().unwrap();
}

#[test]
fn a_redirect_without_a_listening_proxy_fails_closed() {
    let Some((topology, mut agent)) = start("a_redirect_without_a_listening_proxy_fails_closed") else { return };
    let listener: SocketAddr = format!("{EDGE_CLIENT_SIDE_IP}:15001").parse().unwrap();
    agent.apply(&[entry("to-proxy", "0.0.0.0/0", Action::Redirect { listener })]).unwrap();
    let refused = echo_roundtrip(&topology, "client", server_http(), b"around the chain".to_vec());
    assert!(refused.is_err(), "no connection goes around the proxy while it is not listening: {refused:?}");
    let counted = agent.counters().unwrap().into_iter().find(|c| c.rule == "to-proxy").expect("a counter for the rule");
    assert!(counted.packets >= 1, "{counted:?}");

    let seen = transparent_proxy(&topology, listener);
    let echoed = echo_roundtrip(&topology, "client", server_http(), b"through".to_vec()).expect("through the proxy once it listens");
    assert_eq!(echoed, b"through");
    assert_eq!(seen.recv_timeout(Duration::from_secs(5)).expect("the proxy accepted the connection"), server_http());
    agent.remove_all().unwrap();
}

#[test]
fn rule_changes_touch_only_new_connections() {
    let Some((topology, mut agent)) = start("rule_changes_touch_only_new_connections") else { return };
    let listener: SocketAddr = format!("{EDGE_CLIENT_SIDE_IP}:15002").parse().unwrap();
    let seen = transparent_proxy(&topology, listener);
    let mut direct = connect(&topology, "client", server_http()).unwrap();
    assert_eq!(echo_on(&mut direct, b"a1").unwrap(), b"a1");

    let attached = agent.attachments().unwrap();
    agent.apply(&[entry("to-proxy", "0.0.0.0/0", Action::Redirect { listener })]).unwrap();
    assert_eq!(agent.attachments().unwrap(), attached, "a rule change updates maps; the same programs stay attached");
    assert_eq!(echo_on(&mut direct, b"a2").unwrap(), b"a2", "a connection that started direct is not pulled into the proxy");
    let mut proxied = connect(&topology, "client", server_http()).unwrap();
    assert_eq!(echo_on(&mut proxied, b"b1").unwrap(), b"b1");
    assert_eq!(seen.recv_timeout(Duration::from_secs(5)).unwrap(), server_http(), "new connections go through the proxy");
    assert!(seen.try_recv().is_err(), "and only the new one");

    agent.apply(&[]).unwrap();
    assert_eq!(echo_on(&mut proxied, b"b2").unwrap(), b"b2", "a proxied connection stays with the proxy after its rule goes");
    assert_eq!(echo_on(&mut direct, b"a3").unwrap(), b"a3");
    let mut after = connect(&topology, "client", server_http()).unwrap();
    assert_eq!(echo_on(&mut after, b"c1").unwrap(), b"c1");
    assert!(seen.try_recv().is_err(), "connections after the removal go direct");
    agent.remove_all().unwrap();
}

#[test]
fn redirect_works_for_ipv6() {
    let Some((topology, mut agent)) = start("redirect_works_for_ipv6") else { return };
    let server: SocketAddr = SocketAddr::new(SERVER_IP6.parse().unwrap(), 80);
    echo_server(&topology, "server", server);
    let listener = SocketAddr::new(EDGE_CLIENT_SIDE_IP6.parse().unwrap(), 15003);
    let seen = transparent_proxy(&topology, listener);
    let mut rule = entry("to-proxy-v6", "::/0", Action::Redirect { listener });
    rule.dst = format!("{SERVER_IP6}/128").parse().unwrap();
    agent.apply(&[rule]).unwrap();

    let payload = random_bytes(256 * 1024);
    let echoed = echo_roundtrip(&topology, "client", server, payload.clone()).expect("redirected echo over IPv6");
    assert!(echoed == payload, "byte-exact over IPv6");
    assert_eq!(seen.recv_timeout(Duration::from_secs(5)).unwrap(), server, "the original IPv6 destination");
    let flows = agent.flows().unwrap();
    assert!(flows.iter().any(|f| f.dst == server && f.src.ip().to_string() == CLIENT_IP6), "{flows:?}");
    agent.remove_all().unwrap();
}

#[test]
fn udp_drop_rules_drop_datagrams() {
    let Some((topology, mut agent)) = start("udp_drop_rules_drop_datagrams") else { return };
    let server: SocketAddr = SocketAddr::new(SERVER_IP.parse().unwrap(), 53);
    let (ready_tx, ready_rx) = mpsc::channel();
    topology.spawn("server", move || {
        let socket = std::net::UdpSocket::bind(server).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..len], from);
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let ask = move || -> std::io::Result<Vec<u8>> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        socket.send_to(b"query", server)?;
        let mut buf = [0u8; 512];
        let len = socket.recv(&mut buf)?;
        Ok(buf[..len].to_vec())
    };
    assert_eq!(topology.run("client", ask).unwrap(), b"query", "answered without a rule");

    let mut rule = entry("no-dns", &format!("{CLIENT_IP}/32"), Action::Drop);
    rule.ports = 53..=53;
    rule.protocol = Protocol::Udp;
    agent.apply(&[rule]).unwrap();
    assert!(topology.run("client", ask).is_err(), "no answer while the rule drops the query");
    let counters = agent.counters().unwrap();
    assert!(counters.iter().any(|c| c.rule == "no-dns" && c.packets >= 1), "{counters:?}");
    let flows = agent.flows().unwrap();
    assert!(flows.iter().any(|f| f.protocol == Protocol::Udp && f.dst == server && f.action == FlowAction::Drop), "{flows:?}");

    agent.apply(&[]).unwrap();
    assert_eq!(topology.run("client", ask).unwrap(), b"query", "answered again once the rule is gone");
    agent.remove_all().unwrap();
}

#[test]
fn copy_delivers_packets_to_the_function_and_leaves_the_flow_alone() {
    let Some((topology, mut agent)) = start("copy_delivers_packets_to_the_function_and_leaves_the_flow_alone") else { return };
    agent.apply(&[entry("tap-web", "0.0.0.0/0", Action::Copy { interface: EDGE_TO_TAP.to_owned() })]).unwrap();

    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let capture = topology.spawn("tap", move || capture_port_80(ready_tx, done_rx));
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("capture ready");

    let payload = random_bytes(1024 * 1024);
    let echoed = echo_roundtrip(&topology, "client", server_http(), payload.clone()).expect("echo while copied");
    assert!(echoed == payload, "the copied transfer is unchanged");
    done_tx.send(()).unwrap();
    let (to_server, from_server) = capture.join().unwrap();
    let len = payload.len() as u64;
    assert!(to_server >= len && from_server >= len, "the tap saw every byte: {to_server} to and {from_server} from the server of {len}");
    let counters = agent.counters().unwrap();
    assert!(counters.iter().any(|c| c.rule == "tap-web" && c.bytes >= 2 * len), "{counters:?}");
    agent.remove_all().unwrap();
}

/// Sums the TCP payload bytes to and from port 80 seen on the tap's
/// interface, from the IP and TCP headers (a copied segment may be a
/// 64 KB GSO packet, of which only the headers are read), until told the
/// transfer is over and the interface has gone quiet.
fn capture_port_80(ready: mpsc::Sender<()>, done: mpsc::Receiver<()>) -> (u64, u64) {
    const ETH_P_ALL: u16 = 0x0003;
    let socket = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, Some(i32::from(ETH_P_ALL.to_be()).into())).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    force_recv_buffer(&socket, 256 << 20);
    ready.send(()).unwrap();
    let (mut to_server, mut from_server) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut finished = false;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        finished = finished || done.try_recv().is_ok();
        let Ok(len) = (&socket).read(&mut buf) else {
            if finished {
                break;
            }
            continue;
        };
        let frame = &buf[..len];
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let total = u64::from(u16::from_be_bytes([frame[16], frame[17]]));
        let Some(tcp) = frame.get(14 + ihl..14 + ihl + 13) else { continue };
        let (sport, dport) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]));
        let header = (ihl + usize::from(tcp[12] >> 4) * 4) as u64;
        let payload = total.saturating_sub(header);
        if dport == 80 {
            to_server += payload;
        } else if sport == 80 {
            from_server += payload;
        }
    }
    (to_server, from_server)
}

#[test]
fn drop_refuses_connections_counts_them_and_lifts_on_removal() {
    let Some((topology, mut agent)) = start("drop_refuses_connections_counts_them_and_lifts_on_removal") else { return };
    agent.apply(&[entry("block-client", &format!("{CLIENT_IP}/32"), Action::Drop)]).unwrap();

    let refused = echo_roundtrip(&topology, "client", server_http(), b"hello".to_vec());
    assert!(refused.is_err(), "the connection fails while the drop rule is present: {refused:?}");
    let counters = agent.counters().unwrap();
    let dropped = counters.iter().find(|c| c.rule == "block-client").expect("a counter for the rule");
    assert!(dropped.packets >= 1, "{dropped:?}");

    let flows = agent.flows().unwrap();
    let record = flows.iter().find(|f| f.action == FlowAction::Drop).unwrap_or_else(|| panic!("a drop record in {flows:?}"));
    assert_eq!(record.src.ip().to_string(), CLIENT_IP);
    assert_eq!(record.dst, server_http());
    assert_eq!(record.protocol, Protocol::Tcp);
    assert_eq!(record.rule.as_deref(), Some("block-client"));
    assert!(record.packets >= 1 && record.bytes >= 40 * record.packets, "{record:?}");
    assert!(record.start <= record.end);

    agent.apply(&[]).unwrap();
    let echoed = echo_roundtrip(&topology, "client", server_http(), b"hello".to_vec()).expect("succeeds once the rule is removed");
    assert_eq!(echoed, b"hello");
    agent.remove_all().unwrap();
}

#[test]
fn too_many_entries_are_refused_with_the_table_size() {
    let Some((_topology, mut agent)) = start("too_many_entries_are_refused_with_the_table_size") else { return };
    let entries: Vec<Entry> = (0..=trefoil_datapath::MAX_ENTRIES).map(|i| entry(&format!("r{i}"), "0.0.0.0/0", Action::Drop)).collect();
    let error = agent.apply(&entries).unwrap_err().to_string();
    assert_eq!(error, "1025 datapath entries do not fit the kernel's rule table of 1024; merge rules or split them across nodes");
    agent.apply(&entries[..1024]).expect("a full table fits");
    agent.remove_all().unwrap();
}

/// The interfaces of edge running our classifier, as the kernel says.
fn attached_in_edge(topology: &Topology) -> Vec<trefoil_datapath::Attachment> {
    trefoil_datapath::attached(&topology.agent_config()).unwrap()
}

/// An agent in a process of its own (this test binary, running
/// `agent_process`), killed with SIGKILL when dropped.
struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn spawn(topology: &Topology) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "agent_process", "--nocapture", "--test-threads", "1"])
            .env("TREFOIL_DP_TEST_AGENT", topology.id.clone())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut process = Self { child };
        let mut stdout = BufReader::new(process.child.stdout.take().unwrap());
        let mut line = String::new();
        for _ in 0..200 {
            line.clear();
            assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "the agent process ended before it was ready");
            // libtest may print "test agent_process ... " on the same line first.
            if line.trim_end().ends_with("AGENT-READY") {
                return process;
            }
        }
        panic!("no AGENT-READY line from the agent process");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL: no destructor of the agent runs.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test on its own: the agent process of `kill_9_and_restart_converges`,
/// started by it with the topology's id in the environment.
#[test]
fn agent_process() {
    let Ok(id) = std::env::var("TREFOIL_DP_TEST_AGENT") else { return };
    let mut agent = Agent::start(agent_config(&id)).expect("agent starts");
    agent.apply(&[entry("block-client", &format!("{CLIENT_IP}/32"), Action::Drop)]).unwrap();
    println!("AGENT-READY");
    // Block until killed; the topology belongs to the parent test.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn a_pinned_map_of_another_layout_is_refused() {
    let Some((topology, agent)) = start("a_pinned_map_of_another_layout_is_refused") else { return };
    agent.remove_all().unwrap();
    // What an older build might have left: a config map of another width.
    let dir = std::path::Path::new(PIN_ROOT).join(&topology.id);
    std::fs::create_dir_all(&dir).unwrap();
    let pin = dir.join("trefoil_config");
    sh(&[
        "bpftool",
        "map",
        "create",
        pin.to_str().unwrap(),
        "type",
        "array",
        "key",
        "4",
        "value",
        "4",
        "entries",
        "1",
        "name",
        "trefoil_config",
    ]);
    let error = Agent::start(topology.agent_config()).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "the pinned map {} has another layout (key, value, entries: (4, 4, 1), this build: (4, 8, 1)); remove the node's datapath (`remove_node`) and start again",
            pin.display()
        )
    );
    trefoil_datapath::remove_node(&topology.agent_config()).unwrap();
    assert!(!dir.exists());
}

/// Not a test on its own: starts an agent and prints why it could not, for
/// `a_missing_capability_is_named`, which runs it without some capabilities.
#[test]
fn agent_start_error_process() {
    let Ok(id) = std::env::var("TREFOIL_DP_TEST_START_ERROR") else { return };
    match Agent::start(agent_config(&id)) {
        Ok(_) => println!("START-ERROR: none"),
        Err(error) => println!("START-ERROR: {error}"),
    }
}

#[test]
fn a_missing_capability_is_named() {
    if !can_run("a_missing_capability_is_named") {
        return;
    }
    for (dropped, named) in [("-bpf,-sys_admin", "missing capability CAP_BPF"), ("-net_admin", "missing capability CAP_NET_ADMIN")] {
        let exe = std::env::current_exe().unwrap();
        let output = Command::new("setpriv")
            .args(["--bounding-set", dropped, "--inh-caps", dropped, "--"])
            .arg(exe)
            .args(["--exact", "agent_start_error_process", "--nocapture"])
            .env("TREFOIL_DP_TEST_START_ERROR", format!("nocap{}", std::process::id()))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().find_map(|l| l.split_once("START-ERROR: ")).map(|(_, e)| e.to_owned());
        let line = line.unwrap_or_else(|| panic!("no START-ERROR line: {stdout}"));
        assert!(line.starts_with(named), "without {dropped}: {line}");
    }
}

#[test]
fn kill_9_and_restart_converges_and_remove_all_leaves_nothing() {
    if !can_run("kill_9_and_restart_converges_and_remove_all_leaves_nothing") {
        return;
    }
    let topology = Topology::new();
    echo_server(&topology, "server", server_http());

    let first = AgentProcess::spawn(&topology);
    let attached = attached_in_edge(&topology);
    assert_eq!(attached.len(), 2, "one classifier per guarded interface: {attached:?}");
    drop(first);
    assert_eq!(attached_in_edge(&topology), attached, "the datapath outlives the agent");
    assert!(echo_roundtrip(&topology, "client", server_http(), b"x".to_vec()).is_err(), "the drop rule still holds");

    let second = AgentProcess::spawn(&topology);
    let after_restart = attached_in_edge(&topology);
    let interfaces = |list: &[trefoil_datapath::Attachment]| list.iter().map(|a| a.interface.clone()).collect::<Vec<_>>();
    assert_eq!(interfaces(&after_restart), interfaces(&attached), "the restarted agent adopted the links instead of adding more");
    assert!(after_restart.iter().all(|a| a.program_id != attached[0].program_id), "and swapped its own program into them");
    assert!(echo_roundtrip(&topology, "client", server_http(), b"x".to_vec()).is_err(), "and the rules hold");
    drop(second);

    // An agent configured for fewer interfaces detaches the others.
    let mut narrower = topology.agent_config();
    narrower.interfaces = vec![EDGE_TO_CLIENT.to_owned()];
    let mut agent = Agent::start(narrower).unwrap();
    let second = Agent::start(topology.agent_config()).unwrap_err().to_string();
    assert_eq!(second, format!("another agent is running node `{}`: stop it first (one agent per node)", topology.id));
    assert_eq!(agent.attachments().unwrap().len(), 1);
    assert_eq!(attached_in_edge(&topology).len(), 1);
    // The maps were reused all along: the rule keeps its counter slot, and
    // the drops of both agents' lifetimes are still counted.
    agent.apply(&[entry("block-client", &format!("{CLIENT_IP}/32"), Action::Drop)]).unwrap();
    let counters = agent.counters().unwrap();
    assert!(counters.iter().any(|c| c.rule == "block-client" && c.packets >= 2), "{counters:?}");

    agent.remove_all().unwrap();
    assert!(attached_in_edge(&topology).is_empty(), "nothing of ours attached");
    for dev in [EDGE_TO_CLIENT, EDGE_TO_SERVER] {
        let filters = sh_output(&["ip", "netns", "exec", &topology.ns("edge"), "tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(filters.trim().is_empty(), "no tc filters on {dev}: {filters}");
    }
    let progs = sh_output(&["bpftool", "prog", "show"]);
    for attachment in attached.iter().chain(&after_restart) {
        assert!(
            !progs.contains(&format!("{}: sched_cls", attachment.program_id)),
            "program {} is unloaded: {progs}",
            attachment.program_id
        );
    }
    assert!(!std::path::Path::new(PIN_ROOT).join(&topology.id).exists(), "the pin directory is gone");
    let rules = sh_output(&["ip", "-n", &topology.ns("edge"), "rule", "show"]);
    assert!(!rules.contains("32497"), "the policy rule is gone: {rules}");
    let echoed = echo_roundtrip(&topology, "client", server_http(), b"x".to_vec()).expect("traffic flows after remove_all");
    assert_eq!(echoed, b"x");
}
