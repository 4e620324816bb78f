//! The HTTP side every sample function shares, on one port: `POST /` takes
//! a JSON call and answers a verdict, the ext_authz `Check` method (gRPC over
//! HTTP/2 without TLS) does the same for `api: extAuthz`, and `GET /healthz`
//! answers `ok` (for readiness probes). A function that cannot decide answers
//! 502 (gRPC: UNAVAILABLE) with the reason, which the proxy counts as a
//! failure of the function so its failure policy applies.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use trefoil_chain::json::JsonVerdict;

use crate::ext_authz;
use crate::request::Request;

/// The largest call accepted. The proxy sends at most 1 MiB of body, which
/// JSON escaping or base64 can grow; this leaves room for that and headers.
pub const MAX_CALL_BYTES: usize = 8 << 20;

/// A network function: decides on one call.
pub trait Function: Send + Sync + 'static {
    /// Its kind, for logs (`policy`, `inspect`, ...).
    fn kind(&self) -> &'static str;
    /// The verdict, or why there is none (the proxy's failure policy decides then).
    fn decide(&self, call: Request) -> impl Future<Output = Result<JsonVerdict, String>> + Send;
}

/// Serves `function` on `listener` until `shutdown` completes.
pub async fn serve<F: Function>(listener: TcpListener, function: Arc<F>, shutdown: impl Future<Output = ()>) {
    // HTTP/1 for JSON calls, HTTP/2 (prior knowledge) for gRPC ones.
    serve_connections(listener, shutdown, move |req| answer(function.clone(), req)).await;
}

/// Accepts on `listener` until `shutdown` completes, serving each
/// connection (HTTP/1, or HTTP/2 with prior knowledge) on its own task with
/// `handle` per request. Shared by the sample functions and `trefoil demo-app`.
pub async fn serve_connections<H, Fut, B>(listener: TcpListener, shutdown: impl Future<Output = ()>, handle: H)
where
    H: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Running out of descriptors is transient; keep serving.
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            let _ =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer<F: Function>(function: Arc<F>, req: http::Request<Incoming>) -> Result<http::Response<Body>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return Ok(text(StatusCode::OK, "ok\n")),
        (&Method::POST, "/") => {}
        (&Method::POST, trefoil_chain::ext_authz::CHECK_PATH) => return Ok(check(function, req).await),
        _ => return Ok(text(StatusCode::NOT_FOUND, "POST / with a call, or GET /healthz\n")),
    }
    let body = match Limited::new(req.into_body(), MAX_CALL_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, &format!("reading the call: {e}\n"))),
    };
    let call = match Request::decode(&body) {
        Ok(c) => c,
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, &format!("{e}\n"))),
    };
    let (cnf, trace_id) = (call.cnf.clone(), call.trace_id.clone());
    match function.decide(call).await {
        Ok(verdict) => {
            tracing::debug!(function = function.kind(), cnf, trace_id, verdict = verdict.verdict, "decided");
            // Serializing strings, maps and JSON values cannot fail.
            let json = serde_json::to_vec(&verdict).unwrap_or_default();
            let mut resp = http::Response::new(Body::data(Bytes::from(json)));
            resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            Ok(resp)
        }
        Err(e) => {
            tracing::warn!(function = function.kind(), cnf, trace_id, "no verdict: {e}");
            Ok(text(StatusCode::BAD_GATEWAY, &format!("{e}\n")))
        }
    }
}

/// The ext_authz `Check` method: the same decision, over gRPC.
async fn check<F: Function>(function: Arc<F>, req: http::Request<Incoming>) -> http::Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_CALL_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return grpc(None, ext_authz::GRPC_INVALID_ARGUMENT, &format!("reading the call: {e}")),
    };
    let call = match ext_authz::decode_check(&body) {
        Ok(c) => c,
        Err(e) => return grpc(None, e.code(), &e.to_string()),
    };
    let (cnf, trace_id) = (call.cnf.clone(), call.trace_id.clone());
    match function.decide(call).await {
        Ok(verdict) => {
            tracing::debug!(function = function.kind(), cnf, trace_id, verdict = verdict.verdict, "decided");
            grpc(Some(ext_authz::encode_check_response(&verdict)), ext_authz::GRPC_OK, "")
        }
        Err(e) => {
            tracing::warn!(function = function.kind(), cnf, trace_id, "no verdict: {e}");
            grpc(None, ext_authz::GRPC_UNAVAILABLE, &e)
        }
    }
}

/// A unary gRPC answer: the message (if any), then the status in trailers.
fn grpc(message: Option<Bytes>, code: i32, text: &str) -> http::Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from(code));
    // grpc-message is percent-encoded text; keeping to printable ASCII without `%` avoids encoding it.
    let printable: String = text.trim_end().chars().map(|c| if (c.is_ascii_graphic() && c != '%') || c == ' ' { c } else { '?' }).collect();
    if let Ok(v) = http::HeaderValue::from_str(&printable) {
        if !printable.is_empty() {
            trailers.insert("grpc-message", v);
        }
    }
    let mut resp = http::Response::new(Body { data: message, trailers: Some(trailers) });
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    resp
}

/// A response body: optional data, then optional trailers (gRPC needs both).
pub struct Body {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body {
    fn data(data: Bytes) -> Self {
        Body { data: Some(data), trailers: None }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

fn text(status: StatusCode, body: &str) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::data(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    resp
}
