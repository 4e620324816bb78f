//! Whether `trefoil up` runs the node's datapath agent, and on which
//! interfaces. Pure apart from reading the routing table, so every case is
//! tested without privileges.
//!
//! An operator who wrote DatapathRules expects them programmed, so `auto`
//! (the default) runs the agent when the files hold a rule. Without the
//! capability to program the kernel, `auto` carries on without the datapath
//! and says which capability is missing (a developer running an example
//! without root still gets the rest of the mesh); `on` refuses to start
//! instead, for nodes where an unenforced rule is not acceptable.

use std::path::Path;

use crate::plan::AgentPlan;

/// `trefoil up --datapath`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DatapathMode {
    /// Run the agent when the files hold a DatapathRule.
    #[default]
    Auto,
    /// Always run it (rules may come later through `trefoil datapath add`); refuse to start without it.
    On,
    /// Never run it.
    Off,
}

/// What `trefoil up` was told about the datapath.
#[derive(Clone, Debug, Default)]
pub struct DatapathOptions {
    pub mode: DatapathMode,
    /// This node's name.
    pub node: String,
    /// `--datapath-interface`; empty: the interfaces of the default routes.
    pub interfaces: Vec<String>,
    /// The capability this process lacks to program the kernel at all
    /// (`CAP_NET_ADMIN`); a missing `CAP_BPF` only makes the agent fall back
    /// to nftables, which it says itself.
    pub missing_capability: Option<String>,
}

/// What `trefoil up` does about the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the agent.
    Run(AgentPlan),
    /// No agent, and nothing to say (no rules, or `--datapath off`).
    Quiet,
    /// No agent, although the files hold rules: why, for a warning.
    Skip(String),
}

/// Decides; an error (with `--datapath on` only) says why the agent cannot run.
pub fn decide(options: &DatapathOptions, rules: usize, default_interfaces: impl FnOnce() -> Vec<String>) -> Result<Decision, String> {
    let wanted = match options.mode {
        DatapathMode::Off => return Ok(Decision::Quiet),
        DatapathMode::Auto if rules == 0 => return Ok(Decision::Quiet),
        DatapathMode::Auto => false,
        DatapathMode::On => true,
    };
    let unenforced = format!("the {rules} DatapathRule(s) in the files are stored but not programmed on this node");
    if let Some(capability) = &options.missing_capability {
        let why = format!("the datapath agent needs {capability} (run as root, or grant CAP_NET_ADMIN and CAP_BPF)");
        return if wanted { Err(format!("--datapath on: {why}")) } else { Ok(Decision::Skip(format!("{why}; {unenforced}"))) };
    }
    let interfaces = if options.interfaces.is_empty() { default_interfaces() } else { options.interfaces.clone() };
    if interfaces.is_empty() {
        let why = "no interface for the datapath: no default route here; name them with --datapath-interface";
        return if wanted { Err(format!("--datapath on: {why}")) } else { Ok(Decision::Skip(format!("{why}; {unenforced}"))) };
    }
    Ok(Decision::Run(AgentPlan { node: options.node.clone(), interfaces }))
}

/// The interfaces that carry this network namespace's default routes (IPv4
/// and IPv6), in the order found: where traffic for other hosts enters and
/// leaves a typical node.
pub fn default_route_interfaces() -> Vec<String> {
    let mut found = Vec::new();
    for (file, parse) in [("/proc/net/route", default_v4 as fn(&str) -> Option<String>), ("/proc/net/ipv6_route", default_v6)] {
        let text = std::fs::read_to_string(Path::new(file)).unwrap_or_default();
        for interface in text.lines().filter_map(parse) {
            if !found.contains(&interface) {
                found.push(interface);
            }
        }
    }
    found
}

/// A `/proc/net/route` line for 0.0.0.0/0: `Iface Destination Gateway Flags ... Mask ...`.
fn default_v4(line: &str) -> Option<String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000" && fields[0] != "Iface").then(|| fields[0].to_string())
}

/// A `/proc/net/ipv6_route` line for ::/0 that is not the unreachable route on `lo`.
fn default_v6(line: &str) -> Option<String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields.len() == 10 && fields[0].bytes().all(|b| b == b'0') && fields[1] == "00" && fields[9] != "lo").then(|| fields[9].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(mode: DatapathMode, interfaces: &[&str], missing: Option<&str>) -> DatapathOptions {
        DatapathOptions {
            mode,
            node: "edge".into(),
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
            missing_capability: missing.map(str::to_string),
        }
    }

    fn eth0() -> Vec<String> {
        vec!["eth0".into()]
    }

    #[test]
    fn auto_runs_the_agent_when_the_files_hold_rules() {
        assert_eq!(decide(&options(DatapathMode::Auto, &[], None), 0, eth0), Ok(Decision::Quiet));
        let run = decide(&options(DatapathMode::Auto, &[], None), 2, eth0);
        assert_eq!(run, Ok(Decision::Run(AgentPlan { node: "edge".into(), interfaces: eth0() })));
        let named = decide(&options(DatapathMode::Auto, &["veth1", "veth2"], None), 2, eth0);
        assert!(matches!(named, Ok(Decision::Run(a)) if a.interfaces == ["veth1", "veth2"]));
        assert_eq!(decide(&options(DatapathMode::Off, &[], None), 2, eth0), Ok(Decision::Quiet));
        assert!(matches!(decide(&options(DatapathMode::On, &[], None), 0, eth0), Ok(Decision::Run(_))));
    }

    #[test]
    fn without_the_capability_auto_carries_on_and_on_refuses() {
        let skipped = decide(&options(DatapathMode::Auto, &[], Some("CAP_NET_ADMIN")), 1, eth0);
        assert_eq!(
            skipped,
            Ok(Decision::Skip(
                "the datapath agent needs CAP_NET_ADMIN (run as root, or grant CAP_NET_ADMIN and CAP_BPF); \
                 the 1 DatapathRule(s) in the files are stored but not programmed on this node"
                    .into()
            ))
        );
        let refused = decide(&options(DatapathMode::On, &[], Some("CAP_NET_ADMIN")), 1, eth0).unwrap_err();
        assert!(refused.starts_with("--datapath on: the datapath agent needs CAP_NET_ADMIN"), "{refused}");
        let nowhere = decide(&options(DatapathMode::On, &[], None), 1, Vec::new).unwrap_err();
        assert!(nowhere.contains("--datapath-interface"), "{nowhere}");
    }

    #[test]
    fn default_routes_are_read_from_proc() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0";
        assert_eq!(v4.lines().filter_map(default_v4).collect::<Vec<_>>(), ["eth0"]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 wlan0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 wlan0";
        assert_eq!(v6.lines().filter_map(default_v6).collect::<Vec<_>>(), ["wlan0"]);
    }
}
