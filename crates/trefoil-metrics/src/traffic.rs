//! Traffic per service and version between two scrapes: request rate,
//! success rate and latency quantiles, computed as PromQL's `rate()` and
//! `histogram_quantile()` would over the same window.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::promtext::Sample;

pub const REQUESTS: &str = "trefoil_requests_total";
/// gRPC calls by the `grpc-status` they ended with; all of them are also
/// in [`REQUESTS`] as HTTP 200.
pub const GRPC_RESPONSES: &str = "trefoil_grpc_responses_total";
pub const DURATION_BUCKET: &str = "trefoil_request_duration_seconds_bucket";

/// The labels traffic is grouped by before a direction is chosen.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub service: String,
    pub version: String,
    pub direction: String,
}

impl Key {
    fn of(s: &Sample) -> Self {
        Key {
            service: s.label("service").to_string(),
            version: s.label("version").to_string(),
            direction: s.label("direction").to_string(),
        }
    }
}

/// How much one group's series grew over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Growth {
    pub requests: f64,
    /// Requests that failed: answered with a 5xx status, or gRPC calls that
    /// ended with a `grpc-status` other than 0 (which gRPC sends with HTTP 200).
    pub failures: f64,
    /// Cumulative bucket counts by upper bound (`f64::to_bits` of `le`, so
    /// equal bounds from different series and proxies add up).
    pub buckets: BTreeMap<u64, f64>,
}

impl Growth {
    /// Adds another proxy's growth of the same group.
    pub fn add(&mut self, other: &Growth) {
        self.requests += other.requests;
        self.failures += other.failures;
        for (le, n) in &other.buckets {
            *self.buckets.entry(*le).or_default() += n;
        }
    }
}

/// Per-group growth of one proxy's request metrics from `before` to `after`.
///
/// A series missing from `before` started inside the window, so all of it
/// counts; a series that shrank was reset (the proxy restarted), so it
/// counts from zero as PromQL does; one missing from `after` is gone and
/// contributes nothing.
pub fn growth(before: &[Sample], after: &[Sample]) -> BTreeMap<Key, Growth> {
    let previous: HashMap<(&str, &BTreeMap<String, String>), f64> =
        before.iter().map(|s| ((s.name.as_str(), &s.labels), s.value)).collect();
    let prev = |s: &Sample| previous.get(&(s.name.as_str(), &s.labels)).copied().unwrap_or(0.0);
    let mut out: BTreeMap<Key, Growth> = BTreeMap::new();

    for s in after.iter().filter(|s| s.name == REQUESTS) {
        let delta = counter_delta(prev(s), s.value);
        let g = out.entry(Key::of(s)).or_default();
        g.requests += delta;
        if s.label("status_code").parse::<u16>().is_ok_and(|code| code >= 500) {
            g.failures += delta;
        }
    }
    for s in after.iter().filter(|s| s.name == GRPC_RESPONSES && s.label("grpc_status") != "0") {
        out.entry(Key::of(s)).or_default().failures += counter_delta(prev(s), s.value);
    }

    // Buckets of one histogram series reset together, so decide per series
    // (its labels without `le`) whether it was reset.
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<&Sample>> = BTreeMap::new();
    for s in after.iter().filter(|s| s.name == DURATION_BUCKET) {
        let mut labels = s.labels.clone();
        labels.remove("le");
        series.entry(labels).or_default().push(s);
    }
    for buckets in series.values() {
        let reset = buckets.iter().any(|s| s.value < prev(s));
        for s in buckets {
            let Some(le) = parse_le(s.label("le")) else { continue };
            let delta = if reset { s.value } else { s.value - prev(s) };
            *out.entry(Key::of(s)).or_default().buckets.entry(le.to_bits()).or_default() += delta;
        }
    }
    out
}

fn counter_delta(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), as
/// `histogram_quantile`: linear interpolation inside the bucket the rank
/// falls in, the highest finite bound when it falls in `+Inf`. `None`
/// without observations or without a `+Inf` bucket.
pub fn quantile(q: f64, buckets: &BTreeMap<u64, f64>) -> Option<f64> {
    let mut sorted: Vec<(f64, f64)> = buckets.iter().map(|(le, n)| (f64::from_bits(*le), *n)).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !matches!(sorted.last(), Some((le, _)) if *le == f64::INFINITY) {
        return None;
    }
    // Scrapes are not atomic, so a bucket can trail the one below it; a
    // cumulative count never falls.
    for i in 1..sorted.len() {
        sorted[i].1 = sorted[i].1.max(sorted[i - 1].1);
    }
    let total = sorted.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let b = sorted.iter().position(|(_, n)| *n >= rank)?;
    if b == sorted.len() - 1 {
        return Some(if b == 0 { 0.0 } else { sorted[b - 1].0 });
    }
    let (upper, count) = sorted[b];
    let (lower, below) = if b == 0 { (0.0_f64.min(upper), 0.0) } else { sorted[b - 1] };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / in_bucket)
}

/// One line of `trefoil top`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub service: String,
    pub version: String,
    /// Which side's series were counted: `inbound` where the service has
    /// sidecars, else `outbound` (a gateway in front of a static service).
    pub direction: String,
    pub requests: f64,
    pub rps: f64,
    /// Share of requests not answered with a 5xx, 0..1; `None` without requests.
    pub success_rate: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// Rows per service and version over a window of `seconds`, counting each
/// request once: a request through a gateway to a sidecar shows up both as
/// the gateway's `outbound` and as the sidecar's `inbound`, so only one
/// direction per service and version is used, `inbound` first.
pub fn rows(groups: &BTreeMap<Key, Growth>, seconds: f64) -> Vec<Row> {
    let mut chosen: BTreeMap<(&str, &str), (&Key, &Growth)> = BTreeMap::new();
    for (key, g) in groups {
        let slot = (key.service.as_str(), key.version.as_str());
        match chosen.get(&slot) {
            Some((current, _)) if rank(&current.direction) <= rank(&key.direction) => {}
            _ => {
                chosen.insert(slot, (key, g));
            }
        }
    }
    chosen
        .into_values()
        .map(|(key, g)| Row {
            service: key.service.clone(),
            version: key.version.clone(),
            direction: key.direction.clone(),
            requests: g.requests,
            rps: if seconds > 0.0 { g.requests / seconds } else { 0.0 },
            success_rate: (g.requests > 0.0).then(|| (g.requests - g.failures) / g.requests),
            p50_seconds: quantile(0.5, &g.buckets),
            p99_seconds: quantile(0.99, &g.buckets),
        })
        .collect()
}

/// Preference among directions; anything unnamed comes after both, by name.
fn rank(direction: &str) -> (u8, &str) {
    match direction {
        "inbound" => (0, ""),
        "outbound" => (1, ""),
        other => (2, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promtext::parse;

    fn requests(direction: &str, version: &str, code: u16, n: f64) -> String {
        format!("{REQUESTS}{{direction=\"{direction}\",route=\"web\",service=\"web\",version=\"{version}\",status_code=\"{code}\",cnf=\"\"}} {n}\n")
    }

    /// A histogram series with `counts` per bound of 0.1, 0.2, 0.4 and +Inf (cumulative).
    fn histogram(direction: &str, version: &str, counts: [f64; 4]) -> String {
        ["0.1", "0.2", "0.4", "+Inf"]
            .iter()
            .zip(counts)
            .map(|(le, n)| format!("{DURATION_BUCKET}{{direction=\"{direction}\",route=\"web\",service=\"web\",version=\"{version}\",cnf=\"\",le=\"{le}\"}} {n}\n"))
            .collect()
    }

    fn buckets(pairs: &[(f64, f64)]) -> BTreeMap<u64, f64> {
        pairs.iter().map(|(le, n)| (le.to_bits(), *n)).collect()
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let b = buckets(&[(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (f64::INFINITY, 40.0)]);
        // rank 20 of 40 is halfway through the 0.1..0.2 bucket (10..30).
        assert!((quantile(0.5, &b).unwrap() - 0.15).abs() < 1e-9);
        // rank 5 is halfway through the first bucket, which starts at 0.
        assert!((quantile(0.125, &b).unwrap() - 0.05).abs() < 1e-9);
        // rank 39.6 is in 0.2..0.4 (30..40): 0.2 + 0.2 * 9.6/10.
        assert!((quantile(0.99, &b).unwrap() - 0.392).abs() < 1e-9);
    }

    #[test]
    fn quantile_in_the_inf_bucket_is_the_highest_finite_bound() {
        let b = buckets(&[(0.1, 1.0), (0.2, 1.0), (f64::INFINITY, 10.0)]);
        assert_eq!(quantile(0.99, &b), Some(0.2));
    }

    #[test]
    fn quantile_needs_observations_and_an_inf_bucket() {
        assert_eq!(quantile(0.5, &buckets(&[(0.1, 0.0), (f64::INFINITY, 0.0)])), None);
        assert_eq!(quantile(0.5, &buckets(&[(0.1, 3.0)])), None);
        assert_eq!(quantile(0.5, &BTreeMap::new()), None);
    }

    #[test]
    fn quantile_treats_a_falling_cumulative_count_as_flat() {
        let b = buckets(&[(0.1, 10.0), (0.2, 8.0), (f64::INFINITY, 10.0)]);
        assert!((quantile(0.5, &b).unwrap() - 0.05).abs() < 1e-9);
    }

    #[test]
    fn rates_and_success_from_two_scrapes() {
        let before = parse(
            &(requests("inbound", "v1", 200, 100.0)
                + &requests("inbound", "v1", 503, 10.0)
                + &histogram("inbound", "v1", [50.0, 100.0, 110.0, 110.0])),
        )
        .unwrap();
        let after = parse(
            &(requests("inbound", "v1", 200, 130.0)
                + &requests("inbound", "v1", 503, 20.0)
                + &histogram("inbound", "v1", [60.0, 130.0, 150.0, 150.0])),
        )
        .unwrap();
        let rows = rows(&growth(&before, &after), 2.0);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.service.as_str(), r.version.as_str(), r.direction.as_str()), ("web", "v1", "inbound"));
        assert_eq!(r.requests, 40.0);
        assert_eq!(r.rps, 20.0);
        assert_eq!(r.success_rate, Some(0.75));
        // Window buckets: 10, 30, 40 (+Inf 40): the median (rank 20) is halfway through 0.1..0.2 (10..30).
        assert!((r.p50_seconds.unwrap() - 0.15).abs() < 1e-9);
    }

    #[test]
    fn grpc_calls_that_end_in_error_are_failures_though_sent_as_200() {
        let grpc = |status: &str, n: f64| {
            format!("{GRPC_RESPONSES}{{direction=\"inbound\",route=\"web\",service=\"web\",version=\"v1\",grpc_status=\"{status}\"}} {n}\n")
        };
        let before = parse(&(requests("inbound", "v1", 200, 10.0) + &grpc("0", 10.0))).unwrap();
        let after = parse(&(requests("inbound", "v1", 200, 30.0) + &grpc("0", 25.0) + &grpc("14", 5.0))).unwrap();
        let rows = rows(&growth(&before, &after), 1.0);
        assert_eq!(rows[0].requests, 20.0);
        assert_eq!(rows[0].success_rate, Some(0.75));
    }

    #[test]
    fn a_reset_counter_counts_from_zero() {
        let before = parse(&(requests("inbound", "v1", 200, 500.0) + &histogram("inbound", "v1", [400.0, 500.0, 500.0, 500.0]))).unwrap();
        // The proxy restarted: fewer than before, all of them new.
        let after = parse(&(requests("inbound", "v1", 200, 7.0) + &histogram("inbound", "v1", [1.0, 7.0, 7.0, 7.0]))).unwrap();
        let g = growth(&before, &after);
        let web = &g[&Key { service: "web".into(), version: "v1".into(), direction: "inbound".into() }];
        assert_eq!(web.requests, 7.0);
        assert_eq!(web.buckets[&f64::INFINITY.to_bits()], 7.0);
        assert_eq!(web.buckets[&0.1f64.to_bits()], 1.0);
    }

    #[test]
    fn missing_series_new_ones_count_whole_and_vanished_ones_not_at_all() {
        let before = parse(&(requests("inbound", "v1", 200, 5.0) + &requests("inbound", "v2", 200, 9.0))).unwrap();
        let after = parse(&(requests("inbound", "v1", 200, 8.0) + &requests("inbound", "v1", 500, 2.0))).unwrap();
        let rows = rows(&growth(&before, &after), 1.0);
        assert_eq!(rows.len(), 1, "v2 vanished: {rows:?}");
        assert_eq!(rows[0].requests, 5.0);
        assert_eq!(rows[0].success_rate, Some(0.6));
        assert_eq!(rows[0].p50_seconds, None, "no histogram series");
        assert_eq!(growth(&[], &[]), BTreeMap::new());
    }

    #[test]
    fn inbound_is_counted_where_present_else_outbound() {
        // A gateway sends to web (whose sidecars count inbound) and to a static db.
        let text = requests("outbound", "v1", 200, 10.0)
            + &requests("inbound", "v1", 200, 10.0)
            + &requests("outbound", "v1", 200, 4.0).replace("service=\"web\"", "service=\"db\"");
        let rows = rows(&growth(&[], &parse(&text).unwrap()), 1.0);
        let got: Vec<(&str, &str, f64)> = rows.iter().map(|r| (r.service.as_str(), r.direction.as_str(), r.requests)).collect();
        assert_eq!(got, vec![("db", "outbound", 4.0), ("web", "inbound", 10.0)]);
    }

    #[test]
    fn proxies_add_up() {
        let key = Key { service: "web".into(), version: "v1".into(), direction: "inbound".into() };
        let one = growth(&[], &parse(&(requests("inbound", "v1", 200, 3.0) + &histogram("inbound", "v1", [1.0, 2.0, 3.0, 3.0]))).unwrap());
        let mut total = one[&key].clone();
        total.add(&one[&key]);
        assert_eq!(total.requests, 6.0);
        assert_eq!(total.buckets[&f64::INFINITY.to_bits()], 6.0);
    }
}
