//! Process-level helpers that know nothing of protocols: the descriptor
//! budget, giving memory back, a coarse per-thread timer, and a future polled
//! only when woken.

pub(crate) mod coarse_timer;
pub mod descriptors;
pub(crate) mod memory;
pub(crate) mod woken;
