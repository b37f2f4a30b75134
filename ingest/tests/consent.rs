//! `require_consent`: events without granted consent are answered 202, not stored,
//! counted as `consent_missing`; a bad `consent` value is a 400 naming the field.

mod support;

use domain::{ClientPolicy, SystemClock};
use ingest::{IngestHandler, IngestRequest, IngestSettings, Outcome};
use serde_json::json;
use support::{Kept, OneClient};

#[tokio::test]
async fn only_granted_consent_is_kept() {
    let h = IngestHandler::new(
        Kept::default(),
        OneClient(ClientPolicy {
            require_consent: true,
            ..ClientPolicy::default()
        }),
        SystemClock,
        IngestSettings::default(),
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("ct"));
    headers.insert(
        "origin",
        "https://www.shop.example".parse().expect("origin"),
    );
    let mut outcomes = Vec::new();
    for (i, consent) in [
        None,
        Some(json!("denied")),
        Some(json!(false)),
        Some(json!("granted")),
        Some(json!(true)),
        Some(json!("maybe")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body =
            json!({"clientId": "shop", "email": format!("u{i}@example.com"), "eventType": "lead"});
        if let Some(c) = consent {
            body["consent"] = c;
        }
        let body = body.to_string();
        let r = h
            .handle(IngestRequest {
                method: "POST",
                path: "/responsys",
                headers: &headers,
                body: body.as_bytes(),
                query: None,
                source_ip: None,
                request_id: "r",
            })
            .await;
        outcomes.push((r.status, r.outcome, r.body));
    }
    let statuses: Vec<u16> = outcomes.iter().map(|o| o.0).collect();
    assert_eq!(statuses, [202, 202, 202, 202, 202, 400]);
    for o in &outcomes[..3] {
        assert_eq!(o.1, Outcome::Discarded("consent_missing"));
    }
    assert_eq!(outcomes[3].1, Outcome::Stored);
    assert!(
        outcomes[5].2.contains("\"field\":\"consent\""),
        "{}",
        outcomes[5].2
    );
    let stored = h.store().0.lock().expect("lock").len();
    assert_eq!(stored, 2, "only granted consent is stored");
}
