//! A mutual-TLS load generator for `bench/run`: wrk and h2load cannot
//! present a client certificate, so the mTLS scenarios use this one client
//! against trefoil, nginx and haproxy alike; every target pays for the same
//! client, and the ratios of one run compare the proxies, not the tools.
//!
//! Two shapes: keep-alive (each connection handshakes once and then sends
//! requests back to back; on HTTP/2 `--streams` requests at a time per
//! connection) and `--new-connection` (every request is a fresh TCP
//! connection and a full TLS handshake with session resumption off, so
//! req/s is handshakes/s). Latency is measured per request; with
//! `--new-connection` it includes connect and handshake, which is what a
//! client that does not reuse connections waits for. Prints one JSON object.

use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Latency samples kept per task: enough for minutes at this machine's
/// rates, and a bound on memory whatever `--duration` says.
const MAX_SAMPLES_PER_TASK: usize = 2_000_000;

#[derive(Parser)]
#[command(about = "HTTP/1.1 and HTTP/2 load over mutual TLS (client certificate), keep-alive or a new connection per request")]
struct Args {
    /// Where to connect (`127.0.0.1:8443`).
    #[arg(long)]
    addr: SocketAddr,
    /// TLS server name to send and verify.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM CA bundle that signed the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// PEM client certificate chain presented to the server.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of the client certificate.
    #[arg(long)]
    key: PathBuf,
    /// `1` (HTTP/1.1, ALPN http/1.1) or `2` (HTTP/2, ALPN h2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    http: u8,
    /// Concurrent connections (with `--new-connection`: concurrent
    /// connect-request-close loops).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// HTTP/2 only: requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Open a new connection (full handshake, no resumption) for every request.
    #[arg(long)]
    new_connection: bool,
    /// Seconds to run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
}

/// Shared tallies; latencies stay per task until the end.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    non_2xx: AtomicU64,
    connect_errors: AtomicU64,
    handshake_errors: AtomicU64,
    request_errors: AtomicU64,
    handshakes: AtomicU64,
}

struct Target {
    addr: SocketAddr,
    name: ServerName<'static>,
    tls: TlsConnector,
    http2: bool,
    path: String,
    deadline: Instant,
    tally: Tally,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), BoxError> {
    let tls = client_config(&args)?;
    let start = Instant::now();
    let target = Arc::new(Target {
        addr: args.addr,
        name: ServerName::try_from(args.server_name.clone())?,
        tls: TlsConnector::from(Arc::new(tls)),
        http2: args.http == 2,
        path: args.path.clone(),
        deadline: start + Duration::from_secs(args.duration),
        tally: Tally::default(),
    });
    let mut tasks = Vec::new();
    for _ in 0..args.connections.max(1) {
        let target = target.clone();
        if args.new_connection {
            tasks.push(tokio::spawn(new_connection_loop(target)));
        } else if target.http2 {
            tasks.push(tokio::spawn(h2_connection(target, args.streams.max(1))));
        } else {
            tasks.push(tokio::spawn(h1_connection(target)));
        }
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    samples.sort_unstable();
    let t = &target.tally;
    let requests = t.requests.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "requests": requests,
        "rps": requests as f64 / elapsed,
        "handshakes": t.handshakes.load(Ordering::Relaxed),
        "handshakes_per_s": t.handshakes.load(Ordering::Relaxed) as f64 / elapsed,
        "p50_ms": percentile_ms(&samples, 50.0),
        "p99_ms": percentile_ms(&samples, 99.0),
        "latency_samples": samples.len(),
        "elapsed_s": elapsed,
        "errors": {
            "non_2xx": t.non_2xx.load(Ordering::Relaxed),
            "connect": t.connect_errors.load(Ordering::Relaxed),
            "handshake": t.handshake_errors.load(Ordering::Relaxed),
            "request": t.request_errors.load(Ordering::Relaxed),
        },
    });
    println!("{report}");
    Ok(())
}

fn client_config(args: &Args) -> Result<rustls::ClientConfig, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&args.ca)? {
        roots.add(cert)?;
    }
    let key = rustls_pemfile::private_key(&mut BufReader::new(std::fs::File::open(&args.key)?))?
        .ok_or_else(|| format!("{}: no private key", args.key.display()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&args.cert)?, key)?;
    config.alpn_protocols = vec![if args.http == 2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    if args.new_connection {
        // Every request pays a full handshake: that is what is measured.
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

fn certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, BoxError> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file)).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()).into());
    }
    Ok(certs)
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
fn percentile_ms(sorted: &[u32], pct: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0)
}

fn record(samples: &mut Vec<u32>, started: Instant) {
    if samples.len() < MAX_SAMPLES_PER_TASK {
        samples.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
}

type Tls = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

/// TCP connect and TLS handshake, counted by which one failed; after a
/// failure it waits a little, so a dead target is not a busy loop.
async fn connect(target: &Target) -> Option<Tls> {
    let tls = try_connect(target).await;
    if tls.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tls
}

async fn try_connect(target: &Target) -> Option<Tls> {
    let Ok(tcp) = TcpStream::connect(target.addr).await else {
        target.tally.connect_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let _ = tcp.set_nodelay(true);
    match target.tls.connect(target.name.clone(), tcp).await {
        Ok(tls) => {
            target.tally.handshakes.fetch_add(1, Ordering::Relaxed);
            Some(TokioIo::new(tls))
        }
        Err(_) => {
            target.tally.handshake_errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn request(target: &Target) -> Request<Empty<Bytes>> {
    // HTTP/2 carries the authority in the URI; HTTP/1.1 in Host.
    let builder = if target.http2 {
        Request::get(format!("https://{}{}", target.addr, target.path))
    } else {
        Request::get(&target.path).header(hyper::header::HOST, target.addr.to_string())
    };
    // The parts are all fixed and valid.
    builder.body(Empty::new()).expect("a fixed GET request is valid")
}

/// Sends one request and reads the whole response; false on a transport error.
async fn exchange<F, Fut>(target: &Target, send: F) -> bool
where
    F: FnOnce(Request<Empty<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    match send(request(target)).await {
        Ok(response) => {
            let ok = response.status().is_success();
            if response.into_body().collect().await.is_err() {
                target.tally.request_errors.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            target.tally.requests.fetch_add(1, Ordering::Relaxed);
            if !ok {
                target.tally.non_2xx.fetch_add(1, Ordering::Relaxed);
            }
            true
        }
        Err(_) => {
            target.tally.request_errors.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// One keep-alive HTTP/1.1 connection, reconnecting after an error.
async fn h1_connection(target: Arc<Target>) -> Vec<u32> {
    let mut samples = Vec::new();
    while Instant::now() < target.deadline {
        let Some(io) = connect(&target).await else { continue };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
            target.tally.request_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(conn);
        samples.extend(keep_sending(&target, |req| sender.send_request(req)).await);
    }
    samples
}

/// Requests back to back through `send` until the deadline or a transport
/// error; the latency of each that completed.
async fn keep_sending<F, Fut>(target: &Target, mut send: F) -> Vec<u32>
where
    F: FnMut(Request<Empty<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    let mut samples = Vec::new();
    while Instant::now() < target.deadline {
        let started = Instant::now();
        if !exchange(target, &mut send).await {
            break;
        }
        record(&mut samples, started);
    }
    samples
}

/// One HTTP/2 connection with `streams` request loops on it.
async fn h2_connection(target: Arc<Target>, streams: usize) -> Vec<u32> {
    let mut samples = Vec::new();
    while Instant::now() < target.deadline {
        let Some(io) = connect(&target).await else { continue };
        let Ok((sender, conn)) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await else {
            target.tally.request_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(conn);
        let loops: Vec<_> = (0..streams)
            .map(|_| {
                let target = target.clone();
                let mut sender = sender.clone();
                tokio::spawn(async move { keep_sending(&target, |req| sender.send_request(req)).await })
            })
            .collect();
        for one in loops {
            if let Ok(more) = one.await {
                samples.extend(more);
            }
        }
    }
    samples
}

/// Waits for a connection whose handles are dropped to close cleanly (TLS
/// close_notify, FIN), and cuts it if that takes more than a second.
async fn close<T>(driver: tokio::task::JoinHandle<T>) {
    let abort = driver.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), driver).await.is_err() {
        abort.abort();
    }
}

/// Connect, handshake, one request, close; again until the deadline.
async fn new_connection_loop(target: Arc<Target>) -> Vec<u32> {
    let mut samples = Vec::new();
    while Instant::now() < target.deadline {
        let started = Instant::now();
        let Some(io) = connect(&target).await else { continue };
        let ok = if target.http2 {
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
                Ok((mut sender, conn)) => {
                    let driver = tokio::spawn(conn);
                    let ok = exchange(&target, |req| sender.send_request(req)).await;
                    drop(sender);
                    close(driver).await;
                    ok
                }
                Err(_) => false,
            }
        } else {
            match hyper::client::conn::http1::handshake(io).await {
                Ok((mut sender, conn)) => {
                    let driver = tokio::spawn(conn);
                    let ok = exchange(&target, |req| sender.send_request(req)).await;
                    drop(sender);
                    close(driver).await;
                    ok
                }
                Err(_) => false,
            }
        };
        if ok {
            record(&mut samples, started);
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::percentile_ms;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&samples, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&samples, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&[7000], 99.0), Some(7.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }
}
