//! The `ingest` Lambda: API Gateway (REST, AWS_PROXY) → [`ingest::IngestHandler`].
//!
//! Env: `NAVIGATION_TABLE`, `CLIENTS_TABLE`, `RDSTATION_CONFIG_TABLE`, `RECORD_TTL_HOURS`,
//! `ALERT_TOPIC_ARN` (refusal alerts), `REFUSAL_ALERT_THRESHOLD` (default 500; 0: off),
//! `SUPPRESSION_TABLE` (LGPD suppressions; the installation key from Secrets Manager),
//! `INGEST_EVENT_SOURCE` (`apigateway`, the default, or `function-url`).
//! Signing keys are read from Secrets Manager (`/connect/signing/{clientId}` by default).

use aws::env::{self, ALERT_TOPIC_ARN, CLIENTS_TABLE, NAVIGATION_TABLE, RDSTATION_CONFIG_TABLE};
use aws::{DynamoClientDirectory, DynamoRecordStore, SecretsManager, SnsAlerts};
use aws_lambda_events::apigw::ApiGatewayProxyRequest;
use aws_lambda_events::lambda_function_urls::LambdaFunctionUrlRequest;
use domain::SystemClock;
use domain::alerts::{DEFAULT_ALERT_WINDOW_MS, DedupAlerts};
use ingest::lambda::{handle_apigw, handle_function_url};
use ingest::{IngestHandler, IngestSettings};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use std::sync::Arc;

/// Env var naming the front door's event shape (serverless.yml's `custom.frontDoor`):
/// [`API_GATEWAY`] (REST API proxy events, the default) or [`FUNCTION_URL`] (function
/// URL events, behind CloudFront).
const INGEST_EVENT_SOURCE: &str = "INGEST_EVENT_SOURCE";
const API_GATEWAY: &str = "apigateway";
const FUNCTION_URL: &str = "function-url";

/// Env var of [`IngestSettings::refusal_alert_threshold`].
const REFUSAL_ALERT_THRESHOLD: &str = "REFUSAL_ALERT_THRESHOLD";

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let refusal_alert_threshold = match std::env::var(REFUSAL_ALERT_THRESHOLD) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{REFUSAL_ALERT_THRESHOLD} must be a whole number, not {v:?}"))?,
        Err(_) => ingest::handler::DEFAULT_REFUSAL_ALERT_THRESHOLD,
    };
    let settings = IngestSettings {
        record_ttl_hours: env::record_ttl_hours()?,
        refusal_alert_threshold,
        ..IngestSettings::default()
    };
    let navigation = env::required(NAVIGATION_TABLE)?;
    let clients = env::required(CLIENTS_TABLE)?;
    let rdstation = env::required(RDSTATION_CONFIG_TABLE)?;
    // SDK clients are built once per container, outside the handler.
    let config = aws::env::sdk_config().await?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let secrets = SecretsManager::new(aws_sdk_secretsmanager::Client::new(&config));
    let privacy = aws::privacy::from_env(&dynamodb, &secrets);
    let mut handler = IngestHandler::new(
        DynamoRecordStore::new(dynamodb.clone(), navigation),
        DynamoClientDirectory::new(dynamodb, clients, rdstation),
        SystemClock,
        settings,
    )
    .with_signing_keys(Arc::new(secrets))
    .with_privacy(privacy);
    if let Ok(topic) = std::env::var(ALERT_TOPIC_ARN) {
        handler = handler.with_alerts(Arc::new(DedupAlerts::new(
            SnsAlerts::new(aws_sdk_sns::Client::new(&config), topic),
            SystemClock,
            DEFAULT_ALERT_WINDOW_MS,
        )));
    }
    let handler = &handler;
    match std::env::var(INGEST_EVENT_SOURCE).as_deref() {
        Ok(FUNCTION_URL) => {
            lambda_runtime::run(service_fn(
                move |event: LambdaEvent<LambdaFunctionUrlRequest>| async move {
                    Ok::<_, Error>(
                        handle_function_url(handler, event.payload, &event.context.request_id)
                            .await,
                    )
                },
            ))
            .await
        }
        Ok(API_GATEWAY) | Err(std::env::VarError::NotPresent) => {
            lambda_runtime::run(service_fn(
                move |event: LambdaEvent<ApiGatewayProxyRequest>| async move {
                    Ok::<_, Error>(
                        handle_apigw(handler, event.payload, &event.context.request_id).await,
                    )
                },
            ))
            .await
        }
        Ok(other) => Err(format!(
            "{INGEST_EVENT_SOURCE} must be {API_GATEWAY} or {FUNCTION_URL}, not {other:?}"
        )
        .into()),
        Err(e) => Err(format!("{INGEST_EVENT_SOURCE}: {e}").into()),
    }
}
