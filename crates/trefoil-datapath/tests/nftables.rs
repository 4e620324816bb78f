//! The nftables fallback on the real kernel: redirect by TPROXY with the
//! same connection semantics as the eBPF datapath, drop, and the choice of
//! the fallback when eBPF cannot load for want of CAP_BPF.

mod harness;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use harness::*;
use trefoil_datapath::{Action, AgentConfig, Datapath, NftAgent};

#[test]
fn nftables_redirect_and_drop_keep_the_ebpf_semantics() {
    if !can_run("nftables_redirect_and_drop_keep_the_ebpf_semantics") {
        return;
    }
    let topology = Topology::new();
    echo_server(&topology, "server", server_http());
    let listener: SocketAddr = format!("{EDGE_CLIENT_SIDE_IP}:15004").parse().unwrap();
    let seen = transparent_proxy(&topology, listener);
    let mut agent = NftAgent::start(topology.agent_config()).expect("nftables agent starts");

    let mut direct = connect(&topology, "client", server_http()).unwrap();
    assert_eq!(echo_on(&mut direct, b"a1").unwrap(), b"a1");
    agent.apply(&[entry("to-proxy", "0.0.0.0/0", Action::Redirect { listener })]).unwrap();
    assert_eq!(echo_on(&mut direct, b"a2").unwrap(), b"a2", "a connection that started direct stays direct");
    let mut proxied = connect(&topology, "client", server_http()).unwrap();
    assert_eq!(echo_on(&mut proxied, b"b1").unwrap(), b"b1");
    assert_eq!(seen.recv_timeout(Duration::from_secs(5)).unwrap(), server_http(), "TPROXY keeps the original destination");

    agent.apply(&[entry("block", &format!("{CLIENT_IP}/32"), Action::Drop)]).unwrap();
    assert_eq!(echo_on(&mut proxied, b"b2").unwrap(), b"b2", "a proxied connection stays with the listener");
    assert!(connect(&topology, "client", server_http()).is_err(), "new connections are dropped");
    let counters = agent.counters().unwrap();
    assert!(counters.iter().any(|c| c.rule == "block" && c.packets >= 1), "{counters:?}");

    agent.apply(&[]).unwrap();
    let mut after = connect(&topology, "client", server_http()).unwrap();
    assert_eq!(echo_on(&mut after, b"c1").unwrap(), b"c1");
    assert!(seen.try_recv().is_err(), "and go direct once the rules are gone");

    agent.remove_all().unwrap();
    let tables = sh_output(&["ip", "netns", "exec", &topology.ns("edge"), "nft", "list", "tables"]);
    assert!(!tables.contains("trefoil"), "no table left: {tables}");
}

/// Not a test on its own: run inside edge without CAP_BPF by
/// `without_cap_bpf_the_fallback_is_chosen`; prints which datapath it got.
#[test]
fn datapath_choice_process() {
    let Ok(node) = std::env::var("TREFOIL_DP_TEST_CHOICE") else { return };
    let config = AgentConfig::new(node, [EDGE_TO_CLIENT]);
    match Datapath::start(config) {
        Ok(Datapath::Nftables { agent, because }) => {
            println!("CHOICE: nftables because {because}");
            agent.remove_all().unwrap();
        }
        Ok(Datapath::Ebpf(agent)) => {
            println!("CHOICE: ebpf");
            agent.remove_all().unwrap();
        }
        Err(error) => println!("CHOICE: error {error}"),
    }
}

#[test]
fn without_cap_bpf_the_fallback_is_chosen() {
    if !can_run("without_cap_bpf_the_fallback_is_chosen") {
        return;
    }
    let topology = Topology::new();
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topology.ns("edge"),
            "setpriv",
            "--bounding-set",
            "-bpf,-sys_admin",
            "--inh-caps",
            "-bpf,-sys_admin",
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "datapath_choice_process", "--nocapture"])
        .env("TREFOIL_DP_TEST_CHOICE", &topology.id)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let choice = stdout.lines().find_map(|l| l.split_once("CHOICE: ")).map(|(_, c)| c.to_owned());
    assert_eq!(
        choice.as_deref(),
        Some("nftables because missing capability CAP_BPF: the datapath agent needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; run it as root or grant them"),
        "{stdout}"
    );
}
