//! Plain HTTP/1 upstream connections, pooled per worker thread and per
//! endpoint. A worker owns its pool outright (a thread-local): checkout and
//! return are a `Vec` pop and push, with no lock and no cross-thread wake-up.
//! TLS and HTTP/2 upstreams go through the general client instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::upstream::{BoxError, ProxyBody};

/// Idle connections kept per endpoint per worker.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::default();
}

/// A connection in use; give it back with [`Pooled::release`] once its
/// response has been read to the end, or drop it to close it.
pub struct Pooled {
    addr: SocketAddr,
    sender: SendRequest<ProxyBody>,
}

impl Pooled {
    /// Returns the connection to this thread's pool for the next request.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.addr).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(Idle { sender: self.sender, since: Instant::now() });
            }
        });
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

fn take_idle(addr: SocketAddr, idle_timeout: Duration) -> Option<SendRequest<ProxyBody>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        // Most recently used first: it is the least likely to have been closed.
        while let Some(conn) = list.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    })
}

async fn connect(addr: SocketAddr, connect_timeout: Duration) -> Result<SendRequest<ProxyBody>, SendError> {
    let connect_error = |source: BoxError| SendError { connect: true, source };
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_error(format!("connect to {addr} timed out after {connect_timeout:?}").into()))?
        .map_err(|e| connect_error(Box::new(e)))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| connect_error(Box::new(e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `req` to `addr` on a pooled connection, or a new one.
pub async fn send(addr: SocketAddr, mut req: Request<ProxyBody>, connect_timeout: Duration, idle_timeout: Duration) -> Result<(Response<Incoming>, Pooled), SendError> {
    // A pooled connection the upstream closed while idle fails before the
    // request is written; that request goes out again on a fresh connection.
    while let Some(mut sender) = take_idle(addr, idle_timeout) {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, Pooled { addr, sender })),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(SendError { connect: false, source: Box::new(e.into_error()) }),
            },
        }
    }
    let mut sender = connect(addr, connect_timeout).await?;
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, Pooled { addr, sender })),
        Err(e) => Err(SendError { connect: false, source: Box::new(e.into_error()) }),
    }
}
