//! The per-proxy config compiler: what one proxy's config file would hold.
//!
//! Placeholder until the full compiler (gateways, sidecars, discovered
//! endpoints, default routes) lands; the signature is the contract the
//! config stream relies on.

use trefoil_model::{Resource, Spec};

/// One proxy's snapshot: the resources it serves, at a store revision.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySnapshot {
    /// The store revision it was compiled at.
    pub version: u64,
    /// Hash of the content (not of the version): equal hashes, equal content.
    pub hash: u64,
    pub resources: Vec<Resource>,
}

/// Compiles the snapshot of proxy `proxy_name`: its own `Proxy` resource,
/// the listeners that name it or no proxy, and every service, route and
/// traffic policy. Server-set metadata is dropped so the hash changes only
/// with the content.
pub fn snapshot_for(proxy_name: &str, resources: &[Resource], version: u64) -> ProxySnapshot {
    let resources: Vec<Resource> = resources
        .iter()
        .filter(|r| match &r.spec {
            Spec::Proxy(_) => r.name() == proxy_name,
            Spec::Listener(l) => l.proxy.as_deref().is_none_or(|p| p == proxy_name),
            Spec::Service(_) | Spec::Route(_) | Spec::TrafficPolicy(_) => true,
            Spec::Workload(_) | Spec::Endpoints(_) => false,
        })
        .map(|r| {
            let mut r = r.clone();
            r.metadata.resource_version = None;
            r.metadata.generation = None;
            r
        })
        .collect();
    let hash = fnv1a(&serde_json::to_vec(&resources).unwrap_or_default());
    ProxySnapshot { version, hash, resources }
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Vec<Resource> {
        trefoil_model::load_str(&std::sync::Arc::from("t"), yaml).unwrap().into_iter().map(|s| s.resource).collect()
    }

    #[test]
    fn a_gateway_gets_its_proxy_and_its_listeners() {
        let all = parse(
            "apiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {name: a}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Proxy\nmetadata: {name: b}\n---\n\
             apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: for-b}\nspec: {address: \"127.0.0.1:1\", proxy: b}\n---\n\
             apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: any, generation: 3}\nspec: {address: \"127.0.0.1:2\"}\n",
        );
        let a = snapshot_for("a", &all, 7);
        let names: Vec<&str> = a.resources.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["a", "any"]);
        assert_eq!(a.resources[1].metadata.generation, None);
        // The version is not part of the content.
        assert_eq!(snapshot_for("a", &all, 8).hash, a.hash);
        assert_ne!(snapshot_for("b", &all, 7).hash, a.hash);
    }
}
