//! The floor: the least an HTTP/1 proxy built on hyper and tokio does per
//! request, laid out like trefoil's data plane (one single-threaded event
//! loop per worker thread, an `SO_REUSEPORT` socket each, a per-thread pool
//! of upstream connections) but with nothing else: no routing, header
//! edits, metrics, tracing, timeouts or limits. `bench/run` measures it
//! beside trefoil, so the difference between the two is what trefoil's own
//! work costs, and the difference between it and nginx is hyper's and
//! tokio's. Small bodies only: a response body is read whole before it is
//! sent on.

use std::cell::RefCell;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "A bare hyper HTTP/1 proxy: the floor under trefoil's data plane")]
struct Args {
    /// Address to listen on; port 0 picks one (printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The one upstream every request goes to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

thread_local! {
    /// This thread's idle upstream connections, most recently used last.
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

/// The data plane's listener socket options, written out rather than
/// shared: the floor depends on nothing of the proxy it is measured against.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

async fn checkout(upstream: SocketAddr) -> Result<SendRequest<Incoming>, BoxError> {
    while let Some(mut sender) = IDLE.with(|idle| idle.borrow_mut().pop()) {
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new().writev(false).handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn forward(upstream: SocketAddr, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, BoxError> {
    let mut sender = checkout(upstream).await?;
    let (parts, body) = sender.send_request(req).await?.into_parts();
    let body = body.collect().await?.to_bytes();
    IDLE.with(|idle| idle.borrow_mut().push(sender));
    Ok(Response::from_parts(parts, Full::new(body)))
}

async fn accept_loop(listener: std::net::TcpListener, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| forward(upstream, req));
            let _ = hyper::server::conn::http1::Builder::new().writev(false).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    let first = bind(args.listen)?;
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads {
        sockets.push(bind(addr)?);
    }
    println!("listening on {addr}");
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let upstream = args.upstream;
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(accept_loop(socket, upstream))
            })
        })
        .collect();
    for handle in handles {
        if let Ok(Err(e)) = handle.join() {
            eprintln!("worker stopped: {e}");
        }
    }
    Ok(())
}
