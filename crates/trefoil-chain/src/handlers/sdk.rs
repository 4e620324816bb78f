//! The SDK a handler sees: globals `event`, `request`, `cnf`, and the table
//! `trefoil` whose functions record effects (deny, header edits, events,
//! span tags), log under the request's trace id, or call another function.

use std::sync::{Arc, Mutex};

use mlua::{Lua, Table, Value};

use super::budget::{Budget, Stop, STOPPED};
use super::convert::{to_json, to_lua};
use super::{CallOutcome, Caller, Effects, RunInput};
use crate::call::{deny_status, Event, Verdict};

/// Raised to stop a run when a called function failed closed; found again by [`unavailable`].
#[derive(Debug, thiserror::Error)]
#[error("network function {0} is unavailable")]
struct Unavailable(String);

/// The function whose closed failure stopped the run, if that is what `e` is.
pub fn unavailable(e: &mlua::Error) -> Option<String> {
    e.chain().find_map(|cause| cause.downcast_ref::<Unavailable>()).map(|u| u.0.clone())
}

/// Header names and values a script passes must be short text; the proxy checks them again.
const MAX_HEADER_BYTES: usize = 8 * 1024;

pub fn install(lua: &Lua, input: &RunInput, effects: Arc<Mutex<Effects>>, caller: Arc<dyn Caller>, budget: Arc<Budget>) -> mlua::Result<()> {
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
            lock(&fx).set_headers.push((name.to_ascii_lowercase(), value));
            Ok(())
        })?,
    )?;

    let fx = effects.clone();
    sdk.raw_set(
        "remove_header",
        lua.create_function(move |_, name: String| {
            check_len(&name)?;
            lock(&fx).remove_headers.push(name.to_ascii_lowercase());
            Ok(())
        })?,
    )?;

    let fx = effects.clone();
    sdk.raw_set(
        "emit",
        lua.create_function(move |_, (name, data): (String, Option<Value>)| {
            let data = data.as_ref().map(to_json).unwrap_or(serde_json::Value::Null);
            lock(&fx).events.push(Event { name, data });
            Ok(())
        })?,
    )?;

    let fx = effects.clone();
    sdk.raw_set(
        "tag",
        lua.create_function(move |_, (key, value): (String, Value)| {
            let value = match value {
                Value::String(s) => s.to_string_lossy(),
                other => to_json(&other).to_string(),
            };
            lock(&fx).tags.push((key, value));
            Ok(())
        })?,
    )?;

    let (cnf, event, trace_id) = (input.cnf.clone(), input.event.name.clone(), input.trace_id.clone());
    sdk.raw_set(
        "log",
        lua.create_function(move |_, msg: Value| {
            let msg = match msg {
                Value::String(s) => s.to_string_lossy(),
                other => to_json(&other).to_string(),
            };
            tracing::info!(target: "trefoil::chain::handler", cnf = %cnf, event = %event, trace_id = %trace_id, "{msg}");
            Ok(())
        })?,
    )?;

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

fn lock(effects: &Mutex<Effects>) -> std::sync::MutexGuard<'_, Effects> {
    // A panic cannot happen while the lock is held (plain pushes); recover rather than propagate.
    effects.lock().unwrap_or_else(|p| p.into_inner())
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
