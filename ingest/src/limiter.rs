//! Per-client token buckets (`rateLimitPerSecond` of the client config).

use domain::ClientId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds of traffic a bucket may burst: capacity = rate × this.
pub const BURST_SECONDS: f64 = 2.0;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets, one per client.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<ClientId, Bucket>>,
}

impl RateLimiter {
    /// Takes one token for `client` at `rate` per second. `Err(wait)` when empty.
    pub fn check(&self, client: &ClientId, rate: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate.max(1));
        let capacity = rate * BURST_SECONDS;
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let bucket = buckets.entry(client.clone()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let l = RateLimiter::default();
        let c = ClientId::parse("shop").expect("id");
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(l.check(&c, 10, t0).is_ok());
        }
        let wait = l.check(&c, 10, t0).expect_err("empty");
        assert!(wait <= Duration::from_millis(100));
        assert!(l.check(&c, 10, t0 + Duration::from_millis(100)).is_ok());
    }
}
