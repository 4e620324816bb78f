//! The control plane's `/metrics`: what it counts itself (today the
//! datapath's flows, bytes and drops from the node agents' reports), in
//! the OpenMetrics text format Prometheus scrapes.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route("/metrics", get(move || async move { render(&registry) }))
}

fn render(registry: &Registry) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
}
