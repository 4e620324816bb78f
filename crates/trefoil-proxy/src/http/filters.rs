//! Per-rule request filters: local rate limit, fault injection, header edits.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use trefoil_model::parsed;
use trefoil_model::spec::{FaultInjection, HeaderModifier, LocalRateLimit};

/// A token bucket refilled continuously.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    pub status: u16,
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub(crate) fn new(spec: &LocalRateLimit) -> Self {
        let burst = spec.burst.map(f64::from).unwrap_or(spec.requests_per_second.max(1.0));
        RateLimiter { rate: spec.requests_per_second, burst, status: spec.status, bucket: Mutex::new((burst, Instant::now())) }
    }

    /// Takes a token if one is left.
    pub(crate) fn try_acquire(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = *b;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *b = (tokens - 1.0, now);
            true
        } else {
            *b = (tokens, now);
            false
        }
    }
}

/// What fault injection decided for one request.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<u16>,
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || fastrand::f64() * 100.0 < percent
}

pub(crate) fn decide_fault(fault: &FaultInjection) -> FaultDecision {
    FaultDecision {
        delay: fault.delay.as_ref().filter(|d| chance(d.percent)).map(|d| d.fixed.get()),
        abort: fault.abort.as_ref().filter(|a| chance(a.percent)).map(|a| a.status),
    }
}

pub(crate) fn mirror_chance(percent: f64) -> bool {
    chance(percent)
}

/// Header edits with the names and values the model parsed.
#[derive(Debug, Default)]
pub(crate) struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub(crate) fn compile(m: &HeaderModifier) -> Self {
        let pairs = |map: &BTreeMap<parsed::HeaderName, parsed::HeaderValue>| {
            map.iter().map(|(k, v)| (k.as_http().clone(), v.as_http().clone())).collect()
        };
        HeaderEdits { set: pairs(&m.set), add: pairs(&m.add), remove: m.remove.iter().map(|k| k.as_http().clone()).collect() }
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let rl = RateLimiter::new(&LocalRateLimit { requests_per_second: 1.0, burst: Some(3), status: 429 });
        assert!((0..3).all(|_| rl.try_acquire()));
        assert!(!rl.try_acquire());
    }

    #[test]
    fn a_burst_of_zero_refuses_every_request() {
        let rl = RateLimiter::new(&LocalRateLimit { requests_per_second: 1000.0, burst: Some(0), status: 429 });
        assert!(!rl.try_acquire());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(!rl.try_acquire(), "tokens never accumulate past the bucket's size of 0");
    }

    #[test]
    fn header_edits_apply_in_order() {
        let m: HeaderModifier = serde_json::from_value(serde_json::json!({
            "set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]
        }))
        .unwrap();
        let edits = HeaderEdits::compile(&m);
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("0"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("gone"));
        edits.apply(&mut h);
        assert_eq!(h.get("x-a").unwrap(), "1");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(h.get("x-c").is_none());
    }

    #[test]
    fn fault_percentages_hold_roughly() {
        let f: FaultInjection = serde_json::from_value(serde_json::json!({"abort": {"status": 503, "percent": 25}})).unwrap();
        let aborted = (0..4000).filter(|_| decide_fault(&f).abort.is_some()).count();
        assert!((800..1200).contains(&aborted), "{aborted}");
    }
}
