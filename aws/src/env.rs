//! The Lambda environment contract (DESIGN.md, "Lambda environment").

use domain::record::{DEFAULT_RECORD_TTL_HOURS, MAX_RECORD_TTL_HOURS, MIN_RECORD_TTL_HOURS};

/// Navigation table name.
pub const NAVIGATION_TABLE: &str = "NAVIGATION_TABLE";
/// Clients table name.
pub const CLIENTS_TABLE: &str = "CLIENTS_TABLE";
/// RD Station config table name.
pub const RDSTATION_CONFIG_TABLE: &str = "RDSTATION_CONFIG_TABLE";
/// Tokens table name.
pub const TOKENS_TABLE: &str = "TOKENS_TABLE";
/// Suppression table (LGPD) and audit trail.
pub const SUPPRESSION_TABLE: &str = "SUPPRESSION_TABLE";
/// Hours a navigation record is kept.
pub const RECORD_TTL_HOURS: &str = "RECORD_TTL_HOURS";
/// SNS topic for alerts.
pub const ALERT_TOPIC_ARN: &str = "ALERT_TOPIC_ARN";
/// deliver / token: which CRM this function serves.
pub const CRM: &str = "CRM";
/// deliver: its queue.
pub const QUEUE_URL: &str = "QUEUE_URL";
/// deliver: its dead-letter queue.
pub const DLQ_URL: &str = "DLQ_URL";

/// fanout: the delivery queue of a CRM (`QUEUE_URL_RESPONSYS`, …).
pub fn queue_url_var(crm: domain::Crm) -> String {
    format!("QUEUE_URL_{}", crm.as_str().to_ascii_uppercase())
}

/// fanout: the dead-letter queue of a CRM (`DLQ_URL_RESPONSYS`, …), where records too
/// large for a message are put on purpose.
pub fn dlq_url_var(crm: domain::Crm) -> String {
    format!("DLQ_URL_{}", crm.as_str().to_ascii_uppercase())
}

/// A required variable whose name is computed.
pub fn required_named(name: &str) -> Result<String, EnvError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| EnvError::MissingNamed(name.to_owned()))
}

/// A missing or invalid environment variable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// Not set.
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// Not set (computed name).
    #[error("environment variable {0} is not set")]
    MissingNamed(String),
    /// Set to something unusable.
    #[error("environment variable {name} is invalid: {message}")]
    Invalid {
        /// Variable.
        name: &'static str,
        /// Why.
        message: String,
    },
}

/// A required variable.
pub fn required(name: &'static str) -> Result<String, EnvError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or(EnvError::Missing(name))
}

/// `RECORD_TTL_HOURS`, default 48, bounded.
pub fn record_ttl_hours() -> Result<u32, EnvError> {
    match std::env::var(RECORD_TTL_HOURS) {
        Err(_) => Ok(DEFAULT_RECORD_TTL_HOURS),
        Ok(v) => parse_ttl_hours(&v).map_err(|message| EnvError::Invalid {
            name: RECORD_TTL_HOURS,
            message,
        }),
    }
}

/// Parses a record TTL in hours within its bounds.
pub fn parse_ttl_hours(v: &str) -> Result<u32, String> {
    let hours: u32 = v
        .trim()
        .parse()
        .map_err(|_| format!("'{v}' is not a whole number of hours"))?;
    if !(MIN_RECORD_TTL_HOURS..=MAX_RECORD_TTL_HOURS).contains(&hours) {
        return Err(format!(
            "{hours} is outside {MIN_RECORD_TTL_HOURS}..={MAX_RECORD_TTL_HOURS} hours"
        ));
    }
    Ok(hours)
}

/// How long one attempt of an AWS call may take before the SDK abandons it and retries
/// (standard retry mode: 3 attempts). In-region DynamoDB, SQS, SNS and Secrets Manager
/// calls take milliseconds; without it a stalled connection holds the invocation until
/// the function's own timeout (the SDK sets only a connect timeout by default).
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest a whole AWS call (its attempts and back-offs) may take.
pub const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7);

/// The SDK configuration of a Lambda: the default chain (environment, container
/// credentials) with [`ATTEMPT_TIMEOUT`] and [`OPERATION_TIMEOUT`].
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await
}
