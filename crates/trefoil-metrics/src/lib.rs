//! What `trefoil top` and the rollout controller share: fetching over HTTP
//! with a deadline, reading the Prometheus text the proxies expose, and turning two scrapes
//! into request counts, success rates and latency quantiles as PromQL would.

pub mod fetch;
pub mod promtext;
pub mod traffic;

pub use fetch::{FetchError, Fetcher};
pub use promtext::{parse, ParseError, Sample};
pub use traffic::{growth, quantile, rows, Growth, Key, Row};
