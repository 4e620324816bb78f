//! `GET /api/v1/status/proxies`: what the control plane knows of each proxy.

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
