//! Delivery workers: receive from a CRM's local queue (with the SQS semantics of
//! `local::queues`), run the deliver handler, delete what is done. They wake as soon as
//! a message is sent, or when the next hidden message becomes visible.

use super::sleep_or_stop;
use crate::metrics::Metrics;
use deliver::{DeliverHandler, InboundMessage};
use domain::{AlertSink, ClientDirectory, Clock, Crm, QueueKind, SecretStore, TokenStore};
use local::{LocalQueues, queue_name};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Settings of the workers of one CRM.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Messages received at once (≤ `local::queues::MAX_RECEIVE_BATCH`).
    pub batch_size: usize,
    /// Visibility timeout of a receive.
    pub visibility_timeout: Duration,
    /// After a receive of fewer than `batch_size` messages, how long to let more
    /// accumulate before the next receive (zero: receive again at once).
    pub batch_window: Duration,
    /// Longest sleep with nothing to do: sends in this process wake the workers at once;
    /// sends by another process (`connect dlq redrive`) are seen within this time.
    pub idle_poll: Duration,
}

/// Messages received at once by default: a destination batch is cut from them
/// (Responsys ≤ 200, SFMC ≤ 50, webhook ≤ its batch size), so a larger receive means
/// fewer calls and fewer commits per message. (On AWS the SQS event source batches.)
pub const DEFAULT_BATCH_SIZE: usize = 50;

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            batch_size: DEFAULT_BATCH_SIZE,
            visibility_timeout: Duration::from_secs(
                crate::config::DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
            ),
            batch_window: Duration::from_millis(crate::config::DEFAULT_BATCH_WINDOW_MS),
            idle_poll: Duration::from_secs(1),
        }
    }
}

type Handler<D, T, S, A, C> = DeliverHandler<D, T, S, LocalQueues, A, C>;

/// Runs one worker until `stop` turns true (the batch in hand is finished first).
pub async fn run<D, T, S, A, C>(
    crm: Crm,
    handler: Arc<Handler<D, T, S, A, C>>,
    queues: LocalQueues,
    metrics: Arc<Metrics>,
    settings: WorkerSettings,
    mut stop: watch::Receiver<bool>,
) where
    D: ClientDirectory,
    T: TokenStore,
    S: SecretStore,
    A: AlertSink,
    C: Clock + Clone,
{
    let (queue, dlq) = (
        queue_name(crm, QueueKind::Delivery),
        queue_name(crm, QueueKind::DeadLetter),
    );
    let mut sends = queues.watch_sends();
    // Whether the last receive was full: then the next one runs at once; otherwise the
    // worker first lets the batch window fill (under load, one call and one commit per
    // batch instead of per handful of messages).
    let mut last_full = false;
    while !*stop.borrow() {
        if !last_full
            && !settings.batch_window.is_zero()
            && sleep_or_stop(&mut stop, settings.batch_window).await
        {
            break;
        }
        sends.borrow_and_update();
        let received = match queues
            .receive(
                &queue,
                Some(&dlq),
                settings.batch_size,
                settings.visibility_timeout,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(crm = crm.as_str(), error = %e, "receive failed");
                sleep_or_stop(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        last_full = received.len() >= settings.batch_size;
        if received.is_empty() {
            let now = domain::Clock::now_ms(&domain::SystemClock);
            let wait = match queues.next_visible_at(&queue).await {
                Ok(Some(at)) if at > now => {
                    Duration::from_millis(u64::try_from(at - now).unwrap_or(0))
                        .min(settings.idle_poll)
                }
                Ok(Some(_)) => Duration::from_millis(5),
                _ => settings.idle_poll,
            };
            tokio::select! {
                _ = sends.changed() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // Moved, not copied: the handler reads the messages, the acknowledgement needs
        // only their receipts.
        let batch: Vec<InboundMessage> = received
            .into_iter()
            .map(|m| InboundMessage {
                message_id: m.message_id,
                receipt_handle: m.receipt_handle,
                body: m.body,
                attributes: m.attributes,
                receive_count: m.receive_count,
                sent_at_ms: Some(m.sent_at_ms),
            })
            .collect();
        let mut outcome = handler.handle(&batch).await;
        metrics.observe_delivery(crm, &outcome);
        let entries = std::mem::take(&mut outcome.log)
            .into_iter()
            .map(|e| (e.record_id, e.client_id, e.outcome.to_owned(), e.detail))
            .collect();
        let now = domain::Clock::now_ms(&domain::SystemClock);
        // The delivery log and the deletes of the handled messages: one transaction.
        let handled: Vec<String> = batch
            .into_iter()
            .filter(|m| !outcome.redeliver.contains(&m.message_id))
            .map(|m| m.receipt_handle)
            .collect();
        match queues.acknowledge(&queue, handled, crm, now, entries).await {
            Ok(deleted) => {
                let stale = deleted.iter().filter(|d| !**d).count();
                if stale > 0 {
                    tracing::warn!(
                        crm = crm.as_str(),
                        stale,
                        "handled messages were received again before their delete; they may be delivered twice"
                    );
                }
            }
            Err(e) => {
                tracing::error!(crm = crm.as_str(), error = %e, "acknowledge failed; the batch will be delivered again")
            }
        }
    }
}
