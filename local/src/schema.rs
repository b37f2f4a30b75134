//! Versioned schema migrations (`PRAGMA user_version` holds the applied version).

use rusqlite::Connection;

/// Migrations, in order; entry `i` brings the schema from version `i` to `i + 1`.
/// Never edit a released entry: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: navigation buffer (which is also the change feed), consumers' checkpoints,
    // clients, RD Station config.
    //
    // `navigation` is a rowid table: rows are appended in arrival order (`seq`), with
    // no secondary index (a table or index keyed by the random record id dirties a page
    // per insert). Duplicates are found by the writer (see `store::Writer`); expired
    // records are swept in `seq` order. Only what queries need is a column; the rest is
    // in `item` (the record as JSON; `json_extract` reaches it).
    // The change feed is the table itself: a record and its feed position (`seq`) are
    // committed together, and consumers keep a checkpoint in `checkpoints`. The sweeper
    // never deletes records past the slowest checkpoint, nor the newest record (so
    // `max(seq) + 1` never goes back; AUTOINCREMENT would cost a write per insert).
    r#"
    CREATE TABLE navigation (
        seq        INTEGER PRIMARY KEY,
        record_id  TEXT NOT NULL,
        crm        TEXT NOT NULL,
        ttl        INTEGER NOT NULL,
        event_id   TEXT,
        item       TEXT NOT NULL
    );
    CREATE TABLE checkpoints (
        consumer TEXT PRIMARY KEY,
        seq      INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE clients (
        client_id TEXT PRIMARY KEY,
        crm       TEXT NOT NULL,
        active    INTEGER NOT NULL,
        item      TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE rdstation_config (
        tid       TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        item      TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 2: the CRM queues and their dead-letter queues, with SQS standard-queue semantics
    // (see `queues`). A receipt handle is `{seq}-{receive_count}-{message_id}`: found by
    // primary key, checked against `receive_count` and `message_id`, so no index takes
    // random inserts. The columns `first_received_at` and `receipt` are no longer written
    // (they held a handle's random part and a time nothing read); they stay so that
    // existing stores open unchanged.
    r#"
    CREATE TABLE queue_messages (
        seq               INTEGER PRIMARY KEY,
        queue             TEXT NOT NULL,
        message_id        TEXT NOT NULL,
        body              TEXT NOT NULL,
        attributes        TEXT NOT NULL,
        sent_at           INTEGER NOT NULL,
        visible_at        INTEGER NOT NULL,
        receive_count     INTEGER NOT NULL DEFAULT 0,
        first_received_at INTEGER,
        receipt           TEXT
    );
    CREATE INDEX queue_messages_ready ON queue_messages (queue, visible_at, seq);
    "#,
    // 3: the CRM token cache (as the DynamoDB tokens table: key client + CRM).
    r#"
    CREATE TABLE tokens (
        client_id  TEXT NOT NULL,
        crm        TEXT NOT NULL,
        issued_at  INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        item       TEXT NOT NULL,
        PRIMARY KEY (client_id, crm)
    ) WITHOUT ROWID;
    "#,
    // 4: the result of the last token refresh of each client.
    r#"
    CREATE TABLE token_status (
        client_id TEXT NOT NULL,
        crm       TEXT NOT NULL,
        item      TEXT NOT NULL,
        PRIMARY KEY (client_id, crm)
    ) WITHOUT ROWID;
    "#,
    // 5: privacy: suppressed emails (keyed hash × scope: a client id or `*`) and the
    // audit trail of erasures, unsuppressions and clear-email views.
    r#"
    CREATE TABLE suppressions (
        email_key  TEXT NOT NULL,
        scope      TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (email_key, scope)
    ) WITHOUT ROWID;
    CREATE TABLE audit_log (
        seq  INTEGER PRIMARY KEY,
        at   INTEGER NOT NULL,
        item TEXT NOT NULL
    );
    "#,
    // 6: the delivery log (`connect trace`): one row per delivery attempt, appended in
    // time order, swept with the records. No index: trace is an operator's scan.
    r#"
    CREATE TABLE delivery_log (
        seq       INTEGER PRIMARY KEY,
        at        INTEGER NOT NULL,
        record_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        crm       TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        detail    TEXT NOT NULL
    );
    "#,
    // 7: refused requests per (minute, client, reason), for `connect status`.
    r#"
    CREATE TABLE ingest_refusals (
        minute    INTEGER NOT NULL,
        client_id TEXT NOT NULL,
        reason    TEXT NOT NULL,
        count     INTEGER NOT NULL,
        PRIMARY KEY (minute, client_id, reason)
    ) WITHOUT ROWID;
    "#,
];

/// A schema problem.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file was written by a newer Connect.
    #[error(
        "the database is at schema version {found}, newer than this build knows ({known}); use a newer connect"
    )]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Applies every pending migration, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<i64, SchemaError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let mut version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > known {
        return Err(SchemaError::TooNew {
            found: version,
            known,
        });
    }
    while version < known {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let sql = MIGRATIONS
            .get(usize::try_from(version).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or_default();
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        version += 1;
    }
    Ok(version)
}
