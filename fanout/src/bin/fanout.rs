//! The `fanout` Lambda: DynamoDB Streams (navigation table, NEW_IMAGE) → the CRM queues.
//!
//! Env: `QUEUE_URL_RESPONSYS`, `QUEUE_URL_SALESFORCE`, `QUEUE_URL_RDSTATION`, the matching
//! `DLQ_URL_*` (records too large for a message are dead-lettered on purpose), and
//! `ALERT_TOPIC_ARN`. Answers with `batchItemFailures` (ReportBatchItemFailures).

use aws::env::{self, ALERT_TOPIC_ARN};
use aws::{SnsAlerts, SqsQueues};
use aws_lambda_events::dynamodb::Event;
use domain::{Clock, Crm, QueueKind, SystemClock};
use fanout::lambda::{batch_response, change_records};
use fanout::{FanoutHandler, FanoutOutcome, FanoutSettings};
use lambda_runtime::{Error, LambdaEvent, service_fn};

/// One EMF line per CRM with what the batch did.
fn emit_metrics(outcome: &FanoutOutcome) {
    use domain::metrics as m;
    let now = SystemClock.now_ms();
    for crm in Crm::all() {
        let get =
            |m: &std::collections::BTreeMap<Crm, u64>| m.get(&crm).copied().unwrap_or(0) as f64;
        let (routed, dead, failed) = (
            get(&outcome.routed),
            get(&outcome.dead_lettered),
            get(&outcome.failed),
        );
        if routed + dead + failed > 0.0 {
            println!(
                "{}",
                domain::emf::line(
                    now,
                    &[("crm", crm.as_str())],
                    &[
                        (m::ROUTED.name, routed, m::ROUTED.emf_unit()),
                        (
                            m::FANOUT_DEAD_LETTERED.name,
                            dead,
                            m::FANOUT_DEAD_LETTERED.emf_unit()
                        ),
                        (m::FANOUT_FAILED.name, failed, m::FANOUT_FAILED.emf_unit()),
                    ],
                )
            );
        }
    }
    // The total without dimensions: what the partial-failure alarm watches.
    let failed_total: u64 = outcome.failed.values().sum();
    if failed_total > 0 {
        println!(
            "{}",
            domain::emf::line(
                now,
                &[],
                &[(
                    m::FANOUT_FAILED.name,
                    failed_total as f64,
                    m::FANOUT_FAILED.emf_unit()
                )]
            )
        );
    }
    let skipped = outcome.skipped_total();
    if skipped > 0 {
        println!(
            "{}",
            domain::emf::line(
                now,
                &[],
                &[(m::SKIPPED.name, skipped as f64, m::SKIPPED.emf_unit())]
            )
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = aws::env::sdk_config().await?;
    let mut queues = SqsQueues::new(aws_sdk_sqs::Client::new(&config));
    for crm in Crm::all() {
        queues = queues
            .with_queue(
                crm,
                QueueKind::Delivery,
                env::required_named(&env::queue_url_var(crm))?,
            )
            .with_queue(
                crm,
                QueueKind::DeadLetter,
                env::required_named(&env::dlq_url_var(crm))?,
            );
    }
    let alerts = SnsAlerts::new(
        aws_sdk_sns::Client::new(&config),
        env::required(ALERT_TOPIC_ARN)?,
    );
    let handler = FanoutHandler::new(
        queues,
        alerts,
        SystemClock,
        FanoutSettings::default(),
        "fanout",
    );
    let handler = &handler;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| async move {
        let changes = change_records(&event.payload);
        let outcome = handler.handle(&changes).await;
        emit_metrics(&outcome);
        Ok::<_, Error>(batch_response(outcome.first_failure))
    }))
    .await
}
