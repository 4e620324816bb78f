//! The control plane's side: a tower service that hands the stream method
//! to a [`ConfigStream`] implementation, and [`serve`] to run it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

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

/// The gRPC service: routes `/trefoil.config.v1.ConfigStream/Stream`, answers
/// anything else with `UNIMPLEMENTED`.
pub struct ConfigStreamServer<T> {
    inner: Arc<T>,
}

impl<T> ConfigStreamServer<T> {
    pub fn new(inner: T) -> Self {
        ConfigStreamServer { inner: Arc::new(inner) }
    }
}

impl<T> Clone for ConfigStreamServer<T> {
    fn clone(&self) -> Self {
        ConfigStreamServer { inner: self.inner.clone() }
    }
}

impl<T> NamedService for ConfigStreamServer<T> {
    const NAME: &'static str = SERVICE;
}

impl<T, B> Service<http::Request<B>> for ConfigStreamServer<T>
where
    T: ConfigStream,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
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
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        // Notice proxies that vanished without closing their connection.
        .http2_keepalive_interval(Some(crate::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::KEEPALIVE_TIMEOUT))
        .add_service(ConfigStreamServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
