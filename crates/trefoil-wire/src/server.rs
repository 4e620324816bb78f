//! The control plane's side: a tower service that hands the stream method
//! to a [`ConfigStream`] implementation, and [`serve`] to run it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::datapath::{Datapath, DatapathServer};
use crate::service::grpc_service;
use crate::{ProxyMessage, Snapshot, MAX_MESSAGE_BYTES, SERVICE, STREAM_PATH};

/// What the control plane implements: one call per connected proxy.
pub trait ConfigStream: Send + Sync + 'static {
    /// The snapshots sent to that proxy, for as long as the stream lives.
    type SnapshotStream: Stream<Item = Result<Snapshot, Status>> + Send + 'static;

    fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> impl Future<Output = Result<Response<Self::SnapshotStream>, Status>> + Send;
}

grpc_service!(
    /// The gRPC service: routes `/trefoil.config.v1.ConfigStream/Stream`, answers
    /// anything else with `UNIMPLEMENTED`.
    ConfigStreamServer,
    ConfigStream,
    SERVICE
);

impl<T: ConfigStream> ConfigStreamServer<T> {
    fn route<B>(&self, req: http::Request<B>) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
    where
        B: HttpBody + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        if req.uri().path() != STREAM_PATH {
            let path = req.uri().path().to_string();
            return Box::pin(
                async move { Ok(Status::unimplemented(format!("no method {path}; this server has {STREAM_PATH}")).into_http()) },
            );
        }
        let handler = Handler(self.inner.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Snapshot, ProxyMessage>::default())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            Ok(grpc.streaming(handler, req).await)
        })
    }
}

/// Adapts a [`ConfigStream`] to the service shape tonic's streaming call wants.
struct Handler<T>(Arc<T>);

impl<T: ConfigStream> Service<Request<Streaming<ProxyMessage>>> for Handler<T> {
    type Response = Response<T::SnapshotStream>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<ProxyMessage>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.stream(req).await })
    }
}

/// Serves `service` on `listener` until `shutdown` resolves.
pub async fn serve<T: ConfigStream>(
    listener: tokio::net::TcpListener,
    service: T,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    builder().add_service(ConfigStreamServer::new(service)).serve_with_incoming_shutdown(incoming(listener), shutdown).await
}

/// Serves the config stream and the Datapath service on one listener.
pub async fn serve_with_datapath<T: ConfigStream, D: Datapath>(
    listener: tokio::net::TcpListener,
    service: T,
    datapath: D,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    builder()
        .add_service(ConfigStreamServer::new(service))
        .add_service(DatapathServer::new(datapath))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// [`serve_with_datapath`] over TLS with `tls`: a client that does not
/// finish the handshake (plaintext, or a certificate the roots do not
/// verify) never reaches either service.
pub async fn serve_with_datapath_tls<T: ConfigStream, D: Datapath>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: T,
    datapath: D,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    builder()
        .add_service(ConfigStreamServer::new(service))
        .add_service(DatapathServer::new(datapath))
        .serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), shutdown)
        .await
}

fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

fn builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        // Notice proxies that vanished without closing their connection.
        .http2_keepalive_interval(Some(crate::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::KEEPALIVE_TIMEOUT))
}
