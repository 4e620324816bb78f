//! The library as a script sees it, changed where the original could escape
//! a run's bounds; installed on each fresh state before the script loads.
//!
//! Each replaced C function is a trampoline: the original, kept as upvalue
//! 1, runs in the trampoline's own frame, so argument errors name the same
//! function and point to the script's line as before.
//!
//! - `setmetatable` refuses `__gc` (a finalizer runs when the state closes,
//!   with hooks off, so `while true do end` there spun a worker for ever),
//!   `__close` (a closing handler can declare another to-be-closed variable
//!   while a stopped run unwinds, for ever) and `__mode` (weak keys make the
//!   collector's ephemeron pass quadratic in memory: seconds with no hook).
//!   As Lua reads `__mode` and `__close` when it needs them, a table in use
//!   as a metatable gets the guard table as its own metatable, whose
//!   `__newindex` refuses those keys later (`rawset` refuses them on such a
//!   table too); `getmetatable` hides the guard.
//! - Creating a coroutine is charged [`HOOK_EVERY`]: a thread reports to the
//!   hook every that many of its own instructions, so shorter coroutines
//!   would go uncounted (a tree of them ran unbounded).
//! - `pcall`, `xpcall`, `coroutine.resume` and `coroutine.close` raise again
//!   once a run is stopped, so catching the error does not buy more time.

use std::ffi::{c_int, CStr};

use mlua::{ffi, Lua};

use super::budget::{budget_of, charge_or_raise, Stop, HOOK_EVERY};
use super::luaapi::{bytes_at, raise_message};
use super::strlib;

/// Metamethods a script may not use (see the module documentation).
const FORBIDDEN: &[&CStr] = &[c"__gc", c"__close", c"__mode"];

/// Registry key of the guard table: the metatable of every table in use as a metatable.
static GUARD_KEY: u8 = 0;

fn guard_key() -> *const std::ffi::c_void {
    &GUARD_KEY as *const u8 as *const std::ffi::c_void
}

/// Trampolines, by library and name.
const TRAMPOLINES: &[(&CStr, &CStr, ffi::lua_CFunction)] = &[
    (c"coroutine", c"create", per_thread),
    (c"coroutine", c"wrap", per_thread),
    (c"_G", c"setmetatable", set_metatable),
    (c"_G", c"getmetatable", get_metatable),
    (c"_G", c"rawset", raw_set),
];

/// The part written in Lua: guards that must let a yield through (a C
/// function in between would make `pcall(trefoil.call, ...)` fail).
const PRELUDE: &str = r#"
local stopped, error, pcall, xpcall, resume, close = ...
local function again(...)
    if stopped() then error("stopped at its instruction or time bound", 0) end
    return ...
end
_G.pcall = function(...) return again(pcall(...)) end
_G.xpcall = function(...) return again(xpcall(...)) end
coroutine.resume = function(...) return again(resume(...)) end
coroutine.close = function(...) return again(close(...)) end
"#;

/// Installs the guards and the pattern functions on a fresh state's globals.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    // SAFETY: outside a callback `exec_raw` runs on the main thread, inside a
    // protected call, with room for a few values; each step leaves the stack
    // as it found it.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::luaL_checkstack(state, 8, std::ptr::null());
            // The guard table, {__newindex = guard_newindex}, kept in the registry.
            ffi::lua_createtable(state, 0, 1);
            ffi::lua_pushcfunction(state, guard_newindex);
            ffi::lua_setfield(state, -2, c"__newindex".as_ptr());
            ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, guard_key());
            // The string metatable is reachable (`getmetatable("")`) and used.
            ffi::lua_pushstring(state, c"".as_ptr());
            if ffi::lua_getmetatable(state, -1) != 0 {
                ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, guard_key());
                ffi::lua_setmetatable(state, -2);
                ffi::lua_pop(state, 1);
            }
            ffi::lua_pop(state, 1);
            for (library, name, trampoline) in TRAMPOLINES {
                if ffi::lua_getglobal(state, library.as_ptr()) == ffi::LUA_TTABLE {
                    ffi::lua_getfield(state, -1, name.as_ptr());
                    if ffi::lua_tocfunction(state, -1).is_some() {
                        ffi::lua_pushcclosure(state, *trampoline, 1);
                        ffi::lua_setfield(state, -2, name.as_ptr());
                    } else {
                        ffi::lua_pop(state, 1);
                    }
                }
                ffi::lua_pop(state, 1);
            }
            if ffi::lua_getglobal(state, c"string".as_ptr()) == ffi::LUA_TTABLE {
                for (name, function) in strlib::FUNCTIONS {
                    ffi::lua_pushcfunction(state, *function);
                    ffi::lua_setfield(state, -2, name.as_ptr());
                }
            }
            ffi::lua_pop(state, 1);
        })?;
    }
    let coroutine: mlua::Table = lua.globals().raw_get("coroutine")?;
    // SAFETY: `stopped` is a C function without upvalues that only reads the registry.
    let stopped = unsafe { lua.create_c_function(stopped)? };
    let error: mlua::Function = lua.globals().raw_get("error")?;
    let pcall: mlua::Function = lua.globals().raw_get("pcall")?;
    let xpcall: mlua::Function = lua.globals().raw_get("xpcall")?;
    let resume: mlua::Function = coroutine.raw_get("resume")?;
    let close: mlua::Function = coroutine.raw_get("close")?;
    lua.load(PRELUDE).set_name("=sandbox").call::<()>((stopped, error, pcall, xpcall, resume, close))
}

/// `stopped()`: whether the run has passed a bound (or is over).
unsafe extern "C-unwind" fn stopped(state: *mut ffi::lua_State) -> c_int {
    let stopped = budget_of(state).is_none_or(|b| b.stop() != Stop::None);
    ffi::lua_pushboolean(state, c_int::from(stopped));
    1
}

/// Runs the original function (upvalue 1) in this frame.
unsafe fn original(state: *mut ffi::lua_State) -> c_int {
    match ffi::lua_tocfunction(state, ffi::lua_upvalueindex(1)) {
        Some(f) => f(state),
        None => raise_message(state, c"missing library function"),
    }
}

unsafe extern "C-unwind" fn per_thread(state: *mut ffi::lua_State) -> c_int {
    charge_or_raise(state, u64::from(HOOK_EVERY));
    original(state)
}

/// Pushes the guard table.
unsafe fn push_guard(state: *mut ffi::lua_State) {
    ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, guard_key());
}

/// Whether the value at `idx` (absolute) is a table in use as a metatable.
unsafe fn is_guarded(state: *mut ffi::lua_State, idx: c_int) -> bool {
    if ffi::lua_getmetatable(state, idx) == 0 {
        return false;
    }
    push_guard(state);
    let guarded = ffi::lua_rawequal(state, -1, -2) != 0;
    ffi::lua_pop(state, 2);
    guarded
}

/// Whether the value at `idx` is the name of a forbidden metamethod.
unsafe fn is_forbidden_key(state: *mut ffi::lua_State, idx: c_int) -> bool {
    ffi::lua_type(state, idx) == ffi::LUA_TSTRING && FORBIDDEN.iter().any(|name| bytes_at(state, idx) == name.to_bytes())
}

unsafe fn raise_forbidden(state: *mut ffi::lua_State, key: &[u8]) -> ! {
    ffi::luaL_where(state, 1);
    ffi::lua_pushlstring(state, key.as_ptr().cast(), key.len());
    ffi::lua_pushstring(state, c" is not available in handlers".as_ptr());
    ffi::lua_concat(state, 3);
    ffi::lua_error(state)
}

/// `setmetatable(t, mt)`: `mt` without forbidden metamethods, guarded from
/// now on; a guarded table's own metatable stays the guard.
unsafe extern "C-unwind" fn set_metatable(state: *mut ffi::lua_State) -> c_int {
    if ffi::lua_type(state, 2) == ffi::LUA_TTABLE {
        for name in FORBIDDEN {
            ffi::lua_pushstring(state, name.as_ptr());
            let present = ffi::lua_rawget(state, 2) != ffi::LUA_TNIL;
            ffi::lua_pop(state, 1);
            if present {
                raise_forbidden(state, name.to_bytes());
            }
        }
        if ffi::lua_getmetatable(state, 2) == 0 {
            push_guard(state);
            ffi::lua_setmetatable(state, 2);
        } else {
            push_guard(state);
            let guarded = ffi::lua_rawequal(state, -1, -2) != 0;
            ffi::lua_pop(state, 2);
            if !guarded {
                raise_message(state, c"a table with a metatable cannot be a metatable in handlers");
            }
        }
    }
    if ffi::lua_type(state, 1) == ffi::LUA_TTABLE && is_guarded(state, 1) {
        raise_message(state, c"a table in use as a metatable cannot have a metatable in handlers");
    }
    original(state)
}

/// `getmetatable(v)`: the guard stays hidden, as if the table had no metatable.
unsafe extern "C-unwind" fn get_metatable(state: *mut ffi::lua_State) -> c_int {
    let n = original(state);
    if n == 1 {
        push_guard(state);
        let hidden = ffi::lua_rawequal(state, -1, -2) != 0;
        ffi::lua_pop(state, 1);
        if hidden {
            ffi::lua_pop(state, 1);
            ffi::lua_pushnil(state);
        }
    }
    n
}

/// `rawset(t, k, v)`: no forbidden metamethod on a table in use as a metatable.
unsafe extern "C-unwind" fn raw_set(state: *mut ffi::lua_State) -> c_int {
    if ffi::lua_type(state, 1) == ffi::LUA_TTABLE && is_forbidden_key(state, 2) && is_guarded(state, 1) {
        raise_forbidden(state, bytes_at(state, 2));
    }
    original(state)
}

/// The guard's `__newindex`: a new key on a table in use as a metatable.
unsafe extern "C-unwind" fn guard_newindex(state: *mut ffi::lua_State) -> c_int {
    if is_forbidden_key(state, 2) {
        raise_forbidden(state, bytes_at(state, 2));
    }
    ffi::lua_settop(state, 3);
    ffi::lua_rawset(state, 1);
    0
}
