//! Every kind of request a tag (or a stranger) can send, against `connect serve`.

use crate::write_config;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{Process, open_db, stored_record};

struct Env {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    server: Process,
    http: reqwest::Client,
}

fn start() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let server = Process::serve(&data, &["--config", &config]);
    Env {
        _dir: dir,
        data,
        server,
        http: reqwest::Client::new(),
    }
}

impl Env {
    async fn post(
        &self,
        route: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.post(self.server.url(route)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, headers, json)
    }

    async fn post_json(&self, route: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, b) = self
            .post(route, Some("application/json"), body.to_string())
            .await;
        (s, b)
    }

    fn count(&self) -> i64 {
        open_db(&self.data)
            .query_row("SELECT COUNT(*) FROM navigation", [], |r| r.get(0))
            .expect("count")
    }
}

fn event(client: &str) -> Value {
    json!({"clientId": client, "email": "Ana@Example.com", "eventType": "product_view", "productId": "SKU-1", "productPrice": "199,90"})
}

#[tokio::test]
async fn valid_events_on_each_route_are_stored() {
    let env = start();
    let (s, b) = env.post_json("/responsys", event("shop-a")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["recordId"].as_str().expect("recordId");
    let rec = stored_record(&open_db(&env.data), id).expect("stored");
    assert_eq!(rec["email"], "ana@example.com");
    assert_eq!(rec["crm"], "responsys");
    assert_eq!(rec["productPrice"], 199.9);
    assert_eq!(rec["clientId"], "shop-a");

    let (s, b) = env.post_json("/salesforce", event("shop-sf")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let rec =
        stored_record(&open_db(&env.data), b["recordId"].as_str().expect("id")).expect("stored");
    assert_eq!(rec["crm"], "salesforce");

    // RD Station via text/plain (sendBeacon), the client found from tid.
    let body = json!({"tid": "GA4.1.2", "email": "bia@example.com.br", "eventType": "cart_abandoned", "cartId": "c-9"});
    let (s, _, b) = env
        .post(
            "/rdstation",
            Some("text/plain;charset=UTF-8"),
            body.to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let rec =
        stored_record(&open_db(&env.data), b["recordId"].as_str().expect("id")).expect("stored");
    assert_eq!(rec["clientId"], "shop-rd");
    assert_eq!(rec["properties"]["cartId"], "c-9");

    // The feed (the table in insertion order) has the three records, in order.
    let feed: Vec<String> = open_db(&env.data)
        .prepare("SELECT crm FROM navigation ORDER BY seq")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    assert_eq!(feed, ["responsys", "salesforce", "rdstation"]);
}

#[tokio::test]
async fn content_types_and_sizes() {
    let env = start();
    let body = event("shop-a").to_string();
    for ct in [
        "application/json; charset=utf-8",
        "TEXT/PLAIN",
        "Application/JSON",
    ] {
        let (s, _, b) = env.post("/responsys", Some(ct), body.clone()).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{ct}: {b}");
    }
    let (s, _, b) = env
        .post(
            "/responsys",
            Some("application/x-www-form-urlencoded"),
            "a=1",
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(b["error"], "unsupported_media_type");
    let (s, _, _) = env.post("/responsys", None, body.clone()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (s, _, b) = env.post("/responsys", Some("application/json"), "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["details"][0]["field"], "body");

    let mut big = event("shop-a");
    big["note"] = json!("x".repeat(1000));
    for i in 0..40 {
        big[format!("k{i}")] = json!("y".repeat(900));
    }
    let (s, _, b) = env
        .post("/responsys", Some("application/json"), big.to_string())
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    let huge = format!("{{\"pad\":\"{}\"}}", "z".repeat(1024 * 1024));
    let (s, _, b) = env.post("/responsys", Some("application/json"), huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(b["error"], "payload_too_large");

    let (s, _, b) = env
        .post(
            "/responsys",
            Some("application/json"),
            "{\"clientId\": \"shop-a\",\n \"email\": }",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"], "malformed_json");
    assert_eq!(b["line"], 2);
    assert!(b["column"].as_u64().is_some());

    let (s, _, _) = env
        .post(
            "/responsys",
            Some("application/json"),
            vec![0xff, 0xfe, 0x00],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(env.count(), 3, "only the three valid posts are stored");
}

#[tokio::test]
async fn invalid_events_name_every_field_and_store_nothing() {
    let env = start();
    let cases = [
        (
            json!({"clientId": "shop-a", "eventType": "lead"}),
            "email",
            "required",
        ),
        (
            json!({"clientId": "shop-a", "email": "nope", "eventType": "lead"}),
            "email",
            "format",
        ),
        (
            json!({"clientId": "shop-a", "email": "a@b.co", "eventType": "bought"}),
            "eventType",
            "one_of",
        ),
        (
            json!({"email": "a@b.co", "eventType": "lead"}),
            "clientId",
            "required",
        ),
        (
            json!({"clientId": "Shop A", "email": "a@b.co", "eventType": "lead"}),
            "clientId",
            "format",
        ),
        (
            json!({"clientId": "shop-a", "email": "a@b.co", "eventType": "lead", "productPrice": -5}),
            "productPrice",
            "minimum",
        ),
        (
            json!({"clientId": "shop-a", "email": "a@b.co", "eventType": "lead", "productUrl": "/x"}),
            "productUrl",
            "url",
        ),
        (
            json!({"clientId": "shop-a", "email": "a@b.co", "eventType": "lead", "cart": {"id": 1}}),
            "cart",
            "nested_object",
        ),
        (json!([1, 2]), "body", "object"),
    ];
    for (body, field, rule) in cases {
        let (s, b) = env.post_json("/responsys", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(b["error"], "invalid_event", "{b}");
        let details = b["details"].as_array().expect("details");
        assert!(
            details.iter().any(|d| d["field"] == field
                && d["rule"] == rule
                && d["message"].as_str().is_some_and(|m| !m.is_empty())),
            "{body} → {b}"
        );
    }
    let (s, _) = env
        .post_json(
            "/rdstation",
            json!({"email": "a@b.co", "eventType": "lead"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(env.count(), 0);
}

#[tokio::test]
async fn unknown_inactive_and_misrouted_clients_are_404() {
    let env = start();
    let (s, b) = env.post_json("/responsys", event("nobody")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_client"))
    );
    let (s, b) = env.post_json("/responsys", event("shop-off")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("inactive_client"))
    );
    let (s, b) = env.post_json("/salesforce", event("shop-a")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("wrong_route"))
    );
    assert!(
        b["message"]
            .as_str()
            .expect("message")
            .contains("/responsys")
    );
    let (s, b) = env
        .post_json(
            "/rdstation",
            json!({"tid": "GA4.9.9", "email": "a@b.co", "eventType": "lead"}),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_tid"))
    );
    let (s, b) = env.post_json("/hubspot", event("shop-a")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let res = env
        .http
        .get(env.server.url("/responsys"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST, OPTIONS");
    assert_eq!(env.count(), 0);
}

#[tokio::test]
async fn duplicate_event_ids_are_stored_once() {
    let env = start();
    let mut body = event("shop-a");
    body["eventId"] = json!("evt-42");
    let (s1, b1) = env.post_json("/responsys", body.clone()).await;
    let (s2, b2) = env.post_json("/responsys", body.clone()).await;
    assert_eq!(s1, StatusCode::ACCEPTED);
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(b2["duplicate"], true);
    assert_eq!(b1["recordId"], b2["recordId"]);
    // Same eventId, another client: a different event.
    body["clientId"] = json!("shop-slow");
    let (s3, b3) = env.post_json("/responsys", body).await;
    assert_eq!(s3, StatusCode::ACCEPTED);
    assert_ne!(b1["recordId"], b3["recordId"]);
    assert_eq!(env.count(), 2);
}

#[tokio::test]
async fn cors_preflight_and_origins() {
    let env = start();
    let preflight = |origin: &'static str, route: &'static str| {
        env.http
            .request(reqwest::Method::OPTIONS, env.server.url(route))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let res = preflight("https://m.shop-sf.example", "/salesforce")
        .await
        .expect("preflight");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://m.shop-sf.example"
    );
    assert_eq!(
        res.headers()["access-control-allow-methods"],
        "POST, OPTIONS"
    );
    assert_eq!(
        res.headers()["access-control-allow-headers"],
        "content-type"
    );
    assert!(res.headers().contains_key("access-control-max-age"));
    let res = preflight("https://evil.example", "/salesforce")
        .await
        .expect("preflight");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(!res.headers().contains_key("access-control-allow-origin"));

    let post = |origin: &'static str| {
        env.http
            .post(env.server.url("/responsys"))
            .header("content-type", "text/plain")
            .header("origin", origin)
            .body(event("shop-a").to_string())
            .send()
    };
    let res = post("https://www.shop-a.example").await.expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://www.shop-a.example"
    );
    // A disallowed origin is refused server-side (not just hidden by CORS) and stores
    // nothing.
    let before = env.count();
    let res = post("https://evil.example").await.expect("post");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"], "origin_not_allowed");
    assert_eq!(env.count(), before);
}

#[tokio::test]
async fn rate_limited_clients_get_429_with_retry_after() {
    let env = start();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (s, h, _) = env
            .post(
                "/responsys",
                Some("application/json"),
                event("shop-slow").to_string(),
            )
            .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(h.contains_key("retry-after"));
        }
        statuses.push(s);
    }
    assert_eq!(statuses[0], StatusCode::ACCEPTED);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Other clients are not affected.
    let (s, _) = env.post_json("/responsys", event("shop-a")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn health_metrics_and_logs() {
    let env = start();
    env.post_json("/responsys", event("shop-a")).await;
    env.post_json("/responsys", json!({"clientId": "shop-a"}))
        .await;
    let res = env
        .http
        .get(env.server.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status(), StatusCode::OK);
    let text = tests::metrics_text(&env.http, &env.server.url("/metrics")).await;
    assert!(
        text.contains(r#"connect_ingest_requests_total{route="responsys",status="202"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"connect_ingest_requests_total{route="responsys",status="400"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"connect_accepted_total{crm="responsys",clientId="shop-a"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("connect_ingest_latency_seconds_bucket"),
        "{text}"
    );

    // One JSON log line per request, the email only as a hash.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = env.server.logs();
    assert!(
        !logs.to_lowercase().contains("ana@example.com"),
        "clear-text email in logs"
    );
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "ingest")
        .collect();
    assert_eq!(lines.len(), 2, "{logs}");
    let stored = &lines[0];
    for key in [
        "requestId",
        "clientId",
        "crm",
        "eventType",
        "status",
        "latencyUs",
        "emailHash",
    ] {
        assert!(stored.get(key).is_some(), "{key} missing in {stored}");
    }
    assert_eq!(stored["status"], 202);
}
