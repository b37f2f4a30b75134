//! Privacy on the local store: the suppression list and audit trail
//! ([`SuppressionStore`] on SQLite), and erasure of one person's data: navigation
//! records, delivery-queue and DLQ messages.

use crate::store::SqliteStore;
use async_trait::async_trait;
use domain::privacy::{AuditRecord, GLOBAL_SCOPE, SuppressionStore};
use domain::{ClientId, Email, StoreError};
use rusqlite::params;

#[async_trait]
impl SuppressionStore for SqliteStore {
    async fn is_suppressed(&self, client: &ClientId, email_key: &str) -> Result<bool, StoreError> {
        let (key, client) = (email_key.to_owned(), client.to_string());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM suppressions WHERE email_key = ?1 AND scope IN (?2, ?3))",
            )
            .and_then(|mut s| s.query_row(params![key, client, GLOBAL_SCOPE], |r| r.get::<_, bool>(0)))
            .map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await
    }

    async fn suppress(&self, scope: &str, email_key: &str, at_ms: i64) -> Result<(), StoreError> {
        let (key, scope) = (email_key.to_owned(), scope.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO suppressions (email_key, scope, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (email_key, scope) DO NOTHING",
                params![key, scope, at_ms],
            )
            .map(drop)
        })
        .await
    }

    async fn unsuppress(&self, scope: &str, email_key: &str) -> Result<bool, StoreError> {
        let (key, scope) = (email_key.to_owned(), scope.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM suppressions WHERE email_key = ?1 AND scope = ?2",
                params![key, scope],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let item = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let at = record.at_ms;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO audit_log (at, item) VALUES (?1, ?2)",
                params![at, item],
            )
            .map(drop)
        })
        .await
    }
}

/// What an erased record's row holds when the row itself must stay (see
/// [`SqliteStore::erase`]); the fanout skips it.
pub const ERASED_ITEM: &str = r#"{"erased":true}"#;

/// What an erasure removed, by place.
pub type Removed = std::collections::BTreeMap<String, u64>;

impl SqliteStore {
    /// Deletes `email`'s navigation records (of `client`, or all) and their messages on
    /// every queue (delivery queues and DLQs), in one transaction. Returns the counts by
    /// place: `navigation`, and each queue's name.
    pub async fn erase(
        &self,
        email: &Email,
        client: Option<&ClientId>,
    ) -> Result<Removed, StoreError> {
        let email = email.as_str().to_owned();
        let client = client.map(ToString::to_string);
        let tail = self.feed_tail();
        self.write(move |conn| {
            // The fanout must not take a record erased here from the writer's tail of the
            // feed. Emptied first: only this thread appends to it, so nothing is added
            // before this commit, and from now on the fanout reads the table.
            if let Ok(mut tail) = tail.lock() {
                tail.invalidate();
            }
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut removed = Removed::new();
            // The newest row keeps its place (a deleted last rowid would be handed out
            // again, behind the fanout's checkpoint): its content is replaced by a
            // tombstone the fanout skips.
            let newest: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM navigation", [], |r| {
                    r.get(0)
                })?;
            let deleted = tx.execute(
                "DELETE FROM navigation WHERE json_extract(item, '$.email') = ?1
                   AND (?2 IS NULL OR json_extract(item, '$.clientId') = ?2) AND seq < ?3",
                params![email, client, newest],
            )?;
            let blanked = tx.execute(
                "UPDATE navigation SET item = ?4, record_id = 'erased', event_id = NULL
                 WHERE seq = ?3 AND json_extract(item, '$.email') = ?1
                   AND (?2 IS NULL OR json_extract(item, '$.clientId') = ?2)",
                params![email, client, newest, ERASED_ITEM],
            )?;
            removed.insert("navigation".to_owned(), (deleted + blanked) as u64);
            let queues: Vec<(String, i64)> = {
                let mut stmt = tx.prepare(
                    "SELECT queue, COUNT(*) FROM queue_messages
                     WHERE json_extract(body, '$.event.email') = ?1
                       AND (?2 IS NULL OR json_extract(body, '$.clientId') = ?2)
                     GROUP BY queue",
                )?;
                let rows =
                    stmt.query_map(params![email, client], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            tx.execute(
                "DELETE FROM queue_messages WHERE json_extract(body, '$.event.email') = ?1
                   AND (?2 IS NULL OR json_extract(body, '$.clientId') = ?2)",
                params![email, client],
            )?;
            for (queue, n) in queues {
                removed.insert(format!("queue:{queue}"), u64::try_from(n).unwrap_or(0));
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// The audit trail, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT item FROM audit_log ORDER BY seq")
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            rows.map(|r| {
                r.map_err(|e| StoreError::Unavailable(e.to_string()))
                    .and_then(|s| {
                        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
                    })
            })
            .collect()
        })
        .await
    }
}
