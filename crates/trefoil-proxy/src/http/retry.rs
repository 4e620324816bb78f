//! Retry decisions and the budget that keeps retries from amplifying an outage.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use trefoil_model::spec::{RetryBudget, RetryOn, RetryPolicy};

use crate::http::local_reply::LocalReply;

/// How an attempt failed, as far as retry conditions care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttemptFailure {
    ConnectFailure,
    Reset,
    PerTryTimeout,
    Status(u16),
}

impl AttemptFailure {
    /// A short, bounded name: the `reason` label of `trefoil_retries_total`, and an attempt span's failure.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            AttemptFailure::ConnectFailure => "connect_failure",
            AttemptFailure::Reset => "reset",
            AttemptFailure::PerTryTimeout => "per_try_timeout",
            AttemptFailure::Status(_) => "status",
        }
    }

    /// The reply when the last attempt failed so (a failing status never
    /// gets here: the client is sent the upstream's own answer).
    pub(crate) fn local_reply(self) -> LocalReply {
        match self {
            AttemptFailure::ConnectFailure => LocalReply::ConnectFailure,
            AttemptFailure::PerTryTimeout => LocalReply::PerTryTimeout,
            AttemptFailure::Reset | AttemptFailure::Status(_) => LocalReply::UpstreamReset,
        }
    }

    pub(crate) fn is_retriable(self, policy: &RetryPolicy) -> bool {
        policy.on.iter().any(|on| match (on, self) {
            (RetryOn::ConnectFailure, AttemptFailure::ConnectFailure) => true,
            (RetryOn::Reset, AttemptFailure::Reset) => true,
            (RetryOn::PerTryTimeout, AttemptFailure::PerTryTimeout) => true,
            (RetryOn::GatewayError, AttemptFailure::Status(502..=504)) => true,
            (RetryOn::GatewayError, AttemptFailure::ConnectFailure | AttemptFailure::PerTryTimeout) => true,
            (RetryOn::ServerError, AttemptFailure::Status(500..=599)) => true,
            (RetryOn::ServerError, AttemptFailure::ConnectFailure | AttemptFailure::Reset | AttemptFailure::PerTryTimeout) => true,
            (RetryOn::RetriableStatusCodes, AttemptFailure::Status(s)) => policy.status_codes.contains(&s),
            _ => false,
        })
    }
}

/// Jittered exponential back-off: `base * 2^n`, with full jitter, capped at 10 base intervals.
pub(crate) fn backoff(base: Duration, retry: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << retry.min(10)).min(base.saturating_mul(10));
    ceiling.mul_f64(fastrand::f64())
}

const WINDOW: Duration = Duration::from_secs(10);

/// Counts requests and retries over a sliding 10 s window (two half-windows).
#[derive(Debug)]
pub(crate) struct Budget {
    percent: f64,
    min_per_window: f64,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    requests: [u64; 2],
    retries: [u64; 2],
}

impl Budget {
    pub(crate) fn new(spec: &RetryBudget) -> Self {
        Budget {
            percent: spec.percent,
            min_per_window: spec.min_retries_per_second as f64 * WINDOW.as_secs_f64(),
            state: Mutex::new(Window { started: Instant::now(), requests: [0; 2], retries: [0; 2] }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Window) -> R) -> R {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let half = WINDOW / 2;
        let elapsed = w.started.elapsed();
        if elapsed >= WINDOW {
            *w = Window { started: Instant::now(), requests: [0; 2], retries: [0; 2] };
        } else if elapsed >= half {
            w.requests = [w.requests[1], 0];
            w.retries = [w.retries[1], 0];
            w.started += half;
        }
        f(&mut w)
    }

    pub(crate) fn record_request(&self) {
        self.with(|w| w.requests[1] += 1);
    }

    /// Takes permission for one retry, if the budget has room.
    pub(crate) fn try_retry(&self) -> bool {
        let (percent, floor) = (self.percent, self.min_per_window);
        self.with(|w| {
            let requests = (w.requests[0] + w.requests[1]) as f64;
            let retries = (w.retries[0] + w.retries[1]) as f64;
            if retries < floor.max(requests * percent / 100.0) {
                w.retries[1] += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: serde_json::Value) -> RetryPolicy {
        serde_json::from_value(serde_json::json!({"attempts": 2, "on": on, "statusCodes": [409]})).unwrap()
    }

    #[test]
    fn conditions() {
        let p = policy(serde_json::json!(["gateway-error"]));
        assert!(AttemptFailure::Status(503).is_retriable(&p));
        assert!(!AttemptFailure::Status(500).is_retriable(&p));
        assert!(AttemptFailure::ConnectFailure.is_retriable(&p));
        let p = policy(serde_json::json!(["5xx", "retriable-status-codes"]));
        assert!(AttemptFailure::Status(500).is_retriable(&p));
        assert!(AttemptFailure::Status(409).is_retriable(&p));
        assert!(!AttemptFailure::Status(404).is_retriable(&p));
    }

    #[test]
    fn budget_caps_retries() {
        let b = Budget::new(&RetryBudget { percent: 20.0, min_retries_per_second: 0 });
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn backoff_stays_under_ceiling() {
        for n in 0..12 {
            assert!(backoff(Duration::from_millis(10), n) <= Duration::from_millis(100));
        }
    }
}
