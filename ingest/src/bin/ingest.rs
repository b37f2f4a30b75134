//! The `ingest` Lambda: API Gateway (REST, AWS_PROXY) → [`ingest::IngestHandler`].
//!
//! Env: `NAVIGATION_TABLE`, `CLIENTS_TABLE`, `RDSTATION_CONFIG_TABLE`, `RECORD_TTL_HOURS`.

use aws::env::{self, CLIENTS_TABLE, NAVIGATION_TABLE, RDSTATION_CONFIG_TABLE};
use aws::{DynamoClientDirectory, DynamoRecordStore};
use aws_lambda_events::apigw::ApiGatewayProxyRequest;
use domain::SystemClock;
use ingest::lambda::handle_apigw;
use ingest::{IngestHandler, IngestSettings};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = IngestSettings {
        record_ttl_hours: env::record_ttl_hours()?,
        ..IngestSettings::default()
    };
    let navigation = env::required(NAVIGATION_TABLE)?;
    let clients = env::required(CLIENTS_TABLE)?;
    let rdstation = env::required(RDSTATION_CONFIG_TABLE)?;
    // SDK clients are built once per container, outside the handler.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let handler = IngestHandler::new(
        DynamoRecordStore::new(dynamodb.clone(), navigation),
        DynamoClientDirectory::new(dynamodb, clients, rdstation),
        SystemClock,
        settings,
    );
    let handler = &handler;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayProxyRequest>| async move {
            Ok::<_, Error>(handle_apigw(handler, event.payload, &event.context.request_id).await)
        },
    ))
    .await
}
