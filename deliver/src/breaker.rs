//! A circuit breaker per client of one CRM, so that an outage or a throttle costs a
//! bounded number of CRM calls however many messages wait.
//!
//! - **Closed**: calls go through. A batch whose every outcome is transient (5xx,
//!   timeout, throttle) is a failure; [`BreakerSettings::failures_to_open`] failures in a
//!   row open the breaker. A throttle opens it at once, for the CRM's own wait.
//! - **Open**: no call; the client's messages are held (hidden) until the breaker's
//!   probe time. Each reopening doubles the open time, up to
//!   [`BreakerSettings::open_max`].
//! - **Half-open**: past the probe time one batch goes through as the probe (others are
//!   held); a delivered message closes the breaker, a transient failure reopens it.
//!
//! The state is per process (a Lambda container, or `connect serve`): a fleet of N
//! containers makes at most N probes per open period.
//!
//! Generic breaker crates (`failsafe`) wrap one call and answer "rejected"; here the
//! answer must be *until when* (it becomes the messages' visibility), and outcomes are
//! per record, so the state machine is this small module.

use domain::ClientId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Failed batches in a row that open the breaker.
    pub failures_to_open: u32,
    /// First open period.
    pub open_base: Duration,
    /// Longest open period.
    pub open_max: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures_to_open: 3,
            open_base: Duration::from_secs(10),
            open_max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    failures: u32,
    /// Epoch ms until which no call is made (open), if any.
    open_until: Option<i64>,
    /// Times opened since the last success (the open period doubles).
    opens: u32,
    /// A probe is in flight.
    probing: bool,
}

/// What to do with a client's batch now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Call the CRM.
    Call,
    /// Call the CRM: this batch is the probe of a half-open breaker.
    Probe,
    /// Do not call; hold the messages until this epoch ms.
    Hold(i64),
}

/// The breakers of one deliver handler (one CRM).
#[derive(Debug, Default)]
pub struct Breakers {
    settings: BreakerSettings,
    states: Mutex<HashMap<ClientId, State>>,
}

impl Breakers {
    /// Breakers with `settings`.
    pub fn new(settings: BreakerSettings) -> Self {
        Breakers {
            settings,
            states: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<ClientId, State>) -> T) -> T {
        match self.states.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Whether `client`'s batch may call the CRM at `now_ms`.
    pub fn gate(&self, client: &ClientId, now_ms: i64) -> Gate {
        self.with(|states| {
            let Some(s) = states.get_mut(client) else {
                return Gate::Call;
            };
            match s.open_until {
                None => Gate::Call,
                Some(until) if now_ms < until => Gate::Hold(until),
                Some(until) if s.probing => Gate::Hold(until.max(now_ms) + 1000),
                Some(_) => {
                    s.probing = true;
                    Gate::Probe
                }
            }
        })
    }

    /// Records a batch that delivered at least one message: the breaker closes.
    pub fn success(&self, client: &ClientId) {
        self.with(|states| {
            states.remove(client);
        });
    }

    /// Records a batch whose every outcome was transient. `wait` is the CRM's own
    /// throttle wait, if it gave one (the breaker opens at once for it). Returns the
    /// epoch ms until which the breaker is open, if it is.
    pub fn failure(&self, client: &ClientId, now_ms: i64, wait: Option<Duration>) -> Option<i64> {
        let settings = self.settings;
        self.with(|states| {
            let s = states.entry(client.clone()).or_default();
            s.probing = false;
            s.failures += 1;
            let was_open = s.open_until.is_some();
            if wait.is_none() && !was_open && s.failures < settings.failures_to_open {
                return None;
            }
            let backoff = settings
                .open_base
                .saturating_mul(1u32 << s.opens.min(16))
                .min(settings.open_max);
            let period = wait.unwrap_or(backoff);
            s.opens = s.opens.saturating_add(1);
            let until = now_ms + i64::try_from(period.as_millis()).unwrap_or(i64::MAX / 4);
            s.open_until = Some(until);
            Some(until)
        })
    }

    /// Records a batch that neither delivered nor failed transiently (permanent
    /// refusals, skips): a probe in flight ends without changing the state.
    pub fn neutral(&self, client: &ClientId) {
        self.with(|states| {
            if let Some(s) = states.get_mut(client) {
                s.probing = false;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ClientId {
        ClientId::parse("shop").expect("id")
    }

    #[test]
    fn opens_after_failures_probes_and_closes() {
        let b = Breakers::new(BreakerSettings {
            failures_to_open: 3,
            open_base: Duration::from_secs(10),
            open_max: Duration::from_secs(40),
        });
        let c = id();
        assert_eq!(b.gate(&c, 0), Gate::Call);
        assert_eq!(b.failure(&c, 0, None), None);
        assert_eq!(b.failure(&c, 0, None), None);
        assert_eq!(b.failure(&c, 0, None), Some(10_000));
        assert_eq!(b.gate(&c, 5_000), Gate::Hold(10_000));
        assert_eq!(b.gate(&c, 10_000), Gate::Probe);
        // Only one probe at a time.
        assert!(matches!(b.gate(&c, 10_001), Gate::Hold(_)));
        // The probe fails: reopened for twice as long, then capped.
        assert_eq!(b.failure(&c, 10_000, None), Some(30_000));
        assert_eq!(b.gate(&c, 30_000), Gate::Probe);
        assert_eq!(b.failure(&c, 30_000, None), Some(70_000));
        assert_eq!(b.gate(&c, 70_000), Gate::Probe);
        assert_eq!(b.failure(&c, 70_000, None), Some(110_000));
        assert_eq!(b.gate(&c, 110_000), Gate::Probe);
        b.success(&c);
        assert_eq!(b.gate(&c, 110_001), Gate::Call);
        // Other clients are not affected.
        assert_eq!(
            b.gate(&ClientId::parse("other").expect("id"), 0),
            Gate::Call
        );
    }

    #[test]
    fn a_throttle_opens_at_once_for_the_crms_wait() {
        let b = Breakers::new(BreakerSettings::default());
        let c = id();
        assert_eq!(
            b.failure(&c, 1_000, Some(Duration::from_secs(600))),
            Some(601_000)
        );
        assert_eq!(b.gate(&c, 2_000), Gate::Hold(601_000));
    }
}
