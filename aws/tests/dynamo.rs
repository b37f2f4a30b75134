//! DynamoDB adapters against moto server, with the real SDK over HTTP.

use aws::provision::{TableNames, create_tables};
use aws::testing::{emulator_config, unique};
use aws::{DynamoClientDirectory, DynamoRecordStore};
use aws_sdk_dynamodb::types::AttributeValue;
use domain::{
    AllowedOrigins, ClientConfig, ClientDirectory, ClientId, Crm, GtmEvent, NavigationRecord,
    PutOutcome, RdStationConfig, RecordStore, Secret,
};
use serde_json::json;

fn cid(s: &str) -> ClientId {
    ClientId::parse(s).expect("client id")
}

fn record(event_id: Option<&str>, now_ms: i64) -> NavigationRecord {
    let mut body = json!({"clientId": "shop-a", "email": "Ana@Example.com", "eventType": "purchase",
        "productPrice": 10.5, "productUrl": "https://shop.example/p/1", "cartId": "c-1", "flags": [1, "x"]});
    if let Some(e) = event_id {
        body["eventId"] = json!(e);
    }
    let event = GtmEvent::parse(Crm::RESPONSYS, body).expect("valid");
    NavigationRecord::new(event, cid("shop-a"), Crm::RESPONSYS, now_ms, 48)
}

async fn setup() -> Option<(aws_sdk_dynamodb::Client, TableNames)> {
    let config = emulator_config().await?;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let names = TableNames::with_prefix(&unique("t"));
    create_tables(&client, &names).await.expect("create tables");
    Some((client, names))
}

#[tokio::test]
async fn records_round_trip_and_duplicates_are_detected_across_timestamps() {
    let Some((client, names)) = setup().await else {
        return;
    };
    let store = DynamoRecordStore::new(client.clone(), &names.navigation);

    let first = record(Some("evt-1"), 1_706_457_600_000);
    assert_eq!(
        store.put_if_absent(first.clone().into()).await,
        Ok(PutOutcome::Created)
    );
    // The same eventId received later: same recordId, another timestamp → still a duplicate.
    let retry = record(Some("evt-1"), 1_706_457_600_750);
    assert_eq!(retry.record_id, first.record_id);
    assert_ne!(retry.timestamp, first.timestamp);
    assert_eq!(
        store.put_if_absent(retry.clone().into()).await,
        Ok(PutOutcome::Duplicate)
    );
    // Without an eventId every event is new.
    assert_eq!(
        store.put_if_absent(record(None, 1).into()).await,
        Ok(PutOutcome::Created)
    );
    assert_eq!(
        store.put_if_absent(record(None, 1).into()).await,
        Ok(PutOutcome::Created)
    );

    // One item, keyed by the start of the record's UTC day (the key every retry of the
    // event shares), with the receipt time in `receivedAt`.
    let day_start = first.timestamp - first.timestamp.rem_euclid(86_400_000);
    let item = client
        .get_item()
        .table_name(&names.navigation)
        .key("recordId", AttributeValue::S(first.record_id.clone()))
        .key("timestamp", AttributeValue::N(day_start.to_string()))
        .send()
        .await
        .expect("get")
        .item
        .expect("stored");
    assert_eq!(
        item.get("email"),
        Some(&AttributeValue::S("ana@example.com".into()))
    );
    assert_eq!(
        item.get("productPrice"),
        Some(&AttributeValue::N("10.5".into()))
    );
    assert_eq!(
        item.get("ttl"),
        Some(&AttributeValue::N(first.ttl.to_string()))
    );
    assert_eq!(
        item.get(aws::dynamo::RECEIVED_AT),
        Some(&AttributeValue::N(first.timestamp.to_string()))
    );
    let back: NavigationRecord = aws::dynamo::record_of_item(&item)
        .expect("a record")
        .expect("decode");
    assert_eq!(back, first);

    let count = client
        .scan()
        .table_name(&names.navigation)
        .send()
        .await
        .expect("scan")
        .count;
    assert_eq!(
        count, 3,
        "the idempotent record (one item, no marker) and two records without eventId"
    );
}

#[tokio::test]
async fn client_directory_reads_clients_tids_and_origins() {
    let Some((client, names)) = setup().await else {
        return;
    };
    let dir = DynamoClientDirectory::new(client, &names.clients, &names.rdstation);
    let a = ClientConfig {
        client_id: cid("shop-a"),
        crm: Crm::RESPONSYS,
        active: true,
        allowed_origins: AllowedOrigins(vec!["https://a.example".into()]),
        target: Some(json!({"profileList": "CONTACTS", "fields": {"email": "EMAIL_ADDRESS_"}})),
        secret_name: Some("/connect/responsys/shop-a/credentials".into()),
        rate_limit_per_second: Some(50),
        policy: Default::default(),
    };
    let mut inactive = a.clone();
    inactive.client_id = cid("shop-b");
    inactive.active = false;
    inactive.allowed_origins = AllowedOrigins(vec!["https://b.example".into()]);
    let mut sf = a.clone();
    sf.client_id = cid("shop-c");
    sf.crm = Crm::SFMC;
    sf.allowed_origins = AllowedOrigins(vec!["https://c.example".into()]);
    for c in [&a, &inactive, &sf] {
        dir.put_client(c).await.expect("put");
    }
    assert_eq!(dir.client(&cid("shop-a")).await, Ok(Some(a)));
    assert_eq!(dir.client(&cid("nobody")).await, Ok(None));
    assert_eq!(
        dir.origins_for(Crm::RESPONSYS).await,
        Ok(vec!["https://a.example".to_string()])
    );
    let rd = RdStationConfig {
        tid: "GA4.100000000.200000000".into(),
        client_id: cid("shop-rd"),
        endpoint: Some("https://api.rd.services".into()),
        token: Some(Secret::new("api-key".into())),
    };
    dir.put_rdstation(&rd).await.expect("put");
    assert_eq!(
        dir.rdstation_by_tid("GA4.100000000.200000000").await,
        Ok(Some(rd))
    );
    assert_eq!(dir.rdstation_by_tid("GA4.1.1").await, Ok(None));
}

#[tokio::test]
async fn one_refresh_lease_at_a_time_across_processes() {
    use domain::TokenStore;
    let Some((client, names)) = setup().await else {
        return;
    };
    let tokens = aws::DynamoTokens::new(client, &names.tokens);
    let c = cid("shop-rd");
    assert!(
        tokens
            .acquire_refresh_lease(&c, Crm::RDSTATION, "a", 10_000, 0)
            .await
            .expect("a")
    );
    // Another holder waits while the lease runs…
    assert!(
        !tokens
            .acquire_refresh_lease(&c, Crm::RDSTATION, "b", 20_000, 5_000)
            .await
            .expect("b")
    );
    // …other clients and CRMs are not affected…
    assert!(
        tokens
            .acquire_refresh_lease(&cid("other"), Crm::RDSTATION, "b", 20_000, 5_000)
            .await
            .expect("other")
    );
    assert!(
        tokens
            .acquire_refresh_lease(&c, Crm::SFMC, "b", 20_000, 5_000)
            .await
            .expect("crm")
    );
    // …a stranger cannot release it, the holder can; an expired one is taken over.
    tokens
        .release_refresh_lease(&c, Crm::RDSTATION, "b")
        .await
        .expect("no-op");
    assert!(
        !tokens
            .acquire_refresh_lease(&c, Crm::RDSTATION, "b", 20_000, 5_000)
            .await
            .expect("b")
    );
    tokens
        .release_refresh_lease(&c, Crm::RDSTATION, "a")
        .await
        .expect("release");
    assert!(
        tokens
            .acquire_refresh_lease(&c, Crm::RDSTATION, "b", 20_000, 5_000)
            .await
            .expect("b")
    );
    assert!(
        tokens
            .acquire_refresh_lease(&c, Crm::RDSTATION, "c", 40_000, 20_001)
            .await
            .expect("expired")
    );
    // The lease items do not disturb the token itself.
    assert!(
        tokens
            .get_token(&c, Crm::RDSTATION)
            .await
            .expect("get")
            .is_none()
    );
}
