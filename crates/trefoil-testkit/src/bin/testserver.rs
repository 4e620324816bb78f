//! `trefoil-testserver`: a scriptable upstream for integration tests and
//! benchmarks. Serves HTTP/1.1 and prior-knowledge HTTP/2 (h2c) on one port.
//!
//! Routes (every response carries `x-served-by: NAME`):
//! - `GET /healthz`: `ok` (200) or `unhealthy` (503); toggled by
//!   `POST /__health/fail` and `POST /__health/ok`. Never counted or failed.
//! - `GET /__stats`: `{"requests": N, "by_path": {path: N}}`; `POST /__stats/reset`.
//! - `/status/CODE`: answers CODE.
//! - `/echo`: JSON description of the request.
//! - `/bytes/N`: N bytes of `x`.
//! - anything else: 200 `NAME\n`.
//!
//! `?delay_ms=N` delays any request; `--delay` delays counted requests only, so
//! a deliberately slow upstream still passes its health checks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(name = "trefoil-testserver", about = "Scriptable upstream HTTP server for Trefoil tests")]
struct Args {
    /// Address to listen on; port 0 picks a free port (see the `listening on` line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Sent as `x-served-by` and as the default body.
    #[arg(long, default_value = "testserver")]
    name: String,
    /// Every N-th counted request answers --fail-status; 0 disables.
    #[arg(long, default_value_t = 0)]
    fail_every: u64,
    /// Status used by --fail-every.
    #[arg(long, default_value_t = 503)]
    fail_status: u16,
    /// Milliseconds added to every counted request.
    #[arg(long, value_name = "DURATION_MS", default_value_t = 0)]
    delay: u64,
    /// Exit when stdin reaches EOF, so a server spawned by a test dies with the
    /// test process even if that process is killed before it can clean up.
    #[arg(long)]
    exit_on_stdin_close: bool,
}

const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Source for `/bytes/N`, so large downloads stream without allocating N bytes.
static XS: [u8; 64 * 1024] = [b'x'; 64 * 1024];

struct Server {
    /// Leaked once at startup: cloning a static `Bytes`/`HeaderValue` is free.
    name_body: Bytes,
    served_by: HeaderValue,
    fail_every: u64,
    fail_status: StatusCode,
    delay: Duration,
    healthy: AtomicBool,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    /// Also the --fail-every sequence, so a stats reset gives tests a
    /// predictable failure pattern from then on.
    requests: u64,
    by_path: HashMap<String, u64>,
}

/// Response body: either a fixed buffer or a run of `x` of known length.
enum Reply {
    Full(Option<Bytes>),
    Xs(u64),
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(match this {
            Reply::Full(data) => data.take().map(|b| Ok(Frame::data(b))),
            Reply::Xs(0) => None,
            Reply::Xs(left) => {
                let n = (*left).min(XS.len() as u64) as usize;
                *left -= n as u64;
                Some(Ok(Frame::data(Bytes::from_static(&XS[..n]))))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        match self {
            // rust-version 1.80 predates Option::is_none_or.
            Reply::Full(data) => !matches!(data, Some(b) if !b.is_empty()),
            Reply::Xs(left) => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64)),
            Reply::Xs(left) => SizeHint::with_exact(*left),
        }
    }
}

fn reply(status: StatusCode, body: Bytes) -> Response<Reply> {
    let mut resp = Response::new(Reply::Full(Some(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    resp
}

fn json_reply(value: &serde_json::Value) -> Response<Reply> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Reply::Full(Some(Bytes::from(body))));
    resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    resp
}

fn query_delay(query: Option<&str>) -> Option<Duration> {
    query?.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis)
}

/// Drains the body without keeping it: only its length is ever reported.
async fn drain(body: Incoming) -> Result<u64, hyper::Error> {
    let mut body = body;
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            len += data.len() as u64;
        }
    }
    Ok(len)
}

impl Server {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Reply>, Infallible> {
        let mut resp = self.route(req).await;
        resp.headers_mut().insert(X_SERVED_BY, self.served_by.clone());
        Ok(resp)
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Reply> {
        let (parts, body) = req.into_parts();
        let body_len = match drain(body).await {
            Ok(n) => n,
            Err(e) => return reply(StatusCode::BAD_REQUEST, Bytes::from(format!("bad request body: {e}\n"))),
        };
        if let Some(d) = query_delay(parts.uri.query()) {
            tokio::time::sleep(d).await;
        }
        let path = parts.uri.path();

        if path == "/healthz" {
            return if self.healthy.load(Ordering::Relaxed) {
                reply(StatusCode::OK, Bytes::from_static(b"ok"))
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"unhealthy"))
            };
        }
        if path.starts_with("/__") {
            return self.control(&parts.method, path);
        }

        let seq = {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.requests += 1;
            // Look up before inserting so the common case allocates nothing.
            match stats.by_path.get_mut(path) {
                Some(n) => *n += 1,
                None => {
                    stats.by_path.insert(path.to_owned(), 1);
                }
            }
            stats.requests
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail_every > 0 && seq % self.fail_every == 0 {
            let mut resp = reply(self.fail_status, self.name_body.clone());
            resp.headers_mut().insert("x-injected-failure", HeaderValue::from_static("1"));
            return resp;
        }

        if let Some(code) = path.strip_prefix("/status/") {
            return match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
                // A 1xx cannot be a final response.
                Some(status) if !status.is_informational() => {
                    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                        let mut resp = Response::new(Reply::Full(None));
                        *resp.status_mut() = status;
                        resp
                    } else {
                        reply(status, self.name_body.clone())
                    }
                }
                _ => reply(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad status code\n")),
            };
        }
        if let Some(n) = path.strip_prefix("/bytes/") {
            return match n.parse::<u64>() {
                Ok(n) => {
                    let mut resp = Response::new(Reply::Xs(n));
                    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
                    resp
                }
                Err(_) => reply(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad byte count\n")),
            };
        }
        if path == "/echo" {
            return json_reply(&self.echo(&parts, body_len));
        }
        reply(StatusCode::OK, self.name_body.clone())
    }

    fn echo(&self, parts: &http::request::Parts, body_len: u64) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let joined = parts.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect::<Vec<_>>().join(", ");
            headers.insert(name.as_str().to_owned(), joined.into());
        }
        // HTTP/2 carries the host in :authority rather than a Host header.
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| parts.headers.get(http::header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()));
        serde_json::json!({
            "name": String::from_utf8_lossy(&self.name_body).trim_end(),
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query().unwrap_or(""),
            "authority": authority,
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_len": body_len,
        })
    }

    fn control(&self, method: &Method, path: &str) -> Response<Reply> {
        match (method, path) {
            (&Method::GET, "/__stats") => {
                let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                json_reply(&serde_json::json!({
                    "requests": stats.requests,
                    "by_path": stats.by_path,
                }))
            }
            (&Method::POST, "/__stats/reset") => {
                *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = Stats::default();
                reply(StatusCode::OK, Bytes::from_static(b"reset\n"))
            }
            (&Method::POST, "/__health/fail") => {
                self.healthy.store(false, Ordering::Relaxed);
                reply(StatusCode::OK, Bytes::from_static(b"unhealthy\n"))
            }
            (&Method::POST, "/__health/ok") => {
                self.healthy.store(true, Ordering::Relaxed);
                reply(StatusCode::OK, Bytes::from_static(b"ok\n"))
            }
            (_, "/__stats" | "/__stats/reset" | "/__health/fail" | "/__health/ok") => {
                reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::from_static(b"method not allowed\n"))
            }
            _ => reply(StatusCode::NOT_FOUND, Bytes::from_static(b"no such control endpoint\n")),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fail_status = StatusCode::from_u16(args.fail_status)
        .ok()
        .filter(|s| !s.is_informational())
        .with_context(|| format!("--fail-status {} is not a usable final status", args.fail_status))?;
    let name: &'static str = Box::leak(args.name.into_boxed_str());
    let served_by = HeaderValue::from_str(name).with_context(|| format!("--name {name:?} is not a valid header value"))?;
    let body: &'static str = Box::leak(format!("{name}\n").into_boxed_str());
    let server = Arc::new(Server {
        name_body: Bytes::from_static(body.as_bytes()),
        served_by,
        fail_every: args.fail_every,
        fail_status,
        delay: Duration::from_millis(args.delay),
        healthy: AtomicBool::new(true),
        stats: Mutex::new(Stats::default()),
    });

    let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr().context("reading bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }

    if args.exit_on_stdin_close {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            #[allow(clippy::disallowed_methods)] // its parent is gone: nothing to keep
            std::process::exit(0);
        });
    }

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1024);
    let builder = Arc::new(builder);

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Typically EMFILE under a benchmark: back off instead of dying.
                eprintln!("trefoil-testserver: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| server.clone().handle(req));
            // Errors here are peers going away mid-request: nothing to report.
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
