//! The tokens table (DynamoDB) and Secrets Manager.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use domain::{ClientId, Crm, Secret, SecretStore, StoreError, StoredToken, TokenStore};
use std::collections::HashMap;

fn unavailable<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> StoreError {
    StoreError::Unavailable(DisplayErrorContext(&e).to_string())
}

/// The result of a conditional write: whether its condition held.
fn conditional<T, E, R>(result: Result<T, SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: std::error::Error + ConditionFailed + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(ConditionFailed::condition_failed) =>
        {
            Ok(false)
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Errors that can say "the condition of the write did not hold".
trait ConditionFailed {
    fn condition_failed(&self) -> bool;
}

impl ConditionFailed for aws_sdk_dynamodb::operation::put_item::PutItemError {
    fn condition_failed(&self) -> bool {
        self.is_conditional_check_failed_exception()
    }
}

impl ConditionFailed for aws_sdk_dynamodb::operation::delete_item::DeleteItemError {
    fn condition_failed(&self) -> bool {
        self.is_conditional_check_failed_exception()
    }
}

/// The tokens table: key `clientId` + `crm`.
#[derive(Debug, Clone)]
pub struct DynamoTokens {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoTokens {
    /// An adapter over `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoTokens {
            client,
            table: table.into(),
        }
    }
}

#[async_trait]
impl TokenStore for DynamoTokens {
    async fn get_token(
        &self,
        client: &ClientId,
        crm: Crm,
    ) -> Result<Option<StoredToken>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("clientId", AttributeValue::S(client.to_string()))
            .key("crm", AttributeValue::S(crm.as_str().to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.item
            .map(|i| serde_dynamo::from_item(i).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// A conditional put: only when no token is stored, or the stored one was issued
    /// earlier (or at the same time and stored earlier).
    async fn put_token_if_newer(&self, token: &StoredToken) -> Result<bool, StoreError> {
        let item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(token).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "attribute_not_exists(clientId) OR issuedAt < :issued OR (issuedAt = :issued AND updatedAt < :updated)",
            )
            .expression_attribute_values(":issued", AttributeValue::N(token.issued_at.to_string()))
            .expression_attribute_values(":updated", AttributeValue::N(token.updated_at.to_string()))
            .send()
            .await;
        conditional(result)
    }

    /// Stored in the same table under the sort key `status#{crm}`, so the function needs
    /// no other table.
    async fn record_refresh(
        &self,
        client: &ClientId,
        crm: Crm,
        status: &domain::token::RefreshStatus,
    ) -> Result<(), StoreError> {
        let mut item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(status).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        item.insert("clientId".into(), AttributeValue::S(client.to_string()));
        item.insert(
            "crm".into(),
            AttributeValue::S(format!("{STATUS_PREFIX}{crm}")),
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn refresh_status(
        &self,
        client: &ClientId,
        crm: Crm,
    ) -> Result<Option<domain::token::RefreshStatus>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("clientId", AttributeValue::S(client.to_string()))
            .key("crm", AttributeValue::S(format!("{STATUS_PREFIX}{crm}")))
            .send()
            .await
            .map_err(unavailable)?;
        out.item
            .map(|i| serde_dynamo::from_item(i).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// An item `lease#{crm}` in the tokens table, put on condition that there is none or
    /// it expired (or is the holder's own).
    async fn acquire_refresh_lease(
        &self,
        client: &ClientId,
        crm: Crm,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("clientId", AttributeValue::S(client.to_string()))
            .item("crm", AttributeValue::S(format!("{LEASE_PREFIX}{crm}")))
            .item("holder", AttributeValue::S(holder.to_owned()))
            .item("leaseUntil", AttributeValue::N(until_ms.to_string()))
            .condition_expression(
                "attribute_not_exists(clientId) OR leaseUntil <= :now OR holder = :holder",
            )
            .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
            .expression_attribute_values(":holder", AttributeValue::S(holder.to_owned()))
            .send()
            .await;
        conditional(result)
    }

    async fn release_refresh_lease(
        &self,
        client: &ClientId,
        crm: Crm,
        holder: &str,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("clientId", AttributeValue::S(client.to_string()))
            .key("crm", AttributeValue::S(format!("{LEASE_PREFIX}{crm}")))
            .condition_expression("holder = :holder")
            .expression_attribute_values(":holder", AttributeValue::S(holder.to_owned()))
            .send()
            .await;
        // Not the holder's (any more): nothing to give back.
        conditional(result).map(drop)
    }
}

/// Sort-key prefix of refresh-status items in the tokens table.
pub const STATUS_PREFIX: &str = "status#";
/// Sort-key prefix of refresh-lease items in the tokens table.
pub const LEASE_PREFIX: &str = "lease#";

/// Secrets Manager.
#[derive(Debug, Clone)]
pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManager {
    /// An adapter.
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        SecretsManager { client }
    }
}

#[async_trait]
impl SecretStore for SecretsManager {
    async fn get_secret(&self, name: &str) -> Result<Option<Secret<String>>, StoreError> {
        match self.client.get_secret_value().secret_id(name).send().await {
            Ok(out) => Ok(out.secret_string.map(Secret::new)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(StoreError::Unavailable(
                aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
            )),
        }
    }

    async fn put_secret(&self, name: &str, value: &Secret<String>) -> Result<(), StoreError> {
        self.client
            .put_secret_value()
            .secret_id(name)
            .secret_string(value.expose())
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                StoreError::Unavailable(
                    aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
                )
            })
    }
}
