//! LGPD end to end: `connect serve` and `connect sandbox` as separate processes; two
//! people's events wait in the queues and the DLQ of a CRM that is down; one person is
//! erased. After recovery only the other is delivered; the erased person is gone from
//! every place and stays out; logs and the audit trail carry no email and no full IP.

use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};
use tests::sandbox_records as delivered;
use tests::{Process, open_db};

const TOKEN: &str = "operator-token-0123456789";
const ANA: &str = "ana.erased@privacy.example";
const BIA: &str = "bia.kept@privacy.example";

fn count(data: &Path, sql: &str, email: &str) -> i64 {
    open_db(data)
        .query_row(sql, [email], |r| r.get(0))
        .expect("count")
}

fn records_of(data: &Path, email: &str) -> i64 {
    count(
        data,
        "SELECT COUNT(*) FROM navigation WHERE json_extract(item, '$.email') = ?1",
        email,
    )
}

fn messages_of(data: &Path, email: &str) -> i64 {
    count(
        data,
        "SELECT COUNT(*) FROM queue_messages WHERE json_extract(body, '$.event.email') = ?1",
        email,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_person_is_gone_from_everything_and_stays_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Process::spawn(
        &dir.path().join("sb"),
        &["sandbox", "--listen", "127.0.0.1:0"],
        "/_sandbox/records",
    );
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[privacy]\noperator_token = \"{TOKEN}\"\n[delivery]\nretry_base_ms = 50\nretry_max_ms = 300\nbreaker_open_max_ms = 300\n"),
    )
    .expect("config");
    let data = dir.path().join("data");
    let server = Process::serve(
        &data,
        &[
            "--demo",
            "--sandbox-url",
            &sandbox.base,
            "--config",
            config.to_str().expect("path"),
        ],
    );
    // The shoppers post from their own address: it must not reach the logs.
    let shopper = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 23)))
        .build()
        .expect("client");
    let control = reqwest::Client::new();
    let fault = |body: Value| {
        let control = control.clone();
        let url = format!("{}/_sandbox/faults", sandbox.base);
        async move {
            control.post(url).json(&body).send().await.expect("fault");
        }
    };
    let post = |email: &'static str, n: usize| {
        let shopper = shopper.clone();
        let url = server.url("/responsys");
        async move {
            let r = shopper
                .post(url)
                .header("content-type", "application/json")
                .body(json!({"clientId": "demo-responsys", "email": email, "eventType": "lead", "eventId": format!("{email}-{n}")}).to_string())
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 202);
        }
    };
    // One event each dead-lettered, then two each waiting for a CRM that is down.
    fault(json!({"crm": "responsys", "mode": "reject", "rate": 1.0})).await;
    post(ANA, 0).await;
    post(BIA, 0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &data,
        "SELECT COUNT(*) FROM queue_messages WHERE queue = 'responsys-dlq' AND ?1 = ?1",
        "",
    ) < 2
    {
        assert!(Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fault(json!({"crm": "responsys", "mode": "unavailable", "rate": 1.0})).await;
    for n in 1..=2 {
        post(ANA, n).await;
        post(BIA, n).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while messages_of(&data, ANA) < 3 || messages_of(&data, BIA) < 3 {
        assert!(Instant::now() < deadline, "not queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records_of(&data, ANA), 3);

    // Erase Ana, next to the running server.
    let report = tests::connect_json(
        &[
            "--data",
            data.to_str().expect("path"),
            "privacy",
            "erase",
            "--email",
            " Ana.Erased@Privacy.example ",
            "--actor",
            "dpo",
            "--json",
        ],
        &[],
    );
    assert_eq!(report["removed"]["navigation"], 3, "{report}");
    assert_eq!(report["removed"]["queue:responsys-dlq"], 1, "{report}");
    assert_eq!(report["removed"]["queue:responsys"], 2, "{report}");
    assert_eq!(report["suppressedIn"], "*");
    assert_eq!(records_of(&data, ANA), 0);
    assert_eq!(messages_of(&data, ANA), 0);
    assert_eq!(records_of(&data, BIA), 3);

    // The CRM recovers: only Bia's queued events are delivered.
    control
        .delete(format!("{}/_sandbox/faults", sandbox.base))
        .send()
        .await
        .expect("clear");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = delivered(&control, &sandbox.base).await;
        if got.iter().filter(|r| r["email"] == BIA).count() == 2 {
            assert!(got.iter().all(|r| r["email"] != ANA), "{got:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New events for Ana: 202, not stored, not delivered, counted (within the 5 s the
    // server may trust its cached "not suppressed").
    tokio::time::sleep(Duration::from_millis(5200)).await;
    post(ANA, 10).await;
    post(ANA, 11).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(records_of(&data, ANA), 0);
    assert!(
        delivered(&control, &sandbox.base)
            .await
            .iter()
            .all(|r| r["email"] != ANA)
    );
    let metrics = tests::metrics_text(&control, &server.url("/metrics")).await;
    assert!(
        metrics.contains(r#"connect_ingest_refused_total{reason="suppressed"} 2"#),
        "{metrics}"
    );

    // The operator endpoint: 401 without the token, the same erasure with it.
    let r = control
        .post(server.url("/privacy/erasure"))
        .json(&json!({"email": BIA}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let r = control
        .post(server.url("/privacy/erasure"))
        .bearer_auth(TOKEN)
        .json(&json!({"email": BIA, "clientId": "demo-responsys"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.expect("json");
    assert_eq!(report["removed"]["navigation"], 3, "{report}");
    assert_eq!(report["suppressedIn"], "demo-responsys");
    // In-process: effective at once.
    post(BIA, 20).await;
    assert_eq!(records_of(&data, BIA), 0);

    // Lifting Ana's suppression lets her events in again.
    let out = std::process::Command::new(tests::connect_bin())
        .args([
            "--data",
            data.to_str().expect("path"),
            "privacy",
            "unsuppress",
            "--email",
            ANA,
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(5200)).await;
    post(ANA, 30).await;
    assert_eq!(records_of(&data, ANA), 1);

    // The audit trail: who, when, counts — no email.
    let db = open_db(&data);
    let audit: Vec<String> = db
        .prepare("SELECT item FROM audit_log ORDER BY seq")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    assert_eq!(audit.len(), 3, "{audit:?}");
    let first: Value = serde_json::from_str(&audit[0]).expect("json");
    assert_eq!(first["actor"], "dpo");
    assert_eq!(first["action"], "erase");
    assert!(first["atMs"].as_i64().is_some());
    assert_eq!(
        serde_json::from_str::<Value>(&audit[1]).expect("json")["actor"],
        "api"
    );
    for a in &audit {
        assert!(!a.contains('@'), "an email in the audit trail: {a}");
    }
    // The whole run's logs: no email, no full IP of a shopper.
    let logs = server.logs();
    for needle in ["ana.erased", "bia.kept", "privacy.example", "127.0.0.23"] {
        assert!(!logs.contains(needle), "{needle} in the logs");
    }
    assert!(
        logs.contains("127.0.0.0/24"),
        "the source network is logged"
    );
}

#[tokio::test]
async fn the_erasure_endpoint_does_not_exist_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Process::serve(&dir.path().join("data"), &["--demo"]);
    let r = reqwest::Client::new()
        .post(server.url("/privacy/erasure"))
        .bearer_auth("anything")
        .json(&json!({"email": "a@b.co"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 404);
}
