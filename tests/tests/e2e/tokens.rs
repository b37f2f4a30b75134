//! CRM tokens in `connect serve --demo`: present right after start, and kept fresh so
//! that deliveries never fail on an expired token.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tests::Process;

fn tokens_json(data: &std::path::Path) -> Vec<Value> {
    serde_json::from_value(tests::connect_json(
        &["--data", data.to_str().expect("path"), "tokens", "--json"],
        &[],
    ))
    .expect("rows")
}

#[tokio::test]
async fn every_demo_client_has_a_token_right_after_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _server = Process::serve(&data, &["--demo"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = tokens_json(&data);
        let ready = rows.len() == 3
            && rows.iter().all(|r| {
                r["expiresInSeconds"].as_i64().is_some_and(|s| s > 0) && r["lastResult"] == "ok"
            });
        if ready {
            let ids: Vec<&str> = rows
                .iter()
                .map(|r| r["clientId"].as_str().expect("id"))
                .collect();
            assert_eq!(ids, ["demo-responsys", "demo-salesforce", "demo-rdstation"]);
            break;
        }
        assert!(Instant::now() < deadline, "tokens not there: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_four_second_tokens_a_minute_of_deliveries_never_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[tokens]\ncheck_interval_seconds = 1\n").expect("write");
    let server = Process::serve(
        &dir.path().join("data"),
        &["--demo", "--config", config.to_str().expect("path")],
    );
    let sandbox = server.sandbox.clone().expect("sandbox");
    let http = reqwest::Client::new();
    for crm in ["responsys", "salesforce", "rdstation"] {
        http.post(format!("{sandbox}/_sandbox/faults"))
            .json(&json!({"crm": crm, "mode": "expire_tokens", "tokenTtlMs": 4000}))
            .send()
            .await
            .expect("fault");
    }
    let routes = [
        (
            "/responsys",
            json!({"clientId": "demo-responsys", "eventType": "page_view"}),
        ),
        (
            "/salesforce",
            json!({"clientId": "demo-salesforce", "eventType": "page_view"}),
        ),
        (
            "/rdstation",
            json!({"tid": "GA4.100000000.200000000", "eventType": "page_view"}),
        ),
    ];
    let started = Instant::now();
    let mut posted = 0;
    while started.elapsed() < Duration::from_secs(60) {
        for (route, base) in &routes {
            let mut body = base.clone();
            body["email"] = json!(format!("soak{posted}@example.com"));
            let r = http
                .post(server.url(route))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 202);
            posted += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let records = tests::sandbox_records(&http, &sandbox).await;
        if records.len() >= posted {
            assert_eq!(records.len(), posted);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {posted} delivered",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = tests::metrics_text(&http, &server.url("/metrics")).await;
    assert!(
        !metrics.contains("connect_retried_total{"),
        "no delivery had to be retried:\n{metrics}"
    );
    assert!(
        !metrics.contains("connect_dead_lettered_total{"),
        "nothing dead-lettered:\n{metrics}"
    );
    // SFMC and RD Station say how long their tokens live, so a token is replaced once
    // due — by the schedule (RD) or by delivery before it sends (SFMC, whose schedule
    // asks at most once per 20 minutes): at most the one forced refresh right after
    // `expire_tokens` invalidated the tokens issued at start.
    for crm in ["salesforce", "rdstation"] {
        assert!(
            !metrics.contains(&format!(
                "connect_token_refreshes_forced_total{{crm=\"{crm}\"}}"
            )) || metrics.contains(&format!(
                "connect_token_refreshes_forced_total{{crm=\"{crm}\"}} 1\n"
            )),
            "{crm}:\n{metrics}"
        );
    }
}
