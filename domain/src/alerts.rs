//! Alert de-duplication: at most one alert per (source, client, kind) per window; the
//! occurrences in between are counted and reported with the next alert.

use crate::ports::{Alert, AlertSink, Clock};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// Default window: one alert per (source, client, kind) per 5 minutes.
pub const DEFAULT_ALERT_WINDOW_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Default)]
struct Slot {
    last_sent_ms: Option<i64>,
    suppressed: u64,
}

/// (source, client, kind) of an alert.
type AlertKey = (String, Option<String>, String);

/// Wraps an alert sink with de-duplication.
pub struct DedupAlerts<A, C> {
    inner: A,
    clock: C,
    window_ms: i64,
    slots: Mutex<HashMap<AlertKey, Slot>>,
}

impl<A, C> std::fmt::Debug for DedupAlerts<A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupAlerts")
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

impl<A: AlertSink, C: Clock> DedupAlerts<A, C> {
    /// De-duplicates alerts to `inner` over `window_ms`.
    pub fn new(inner: A, clock: C, window_ms: i64) -> Self {
        DedupAlerts {
            inner,
            clock,
            window_ms,
            slots: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl<A: AlertSink, C: Clock> AlertSink for DedupAlerts<A, C> {
    async fn alert(&self, alert: &Alert) {
        let now = self.clock.now_ms();
        let key = (
            alert.source.clone(),
            alert.client_id.as_ref().map(ToString::to_string),
            alert.kind.clone(),
        );
        let send = match self.slots.lock() {
            Ok(mut slots) => {
                let slot = slots.entry(key).or_default();
                if slot
                    .last_sent_ms
                    .is_some_and(|last| now - last < self.window_ms)
                {
                    slot.suppressed += alert.count;
                    None
                } else {
                    let count = alert.count + slot.suppressed;
                    slot.suppressed = 0;
                    slot.last_sent_ms = Some(now);
                    Some(count)
                }
            }
            Err(_) => Some(alert.count),
        };
        if let Some(count) = send {
            let mut a = alert.clone();
            if count != alert.count {
                a.message = format!(
                    "{} ({} more since the last alert of this kind)",
                    a.message,
                    count - alert.count
                );
            }
            a.count = count;
            self.inner.alert(&a).await;
        }
    }
}
