//! The one timer of a connection, armed for its next deadline and re-armed
//! only when it fires or when an earlier deadline appears.
//!
//! A request never touches it: per request the connection only sets flags
//! ("a frame was read", "the stream moved"), and the timer looks at them
//! when it fires. Between fires, polling it costs a waker comparison and
//! an atomic load (`Sleep::is_elapsed`), not a poll of tokio's timer
//! entry; tokio's timer wheel sees one registration per fire, not one per
//! request (a registration and its removal per request cost hyper's HTTP/1
//! server some 260 instructions, see the proxy's `coarse_timer`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Instant;

use tokio::time::Sleep;

#[derive(Default)]
pub(crate) struct Timer {
    /// Made at the first arming: tokio's timer needs the runtime, which
    /// `Connection::new` may be called without.
    sleep: Option<Pin<Box<Sleep>>>,
    /// What it is armed for; `None` once it fired.
    armed: Option<Instant>,
    /// The waker the sleep was last polled with: the one it will wake.
    registered: Option<Waker>,
}

impl Timer {
    /// Arms for `at`, whatever it was armed for.
    pub(crate) fn set(&mut self, at: Instant) {
        if self.armed == Some(at) {
            return;
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(at.into()),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at.into()))),
        }
        self.armed = Some(at);
        // The new deadline is registered at the next poll.
        self.registered = None;
    }

    /// Arms for `at` unless it is armed for earlier already.
    pub(crate) fn set_by(&mut self, at: Instant) {
        if self.armed.is_none_or(|armed| at < armed) {
            self.set(at);
        }
    }

    /// Whether the deadline has passed. Otherwise the task of `cx` is woken when it does.
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(sleep), Some(_)) = (&mut self.sleep, self.armed) else { return false };
        let registered = self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        // `is_elapsed` turns true before the registered waker is woken.
        if registered && !sleep.is_elapsed() {
            return false;
        }
        if !registered {
            self.registered = Some(cx.waker().clone());
        }
        if sleep.as_mut().poll(cx).is_ready() {
            self.armed = None;
            return true;
        }
        false
    }
}
