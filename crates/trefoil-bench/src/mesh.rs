//! The mesh the benchmark loads: one service per route, each with a v1 and a
//! v2 endpoint, and a route per service with a host, a path prefix and an
//! 80/20 split between the versions (the shape of a canary).

use serde_json::{json, Value};
use trefoil_model::Resource;

/// The name of the `i`-th service and of the route that shapes it.
pub(crate) fn name(i: usize) -> String {
    format!("app-{i:05}")
}

/// A service with one endpoint per version. The addresses are never dialled.
pub(crate) fn service(i: usize) -> Resource {
    let port = 10_000 + (i % 50_000);
    typed(json!({
        "apiVersion": trefoil_model::API_VERSION,
        "kind": "Service",
        "metadata": {"name": name(i)},
        "spec": {
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"address": format!("127.0.0.2:{port}"), "version": "v1"},
                {"address": format!("127.0.0.3:{port}"), "version": "v2"},
            ],
        },
    }))
}

/// The route of service `i`, sending `v2_weight` percent to v2.
pub(crate) fn route(i: usize, v2_weight: u32) -> Resource {
    let service = name(i);
    typed(json!({
        "apiVersion": trefoil_model::API_VERSION,
        "kind": "Route",
        "metadata": {"name": service},
        "spec": {
            "hosts": [format!("{service}.example.com")],
            // Naming the service keeps the compiler from adding a default
            // route for it, so a snapshot holds exactly the routes loaded.
            "service": service,
            "rules": [{
                "matches": [{"path": {"prefix": "/api"}}],
                "backends": [
                    {"service": service, "version": "v1", "weight": 100 - v2_weight.min(100)},
                    {"service": service, "version": "v2", "weight": v2_weight.min(100)},
                ],
            }],
        },
    }))
}

/// The resource a JSON document above describes. They are written out in
/// this file, and `generated_resources_validate` loads and validates each
/// shape, so reading one cannot fail.
fn typed(document: Value) -> Resource {
    serde_json::from_value(document).expect("the benchmark's resources are valid resources (see generated_resources_validate)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated resources are ones the control plane accepts.
    #[test]
    fn generated_resources_validate() {
        let json = |r: &Resource| serde_json::to_string(r).unwrap();
        let text = format!("{}\n---\n{}\n", json(&service(7)), json(&route(7, 20)));
        let sources = trefoil_model::load_str(&std::sync::Arc::from("bench"), &text).expect("loads");
        trefoil_model::validate(&sources).expect("valid");
    }
}
