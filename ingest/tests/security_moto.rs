//! The front door's security decisions through the Lambda shell, on DynamoDB and
//! Secrets Manager on moto server — the adapters the `ingest` Lambda wires: foreign
//! origin, no origin, forged Referer, `Origin: null`, bots, phishing URLs, per-email
//! limits, and signed events (valid, bad, expired, rotated keys).

use aws::provision::{TableNames, create_tables};
use aws::testing::{emulator_config, unique};
use aws::{DynamoClientDirectory, DynamoRecordStore, SecretsManager};
use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse};
use aws_lambda_events::encodings::Body;
use aws_sdk_dynamodb::types::AttributeValue;
use domain::{AllowedOrigins, ClientConfig, ClientId, ClientPolicy, Crm, SystemClock};
use ingest::lambda::handle_apigw;
use ingest::{IngestHandler, IngestSettings};
use serde_json::{Value, json};
use std::sync::Arc;

type Handler = IngestHandler<DynamoRecordStore, DynamoClientDirectory, SystemClock>;
const ORIGIN: &str = "https://www.loja-exemplo.com.br";

struct Env {
    handler: Handler,
    ddb: aws_sdk_dynamodb::Client,
    names: TableNames,
    prefix: String,
}

fn client(id: &str, policy: ClientPolicy) -> ClientConfig {
    ClientConfig {
        client_id: ClientId::parse(id).expect("id"),
        crm: Crm::RESPONSYS,
        active: true,
        allowed_origins: AllowedOrigins(vec![ORIGIN.into()]),
        target: None,
        secret_name: None,
        rate_limit_per_second: None,
        policy,
    }
}

async fn setup() -> Option<Env> {
    let config = emulator_config().await?;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let prefix = unique("sec");
    let names = TableNames::with_prefix(&prefix);
    create_tables(&ddb, &names).await.expect("tables");
    let dir = DynamoClientDirectory::new(ddb.clone(), &names.clients, &names.rdstation);
    let signing_name = format!("/{prefix}/signing/shop-signed");
    dir.put_client(&client(
        "shop",
        ClientPolicy {
            email_events_per_minute: 3,
            allowed_url_hosts: vec!["cdn.loja-exemplo.example".into()],
            ..ClientPolicy::default()
        },
    ))
    .await
    .expect("put");
    dir.put_client(&client(
        "shop-signed",
        ClientPolicy {
            require_signature: true,
            signing_secret_name: Some(signing_name.clone()),
            ..ClientPolicy::default()
        },
    ))
    .await
    .expect("put");
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    sm.create_secret()
        .name(&signing_name)
        .secret_string(r#"{"keys": ["new-key", "old-key"]}"#)
        .send()
        .await
        .expect("secret");
    let handler = IngestHandler::new(
        DynamoRecordStore::new(ddb.clone(), &names.navigation),
        dir,
        SystemClock,
        IngestSettings::default(),
    )
    .with_signing_keys(Arc::new(SecretsManager::new(sm)));
    Some(Env {
        handler,
        ddb,
        names,
        prefix,
    })
}

fn request(body: Value, headers: &[(&str, &str)]) -> ApiGatewayProxyRequest {
    let mut event: ApiGatewayProxyRequest = serde_json::from_str(&json!({
        "resource": "/responsys", "path": "/responsys", "httpMethod": "POST",
        "isBase64Encoded": false, "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "requestContext": {"requestId": "r", "httpMethod": "POST", "identity": {"sourceIp": "203.0.113.7"}},
        "body": body.to_string(),
    }).to_string())
    .expect("event");
    for (name, value) in headers {
        let name: http::HeaderName = name.parse().expect("name");
        let value: http::HeaderValue = value.parse().expect("value");
        event.headers.insert(name.clone(), value.clone());
        event.multi_value_headers.insert(name, value);
    }
    event
}

fn body(r: &ApiGatewayProxyResponse) -> Value {
    match &r.body {
        Some(Body::Text(t)) => serde_json::from_str(t).expect("json body"),
        other => panic!("expected a text body, got {other:?}"),
    }
}

impl Env {
    async fn post(&self, body: Value, headers: &[(&str, &str)]) -> (i64, Value) {
        let r = handle_apigw(&self.handler, request(body, headers), "req").await;
        let b = body_of(&r);
        (r.status_code, b)
    }

    async fn stored_count(&self) -> usize {
        self.ddb
            .scan()
            .table_name(&self.names.navigation)
            .send()
            .await
            .expect("scan")
            .items()
            .iter()
            .filter(|i| !i.contains_key("marker"))
            .count()
    }

    async fn stored(&self, record_id: &str) -> Value {
        let out = self
            .ddb
            .query()
            .table_name(&self.names.navigation)
            .key_condition_expression("recordId = :id")
            .expression_attribute_values(":id", AttributeValue::S(record_id.into()))
            .send()
            .await
            .expect("query");
        let item = out.items().first().cloned().expect("stored");
        serde_dynamo::from_item(item).expect("json")
    }
}

fn body_of(r: &ApiGatewayProxyResponse) -> Value {
    if r.body.is_none() {
        Value::Null
    } else {
        body(r)
    }
}

fn event(client: &str, email: &str) -> Value {
    json!({"clientId": client, "email": email, "eventType": "product_view", "productId": "P1"})
}

const BROWSER: (&str, &str) = (
    "user-agent",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
);

#[tokio::test]
async fn origins_are_enforced_per_client() {
    let Some(env) = setup().await else { return };
    let ok = env
        .post(
            event("shop", "a@example.com"),
            &[("origin", ORIGIN), BROWSER],
        )
        .await;
    assert_eq!(ok.0, 202, "{}", ok.1);
    for (headers, code) in [
        (
            vec![("origin", "https://evil.example"), BROWSER],
            "origin_not_allowed",
        ),
        (vec![BROWSER], "origin_required"),
        (
            vec![("referer", "https://evil.example/page?x=1"), BROWSER],
            "origin_not_allowed",
        ),
        (vec![("origin", "null"), BROWSER], "origin_not_allowed"),
        (
            vec![
                ("origin", "https://www.loja-exemplo.com.br.evil.example"),
                BROWSER,
            ],
            "origin_not_allowed",
        ),
    ] {
        let (status, b) = env.post(event("shop", "b@example.com"), &headers).await;
        assert_eq!(status, 403, "{headers:?}: {b}");
        assert_eq!(b["error"], code, "{headers:?}");
    }
    // A Referer from the shop counts as its origin (GETs and some beacons carry no
    // Origin).
    let (status, b) = env
        .post(
            event("shop", "c@example.com"),
            &[("referer", "https://www.loja-exemplo.com.br/p/1"), BROWSER],
        )
        .await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(env.stored_count().await, 2);
}

#[tokio::test]
async fn bots_are_answered_but_not_stored_and_foreign_urls_are_dropped() {
    let Some(env) = setup().await else { return };
    let (status, b) = env
        .post(
            event("shop", "bot@example.com"),
            &[
                ("origin", ORIGIN),
                ("user-agent", "Mozilla/5.0 HeadlessChrome/120.0"),
            ],
        )
        .await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(env.stored_count().await, 0);

    let mut e = event("shop", "ana@example.com");
    e["productUrl"] = json!("https://phish.example/login");
    e["productImage"] = json!("https://cdn.loja-exemplo.example/p.png");
    let (status, b) = env.post(e, &[("origin", ORIGIN), BROWSER]).await;
    assert_eq!(status, 202, "{b}");
    let rec = env.stored(b["recordId"].as_str().expect("recordId")).await;
    assert_eq!(rec.get("productUrl"), None, "{rec}");
    assert_eq!(
        rec["productImage"],
        "https://cdn.loja-exemplo.example/p.png"
    );
    assert_eq!(rec["productId"], "P1");
}

#[tokio::test]
async fn one_email_cannot_be_flooded() {
    let Some(env) = setup().await else { return };
    for _ in 0..3 {
        let (status, b) = env
            .post(
                event("shop", "target@example.com"),
                &[("origin", ORIGIN), BROWSER],
            )
            .await;
        assert_eq!(status, 202, "{b}");
    }
    let r = handle_apigw(
        &env.handler,
        request(
            event("shop", "target@example.com"),
            &[("origin", ORIGIN), BROWSER],
        ),
        "req",
    )
    .await;
    assert_eq!(r.status_code, 429);
    assert_eq!(body(&r)["error"], "email_rate_limited");
    assert!(r.headers.get("retry-after").is_some());
    let (status, _) = env
        .post(
            event("shop", "other@example.com"),
            &[("origin", ORIGIN), BROWSER],
        )
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn signed_events_are_verified_with_keys_from_secrets_manager() {
    let Some(env) = setup().await else { return };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let signed = |key: &[u8], email: &str, exp: i64| {
        let mut e = event("shop-signed", email);
        e["sig"] = json!(domain::signature::sign(key, "shop-signed", email, exp));
        e["sigExp"] = json!(exp);
        e
    };
    // Server-side senders have no Origin: a valid signature is enough, with either key
    // of a rotation.
    for key in [&b"new-key"[..], &b"old-key"[..]] {
        let (status, b) = env
            .post(
                signed(key, "ana@example.com", now + 600),
                &[("user-agent", "python-requests/2.31")],
            )
            .await;
        assert_eq!(status, 202, "{b}");
    }
    let cases = [
        (
            signed(b"wrong-key", "ana@example.com", now + 600),
            "signature_invalid",
        ),
        (
            signed(b"new-key", "ana@example.com", now - 10),
            "signature_expired",
        ),
        (event("shop-signed", "ana@example.com"), "signature_invalid"),
    ];
    for (e, code) in cases {
        let (status, b) = env.post(e, &[("origin", ORIGIN), BROWSER]).await;
        assert_eq!(status, 401, "{b}");
        assert_eq!(b["error"], code);
    }
    // A signature for another email does not carry over.
    let mut swapped = signed(b"new-key", "ana@example.com", now + 600);
    swapped["email"] = json!("bob@example.com");
    let (status, b) = env.post(swapped, &[]).await;
    assert_eq!(
        (status, b["error"].as_str()),
        (401, Some("signature_invalid"))
    );
    assert_eq!(env.stored_count().await, 2);
    assert!(!env.prefix.is_empty());
}

#[tokio::test]
async fn the_pixel_route_through_api_gateway_answers_a_binary_gif() {
    use base64::Engine;
    let Some(env) = setup().await else { return };
    let event = json!({"clientId": "shop", "email": "pixel@example.com", "eventType": "page_view"});
    let d = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(event.to_string());
    let mut req: ApiGatewayProxyRequest = serde_json::from_str(
        &json!({
            "resource": "/responsys/p", "path": "/responsys/p", "httpMethod": "GET",
            "isBase64Encoded": false, "headers": {}, "multiValueHeaders": {},
            "queryStringParameters": {"d": d}, "multiValueQueryStringParameters": {"d": [d]},
            "requestContext": {"requestId": "r", "httpMethod": "GET", "identity": {"sourceIp": "203.0.113.7"}},
            "body": null,
        })
        .to_string(),
    )
    .expect("event");
    let referer: http::HeaderValue = "https://www.loja-exemplo.com.br/p/1"
        .parse()
        .expect("referer");
    req.headers.insert("referer", referer.clone());
    req.multi_value_headers.insert("referer", referer);
    let r = handle_apigw(&env.handler, req, "req").await;
    assert_eq!(r.status_code, 200);
    assert!(r.is_base64_encoded);
    match &r.body {
        Some(Body::Binary(b)) => assert_eq!(b.as_slice(), &ingest::PIXEL_GIF[..]),
        other => panic!("expected the GIF, got {other:?}"),
    }
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("image/gif")
    );
    assert_eq!(env.stored_count().await, 1);
}
