//! The pixel route (`GET|HEAD /{route}/p?d=<base64url event JSON>`): what a GTM
//! template's `sendPixel` can send. Always a 43-byte GIF; the decision is the POST
//! route's, made on the `Referer`.

use crate::write_config;
use base64::Engine;
use serde_json::{Value, json};
use tests::{Process, open_db};

fn d(event: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(event.to_string())
}

fn stored_emails(data: &std::path::Path) -> Vec<String> {
    let db = open_db(data);
    let mut stmt = db
        .prepare("SELECT json_extract(item, '$.email') FROM navigation ORDER BY seq")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

#[tokio::test]
async fn the_pixel_stores_what_the_post_route_would_and_always_answers_a_gif() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    // shop-pixel keeps the safe defaults: its origin is required and enforced.
    let config_text = std::fs::read_to_string(&config).expect("read")
        + "\n[[clients]]\nclient_id = \"shop-pixel\"\ncrm = \"responsys\"\nallowed_origins = [\"https://www.shop-pixel.example\"]\n";
    std::fs::write(&config, config_text).expect("write");
    let data = dir.path().join("data");
    let server = Process::serve(&data, &["--config", &config]);
    let http = reqwest::Client::new();
    let get = |query: String, referer: Option<&'static str>, head: bool| {
        let http = http.clone();
        let url = format!("{}?{query}", server.url("/responsys/p"));
        async move {
            let mut req = if head { http.head(url) } else { http.get(url) };
            if let Some(r) = referer {
                req = req.header("referer", r);
            }
            let res = req.send().await.expect("get");
            let status = res.status().as_u16();
            let ct = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            let cache = res
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            let bytes = res.bytes().await.expect("bytes");
            (status, ct, cache, bytes)
        }
    };
    let event = |email: &str| json!({"clientId": "shop-pixel", "email": email, "eventType": "product_view", "eventId": email});
    let page = Some("https://www.shop-pixel.example/p/sku-1?utm=x");

    // Accepted from the shop's page.
    let (status, ct, cache, bytes) =
        get(format!("d={}", d(&event("ana@pixel.example"))), page, false).await;
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("image/gif"));
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(bytes.len(), 43);
    assert_eq!(&bytes[..6], b"GIF89a");
    // HEAD too.
    let (status, _, _, bytes) =
        get(format!("d={}", d(&event("bia@pixel.example"))), page, true).await;
    assert_eq!((status, bytes.len()), (200, 0));
    // Standard base64 with padding is read as well.
    let std_b64 =
        base64::engine::general_purpose::STANDARD.encode(event("caio@pixel.example").to_string());
    let (status, ..) = get(
        format!(
            "d={}",
            std_b64
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        ),
        page,
        false,
    )
    .await;
    assert_eq!(status, 200);
    // Refused, but still a GIF: a foreign page, no referer, bad data, an oversized URL.
    for (query, referer) in [
        (
            format!("d={}", d(&event("evil1@pixel.example"))),
            Some("https://evil.example/"),
        ),
        (format!("d={}", d(&event("evil2@pixel.example"))), None),
        ("d=%%%not-base64".to_owned(), page),
        ("nothing=here".to_owned(), page),
        (format!("d={}", "A".repeat(20_000)), page),
    ] {
        let (status, ct, _, bytes) = get(query, referer, false).await;
        assert_eq!(
            (status, ct.as_deref(), bytes.len()),
            (200, Some("image/gif"), 43)
        );
    }
    assert_eq!(
        stored_emails(&data),
        [
            "ana@pixel.example",
            "bia@pixel.example",
            "caio@pixel.example"
        ]
    );
    let metrics = tests::metrics_text(&http, &server.url("/metrics")).await;
    assert!(
        metrics.contains(r#"connect_ingest_refused_total{reason="origin_not_allowed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"connect_ingest_refused_total{reason="origin_required"} 1"#),
        "{metrics}"
    );
    // The query (it holds the email) is never logged.
    let logs = server.logs();
    assert!(!logs.contains("pixel.example"), "an email in the logs");
    assert!(
        !logs.contains(&d(&event("ana@pixel.example"))),
        "a pixel query in the logs"
    );
    assert!(
        logs.contains("/responsys/p"),
        "the pixel requests are logged by path"
    );
}
