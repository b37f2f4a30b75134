//! Table definitions matching `serverless.yml`, for tests on the AWS API emulator.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};

/// Names of the four tables.
#[derive(Debug, Clone)]
pub struct TableNames {
    /// Navigation data.
    pub navigation: String,
    /// Clients.
    pub clients: String,
    /// RD Station config.
    pub rdstation: String,
    /// Tokens.
    pub tokens: String,
    /// Suppressions (LGPD) and the audit trail.
    pub suppressions: String,
}

impl TableNames {
    /// Names with a common prefix (tests use a unique one each).
    pub fn with_prefix(prefix: &str) -> Self {
        TableNames {
            navigation: format!("{prefix}-navigation-data"),
            clients: format!("{prefix}-clients"),
            rdstation: format!("{prefix}-rdstation-config"),
            tokens: format!("{prefix}-tokens"),
            suppressions: format!("{prefix}-suppressions"),
        }
    }
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| e.to_string())
}

fn attr(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, String> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| e.to_string())
}

/// Creates the four tables (navigation with a NEW_IMAGE stream). Returns the
/// navigation stream ARN.
pub async fn create_tables(client: &Client, names: &TableNames) -> Result<String, String> {
    let nav = client
        .create_table()
        .table_name(&names.navigation)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("recordId", KeyType::Hash)?)
        .key_schema(key("timestamp", KeyType::Range)?)
        .attribute_definitions(attr("recordId", ScalarAttributeType::S)?)
        .attribute_definitions(attr("timestamp", ScalarAttributeType::N)?)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .send()
        .await
        .map_err(|e| DisplayErrorContext(&e).to_string())?;
    let stream_arn = nav
        .table_description
        .and_then(|d| d.latest_stream_arn)
        .unwrap_or_default();
    for (table, hash, range) in [
        (&names.clients, "clientId", None),
        (&names.rdstation, "tid", None),
        (&names.tokens, "clientId", Some("crm")),
        (&names.suppressions, "emailKey", Some("scope")),
    ] {
        let mut req = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(hash, KeyType::Hash)?)
            .attribute_definitions(attr(hash, ScalarAttributeType::S)?);
        if let Some(range) = range {
            req = req
                .key_schema(key(range, KeyType::Range)?)
                .attribute_definitions(attr(range, ScalarAttributeType::S)?);
        }
        req.send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
    }
    Ok(stream_arn)
}
