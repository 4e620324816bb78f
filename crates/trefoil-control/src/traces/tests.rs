use std::time::{Duration, UNIX_EPOCH};

use trefoil_proxy::otlp::{encode, SpanRecord};

use super::*;

fn record(trace: u8, span: u8, parent: Option<u8>, start_ms: u64, end_ms: u64) -> SpanRecord {
    SpanRecord {
        trace_id: [trace; 16],
        span_id: [span; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        name: format!("span {span}"),
        start: UNIX_EPOCH + Duration::from_millis(start_ms),
        end: UNIX_EPOCH + Duration::from_millis(end_ms),
        error: span == 0xee,
        attributes: vec![("trefoil.cnf", "scan".into())],
        extra_attributes: vec![("tag.user".into(), "ann".into())],
        events: Vec::new(),
    }
}

fn decoded(service: &str, records: &[SpanRecord]) -> Vec<Span> {
    let out = otlp::decode(&encode(service, records)).expect("the proxy's encoding decodes");
    assert_eq!(out.rejected, 0);
    out.spans
}

#[test]
fn decodes_what_proxies_export() {
    let mut r = record(1, 2, Some(3), 1_000, 1_250);
    r.events.push(trefoil_proxy::otlp::SpanEventRecord {
        name: "virus_found".into(),
        time: UNIX_EPOCH + Duration::from_millis(1_100),
        attributes: vec![("data", "{\"sig\":\"x\"}".into())],
    });
    let spans = decoded("edge", &[r]);
    let s = &spans[0];
    assert_eq!(s.trace_id, "01".repeat(16));
    assert_eq!(s.span_id, "02".repeat(8));
    assert_eq!(s.parent_span_id.as_deref(), Some("0303030303030303"));
    assert_eq!(s.service, "edge");
    assert_eq!((s.start_unix_nano, s.end_unix_nano), (1_000_000_000, 1_250_000_000));
    assert_eq!(s.duration_ms(), 250.0);
    assert_eq!(s.attributes["trefoil.cnf"], "scan");
    assert_eq!(s.attributes["tag.user"], "ann", "attributes with run-time keys arrive too");
    assert!(!s.error);
    assert_eq!(s.events[0].name, "virus_found");
    assert_eq!(s.events[0].attributes["data"], "{\"sig\":\"x\"}");
    assert_eq!(s.events[0].time_unix_nano, 1_100_000_000);
}

#[test]
fn rejects_spans_without_ids_and_bodies_that_are_not_otlp() {
    let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"00000000000000000000000000000000","spanId":"0102030405060708","startTimeUnixNano":"1"},{"traceId":"xyz","spanId":"01","startTimeUnixNano":1},{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","startTimeUnixNano":5,"status":{"code":2}}]}]}]}"#;
    let out = otlp::decode(body).unwrap();
    assert_eq!(out.rejected, 2);
    assert_eq!(out.spans.len(), 1);
    assert!(out.spans[0].error);
    assert_eq!(out.spans[0].service, "");
    assert!(matches!(otlp::decode(b"[1,2]"), Err(otlp::DecodeError::Shape)));
    // A malformed envelope is refused whole, naming where.
    for (body, at) in [
        (&br#"{"resourceSpans":[[null,null]]}"#[..], "resourceSpans[0]"),
        (br#"{"resourceSpans":[{"resource":null}]}"#, "resourceSpans[0].resource"),
        (br#"{"resourceSpans":[{"resource":{"attributes":{}}}]}"#, "resourceSpans[0].resource.attributes"),
        (br#"{"resourceSpans":[{"scopeSpans":{}}]}"#, "resourceSpans[0].scopeSpans"),
        (br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{},7]}]}]}"#, "resourceSpans[0].scopeSpans[0].spans[1]"),
    ] {
        match otlp::decode(body) {
            Err(otlp::DecodeError::Malformed { at: got, .. }) => assert_eq!(got, at),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
    assert_eq!(
        otlp::decode(br#"{"resourceSpans":[{},{"scopeSpans":[{}]}]}"#).unwrap().spans.len(),
        0,
        "absent parts are empty, not malformed"
    );
    assert!(matches!(otlp::decode(b"not json"), Err(otlp::DecodeError::Json(_))));
}

#[test]
fn a_trace_is_served_in_start_order_with_its_root_summarized() {
    let store = TraceStore::default();
    // Arrive out of order, as spans do: a hop's span ends (and is sent) after its children's.
    store.insert(decoded("api-0", &[record(7, 3, Some(2), 120, 150)]));
    store.insert(decoded("edge", &[record(7, 1, Some(9), 100, 200), record(7, 2, Some(1), 110, 190)]));
    let spans = store.trace(&"07".repeat(16)).unwrap();
    let ids: Vec<&str> = spans.iter().map(|s| &s.span_id[..2]).collect();
    assert_eq!(ids, ["01", "02", "03"]);
    let recent = store.recent(10);
    assert_eq!(recent.len(), 1);
    let t = &recent[0];
    // Span 1's parent (the client's span) is not in the trace: it is the root.
    assert_eq!((t.root.as_str(), t.service.as_str(), t.spans, t.status), ("span 1", "edge", 3, trefoil_api::traces::TraceStatus::Ok));
    assert_eq!(t.duration_ms, 100.0);
    assert!(store.trace(&"08".repeat(16)).is_none());
}

#[test]
fn the_span_cap_evicts_the_oldest_traces_first() {
    let store = TraceStore::with_caps(4, 100);
    store.insert(decoded("a", &[record(1, 1, None, 0, 1), record(1, 2, Some(1), 0, 1)]));
    store.insert(decoded("b", &[record(2, 1, None, 5, 6), record(2, 2, Some(1), 5, 6)]));
    assert_eq!(store.len(), 4);
    store.insert(decoded("c", &[record(3, 1, None, 9, 10)]));
    assert_eq!(store.len(), 3);
    assert!(store.trace(&"01".repeat(16)).is_none(), "the oldest trace goes");
    assert!(store.trace(&"02".repeat(16)).is_some());
    let newest_first: Vec<String> = store.recent(10).into_iter().map(|t| t.service).collect();
    assert_eq!(newest_first, ["c", "b"]);
    assert_eq!(store.recent(1).len(), 1);
}

#[test]
fn one_trace_cannot_take_more_than_its_share_and_repeats_are_kept_once() {
    let store = TraceStore::with_caps(100, 2);
    let spans = decoded("a", &[record(1, 1, None, 0, 1), record(1, 2, Some(1), 0, 1), record(1, 3, Some(1), 0, 1)]);
    assert_eq!(store.insert(spans.clone()), 1);
    assert_eq!(store.insert(spans[..1].to_vec()), 1, "a re-sent span is not stored twice");
    assert_eq!(store.len(), 2);
}

#[test]
fn followers_get_new_spans() {
    let store = TraceStore::default();
    let mut rx = store.subscribe();
    store.insert(decoded("a", &[record(1, 1, None, 0, 1)]));
    assert_eq!(rx.try_recv().unwrap().span_id, "01".repeat(8));
}

#[test]
fn a_summary_names_the_cnfs_events_and_paths_of_its_spans() {
    let store = TraceStore::default();
    let mut gateway = record(4, 1, None, 100, 200);
    gateway.attributes.push(("url.path", "/upload".into()));
    let mut step = record(4, 2, Some(1), 110, 150);
    step.attributes = vec![("trefoil.cnf", "edge-security".into()), ("trefoil.event", "inspect_done".into())];
    step.events.push(trefoil_proxy::otlp::SpanEventRecord {
        name: "virus_found".into(),
        time: UNIX_EPOCH + Duration::from_millis(120),
        attributes: Vec::new(),
    });
    store.insert(decoded("edge", &[gateway, step]));
    let t = &store.recent(1)[0];
    // `record` tags every span with CNF `scan`; each value once, sorted.
    assert_eq!(t.cnfs, ["edge-security", "scan"]);
    assert_eq!(t.events, ["inspect_done", "virus_found"]);
    assert_eq!(t.paths, ["/upload"]);
}
