//! Plain HTTP/1 upstream connections, pooled per worker thread and per
//! endpoint, and driven by the request that uses them.
//!
//! A worker owns its pool outright (a thread-local): checkout and return are
//! a `Vec` pop and push, with no lock. A connection is not a task of its own:
//! the request's task writes the request and reads the response head, and
//! the response body, which owns the connection meanwhile, reads the rest
//! and returns the connection to the pool at its end. A proxied request so
//! lives in one task from the client's bytes to the upstream's and back, with
//! no hand-over between tasks. The bytes are `codec`'s; TLS and HTTP/2
//! upstreams go through the general client instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use rustc_hash::FxHasher;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::sys::descriptors::{self, Held};
use crate::upstream::h1::codec::{self, Decoded, Decoder, HeaderSpan, ParseError, RequestFraming};
use crate::upstream::{BoxError, ProxyBody};

/// Idle connections kept per endpoint per worker.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// Read buffer room per read; a response larger than this arrives in several.
const READ_CHUNK: usize = 16 * 1024;
/// Request body bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// One upstream connection and its buffers, kept with it across requests.
pub(crate) struct Pooled {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read from the upstream and not yet taken apart.
    read: BytesMut,
    /// Bytes to write, from `written` on.
    write: Vec<u8>,
    written: usize,
    /// Scratch space for parsing response heads.
    spans: Vec<HeaderSpan>,
    /// How long it may wait unused in the pool (the service's `idleTimeout`).
    idle_timeout: Duration,
    /// Its place in the process's descriptor count.
    _held: Held,
}

struct Idle {
    conn: Box<Pooled>,
    since: Instant,
}

impl Idle {
    /// Whether the connection is still worth keeping: not idle too long,
    /// and nothing arrived on it while idle. A close arrives as a readable
    /// end of stream; tokio knows whether the socket became readable, so
    /// asking costs no system call when nothing did.
    fn is_usable(&mut self) -> bool {
        if self.since.elapsed() >= self.conn.idle_timeout {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.conn.poll_fill(&mut cx).is_pending()
    }
}

thread_local! {
    // Keyed by configured endpoints, not by anything a client chooses: a fast
    // hash is safe, and the map is looked up twice per request.
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>, BuildHasherDefault<FxHasher>>> = RefCell::default();
    /// `descriptors::shortages()` at this worker's last sweep.
    static SHORTAGES_SEEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Pooled {
    /// Reads what the socket has into the read buffer; `Ready(Ok(0))` is the upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        std::pin::pin!(self.stream.read_buf(&mut self.read)).poll(cx)
    }

    /// Writes the pending bytes; `Ready(Ok)` once all are written. The bytes
    /// stay in the buffer: a request without a body can be sent again from
    /// them (see `send`).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }

    fn all_written(&self) -> bool {
        self.written == self.write.len()
    }

    /// Empties the write buffer, once all of it is written.
    fn reset_write(&mut self) {
        if self.all_written() {
            self.write.clear();
            self.written = 0;
        }
    }

    /// Returns the connection to this thread's pool; only for a connection
    /// whose last response was read to its end with nothing after it.
    fn release(self: Box<Self>) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.addr).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(Idle { conn: self, since: Instant::now() });
            }
        });
    }
}

/// A request body on its way out: frames taken from `body`, framed, written.
struct Upload {
    /// `None` once it has ended.
    body: Option<ProxyBody>,
    framing: RequestFraming,
    /// Data bytes still owed under a content-length.
    owed: u64,
}

impl Upload {
    fn new(body: ProxyBody, framing: RequestFraming) -> Self {
        let owed = if let RequestFraming::Length(n) = framing { n } else { 0 };
        Upload { body: Some(body), framing, owed }
    }

    /// Moves body bytes to the upstream; `Ready(Ok)` once all are written.
    fn poll(&mut self, cx: &mut Context<'_>, conn: &mut Pooled) -> Poll<Result<(), BoxError>> {
        loop {
            conn.reset_write();
            // Gather what the body has ready, then write it in one go.
            let mut waiting = false;
            while let Some(body) = self.body.as_mut() {
                if conn.write.len() - conn.written >= WRITE_BATCH {
                    break;
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => self.frame_data(&data, &mut conn.write)?,
                        Err(frame) => {
                            if let (Ok(trailers), RequestFraming::Chunked) = (frame.into_trailers(), self.framing) {
                                codec::encode_last_chunk(Some(&trailers), &mut conn.write);
                                self.framing = RequestFraming::Empty;
                            }
                        }
                    },
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => {
                        match self.framing {
                            RequestFraming::Chunked => codec::encode_last_chunk(None, &mut conn.write),
                            RequestFraming::Length(_) if self.owed > 0 => {
                                return Poll::Ready(Err("request body shorter than its content-length".into()))
                            }
                            _ => {}
                        }
                        self.body = None;
                    }
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                }
            }
            let flushed = conn.poll_flush(cx)?;
            if flushed.is_pending() {
                return Poll::Pending;
            }
            if self.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            if waiting {
                // The body wakes the task when it has more.
                return Poll::Pending;
            }
        }
    }

    fn frame_data(&mut self, data: &Bytes, out: &mut Vec<u8>) -> Result<(), BoxError> {
        match self.framing {
            RequestFraming::Chunked if !data.is_empty() => codec::encode_chunk(data, out),
            RequestFraming::Length(_) => {
                self.owed = self.owed.checked_sub(data.len() as u64).ok_or("request body longer than its content-length")?;
                out.extend_from_slice(data);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Why a request could not be sent.
#[derive(Debug)]
pub(crate) struct SendError {
    /// No connection could be made: nothing reached the endpoint, a retry is safe.
    pub connect: bool,
    pub source: BoxError,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", if self.connect { "connect: " } else { "" }, self.source)
    }
}

fn take_idle(addr: SocketAddr) -> Option<Box<Pooled>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        // Most recently used first: it is the least likely to have been closed.
        while let Some(mut idle) = list.pop() {
            if idle.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Closes this thread's idle connections that timed out or that the
/// upstream closed, and forgets endpoints left with none. Without it, a
/// connection to an endpoint no request goes to any more would stay open.
pub(crate) fn sweep() {
    // Descriptors ran short since the last sweep: the idle connections go,
    // on every worker, not only on the one that needed a descriptor.
    let shortages = descriptors::shortages();
    if SHORTAGES_SEEN.with(|seen| seen.replace(shortages)) != shortages {
        drop_idle();
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, list| {
            list.retain_mut(Idle::is_usable);
            !list.is_empty()
        });
    });
}

/// Sweeps this thread's pool every `every`, for as long as the thread's runtime runs.
/// Closes every idle connection of this worker.
fn drop_idle() {
    IDLE.with(|idle| idle.borrow_mut().clear());
}

pub(crate) async fn sweep_every(every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        sweep();
    }
}

/// Boxed from the start: a connection moves between the pool, the request's
/// future and the response body, and a pointer is cheaper to move than its
/// buffers and socket.
async fn connect(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Result<Box<Pooled>, SendError> {
    let connect_error = |source: BoxError| SendError { connect: true, source };
    // Idle connections kept for reuse give their descriptors up before a new
    // connection is refused for want of one.
    let held = match descriptors::try_hold_upstream() {
        Some(held) => held,
        None => {
            drop_idle();
            descriptors::try_hold_upstream().ok_or_else(|| connect_error(Box::new(descriptors::Exhausted)))?
        }
    };
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_error(format!("connect to {addr} timed out after {connect_timeout:?}").into()))?
        .map_err(|e| connect_error(Box::new(e)))?;
    let _ = stream.set_nodelay(true);
    Ok(Box::new(Pooled {
        addr,
        stream,
        read: BytesMut::with_capacity(READ_CHUNK),
        write: Vec::with_capacity(1024),
        written: 0,
        spans: Vec::new(),
        idle_timeout,
        _held: held,
    }))
}

/// Sends `req` to `addr` on a pooled connection, or a new one, and reads
/// the response head. The response body owns the connection until it ends.
///
/// An upstream may close an idle connection just as it is taken for a
/// request: the request is lost on it, through no fault of either side. If
/// nothing at all came back on the reused connection, and the request is
/// idempotent and has no body, it is sent once more, on a new connection
/// (as nginx and browsers do). A request with a body is not: its body is
/// spent. It is then up to the route's retry policy.
///
/// Not an `async fn`: its arguments would be kept twice in the future (see
/// `proxy::send_upstream`); the block below holds each once.
#[allow(clippy::manual_async_fn)]
pub(crate) fn send(
    addr: SocketAddr,
    req: Request<ProxyBody>,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + Send + 'static {
    async move {
        let (conn, reused) = match take_idle(addr) {
            Some(conn) => (conn, true),
            // Boxed: connecting is rare next to reusing, and its future would
            // otherwise be part of (and copied with) every request's.
            None => (Box::pin(connect(addr, connect_timeout, idle_timeout)).await?, false),
        };
        match exchange(conn, req).await {
            Ok(response) => Ok(response),
            Err(Failed { resend: Some(resend), source }) if reused => {
                tracing::debug!(upstream = %addr, error = %source, "a reused upstream connection closed before answering; sending the request again on a new one");
                // Boxed for the same reason as connecting.
                Box::pin(async move {
                    let mut conn = connect(addr, connect_timeout, idle_timeout).await?;
                    conn.write = resend.bytes;
                    read_response(conn, resend.method, None).await.map_err(|f| SendError { connect: false, source: f.source })
                })
                .await
            }
            Err(Failed { source, .. }) => Err(SendError { connect: false, source }),
        }
    }
}

/// Why an exchange failed, and whether the request can be sent again.
struct Failed {
    source: BoxError,
    resend: Option<Resend>,
}

/// A request that the upstream lost without a word: idempotent, without a
/// body, and with nothing received in answer.
struct Resend {
    bytes: Vec<u8>,
    method: Method,
}

/// Encodes the request's head and hands it and the body, if any, to
/// `read_response`. Not an `async fn`: one future fewer to poll through.
fn exchange(mut conn: Box<Pooled>, req: Request<ProxyBody>) -> impl Future<Output = Result<Response<PooledBody>, Failed>> {
    let (head, body) = req.into_parts();
    conn.write.clear();
    conn.written = 0;
    let framing = codec::encode_request_head(&head, body.size_hint().exact(), &mut conn.write);
    let method = head.method.clone();
    // The head's bytes are written: its header map is not to be kept across the wait.
    drop(head);
    let upload = match framing {
        RequestFraming::Empty | RequestFraming::Length(0) => None,
        _ => Some(Upload::new(body, framing)),
    };
    read_response(conn, method, upload)
}

/// Writes the request (what is in the write buffer, then the upload) and
/// reads until the response head is in. Reads while it writes: an upstream
/// may answer before it has the whole body, and the body then goes on with
/// the response.
async fn read_response(mut conn: Box<Pooled>, method: Method, mut upload: Option<Upload>) -> Result<Response<PooledBody>, Failed> {
    let resendable = upload.is_none() && method.is_idempotent();
    let mut sending = true;
    // Errors of the connection itself (`lost`), which a resend may cure, apart from the rest.
    let head = std::future::poll_fn(|cx| loop {
        if sending {
            let sent = match upload.as_mut() {
                Some(upload) => upload.poll(cx, &mut conn).map_err(Lost::Other)?,
                None => conn.poll_flush(cx).map_err(Lost::Io)?,
            };
            if sent.is_ready() {
                sending = false;
                upload = None;
            }
        }
        if let Some(head) = codec::parse_response_head(&mut conn.read, &method, &mut conn.spans).map_err(|e| Lost::Other(e.into()))? {
            return Poll::Ready(Ok(head));
        }
        match conn.poll_fill(cx).map_err(Lost::Io)? {
            Poll::Ready(0) => return Poll::Ready(Err(Lost::Closed)),
            Poll::Ready(_) => {}
            Poll::Pending => return Poll::Pending,
        }
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(lost) => {
            let silent = !matches!(lost, Lost::Other(_)) && conn.read.is_empty();
            let resend = (resendable && silent).then(|| Resend { bytes: std::mem::take(&mut conn.write), method });
            return Err(Failed { source: lost.into(), resend });
        }
    };
    let mut body = PooledBody {
        conn: Some(conn),
        decoder: Decoder::new(head.body),
        // A request head not written whole by now never will be: the
        // upstream answered without it, and the connection is spent.
        keep_alive: head.keep_alive && (!sending || upload.is_some()),
        upload,
    };
    if body.decoder.is_done() {
        body.finish();
    }
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// How the wait for a response head ended, if not with one.
enum Lost {
    /// The upstream closed the connection.
    Closed,
    /// Reading or writing failed (a reset, mostly).
    Io(io::Error),
    /// Anything else: a malformed response, a failing request body.
    Other(BoxError),
}

impl From<Lost> for BoxError {
    fn from(lost: Lost) -> BoxError {
        match lost {
            Lost::Closed => ParseError::Closed("before the response head").into(),
            Lost::Io(e) => Box::new(e),
            Lost::Other(e) => e,
        }
    }
}

/// A response body read from its pooled connection, which it owns until
/// the body ends and then returns to the pool. Dropped before its end, it
/// closes the connection.
pub(crate) struct PooledBody {
    /// `None` once the body ended or failed.
    conn: Option<Box<Pooled>>,
    decoder: Decoder,
    /// The rest of a request body the upstream answered before it had it all.
    upload: Option<Upload>,
    /// Whether the upstream will take another request on the connection.
    keep_alive: bool,
}

impl PooledBody {
    /// The body is complete: the connection goes back to the pool if it is
    /// clean (the request was written whole and nothing came after the
    /// response), and is closed otherwise.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && self.upload.is_none() && conn.read.is_empty() && conn.all_written() {
                conn.release();
            }
        }
        self.upload = None;
    }

    fn fail(&mut self, error: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.upload = None;
        Poll::Ready(Some(Err(error.into())))
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            if let Some(upload) = this.upload.as_mut() {
                match upload.poll(cx, conn) {
                    Poll::Ready(Ok(())) => this.upload = None,
                    // The upstream has answered; it may well have stopped
                    // reading. The answer still goes to the client, but the
                    // connection, with a request cut short on it, is not reused.
                    Poll::Ready(Err(_)) => {
                        this.upload = None;
                        this.keep_alive = false;
                    }
                    Poll::Pending => {}
                }
            }
            match this.decoder.decode(&mut conn.read) {
                Err(e) => return this.fail(e),
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match conn.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        this.keep_alive = false;
                        if let Err(e) = this.decoder.at_close() {
                            return this.fail(e);
                        }
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return this.fail(e),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.remaining().map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::http::body;

    fn idle_count(addr: SocketAddr) -> usize {
        IDLE.with(|idle| idle.borrow().get(&addr).map_or(0, Vec::len))
    }

    /// Reads one request head (and a body of `content-length` bytes) off `stream`.
    async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |v| v.parse().unwrap());
                if buf.len() >= end + 4 + length {
                    return Some(buf.drain(..end + 4 + length).collect());
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// An upstream that answers every request on a connection with `reply`
    /// (and then closes the connection after `close_after`, if given), and
    /// sends what it received on `seen`.
    async fn upstream(reply: &'static [u8], close_after: Option<Duration>) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(request) = read_request(&mut stream, &mut buf).await {
                        let _ = seen.send(request);
                        let _ = stream.write_all(reply).await;
                        if let Some(after) = close_after {
                            tokio::time::sleep(after).await;
                            return;
                        }
                    }
                });
            }
        });
        (addr, received)
    }

    async fn get(addr: SocketAddr) -> (u16, Bytes, Option<http::HeaderMap>) {
        let req = Request::get("/").header("host", "x").body(body::empty()).unwrap();
        let resp = send(addr, req, Duration::from_secs(1), Duration::from_secs(60)).await.unwrap();
        let status = resp.status().as_u16();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (status, collected.to_bytes(), trailers)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn connections_are_reused_and_swept_once_closed() {
        let (addr, _) = upstream(OK, Some(Duration::from_millis(50))).await;
        assert_eq!(get(addr).await.1, "ok");
        assert_eq!(idle_count(addr), 1, "back in the pool at the body's end");
        // The upstream closes the idle connection; the sweep notices and drops it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        sweep();
        assert_eq!(idle_count(addr), 0);
        // A request after that opens a fresh connection and succeeds.
        assert_eq!(get(addr).await.1, "ok");
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_replaced_transparently() {
        let (addr, _) = upstream(OK, Some(Duration::from_millis(20))).await;
        assert_eq!(get(addr).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // No sweep: the checkout itself must notice the close and reconnect.
        assert_eq!(get(addr).await.0, 200);
    }

    #[tokio::test]
    async fn chunked_responses_stream_with_their_trailers_and_the_connection_is_reused() {
        let (addr, mut seen) =
            upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\ngrpc-status: 0\r\n\r\n", None)
                .await;
        for _ in 0..2 {
            let (status, data, trailers) = get(addr).await;
            assert_eq!((status, &data[..]), (200, &b"abcde"[..]));
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
        }
        assert_eq!(idle_count(addr), 1, "one connection served both");
        assert_eq!(seen.recv().await.unwrap(), b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn a_response_that_says_close_does_not_go_back_to_the_pool() {
        let (addr, _) = upstream(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", None).await;
        assert_eq!(get(addr).await.1, "ok");
        assert_eq!(idle_count(addr), 0);
    }

    /// An upstream that answers the first request on each connection and
    /// closes the connection, unanswered, at the second: the race of an
    /// upstream closing an idle connection just as it is reused, made
    /// certain. Sends the number of each connection a request arrived on.
    async fn upstream_answering_once_per_connection() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for connection in 1.. {
                let (mut stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for answer in [true, false] {
                        if read_request(&mut stream, &mut buf).await.is_none() {
                            return;
                        }
                        let _ = seen.send(connection);
                        if answer {
                            stream.write_all(OK).await.unwrap();
                        }
                    }
                });
            }
        });
        (addr, received)
    }

    #[tokio::test]
    async fn an_idempotent_request_lost_on_a_reused_connection_is_sent_again_on_a_new_one() {
        let (addr, mut seen) = upstream_answering_once_per_connection().await;
        assert_eq!(get(addr).await.1, "ok");
        assert_eq!(idle_count(addr), 1);
        assert_eq!(get(addr).await.1, "ok", "the second request must not fail");
        // Connection 1 answered, lost the second request; connection 2 answered it.
        let arrivals: Vec<usize> = (0..3).map(|_| seen.try_recv().unwrap()).collect();
        assert_eq!(arrivals, [1, 1, 2]);
    }

    #[tokio::test]
    async fn a_request_with_a_body_lost_on_a_reused_connection_is_not_sent_again() {
        let (addr, mut seen) = upstream_answering_once_per_connection().await;
        assert_eq!(get(addr).await.1, "ok");
        let post = Request::post("/").header("host", "x").body(body::full("data")).unwrap();
        let err = send(addr, post, Duration::from_secs(1), Duration::from_secs(60)).await.err().unwrap();
        assert!(err.source.to_string().contains("before the response head"), "{err}");
        assert_eq!([seen.try_recv().unwrap(), seen.try_recv().unwrap()], [1, 1]);
        assert!(seen.try_recv().is_err(), "its body is spent: it must not be sent twice");
    }

    #[tokio::test]
    async fn a_silent_close_of_a_new_connection_is_final() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, mut accepts) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Counted before the close, so that all are counted by the time the request fails.
                accepted.send(()).unwrap();
                drop(stream);
            }
        });
        let err =
            send(addr, Request::get("/").header("host", "x").body(body::empty()).unwrap(), Duration::from_secs(1), Duration::from_secs(60))
                .await
                .err()
                .unwrap();
        assert!(!err.connect);
        accepts.try_recv().unwrap();
        assert!(accepts.try_recv().is_err(), "nothing says the upstream lost it by accident: not sent again");
    }

    /// A request body fed by the test, of unknown length.
    fn streamed() -> (tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>, ProxyBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (tx, http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync())
    }

    /// Accepts one connection and reads from it until `until` has arrived, then answers `reply`.
    async fn upstream_reading_until(until: &'static [u8], reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let read = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            while !buf.windows(until.len()).any(|w| w == until) {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await.unwrap() {
                    0 => break,
                    n => buf.extend_from_slice(&chunk[..n]),
                }
            }
            stream.write_all(reply).await.unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
            buf
        });
        (addr, read)
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_go_out_chunked_with_their_trailers() {
        let (addr, received) = upstream_reading_until(b"0\r\nx-sum: 7\r\n\r\n", OK).await;
        let (tx, body) = streamed();
        let req = Request::post("/up").header("host", "x").body(body).unwrap();
        let feed = tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"hello")))).await.unwrap();
            tx.send(Ok(Frame::data(Bytes::from_static(b", world")))).await.unwrap();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-sum", http::HeaderValue::from_static("7"));
            tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        });
        let resp = send(addr, req, Duration::from_secs(1), Duration::from_secs(60)).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        feed.await.unwrap();
        let wire = received.await.unwrap();
        let text = String::from_utf8_lossy(&wire);
        assert!(text.starts_with("POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"), "{text}");
        assert!(text.ends_with("5\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 7\r\n\r\n"), "{text}");
        assert_eq!(idle_count(addr), 1, "the request was written whole: reusable");
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_body_is_passed_on_and_the_connection_is_not_reused() {
        let (addr, received) =
            upstream_reading_until(b"first\r\n", b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!").await;
        let (tx, body) = streamed();
        tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
        let req = Request::post("/up").header("host", "x").body(body).unwrap();
        let resp = send(addr, req, Duration::from_secs(1), Duration::from_secs(60)).await.unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "big!");
        assert_eq!(idle_count(addr), 0, "a request cut short leaves the connection unusable");
        drop(tx);
        assert!(String::from_utf8_lossy(&received.await.unwrap()).contains("first"));
    }

    /// A body that announces more than it has.
    struct ShortOfItsLength(Option<Bytes>);

    impl Body for ShortOfItsLength {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(10)
        }
    }

    #[tokio::test]
    async fn a_body_short_of_its_length_fails_the_request() {
        let (addr, _) = upstream_reading_until(b"never", OK).await;
        let req = Request::post("/").body(ShortOfItsLength(Some(Bytes::from_static(b"abc"))).boxed_unsync()).unwrap();
        let err = send(addr, req, Duration::from_secs(1), Duration::from_secs(60)).await.err().unwrap();
        assert!(!err.connect);
        assert!(err.source.to_string().contains("shorter than its content-length"), "{err}");
    }
}
