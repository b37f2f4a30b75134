//! Privacy (LGPD): keyed hashes of emails, suppression entries, and audit records.
//!
//! An email never leaves the pipeline's data path in clear: logs carry a keyed hash
//! ([`EmailKeyer::log_id`]), suppression entries are keyed by another keyed hash
//! ([`EmailKeyer::key`]). The key is per installation (a secret generated once), so
//! the hashes cannot be reversed against a list of emails without it.

use crate::event::{ClientId, Email};
use crate::ports::StoreError;
use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;

/// Name of the installation's HMAC key in the secret store (the local secrets file, or
/// Secrets Manager).
pub const INSTALLATION_KEY_SECRET: &str = "/connect/installation/key";
/// Scope of a suppression that applies to every client.
pub const GLOBAL_SCOPE: &str = "*";
/// Shortest installation key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Keyed hashes of emails (HMAC-SHA256 with the installation key).
#[derive(Clone)]
pub struct EmailKeyer {
    /// HMAC-SHA256 with the key already absorbed (its inner and outer pads): each
    /// hash clones it instead of hashing the key again.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for EmailKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmailKeyer([redacted])")
    }
}

/// The purpose string of suppression keys.
const SUPPRESS_PURPOSE: &str = "suppress:v1";

impl EmailKeyer {
    /// A keyer with `key` (the installation secret).
    pub fn new(key: &[u8]) -> Self {
        // HMAC takes a key of any length.
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        EmailKeyer { keyed }
    }

    /// A keyer with a random key of this process (hashes are not comparable across
    /// processes: for a handler that was given no installation key).
    pub fn ephemeral() -> Self {
        let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        EmailKeyer::new(&key)
    }

    pub(crate) fn mac(&self, purpose: &str, email: &str) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(purpose.as_bytes());
        mac.update(b":");
        mac.update(email.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The suppression key of an email: 64 hex digits.
    pub fn key(&self, email: &Email) -> String {
        crate::hex_lower(&self.mac(SUPPRESS_PURPOSE, email.as_str()))
    }

    /// A short id of an email for logs: 16 hex digits (correlates log lines; reveals
    /// nothing without the key).
    pub fn log_id(&self, email: &Email) -> String {
        crate::hex_lower(&self.mac("log:v1", email.as_str())[..8])
    }

    /// Parses an installation secret: the key as hex (≥ 16 bytes), else its raw bytes.
    pub fn from_secret(secret: &str) -> Result<Self, String> {
        let text = secret.trim();
        let bytes = hex::decode(text).unwrap_or_else(|_| text.as_bytes().to_vec());
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the installation key must have at least {MIN_KEY_BYTES} bytes"
            ));
        }
        Ok(EmailKeyer::new(&bytes))
    }

    /// A new random installation secret (64 hex digits).
    pub fn generate_secret() -> String {
        let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        hex::encode(bytes)
    }
}

/// Who or what an audit record concerns, and what was done: never a clear email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When, epoch ms.
    pub at_ms: i64,
    /// Who (the operator's user name, or `api` for the erasure endpoint).
    pub actor: String,
    /// `erase`, `unsuppress`, `show_pii`.
    pub action: String,
    /// The client concerned, or `*`.
    pub scope: String,
    /// Counts by place (`navigation`, `queue:responsys`, `dlq:responsys`, …).
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
}

/// Suppressed emails (per client, or global) and the audit trail.
#[async_trait]
pub trait SuppressionStore: Send + Sync {
    /// Whether `email_key` is suppressed for `client` (its own scope or the global one).
    async fn is_suppressed(&self, client: &ClientId, email_key: &str) -> Result<bool, StoreError>;
    /// Suppresses `email_key` in `scope` (a client id, or [`GLOBAL_SCOPE`]).
    async fn suppress(&self, scope: &str, email_key: &str, at_ms: i64) -> Result<(), StoreError>;
    /// Lifts a suppression; whether there was one.
    async fn unsuppress(&self, scope: &str, email_key: &str) -> Result<bool, StoreError>;
    /// Appends an audit record.
    async fn audit(&self, record: &AuditRecord) -> Result<(), StoreError>;
}

#[async_trait]
impl<T: SuppressionStore + ?Sized> SuppressionStore for std::sync::Arc<T> {
    async fn is_suppressed(&self, client: &ClientId, email_key: &str) -> Result<bool, StoreError> {
        (**self).is_suppressed(client, email_key).await
    }
    async fn suppress(&self, scope: &str, email_key: &str, at_ms: i64) -> Result<(), StoreError> {
        (**self).suppress(scope, email_key, at_ms).await
    }
    async fn unsuppress(&self, scope: &str, email_key: &str) -> Result<bool, StoreError> {
        (**self).unsuppress(scope, email_key).await
    }
    async fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        (**self).audit(record).await
    }
}

// ---------------------------------------------------------------- cached checks

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{Equivalent, UnitWeighter};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a "suppressed" answer is reused.
pub const SUPPRESSED_TTL: Duration = Duration::from_secs(300);
/// How long a "not suppressed" answer is reused.
pub const NOT_SUPPRESSED_TTL: Duration = Duration::from_secs(5);
/// Most (client, email) answers cached.
const MAX_ENTRIES: u64 = 100_000;
/// Answers the cache makes room for at first (it grows up to [`MAX_ENTRIES`]).
const INITIAL_ENTRIES: usize = 1024;

/// A cached answer's key: the client and the email's suppression MAC (fixed size: no
/// hex string is made per request; the hex key is made on a miss only).
type AnswerKey = (ClientId, [u8; 32]);

/// [`AnswerKey`] borrowed, to look an answer up without copying the client id. Hashes
/// as the key does (a tuple hashes its fields in order; `ClientId` as its `str`).
#[derive(Hash)]
struct AnswerRef<'a>(&'a str, &'a [u8; 32]);

impl Equivalent<AnswerKey> for AnswerRef<'_> {
    fn equivalent(&self, key: &AnswerKey) -> bool {
        self.0 == key.0.as_str() && self.1 == &key.1
    }
}

/// A cached answer and until when it holds (`SUPPRESSED_TTL` or `NOT_SUPPRESSED_TTL`
/// after it was read). An answer past it is a miss; the cache's own eviction (by
/// capacity) removes it in time.
#[derive(Clone, Copy)]
struct Answer {
    suppressed: bool,
    until: Instant,
}

type AnswerCache = Cache<
    AnswerKey,
    Answer,
    UnitWeighter,
    foldhash::fast::RandomState,
    DefaultLifecycle<AnswerKey, Answer>,
>;

/// Reads the installation key (a Lambda reads it from Secrets Manager); an `Err` is
/// the reason, without the key.
pub type KeyLoader = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<EmailKeyer, String>> + Send>>
        + Send
        + Sync,
>;

/// Where the keyer comes from.
#[derive(Clone)]
enum KeySource {
    Ready(EmailKeyer),
    /// Read at the first need (or by [`Privacy::preload`]); a failed read is not kept,
    /// so the next need reads again.
    Deferred {
        cell: Arc<tokio::sync::OnceCell<EmailKeyer>>,
        load: KeyLoader,
    },
}

/// Keyed hashing and suppression checks.
#[derive(Clone)]
pub struct Privacy {
    keyer: KeySource,
    store: Option<Arc<dyn SuppressionStore>>,
    /// A synchronous cache: a hit (nearly every event) is a lookup, with no future to
    /// drive; concurrent misses of one key may both ask the store (a read, harmless).
    cache: Arc<AnswerCache>,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("suppressions", &self.store.is_some())
            .finish()
    }
}

impl Default for Privacy {
    /// A per-process key and no suppression list (handlers built without privacy).
    fn default() -> Self {
        Privacy::new(EmailKeyer::ephemeral(), None)
    }
}

impl Privacy {
    /// With the installation's keyer and suppression list.
    pub fn new(keyer: EmailKeyer, store: Option<Arc<dyn SuppressionStore>>) -> Self {
        Privacy::with_source(KeySource::Ready(keyer), store)
    }

    /// With a keyer read by `load` when first needed, and the suppression list `store`
    /// (which needs no key to be built). Until the key is read, every check that needs
    /// it waits for it; when it cannot be read, they fail (no event passes a check
    /// that could not be made) and the next one reads again. A Lambda starts the read
    /// with [`Privacy::preload`] as it starts, so that it overlaps the runtime's first
    /// poll and the first event's other lookups instead of delaying the cold start.
    pub fn deferred(load: KeyLoader, store: Option<Arc<dyn SuppressionStore>>) -> Self {
        Privacy::with_source(
            KeySource::Deferred {
                cell: Arc::new(tokio::sync::OnceCell::new()),
                load,
            },
            store,
        )
    }

    fn with_source(keyer: KeySource, store: Option<Arc<dyn SuppressionStore>>) -> Self {
        Privacy {
            keyer,
            store,
            cache: Arc::new(Cache::with(
                INITIAL_ENTRIES,
                MAX_ENTRIES,
                UnitWeighter,
                foldhash::fast::RandomState::default(),
                DefaultLifecycle::default(),
            )),
        }
    }

    /// The keyer; a deferred one is read now if it was not yet.
    pub async fn keyer(&self) -> Result<&EmailKeyer, StoreError> {
        match &self.keyer {
            KeySource::Ready(keyer) => Ok(keyer),
            KeySource::Deferred { cell, load } => cell
                .get_or_try_init(|| load())
                .await
                .map_err(|e| StoreError::Unavailable(format!("the installation key: {e}"))),
        }
    }

    /// Reads a deferred keyer now (nothing for a ready one); the error is also what the
    /// checks waiting for it get.
    pub async fn preload(&self) -> Result<(), StoreError> {
        self.keyer().await.map(drop)
    }

    /// Whether `email` is suppressed for `client` (errors are not cached).
    pub async fn is_suppressed(
        &self,
        client: &ClientId,
        email: &Email,
    ) -> Result<bool, StoreError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let mac = self.keyer().await?.mac(SUPPRESS_PURPOSE, email.as_str());
        if let Some(answer) = self.cache.get(&AnswerRef(client.as_str(), &mac))
            && Instant::now() < answer.until
        {
            return Ok(answer.suppressed);
        }
        let suppressed = store.is_suppressed(client, &crate::hex_lower(&mac)).await?;
        let ttl = if suppressed {
            SUPPRESSED_TTL
        } else {
            NOT_SUPPRESSED_TTL
        };
        self.cache.insert(
            (client.clone(), mac),
            Answer {
                suppressed,
                until: Instant::now() + ttl,
            },
        );
        Ok(suppressed)
    }

    /// Forgets every cached answer.
    pub fn invalidate(&self) {
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_hashes() {
        let a = EmailKeyer::new(b"0123456789abcdef");
        let b = EmailKeyer::new(b"fedcba9876543210");
        let ana = Email::parse(" Ana@Example.com ").expect("email");
        assert_eq!(
            a.key(&ana),
            a.key(&Email::parse("ana@example.com").expect("email"))
        );
        assert_eq!(a.key(&ana).len(), 64);
        assert_eq!(a.log_id(&ana).len(), 16);
        assert_ne!(
            a.key(&ana),
            b.key(&ana),
            "another installation, another key"
        );
        assert!(
            !a.key(&ana).starts_with(&a.log_id(&ana)),
            "log ids are not key prefixes"
        );
        assert!(EmailKeyer::from_secret("short").is_err());
        let secret = EmailKeyer::generate_secret();
        assert_eq!(
            EmailKeyer::from_secret(&secret).expect("ok").key(&ana),
            EmailKeyer::from_secret(&secret).expect("ok").key(&ana)
        );
        assert_eq!(format!("{a:?}"), "EmailKeyer([redacted])");
    }

    /// [`Listed`], counting its reads.
    #[derive(Default)]
    struct Counted {
        list: Listed,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl SuppressionStore for Counted {
        async fn is_suppressed(
            &self,
            client: &ClientId,
            email_key: &str,
        ) -> Result<bool, StoreError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.list.is_suppressed(client, email_key).await
        }
        async fn suppress(&self, scope: &str, email_key: &str, at: i64) -> Result<(), StoreError> {
            self.list.suppress(scope, email_key, at).await
        }
        async fn unsuppress(&self, scope: &str, email_key: &str) -> Result<bool, StoreError> {
            self.list.unsuppress(scope, email_key).await
        }
        async fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
            self.list.audit(record).await
        }
    }

    /// An answer is read once per (client, email) and reused, found by the borrowed key
    /// (a lookup that hashed differently from the stored key would read every time).
    #[tokio::test]
    async fn answers_are_read_once_per_client_and_email_until_forgotten() {
        let keyer = EmailKeyer::new(b"0123456789abcdef");
        let store = Arc::new(Counted::default());
        let privacy = Privacy::new(keyer.clone(), Some(store.clone()));
        let reads = || store.reads.load(std::sync::atomic::Ordering::SeqCst);
        let (shop, other) = (
            ClientId::parse("shop").expect("id"),
            ClientId::parse("other").expect("id"),
        );
        let (ana, bia) = (
            Email::parse("ana@example.com").expect("email"),
            Email::parse("bia@example.com").expect("email"),
        );
        for _ in 0..3 {
            assert_eq!(privacy.is_suppressed(&shop, &ana).await, Ok(false));
        }
        assert_eq!(reads(), 1, "the answer is reused");
        assert_eq!(privacy.is_suppressed(&other, &ana).await, Ok(false));
        assert_eq!(privacy.is_suppressed(&shop, &bia).await, Ok(false));
        assert_eq!(reads(), 3, "another client or email is another answer");
        store
            .suppress("shop", &keyer.key(&ana), 0)
            .await
            .expect("suppress");
        assert_eq!(
            privacy.is_suppressed(&shop, &ana).await,
            Ok(false),
            "a cached answer holds for its time"
        );
        privacy.invalidate();
        assert_eq!(privacy.is_suppressed(&shop, &ana).await, Ok(true));
        assert_eq!(privacy.is_suppressed(&shop, &ana).await, Ok(true));
        assert_eq!(privacy.is_suppressed(&other, &ana).await, Ok(false));
        assert_eq!(reads(), 5);
    }

    /// A suppression list of (scope, email key) pairs.
    #[derive(Default)]
    struct Listed {
        keys: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    }

    #[async_trait]
    impl SuppressionStore for Listed {
        async fn is_suppressed(
            &self,
            client: &ClientId,
            email_key: &str,
        ) -> Result<bool, StoreError> {
            let keys = self.keys.lock().expect("lock");
            Ok(keys.contains(&(client.to_string(), email_key.to_owned()))
                || keys.contains(&(GLOBAL_SCOPE.to_owned(), email_key.to_owned())))
        }
        async fn suppress(&self, scope: &str, email_key: &str, _: i64) -> Result<(), StoreError> {
            let mut keys = self.keys.lock().expect("lock");
            keys.insert((scope.to_owned(), email_key.to_owned()));
            Ok(())
        }
        async fn unsuppress(&self, scope: &str, email_key: &str) -> Result<bool, StoreError> {
            let mut keys = self.keys.lock().expect("lock");
            Ok(keys.remove(&(scope.to_owned(), email_key.to_owned())))
        }
        async fn audit(&self, _: &AuditRecord) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// A loader that fails its first `failures` reads, then gives `secret`'s keyer;
    /// counts its reads.
    fn loader(
        secret: &str,
        failures: usize,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    ) -> KeyLoader {
        let secret = secret.to_owned();
        Arc::new(move || {
            let n = reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let secret = secret.clone();
            Box::pin(async move {
                tokio::task::yield_now().await;
                if n < failures {
                    Err("the secret connect/installation-key is missing".to_owned())
                } else {
                    EmailKeyer::from_secret(&secret)
                }
            })
        })
    }

    #[tokio::test]
    async fn a_deferred_key_is_read_once_and_checks_wait_for_it() {
        let secret = EmailKeyer::generate_secret();
        let ready = EmailKeyer::from_secret(&secret).expect("key");
        let list = Arc::new(Listed::default());
        let ana = Email::parse("ana@example.com").expect("email");
        let bia = Email::parse("bia@example.com").expect("email");
        let client = ClientId::parse("shop-1").expect("client");
        list.suppress(
            client.as_str(),
            &crate::hex_lower(&ready.mac(SUPPRESS_PURPOSE, ana.as_str())),
            0,
        )
        .await
        .expect("suppress");
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let privacy = Privacy::deferred(
            loader(&secret, 0, Arc::clone(&reads)),
            Some(Arc::clone(&list) as Arc<dyn SuppressionStore>),
        );
        assert_eq!(
            reads.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "nothing read before a need"
        );
        let (a, b) = tokio::join!(
            privacy.is_suppressed(&client, &ana),
            privacy.is_suppressed(&client, &bia)
        );
        assert_eq!(
            (a, b),
            (Ok(true), Ok(false)),
            "the installation's key, the list's answers"
        );
        assert_eq!(
            privacy.keyer().await.expect("keyer").key(&ana),
            ready.key(&ana),
            "the same hashes as a key read up front"
        );
        privacy.preload().await.expect("preload");
        privacy
            .clone()
            .preload()
            .await
            .expect("a clone shares the key");
        assert_eq!(
            reads.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "read once for every check and clone"
        );
    }

    #[tokio::test]
    async fn an_unreadable_key_fails_the_checks_and_is_read_again_at_the_next() {
        let secret = EmailKeyer::generate_secret();
        let list = Arc::new(Listed::default());
        let ana = Email::parse("ana@example.com").expect("email");
        let client = ClientId::parse("shop-1").expect("client");
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let privacy = Privacy::deferred(
            loader(&secret, 2, Arc::clone(&reads)),
            Some(Arc::clone(&list) as Arc<dyn SuppressionStore>),
        );
        let Err(StoreError::Unavailable(message)) = privacy.preload().await else {
            panic!("a missing secret must fail the read");
        };
        assert!(
            message.contains("installation key") && message.contains("missing"),
            "{message}"
        );
        assert!(
            matches!(
                privacy.is_suppressed(&client, &ana).await,
                Err(StoreError::Unavailable(_))
            ),
            "no answer without the key: the event is not let through"
        );
        assert_eq!(
            privacy.is_suppressed(&client, &ana).await,
            Ok(false),
            "read again, then answered"
        );
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 3);
        let without_list = Privacy::deferred(loader(&secret, usize::MAX, Arc::clone(&reads)), None);
        assert_eq!(
            without_list.is_suppressed(&client, &ana).await,
            Ok(false),
            "no suppression list: no key needed"
        );
    }
}
