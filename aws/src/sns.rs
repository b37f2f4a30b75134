//! SNS adapter: operator alerts.

use async_trait::async_trait;
use aws_sdk_sns::Client;
use aws_sdk_sns::error::DisplayErrorContext;
use domain::{Alert, AlertSink};

/// SNS subjects are limited to 100 characters.
const MAX_SUBJECT_CHARS: usize = 100;

/// Publishes alerts to a topic.
#[derive(Debug, Clone)]
pub struct SnsAlerts {
    client: Client,
    topic_arn: String,
}

impl SnsAlerts {
    /// Alerts to `topic_arn`.
    pub fn new(client: Client, topic_arn: impl Into<String>) -> Self {
        SnsAlerts {
            client,
            topic_arn: topic_arn.into(),
        }
    }
}

/// The subject line of an alert.
pub fn subject(alert: &Alert) -> String {
    let mut s = format!("[connect] {} in {}", alert.kind, alert.source);
    if let Some(crm) = alert.crm {
        s.push_str(&format!(" ({crm}"));
        if let Some(client) = &alert.client_id {
            s.push_str(&format!(", {client}"));
        }
        s.push(')');
    }
    s.chars().take(MAX_SUBJECT_CHARS).collect()
}

/// The JSON body of an alert.
pub fn body(alert: &Alert) -> String {
    serde_json::json!({
        "kind": alert.kind,
        "source": alert.source,
        "crm": alert.crm,
        "clientId": alert.client_id,
        "count": alert.count,
        "message": domain::redact::emails(&alert.message),
    })
    .to_string()
}

#[async_trait]
impl AlertSink for SnsAlerts {
    async fn alert(&self, alert: &Alert) {
        let result = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(subject(alert))
            .message(body(alert))
            .send()
            .await;
        match result {
            Ok(_) => tracing::warn!(
                kind = alert.kind.as_str(),
                count = alert.count,
                "alert published"
            ),
            Err(e) => tracing::error!(
                kind = alert.kind.as_str(),
                error = %DisplayErrorContext(&e),
                "alert could not be published"
            ),
        }
    }
}
