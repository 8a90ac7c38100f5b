//! Rate limits: a token bucket per key (a client id, an address), in
//! memory. Used to slow down password and secret guessing and sign-up
//! floods.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most; beyond it, idle buckets are dropped.
const KEYS_MAX: usize = 100_000;

/// A limiter: `burst` events at once, refilled at `per_minute`.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `burst` events at once and `per_minute` after.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self { burst: f64::from(burst), per_second: f64::from(per_minute) / 60.0, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key`. `Err` carries how long until one is free.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        if buckets.len() >= KEYS_MAX {
            let burst = self.burst;
            let per_second = self.per_second;
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_second < burst);
        }
        if let Some(bucket) = buckets.get_mut(key) {
            return self.take_from(bucket, now);
        }
        // A new key: allocated only now, the first time it is seen.
        let mut bucket = (self.burst, now);
        let taken = self.take_from(&mut bucket, now);
        buckets.insert(key.to_owned(), bucket);
        taken
    }

    /// Refills `bucket` (tokens, last refill) up to `now` and takes a token.
    fn take_from(&self, (tokens, at): &mut (f64, Instant), now: Instant) -> Result<(), Duration> {
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second.max(f64::MIN_POSITIVE)))
        }
    }

    /// Gives back one token taken for `key` (an attempt counted up front
    /// that turned out not to count, such as a sign-in that succeeded).
    pub fn refund(&self, key: &str) {
        let Ok(mut buckets) = self.buckets.lock() else { return };
        if let Some((tokens, _)) = buckets.get_mut(key) {
            *tokens = (*tokens + 1.0).min(self.burst);
        }
    }

    /// Whether `key` has a token left, without taking it.
    pub fn allows(&self, key: &str) -> bool {
        let now = Instant::now();
        let Ok(buckets) = self.buckets.lock() else { return true };
        buckets.get(key).is_none_or(|(tokens, at)| {
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst) >= 1.0
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_refund_gives_back_one_token_and_never_more_than_the_burst() {
        let limiter = RateLimiter::new(2, 1);
        limiter.take("k").unwrap();
        limiter.take("k").unwrap();
        assert!(limiter.take("k").is_err());
        limiter.refund("k");
        limiter.take("k").unwrap();
        limiter.refund("k");
        limiter.refund("k");
        limiter.refund("k");
        limiter.take("k").unwrap();
        limiter.take("k").unwrap();
        assert!(limiter.take("k").is_err(), "refunds stop at the burst");
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_wait() {
        let limiter = RateLimiter::new(3, 60);
        for _ in 0..3 {
            assert!(limiter.take("a").is_ok());
        }
        let wait = limiter.take("a").unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(!limiter.allows("a"));
        assert!(limiter.take("b").is_ok(), "keys are independent");
    }
}
