use std::collections::BTreeMap;
use std::time::Duration;

use trefoil_api::flows::{Flow, FlowReport, RuleCounter};
use trefoil_api::traces::Span;
use trefoil_model::spec::{DatapathAction, Protocol};

use super::metrics::FlowMetrics;
use super::store::ReportError;
use super::*;

const SECOND: u64 = 1_000_000_000;

fn flow(src: &str, dst: &str, rule: &str, start_s: u64, end_s: u64, bytes: u64) -> Flow {
    Flow {
        node: String::new(),
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: Protocol::Tcp,
        rule: rule.into(),
        action: DatapathAction::Redirect,
        bytes,
        packets: bytes / 100,
        start_unix_nano: start_s * SECOND,
        end_unix_nano: end_s * SECOND,
    }
}

fn report(node: &str, flows: Vec<Flow>) -> FlowReport {
    FlowReport { node: node.into(), flows, counters: Vec::new(), dropped: 0 }
}

fn store(flows_per_node: usize, nodes: usize) -> (FlowStore, prometheus_client::registry::Registry) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = FlowMetrics::register(&mut registry);
    (FlowStore::new(Caps { flows_per_node, nodes, ttl: Duration::from_secs(600) }, metrics), registry)
}

fn metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

#[test]
fn a_flow_reported_again_is_updated_not_doubled() {
    let (store, registry) = store(10, 10);
    store.report(report("edge", vec![flow("10.0.1.2:40112", "10.0.2.5:80", "web", 100, 101, 300)])).unwrap();
    // The same first packet, read a few microseconds apart by the agent's clock conversion.
    let mut again = flow("10.0.1.2:40112", "10.0.2.5:80", "web", 100, 105, 3100);
    again.start_unix_nano += 7_000;
    store.report(report("edge", vec![again])).unwrap();
    let held = store.list(None, 10);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0].node.as_str(), held[0].bytes, held[0].start_unix_nano), ("edge", 3100, 100 * SECOND));
    let text = metrics(&registry);
    assert!(text.contains("trefoil_datapath_flows_total{rule=\"web\",node=\"edge\",action=\"redirect\"} 1\n"), "{text}");
    // The same tuple a minute later is another connection.
    store.report(report("edge", vec![flow("10.0.1.2:40112", "10.0.2.5:80", "web", 160, 161, 100)])).unwrap();
    assert_eq!(store.len(), 2);
}

#[test]
fn each_node_holds_its_most_recent_flows_and_the_quietest_node_goes_first() {
    let (store, registry) = store(3, 2);
    let many: Vec<Flow> = (0..5).map(|i| flow(&format!("10.0.1.2:{}", 40000 + i), "10.0.2.5:80", "web", i, i + 1, 100)).collect();
    let accepted = store.report(FlowReport { dropped: 4, ..report("a", many) }).unwrap();
    assert_eq!((accepted.accepted, accepted.evicted), (5, 2));
    let ports: Vec<u16> = store.list(None, 10).iter().map(|f| f.src.port()).collect();
    assert_eq!(ports, [40004, 40003, 40002], "the least recently updated went");
    assert!(metrics(&registry).contains("trefoil_datapath_flow_records_dropped_total{node=\"a\"} 6\n"), "4 by the agent, 2 here");
    store.report(report("b", vec![flow("10.0.1.3:1", "10.0.2.5:80", "web", 9, 9, 1)])).unwrap();
    store.report(report("a", vec![])).unwrap();
    store.report(report("c", vec![flow("10.0.1.4:1", "10.0.2.5:80", "web", 9, 9, 1)])).unwrap();
    let nodes: std::collections::BTreeSet<String> = store.list(None, 10).into_iter().map(|f| f.node).collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["a", "c"], "b reported least recently");
    assert_eq!(store.list(Some("other"), 10), Vec::<Flow>::new());
    assert_eq!(store.list(None, 2).len(), 2);
}

#[test]
fn flows_expire_after_their_ttl() {
    let mut registry = prometheus_client::registry::Registry::default();
    let caps = Caps { flows_per_node: 10, nodes: 10, ttl: Duration::ZERO };
    let store = FlowStore::new(caps, FlowMetrics::register(&mut registry));
    store.report(report("edge", vec![flow("10.0.1.2:1", "10.0.2.5:80", "web", 1, 2, 1)])).unwrap();
    assert!(store.list(None, 10).is_empty(), "a TTL of zero keeps nothing visible");
    store.report(report("edge", vec![])).unwrap();
    assert!(store.is_empty(), "expired flows are removed at the node's next report");
}

#[test]
fn counters_count_what_rose_since_the_last_report() {
    let (store, registry) = store(10, 10);
    let counter = |rule: &str, action, packets, bytes| RuleCounter { rule: rule.into(), action, packets, bytes };
    let with = |counters| FlowReport { counters, ..report("edge", vec![]) };
    store.report(with(vec![counter("web", DatapathAction::Redirect, 10, 1000), counter("block", DatapathAction::Drop, 3, 180)])).unwrap();
    store.report(with(vec![counter("web", DatapathAction::Redirect, 14, 3100), counter("block", DatapathAction::Drop, 5, 300)])).unwrap();
    // Applied anew (its counter went back): what it has now is new.
    store.report(with(vec![counter("block", DatapathAction::Drop, 1, 60)])).unwrap();
    let text = metrics(&registry);
    for line in [
        "trefoil_datapath_bytes_total{rule=\"web\",node=\"edge\",action=\"redirect\"} 3100\n",
        "trefoil_datapath_bytes_total{rule=\"block\",node=\"edge\",action=\"drop\"} 360\n",
        "trefoil_datapath_drops_total{rule=\"block\",node=\"edge\"} 6\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(!text.contains("trefoil_datapath_drops_total{rule=\"web\""), "a redirect drops nothing: {text}");
}

#[test]
fn reports_too_large_or_without_a_node_are_refused() {
    let (store, _registry) = store(10, 10);
    assert_eq!(store.report(report("", vec![])), Err(ReportError::Node));
    let many = vec![flow("10.0.1.2:1", "10.0.2.5:80", "web", 1, 2, 1); store::MAX_FLOWS_PER_REPORT + 1];
    assert_eq!(store.report(report("edge", many)), Err(ReportError::TooManyFlows(store::MAX_FLOWS_PER_REPORT + 1)));
}

fn hop_span(client: &str, original: Option<&str>, start_s: u64, end_s: u64) -> Span {
    let client: std::net::SocketAddr = client.parse().unwrap();
    let mut attributes = BTreeMap::from([
        (correlate::CLIENT_ADDRESS.to_string(), client.ip().to_string()),
        (correlate::CLIENT_PORT.to_string(), client.port().to_string()),
    ]);
    if let Some(original) = original {
        attributes.insert(correlate::ORIGINAL_DESTINATION.to_string(), original.to_string());
    }
    Span {
        trace_id: "01".repeat(16),
        span_id: "02".repeat(8),
        parent_span_id: None,
        name: "GET through".into(),
        service: "node".into(),
        start_unix_nano: start_s * SECOND,
        end_unix_nano: end_s * SECOND,
        error: false,
        attributes,
        events: Vec::new(),
    }
}

#[test]
fn a_trace_finds_the_flows_of_its_connection_by_tuple_and_time() {
    let (store, _registry) = store(10, 10);
    store
        .report(report(
            "edge",
            vec![
                flow("10.0.1.2:40112", "10.0.2.5:80", "web", 100, 130, 3100),
                // The reply direction of the same connection.
                flow("10.0.2.5:80", "10.0.1.2:40112", "web", 100, 130, 900),
                // Another client; the same client's earlier connection on that port.
                flow("10.0.1.3:40112", "10.0.2.5:80", "web", 100, 130, 1),
                flow("10.0.1.2:40112", "10.0.2.5:80", "web", 10, 20, 1),
            ],
        ))
        .unwrap();
    let joined = correlate::flows_of(&[hop_span("10.0.1.2:40112", Some("10.0.2.5:80"), 110, 111)], &store);
    let bytes: Vec<u64> = joined.iter().map(|f| f.bytes).collect();
    assert_eq!(bytes.len(), 2, "{joined:?}");
    assert!(bytes.contains(&3100) && bytes.contains(&900), "{joined:?}");
    assert!(correlate::flows_of(&[hop_span("10.0.1.2:40112", None, 110, 111)], &store).is_empty(), "not a redirected connection");
    assert!(correlate::flows_of(&[hop_span("10.0.1.2:40112", Some("10.0.2.5:80"), 50, 60)], &store).is_empty(), "no flow then");
}
