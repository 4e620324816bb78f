//! `DatapathRule`: traffic not addressed to Trefoil that the node's datapath
//! steers anyway — redirected through a CNF, copied to a function, or
//! dropped. The seed's `{<ip> <port> : redirect => [labels]}` as a resource;
//! `crate::datapath` holds its precedence and its compact form.
//!
//! `DatapathRuleStatus`: when a rule with a `ttl` expires, written by the
//! control plane's expiry controller only (so a restart keeps the deadline).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::datapath::{Cidr, PortRange};
use crate::Duration;

/// One datapath rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatapathRuleSpec {
    /// The traffic the rule applies to.
    #[serde(rename = "match")]
    pub traffic: TrafficMatch,
    pub action: DatapathAction,
    /// Workloads, NetworkFunctions or CNFs whose labels hold all of these:
    /// where `redirect` sends and `copy` copies. A `drop` has none.
    #[serde(default, skip_serializing_if = "LabelSelector::is_empty")]
    pub to: LabelSelector,
    /// The node whose agent programs the rule; every node's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Higher wins among overlapping rules, before specificity.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// The control plane deletes the rule this long after it was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Who made the rule, when a function's handler did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Which packets: every list empty means "any".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficMatch {
    /// Where the traffic comes from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<Cidr>,
    /// Where it is addressed (the server's address, not Trefoil's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination: Vec<Cidr>,
    /// Destination ports: `80` or `"8000-8100"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// What the datapath does with matching traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathAction {
    /// Steer connections to the transparent listener fronting `to`; the
    /// original destination is kept.
    Redirect,
    /// Deliver a copy of each packet to `to`; the flow itself is untouched.
    Copy,
    /// Drop the packets, early, and count them.
    Drop,
}

impl DatapathAction {
    /// The word the resource files and the compact form use.
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathAction::Redirect => "redirect",
            DatapathAction::Copy => "copy",
            DatapathAction::Drop => "drop",
        }
    }

    /// Whether the action sends traffic somewhere, and so needs `to`.
    pub fn needs_target(self) -> bool {
        self != DatapathAction::Drop
    }
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Label equalities, all of which a resource's `metadata.labels` must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelSelector(pub BTreeMap<String, String>);

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` hold every pair; an empty selector selects nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.is_empty() && self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Where a rule made at run time came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Origin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<String>,
    /// The event whose handler made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// The trace of the request that led to it: the correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// When a rule expires; the controller's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatapathRuleStatusSpec {
    /// The rule's `resourceVersion` the deadline was set from: every write of
    /// the rule (a handler adding it again) starts its TTL over.
    pub observed_resource_version: String,
    /// Unix milliseconds.
    pub expires_at_ms: u64,
}

/// At most this many source or destination blocks, or port ranges, in one rule.
const MAX_MATCH_ITEMS: usize = 64;
/// At most this many kernel entries one rule expands to (sources x
/// destinations x port ranges): a rule is a line of intent, not a table.
const MAX_ENTRIES_PER_RULE: usize = 1024;

impl DatapathRuleSpec {
    /// `<action>-<hash>`, for a rule given without a name: the same rule
    /// gets the same name, so adding it twice is refused (or, through the
    /// Datapath API, refreshed) instead of doubled. FNV-1a: stable across
    /// builds and machines.
    pub fn derived_name(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        format!("{}-{:08x}", self.action.as_str(), hash as u32)
    }

    /// The problems the types cannot rule out, as (field path, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut report = |field: &str, message: String| out.push((field.to_string(), message));
        let m = &self.traffic;
        for (field, n) in [("source", m.source.len()), ("destination", m.destination.len()), ("ports", m.ports.len())] {
            if n > MAX_MATCH_ITEMS {
                report(&format!("spec.match.{field}"), format!("{n} items: a rule holds at most {MAX_MATCH_ITEMS}"));
            }
        }
        if m.source.is_empty() && m.destination.is_empty() {
            report(
                "spec.match",
                "give `source` or `destination` (for all traffic, say so: `destination: [0.0.0.0/0, \"::/0\"]`)".to_string(),
            );
        }
        if !m.source.is_empty()
            && !m.destination.is_empty()
            && !m.source.iter().any(|s| m.destination.iter().any(|d| s.family() == d.family()))
        {
            report("spec.match.destination", "no source and destination of the same IP version: the rule can never match".to_string());
        }
        let entries = m.source.len().max(1) * m.destination.len().max(1) * m.ports.len().max(1);
        if entries > MAX_ENTRIES_PER_RULE {
            report(
                "spec.match",
                format!("expands to {entries} kernel entries (sources x destinations x ports), more than {MAX_ENTRIES_PER_RULE}"),
            );
        }
        for (i, a) in m.ports.iter().enumerate() {
            if let Some(j) = m.ports[..i].iter().position(|b| a.first() <= b.last() && b.first() <= a.last()) {
                report(&format!("spec.match.ports[{i}]"), format!("{a} overlaps ports[{j}] ({})", m.ports[j]));
            }
        }
        match (self.action.needs_target(), self.to.is_empty()) {
            (true, true) => report(
                "spec.to",
                format!("a {} rule needs `to`: the labels of the Workload, NetworkFunction or CNF to send to", self.action.as_str()),
            ),
            (false, false) => report("spec.to", "a drop rule sends nothing anywhere: leave `to` out".to_string()),
            _ => {}
        }
        for (key, value) in &self.to.0 {
            if !valid_label(key) || !valid_label(value) {
                report(
                    &format!("spec.to.{key}"),
                    format!("{key}={value} is not a label: use letters, digits, '-', '_', '.' and '/', at most 253 each"),
                );
            }
        }
        if let Some(ttl) = self.ttl.filter(|t| t.get().is_zero()) {
            report("spec.ttl", format!("{ttl}: a TTL must be greater than 0 (leave it out for a rule that stays)"));
        }
        if let Some(trace) = self.origin.as_ref().and_then(|o| o.trace_id.as_ref()) {
            if trace.len() != 32 || !trace.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                report("spec.origin.traceId", format!("{trace:?} is not a trace id (32 lower-case hex digits)"));
            }
        }
        out
    }
}

/// A label key or value as the compact form and selectors accept it.
pub(crate) fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{check_all, load_all_str, load_str, validate, validate_each, Spec};

    const PROXY: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: proxy, labels: {app: http-proxy}}\nspec: {service: proxy, command: ./proxy}\n---\n";

    fn rule(spec: &str) -> String {
        format!("apiVersion: trefoil.dev/v1alpha1\nkind: DatapathRule\nmetadata: {{name: r}}\nspec:\n{spec}")
    }

    #[test]
    fn a_rule_loads_into_types_with_defaults() {
        let text = rule("  match:\n    destination: [10.0.2.0/24, \"fd00::/64\"]\n    ports: [80, \"8000-8100\"]\n  action: redirect\n  to: {app: http-proxy}\n  ttl: 10m\n  origin: {cnf: edge, handler: denied, traceId: 4bf92f3577b34da6a3ce929d0e0e4736}\n");
        let loaded = load_str(&Arc::from("r.yaml"), &format!("{PROXY}{text}")).unwrap();
        validate(&loaded).unwrap();
        let Spec::DatapathRule(d) = &loaded[1].resource.spec else { panic!() };
        assert_eq!(d.traffic.destination[1].prefix_len(), 64);
        assert_eq!(d.traffic.ports[1].width(), 101);
        assert_eq!((d.traffic.protocol, d.priority), (super::Protocol::Tcp, 0));
        assert_eq!(d.ttl, Some(crate::Duration::from_secs(600)));
    }

    #[test]
    fn shape_mistakes_are_located() {
        // Every mistake at once: a wrong list item sets its list aside and
        // the reading goes on.
        let text = rule("  action: forward\n  match:\n    protocol: sctp\n    destination: [10.0.2.5/24]\n");
        let loaded = load_all_str(&Arc::from("r.yaml"), &text);
        let problems = check_all(&loaded, false);
        let at: Vec<(usize, &str)> = problems.iter().map(|d| (d.line, d.field.as_str())).collect();
        assert_eq!(at, [(5, "spec.action"), (7, "spec.match.protocol"), (8, "spec.match.destination[0]")], "{problems:#?}");
        assert!(problems[2].message.contains("host bits set: the network is 10.0.2.0/24"), "{}", problems[2]);
        let protocol = load_all_str(&Arc::from("r.yaml"), &rule("  action: drop\n  match: {destination: [10.0.2.0/24], protocol: sctp}\n"));
        assert_eq!(check_all(&protocol, false)[0].field, "spec.match.protocol");
        let ports = load_all_str(
            &Arc::from("r.yaml"),
            &rule("  action: drop\n  match:\n    destination: [10.0.2.0/24]\n    ports: [80, \"90-80\"]\n"),
        );
        let problems = check_all(&ports, false);
        assert_eq!((problems[0].line, problems[0].column, problems[0].field.as_str()), (8, 17, "spec.match.ports[1]"), "{problems:#?}");
        assert!(problems[0].message.contains("90-80 is empty"), "{}", problems[0]);
    }

    #[test]
    fn rules_that_cannot_work_are_refused_where_written() {
        let check = |spec: &str| {
            let loaded = load_str(&Arc::from("r.yaml"), &format!("{PROXY}{}", rule(spec))).unwrap();
            validate(&loaded).err().map(|e| e.0.into_iter().map(|d| (d.line, d.field, d.message)).collect::<Vec<_>>()).unwrap_or_default()
        };
        let drop_with_to = check("  match: {destination: [10.0.2.0/24]}\n  action: drop\n  to: {app: http-proxy}\n");
        assert_eq!(drop_with_to[0].1, "spec.to");
        assert_eq!(drop_with_to[0].0, 12);
        let copy_without = check("  match: {destination: [10.0.2.0/24]}\n  action: copy\n");
        assert_eq!(copy_without[0].1, "spec.to");
        let no_block = check("  match: {ports: [80]}\n  action: drop\n");
        assert_eq!(no_block[0].1, "spec.match");
        let mixed = check("  match: {source: [10.0.1.0/24], destination: [\"fd00::/64\"]}\n  action: drop\n");
        assert!(mixed[0].2.contains("never match"), "{mixed:?}");
        let overlapping = check("  match: {destination: [10.0.2.0/24], ports: [80, \"1-100\"]}\n  action: drop\n");
        assert_eq!(overlapping[0].1, "spec.match.ports[1]");
        let nowhere = check("  match: {destination: [10.0.2.0/24]}\n  action: redirect\n  to: {app: nowhere}\n");
        assert_eq!(
            (nowhere[0].1.as_str(), nowhere[0].2.as_str()),
            ("spec.to", "no Workload, NetworkFunction or CNF has the labels app=nowhere")
        );
        let odd = check("  match: {destination: [10.0.2.0/24]}\n  action: drop\n  ttl: 0s\n  node: Edge\n  origin: {traceId: xyz}\n");
        let fields: Vec<&str> = odd.iter().map(|p| p.1.as_str()).collect();
        assert_eq!(fields, ["spec.ttl", "spec.origin.traceId", "spec.node"]);
        let wide = format!(
            "  match:\n    source: [{}]\n    destination: [{}]\n    ports: [{}]\n  action: drop\n",
            (0..20).map(|i| format!("10.1.{i}.0/24")).collect::<Vec<_>>().join(", "),
            (0..20).map(|i| format!("10.2.{i}.0/24")).collect::<Vec<_>>().join(", "),
            (1..=3).map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
        );
        assert!(check(&wide)[0].2.contains("1200 kernel entries"));
    }

    #[test]
    fn the_same_rule_gets_the_same_name() {
        let spec = crate::datapath::compact::parse("10.0.2.0/24 80 : redirect => app=http-proxy").unwrap().into_spec();
        let name = spec.derived_name();
        assert!(name.starts_with("redirect-") && name.len() == "redirect-".len() + 8, "{name}");
        let again = crate::datapath::compact::parse("{10.0.2.0/24 80 : redirect => [app=http-proxy]}").unwrap().into_spec();
        assert_eq!(again.derived_name(), name, "the same rule, written another way");
        let mut other = spec;
        other.priority = 1;
        assert_ne!(other.derived_name(), name);
    }

    #[test]
    fn the_control_plane_accepts_a_rule_before_what_it_selects() {
        let loaded =
            load_str(&Arc::from("r.yaml"), &rule("  match: {destination: [10.0.2.0/24]}\n  action: copy\n  to: {app: ids}\n")).unwrap();
        validate_each(&loaded).unwrap();
        assert!(validate(&loaded).is_err());
    }
}
