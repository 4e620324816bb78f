//! `GET /api/v1/status/proxies`: what the control plane knows of each proxy;
//! `GET /api/v1/status/controlplane`: this replica, its store and the leader.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use trefoil_api::ProxyStatusList;

use crate::proxies::Proxies;
use crate::store::Store;

pub fn router(store: Arc<Store>, proxies: Arc<Proxies>) -> Router {
    Router::new().route("/api/v1/status/proxies", get(list)).with_state((store, proxies))
}

/// Every proxy that connected, and every `Proxy` resource that never did.
async fn list(State((store, proxies)): State<(Arc<Store>, Arc<Proxies>)>) -> Json<ProxyStatusList> {
    let declared: Vec<String> = store.list("Proxy").into_iter().map(|s| s.name).collect();
    Json(ProxyStatusList::new(proxies.compiled_revision(), proxies.status(&declared)))
}

/// What `GET /api/v1/status/controlplane` reports.
#[derive(Clone)]
pub struct ControlPlane {
    /// This replica's name: its REST address.
    pub me: String,
    pub store: crate::store::Location,
    pub leader: tokio::sync::watch::Receiver<crate::store::etcd::Leader>,
}

pub fn control_plane_router(plane: ControlPlane) -> Router {
    Router::new().route("/api/v1/status/controlplane", get(control_plane)).with_state(Arc::new(plane))
}

/// `{"name", "store", "leader", "isLeader"}`; `leader` is null while none is known.
async fn control_plane(State(plane): State<Arc<ControlPlane>>) -> Json<trefoil_api::ControlPlaneStatus> {
    let leader = plane.leader.borrow().clone();
    Json(trefoil_api::ControlPlaneStatus {
        name: plane.me.clone(),
        store: plane.store.to_string(),
        leader: leader.holder,
        is_leader: leader.me,
    })
}
