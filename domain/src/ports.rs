//! The ports: narrow traits the handlers are written against. Adapters live in `aws`
//! (DynamoDB, SQS, …) and `local` (SQLite).

use crate::client::{ClientConfig, RdStationConfig};
use crate::crm::Crm;
use crate::event::ClientId;
use crate::record::NavigationRecord;
use async_trait::async_trait;
use std::borrow::Cow;

/// A failure of a store or directory. Never caused by the caller's input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the operation; retrying may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// An item in the store does not have the expected shape.
    #[error("stored item is malformed: {0}")]
    Corrupt(String),
}

/// What a put-if-absent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The record is now stored (durably, when the call returns).
    Created,
    /// A record with that id was already stored; nothing changed.
    Duplicate,
}

/// The navigation-data buffer.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Stores `record` unless a record with its id exists. Returns only once the write
    /// is durable. The record is shared: a store may keep it (the local store hands the
    /// records it committed to its change feed's consumer).
    async fn put_if_absent(
        &self,
        record: std::sync::Arc<NavigationRecord>,
    ) -> Result<PutOutcome, StoreError>;
}

/// Client configuration lookups.
#[async_trait]
pub trait ClientDirectory: Send + Sync {
    /// The client with this id, active or not.
    async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, StoreError>;
    /// The RD Station config of a GA4 `tid`.
    async fn rdstation_by_tid(&self, tid: &str) -> Result<Option<RdStationConfig>, StoreError>;
    /// Every allowed origin of the active clients of `crm` (answers CORS preflights,
    /// which carry no body and so no client).
    async fn origins_for(&self, crm: Crm) -> Result<Vec<String>, StoreError>;
    /// Every client of `crm`, active or not (the token schedule, operator tools).
    async fn clients_of(&self, crm: Crm) -> Result<Vec<ClientConfig>, StoreError>;
}

/// The time source (a port so tests can pin it).
pub trait Clock: Send + Sync {
    /// Now, epoch milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Which queue of a CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// The delivery queue.
    Delivery,
    /// Its dead-letter queue.
    DeadLetter,
}

/// One string message attribute, name and value: borrowed when it is a constant (every
/// name, a CRM, an event type), owned otherwise (a client id, a failure's time). The
/// fanout writes one set per event; constants are not copied into it.
pub type Attribute = (Cow<'static, str>, Cow<'static, str>);

/// One message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// Batch entry id: unique in the batch, stable per record across retries
    /// (`[A-Za-z0-9_-]{1,80}`).
    pub id: String,
    /// The body.
    pub body: String,
    /// String message attributes.
    pub attributes: Vec<Attribute>,
}

/// An entry of a batch the queue did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// The entry id.
    pub id: String,
    /// The queue's error code.
    pub code: String,
    /// `true` when the entry itself is at fault (retrying it unchanged will fail again).
    pub sender_fault: bool,
}

/// A queue operation that failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue service failed or could not be reached; retrying may work.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// No queue is configured for this CRM.
    #[error("no {1:?} queue is configured for {0}")]
    NotConfigured(Crm, QueueKind),
}

/// Sends messages to the CRM queues (SQS, or the local queue tables).
#[async_trait]
pub trait QueueSender: Send + Sync {
    /// Sends up to 10 messages to one queue. Returns the entries that were not accepted
    /// (empty: all were).
    async fn send_batch(
        &self,
        crm: Crm,
        queue: QueueKind,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<SendFailure>, QueueError>;
}

/// An operator alert: never a secret, never a clear email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// What failed (`too_large`, `token_rejected`, …).
    pub kind: String,
    /// The function or component raising it (`fanout`, `deliver-responsys`, …).
    pub source: String,
    /// The CRM concerned.
    pub crm: Option<Crm>,
    /// The client concerned.
    pub client_id: Option<ClientId>,
    /// How many occurrences this alert stands for.
    pub count: u64,
    /// A sentence for the operator.
    pub message: String,
}

/// Where alerts go (SNS on AWS; a log line and an optional webhook locally).
#[async_trait]
pub trait AlertSink: Send + Sync {
    /// Sends one alert. Failing to alert never fails the caller's work: the sink logs.
    async fn alert(&self, alert: &Alert);
}

/// Ports are usable through shared references and `Arc`s (one adapter, many users).
macro_rules! forward_ports {
    ($($wrapper:ty),*) => {$(
        #[async_trait]
        impl<T: QueueSender + ?Sized> QueueSender for $wrapper {
            async fn send_batch(
                &self,
                crm: Crm,
                queue: QueueKind,
                messages: &[OutgoingMessage],
            ) -> Result<Vec<SendFailure>, QueueError> {
                (**self).send_batch(crm, queue, messages).await
            }
        }
        #[async_trait]
        impl<T: AlertSink + ?Sized> AlertSink for $wrapper {
            async fn alert(&self, alert: &Alert) {
                (**self).alert(alert).await
            }
        }
        #[async_trait]
        impl<T: RecordStore + ?Sized> RecordStore for $wrapper {
            async fn put_if_absent(&self, record: std::sync::Arc<NavigationRecord>) -> Result<PutOutcome, StoreError> {
                (**self).put_if_absent(record).await
            }
        }
        #[async_trait]
        impl<T: ClientDirectory + ?Sized> ClientDirectory for $wrapper {
            async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, StoreError> {
                (**self).client(id).await
            }
            async fn rdstation_by_tid(&self, tid: &str) -> Result<Option<RdStationConfig>, StoreError> {
                (**self).rdstation_by_tid(tid).await
            }
            async fn origins_for(&self, crm: Crm) -> Result<Vec<String>, StoreError> {
                (**self).origins_for(crm).await
            }
            async fn clients_of(&self, crm: Crm) -> Result<Vec<ClientConfig>, StoreError> {
                (**self).clients_of(crm).await
            }
        }
        #[async_trait]
        impl<T: TokenStore + ?Sized> TokenStore for $wrapper {
            async fn get_token(&self, client: &ClientId, crm: Crm) -> Result<Option<crate::token::StoredToken>, StoreError> {
                (**self).get_token(client, crm).await
            }
            async fn put_token_if_newer(&self, token: &crate::token::StoredToken) -> Result<bool, StoreError> {
                (**self).put_token_if_newer(token).await
            }
            async fn record_refresh(&self, client: &ClientId, crm: Crm, status: &crate::token::RefreshStatus) -> Result<(), StoreError> {
                (**self).record_refresh(client, crm, status).await
            }
            async fn refresh_status(&self, client: &ClientId, crm: Crm) -> Result<Option<crate::token::RefreshStatus>, StoreError> {
                (**self).refresh_status(client, crm).await
            }
            async fn acquire_refresh_lease(&self, client: &ClientId, crm: Crm, holder: &str, until_ms: i64, now_ms: i64) -> Result<bool, StoreError> {
                (**self).acquire_refresh_lease(client, crm, holder, until_ms, now_ms).await
            }
            async fn release_refresh_lease(&self, client: &ClientId, crm: Crm, holder: &str) -> Result<(), StoreError> {
                (**self).release_refresh_lease(client, crm, holder).await
            }
        }
        #[async_trait]
        impl<T: SecretStore + ?Sized> SecretStore for $wrapper {
            async fn get_secret(&self, name: &str) -> Result<Option<crate::Secret<String>>, StoreError> {
                (**self).get_secret(name).await
            }
            async fn put_secret(&self, name: &str, value: &crate::Secret<String>) -> Result<(), StoreError> {
                (**self).put_secret(name, value).await
            }
        }
    )*};
}

forward_ports!(&T, std::sync::Arc<T>);

/// The tokens table.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// The cached token of a client for a CRM.
    async fn get_token(
        &self,
        client: &ClientId,
        crm: Crm,
    ) -> Result<Option<crate::token::StoredToken>, StoreError>;
    /// Stores `token` unless the stored one was issued later (a conditional write: two
    /// refreshers never leave the older token stored). Returns whether it was written.
    async fn put_token_if_newer(
        &self,
        token: &crate::token::StoredToken,
    ) -> Result<bool, StoreError>;
    /// Records the result of a refresh attempt (shown by `connect tokens`; a failing
    /// client stays marked until a refresh succeeds).
    async fn record_refresh(
        &self,
        client: &ClientId,
        crm: Crm,
        status: &crate::token::RefreshStatus,
    ) -> Result<(), StoreError>;
    /// The result of the last refresh attempt.
    async fn refresh_status(
        &self,
        client: &ClientId,
        crm: Crm,
    ) -> Result<Option<crate::token::RefreshStatus>, StoreError>;
    /// Takes the refresh lease of (client, CRM) for `holder` until `until_ms`, unless
    /// another holder's lease runs past `now_ms` (a conditional write: across processes,
    /// one refresher at a time — an RD Station refresh retires the refresh token it used,
    /// so two at once could save a dead one). Returns whether it was taken.
    async fn acquire_refresh_lease(
        &self,
        client: &ClientId,
        crm: Crm,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Gives the lease back (only `holder`'s).
    async fn release_refresh_lease(
        &self,
        client: &ClientId,
        crm: Crm,
        holder: &str,
    ) -> Result<(), StoreError>;
}

/// Secrets (Secrets Manager on AWS, a local file otherwise).
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The secret's current value.
    async fn get_secret(&self, name: &str) -> Result<Option<crate::Secret<String>>, StoreError>;
    /// Replaces the secret's value (RD Station refresh-token rotation).
    async fn put_secret(&self, name: &str, value: &crate::Secret<String>)
    -> Result<(), StoreError>;
}

/// Visibility control of received messages.
#[async_trait]
pub trait QueueControl: Send + Sync {
    /// Hides a received message for `timeout` from now (`ChangeMessageVisibility`).
    async fn change_visibility(
        &self,
        crm: Crm,
        receipt_handle: &str,
        timeout: std::time::Duration,
    ) -> Result<(), QueueError>;
}
