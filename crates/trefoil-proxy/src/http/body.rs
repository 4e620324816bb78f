//! Body helpers: local replies, replayable request bodies, upstream
//! response bodies, and a wrapper that keeps upstream resources claimed
//! until the response body is done.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::Timer;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, BodyStream, Either, Empty, Full, StreamBody};
use hyper::body::Incoming;

use crate::sys::coarse_timer::CoarseTimer;
use crate::upstream::h1::pool::PooledBody;
use crate::upstream::{BoxError, ProxyBody};

/// Bodies up to this size are buffered so that retries and mirrors can replay them.
pub(crate) const REPLAY_LIMIT: u64 = 64 * 1024;

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed_unsync()
}

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A request body as the client sends it: `Left` through hyper's HTTP/1
/// server, `Right` through the proxy's own HTTP/2 server.
pub(crate) type Downstream = Either<Incoming, trefoil_h2::RecvBody>;

/// A client's request body under its listener's `requestBodyIdle`.
pub(crate) type ClientBody = Idle<Downstream>;

/// A body went without progress for longer than its listener allows.
#[derive(Debug, thiserror::Error)]
#[error("no {what} bytes for {after:?}")]
pub(crate) struct IdleTimeout {
    pub what: &'static str,
    pub after: Duration,
}

impl IdleTimeout {
    /// Whether `e`, or one of its causes, is an idle timeout.
    pub(crate) fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(e);
        while let Some(e) = cause {
            if e.is::<IdleTimeout>() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// The idle clock of a body: a deadline armed when the body first waits,
/// moved by progress, and looked at only when it fires, so a body that
/// keeps coming costs a clock read per frame and no timer work.
struct IdleClock {
    limit: Duration,
    what: &'static str,
    last: Instant,
    sleep: Option<Pin<Box<dyn hyper::rt::Sleep>>>,
}

impl IdleClock {
    fn new(limit: Duration, what: &'static str) -> Self {
        IdleClock { limit, what, last: Instant::now(), sleep: None }
    }

    fn progress(&mut self) {
        if !self.limit.is_zero() {
            self.last = Instant::now();
        }
    }

    /// While the body waits: `Ready` with the error once it waited too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<IdleTimeout> {
        if self.limit.is_zero() {
            return Poll::Pending;
        }
        loop {
            let deadline = self.last + self.limit;
            // Coarse: a limit counted in tens of seconds may fire a second late.
            let sleep = self.sleep.get_or_insert_with(|| CoarseTimer.sleep_until(deadline));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            if Instant::now() >= deadline {
                return Poll::Ready(IdleTimeout { what: self.what, after: self.limit });
            }
            // Progress moved the deadline since it was armed: arm it again.
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that fails with [`IdleTimeout`] when no frame comes for its limit.
    pub(crate) struct Idle<B> {
        #[pin]
        inner: B,
        clock: IdleClock,
    }
}

impl<B> Idle<B> {
    /// `limit` zero: no limit.
    pub(crate) fn new(inner: B, limit: Duration, what: &'static str) -> Self {
        Idle { inner, clock: IdleClock::new(limit, what) }
    }
}

impl<B> Body for Idle<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.clock.progress();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => this.clock.poll_expired(cx).map(|e| Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body read up to a limit.
pub(crate) enum Collected {
    /// All of it: the data, and the trailers if it had any.
    Whole { data: Bytes, trailers: Option<http::HeaderMap> },
    /// More than the limit: the same body, what was read included, to pass on as it is.
    Over(ProxyBody),
}

/// Reads `body` whole if it is at most `limit` bytes; a longer one comes
/// back intact (read part first, then the rest as it streams).
pub(crate) async fn collect_up_to(mut body: ProxyBody, limit: usize) -> Result<Collected, BoxError> {
    let (mut chunks, mut total, mut trailers) = (Vec::new(), 0usize, None);
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                total += data.len();
                chunks.push(data);
                if total > limit {
                    let read = futures_util::stream::iter(chunks.into_iter().map(|d| Ok(Frame::data(d))));
                    return Ok(Collected::Over(
                        StreamBody::new(futures_util::StreamExt::chain(read, BodyStream::new(body))).boxed_unsync(),
                    ));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok().or(trailers),
        }
    }
    let data = match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    };
    Ok(Collected::Whole { data, trailers })
}

/// A buffered body sent on: its data, then its trailers (gRPC needs them).
pub(crate) fn replay(data: Bytes, trailers: Option<http::HeaderMap>) -> ProxyBody {
    let frames = [Some(Frame::data(data)), trailers.map(Frame::trailers)].into_iter().flatten().map(Ok::<_, BoxError>);
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// Why a body could not be buffered.
#[derive(Debug)]
pub(crate) enum BufferError {
    TooLarge,
    Read(BoxError),
}

/// A request body that is either buffered (replayable) or streamed once.
pub(crate) enum RequestBody {
    Buffered(Bytes),
    /// The body, until an attempt takes it, and how its upload is going.
    Streaming(Option<ClientBody>, Upload),
}

/// How the client's side of a streamed request body is going, seen by the
/// request's phases after an attempt failed: a body the client broke off
/// or mangled fails the attempt, and that must not count against the
/// upstream (three malformed uploads once ejected a healthy endpoint).
#[derive(Clone, Debug, Default)]
pub(crate) struct Upload(Arc<AtomicU8>);

const SENDING: u8 = 0;
const DONE: u8 = 1;
const BROKEN: u8 = 2;

impl Upload {
    /// Whether the client failed the body: reset, closed early or malformed.
    pub(crate) fn broken(&self) -> bool {
        self.0.load(Ordering::Acquire) == BROKEN
    }

    /// Whether the client is still sending the body.
    pub(crate) fn sending(&self) -> bool {
        self.0.load(Ordering::Acquire) == SENDING
    }
}

pin_project_lite::pin_project! {
    /// A body passed on unchanged, each frame (or its end, or error) shown
    /// to `watch` on the way.
    pub(crate) struct Observed<B, F> {
        #[pin]
        inner: B,
        watch: F,
    }
}

impl<B, F> Observed<B, F>
where
    B: Body<Data = Bytes, Error = BoxError> + Send + 'static,
    F: FnMut(Option<&Result<Frame<Bytes>, BoxError>>) + Send + 'static,
{
    pub(crate) fn wrap(inner: B, watch: F) -> ProxyBody {
        Observed { inner, watch }.boxed_unsync()
    }
}

impl<B: Body<Data = Bytes, Error = BoxError>, F: FnMut(Option<&Result<Frame<Bytes>, BoxError>>)> Body for Observed<B, F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            (this.watch)(frame.as_ref());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl RequestBody {
    /// An empty body, or one that streams; `Err` gives back a small body
    /// to buffer first (`read`) when `want_replay`. Not async: most bodies
    /// need no wait, and a future would be copied into every request's.
    pub(crate) fn prepare(body: ClientBody, want_replay: bool) -> Result<Self, ClientBody> {
        if body.is_end_stream() {
            return Ok(RequestBody::Buffered(Bytes::new()));
        }
        if want_replay && body.size_hint().upper().is_some_and(|u| u <= REPLAY_LIMIT) {
            return Err(body);
        }
        Ok(RequestBody::Streaming(Some(body), Upload::default()))
    }

    /// Reads a small body whole, so that it can be sent again.
    pub(crate) async fn read(body: ClientBody) -> Result<Self, BoxError> {
        Ok(RequestBody::Buffered(body.collect().await?.to_bytes()))
    }

    /// Reads the whole body, refusing one over `limit` bytes: a network
    /// function that inspects bodies needs all of it before the request goes on.
    pub(crate) async fn buffer(body: ClientBody, limit: usize) -> Result<Self, BufferError> {
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(RequestBody::Buffered(collected.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BufferError::TooLarge),
            Err(e) => Err(BufferError::Read(e)),
        }
    }

    pub(crate) fn is_replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// The body for one attempt; a streamed body can be taken once.
    pub(crate) fn take(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Buffered(b) if b.is_empty() => Some(empty()),
            RequestBody::Buffered(b) => Some(full(b.clone())),
            RequestBody::Streaming(b, upload) => b.take().map(|inner| {
                // A client's body on its way to an upstream, reporting to its `Upload`.
                let upload = upload.clone();
                Observed::wrap(inner, move |frame| match frame {
                    None => upload.0.store(DONE, Ordering::Release),
                    Some(Err(_)) => upload.0.store(BROKEN, Ordering::Release),
                    Some(Ok(_)) => {}
                })
            }),
        }
    }

    pub(crate) fn buffered(&self) -> Option<Bytes> {
        match self {
            RequestBody::Buffered(b) => Some(b.clone()),
            RequestBody::Streaming(..) => None,
        }
    }

    /// How a streamed body's upload is going; `None` for a buffered one.
    pub(crate) fn upload(&self) -> Option<&Upload> {
        match self {
            RequestBody::Buffered(_) => None,
            RequestBody::Streaming(_, upload) => Some(upload),
        }
    }
}

/// A response body from an upstream: `Left` read from a worker-pooled
/// connection, `Right` from the general client.
pub(crate) type UpstreamBody = Either<PooledBody, Incoming>;

pin_project_lite::pin_project! {
    /// Holds `guard` (the attempt's claims on its upstream) until the body
    /// ends, fails or is dropped; fails it after `idle` without progress.
    pub(crate) struct Guarded<G> {
        inner: UpstreamBody,
        guard: Option<G>,
        clock: IdleClock,
    }
}

impl<G: Send + 'static> Guarded<G> {
    pub(crate) fn wrap(inner: UpstreamBody, guard: G, idle: Duration) -> ProxyBody {
        Guarded { inner, guard: Some(guard), clock: IdleClock::new(idle, "response body") }.boxed_unsync()
    }
}

impl<G> Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match Pin::new(this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.clock.progress();
                Poll::Ready(frame)
            }
            Poll::Pending => this.clock.poll_expired(cx).map(|e| Some(Err(e.into()))),
        };
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&'static [u8]], trailers: bool) -> ProxyBody {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c)))).collect();
        if trailers {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn bodies_within_the_limit_are_collected_with_their_trailers_and_replayed() {
        let Collected::Whole { data, trailers } = collect_up_to(frames(&[b"ab", b"cd"], true), 4).await.unwrap() else {
            panic!("4 bytes fit 4")
        };
        assert_eq!(&data[..], b"abcd");
        let replayed = replay(data, trailers).collect().await.unwrap();
        assert_eq!(replayed.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(&replayed.to_bytes()[..], b"abcd");
    }

    #[tokio::test]
    async fn longer_bodies_come_back_whole() {
        let Collected::Over(body) = collect_up_to(frames(&[b"ab", b"cd", b"ef"], true), 3).await.unwrap() else {
            panic!("6 bytes exceed 3")
        };
        let all = body.collect().await.unwrap();
        assert!(all.trailers().is_some(), "the trailers still follow");
        assert_eq!(&all.to_bytes()[..], b"abcdef");
    }
}
