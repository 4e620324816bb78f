//! Plain HTTP/1 upstream connections, pooled per worker thread and per
//! endpoint, and driven by the request that uses them.
//!
//! A worker owns its pool outright (a thread-local): checkout and return are
//! a `Vec` pop and push, with no lock. A connection is not a task of its own:
//! the request task that holds it polls it while waiting for the response
//! head, and the response body polls it while streaming. A proxied request so
//! lives in one task from the client's bytes to the upstream's and back, with
//! no hand-over between tasks. TLS and HTTP/2 upstreams go through the
//! general client instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use rustc_hash::FxHasher;
use tokio::net::TcpStream;

use crate::upstream::{BoxError, ProxyBody};

/// Idle connections kept per endpoint per worker.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

type Driver = Pin<Box<Connection<TokioIo<TcpStream>, ProxyBody>>>;

/// One upstream connection: the handle requests are sent on, and the
/// state machine that moves their bytes.
pub struct Pooled {
    addr: SocketAddr,
    sender: SendRequest<ProxyBody>,
    /// `None` once the connection has ended.
    driver: Option<Driver>,
    /// How long it may wait unused in the pool (the service's `idleTimeout`).
    idle_timeout: Duration,
    /// What the driver, and what it completes, wake while a request drives it.
    wake: Arc<DriverWake>,
    /// The task waker `wake` forwards to, to notice when it changes.
    task: Option<Waker>,
}

/// Wakes the task that drives a connection, except while that task is
/// inside the connection (driving it, or polling the response or body it
/// feeds). A wake then only means "drive it again", which the task does at
/// once, instead of being rescheduled: hyper's body channel wakes the
/// sending side every time a chunk is taken, and the sending side is this
/// same task, so every response cost one more poll of the whole connection.
#[derive(Default)]
struct DriverWake {
    task: Mutex<Option<Waker>>,
    inside: AtomicBool,
    held: AtomicBool,
}

impl Wake for DriverWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.inside.load(Ordering::Acquire) {
            self.held.store(true, Ordering::Release);
            return;
        }
        if let Some(task) = self.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// Passes over a connection per poll before a held wake goes to the
/// scheduler after all: a resource out of its cooperative budget wakes its
/// task at once, and looping on that would never end.
const INSIDE_PASSES: usize = 3;

struct Idle {
    conn: Pooled,
    since: Instant,
}

impl Idle {
    /// Whether the connection is still worth keeping: not closed by the
    /// upstream (polling its driver notices a close) and not idle too long.
    fn is_usable(&mut self) -> bool {
        if self.since.elapsed() >= self.conn.idle_timeout {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.conn.poll_driver(&mut cx);
        self.conn.driver.is_some() && !self.conn.sender.is_closed()
    }
}

thread_local! {
    // Keyed by configured endpoints, not by anything a client chooses: a fast
    // hash is safe, and the map is looked up twice per request.
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>, BuildHasherDefault<FxHasher>>> = RefCell::default();
}

impl Pooled {
    /// Moves the connection's bytes as far as they go now; registers `cx` for more.
    pub fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut() {
            if let Poll::Ready(result) = driver.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(upstream = %self.addr, error = %e, "upstream connection ended with an error");
                }
                self.driver = None;
            }
        }
    }

    /// Drives the connection and polls what it feeds with `poll`, holding
    /// the wakes that happen meanwhile (see `DriverWake`). Polls again while
    /// wakes came and nothing is ready, so no wake is lost: one that comes
    /// with a ready result is the connection asking to be driven further,
    /// which the next poll of its response or body does.
    pub fn poll_inside<T>(&mut self, cx: &mut Context<'_>, mut poll: impl FnMut(&mut Self, &mut Context<'_>) -> Poll<T>) -> Poll<T> {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *self.wake.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cx.waker().clone());
            self.task = Some(cx.waker().clone());
        }
        let waker = Waker::from(self.wake.clone());
        let mut inside = Context::from_waker(&waker);
        for _ in 0..INSIDE_PASSES {
            self.wake.held.store(false, Ordering::Relaxed);
            self.wake.inside.store(true, Ordering::Release);
            let polled = poll(self, &mut inside);
            self.wake.inside.store(false, Ordering::Release);
            if polled.is_ready() || !self.wake.held.swap(false, Ordering::AcqRel) {
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Returns the connection to this thread's pool; call it once the
    /// response has been read to the end.
    pub fn release(self) {
        if self.driver.is_none() || self.sender.is_closed() {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.addr).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(Idle { conn: self, since: Instant::now() });
            }
        });
    }

    /// Drives the connection until it can take a request; false if it ended.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            // A pooled connection was just driven by its checkout and is
            // mostly ready already; driving it again would cost a full pass
            // of its state machine for nothing.
            if let Poll::Ready(result) = self.sender.poll_ready(cx) {
                return Poll::Ready(result.is_ok());
            }
            self.poll_driver(cx);
            if self.driver.is_none() {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Sends `req` and drives the connection until the response head arrives.
    fn exchange(&mut self, req: Request<ProxyBody>) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ProxyBody>>>> + '_ {
        // Handed over before the future is made, so that it holds the
        // request once (inside hyper's future), not twice.
        let response = self.sender.try_send_request(req);
        async move {
            let mut response = std::pin::pin!(response);
            std::future::poll_fn(|cx| {
                // The driver writes the request and reads the answer; then the
                // response future sees it. If the connection ends, the response
                // future resolves with the error.
                self.poll_inside(cx, |conn, inside| {
                    conn.poll_driver(inside);
                    response.as_mut().poll(inside)
                })
            })
            .await
        }
    }
}

/// Why a request could not be sent.
#[derive(Debug)]
pub struct SendError {
    /// No connection could be made: nothing reached the endpoint, a retry is safe.
    pub connect: bool,
    pub source: BoxError,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", if self.connect { "connect: " } else { "" }, self.source)
    }
}

fn take_idle(addr: SocketAddr) -> Option<Pooled> {
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
pub fn sweep() {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, list| {
            list.retain_mut(Idle::is_usable);
            !list.is_empty()
        });
    });
}

/// Sweeps this thread's pool every `every`, for as long as the thread's runtime runs.
pub async fn sweep_every(every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        sweep();
    }
}

async fn connect(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Result<Pooled, SendError> {
    let connect_error = |source: BoxError| SendError { connect: true, source };
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_error(format!("connect to {addr} timed out after {connect_timeout:?}").into()))?
        .map_err(|e| connect_error(Box::new(e)))?;
    let _ = stream.set_nodelay(true);
    // Head and body in one buffer, one `write`: measured cheaper than
    // `writev` for the small messages proxies mostly carry.
    let (sender, driver) = http1::Builder::new().writev(false).handshake(TokioIo::new(stream)).await.map_err(|e| connect_error(Box::new(e)))?;
    Ok(Pooled { addr, sender, driver: Some(Box::pin(driver)), idle_timeout, wake: Arc::default(), task: None })
}

/// Sends `req` to `addr` on a pooled connection, or a new one.
///
/// Not an `async fn`: its arguments would be kept twice in the future (see
/// `proxy::send_upstream`); the block below holds each once.
#[allow(clippy::manual_async_fn)]
pub fn send(addr: SocketAddr, mut req: Request<ProxyBody>, connect_timeout: Duration, idle_timeout: Duration) -> impl Future<Output = Result<(Response<Incoming>, Pooled), SendError>> + Send + 'static {
    async move {
        // A pooled connection the upstream closed while idle fails before the
        // request is written; that request goes out again on a fresh connection.
        while let Some(mut conn) = take_idle(addr) {
            if !conn.ready().await {
                continue;
            }
            match conn.exchange(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError { connect: false, source: Box::new(e.into_error()) }),
                },
            }
        }
        // Boxed: connecting is rare next to reusing, and its future would
        // otherwise be part of (and copied with) every request's.
        let mut conn = Box::pin(connect(addr, connect_timeout, idle_timeout)).await?;
        if !conn.ready().await {
            return Err(SendError { connect: true, source: format!("connection to {addr} closed before the first request").into() });
        }
        match conn.exchange(req).await {
            Ok(resp) => Ok((resp, conn)),
            Err(e) => Err(SendError { connect: false, source: Box::new(e.into_error()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_count(addr: SocketAddr) -> usize {
        IDLE.with(|idle| idle.borrow().get(&addr).map_or(0, Vec::len))
    }

    /// An upstream that answers one request per connection with keep-alive,
    /// then closes the connection after `close_after`.
    async fn upstream(close_after: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    tokio::time::sleep(close_after).await;
                });
            }
        });
        addr
    }

    async fn get(addr: SocketAddr) -> u16 {
        let req = Request::get("/").header("host", "x").body(crate::http::body::empty()).unwrap();
        let (resp, pooled) = send(addr, req, Duration::from_secs(1), Duration::from_secs(60)).await.unwrap();
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        pooled.release();
        status
    }

    /// Counts the times the task was woken.
    struct CountingWake(std::sync::atomic::AtomicUsize);

    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn wakes_inside_a_connection_are_polled_again_not_lost() {
        let addr = upstream(Duration::from_secs(60)).await;
        let mut conn = connect(addr, Duration::from_secs(1), Duration::from_secs(60)).await.unwrap();
        let woken = Arc::new(CountingWake(Default::default()));
        let task = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&task);

        // Woken once from inside, then ready: polled again at once, and the
        // task is not rescheduled for it.
        let mut passes = 0;
        let polled = conn.poll_inside(&mut cx, |_, inside| {
            passes += 1;
            if passes == 1 {
                inside.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        });
        assert_eq!((polled, passes, woken.0.load(Ordering::Relaxed)), (Poll::Ready(()), 2, 0));

        // Woken on every pass (a resource out of its cooperative budget does
        // that): a bounded number of passes, then the wake goes to the task.
        let mut passes = 0;
        let polled = conn.poll_inside(&mut cx, |_, inside| {
            passes += 1;
            inside.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        assert_eq!((polled, passes, woken.0.load(Ordering::Relaxed)), (Poll::Pending, INSIDE_PASSES, 1));

        // A wake from outside (the upstream's bytes arriving) reaches the task.
        let mut registered = None;
        let _ = conn.poll_inside(&mut cx, |_, inside| {
            registered = Some(inside.waker().clone());
            Poll::<()>::Pending
        });
        registered.unwrap().wake();
        assert_eq!(woken.0.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn connections_are_reused_and_swept_once_closed() {
        let addr = upstream(Duration::from_millis(50)).await;
        assert_eq!(get(addr).await, 200);
        assert_eq!(idle_count(addr), 1, "released to the pool");
        // The upstream closes the idle connection; the sweep notices and drops it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        sweep();
        assert_eq!(idle_count(addr), 0);
        // A request after that opens a fresh connection and succeeds.
        assert_eq!(get(addr).await, 200);
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_replaced_transparently() {
        let addr = upstream(Duration::from_millis(20)).await;
        assert_eq!(get(addr).await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // No sweep: the checkout itself must notice the close and reconnect.
        assert_eq!(get(addr).await, 200);
    }
}
