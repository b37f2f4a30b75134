//! The `deliver` Lambda of one CRM: SQS (ReportBatchItemFailures) → the CRM.
//!
//! Env: `CRM`, `QUEUE_URL`, `DLQ_URL`, `CLIENTS_TABLE`, `RDSTATION_CONFIG_TABLE`,
//! `TOKENS_TABLE`, `ALERT_TOPIC_ARN`.

use aws::env::{
    self, ALERT_TOPIC_ARN, CLIENTS_TABLE, CRM, DLQ_URL, QUEUE_URL, RDSTATION_CONFIG_TABLE,
    TOKENS_TABLE,
};
use aws::{DynamoClientDirectory, DynamoTokens, SecretsManager, SnsAlerts, SqsQueues};
use aws_lambda_events::sqs::SqsEvent;
use deliver::lambda::{batch_response, inbound};
use deliver::{DeliverHandler, DeliverOutcome, DeliverSettings};
use domain::alerts::{DEFAULT_ALERT_WINDOW_MS, DedupAlerts};
use domain::{Clock, Crm, QueueKind, SystemClock};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use std::collections::BTreeMap;

/// EMF lines of `domain::metrics` (namespace Connect, dimensions crm + clientId):
/// Delivered, Retried, Throttled, DeadLettered, DeliveryLatency; DeliverySkipped by
/// reason; TokenRefreshesForced by crm.
fn emit_metrics(crm: Crm, outcome: &DeliverOutcome) {
    use domain::metrics as m;
    let now = SystemClock.now_ms();
    let mut by_client: BTreeMap<&str, [f64; 4]> = BTreeMap::new();
    for ((client, kind), n) in &outcome.counts {
        if kind.starts_with("skipped_") {
            println!(
                "{}",
                m::DELIVERY_SKIPPED.emf_line(now, &[crm.as_str(), client, kind], *n as f64)
            );
            continue;
        }
        let slot = match *kind {
            "delivered" => 0,
            "retried" => 1,
            "throttled" => 2,
            _ => 3,
        };
        by_client.entry(client.as_str()).or_default()[slot] += *n as f64;
    }
    for (client, [d, r, t, x]) in by_client {
        println!(
            "{}",
            domain::emf::line(
                now,
                &[("crm", crm.as_str()), ("clientId", client)],
                &[
                    (m::DELIVERED.name, d, m::DELIVERED.emf_unit()),
                    (m::RETRIED.name, r, m::RETRIED.emf_unit()),
                    (m::THROTTLED.name, t, m::THROTTLED.emf_unit()),
                    (m::DEAD_LETTERED.name, x, m::DEAD_LETTERED.emf_unit())
                ],
            )
        );
    }
    let mut latencies: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (client, ms) in &outcome.latencies_ms {
        latencies
            .entry(client.as_str())
            .or_default()
            .push(*ms as f64);
    }
    for (client, values) in latencies {
        println!(
            "{}",
            domain::emf::values_line(
                now,
                &[("crm", crm.as_str()), ("clientId", client)],
                m::DELIVERY_LATENCY.name,
                &values,
                m::DELIVERY_LATENCY.emf_unit()
            )
        );
    }
    if outcome.token_refreshes > 0 {
        println!(
            "{}",
            m::TOKEN_REFRESHES_FORCED.emf_line(
                now,
                &[crm.as_str()],
                outcome.token_refreshes as f64
            )
        );
    }
}

/// `DeliverSettings` from the environment: `RETRY_WINDOW_SECONDS` (default 86400),
/// `RETRY_BASE_SECONDS` (10), `RETRY_MAX_SECONDS` (900).
fn settings(crm: Crm) -> Result<DeliverSettings, Error> {
    let mut settings = DeliverSettings::for_crm(crm);
    let seconds = |name: &str| -> Result<Option<std::time::Duration>, Error> {
        match std::env::var(name) {
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .map(|s| Some(std::time::Duration::from_secs(s.max(1))))
                .map_err(|_| format!("{name} must be a whole number of seconds, not {v:?}").into()),
            Err(_) => Ok(None),
        }
    };
    if let Some(w) = seconds("RETRY_WINDOW_SECONDS")? {
        settings.retry_window = w;
    }
    if let Some(b) = seconds("RETRY_BASE_SECONDS")? {
        settings.retry_base = b;
    }
    if let Some(m) = seconds("RETRY_MAX_SECONDS")? {
        settings.retry_max = m;
    }
    Ok(settings)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let crm: Crm = env::required(CRM)?.parse()?;
    let config = aws::env::sdk_config().await?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    // One Secrets Manager client: the installation key's read and the CRM credentials.
    let secrets = SecretsManager::new(aws_sdk_secretsmanager::Client::new(&config));
    let privacy = aws::privacy::from_env(&dynamodb, &secrets);
    let queues = SqsQueues::new(aws_sdk_sqs::Client::new(&config))
        .with_queue(crm, QueueKind::Delivery, env::required(QUEUE_URL)?)
        .with_queue(crm, QueueKind::DeadLetter, env::required(DLQ_URL)?);
    let http = crm::CrmHttp::new(&crm::HttpSettings::default())?;
    let tokens = std::sync::Arc::new(crm::TokenManager::new(
        DynamoTokens::new(dynamodb.clone(), env::required(TOKENS_TABLE)?),
        secrets,
        SystemClock,
        http.clone(),
    ));
    let alerts = DedupAlerts::new(
        SnsAlerts::new(
            aws_sdk_sns::Client::new(&config),
            env::required(ALERT_TOPIC_ARN)?,
        ),
        SystemClock,
        DEFAULT_ALERT_WINDOW_MS,
    );
    let handler = DeliverHandler::new(
        crm,
        DynamoClientDirectory::new(
            dynamodb,
            env::required(CLIENTS_TABLE)?,
            env::required(RDSTATION_CONFIG_TABLE)?,
        ),
        tokens,
        http,
        queues,
        alerts,
        SystemClock,
        settings(crm)?,
    )
    .with_privacy(privacy);
    let handler = &handler;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let outcome = handler.handle(&inbound(&event.payload)).await;
        emit_metrics(crm, &outcome);
        Ok::<_, Error>(batch_response(&outcome.redeliver))
    }))
    .await
}
