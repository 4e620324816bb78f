//! How long to wait before restarting a child that exited.

use std::time::Duration;

/// First delay after a crash.
pub const INITIAL: Duration = Duration::from_millis(500);
/// The delay never grows beyond this.
pub const MAX: Duration = Duration::from_secs(30);
/// A child that stayed up this long is considered healthy again: the next
/// crash starts over at [`INITIAL`] instead of waiting the grown delay.
pub const RESET_AFTER: Duration = Duration::from_secs(30);

/// Exponential restart delay: 0.5 s doubling to 30 s, reset after 30 s up.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: INITIAL }
    }
}

impl Backoff {
    /// The delay before the next start, given how long the child ran this time.
    pub fn after_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= RESET_AFTER {
            self.next = INITIAL;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.after_exit(Duration::from_millis(10)).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    }

    #[test]
    fn a_long_run_resets_the_delay() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.after_exit(Duration::ZERO);
        }
        assert_eq!(b.after_exit(Duration::from_secs(31)), INITIAL);
        assert_eq!(b.after_exit(Duration::from_secs(1)), INITIAL * 2);
    }
}
