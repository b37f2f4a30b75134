//! Shared by the handler tests that are about decisions, not storage.

use async_trait::async_trait;
use domain::{
    AllowedOrigins, ClientConfig, ClientDirectory, ClientId, ClientPolicy, Crm, NavigationRecord,
    PutOutcome, RdStationConfig, RecordStore, StoreError,
};
use std::sync::Mutex;

/// Records kept in memory: these tests are about the handler's decisions; storage is
/// tested against SQLite and DynamoDB elsewhere.
#[derive(Default)]
pub struct Kept(pub Mutex<Vec<NavigationRecord>>);

#[async_trait]
impl RecordStore for Kept {
    async fn put_if_absent(
        &self,
        record: std::sync::Arc<NavigationRecord>,
    ) -> Result<PutOutcome, StoreError> {
        self.0.lock().expect("lock").push((*record).clone());
        Ok(PutOutcome::Created)
    }
}

/// A directory of one active Responsys client, `shop`, of `https://www.shop.example`,
/// with `policy`.
pub struct OneClient(pub ClientPolicy);

#[async_trait]
impl ClientDirectory for OneClient {
    async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, StoreError> {
        Ok((id.as_str() == "shop").then(|| ClientConfig {
            client_id: id.clone(),
            crm: Crm::RESPONSYS,
            active: true,
            allowed_origins: AllowedOrigins(vec!["https://www.shop.example".into()]),
            target: None,
            secret_name: None,
            rate_limit_per_second: None,
            policy: self.0.clone(),
        }))
    }
    async fn rdstation_by_tid(&self, _: &str) -> Result<Option<RdStationConfig>, StoreError> {
        Ok(None)
    }
    async fn origins_for(&self, _: Crm) -> Result<Vec<String>, StoreError> {
        Ok(vec!["https://www.shop.example".into()])
    }
    async fn clients_of(&self, _: Crm) -> Result<Vec<ClientConfig>, StoreError> {
        Ok(Vec::new())
    }
}
