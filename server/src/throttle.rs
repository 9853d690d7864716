//! Things that would repeat without end (a peer sending bad blocks, a disk that stays
//! full): log lines let through at a bounded rate with a count of what was held
//! back, and retries spaced by a back-off that does not forget a failure that
//! returns.

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

    /// Forgets every key: the next event of each is let through.
    pub fn reset(&mut self) {
        self.last.clear();
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

/// Waits between attempts that keep failing: doubling from `first` up to `last`,
/// and back to `first` only once attempts have succeeded for `settled`.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    last: Duration,
    settled: Duration,
    next: Duration,
    succeeded_at: Option<Instant>,
}

impl Backoff {
    /// A back-off from `first` to `last`, reset after `settled` without failures.
    pub fn new(first: Duration, last: Duration, settled: Duration) -> Backoff {
        Backoff {
            first,
            last,
            settled,
            next: first,
            succeeded_at: None,
        }
    }

    /// How long to wait before the next attempt of a run of failures. A run that starts
    /// soon after the last success takes up where the one before left off, so a
    /// failure that comes back at once is not retried at the fastest rate forever.
    pub fn wait(&mut self) -> Duration {
        if self
            .succeeded_at
            .take()
            .is_some_and(|at| at.elapsed() >= self.settled)
        {
            self.next = self.first;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.last);
        wait
    }

    /// An attempt succeeded.
    pub fn succeeded(&mut self) {
        self.succeeded_at = Some(Instant::now());
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

    #[test]
    fn a_backoff_doubles_and_resumes_where_it_was_after_a_short_success() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(500), Duration::from_secs(3600));
        let waits: Vec<_> = (0..5).map(|_| backoff.wait()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        backoff.succeeded();
        assert_eq!(backoff.wait(), ms(500));
        let mut settled = Backoff::new(ms(100), ms(500), Duration::ZERO);
        settled.wait();
        settled.wait();
        settled.succeeded();
        assert_eq!(settled.wait(), ms(100));
    }
}
