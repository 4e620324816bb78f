//! The library as a script sees it, changed where the original could escape
//! a run's bounds; installed on each fresh state before the script loads.
//!
//! - Functions whose work grows with their arguments (`string.rep`,
//!   `table.concat`, `table.sort`, `utf8.len`, ...) charge it to the
//!   [`Budget`] before working (or, for `string.format` and `string.pack`,
//!   by the size of what they made), so one call cannot run on for long
//!   between two runs of the count hook: `string.rep("", 1 << 60)` and
//!   `table.move({}, 1, math.maxinteger - 1, 2)` looped for ever in one C call,
//!   and `table.insert` / `table.remove` with a `__len` answering 2^50 too.
//!   Each is a trampoline: the original C function, kept as upvalue 1, runs
//!   in the trampoline's own frame, so argument errors name the same function
//!   and point to the script's line as before.
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

// These are C functions and hooks on Lua's own C API (mlua has no safe
// form of a count hook on every thread, nor of a C function that raises
// errors as Lua's library does); each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::ffi::{c_int, CStr};

use mlua::{ffi, Lua};

use super::budget::{budget_of, charge_or_raise, Stop, BYTES_PER_INSTRUCTION, HOOK_EVERY};
use super::luaapi::{bytes_at, raise_message, start_position};
use super::strlib;

/// Metamethods a script may not use (see the module documentation).
const FORBIDDEN: &[&CStr] = &[c"__gc", c"__close", c"__mode"];

/// Registry key of the guard table: the metatable of every table in use as a metatable.
static GUARD_KEY: u8 = 0;

fn guard_key() -> *const std::ffi::c_void {
    &GUARD_KEY as *const u8 as *const std::ffi::c_void
}

/// Charged trampolines, by library and name.
const TRAMPOLINES: &[(&CStr, &CStr, ffi::lua_CFunction)] = &[
    (c"string", c"rep", str_rep),
    (c"string", c"upper", per_byte_of_first),
    (c"string", c"lower", per_byte_of_first),
    (c"string", c"reverse", per_byte_of_first),
    (c"string", c"byte", str_byte),
    (c"string", c"format", per_byte_of_result),
    (c"string", c"pack", per_byte_of_result),
    (c"string", c"packsize", per_byte_of_first),
    (c"string", c"unpack", per_option),
    (c"table", c"concat", tab_concat),
    (c"table", c"unpack", tab_unpack),
    (c"table", c"move", tab_move),
    (c"table", c"insert", tab_insert),
    (c"table", c"remove", tab_remove),
    (c"table", c"sort", tab_sort),
    (c"utf8", c"len", utf8_len),
    (c"utf8", c"codepoint", utf8_codepoint),
    (c"utf8", c"offset", utf8_offset),
    (c"coroutine", c"create", per_thread),
    (c"coroutine", c"wrap", per_thread),
    (c"_G", c"tonumber", per_byte_of_first),
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
pub(super) fn install(lua: &Lua) -> mlua::Result<()> {
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

/// Units for `bytes` bytes of work, saturating.
fn per_bytes(bytes: u128) -> u64 {
    u64::try_from(bytes / u128::from(BYTES_PER_INSTRUCTION)).unwrap_or(u64::MAX)
}

/// The byte length of a string argument; a number counts as the longest it
/// could print as (it is not converted here: `tonumber(0.1)` must stay exact);
/// 0 for anything else, which the original refuses.
unsafe fn arg_len(state: *mut ffi::lua_State, idx: c_int) -> usize {
    match ffi::lua_type(state, idx) {
        ffi::LUA_TSTRING => ffi::lua_rawlen(state, idx),
        ffi::LUA_TNUMBER => 32,
        _ => 0,
    }
}

/// An optional integer argument: `default` if absent, None if not an integer (the original will say so).
unsafe fn opt_int(state: *mut ffi::lua_State, idx: c_int, default: i64) -> Option<i64> {
    if ffi::lua_isnoneornil(state, idx) != 0 {
        return Some(default);
    }
    let mut ok = 0;
    let v = ffi::lua_tointegerx(state, idx, &mut ok);
    (ok != 0).then_some(v)
}

/// Elements in `first..=last`, 0 if empty.
fn span(first: i64, last: i64) -> u64 {
    u64::try_from(i128::from(last) - i128::from(first) + 1).unwrap_or(0)
}

unsafe extern "C-unwind" fn per_byte_of_first(state: *mut ffi::lua_State) -> c_int {
    charge_or_raise(state, per_bytes(arg_len(state, 1) as u128));
    original(state)
}

unsafe extern "C-unwind" fn per_byte_of_result(state: *mut ffi::lua_State) -> c_int {
    let n = original(state);
    if n == 1 {
        charge_or_raise(state, per_bytes(arg_len(state, -1) as u128));
    }
    n
}

/// `string.unpack`: at most one value per option character.
unsafe extern "C-unwind" fn per_option(state: *mut ffi::lua_State) -> c_int {
    charge_or_raise(state, arg_len(state, 1) as u64);
    original(state)
}

unsafe extern "C-unwind" fn per_thread(state: *mut ffi::lua_State) -> c_int {
    charge_or_raise(state, u64::from(HOOK_EVERY));
    original(state)
}

/// `string.rep(s, n, sep)`: the bytes it writes, and its `n` copies even
/// when they are empty (the original loops `n` times regardless).
unsafe extern "C-unwind" fn str_rep(state: *mut ffi::lua_State) -> c_int {
    if let Some(n) = opt_int(state, 2, 0).filter(|&n| n > 0) {
        let n = n as u128;
        let each = (arg_len(state, 1) + arg_len(state, 3)) as u128;
        charge_or_raise(state, per_bytes(n * each + 4 * n));
    }
    original(state)
}

/// `string.byte(s, i, j)`: one value per byte asked for.
unsafe extern "C-unwind" fn str_byte(state: *mut ffi::lua_State) -> c_int {
    let len = arg_len(state, 1);
    if let Some(i) = opt_int(state, 2, 1) {
        if let Some(j) = opt_int(state, 3, i) {
            let first = start_position(i, len) as i64;
            let last = if j > len as i64 {
                len as i64
            } else if j >= 0 {
                j
            } else if j < -(len as i64) {
                0
            } else {
                len as i64 + j + 1
            };
            charge_or_raise(state, span(first, last) / 4);
        }
    }
    original(state)
}

/// A utf8 position (lutf8lib's `u_posrelat`).
fn utf8_position(pos: i64, len: usize) -> i64 {
    if pos >= 0 {
        pos
    } else if pos.unsigned_abs() > len as u64 {
        0
    } else {
        len as i64 + pos + 1
    }
}

unsafe extern "C-unwind" fn utf8_len(state: *mut ffi::lua_State) -> c_int {
    utf8_span(state, -1)
}

unsafe extern "C-unwind" fn utf8_codepoint(state: *mut ffi::lua_State) -> c_int {
    // `codepoint` reads one character by default: its end defaults to its start.
    utf8_span(state, 0)
}

/// `utf8.len(s, i, j)` and `utf8.codepoint(s, i, j)`: the bytes they decode.
/// `default_end` 0 means "the start".
unsafe fn utf8_span(state: *mut ffi::lua_State, default_end: i64) -> c_int {
    let len = arg_len(state, 1);
    if let Some(i) = opt_int(state, 2, 1) {
        if let Some(j) = opt_int(state, 3, if default_end == 0 { i } else { default_end }) {
            let bytes = span(utf8_position(i, len), utf8_position(j, len).min(len as i64));
            charge_or_raise(state, bytes / 4);
        }
    }
    original(state)
}

/// `utf8.offset(s, n, i)`: it walks up to `n` characters, within the string.
unsafe extern "C-unwind" fn utf8_offset(state: *mut ffi::lua_State) -> c_int {
    let len = arg_len(state, 1) as u64;
    if let Some(n) = opt_int(state, 2, 0) {
        charge_or_raise(state, n.unsigned_abs().saturating_mul(4).min(len) / BYTES_PER_INSTRUCTION);
    }
    original(state)
}

/// The length of the table at 1 as the original will read it, once: puts it
/// in argument `idx` (the original's explicit end) when the script gave none,
/// so a `__len` cannot answer the charge one thing and the loop another.
unsafe fn pin_length(state: *mut ffi::lua_State, idx: c_int) {
    if ffi::lua_isnoneornil(state, idx) != 0 && ffi::lua_type(state, 1) == ffi::LUA_TTABLE {
        let n = ffi::luaL_len(state, 1);
        ffi::lua_settop(state, idx);
        ffi::lua_pushinteger(state, n);
        ffi::lua_replace(state, idx);
    }
}

/// `table.concat(list, sep, i, j)`: one unit per element, then the bytes made.
unsafe extern "C-unwind" fn tab_concat(state: *mut ffi::lua_State) -> c_int {
    pin_length(state, 4);
    if let (Some(i), Some(j)) = (opt_int(state, 3, 1), opt_int(state, 4, 0)) {
        charge_or_raise(state, span(i, j));
    }
    let n = original(state);
    charge_or_raise(state, per_bytes(arg_len(state, -1) as u128));
    n
}

/// `table.unpack(list, i, j)`: one unit per value. Past the stack's size the
/// original refuses at once, so that costs nothing.
unsafe extern "C-unwind" fn tab_unpack(state: *mut ffi::lua_State) -> c_int {
    if ffi::lua_isnoneornil(state, 3) != 0 {
        // The original reads `#list` for any value, not only tables.
        let n = ffi::luaL_len(state, 1);
        ffi::lua_settop(state, 3);
        ffi::lua_pushinteger(state, n);
        ffi::lua_replace(state, 3);
    }
    if let (Some(i), Some(j)) = (opt_int(state, 2, 1), opt_int(state, 3, 0)) {
        let n = span(i, j);
        if n < 1_000_000 {
            charge_or_raise(state, n);
        }
    }
    original(state)
}

/// `table.move(a1, f, e, t, a2)`: one unit per element moved, nil or not.
unsafe extern "C-unwind" fn tab_move(state: *mut ffi::lua_State) -> c_int {
    if let (Some(f), Some(e)) = (opt_int(state, 2, 0), opt_int(state, 3, 0)) {
        charge_or_raise(state, span(f, e));
    }
    original(state)
}

const TAB_R: c_int = 1;
const TAB_W: c_int = 2;
const TAB_L: c_int = 4;
const TAB_RW: c_int = TAB_R | TAB_W;

/// ltablib's `checktab`: a table, or a value whose metatable has what is needed.
unsafe fn check_tab(state: *mut ffi::lua_State, arg: c_int, what: c_int) {
    if ffi::lua_type(state, arg) == ffi::LUA_TTABLE {
        return;
    }
    let mut n = 1;
    let mut ok = ffi::lua_getmetatable(state, arg) != 0;
    for (flag, field) in [(TAB_R, c"__index"), (TAB_W, c"__newindex"), (TAB_L, c"__len")] {
        if ok && what & flag != 0 {
            n += 1;
            ffi::lua_pushstring(state, field.as_ptr());
            ok = ffi::lua_rawget(state, -n) != ffi::LUA_TNIL;
        }
    }
    if ok {
        ffi::lua_pop(state, n);
    } else {
        ffi::luaL_checktype(state, arg, ffi::LUA_TTABLE);
    }
}

/// `table.insert(list, [pos,] value)`, ltablib's `tinsert` with the shift charged.
unsafe extern "C-unwind" fn tab_insert(state: *mut ffi::lua_State) -> c_int {
    check_tab(state, 1, TAB_RW | TAB_L);
    let e = ffi::luaL_len(state, 1).wrapping_add(1);
    let pos = match ffi::lua_gettop(state) {
        2 => e,
        3 => {
            let pos = ffi::luaL_checkinteger(state, 2);
            if (pos as u64).wrapping_sub(1) >= e as u64 {
                return ffi::luaL_argerror(state, 2, c"position out of bounds".as_ptr());
            }
            // `e - pos` moves; `e` may have wrapped, then the original moves nothing.
            charge_or_raise(state, u64::try_from(i128::from(e) - i128::from(pos)).unwrap_or(0));
            let mut i = e;
            while i > pos {
                ffi::lua_geti(state, 1, i - 1);
                ffi::lua_seti(state, 1, i);
                i -= 1;
            }
            pos
        }
        _ => return ffi::luaL_error(state, c"wrong number of arguments to 'insert'".as_ptr()),
    };
    ffi::lua_seti(state, 1, pos);
    0
}

/// `table.remove(list, [pos])`, ltablib's `tremove` with the shift charged.
unsafe extern "C-unwind" fn tab_remove(state: *mut ffi::lua_State) -> c_int {
    check_tab(state, 1, TAB_RW | TAB_L);
    let size = ffi::luaL_len(state, 1);
    let mut pos = ffi::luaL_optinteger(state, 2, size);
    if pos != size && (pos as u64).wrapping_sub(1) > size as u64 {
        return ffi::luaL_argerror(state, 2, c"position out of bounds".as_ptr());
    }
    charge_or_raise(state, span(pos, size));
    ffi::lua_geti(state, 1, pos);
    while pos < size {
        ffi::lua_geti(state, 1, pos + 1);
        ffi::lua_seti(state, 1, pos);
        pos += 1;
    }
    ffi::lua_pushnil(state);
    ffi::lua_seti(state, 1, pos);
    1
}

/// `table.sort(list, comp)`: n·log2(n) comparisons charged. The original
/// reads `#list` itself; where a `__len` could answer it differently from
/// the charge, a plain copy is sorted and written back instead.
unsafe extern "C-unwind" fn tab_sort(state: *mut ffi::lua_State) -> c_int {
    let has_len = ffi::luaL_getmetafield(state, 1, c"__len".as_ptr()) != ffi::LUA_TNIL;
    if has_len {
        ffi::lua_pop(state, 1);
    }
    if !has_len {
        if ffi::lua_type(state, 1) == ffi::LUA_TTABLE {
            charge_or_raise(state, sort_cost(ffi::lua_rawlen(state, 1) as u64));
        }
        return original(state);
    }
    check_tab(state, 1, TAB_RW | TAB_L);
    let n = ffi::luaL_len(state, 1);
    if n > 1 && n >= i64::from(c_int::MAX) {
        return ffi::luaL_argerror(state, 1, c"array too big".as_ptr());
    }
    let n = n.max(0);
    charge_or_raise(state, sort_cost(n as u64).saturating_add(2 * n as u64));
    ffi::lua_settop(state, 2);
    ffi::lua_createtable(state, c_int::try_from(n).unwrap_or(0), 0);
    for i in 1..=n {
        ffi::lua_geti(state, 1, i);
        ffi::lua_rawseti(state, 3, i);
    }
    ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
    ffi::lua_pushvalue(state, 3);
    ffi::lua_pushvalue(state, 2);
    ffi::lua_call(state, 2, 0);
    for i in 1..=n {
        ffi::lua_rawgeti(state, 3, i);
        ffi::lua_seti(state, 1, i);
    }
    0
}

/// About n·log2(n) comparisons.
fn sort_cost(n: u64) -> u64 {
    n.saturating_mul(u64::from(64 - n.leading_zeros()))
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
