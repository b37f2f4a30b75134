//! Local alerts: a log line (always) and, when configured, a JSON POST to a webhook.

use async_trait::async_trait;
use domain::{Alert, AlertSink};
use local::LogAlerts;
use std::time::Duration;

/// Time allowed for a webhook call.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Logs every alert and posts it to `webhook` when set. A failing webhook is logged,
/// never fatal.
#[derive(Debug, Clone)]
pub struct LocalAlerts {
    webhook: Option<(reqwest::Client, String)>,
}

impl LocalAlerts {
    /// Alerts to the log, and to `webhook_url` if given.
    pub fn new(webhook_url: Option<String>) -> anyhow::Result<Self> {
        let webhook = match webhook_url {
            Some(url) => Some((
                reqwest::Client::builder()
                    .timeout(WEBHOOK_TIMEOUT)
                    .build()?,
                url,
            )),
            None => None,
        };
        Ok(LocalAlerts { webhook })
    }
}

#[async_trait]
impl AlertSink for LocalAlerts {
    async fn alert(&self, alert: &Alert) {
        LogAlerts.alert(alert).await;
        if let Some((http, url)) = &self.webhook {
            let body = serde_json::json!({
                "kind": alert.kind,
                "source": alert.source,
                "crm": alert.crm,
                "clientId": alert.client_id,
                "count": alert.count,
                "message": domain::redact::emails(&alert.message),
            });
            match http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(
                    status = r.status().as_u16(),
                    "the alert webhook refused the alert"
                ),
                Err(e) => tracing::warn!(error = %e, "the alert webhook could not be reached"),
            }
        }
    }
}
