//! The suppression table (LGPD): key `emailKey` (a keyed hash of the email) + `scope`
//! (a client id, or `*` for every client). The audit trail lives in the same table under
//! the partition `#audit` (sort key `{at}#{uuid}`), so the functions need no other table.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use domain::privacy::{AuditRecord, GLOBAL_SCOPE, SuppressionStore};
use domain::{ClientId, StoreError};

/// Partition key of audit records.
pub const AUDIT_PARTITION: &str = "#audit";

/// The suppression table.
#[derive(Debug, Clone)]
pub struct DynamoSuppressions {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn unavailable(e: impl std::error::Error + 'static) -> StoreError {
    StoreError::Unavailable(DisplayErrorContext(&e).to_string())
}

impl DynamoSuppressions {
    /// An adapter over `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoSuppressions {
            client,
            table: table.into(),
        }
    }

    /// Every audit record, oldest first (operator tools, tests).
    pub async fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("emailKey = :p")
            .expression_attribute_values(":p", AttributeValue::S(AUDIT_PARTITION.into()))
            .send()
            .await
            .map_err(unavailable)?;
        out.items()
            .iter()
            .map(|i| {
                i.get("item")
                    .and_then(|v| v.as_s().ok())
                    .ok_or_else(|| StoreError::Corrupt("audit item without item".into()))
                    .and_then(|s| {
                        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
                    })
            })
            .collect()
    }
}

#[async_trait]
impl SuppressionStore for DynamoSuppressions {
    /// One query on the email's partition: its client and global entries.
    async fn is_suppressed(&self, client: &ClientId, email_key: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("emailKey = :k")
            .expression_attribute_values(":k", AttributeValue::S(email_key.to_owned()))
            .projection_expression("#s")
            .expression_attribute_names("#s", "scope")
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.items().iter().any(|i| {
            i.get("scope")
                .and_then(|v| v.as_s().ok())
                .is_some_and(|s| s == GLOBAL_SCOPE || s == client.as_str())
        }))
    }

    async fn suppress(&self, scope: &str, email_key: &str, at_ms: i64) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("emailKey", AttributeValue::S(email_key.to_owned()))
            .item("scope", AttributeValue::S(scope.to_owned()))
            .item("createdAt", AttributeValue::N(at_ms.to_string()))
            .send()
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn unsuppress(&self, scope: &str, email_key: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("emailKey", AttributeValue::S(email_key.to_owned()))
            .key("scope", AttributeValue::S(scope.to_owned()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    async fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let item = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item("emailKey", AttributeValue::S(AUDIT_PARTITION.into()))
            .item(
                "scope",
                AttributeValue::S(format!(
                    "{:013}#{}",
                    record.at_ms,
                    uuid_like(record.at_ms, &item)
                )),
            )
            .item("item", AttributeValue::S(item))
            .send()
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

/// A distinct suffix for audit sort keys written in the same millisecond.
fn uuid_like(at_ms: i64, item: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("{:016x}", RandomState::new().hash_one((at_ms, item)))
}
