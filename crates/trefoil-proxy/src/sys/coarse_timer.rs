//! A timer for deadlines counted in seconds: hyper's HTTP/1 header-read
//! timeout, which also bounds how long a kept-alive connection sits idle.
//!
//! hyper arms that deadline for every request. With tokio's timer each one
//! was a registration in the runtime's timer wheel and its removal. Here a
//! pending deadline is an entry in its worker thread's list, and a tick once
//! a second wakes the connections whose deadline has passed (measured with
//! `bench/instructions`: 260 fewer instructions per request). A deadline
//! fires up to a second late, which a limit of 30 seconds does not mind.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// How often passed deadlines are looked for.
const TICK: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoarseTimer;

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(CoarseSleep { deadline, entry: None })
    }
}

struct CoarseSleep {
    deadline: Instant,
    /// Its entry in the pending list of the thread that polled it, as
    /// (that list's address, index).
    entry: Option<(usize, usize)>,
}

struct Pending {
    deadline: Instant,
    /// Taken when the tick wakes it; the sleep removes the entry itself.
    waker: Option<Waker>,
}

#[derive(Default)]
struct PendingList {
    entries: Vec<Option<Pending>>,
    free: Vec<usize>,
    /// Whether this thread's runtime runs the tick.
    ticking: bool,
}

thread_local! {
    static PENDING: RefCell<PendingList> = RefCell::default();
}

fn list_id(list: &RefCell<PendingList>) -> usize {
    list as *const RefCell<PendingList> as usize
}

impl CoarseSleep {
    fn remove_entry(&mut self) {
        let Some((owner, index)) = self.entry.take() else { return };
        // An entry in another thread's list (the future moved threads) stays
        // until that thread ends; it is never reused while it is there.
        let _ = PENDING.try_with(|list| {
            if list_id(list) == owner {
                let mut list = list.borrow_mut();
                list.entries[index] = None;
                list.free.push(index);
            }
        });
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.remove_entry();
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let entry = PENDING.with(|list| {
            let id = list_id(list);
            let mut list = list.borrow_mut();
            if !list.ticking {
                // The tick must run on this thread, as trefoil's workers'
                // current-thread runtimes do.
                debug_assert_eq!(tokio::runtime::Handle::current().runtime_flavor(), tokio::runtime::RuntimeFlavor::CurrentThread);
                list.ticking = true;
                tokio::spawn(tick());
            }
            match self.entry {
                Some((owner, index)) if owner == id => {
                    let pending = list.entries[index].get_or_insert(Pending { deadline, waker: None });
                    if !pending.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        pending.waker = Some(cx.waker().clone());
                    }
                    (owner, index)
                }
                _ => {
                    let pending = Some(Pending { deadline, waker: Some(cx.waker().clone()) });
                    let index = match list.free.pop() {
                        Some(index) => {
                            list.entries[index] = pending;
                            index
                        }
                        None => {
                            list.entries.push(pending);
                            list.entries.len() - 1
                        }
                    };
                    (id, index)
                }
            }
        });
        self.entry = Some(entry);
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        self.remove_entry();
    }
}

impl Sleep for CoarseSleep {}

/// Wakes this thread's sleeps whose deadline has passed, once per `TICK`,
/// for as long as the thread's runtime runs.
async fn tick() {
    // Dropped with the runtime: a later runtime on this thread starts its own tick.
    struct Ticking;
    impl Drop for Ticking {
        fn drop(&mut self) {
            let _ = PENDING.try_with(|list| list.borrow_mut().ticking = false);
        }
    }
    let _ticking = Ticking;
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = Instant::now();
        let due: Vec<Waker> = PENDING.with(|list| {
            let mut list = list.borrow_mut();
            list.entries.iter_mut().flatten().filter(|p| p.deadline <= now).filter_map(|p| p.waker.take()).collect()
        });
        // Woken outside the borrow: a woken task may poll (and so touch the list) at once.
        for waker in due {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn poll_once(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await
    }

    fn pending_entries() -> usize {
        PENDING.with(|list| list.borrow().entries.iter().flatten().count())
    }

    #[tokio::test]
    async fn a_deadline_fires_after_it_passes_and_within_a_tick() {
        let started = Instant::now();
        CoarseTimer.sleep(Duration::from_millis(200)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "fired early: {waited:?}");
        assert!(waited < Duration::from_millis(200) + TICK * 3, "fired late: {waited:?}");
        assert_eq!(pending_entries(), 0, "a fired sleep leaves no entry");
    }

    #[tokio::test]
    async fn a_dropped_sleep_leaves_no_entry_and_its_slot_is_reused() {
        let mut first = CoarseTimer.sleep(Duration::from_secs(60));
        assert!(poll_once(&mut first).await.is_pending());
        let mut second = CoarseTimer.sleep(Duration::from_secs(60));
        assert!(poll_once(&mut second).await.is_pending());
        assert_eq!(pending_entries(), 2);
        drop(first);
        assert_eq!(pending_entries(), 1);
        let mut third = CoarseTimer.sleep(Duration::from_secs(60));
        assert!(poll_once(&mut third).await.is_pending());
        assert_eq!(PENDING.with(|list| list.borrow().entries.len()), 2, "the freed slot is reused");
        drop((second, third));
        assert_eq!(pending_entries(), 0);
    }
}
