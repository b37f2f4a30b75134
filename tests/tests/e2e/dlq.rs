//! `connect dlq` against the local store of a running `connect serve --demo`.

use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};
use tests::output_text as text;
use tests::{Process, open_db};

fn connect(data: &Path, args: &[&str]) -> Output {
    std::process::Command::new(tests::connect_bin())
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run connect")
}

fn count(data: &Path, queue: &str) -> i64 {
    open_db(data)
        .query_row(
            "SELECT COUNT(*) FROM queue_messages WHERE queue = ?1",
            [queue],
            |r| r.get(0),
        )
        .expect("count")
}

struct Env {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    server: Process,
    sandbox: String,
    http: reqwest::Client,
}

async fn env(extra: &[&str]) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut args = vec!["--demo"];
    args.extend_from_slice(extra);
    let server = Process::serve(&data, &args);
    let sandbox = server.sandbox.clone().expect("sandbox");
    Env {
        _dir: dir,
        data,
        server,
        sandbox,
        http: reqwest::Client::new(),
    }
}

impl Env {
    async fn fault(&self, body: Value) {
        self.http
            .post(format!("{}/_sandbox/faults", self.sandbox))
            .json(&body)
            .send()
            .await
            .expect("fault");
    }
    async fn clear_faults(&self) {
        self.http
            .delete(format!("{}/_sandbox/faults", self.sandbox))
            .send()
            .await
            .expect("clear");
    }
    async fn post(&self, route: &str, body: Value) {
        let r = self
            .http
            .post(self.server.url(route))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
    }
    async fn records(&self) -> Vec<Value> {
        tests::sandbox_records(&self.http, &self.sandbox).await
    }
    async fn wait_dlq(&self, queue: &str, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&self.data, queue) < n {
            assert!(
                Instant::now() < deadline,
                "{queue}: {} of {n}",
                count(&self.data, queue)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    async fn wait_records(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.records().await.len() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} records",
                self.records().await.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn rejected_messages_are_listed_peeked_masked_and_redriven_once_the_crm_is_fixed() {
    let env = env(&[]).await;
    env.fault(json!({"crm": "rdstation", "mode": "reject", "rate": 1.0}))
        .await;
    for i in 0..4 {
        env.post("/rdstation", json!({"tid": "GA4.100000000.200000000", "email": format!("maria{i}@example.com"), "eventType": "lead"})).await;
    }
    env.wait_dlq("rdstation-dlq", 4).await;

    let list = connect(&env.data, &["dlq", "list", "--json"]);
    assert!(list.status.success(), "{}", text(&list));
    let rows: Vec<Value> = serde_json::from_slice(&list.stdout).expect("json");
    let rd = rows.iter().find(|r| r["crm"] == "rdstation").expect("row");
    assert_eq!(rd["depth"], 4);
    assert_eq!(rd["byReason"]["rejected_by_crm"], 4);
    assert!(rd["oldestAgeSeconds"].as_i64().is_some());

    let peek = connect(&env.data, &["dlq", "peek", "rdstation", "-n", "2"]);
    let out = text(&peek);
    assert!(peek.status.success(), "{out}");
    assert_eq!(out.lines().count(), 2);
    assert!(
        out.contains("m***@example.com") && !out.contains("maria0@example.com"),
        "{out}"
    );
    assert!(
        out.contains("reason=rejected_by_crm")
            && out.contains("attempts=1")
            && out.contains("failedAt="),
        "{out}"
    );
    let pii = text(&connect(
        &env.data,
        &["dlq", "peek", "rdstation", "--show-pii"],
    ));
    assert!(pii.contains("maria0@example.com"));
    // Emails shown in clear leave an audit record: who, how many — not which.
    let audit: Vec<String> = open_db(&env.data)
        .prepare("SELECT item FROM audit_log")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    assert_eq!(audit.len(), 1, "{audit:?}");
    let record: Value = serde_json::from_str(&audit[0]).expect("json");
    assert_eq!(record["action"], "show_pii");
    assert_eq!(record["counts"]["messages"], 4);
    assert!(!audit[0].contains('@'));
    assert_eq!(
        count(&env.data, "rdstation-dlq"),
        4,
        "peeking consumes nothing"
    );

    env.clear_faults().await;
    let redrive = connect(&env.data, &["dlq", "redrive", "rdstation"]);
    assert!(redrive.status.success(), "{}", text(&redrive));
    assert!(text(&redrive).contains("4 moved"), "{}", text(&redrive));
    env.wait_records(4).await;
    assert_eq!(count(&env.data, "rdstation-dlq"), 0);
    let raw: Vec<String> = env
        .records()
        .await
        .iter()
        .map(|r| r["email"].as_str().expect("email").to_owned())
        .collect();
    assert!(raw.contains(&"maria3@example.com".to_owned()));
}

#[tokio::test]
async fn filters_max_rate_and_dry_run() {
    // No delivery workers: redriven messages stay on the delivery queue to be counted.
    let env = env(&["--no-deliver"]).await;
    // Dead-letter messages of two clients and two reasons, by hand.
    let now = 1_764_000_000_000_i64;
    let db = rusqlite::Connection::open(env.data.join("connect.db")).expect("open rw");
    for i in 0..12 {
        let client = if i % 3 == 0 { "shop-x" } else { "shop-y" };
        let reason = if i % 2 == 0 {
            "rejected_by_crm"
        } else {
            "client_config"
        };
        let attrs = json!([
            ["clientId", client],
            ["crm", "rdstation"],
            ["eventType", "lead"],
            ["failureReason", reason],
            ["failureStatus", "400"],
            ["failedAt", "2026-01-01T00:00:00Z"],
            ["attempts", "5"]
        ]);
        db.execute(
            "INSERT INTO queue_messages (queue, message_id, body, attributes, sent_at, visible_at) VALUES ('rdstation-dlq', ?1, ?2, ?3, ?4, 0)",
            rusqlite::params![format!("m{i}"), json!({"v": 1, "recordId": format!("r{i}"), "clientId": client}).to_string(), attrs.to_string(), now],
        )
        .expect("insert");
    }
    drop(db);

    let dry = connect(&env.data, &["dlq", "redrive", "rdstation", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("12 would be moved"), "{}", text(&dry));
    assert_eq!(
        count(&env.data, "rdstation-dlq"),
        12,
        "a dry run moves nothing"
    );
    assert_eq!(count(&env.data, "rdstation"), 0);

    let client = connect(
        &env.data,
        &["dlq", "redrive", "rdstation", "--client", "shop-x"],
    );
    assert!(text(&client).contains("4 moved"), "{}", text(&client));
    assert_eq!(count(&env.data, "rdstation"), 4);

    let reason = connect(
        &env.data,
        &[
            "dlq",
            "redrive",
            "rdstation",
            "--reason",
            "client_config",
            "--max",
            "3",
        ],
    );
    assert!(text(&reason).contains("3 moved"), "{}", text(&reason));
    assert_eq!(count(&env.data, "rdstation"), 7);
    assert_eq!(count(&env.data, "rdstation-dlq"), 5);

    let started = Instant::now();
    let rate = connect(&env.data, &["dlq", "redrive", "rdstation", "--rate", "4"]);
    assert!(text(&rate).contains("5 moved"), "{}", text(&rate));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "5 at 4/s take ≥ 1 s: {:?}",
        started.elapsed()
    );
    assert_eq!(count(&env.data, "rdstation-dlq"), 0);

    // Redriven messages: failure attributes cleared, redrive attributes added.
    let attrs: String = open_db(&env.data)
        .query_row(
            "SELECT attributes FROM queue_messages WHERE queue = 'rdstation' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("attrs");
    let attrs: std::collections::HashMap<String, String> =
        serde_json::from_str::<Vec<(String, String)>>(&attrs)
            .expect("json")
            .into_iter()
            .collect();
    assert!(
        !attrs.contains_key("failureReason") && !attrs.contains_key("attempts"),
        "{attrs:?}"
    );
    assert_eq!(attrs["redriveCount"], "1");
    assert!(attrs.contains_key("redrivenAt"));
    assert_eq!(attrs["clientId"].len(), 6);

    let empty = connect(&env.data, &["dlq", "redrive", "rdstation"]);
    assert!(!empty.status.success());
    assert!(
        text(&empty).contains("nothing to redrive"),
        "{}",
        text(&empty)
    );
}

#[tokio::test]
async fn an_interrupted_redrive_loses_nothing() {
    let mut env = env(&[]).await;
    env.fault(json!({"crm": "responsys", "mode": "reject", "rate": 1.0}))
        .await;
    let n = 30;
    for i in 0..n {
        env.post("/responsys", json!({"clientId": "demo-responsys", "email": format!("k{i}@example.com"), "eventType": "lead", "eventId": format!("k-{i}")})).await;
    }
    env.wait_dlq("responsys-dlq", n).await;
    // Stop the pipeline: what is redriven stays on the delivery queue to be counted.
    assert!(env.server.terminate().success());

    let mut child = std::process::Command::new(tests::connect_bin())
        .arg("--data")
        .arg(&env.data)
        .args(["dlq", "redrive", "responsys", "--rate", "10"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("kill");
    child.wait().expect("wait");
    let db = open_db(&env.data);
    let ids: std::collections::HashSet<String> = db
        .prepare("SELECT json_extract(body, '$.recordId') FROM queue_messages WHERE queue IN ('responsys', 'responsys-dlq')")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    let moved = count(&env.data, "responsys");
    assert!(moved > 0 && moved < n, "interrupted midway: {moved} moved");
    assert_eq!(
        ids.len() as i64,
        n,
        "every message is in the DLQ or the delivery queue"
    );
}

#[tokio::test]
async fn purge_needs_yes() {
    let env = env(&[]).await;
    env.fault(json!({"crm": "rdstation", "mode": "reject", "rate": 1.0}))
        .await;
    env.post(
        "/rdstation",
        json!({"tid": "GA4.100000000.200000000", "email": "a@example.com", "eventType": "lead"}),
    )
    .await;
    env.wait_dlq("rdstation-dlq", 1).await;
    let refused = connect(&env.data, &["dlq", "purge", "rdstation"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("--yes"));
    assert_eq!(count(&env.data, "rdstation-dlq"), 1);
    let done = connect(&env.data, &["dlq", "purge", "rdstation", "--yes"]);
    assert!(done.status.success(), "{}", text(&done));
    assert!(text(&done).contains("1 message(s) removed"));
    assert_eq!(count(&env.data, "rdstation-dlq"), 0);
    let unknown = connect(&env.data, &["dlq", "peek", "hubspot"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("hubspot"));
}

#[tokio::test]
async fn a_client_filter_finds_its_messages_behind_a_thousand_others() {
    let env = env(&["--no-deliver"]).await;
    let db = rusqlite::Connection::open(env.data.join("connect.db")).expect("open rw");
    let insert = |i: usize, client: &str| {
        let attrs = json!([
            ["clientId", client],
            ["crm", "salesforce"],
            ["failureReason", "rejected_by_crm"]
        ]);
        db.execute(
            "INSERT INTO queue_messages (queue, message_id, body, attributes, sent_at, visible_at) VALUES ('salesforce-dlq', ?1, ?2, ?3, 1764000000000, 0)",
            rusqlite::params![format!("m{i}"), json!({"v": 1, "recordId": format!("r{i}"), "clientId": client}).to_string(), attrs.to_string()],
        )
        .expect("insert");
    };
    for i in 0..1200 {
        insert(i, "shop-big");
    }
    for i in 1200..1207 {
        insert(i, "shop-small");
    }
    drop(db);
    let list = connect(&env.data, &["dlq", "list", "--json"]);
    assert!(list.status.success(), "{}", text(&list));
    let rows: Value = serde_json::from_slice(&list.stdout).expect("json");
    let sf = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["crm"] == "salesforce")
        .cloned()
        .expect("salesforce");
    assert_eq!(sf["depth"], 1207, "{sf}");
    let out = connect(
        &env.data,
        &["dlq", "redrive", "salesforce", "--client", "shop-small"],
    );
    assert!(text(&out).contains("7 moved"), "{}", text(&out));
    assert_eq!(count(&env.data, "salesforce"), 7);
    assert_eq!(count(&env.data, "salesforce-dlq"), 1200);
}
