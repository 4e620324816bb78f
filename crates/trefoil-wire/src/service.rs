//! The tower plumbing every gRPC service of ours shares: a type over the
//! shared implementation, its constructor and name, and `Service` calling
//! the type's own `route`. Written once so the config stream and the
//! Datapath service differ only in how they route a request.

/// `grpc_service!(Server, Trait, "pkg.Service")` defines `Server<T: Trait>`;
/// the caller writes `impl<T: Trait> Server<T> { fn route(&self, req) }`.
macro_rules! grpc_service {
    ($(#[$doc:meta])* $server:ident, $implementation:path, $name:expr) => {
        $(#[$doc])*
        pub struct $server<T> {
            inner: std::sync::Arc<T>,
        }

        impl<T> $server<T> {
            pub fn new(inner: T) -> Self {
                $server { inner: std::sync::Arc::new(inner) }
            }
        }

        impl<T> Clone for $server<T> {
            fn clone(&self) -> Self {
                $server { inner: self.inner.clone() }
            }
        }

        impl<T> tonic::server::NamedService for $server<T> {
            const NAME: &'static str = $name;
        }

        impl<T, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for $server<T>
        where
            T: $implementation,
            B: tonic::codegen::Body + Send + 'static,
            B::Error: Into<tonic::codegen::StdError> + Send + 'static,
        {
            type Response = tonic::codegen::http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = tonic::codegen::BoxFuture<Self::Response, std::convert::Infallible>;

            fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
                self.route(req)
            }
        }
    };
}

pub(crate) use grpc_service;
