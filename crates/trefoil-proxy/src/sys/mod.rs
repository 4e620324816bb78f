//! Process-level helpers that know nothing of protocols: the descriptor
//! budget, giving memory back, a coarse per-thread timer, a future polled
//! only when woken, and relaying bytes between sockets in the kernel.

pub(crate) mod coarse_timer;
pub mod descriptors;
pub(crate) mod memory;
pub(crate) mod splice;
pub(crate) mod woken;
