//! The sandbox: a fresh Lua state per run with only safe libraries, bounded
//! in instructions (a count hook), wall-clock time (the same hook, plus a
//! timeout around calls) and memory (the allocator's limit).
//!
//! Why a fresh state per run rather than one per worker: isolation is then
//! structural (no global a script sets survives, nothing can be learned from
//! an earlier request), and creating a state with the few libraries we load
//! costs tens of microseconds, paid only when an event has a handler.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, VmState};

use super::{sdk, Caller, Effects, HandlerError, RunInput};

/// Bounds of one handler run.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Lua VM instructions a run may execute (CPU).
    pub instructions: u64,
    /// Bytes the Lua state may allocate, libraries included.
    pub memory: usize,
    /// Wall-clock time for the whole run, calls to other functions included.
    pub wall: Duration,
    /// Runs per request at most, events emitted by handlers included: a
    /// handler emitting the event it handles must not loop. Counted by the proxy.
    pub runs_per_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // About 10 ms of pure Lua on one core; plenty for header logic and a few calls.
        Limits { instructions: 1_000_000, memory: 8 * 1024 * 1024, wall: Duration::from_secs(1), runs_per_request: 16 }
    }
}

/// The hook runs every this many instructions: rare enough to cost nothing, often enough to stop promptly.
const HOOK_EVERY: u32 = 1_000;

/// Globals the base library brings that a script must not have: code loading,
/// the collector's controls and raw printing to the proxy's stdout.
const REMOVED_GLOBALS: &[&str] = &["load", "loadfile", "dofile", "require", "collectgarbage", "print", "package", "io", "os", "debug"];

/// Safe libraries only; `debug`, `io`, `os` and `package` are never loaded.
fn libraries() -> StdLib {
    StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE
}

/// Creates a restricted state. The memory limit is set after the libraries
/// load so it bounds what the script allocates on top of them.
fn new_state(limits: &Limits) -> Result<Lua, HandlerError> {
    let lua = Lua::new_with(libraries(), LuaOptions::default()).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    let globals = lua.globals();
    for name in REMOVED_GLOBALS {
        globals.raw_set(*name, mlua::Value::Nil).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    }
    // string.dump hands out bytecode, which the VM trusts blindly.
    if let Ok(string) = globals.raw_get::<mlua::Table>("string") {
        string.raw_set("dump", mlua::Value::Nil).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    }
    let used = lua.used_memory();
    lua.set_memory_limit(used.saturating_add(limits.memory)).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    Ok(lua)
}

/// Parses a script without running it.
pub fn check_syntax(chunk_name: &str, source: &str) -> Result<(), HandlerError> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    lua.load(source).set_name(format!("={chunk_name}")).into_function().map(|_| ()).map_err(|e| HandlerError::Syntax(first_line(&e)))
}

/// Which bound stopped a run, set by the hook before it raises.
const STOP_NONE: u8 = 0;
const STOP_INSTRUCTIONS: u8 = 1;
const STOP_DEADLINE: u8 = 2;

pub async fn run(chunk_name: &str, source: &str, limits: &Limits, input: RunInput, caller: Arc<dyn Caller>) -> Result<Effects, HandlerError> {
    let lua = new_state(limits)?;
    let stop = Arc::new(AtomicU8::new(STOP_NONE));
    let deadline = Instant::now() + limits.wall;
    guard_pcall(&lua, stop.clone()).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    let effects = Arc::new(Mutex::new(Effects::default()));
    sdk::install(&lua, &input, effects.clone(), caller).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    let function = lua.load(source).set_name(format!("={chunk_name}")).into_function().map_err(|e| HandlerError::Syntax(first_line(&e)))?;
    // The script runs as a coroutine so `trefoil.call` can await a call-out;
    // the hook goes on that coroutine, where the script's instructions run.
    let thread = lua.create_thread(function).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    {
        let (stop, counted) = (stop.clone(), Arc::new(AtomicU64::new(0)));
        let max = limits.instructions;
        // The hook only sees Lua running; time spent awaiting a call is bounded by the timeout below.
        thread.set_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), move |_, _| {
            let n = counted.fetch_add(u64::from(HOOK_EVERY), Ordering::Relaxed) + u64::from(HOOK_EVERY);
            if n > max {
                stop.store(STOP_INSTRUCTIONS, Ordering::Relaxed);
                return Err(mlua::Error::runtime("instruction limit reached"));
            }
            if Instant::now() > deadline {
                stop.store(STOP_DEADLINE, Ordering::Relaxed);
                return Err(mlua::Error::runtime("deadline reached"));
            }
            Ok(VmState::Continue)
        });
    }
    let outcome = tokio::time::timeout(limits.wall, thread.into_async::<()>(())).await;
    let stopped = stop.load(Ordering::Relaxed);
    let result = match outcome {
        Err(_) => Err(HandlerError::Deadline(limits.wall)),
        // A script that caught the limit's error with pcall still broke the bound.
        Ok(Ok(())) if stopped != STOP_NONE => Err(classify(&mlua::Error::runtime("limit"), stopped, limits)),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(classify(&e, stopped, limits)),
    };
    // The state goes away with its closures; take the effects out of the shared cell.
    let effects = std::mem::take(&mut *effects.lock().unwrap_or_else(|p| p.into_inner()));
    result.map(|()| effects)
}

/// Wraps `pcall` and `xpcall` so a script cannot catch the error that stops
/// it at a bound and carry on: once stopped, the wrappers raise again.
fn guard_pcall(lua: &Lua, stop: Arc<AtomicU8>) -> mlua::Result<()> {
    let stopped = lua.create_function(move |_, ()| Ok(stop.load(Ordering::Relaxed) != STOP_NONE))?;
    let wrap: mlua::Function = lua
        .load(
            r#"
            local stopped, pack, unpack = ...
            local function guard(raw)
                return function(...)
                    local results = pack(raw(...))
                    if stopped() then error("stopped at a bound", 0) end
                    return unpack(results, 1, results.n)
                end
            end
            return guard(pcall), guard(xpcall)
            "#,
        )
        .set_name("=sandbox")
        .into_function()?;
    let table: mlua::Table = lua.globals().raw_get("table")?;
    let (pcall, xpcall): (mlua::Function, mlua::Function) = wrap.call((stopped, table.raw_get::<mlua::Function>("pack")?, table.raw_get::<mlua::Function>("unpack")?))?;
    lua.globals().raw_set("pcall", pcall)?;
    lua.globals().raw_set("xpcall", xpcall)?;
    Ok(())
}

/// Turns a Lua error into the bound or failure that caused it.
fn classify(e: &mlua::Error, stop: u8, limits: &Limits) -> HandlerError {
    match stop {
        STOP_INSTRUCTIONS => return HandlerError::InstructionLimit(limits.instructions),
        STOP_DEADLINE => return HandlerError::Deadline(limits.wall),
        _ => {}
    }
    if let Some(failed) = sdk::unavailable(e) {
        return HandlerError::Unavailable(failed);
    }
    if is_memory_error(e) {
        return HandlerError::MemoryLimit(limits.memory);
    }
    HandlerError::Runtime(first_line(e))
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// Lua errors carry a traceback; logs and replies want the message.
fn first_line(e: &mlua::Error) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or_default().to_string()
}
