//! `string.find`, `match`, `gmatch` and `gsub` over [`pattern`]: the Lua C
//! API side, written as lstrlib.c's so results, errors and the line an error
//! points to are Lua's own.
//!
//! Why raw C functions rather than mlua callbacks: an error from an mlua
//! callback reaches a script as a userdata without the position of the call,
//! and a replacement function's error object (a table, say) would become
//! text. These raise with the Lua API like the originals. What makes that
//! sound: no value with a destructor is alive in these frames whenever Lua
//! may raise (any call that allocates or runs Lua code), since raising
//! longjmps over them. For the same reason the `gsub` result is built in Lua
//! memory ([`Buf`]), where the memory limit also bounds it.

// These are C functions and hooks on Lua's own C API (mlua has no safe
// form of a count hook on every thread, nor of a C function that raises
// errors as Lua's library does); each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mlua::ffi;

use super::budget::{budget_of, raise_stopped, Budget, BYTES_PER_INSTRUCTION};
use super::luaapi::{bytes_at, check_bytes, raise_message, start_position};
use super::pattern::{no_specials, CapValue, MatchError, Matcher};

/// The functions this module provides, under their names in `string`.
pub(super) const FUNCTIONS: &[(&CStr, ffi::lua_CFunction)] =
    &[(c"find", str_find), (c"match", str_match), (c"gmatch", str_gmatch), (c"gsub", str_gsub)];

/// The budget of the running state; a state without one (never ours) is stopped.
unsafe fn budget<'a>(state: *mut ffi::lua_State) -> &'a Budget {
    match budget_of(state) {
        Some(budget) => budget,
        None => raise_stopped(state),
    }
}

/// Runs pure matching code; a panic (a bug) becomes a Lua error rather than
/// unwinding into C. `None` in the error means a panic.
fn engine<T>(f: impl FnOnce() -> Result<T, MatchError>) -> Result<T, Option<MatchError>> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(Some),
        // The payload is dropped here, before anything can raise.
        Err(_) => Err(None),
    }
}

/// Raises the Lua error for a matching failure, with lstrlib's message.
unsafe fn raise_failure(state: *mut ffi::lua_State, failure: Option<MatchError>) -> ! {
    let message = match failure {
        None => c"internal error in pattern matching",
        Some(MatchError::Stopped(_)) => raise_stopped(state),
        Some(MatchError::InvalidCaptureIndex(n)) => {
            ffi::luaL_where(state, 1);
            ffi::lua_pushfstring(state, c"invalid capture index %%%d".as_ptr(), n as c_int);
            ffi::lua_concat(state, 2);
            ffi::lua_error(state)
        }
        Some(MatchError::EndsWithEscape) => c"malformed pattern (ends with '%')",
        Some(MatchError::MissingBracket) => c"malformed pattern (missing ']')",
        Some(MatchError::MissingBalanceArguments) => c"malformed pattern (missing arguments to '%b')",
        Some(MatchError::MissingFrontierBracket) => c"missing '[' after '%f' in pattern",
        Some(MatchError::InvalidPatternCapture) => c"invalid pattern capture",
        Some(MatchError::TooManyCaptures) => c"too many captures",
        Some(MatchError::TooComplex) => c"pattern too complex",
        Some(MatchError::UnfinishedCapture) => c"unfinished capture",
    };
    raise_message(state, message)
}

/// Pushes capture `i` of the last match (`whole` is the match, for capture 0 of a pattern without captures).
unsafe fn push_capture(state: *mut ffi::lua_State, m: &Matcher<'_>, src: &[u8], i: usize, whole: Option<(usize, usize)>) {
    match m.get_capture(i, whole) {
        Ok(CapValue::Str(a, b)) => {
            ffi::lua_pushlstring(state, src[a..b].as_ptr().cast(), b - a);
        }
        Ok(CapValue::Position(p)) => ffi::lua_pushinteger(state, p as ffi::lua_Integer),
        Err(e) => raise_failure(state, Some(e)),
    }
}

/// Pushes the captures of the last match (or the whole match if it has none and `whole` is given).
unsafe fn push_captures(state: *mut ffi::lua_State, m: &Matcher<'_>, src: &[u8], whole: Option<(usize, usize)>) -> c_int {
    let n = m.capture_count(whole.is_some());
    ffi::luaL_checkstack(state, n as c_int, c"too many captures".as_ptr());
    for i in 0..n {
        push_capture(state, m, src, i, whole);
    }
    n as c_int
}

/// Below this many byte pairs (haystack times needle) a search compares
/// directly: setting up a linear searcher costs more than the worst case.
const DIRECT_SEARCH: usize = 4096;

/// A plain substring search, linear in the haystack (Lua's own is quadratic
/// at worst), charging the bytes it scanned.
fn plain_find(budget: &Budget, hay: &[u8], needle: &[u8]) -> Result<Option<usize>, MatchError> {
    let at = if needle.is_empty() {
        Some(0)
    } else if hay.len().saturating_mul(needle.len()) <= DIRECT_SEARCH {
        direct_find(hay, needle)
    } else {
        memchr::memmem::find(hay, needle)
    };
    let scanned = at.map_or(hay.len(), |a| a + needle.len());
    budget.charge(scanned as u64 / BYTES_PER_INSTRUCTION).map_err(MatchError::Stopped)?;
    Ok(at)
}

/// lstrlib's `lmemfind`: each occurrence of the needle's first byte, then the rest compared.
fn direct_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(k) = memchr::memchr(first, &hay[from..]) {
        let at = from + k;
        if hay.len() - at < needle.len() {
            return None;
        }
        if &hay[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

unsafe extern "C-unwind" fn str_find(state: *mut ffi::lua_State) -> c_int {
    find_aux(state, true)
}

unsafe extern "C-unwind" fn str_match(state: *mut ffi::lua_State) -> c_int {
    find_aux(state, false)
}

/// `string.find` and `string.match` (`str_find_aux`).
unsafe fn find_aux(state: *mut ffi::lua_State, find: bool) -> c_int {
    let src = check_bytes(state, 1);
    let pat = check_bytes(state, 2);
    let init = start_position(ffi::luaL_optinteger(state, 3, 1), src.len()) - 1;
    if init > src.len() {
        ffi::lua_pushnil(state);
        return 1;
    }
    let budget = budget(state);
    if find && (ffi::lua_toboolean(state, 4) != 0 || no_specials(pat)) {
        return match engine(|| plain_find(budget, &src[init..], pat)) {
            Err(failure) => raise_failure(state, failure),
            Ok(Some(at)) => {
                ffi::lua_pushinteger(state, (init + at + 1) as ffi::lua_Integer);
                ffi::lua_pushinteger(state, (init + at + pat.len()) as ffi::lua_Integer);
                2
            }
            Ok(None) => {
                ffi::lua_pushnil(state);
                1
            }
        };
    }
    let (anchor, pat) = match pat.split_first() {
        Some((b'^', rest)) => (true, rest),
        _ => (false, pat),
    };
    let mut m = Matcher::new(src, pat, budget);
    let found = engine(|| {
        let found = m.find_from(init, anchor)?;
        m.settle()?;
        Ok(found)
    });
    match found {
        Err(failure) => raise_failure(state, failure),
        Ok(None) => {
            ffi::lua_pushnil(state);
            1
        }
        Ok(Some((s, e))) if find => {
            ffi::lua_pushinteger(state, (s + 1) as ffi::lua_Integer);
            ffi::lua_pushinteger(state, e as ffi::lua_Integer);
            2 + push_captures(state, &m, src, None)
        }
        Ok(Some((s, e))) => push_captures(state, &m, src, Some((s, e))),
    }
}

/// Where a `gmatch` iterator is: plain data in a userdata upvalue.
#[derive(Clone, Copy)]
#[repr(C)]
struct GmatchState {
    src: usize,
    /// The end of the last match; `usize::MAX` before the first.
    last_match: usize,
}

unsafe extern "C-unwind" fn str_gmatch(state: *mut ffi::lua_State) -> c_int {
    let src = check_bytes(state, 1);
    check_bytes(state, 2);
    let mut init = start_position(ffi::luaL_optinteger(state, 3, 1), src.len()) - 1;
    if init > src.len() {
        init = src.len() + 1;
    }
    ffi::lua_settop(state, 2);
    let gm = ffi::lua_newuserdatauv(state, std::mem::size_of::<GmatchState>(), 0) as *mut GmatchState;
    // SAFETY: Lua aligns userdata for any plain type; the block is ours and sized for one.
    gm.write(GmatchState { src: init, last_match: usize::MAX });
    ffi::lua_pushcclosure(state, gmatch_step, 3);
    1
}

/// The iterator `gmatch` returns: upvalues subject, pattern, state.
unsafe extern "C-unwind" fn gmatch_step(state: *mut ffi::lua_State) -> c_int {
    let src = bytes_at(state, ffi::lua_upvalueindex(1));
    let pat = bytes_at(state, ffi::lua_upvalueindex(2));
    let gm = ffi::lua_touserdata(state, ffi::lua_upvalueindex(3)) as *mut GmatchState;
    if gm.is_null() {
        raise_message(state, c"invalid gmatch state");
    }
    // SAFETY: the userdata was written by `str_gmatch` and only this closure holds it.
    let GmatchState { src: start, last_match } = *gm;
    let mut m = Matcher::new(src, pat, budget(state));
    let found = engine(|| {
        let mut s = start;
        while s <= src.len() {
            m.reset();
            if let Some(e) = m.do_match(s, 0)? {
                if e != last_match {
                    m.settle()?;
                    return Ok(Some((s, e)));
                }
            }
            s += 1;
        }
        m.settle()?;
        Ok(None)
    });
    match found {
        Err(failure) => raise_failure(state, failure),
        Ok(None) => 0,
        Ok(Some((s, e))) => {
            *gm = GmatchState { src: e, last_match: e };
            push_captures(state, &m, src, Some((s, e)))
        }
    }
}

/// A byte buffer in a full userdata at a fixed stack slot: Lua memory, so
/// the memory limit bounds it, and nothing for Rust to free if an error
/// unwinds. Grown by copying into a larger userdata in the same slot.
struct Buf {
    slot: c_int,
    ptr: *mut u8,
    len: usize,
    cap: usize,
}

impl Buf {
    unsafe fn new(state: *mut ffi::lua_State) -> Buf {
        let cap = 128;
        let ptr = ffi::lua_newuserdatauv(state, cap, 0) as *mut u8;
        Buf { slot: ffi::lua_gettop(state), ptr, len: 0, cap }
    }

    /// Appends `bytes`, which must not point into the buffer.
    unsafe fn push(&mut self, state: *mut ffi::lua_State, bytes: &[u8]) {
        if bytes.len() > self.cap - self.len {
            let Some(need) = self.len.checked_add(bytes.len()) else {
                raise_message(state, c"resulting string too large");
            };
            let cap = need.max(self.cap.saturating_mul(2));
            let ptr = ffi::lua_newuserdatauv(state, cap, 0) as *mut u8;
            // SAFETY: both blocks are live (the old one still anchored at `slot`) and distinct.
            std::ptr::copy_nonoverlapping(self.ptr, ptr, self.len);
            ffi::lua_replace(state, self.slot);
            self.ptr = ptr;
            self.cap = cap;
        }
        // SAFETY: `cap - len >= bytes.len()` now.
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(self.len), bytes.len());
        self.len += bytes.len();
    }

    /// Pushes the result as a string.
    unsafe fn finish(&self, state: *mut ffi::lua_State) {
        ffi::lua_pushlstring(state, self.ptr.cast(), self.len);
    }
}

/// Counts `n` steps of result building, raising once the budget is spent.
unsafe fn tick(state: *mut ffi::lua_State, m: &mut Matcher<'_>, n: usize) {
    if let Err(e) = m.tick(n as u64) {
        raise_failure(state, Some(e));
    }
}

unsafe extern "C-unwind" fn str_gsub(state: *mut ffi::lua_State) -> c_int {
    let src = check_bytes(state, 1);
    let pat = check_bytes(state, 2);
    let tr = ffi::lua_type(state, 3);
    let max_s = ffi::luaL_optinteger(state, 4, src.len() as ffi::lua_Integer + 1);
    if !matches!(tr, ffi::LUA_TNUMBER | ffi::LUA_TSTRING | ffi::LUA_TFUNCTION | ffi::LUA_TTABLE) {
        let message = ffi::lua_pushfstring(state, c"string/function/table expected, got %s".as_ptr(), ffi::luaL_typename(state, 3));
        return ffi::luaL_argerror(state, 3, message);
    }
    let (anchor, pat) = match pat.split_first() {
        Some((b'^', rest)) => (true, rest),
        _ => (false, pat),
    };
    let mut buf = Buf::new(state);
    let mut m = Matcher::new(src, pat, budget(state));
    let (mut pos, mut last_match, mut n, mut changed) = (0usize, None, 0 as ffi::lua_Integer, false);
    while n < max_s {
        m.reset();
        let end = match engine(|| m.do_match(pos, 0)) {
            Ok(end) => end,
            Err(failure) => raise_failure(state, failure),
        };
        match end {
            Some(e) if Some(e) != last_match => {
                n += 1;
                changed |= add_value(state, &mut m, &mut buf, src, (pos, e), tr);
                pos = e;
                last_match = Some(e);
            }
            _ if pos < src.len() => {
                buf.push(state, &src[pos..pos + 1]);
                pos += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    if let Err(e) = m.settle() {
        raise_failure(state, Some(e));
    }
    if changed {
        buf.push(state, &src[pos..]);
        buf.finish(state);
    } else {
        ffi::lua_pushvalue(state, 1);
    }
    ffi::lua_pushinteger(state, n);
    2
}

/// Appends the replacement for the match `whole`; whether it changed the text.
unsafe fn add_value(state: *mut ffi::lua_State, m: &mut Matcher<'_>, buf: &mut Buf, src: &[u8], whole: (usize, usize), tr: c_int) -> bool {
    let (s, e) = whole;
    match tr {
        ffi::LUA_TFUNCTION => {
            ffi::lua_pushvalue(state, 3);
            let n = push_captures(state, m, src, Some(whole));
            ffi::lua_call(state, n, 1);
        }
        ffi::LUA_TTABLE => {
            push_capture(state, m, src, 0, Some(whole));
            ffi::lua_gettable(state, 3);
        }
        _ => {
            add_string(state, m, buf, src, whole);
            return true;
        }
    }
    if ffi::lua_toboolean(state, -1) == 0 {
        ffi::lua_pop(state, 1);
        tick(state, m, (e - s) / 2);
        buf.push(state, &src[s..e]);
        false
    } else if ffi::lua_isstring(state, -1) == 0 {
        ffi::luaL_where(state, 1);
        ffi::lua_pushfstring(state, c"invalid replacement value (a %s)".as_ptr(), ffi::luaL_typename(state, -2));
        ffi::lua_concat(state, 2);
        ffi::lua_error(state)
    } else {
        let value = bytes_at(state, -1);
        tick(state, m, value.len() / 2);
        buf.push(state, value);
        ffi::lua_pop(state, 1);
        true
    }
}

/// Appends a replacement string, expanding `%0`..`%9` and `%%` (`add_s`).
unsafe fn add_string(state: *mut ffi::lua_State, m: &mut Matcher<'_>, buf: &mut Buf, src: &[u8], whole: (usize, usize)) {
    let news = bytes_at(state, 3);
    tick(state, m, news.len() / 2 + 1);
    let mut rest = news;
    while let Some(k) = memchr::memchr(b'%', rest) {
        buf.push(state, &rest[..k]);
        // C reads the NUL that ends every Lua string when '%' comes last.
        match rest.get(k + 1).copied().unwrap_or(0) {
            b'%' => buf.push(state, b"%"),
            b'0' => {
                tick(state, m, (whole.1 - whole.0) / 2);
                buf.push(state, &src[whole.0..whole.1]);
            }
            d @ b'1'..=b'9' => match m.get_capture(usize::from(d - b'1'), Some(whole)) {
                Ok(CapValue::Str(a, b)) => {
                    tick(state, m, (b - a) / 2);
                    buf.push(state, &src[a..b]);
                }
                Ok(CapValue::Position(p)) => {
                    let mut digits = [0u8; 20];
                    buf.push(state, decimal(p, &mut digits));
                }
                Err(e) => raise_failure(state, Some(e)),
            },
            _ => raise_message(state, c"invalid use of '%' in replacement string"),
        }
        rest = &rest[(k + 2).min(rest.len())..];
    }
    buf.push(state, rest);
}

/// `n` in decimal, written into `out` (no allocation: Lua may raise around it).
fn decimal(mut n: usize, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}
