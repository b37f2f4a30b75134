//! The clients' event-signing keys, read from the secret store (the local secrets file,
//! or Secrets Manager) and cached for [`KEY_CACHE_TTL`].
//!
//! A secret holds one key as plain text, or `{"keys": ["new", "old"]}` while a key is
//! being rotated (an event signed with any listed key is accepted).

use domain::SecretStore;
use moka::future::Cache;
use std::sync::Arc;
use std::time::Duration;

/// How long keys are reused before the secret is read again: a rotated key is picked up
/// within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(300);
/// Most signing secrets cached.
const MAX_KEYS: u64 = 10_000;

/// The keys of one client (empty: no secret, so no signature can be valid).
pub type Keys = Arc<Vec<Vec<u8>>>;

/// Reads and caches signing keys.
#[derive(Clone)]
pub struct SigningKeys {
    store: Option<Arc<dyn SecretStore>>,
    cache: Cache<String, Keys>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("configured", &self.store.is_some())
            .finish()
    }
}

impl Default for SigningKeys {
    fn default() -> Self {
        SigningKeys::new(None)
    }
}

/// Parses a signing secret: a plain key, or `{"keys": [...]}` / `{"key": "..."}`.
pub fn parse_keys(secret: &str) -> Vec<Vec<u8>> {
    let text = secret.trim();
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text) {
        let mut keys: Vec<Vec<u8>> = obj
            .get("keys")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str())
                    .map(|k| k.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(k) = obj.get("key").and_then(|v| v.as_str()) {
            keys.push(k.as_bytes().to_vec());
        }
        keys.retain(|k| !k.is_empty());
        return keys;
    }
    if text.is_empty() {
        Vec::new()
    } else {
        vec![text.as_bytes().to_vec()]
    }
}

impl SigningKeys {
    /// Keys from `store` (`None`: no signed event can be verified).
    pub fn new(store: Option<Arc<dyn SecretStore>>) -> Self {
        SigningKeys {
            store,
            cache: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(KEY_CACHE_TTL)
                .build(),
        }
    }

    /// The keys in secret `name`. A read failure is not cached and yields no key (the
    /// event is refused as `signature_invalid`, and the error logged).
    pub async fn keys(&self, name: &str) -> Keys {
        let Some(store) = self.store.clone() else {
            return Arc::new(Vec::new());
        };
        let owned = name.to_owned();
        let loaded = self
            .cache
            .try_get_with_by_ref(name, async move {
                let secret = store.get_secret(&owned).await?;
                Ok::<_, domain::StoreError>(Arc::new(
                    secret.map(|s| parse_keys(s.expose())).unwrap_or_default(),
                ))
            })
            .await;
        match loaded {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "signing key could not be read");
                Arc::new(Vec::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_formats() {
        assert_eq!(parse_keys(" abc \n"), vec![b"abc".to_vec()]);
        assert_eq!(
            parse_keys(r#"{"keys": ["new", "old"]}"#),
            vec![b"new".to_vec(), b"old".to_vec()]
        );
        assert_eq!(parse_keys(r#"{"key": "k"}"#), vec![b"k".to_vec()]);
        assert!(parse_keys("").is_empty());
        assert!(parse_keys(r#"{"keys": [""]}"#).is_empty());
    }
}
