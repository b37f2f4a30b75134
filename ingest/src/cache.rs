//! In-process cache of client lookups: one Lambda container or `connect serve` process
//! serves many requests for few clients.

use async_trait::async_trait;
use domain::{ClientConfig, ClientDirectory, ClientId, Crm, RdStationConfig, StoreError};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a found client, tid or origin list is reused.
pub const DEFAULT_POSITIVE_TTL: Duration = Duration::from_secs(30);
/// How long a "not found" is reused (short: a client being onboarded shows up quickly).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most entries per cache map; past it the map is cleared (bounds memory under a flood of
/// made-up client ids).
pub const MAX_CACHE_ENTRIES: usize = 10_000;

struct Map<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    fn new() -> Self {
        Map {
            entries: Mutex::new(HashMap::new()),
        }
    }
    fn get(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(expires, _)| *expires > now)
            .map(|(_, v)| v.clone())
    }
    fn put(&self, key: K, value: V, expires: Instant) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_CACHE_ENTRIES {
                entries.clear();
            }
            entries.insert(key, (expires, value));
        }
    }
}

/// A [`ClientDirectory`] that remembers answers for a short time. Errors are not cached.
pub struct CachedDirectory<D> {
    inner: D,
    positive_ttl: Duration,
    negative_ttl: Duration,
    clients: Map<ClientId, Option<ClientConfig>>,
    tids: Map<String, Option<RdStationConfig>>,
    origins: Map<Crm, Vec<String>>,
}

impl<D> std::fmt::Debug for CachedDirectory<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDirectory")
            .field("positive_ttl", &self.positive_ttl)
            .finish()
    }
}

impl<D> CachedDirectory<D> {
    /// Wraps `inner` with the given lifetimes.
    pub fn new(inner: D, positive_ttl: Duration, negative_ttl: Duration) -> Self {
        CachedDirectory {
            inner,
            positive_ttl,
            negative_ttl,
            clients: Map::new(),
            tids: Map::new(),
            origins: Map::new(),
        }
    }

    fn expiry<T>(&self, found: &Option<T>) -> Instant {
        Instant::now()
            + if found.is_some() {
                self.positive_ttl
            } else {
                self.negative_ttl
            }
    }
}

#[async_trait]
impl<D: ClientDirectory> ClientDirectory for CachedDirectory<D> {
    async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, StoreError> {
        if let Some(hit) = self.clients.get(id, Instant::now()) {
            return Ok(hit);
        }
        let found = self.inner.client(id).await?;
        self.clients
            .put(id.clone(), found.clone(), self.expiry(&found));
        Ok(found)
    }

    async fn rdstation_by_tid(&self, tid: &str) -> Result<Option<RdStationConfig>, StoreError> {
        let key = tid.to_owned();
        if let Some(hit) = self.tids.get(&key, Instant::now()) {
            return Ok(hit);
        }
        let found = self.inner.rdstation_by_tid(tid).await?;
        self.tids.put(key, found.clone(), self.expiry(&found));
        Ok(found)
    }

    async fn origins_for(&self, crm: Crm) -> Result<Vec<String>, StoreError> {
        if let Some(hit) = self.origins.get(&crm, Instant::now()) {
            return Ok(hit);
        }
        let found = self.inner.origins_for(crm).await?;
        self.origins
            .put(crm, found.clone(), Instant::now() + self.positive_ttl);
        Ok(found)
    }

    async fn clients_of(&self, crm: Crm) -> Result<Vec<ClientConfig>, StoreError> {
        self.inner.clients_of(crm).await
    }
}
