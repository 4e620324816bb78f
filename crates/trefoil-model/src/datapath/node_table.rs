//! The table one node's agent programs, resolved: the control plane compiles
//! it per node and sends it on the config stream, so the agent needs neither
//! the rules nor the functions they select, and what it applies is what the
//! control plane recorded (one revision, ACKed or NACKed).
//!
//! A line is one source block, one destination block and one port range of
//! a rule, of one IP version, with its target already an address or an
//! interface. A redirect whose target does not resolve fails closed: its
//! lines become drop lines, counted under the rule, because a rule that says
//! "this traffic goes through the security chain" must not let it go around
//! the chain while a label is missing. A copy with no interface fails open:
//! the traffic itself was never to be touched. Either way the rule is named
//! in `unresolved` with the reason, never left out in silence.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::targets::{self, Targets};
use super::{compile, Cidr, Entry, Family, PortRange, Rule};
use crate::spec::{DatapathAction, Protocol};
use crate::{Resource, Spec};

/// Everything one node's agent programs, in precedence order (first match wins).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeTable {
    pub lines: Vec<Line>,
    /// The rules for this node whose `to` did not resolve, and what the table does instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<Unresolved>,
}

/// One match-and-action line, of one IP version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Line {
    pub rule: String,
    pub priority: i32,
    pub protocol: Protocol,
    /// "Any" is the version's any-network (`0.0.0.0/0`, `::/0`).
    pub source: Cidr,
    pub destination: Cidr,
    pub ports: PortRange,
    pub action: LineAction,
}

/// What a line does, its target resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", deny_unknown_fields)]
pub enum LineAction {
    Drop,
    /// To this transparent listener, in the node's namespace.
    Redirect {
        listener: SocketAddr,
    },
    /// Copies out of this interface, in the node's namespace.
    Copy {
        interface: String,
    },
}

/// A rule whose target did not resolve for one IP version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Unresolved {
    pub rule: String,
    pub action: DatapathAction,
    /// What the table does with the rule's traffic instead.
    pub effect: String,
    /// Why it does not resolve (the selector matches nothing, no listener, ...).
    pub reason: String,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            DatapathAction::Redirect => "redirect",
            DatapathAction::Copy => "copy",
            DatapathAction::Drop => "drop",
        };
        write!(f, "rule {}: {action} not resolved, {}: {}", self.rule, self.effect, self.reason)
    }
}

/// The rules among `resources` whose TTL ran out at `now_ms` (Unix ms), by
/// their `DatapathRuleStatus`: gone from every table at once, before the
/// expiry controller gets to delete them. A deadline set for an older write
/// of the rule (it was written again since) does not count.
pub fn expired(resources: &[Resource], now_ms: u64) -> BTreeSet<&str> {
    let versions: BTreeMap<&str, Option<&str>> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::DatapathRule(_)))
        .map(|r| (r.name(), r.metadata.resource_version.as_deref()))
        .collect();
    resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::DatapathRuleStatus(s) if s.expires_at_ms <= now_ms => {
                let version = versions.get(r.name())?;
                version.is_none_or(|v| v == s.observed_resource_version).then_some(r.name())
            }
            _ => None,
        })
        .collect()
}

/// The table for `node`: its rules (those naming it and those naming no
/// node) but the `expired` ones, with targets resolved from `resources`.
pub fn for_node(resources: &[Resource], node: &str, expired: &BTreeSet<&str>) -> NodeTable {
    let rules: Vec<Rule<'_>> = Rule::all_in(resources).into_iter().filter(|r| !expired.contains(r.name)).collect();
    let resolved: BTreeMap<&str, Targets> = rules.iter().map(|r| (r.name, targets::resolve(r.spec, resources))).collect();
    let mut table = NodeTable::default();
    // The targets are resolved per rule above; the compile only orders the lines.
    for entry in compile(&rules, |_| Vec::<()>::new()).into_iter().filter(|l| l.is_for(node)) {
        let targets = &resolved[entry.rule.as_str()];
        for family in families(&entry) {
            let action = match entry.action {
                DatapathAction::Drop => Ok(LineAction::Drop),
                DatapathAction::Redirect => targets.listener(family).map(|listener| LineAction::Redirect { listener }),
                DatapathAction::Copy => targets.interface().map(|interface| LineAction::Copy { interface: interface.to_string() }),
            };
            let action = match action {
                Ok(action) => Some(action),
                Err(reason) => {
                    let (effect, action) = match entry.action {
                        DatapathAction::Redirect => (format!("its {family} traffic is dropped (fails closed)"), Some(LineAction::Drop)),
                        _ => ("no copies are sent".to_string(), None),
                    };
                    let unresolved = Unresolved { rule: entry.rule.clone(), action: entry.action, effect, reason };
                    if !table.unresolved.contains(&unresolved) {
                        table.unresolved.push(unresolved);
                    }
                    action
                }
            };
            table.lines.extend(action.and_then(|action| line(&entry, family, action)));
        }
    }
    table
}

/// The IP versions a line's packets can have: its block's, or both when it gives none.
fn families<T>(entry: &Entry<T>) -> Vec<Family> {
    match entry.family() {
        Some(f) => vec![f],
        None => vec![Family::Ipv4, Family::Ipv6],
    }
}

/// One compiled entry of one IP version: "any" becomes the any-network of that version.
fn line<T>(entry: &Entry<T>, family: Family, action: LineAction) -> Option<Line> {
    let any: IpAddr = if family == Family::Ipv4 { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let any = Cidr::new(any, 0)?;
    Some(Line {
        rule: entry.rule.clone(),
        priority: entry.priority,
        protocol: entry.protocol,
        source: entry.source.unwrap_or(any),
        destination: entry.destination.unwrap_or(any),
        ports: entry.ports,
        action,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn load(yaml: &str) -> Vec<Resource> {
        crate::load_str(&Arc::from("t.yaml"), yaml).unwrap().into_iter().map(|s| s.resource).collect()
    }

    const FUNCTIONS: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: tproxy}\nspec: {address: 127.0.0.1:15001, protocol: tcp, transparent: true}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge, labels: {app: http-proxy, trefoil.dev/listener: tproxy}}\nspec: {chain: [{function: policy}]}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: ids, labels: {app: ids, tier: edge, trefoil.dev/interface: veth-ids}}\nspec: {service: ids, command: ids}\n";

    fn rule(name: &str, spec: &str) -> String {
        format!("---\napiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {{name: {name}}}\nspec: {spec}\n")
    }

    fn none() -> BTreeSet<&'static str> {
        BTreeSet::new()
    }

    #[test]
    fn a_nodes_table_holds_its_rules_and_unnoded_ones_resolved_with_any_filled_in() {
        let yaml = [
            FUNCTIONS.to_string(),
            rule("web", "{match: {destination: [10.0.2.0/24], ports: [80]}, action: redirect, to: {app: http-proxy}}"),
            rule("tap", "{match: {destination: [\"fd00::/64\"]}, action: copy, to: {app: ids}}"),
            rule("block", "{match: {source: [10.0.1.2]}, action: drop, node: edge}"),
            rule("elsewhere", "{match: {destination: [10.0.9.0/24], ports: [80]}, action: drop, node: other}"),
        ]
        .concat();
        let resources = load(&yaml);
        let table = for_node(&resources, "edge", &none());
        let names: Vec<&str> = table.lines.iter().map(|l| l.rule.as_str()).collect();
        // Longer destination prefixes first; only this node's.
        assert_eq!(names, ["tap", "web", "block"]);
        let [tap, web, block] = &table.lines[..] else { panic!("{table:?}") };
        assert_eq!(block.destination.to_string(), "0.0.0.0/0", "any destination of the source's IP version");
        assert_eq!(block.source.to_string(), "10.0.1.2/32");
        assert_eq!(web.action, LineAction::Redirect { listener: "127.0.0.1:15001".parse().unwrap() });
        assert_eq!(web.ports, PortRange::new(80, 80).unwrap());
        assert_eq!(tap.action, LineAction::Copy { interface: "veth-ids".into() });
        assert_eq!((tap.source.to_string(), tap.ports), ("::/0".to_string(), PortRange::ALL));
        assert_eq!(table.unresolved, []);

        // The other node gets its own rule and the shared ones, not `block`.
        let other = for_node(&resources, "other", &none());
        let names: Vec<&str> = other.lines.iter().map(|l| l.rule.as_str()).collect();
        assert_eq!(names, ["tap", "elsewhere", "web"], "equal blocks and ports: by name");

        // It goes over the wire as JSON and comes back the same.
        let json = serde_json::to_string(&table).unwrap();
        assert_eq!(serde_json::from_str::<NodeTable>(&json).unwrap(), table);
    }

    #[test]
    fn an_unresolved_redirect_drops_an_unresolved_copy_is_left_out_and_both_say_why() {
        let yaml = [
            FUNCTIONS.to_string(),
            rule("nowhere", "{match: {destination: [10.0.3.0/24], ports: [80]}, action: redirect, to: {app: missing}}"),
            rule("v6", "{match: {destination: [\"fd00::/64\"], ports: [80]}, action: redirect, to: {app: http-proxy}}"),
            rule("no-tap", "{match: {destination: [10.0.4.0/24]}, action: copy, to: {app: http-proxy}}"),
        ]
        .concat();
        let table = for_node(&load(&yaml), "edge", &none());
        let lines: Vec<(&str, &LineAction)> = table.lines.iter().map(|l| (l.rule.as_str(), &l.action)).collect();
        // fd00::/64 is the longer prefix, so `v6` comes first.
        assert_eq!(lines, [("v6", &LineAction::Drop), ("nowhere", &LineAction::Drop)]);
        let notes: Vec<String> = table.unresolved.iter().map(ToString::to_string).collect();
        assert_eq!(
            notes,
            [
                "rule v6: redirect not resolved, its IPv6 traffic is dropped (fails closed): no transparent listener takes IPv6 traffic (only 127.0.0.1:15001)",
                "rule nowhere: redirect not resolved, its IPv4 traffic is dropped (fails closed): `to` (app=missing) selects no Workload, NetworkFunction or CNF",
                "rule no-tap: copy not resolved, no copies are sent: CNF/edge has no trefoil.dev/interface label naming the interface that receives copies",
            ]
        );
    }

    #[test]
    fn a_rule_past_its_deadline_is_left_out_unless_written_again_since() {
        let mut resources = load(&rule("block", "{match: {source: [10.0.1.2]}, action: drop, ttl: 10s}"));
        resources[0].metadata.resource_version = Some("7".into());
        let status = |observed: &str| Resource {
            api_version: crate::API_VERSION.into(),
            metadata: crate::Metadata { name: "block".into(), ..Default::default() },
            spec: Spec::DatapathRuleStatus(crate::spec::DatapathRuleStatusSpec {
                observed_resource_version: observed.into(),
                expires_at_ms: 1_000,
            }),
        };
        resources.push(status("7"));
        assert!(expired(&resources, 999).is_empty());
        let gone = expired(&resources, 1_000);
        assert_eq!(gone, BTreeSet::from(["block"]));
        assert_eq!(for_node(&resources, "edge", &gone).lines, []);
        // Written again (version 8): the old deadline no longer holds.
        resources[1] = status("6");
        assert!(expired(&resources, 5_000).is_empty());
    }
}
