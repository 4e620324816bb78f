//! A future polled only after its own waker fired.
//!
//! A connection's task waits for two things: its I/O and the drain signal.
//! Polling both on every wake-up (as `select!` does) re-registers interest in
//! the drain signal two or three times per request, for a signal that comes
//! once in the process's life. `OnlyWhenWoken` keeps the inner future's
//! wake-ups apart, so polling it while nothing happened to it is one atomic
//! load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pin_project_lite::pin_project! {
    pub(crate) struct OnlyWhenWoken<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        // The waker given to `inner`: it flags `signal` and wakes the task.
        inner_waker: Waker,
        // The task waker `signal` holds, to notice when the task's changes.
        task_waker: Option<Waker>,
    }
}

struct Signal {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> OnlyWhenWoken<F> {
    pub(crate) fn new(inner: F) -> Self {
        // Woken to begin with: the first poll lets `inner` register its interest.
        let signal = Arc::new(Signal { woken: AtomicBool::new(true), task: Mutex::new(None) });
        OnlyWhenWoken { inner, inner_waker: Waker::from(signal.clone()), signal, task_waker: None }
    }
}

impl<F: Future> Future for OnlyWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Stored before the flag is read: a wake that sets the flag after the
        // read finds the current task's waker.
        if !this.task_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *this.signal.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cx.waker().clone());
            *this.task_waker = Some(cx.waker().clone());
        }
        if !this.signal.woken.load(Ordering::Acquire) || !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.inner_waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn polls_the_inner_future_only_when_it_was_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let counted = polls.clone();
        let mut drained = Box::pin(async move {
            let _ = rx.wait_for(|v| *v).await;
        });
        let waiting = OnlyWhenWoken::new(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            drained.as_mut().poll(cx)
        }));
        tokio::pin!(waiting);
        // Wakes from elsewhere (the task's I/O) do not reach the inner future.
        let noop = Waker::noop();
        for _ in 0..5 {
            assert!(waiting.as_mut().poll(&mut Context::from_waker(noop)).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, to register");
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("the inner future's own wake-up completes it");
    }
}
