//! `connect serve --demo` delivers to the sandbox CRMs end to end.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tests::sandbox_records as records;
use tests::{Process, open_db};

#[tokio::test]
async fn each_route_reaches_its_sandbox_crm_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Process::serve(&dir.path().join("data"), &["--demo"]);
    let sandbox = server.sandbox.clone().expect("the demo runs a sandbox");
    let http = reqwest::Client::new();
    let posts = [
        (
            "/responsys",
            json!({"clientId": "demo-responsys", "email": "Ana@Example.com", "eventType": "product_view", "productId": "SKU-1"}),
        ),
        (
            "/salesforce",
            json!({"clientId": "demo-salesforce", "email": "bia@example.com", "eventType": "add_to_cart", "productId": "SKU-2"}),
        ),
        (
            "/rdstation",
            json!({"tid": "GA4.100000000.200000000", "email": "caio@example.com.br", "eventType": "cart_abandoned", "productId": "SKU-3"}),
        ),
        (
            "/webhook",
            json!({"clientId": "demo-webhook", "email": "davi@example.com", "eventType": "purchase", "productId": "SKU-4", "productPrice": 12.5}),
        ),
    ];
    let started = Instant::now();
    for (route, body) in &posts {
        let r = http
            .post(server.url(route))
            .header("content-type", "text/plain")
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
    }
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(1) {
        got = records(&http, &sandbox).await;
        if got.len() == posts.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got.len(), posts.len(), "delivered within 1 s: {got:?}");
    let by_crm = |crm: &str| {
        got.iter()
            .find(|r| r["crm"] == crm)
            .cloned()
            .expect("record")
    };
    assert_eq!(by_crm("responsys")["email"], "ana@example.com");
    assert_eq!(by_crm("responsys")["clientId"], "demo-responsys");
    assert_eq!(by_crm("responsys")["raw"]["PRODUCT_ID"], "SKU-1");
    assert_eq!(by_crm("salesforce")["raw"]["values"]["ProductId"], "SKU-2");
    assert_eq!(
        by_crm("rdstation")["raw"]["event_type"],
        "ECOMMERCE_CART_ABANDONED"
    );
    // The webhook twin verified the signature; it records the delivery message itself.
    let hook = by_crm("webhook");
    assert_eq!(hook["clientId"], "demo-webhook");
    assert_eq!(hook["raw"]["event"]["productId"], "SKU-4");
    assert_eq!(hook["raw"]["event"]["productPrice"], 12.5);
    assert_eq!(hook["raw"]["crm"], "webhook");
    let metrics = tests::metrics_text(&http, &server.url("/metrics")).await;
    assert!(
        metrics
            .contains(r#"connect_delivered_total{crm="salesforce",clientId="demo-salesforce"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_permanent_rejection_lands_in_the_local_dlq_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Process::serve(&data, &["--demo"]);
    let sandbox = server.sandbox.clone().expect("sandbox");
    let http = reqwest::Client::new();
    http.post(format!("{sandbox}/_sandbox/faults"))
        .json(&json!({"crm": "responsys", "mode": "reject", "rate": 1.0}))
        .send()
        .await
        .expect("fault");
    let r = http
        .post(server.url("/responsys"))
        .header("content-type", "application/json")
        .body(
            json!({"clientId": "demo-responsys", "email": "ana@example.com", "eventType": "lead"})
                .to_string(),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    let attrs = loop {
        let row: Option<String> = open_db(&data)
            .query_row(
                "SELECT attributes FROM queue_messages WHERE queue = 'responsys-dlq'",
                [],
                |r| r.get(0),
            )
            .ok();
        if let Some(a) = row {
            let pairs: Vec<(String, String)> = serde_json::from_str(&a).expect("attrs");
            break pairs
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>();
        }
        assert!(Instant::now() < deadline, "nothing reached the DLQ");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(attrs["failureReason"], "rejected_by_crm");
    assert_eq!(attrs["failureStatus"], "MERGEFAILED");
    assert_eq!(attrs["clientId"], "demo-responsys");
    assert!(records(&http, &sandbox).await.is_empty());
    // The message is sent to the DLQ first, then deleted from the delivery queue (never
    // the other way round): the deletion follows within moments.
    let left = loop {
        let left: i64 = open_db(&data)
            .query_row(
                "SELECT COUNT(*) FROM queue_messages WHERE queue = 'responsys'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        if left == 0 || Instant::now() >= deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        left, 0,
        "the delivery queue is empty: the message was dead-lettered, then deleted"
    );
}

#[tokio::test]
async fn an_external_sandbox_survives_a_pipeline_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Process::spawn(
        &dir.path().join("sb"),
        &["sandbox", "--listen", "127.0.0.1:0"],
        "/_sandbox/records",
    );
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    for round in 0..2 {
        let mut server = Process::serve(&data, &["--demo", "--sandbox-url", &sandbox.base]);
        let r = http
            .post(server.url("/rdstation"))
            .header("content-type", "application/json")
            .body(json!({"tid": "GA4.100000000.200000000", "email": format!("r{round}@example.com"), "eventType": "lead"}).to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
        let deadline = Instant::now() + Duration::from_secs(5);
        while records(&http, &sandbox.base).await.len() < round + 1 {
            assert!(Instant::now() < deadline, "round {round} not delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(server.terminate().success());
    }
    // The rotated RD refresh token was kept across the restart.
    assert_eq!(records(&http, &sandbox.base).await.len(), 2);
}

#[tokio::test]
async fn alerts_reach_the_configured_webhook_without_emails() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_url = format!("http://{}/hook", hook.local_addr().expect("addr"));
    let received = tokio::spawn(async move {
        let (mut socket, _) = hook.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.expect("read");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    socket
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .expect("write");
                    return body.to_owned();
                }
            }
            if n == 0 {
                return String::new();
            }
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[alerts]\nwebhook_url = \"{hook_url}\"\n")).expect("write");
    let server = Process::serve(
        &dir.path().join("data"),
        &["--demo", "--config", config.to_str().expect("path")],
    );
    let http = reqwest::Client::new();
    http.post(format!(
        "{}/_sandbox/faults",
        server.sandbox.clone().expect("sandbox")
    ))
    .json(&json!({"crm": "salesforce", "mode": "reject", "rate": 1.0}))
    .send()
    .await
    .expect("fault");
    http.post(server.url("/salesforce"))
        .header("content-type", "application/json")
        .body(json!({"clientId": "demo-salesforce", "email": "secret.person@example.com", "eventType": "lead"}).to_string())
        .send()
        .await
        .expect("post");
    let body = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("webhook called")
        .expect("join");
    let alert: Value = serde_json::from_str(&body).expect("json alert");
    assert_eq!(alert["kind"], "permanent_failure");
    assert_eq!(alert["clientId"], "demo-salesforce");
    assert!(!body.contains("secret.person"), "{body}");
    assert!(
        !server.logs().contains("secret.person@example.com"),
        "no clear email in the logs"
    );
}
