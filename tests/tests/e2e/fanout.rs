//! The local change feed → the CRM queues, through `connect serve`.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tests::{Process, open_db};

/// (queue, body, attributes) of every queued message.
fn queued(data: &std::path::Path) -> Vec<(String, Value, HashMap<String, String>)> {
    let db = open_db(data);
    let mut stmt = db
        .prepare("SELECT queue, body, attributes FROM queue_messages ORDER BY seq")
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })
    .expect("query")
    .map(|r| {
        let (q, body, attrs) = r.expect("row");
        let attrs: Vec<(String, String)> = serde_json::from_str(&attrs).expect("attrs");
        (
            q,
            serde_json::from_str(&body).expect("body"),
            attrs.into_iter().collect(),
        )
    })
    .collect()
}

fn checkpoint(data: &std::path::Path) -> i64 {
    open_db(data)
        .query_row(
            "SELECT COALESCE((SELECT seq FROM checkpoints WHERE consumer = 'fanout'), 0)",
            [],
            |r| r.get(0),
        )
        .expect("checkpoint")
}

fn max_seq(data: &std::path::Path) -> i64 {
    open_db(data)
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM navigation", [], |r| {
            r.get(0)
        })
        .expect("max")
}

/// Waits until the fanout has handed on every stored record.
fn wait_caught_up(data: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while checkpoint(data) < max_seq(data) {
        assert!(
            Instant::now() < deadline,
            "fanout never caught up: {} < {}",
            checkpoint(data),
            max_seq(data)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn post(http: &reqwest::Client, server: &Process, route: &str, body: Value) -> Value {
    let res = http
        .post(server.url(route))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 202);
    res.json().await.expect("json")
}

#[tokio::test]
async fn records_reach_their_crm_queue_with_attributes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Process::serve(&data, &["--demo", "--no-deliver"]);
    let http = reqwest::Client::new();
    let r = post(&http, &server, "/responsys", json!({"clientId": "demo-responsys", "email": "Ana@Example.com", "eventType": "add_to_cart", "productId": "SKU-1", "productPrice": 10})).await;
    post(
        &http,
        &server,
        "/salesforce",
        json!({"clientId": "demo-salesforce", "email": "b@example.com", "eventType": "lead"}),
    )
    .await;
    post(&http, &server, "/rdstation", json!({"tid": "GA4.100000000.200000000", "email": "c@example.com.br", "eventType": "purchase"})).await;
    wait_caught_up(&data);
    let messages = queued(&data);
    let queues: Vec<&str> = messages.iter().map(|(q, _, _)| q.as_str()).collect();
    assert_eq!(queues, ["responsys", "salesforce", "rdstation"]);
    let (_, body, attrs) = &messages[0];
    assert_eq!(body["v"], 1);
    assert_eq!(body["recordId"], r["recordId"]);
    assert_eq!(body["clientId"], "demo-responsys");
    assert_eq!(body["crm"], "responsys");
    assert_eq!(body["event"]["email"], "ana@example.com");
    assert_eq!(body["event"]["productPrice"], 10.0);
    assert_eq!(attrs["clientId"], "demo-responsys");
    assert_eq!(attrs["crm"], "responsys");
    assert_eq!(attrs["eventType"], "add_to_cart");
    let metrics = tests::metrics_text(&reqwest::Client::new(), &server.url("/metrics")).await;
    assert!(
        metrics.contains(r#"connect_routed_total{crm="rdstation"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_crash_between_send_and_checkpoint_resends_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("dir");
    // First run: the fanout aborts the process right after its first send.
    let bin = tests::connect_bin();
    let mut child = std::process::Command::new(&bin)
        .arg("--data")
        .arg(&data)
        .args(["serve", "--demo", "--no-deliver", "--listen", "127.0.0.1:0"])
        .args(["--sandbox-listen", "127.0.0.1:0"])
        .env("CONNECT_FAILPOINT", "fanout-after-send")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.starts_with("connect listening on") {
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
    }
    let base = line.trim().rsplit(' ').next().expect("url").to_owned();
    let res = reqwest::Client::new()
        .post(format!("{base}/salesforce"))
        .header("content-type", "application/json")
        .body(json!({"clientId": "demo-salesforce", "email": "a@example.com", "eventType": "lead", "eventId": "crash-1"}).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 202);
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the failpoint aborts the process");
    assert_eq!(queued(&data).len(), 1, "sent once");
    assert_eq!(checkpoint(&data), 0, "but not checkpointed");

    // Restart: the batch is sent again (a duplicate), the checkpoint advances.
    let _server = Process::serve(&data, &["--demo", "--no-deliver"]);
    wait_caught_up(&data);
    let messages = queued(&data);
    assert_eq!(
        messages.len(),
        2,
        "at-least-once: one duplicate, nothing lost"
    );
    assert_eq!(messages[0].1, messages[1].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_stored_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = std::sync::Arc::new(std::sync::Mutex::new(Process::serve(
        &data,
        &["--demo", "--no-deliver"],
    )));
    let url = server.lock().expect("lock").url("/responsys");
    let http = reqwest::Client::new();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..600 {
        let (http, url, accepted) = (http.clone(), url.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"clientId": "demo-responsys", "email": "a@example.com",
                "eventType": "page_view", "eventId": format!("k-{i}")});
            let res = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            if res.is_ok_and(|r| r.status() == 202) {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.lock().expect("lock").kill();
    for t in tasks {
        t.await.expect("join");
    }
    let _restarted = Process::serve(&data, &["--demo", "--no-deliver"]);
    wait_caught_up(&data);
    let db = open_db(&data);
    let unqueued: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM navigation n WHERE NOT EXISTS (
               SELECT 1 FROM queue_messages q
               WHERE q.queue = 'responsys' AND json_extract(q.body, '$.recordId') = n.record_id)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    let stored: i64 = db
        .query_row("SELECT COUNT(*) FROM navigation", [], |r| r.get(0))
        .expect("count");
    assert!(stored > 0);
    assert_eq!(unqueued, 0, "every stored record is on its queue");
}

/// `--no-fanout` (a benchmark setup: what accepting alone costs) stores and hands
/// nothing on; the records wait in the feed, and the next `serve` hands them on.
#[tokio::test]
async fn no_fanout_keeps_records_in_the_feed_for_the_next_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let mut server = Process::serve(&data, &["--demo", "--no-fanout"]);
    let r = post(&http, &server, "/responsys", json!({"clientId": "demo-responsys", "email": "ana@example.com", "eventType": "lead", "eventId": "held-1"})).await;
    // Far longer than a batch window: a fanout would have handed it on by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(max_seq(&data), 1, "stored");
    assert!(queued(&data).is_empty(), "but not handed on");
    assert_eq!(
        checkpoint(&data),
        0,
        "and the feed's checkpoint did not move"
    );
    assert!(server.terminate().success(), "{}", server.logs());

    let _server = Process::serve(&data, &["--demo", "--no-deliver"]);
    wait_caught_up(&data);
    let messages = queued(&data);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, "responsys");
    assert_eq!(messages[0].1["recordId"], r["recordId"]);
}
