//! `ratelimit`: a token bucket per client. A bucket holds at most `burst`
//! tokens and refills at `rate` per second; a request takes one token or is
//! refused with 429 and a `retry-after` saying when the next token comes.
//! Clients are keyed by address, or by a header (an API key, a tenant) when
//! one is configured and present.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use trefoil_chain::json::JsonVerdict;

use crate::request::Request;
use crate::server::Function;
use crate::verdict;

/// Buckets kept before full ones (clients idle long enough to have refilled,
/// so forgetting them changes nothing) are dropped: bounds memory under churn.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error("rate must be a positive number of requests per second, not {0}")]
    Rate(f64),
    #[error("burst must be at least 1, not {0}")]
    Burst(f64),
}

/// One client's bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Rate and burst, and the bucket arithmetic.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Tokens added per second.
    pub rate: f64,
    /// Bucket size: requests allowed at once after a quiet period.
    pub burst: f64,
}

impl Limits {
    pub fn new(rate: f64, burst: f64) -> Result<Self, RateError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(RateError::Rate(rate));
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(RateError::Burst(burst));
        }
        Ok(Limits { rate, burst })
    }

    pub fn full(&self, now: Instant) -> Bucket {
        Bucket { tokens: self.burst, last: now }
    }

    /// Refills `bucket` up to `now` and takes a token: `Ok` with the tokens
    /// left, or `Err` with the wait until one is there.
    pub fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<f64, Duration> {
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(bucket.tokens)
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    fn is_full(&self, bucket: &Bucket, now: Instant) -> bool {
        bucket.tokens + now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate >= self.burst
    }
}

/// The function.
#[derive(Debug)]
pub struct RateLimit {
    limits: Limits,
    /// Lower-case header whose value keys the bucket, if any.
    key_header: Option<String>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimit {
    pub fn new(limits: Limits, key_header: Option<String>) -> Self {
        RateLimit { limits, key_header: key_header.map(|h| h.to_ascii_lowercase()), buckets: Mutex::new(HashMap::new()) }
    }

    /// The bucket's key: the header's value if configured and present, else the client address.
    pub fn key(&self, call: &Request) -> String {
        if let Some(value) = self.key_header.as_deref().and_then(|h| call.header(h)) {
            return format!("header:{value}");
        }
        match call.client_ip() {
            Some(ip) => format!("ip:{ip}"),
            // No address: all such calls share one bucket rather than going unlimited.
            None => "unknown".to_string(),
        }
    }

    /// Takes a token for `key` at `now`.
    pub fn check(&self, key: &str, now: Instant) -> Result<f64, Duration> {
        // A poisoned lock only means another call panicked mid-update; the map is still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let limits = self.limits;
            buckets.retain(|_, b| !limits.is_full(b, now));
        }
        let bucket = buckets.entry(key.to_string()).or_insert_with(|| self.limits.full(now));
        self.limits.take(bucket, now)
    }
}

impl Function for RateLimit {
    fn kind(&self) -> &'static str {
        "ratelimit"
    }

    async fn decide(&self, call: Request) -> Result<JsonVerdict, String> {
        let key = self.key(&call);
        Ok(match self.check(&key, Instant::now()) {
            // Allowed requests publish nothing: an event per request would only be noise.
            Ok(_) => verdict::allow(Vec::new()),
            Err(wait) => {
                // retry-after is whole seconds, rounded up so a client that obeys it finds a token.
                let retry = wait.as_secs_f64().ceil().max(1.0) as u64;
                let headers = BTreeMap::from([("retry-after".to_string(), retry.to_string())]);
                verdict::deny_with_headers(
                    429,
                    "too many requests\n",
                    headers,
                    vec![verdict::event("rate_limited", json!({"cnf": call.cnf, "key": key, "retryAfter": retry}))],
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_refills_at_the_rate() {
        let limits = Limits::new(2.0, 3.0).unwrap();
        let t0 = Instant::now();
        let mut b = limits.full(t0);
        assert_eq!(limits.take(&mut b, t0), Ok(2.0));
        assert_eq!(limits.take(&mut b, t0), Ok(1.0));
        assert_eq!(limits.take(&mut b, t0), Ok(0.0));
        assert_eq!(limits.take(&mut b, t0), Err(Duration::from_millis(500)), "one token takes 1/rate");
        // 250 ms later half a token is there: still refused, for the other half.
        assert_eq!(limits.take(&mut b, t0 + Duration::from_millis(250)), Err(Duration::from_millis(250)));
        assert_eq!(limits.take(&mut b, t0 + Duration::from_millis(500)), Ok(0.0));
        // A long pause refills only up to the burst.
        assert_eq!(limits.take(&mut b, t0 + Duration::from_secs(60)), Ok(2.0));
    }

    #[test]
    fn clients_have_their_own_buckets_keyed_by_address_or_header() {
        let rl = RateLimit::new(Limits::new(1.0, 1.0).unwrap(), Some("X-Api-Key".into()));
        let call = |source: &str, key: Option<&str>| Request {
            source: Some(source.parse().unwrap()),
            headers: key.map(|k| vec![("x-api-key".to_string(), k.to_string())]).unwrap_or_default(),
            ..Default::default()
        };
        assert_eq!(rl.key(&call("10.0.0.1:1", None)), "ip:10.0.0.1");
        assert_eq!(rl.key(&call("10.0.0.1:2", Some("k1"))), "header:k1");
        let now = Instant::now();
        assert!(rl.check("ip:10.0.0.1", now).is_ok());
        assert!(rl.check("ip:10.0.0.1", now).is_err());
        assert!(rl.check("ip:10.0.0.2", now).is_ok(), "another client is not affected");
    }

    #[test]
    fn impossible_limits_are_refused() {
        assert!(Limits::new(0.0, 1.0).is_err());
        assert!(Limits::new(f64::NAN, 1.0).is_err());
        assert!(Limits::new(1.0, 0.5).is_err());
    }

    #[tokio::test]
    async fn a_refusal_is_429_with_retry_after_and_an_event() {
        let rl = RateLimit::new(Limits::new(0.5, 1.0).unwrap(), None);
        let call = || Request { source: Some("127.0.0.1:9".parse().unwrap()), cnf: "edge".into(), ..Default::default() };
        assert_eq!(rl.decide(call()).await.unwrap().verdict, "allow");
        let v = rl.decide(call()).await.unwrap();
        assert_eq!((v.verdict.as_str(), v.status), ("deny", Some(429)));
        assert_eq!(v.set_headers.get("retry-after").map(String::as_str), Some("2"));
        assert_eq!(v.events[0].name, "rate_limited");
        assert_eq!(v.events[0].data["key"], "ip:127.0.0.1");
    }
}
