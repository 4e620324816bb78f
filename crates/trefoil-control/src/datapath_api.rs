//! The `trefoil.datapath.v1.Datapath` service over the store: a function
//! adds a rule as its compact form plus source, priority, node, TTL and
//! origin; the rule is checked and written exactly as the REST API would
//! (same parsing, same generation rule), so both paths store the same
//! thing. Writing a rule again is an apply, which restarts its TTL: a
//! function seeing the same attack again extends the block.

use std::sync::Arc;

use axum::http::StatusCode;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;
use trefoil_model::datapath::{compact, ordered, Cidr, Rule as NamedRule};
use trefoil_model::spec::{DatapathRuleSpec, Origin};
use trefoil_model::{Duration, Metadata, Resource, Spec, API_VERSION};
use trefoil_wire::datapath::{Datapath, Flow, FlowStream, ListRulesRequest, ListRulesResponse, Rule, RuleName, WatchFlowsRequest};
use trefoil_wire::Status;

use crate::api::{self, ApiError};
use crate::flows::FlowStore;
use crate::store::{Store, StoreError};

const KIND: &str = "DatapathRule";

/// The service, over the control plane's store and its flow records.
pub struct DatapathService {
    store: Arc<Store>,
    flows: Arc<FlowStore>,
}

/// The most held flows WatchFlows sends before the new ones.
const HELD_FLOWS: usize = 1_000;

impl DatapathService {
    pub fn new(store: Arc<Store>, flows: Arc<FlowStore>) -> Self {
        DatapathService { store, flows }
    }
}

impl Datapath for DatapathService {
    async fn add_rule(&self, rule: Rule) -> Result<Rule, Status> {
        let spec = spec_of(&rule)?;
        let name = if rule.name.is_empty() { spec.derived_name() } else { rule.name };
        let resource = Resource {
            api_version: API_VERSION.to_string(),
            metadata: Metadata { name: name.clone(), ..Metadata::default() },
            spec: Spec::DatapathRule(spec.clone()),
        };
        let body = serde_json::to_vec(&resource).map_err(|e| Status::internal(e.to_string()))?;
        let (value, _) = api::parse(&self.store, KIND, Some(&name), &body).map_err(status_of)?;
        api::write(&self.store, KIND, &name, value, None).map_err(status_of)?;
        Ok(rule_of(&name, &spec))
    }

    async fn remove_rule(&self, name: RuleName) -> Result<RuleName, Status> {
        match self.store.delete(KIND, &name.name, None) {
            Ok(_) => Ok(name),
            Err(StoreError::NotFound { .. }) => Err(Status::not_found(format!("{KIND}/{} not found", name.name))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn list_rules(&self, _request: ListRulesRequest) -> Result<ListRulesResponse, Status> {
        let resources: Vec<Resource> = self.store.list(KIND).into_iter().filter_map(|s| serde_json::from_value(s.value).ok()).collect();
        let rules = NamedRule::all_in(&resources);
        Ok(ListRulesResponse { rules: ordered(&rules).into_iter().map(|r| rule_of(r.name, r.spec)).collect() })
    }

    async fn watch_flows(&self, request: WatchFlowsRequest) -> Result<FlowStream, Status> {
        let rule = Some(request.rule).filter(|r| !r.is_empty());
        // Subscribe before listing, so no report falls between the two (one may come both ways).
        let updates = BroadcastStream::new(self.flows.subscribe());
        let mut held = self.flows.list(rule.as_deref(), HELD_FLOWS);
        held.reverse();
        let held = tokio_stream::iter(held.into_iter().map(|f| Ok(flow_of(&f))));
        let new = updates.filter_map(move |update| match update {
            Ok(flow) if rule.as_deref().is_none_or(|r| r == flow.rule) => Some(Ok(flow_of(&flow))),
            Ok(_) => None,
            // A reader that fell behind misses flows; each comes again with its flow's next report.
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                tracing::debug!(missed, "a WatchFlows reader fell behind");
                None
            }
        });
        Ok(Box::pin(held.chain(new)))
    }
}

fn flow_of(f: &trefoil_api::flows::Flow) -> Flow {
    Flow {
        node: f.node.clone(),
        src: f.src.to_string(),
        dst: f.dst.to_string(),
        protocol: f.protocol.as_str().to_string(),
        rule: f.rule.clone(),
        action: f.action.as_str().to_string(),
        bytes: f.bytes,
        packets: f.packets,
        start_unix_nano: f.start_unix_nano,
        end_unix_nano: f.end_unix_nano,
    }
}

/// The spec a request describes; INVALID_ARGUMENT naming the field otherwise.
fn spec_of(rule: &Rule) -> Result<DatapathRuleSpec, Status> {
    let mut spec =
        compact::parse(&rule.compact).map_err(|e| Status::invalid_argument(format!("compact: {}", e.pointed(&rule.compact))))?.into_spec();
    spec.traffic.source = rule
        .source
        .iter()
        .map(|s| s.trim().parse::<Cidr>())
        .collect::<Result<_, _>>()
        .map_err(|e| Status::invalid_argument(format!("source: {e}")))?;
    spec.priority = rule.priority;
    spec.node = Some(rule.node.clone()).filter(|n| !n.is_empty());
    spec.ttl = match rule.ttl.as_str() {
        "" => None,
        ttl => Some(ttl.parse::<Duration>().map_err(|e| Status::invalid_argument(format!("ttl: {e}")))?),
    };
    let given = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
    let origin = Origin { cnf: given(&rule.origin_cnf), handler: given(&rule.origin_handler), trace_id: given(&rule.origin_trace_id) };
    spec.origin = Some(origin).filter(|o| *o != Origin::default());
    Ok(spec)
}

fn rule_of(name: &str, spec: &DatapathRuleSpec) -> Rule {
    let origin = spec.origin.clone().unwrap_or_default();
    Rule {
        name: name.to_string(),
        compact: compact::format(spec),
        source: spec.traffic.source.iter().map(Cidr::to_string).collect(),
        priority: spec.priority,
        node: spec.node.clone().unwrap_or_default(),
        ttl: spec.ttl.map(|t| t.to_string()).unwrap_or_default(),
        origin_cnf: origin.cnf.unwrap_or_default(),
        origin_handler: origin.handler.unwrap_or_default(),
        origin_trace_id: origin.trace_id.unwrap_or_default(),
    }
}

/// The REST API's refusal as a gRPC status, with every located problem.
fn status_of(e: ApiError) -> Status {
    let text = e.body().with_locations();
    match e.status() {
        StatusCode::NOT_FOUND => Status::not_found(text),
        StatusCode::CONFLICT => Status::aborted(text),
        s if s.is_client_error() => Status::invalid_argument(text),
        _ => Status::internal(text),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use trefoil_wire::datapath::DatapathClient;
    use trefoil_wire::Code;

    use super::*;

    async fn serve(test: &str) -> (SocketAddr, Arc<Store>) {
        let (addr, store, _) = serve_with_flows(test).await;
        (addr, store)
    }

    async fn serve_with_flows(test: &str) -> (SocketAddr, Arc<Store>, Arc<FlowStore>) {
        let dir = std::env::temp_dir().join(format!("trefoil-dpapi-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(dir.join("store.db")).unwrap());
        let proxies = Arc::new(crate::proxies::Proxies::default());
        let compiler = Arc::new(crate::config_stream::Compiler::new(store.clone(), proxies, None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = Arc::new(crate::auth::Auth::new(store.clone(), false, addr).unwrap());
        let config = crate::config_stream::ConfigStreamService::new(compiler, Arc::new(crate::identity::Issuer::for_tests(&dir)), auth);
        let flows = Arc::new(FlowStore::default());
        let service = DatapathService::new(store.clone(), flows.clone());
        tokio::spawn(trefoil_wire::serve_with_datapath(listener, config, service, std::future::pending()));
        (addr, store, flows)
    }

    #[tokio::test]
    async fn watch_flows_streams_the_held_flows_then_each_reported_one_of_its_rule() {
        use trefoil_api::flows::{Flow as ApiFlow, FlowReport};
        use trefoil_model::spec::{DatapathAction, Protocol};
        let (addr, _store, flows) = serve_with_flows("watch").await;
        let flow = |port: u16, rule: &str| ApiFlow {
            node: String::new(),
            src: format!("10.0.1.2:{port}").parse().unwrap(),
            dst: "10.0.2.5:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            rule: rule.into(),
            action: DatapathAction::Redirect,
            bytes: 3100,
            packets: 14,
            start_unix_nano: 1,
            end_unix_nano: u64::from(port),
        };
        let report = |flows: Vec<ApiFlow>| FlowReport { node: "edge".into(), flows, counters: vec![], dropped: 0 };
        flows.report(report(vec![flow(1, "web"), flow(2, "other")])).unwrap();
        let mut client = DatapathClient::connect(&addr.to_string()).await.unwrap();
        let mut stream = client.watch_flows("web").await.unwrap();
        let held = stream.message().await.unwrap().unwrap();
        assert_eq!(
            (held.node.as_str(), held.src.as_str(), held.rule.as_str(), held.action.as_str()),
            ("edge", "10.0.1.2:1", "web", "redirect")
        );
        flows.report(report(vec![flow(3, "other"), flow(4, "web")])).unwrap();
        let new = stream.message().await.unwrap().unwrap();
        assert_eq!(
            (new.src.as_str(), new.bytes, new.packets, new.protocol.as_str()),
            ("10.0.1.2:4", 3100, 14, "tcp"),
            "the other rule's flow is left out"
        );
    }

    #[tokio::test]
    async fn functions_add_list_and_remove_rules() {
        let (addr, store) = serve("crud").await;
        let mut client = DatapathClient::connect(&addr.to_string()).await.unwrap();
        let block = Rule {
            compact: "{10.0.2.5 * : drop}".into(),
            source: vec!["10.0.1.2".into()],
            ttl: "10m".into(),
            origin_cnf: "edgesecurity".into(),
            origin_handler: "intrusion".into(),
            origin_trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            ..Rule::default()
        };
        let added = client.add_rule(block.clone()).await.unwrap();
        assert!(added.name.starts_with("drop-"), "{added:?}");
        assert_eq!(
            (added.compact.as_str(), added.source.as_slice(), added.ttl.as_str()),
            ("10.0.2.5 * : drop", &["10.0.1.2/32".to_string()][..], "600s")
        );
        let first = store.get(KIND, &added.name).unwrap().resource_version;
        // Again: the same rule, written again (its TTL starts over).
        assert_eq!(client.add_rule(block).await.unwrap().name, added.name);
        assert!(store.get(KIND, &added.name).unwrap().resource_version > first);
        let stored: Resource = serde_json::from_value(store.get(KIND, &added.name).unwrap().value).unwrap();
        let Spec::DatapathRule(spec) = stored.spec else { panic!() };
        assert_eq!(spec.origin.unwrap().handler.as_deref(), Some("intrusion"));

        let redirect = Rule { name: "web".into(), compact: "10.0.2.0/24 80 : redirect => app=http-proxy".into(), ..Rule::default() };
        client.add_rule(redirect).await.unwrap();
        let names: Vec<String> = client.list_rules().await.unwrap().rules.into_iter().map(|r| r.name).collect();
        assert_eq!(names, [added.name.clone(), "web".to_string()], "in table order: the /32 first");

        assert_eq!(client.remove_rule("web").await.unwrap().name, "web");
        assert_eq!(client.remove_rule("web").await.unwrap_err().code(), Code::NotFound);
    }

    #[tokio::test]
    async fn mistakes_are_invalid_arguments_that_say_where() {
        let (addr, _store) = serve("bad").await;
        let mut client = DatapathClient::connect(&addr.to_string()).await.unwrap();
        let refused = |compact: &str| Rule { compact: compact.into(), ..Rule::default() };
        let bad = client.add_rule(refused("10.0.2.0/24 80 : forward => app=x")).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().starts_with("compact: column 18: \"forward\" is not an action"), "{}", bad.message());
        let no_block = client.add_rule(refused("* 80 : drop")).await.unwrap_err();
        assert!(no_block.message().contains("spec.match: give `source` or `destination`"), "{}", no_block.message());
        let bad_ttl = client.add_rule(Rule { ttl: "soon".into(), ..refused("10.0.2.5 * : drop") }).await.unwrap_err();
        assert!(bad_ttl.message().starts_with("ttl: invalid duration"), "{}", bad_ttl.message());
        let bad_name = client.add_rule(Rule { name: "Web".into(), ..refused("10.0.2.5 * : drop") }).await.unwrap_err();
        assert_eq!(bad_name.code(), Code::InvalidArgument, "{}", bad_name.message());
    }
}
