//! The SDK a handler sees: globals `event`, `request`, `cnf`, and the table
//! `trefoil` whose functions record effects (deny, header edits, events,
//! span tags), log under the request's trace id, or call another function.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mlua::{Lua, Table, Value};

use super::budget::{Budget, Stop, STOPPED};
use super::convert::{to_json, to_lua};
use super::{CallOutcome, Caller, DatapathChange, DatapathRule, Effects, RunInput};
use crate::call::{deny_status, Event, Verdict};

/// Raised to stop a run when a called function failed closed; found again by [`unavailable`].
#[derive(Debug, thiserror::Error)]
#[error("network function {0} is unavailable")]
struct Unavailable(String);

/// The function whose closed failure stopped the run, if that is what `e` is.
pub(super) fn unavailable(e: &mlua::Error) -> Option<String> {
    e.chain().find_map(|cause| cause.downcast_ref::<Unavailable>()).map(|u| u.0.clone())
}

/// Header names and values a script passes must be short text; the proxy checks them again.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// What one run may leave for the proxy to apply, log and keep: host memory
/// the Lua memory limit does not see, so each kind is bounded on its own.
const MAX_HEADER_EDITS: usize = 256;
const MAX_EVENTS: usize = 64;
/// Distinct tag keys; a later tag of the same key replaces the value (the span keeps 64 too).
const MAX_TAGS: usize = 64;
const MAX_NAME_BYTES: usize = 256;
/// A log message's bytes at most; longer ones are cut, saying how much was.
const MAX_LOG_BYTES: usize = 4 * 1024;
/// Log lines per run; one more says the rest were dropped.
const MAX_LOG_LINES: usize = 100;
/// A tag value's bytes at most, as for a log message.
const MAX_TAG_BYTES: usize = 1024;
/// Datapath changes per run: each is a write to the control plane's store,
/// so a handler looping over addresses cannot flood it.
const MAX_DATAPATH_CHANGES: usize = 16;
/// A compact form, address, TTL or rule name: bytes at most.
const MAX_DATAPATH_TEXT: usize = 512;
/// Source addresses of one rule at most.
const MAX_DATAPATH_SOURCES: usize = 64;

pub(super) fn install(
    lua: &Lua,
    input: &RunInput,
    effects: Arc<Mutex<Effects>>,
    caller: Arc<dyn Caller>,
    budget: Arc<Budget>,
) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.raw_set("cnf", input.cnf.as_str())?;
    globals.raw_set("event", event_table(lua, &input.event)?)?;
    globals.raw_set("request", request_table(lua, input)?)?;

    let sdk = lua.create_table()?;
    sdk.raw_set("trace_id", input.trace_id.as_str())?;

    let fx = effects.clone();
    sdk.raw_set(
        "deny",
        lua.create_function(move |_, (status, reason): (Option<u32>, Option<String>)| {
            let mut fx = lock(&fx);
            if fx.deny.is_none() {
                fx.deny = Some((deny_status(status), reason.unwrap_or_default()));
            }
            Ok(())
        })?,
    )?;

    let fx = effects.clone();
    sdk.raw_set(
        "set_header",
        lua.create_function(move |_, (name, value): (String, String)| {
            check_len(&name)?;
            check_len(&value)?;
            let mut fx = lock(&fx);
            check_edits(&fx)?;
            fx.set_headers.push((name.to_ascii_lowercase(), value));
            Ok(())
        })?,
    )?;

    let fx = effects.clone();
    sdk.raw_set(
        "remove_header",
        lua.create_function(move |_, name: String| {
            check_len(&name)?;
            let mut fx = lock(&fx);
            check_edits(&fx)?;
            fx.remove_headers.push(name.to_ascii_lowercase());
            Ok(())
        })?,
    )?;

    let (fx, charged) = (effects.clone(), budget.clone());
    sdk.raw_set(
        "emit",
        lua.create_function(move |_, (name, data): (String, Option<Value>)| {
            check_name("event name", &name)?;
            if lock(&fx).events.len() >= MAX_EVENTS {
                return Err(mlua::Error::runtime(format!("more than {MAX_EVENTS} events emitted")));
            }
            let data = match &data {
                Some(data) => json(&charged, data)?,
                None => serde_json::Value::Null,
            };
            lock(&fx).events.push(Event { name, data });
            Ok(())
        })?,
    )?;

    let (fx, charged) = (effects.clone(), budget.clone());
    sdk.raw_set(
        "tag",
        lua.create_function(move |_, (key, value): (String, Value)| {
            check_name("tag key", &key)?;
            let value = match value {
                Value::String(s) => printable(&s.as_bytes(), MAX_TAG_BYTES),
                other => printable(json(&charged, &other)?.to_string().as_bytes(), MAX_TAG_BYTES),
            };
            let mut fx = lock(&fx);
            if let Some(slot) = fx.tags.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = value;
            } else if fx.tags.len() < MAX_TAGS {
                fx.tags.push((key, value));
            }
            Ok(())
        })?,
    )?;

    let (cnf, event, trace_id) = (input.cnf.clone(), input.event.name.clone(), input.trace_id.clone());
    let (lines, charged) = (Arc::new(AtomicUsize::new(0)), budget.clone());
    sdk.raw_set(
        "log",
        lua.create_function(move |_, msg: Value| {
            let line = lines.fetch_add(1, Ordering::Relaxed);
            if line > MAX_LOG_LINES {
                return Ok(());
            }
            let msg = if line == MAX_LOG_LINES {
                format!("(more than {MAX_LOG_LINES} log lines: the rest of this run's are dropped)")
            } else {
                match msg {
                    Value::String(s) => printable(&s.as_bytes(), MAX_LOG_BYTES),
                    other => printable(json(&charged, &other)?.to_string().as_bytes(), MAX_LOG_BYTES),
                }
            };
            tracing::info!(target: "trefoil::chain::handler", cnf = %cnf, event = %event, trace_id = %trace_id, "{msg}");
            Ok(())
        })?,
    )?;

    sdk.raw_set("datapath", datapath_table(lua, input, caller.clone(), budget.clone())?)?;

    let fx = effects;
    sdk.raw_set(
        "call",
        lua.create_async_function(move |lua, function: String| {
            let (fx, caller, budget) = (fx.clone(), caller.clone(), budget.clone());
            async move {
                // A stopped run makes no more calls (its `pcall` may have caught the stop).
                if budget.stop() != Stop::None {
                    return Err(mlua::Error::runtime(STOPPED.to_string_lossy()));
                }
                match caller.call(&function).await {
                    Err(e) => Err(mlua::Error::runtime(e)),
                    Ok(CallOutcome::FailedClosed) => Err(mlua::Error::external(Unavailable(function))),
                    Ok(CallOutcome::FailedOpen(reason)) => Ok((Value::Nil, Value::String(lua.create_string(&reason)?))),
                    Ok(CallOutcome::Verdict(verdict)) => {
                        lock(&fx).absorb(&verdict);
                        Ok((Value::Table(verdict_table(&lua, &verdict)?), Value::Nil))
                    }
                }
            }
        })?,
    )?;
    globals.raw_set("trefoil", sdk)?;
    Ok(())
}

/// `trefoil.datapath`: `add(compact, {source, ttl, priority})`,
/// `drop(source, {ttl, priority})` and `remove(name)`. Each waits for the
/// control plane and returns the rule's name, or `nil, reason` (a refused
/// rule, no control plane); a malformed argument is a script error.
fn datapath_table(lua: &Lua, input: &RunInput, caller: Arc<dyn Caller>, budget: Arc<Budget>) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let sender = Arc::new(DatapathSender {
        caller,
        budget,
        changes: AtomicUsize::new(0),
        origin: DatapathRule {
            origin_cnf: input.cnf.clone(),
            origin_handler: input.event.name.clone(),
            origin_trace_id: input.trace_id.clone(),
            ..DatapathRule::default()
        },
    });

    let send = sender.clone();
    table.raw_set(
        "add",
        lua.create_async_function(move |lua, (compact, options): (String, Option<Table>)| {
            let send = send.clone();
            async move {
                let rule = send.rule(text("compact form", compact)?, options, true)?;
                send.send(&lua, DatapathChange::Add(rule)).await
            }
        })?,
    )?;

    let send = sender.clone();
    table.raw_set(
        "drop",
        lua.create_async_function(move |lua, (source, options): (String, Option<Table>)| {
            let send = send.clone();
            async move {
                let mut rule = send.rule("* * : drop".to_string(), options, false)?;
                rule.source = vec![text("source", source)?];
                send.send(&lua, DatapathChange::Add(rule)).await
            }
        })?,
    )?;

    let send = sender;
    table.raw_set(
        "remove",
        lua.create_async_function(move |lua, name: String| {
            let send = send.clone();
            async move { send.send(&lua, DatapathChange::Remove(text("rule name", name)?)).await }
        })?,
    )?;
    Ok(table)
}

/// What `trefoil.datapath`'s functions share within one run.
struct DatapathSender {
    caller: Arc<dyn Caller>,
    budget: Arc<Budget>,
    changes: AtomicUsize,
    /// A rule with only the origin filled in: the run that asks.
    origin: DatapathRule,
}

impl DatapathSender {
    /// A rule from its compact form and the options table (`source` only where `with_source`).
    fn rule(&self, compact: String, options: Option<Table>, with_source: bool) -> mlua::Result<DatapathRule> {
        let mut rule = DatapathRule { compact, ..self.origin.clone() };
        let Some(options) = options else { return Ok(rule) };
        for pair in options.pairs::<String, Value>() {
            let (key, value) = pair?;
            match (key.as_str(), value) {
                ("source", Value::String(s)) if with_source => rule.source = vec![text("source", s.to_str()?.to_string())?],
                ("source", Value::Table(list)) if with_source => {
                    rule.source = list
                        .sequence_values::<String>()
                        .take(MAX_DATAPATH_SOURCES + 1)
                        .map(|s| text("source", s?))
                        .collect::<mlua::Result<_>>()?;
                    if rule.source.len() > MAX_DATAPATH_SOURCES {
                        return Err(mlua::Error::runtime(format!("more than {MAX_DATAPATH_SOURCES} sources in one rule")));
                    }
                }
                ("ttl", Value::String(s)) => rule.ttl = Some(text("ttl", s.to_str()?.to_string())?),
                ("priority", Value::Integer(p)) => {
                    rule.priority = i32::try_from(p).map_err(|_| mlua::Error::runtime(format!("priority {p} is out of range")))?;
                }
                (key, value) => {
                    let expected = if with_source {
                        "source (string or list), ttl (string), priority (integer)"
                    } else {
                        "ttl (string), priority (integer)"
                    };
                    return Err(mlua::Error::runtime(format!("datapath option {key:?} = {}: expected {expected}", value.type_name())));
                }
            }
        }
        Ok(rule)
    }

    /// Sends one change within the run's allowance; `name` or `nil, reason`.
    async fn send(&self, lua: &Lua, change: DatapathChange) -> mlua::Result<(Value, Value)> {
        // A stopped run changes nothing more (its `pcall` may have caught the stop).
        if self.budget.stop() != Stop::None {
            return Err(mlua::Error::runtime(STOPPED.to_string_lossy()));
        }
        if self.changes.fetch_add(1, Ordering::Relaxed) >= MAX_DATAPATH_CHANGES {
            return Err(mlua::Error::runtime(format!("more than {MAX_DATAPATH_CHANGES} datapath changes in one run")));
        }
        let what = match &change {
            DatapathChange::Add(rule) => format!("add {:?}", rule.compact),
            DatapathChange::Remove(name) => format!("remove {name:?}"),
        };
        let o = &self.origin;
        match self.caller.datapath(change).await {
            Ok(name) => {
                tracing::info!(target: "trefoil::chain::handler", cnf = %o.origin_cnf, event = %o.origin_handler, trace_id = %o.origin_trace_id, rule = %name, "datapath {what}");
                Ok((Value::String(lua.create_string(&name)?), Value::Nil))
            }
            Err(reason) => {
                tracing::warn!(target: "trefoil::chain::handler", cnf = %o.origin_cnf, event = %o.origin_handler, trace_id = %o.origin_trace_id, error = %reason, "datapath {what} refused");
                Ok((Value::Nil, Value::String(lua.create_string(&reason)?)))
            }
        }
    }
}

/// A datapath argument: text no longer than [`MAX_DATAPATH_TEXT`].
fn text(what: &str, value: String) -> mlua::Result<String> {
    if value.len() > MAX_DATAPATH_TEXT {
        return Err(mlua::Error::runtime(format!("{what} longer than {MAX_DATAPATH_TEXT} bytes")));
    }
    Ok(value)
}

fn lock(effects: &Mutex<Effects>) -> std::sync::MutexGuard<'_, Effects> {
    // A panic cannot happen while the lock is held (plain pushes); recover rather than propagate.
    effects.lock().unwrap_or_else(|p| p.into_inner())
}

/// Converts a script's value to JSON within [`super::convert::MAX_JSON_VALUES`],
/// charging the values converted as instructions.
fn json(budget: &Budget, value: &Value) -> mlua::Result<serde_json::Value> {
    let (json, values) = to_json(value).map_err(mlua::Error::external)?;
    budget.charge(values as u64).map_err(|_| mlua::Error::runtime(STOPPED.to_string_lossy()))?;
    Ok(json)
}

/// The first `max` bytes of `text` as one log-safe line: invalid UTF-8
/// replaced, control characters (newlines first: a message must not forge
/// the lines after it), the Unicode line separators, bidirectional controls
/// and backslashes escaped, and what was cut counted.
pub(super) fn printable(text: &[u8], max: usize) -> String {
    let (kept, cut) = text.split_at(text.len().min(max));
    let mut out = String::with_capacity(kept.len() + 2);
    for c in String::from_utf8_lossy(kept).chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    if !cut.is_empty() {
        out.push_str(&format!("... ({} more bytes)", cut.len()));
    }
    out
}

/// Event names and tag keys: short, and nothing a log line could not show as is.
fn check_name(what: &str, name: &str) -> mlua::Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(|c| c.is_control()) {
        return Err(mlua::Error::runtime(format!("{what} must be 1 to {MAX_NAME_BYTES} bytes without control characters")));
    }
    Ok(())
}

fn check_edits(fx: &Effects) -> mlua::Result<()> {
    if fx.set_headers.len() + fx.remove_headers.len() >= MAX_HEADER_EDITS {
        return Err(mlua::Error::runtime(format!("more than {MAX_HEADER_EDITS} header edits")));
    }
    Ok(())
}

fn check_len(s: &str) -> mlua::Result<()> {
    if s.len() > MAX_HEADER_BYTES {
        return Err(mlua::Error::runtime(format!("header name or value longer than {MAX_HEADER_BYTES} bytes")));
    }
    Ok(())
}

fn event_table(lua: &Lua, event: &Event) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("name", event.name.as_str())?;
    t.raw_set("data", to_lua(lua, &event.data)?)?;
    Ok(t)
}

fn request_table(lua: &Lua, input: &RunInput) -> mlua::Result<Table> {
    let r = &input.request;
    let t = lua.create_table()?;
    t.raw_set("method", r.method.as_str())?;
    t.raw_set("path", r.path.as_str())?;
    t.raw_set("host", r.host.as_str())?;
    let headers = lua.create_table_with_capacity(0, r.headers.len())?;
    for (name, value) in &r.headers {
        headers.raw_set(name.as_str(), value.as_str())?;
    }
    t.raw_set("headers", headers)?;
    if let Some(source) = r.source {
        t.raw_set("source", source.ip().to_string())?;
        t.raw_set("source_port", source.port())?;
    }
    Ok(t)
}

/// `{verdict = "allow"|"deny", status, reason, events = {{name, data}...}}`.
fn verdict_table(lua: &Lua, verdict: &Verdict) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let events = lua.create_table()?;
    for e in verdict.events() {
        events.raw_push(event_table(lua, e)?)?;
    }
    t.raw_set("events", events)?;
    match verdict {
        Verdict::Allow { .. } => t.raw_set("verdict", "allow")?,
        Verdict::Deny { status, reason, .. } => {
            t.raw_set("verdict", "deny")?;
            t.raw_set("status", *status)?;
            t.raw_set("reason", reason.as_str())?;
        }
    }
    Ok(t)
}
