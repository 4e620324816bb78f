//! Which datapath rule wins. Overlapping rules are allowed (a broad
//! redirect and a narrow drop inside it is the normal case), so every packet
//! needs one answer, the same in `trefoil datapath explain` as in the kernel:
//! both read the one ordered table [`compile`] makes.
//!
//! Order: higher `priority` first; then the longer destination prefix, the
//! longer source prefix, the narrower port range; then the rule's name, so
//! that two equal rules still have a fixed winner.

use std::cmp::Reverse;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::Serialize;

use super::{Cidr, Family, PortRange};
use crate::spec::{DatapathAction, DatapathRuleSpec, LabelSelector, Protocol};
use crate::{Resource, Spec};

/// A rule with its name, as the functions here read it.
#[derive(Clone, Copy, Debug)]
pub struct Rule<'a> {
    pub name: &'a str,
    pub spec: &'a DatapathRuleSpec,
}

impl<'a> Rule<'a> {
    /// The DatapathRules among `resources`.
    pub fn all_in(resources: impl IntoIterator<Item = &'a Resource>) -> Vec<Rule<'a>> {
        resources
            .into_iter()
            .filter_map(|r| match &r.spec {
                Spec::DatapathRule(spec) => Some(Rule { name: r.name(), spec }),
                _ => None,
            })
            .collect()
    }
}

/// One line of the compiled table: one source block, one destination
/// block and one port range of a rule. `None` blocks match any address.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry<T> {
    pub rule: String,
    pub priority: i32,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Cidr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Cidr>,
    pub ports: PortRange,
    pub action: DatapathAction,
    /// The node whose agent programs it; every node's when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What `to` selects, as the caller resolved it; empty for `drop`.
    pub targets: Vec<T>,
}

impl<T> Entry<T> {
    /// The IP version the line applies to; `None` when neither block is
    /// given (validation refuses such a rule), i.e. both versions.
    pub fn family(&self) -> Option<Family> {
        self.destination.or(self.source).map(|c| c.family())
    }

    /// Whether the agent of `node` programs this line.
    pub fn is_for(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }

    /// The sort key: smaller goes first and wins.
    fn rank(&self) -> (Reverse<i32>, Reverse<u8>, Reverse<u8>, u32, &str) {
        let len = |c: &Option<Cidr>| c.map_or(0, |c| c.prefix_len());
        (Reverse(self.priority), Reverse(len(&self.destination)), Reverse(len(&self.source)), self.ports.width(), &self.rule)
    }

    /// Whether the entry matches `flow`, ignoring the source when the flow has none.
    fn matches_apart_from_source(&self, flow: &Flow) -> bool {
        self.protocol == flow.protocol && self.ports.contains(flow.port) && self.destination.is_none_or(|d| d.contains(flow.destination))
    }
}

/// Every rule as table lines in the order the datapath must try them: the
/// first line that matches a packet decides it. `resolve` turns a rule's
/// `to` into whatever the caller programs (addresses, interface names).
pub fn compile<T: Clone>(rules: &[Rule<'_>], mut resolve: impl FnMut(&LabelSelector) -> Vec<T>) -> Vec<Entry<T>> {
    let mut table = Vec::new();
    for rule in rules {
        let m = &rule.spec.traffic;
        let targets = if rule.spec.action.needs_target() { resolve(&rule.spec.to) } else { Vec::new() };
        let any_block = [None];
        let blocks = |list: &[Cidr]| -> Vec<Option<Cidr>> { list.iter().copied().map(Some).collect() };
        let (sources, destinations) = (blocks(&m.source), blocks(&m.destination));
        let ports = if m.ports.is_empty() { vec![PortRange::ALL] } else { m.ports.clone() };
        for source in if sources.is_empty() { &any_block[..] } else { &sources } {
            for destination in if destinations.is_empty() { &any_block[..] } else { &destinations } {
                // A v4 source with a v6 destination meets no packet.
                if matches!((source, destination), (Some(s), Some(d)) if s.family() != d.family()) {
                    continue;
                }
                for p in &ports {
                    table.push(Entry {
                        rule: rule.name.to_string(),
                        priority: rule.spec.priority,
                        protocol: m.protocol,
                        source: *source,
                        destination: *destination,
                        ports: *p,
                        action: rule.spec.action,
                        node: rule.spec.node.clone(),
                        targets: targets.clone(),
                    });
                }
            }
        }
    }
    table.sort_by(|a, b| a.rank().cmp(&b.rank()).then_with(|| (a.destination, a.source, a.ports).cmp(&(b.destination, b.source, b.ports))));
    table
}

/// The rules in the order the datapath tries them: each by its first line
/// in the [`compile`]d table.
pub fn ordered<'a>(rules: &[Rule<'a>]) -> Vec<Rule<'a>> {
    let mut out: Vec<Rule<'a>> = Vec::new();
    for line in compile(rules, |_| Vec::<()>::new()) {
        if !out.iter().any(|r| r.name == line.rule) {
            out.extend(rules.iter().find(|r| r.name == line.rule));
        }
    }
    out
}

/// A connection to explain: `10.0.2.5:80/tcp`, optionally from a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub source: Option<IpAddr>,
    pub destination: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// Why a flow was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a destination such as 10.0.2.5:80, 10.0.2.5:80/udp or [fd00::5]:443/tcp")]
pub struct ParseFlowError(pub String);

impl FromStr for Flow {
    type Err = ParseFlowError;

    fn from_str(input: &str) -> Result<Flow, ParseFlowError> {
        let fail = || ParseFlowError(input.to_string());
        let (addr, protocol) = match input.rsplit_once('/') {
            Some((addr, "tcp")) => (addr, Protocol::Tcp),
            Some((addr, "udp")) => (addr, Protocol::Udp),
            Some(_) => return Err(fail()),
            None => (input, Protocol::Tcp),
        };
        let addr: SocketAddr = addr.parse().map_err(|_| fail())?;
        if addr.port() == 0 {
            return Err(fail());
        }
        Ok(Flow { source: None, destination: addr.ip().to_canonical(), port: addr.port(), protocol })
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.destination, self.port), self.protocol.as_str())?;
        if let Some(source) = self.source {
            write!(f, " from {source}")?;
        }
        Ok(())
    }
}

/// One rule's part in a decision: the line of it that matched best.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub rule: String,
    pub action: DatapathAction,
    pub priority: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Cidr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Cidr>,
    pub ports: PortRange,
    /// For a rule that lost: the first difference that ranks it below the
    /// winner. For one that depends on the source: what it would take.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// Which rule decides a flow, and what the others that match it did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `None`: no rule matches and the traffic goes its own way.
    pub winner: Option<Verdict>,
    /// Rules that match too and rank below the winner, best first.
    pub shadowed: Vec<Verdict>,
    /// With no source given: rules that match only some sources and would
    /// then rank above the winner.
    pub depends_on_source: Vec<Verdict>,
}

/// Which rule wins for `flow`, and why each other matching rule lost: the
/// first matching line of the [`compile`]d table decides, as in the kernel.
pub fn explain(rules: &[Rule<'_>], flow: &Flow) -> Decision {
    let table = compile(rules, |_| Vec::<()>::new());
    let mut decision = Decision::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut winner: Option<&Entry<()>> = None;
    let mut conditional: Vec<&Entry<()>> = Vec::new();
    for entry in table.iter().filter(|e| e.matches_apart_from_source(flow)) {
        // `None`: the flow names no source, and the entry matches only some.
        let source_ok = match (entry.source, flow.source) {
            (None, _) => Some(true),
            (Some(block), Some(ip)) => Some(block.contains(ip)),
            (Some(_), None) => None,
        };
        if source_ok == Some(false) || seen.contains(&entry.rule.as_str()) {
            continue;
        }
        match (source_ok.is_some(), winner) {
            (true, None) => {
                winner = Some(entry);
                seen.push(&entry.rule);
                decision.winner = Some(verdict(entry, String::new()));
            }
            (true, Some(w)) => {
                seen.push(&entry.rule);
                decision.shadowed.push(verdict(entry, why_lost(entry, w)));
            }
            // Depends on the source: ranks above the winner so far (or there is none yet).
            (false, None) => {
                seen.push(&entry.rule);
                conditional.push(entry);
            }
            (false, Some(w)) => {
                seen.push(&entry.rule);
                let why = format!("{} (and only from {})", why_lost(entry, w), entry.source.map_or_else(String::new, |s| s.to_string()));
                decision.shadowed.push(verdict(entry, why));
            }
        }
    }
    decision.depends_on_source = conditional
        .into_iter()
        .map(|e| {
            let block = e.source.map_or_else(String::new, |s| s.to_string());
            let over = decision.winner.as_ref().map_or_else(|| "decides".to_string(), |w| format!("wins over {}", w.rule));
            verdict(e, format!("{over} for traffic from {block}"))
        })
        .collect();
    decision
}

fn verdict<T>(e: &Entry<T>, why: String) -> Verdict {
    Verdict {
        rule: e.rule.clone(),
        action: e.action,
        priority: e.priority,
        source: e.source,
        destination: e.destination,
        ports: e.ports,
        why,
    }
}

/// The first rank difference that puts `loser` after `winner`, in words.
fn why_lost<T>(loser: &Entry<T>, winner: &Entry<T>) -> String {
    let len = |c: &Option<Cidr>| c.map_or(0, |c| c.prefix_len());
    let block = |c: &Option<Cidr>| c.map_or_else(|| "any".to_string(), |c| c.to_string());
    if loser.priority != winner.priority {
        return format!("priority {} is below {}'s {}", loser.priority, winner.rule, winner.priority);
    }
    if len(&loser.destination) != len(&winner.destination) {
        return format!("destination {} is less specific than {}'s {}", block(&loser.destination), winner.rule, block(&winner.destination));
    }
    if len(&loser.source) != len(&winner.source) {
        return format!("source {} is less specific than {}'s {}", block(&loser.source), winner.rule, block(&winner.source));
    }
    if loser.ports.width() != winner.ports.width() {
        return format!("ports {} are wider than {}'s {}", loser.ports, winner.rule, winner.ports);
    }
    format!("ties with {} on priority and specificity; the name {} sorts after it", winner.rule, loser.rule)
}

/// How two rules meet: where some packet matches both, which one wins it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overlap {
    pub rule: String,
    pub action: DatapathAction,
    /// Whether the rule asked about wins where they overlap (at their first
    /// shared line in table order).
    pub wins: bool,
    pub why: String,
}

/// Every other rule that some packet matches together with `name`.
pub fn overlaps(rules: &[Rule<'_>], name: &str) -> Vec<Overlap> {
    let table = compile(rules, |_| Vec::<()>::new());
    let mine: Vec<usize> = (0..table.len()).filter(|&i| table[i].rule == name).collect();
    // For each other rule, the first pair of lines in table order where the
    // two meet: the earlier line wins there. Only pairs with a line of
    // `name` are looked at (lines of `name` x all lines, not the square).
    let mut first: std::collections::BTreeMap<&str, (usize, usize)> = std::collections::BTreeMap::new();
    for (o, other) in table.iter().enumerate().filter(|(_, e)| e.rule != name) {
        for &m in &mine {
            let pair = (m.min(o), m.max(o));
            if meet(&table[m], other) && first.get(other.rule.as_str()).is_none_or(|p| pair < *p) {
                first.insert(&other.rule, pair);
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = first.into_values().collect();
    pairs.sort_unstable();
    pairs
        .into_iter()
        .map(|(a, b)| {
            let (winner, loser) = (&table[a], &table[b]);
            let wins = winner.rule == name;
            let other = if wins { loser } else { winner };
            Overlap { rule: other.rule.clone(), action: other.action, wins, why: why_lost(loser, winner) }
        })
        .collect()
}

/// Whether some packet matches both lines.
fn meet<T>(a: &Entry<T>, b: &Entry<T>) -> bool {
    let blocks = |x: Option<Cidr>, y: Option<Cidr>| match (x, y) {
        (Some(x), Some(y)) => x.contains(y.network()) || y.contains(x.network()),
        _ => true,
    };
    let families = [a.source, a.destination, b.source, b.destination].iter().flatten().map(|c| c.family()).collect::<Vec<_>>();
    a.protocol == b.protocol
        && a.ports.first() <= b.ports.last()
        && b.ports.first() <= a.ports.last()
        && families.windows(2).all(|w| w[0] == w[1])
        && blocks(a.source, b.source)
        && blocks(a.destination, b.destination)
}

#[cfg(test)]
mod tests;
