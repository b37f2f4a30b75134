//! Crash safety: SIGKILL the server while 2,000 requests are in flight, restart it on the
//! same data directory: every request answered 202 is stored, no rejected one is.

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tests::{Process, open_db, stored_record};

/// Valid requests fired at once.
const VALID: usize = 2000;
/// Invalid requests mixed in (each must be answered 400 or fail; never stored).
const INVALID: usize = 200;
/// Kill the server once this many requests were answered 202.
const KILL_AFTER_ACCEPTED: usize = 300;

enum Sent {
    Accepted(String),
    Rejected(u16, String),
    Failed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_event_is_lost_on_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Process::serve(&data, &["--demo"]);
    let url = server.url("/salesforce");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(VALID)
        .build()
        .expect("client");
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = Arc::new(std::sync::Mutex::new(server));

    let killer = {
        let accepted = Arc::clone(&accepted);
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            while accepted.load(Ordering::SeqCst) < KILL_AFTER_ACCEPTED {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            server.lock().expect("lock").kill();
        })
    };

    let mut tasks = Vec::with_capacity(VALID + INVALID);
    for i in 0..VALID + INVALID {
        let http = http.clone();
        let url = url.clone();
        let accepted = Arc::clone(&accepted);
        tasks.push(tokio::spawn(async move {
            let valid = i % 11 != 10;
            let event_id = format!("{}-{i}", if valid { "ok" } else { "bad" });
            let email = if valid { "ana@example.com" } else { "not-an-email" };
            let body = json!({"clientId": "demo-salesforce", "email": email, "eventType": "purchase", "eventId": event_id});
            let res = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            let Ok(res) = res else { return (event_id, Sent::Failed) };
            let status = res.status().as_u16();
            let Ok(text) = res.text().await else { return (event_id, Sent::Failed) };
            if status == 202 {
                accepted.fetch_add(1, Ordering::SeqCst);
                let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                (event_id, Sent::Accepted(v["recordId"].as_str().expect("id").to_owned()))
            } else {
                (event_id, Sent::Rejected(status, text))
            }
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("join"));
    }
    killer.await.expect("killer");

    let acked: Vec<&String> = results
        .iter()
        .filter_map(|(_, s)| {
            if let Sent::Accepted(id) = s {
                Some(id)
            } else {
                None
            }
        })
        .collect();
    let failed = results
        .iter()
        .filter(|(_, s)| matches!(s, Sent::Failed))
        .count();
    assert!(
        acked.len() >= KILL_AFTER_ACCEPTED,
        "only {} accepted",
        acked.len()
    );
    assert!(
        failed > 0,
        "the kill landed after every request finished; the test proved nothing"
    );
    for (event_id, sent) in &results {
        if let Sent::Rejected(status, text) = sent {
            assert!(
                event_id.starts_with("bad-") && *status == 400,
                "{event_id}: {status} {text}"
            );
        }
    }

    // Restart on the same data: recovery from the WAL, then check every acknowledgement.
    let restarted = Process::serve(&data, &["--demo"]);
    let db = open_db(&data);
    let missing: Vec<&&String> = acked
        .iter()
        .filter(|id| stored_record(&db, id).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let bad_stored: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM navigation WHERE json_extract(item, '$.eventId') LIKE 'bad-%'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(bad_stored, 0, "a rejected event was stored");
    drop(restarted);
}
