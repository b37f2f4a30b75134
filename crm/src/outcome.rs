//! The outcome classes of DESIGN.md, for one record.

use std::time::Duration;

/// What happened to one record sent to a CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the CRM.
    Delivered,
    /// A transient failure (5xx, timeout, connection error): try again later, with a
    /// backoff that grows with the receive count.
    RetryLater {
        /// Why (CRM status or error code).
        status: String,
        /// Detail for logs and the DLQ (no secret, no email).
        reason: String,
    },
    /// The CRM asked to slow down: try again after `wait`.
    Throttled {
        /// The CRM's own wait (Retry-After, remaining_time, documented pause).
        wait: Duration,
        /// Why.
        status: String,
    },
    /// The token was refused: refresh once, then retry.
    TokenRejected {
        /// Why.
        reason: String,
    },
    /// Nothing was written, on purpose, and nothing will be: acknowledge the message
    /// and count the reason (`skipped_unknown_contact`: an update-only event for a
    /// contact the CRM does not know; `skipped_event_type`: a type the target does not
    /// take; `skipped_update_only_unsupported`: the CRM cannot update without creating;
    /// `skipped_suppressed`: the email was erased and is suppressed).
    Skipped {
        /// Why (a metric label).
        reason: &'static str,
    },
    /// The CRM refused the record for good: dead-letter it with the reason.
    Permanent {
        /// The CRM's status (HTTP status or error code).
        status: String,
        /// The CRM's message.
        reason: String,
    },
}

impl Outcome {
    /// A retry-later outcome.
    pub fn retry(status: impl Into<String>, reason: impl Into<String>) -> Self {
        Outcome::RetryLater {
            status: status.into(),
            reason: reason.into(),
        }
    }
    /// A permanent outcome.
    pub fn permanent(status: impl Into<String>, reason: impl Into<String>) -> Self {
        Outcome::Permanent {
            status: status.into(),
            reason: reason.into(),
        }
    }
    /// A token-rejected outcome.
    pub fn token_rejected(reason: impl Into<String>) -> Self {
        Outcome::TokenRejected {
            reason: reason.into(),
        }
    }
    /// A skipped outcome.
    pub fn skipped(reason: &'static str) -> Self {
        Outcome::Skipped { reason }
    }
    /// A throttled outcome.
    pub fn throttled(wait: Duration, status: impl Into<String>) -> Self {
        Outcome::Throttled {
            wait,
            status: status.into(),
        }
    }
    /// The metric / alert kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::RetryLater { .. } => "retry_later",
            Outcome::Throttled { .. } => "throttled",
            Outcome::TokenRejected { .. } => "token_rejected",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Permanent { .. } => "permanent",
        }
    }
}

/// Classifies a transport error (no HTTP answer).
pub fn from_transport(e: &reqwest::Error) -> Outcome {
    let status = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection_error"
    } else {
        "transport_error"
    };
    Outcome::retry(status, e.to_string())
}
