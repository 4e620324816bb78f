//! What the observing commands (`top`, `check`, `describe`) share: reading
//! the control plane, and fetching from proxies (the metrics math is `trefoil-metrics`).

pub mod control_plane;
pub mod fetch;
