//! The REST API's HTTP/1.1 server, and the limits that keep one client from
//! taking the control plane over: how many connections are served at once,
//! how large and how slow a request head and body may be, how many watch
//! streams are open, and how long a reader may stall a response.
//!
//! The API has no authentication yet; these bound what any client that can
//! reach it costs. `axum::serve` sets none of them (no header timeout: it
//! has no timer; no connection limit; a watch stream lives as long as its
//! reader, reading or not), hence this accept loop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::api::ApiError;

/// Largest request body: a resource, or an OTLP export batch.
pub const MAX_BODY_BYTES: usize = 2 << 20;
/// Default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default of [`Limits::max_watches`].
pub const DEFAULT_MAX_WATCHES: usize = 128;

/// What one client may cost.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Watch and follow streams open at once; more are answered 503.
    pub max_watches: usize,
    /// How long a request line and headers may take to arrive; also how long
    /// an idle keep-alive connection is kept.
    pub head_timeout: Duration,
    /// Largest request line and headers, which is also hyper's buffer for a
    /// connection's reads and writes.
    pub max_head_bytes: usize,
    /// How long a request may take to arrive whole and be answered (a
    /// stream's body aside, which lasts as long as its reader reads).
    pub request_timeout: Duration,
    /// How long a reader may take no bytes at all before its connection is closed.
    pub write_stall: Duration,
    /// Requests with a body read and handled at once: each body is held in
    /// memory whole, up to [`MAX_BODY_BYTES`].
    pub bodies_at_once: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_watches: DEFAULT_MAX_WATCHES,
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 64 << 10,
            request_timeout: Duration::from_secs(30),
            write_stall: Duration::from_secs(60),
            bodies_at_once: 8,
        }
    }
}

/// Dead peers (host gone, cable cut) holding a quiet watch are found by TCP
/// keepalive: probes after a minute of silence, every 10 s, 3 of them.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_PROBES: u32 = 3;
/// How long open connections get to finish at shutdown; watch streams never do.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// A failed accept that is not the peer's fault (out of file descriptors)
/// would fail again at once: wait before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` within `limits` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let guards = Arc::new(Guards {
        watches: Arc::new(Semaphore::new(limits.max_watches)),
        bodies: Semaphore::new(limits.bodies_at_once),
        limits: limits.clone(),
    });
    let app = app.layer(axum::middleware::from_fn_with_state(guards, guard)).layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "API accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_IDLE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_PROBES);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, request.map(Body::new)).await }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head_timeout)
            .max_buf_size(limits.max_head_bytes)
            .serve_connection(TokioIo::new(Stalling::new(stream, limits.write_stall)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!("API connections still open at shutdown (watch streams); closing them");
    }
}

/// Errors of one connection being accepted, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

struct Guards {
    watches: Arc<Semaphore>,
    bodies: Semaphore,
    limits: Limits,
}

/// Every request: a turn for its body, a deadline to arrive and be
/// answered, and a watch slot for a response that is a stream.
async fn guard(State(guards): State<Arc<Guards>>, request: Request, next: Next) -> Response {
    let has_body = !matches!(*request.method(), Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS);
    let limits = &guards.limits;
    let handled = async {
        // Waiting for a turn leaves the body unread: TCP holds it back, not memory.
        let _turn = if has_body { guards.bodies.acquire().await.ok() } else { None };
        next.run(request).await
    };
    let response = match tokio::time::timeout(limits.request_timeout, handled).await {
        Ok(response) => response,
        Err(_late) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request was not received and answered within {:?}", limits.request_timeout),
            )
            .into_response()
        }
    };
    let streams = response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/x-ndjson"));
    if !streams {
        return response;
    }
    let Ok(slot) = guards.watches.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} watch streams are open, the most this control plane serves; close one or try again later", limits.max_watches),
        )
        .into_response();
    };
    // The slot is given back when the stream ends: its reader went away,
    // stalled past the limit, or fell behind.
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// A connection whose writes fail once the peer has taken no bytes for
/// `limit`: a reader that stops reading a watch stream would otherwise hold
/// its connection, its buffers and its watch slot for ever.
struct Stalling<T> {
    inner: T,
    limit: Duration,
    /// Running while writes are pending.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> Stalling<T> {
    fn new(inner: T, limit: Duration) -> Self {
        Stalling { inner, limit, stalled: None }
    }

    fn track<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("the peer took no bytes for {limit:?}"))));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalling<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stalling<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, polled)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
