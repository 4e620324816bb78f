//! What the proxy serves from: resources compiled into a [`snapshot`], the
//! [`state`] that holds the one in force, and the [`control_client`] that
//! receives new ones from the control plane, with the [`datapath_link`]
//! that carries handlers' datapath changes back to it.

pub(crate) mod control_client;
pub(crate) mod datapath_link;
pub(crate) mod on_demand;
pub(crate) mod snapshot;
pub(crate) mod state;
