//! Sends one call-out to a network function and brings back its verdict:
//! HTTP/JSON through the function service's pooled client, or the ext_authz
//! gRPC `Check` through tonic over that same client.

use std::task::{Context, Poll};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use trefoil_chain::{ext_authz, json, Call, Verdict};
use trefoil_model::spec::FunctionApi;

use crate::http::body;
use crate::http::chain::{Function, CNF_HEADER};
use crate::http::proxy::{send_upstream, TRACE_ID_HEADER};
use crate::upstream::{BoxError, HttpClient, ProxyBody};

/// A function's verdict may be at most this large; anything bigger is a broken function.
const MAX_VERDICT_BYTES: usize = 64 * 1024;

/// Why a call-out produced no verdict; the failure policy decides what follows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CalloutError {
    #[error("the function's service has no endpoint")]
    NoEndpoint,
    #[error("cannot build the call: {0}")]
    Build(#[from] http::Error),
    #[error("call failed: {0}")]
    Send(BoxError),
    #[error("function answered HTTP {0}")]
    Status(StatusCode),
    #[error("verdict larger than {MAX_VERDICT_BYTES} bytes")]
    TooLarge,
    #[error("verdict could not be read: {0}")]
    Read(BoxError),
    #[error(transparent)]
    Decode(#[from] trefoil_chain::DecodeError),
    #[error("gRPC error: {0}")]
    Grpc(#[from] tonic::Status),
}

/// Calls `function` about `call` once (no retries: its timeout is short and the policy decides).
pub(crate) async fn call(function: &Function, call: &Call<'_>, scheme: &str, protocol: &str) -> Result<Verdict, CalloutError> {
    match function.api {
        FunctionApi::Http => call_json(function, call).await,
        FunctionApi::ExtAuthz => call_ext_authz(function, call, scheme, protocol).await,
    }
}

async fn call_json(function: &Function, call: &Call<'_>) -> Result<Verdict, CalloutError> {
    let service = &function.cluster.service;
    let endpoint = function.cluster.balancer.pick(None, None).ok_or(CalloutError::NoEndpoint)?;
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    // Absolute: the general client connects by it, and the worker pool
    // writes only its path.
    uri.scheme = Some(if service.scheme_for(endpoint.addr) == "https" { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
    uri.authority = Some(endpoint.authority.clone());
    let mut req = Request::post(http::Uri::from_parts(uri).map_err(http::Error::from)?)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(http::header::HOST, HeaderValue::from_str(endpoint.authority.as_str()).map_err(http::Error::from)?)
        .body(body::full(json::encode(call)))?;
    annotate(req.headers_mut(), call);
    let resp = send_upstream(service, &endpoint, req).await.map_err(|e| CalloutError::Send(e.source))?;
    if resp.status() != StatusCode::OK {
        return Err(CalloutError::Status(resp.status()));
    }
    // Read to the end: a worker-pooled connection goes back to the pool then.
    let bytes = read_verdict(resp.into_body().boxed_unsync()).await?;
    Ok(json::decode(&bytes)?)
}

// Frame by frame rather than through a length-limiting wrapper, whose
// generic error conversion trips the compiler's `Send` inference here.
async fn read_verdict(mut body: ProxyBody) -> Result<bytes::Bytes, CalloutError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(CalloutError::Read)?.into_data() {
            if buf.len() + data.len() > MAX_VERDICT_BYTES {
                return Err(CalloutError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The CNF and trace id ride along as headers too, for functions that log
/// or route by them without reading the payload.
fn annotate(headers: &mut http::HeaderMap, call: &Call<'_>) {
    if let Ok(v) = HeaderValue::from_str(call.cnf) {
        headers.insert(CNF_HEADER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(call.trace_id) {
        headers.insert(TRACE_ID_HEADER.clone(), v);
    }
}

async fn call_ext_authz(function: &Function, call: &Call<'_>, scheme: &str, protocol: &str) -> Result<Verdict, CalloutError> {
    let service = &function.cluster.service;
    let endpoint = function.cluster.balancer.pick(None, None).ok_or(CalloutError::NoEndpoint)?;
    let origin =
        http::Uri::builder().scheme(service.scheme_for(endpoint.addr)).authority(endpoint.authority.clone()).path_and_query("/").build()?;
    let mut grpc = tonic::client::Grpc::with_origin(FunctionChannel { client: service.client.current().clone() }, origin);
    grpc.ready().await.map_err(|e| CalloutError::Send(e.into()))?;
    let mut request = tonic::Request::new(ext_authz::check_request(call, scheme, protocol));
    annotate_metadata(request.metadata_mut(), call);
    let codec = tonic_prost::ProstCodec::<ext_authz::CheckRequest, ext_authz::CheckResponse>::default();
    let response = grpc.unary(request, http::uri::PathAndQuery::from_static(ext_authz::CHECK_PATH), codec).await?;
    Ok(ext_authz::verdict(response.into_inner()))
}

fn annotate_metadata(metadata: &mut tonic::metadata::MetadataMap, call: &Call<'_>) {
    if let Ok(v) = call.cnf.parse() {
        metadata.insert(CNF_HEADER.as_str(), v);
    }
    if let Ok(v) = call.trace_id.parse() {
        metadata.insert(TRACE_ID_HEADER.as_str(), v);
    }
}

/// tonic's view of a function service's pooled HTTP/2 client.
#[derive(Clone)]
struct FunctionChannel {
    client: HttpClient,
}

impl tower_service::Service<Request<tonic::body::Body>> for FunctionChannel {
    type Response = http::Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues internally; it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        self.client.request(req.map(|b| b.map_err(|status| Box::new(status) as BoxError).boxed_unsync()))
    }
}
