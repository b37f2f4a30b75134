//! The `token` Lambda of one CRM: an EventBridge schedule (no `input:`, so the envelope
//! stays intact; `detail.clientId` may narrow it to one client) → refresh what is due.
//!
//! Env: `CRM`, `CLIENTS_TABLE`, `RDSTATION_CONFIG_TABLE`, `TOKENS_TABLE`, `ALERT_TOPIC_ARN`.

use aws::env::{self, ALERT_TOPIC_ARN, CLIENTS_TABLE, CRM, RDSTATION_CONFIG_TABLE, TOKENS_TABLE};
use aws::{DynamoClientDirectory, DynamoTokens, SecretsManager, SnsAlerts};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use domain::{Crm, SystemClock};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use std::time::Duration;
use token::{TokenHandler, TokenSettings};

/// Time kept back from the invocation's deadline to answer.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let crm: Crm = env::required(CRM)?.parse()?;
    let config = aws::env::sdk_config().await?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let http = crm::CrmHttp::new(&crm::HttpSettings::default())?;
    let handler = TokenHandler::new(
        crm,
        DynamoClientDirectory::new(
            dynamodb.clone(),
            env::required(CLIENTS_TABLE)?,
            env::required(RDSTATION_CONFIG_TABLE)?,
        ),
        std::sync::Arc::new(crm::TokenManager::new(
            DynamoTokens::new(dynamodb, env::required(TOKENS_TABLE)?),
            SecretsManager::new(aws_sdk_secretsmanager::Client::new(&config)),
            SystemClock,
            http,
        )),
        SnsAlerts::new(
            aws_sdk_sns::Client::new(&config),
            env::required(ALERT_TOPIC_ARN)?,
        ),
        SystemClock,
        TokenSettings::default(),
    );
    let handler = &handler;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<serde_json::Value>>| async move {
            let only = token::client_of(&event.payload.detail);
            let deadline = token::deadline(event.context.deadline, DEADLINE_MARGIN);
            let summary = handler.handle(only.as_ref(), false, Some(deadline)).await;
            Ok::<_, Error>(serde_json::to_value(summary)?)
        },
    ))
    .await
}
