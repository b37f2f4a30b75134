//! The DLQs of the local store.

use super::{DlqBackend, Filter, Message, UNBOUNDED};
use anyhow::bail;
use domain::{Crm, QueueKind, SystemClock};
use local::{LocalQueues, SqliteStore, queue_name};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The local store's queues.
pub struct LocalDlq {
    pub(super) store: SqliteStore,
    pub(super) queues: LocalQueues,
}

impl LocalDlq {
    /// The local store in `data`.
    pub fn open(data: &Path) -> anyhow::Result<LocalDlq> {
        let store = crate::open_tool_store(data)?;
        let queues = LocalQueues::new(
            store.clone(),
            Arc::new(SystemClock),
            local::queues::DEFAULT_MAX_RECEIVE_COUNT,
        );
        Ok(LocalDlq { store, queues })
    }
}

fn name(crm: Crm, dlq: bool) -> String {
    queue_name(
        crm,
        if dlq {
            QueueKind::DeadLetter
        } else {
            QueueKind::Delivery
        },
    )
}

#[async_trait::async_trait]
impl DlqBackend for LocalDlq {
    fn check_delivery_queue(&self, _crm: Crm) -> anyhow::Result<()> {
        Ok(())
    }

    fn empty_receive_is_exact(&self) -> bool {
        true
    }

    async fn receive(
        &self,
        crm: Crm,
        max: usize,
        visibility: Duration,
    ) -> anyhow::Result<Vec<Message>> {
        Ok(self
            .queues
            .receive(&name(crm, true), None, max, visibility)
            .await?
            .into_iter()
            .map(|m| Message {
                message_id: m.message_id,
                receipt: m.receipt_handle,
                body: m.body,
                attributes: m.attributes,
                sent_at_ms: m.sent_at_ms,
            })
            .collect())
    }

    async fn depth(&self, crm: Crm) -> anyhow::Result<u64> {
        Ok(self.queues.peek(&name(crm, true), UNBOUNDED).await?.len() as u64)
    }

    async fn release(&self, crm: Crm, receipt: &str) -> anyhow::Result<()> {
        self.queues
            .change_visibility(&name(crm, true), receipt, Duration::ZERO)
            .await?;
        Ok(())
    }

    async fn delete(&self, crm: Crm, receipt: &str) -> anyhow::Result<()> {
        if !self.queues.delete(&name(crm, true), receipt).await? {
            bail!(
                "the receipt is stale (the message was received again by someone else); it stays in the DLQ"
            );
        }
        Ok(())
    }

    async fn send_to_delivery(
        &self,
        crm: Crm,
        body: &str,
        attributes: &[(String, String)],
    ) -> anyhow::Result<()> {
        self.queues
            .send(
                &name(crm, false),
                vec![(body.to_owned(), attributes.to_vec())],
                Duration::ZERO,
            )
            .await?;
        Ok(())
    }

    /// Every message, read without receiving it.
    async fn snapshot(&self, crm: Crm, _sample: usize) -> anyhow::Result<Vec<Message>> {
        Ok(self
            .queues
            .peek(&name(crm, true), UNBOUNDED)
            .await?
            .into_iter()
            .map(|m| Message {
                message_id: m.message_id,
                receipt: String::new(),
                body: m.body,
                attributes: m.attributes,
                sent_at_ms: m.sent_at_ms,
            })
            .collect())
    }

    /// Exact: the matching messages are counted.
    async fn redrive_total(&self, crm: Crm, filter: &Filter) -> anyhow::Result<u64> {
        Ok(self
            .snapshot(crm, UNBOUNDED)
            .await?
            .iter()
            .filter(|m| filter.matches(m))
            .count() as u64)
    }

    fn audit_store(&self) -> Option<&SqliteStore> {
        Some(&self.store)
    }

    async fn close(self: Box<Self>) {
        self.store.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_receipt_does_not_count_as_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path(), local::StoreOptions::default()).expect("open");
        let queues = LocalQueues::new(store.clone(), Arc::new(SystemClock), 1000);
        let dlq = local::queue_name(Crm::RESPONSYS, domain::QueueKind::DeadLetter);
        queues
            .send(&dlq, vec![("{}".to_owned(), Vec::new())], Duration::ZERO)
            .await
            .expect("send");
        let backend = LocalDlq {
            store: store.clone(),
            queues: queues.clone(),
        };
        let first = backend
            .receive(Crm::RESPONSYS, 1, Duration::ZERO)
            .await
            .expect("receive");
        // Someone else receives it meanwhile: the first receipt is stale.
        let second = backend
            .receive(Crm::RESPONSYS, 1, Duration::from_secs(60))
            .await
            .expect("receive");
        assert_eq!(first.len(), 1);
        assert_eq!(second.len(), 1);
        let err = backend
            .delete(Crm::RESPONSYS, &first[0].receipt)
            .await
            .expect_err("stale");
        assert!(err.to_string().contains("stale"), "{err}");
        assert_eq!(queues.peek(&dlq, 10).await.expect("peek").len(), 1);
        backend
            .delete(Crm::RESPONSYS, &second[0].receipt)
            .await
            .expect("the current receipt deletes");
        assert!(queues.peek(&dlq, 10).await.expect("peek").is_empty());
        store.shutdown().await;
    }
}
