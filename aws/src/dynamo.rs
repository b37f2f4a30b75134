//! DynamoDB adapters: navigation records, clients, RD Station config.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use domain::{
    AllowedOrigins, ClientConfig, ClientDirectory, ClientId, Crm, NavigationRecord, PutOutcome,
    RdStationConfig, RecordStore, StoreError,
};
use std::collections::HashMap;

/// `timestamp` of the idempotency marker item that guards an `eventId`.
///
/// The navigation table's key is (`recordId`, `timestamp`), so a condition on
/// `attribute_not_exists(recordId)` only sees an item with the *same* timestamp, and a
/// retry received a millisecond later would be stored again. An idempotent record is
/// therefore written in one transaction with a marker item (`recordId`, `timestamp = 0`)
/// whose conditional put fails if the event was stored before. The marker has no
/// `eventType`, carries `marker = "idempotency"` and the record's `ttl`; the stream
/// consumer skips it.
pub const MARKER_TIMESTAMP: i64 = 0;
/// Value of the `marker` attribute of idempotency markers.
pub const MARKER_KIND: &str = "idempotency";

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
    async fn put_if_absent(&self, record: &NavigationRecord) -> Result<PutOutcome, StoreError> {
        let item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(record).map_err(corrupt)?;
        if !record.is_idempotent() {
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(recordId)")
                .send()
                .await;
            return match result {
                Ok(_) => Ok(PutOutcome::Created),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    Ok(PutOutcome::Duplicate)
                }
                Err(e) => Err(unavailable(e)),
            };
        }
        let marker = HashMap::from([
            (
                "recordId".to_owned(),
                AttributeValue::S(record.record_id.clone()),
            ),
            (
                "timestamp".to_owned(),
                AttributeValue::N(MARKER_TIMESTAMP.to_string()),
            ),
            (
                "marker".to_owned(),
                AttributeValue::S(MARKER_KIND.to_owned()),
            ),
            (
                "clientId".to_owned(),
                AttributeValue::S(record.client_id.to_string()),
            ),
            ("ttl".to_owned(), AttributeValue::N(record.ttl.to_string())),
        ]);
        let put = |item, condition: bool| {
            let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
            if condition {
                put = put.condition_expression("attribute_not_exists(recordId)");
            }
            put.build()
                .map(|p| TransactWriteItem::builder().put(p).build())
                .map_err(corrupt)
        };
        let result = self
            .client
            .transact_write_items()
            .transact_items(put(marker, true)?)
            .transact_items(put(item, true)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) => {
                let duplicate = e
                    .as_service_error()
                    .and_then(|s| match s {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
                        _ => None,
                    })
                    .is_some_and(|c| {
                        c.cancellation_reasons().first().and_then(|r| r.code())
                            == Some("ConditionalCheckFailed")
                    });
                if duplicate {
                    Ok(PutOutcome::Duplicate)
                } else {
                    Err(unavailable(e))
                }
            }
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
