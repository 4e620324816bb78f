//! `trefoil.datapath.v1.Datapath`: how network functions (and the
//! handlers' SDK, through their proxy) add and remove datapath rules without the REST API's
//! resource envelope: a rule is its compact form plus the fields the
//! compact form leaves out; and follow the flows node agents report
//! (WatchFlows). Messages are written by hand with prost
//! derives like the config stream's; `proto/datapath.proto` documents them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, StdError};
use tonic::server::{ServerStreamingService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::service::grpc_service;

/// The gRPC service name.
pub const DATAPATH_SERVICE: &str = "trefoil.datapath.v1.Datapath";
const ADD_RULE: &str = "/trefoil.datapath.v1.Datapath/AddRule";
const REMOVE_RULE: &str = "/trefoil.datapath.v1.Datapath/RemoveRule";
const LIST_RULES: &str = "/trefoil.datapath.v1.Datapath/ListRules";
const WATCH_FLOWS: &str = "/trefoil.datapath.v1.Datapath/WatchFlows";
/// A rule is a line of text and a few fields; a list is bounded by the store.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// One rule: its compact form and what the compact form leaves out.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rule {
    /// Empty on AddRule: named after its action and content.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `10.0.2.0/24 80 : redirect => app=http-proxy`.
    #[prost(string, tag = "2")]
    pub compact: String,
    /// Source addresses or networks.
    #[prost(string, repeated, tag = "3")]
    pub source: Vec<String>,
    #[prost(int32, tag = "4")]
    pub priority: i32,
    /// Empty: every node.
    #[prost(string, tag = "5")]
    pub node: String,
    /// `10m`; empty: no TTL.
    #[prost(string, tag = "6")]
    pub ttl: String,
    #[prost(string, tag = "7")]
    pub origin_cnf: String,
    #[prost(string, tag = "8")]
    pub origin_handler: String,
    #[prost(string, tag = "9")]
    pub origin_trace_id: String,
}

/// A rule's name (RemoveRule's request and answer).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuleName {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRulesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRulesResponse {
    /// In the order the datapath tries them.
    #[prost(message, repeated, tag = "1")]
    pub rules: Vec<Rule>,
}

/// WatchFlows' request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchFlowsRequest {
    /// Only this rule's flows; every flow when empty.
    #[prost(string, tag = "1")]
    pub rule: String,
}

/// One direction of one flow that matched a rule, as a node agent reported it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Flow {
    #[prost(string, tag = "1")]
    pub node: String,
    /// Sender, `address:port` (`[v6]:port`).
    #[prost(string, tag = "2")]
    pub src: String,
    /// Receiver.
    #[prost(string, tag = "3")]
    pub dst: String,
    /// `tcp` or `udp`.
    #[prost(string, tag = "4")]
    pub protocol: String,
    /// Empty when the agent knows only the rule's hash.
    #[prost(string, tag = "5")]
    pub rule: String,
    /// `redirect`, `copy` or `drop`.
    #[prost(string, tag = "6")]
    pub action: String,
    #[prost(uint64, tag = "7")]
    pub bytes: u64,
    #[prost(uint64, tag = "8")]
    pub packets: u64,
    /// First packet, nanoseconds since the Unix epoch.
    #[prost(uint64, tag = "9")]
    pub start_unix_nano: u64,
    /// Latest packet.
    #[prost(uint64, tag = "10")]
    pub end_unix_nano: u64,
}

/// WatchFlows' answer: flows until the client goes away.
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<Flow, Status>> + Send>>;

/// What the control plane implements. Each call comes as its request,
/// with the metadata (`authorization`) and the connection's
/// [`crate::PeerInfo`] the implementation authenticates the caller by.
pub trait Datapath: Send + Sync + 'static {
    /// Creates or replaces the rule (writing it again restarts its TTL); the rule as stored.
    fn add_rule(&self, rule: Request<Rule>) -> impl Future<Output = Result<Rule, Status>> + Send;
    fn remove_rule(&self, name: Request<RuleName>) -> impl Future<Output = Result<RuleName, Status>> + Send;
    fn list_rules(&self, request: Request<ListRulesRequest>) -> impl Future<Output = Result<ListRulesResponse, Status>> + Send;
    /// The flows held, then each flow as the agents report it.
    fn watch_flows(&self, request: Request<WatchFlowsRequest>) -> impl Future<Output = Result<FlowStream, Status>> + Send;
}

grpc_service!(
    /// The gRPC service: routes the methods, answers anything else with `UNIMPLEMENTED`.
    DatapathServer,
    Datapath,
    DATAPATH_SERVICE
);

impl<T: Datapath> DatapathServer<T> {
    fn route<B>(&self, req: http::Request<B>) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
    where
        B: HttpBody + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let inner = self.inner.clone();
        match req.uri().path() {
            ADD_RULE => unary(req, Unary { inner, call: |i, r| Box::pin(async move { i.add_rule(r).await }) }),
            REMOVE_RULE => unary(req, Unary { inner, call: |i, r| Box::pin(async move { i.remove_rule(r).await }) }),
            LIST_RULES => unary(req, Unary { inner, call: |i, r| Box::pin(async move { i.list_rules(r).await }) }),
            WATCH_FLOWS => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Flow, WatchFlowsRequest>::default())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES);
                Ok(grpc.server_streaming(Watch { inner }, req).await)
            }),
            other => {
                let message = format!("no method {other} in {DATAPATH_SERVICE}");
                Box::pin(async move { Ok(Status::unimplemented(message).into_http()) })
            }
        }
    }
}

/// One method: the implementation and the call it makes.
struct Unary<T, Req, Resp> {
    inner: Arc<T>,
    call: fn(Arc<T>, Request<Req>) -> BoxFuture<Resp, Status>,
}

impl<T: Send + Sync + 'static, Req: Send + 'static, Resp: Send + 'static> UnaryService<Req> for Unary<T, Req, Resp> {
    type Response = Resp;
    type Future = BoxFuture<Response<Resp>, Status>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let answer = (self.call)(self.inner.clone(), request);
        Box::pin(async move { answer.await.map(Response::new) })
    }
}

/// WatchFlows, as tonic's server-streaming service.
struct Watch<T> {
    inner: Arc<T>,
}

impl<T: Datapath> ServerStreamingService<WatchFlowsRequest> for Watch<T> {
    type Response = Flow;
    type ResponseStream = FlowStream;
    type Future = BoxFuture<Response<FlowStream>, Status>;

    fn call(&mut self, request: Request<WatchFlowsRequest>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.watch_flows(request).await.map(Response::new) })
    }
}

fn unary<T, Req, Resp, B>(req: http::Request<B>, method: Unary<T, Req, Resp>) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
where
    T: Send + Sync + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Resp, Req>::default())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(grpc.unary(method, req).await)
    })
}

/// A function's (or a test's) connection to the Datapath service; clones
/// share the connection.
#[derive(Clone)]
pub struct DatapathClient {
    grpc: tonic::client::Grpc<Channel>,
    /// `Bearer <token>`, sent with each call when set.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl DatapathClient {
    /// Connects to `http://host:port` (one attempt).
    pub async fn connect(address: &str) -> Result<Self, tonic::transport::Error> {
        Self::connect_with(address, None).await
    }

    /// [`DatapathClient::connect`], over TLS with `tls` when given.
    pub async fn connect_with(address: &str, tls: Option<crate::tls::ClientTls>) -> Result<Self, tonic::transport::Error> {
        let uri = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
        let channel = crate::client::channel(Endpoint::from_shared(uri)?.tcp_nodelay(true), tls).await?;
        let grpc =
            tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(DatapathClient { grpc, authorization: None })
    }

    /// Sends `authorization: Bearer <token>` with each call (an API token,
    /// as for the REST API); a caller without an SVID proves itself so.
    pub fn with_token(mut self, token: &str) -> Result<Self, String> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| "the token is not printable ASCII".to_string())?;
        self.authorization = Some(value);
        Ok(self)
    }

    fn request<Req>(&self, message: Req) -> Request<Req> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        request
    }

    async fn call<Req, Resp>(&mut self, path: &'static str, request: Req) -> Result<Resp, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let response = self.grpc.unary(self.request(request), PathAndQuery::from_static(path), ProstCodec::<Req, Resp>::default()).await?;
        Ok(response.into_inner())
    }

    pub async fn add_rule(&mut self, rule: Rule) -> Result<Rule, Status> {
        self.call(ADD_RULE, rule).await
    }

    pub async fn remove_rule(&mut self, name: &str) -> Result<RuleName, Status> {
        self.call(REMOVE_RULE, RuleName { name: name.to_string() }).await
    }

    pub async fn list_rules(&mut self) -> Result<ListRulesResponse, Status> {
        self.call(LIST_RULES, ListRulesRequest {}).await
    }

    /// The flows held, then each new one, of `rule` (all when empty).
    pub async fn watch_flows(&mut self, rule: &str) -> Result<Streaming<Flow>, Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let request = self.request(WatchFlowsRequest { rule: rule.to_string() });
        let codec = ProstCodec::<WatchFlowsRequest, Flow>::default();
        Ok(self.grpc.server_streaming(request, PathAndQuery::from_static(WATCH_FLOWS), codec).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn field_numbers_match_the_proto_file() {
        let rule = Rule { name: "n".into(), priority: 2, ..Rule::default() }.encode_to_vec();
        // Rule.name = 1 (length-delimited), Rule.priority = 4 (varint).
        assert_eq!(rule, vec![1 << 3 | 2, 1, b'n', 4 << 3, 2]);
        let list = ListRulesResponse { rules: vec![Rule { ttl: "1s".into(), ..Rule::default() }] }.encode_to_vec();
        assert_eq!(list, vec![1 << 3 | 2, 4, 6 << 3 | 2, 2, b'1', b's']);
        // Flow.rule = 5, Flow.packets = 8, Flow.end_unix_nano = 10.
        let flow = Flow { rule: "w".into(), packets: 3, end_unix_nano: 1, ..Flow::default() }.encode_to_vec();
        assert_eq!(flow, vec![5 << 3 | 2, 1, b'w', 8 << 3, 3, 10 << 3, 1]);
    }
}
