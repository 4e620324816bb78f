//! The sandbox: a fresh Lua state per run with only safe libraries, bounded
//! in instructions (a count hook on every thread, plus what library functions
//! charge for their work: [`budget`]), wall-clock time (the same checks, plus
//! a timeout around calls) and memory (the allocator's limit). [`guards`]
//! keeps a script's code inside those checks: no finalizers, no closing
//! handlers, no weak tables, no catching the error that stops it.
//!
//! Why a fresh state per run rather than one per worker: isolation is then
//! structural (no global a script sets survives, nothing can be learned from
//! an earlier request), and creating a state with the few libraries we load
//! costs tens of microseconds, paid only when an event has a handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlua::{Lua, LuaOptions, StdLib};

use super::budget::{self, Budget, Stop};
use super::{guards, sdk, Caller, Effects, HandlerError, RunInput};

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

/// Globals the base library brings that a script must not have: code loading,
/// the collector's controls and raw printing to the proxy's stdout.
const REMOVED_GLOBALS: &[&str] = &["load", "loadfile", "dofile", "require", "collectgarbage", "print", "package", "io", "os", "debug"];

/// Safe libraries only; `debug`, `io`, `os` and `package` are never loaded.
fn libraries() -> StdLib {
    StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE
}

fn sandbox_error(e: mlua::Error) -> HandlerError {
    HandlerError::Sandbox(e.to_string())
}

/// Creates a restricted state charging `budget`. The memory limit is set
/// after the libraries load so it bounds what the script allocates on top of them.
pub(super) fn new_state(limits: &Limits, budget: Arc<Budget>) -> Result<Lua, HandlerError> {
    let lua = Lua::new_with(libraries(), LuaOptions::default()).map_err(sandbox_error)?;
    // First: every thread created from now on takes the hook of its creator.
    budget::install(&lua, budget).map_err(sandbox_error)?;
    let globals = lua.globals();
    for name in REMOVED_GLOBALS {
        globals.raw_set(*name, mlua::Value::Nil).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    }
    // string.dump hands out bytecode, which the VM trusts blindly.
    if let Ok(string) = globals.raw_get::<mlua::Table>("string") {
        string.raw_set("dump", mlua::Value::Nil).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    }
    guards::install(&lua).map_err(sandbox_error)?;
    let used = lua.used_memory();
    lua.set_memory_limit(used.saturating_add(limits.memory)).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    Ok(lua)
}

/// Parses a script without running it.
pub(super) fn check_syntax(chunk_name: &str, source: &str) -> Result<(), HandlerError> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(|e| HandlerError::Sandbox(e.to_string()))?;
    lua.load(source).set_name(format!("={chunk_name}")).into_function().map(|_| ()).map_err(|e| HandlerError::Syntax(first_line(&e)))
}

pub(super) async fn run(
    chunk_name: &str,
    source: &str,
    limits: &Limits,
    input: RunInput,
    caller: Arc<dyn Caller>,
) -> Result<Effects, HandlerError> {
    let budget = Arc::new(Budget::new(limits.instructions, limits.wall));
    let lua = new_state(limits, budget.clone())?;
    let effects = Arc::new(Mutex::new(Effects::default()));
    sdk::install(&lua, &input, effects.clone(), caller, budget.clone()).map_err(sandbox_error)?;
    let function = lua.load(source).set_name(format!("={chunk_name}")).into_function().map_err(|e| HandlerError::Syntax(first_line(&e)))?;
    // The script runs as a coroutine so `trefoil.call` can await a call-out;
    // it inherits the main thread's hook, as do the coroutines it creates.
    let thread = lua.create_thread(function).map_err(sandbox_error)?;
    let outcome = tokio::time::timeout(limits.wall, thread.into_async::<()>(())).await;
    // Nothing of the script may run after this (a hook or a charge raises at
    // once), though the state is still alive until dropped.
    let stopped = budget.finish();
    let result = match outcome {
        Err(_) => Err(HandlerError::Deadline(limits.wall)),
        // A script that caught the limit's error still broke the bound.
        Ok(Ok(())) if stopped != Stop::None => Err(classify(&mlua::Error::runtime("limit"), stopped, limits)),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(classify(&e, stopped, limits)),
    };
    // The state goes away with its closures; take the effects out of the shared cell.
    let effects = std::mem::take(&mut *effects.lock().unwrap_or_else(|p| p.into_inner()));
    result.map(|()| effects)
}

/// Turns a Lua error into the bound or failure that caused it.
fn classify(e: &mlua::Error, stop: Stop, limits: &Limits) -> HandlerError {
    match stop {
        Stop::Instructions => return HandlerError::InstructionLimit(limits.instructions),
        Stop::Deadline => return HandlerError::Deadline(limits.wall),
        Stop::None | Stop::Over => {}
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

/// Lua errors carry a traceback; logs and replies want the message, which a
/// script writes, so with its control characters escaped.
fn first_line(e: &mlua::Error) -> String {
    let text = e.to_string();
    sdk::printable(text.lines().next().unwrap_or_default().as_bytes(), 1024)
}
