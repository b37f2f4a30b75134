//! The deliver handler: a batch of queue messages of one CRM → CRM calls → what to
//! redeliver.
//!
//! [`DeliverHandler::handle`] is transport-free. It groups the messages by client,
//! gets each client's config and token, sends with the fewest calls, then per message:
//! delivered → acknowledged; retry later → hidden for a backoff that grows with the
//! receive count; throttled → hidden for the CRM's wait; token rejected → one refresh
//! and one retry in the same invocation; permanent → sent to the DLQ with the failure
//! attributes, then acknowledged (if that send fails, redelivered — never lost).
//! Transient failures are retried until the retry window (default 24 h) since the
//! message was queued has passed, then dead-lettered as `retry_window_exhausted`; a
//! per-client circuit breaker ([`breaker`]) holds a failing client's messages without
//! calling the CRM, so an outage costs a bounded number of calls.
//! The Lambda binary ([`lambda`]) and the local delivery workers of `connect serve` are
//! thin shells around it.

pub mod breaker;
pub mod handler;
pub mod lambda;

pub use breaker::BreakerSettings;
pub use handler::{
    DEFAULT_RETRY_WINDOW, DeliverHandler, DeliverOutcome, DeliverSettings, DeliveryLogEntry,
    InboundMessage,
};
