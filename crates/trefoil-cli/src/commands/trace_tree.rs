//! A trace as an indented call tree in time order: each span under its
//! parent, one line each with its offset from the trace's start and its
//! duration, so a request's path through gateway, chain steps, sidecars and
//! onward calls reads top to bottom.

use std::collections::{HashMap, HashSet};

use trefoil_api::traces::Span;

fn attr<'a>(span: &'a Span, key: &str) -> &'a str {
    span.attribute(key)
}

/// What a span was, in a few words: a chain step by its function (and
/// phase, as its span is named: `chain inspect response`), CNF, mode and
/// verdict; a handler's call by its function; a proxy hop by its proxy,
/// direction, request and status.
pub(crate) fn label(span: &Span) -> String {
    let (service, name) = (span.service.as_str(), span.name.as_str());
    let failed = if span.error { " [error]" } else { "" };
    let function = attr(span, "trefoil.function");
    if !function.is_empty() {
        let (cnf, mode, verdict) = (attr(span, "trefoil.cnf"), attr(span, "trefoil.step.mode"), attr(span, "trefoil.verdict"));
        if mode == "call" {
            return format!("{service}: call {function} ({cnf}) {verdict}{failed}");
        }
        let phase = if attr(span, "trefoil.step.phase") == "response" { " response" } else { "" };
        return format!("{service}: chain {function}{phase} ({cnf}, {mode}) {verdict}{failed}");
    }
    let attempt = attr(span, "trefoil.attempt");
    if !attempt.is_empty() {
        let (status, failure) = (attr(span, "trefoil.attempt.status"), attr(span, "trefoil.attempt.failure"));
        let mut line = format!(
            "{service}: attempt {attempt} -> {} {} at {}",
            attr(span, "trefoil.service"),
            attr(span, "trefoil.version"),
            attr(span, "trefoil.upstream")
        );
        for part in [status, failure].into_iter().filter(|p| !p.is_empty()) {
            line.push(' ');
            line.push_str(part);
        }
        if attr(span, "trefoil.retry") == "true" {
            line.push_str(", retried");
        }
        return line + failed;
    }
    let event = attr(span, "trefoil.event");
    if !event.is_empty() {
        let mut line = format!(
            "{service}: handler {} {event} (on {}) {}",
            attr(span, "trefoil.cnf"),
            attr(span, "trefoil.handler.on"),
            attr(span, "trefoil.handler.result")
        );
        for (key, value) in span.attributes.iter().filter(|(k, _)| k.starts_with("tag.")) {
            line.push_str(&format!(" {}={value}", &key[4..]));
        }
        return line + failed;
    }
    let status = attr(span, "http.response.status_code");
    if status.is_empty() {
        return format!("{service}: {name}{failed}");
    }
    let direction = attr(span, "trefoil.direction");
    let (method, path) = (attr(span, "http.request.method"), attr(span, "url.path"));
    let mut line = format!("{service} {direction}: {method} {path} -> {status}");
    let (target, upstream) = (attr(span, "trefoil.service"), attr(span, "trefoil.upstream"));
    if !target.is_empty() {
        line.push_str(&format!(" via {target}"));
        let version = attr(span, "trefoil.version");
        if !version.is_empty() {
            line.push_str(&format!(" {version}"));
        }
    }
    if !upstream.is_empty() {
        line.push_str(&format!(" at {upstream}"));
    }
    // Retries are worth a look; a single attempt is the norm and goes unsaid.
    let attempts = attr(span, "trefoil.attempts");
    if attempts.parse::<u32>().is_ok_and(|n| n > 1) {
        line.push_str(&format!(" ({attempts} attempts)"));
    }
    line.push_str(failed);
    line
}

/// The tree's lines: `+offset duration  indent label`, events under their span.
pub(crate) fn render(spans: &[Span]) -> Vec<String> {
    let Some(t0) = spans.iter().map(|n| n.start_unix_nano).min() else { return Vec::new() };
    let ids: HashSet<&str> = spans.iter().map(|n| n.span_id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&Span>> = HashMap::new();
    for n in spans {
        // A span whose parent was not collected (the client's own span) starts a tree.
        let parent = n.parent_span_id.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(n);
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.start_unix_nano.cmp(&b.start_unix_nano).then(b.end_unix_nano.cmp(&a.end_unix_nano)));
    }
    let mut out = Vec::new();
    let mut stack: Vec<(&Span, usize)> = children.get(&None).into_iter().flatten().rev().map(|n| (*n, 0)).collect();
    // Bounded by the span count: each span is pushed once, as a child of its one parent.
    let mut visited: HashSet<&str> = HashSet::new();
    while let Some((n, depth)) = stack.pop() {
        if !visited.insert(n.span_id.as_str()) {
            continue;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        out.push(format!(
            "+{:>9.3}ms {:>9.3}ms  {}{}",
            ms(n.start_unix_nano - t0),
            ms(n.end_unix_nano.saturating_sub(n.start_unix_nano)),
            "  ".repeat(depth),
            label(n)
        ));
        for e in &n.events {
            let data = e.attributes.get("data").map(|d| format!(" {d}")).unwrap_or_default();
            out.push(format!(
                "+{:>9.3}ms {:>11}  {}  event {}{data}",
                ms(e.time_unix_nano.saturating_sub(t0)),
                "",
                "  ".repeat(depth),
                e.name
            ));
        }
        for child in children.get(&Some(n.span_id.as_str())).into_iter().flatten().rev() {
            stack.push((child, depth + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn span(id: &str, parent: Option<&str>, start: u64, end: u64, attributes: Value) -> Span {
        Span {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            name: "GET edge".into(),
            service: "edge".into(),
            start_unix_nano: start,
            end_unix_nano: end,
            error: false,
            attributes: serde_json::from_value(attributes).unwrap(),
            events: vec![],
        }
    }

    #[test]
    fn children_are_indented_under_their_parent_in_time_order() {
        let hop = json!({"http.response.status_code": "200", "trefoil.direction": "inbound", "http.request.method": "GET", "url.path": "/", "trefoil.service": "web", "trefoil.attempts": "1"});
        let step =
            json!({"trefoil.function": "scanner", "trefoil.cnf": "scan", "trefoil.step.mode": "callout", "trefoil.verdict": "allow"});
        let handler = json!({"trefoil.cnf": "scan", "trefoil.event": "checked", "trefoil.handler.on": "allow", "trefoil.handler.result": "ok", "tag.user": "ann"});
        let spans = vec![
            span("a", Some("client"), 1_000_000, 9_000_000, hop),
            span(
                "c",
                Some("a"),
                4_000_000,
                8_000_000,
                json!({"http.response.status_code": "503", "trefoil.direction": "outbound", "trefoil.attempts": "3"}),
            ),
            span("b", Some("a"), 2_000_000, 3_000_000, step),
            span("h", Some("a"), 3_000_000, 3_500_000, handler),
        ];
        let lines = render(&spans);
        assert_eq!(lines.len(), 4);
        assert!(lines[2].ends_with("    edge: handler scan checked (on allow) ok user=ann"), "{lines:?}");
        let lines = [lines[0].clone(), lines[1].clone(), lines[3].clone()];
        let attempt = json!({"trefoil.attempt": "1", "trefoil.service": "web", "trefoil.version": "v1", "trefoil.upstream": "127.0.0.1:1", "trefoil.attempt.status": "503", "trefoil.attempt.failure": "status", "trefoil.retry": "true"});
        let mut failed = span("t", Some("a"), 1, 2, attempt);
        failed.error = true;
        assert_eq!(label(&failed), "edge: attempt 1 -> web v1 at 127.0.0.1:1 503 status, retried [error]");
        assert!(lines[0].starts_with("+    0.000ms     8.000ms  edge inbound: GET / -> 200 via web"), "{lines:?}");
        assert!(lines[1].contains("    edge: chain scanner (scan, callout) allow"), "{lines:?}");
        assert!(lines[1].starts_with("+    1.000ms"), "{lines:?}");
        assert!(lines[2].starts_with("+    3.000ms     4.000ms    edge outbound"), "{lines:?}");
        assert!(lines[2].ends_with("-> 503 (3 attempts)"), "{lines:?}");
        assert!(!lines[0].contains("attempts"), "{lines:?}");
    }

    #[test]
    fn response_steps_and_handler_calls_read_as_their_spans_are_named() {
        let response = json!({"trefoil.function": "inspect", "trefoil.cnf": "edge", "trefoil.step.mode": "callout", "trefoil.step.phase": "response", "trefoil.verdict": "allow"});
        assert_eq!(label(&span("r", None, 1, 2, response)), "edge: chain inspect response (edge, callout) allow");
        let call = json!({"trefoil.function": "antivirus", "trefoil.cnf": "edge", "trefoil.step.mode": "call", "trefoil.step.phase": "handler", "trefoil.verdict": "deny"});
        assert_eq!(label(&span("c", None, 1, 2, call)), "edge: call antivirus (edge) deny");
    }
}
