//! The token cache on SQLite, and credentials from a local secrets file.

use crate::store::SqliteStore;
use async_trait::async_trait;
use domain::{ClientId, Crm, Secret, SecretStore, StoreError, StoredToken, TokenStore};
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn get_token(
        &self,
        client: &ClientId,
        crm: Crm,
    ) -> Result<Option<StoredToken>, StoreError> {
        self.read_item(
            "SELECT item FROM tokens WHERE client_id = ?1 AND crm = ?2",
            vec![client.to_string(), crm.as_str().to_owned()],
        )
        .await
    }

    async fn put_token_if_newer(&self, token: &StoredToken) -> Result<bool, StoreError> {
        let item = serde_json::to_string(token).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (client, crm) = (token.client_id.to_string(), token.crm.as_str());
        let (issued, expires, updated) = (token.issued_at, token.expires_at, token.updated_at);
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO tokens (client_id, crm, issued_at, expires_at, updated_at, item)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (client_id, crm) DO UPDATE SET issued_at = excluded.issued_at,
                   expires_at = excluded.expires_at, updated_at = excluded.updated_at,
                   item = excluded.item
                 WHERE excluded.issued_at > tokens.issued_at
                    OR (excluded.issued_at = tokens.issued_at AND excluded.updated_at > tokens.updated_at)",
                params![client, crm, issued, expires, updated, item],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn record_refresh(
        &self,
        client: &ClientId,
        crm: Crm,
        status: &domain::token::RefreshStatus,
    ) -> Result<(), StoreError> {
        let item = serde_json::to_string(status).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (client, crm) = (client.to_string(), crm.as_str());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO token_status (client_id, crm, item) VALUES (?1, ?2, ?3)
                 ON CONFLICT (client_id, crm) DO UPDATE SET item = excluded.item",
                params![client, crm, item],
            )
            .map(drop)
        })
        .await
    }

    async fn refresh_status(
        &self,
        client: &ClientId,
        crm: Crm,
    ) -> Result<Option<domain::token::RefreshStatus>, StoreError> {
        self.read_item(
            "SELECT item FROM token_status WHERE client_id = ?1 AND crm = ?2",
            vec![client.to_string(), crm.as_str().to_owned()],
        )
        .await
    }

    /// A row of `meta` (`lease:{client}:{crm}` → `{holder} {until}`), taken in one
    /// write transaction (SQLite has one writer: the check and the write are atomic).
    async fn acquire_refresh_lease(
        &self,
        client: &ClientId,
        crm: Crm,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = format!("lease:{client}:{crm}");
        let value = format!("{holder} {until_ms}");
        let holder = holder.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()?;
            let free = current.as_deref().is_none_or(|v| {
                let (h, until) = v.split_once(' ').unwrap_or(("", "0"));
                h == holder || until.parse::<i64>().unwrap_or(0) <= now_ms
            });
            if free {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )?;
            }
            tx.commit()?;
            Ok(free)
        })
        .await
    }

    async fn release_refresh_lease(
        &self,
        client: &ClientId,
        crm: Crm,
        holder: &str,
    ) -> Result<(), StoreError> {
        let key = format!("lease:{client}:{crm}");
        let prefix = format!("{holder} %");
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM meta WHERE key = ?1 AND value LIKE ?2",
                params![key, prefix],
            )
            .map(drop)
        })
        .await
    }
}

/// Credentials from a JSON file: `{"<secret name>": <credentials object or string>}`.
/// Written back atomically (temp file + rename, mode 0600) when a secret changes.
#[derive(Debug, Clone)]
pub struct FileSecrets {
    path: PathBuf,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl FileSecrets {
    /// Secrets in `path`. Warns when the file can be read by group or others.
    pub fn open(path: &Path) -> FileSecrets {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path)
                && m.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    path = %path.display(),
                    "the secrets file is readable by group or others; chmod 600 it"
                );
            }
        }
        FileSecrets {
            path: path.to_owned(),
            lock: std::sync::Arc::default(),
        }
    }

    fn read_all(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{} is not a JSON object of secrets (line {})",
                    self.path.display(),
                    e.line()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Writes every secret atomically (a temp file of its own in the same directory,
    /// mode 0600, fsync'd, renamed over the file): two writers never share a temp file.
    pub fn write_all(&self, all: &BTreeMap<String, serde_json::Value>) -> Result<(), StoreError> {
        use std::io::Write;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let text = serde_json::to_string_pretty(all).map_err(unavailable)?;
        // tempfile creates it 0600 on unix.
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(unavailable)?;
        tmp.write_all(text.as_bytes()).map_err(unavailable)?;
        tmp.as_file().sync_all().map_err(unavailable)?;
        tmp.persist(&self.path).map_err(unavailable)?;
        Ok(())
    }

    /// An exclusive lock on `{file}.lock` across processes (`connect serve` and a
    /// `connect tokens refresh` next to it), held for a read-modify-write.
    fn lock_file(&self) -> Result<std::fs::File, StoreError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(name))
            .map_err(unavailable)?;
        f.lock().map_err(unavailable)?;
        Ok(f)
    }
}

#[async_trait]
impl SecretStore for FileSecrets {
    async fn get_secret(&self, name: &str) -> Result<Option<Secret<String>>, StoreError> {
        let _g = self.lock.lock().await;
        Ok(self.read_all()?.get(name).map(|v| {
            Secret::new(match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        }))
    }

    async fn put_secret(&self, name: &str, value: &Secret<String>) -> Result<(), StoreError> {
        let _g = self.lock.lock().await;
        let _file_lock = self.lock_file()?;
        let mut all = self.read_all()?;
        let v = serde_json::from_str(value.expose())
            .unwrap_or_else(|_| serde_json::Value::String(value.expose().clone()));
        all.insert(name.to_owned(), v);
        self.write_all(&all)
    }
}
