//! Small helpers over the Lua C API for the sandbox's C functions
//! ([`super::strlib`], [`super::guards`]), with Lua's own conventions.
//!
//! All of them may raise a Lua error, which longjmps: callers keep no value
//! with a destructor alive across them.

// These are C functions and hooks on Lua's own C API (mlua has no safe
// form of a count hook on every thread, nor of a C function that raises
// errors as Lua's library does); each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::ffi::{c_int, CStr};

use mlua::ffi;

/// A string argument's bytes (numbers are converted in place, as Lua does).
/// Valid while the argument stays on the stack.
///
/// # Safety
/// `state` is the running thread of a C function; `arg` one of its arguments.
pub(super) unsafe fn check_bytes<'a>(state: *mut ffi::lua_State, arg: c_int) -> &'a [u8] {
    let mut len = 0;
    let ptr = ffi::luaL_checklstring(state, arg, &mut len);
    std::slice::from_raw_parts(ptr as *const u8, len)
}

/// The bytes of the string (or number, converted in place) at `idx`; empty for other values.
///
/// # Safety
/// `idx` is a valid index on `state`; the bytes live while the value stays there.
pub(super) unsafe fn bytes_at<'a>(state: *mut ffi::lua_State, idx: c_int) -> &'a [u8] {
    let mut len = 0;
    let ptr = ffi::lua_tolstring(state, idx, &mut len);
    if ptr.is_null() {
        return &[];
    }
    std::slice::from_raw_parts(ptr as *const u8, len)
}

/// A start position, 1-based, negative from the end, clipped to 1 (lstrlib's `posrelatI`).
pub(super) fn start_position(pos: i64, len: usize) -> usize {
    let len = len as i64;
    if pos > 0 {
        pos as usize
    } else if pos == 0 || pos < -len {
        1
    } else {
        (len + pos + 1) as usize
    }
}

/// Raises `message` with the caller's position, as `luaL_error` does.
///
/// # Safety
/// `state` is the running thread of a C function.
pub(super) unsafe fn raise_message(state: *mut ffi::lua_State, message: &CStr) -> ! {
    ffi::luaL_where(state, 1);
    ffi::lua_pushstring(state, message.as_ptr());
    ffi::lua_concat(state, 2);
    ffi::lua_error(state)
}
