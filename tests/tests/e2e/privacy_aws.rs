//! LGPD on AWS (DynamoDB, SQS and Secrets Manager on moto): `connect privacy erase
//! --aws` through the binary, and the ingest handler reading the suppression table.

use aws::testing::{emulator_config, unique};
use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::{Value, json};

const ANA: &str = "ana.erased@privacy.example";
const BIA: &str = "bia.kept@privacy.example";

fn body(email: &str, n: usize) -> String {
    json!({"v": 1, "recordId": format!("r-{email}-{n}"), "clientId": "shop-a", "crm": "responsys",
        "receivedAt": 1_764_000_000_000_i64, "event": {"email": email, "eventType": "lead"}})
    .to_string()
}

#[tokio::test]
async fn erase_on_aws_clears_table_and_queues_and_ingest_honours_the_suppression() {
    let Some(config) = emulator_config().await else {
        return;
    };
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let names = aws::provision::TableNames::with_prefix(&unique("privacy"));
    aws::provision::create_tables(&ddb, &names)
        .await
        .expect("tables");
    let store = aws::DynamoRecordStore::new(ddb.clone(), &names.navigation);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for (i, email) in [ANA, ANA, BIA].into_iter().enumerate() {
        let event = domain::GtmEvent::parse(
            domain::Crm::RESPONSYS,
            json!({"clientId": "shop-a", "email": email, "eventType": "lead", "eventId": format!("e{i}")}),
        )
        .expect("event");
        let record = domain::NavigationRecord::new(
            event,
            domain::ClientId::parse("shop-a").expect("id"),
            domain::Crm::RESPONSYS,
            now - i as i64,
            48,
        );
        domain::RecordStore::put_if_absent(&store, record.into())
            .await
            .expect("put");
    }
    let secret_name = format!("/connect/installation/{}/key", unique("stage"));
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    sm.create_secret()
        .name(&secret_name)
        .secret_string(domain::privacy::EmailKeyer::generate_secret())
        .send()
        .await
        .expect("secret");
    let sqs = aws_sdk_sqs::Client::new(&config);
    let mut env: Vec<(String, String)> = vec![
        ("NAVIGATION_TABLE".into(), names.navigation.clone()),
        ("SUPPRESSION_TABLE".into(), names.suppressions.clone()),
        ("INSTALLATION_KEY_SECRET_NAME".into(), secret_name.clone()),
    ];
    let mut urls = Vec::new();
    for kind in ["QUEUE_URL_RESPONSYS", "DLQ_URL_RESPONSYS"] {
        let url = sqs
            .create_queue()
            .queue_name(unique(&kind.to_lowercase().replace('_', "-")))
            .send()
            .await
            .expect("queue")
            .queue_url
            .expect("url");
        for (n, email) in [ANA, BIA, ANA].into_iter().enumerate() {
            sqs.send_message()
                .queue_url(&url)
                .message_body(body(email, n))
                .message_attributes(
                    "clientId",
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value("shop-a")
                        .build()
                        .expect("attr"),
                )
                .send()
                .await
                .expect("send");
        }
        env.push((kind.into(), url.clone()));
        urls.push(url);
    }
    let out = std::process::Command::new(tests::connect_bin())
        .args([
            "privacy", "erase", "--aws", "--email", ANA, "--actor", "dpo", "--json",
        ])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["removed"]["navigation"], 2, "{report}");
    assert_eq!(report["removed"]["queue:responsys"], 2, "{report}");
    assert_eq!(report["removed"]["queue:responsys-dlq"], 2, "{report}");
    // What is left: Bia's record and messages only.
    let items = ddb
        .scan()
        .table_name(&names.navigation)
        .send()
        .await
        .expect("scan");
    let emails: Vec<String> = items
        .items()
        .iter()
        .filter_map(|i| i.get("email").and_then(|v| v.as_s().ok()).cloned())
        .collect();
    assert_eq!(emails, [BIA]);
    for url in &urls {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        let left: Vec<Value> = got
            .messages()
            .iter()
            .map(|m| serde_json::from_str(m.body().expect("body")).expect("json"))
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0]["event"]["email"], BIA);
    }
    // The audit item: who and counts, no email.
    let suppressions = aws::DynamoSuppressions::new(ddb.clone(), &names.suppressions);
    let audit = suppressions.audit_log().await.expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "dpo");
    assert!(
        !serde_json::to_string(&audit[0])
            .expect("json")
            .contains('@')
    );

    // The ingest Lambda's handler, wired as its main does: Ana's new event is answered
    // 202 and not stored; Bia's is stored.
    let keyer = domain::privacy::EmailKeyer::from_secret(
        sm.get_secret_value()
            .secret_id(&secret_name)
            .send()
            .await
            .expect("get")
            .secret_string()
            .expect("string"),
    )
    .expect("key");
    let privacy = domain::privacy::Privacy::new(
        keyer,
        Some(std::sync::Arc::new(suppressions)
            as std::sync::Arc<dyn domain::privacy::SuppressionStore>),
    );
    let directory = aws::DynamoClientDirectory::new(ddb.clone(), &names.clients, &names.rdstation);
    directory
        .put_client(&domain::ClientConfig {
            client_id: domain::ClientId::parse("shop-a").expect("id"),
            crm: domain::Crm::RESPONSYS,
            active: true,
            allowed_origins: domain::AllowedOrigins(vec!["https://www.shop-a.example".into()]),
            target: None,
            secret_name: None,
            rate_limit_per_second: None,
            policy: domain::ClientPolicy::default(),
        })
        .await
        .expect("client");
    let handler = ingest::IngestHandler::new(
        aws::DynamoRecordStore::new(ddb.clone(), &names.navigation),
        directory,
        domain::SystemClock,
        ingest::IngestSettings::default(),
    )
    .with_privacy(privacy);
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("ct"));
    headers.insert(
        "origin",
        "https://www.shop-a.example".parse().expect("origin"),
    );
    for (email, stored) in [(ANA, false), (BIA, true)] {
        let body = json!({"clientId": "shop-a", "email": email, "eventType": "lead"}).to_string();
        let r = handler
            .handle(ingest::IngestRequest {
                method: "POST",
                path: "/responsys",
                headers: &headers,
                body: body.as_bytes(),
                query: None,
                source_ip: Some(std::net::IpAddr::from([203, 0, 113, 5])),
                request_id: "r",
            })
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(
            r.outcome == ingest::Outcome::Stored,
            stored,
            "{email}: {:?}",
            r.outcome
        );
    }
}
