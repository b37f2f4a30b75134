//! DynamoDB adapters: navigation records, clients, RD Station config.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use domain::{
    AllowedOrigins, ClientConfig, ClientDirectory, ClientId, Crm, NavigationRecord, PutOutcome,
    RdStationConfig, RecordStore, StoreError,
};
use std::collections::HashMap;

/// `timestamp` of the idempotency marker items written before the one-write design
/// (below). The stream consumer and the readers still skip them until they expire.
pub const MARKER_TIMESTAMP: i64 = 0;
/// Value of the `marker` attribute of those markers.
pub const MARKER_KIND: &str = "idempotency";
/// Attribute holding the receipt time of an idempotent record, whose `timestamp` key is
/// the start of its UTC day.
pub const RECEIVED_AT: &str = "receivedAt";
/// One UTC day in ms.
const DAY_MS: i64 = 86_400_000;

/// The item of a record, as stored.
///
/// The navigation table's key is (`recordId`, `timestamp`). A record without `eventId`
/// is keyed by its receipt time. An idempotent record (with `eventId`, hence a
/// deterministic `recordId` that names its UTC day) is keyed by the *start of that day*
/// and keeps its receipt time in [`RECEIVED_AT`]: its key is then the same for every
/// retry of the event, and one conditional put (`attribute_not_exists(recordId)`, one
/// write unit for an item up to 1 KB) refuses the duplicate — where a marker item
/// written in the same transaction cost four write units.
pub fn record_item(
    record: &NavigationRecord,
) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let mut item: HashMap<String, AttributeValue> =
        serde_dynamo::to_item(record).map_err(corrupt)?;
    if record.is_idempotent() {
        let day_start = record.timestamp - record.timestamp.rem_euclid(DAY_MS);
        item.insert(
            RECEIVED_AT.to_owned(),
            AttributeValue::N(record.timestamp.to_string()),
        );
        item.insert(
            "timestamp".to_owned(),
            AttributeValue::N(day_start.to_string()),
        );
    }
    Ok(item)
}

/// The record of a stored item (its receipt time from [`RECEIVED_AT`] when it has one);
/// `None` for an idempotency marker. The item's own key attributes are left as stored.
pub fn record_of_item(
    item: &HashMap<String, AttributeValue>,
) -> Option<Result<NavigationRecord, StoreError>> {
    if item.contains_key("marker") {
        return None;
    }
    let mut item = item.clone();
    if let Some(received) = item.get(RECEIVED_AT).cloned() {
        item.insert("timestamp".to_owned(), received);
    }
    Some(serde_dynamo::from_item(item).map_err(corrupt))
}

fn unavailable<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(DisplayErrorContext(&e).to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The navigation table.
#[derive(Debug, Clone)]
pub struct DynamoRecordStore {
    client: Client,
    table: String,
}

impl DynamoRecordStore {
    /// An adapter over `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoRecordStore {
            client,
            table: table.into(),
        }
    }
}

#[async_trait]
impl RecordStore for DynamoRecordStore {
    async fn put_if_absent(
        &self,
        record: std::sync::Arc<NavigationRecord>,
    ) -> Result<PutOutcome, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record_item(&record)?))
            .condition_expression("attribute_not_exists(recordId)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(PutOutcome::Duplicate)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// The clients and RD Station config tables.
#[derive(Debug, Clone)]
pub struct DynamoClientDirectory {
    client: Client,
    clients_table: String,
    rdstation_table: String,
}

impl DynamoClientDirectory {
    /// An adapter over the two tables.
    pub fn new(
        client: Client,
        clients_table: impl Into<String>,
        rdstation_table: impl Into<String>,
    ) -> Self {
        DynamoClientDirectory {
            client,
            clients_table: clients_table.into(),
            rdstation_table: rdstation_table.into(),
        }
    }

    /// Creates or replaces a client item (used by onboarding tools and tests).
    pub async fn put_client(&self, client: &ClientConfig) -> Result<(), StoreError> {
        self.put(&self.clients_table, client).await
    }

    /// Deletes a client item; whether there was one.
    pub async fn delete_client(&self, id: &ClientId) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.clients_table)
            .key("clientId", AttributeValue::S(id.to_string()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    /// Creates or replaces an RD Station config item.
    pub async fn put_rdstation(&self, config: &RdStationConfig) -> Result<(), StoreError> {
        self.put(&self.rdstation_table, config).await
    }

    async fn put<T: serde::Serialize>(&self, table: &str, value: &T) -> Result<(), StoreError> {
        let item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(value).map_err(corrupt)?;
        self.client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        value: String,
    ) -> Result<Option<T>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .key(key, AttributeValue::S(value))
            .send()
            .await
            .map_err(unavailable)?;
        out.item
            .map(|item| serde_dynamo::from_item(item).map_err(corrupt))
            .transpose()
    }
}

#[async_trait]
impl ClientDirectory for DynamoClientDirectory {
    async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, StoreError> {
        self.get(&self.clients_table, "clientId", id.to_string())
            .await
    }

    async fn rdstation_by_tid(&self, tid: &str) -> Result<Option<RdStationConfig>, StoreError> {
        self.get(&self.rdstation_table, "tid", tid.to_owned()).await
    }

    /// A paginated Scan of the (small) clients table, projected to the origins; the
    /// handler caches the answer.
    async fn origins_for(&self, crm: Crm) -> Result<Vec<String>, StoreError> {
        let mut origins = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.clients_table)
            .filter_expression("crm = :crm AND active = :active")
            .projection_expression("allowedOrigins")
            .expression_attribute_values(":crm", AttributeValue::S(crm.as_str().to_owned()))
            .expression_attribute_values(":active", AttributeValue::Bool(true))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(unavailable)?;
            if let Some(value) = item.get("allowedOrigins") {
                let list: AllowedOrigins =
                    serde_dynamo::from_attribute_value(value.clone()).map_err(corrupt)?;
                origins.extend(list.0);
            }
        }
        origins.sort();
        origins.dedup();
        Ok(origins)
    }

    async fn clients_of(&self, crm: Crm) -> Result<Vec<ClientConfig>, StoreError> {
        let mut clients = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.clients_table)
            .filter_expression("crm = :crm")
            .expression_attribute_values(":crm", AttributeValue::S(crm.as_str().to_owned()))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(unavailable)?;
            clients.push(serde_dynamo::from_item(item).map_err(corrupt)?);
        }
        clients.sort_by(|a: &ClientConfig, b| a.client_id.cmp(&b.client_id));
        Ok(clients)
    }
}
