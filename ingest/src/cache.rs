//! In-process cache of client lookups: one Lambda container or `connect serve` process
//! serves many requests for few clients.
//!
//! Built on `moka`: bounded by entry count with TinyLFU admission, so a spray of made-up
//! client ids cannot push the real clients out, and concurrent misses for one key make
//! one lookup. Errors are not cached.

use async_trait::async_trait;
use domain::{ClientConfig, ClientDirectory, ClientId, Crm, RdStationConfig, StoreError};
use moka::Expiry;
use moka::future::Cache;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a found client, tid or origin list is reused.
pub const DEFAULT_POSITIVE_TTL: Duration = Duration::from_secs(30);
/// How long a "not found" is reused (short: a client being onboarded shows up quickly).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most entries per cache (clients, tids); past it the least useful entries go.
pub const MAX_CACHE_ENTRIES: u64 = 10_000;

/// Found answers live `positive`, "not found" answers `negative`.
struct FoundOrNot {
    positive: Duration,
    negative: Duration,
}

impl<K, V> Expiry<K, Option<V>> for FoundOrNot {
    fn expire_after_create(&self, _: &K, value: &Option<V>, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.positive
        } else {
            self.negative
        })
    }
}

fn lookup_cache<K, V>(positive: Duration, negative: Duration) -> Cache<K, Option<V>>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(MAX_CACHE_ENTRIES)
        .expire_after(FoundOrNot { positive, negative })
        .build()
}

fn unshare(e: Arc<StoreError>) -> StoreError {
    (*e).clone()
}

/// A [`ClientDirectory`] that remembers answers for a short time.
pub struct CachedDirectory<D> {
    inner: Arc<D>,
    positive_ttl: Duration,
    /// Shared: a hit hands out a pointer, not a deep copy of the client's settings
    /// (origins, target, policy: a dozen allocations per request otherwise).
    clients: Cache<ClientId, Option<Arc<ClientConfig>>>,
    tids: Cache<String, Option<RdStationConfig>>,
    origins: Cache<Crm, Vec<String>>,
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
            inner: Arc::new(inner),
            positive_ttl,
            clients: lookup_cache(positive_ttl, negative_ttl),
            tids: lookup_cache(positive_ttl, negative_ttl),
            origins: Cache::builder()
                .max_capacity(64)
                .time_to_live(positive_ttl)
                .build(),
        }
    }
}

impl<D: ClientDirectory + 'static> CachedDirectory<D> {
    /// The client `id`, shared with the cache.
    pub async fn shared_client(
        &self,
        id: &ClientId,
    ) -> Result<Option<Arc<ClientConfig>>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.clients
            .try_get_with_by_ref(id, async move { Ok(inner.client(id).await?.map(Arc::new)) })
            .await
            .map_err(unshare)
    }
}

#[async_trait]
impl<D: ClientDirectory + 'static> ClientDirectory for CachedDirectory<D> {
    async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, StoreError> {
        Ok(self.shared_client(id).await?.map(|c| (*c).clone()))
    }

    async fn rdstation_by_tid(&self, tid: &str) -> Result<Option<RdStationConfig>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.tids
            .try_get_with_by_ref(tid, async move { inner.rdstation_by_tid(tid).await })
            .await
            .map_err(unshare)
    }

    async fn origins_for(&self, crm: Crm) -> Result<Vec<String>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.origins
            .try_get_with(crm, async move { inner.origins_for(crm).await })
            .await
            .map_err(unshare)
    }

    async fn clients_of(&self, crm: Crm) -> Result<Vec<ClientConfig>, StoreError> {
        self.inner.clients_of(crm).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counting {
        lookups: AtomicUsize,
        real_lookups: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl ClientDirectory for Counting {
        async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, StoreError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if id.as_str() == "real" {
                self.real_lookups.fetch_add(1, Ordering::SeqCst);
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            Ok((id.as_str() == "real").then(|| ClientConfig {
                client_id: id.clone(),
                crm: Crm::RESPONSYS,
                active: true,
                allowed_origins: domain::AllowedOrigins::default(),
                target: None,
                secret_name: None,
                rate_limit_per_second: None,
                policy: Default::default(),
            }))
        }
        async fn rdstation_by_tid(&self, _: &str) -> Result<Option<RdStationConfig>, StoreError> {
            Ok(None)
        }
        async fn origins_for(&self, _: Crm) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
        async fn clients_of(&self, _: Crm) -> Result<Vec<ClientConfig>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_spray_of_unknown_ids_does_not_evict_a_hot_client() {
        let cache = CachedDirectory::new(
            Counting::default(),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let real = ClientId::parse("real").expect("id");
        // The shop's own traffic goes on while someone sprays made-up ids (the
        // admission policy counts hits once the cache is half full).
        for i in 0..(MAX_CACHE_ENTRIES * 3) {
            let id = ClientId::parse(&format!("fake-{i}")).expect("id");
            assert!(cache.client(&id).await.expect("ok").is_none());
            if i % 50 == 0 {
                assert!(cache.client(&real).await.expect("ok").is_some());
            }
        }
        assert!(
            cache.inner.real_lookups.load(Ordering::SeqCst) <= 2,
            "the hot client was evicted by the spray: {} lookups",
            cache.inner.real_lookups.load(Ordering::SeqCst)
        );
        cache.clients.run_pending_tasks().await;
        assert!(cache.clients.entry_count() <= MAX_CACHE_ENTRIES);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = CachedDirectory::new(
            Counting::default(),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        cache.inner.fail.store(true, Ordering::SeqCst);
        let real = ClientId::parse("real").expect("id");
        assert!(cache.client(&real).await.is_err());
        cache.inner.fail.store(false, Ordering::SeqCst);
        assert!(cache.client(&real).await.expect("ok").is_some());
    }
}
