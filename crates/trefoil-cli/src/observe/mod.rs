//! What the observing commands (`top`, `check`, `describe`) share: reading
//! the control plane (fetching and the metrics math are `trefoil-metrics`).

pub(crate) mod control_plane;
