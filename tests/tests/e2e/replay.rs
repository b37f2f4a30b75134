//! `connect replay`: stored records re-routed to the delivery queues, locally next to a
//! running server, and on AWS (DynamoDB + SQS on moto) through the binary.

use aws::testing::{emulator_config, unique};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tests::Process;
use tests::{connect, output_text as text, sandbox_records as records};

#[tokio::test]
async fn stored_records_are_delivered_again_by_client_and_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Process::serve(&data, &["--demo"]);
    let sandbox = server.sandbox.clone().expect("sandbox");
    let http = reqwest::Client::new();
    for (route, body) in [
        (
            "/responsys",
            json!({"clientId": "demo-responsys", "email": "a@example.com", "eventType": "lead"}),
        ),
        (
            "/responsys",
            json!({"clientId": "demo-responsys", "email": "b@example.com", "eventType": "lead"}),
        ),
        (
            "/salesforce",
            json!({"clientId": "demo-salesforce", "email": "c@example.com", "eventType": "lead"}),
        ),
    ] {
        let r = http
            .post(server.url(route))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&http, &sandbox).await.len() < 3 {
        assert!(Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let data_s = data.to_str().expect("path");
    let dry = connect(
        &[
            "--data",
            data_s,
            "replay",
            "--since",
            "1h",
            "--client",
            "demo-responsys",
            "--dry-run",
        ],
        &[],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("2 would be replayed"), "{}", text(&dry));
    // A window in the past matches nothing.
    let past = connect(
        &[
            "--data",
            data_s,
            "replay",
            "--since",
            "2020-01-01",
            "--until",
            "2020-01-02",
            "--json",
        ],
        &[],
    );
    assert!(past.status.success(), "{}", text(&past));
    let counts: Value = serde_json::from_slice(&past.stdout).expect("json");
    assert_eq!(counts["matched"], 0);
    // The replay, next to the running server: its workers deliver again.
    let out = connect(
        &[
            "--data",
            data_s,
            "replay",
            "--since",
            "1h",
            "--client",
            "demo-responsys",
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let counts: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(counts["matched"], 2, "{counts}");
    assert_eq!(counts["routed"]["responsys"], 2, "{counts}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = records(&http, &sandbox).await;
        let responsys = got.iter().filter(|r| r["crm"] == "responsys").count();
        if responsys == 4 {
            assert_eq!(got.iter().filter(|r| r["crm"] == "salesforce").count(), 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replayed records not delivered: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bad = connect(&["--data", data_s, "replay", "--since", "yesterday"], &[]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--since"), "{}", text(&bad));
}

#[tokio::test]
async fn replay_on_aws_reads_the_table_and_sends_to_sqs() {
    let Some(config) = emulator_config().await else {
        return;
    };
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let names = aws::provision::TableNames::with_prefix(&unique("replay"));
    aws::provision::create_tables(&ddb, &names)
        .await
        .expect("tables");
    let store = aws::DynamoRecordStore::new(ddb.clone(), &names.navigation);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for (i, (client, crm, age_h)) in [
        ("shop-a", domain::Crm::RESPONSYS, 1),
        ("shop-a", domain::Crm::RESPONSYS, 2),
        ("shop-b", domain::Crm::SFMC, 1),
        ("shop-a", domain::Crm::RESPONSYS, 30),
    ]
    .into_iter()
    .enumerate()
    {
        let event = domain::GtmEvent::parse(
            crm,
            json!({"clientId": client, "email": format!("u{i}@example.com"), "eventType": "lead", "eventId": format!("e{i}")}),
        )
        .expect("event");
        let record = domain::NavigationRecord::new(
            event,
            domain::ClientId::parse(client).expect("id"),
            crm,
            now - age_h * 3_600_000,
            48,
        );
        domain::RecordStore::put_if_absent(&store, record.into())
            .await
            .expect("put");
    }
    let sqs = aws_sdk_sqs::Client::new(&config);
    let mut env: Vec<(String, String)> =
        vec![("NAVIGATION_TABLE".into(), names.navigation.clone())];
    let mut queue_of = std::collections::HashMap::new();
    for crm in domain::Crm::all() {
        for kind in ["QUEUE_URL", "DLQ_URL"] {
            let url = sqs
                .create_queue()
                .queue_name(unique(
                    &format!("{crm}-{kind}").to_lowercase().replace('_', "-"),
                ))
                .send()
                .await
                .expect("queue")
                .queue_url
                .expect("url");
            if kind == "QUEUE_URL" {
                queue_of.insert(crm, url.clone());
            }
            env.push((format!("{kind}_{}", crm.as_str().to_uppercase()), url));
        }
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = connect(
        &[
            "replay",
            "--aws",
            "--since",
            "6h",
            "--crm",
            "responsys",
            "--json",
        ],
        &env_ref,
    );
    assert!(out.status.success(), "{}", text(&out));
    let counts: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        counts["matched"], 2,
        "the 30 h old one and the other CRM's are left: {counts}"
    );
    assert_eq!(counts["routed"]["responsys"], 2);
    let got = sqs
        .receive_message()
        .queue_url(&queue_of[&domain::Crm::RESPONSYS])
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive");
    let bodies: Vec<Value> = got
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().expect("body")).expect("json"))
        .collect();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies
            .iter()
            .all(|b| b["clientId"] == "shop-a" && b["v"] == 1)
    );
    // Idempotent records are keyed by their day in the table; their receipt time comes
    // back intact.
    let mut received: Vec<i64> = bodies
        .iter()
        .filter_map(|b| b["receivedAt"].as_i64())
        .collect();
    received.sort_unstable();
    assert_eq!(received, vec![now - 2 * 3_600_000, now - 3_600_000]);
}
