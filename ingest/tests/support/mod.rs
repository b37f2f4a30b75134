//! Shared by the handler tests that are about decisions, not storage.

use async_trait::async_trait;
use domain::{NavigationRecord, PutOutcome, RecordStore, StoreError};
use std::sync::Mutex;

/// Records kept in memory: these tests are about the handler's decisions; storage is
/// tested against SQLite and DynamoDB elsewhere.
#[derive(Default)]
pub struct Kept(pub Mutex<Vec<NavigationRecord>>);

#[async_trait]
impl RecordStore for Kept {
    async fn put_if_absent(&self, record: &NavigationRecord) -> Result<PutOutcome, StoreError> {
        self.0.lock().expect("lock").push(record.clone());
        Ok(PutOutcome::Created)
    }
}
