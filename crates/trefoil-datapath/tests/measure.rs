//! Not a test: a quick throughput measurement of the classifier's cost in
//! the test topology, for the figures in the datapath's decision record and
//! as a starting point for the datapath benchmark. Run as root with
//! `cargo test -p trefoil-datapath --release --test measure -- --ignored --nocapture`.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::*;
use trefoil_datapath::{Action, Agent, Entry, IpNet, Protocol};

const BYTES: usize = 1 << 30;

fn sink(topology: &Topology, addr: SocketAddr) {
    let (ready_tx, ready_rx) = mpsc::channel();
    topology.spawn("server", move || {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        ready_tx.send(()).unwrap();
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 18];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                let _ = stream.write_all(b"k");
            });
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
}

/// Seconds to push BYTES from client to the sink and get its one-byte ack.
fn push(topology: &Topology, to: SocketAddr) -> f64 {
    topology.run("client", move || {
        let mut stream = TcpStream::connect(to).unwrap();
        let chunk = vec![7u8; 1 << 18];
        let start = Instant::now();
        for _ in 0..BYTES / chunk.len() {
            stream.write_all(&chunk).unwrap();
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack).unwrap();
        start.elapsed().as_secs_f64()
    })
}

fn gbits(seconds: f64) -> f64 {
    BYTES as f64 * 8.0 / seconds / 1e9
}

fn rule(name: &str, dst: &str, action: Action) -> Entry {
    Entry {
        rule: name.to_owned(),
        priority: 0,
        src: IpNet::any_v4(),
        dst: dst.parse().unwrap(),
        ports: 9000..=9000,
        protocol: Protocol::Tcp,
        action,
    }
}

#[test]
#[ignore = "a measurement, not a test: run it by name with --ignored --nocapture"]
fn measure_classifier_cost() {
    if !can_run("measure_classifier_cost") {
        return;
    }
    let topology = Topology::new();
    let server: SocketAddr = format!("{SERVER_IP}:9000").parse().unwrap();
    sink(&topology, server);
    // 1023 rules that do not match, then the one that does: the worst scan.
    let mut full: Vec<Entry> = (0..1023).map(|i| rule(&format!("miss{i}"), "192.0.2.0/24", Action::Drop)).collect();
    full.push(rule("tap", &format!("{SERVER_IP}/32"), Action::Copy { interface: EDGE_TO_TAP.to_owned() }));
    let setups: [(&str, Option<&[Entry]>); 4] = [
        ("direct, no programs", None),
        ("classifier, no rules", Some(&[])),
        ("copy rule", Some(&full[1023..])),
        ("copy rule after 1023 misses", Some(&full)),
    ];
    // Rounds interleave the setups so drift on a shared machine hits all alike.
    let mut best = [f64::MAX; 4];
    push(&topology, server);
    for _ in 0..5 {
        for (index, (_, entries)) in setups.iter().enumerate() {
            let agent = entries.map(|entries| {
                let mut agent = Agent::start(topology.agent_config()).unwrap();
                agent.apply(entries).unwrap();
                agent
            });
            best[index] = best[index].min(push(&topology, server));
            if let Some(agent) = agent {
                agent.remove_all().unwrap();
            }
        }
    }
    println!("1 GiB client -> server through edge, best of 5, Gbit/s:");
    for ((name, _), seconds) in setups.iter().zip(best) {
        println!("  {name:<30} {:7.2}  ({:.3} of direct)", gbits(seconds), best[0] / seconds);
    }
}
