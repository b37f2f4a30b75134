//! The DLQs on SQS (`--aws`: default credential chain, `AWS_ENDPOINT_URL` honoured,
//! queue URLs from `QUEUE_URL_{CRM}` / `DLQ_URL_{CRM}` or flags).

use super::{DlqBackend, Filter, Message, PEEK_VISIBILITY};
use anyhow::bail;
use domain::Crm;
use std::collections::BTreeMap;
use std::time::Duration;

/// Long-poll wait of SQS receives: a short poll samples a subset of the servers and may
/// answer "empty" while messages wait.
const SQS_WAIT_SECONDS: i32 = 2;

/// SQS queues of one or more CRMs.
pub struct SqsDlq {
    sqs: aws_sdk_sqs::Client,
    urls: BTreeMap<(Crm, bool), String>,
}

fn sqs_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: aws_sdk_sqs::error::SdkError<E, R>,
    url: &str,
) -> anyhow::Error {
    let text = aws_sdk_sqs::error::DisplayErrorContext(&e).to_string();
    if text.contains("NonExistentQueue") || text.contains("QueueDoesNotExist") {
        anyhow::anyhow!("queue not found: {url}")
    } else if text.contains("credential") || text.contains("Credentials") {
        anyhow::anyhow!(
            "no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    } else {
        anyhow::anyhow!("SQS call failed for {url}: {text}")
    }
}

impl SqsDlq {
    /// SQS, with the queue URLs of `crm` from flags or the environment.
    pub async fn open(
        crm: Crm,
        queue_url: Option<String>,
        dlq_url: Option<String>,
    ) -> anyhow::Result<SqsDlq> {
        let mut urls = BTreeMap::new();
        let dlq = match dlq_url.or_else(|| std::env::var(aws::env::dlq_url_var(crm)).ok()) {
            Some(u) => u,
            None => bail!(
                "no DLQ URL for {crm}: set {} or pass --dlq-url",
                aws::env::dlq_url_var(crm)
            ),
        };
        urls.insert((crm, true), dlq);
        if let Some(q) = queue_url.or_else(|| std::env::var(aws::env::queue_url_var(crm)).ok()) {
            urls.insert((crm, false), q);
        }
        // Only once the command is known to be complete: loading probes the environment.
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Ok(SqsDlq {
            sqs: aws_sdk_sqs::Client::new(&config),
            urls,
        })
    }

    fn url(&self, crm: Crm, dlq: bool) -> anyhow::Result<String> {
        self.urls.get(&(crm, dlq)).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "no {} URL for {crm}: set {} or pass {}",
                if dlq { "DLQ" } else { "delivery queue" },
                if dlq {
                    aws::env::dlq_url_var(crm)
                } else {
                    aws::env::queue_url_var(crm)
                },
                if dlq { "--dlq-url" } else { "--queue-url" }
            )
        })
    }
}

#[async_trait::async_trait]
impl DlqBackend for SqsDlq {
    fn check_delivery_queue(&self, crm: Crm) -> anyhow::Result<()> {
        self.url(crm, false).map(drop)
    }

    /// SQS may answer "empty" while messages wait.
    fn empty_receive_is_exact(&self) -> bool {
        false
    }

    async fn receive(
        &self,
        crm: Crm,
        max: usize,
        visibility: Duration,
    ) -> anyhow::Result<Vec<Message>> {
        let url = self.url(crm, true)?;
        let out = self
            .sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .visibility_timeout(i32::try_from(visibility.as_secs()).unwrap_or(30))
            .wait_time_seconds(SQS_WAIT_SECONDS)
            .message_attribute_names("All")
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
            )
            .send()
            .await
            .map_err(|e| sqs_error(e, &url))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| Message {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                attributes: m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| {
                                v.string_value().map(|s| (k.clone(), s.to_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                sent_at_ms: m
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp)
                    })
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0),
            })
            .collect())
    }

    /// SQS's approximate count (visible and in flight).
    async fn depth(&self, crm: Crm) -> anyhow::Result<u64> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let url = self.url(crm, true)?;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| sqs_error(e, &url))?;
        let get = |a: A| {
            out.attributes()
                .and_then(|m| m.get(&a))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(get(A::ApproximateNumberOfMessages) + get(A::ApproximateNumberOfMessagesNotVisible))
    }

    async fn release(&self, crm: Crm, receipt: &str) -> anyhow::Result<()> {
        let url = self.url(crm, true)?;
        self.sqs
            .change_message_visibility()
            .queue_url(&url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| sqs_error(e, &url))?;
        Ok(())
    }

    async fn delete(&self, crm: Crm, receipt: &str) -> anyhow::Result<()> {
        let url = self.url(crm, true)?;
        self.sqs
            .delete_message()
            .queue_url(&url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sqs_error(e, &url))?;
        Ok(())
    }

    async fn send_to_delivery(
        &self,
        crm: Crm,
        body: &str,
        attributes: &[(String, String)],
    ) -> anyhow::Result<()> {
        let url = self.url(crm, false)?;
        self.sqs
            .send_message()
            .queue_url(&url)
            .message_body(body)
            .set_message_attributes(Some(
                aws::sqs::string_attributes(attributes).map_err(|e| anyhow::anyhow!("{e}"))?,
            ))
            .send()
            .await
            .map_err(|e| sqs_error(e, &url))?;
        Ok(())
    }

    /// Up to `sample` messages, received with a short visibility, then released at once.
    async fn snapshot(&self, crm: Crm, sample: usize) -> anyhow::Result<Vec<Message>> {
        let mut all: Vec<Message> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while all.len() < sample {
            let batch = self.receive(crm, 10, PEEK_VISIBILITY).await?;
            let fresh: Vec<Message> = batch
                .into_iter()
                .filter(|m| seen.insert(m.message_id.clone()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            all.extend(fresh);
        }
        for m in &all {
            self.release(crm, &m.receipt).await?;
        }
        all.truncate(sample);
        Ok(all)
    }

    /// The filter can only be applied while receiving: the queue's depth.
    async fn redrive_total(&self, crm: Crm, _filter: &Filter) -> anyhow::Result<u64> {
        self.depth(crm).await
    }

    fn audit_store(&self) -> Option<&local::SqliteStore> {
        None
    }

    async fn close(self: Box<Self>) {}
}
