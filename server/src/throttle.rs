//! Log lines that would repeat without end (a peer sending bad blocks, a disk that
//! stays full), let through at a bounded rate with a count of what was held back.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Per key, at most one event per interval is let through.
#[derive(Debug)]
pub struct Throttle<K> {
    every: Duration,
    last: HashMap<K, (Instant, u64)>,
}

impl<K: Hash + Eq> Throttle<K> {
    /// Lets one event per key through every `every`.
    pub fn new(every: Duration) -> Throttle<K> {
        Throttle {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether an event of `key` may be logged now: `Some(n)` with the n events
    /// of that key held back since the last one let through, or `None` to hold
    /// this one back.
    pub fn allow(&mut self, key: K) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&mut self, key: K, now: Instant) -> Option<u64> {
        match self.last.get_mut(&key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_key_per_interval_with_the_count_held_back() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.allow_at("a", start), Some(0));
        assert_eq!(throttle.allow_at("a", start + Duration::from_secs(1)), None);
        assert_eq!(
            throttle.allow_at("b", start + Duration::from_secs(1)),
            Some(0)
        );
        assert_eq!(throttle.allow_at("a", start + Duration::from_secs(9)), None);
        assert_eq!(
            throttle.allow_at("a", start + Duration::from_secs(10)),
            Some(2)
        );
        assert_eq!(
            throttle.allow_at("a", start + Duration::from_secs(11)),
            None
        );
    }
}
