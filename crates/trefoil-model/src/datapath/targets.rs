//! Where a datapath rule's `to` leads, read from the resources themselves:
//! the node agent programs it, `trefoil describe datapathrule` shows it, so
//! the two cannot disagree about why a rule does nothing.
//!
//! A Workload, NetworkFunction or CNF says where it is reached with two
//! labels, which any kind carries and `to` already selects on:
//! `trefoil.dev/listener: <Listener name>` names the Listener (with
//! `transparent: true`) of the proxy fronting it, the redirect target;
//! `trefoil.dev/interface: <interface>` names the interface in the node's
//! namespace where it receives copies. Labels need no schema change on three
//! kinds and stay visible in `trefoil get -o yaml`.

use std::net::SocketAddr;

use crate::datapath::Family;
use crate::spec::{DatapathAction, DatapathRuleSpec, ListenerSpec, Protocol};
use crate::{Resource, Spec};

/// The label naming the transparent Listener that fronts a function.
pub const LISTENER_LABEL: &str = "trefoil.dev/listener";
/// The label naming the interface a function receives copies on.
pub const INTERFACE_LABEL: &str = "trefoil.dev/interface";

/// What a rule's `to` resolves to: every usable target, in the order of the
/// resources given, and why each selected function that is not usable is not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    /// Transparent listener addresses (redirect rules).
    pub listeners: Vec<SocketAddr>,
    /// Interfaces (copy rules).
    pub interfaces: Vec<String>,
    /// One line per problem, naming the function (`CNF/edge: ...`).
    pub problems: Vec<String>,
}

impl Targets {
    /// The listener that takes `family`'s connections (the first one), or why none does.
    pub fn listener(&self, family: Family) -> Result<SocketAddr, String> {
        let v4 = family == Family::Ipv4;
        if let Some(address) = self.listeners.iter().find(|a| a.is_ipv4() == v4) {
            return Ok(*address);
        }
        let mut why = self.problems.clone();
        if !self.listeners.is_empty() {
            let named: Vec<String> = self.listeners.iter().map(SocketAddr::to_string).collect();
            why.push(format!("no transparent listener takes {family} traffic (only {})", named.join(", ")));
        }
        Err(why.join("; "))
    }

    /// The interface copies go to (the first one), or why there is none.
    pub fn interface(&self) -> Result<&str, String> {
        self.interfaces.first().map(String::as_str).ok_or_else(|| self.problems.join("; "))
    }
}

/// Resolves `spec.to` among `resources` (functions and Listeners; other
/// kinds are ignored). A drop rule has no targets and no problems.
pub fn resolve(spec: &DatapathRuleSpec, resources: &[Resource]) -> Targets {
    let mut targets = Targets::default();
    if !spec.action.needs_target() {
        return targets;
    }
    if spec.action == DatapathAction::Redirect && spec.traffic.protocol == Protocol::Udp {
        targets.problems.push("redirect steers TCP connections only; UDP can be copied or dropped".into());
        return targets;
    }
    let functions = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Workload(_) | Spec::NetworkFunction(_) | Spec::Cnf(_)))
        .filter(|r| spec.to.matches(&r.metadata.labels));
    let mut any = false;
    for function in functions {
        any = true;
        let id = format!("{}/{}", function.kind(), function.name());
        let found = match spec.action {
            DatapathAction::Redirect => listener(function, &id, resources).map(|a| targets.listeners.push(a)),
            _ => interface(function, &id).map(|i| targets.interfaces.push(i)),
        };
        if let Err(problem) = found {
            targets.problems.push(problem);
        }
    }
    if !any {
        targets.problems.push(format!("`to` ({}) selects no Workload, NetworkFunction or CNF", spec.to));
    }
    targets
}

fn interface(function: &Resource, id: &str) -> Result<String, String> {
    function
        .metadata
        .labels
        .get(INTERFACE_LABEL)
        .cloned()
        .ok_or_else(|| format!("{id} has no {INTERFACE_LABEL} label naming the interface that receives copies"))
}

fn listener(function: &Resource, id: &str, resources: &[Resource]) -> Result<SocketAddr, String> {
    let name = function
        .metadata
        .labels
        .get(LISTENER_LABEL)
        .ok_or_else(|| format!("{id} has no {LISTENER_LABEL} label naming its transparent Listener"))?;
    let spec: &ListenerSpec = resources
        .iter()
        .find_map(|r| match &r.spec {
            Spec::Listener(l) if r.name() == name => Some(l),
            _ => None,
        })
        .ok_or_else(|| format!("{id}: Listener {name:?} does not exist"))?;
    if !spec.transparent {
        return Err(format!("{id}: Listener {name:?} is not `transparent: true`"));
    }
    Ok(spec.address)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn load(yaml: &str) -> Vec<Resource> {
        crate::load_str(&Arc::from("t.yaml"), yaml).unwrap().into_iter().map(|s| s.resource).collect()
    }

    const FUNCTIONS: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: tproxy}\nspec: {address: 10.1.0.1:15001, protocol: tcp, transparent: true}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: plain}\nspec: {address: 10.1.0.1:8080}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge, labels: {app: http-proxy, trefoil.dev/listener: tproxy}}\nspec: {chain: [{function: policy}]}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: ids, labels: {app: ids, trefoil.dev/interface: veth-ids}}\nspec: {chain: [{function: policy}]}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: broken, labels: {app: broken, trefoil.dev/listener: plain}}\nspec: {chain: [{function: policy}]}\n---
apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: lost, labels: {app: lost, trefoil.dev/listener: gone}}\nspec: {chain: [{function: policy}]}\n";

    fn spec(text: &str) -> DatapathRuleSpec {
        crate::datapath::compact::parse(text).unwrap().into_spec()
    }

    #[test]
    fn redirect_and_copy_resolve_through_the_labels() {
        let all = load(FUNCTIONS);
        let redirect = resolve(&spec("10.2.0.0/24 80 : redirect => app=http-proxy"), &all);
        assert_eq!(redirect.listener(Family::Ipv4), Ok("10.1.0.1:15001".parse().unwrap()));
        assert_eq!(redirect.listener(Family::Ipv6), Err("no transparent listener takes IPv6 traffic (only 10.1.0.1:15001)".into()));
        let copy = resolve(&spec("10.2.0.0/24 * : copy => app=ids"), &all);
        assert_eq!(copy.interface(), Ok("veth-ids"));
        assert_eq!(resolve(&spec("10.2.0.0/24 * : drop"), &all), Targets::default());
    }

    #[test]
    fn each_reason_a_target_does_not_resolve_is_named() {
        let all = load(FUNCTIONS);
        let why = |text: &str| resolve(&spec(text), &all).problems.join(" | ");
        assert_eq!(why("10.2.0.0/24 80 : redirect => app=nobody"), "`to` (app=nobody) selects no Workload, NetworkFunction or CNF");
        assert_eq!(why("10.2.0.0/24 80 : redirect => app=broken"), "CNF/broken: Listener \"plain\" is not `transparent: true`");
        assert_eq!(why("10.2.0.0/24 80 : redirect => app=lost"), "CNF/lost: Listener \"gone\" does not exist");
        assert_eq!(
            why("10.2.0.0/24 80 : redirect => app=ids"),
            "CNF/ids has no trefoil.dev/listener label naming its transparent Listener"
        );
        assert_eq!(
            why("10.2.0.0/24 80 : copy => app=http-proxy"),
            "CNF/edge has no trefoil.dev/interface label naming the interface that receives copies"
        );
        assert_eq!(
            why("10.2.0.0/24 53/udp : redirect => app=http-proxy"),
            "redirect steers TCP connections only; UDP can be copied or dropped"
        );
        let partly = resolve(
            &spec("10.2.0.0/24 80 : redirect => tier=edge"),
            &load(&FUNCTIONS.replace("app: http-proxy", "app: http-proxy, tier: edge").replace("app: broken", "app: broken, tier: edge")),
        );
        assert_eq!(partly.listener(Family::Ipv4), Ok("10.1.0.1:15001".parse().unwrap()), "one usable target is enough");
    }
}
