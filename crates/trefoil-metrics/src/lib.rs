//! What `trefoil top`, the portal's live dashboard and the rollout controller share: fetching over HTTP
//! with a deadline, reading the Prometheus text the proxies expose, and turning two scrapes
//! into request counts, success rates and latency quantiles as PromQL would,
//! and comparing two versions' latencies.

pub mod compare;
pub mod fetch;
pub mod promtext;
pub mod top;
pub mod traffic;

pub use compare::slower_p_value;
pub use fetch::{FetchError, Fetcher};
pub use promtext::{parse, ParseError, Sample};
pub use traffic::{growth, quantile, rows, Growth, Key, Row};
