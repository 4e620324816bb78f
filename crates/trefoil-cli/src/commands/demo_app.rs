//! `trefoil demo-app`: a small HTTP service for examples and the demo. It
//! answers with its service and version, can call other services through
//! its sidecar, can be told to fail or be slow (to try rollouts), and can
//! serve files as downloads (to try chains that inspect responses).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::output::{current_thread_runtime, exit, listen_address, stop_signal};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Address to listen on; defaults to 127.0.0.1 and the port in `PORT`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Service name it reports (the local runtime sets `TREFOIL_SERVICE`).
    #[arg(long, env = "TREFOIL_SERVICE", default_value = "demo")]
    service: String,
    /// Version it reports (the local runtime sets `TREFOIL_VERSION`).
    #[arg(long, env = "TREFOIL_VERSION", default_value = "v1")]
    service_version: String,
    /// Another service to call on every request, through the sidecar port in
    /// `TREFOIL_UPSTREAM_<SERVICE>`; repeatable.
    #[arg(long = "call", value_name = "SERVICE")]
    calls: Vec<String>,
    /// Percentage of requests answered with 500.
    #[arg(long, default_value_t = 0.0)]
    fail_percent: f64,
    /// Delay before every answer, e.g. `200ms`.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    delay: Duration,
    /// Serve `GET /files/NAME` from this directory (NAME a plain file name;
    /// relative to the working directory, which `trefoil up` sets to the
    /// resource files' directory).
    #[arg(long, value_name = "DIR")]
    files: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<trefoil_model::Duration>().map(|d| d.get()).map_err(|e| e.to_string())
}

struct App {
    service: String,
    version: String,
    /// (service, `ip:port` that reaches it).
    upstreams: Vec<(String, String)>,
    fail_percent: f64,
    delay: Duration,
    files: Option<PathBuf>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let Some(listen) = listen_address(args.listen) else {
        eprintln!("error: give --listen ADDR or set PORT");
        return exit::bad_input();
    };
    let mut upstreams = Vec::new();
    for service in &args.calls {
        let var = trefoil_runtime::plan::upstream_var(service);
        match std::env::var(&var) {
            Ok(addr) => upstreams.push((service.clone(), addr)),
            Err(_) => {
                eprintln!("error: --call {service} needs {var} (set by the local runtime for each upstream service)");
                return exit::bad_input();
            }
        }
    }
    let app = Arc::new(App {
        service: args.service,
        version: args.service_version,
        upstreams,
        fail_percent: args.fail_percent,
        delay: args.delay,
        files: args.files,
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let Some(runtime) = current_thread_runtime() else { return exit::failure() };
    match runtime.block_on(serve(app, listen)) {
        Ok(()) => exit::ok(),
        Err(e) => {
            eprintln!("error: {e}");
            exit::failure()
        }
    }
}

async fn serve(app: Arc<App>, listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listen, service = %app.service, version = %app.version, "demo app listening");
    trefoil_nf::serve_connections(listener, stop_signal(), move |req| answer(app.clone(), req)).await;
    Ok(())
}

async fn answer(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    if !app.delay.is_zero() {
        tokio::time::sleep(app.delay).await;
    }
    if let (Some(dir), Some(name)) = (&app.files, req.uri().path().strip_prefix("/files/")) {
        return Ok(download(dir, name).await);
    }
    let traceparent = req.headers().get("traceparent").cloned();
    let mut calls = serde_json::Map::new();
    let mut upstream_failed = false;
    for (service, addr) in &app.upstreams {
        let result = call(&app.client, addr, traceparent.clone()).await;
        upstream_failed |= result.get("status").and_then(Value::as_u64).is_none_or(|s| s >= 500);
        calls.insert(service.clone(), result);
    }
    let failing = app.fail_percent > 0.0 && fastrand_percent() < app.fail_percent;
    let status = if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if upstream_failed {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    let mut body = json!({"service": app.service, "version": app.version, "path": req.uri().path()});
    if !calls.is_empty() {
        body["calls"] = Value::Object(calls);
    }
    let mut text = serde_json::to_vec(&body).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    if let Ok(v) = http::HeaderValue::from_str(&format!("{} {}", app.service, app.version)) {
        headers.insert("x-served-by", v);
    }
    Ok(resp)
}

/// A file of `dir` as a download; only plain names, so a request cannot leave the directory.
async fn download(dir: &std::path::Path, name: &str) -> Response<Full<Bytes>> {
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']);
    let found = match plain {
        true => tokio::fs::read(dir.join(name)).await.ok(),
        false => None,
    };
    let Some(content) = found else {
        let mut resp = Response::new(Full::new(Bytes::from(format!("no file {name:?}\n"))));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    };
    let mut resp = Response::new(Full::new(Bytes::from(content)));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    resp
}

/// Calls an upstream through the sidecar, passing the trace context on so
/// both hops belong to one trace.
async fn call(client: &Client<HttpConnector, Empty<Bytes>>, addr: &str, traceparent: Option<http::HeaderValue>) -> Value {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = match format!("http://{addr}/").parse() {
        Ok(uri) => uri,
        Err(e) => return json!({"error": e.to_string()}),
    };
    if let Some(tp) = traceparent {
        req.headers_mut().insert("traceparent", tp);
    }
    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            json!({"status": status, "answer": answer})
        }
        Ok(Err(e)) => json!({"error": e.to_string()}),
        Err(_) => json!({"error": "timed out after 10s"}),
    }
}

fn fastrand_percent() -> f64 {
    fastrand::f64() * 100.0
}
