//! The proxy's side: connect to the control plane and open the stream.

use tokio_stream::Stream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::GrpcMethod;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::{ProxyMessage, Snapshot, MAX_MESSAGE_BYTES, SERVICE, STREAM_PATH};

/// Why the stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control plane address {address:?}: {}", chain(source))]
    Address { address: String, source: tonic::transport::Error },
    #[error("cannot connect to the control plane at {address}: {}", chain(source))]
    Connect { address: String, source: tonic::transport::Error },
    #[error("the control plane refused the stream: {0}")]
    Refused(#[from] Status),
}

/// An error and its causes on one line: a transport error alone says only
/// "transport error"; the cause (connection refused, timed out) is below it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A connection to the control plane's config stream service.
pub struct ConfigStreamClient {
    grpc: tonic::client::Grpc<Channel>,
    /// `authorization` metadata for the stream: a node agent's API token.
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

/// A token that cannot go in a header.
#[derive(Debug, thiserror::Error)]
#[error("the token holds characters a header cannot carry")]
pub struct BadToken;

/// `host:port` or a full `http://host:port` URI.
fn uri(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

impl ConfigStreamClient {
    /// Connects (one attempt, bounded by `connect_timeout`).
    pub async fn connect(address: &str, connect_timeout: std::time::Duration) -> Result<Self, ClientError> {
        Self::connect_with(address, connect_timeout, None).await
    }

    /// [`ConfigStreamClient::connect`], over TLS with `tls` when given: the
    /// server's certificate must chain to its roots and name the address's host.
    pub async fn connect_with(
        address: &str,
        connect_timeout: std::time::Duration,
        tls: Option<crate::tls::ClientTls>,
    ) -> Result<Self, ClientError> {
        let endpoint = Endpoint::from_shared(uri(address))
            .map_err(|source| ClientError::Address { address: address.to_string(), source })?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // A control plane that vanished without closing the connection
            // (host gone, network cut) is noticed by missed pings.
            .http2_keep_alive_interval(crate::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(crate::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = channel(endpoint, tls).await.map_err(|source| ClientError::Connect { address: address.to_string(), source })?;
        let grpc =
            tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(ConfigStreamClient { grpc, bearer: None })
    }

    /// Presents `token` as `authorization: Bearer <token>` on the stream, as
    /// a node agent must.
    pub fn with_bearer(mut self, token: &str) -> Result<Self, BadToken> {
        self.bearer = Some(format!("Bearer {token}").parse().map_err(|_| BadToken)?);
        Ok(self)
    }

    /// Opens the stream: `outbound` is what the proxy says (Hello first), the
    /// result the snapshots the control plane sends.
    pub async fn stream(
        &mut self,
        outbound: impl Stream<Item = ProxyMessage> + Send + 'static,
    ) -> Result<Streaming<Snapshot>, ClientError> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let mut request = Request::new(outbound);
        request.extensions_mut().insert(GrpcMethod::new(SERVICE, "Stream"));
        if let Some(bearer) = &self.bearer {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        let response =
            self.grpc.streaming(request, PathAndQuery::from_static(STREAM_PATH), ProstCodec::<ProxyMessage, Snapshot>::default()).await?;
        Ok(response.into_inner())
    }
}

/// A channel to `endpoint`, over TLS with `tls` when given.
pub(crate) async fn channel(endpoint: Endpoint, tls: Option<crate::tls::ClientTls>) -> Result<Channel, tonic::transport::Error> {
    match tls {
        None => endpoint.connect().await,
        Some(tls) => {
            let connector = tower_service_fn(move |uri| crate::tls::connect(uri, tls.clone()));
            endpoint.connect_with_connector(connector).await
        }
    }
}

/// A connector from a function, as tonic's `connect_with_connector` takes one.
fn tower_service_fn<F, Fut, R>(f: F) -> ServiceFn<F>
where
    F: FnMut(tonic::codegen::http::Uri) -> Fut,
    Fut: std::future::Future<Output = Result<R, std::io::Error>>,
{
    ServiceFn(f)
}

#[derive(Clone)]
struct ServiceFn<F>(F);

impl<F, Fut, R> tower_service::Service<tonic::codegen::http::Uri> for ServiceFn<F>
where
    F: FnMut(tonic::codegen::http::Uri) -> Fut,
    Fut: std::future::Future<Output = Result<R, std::io::Error>>,
{
    type Response = R;
    type Error = std::io::Error;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), std::io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Fut {
        (self.0)(uri)
    }
}
