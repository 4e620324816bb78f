//! `policy`: an access list. Rules are tried in order and the first whose
//! conditions all hold decides; when none does, the default action applies.
//! Every verdict publishes `policy_check` naming the rule that decided.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::json;
use trefoil_chain::json::JsonVerdict;

use crate::request::Request;
use crate::server::Function;
use crate::verdict;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// Where the file is wrong: `file:line:column: field: message`.
    #[error("{0}")]
    Yaml(trefoil_model::Diagnostic),
    #[error("rule {rule}: {message}")]
    Rule { rule: String, message: String },
    #[error("denyStatus {0} is not a status between 200 and 599")]
    Status(u16),
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// The config file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// What happens when no rule matches.
    #[serde(default)]
    pub default: Action,
    #[serde(default = "default_status")]
    pub deny_status: u16,
    #[serde(default = "default_reason")]
    pub deny_reason: String,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_status() -> u16 {
    403
}
fn default_reason() -> String {
    "denied by policy\n".to_string()
}

/// One rule as written; every condition given must hold.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub action: Action,
    /// Client addresses or CIDR blocks; any may match.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Path prefixes (query excluded); any may match.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods, upper case; any may match.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must all be present, with the given value if one is given.
    #[serde(default)]
    pub headers: Vec<HeaderCondition>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCondition {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// An address block: `10.0.0.0/8`, `::1/128`, or a bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?
            }
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client may reach a dual-stack listener as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(u128::from(u32::from(n)) << 96, u128::from(u32::from(a)) << 96, self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(n), u128::from(a), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix));
    a & mask == b & mask
}

/// A rule ready to match.
#[derive(Debug)]
struct Rule {
    name: String,
    action: Action,
    sources: Vec<Cidr>,
    paths: Vec<String>,
    methods: Vec<String>,
    headers: Vec<(String, Option<String>)>,
}

impl Rule {
    fn matches(&self, call: &Request) -> bool {
        let source_ok = self.sources.is_empty() || call.client_ip().is_some_and(|ip| self.sources.iter().any(|c| c.contains(ip)));
        let path = call.path_only();
        let path_ok = self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p.as_str()));
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(&call.method));
        let headers_ok = self.headers.iter().all(|(name, want)| match (call.header(name), want) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(w)) => v == w,
        });
        source_ok && path_ok && method_ok && headers_ok
    }
}

/// The function.
#[derive(Debug)]
pub struct Policy {
    default: Action,
    deny_status: u16,
    deny_reason: String,
    rules: Vec<Rule>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: shown.clone(), source })?;
        let config: Config = trefoil_model::from_yaml(&shown.as_str().into(), &text).map_err(PolicyError::Yaml)?;
        Self::new(config)
    }

    pub fn new(config: Config) -> Result<Self, PolicyError> {
        if !(200..=599).contains(&config.deny_status) {
            return Err(PolicyError::Status(config.deny_status));
        }
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.into_iter().enumerate() {
            let name = r.name.unwrap_or_else(|| format!("#{}", i + 1));
            let sources = r
                .sources
                .iter()
                .map(|s| s.parse::<Cidr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| PolicyError::Rule { rule: name.clone(), message })?;
            if let Some(p) = r.paths.iter().find(|p| !p.starts_with('/')) {
                return Err(PolicyError::Rule { rule: name, message: format!("path {p:?} must start with /") });
            }
            let headers = r.headers.into_iter().map(|h| (h.name.to_ascii_lowercase(), h.value)).collect();
            rules.push(Rule { name, action: r.action, sources, paths: r.paths, methods: r.methods, headers });
        }
        Ok(Policy { default: config.default, deny_status: config.deny_status, deny_reason: config.deny_reason, rules })
    }

    /// The action and the name of the rule that decided (`default` if none).
    pub fn evaluate(&self, call: &Request) -> (Action, &str) {
        match self.rules.iter().find(|r| r.matches(call)) {
            Some(rule) => (rule.action, &rule.name),
            None => (self.default, "default"),
        }
    }
}

impl Function for Policy {
    fn kind(&self) -> &'static str {
        "policy"
    }

    async fn decide(&self, call: Request) -> Result<JsonVerdict, String> {
        let (action, rule) = self.evaluate(&call);
        let action_name = match action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        let events = vec![verdict::event("policy_check", json!({"cnf": call.cnf, "rule": rule, "action": action_name}))];
        Ok(match action {
            Action::Allow => verdict::allow(events),
            Action::Deny => verdict::deny(self.deny_status, self.deny_reason.clone(), events),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_config(yaml: &str) -> Result<Config, trefoil_model::Diagnostic> {
        trefoil_model::from_yaml(&"policy.yaml".into(), yaml)
    }

    fn policy(yaml: &str) -> Policy {
        Policy::new(yaml_config(yaml).unwrap()).unwrap()
    }

    fn call(method: &str, path: &str, source: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            source: Some(source.parse().unwrap()),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cidr_blocks_match_by_prefix() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()), "IPv4-mapped clients match IPv4 blocks");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!("fd00::/8".parse::<Cidr>().unwrap().contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn the_first_matching_rule_wins_and_all_its_conditions_must_hold() {
        let p = policy(
            r#"
default: deny
rules:
- name: office-admin
  action: allow
  sources: [10.0.0.0/8]
  paths: [/admin]
  methods: [GET]
  headers: [{name: X-Role, value: admin}]
- name: no-admin
  action: deny
  paths: [/admin]
- name: public
  action: allow
  paths: [/public, /static]
"#,
        );
        let admin = [("x-role", "admin")];
        assert_eq!(p.evaluate(&call("GET", "/admin/x?y=1", "10.2.3.4:1", &admin)), (Action::Allow, "office-admin"));
        assert_eq!(p.evaluate(&call("POST", "/admin/x", "10.2.3.4:1", &admin)), (Action::Deny, "no-admin"), "method");
        assert_eq!(p.evaluate(&call("GET", "/admin/x", "192.168.0.1:1", &admin)), (Action::Deny, "no-admin"), "source");
        assert_eq!(p.evaluate(&call("GET", "/admin/x", "10.2.3.4:1", &[("x-role", "user")])), (Action::Deny, "no-admin"), "header value");
        assert_eq!(p.evaluate(&call("GET", "/static/a.css", "1.2.3.4:1", &[])), (Action::Allow, "public"));
        assert_eq!(p.evaluate(&call("GET", "/other", "1.2.3.4:1", &[])), (Action::Deny, "default"));
    }

    #[test]
    fn bad_configs_are_refused_with_the_rule_named() {
        let bad = |yaml: &str| Policy::new(yaml_config(yaml).unwrap()).unwrap_err().to_string();
        assert!(bad("rules: [{name: r, action: deny, sources: [10.0.0.0/40]}]").contains("rule r"));
        assert!(bad("rules: [{action: deny, paths: [admin]}]").contains("rule #1"));
        assert!(bad("denyStatus: 99").contains("99"));
        assert!(yaml_config("rules: [{action: maybe}]").is_err());
        assert!(yaml_config("rulez: []").is_err(), "unknown fields are refused");
    }

    #[tokio::test]
    async fn verdicts_carry_the_configured_status_and_a_policy_check_event() {
        let p = policy("denyStatus: 451\ndenyReason: \"no\\n\"\nrules: [{name: block, action: deny, methods: [DELETE]}]");
        let mut c = call("DELETE", "/x", "127.0.0.1:1", &[]);
        c.cnf = "edge".into();
        let v = p.decide(c).await.unwrap();
        assert_eq!((v.verdict.as_str(), v.status, v.reason.as_deref()), ("deny", Some(451), Some("no\n")));
        assert_eq!(v.events[0].name, "policy_check");
        assert_eq!(v.events[0].data, json!({"cnf": "edge", "rule": "block", "action": "deny"}));
        let v = p.decide(call("GET", "/x", "127.0.0.1:1", &[])).await.unwrap();
        assert_eq!(v.verdict, "allow");
    }
}
