//! Local queues with the semantics of SQS standard queues: batch send, receive up to N
//! with a visibility timeout, delete and change visibility by receipt handle,
//! `ApproximateReceiveCount`, and a move to the dead-letter queue once a message was
//! received `max_receive_count` times without being deleted. Stored in the same SQLite
//! file as everything else.
//!
//! The server's queue writes commit with `synchronous = NORMAL` (`Durability::Relaxed`
//! in the store): a power loss can only drop the newest of them, together with every
//! commit after, and what they recorded is redone from what stays durable (a lost send
//! with its fanout checkpoint, a lost receive or delete by the message becoming
//! visible again).

use crate::store::SqliteStore;
use async_trait::async_trait;
use domain::{
    Clock, Crm, OutgoingMessage, QueueError, QueueKind, QueueSender, SendFailure, StoreError,
};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Receives before a message moves to its DLQ (SQS `maxReceiveCount`; 1000 is SQS's
/// maximum). The deliver handler dead-letters by the retry window, with a reason; this
/// bound only stops a message that crashes its worker again and again.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 1000;
/// Deletes the message a handle names while the handle is current (see
/// `receipt_handle`): `?1` its position, `?2` the queue, `?3` the receive count, `?4`
/// the message id.
const DELETE_RECEIVED: &str = "DELETE FROM queue_messages
     WHERE seq = ?1 AND queue = ?2 AND receive_count = ?3 AND message_id = ?4";

/// SQS limit on messages per receive.
pub const MAX_RECEIVE_BATCH: usize = 100;

/// The name of a queue: `responsys`, `responsys-dlq`, …
pub fn queue_name(crm: Crm, kind: QueueKind) -> String {
    match kind {
        QueueKind::Delivery => crm.as_str().to_owned(),
        QueueKind::DeadLetter => format!("{crm}-dlq"),
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    /// Stable id of the message.
    pub message_id: String,
    /// Handle of this receive (delete / change visibility with it).
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// String message attributes.
    pub attributes: Vec<(String, String)>,
    /// Times received, this one included (`ApproximateReceiveCount`).
    pub receive_count: u32,
    /// When it was sent (epoch ms).
    pub sent_at_ms: i64,
}

/// Depth of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Messages that can be received now.
    pub visible: u64,
    /// Messages received and not yet deleted (or delayed).
    pub in_flight: u64,
    /// Send time of the oldest message (epoch ms).
    pub oldest_sent_at_ms: Option<i64>,
}

/// A message as its row is inserted. Its id and attribute JSON are made by the caller,
/// not on the (single) writer thread.
struct QueueRow {
    id: String,
    body: String,
    attributes: String,
}

impl QueueRow {
    fn new(
        body: String,
        attributes: &[(impl serde::Serialize, impl serde::Serialize)],
    ) -> QueueRow {
        QueueRow {
            id: uuid::Uuid::new_v4().to_string(),
            body,
            attributes: serde_json::to_string(attributes).unwrap_or_else(|_| "[]".into()),
        }
    }
}

/// The local queues of every CRM.
#[derive(Clone)]
pub struct LocalQueues {
    store: SqliteStore,
    clock: Arc<dyn Clock>,
    max_receive_count: u32,
    sent: watch::Sender<u64>,
}

impl std::fmt::Debug for LocalQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQueues")
            .field("max_receive_count", &self.max_receive_count)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn to_queue_error(e: StoreError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

impl LocalQueues {
    /// The store the queues live in.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// Queues on `store`; a message moves to its DLQ on the receive after its
    /// `max_receive_count`-th.
    pub fn new(store: SqliteStore, clock: Arc<dyn Clock>, max_receive_count: u32) -> Self {
        LocalQueues {
            store,
            clock,
            max_receive_count: max_receive_count.max(1),
            sent: watch::channel(0).0,
        }
    }

    /// Changes whenever messages are sent (delivery workers wake on it).
    pub fn watch_sends(&self) -> watch::Receiver<u64> {
        self.sent.subscribe()
    }

    /// Sends messages to a queue by name (all or none). Returns their message ids.
    pub async fn send(
        &self,
        queue: &str,
        messages: Vec<(String, Vec<(String, String)>)>,
        delay: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<QueueRow> = messages
            .into_iter()
            .map(|(body, attributes)| QueueRow::new(body, &attributes))
            .collect();
        let ids = rows.iter().map(|r| r.id.clone()).collect();
        self.insert(queue, rows, delay).await?;
        Ok(ids)
    }

    /// Inserts `rows` on `queue`, visible after `delay`, in one transaction.
    async fn insert(
        &self,
        queue: &str,
        rows: Vec<QueueRow>,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let visible_at = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let queue = queue.to_owned();
        self.store
            .write_relaxed(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO queue_messages
                           (queue, message_id, body, attributes, sent_at, visible_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?;
                    for row in &rows {
                        insert.execute(params![
                            queue,
                            row.id,
                            row.body,
                            row.attributes,
                            now,
                            visible_at
                        ])?;
                    }
                }
                tx.commit()
            })
            .await?;
        self.sent.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Receives up to `max` visible messages (at most [`MAX_RECEIVE_BATCH`]) and hides them
    /// for `visibility`. A message already received `max_receive_count` times moves to
    /// `dead_letter` instead (when given; the move counts as a receive) and is not
    /// returned. Each message's handle is `{seq}-{receive_count}-{message_id}` (see
    /// `receipt_handle`).
    pub async fn receive(
        &self,
        queue: &str,
        dead_letter: Option<&str>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let now = self.clock.now_ms();
        let hidden_until = now + i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX);
        let (queue, dead_letter) = (queue.to_owned(), dead_letter.map(str::to_owned));
        let max = max.clamp(1, MAX_RECEIVE_BATCH);
        let max_receive_count = self.max_receive_count;
        let (received, moved) = self
            .store
            .write_relaxed(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut out = Vec::new();
                let mut moved = false;
                {
                    let mut select = tx.prepare_cached(
                        "SELECT seq, message_id, body, attributes, receive_count, sent_at
                         FROM queue_messages WHERE queue = ?1 AND visible_at <= ?2
                         ORDER BY visible_at, seq LIMIT ?3",
                    )?;
                    // The rows to receive and those to move to the dead-letter queue, in
                    // order; a row's texts are read only if it is received (a backlog
                    // puts `max` more rows in the result than are taken).
                    let mut take = Vec::with_capacity(max);
                    let mut exhausted = Vec::new();
                    let mut rows = select.query(params![queue, now, max * 2])?;
                    while take.len() < max {
                        let Some(r) = rows.next()? else { break };
                        let (seq, count): (i64, u32) = (r.get(0)?, r.get(4)?);
                        if dead_letter.is_some() && count >= max_receive_count {
                            exhausted.push(seq);
                            continue;
                        }
                        take.push((
                            seq,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            count,
                            r.get::<_, i64>(5)?,
                        ));
                    }
                    drop(rows);
                    if let Some(dlq) = &dead_letter
                        && !exhausted.is_empty()
                    {
                        let mut to_dlq = tx.prepare_cached(
                            // The receive that moves it counts (SQS moves a message
                            // once its receive count exceeds `maxReceiveCount`): a
                            // handle of its last receive on this queue is stale.
                            "UPDATE queue_messages SET queue = ?2, visible_at = ?3,
                               receive_count = receive_count + 1 WHERE seq = ?1",
                        )?;
                        for seq in exhausted {
                            to_dlq.execute(params![seq, dlq, now])?;
                        }
                        moved = true;
                    }
                    // Only integers change: the row keeps its size (SQLite overwrites it
                    // in place on a first receive) and no handle is stored (see
                    // `receipt_handle`).
                    let mut hide = tx.prepare_cached(
                        "UPDATE queue_messages SET receive_count = ?3, visible_at = ?2
                         WHERE seq = ?1",
                    )?;
                    for (seq, message_id, body, attributes, count, sent_at) in take {
                        let count = count.saturating_add(1);
                        hide.execute(params![seq, hidden_until, count])?;
                        out.push(ReceivedMessage {
                            receipt_handle: receipt_handle(seq, count, &message_id),
                            message_id,
                            body,
                            attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                            receive_count: count,
                            sent_at_ms: sent_at,
                        });
                    }
                }
                tx.commit()?;
                Ok((out, moved))
            })
            .await?;
        if moved {
            self.sent.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(received)
    }

    /// Acknowledges what a delivery worker handled, in one transaction (one commit for
    /// the batch instead of one per message): appends the batch's delivery log entries
    /// (record, client, outcome, detail) of `crm` at `at_ms`, and deletes the messages
    /// of `receipts`. One flag per receipt: `false` when it was stale (the message was
    /// received again since, or is gone).
    pub async fn acknowledge(
        &self,
        queue: &str,
        receipts: Vec<String>,
        crm: Crm,
        at_ms: i64,
        log: Vec<(String, String, String, String)>,
    ) -> Result<Vec<bool>, StoreError> {
        let queue = queue.to_owned();
        self.store
            .write_relaxed(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                crate::store::insert_delivery_log(&tx, crm, at_ms, &log)?;
                let mut deleted = Vec::with_capacity(receipts.len());
                {
                    let mut delete = tx.prepare_cached(DELETE_RECEIVED)?;
                    for receipt in &receipts {
                        deleted.push(match receipt_parts(receipt) {
                            Some((seq, count, id)) => {
                                delete.execute(params![seq, queue, count, id])? == 1
                            }
                            None => false,
                        });
                    }
                }
                tx.commit()?;
                Ok(deleted)
            })
            .await
    }

    /// Deletes a received message. `false` when the handle is stale (the message was
    /// received again since, or is gone).
    pub async fn delete(&self, queue: &str, receipt_handle: &str) -> Result<bool, StoreError> {
        let Some((seq, count, id)) = receipt_parts(receipt_handle) else {
            return Ok(false);
        };
        let (queue, id) = (queue.to_owned(), id.to_owned());
        self.store
            .write_relaxed(move |conn| {
                conn.prepare_cached(DELETE_RECEIVED)
                    .and_then(|mut delete| delete.execute(params![seq, queue, count, id]))
                    .map(|n| n == 1)
            })
            .await
    }

    /// Sets when a received message becomes visible again (`ChangeMessageVisibility`).
    pub async fn change_visibility(
        &self,
        queue: &str,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let Some((seq, count, id)) = receipt_parts(receipt_handle) else {
            return Ok(false);
        };
        let visible_at =
            self.clock.now_ms() + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let (queue, id) = (queue.to_owned(), id.to_owned());
        let changed = self
            .store
            .write_relaxed(move |conn| {
                conn.execute(
                    "UPDATE queue_messages SET visible_at = ?5
                     WHERE seq = ?1 AND queue = ?2 AND receive_count = ?3 AND message_id = ?4",
                    params![seq, queue, count, id, visible_at],
                )
                .map(|n| n == 1)
            })
            .await?;
        if changed && timeout.is_zero() {
            self.sent.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(changed)
    }

    /// Depth of a queue.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let now = self.clock.now_ms();
        let queue = queue.to_owned();
        self.store
            .read(move |conn| {
                conn.query_row(
                    "SELECT COALESCE(SUM(visible_at <= ?2), 0), COALESCE(SUM(visible_at > ?2), 0),
                            MIN(sent_at)
                     FROM queue_messages WHERE queue = ?1",
                    params![queue, now],
                    |r| {
                        Ok(QueueStats {
                            visible: r.get(0)?,
                            in_flight: r.get(1)?,
                            oldest_sent_at_ms: r.get(2)?,
                        })
                    },
                )
                .map_err(unavailable)
            })
            .await
    }

    /// Up to `limit` messages of a queue in send order, without receiving them (no
    /// receive count, no visibility change): for inspection.
    pub async fn peek(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let queue = queue.to_owned();
        self.store
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT message_id, body, attributes, receive_count, sent_at
                         FROM queue_messages WHERE queue = ?1 ORDER BY seq LIMIT ?2",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![queue, limit], |r| {
                        Ok(ReceivedMessage {
                            message_id: r.get(0)?,
                            receipt_handle: String::new(),
                            body: r.get(1)?,
                            attributes: serde_json::from_str(&r.get::<_, String>(2)?)
                                .unwrap_or_default(),
                            receive_count: r.get(3)?,
                            sent_at_ms: r.get(4)?,
                        })
                    })
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await
    }

    /// When the next hidden message of `queue` becomes visible (epoch ms), if any.
    pub async fn next_visible_at(&self, queue: &str) -> Result<Option<i64>, StoreError> {
        let queue = queue.to_owned();
        self.store
            .read(move |conn| {
                conn.prepare_cached("SELECT MIN(visible_at) FROM queue_messages WHERE queue = ?1")
                    .and_then(|mut s| s.query_row([queue], |r| r.get(0)))
                    .optional()
                    .map(Option::flatten)
                    .map_err(unavailable)
            })
            .await
    }
}

/// The handle of the `count`-th receive of message `id` at `seq`:
/// `{seq}-{count}-{id}`. A message's receive count only grows (a move to the dead-letter
/// queue keeps the row, its position and its id, and counts as a receive; a redrive
/// sends a new message), and its id is its own (a position is not: SQLite gives a new
/// row the position after the largest one left, so a message sent once the newest one
/// was deleted takes that position again). So a handle names one receive of one message
/// for good. It is current while the row at `seq` is still message `id`, its count is
/// still `count`, and it is on the queue the handle is used with: any later receive, or
/// the move, makes it stale.
fn receipt_handle(seq: i64, count: u32, id: &str) -> String {
    format!("{seq}-{count}-{id}")
}

/// The position, receive count and message id a handle names (`None`: not a handle of
/// ours, or of an earlier form: stale).
fn receipt_parts(receipt: &str) -> Option<(i64, u32, &str)> {
    let mut parts = receipt.splitn(3, '-');
    let (seq, count, id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((seq.parse().ok()?, count.parse().ok()?, id))
}

#[async_trait]
impl domain::QueueControl for LocalQueues {
    async fn change_visibility(
        &self,
        crm: Crm,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        LocalQueues::change_visibility(
            self,
            &queue_name(crm, QueueKind::Delivery),
            receipt_handle,
            timeout,
        )
        .await
        .map(drop)
        .map_err(to_queue_error)
    }
}

#[async_trait]
impl QueueSender for LocalQueues {
    async fn send_batch(
        &self,
        crm: Crm,
        queue: QueueKind,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<SendFailure>, QueueError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let rows = messages
            .iter()
            .map(|m| QueueRow::new(m.body.clone(), &m.attributes))
            .collect();
        self.insert(&queue_name(crm, queue), rows, Duration::ZERO)
            .await
            .map_err(to_queue_error)?;
        Ok(Vec::new())
    }
}
