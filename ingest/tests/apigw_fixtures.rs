//! The Lambda shell driven by the API Gateway fixtures (fixtures/events/apigw-*.json),
//! against DynamoDB on moto server — the same adapters the Lambda wires.

use aws::provision::{TableNames, create_tables};
use aws::testing::{emulator_config, unique};
use aws::{DynamoClientDirectory, DynamoRecordStore};
use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse};
use aws_lambda_events::encodings::Body;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use domain::{
    AllowedOrigins, ClientConfig, ClientId, Crm, NavigationRecord, RdStationConfig, SystemClock,
};
use ingest::lambda::{handle_apigw, handle_function_url};
use ingest::{IngestHandler, IngestSettings};
use serde_json::Value;

type Handler = IngestHandler<DynamoRecordStore, DynamoClientDirectory, SystemClock>;
const ORIGIN: &str = "https://www.loja-exemplo.com.br";

fn fixture(name: &str) -> ApiGatewayProxyRequest {
    let path = format!("{}/../fixtures/events/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text).expect("API Gateway event")
}

fn client(id: &str, crm: Crm) -> ClientConfig {
    ClientConfig {
        client_id: ClientId::parse(id).expect("id"),
        crm,
        active: true,
        allowed_origins: AllowedOrigins(vec![ORIGIN.into()]),
        target: None,
        secret_name: None,
        rate_limit_per_second: None,
        policy: Default::default(),
    }
}

async fn setup() -> Option<(Handler, aws_sdk_dynamodb::Client, TableNames)> {
    let config = emulator_config().await?;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let names = TableNames::with_prefix(&unique("ingest"));
    create_tables(&ddb, &names).await.expect("tables");
    let dir = DynamoClientDirectory::new(ddb.clone(), &names.clients, &names.rdstation);
    dir.put_client(&client("client-abc", Crm::RESPONSYS))
        .await
        .expect("put");
    dir.put_client(&client("client-sf", Crm::SFMC))
        .await
        .expect("put");
    dir.put_client(&client("client-xyz", Crm::RDSTATION))
        .await
        .expect("put");
    dir.put_rdstation(&RdStationConfig {
        tid: "GA4.123456789.987654321".into(),
        client_id: ClientId::parse("client-xyz").expect("id"),
        endpoint: None,
        token: None,
    })
    .await
    .expect("put");
    let handler = IngestHandler::new(
        DynamoRecordStore::new(ddb.clone(), &names.navigation),
        dir,
        SystemClock,
        IngestSettings::default(),
    );
    Some((handler, ddb, names))
}

fn body(r: &ApiGatewayProxyResponse) -> Value {
    match &r.body {
        Some(Body::Text(t)) => serde_json::from_str(t).expect("json body"),
        other => panic!("expected a text body, got {other:?}"),
    }
}

fn header<'a>(r: &'a ApiGatewayProxyResponse, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

async fn stored(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    record_id: &str,
) -> Vec<NavigationRecord> {
    let out = ddb
        .query()
        .table_name(table)
        .key_condition_expression("recordId = :id")
        .expression_attribute_values(":id", AttributeValue::S(record_id.into()))
        .send()
        .await
        .expect("query");
    out.items()
        .iter()
        .filter(|i| !i.contains_key("marker"))
        .map(|i| serde_dynamo::from_item(i.clone()).expect("record"))
        .collect()
}

#[tokio::test]
async fn responsys_json_is_stored_once() {
    let Some((handler, ddb, names)) = setup().await else {
        return;
    };
    let r = handle_apigw(&handler, fixture("apigw-responsys-json.json"), "lambda-req").await;
    assert_eq!(r.status_code, 202, "{:?}", r.body);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let id = body(&r)["recordId"].as_str().expect("recordId").to_owned();
    assert!(id.starts_with("client-abc-"), "{id}");

    let records = stored(&ddb, &names.navigation, &id).await;
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    assert_eq!(rec.email.as_str(), "user@example.com", "email lower-cased");
    assert_eq!(rec.crm, Crm::RESPONSYS);
    assert_eq!(rec.product_price, Some(1299.9));
    assert_eq!(
        rec.event_id.as_deref(),
        Some("3f1c9a4e-7d1b-4c55-9d0e-2b8f6a1e0c11")
    );
    assert!(rec.ttl > rec.timestamp / 1000 + 47 * 3600);

    // The tag retries: same eventId → 200 duplicate, nothing new stored.
    let again = handle_apigw(
        &handler,
        fixture("apigw-responsys-json.json"),
        "lambda-req-2",
    )
    .await;
    assert_eq!(again.status_code, 200);
    assert_eq!(body(&again)["duplicate"], Value::Bool(true));
    assert_eq!(body(&again)["recordId"].as_str(), Some(id.as_str()));
    assert_eq!(stored(&ddb, &names.navigation, &id).await.len(), 1);
}

#[tokio::test]
async fn base64_bodies_are_decoded() {
    let Some((handler, _ddb, _names)) = setup().await else {
        return;
    };
    let mut event = fixture("apigw-responsys-json.json");
    let raw = event.body.take().expect("body");
    event.body =
        Some(base64::engine::general_purpose::STANDARD.encode(raw.replace("3f1c9a4e", "aaaaaaaa")));
    event.is_base64_encoded = true;
    let r = handle_apigw(&handler, event, "req").await;
    assert_eq!(r.status_code, 202, "{:?}", r.body);

    let mut bad = fixture("apigw-responsys-json.json");
    bad.body = Some("%%% not base64".into());
    bad.is_base64_encoded = true;
    let r = handle_apigw(&handler, bad, "req").await;
    assert_eq!(r.status_code, 400);
}

#[tokio::test]
async fn rdstation_text_plain_resolves_the_client_from_tid() {
    let Some((handler, ddb, names)) = setup().await else {
        return;
    };
    let r = handle_apigw(&handler, fixture("apigw-rdstation-textplain.json"), "req").await;
    assert_eq!(r.status_code, 202, "{:?}", r.body);
    let id = body(&r)["recordId"].as_str().expect("recordId").to_owned();
    assert!(id.starts_with("client-xyz-"), "{id}");
    let records = stored(&ddb, &names.navigation, &id).await;
    assert_eq!(records[0].crm, Crm::RDSTATION);
    assert_eq!(records[0].product_name.as_deref(), Some("Tênis Corrida"));
    assert_eq!(
        records[0].properties.get("cartId"),
        Some(&Value::String("c-58f1".into()))
    );

    let mut unknown = fixture("apigw-rdstation-textplain.json");
    unknown.body = unknown
        .body
        .map(|b| b.replace("GA4.123456789.987654321", "GA4.1.1"));
    let r = handle_apigw(&handler, unknown, "req").await;
    assert_eq!(r.status_code, 404);
    assert_eq!(body(&r)["error"], "unknown_tid");
}

#[tokio::test]
async fn missing_email_is_a_400_naming_the_field() {
    let Some((handler, _ddb, _names)) = setup().await else {
        return;
    };
    let r = handle_apigw(
        &handler,
        fixture("apigw-salesforce-missing-email.json"),
        "req",
    )
    .await;
    assert_eq!(r.status_code, 400);
    let b = body(&r);
    assert_eq!(b["error"], "invalid_event");
    assert_eq!(b["details"][0]["field"], "email");
    assert_eq!(b["details"][0]["rule"], "required");
    assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
}

#[tokio::test]
async fn preflight_is_answered_from_allowed_origins() {
    let Some((handler, _ddb, _names)) = setup().await else {
        return;
    };
    let r = handle_apigw(&handler, fixture("apigw-salesforce-preflight.json"), "req").await;
    assert_eq!(r.status_code, 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(header(&r, "access-control-max-age"), Some("7200"));
    assert!(r.body.is_none());

    let mut evil = fixture("apigw-salesforce-preflight.json");
    evil.headers
        .insert("origin", "https://evil.example".parse().expect("header"));
    evil.multi_value_headers
        .insert("origin", "https://evil.example".parse().expect("header"));
    let r = handle_apigw(&handler, evil, "req").await;
    assert_eq!(r.status_code, 204);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}

/// The `cloudfront` front door: the same event as a Lambda function URL (payload 2.0)
/// request that CloudFront forwarded.
fn function_url_fixture() -> aws_lambda_events::lambda_function_urls::LambdaFunctionUrlRequest {
    let path = format!(
        "{}/../fixtures/events/function-url-responsys-json.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text).expect("function URL event")
}

#[tokio::test]
async fn function_url_events_are_stored_and_pixels_answered() {
    let Some((handler, ddb, names)) = setup().await else {
        return;
    };
    let r = handle_function_url(&handler, function_url_fixture(), "lambda-req").await;
    assert_eq!(r.status_code, 202, "{:?}", r.body);
    assert!(!r.is_base64_encoded);
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(ORIGIN)
    );
    let answer: Value = serde_json::from_str(r.body.as_deref().expect("body")).expect("json");
    let id = answer["recordId"].as_str().expect("recordId").to_owned();
    assert_eq!(stored(&ddb, &names.navigation, &id).await.len(), 1);

    // The same event as the GTM template's pixel: GET /responsys/p?d=<base64url>.
    let mut pixel = function_url_fixture();
    let event: Value = serde_json::from_str(pixel.body.as_deref().expect("body")).expect("json");
    let mut event = event;
    event["eventId"] = Value::String("pixel-through-cloudfront-1".into());
    let d = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(event.to_string());
    pixel.body = None;
    pixel.raw_path = Some("/responsys/p".into());
    pixel.raw_query_string = Some(format!("d={d}"));
    pixel.query_string_parameters.insert("d".into(), d);
    pixel.request_context.http.method = Some("GET".into());
    pixel.headers.remove("origin");
    pixel.headers.remove("content-type");
    pixel.headers.insert(
        "referer",
        http::HeaderValue::from_static("https://www.loja-exemplo.com.br/produto/xyz"),
    );
    let r = handle_function_url(&handler, pixel, "lambda-req-2").await;
    assert_eq!(r.status_code, 200);
    assert!(r.is_base64_encoded);
    let gif = base64::engine::general_purpose::STANDARD
        .decode(r.body.as_deref().expect("body"))
        .expect("base64");
    assert_eq!(gif, ingest::PIXEL_GIF);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("image/gif")
    );
}

/// The Lambda's privacy wiring (`aws::privacy::from_env`, here with its table and secret
/// named): the installation key is read in the background; while its secret is missing,
/// events are refused with a 503 and nothing is stored (no event passes a suppression
/// check that could not be made); once the secret exists, the next event reads it, is
/// checked against the suppression list and stored, and a suppressed email is not.
#[tokio::test]
async fn without_the_installation_key_events_are_refused_until_it_can_be_read() {
    use domain::privacy::{EmailKeyer, SuppressionStore};
    let Some((handler, ddb, names)) = setup().await else {
        return;
    };
    let Some(config) = emulator_config().await else {
        return;
    };
    let secrets = aws::SecretsManager::new(aws_sdk_secretsmanager::Client::new(&config));
    let secret_name = format!("{}/installation-key", unique("key"));
    let privacy = aws::privacy::from_parts(
        &ddb,
        &secrets,
        names.suppressions.clone(),
        secret_name.clone(),
    );
    let handler = handler.with_privacy(privacy);

    let r = handle_apigw(&handler, fixture("apigw-responsys-json.json"), "req-1").await;
    assert_eq!(r.status_code, 503, "{:?}", r.body);
    let refused = body(&r);
    assert_eq!(
        refused["error"], "unavailable",
        "a retryable refusal (the cause is logged, not told to the public): {refused}"
    );
    assert!(
        !refused
            .to_string()
            .to_lowercase()
            .contains("user@example.com"),
        "no email in the answer"
    );
    let event_id = "3f1c9a4e-7d1b-4c55-9d0e-2b8f6a1e0c11";

    // The operator creates the secret: the next event reads it and goes through (the
    // same event again: 202, not a duplicate, so the refused one was not stored).
    let secret = EmailKeyer::generate_secret();
    aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(&secret_name)
        .secret_string(&secret)
        .send()
        .await
        .expect("secret");
    let r = handle_apigw(&handler, fixture("apigw-responsys-json.json"), "req-2").await;
    assert_eq!(r.status_code, 202, "{:?}", r.body);
    assert_ne!(body(&r)["duplicate"], Value::Bool(true));
    let id = body(&r)["recordId"].as_str().expect("recordId").to_owned();
    assert_eq!(stored(&ddb, &names.navigation, &id).await.len(), 1);

    // A suppressed email (keyed with the secret just read) is not stored.
    let keyer = EmailKeyer::from_secret(&secret).expect("key");
    aws::DynamoSuppressions::new(ddb.clone(), &names.suppressions)
        .suppress(
            domain::privacy::GLOBAL_SCOPE,
            &keyer.key(&domain::event::Email::parse("other@example.com").expect("email")),
            0,
        )
        .await
        .expect("suppress");
    let mut request = fixture("apigw-responsys-json.json");
    let text = request.body.take().expect("body");
    request.body = Some(
        text.replace("User@Example.com", "other@example.com")
            .replace(event_id, "another-event-id"),
    );
    let r = handle_apigw(&handler, request, "req-3").await;
    assert!(r.status_code < 300, "{:?}", r.body);
    let record_id = body(&r)["recordId"].as_str().unwrap_or_default().to_owned();
    assert!(
        record_id.is_empty() || stored(&ddb, &names.navigation, &record_id).await.is_empty(),
        "a suppressed email is not stored: {:?}",
        r.body
    );
}
