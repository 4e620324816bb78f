//! A request body received on an HTTP/2 stream, read by whatever the
//! request goes to (possibly on another task), and the flow-control credit
//! it hands back to the connection as it is read.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the connection and a stream's body share.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<Received>,
}

#[derive(Default)]
pub(crate) struct Received {
    pub(crate) chunks: VecDeque<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
    /// The client sent END_STREAM: nothing follows `chunks` and `trailers`.
    pub(crate) ended: bool,
    /// Why the stream ended before its body did.
    pub(crate) failed: Option<&'static str>,
    /// The reader is gone: the connection drops what arrives for it.
    pub(crate) dropped: bool,
    pub(crate) waker: Option<Waker>,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the state and wakes the reader.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Received)) {
        let waker = {
            let mut state = self.lock();
            f(&mut state);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// How streams and their bodies tell the connection there is work: a
/// stream's future woke, or bytes were read and their flow-control credit
/// is to be returned in WINDOW_UPDATEs.
#[derive(Default)]
pub(crate) struct Signals {
    pub(crate) woken: Mutex<Vec<usize>>,
    pub(crate) released: Mutex<Vec<(u32, u32)>>,
    pub(crate) connection: AtomicWaker,
}

impl Signals {
    pub(crate) fn release(&self, stream: u32, bytes: u32) {
        self.released.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((stream, bytes));
        self.connection.wake();
    }

    /// Swaps the woken slots into `out` (empty), so that neither side allocates anew.
    pub(crate) fn take_woken(&self, out: &mut Vec<usize>) {
        std::mem::swap(&mut *self.woken.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), out);
    }

    pub(crate) fn take_released(&self, out: &mut Vec<(u32, u32)>) {
        std::mem::swap(&mut *self.released.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), out);
    }

    /// Gives back what a burst of streams grew the queues to.
    pub(crate) fn shrink_to(&self, keep: usize) {
        self.woken.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).shrink_to(keep);
        self.released.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).shrink_to(keep);
    }
}

/// The waker of one stream slot: it queues the slot and wakes the connection.
pub(crate) struct SlotWaker {
    pub(crate) slot: usize,
    pub(crate) signals: Arc<Signals>,
}

impl std::task::Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.signals.woken.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(self.slot);
        self.signals.connection.wake();
    }
}

/// A request's body, as the client sends it on its stream.
pub struct RecvBody {
    stream: Option<Streaming>,
}

struct Streaming {
    id: u32,
    shared: Arc<Shared>,
    signals: Arc<Signals>,
    /// What `content-length` says is still to come.
    remaining: Option<u64>,
}

impl RecvBody {
    /// The body of a request that ended with its headers.
    pub fn empty() -> Self {
        RecvBody { stream: None }
    }

    pub(crate) fn streaming(id: u32, shared: Arc<Shared>, signals: Arc<Signals>, content_length: Option<u64>) -> Self {
        RecvBody { stream: Some(Streaming { id, shared, signals, remaining: content_length }) }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(stream) = self.get_mut().stream.as_mut() else { return Poll::Ready(None) };
        let mut state = stream.shared.lock();
        if let Some(data) = state.chunks.pop_front() {
            drop(state);
            stream.signals.release(stream.id, data.len() as u32);
            if let Some(remaining) = stream.remaining.as_mut() {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = state.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if let Some(why) = state.failed {
            return Poll::Ready(Some(Err(why.into())));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match &self.stream {
            None => true,
            Some(stream) => {
                let state = stream.shared.lock();
                state.ended && state.chunks.is_empty() && state.trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.stream {
            None => SizeHint::with_exact(0),
            Some(Streaming { remaining: Some(n), .. }) => SizeHint::with_exact(*n),
            Some(_) => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            let unread: usize = {
                let mut state = stream.shared.lock();
                state.dropped = true;
                state.chunks.drain(..).map(|c| c.len()).sum()
            };
            // The bytes never read still count against the windows: give them back.
            if unread > 0 {
                stream.signals.release(stream.id, unread as u32);
            }
        }
    }
}
