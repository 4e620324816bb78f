//! A trace as an indented call tree in time order: each span under its
//! parent, one line each with its offset from the trace's start and its
//! duration, so a request's path through gateway, chain steps, sidecars and
//! onward calls reads top to bottom.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// The fields of a span the tree needs, read leniently from the API's JSON.
struct Node<'a> {
    span: &'a Value,
    id: &'a str,
    parent: Option<&'a str>,
    start: u64,
    end: u64,
}

fn nanos(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()).unwrap_or(0)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a str {
    span["attributes"][key].as_str().unwrap_or("")
}

/// What a span was, in a few words: a chain step by its function, mode and
/// verdict; a proxy hop by its proxy, direction, request and status.
pub(crate) fn label(span: &Value) -> String {
    let service = span["service"].as_str().unwrap_or("?");
    let name = span["name"].as_str().unwrap_or("");
    let failed = if span["error"] == true { " [error]" } else { "" };
    let function = attr(span, "trefoil.function");
    if !function.is_empty() {
        return format!(
            "{service}: chain {} -> {function} ({}) {}{failed}",
            attr(span, "trefoil.cnf"),
            attr(span, "trefoil.step.mode"),
            attr(span, "trefoil.verdict")
        );
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
        if let Some(tags) = span["attributes"].as_object() {
            for (key, value) in tags.iter().filter(|(k, _)| k.starts_with("tag.")) {
                line.push_str(&format!(" {}={}", &key[4..], value.as_str().unwrap_or("")));
            }
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
pub(crate) fn render(spans: &[Value]) -> Vec<String> {
    let nodes: Vec<Node<'_>> = spans
        .iter()
        .map(|s| Node {
            span: s,
            id: s["spanId"].as_str().unwrap_or(""),
            parent: s["parentSpanId"].as_str(),
            start: nanos(&s["startUnixNano"]),
            end: nanos(&s["endUnixNano"]),
        })
        .collect();
    let Some(t0) = nodes.iter().map(|n| n.start).min() else { return Vec::new() };
    let ids: HashSet<&str> = nodes.iter().map(|n| n.id).collect();
    let mut children: HashMap<Option<&str>, Vec<&Node<'_>>> = HashMap::new();
    for n in &nodes {
        // A span whose parent was not collected (the client's own span) starts a tree.
        let parent = n.parent.filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(n);
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    }
    let mut out = Vec::new();
    let mut stack: Vec<(&Node<'_>, usize)> = children.get(&None).into_iter().flatten().rev().map(|n| (*n, 0)).collect();
    // Bounded by the span count: each span is pushed once, as a child of its one parent.
    let mut visited: HashSet<&str> = HashSet::new();
    while let Some((n, depth)) = stack.pop() {
        if !visited.insert(n.id) {
            continue;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        out.push(format!("+{:>9.3}ms {:>9.3}ms  {}{}", ms(n.start - t0), ms(n.end - n.start), "  ".repeat(depth), label(n.span)));
        for e in n.span["events"].as_array().into_iter().flatten() {
            let data = e["attributes"]["data"].as_str().map(|d| format!(" {d}")).unwrap_or_default();
            out.push(format!(
                "+{:>9.3}ms {:>11}  {}  event {}{data}",
                ms(nanos(&e["timeUnixNano"]).saturating_sub(t0)),
                "",
                "  ".repeat(depth),
                e["name"].as_str().unwrap_or("")
            ));
        }
        for child in children.get(&Some(n.id)).into_iter().flatten().rev() {
            stack.push((child, depth + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn span(id: &str, parent: Option<&str>, start: u64, end: u64, attributes: Value) -> Value {
        let mut s = json!({"spanId": id, "service": "edge", "name": "GET edge", "startUnixNano": start.to_string(), "endUnixNano": end.to_string(), "attributes": attributes});
        if let Some(p) = parent {
            s["parentSpanId"] = json!(p);
        }
        s
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
        failed["error"] = json!(true);
        assert_eq!(label(&failed), "edge: attempt 1 -> web v1 at 127.0.0.1:1 503 status, retried [error]");
        assert!(lines[0].starts_with("+    0.000ms     8.000ms  edge inbound: GET / -> 200 via web"), "{lines:?}");
        assert!(lines[1].contains("    edge: chain scan -> scanner (callout) allow"), "{lines:?}");
        assert!(lines[1].starts_with("+    1.000ms"), "{lines:?}");
        assert!(lines[2].starts_with("+    3.000ms     4.000ms    edge outbound"), "{lines:?}");
        assert!(lines[2].ends_with("-> 503 (3 attempts)"), "{lines:?}");
        assert!(!lines[0].contains("attempts"), "{lines:?}");
    }
}
