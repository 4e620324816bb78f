//! The `trefoil.datapath.v1.Datapath` service over the store: a function
//! adds a rule as its compact form plus source, priority, node, TTL and
//! origin; the rule is checked and written exactly as the REST API would
//! (same parsing, same generation rule), so both paths store the same
//! thing. Writing a rule again is an apply, which restarts its TTL: a
//! function seeing the same attack again extends the block.
//!
//! No call is anonymous (decision 0028): served over TLS, a caller proves
//! itself by its SVID (a proxy's handlers) or by an API token in the
//! `authorization` metadata, as for the REST API (writes need `editor`,
//! reads `viewer`). Writes go to the audit log under the caller's SPIFFE id
//! or token id.

use std::sync::Arc;

use axum::http::StatusCode;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;
use trefoil_api::Role;
use trefoil_model::datapath::{compact, ordered, Cidr, Rule as NamedRule};
use trefoil_model::spec::{DatapathRuleSpec, Origin};
use trefoil_model::{Duration, Metadata, Resource, Spec, API_VERSION};
use trefoil_wire::datapath::{Datapath, Flow, FlowStream, ListRulesRequest, ListRulesResponse, Rule, RuleName, WatchFlowsRequest};
use trefoil_wire::{Request, Status};

use crate::api::{self, ApiError};
use crate::auth::{Auth, Caller};
use crate::flows::FlowStore;
use crate::store::{Store, StoreError};

const KIND: &str = "DatapathRule";

/// The service, over the control plane's store and its flow records.
pub struct DatapathService {
    store: Arc<Store>,
    flows: Arc<FlowStore>,
    /// Checks tokens and keeps the audit log.
    auth: Arc<Auth>,
    /// Served over TLS: a call without a token must present an SVID.
    authenticate: bool,
}

/// The most held flows WatchFlows sends before the new ones.
const HELD_FLOWS: usize = 1_000;

impl DatapathService {
    pub fn new(store: Arc<Store>, flows: Arc<FlowStore>, auth: Arc<Auth>) -> Self {
        DatapathService { store, flows, auth, authenticate: false }
    }

    /// Refuses a call with neither a token nor an SVID; for a server behind
    /// TLS that reports client certificates.
    pub fn authenticating(mut self) -> Self {
        self.authenticate = true;
        self
    }

    /// Who made `request`, if they may do what needs `needed`: a token's
    /// holder when `authorization` is given (checked even on a plaintext
    /// server), else the SVID's workload, else, on a plaintext server
    /// (loopback only), whoever it is.
    fn caller<T>(&self, request: &Request<T>, needed: Role, what: &str) -> Result<Caller, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            let text = value.to_str().map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
            let caller = self.auth.bearer_caller(text).map_err(Status::unauthenticated)?;
            if caller.role < needed {
                return Err(Status::permission_denied(format!(
                    "token {} has role {}; {what} needs {needed}",
                    caller.token_id, caller.role
                )));
            }
            return Ok(caller);
        }
        if !self.authenticate {
            return Ok(Caller { token_id: PLAINTEXT_CALLER.into(), role: Role::Admin });
        }
        match request.extensions().get::<trefoil_wire::PeerInfo>().and_then(|p| p.certificate.as_deref()) {
            // A workload's SVID: its handlers act for it, as the proxy's own stream does.
            Some(der) => {
                let id = crate::identity::stream_tls::caller(der).map_err(Status::unauthenticated)?;
                Ok(Caller { token_id: id.to_string(), role: Role::Editor })
            }
            None => Err(Status::unauthenticated(format!("{what} needs a caller: present an SVID as the TLS client certificate, or send `authorization: Bearer <token>` (an API token, as for the REST API)"))),
        }
    }
}

/// Who a call on a plaintext server (`--insecure-plaintext-stream`) is, in the audit log.
const PLAINTEXT_CALLER: &str = "anonymous";

impl Datapath for DatapathService {
    async fn add_rule(&self, request: Request<Rule>) -> Result<Rule, Status> {
        let caller = self.caller(&request, Role::Editor, "AddRule")?;
        let rule = request.into_inner();
        let spec = spec_of(&rule)?;
        let name = if rule.name.is_empty() { spec.derived_name() } else { rule.name };
        let resource = Resource {
            api_version: API_VERSION.to_string(),
            metadata: Metadata { name: name.clone(), ..Metadata::default() },
            spec: Spec::DatapathRule(spec.clone()),
        };
        let body = serde_json::to_vec(&resource).map_err(|e| Status::internal(e.to_string()))?;
        let (value, _) = api::parse(&self.store, KIND, Some(&name), &body).map_err(status_of)?;
        let (rv, before) = api::write(&self.store, KIND, &name, value, None).map_err(status_of)?;
        self.auth.record(&caller, "apply", &format!("{KIND}/{name}"), before, Some(rv));
        Ok(rule_of(&name, &spec))
    }

    async fn remove_rule(&self, request: Request<RuleName>) -> Result<RuleName, Status> {
        let caller = self.caller(&request, Role::Editor, "RemoveRule")?;
        let name = request.into_inner();
        let before = self.store.get(KIND, &name.name).map(|s| s.resource_version);
        match self.store.delete(KIND, &name.name, None) {
            Ok(_) => {
                self.auth.record(&caller, "delete", &format!("{KIND}/{}", name.name), before, None);
                Ok(name)
            }
            Err(StoreError::NotFound { .. }) => Err(Status::not_found(format!("{KIND}/{} not found", name.name))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn list_rules(&self, request: Request<ListRulesRequest>) -> Result<ListRulesResponse, Status> {
        self.caller(&request, Role::Viewer, "ListRules")?;
        let resources: Vec<Resource> = self.store.list(KIND).into_iter().filter_map(|s| serde_json::from_value(s.value).ok()).collect();
        let rules = NamedRule::all_in(&resources);
        Ok(ListRulesResponse { rules: ordered(&rules).into_iter().map(|r| rule_of(r.name, r.spec)).collect() })
    }

    async fn watch_flows(&self, request: Request<WatchFlowsRequest>) -> Result<FlowStream, Status> {
        self.caller(&request, Role::Viewer, "WatchFlows")?;
        let request = request.into_inner();
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

    /// An empty store in a fresh scratch directory named by `name`, and a compiler over it.
    fn scratch(name: &str) -> (std::path::PathBuf, Arc<Store>, Arc<crate::config_stream::Compiler>) {
        let dir = std::env::temp_dir().join(format!("trefoil-dpapi-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(dir.join("store.db")).unwrap());
        let proxies = Arc::new(crate::proxies::Proxies::default());
        let compiler = Arc::new(crate::config_stream::Compiler::new(store.clone(), proxies, None));
        (dir, store, compiler)
    }

    async fn serve(test: &str) -> (SocketAddr, Arc<Store>) {
        let (addr, store, _) = serve_with_flows(test).await;
        (addr, store)
    }

    async fn serve_with_flows(test: &str) -> (SocketAddr, Arc<Store>, Arc<FlowStore>) {
        let (dir, store, compiler) = scratch(&format!("{}-{test}", std::process::id()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = Arc::new(crate::auth::Auth::new(store.clone(), false, addr).unwrap());
        let config =
            crate::config_stream::ConfigStreamService::new(compiler, Arc::new(crate::identity::Issuer::for_tests(&dir)), auth.clone());
        let flows = Arc::new(FlowStore::default());
        let service = DatapathService::new(store.clone(), flows.clone(), auth);
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

    /// A control plane serving both services over TLS, as `trefoil control`
    /// does without `--insecure-plaintext-stream`.
    struct Tls {
        addr: SocketAddr,
        store: Arc<Store>,
        auth: Arc<Auth>,
        issuer: Arc<crate::identity::Issuer>,
        tokens: crate::identity::join::JoinTokens,
    }

    async fn serve_tls(test: &str) -> Tls {
        let (dir, store, compiler) = scratch(&format!("tls-{}-{test}", std::process::id()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = Arc::new(Auth::new(store.clone(), false, addr).unwrap());
        let tokens = crate::identity::join::JoinTokens::new(&dir);
        let issuer = Arc::new(crate::identity::Issuer::for_tests(&dir));
        let tls = crate::identity::stream_tls::server_config(issuer.clone(), addr).unwrap();
        let config = crate::config_stream::ConfigStreamService::new(compiler, issuer.clone(), auth.clone()).authenticating();
        let service = DatapathService::new(store.clone(), Arc::new(FlowStore::default()), auth.clone()).authenticating();
        tokio::spawn(trefoil_wire::serve_with_datapath_tls(listener, tls, config, service, std::future::pending()));
        Tls { addr, store, auth, issuer, tokens }
    }

    impl Tls {
        /// A client presenting `svid` as its certificate, or none.
        async fn client(&self, svid: Option<Arc<rustls::sign::CertifiedKey>>) -> DatapathClient {
            let tls = trefoil_wire::ClientTls::new(&self.issuer.trust_bundle(), svid).unwrap();
            DatapathClient::connect_with(&format!("https://{}", self.addr), Some(tls)).await.unwrap()
        }

        /// An SVID for workload `web` in `default`, bought with a join token.
        fn svid(&self) -> Arc<rustls::sign::CertifiedKey> {
            let web = crate::identity::join::JoinIdentity { namespace: "default".into(), workload: "web".into() };
            let now = std::time::SystemTime::now();
            let token = self.tokens.mint(&web, std::time::Duration::from_secs(60), now).unwrap();
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let csr_der = rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec();
            let request = trefoil_wire::CertificateRequest { csr_der, join_token: token, current_svid_der: vec![] };
            let answer = self.issuer.answer("web-0", &request, now);
            assert!(answer.error.is_empty(), "{}", answer.error);
            let chain = rustls_pemfile::certs(&mut answer.certificate_chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
            Arc::new(rustls::sign::CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider()).unwrap())
        }

        fn stored(&self) -> usize {
            self.store.list(KIND).len()
        }
    }

    fn drop_rule() -> Rule {
        Rule { compact: "10.0.2.5 * : drop".into(), ..Rule::default() }
    }

    #[tokio::test]
    async fn a_caller_with_neither_svid_nor_token_writes_nothing() {
        let control = serve_tls("anonymous").await;
        let mut anonymous = control.client(None).await;
        let refused = anonymous.add_rule(drop_rule()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{}", refused.message());
        assert!(refused.message().contains("present an SVID") && refused.message().contains("Bearer"), "{}", refused.message());
        assert_eq!(control.stored(), 0, "no rule is stored");
        assert_eq!(anonymous.remove_rule("any").await.unwrap_err().code(), Code::Unauthenticated);
        assert_eq!(anonymous.list_rules().await.unwrap_err().code(), Code::Unauthenticated);
        assert_eq!(anonymous.watch_flows("").await.unwrap_err().code(), Code::Unauthenticated);
        let forged = anonymous.with_token("not-a-token").unwrap().add_rule(drop_rule()).await.unwrap_err();
        assert_eq!(forged.code(), Code::Unauthenticated, "{}", forged.message());
        assert_eq!(control.stored(), 0);
        assert!(control.auth.audit_for_tests().is_empty());
    }

    #[tokio::test]
    async fn a_viewer_token_reads_and_an_editor_token_writes_on_the_record() {
        let control = serve_tls("tokens").await;
        let viewer = control.auth.mint_for_tests(Role::Viewer);
        let mut as_viewer = control.client(None).await.with_token(&viewer).unwrap();
        let denied = as_viewer.add_rule(drop_rule()).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{}", denied.message());
        assert!(denied.message().contains("has role viewer; AddRule needs editor"), "{}", denied.message());
        assert_eq!(control.stored(), 0);

        let editor = control.auth.mint_for_tests(Role::Editor);
        let mut as_editor = control.client(None).await.with_token(&editor).unwrap();
        let added = as_editor.add_rule(drop_rule()).await.unwrap();
        assert_eq!(as_viewer.list_rules().await.unwrap().rules.len(), 1, "a viewer lists");
        assert_eq!(as_viewer.remove_rule(&added.name).await.unwrap_err().code(), Code::PermissionDenied);
        as_editor.remove_rule(&added.name).await.unwrap();

        let audit = control.auth.audit_for_tests();
        let resource = format!("{KIND}/{}", added.name);
        let seen: Vec<_> =
            audit.iter().map(|e| (e.role, e.verb.as_str(), e.resource.as_str(), e.before.is_some(), e.after.is_some())).collect();
        assert_eq!(
            seen,
            [(Role::Editor, "apply", resource.as_str(), false, true), (Role::Editor, "delete", resource.as_str(), true, false)]
        );
        assert!(audit.iter().all(|e| e.token_id != "anonymous" && !e.token_id.is_empty()), "{audit:?}");
    }

    #[tokio::test]
    async fn a_proxy_with_its_svid_writes_in_its_workload_name() {
        let control = serve_tls("svid").await;
        let mut proxy = control.client(Some(control.svid())).await;
        let added = proxy.add_rule(Rule { origin_handler: "intrusion".into(), ..drop_rule() }).await.unwrap();
        assert_eq!(proxy.list_rules().await.unwrap().rules.len(), 1);
        let audit = control.auth.audit_for_tests();
        assert_eq!(audit.len(), 1, "{audit:?}");
        assert_eq!(audit[0].token_id, "spiffe://trefoil.local/ns/default/sa/web");
        assert_eq!(audit[0].resource, format!("{KIND}/{}", added.name));
    }

    #[tokio::test]
    async fn plaintext_serving_checks_a_token_when_one_is_given() {
        let (addr, store) = serve("plain-token").await;
        let client = DatapathClient::connect(&addr.to_string()).await.unwrap();
        let refused = client.clone().with_token("not-a-token").unwrap().add_rule(drop_rule()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{}", refused.message());
        assert!(store.list(KIND).is_empty());
        client.clone().add_rule(drop_rule()).await.unwrap();
    }
}
