//! What the observing commands (`top`, `check`, `describe`) share: reading
//! the control plane, fetching from proxies, and the metrics math.

pub mod control_plane;
pub mod fetch;
pub mod promtext;
pub mod traffic;
