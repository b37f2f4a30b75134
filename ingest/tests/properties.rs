//! Properties of request parsing and validation over generated input (proptest, in the
//! normal test run): whatever a client sends, the handler answers with a clear status —
//! never a panic, never a 5xx — and a 202 means a valid record was stored. The
//! coverage-guided counterpart is `fuzz/` (see RELIABILITY.md).

mod support;

use domain::{ClientPolicy, SystemClock};
use ingest::{IngestHandler, IngestRequest, IngestSettings};
use proptest::prelude::*;
use serde_json::{Map, Value};
use support::{Kept, OneClient};

/// JSON values of any shape, small enough to be many.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Event-like objects: the known fields with plausible and implausible values, plus
/// extra fields.
fn event_like() -> impl Strategy<Value = Value> {
    let email = prop_oneof![
        Just(Value::String("Ana@Example.com".into())),
        "[a-z]{1,10}@[a-z]{1,10}\\.[a-z]{2,4}".prop_map(Value::String),
        "\\PC{0,300}".prop_map(Value::String),
        json_value(),
    ];
    let event_type = prop_oneof![
        Just(Value::String("product_view".into())),
        Just(Value::String("purchase".into())),
        json_value(),
    ];
    let url = prop_oneof![
        Just(Value::String("https://www.shop.example/p/1".into())),
        Just(Value::String("https://phish.example/login".into())),
        "\\PC{0,80}".prop_map(Value::String),
        json_value(),
    ];
    (
        prop_oneof![Just(Value::String("shop".into())), json_value()],
        email,
        event_type,
        json_value(),
        url.clone(),
        url,
        prop::collection::btree_map("[a-zA-Z]{1,70}", json_value(), 0..8),
    )
        .prop_map(|(client, email, kind, price, product_url, image, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("clientId".into(), client);
            m.insert("email".into(), email);
            m.insert("eventType".into(), kind);
            m.insert("productPrice".into(), price);
            m.insert("productUrl".into(), product_url);
            m.insert("productImage".into(), image);
            Value::Object(m)
        })
}

fn handler() -> IngestHandler<Kept, OneClient, SystemClock> {
    IngestHandler::new(
        Kept::default(),
        OneClient(ClientPolicy {
            email_events_per_minute: 0,
            ..ClientPolicy::default()
        }),
        SystemClock,
        IngestSettings::default(),
    )
}

fn check(body: &[u8], content_type: &str, origin: Option<&str>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let h = handler();
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = content_type.parse() {
        headers.insert("content-type", v);
    }
    if let Some(o) = origin.and_then(|o| o.parse().ok()) {
        headers.insert("origin", o);
    }
    let r = rt.block_on(h.handle(IngestRequest {
        method: "POST",
        path: "/responsys",
        headers: &headers,
        body,
        query: None,
        source_ip: Some(std::net::IpAddr::from([203, 0, 113, 9])),
        request_id: "prop",
    }));
    prop_assert!(
        r.status < 500,
        "status {} for {:?}",
        r.status,
        String::from_utf8_lossy(body)
    );
    let json: Value = serde_json::from_str(&r.body)
        .map_err(|e| TestCaseError::fail(format!("answer is not JSON: {e}: {}", r.body)))?;
    let stored = h.store().0.lock().expect("lock").clone();
    if r.status == 202 {
        prop_assert_eq!(stored.len(), 1);
        let rec = &stored[0];
        prop_assert_eq!(json["recordId"].as_str(), Some(rec.record_id.as_str()));
        prop_assert_eq!(rec.email.as_str(), rec.email.as_str().trim().to_lowercase());
        prop_assert!(rec.properties.len() <= domain::event::MAX_PROPERTIES);
        for url in [&rec.product_url, &rec.product_image].into_iter().flatten() {
            prop_assert!(
                url.starts_with("https://www.shop.example")
                    || url.starts_with("http://www.shop.example"),
                "foreign URL kept: {url}"
            );
        }
    } else {
        prop_assert!(stored.is_empty(), "stored on a {}", r.status);
        prop_assert!(json["error"].is_string(), "no error code: {}", r.body);
        if r.status == 400 && json["error"] == "invalid_event" {
            let details = json["details"].as_array().cloned().unwrap_or_default();
            prop_assert!(!details.is_empty());
            for d in details {
                prop_assert!(
                    d["field"].as_str().is_some_and(|f| !f.is_empty()),
                    "a detail names no field: {d}"
                );
                prop_assert!(d["rule"].is_string() && d["message"].is_string());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_a_clear_answer(body in prop::collection::vec(any::<u8>(), 0..2048), json_type in any::<bool>()) {
        check(&body, if json_type { "application/json" } else { "text/plain" }, Some("https://www.shop.example"))?;
    }

    #[test]
    fn any_json_gets_a_clear_answer(value in json_value()) {
        check(value.to_string().as_bytes(), "application/json", Some("https://www.shop.example"))?;
    }

    #[test]
    fn event_like_objects_are_stored_valid_or_refused_naming_the_fields(value in event_like(), with_origin in any::<bool>()) {
        check(value.to_string().as_bytes(), "text/plain;charset=UTF-8", with_origin.then_some("https://www.shop.example"))?;
    }
}
