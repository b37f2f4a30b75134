//! The SQLite store: one writer thread with group commit, one reader connection.

use crate::schema;
use async_trait::async_trait;
use domain::{
    ClientConfig, ClientDirectory, ClientId, Crm, NavigationRecord, PutOutcome, RdStationConfig,
    RecordStore, StoreError,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "connect.db";
/// Most record inserts grouped into one transaction.
pub const MAX_GROUP_COMMIT: usize = 512;
/// Writes queued for the writer thread before callers wait (back-pressure).
pub const WRITE_QUEUE_CAPACITY: usize = 8192;
/// How long a connection waits on a lock held by another process before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most expired records deleted per sweep transaction (keeps write pauses short).
pub const SWEEP_CHUNK: usize = 1000;

/// SQLite `synchronous` setting of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged event survives power loss (default).
    #[default]
    Full,
    /// fsync at checkpoints only: an acknowledged event survives a process crash, but
    /// the last commits may be lost on power loss. Faster.
    Normal,
}

/// Options of [`SqliteStore::open`].
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Durability of commits.
    pub synchronous: Synchronous,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Op {
    Put {
        record_id: String,
        timestamp: i64,
        client_id: String,
        crm: Crm,
        event_type: &'static str,
        ttl: i64,
        item: String,
        reply: oneshot::Sender<Result<PutOutcome, StoreError>>,
    },
    Job(Job),
    Shutdown,
}

struct Inner {
    path: PathBuf,
    tx: mpsc::Sender<Op>,
    reader: Mutex<Connection>,
    writer: Mutex<Option<JoinHandle<()>>>,
    last_change: watch::Receiver<i64>,
}

/// The embedded store. Cheap to clone (a handle); [`SqliteStore::shutdown`] closes it.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// A failure to open the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("cannot open {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// Migrations failed.
    #[error("cannot migrate {path}: {source}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// Why.
        source: schema::SchemaError,
    },
    /// The writer thread could not start.
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn open_conn(path: &Path, synchronous: Synchronous) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the store in `dir`.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<SqliteStore, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let sqlite = |source| OpenError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut writer = open_conn(&path, options.synchronous).map_err(sqlite)?;
        schema::migrate(&mut writer).map_err(|source| OpenError::Schema {
            path: path.clone(),
            source,
        })?;
        let reader = open_conn(&path, options.synchronous).map_err(sqlite)?;
        let last_seq: i64 = writer
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM change_feed", [], |r| {
                r.get(0)
            })
            .map_err(sqlite)?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let (change_tx, last_change) = watch::channel(last_seq);
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, change_tx))
            .map_err(OpenError::Thread)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                tx,
                reader: Mutex::new(reader),
                writer: Mutex::new(Some(handle)),
                last_change,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Watches the sequence number of the newest change-feed entry (wakes consumers as
    /// soon as an insert commits).
    pub fn watch_changes(&self) -> watch::Receiver<i64> {
        self.inner.last_change.clone()
    }

    /// Runs `f` on the writer connection, after the queued writes.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn).map_err(unavailable));
        });
        self.inner
            .tx
            .send(Op::Job(job))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    /// Runs `f` on the reader connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner
                .reader
                .lock()
                .map_err(|_| StoreError::Unavailable("reader lock poisoned".into()))?;
            f(&conn)
        })
        .await
        .map_err(unavailable)?
    }

    /// Proves the store is writable: a write transaction through the writer.
    pub async fn health(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('health_checked_at', strftime('%s','now'))
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [],
            )?;
            tx.commit()
        })
        .await
    }

    /// Creates or replaces a client.
    pub async fn upsert_client(&self, client: &ClientConfig) -> Result<(), StoreError> {
        let item = serde_json::to_string(client).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id = client.client_id.to_string();
        let crm = client.crm.as_str();
        let active = client.active;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO clients (client_id, crm, active, item) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (client_id) DO UPDATE SET crm = excluded.crm,
                   active = excluded.active, item = excluded.item",
                params![id, crm, active, item],
            )
            .map(drop)
        })
        .await
    }

    /// Creates or replaces the RD Station config of a `tid`.
    pub async fn upsert_rdstation(&self, config: &RdStationConfig) -> Result<(), StoreError> {
        let item = serde_json::to_string(config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tid = config.tid.clone();
        let client_id = config.client_id.to_string();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO rdstation_config (tid, client_id, item) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tid) DO UPDATE SET client_id = excluded.client_id, item = excluded.item",
                params![tid, client_id, item],
            )
            .map(drop)
        })
        .await
    }

    /// Deletes records whose `ttl` (epoch seconds) is at or before `now_s`, in chunks.
    /// Returns how many were deleted.
    pub async fn sweep_expired(&self, now_s: i64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self
                .write(move |conn| {
                    conn.execute(
                        "DELETE FROM navigation WHERE record_id IN
                           (SELECT record_id FROM navigation WHERE ttl <= ?1 LIMIT ?2)",
                        params![now_s, SWEEP_CHUNK],
                    )
                })
                .await?;
            total += deleted;
            if deleted < SWEEP_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Reads one stored record.
    pub async fn record(&self, record_id: &str) -> Result<Option<NavigationRecord>, StoreError> {
        let id = record_id.to_owned();
        self.read(move |conn| {
            let item: Option<String> = conn
                .query_row(
                    "SELECT item FROM navigation WHERE record_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            item.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        })
        .await
    }

    /// Number of records in the navigation buffer.
    pub async fn record_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM navigation", [], |r| r.get(0))
                .map_err(unavailable)
        })
        .await
    }

    /// Stops the writer after the writes already queued, checkpoints the WAL into the
    /// main file, closes the database and waits for the writer thread. Later writes fail
    /// with `Unavailable`.
    pub async fn shutdown(&self) {
        let _ = self.inner.tx.send(Op::Shutdown).await;
        let handle = self.inner.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// The writer thread: take one op, then whatever else is queued (up to
/// [`MAX_GROUP_COMMIT`] inserts), commit the inserts in one transaction, answer them.
fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Op>, changes: watch::Sender<i64>) {
    let mut puts = Vec::with_capacity(MAX_GROUP_COMMIT);
    let mut jobs: Vec<Job> = Vec::new();
    let mut stopping = false;
    while let Some(op) = rx.blocking_recv() {
        let mut next = Some(op);
        while let Some(op) = next.take() {
            match op {
                Op::Put { .. } => puts.push(op),
                Op::Job(job) => jobs.push(job),
                Op::Shutdown => stopping = true,
            }
            if puts.len() < MAX_GROUP_COMMIT {
                next = rx.try_recv().ok();
            }
        }
        if !puts.is_empty() {
            commit_group(&mut conn, &mut puts, &changes);
        }
        for job in jobs.drain(..) {
            job(&mut conn);
        }
        if stopping {
            break;
        }
    }
    rx.close();
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the database failed");
    }
}

fn commit_group(conn: &mut Connection, puts: &mut Vec<Op>, changes: &watch::Sender<i64>) {
    let mut results: Vec<Result<PutOutcome, StoreError>> = Vec::with_capacity(puts.len());
    let mut last_seq = None;
    let outcome = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO navigation (record_id, timestamp, client_id, crm, event_type, ttl, item)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (record_id) DO NOTHING",
            )?;
            let mut feed = tx.prepare_cached(
                "INSERT INTO change_feed (event_name, record_id, crm, new_image, created_at)
                 VALUES ('INSERT', ?1, ?2, ?3, ?4)",
            )?;
            for op in puts.iter() {
                let Op::Put {
                    record_id,
                    timestamp,
                    client_id,
                    crm,
                    event_type,
                    ttl,
                    item,
                    ..
                } = op
                else {
                    continue;
                };
                let result = insert
                    .execute(params![
                        record_id,
                        timestamp,
                        client_id,
                        crm.as_str(),
                        event_type,
                        ttl,
                        item
                    ])
                    .and_then(|n| {
                        if n == 0 {
                            Ok(PutOutcome::Duplicate)
                        } else {
                            feed.execute(params![record_id, crm.as_str(), item, timestamp])?;
                            last_seq = Some(tx.last_insert_rowid());
                            Ok(PutOutcome::Created)
                        }
                    });
                results.push(result.map_err(unavailable));
            }
        }
        tx.commit()
    })();
    let commit_error = outcome.err().map(unavailable);
    if let Some(e) = &commit_error {
        tracing::error!(error = %e, records = puts.len(), "group commit failed");
    } else if let Some(seq) = last_seq {
        changes.send_replace(seq);
    }
    let mut results = results.into_iter();
    for op in puts.drain(..) {
        if let Op::Put { reply, .. } = op {
            let result = match (&commit_error, results.next()) {
                (Some(e), _) => Err(e.clone()),
                (None, Some(r)) => r,
                (None, None) => Err(StoreError::Unavailable("not attempted".into())),
            };
            let _ = reply.send(result);
        }
    }
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn put_if_absent(&self, record: &NavigationRecord) -> Result<PutOutcome, StoreError> {
        let item = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Op::Put {
                record_id: record.record_id.clone(),
                timestamp: record.timestamp,
                client_id: record.client_id.to_string(),
                crm: record.crm,
                event_type: record.event_type.as_str(),
                ttl: record.ttl,
                item,
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }
}

fn parse_item<T: serde::de::DeserializeOwned>(item: &str) -> Result<T, StoreError> {
    serde_json::from_str(item).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl ClientDirectory for SqliteStore {
    async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let item: Option<String> = conn
                .query_row("SELECT item FROM clients WHERE client_id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(unavailable)?;
            item.as_deref().map(parse_item).transpose()
        })
        .await
    }

    async fn rdstation_by_tid(&self, tid: &str) -> Result<Option<RdStationConfig>, StoreError> {
        let tid = tid.to_owned();
        self.read(move |conn| {
            let item: Option<String> = conn
                .query_row(
                    "SELECT item FROM rdstation_config WHERE tid = ?1",
                    [tid],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            item.as_deref().map(parse_item).transpose()
        })
        .await
    }

    async fn origins_for(&self, crm: Crm) -> Result<Vec<String>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT item FROM clients WHERE crm = ?1 AND active = 1")
                .map_err(unavailable)?;
            let items = stmt
                .query_map([crm.as_str()], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            let mut origins = Vec::new();
            for item in items {
                let client: ClientConfig = parse_item(&item.map_err(unavailable)?)?;
                origins.extend(client.allowed_origins.0);
            }
            origins.sort();
            origins.dedup();
            Ok(origins)
        })
        .await
    }
}
