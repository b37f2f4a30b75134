//! Rate limits of the ingest handler, on `governor` (GCRA) limiters:
//! - per client: `rateLimitPerSecond` of the client config, bursts of
//!   [`BURST_SECONDS`] of traffic;
//! - per (client, email): `emailEventsPerMinute` of the client's policy, so one made-up
//!   or targeted address cannot be flooded into a client's CRM.
//!
//! Limiters are kept in bounded `moka` caches keyed by (client, rate), so a changed rate
//! takes effect with a fresh limiter. Emails are keyed by a keyed hash (a per-process
//! random SipHash key), never kept in clear.

use domain::{ClientId, Email};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seconds of traffic a client's bucket may burst: capacity = rate × this.
pub const BURST_SECONDS: u32 = 2;
/// Most clients with a limiter kept at once.
const MAX_LIMITED_CLIENTS: u64 = 10_000;
/// Every this many checks of a per-email limiter, its idle keys are dropped (bounds
/// memory under a spray of random addresses).
const RETAIN_EVERY: u64 = 4096;

struct EmailLimiter {
    limiter: DefaultKeyedRateLimiter<u64>,
    checks: AtomicU64,
}

/// The limiters of one ingest process.
pub struct Limits {
    clients: Cache<(ClientId, u32), Arc<DefaultDirectRateLimiter>>,
    emails: Cache<(ClientId, u32), Arc<EmailLimiter>>,
    hasher: RandomState,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            clients: Cache::new(MAX_LIMITED_CLIENTS),
            emails: Cache::new(MAX_LIMITED_CLIENTS),
            hasher: RandomState::new(),
            clock: DefaultClock::default(),
        }
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    /// Takes one event of `client` at `per_second`. `Err(wait)` when over the limit.
    pub fn check_client(&self, client: &ClientId, per_second: u32) -> Result<(), Duration> {
        let limiter = self.clients.get_with((client.clone(), per_second), || {
            let quota = Quota::per_second(nonzero(per_second))
                .allow_burst(nonzero(per_second.saturating_mul(BURST_SECONDS)));
            Arc::new(RateLimiter::direct(quota))
        });
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Takes one event of `email` at `client` at `per_minute` (0: no limit).
    pub fn check_email(
        &self,
        client: &ClientId,
        email: &Email,
        per_minute: u32,
    ) -> Result<(), Duration> {
        if per_minute == 0 {
            return Ok(());
        }
        let entry = self.emails.get_with((client.clone(), per_minute), || {
            Arc::new(EmailLimiter {
                limiter: RateLimiter::keyed(Quota::per_minute(nonzero(per_minute))),
                checks: AtomicU64::new(0),
            })
        });
        if entry.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            entry.limiter.retain_recent();
            entry.limiter.shrink_to_fit();
        }
        let key = self.hasher.hash_one(email.as_str());
        entry
            .limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_bucket_bursts_then_refuses() {
        let l = Limits::default();
        let c = ClientId::parse("shop").expect("id");
        for _ in 0..20 {
            assert!(l.check_client(&c, 10).is_ok());
        }
        let wait = l.check_client(&c, 10).expect_err("empty");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
    }

    #[test]
    fn each_email_has_its_own_budget() {
        let l = Limits::default();
        let c = ClientId::parse("shop").expect("id");
        let ana = Email::parse("ana@example.com").expect("email");
        let bob = Email::parse("bob@example.com").expect("email");
        for _ in 0..3 {
            assert!(l.check_email(&c, &ana, 3).is_ok());
        }
        let wait = l.check_email(&c, &ana, 3).expect_err("over");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(l.check_email(&c, &bob, 3).is_ok());
        let other = ClientId::parse("other").expect("id");
        assert!(l.check_email(&other, &ana, 3).is_ok());
        for _ in 0..100 {
            assert!(l.check_email(&c, &ana, 0).is_ok());
        }
    }
}
