//! Trefoil's control plane. So far: the embedded, crash-safe resource store
//! the rest of the control plane will be built on.

pub mod store;
