//! File descriptors: one table per process, shared by every client and
//! upstream connection, so one greedy client can starve everyone. A probe
//! did exactly that: one HTTP/2 connection with 1,000 streams to a slow
//! HTTP/1 upstream opened 1,000 upstream connections, the inherited soft
//! limit (1024) ran out, and the proxy refused every new client.
//!
//! Three defences, from the outside in:
//! - [`raise_limit`]: the soft `RLIMIT_NOFILE` goes up to the hard one at
//!   start, as nginx (`worker_rlimit_nofile`) and Go's runtime do;
//! - a reserve: upstream connections may use the table only up to
//!   [`RESERVE`] short of the limit, so clients can still be accepted and
//!   answered (503) when upstreams take the rest; the newest upstream work
//!   is shed, never the accept loop;
//! - [`Spare`]: if accepting still fails with EMFILE, a descriptor kept
//!   aside is freed to accept the pending connection and close it at once,
//!   instead of leaving it (and every later one) in the backlog.
//!
//! The count is process-wide on purpose: it mirrors the kernel's table.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Connections this proxy holds open (clients and upstreams).
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Client connections open, and accepted since start.
static CLIENTS: AtomicUsize = AtomicUsize::new(0);
static ACCEPTED: AtomicUsize = AtomicUsize::new(0);
/// Times an upstream connection was refused for want of descriptors: each
/// worker drops its idle upstream connections when it sees this change.
static SHORTAGES: AtomicUsize = AtomicUsize::new(0);

/// Descriptors kept for everything but upstream connections: accepting
/// and answering clients, listeners, logs, health checks.
pub(crate) const RESERVE: usize = 64;

/// Raises the soft limit on open files to the hard limit; returns (before, after).
#[allow(unsafe_code)] // getrlimit and setrlimit have no safe form in std
pub fn raise_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// The soft limit now. Read at every upstream connect (a system call, next
/// to the several a connect makes), so a limit changed from outside holds.
#[allow(unsafe_code)] // getrlimit and setrlimit have no safe form in std
fn limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: as in `raise_limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return usize::MAX;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// One open connection in the count; leaves it when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    client: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        if self.client {
            CLIENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Counts an accepted client connection; always granted (it is already open).
pub(crate) fn hold_client() -> Held {
    OPEN.fetch_add(1, Ordering::Relaxed);
    CLIENTS.fetch_add(1, Ordering::Relaxed);
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
    Held { client: true }
}

/// Client connections open now, accepted since start, and connections
/// (clients and upstreams) open now.
pub(crate) fn connection_counts() -> (usize, usize, usize) {
    (CLIENTS.load(Ordering::Relaxed), ACCEPTED.load(Ordering::Relaxed), OPEN.load(Ordering::Relaxed))
}

/// Counts an upstream connection about to be opened, or refuses it when it
/// would eat into the reserve.
pub(crate) fn try_hold_upstream() -> Option<Held> {
    let open = OPEN.fetch_add(1, Ordering::Relaxed);
    if open.saturating_add(RESERVE) >= limit() {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        SHORTAGES.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(Held { client: false })
}

/// How many times descriptors ran short so far (see [`SHORTAGES`]).
pub(crate) fn shortages() -> usize {
    SHORTAGES.load(Ordering::Relaxed)
}

/// Whether an error is this process running out of descriptors (not the
/// peer's fault, and not to be counted against it).
pub(crate) fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether an error, or one of its causes, is [`is_exhaustion`].
pub(crate) fn caused_by_exhaustion(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<io::Error>().is_some_and(is_exhaustion) || e.downcast_ref::<Exhausted>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// An upstream connection refused to keep descriptors for clients.
#[derive(Debug, thiserror::Error)]
#[error("too many open connections: keeping the last {RESERVE} file descriptors for clients")]
pub(crate) struct Exhausted;

/// A descriptor kept aside, freed to accept (and close) a connection the
/// accept loop could not otherwise take.
pub(crate) struct Spare(Mutex<Option<File>>);

impl Spare {
    pub(crate) fn new() -> Self {
        Spare(Mutex::new(File::open("/dev/null").ok()))
    }

    /// Frees the spare, runs `accept_and_close`, and takes the spare again.
    pub(crate) fn spend(&self, accept_and_close: impl FnOnce()) {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        drop(spare.take());
        accept_and_close();
        *spare = File::open("/dev/null").ok();
    }
}

impl Default for Spare {
    fn default() -> Self {
        Spare::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_recognised_through_causes() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_exhaustion(&emfile));
        assert!(!is_exhaustion(&io::Error::from(io::ErrorKind::ConnectionRefused)));
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapped(#[source] io::Error);
        assert!(caused_by_exhaustion(&Wrapped(emfile)));
        assert!(caused_by_exhaustion(&Exhausted));
        assert!(!caused_by_exhaustion(&Wrapped(io::Error::from(io::ErrorKind::ConnectionRefused))));
    }

    #[test]
    fn upstream_holds_count_and_release() {
        let before = OPEN.load(Ordering::Relaxed);
        let held = try_hold_upstream().expect("a test process is far from its limit");
        assert!(OPEN.load(Ordering::Relaxed) > before);
        drop(held);
        let client = hold_client();
        drop(client);
        assert!(OPEN.load(Ordering::Relaxed) <= before + 1, "other tests may hold one meanwhile");
    }
}
