//! The fallback where eBPF cannot load (a kernel before 6.6, no CAP_BPF, a
//! build without clang): the same entries as one nftables table per node,
//! redirect by TPROXY and drop by a counted `drop`. Copy has no nftables
//! equivalent that keeps the rule model (`dup` needs a netdev table per
//! interface and a next-hop address), so a copy entry is refused here.
//!
//! Redirect keeps the eBPF datapath's semantics: only a SYN is sent to the
//! listener (a connection that started direct stays direct), and a packet
//! owned by a transparent socket keeps going to it after its rule is gone.
//! The policy route is the one the eBPF datapath uses (`routing`). The whole
//! table is replaced in one `nft -f` transaction, so packets see the old
//! rules or the new ones. Counters come from each rule's `counter` (for a
//! redirect: the connections sent to the listener, one SYN each). No flow
//! records: nftables keeps none per flow.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::abi::{MAX_RULES, REDIRECT_MARK};
use crate::agent::AgentConfig;
use crate::entry::{Action, Entry, IpNet, Protocol};
use crate::error::Error;
use crate::flows::RuleCounter;
use crate::routing;

/// A node programmed through nftables.
#[derive(Debug)]
pub struct NftAgent {
    config: AgentConfig,
    /// The rule of each applied entry, by position (the rules' comments).
    rules: Vec<String>,
}

fn table(config: &AgentConfig) -> String {
    format!("trefoil-{}", config.node)
}

fn nft(config: &AgentConfig, script: &str) -> Result<(), Error> {
    crate::agent::in_netns(config.netns.as_deref(), || {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("running `nft` (nftables)", e))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(script.as_bytes()).map_err(|e| Error::io("writing to `nft`", e))?;
        drop(stdin);
        let output = child.wait_with_output().map_err(|e| Error::io("waiting for `nft`", e))?;
        if !output.status.success() {
            return Err(Error::Command {
                command: "nft -f -".to_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(())
    })
}

fn family_match(net: &IpNet, field: &str) -> String {
    let proto = if net.addr().is_ipv4() { "ip" } else { "ip6" };
    format!("{proto} {field} {net}")
}

/// One nftables rule for one entry, ending in a verdict so the first match wins.
fn rule_line(index: usize, entry: &Entry) -> Result<String, Error> {
    let bad = |reason: String| Error::BadEntry { index, rule: entry.rule.clone(), reason };
    let v4 = entry.dst.addr().is_ipv4();
    if entry.src.addr().is_ipv4() != v4 {
        return Err(bad(format!("source {} and destination {} are different address families", entry.src, entry.dst)));
    }
    let l4 = match entry.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let matches = format!(
        "meta nfproto {} {} {} {l4} dport {}-{}",
        if v4 { "ipv4" } else { "ipv6" },
        family_match(&entry.src, "saddr"),
        family_match(&entry.dst, "daddr"),
        entry.ports.start(),
        entry.ports.end()
    );
    let comment = format!("comment \"trefoil:{index}\"");
    match &entry.action {
        Action::Drop => Ok(format!("{matches} counter drop {comment}")),
        Action::Redirect { listener } => {
            if entry.protocol != Protocol::Tcp {
                return Err(bad("redirect steers TCP connections only; use drop for UDP".to_owned()));
            }
            let (family, to) = match listener.ip() {
                IpAddr::V4(ip) if v4 => ("ip", format!("{ip}:{}", listener.port())),
                IpAddr::V6(ip) if !v4 => ("ip6", format!("[{ip}]:{}", listener.port())),
                _ => return Err(bad(format!("listener {listener} is not in the matched traffic's address family"))),
            };
            Ok(format!(
                "{matches} tcp flags & (syn | ack) == syn counter meta mark set {REDIRECT_MARK:#x} tproxy {family} to {to} accept {comment}"
            ))
        }
        Action::Copy { .. } => Err(bad(
            "copy needs the eBPF datapath (Linux 6.6 or later, CAP_BPF, a build with clang); nftables cannot copy per rule".to_owned(),
        )),
    }
}

/// The whole table for `entries`, replacing any previous one atomically.
pub(crate) fn script(table: &str, entries: &[Entry]) -> Result<String, Error> {
    if entries.len() > MAX_RULES as usize {
        return Err(Error::TooManyEntries { count: entries.len(), max: MAX_RULES });
    }
    let mut out = format!(
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n"
    );
    // Connections the listener already owns stay with it, whatever the rules say now.
    out.push_str(&format!("    meta l4proto tcp socket transparent 1 meta mark set {REDIRECT_MARK:#x} accept\n"));
    for (index, entry) in entries.iter().enumerate() {
        out.push_str("    ");
        out.push_str(&rule_line(index, entry)?);
        out.push('\n');
    }
    out.push_str("  }\n}\n");
    Ok(out)
}

/// The parts of `nft -j list table` the counters need; the rest is ignored.
#[derive(serde::Deserialize)]
struct Listing {
    nftables: Vec<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    #[serde(default)]
    rule: Option<ListedRule>,
}

#[derive(serde::Deserialize)]
struct ListedRule {
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    expr: Vec<Expr>,
}

#[derive(serde::Deserialize)]
struct Expr {
    #[serde(default)]
    counter: Option<ListedCounter>,
}

#[derive(serde::Deserialize)]
struct ListedCounter {
    packets: u64,
    bytes: u64,
}

/// Sums the counters of the rules commented `trefoil:<index>` by the rule
/// name of entry `index`.
fn counters(listing: &[u8], rules: &[String]) -> Result<Vec<RuleCounter>, Error> {
    let listing: Listing = serde_json::from_slice(listing)
        .map_err(|e| Error::Command { command: "nft -j list table".to_owned(), stderr: format!("unreadable JSON: {e}") })?;
    let mut out: Vec<RuleCounter> = Vec::new();
    for rule in listing.nftables.into_iter().filter_map(|item| item.rule) {
        let index = rule.comment.as_deref().and_then(|c| c.strip_prefix("trefoil:")).and_then(|i| i.parse::<usize>().ok());
        let Some(name) = index.and_then(|i| rules.get(i)) else { continue };
        let (packets, bytes) = rule.expr.iter().filter_map(|e| e.counter.as_ref()).fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
        match out.iter_mut().find(|c| &c.rule == name) {
            Some(counter) => {
                counter.packets += packets;
                counter.bytes += bytes;
            }
            None => out.push(RuleCounter { rule: name.clone(), packets, bytes }),
        }
    }
    out.sort_by(|a, b| a.rule.cmp(&b.rule));
    Ok(out)
}

impl NftAgent {
    /// Installs the policy route and an empty table for the node.
    pub fn start(config: AgentConfig) -> Result<Self, Error> {
        crate::agent::in_netns(config.netns.as_deref(), routing::install)?;
        let agent = Self { config, rules: Vec::new() };
        nft(&agent.config, &script(&table(&agent.config), &[])?)?;
        Ok(agent)
    }

    /// Replaces the node's table with exactly `entries`, in one transaction.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<(), Error> {
        nft(&self.config, &script(&table(&self.config), entries)?)?;
        self.rules = entries.iter().map(|entry| entry.rule.clone()).collect();
        Ok(())
    }

    /// Packets and bytes per rule, from the rules' counters.
    pub fn counters(&self) -> Result<Vec<RuleCounter>, Error> {
        let name = table(&self.config);
        let listing = crate::agent::in_netns(self.config.netns.as_deref(), || {
            let output = Command::new("nft")
                .args(["-j", "list", "table", "inet", &name])
                .output()
                .map_err(|e| Error::io("running `nft` (nftables)", e))?;
            if !output.status.success() {
                return Err(Error::Command {
                    command: format!("nft -j list table inet {name}"),
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                });
            }
            Ok(output.stdout)
        })?;
        counters(&listing, &self.rules)
    }

    /// Deletes the node's table and policy route.
    pub fn remove_all(self) -> Result<(), Error> {
        let name = table(&self.config);
        nft(&self.config, &format!("table inet {name}\ndelete table inet {name}\n"))?;
        crate::agent::in_netns(self.config.netns.as_deref(), routing::remove)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_become_one_table_with_first_match_verdicts() {
        let entries = [
            Entry {
                rule: "to-proxy".into(),
                priority: 1,
                src: IpNet::any_v4(),
                dst: "10.2.0.2/32".parse().unwrap(),
                ports: 80..=80,
                protocol: Protocol::Tcp,
                action: Action::Redirect { listener: "10.1.0.1:15001".parse().unwrap() },
            },
            Entry {
                rule: "no-dns".into(),
                priority: 2,
                src: "fd00:1::/64".parse().unwrap(),
                dst: IpNet::any_v6(),
                ports: 53..=53,
                protocol: Protocol::Udp,
                action: Action::Drop,
            },
        ];
        let text = script("trefoil-n1", &entries).unwrap();
        assert!(text.contains("ip saddr 0.0.0.0/0 ip daddr 10.2.0.2/32 tcp dport 80-80 tcp flags & (syn | ack) == syn counter meta mark set 0x7ef10000 tproxy ip to 10.1.0.1:15001 accept comment \"trefoil:0\""), "{text}");
        assert!(
            text.contains("meta nfproto ipv6 ip6 saddr fd00:1::/64 ip6 daddr ::/0 udp dport 53-53 counter drop comment \"trefoil:1\""),
            "{text}"
        );
        assert!(text.starts_with("table inet trefoil-n1\ndelete table inet trefoil-n1\n"), "replaced in one transaction");
    }

    #[test]
    fn counters_are_summed_per_rule_from_the_listing() {
        let listing = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "t"}},
            {"rule": {"comment": "trefoil:0", "expr": [{"match": {"op": "=="}}, {"counter": {"packets": 3, "bytes": 180}}, {"drop": null}]}},
            {"rule": {"comment": "trefoil:1", "expr": [{"counter": {"packets": 2, "bytes": 100}}, {"drop": null}]}},
            {"rule": {"expr": [{"counter": {"packets": 9, "bytes": 9}}]}}]}"#;
        let rules = ["block".to_owned(), "block".to_owned()];
        assert_eq!(counters(listing, &rules).unwrap(), [RuleCounter { rule: "block".into(), packets: 5, bytes: 280 }]);
    }

    #[test]
    fn copy_is_refused_with_the_reason() {
        let entry = Entry {
            rule: "tap".into(),
            priority: 1,
            src: IpNet::any_v4(),
            dst: IpNet::any_v4(),
            ports: 1..=65535,
            protocol: Protocol::Tcp,
            action: Action::Copy { interface: "et".into() },
        };
        let error = script("t", &[entry]).unwrap_err().to_string();
        assert!(error.starts_with("datapath entry 0 (rule `tap`): copy needs the eBPF datapath"), "{error}");
    }
}
