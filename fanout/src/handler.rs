//! The transport-free fanout handler.

use backon::{BackoffBuilder, ExponentialBuilder};
use domain::delivery::{self, MessageOfRecord, attr, rfc3339};
use domain::{
    Alert, AlertSink, Attribute, ChangeKind, ChangeRecord, Clock, Crm, DeliveryMessage, Image,
    OutgoingMessage, QueueKind, QueueSender,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// SQS limit on the entries of one SendMessageBatch.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// SQS limit on one message (body + attributes) and on one batch's total payload; kept at
/// the long-standing 256 KiB so any queue accepts it.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Settings of the handler.
#[derive(Debug, Clone)]
pub struct FanoutSettings {
    /// Attempts per batch entry (the first send included) before it counts as failed.
    pub max_send_attempts: usize,
    /// First retry delay (jittered, doubling).
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Largest message accepted by the queue, attributes included.
    pub max_message_bytes: usize,
    /// Largest total payload of one batch call.
    pub max_batch_bytes: usize,
    /// Most entries of one batch call ([`MAX_BATCH_ENTRIES`] for SQS; the local queues
    /// take more, so that one transaction carries a whole poll).
    pub max_batch_entries: usize,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        FanoutSettings {
            max_send_attempts: 4,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_message_bytes: MAX_PAYLOAD_BYTES,
            max_batch_bytes: MAX_PAYLOAD_BYTES,
            max_batch_entries: MAX_BATCH_ENTRIES,
        }
    }
}

/// Why a change was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// A MODIFY.
    Modify,
    /// A REMOVE made by a user.
    Remove,
    /// A REMOVE made by DynamoDB's TTL process.
    TtlExpiry,
    /// An idempotency marker item.
    Marker,
    /// An INSERT without a new image.
    NoImage,
    /// An unknown event name.
    UnknownEvent,
    /// An image that is not a record and names no CRM (alerted).
    Unroutable,
}

impl Skip {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Modify => "modify",
            Skip::Remove => "remove",
            Skip::TtlExpiry => "ttl_expiry",
            Skip::Marker => "marker",
            Skip::NoImage => "no_image",
            Skip::UnknownEvent => "unknown_event",
            Skip::Unroutable => "unroutable",
        }
    }
}

/// What a batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanoutOutcome {
    /// Sequence number of the first record not handed on, if any: every record from it
    /// on must be given again (earlier ones are done).
    pub first_failure: Option<String>,
    /// Records accepted by their CRM's delivery queue.
    pub routed: BTreeMap<Crm, u64>,
    /// Records sent to their CRM's DLQ on purpose (too large, malformed, rejected by the
    /// queue).
    pub dead_lettered: BTreeMap<Crm, u64>,
    /// Records not handed on.
    pub failed: BTreeMap<Crm, u64>,
    /// Changes skipped, by reason.
    pub skipped: BTreeMap<Skip, u64>,
}

/// A message to hand on, with the position of its change in the batch.
struct Pending {
    position: usize,
    crm: Crm,
    queue: QueueKind,
    message: OutgoingMessage,
}

/// The fanout handler.
pub struct FanoutHandler<Q, A, C> {
    queues: Q,
    alerts: A,
    clock: C,
    settings: FanoutSettings,
    source: String,
}

impl<Q, A, C> std::fmt::Debug for FanoutHandler<Q, A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutHandler")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Size of a message as the queue counts it: body, attribute names, types and values.
fn message_size(m: &OutgoingMessage) -> usize {
    m.body.len()
        + m.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len() + "String".len())
            .sum::<usize>()
}

/// A batch entry id from a sequence number: `[A-Za-z0-9_-]`, at most 80 characters.
fn entry_id(sequence_number: &str, position: usize) -> String {
    let clean: String = sequence_number
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(72)
        .collect();
    if clean.is_empty() {
        format!("p{position}")
    } else {
        clean
    }
}

impl<Q: QueueSender, A: AlertSink, C: Clock> FanoutHandler<Q, A, C> {
    /// A handler; `source` names it in alerts (`fanout`).
    pub fn new(queues: Q, alerts: A, clock: C, settings: FanoutSettings, source: &str) -> Self {
        FanoutHandler {
            queues,
            alerts,
            clock,
            settings,
            source: source.to_owned(),
        }
    }

    /// Routes an ordered batch. Never acknowledges a record before its queue accepted it.
    pub async fn handle(&self, batch: &[ChangeRecord]) -> FanoutOutcome {
        let mut outcome = FanoutOutcome::default();
        let mut pending: Vec<Pending> = Vec::new();
        let mut too_large: HashMap<(Crm, Option<String>), u64> = HashMap::new();
        for (position, change) in batch.iter().enumerate() {
            let id = entry_id(&change.sequence_number, position);
            let skip = match (change.kind, &change.image) {
                (None, _) => Some(Skip::UnknownEvent),
                (Some(ChangeKind::Modify), _) => Some(Skip::Modify),
                (Some(ChangeKind::Remove), _) if change.ttl_expiry => Some(Skip::TtlExpiry),
                (Some(ChangeKind::Remove), _) => Some(Skip::Remove),
                (Some(ChangeKind::Insert), Image::Absent) => Some(Skip::NoImage),
                (Some(ChangeKind::Insert), Image::Marker) => Some(Skip::Marker),
                (Some(ChangeKind::Insert), Image::Record(record)) => {
                    // Written from the shared record itself, not from a copy.
                    let full = self.outgoing(
                        id.clone(),
                        &MessageOfRecord::from(&**record),
                        delivery::attributes(&record.client_id, record.crm, record.event_type),
                        None,
                    );
                    if message_size(&full) <= self.settings.max_message_bytes {
                        pending.push(Pending {
                            position,
                            crm: record.crm,
                            queue: QueueKind::Delivery,
                            message: full,
                        });
                    } else {
                        *too_large
                            .entry((record.crm, Some(record.client_id.to_string())))
                            .or_default() += 1;
                        let cut = DeliveryMessage::from_record((**record).clone()).truncated();
                        let cut = self.outgoing(
                            id,
                            &cut,
                            cut.attributes(),
                            Some(("too_large", "message_too_large")),
                        );
                        pending.push(Pending {
                            position,
                            crm: record.crm,
                            queue: QueueKind::DeadLetter,
                            message: cut,
                        });
                    }
                    None
                }
                (
                    Some(ChangeKind::Insert),
                    Image::Malformed {
                        crm,
                        record_id,
                        error,
                    },
                ) => match crm {
                    Some(crm) => {
                        let body = serde_json::json!({
                            "v": domain::delivery::MESSAGE_VERSION,
                            "recordId": record_id,
                            "crm": crm,
                            "malformed": error,
                        })
                        .to_string();
                        pending.push(Pending {
                            position,
                            crm: *crm,
                            queue: QueueKind::DeadLetter,
                            message: OutgoingMessage {
                                id,
                                body,
                                attributes: self.with_failure(
                                    vec![(attr::CRM.into(), crm.as_str().into())],
                                    "malformed_record",
                                    "invalid_image",
                                ),
                            },
                        });
                        None
                    }
                    None => {
                        self.alert(
                            "unroutable_record",
                            None,
                            None,
                            1,
                            format!(
                                "record {} has no readable CRM and was not routed: {error}",
                                record_id.as_deref().unwrap_or("(no id)")
                            ),
                        )
                        .await;
                        Some(Skip::Unroutable)
                    }
                },
            };
            if let Some(skip) = skip {
                *outcome.skipped.entry(skip).or_default() += 1;
            }
        }
        for ((crm, client), count) in too_large {
            self.alert(
                "too_large",
                Some(crm),
                client,
                count,
                format!(
                    "{count} record(s) exceed the {} byte queue message limit; dead-lettered truncated (failureReason=too_large), the full records stay in the navigation table until their TTL",
                    self.settings.max_message_bytes
                ),
            )
            .await;
        }

        // One task per (CRM, queue), run concurrently.
        let mut groups: BTreeMap<(Crm, u8), Vec<Pending>> = BTreeMap::new();
        for p in pending {
            let key = (p.crm, u8::from(p.queue == QueueKind::DeadLetter));
            groups.entry(key).or_default().push(p);
        }
        let sends = groups.into_values().map(|group| self.send_group(group));
        let results = futures_util::future::join_all(sends).await;

        let mut first_failed: Option<usize> = None;
        for result in results {
            for (position, crm, queue, ok) in result {
                if ok {
                    let map = match queue {
                        QueueKind::Delivery => &mut outcome.routed,
                        QueueKind::DeadLetter => &mut outcome.dead_lettered,
                    };
                    *map.entry(crm).or_default() += 1;
                } else {
                    *outcome.failed.entry(crm).or_default() += 1;
                    first_failed = Some(first_failed.map_or(position, |f| f.min(position)));
                }
            }
        }
        outcome.first_failure = first_failed
            .and_then(|p| batch.get(p))
            .map(|c| c.sequence_number.clone());
        if let Some(seq) = &outcome.first_failure {
            tracing::warn!(
                firstFailure = seq.as_str(),
                failed = outcome.failed.values().sum::<u64>(),
                "records not handed on; the feed will give them again"
            );
        }
        outcome
    }

    /// The queue message of `body` with `attributes`; with `failure = (reason, status)`
    /// it carries the dead-letter attributes too.
    fn outgoing(
        &self,
        id: String,
        body: &impl serde::Serialize,
        attributes: Vec<Attribute>,
        failure: Option<(&str, &str)>,
    ) -> OutgoingMessage {
        let attributes = match failure {
            Some((reason, status)) => self.with_failure(attributes, reason, status),
            None => attributes,
        };
        OutgoingMessage {
            id,
            body: serde_json::to_string(body).unwrap_or_default(),
            attributes,
        }
    }

    /// `attributes` with the dead-letter attributes of DESIGN.md set (replacing any).
    fn with_failure(
        &self,
        mut attributes: Vec<Attribute>,
        reason: &str,
        status: &str,
    ) -> Vec<Attribute> {
        let failure_keys = [
            attr::FAILURE_REASON,
            attr::FAILURE_STATUS,
            attr::FAILED_AT,
            attr::ATTEMPTS,
        ];
        attributes.retain(|(k, _)| !failure_keys.contains(&k.as_ref()));
        attributes.extend([
            (attr::FAILURE_REASON.into(), reason.to_owned().into()),
            (attr::FAILURE_STATUS.into(), status.to_owned().into()),
            (attr::FAILED_AT.into(), rfc3339(self.clock.now_ms()).into()),
            (attr::ATTEMPTS.into(), "0".into()),
        ]);
        attributes
    }

    async fn alert(
        &self,
        kind: &str,
        crm: Option<Crm>,
        client: Option<String>,
        count: u64,
        message: String,
    ) {
        self.alerts
            .alert(&Alert {
                kind: kind.to_owned(),
                source: self.source.clone(),
                crm,
                client_id: client.and_then(|c| domain::ClientId::parse(&c).ok()),
                count,
                message,
            })
            .await;
    }

    /// Sends one (CRM, queue) group in batches of ≤ `max_batch_entries` entries (10 for
    /// SQS) and ≤ the batch payload limit. Returns, per message, whether its queue
    /// accepted it.
    async fn send_group(&self, group: Vec<Pending>) -> Vec<(usize, Crm, QueueKind, bool)> {
        let max_entries = self.settings.max_batch_entries.max(1);
        let mut results = Vec::with_capacity(group.len());
        let Some((crm, queue)) = group.first().map(|p| (p.crm, p.queue)) else {
            return results;
        };
        // Each batch as its entries' positions and their messages side by side, so that
        // the messages go to the queue as they are, without a copy.
        let mut batches: Vec<(Vec<usize>, Vec<OutgoingMessage>)> = Vec::new();
        let mut batch = (Vec::new(), Vec::new());
        let mut bytes: usize = 0;
        for p in group {
            let size = message_size(&p.message);
            if !batch.1.is_empty()
                && (batch.1.len() >= max_entries
                    || bytes.saturating_add(size) > self.settings.max_batch_bytes)
            {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            batch.0.push(p.position);
            batch.1.push(p.message);
        }
        if !batch.1.is_empty() {
            batches.push(batch);
        }
        for (positions, messages) in batches {
            let rejected = self.send_with_retries(crm, queue, &messages).await;
            let mut to_dead_letter = (Vec::new(), Vec::new());
            for (position, mut message) in positions.into_iter().zip(messages) {
                match rejected.get(&message.id) {
                    None => results.push((position, crm, queue, true)),
                    // The queue refuses this entry itself: dead-letter it (from the
                    // delivery queue only), so one bad entry cannot block the stream.
                    Some(Some(code)) if queue == QueueKind::Delivery => {
                        message.attributes =
                            self.with_failure(message.attributes, "queue_rejected", code);
                        to_dead_letter.0.push(position);
                        to_dead_letter.1.push(message);
                    }
                    Some(_) => results.push((position, crm, queue, false)),
                }
            }
            let (positions, messages) = to_dead_letter;
            if !messages.is_empty() {
                let rejected = self
                    .send_with_retries(crm, QueueKind::DeadLetter, &messages)
                    .await;
                for (position, message) in positions.into_iter().zip(&messages) {
                    let ok = !rejected.contains_key(&message.id);
                    results.push((position, crm, QueueKind::DeadLetter, ok));
                }
            }
        }
        results
    }

    /// Sends a batch, retrying the entries that failed for a transient reason with
    /// jittered exponential backoff. Returns the entries not accepted in the end:
    /// `Some(code)` when the queue refused the entry itself (retrying cannot help),
    /// `None` when it kept failing for a transient reason.
    async fn send_with_retries(
        &self,
        crm: Crm,
        queue: QueueKind,
        messages: &[OutgoingMessage],
    ) -> HashMap<String, Option<String>> {
        let mut rejected: HashMap<String, Option<String>> = HashMap::new();
        // The first attempt sends `messages` as they are; only entries to retry are copied.
        let mut retrying: Option<Vec<OutgoingMessage>> = None;
        let mut delays = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.settings.min_backoff)
            .with_max_delay(self.settings.max_backoff)
            .with_max_times(self.settings.max_send_attempts.saturating_sub(1))
            .build();
        loop {
            let remaining = retrying.as_deref().unwrap_or(messages);
            let transient: Vec<OutgoingMessage> = match self
                .queues
                .send_batch(crm, queue, remaining)
                .await
            {
                Ok(failures) => {
                    let mut retry = HashSet::new();
                    for f in failures {
                        if f.sender_fault {
                            rejected.insert(f.id, Some(f.code));
                        } else {
                            tracing::warn!(
                                crm = crm.as_str(),
                                code = f.code.as_str(),
                                "queue entry failed; retrying"
                            );
                            retry.insert(f.id);
                        }
                    }
                    remaining
                        .iter()
                        .filter(|m| retry.contains(&m.id))
                        .cloned()
                        .collect()
                }
                Err(e) => {
                    tracing::warn!(crm = crm.as_str(), error = %e, "queue batch failed; retrying");
                    remaining.to_vec()
                }
            };
            if transient.is_empty() {
                return rejected;
            }
            match delays.next() {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    retrying = Some(transient);
                }
                None => {
                    for m in transient {
                        rejected.insert(m.id, None);
                    }
                    return rejected;
                }
            }
        }
    }
}

impl FanoutOutcome {
    /// Total records skipped.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}
