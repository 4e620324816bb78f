//! Accepting connections: bind, TLS handshake, protocol detection, then
//! HTTP serving or opaque TCP forwarding.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use trefoil_model::spec::ListenerProtocol;

use crate::config::snapshot::ListenerConfig;
use crate::config::state::ProxyState;
use crate::downstream::listener_set::WorkerLoad;
use crate::http::body::Downstream;
use crate::http::proxy::{self, Connection};
use crate::sys::coarse_timer::CoarseTimer;
use crate::sys::descriptors::{self, Held};
use crate::sys::woken::OnlyWhenWoken;
use crate::tcp;
use crate::telemetry::metrics::{label, Label, TlsLabels};
use crate::tls::peer_identity;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `auto` waits for a client to speak before treating the stream as
/// opaque TCP (server-first protocols never speak first).
const DETECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a client may take to send a request's head, and so how long a
/// kept-alive HTTP/1 connection may sit idle (counted by `CoarseTimer`: up
/// to a second more).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds a listener's address with the options a proxy wants. With
/// `shared`, several sockets bind the same address (SO_REUSEPORT) and the
/// kernel spreads connections over them: one socket per worker thread.
/// With `transparent`, the socket may accept connections addressed to other
/// hosts (a datapath rule steers them here) and answer as their destination.
pub(crate) fn bind(addr: SocketAddr, shared: bool, transparent: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if transparent {
        let set = if addr.is_ipv4() { socket.set_ip_transparent_v4(true) } else { socket.set_ip_transparent_v6(true) };
        set.map_err(|e| std::io::Error::new(e.kind(), format!("IP_TRANSPARENT needs CAP_NET_ADMIN: {e}")))?;
    }
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Refuses an address another process also listens on. `SO_REUSEPORT`
/// lets any process of the same user join a port's group, and the kernel
/// then silently splits the connections between them: a second proxy
/// started by mistake would take half the traffic. Listening sockets are
/// found in the kernel's table (`/proc/net/tcp`, `tcp6`) and compared with
/// the sockets this process holds, so the check sees every program, not
/// only other trefoils. Without `/proc` it cannot look, and lets the bind be.
pub(crate) fn ensure_sole_listener(addr: SocketAddr) -> std::io::Result<()> {
    let ours = own_socket_inodes();
    let table = if addr.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" };
    let Ok(text) = std::fs::read_to_string(table) else { return Ok(()) };
    let foreign = text.lines().skip(1).filter_map(listening_socket).any(|(local, inode)| {
        let same_ip = local.ip() == addr.ip() || local.ip().is_unspecified() || addr.ip().is_unspecified();
        local.port() == addr.port() && same_ip && !ours.contains(&inode)
    });
    if foreign {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another process already listens on {addr}; with SO_REUSEPORT the two would silently share its connections"),
        ));
    }
    Ok(())
}

/// The inodes of the sockets this process has open.
fn own_socket_inodes() -> std::collections::HashSet<u64> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return Default::default() };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// A line of `/proc/net/tcp{,6}` in state LISTEN: its local address and inode.
fn listening_socket(line: &str) -> Option<(SocketAddr, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&"0A") {
        return None;
    }
    let (ip, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address as a number in host byte order.
    let words: Option<Vec<u32>> = (0..ip.len() / 8).map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()).collect();
    let bytes: Vec<u8> = words?.into_iter().flat_map(u32::to_ne_bytes).collect();
    let ip: std::net::IpAddr = match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).into(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).into(),
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), fields.get(9)?.parse().ok()?))
}

/// Tells connections to finish; the drain is over when every clone is dropped
/// (see `watch::Sender::closed`).
pub(crate) type Drain = watch::Receiver<bool>;

/// A connection just accepted, with what serving it needs; `S` is tokio's
/// stream on the worker that serves it, the std one while it moves to another.
pub(crate) struct Accepted<S = TcpStream> {
    state: Arc<ProxyState>,
    name: Label,
    stream: S,
    client: SocketAddr,
    watcher: Drain,
    held: Held,
}

impl Accepted {
    /// Detaches the stream from this worker's event loop, to hand it to another.
    pub(crate) fn into_std(self) -> std::io::Result<Accepted<std::net::TcpStream>> {
        let Accepted { state, name, stream, client, watcher, held } = self;
        Ok(Accepted { state, name, stream: stream.into_std()?, client, watcher, held })
    }

    pub(crate) async fn serve(self) {
        handle_connection(self.state, self.name, self.stream, self.client, self.watcher).await;
        drop(self.held);
    }
}

impl Accepted<std::net::TcpStream> {
    /// Registers the stream with the calling worker's event loop.
    pub(crate) fn into_tokio(self) -> std::io::Result<Accepted> {
        let Accepted { state, name, stream, client, watcher, held } = self;
        Ok(Accepted { state, name, stream: TcpStream::from_std(stream)?, client, watcher, held })
    }
}

/// Accepts until `stop` turns true; each connection holds a `Drain` so
/// shutdown can wait for it. `worker` is this thread's index in `worker_load`,
/// which may send a connection to a worker that serves fewer.
pub(crate) async fn accept_loop(
    state: Arc<ProxyState>,
    name: Label,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    watcher: Drain,
    worker_load: Arc<WorkerLoad>,
    worker: usize,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot use listening socket");
            return;
        }
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    let accepted = Accepted { state: state.clone(), name: name.clone(), stream, client, watcher: watcher.clone(), held: descriptors::hold_client() };
                    // Served here, or handed to a worker with fewer connections.
                    if let Some((accepted, open)) = worker_load.place(worker, accepted) {
                        tokio::spawn(async move {
                            accepted.serve().await;
                            drop(open);
                        });
                    }
                }
                Err(e) if descriptors::is_exhaustion(&e) => {
                    // Out of descriptors: shed the newest client with the spare
                    // one rather than leave it, and all after it, in the backlog.
                    state.shared.spare.spend(|| drop(socket2::SockRef::from(&listener).accept()));
                    state.shared.metrics.connections_shed.inc();
                    tracing::warn!(listener = %name, error = %e, "out of file descriptors: closed a new connection");
                    // Let connections in flight finish and free some.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    // Anything else transient: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn handle_connection(state: Arc<ProxyState>, name: Label, stream: TcpStream, client: SocketAddr, watcher: Drain) {
    let Some(config) = state.snapshot.load().listeners.iter().find(|l| l.name == name).cloned() else { return };
    let mut plain = Connection::new(name.clone(), client);
    if config.transparent {
        plain.original_destination = tcp::original_destination(&config, &stream, client);
    }
    let http2_only = config.protocol == ListenerProtocol::Http2;
    match config.protocol {
        ListenerProtocol::Tcp if config.transparent => tcp::passthrough(&state, &config, stream, client, plain.original_destination).await,
        ListenerProtocol::Tcp if config.mesh => {
            // Permissive: a client that does not open with a TLS handshake is forwarded as it is.
            if config.permissive && !matches!(detect(&stream, DETECT_TIMEOUT).await, Detected::Tls) {
                return tcp::forward(&state, &config, tcp::Downstream::Plain(stream), client, None).await;
            }
            if let Some(tls) = handshake(&state, &config, stream, &plain).await {
                let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(peer_identity);
                count_handshake(&state, &config, peer.as_deref(), "success");
                tcp::forward(&state, &config, tcp::Downstream::Tls(Box::new(tls)), client, peer.as_deref()).await
            }
        }
        ListenerProtocol::Tcp => tcp::forward(&state, &config, tcp::Downstream::Plain(stream), client, None).await,
        ListenerProtocol::Auto => match detect(&stream, DETECT_TIMEOUT).await {
            Detected::Tls if config.tls.is_some() => serve_tls(state, config, stream, plain, watcher).await,
            Detected::Http(wire) => serve_http(state, TokioIo::new(stream), plain, watcher, wire).await,
            _ if config.transparent => tcp::passthrough(&state, &config, stream, client, plain.original_destination).await,
            _ => tcp::forward(&state, &config, tcp::Downstream::Plain(stream), client, None).await,
        },
        // Permissive mesh TLS: a TLS handshake opens with 0x16, anything
        // else is served as plaintext (its peer identity stays unknown).
        ListenerProtocol::Http | ListenerProtocol::Http2 if config.permissive => match detect(&stream, HEADER_READ_TIMEOUT).await {
            Detected::Tls => serve_tls(state, config, stream, plain, watcher).await,
            Detected::Http(wire) => {
                serve_http(state, TokioIo::new(stream), plain, watcher, if http2_only { Wire::Http2 } else { wire }).await
            }
            Detected::Other => {
                serve_http(state, TokioIo::new(stream), plain, watcher, if http2_only { Wire::Http2 } else { Wire::Http1 }).await
            }
            Detected::Silent => {}
        },
        ListenerProtocol::Http | ListenerProtocol::Http2 if config.tls.is_some() => serve_tls(state, config, stream, plain, watcher).await,
        ListenerProtocol::Http | ListenerProtocol::Http2 => {
            // h2c comes with prior knowledge: the connection preface says so.
            let wire = match detect(&stream, HEADER_READ_TIMEOUT).await {
                _ if http2_only => Wire::Http2,
                Detected::Http(wire) => wire,
                Detected::Tls | Detected::Other => Wire::Http1,
                Detected::Silent => return,
            };
            serve_http(state, TokioIo::new(stream), plain, watcher, wire).await
        }
    }
}

/// The server side of the listener's TLS handshake; failures are counted here.
async fn handshake(
    state: &ProxyState,
    config: &ListenerConfig,
    stream: TcpStream,
    conn: &Connection,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let tls = config.tls.clone()?;
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, TlsAcceptor::from(tls).accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(listener = %config.name, client = %conn.client, error = %e, "TLS handshake failed");
            count_handshake(state, config, None, "failure");
            None
        }
        Err(_) => {
            count_handshake(state, config, None, "timeout");
            None
        }
    }
}

async fn serve_tls(state: Arc<ProxyState>, config: Arc<ListenerConfig>, stream: TcpStream, mut conn: Connection, watcher: Drain) {
    let Some(stream) = handshake(&state, &config, stream, &conn).await else { return };
    conn.tls = true;
    let session = stream.get_ref().1;
    conn.peer_identity = session.peer_certificates().and_then(|c| c.first()).and_then(peer_identity).map(Arc::from);
    conn.sni = session.server_name().map(Arc::from);
    count_handshake(&state, &config, conn.peer_identity.as_deref(), "success");
    let wire = if session.alpn_protocol() == Some(b"h2") || config.protocol == ListenerProtocol::Http2 { Wire::Http2 } else { Wire::Http1 };
    serve_http(state, TokioIo::new(stream), conn, watcher, wire).await;
}

fn count_handshake(state: &ProxyState, config: &ListenerConfig, peer: Option<&str>, result: &'static str) {
    let labels = TlsLabels { listener: config.name.clone(), peer_identity: peer.map(label).unwrap_or_default(), result };
    state.shared.metrics.tls_handshakes.get_or_create(&labels).inc();
}

/// The HTTP version of a connection, known before serving it: from ALPN
/// under TLS, from the connection preface in clear text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Http1,
    Http2,
}

async fn serve_http<I>(state: Arc<ProxyState>, io: TokioIo<I>, conn: Connection, watcher: Drain, wire: Wire)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    match wire {
        Wire::Http1 => {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                proxy::serve(state.clone(), conn.clone(), req.map(Downstream::Left))
            });
            let mut builder = http1::Builder::new();
            // One buffer, one `write` per response: see `upstream::h1::pool::connect`.
            builder.timer(CoarseTimer).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true).writev(false);
            drive(builder.serve_connection(io, service), watcher, |c| c.graceful_shutdown()).await
        }
        Wire::Http2 => {
            // The proxy's own server (decision 0009): streams are not tasks,
            // and a request is polled where its connection is.
            let service = move |req: Request<trefoil_h2::RecvBody>| {
                proxy::serve(state.clone(), conn.clone(), req.map(Downstream::Right)).map(|response| match response {
                    Ok(response) => response,
                    Err(never) => match never {},
                })
            };
            let connection = trefoil_h2::Connection::new(io.into_inner(), trefoil_h2::Config::default(), service);
            drive(connection, watcher, |c| c.get_mut().graceful_shutdown()).await
        }
    }
}

/// Serves a connection until it ends or a drain asks it to finish the
/// requests in flight, refuse new ones and close.
async fn drive<C, E>(connection: C, mut drain: Drain, graceful_shutdown: impl FnOnce(Pin<&mut C>))
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    // Borrowed, not moved: `drain` must live until the connection is done.
    let drained = OnlyWhenWoken::new(async {
        let _ = drain.wait_for(|draining| *draining).await;
    });
    tokio::pin!(drained);
    let served = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        drained.as_mut().poll(cx).map(|()| None)
    })
    .await;
    let result = match served {
        Some(result) => result,
        None => {
            graceful_shutdown(connection.as_mut());
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

enum Detected {
    Http(Wire),
    Tls,
    Other,
    /// Nothing arrived in time.
    Silent,
}

/// Sniffs the first bytes without consuming them.
async fn detect(stream: &TcpStream, wait: Duration) -> Detected {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(wait, stream.peek(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => classify(&buf[..n]),
        Ok(_) => Detected::Other,
        Err(_) => Detected::Silent,
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

fn classify(bytes: &[u8]) -> Detected {
    const METHODS: [&[u8]; 9] = [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];
    let starts = |m: &[u8]| !bytes.is_empty() && (bytes.starts_with(m) || (bytes.len() < m.len() && m.starts_with(bytes)));
    if bytes.first() == Some(&0x16) {
        Detected::Tls
    } else if bytes.len() >= 3 && starts(H2_PREFACE) {
        // Fewer than three bytes could still be POST, PUT or PATCH.
        Detected::Http(Wire::Http2)
    } else if METHODS.iter().any(|m| starts(m)) {
        Detected::Http(Wire::Http1)
    } else {
        Detected::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_listening_sockets() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000064936cea 100 0 0 10 0";
        assert_eq!(listening_socket(v4), Some(("127.0.0.1:8080".parse().unwrap(), 4242)));
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(listening_socket(&established), None);
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_socket(v6), Some(("[::1]:8080".parse().unwrap(), 77)));
    }

    #[test]
    fn a_port_another_process_listens_on_is_refused() {
        let mut other = std::process::Command::new("python3")
            .args(["-c", "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\ns.bind(('127.0.0.1', 0))\ns.listen()\nprint(s.getsockname()[1], flush=True)\nsys.stdin.read()"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(other.stdout.take().unwrap()), &mut line).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", line.trim()).parse().unwrap();
        // The kernel would let this process join the other's port.
        let joined = bind(addr, true, false).unwrap();
        let refused = ensure_sole_listener(addr).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse);
        drop(joined);
        let _ = other.kill();
        let _ = other.wait();
        // Our own sockets alone are fine.
        let alone = bind("127.0.0.1:0".parse().unwrap(), true, false).unwrap();
        ensure_sole_listener(alone.local_addr().unwrap()).unwrap();
    }

    #[test]
    fn classifies_first_bytes() {
        assert!(matches!(classify(b"GET / HTTP/1.1\r\n"), Detected::Http(Wire::Http1)));
        assert!(matches!(classify(b"PRI * HTTP/2.0\r\n"), Detected::Http(Wire::Http2)));
        assert!(matches!(classify(b"PRI"), Detected::Http(Wire::Http2)));
        assert!(matches!(classify(b"P"), Detected::Http(Wire::Http1)));
        assert!(matches!(classify(&[0x16, 3, 1]), Detected::Tls));
        assert!(matches!(classify(b"SSH-2.0-OpenSSH"), Detected::Other));
        assert!(matches!(classify(b""), Detected::Other));
    }
}
