//! `connect dlq --aws` on moto server: SQS with the real SDK, through the binary.

use aws::testing::{emulator_config, unique};
use aws_sdk_sqs::types::MessageAttributeValue;
use std::collections::HashMap;
use std::process::Output;
use tests::output_text as text;

fn connect(args: &[&str]) -> Output {
    std::process::Command::new(tests::connect_bin())
        .args(args)
        .output()
        .expect("run connect")
}

fn attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .expect("attr")
}

#[tokio::test]
async fn list_peek_redrive_and_purge_on_sqs() {
    let Some(config) = emulator_config().await else {
        return;
    };
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue = sqs
        .create_queue()
        .queue_name(unique("q"))
        .send()
        .await
        .expect("q")
        .queue_url
        .expect("url");
    let dlq = sqs
        .create_queue()
        .queue_name(unique("dlq"))
        .send()
        .await
        .expect("dlq")
        .queue_url
        .expect("url");
    for (i, client) in ["shop-a", "shop-a", "shop-b"].iter().enumerate() {
        sqs.send_message()
            .queue_url(&dlq)
            .message_body(serde_json::json!({"v": 1, "recordId": format!("r{i}"), "clientId": client, "crm": "responsys", "event": {"email": format!("joana{i}@example.com"), "eventType": "lead"}}).to_string())
            .message_attributes("clientId", attr(client))
            .message_attributes("crm", attr("responsys"))
            .message_attributes("eventType", attr("lead"))
            .message_attributes("failureReason", attr("rejected_by_crm"))
            .message_attributes("failureStatus", attr("MERGEFAILED"))
            .message_attributes("failedAt", attr("2026-11-29T00:00:00Z"))
            .message_attributes("attempts", attr("1"))
            .send()
            .await
            .expect("send");
    }
    let urls = [
        "--aws",
        "--queue-url",
        queue.as_str(),
        "--dlq-url",
        dlq.as_str(),
    ];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(urls.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run = |args: Vec<String>| connect(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let list = run(with(&["dlq", "list", "responsys", "--json"]));
    assert!(list.status.success(), "{}", text(&list));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(rows[0]["depth"], 3);
    assert_eq!(rows[0]["byReason"]["rejected_by_crm"], 3);

    let peek = run(with(&["dlq", "peek", "responsys"]));
    assert!(peek.status.success(), "{}", text(&peek));
    assert!(
        text(&peek).contains("j***@example.com") && !text(&peek).contains("joana0"),
        "{}",
        text(&peek)
    );

    let redrive = run(with(&["dlq", "redrive", "responsys", "--client", "shop-a"]));
    assert!(redrive.status.success(), "{}", text(&redrive));
    assert!(text(&redrive).contains("2 moved"), "{}", text(&redrive));
    let moved = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive");
    assert_eq!(moved.messages().len(), 2);
    let attrs: HashMap<String, String> = moved.messages()[0]
        .message_attributes()
        .expect("attrs")
        .iter()
        .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(attrs["clientId"], "shop-a");
    assert_eq!(attrs["redriveCount"], "1");
    assert!(
        attrs.contains_key("redrivenAt") && !attrs.contains_key("failureReason"),
        "{attrs:?}"
    );

    let refused = run(with(&["dlq", "purge", "responsys"]));
    assert!(!refused.status.success());
    let purge = run(with(&["dlq", "purge", "responsys", "--yes"]));
    assert!(
        text(&purge).contains("1 message(s) removed"),
        "{}",
        text(&purge)
    );
    let empty = run(with(&["dlq", "peek", "responsys"]));
    assert!(
        !empty.status.success() && text(&empty).contains("empty"),
        "{}",
        text(&empty)
    );

    let missing = connect(&[
        "dlq",
        "peek",
        "responsys",
        "--aws",
        "--dlq-url",
        &format!(
            "{}/123456789012/nope",
            std::env::var("AWS_ENDPOINT_URL").expect("endpoint")
        ),
    ]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("queue not found"),
        "{}",
        text(&missing)
    );
}

#[test]
fn missing_configuration_is_one_clear_line() {
    let out = std::process::Command::new(tests::connect_bin())
        .args(["dlq", "peek", "salesforce", "--aws"])
        .env_remove("DLQ_URL_SALESFORCE")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DLQ_URL_SALESFORCE") && err.contains("--dlq-url"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn missing_aws_credentials_are_one_clear_line() {
    // A machine with no credentials anywhere: no env keys, no ~/.aws, no instance role.
    let home = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(tests::connect_bin())
        .args([
            "dlq",
            "peek",
            "responsys",
            "--aws",
            "--dlq-url",
            "http://127.0.0.1:9/123456789012/none",
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .env_remove("AWS_CONFIG_FILE")
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no AWS credentials"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
