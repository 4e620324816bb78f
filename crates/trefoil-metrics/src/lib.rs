//! The metrics math shared by `trefoil top` and the rollout controller:
//! reading the Prometheus text the proxies expose, and turning two scrapes
//! into request counts, success rates and latency quantiles as PromQL would.

pub mod promtext;
pub mod traffic;

pub use promtext::{parse, ParseError, Sample};
pub use traffic::{growth, quantile, rows, Growth, Key, Row};
