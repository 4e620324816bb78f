//! The HTTP side every sample function shares: `POST /` takes a call and
//! answers a verdict, `GET /healthz` answers `ok` (for readiness probes).
//! A function that cannot decide answers 502 with the reason, which the proxy
//! counts as a failure of the function so its failure policy applies.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use trefoil_chain::json::JsonVerdict;

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
        let function = function.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(function.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer<F: Function>(function: Arc<F>, req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return Ok(text(StatusCode::OK, "ok\n")),
        (&Method::POST, "/") => {}
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
            let mut resp = http::Response::new(Full::new(Bytes::from(json)));
            resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            Ok(resp)
        }
        Err(e) => {
            tracing::warn!(function = function.kind(), cnf, trace_id, "no verdict: {e}");
            Ok(text(StatusCode::BAD_GATEWAY, &format!("{e}\n")))
        }
    }
}

fn text(status: StatusCode, body: &str) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    resp
}
