//! `connect trace`: an event retried then delivered, and one dead-lettered, as an
//! operator sees them next to a running server.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tests::Process;

fn trace(data: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["--data", data.to_str().expect("path"), "trace"];
    all.extend_from_slice(args);
    all.push("--json");
    tests::connect_json(&all, &[])
}

fn stages(v: &Value) -> Vec<(String, String)> {
    v[0]["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap_or("").to_owned(),
                s["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_retried_then_delivered_event_and_a_dead_lettered_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[delivery]\nretry_base_ms = 50\nretry_max_ms = 200\nbreaker_open_max_ms = 200\n",
    )
    .expect("config");
    let data = dir.path().join("data");
    let server = Process::serve(
        &data,
        &["--demo", "--config", config.to_str().expect("path")],
    );
    let sandbox = server.sandbox.clone().expect("sandbox");
    let http = reqwest::Client::new();
    let fault = |body: Value| {
        let http = http.clone();
        let url = format!("{sandbox}/_sandbox/faults");
        async move { http.post(url).json(&body).send().await.expect("fault") }
    };
    let post = |email: &'static str| {
        let http = http.clone();
        let url = server.url("/salesforce");
        async move {
            let r: Value = http
                .post(url)
                .header("content-type", "application/json")
                .body(
                    json!({"clientId": "demo-salesforce", "email": email, "eventType": "lead"})
                        .to_string(),
                )
                .send()
                .await
                .expect("post")
                .json()
                .await
                .expect("json");
            r["recordId"].as_str().expect("id").to_owned()
        }
    };
    fault(json!({"crm": "salesforce", "mode": "unavailable", "rate": 1.0})).await;
    let retried = post("retried@trace.example").await;
    // Let it fail a few times, then recover.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stages(&trace(&data, &[&retried]))
        .iter()
        .any(|(s, d)| s == "delivery" && d.contains("retried"))
    {
        assert!(Instant::now() < deadline, "never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.delete(format!(
        "{}/_sandbox/faults",
        server.sandbox.clone().expect("sandbox")
    ))
    .send()
    .await
    .expect("clear");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = stages(&trace(&data, &[&retried]));
        if st
            .iter()
            .any(|(s, d)| s == "delivery" && d.contains("delivered"))
        {
            assert_eq!(st[0].0, "stored");
            assert!(
                st[0].1.contains("r***@trace.example") || !st[0].1.contains("retried@"),
                "masked: {st:?}"
            );
            assert!(
                st.iter()
                    .any(|(s, d)| s == "routed" && d.contains("salesforce")),
                "{st:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never delivered: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fault(json!({"crm": "salesforce", "mode": "reject", "rate": 1.0})).await;
    let dead = post("dead@trace.example").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = stages(&trace(
            &data,
            &[
                "--client",
                "demo-salesforce",
                "--email",
                "dead@trace.example",
            ],
        ));
        if st.iter().any(|(s, _)| s == "dead-lettered") {
            assert!(
                st.iter()
                    .any(|(s, d)| s == "delivery" && d.contains("dead_lettered")),
                "{st:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_id = trace(&data, &[&dead]);
    assert_eq!(by_id[0]["recordId"], dead.as_str());
    let shown = trace(&data, &[&dead, "--show-pii"]);
    assert!(shown.to_string().contains("dead@trace.example"));

    // connect status: the same story per client, with what needs attention.
    let rows = tests::connect_json(
        &["--data", data.to_str().expect("path"), "status", "--json"],
        &[],
    );
    let row = |id: &str| {
        rows.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["clientId"] == id)
            .cloned()
            .expect("client")
    };
    let sf = row("demo-salesforce");
    assert_eq!(sf["accepted"], 2, "{sf}");
    assert!(sf["delivered"].as_u64() >= Some(1), "{sf}");
    assert!(sf["retried"].as_u64() >= Some(1), "{sf}");
    assert_eq!(sf["deadLettered"], 1, "{sf}");
    assert_eq!(sf["dlqDepth"], 1, "{sf}");
    assert!(
        sf["attention"].to_string().contains("dead-lettered"),
        "{sf}"
    );
    let quiet = row("demo-responsys");
    assert!(
        quiet["attention"].to_string().contains("no events"),
        "{quiet}"
    );
}

/// SQS and DynamoDB clients of the emulator and a fresh set of tables, or `None` (the
/// test is skipped) without an emulator.
async fn emulated_tables(
    prefix: &str,
) -> Option<(
    aws_sdk_sqs::Client,
    aws_sdk_dynamodb::Client,
    aws::provision::TableNames,
)> {
    let config = aws::testing::emulator_config().await?;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let names = aws::provision::TableNames::with_prefix(&aws::testing::unique(prefix));
    aws::provision::create_tables(&ddb, &names)
        .await
        .expect("tables");
    Some((aws_sdk_sqs::Client::new(&config), ddb, names))
}

/// A fresh queue's URL.
async fn new_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
    sqs.create_queue()
        .queue_name(aws::testing::unique(prefix))
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url")
}

#[tokio::test]
async fn trace_on_aws_shows_the_record_and_its_dead_letter() {
    let Some((sqs, ddb, names)) = emulated_tables("trace").await else {
        return;
    };
    let event = domain::GtmEvent::parse(
        domain::Crm::RESPONSYS,
        json!({"clientId": "shop-a", "email": "ana@example.com", "eventType": "lead", "eventId": "t-1"}),
    )
    .expect("event");
    let record = domain::NavigationRecord::new(
        event,
        domain::ClientId::parse("shop-a").expect("id"),
        domain::Crm::RESPONSYS,
        1_764_000_000_000,
        48,
    );
    domain::RecordStore::put_if_absent(
        &aws::DynamoRecordStore::new(ddb, &names.navigation),
        record.clone().into(),
    )
    .await
    .expect("put");
    let dlq = new_queue(&sqs, "trace-dlq").await;
    let attr = |v: &str| {
        aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("attr")
    };
    sqs.send_message()
        .queue_url(&dlq)
        .message_body(
            json!({"v": 1, "recordId": record.record_id, "clientId": "shop-a", "crm": "responsys"})
                .to_string(),
        )
        .message_attributes("failureReason", attr("rejected_by_crm"))
        .message_attributes("failureStatus", attr("MERGEFAILED"))
        .message_attributes("failedAt", attr("2026-12-01T00:00:00Z"))
        .send()
        .await
        .expect("send");
    let v = tests::connect_json(
        &["trace", "--aws", &record.record_id, "--json"],
        &[
            ("NAVIGATION_TABLE", &names.navigation),
            ("DLQ_URL_RESPONSYS", &dlq),
        ],
    );
    assert_eq!(v["stored"][0]["clientId"], "shop-a");
    assert_eq!(v["deadLetter"]["entry"]["failureReason"], "rejected_by_crm");
    assert!(
        v["logsInsightsQuery"]
            .as_str()
            .expect("query")
            .contains(&record.record_id)
    );
}

#[tokio::test]
async fn status_counts_refused_requests_by_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[[clients]]\nclient_id = \"shop-st\"\ncrm = \"responsys\"\nallowed_origins = [\"https://www.shop-st.example\"]\n",
    )
    .expect("config");
    let data = dir.path().join("data");
    let mut server = Process::serve(&data, &["--config", config.to_str().expect("path")]);
    let http = reqwest::Client::new();
    for origin in [
        "https://evil.example",
        "https://evil.example",
        "https://www.shop-st.example",
    ] {
        http.post(server.url("/responsys"))
            .header("content-type", "application/json")
            .header("origin", origin)
            .body(
                json!({"clientId": "shop-st", "email": "a@b.co", "eventType": "lead"}).to_string(),
            )
            .send()
            .await
            .expect("post");
    }
    // A clean stop flushes the counts.
    assert!(server.terminate().success());
    let rows = tests::connect_json(
        &[
            "--data",
            data.to_str().expect("path"),
            "status",
            "--client",
            "shop-st",
            "--json",
        ],
        &[],
    );
    assert_eq!(rows[0]["accepted"], 1, "{rows}");
    assert_eq!(rows[0]["refused"]["origin_not_allowed"], 2, "{rows}");
    assert!(
        rows[0]["attention"].to_string().contains("refused"),
        "{rows}"
    );
}

// `connect status --aws` reads CloudWatch with GetMetricData: the AWS SDK's CloudWatch
// client speaks the Smithy RPC v2 CBOR protocol, which moto server does not serve (every
// call answers 404), so the metric figures cannot be checked on this machine. What is
// checked: the rest of the report (queues, DLQ, token) from the emulated tables and
// queues, and that metrics it cannot read show as unknown and flagged, never as zeros.
#[tokio::test]
async fn status_on_aws_reports_queues_dlq_and_token_and_flags_unreadable_metrics() {
    let Some((sqs, ddb, names)) = emulated_tables("status").await else {
        return;
    };
    let client = domain::ClientId::parse("shop-s").expect("id");
    aws::DynamoClientDirectory::new(ddb.clone(), &names.clients, &names.rdstation)
        .put_client(&domain::ClientConfig {
            client_id: client.clone(),
            crm: domain::Crm::RESPONSYS,
            active: true,
            allowed_origins: domain::AllowedOrigins(vec!["https://www.shop-s.example".into()]),
            target: None,
            secret_name: Some("/connect/responsys/shop-s/credentials".into()),
            rate_limit_per_second: None,
            policy: domain::ClientPolicy::default(),
        })
        .await
        .expect("client");
    let now = 1_764_000_000_000;
    domain::TokenStore::put_token_if_newer(
        &aws::DynamoTokens::new(ddb.clone(), &names.tokens),
        &domain::StoredToken {
            client_id: client.clone(),
            crm: domain::Crm::RESPONSYS,
            access_token: domain::Secret::new("t".into()),
            api_endpoint: "https://api.example".into(),
            issued_at: now - 7_200_000,
            expires_at: now,
            updated_at: now,
        },
    )
    .await
    .expect("token");
    let urls = [
        new_queue(&sqs, "status-q").await,
        new_queue(&sqs, "status-dlq").await,
    ];
    for body in ["a", "b"] {
        sqs.send_message()
            .queue_url(&urls[1])
            .message_body(body)
            .send()
            .await
            .expect("send");
    }
    let rows = tests::connect_json(
        &["status", "--aws", "--client", "shop-s", "--json"],
        &[
            ("CLIENTS_TABLE", &names.clients),
            ("RDSTATION_CONFIG_TABLE", &names.rdstation),
            ("TOKENS_TABLE", &names.tokens),
            ("QUEUE_URL_RESPONSYS", &urls[0]),
            ("DLQ_URL_RESPONSYS", &urls[1]),
        ],
    );
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    let row = &rows[0];
    assert_eq!(row["clientId"], "shop-s");
    assert_eq!(row["queueDepth"], 0, "{row}");
    assert_eq!(row["dlqDepth"], 2, "{row}");
    assert!(
        row["tokenExpiresInSeconds"].as_i64().expect("expiry") < 0,
        "{row}"
    );
    let attention = row["attention"].to_string();
    assert!(attention.contains("2 in the responsys DLQ"), "{row}");
    assert!(attention.contains("token expired"), "{row}");
    // Unknown metrics are null and flagged; read ones are numbers.
    assert_eq!(
        row["accepted"].is_null(),
        attention.contains("CloudWatch metrics unreadable"),
        "{row}"
    );
}
