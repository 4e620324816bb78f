//! The table against the rules as written: the winner the kernel's first
//! match picks is the one the precedence rule names.

use std::cmp::Reverse;
use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::datapath::compact;

fn rule(text: &str, priority: i32, source: &[&str]) -> DatapathRuleSpec {
    let mut spec = compact::parse(text).unwrap().into_spec();
    spec.priority = priority;
    spec.traffic.source = source.iter().map(|s| s.parse().unwrap()).collect();
    spec
}

fn flow(text: &str, from: Option<&str>) -> Flow {
    Flow { source: from.map(|f| f.parse().unwrap()), ..text.parse().unwrap() }
}

#[test]
fn priority_then_destination_then_source_then_ports_then_name() {
    let specs = [
        ("broad", rule("10.0.0.0/16 * : redirect => app=proxy", 0, &[])),
        ("narrow", rule("10.0.2.0/24 80 : copy => app=ids", 0, &[])),
        ("from-client", rule("10.0.2.0/24 80 : drop", 0, &["10.0.1.2"])),
        ("wide-ports", rule("10.0.2.0/24 1-1000 : drop", 0, &[])),
        ("urgent", rule("10.0.0.0/8 * : drop", 10, &[])),
        ("b-tie", rule("10.0.2.0/24 80 : drop", 0, &[])),
    ];
    let rules: Vec<Rule<'_>> = specs.iter().map(|(name, spec)| Rule { name, spec }).collect();
    let d = explain(&rules, &flow("10.0.2.5:80/tcp", Some("10.0.1.2")));
    assert_eq!(d.winner.as_ref().unwrap().rule, "urgent");
    let lost: Vec<(&str, &str)> = d.shadowed.iter().map(|v| (v.rule.as_str(), v.why.as_str())).collect();
    assert_eq!(
        lost,
        [
            ("from-client", "priority 0 is below urgent's 10"),
            ("b-tie", "priority 0 is below urgent's 10"),
            ("narrow", "priority 0 is below urgent's 10"),
            ("wide-ports", "priority 0 is below urgent's 10"),
            ("broad", "priority 0 is below urgent's 10"),
        ]
    );
    let without_urgent: Vec<Rule<'_>> = rules.iter().copied().filter(|r| r.name != "urgent").collect();
    let d = explain(&without_urgent, &flow("10.0.2.5:80", Some("10.0.1.2")));
    assert_eq!(d.winner.as_ref().unwrap().rule, "from-client");
    let why: Vec<&str> = d.shadowed.iter().map(|v| v.why.as_str()).collect();
    assert_eq!(
        why,
        [
            "source any is less specific than from-client's 10.0.1.2/32",
            "source any is less specific than from-client's 10.0.1.2/32",
            "source any is less specific than from-client's 10.0.1.2/32",
            "destination 10.0.0.0/16 is less specific than from-client's 10.0.2.0/24",
        ]
    );
    // Without a source, the source-bound rule depends on it.
    let d = explain(&without_urgent, &flow("10.0.2.5:80", None));
    assert_eq!(d.winner.as_ref().unwrap().rule, "b-tie");
    assert_eq!(d.depends_on_source[0].rule, "from-client");
    assert_eq!(d.depends_on_source[0].why, "wins over b-tie for traffic from 10.0.1.2/32");
    assert_eq!(d.shadowed[0].why, "ties with b-tie on priority and specificity; the name narrow sorts after it");
    assert_eq!(d.shadowed[1].why, "ports 1-1000 are wider than b-tie's 80");
    // Nothing matches elsewhere, or another protocol.
    assert_eq!(explain(&rules, &flow("192.0.2.1:80", None)), Decision::default());
    assert_eq!(explain(&without_urgent, &flow("10.0.2.5:80/udp", None)), Decision::default());
}

#[test]
fn the_table_expands_lists_and_skips_mixed_families() {
    let spec = rule("10.0.2.0/24,fd00::/64 80,443 : redirect => app=proxy", 0, &["10.0.1.0/24"]);
    let table = compile(&[Rule { name: "r", spec: &spec }], |to| vec![to.to_string()]);
    assert_eq!(table.len(), 2, "the IPv6 destination meets no IPv4 source: {table:#?}");
    assert!(table.iter().all(|e| e.targets == ["app=proxy"] && e.destination.unwrap().family() == crate::datapath::Family::Ipv4));
    assert_eq!(table[0].family(), Some(crate::datapath::Family::Ipv4));
    let mut pinned = rule("fd00::/64 80 : drop", 0, &[]);
    pinned.node = Some("edge-1".into());
    let table = compile(&[Rule { name: "p", spec: &pinned }], |_| Vec::<()>::new());
    assert!(table[0].is_for("edge-1") && !table[0].is_for("edge-2"));
    assert_eq!(table[0].family(), Some(crate::datapath::Family::Ipv6));
    let drop = rule("10.0.2.0/24 80 : drop", 0, &[]);
    let table = compile(&[Rule { name: "d", spec: &drop }], |_| vec!["never asked"]);
    assert!(table[0].targets.is_empty(), "a drop resolves no targets");
}

#[test]
fn overlaps_name_who_wins_where_rules_meet() {
    let broad = rule("10.0.0.0/16 * : redirect => app=proxy", 0, &[]);
    let narrow = rule("10.0.2.0/24 80 : drop", 0, &[]);
    let apart = rule("10.1.0.0/16 80 : drop", 0, &[]);
    let udp = rule("10.0.2.0/24 80/udp : drop", 0, &[]);
    let rules = [
        Rule { name: "broad", spec: &broad },
        Rule { name: "narrow", spec: &narrow },
        Rule { name: "apart", spec: &apart },
        Rule { name: "udp", spec: &udp },
    ];
    let o = overlaps(&rules, "broad");
    assert_eq!(o.len(), 1, "{o:#?}");
    assert_eq!((o[0].rule.as_str(), o[0].wins), ("narrow", false));
    assert_eq!(o[0].why, "destination 10.0.0.0/16 is less specific than narrow's 10.0.2.0/24");
    let o = overlaps(&rules, "narrow");
    assert_eq!((o[0].rule.as_str(), o[0].wins), ("broad", true));
}

#[test]
fn flows_parse_both_families_and_protocols() {
    let f: Flow = "[fd00::5]:443/udp".parse().unwrap();
    assert_eq!((f.destination, f.port, f.protocol), ("fd00::5".parse::<IpAddr>().unwrap(), 443, Protocol::Udp));
    assert!("10.0.2.5".parse::<Flow>().is_err());
    assert!("10.0.2.5:0".parse::<Flow>().is_err());
    assert!("10.0.2.5:80/sctp".parse::<Flow>().is_err());
    assert_eq!(flow("10.0.2.5:80", Some("10.0.1.2")).to_string(), "10.0.2.5:80/tcp from 10.0.1.2");
}

/// The precedence rule written directly against the specs, not the table.
fn reference_order(specs: &[(String, DatapathRuleSpec)], f: &Flow) -> Vec<String> {
    let mut keyed = Vec::new();
    for (name, spec) in specs {
        let m = &spec.traffic;
        if m.protocol != f.protocol {
            continue;
        }
        let any_src = m.source.is_empty();
        let any_dst = m.destination.is_empty();
        let src_len: Option<u8> = if any_src {
            Some(0)
        } else {
            m.source.iter().filter(|c| f.source.is_some_and(|s| c.contains(s))).map(|c| c.prefix_len()).max()
        };
        let dst_len: Option<u8> =
            if any_dst { Some(0) } else { m.destination.iter().filter(|c| c.contains(f.destination)).map(|c| c.prefix_len()).max() };
        let width: Option<u32> =
            if m.ports.is_empty() { Some(65535) } else { m.ports.iter().filter(|p| p.contains(f.port)).map(|p| p.width()).min() };
        if let (Some(s), Some(d), Some(w)) = (src_len, dst_len, width) {
            keyed.push(((Reverse(spec.priority), Reverse(d), Reverse(s), w, name.clone()), name.clone()));
        }
    }
    keyed.sort();
    keyed.into_iter().map(|(_, n)| n).collect()
}

fn block_near() -> impl Strategy<Value = Cidr> {
    // Few addresses and prefixes, so that rules overlap often.
    (0u32..4, prop_oneof![Just(8u8), Just(16), Just(24), Just(32)])
        .prop_map(|(i, p)| Cidr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, i as u8, 5)), p).unwrap())
}

fn spec_strategy() -> impl Strategy<Value = DatapathRuleSpec> {
    (
        proptest::collection::vec(block_near(), 0..3),
        proptest::collection::vec(block_near(), 1..3),
        proptest::collection::vec(prop_oneof![Just((80u16, 80u16)), Just((1, 1000)), Just((79, 81))], 0..2),
        -2i32..3,
    )
        .prop_map(|(source, destination, ports, priority)| {
            let mut spec = rule("10.0.0.0/8 * : drop", priority, &[]);
            spec.traffic.source = source;
            spec.traffic.destination = destination;
            let mut ranges: Vec<PortRange> = Vec::new();
            for (a, b) in ports {
                let r = PortRange::new(a, b).unwrap();
                if !ranges.iter().any(|x| x.first() <= r.last() && r.first() <= x.last()) {
                    ranges.push(r);
                }
            }
            spec.traffic.ports = ranges;
            spec
        })
}

proptest! {
    #[test]
    fn explain_agrees_with_the_rule_as_written(
        specs in proptest::collection::vec(spec_strategy(), 1..6),
        dst in 0u8..4, src in 0u8..4, port in prop_oneof![Just(80u16), Just(500), Just(2000)],
    ) {
        let named: Vec<(String, DatapathRuleSpec)> = specs.into_iter().enumerate().map(|(i, s)| (format!("r{i}"), s)).collect();
        let rules: Vec<Rule<'_>> = named.iter().map(|(n, s)| Rule { name: n, spec: s }).collect();
        let f = Flow {
            source: Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, src, 5))),
            destination: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, dst, 5)),
            port,
            protocol: Protocol::Tcp,
        };
        let d = explain(&rules, &f);
        let got: Vec<String> = d.winner.iter().chain(&d.shadowed).map(|v| v.rule.clone()).collect();
        prop_assert_eq!(got, reference_order(&named, &f));
        prop_assert!(d.depends_on_source.is_empty());
        // The table is in rank order, whatever order the rules came in.
        let mut reversed = rules.clone();
        reversed.reverse();
        prop_assert_eq!(compile(&rules, |_| vec![()]), compile(&reversed, |_| vec![()]));
    }
}

#[test]
fn overlaps_look_at_the_rules_own_lines_only() {
    // 2000 rules of 4 lines each: 8000 lines, a square of 64 million pairs;
    // the rule's own lines against the rest is 32 000.
    let specs: Vec<(String, DatapathRuleSpec)> = (0..2000u32)
        .map(|i| (format!("r{i:04}"), rule(&format!("10.{}.{}.0/24 80,443,8080,9090 : drop", i / 256, i % 256), 0, &[])))
        .collect();
    let wide = rule("10.0.0.0/8 80 : drop", 0, &[]);
    let mut rules: Vec<Rule<'_>> = specs.iter().map(|(name, spec)| Rule { name, spec }).collect();
    rules.push(Rule { name: "wide", spec: &wide });
    let o = overlaps(&rules, "wide");
    assert_eq!(o.len(), 2000);
    assert!(o.iter().all(|o| !o.wins), "every /24 is more specific");
    assert_eq!(o[0].why, "destination 10.0.0.0/8 is less specific than r0000's 10.0.0.0/24");
}
