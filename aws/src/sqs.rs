//! SQS adapter: sends delivery and dead-letter messages.

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use domain::{Crm, OutgoingMessage, QueueError, QueueKind, QueueSender, SendFailure};
use std::collections::HashMap;

/// The queues of the CRMs, by URL.
#[derive(Debug, Clone)]
pub struct SqsQueues {
    client: Client,
    urls: HashMap<(Crm, QueueKind), String>,
}

impl SqsQueues {
    /// No queues yet; add them with [`SqsQueues::with_queue`].
    pub fn new(client: Client) -> Self {
        SqsQueues {
            client,
            urls: HashMap::new(),
        }
    }

    /// Adds one queue.
    #[must_use]
    pub fn with_queue(mut self, crm: Crm, kind: QueueKind, url: impl Into<String>) -> Self {
        self.urls.insert((crm, kind), url.into());
        self
    }

    /// The URL of a queue, if configured.
    pub fn url(&self, crm: Crm, kind: QueueKind) -> Option<&str> {
        self.urls.get(&(crm, kind)).map(String::as_str)
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// String message attributes in the SDK's shape.
pub fn string_attributes<K: AsRef<str>, V: AsRef<str>>(
    attributes: &[(K, V)],
) -> Result<HashMap<String, MessageAttributeValue>, QueueError> {
    attributes
        .iter()
        .map(|(k, v)| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v.as_ref())
                .build()
                .map(|value| (k.as_ref().to_owned(), value))
                .map_err(|e| QueueError::Unavailable(e.to_string()))
        })
        .collect()
}

/// Longest visibility timeout SQS accepts, in seconds (12 h).
pub const MAX_VISIBILITY_SECONDS: u64 = 43_200;

#[async_trait]
impl domain::QueueControl for SqsQueues {
    async fn change_visibility(
        &self,
        crm: Crm,
        receipt_handle: &str,
        timeout: std::time::Duration,
    ) -> Result<(), QueueError> {
        let url = self
            .url(crm, QueueKind::Delivery)
            .ok_or(QueueError::NotConfigured(crm, QueueKind::Delivery))?;
        let seconds = timeout.as_secs_f64().ceil() as u64;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(
                i32::try_from(seconds.min(MAX_VISIBILITY_SECONDS)).unwrap_or(i32::MAX),
            )
            .send()
            .await
            .map(drop)
            .map_err(|e| QueueError::Unavailable(DisplayErrorContext(&e).to_string()))
    }
}

#[async_trait]
impl QueueSender for SqsQueues {
    async fn send_batch(
        &self,
        crm: Crm,
        queue: QueueKind,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<SendFailure>, QueueError> {
        let url = self
            .url(crm, queue)
            .ok_or(QueueError::NotConfigured(crm, queue))?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let entries = messages
            .iter()
            .map(|m| {
                SendMessageBatchRequestEntry::builder()
                    .id(&m.id)
                    .message_body(&m.body)
                    .set_message_attributes(Some(string_attributes(&m.attributes)?))
                    .build()
                    .map_err(|e| QueueError::Unavailable(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| QueueError::Unavailable(DisplayErrorContext(&e).to_string()))?;
        Ok(out
            .failed()
            .iter()
            .map(|f| SendFailure {
                id: f.id().to_owned(),
                code: f.code().to_owned(),
                sender_fault: f.sender_fault(),
            })
            .collect())
    }
}
