//! The ports: narrow traits the handlers are written against. Adapters live in `aws`
//! (DynamoDB, SQS, …) and `local` (SQLite).

use crate::client::{ClientConfig, RdStationConfig};
use crate::crm::Crm;
use crate::event::ClientId;
use crate::record::NavigationRecord;
use async_trait::async_trait;

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
    /// is durable.
    async fn put_if_absent(&self, record: &NavigationRecord) -> Result<PutOutcome, StoreError>;
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
