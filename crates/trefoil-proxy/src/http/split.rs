//! Weighted traffic split with exact proportions: a smooth weighted
//! round-robin schedule, walked by an atomic counter.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest schedule kept; larger weight sums are reduced by their gcd, then
/// fall back to weighted random choice.
const MAX_SCHEDULE: u64 = 10_000;

#[derive(Debug)]
pub(crate) struct WeightedSplit<T> {
    items: Vec<(T, u32)>,
    schedule: Vec<u16>,
    next: AtomicUsize,
    total: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl<T> WeightedSplit<T> {
    pub(crate) fn new(items: Vec<(T, u32)>) -> Self {
        let total: u64 = items.iter().map(|(_, w)| *w as u64).sum();
        let g = items.iter().map(|(_, w)| *w as u64).filter(|w| *w > 0).fold(0, gcd).max(1);
        let schedule = if total / g <= MAX_SCHEDULE && items.len() < u16::MAX as usize {
            smooth_schedule(&items.iter().map(|(_, w)| *w as u64 / g).collect::<Vec<_>>())
        } else {
            Vec::new()
        };
        WeightedSplit { items, schedule, next: AtomicUsize::new(0), total }
    }

    /// The next item; `None` only when every weight is zero.
    pub(crate) fn pick(&self) -> Option<&T> {
        if self.total == 0 {
            return None;
        }
        if !self.schedule.is_empty() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
            return Some(&self.items[self.schedule[i] as usize].0);
        }
        let mut ticket = fastrand::u64(..self.total);
        for (item, w) in &self.items {
            if ticket < *w as u64 {
                return Some(item);
            }
            ticket -= *w as u64;
        }
        None
    }
}

/// nginx's smooth weighted round robin, unrolled into one full cycle: every
/// window of the cycle carries each item in proportion, not in bursts.
fn smooth_schedule(weights: &[u64]) -> Vec<u16> {
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += *w as i64;
            }
            let best = (0..weights.len()).max_by_key(|i| (current[*i], std::cmp::Reverse(*i))).unwrap_or(0);
            current[best] -= total;
            best as u16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_are_exact_over_a_cycle() {
        let s = WeightedSplit::new(vec![("a", 80), ("b", 20)]);
        let a = (0..1000).filter(|_| *s.pick().unwrap() == "a").count();
        assert_eq!(a, 800);
    }

    #[test]
    fn schedule_is_smooth() {
        let s = WeightedSplit::new(vec![("a", 1), ("b", 1)]);
        let picks: Vec<_> = (0..4).map(|_| *s.pick().unwrap()).collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let s = WeightedSplit::new(vec![("a", 0), ("b", 5)]);
        assert!((0..50).all(|_| *s.pick().unwrap() == "b"));
        assert!(WeightedSplit::new(vec![("a", 0)]).pick().is_none());
    }

    #[test]
    fn huge_weights_fall_back_to_random() {
        let s = WeightedSplit::new(vec![("a", 1_000_003), ("b", 999_983)]);
        let a = (0..10_000).filter(|_| *s.pick().unwrap() == "a").count();
        assert!((4_700..5_300).contains(&a), "{a}");
    }
}
