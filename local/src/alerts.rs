//! The local alert sink: one structured log line per alert.

use async_trait::async_trait;
use domain::{Alert, AlertSink};

/// Logs alerts at `warn` (the local stand-in for the SNS topic).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAlerts;

#[async_trait]
impl AlertSink for LogAlerts {
    async fn alert(&self, alert: &Alert) {
        tracing::warn!(
            alert = alert.kind.as_str(),
            source = alert.source.as_str(),
            crm = alert.crm.map_or("-", |c| c.as_str()),
            clientId = alert.client_id.as_ref().map_or("-", |c| c.as_str()),
            count = alert.count,
            "{}",
            domain::redact::emails(&alert.message)
        );
    }
}
