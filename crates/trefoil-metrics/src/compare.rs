//! Is one version slower than another? A one-sided Mann-Whitney U test on
//! the latency histograms of the two over the same window.
//!
//! Histograms only say which bucket each request fell in, so every bucket is
//! a group of tied values: U counts, over all (a, b) pairs, those where a's
//! request fell in a higher bucket than b's, plus half the pairs in the same
//! bucket; the normal approximation uses the tie-corrected variance.

use std::collections::BTreeMap;

/// The p-value of "`a`'s latencies tend to be greater than `b`'s" from
/// cumulative buckets (upper bound bits -> count, as `traffic::Growth`
/// keeps them): small means `a` is slower. `None` when either side has no
/// observations.
pub fn slower_p_value(a: &BTreeMap<u64, f64>, b: &BTreeMap<u64, f64>) -> Option<f64> {
    let (a, b) = (per_bucket(a, b), per_bucket(b, a));
    let (n1, n2): (f64, f64) = (a.iter().sum(), b.iter().sum());
    if n1 <= 0.0 || n2 <= 0.0 {
        return None;
    }
    let mut u = 0.0;
    let mut b_below = 0.0;
    let mut ties = 0.0;
    for (ai, bi) in a.iter().zip(&b) {
        u += ai * (b_below + bi / 2.0);
        b_below += bi;
        let t = ai + bi;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if variance <= 0.0 {
        // Everything in one bucket: nothing tells the two apart.
        return Some(1.0);
    }
    // Continuity correction towards the mean.
    let z = (u - n1 * n2 / 2.0 - 0.5) / variance.sqrt();
    Some(upper_tail(z))
}

/// Counts per bucket (not cumulative), over the bounds of both histograms
/// in ascending order, so the two line up.
fn per_bucket(h: &BTreeMap<u64, f64>, other: &BTreeMap<u64, f64>) -> Vec<f64> {
    let mut bounds: Vec<f64> = h.keys().chain(other.keys()).map(|b| f64::from_bits(*b)).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    // The cumulative count at a bound this histogram lacks is its count at the next lower bound it has.
    let mut sorted: Vec<(f64, f64)> = h.iter().map(|(b, n)| (f64::from_bits(*b), *n)).collect();
    sorted.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut previous = 0.0;
    bounds
        .iter()
        .map(|bound| {
            let cumulative = sorted.iter().take_while(|(b, _)| b <= bound).last().map_or(0.0, |(_, n)| *n).max(previous);
            let here = cumulative - previous;
            previous = cumulative;
            here
        })
        .collect()
}

/// P(Z > z) for a standard normal Z (Abramowitz and Stegun 7.1.26, error
/// below 1e-7: far finer than any decision made with it).
fn upper_tail(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if z >= 0.0 {
        erfc / 2.0
    } else {
        1.0 - erfc / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cumulative buckets at 0.01, 0.1, 0.5 and +Inf from per-bucket counts.
    fn histogram(counts: [f64; 4]) -> BTreeMap<u64, f64> {
        let mut total = 0.0;
        [0.01, 0.1, 0.5, f64::INFINITY]
            .iter()
            .zip(counts)
            .map(|(le, n)| {
                total += n;
                (le.to_bits(), total)
            })
            .collect()
    }

    #[test]
    fn the_normal_tail_is_right() {
        assert!((upper_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((upper_tail(-1.959_964) - 0.975).abs() < 1e-6);
    }

    #[test]
    fn a_slower_canary_is_found_and_an_equal_or_faster_one_is_not() {
        let stable = histogram([80.0, 20.0, 0.0, 0.0]);
        let slow = histogram([10.0, 20.0, 70.0, 0.0]);
        assert!(slower_p_value(&slow, &stable).unwrap() < 1e-6);
        let same = histogram([40.0, 10.0, 0.0, 0.0]);
        let p = slower_p_value(&same, &stable).unwrap();
        assert!((0.3..=0.7).contains(&p), "{p}");
        assert!(slower_p_value(&stable, &slow).unwrap() > 0.999, "faster is not slower");
    }

    #[test]
    fn small_differences_on_few_requests_are_not_significant() {
        let stable = histogram([6.0, 4.0, 0.0, 0.0]);
        let canary = histogram([5.0, 5.0, 0.0, 0.0]);
        assert!(slower_p_value(&canary, &stable).unwrap() > 0.1);
    }

    #[test]
    fn needs_both_sides_and_handles_one_bucket() {
        assert_eq!(slower_p_value(&histogram([0.0; 4]), &histogram([1.0, 0.0, 0.0, 0.0])), None);
        assert_eq!(slower_p_value(&histogram([3.0, 0.0, 0.0, 0.0]), &histogram([5.0, 0.0, 0.0, 0.0])), Some(1.0));
    }

    #[test]
    fn histograms_with_different_bounds_line_up() {
        let coarse: BTreeMap<u64, f64> = [(0.1f64.to_bits(), 10.0), (f64::INFINITY.to_bits(), 10.0)].into_iter().collect();
        assert_eq!(per_bucket(&coarse, &histogram([1.0, 1.0, 1.0, 1.0])), [0.0, 10.0, 0.0, 0.0]);
    }
}
