//! The deliver Lambda's wiring on moto server (DynamoDB clients/tokens, Secrets Manager,
//! SQS, SNS) with the sandbox CRMs: the SQS fixture, a mixed batch, alert de-duplication.

use aws::provision::{TableNames, create_tables};
use aws::testing::{emulator_config, unique};
use aws::{DynamoClientDirectory, DynamoTokens, SecretsManager, SnsAlerts, SqsQueues};
use aws_lambda_events::sqs::SqsEvent;
use deliver::lambda::{batch_response, inbound};
use deliver::{DeliverHandler, DeliverSettings, InboundMessage};
use domain::alerts::DedupAlerts;
use domain::{AllowedOrigins, ClientConfig, ClientId, Crm, QueueKind, SystemClock};
use serde_json::{Value, json};
use std::collections::HashMap;

type Handler = DeliverHandler<
    DynamoClientDirectory,
    DynamoTokens,
    SecretsManager,
    SqsQueues,
    DedupAlerts<SnsAlerts, SystemClock>,
    SystemClock,
>;

struct Env {
    handler: Handler,
    sqs: aws_sdk_sqs::Client,
    queue: String,
    dlq: String,
    alerts_queue: String,
    sandbox: String,
    config: aws_config::SdkConfig,
}

async fn env() -> Option<Env> {
    let config = emulator_config().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sandbox = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(sandbox::serve(listener, sandbox::Sandbox::default()));

    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let names = TableNames::with_prefix(&unique("deliver"));
    create_tables(&ddb, &names).await.expect("tables");
    let directory = DynamoClientDirectory::new(ddb.clone(), &names.clients, &names.rdstation);
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let prefix = unique("s");
    for (client, password) in [("client-abc", "pw"), ("client-bad", "wrong")] {
        let name = format!("/connect/responsys/{prefix}/{client}/credentials");
        secrets
            .create_secret()
            .name(&name)
            .secret_string(json!({"username": client, "password": password, "loginUrl": format!("{sandbox}/responsys")}).to_string())
            .send()
            .await
            .expect("secret");
        directory
            .put_client(&ClientConfig {
                client_id: ClientId::parse(client).expect("id"),
                crm: Crm::RESPONSYS,
                active: true,
                allowed_origins: AllowedOrigins::default(),
                target: None,
                secret_name: Some(name),
                rate_limit_per_second: None,
                policy: domain::ClientPolicy {
                    create_contacts: domain::ContactCreation::All,
                    ..Default::default()
                },
            })
            .await
            .expect("client");
    }
    let sqs = aws_sdk_sqs::Client::new(&config);
    let mk = |n: String| {
        let sqs = sqs.clone();
        async move {
            sqs.create_queue()
                .queue_name(n)
                .send()
                .await
                .expect("queue")
                .queue_url
                .expect("url")
        }
    };
    let (queue, dlq) = (mk(unique("q")).await, mk(unique("dlq")).await);
    let (topic, alerts_queue) = aws::testing::topic_with_queue(&config).await;
    let sns = aws_sdk_sns::Client::new(&config);

    let http = crm::CrmHttp::new(&crm::HttpSettings::default()).expect("http");
    let handler = DeliverHandler::new(
        Crm::RESPONSYS,
        directory,
        std::sync::Arc::new(crm::TokenManager::new(
            DynamoTokens::new(ddb, &names.tokens),
            SecretsManager::new(secrets),
            SystemClock,
            http.clone(),
        )),
        http,
        SqsQueues::new(sqs.clone())
            .with_queue(Crm::RESPONSYS, QueueKind::Delivery, &queue)
            .with_queue(Crm::RESPONSYS, QueueKind::DeadLetter, &dlq),
        DedupAlerts::new(SnsAlerts::new(sns, topic), SystemClock, 300_000),
        SystemClock,
        DeliverSettings::for_crm(Crm::RESPONSYS),
    );
    Some(Env {
        handler,
        sqs,
        queue,
        dlq,
        alerts_queue,
        sandbox,
        config,
    })
}

impl Env {
    async fn receive(&self, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let mut all = Vec::new();
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .expect("receive");
            if out.messages().is_empty() {
                return all;
            }
            all.extend(out.messages().iter().cloned());
        }
    }

    async fn alerts(&self) -> Vec<Value> {
        aws::testing::received_alerts(&self.config, &self.alerts_queue).await
    }

    /// Sends bodies to the delivery queue and receives them (real receipt handles).
    async fn received(&self, bodies: &[(String, &str)]) -> Vec<InboundMessage> {
        for (body, client) in bodies {
            self.sqs
                .send_message()
                .queue_url(&self.queue)
                .message_body(body)
                .message_attributes(
                    "clientId",
                    aws_sdk_sqs::types::MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(*client)
                        .build()
                        .expect("attr"),
                )
                .send()
                .await
                .expect("send");
        }
        self.receive(&self.queue)
            .await
            .into_iter()
            .map(|m| InboundMessage {
                message_id: m.message_id().expect("id").to_owned(),
                receipt_handle: m.receipt_handle().expect("receipt").to_owned(),
                body: m.body().expect("body").to_owned(),
                attributes: m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| {
                                (k.clone(), v.string_value().unwrap_or_default().to_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                receive_count: 1,
                sent_at_ms: None,
            })
            .collect()
    }
}

fn body(client: &str, n: usize) -> String {
    json!({"v": 1, "recordId": format!("{client}-20260128-{n:04}"), "clientId": client, "crm": "responsys",
        "receivedAt": 1_706_457_600_000_i64, "event": {"email": format!("u{n}@example.com"), "eventType": "product_view", "productId": format!("P-{n}")}})
    .to_string()
}

#[tokio::test]
async fn the_sqs_fixture_is_delivered() {
    let Some(env) = env().await else { return };
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/events/sqs-responsys-batch.json"
    ))
    .expect("fixture");
    let event: SqsEvent = serde_json::from_str(&text).expect("event");
    let messages = inbound(&event);
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].receive_count, 1);
    let outcome = env.handler.handle(&messages).await;
    assert!(
        batch_response(&outcome.redeliver)
            .batch_item_failures
            .is_empty(),
        "{outcome:?}"
    );
    let records: Vec<Value> = reqwest::get(format!("{}/_sandbox/records", env.sandbox))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["email"], "bia@example.com");
}

#[tokio::test]
async fn a_mixed_batch_gives_exactly_the_right_failures_dlq_messages_and_visibility() {
    let Some(env) = env().await else { return };
    reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", env.sandbox))
        .json(&json!({"crm": "responsys", "mode": "reject", "rate": 0.5}))
        .send()
        .await
        .expect("fault");
    let batch = env
        .received(&[
            (body("client-abc", 1), "client-abc"),
            (body("client-abc", 2), "client-abc"),
            ("{\"v\": 1, \"broken\"".into(), "client-abc"),
            (body("client-bad", 3), "client-bad"),
        ])
        .await;
    assert_eq!(batch.len(), 4);
    let by_body = |needle: &str| {
        batch
            .iter()
            .find(|m| m.body.contains(needle))
            .expect("message")
            .message_id
            .clone()
    };
    let outcome = env.handler.handle(&batch).await;
    let response = batch_response(&outcome.redeliver);
    let failures: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    // Only client-bad's message is redelivered (its credentials are refused).
    assert_eq!(failures, [by_body("client-bad").as_str()]);
    let dlq = env.receive(&env.dlq).await;
    assert_eq!(dlq.len(), 2, "one MERGEFAILED, one malformed");
    let reasons: Vec<HashMap<String, String>> = dlq
        .iter()
        .map(|m| {
            m.message_attributes()
                .expect("attrs")
                .iter()
                .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
                .collect()
        })
        .collect();
    let mut r: Vec<&str> = reasons
        .iter()
        .map(|a| a["failureReason"].as_str())
        .collect();
    r.sort_unstable();
    assert_eq!(r, ["malformed_message", "rejected_by_crm"]);
    for a in &reasons {
        for key in ["failureStatus", "failedAt", "attempts"] {
            assert!(a.contains_key(key), "{key} in {a:?}");
        }
    }
    // The redelivered message is hidden for its backoff, not visible at once.
    assert!(
        env.receive(&env.queue).await.is_empty(),
        "hidden by ChangeMessageVisibility"
    );
    let alerts = env.alerts().await;
    let kinds: Vec<&str> = alerts
        .iter()
        .map(|a| a["kind"].as_str().expect("kind"))
        .collect();
    assert!(kinds.contains(&"credentials_rejected"), "{alerts:?}");
    assert!(kinds.contains(&"permanent_failure"), "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|a| !a.to_string().contains("wrong") && !a.to_string().contains("@example.com"))
    );
}

#[tokio::test]
async fn a_hundred_failures_of_one_kind_make_one_sns_message_with_count_100() {
    let Some(env) = env().await else { return };
    reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", env.sandbox))
        .json(&json!({"crm": "responsys", "mode": "reject", "rate": 1.0}))
        .send()
        .await
        .expect("fault");
    let batch: Vec<InboundMessage> = (0..100)
        .map(|n| InboundMessage {
            message_id: format!("m-{n}"),
            receipt_handle: format!("r-{n}"),
            body: body("client-abc", n),
            attributes: vec![("clientId".into(), "client-abc".into())],
            receive_count: 1,
            sent_at_ms: None,
        })
        .collect();
    let outcome = env.handler.handle(&batch).await;
    assert!(outcome.redeliver.is_empty());
    let again: Vec<InboundMessage> = batch.iter().take(3).cloned().collect();
    env.handler.handle(&again).await;
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "permanent_failure");
    assert_eq!(alerts[0]["count"], 100);
    assert_eq!(alerts[0]["clientId"], "client-abc");
}

#[tokio::test]
async fn a_crm_error_page_without_a_body_still_reaches_the_sqs_dlq() {
    let Some(env) = env().await else { return };
    reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", env.sandbox))
        .json(&json!({"crm": "responsys", "mode": "html_error", "rate": 1.0}))
        .send()
        .await
        .expect("fault");
    let batch = env.received(&[(body("client-abc", 1), "client-abc")]).await;
    let outcome = env.handler.handle(&batch).await;
    // SQS refuses empty attribute values: had `failureDetail` been empty, the DLQ send
    // would fail and the message loop forever.
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    let dead = env.receive(&env.dlq).await;
    assert_eq!(dead.len(), 1);
    let attrs = dead[0].message_attributes().expect("attributes");
    assert_eq!(
        attrs["failureReason"].string_value(),
        Some("rejected_by_crm")
    );
    assert_eq!(attrs["failureStatus"].string_value(), Some("400"));
    assert!(
        attrs["failureDetail"]
            .string_value()
            .is_some_and(|d| !d.is_empty())
    );
}
