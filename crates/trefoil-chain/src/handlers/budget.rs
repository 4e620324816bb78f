//! A run's budget of work and wall-clock time, and the count hook that charges
//! it on every Lua thread of the state.
//!
//! Why a raw hook rather than mlua's `set_hook`: mlua keeps one hook for one
//! thread and removes it from any other thread it fires on, so a coroutine the
//! script made ran unbounded (`coroutine.wrap(function() while true do end
//! end)()` spun a worker forever). Lua 5.4 gives a new thread the hook of the
//! thread creating it, so one hook set on the main thread before any other
//! thread exists reaches the script's thread, every coroutine it makes, and
//! whatever the host runs on the main thread (an error object's `__tostring`).
//!
//! A thread counts towards its hook only every [`HOOK_EVERY`] of its own
//! instructions, so a coroutine that ends sooner would go uncounted: creating
//! one is charged [`HOOK_EVERY`] up front. Library functions whose work grows
//! with their arguments charge it too ([`Budget::charge`]), so one call cannot
//! run past the bounds the way one VM instruction can.

// These are C functions and hooks on Lua's own C API (mlua has no safe
// form of a count hook on every thread, nor of a C function that raises
// errors as Lua's library does); each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{ffi, Lua};

/// The hook runs every this many instructions of a thread. Between two runs
/// of it, one instruction can cost time in proportion to a string's length
/// (comparing, concatenating or converting to a number a long string), so
/// this also bounds how far past its deadline a run can go: 100 such
/// operations on the longest string the memory limit allows. At 100 the hook
/// adds about 3.5% to a pure-Lua loop, against mlua's hook at every 1,000
/// (instructions counted under a simulator).
pub(super) const HOOK_EVERY: u32 = 100;

/// Bytes a library function may scan, copy or make per instruction charged
/// (about what one average VM instruction costs in time).
pub(super) const BYTES_PER_INSTRUCTION: u64 = 16;

/// Which bound stopped a run, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Stop {
    None = 0,
    Instructions = 1,
    Deadline = 2,
    /// The run is over: anything still running (a `__close` handler when a
    /// state is torn down) stops at once.
    Over = 3,
}

impl Stop {
    fn from_u8(v: u8) -> Stop {
        match v {
            0 => Stop::None,
            1 => Stop::Instructions,
            2 => Stop::Deadline,
            _ => Stop::Over,
        }
    }
}

/// Instructions (and the work library functions charge as instructions) and
/// the deadline of one run.
///
/// Atomics only because the state, and with it this, moves between worker
/// threads across awaits; one thread uses it at a time.
#[derive(Debug)]
pub(super) struct Budget {
    used: AtomicU64,
    /// The clock is read when `used` reaches this: every [`HOOK_EVERY`] units.
    next_clock: AtomicU64,
    max: u64,
    deadline: Instant,
    stop: AtomicU8,
}

impl Budget {
    pub(super) fn new(max: u64, wall: Duration) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            next_clock: AtomicU64::new(0),
            max,
            deadline: Instant::now() + wall,
            stop: AtomicU8::new(Stop::None as u8),
        }
    }

    /// Counts `units` of work; an error once any bound is passed, and from then on.
    pub(super) fn charge(&self, units: u64) -> Result<(), Stop> {
        let stop = self.stop();
        if stop != Stop::None {
            return Err(stop);
        }
        // Saturating: a charge computed from a script's arguments can be near u64::MAX.
        let used = self.used.load(Ordering::Relaxed).saturating_add(units);
        self.used.store(used, Ordering::Relaxed);
        let stop = if used > self.max {
            Stop::Instructions
        } else if used >= self.next_clock.load(Ordering::Relaxed) {
            self.next_clock.store(used.saturating_add(u64::from(HOOK_EVERY)), Ordering::Relaxed);
            if Instant::now() <= self.deadline {
                return Ok(());
            }
            Stop::Deadline
        } else {
            return Ok(());
        };
        self.stop.store(stop as u8, Ordering::Relaxed);
        Err(stop)
    }

    pub(super) fn stop(&self) -> Stop {
        Stop::from_u8(self.stop.load(Ordering::Relaxed))
    }

    /// Marks the run over; returns the bound that stopped it, if one did.
    pub(super) fn finish(&self) -> Stop {
        let _ = self.stop.compare_exchange(Stop::None as u8, Stop::Over as u8, Ordering::Relaxed, Ordering::Relaxed);
        match self.stop() {
            Stop::Over => Stop::None,
            stop => stop,
        }
    }
}

/// The registry key under which the budget's address is kept (a light userdata).
static BUDGET_KEY: u8 = 0;

fn budget_key() -> *const c_void {
    &BUDGET_KEY as *const u8 as *const c_void
}

/// The message of the error a stopped run raises; scripts see it if they look.
pub(super) const STOPPED: &std::ffi::CStr = c"stopped at its instruction or time bound";

/// The budget of the state `state` belongs to, if [`install`] set one.
///
/// # Safety
/// `state` must be a live thread of a state; the reference must not outlive it.
pub(super) unsafe fn budget_of<'a>(state: *mut ffi::lua_State) -> Option<&'a Budget> {
    ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, budget_key());
    let budget = ffi::lua_touserdata(state, -1) as *const Budget;
    ffi::lua_pop(state, 1);
    // SAFETY: `install` stored the address of a budget the state owns (its app data).
    budget.as_ref()
}

/// Raises the error that stops a run (from a C function or the hook).
///
/// # Safety
/// `state` must be a live thread; nothing with a destructor may be alive in the
/// caller's frames up to the Lua boundary, as this longjmps over them.
pub(super) unsafe fn raise_stopped(state: *mut ffi::lua_State) -> ! {
    ffi::lua_pushstring(state, STOPPED.as_ptr());
    ffi::lua_error(state)
}

/// Charges `units` to the budget of `state`, raising the stop error once a
/// bound is passed (or when the state has no budget: fail closed).
///
/// # Safety
/// As [`raise_stopped`].
pub(super) unsafe fn charge_or_raise(state: *mut ffi::lua_State, units: u64) {
    let within = match budget_of(state) {
        Some(budget) => budget.charge(units).is_ok(),
        None => false,
    };
    if !within {
        raise_stopped(state);
    }
}

/// Sets the count hook on the main thread of `lua`. Call it before the state
/// creates any thread that runs script code: those inherit it.
pub(super) fn install(lua: &Lua, budget: Arc<Budget>) -> mlua::Result<()> {
    let address = Arc::as_ptr(&budget) as *mut c_void;
    // The state owns a reference, so the address stays valid for as long as
    // the state and any hook it runs; app data is dropped after `lua_close`.
    lua.set_app_data(budget);
    // SAFETY: outside a callback `exec_raw` hands us the main thread, inside
    // a protected call; pushing a light userdata and setting a registry field
    // and a hook are plain API calls on it.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_pushlightuserdata(state, address);
            ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, budget_key());
            ffi::lua_sethook(state, Some(hook), ffi::LUA_MASKCOUNT, HOOK_EVERY as i32);
        })
    }
}

/// Charges the instructions since the last call and raises once a bound is passed.
unsafe extern "C-unwind" fn hook(state: *mut ffi::lua_State, _ar: *mut ffi::lua_Debug) {
    let every = u64::try_from(ffi::lua_gethookcount(state)).unwrap_or(u64::from(HOOK_EVERY));
    // SAFETY: called by Lua on a live thread; this frame holds nothing to drop.
    charge_or_raise(state, every);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_bound_stays_passed() {
        let budget = Budget::new(1_000, Duration::from_secs(3600));
        assert_eq!(budget.charge(600), Ok(()));
        assert_eq!(budget.charge(600), Err(Stop::Instructions));
        assert_eq!(budget.charge(0), Err(Stop::Instructions), "nothing more once stopped");
        assert_eq!(budget.finish(), Stop::Instructions);
    }

    #[test]
    fn huge_charges_saturate() {
        let budget = Budget::new(u64::MAX - 1, Duration::from_secs(3600));
        assert_eq!(budget.charge(u64::MAX - 10), Ok(()));
        assert_eq!(budget.charge(u64::MAX), Err(Stop::Instructions), "no wrap-around back under the bound");
    }

    #[test]
    fn after_the_run_nothing_may_run() {
        let budget = Budget::new(1_000, Duration::from_secs(3600));
        assert_eq!(budget.finish(), Stop::None, "the run itself ended within its bounds");
        assert_eq!(budget.charge(0), Err(Stop::Over));
    }
}
