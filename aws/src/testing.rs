//! Helpers for tests against the local AWS API emulator (moto server).
//!
//! `./scripts/test` starts moto, exports `AWS_ENDPOINT_URL` and dummy credentials, and
//! sets `CONNECT_REQUIRE_MOTO=1` so these tests can never be skipped silently in CI. Run
//! alone without an emulator (plain `cargo test`), they print why they are skipped.

/// The SDK config pointing at the emulator, or `None` (test skipped) when
/// `AWS_ENDPOINT_URL` is unset and `CONNECT_REQUIRE_MOTO` is not.
///
/// # Panics
/// When `CONNECT_REQUIRE_MOTO` is set but `AWS_ENDPOINT_URL` is not.
#[allow(clippy::panic)]
pub async fn emulator_config() -> Option<aws_config::SdkConfig> {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        if std::env::var("CONNECT_REQUIRE_MOTO").is_ok() {
            panic!("CONNECT_REQUIRE_MOTO is set but AWS_ENDPOINT_URL is not: run ./scripts/test");
        }
        eprintln!("skipped: AWS_ENDPOINT_URL is not set (./scripts/test starts moto server)");
        return None;
    }
    Some(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await,
    )
}

/// A name unique to this test run, for tables and queues.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// An SNS topic with an SQS queue subscribed to it (how tests read alerts on the
/// emulator): (topic ARN, queue URL).
///
/// # Panics
/// When the emulator refuses a call.
pub async fn topic_with_queue(config: &aws_config::SdkConfig) -> (String, String) {
    let sqs = aws_sdk_sqs::Client::new(config);
    let sns = aws_sdk_sns::Client::new(config);
    let queue = sqs
        .create_queue()
        .queue_name(unique("alerts"))
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("queue arn");
    let topic = sns
        .create_topic()
        .name(unique("connect-errors"))
        .send()
        .await
        .expect("create topic")
        .topic_arn
        .expect("topic arn");
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(queue_arn)
        .send()
        .await
        .expect("subscribe");
    (topic, queue)
}

/// Every alert that reached `queue` (the JSON `Message` of each SNS envelope).
///
/// # Panics
/// When the emulator refuses a call or a message is not an SNS envelope of JSON.
pub async fn received_alerts(
    config: &aws_config::SdkConfig,
    queue: &str,
) -> Vec<serde_json::Value> {
    let sqs = aws_sdk_sqs::Client::new(config);
    let mut alerts = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        if out.messages().is_empty() {
            return alerts;
        }
        for m in out.messages() {
            let envelope: serde_json::Value =
                serde_json::from_str(m.body().expect("body")).expect("SNS envelope");
            alerts.push(
                serde_json::from_str(envelope["Message"].as_str().expect("Message"))
                    .expect("alert JSON"),
            );
        }
    }
}
