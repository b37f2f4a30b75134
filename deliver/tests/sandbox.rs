//! Every outcome class end to end: the deliver handler against the sandbox CRMs over
//! real HTTP, with the SQLite store (clients, tokens), a secrets file and the local
//! queues.

use async_trait::async_trait;
use deliver::{DeliverHandler, DeliverSettings, InboundMessage};
use domain::alerts::DedupAlerts;
use domain::delivery::DeliveryMessage;
use domain::{
    Alert, AlertSink, AllowedOrigins, ClientConfig, ClientId, Crm, GtmEvent, NavigationRecord,
    QueueKind, QueueSender, SystemClock, TokenStore,
};
use local::{FileSecrets, LocalQueues, SqliteStore, StoreOptions, queue_name};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Alerts(Mutex<Vec<Alert>>);
#[async_trait]
impl AlertSink for Alerts {
    async fn alert(&self, alert: &Alert) {
        self.0.lock().expect("lock").push(alert.clone());
    }
}

type Handler = DeliverHandler<
    SqliteStore,
    SqliteStore,
    FileSecrets,
    LocalQueues,
    Arc<DedupAlerts<Arc<Alerts>, SystemClock>>,
    SystemClock,
>;

struct Env {
    _dir: tempfile::TempDir,
    sandbox: String,
    store: SqliteStore,
    queues: LocalQueues,
    alerts: Arc<Alerts>,
    http: reqwest::Client,
    secrets: FileSecrets,
}

async fn env() -> Env {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sandbox = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(sandbox::serve(listener, sandbox::Sandbox::default()));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("data"), StoreOptions::default()).expect("open");
    let secrets = FileSecrets::open(&dir.path().join("secrets.json"));
    let creds = [
        (
            "responsys",
            json!({"username": "shop-r", "password": "pw", "loginUrl": format!("{sandbox}/responsys")}),
        ),
        (
            "salesforce",
            json!({"clientId": "shop-s", "clientSecret": "pw", "subdomain": "x", "authUrl": format!("{sandbox}/sfmc")}),
        ),
        (
            "rdstation",
            json!({"clientId": "shop-d", "clientSecret": "pw", "refreshToken": "rt-0", "authUrl": format!("{sandbox}/rdstation"), "apiUrl": format!("{sandbox}/rdstation")}),
        ),
        (
            "webhook",
            json!({"signingSecret": sandbox::webhook::DEMO_SIGNING_SECRET}),
        ),
    ];
    for (crm, value) in creds {
        domain::SecretStore::put_secret(
            &secrets,
            &format!("/connect/{crm}/shop/credentials"),
            &domain::Secret::new(value.to_string()),
        )
        .await
        .expect("secret");
    }
    for (id, crm, target) in [
        (
            "shop-r",
            Crm::RESPONSYS,
            Some(json!({"kind": "pet", "pet_name": "EVENTS"})),
        ),
        ("shop-s", Crm::SFMC, None),
        ("shop-d", Crm::RDSTATION, None),
        (
            "shop-w",
            Crm::WEBHOOK,
            Some(json!({"url": format!("{sandbox}/webhook/shop"), "batch_size": 2})),
        ),
    ] {
        store
            .upsert_client(&ClientConfig {
                client_id: ClientId::parse(id).expect("id"),
                crm,
                active: true,
                allowed_origins: AllowedOrigins::default(),
                target,
                secret_name: Some(format!("/connect/{crm}/shop/credentials")),
                rate_limit_per_second: None,
                policy: domain::ClientPolicy {
                    create_contacts: domain::ContactCreation::All,
                    ..Default::default()
                },
            })
            .await
            .expect("client");
    }
    let queues = LocalQueues::new(store.clone(), Arc::new(SystemClock), 5);
    Env {
        _dir: dir,
        sandbox,
        store,
        queues,
        alerts: Arc::default(),
        http: reqwest::Client::new(),
        secrets,
    }
}

impl Env {
    fn handler(&self, crm: Crm) -> Handler {
        self.handler_with(crm, DeliverSettings::for_crm(crm))
    }

    async fn fault(&self, body: Value) {
        let r = self
            .http
            .post(format!("{}/_sandbox/faults", self.sandbox))
            .json(&body)
            .send()
            .await
            .expect("fault");
        assert!(r.status().is_success());
    }

    async fn records(&self) -> Vec<Value> {
        self.http
            .get(format!("{}/_sandbox/records", self.sandbox))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// Sends `n` messages of `client` to the CRM's queue and receives them, as a worker would.
    async fn inbound(&self, crm: Crm, client: &str, n: usize) -> Vec<InboundMessage> {
        let messages: Vec<domain::OutgoingMessage> = (0..n)
            .map(|i| {
                let body = json!({"clientId": client, "tid": "GA4.1.2", "email": format!("U{i}@Example.com"), "eventType": "add_to_cart", "productId": format!("SKU-{i}"), "productPrice": 5});
                let event = GtmEvent::parse(crm, body).expect("valid");
                let m = DeliveryMessage::from_record(NavigationRecord::new(event, ClientId::parse(client).expect("id"), crm, 1_764_000_000_000, 48));
                domain::OutgoingMessage { id: format!("{i}"), body: serde_json::to_string(&m).expect("json"), attributes: m.attributes() }
            })
            .collect();
        self.queues
            .send_batch(crm, QueueKind::Delivery, &messages)
            .await
            .expect("send");
        self.receive(crm).await
    }

    async fn receive(&self, crm: Crm) -> Vec<InboundMessage> {
        let mut out = Vec::new();
        loop {
            let got = self
                .queues
                .receive(
                    &queue_name(crm, QueueKind::Delivery),
                    None,
                    10,
                    Duration::from_secs(30),
                )
                .await
                .expect("receive");
            if got.is_empty() {
                return out;
            }
            out.extend(got.into_iter().map(|m| InboundMessage {
                message_id: m.message_id,
                receipt_handle: m.receipt_handle,
                body: m.body,
                attributes: m.attributes,
                receive_count: m.receive_count,
                sent_at_ms: Some(m.sent_at_ms),
            }));
        }
    }

    async fn dlq(&self, crm: Crm) -> Vec<HashMap<String, String>> {
        self.queues
            .receive(
                &queue_name(crm, QueueKind::DeadLetter),
                None,
                10,
                Duration::from_secs(30),
            )
            .await
            .expect("receive")
            .into_iter()
            .map(|m| m.attributes.into_iter().collect())
            .collect()
    }

    async fn hidden_for(&self, crm: Crm) -> Option<i64> {
        let at = self
            .queues
            .next_visible_at(&queue_name(crm, QueueKind::Delivery))
            .await
            .expect("next")?;
        Some(at - domain::Clock::now_ms(&SystemClock))
    }
}

#[tokio::test]
async fn delivered_on_each_crm() {
    let env = env().await;
    for (crm, client) in [
        (Crm::RESPONSYS, "shop-r"),
        (Crm::SFMC, "shop-s"),
        (Crm::RDSTATION, "shop-d"),
        (Crm::WEBHOOK, "shop-w"),
    ] {
        let batch = env.inbound(crm, client, 3).await;
        let outcome = env.handler(crm).handle(&batch).await;
        assert!(outcome.redeliver.is_empty(), "{crm}: {outcome:?}");
        assert_eq!(
            outcome.counts.get(&(client.to_owned(), "delivered")),
            Some(&3),
            "{crm}"
        );
    }
    let records = env.records().await;
    assert_eq!(records.len(), 12);
    for r in &records {
        assert!(
            r["email"].as_str().expect("email").starts_with('u'),
            "lower-case email: {r}"
        );
    }
    let rd: Vec<&Value> = records.iter().filter(|r| r["crm"] == "rdstation").collect();
    assert_eq!(rd[0]["raw"]["event_type"], "CONVERSION");
    assert_eq!(
        rd[0]["raw"]["payload"]["conversion_identifier"],
        "add_to_cart"
    );
    // The RD refresh token rotated and was written back to the secret.
    let secret =
        domain::SecretStore::get_secret(&env.secrets, "/connect/rdstation/shop/credentials")
            .await
            .expect("get")
            .expect("some");
    assert_ne!(
        serde_json::from_str::<Value>(secret.expose()).expect("json")["refreshToken"],
        "rt-0"
    );
}

#[tokio::test]
async fn permanent_rejections_go_to_the_dlq_with_their_reason() {
    let env = env().await;
    for (crm, client, status) in [
        (Crm::RESPONSYS, "shop-r", "MERGEFAILED"),
        (Crm::SFMC, "shop-s", "10006"),
        (Crm::RDSTATION, "shop-d", "400"),
        (Crm::WEBHOOK, "shop-w", "http_422"),
    ] {
        env.fault(json!({"crm": crm, "mode": "reject", "rate": 1.0}))
            .await;
        let batch = env.inbound(crm, client, 2).await;
        let outcome = env.handler(crm).handle(&batch).await;
        let dlq = env.dlq(crm).await;
        if crm == Crm::SFMC {
            // 10006: the first row is refused, the second was not attempted (retried).
            assert_eq!(dlq.len(), 1, "{crm}");
            assert_eq!(outcome.redeliver.len(), 1);
        } else {
            assert!(outcome.redeliver.is_empty(), "{crm}: {outcome:?}");
            assert_eq!(dlq.len(), 2, "{crm}");
        }
        let a = &dlq[0];
        assert_eq!(a["failureReason"], "rejected_by_crm");
        assert!(a["failureStatus"].starts_with(status), "{crm}: {a:?}");
        assert_eq!(a["attempts"], "1");
        assert!(a.contains_key("failedAt") && a.contains_key("failureDetail"));
        assert_eq!(a["clientId"], client);
        assert!(
            env.alerts
                .0
                .lock()
                .expect("lock")
                .iter()
                .any(|x| x.kind == "permanent_failure" && x.crm == Some(crm))
        );
    }
    assert!(env.records().await.is_empty());
}

#[tokio::test]
async fn sfmc_aggregate_error_splits_the_batch() {
    let env = env().await;
    env.fault(json!({"crm": "salesforce", "mode": "reject", "rate": 0.34}))
        .await;
    let batch = env.inbound(Crm::SFMC, "shop-s", 5).await;
    let outcome = env.handler(Crm::SFMC).handle(&batch).await;
    // rate 0.34: the 3rd row is the first refused → rows 0–1 delivered, row 2 DLQ, 3–4 retried.
    assert_eq!(
        outcome.counts.get(&("shop-s".to_owned(), "delivered")),
        Some(&2),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.counts.get(&("shop-s".to_owned(), "dead_lettered")),
        Some(&1)
    );
    assert_eq!(
        outcome.counts.get(&("shop-s".to_owned(), "retried")),
        Some(&2)
    );
    assert_eq!(
        outcome.redeliver,
        vec![batch[3].message_id.clone(), batch[4].message_id.clone()]
    );
    assert_eq!(env.records().await.len(), 2);
}

#[tokio::test]
async fn unavailable_means_retry_later_with_backoff() {
    let env = env().await;
    env.fault(json!({"crm": "rdstation", "mode": "unavailable", "rate": 1.0}))
        .await;
    let batch = env.inbound(Crm::RDSTATION, "shop-d", 2).await;
    let outcome = env.handler(Crm::RDSTATION).handle(&batch).await;
    assert_eq!(outcome.redeliver.len(), 2);
    let hidden = env.hidden_for(Crm::RDSTATION).await.expect("hidden");
    assert!(
        (7_000..=13_000).contains(&hidden),
        "first retry ≈ 10 s ± 20 %: {hidden}"
    );
    assert!(env.dlq(Crm::RDSTATION).await.is_empty());
}

#[tokio::test]
async fn throttles_hide_messages_for_the_crm_wait() {
    let env = env().await;
    for (crm, client, expected_ms) in [
        (Crm::RESPONSYS, "shop-r", 60_000),
        (Crm::SFMC, "shop-s", 5_000),
        (Crm::RDSTATION, "shop-d", 30_000),
        // The webhook twin's Retry-After: 1.
        (Crm::WEBHOOK, "shop-w", 1_000),
    ] {
        env.fault(json!({"crm": crm, "mode": "throttle", "rate": 1.0}))
            .await;
        let batch = env.inbound(crm, client, 2).await;
        let outcome = env.handler(crm).handle(&batch).await;
        assert_eq!(outcome.redeliver.len(), 2, "{crm}");
        assert_eq!(
            outcome.counts.get(&(client.to_owned(), "throttled")),
            Some(&2),
            "{crm}"
        );
        let hidden = env.hidden_for(crm).await.expect("hidden");
        assert!(
            (expected_ms - 1_000..=expected_ms).contains(&hidden),
            "{crm}: {hidden}"
        );
    }
}

#[tokio::test]
async fn an_expired_token_is_refreshed_exactly_once() {
    let env = env().await;
    for (crm, client) in [
        (Crm::RESPONSYS, "shop-r"),
        (Crm::SFMC, "shop-s"),
        (Crm::RDSTATION, "shop-d"),
    ] {
        let handler = env.handler(crm);
        let warm = env.inbound(crm, client, 1).await;
        assert!(handler.handle(&warm).await.redeliver.is_empty());
        let before = env
            .store
            .get_token(&ClientId::parse(client).expect("id"), crm)
            .await
            .expect("get")
            .expect("token");
        // Every token issued so far is invalid now; new ones live 60 s.
        env.fault(json!({"crm": crm, "mode": "expire_tokens", "tokenTtlMs": 60_000}))
            .await;
        let batch = env.inbound(crm, client, 3).await;
        let outcome = handler.handle(&batch).await;
        assert!(outcome.redeliver.is_empty(), "{crm}: {outcome:?}");
        assert_eq!(outcome.token_refreshes, 1, "{crm}");
        let after = env
            .store
            .get_token(&ClientId::parse(client).expect("id"), crm)
            .await
            .expect("get")
            .expect("token");
        assert_ne!(before.access_token, after.access_token);
        assert!(after.issued_at >= before.issued_at);
    }
}

#[tokio::test]
async fn concurrent_refreshes_never_leave_the_older_token() {
    let env = env().await;
    let client = ClientConfig {
        client_id: ClientId::parse("shop-s").expect("id"),
        crm: Crm::SFMC,
        active: true,
        allowed_origins: AllowedOrigins::default(),
        target: None,
        secret_name: Some("/connect/salesforce/shop/credentials".into()),
        rate_limit_per_second: None,
        policy: domain::ClientPolicy {
            create_contacts: domain::ContactCreation::All,
            ..Default::default()
        },
    };
    let http = crm::CrmHttp::new(&crm::HttpSettings::default()).expect("http");
    // Two managers = two processes (no shared single-flight), refreshing at once.
    let a = std::sync::Arc::new(crm::TokenManager::new(
        env.store.clone(),
        env.secrets.clone(),
        SystemClock,
        http.clone(),
    ));
    let b = std::sync::Arc::new(crm::TokenManager::new(
        env.store.clone(),
        env.secrets.clone(),
        SystemClock,
        http,
    ));
    let (ra, rb) = tokio::join!(
        a.refresh(&client, true, None),
        b.refresh(&client, true, None)
    );
    let (ta, tb) = (ra.expect("a").0, rb.expect("b").0);
    let stored = env
        .store
        .get_token(&client.client_id, client.crm)
        .await
        .expect("get")
        .expect("token");
    let newest = if (ta.issued_at, ta.updated_at) >= (tb.issued_at, tb.updated_at) {
        ta
    } else {
        tb
    };
    assert_eq!(stored.issued_at, newest.issued_at);
    // A stale write afterwards is refused.
    let mut stale = stored.clone();
    stale.issued_at -= 1_000;
    stale.access_token = domain::Secret::new("stale".into());
    assert!(!env.store.put_token_if_newer(&stale).await.expect("put"));
    assert_ne!(
        env.store
            .get_token(&client.client_id, client.crm)
            .await
            .expect("get")
            .expect("t")
            .access_token
            .expose(),
        "stale"
    );
}

#[tokio::test]
async fn alerts_are_deduplicated_with_counts() {
    let env = env().await;
    env.fault(json!({"crm": "rdstation", "mode": "reject", "rate": 1.0}))
        .await;
    let handler = env.handler(Crm::RDSTATION);
    let batch = env.inbound(Crm::RDSTATION, "shop-d", 100).await;
    handler.handle(&batch).await;
    let again = env.inbound(Crm::RDSTATION, "shop-d", 5).await;
    handler.handle(&again).await;
    let alerts = env.alerts.0.lock().expect("lock");
    let permanent: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.kind == "permanent_failure")
        .collect();
    assert_eq!(permanent.len(), 1, "{alerts:?}");
    assert_eq!(permanent[0].count, 100);
    assert!(
        !permanent[0].message.contains("@example.com"),
        "no clear email in alerts"
    );
}

#[tokio::test]
async fn malformed_bodies_and_unknown_clients_are_dead_lettered() {
    let env = env().await;
    let batch = vec![InboundMessage {
        message_id: "m1".into(),
        receipt_handle: "1-x".into(),
        body: "{not json".into(),
        attributes: vec![],
        receive_count: 1,
        sent_at_ms: None,
    }];
    let outcome = env.handler(Crm::RESPONSYS).handle(&batch).await;
    assert!(outcome.redeliver.is_empty());
    // A message of a version this build does not know: dead-lettered, never looping.
    let mut future = env.inbound(Crm::RESPONSYS, "shop-r", 1).await;
    let mut body: Value = serde_json::from_str(&future[0].body).expect("json");
    body["v"] = json!(2);
    future[0].body = body.to_string();
    let outcome = env.handler(Crm::RESPONSYS).handle(&future).await;
    assert!(outcome.redeliver.is_empty());
    let dlq = env.dlq(Crm::RESPONSYS).await;
    assert_eq!(dlq.len(), 2);
    let v2 = dlq
        .iter()
        .find(|a| a.get("failureStatus").map(String::as_str) == Some("unknown_version"))
        .expect("the v2 message");
    assert_eq!(v2["failureReason"], "malformed_message");
    let mut unknown = env.inbound(Crm::RESPONSYS, "shop-nobody", 1).await;
    unknown[0].receive_count = 3;
    let outcome = env.handler(Crm::RESPONSYS).handle(&unknown).await;
    assert!(outcome.redeliver.is_empty());
    let dlq = env.dlq(Crm::RESPONSYS).await;
    assert_eq!(dlq.len(), 1, "the others were received above");
    assert_eq!(dlq[0]["failureReason"], "client_config");
    assert_eq!(dlq[0]["failureStatus"], "unknown_client");
    assert_eq!(dlq[0]["attempts"], "3");
}

/// Sends one message per `(email, event type)` of `client` and receives them.
async fn inbound_events(
    env: &Env,
    crm: Crm,
    client: &str,
    events: &[(&str, &str)],
) -> Vec<InboundMessage> {
    let messages: Vec<domain::OutgoingMessage> = events
        .iter()
        .enumerate()
        .map(|(i, (email, kind))| {
            let body = json!({"clientId": client, "tid": "GA4.1.2", "email": email, "eventType": kind, "productId": "SKU-1"});
            let event = GtmEvent::parse(crm, body).expect("valid");
            let m = DeliveryMessage::from_record(NavigationRecord::new(event, ClientId::parse(client).expect("id"), crm, 1_764_000_000_000 + i as i64, 48));
            domain::OutgoingMessage { id: format!("{i}"), body: serde_json::to_string(&m).expect("json"), attributes: m.attributes() }
        })
        .collect();
    env.queues
        .send_batch(crm, QueueKind::Delivery, &messages)
        .await
        .expect("send");
    env.receive(crm).await
}

async fn safe_client(env: &Env, id: &str, crm: Crm, target: Option<Value>) {
    env.store
        .upsert_client(&ClientConfig {
            client_id: ClientId::parse(id).expect("id"),
            crm,
            active: true,
            allowed_origins: AllowedOrigins::default(),
            target,
            secret_name: Some(format!("/connect/{crm}/shop/credentials")),
            rate_limit_per_second: None,
            // The defaults: navigation events never create contacts.
            policy: domain::ClientPolicy::default(),
        })
        .await
        .expect("client");
}

#[tokio::test]
async fn by_default_nobody_is_opted_in_or_created_by_a_navigation_event() {
    let env = env().await;
    safe_client(&env, "safe-r", Crm::RESPONSYS, None).await;
    env.http
        .post(format!("{}/_sandbox/contacts", env.sandbox))
        .json(&json!({"emails": ["known@example.com"]}))
        .send()
        .await
        .expect("seed");
    let batch = inbound_events(
        &env,
        Crm::RESPONSYS,
        "safe-r",
        &[
            ("known@example.com", "product_view"),
            ("stranger@example.com", "product_view"),
            ("buyer@example.com", "purchase"),
        ],
    )
    .await;
    let outcome = env.handler(Crm::RESPONSYS).handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    let count = |k: &'static str| outcome.counts.get(&("safe-r".to_owned(), k)).copied();
    assert_eq!(count("delivered"), Some(2), "{outcome:?}");
    assert_eq!(count("skipped_unknown_contact"), Some(1), "{outcome:?}");
    assert!(
        env.dlq(Crm::RESPONSYS).await.is_empty(),
        "an update-only miss is not a DLQ entry"
    );
    let records = env.records().await;
    let by_email = |e: &str| records.iter().find(|r| r["email"] == e).cloned();
    assert!(by_email("stranger@example.com").is_none());
    let known = by_email("known@example.com").expect("known contact updated");
    assert_eq!(known["request"]["insertOnNoMatch"], false);
    assert_eq!(known["request"]["defaultPermissionStatus"], "OPTOUT");
    let buyer = by_email("buyer@example.com").expect("a purchase may create the contact");
    assert_eq!(buyer["request"]["insertOnNoMatch"], true);
    assert_eq!(buyer["request"]["defaultPermissionStatus"], "OPTOUT");

    // SFMC journeys fire only for the event types the target lists.
    safe_client(
        &env,
        "safe-s",
        Crm::SFMC,
        Some(json!({"kind": "journey", "event_definition_key": "APIEvent-1", "journey_event_types": ["purchase"]})),
    )
    .await;
    let batch = inbound_events(
        &env,
        Crm::SFMC,
        "safe-s",
        &[
            ("a@example.com", "product_view"),
            ("b@example.com", "purchase"),
        ],
    )
    .await;
    let outcome = env.handler(Crm::SFMC).handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    assert_eq!(
        outcome
            .counts
            .get(&("safe-s".to_owned(), "skipped_event_type")),
        Some(&1)
    );
    assert_eq!(
        outcome.counts.get(&("safe-s".to_owned(), "delivered")),
        Some(&1)
    );

    // RD Station has no update-only mode: navigation events are not sent by default.
    safe_client(&env, "safe-d", Crm::RDSTATION, None).await;
    let batch = inbound_events(
        &env,
        Crm::RDSTATION,
        "safe-d",
        &[("c@example.com", "product_view"), ("d@example.com", "lead")],
    )
    .await;
    let outcome = env.handler(Crm::RDSTATION).handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    assert_eq!(
        outcome
            .counts
            .get(&("safe-d".to_owned(), "skipped_update_only_unsupported")),
        Some(&1)
    );
    assert_eq!(
        outcome.counts.get(&("safe-d".to_owned(), "delivered")),
        Some(&1)
    );
    let records = env.records().await;
    assert!(
        records
            .iter()
            .all(|r| r["email"] != "a@example.com" && r["email"] != "c@example.com")
    );
}

impl Env {
    fn handler_with(&self, crm: Crm, settings: DeliverSettings) -> Handler {
        let http = crm::CrmHttp::new(&crm::HttpSettings::default()).expect("http");
        DeliverHandler::new(
            crm,
            self.store.clone(),
            std::sync::Arc::new(crm::TokenManager::new(
                self.store.clone(),
                self.secrets.clone(),
                SystemClock,
                http.clone(),
            )),
            http,
            self.queues.clone(),
            Arc::new(DedupAlerts::new(
                Arc::clone(&self.alerts),
                SystemClock,
                300_000,
            )),
            SystemClock,
            settings,
        )
    }

    async fn calls(&self, crm: &str) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/_sandbox/stats", self.sandbox))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        stats["calls"][crm].as_u64().unwrap_or(0)
    }
}

#[tokio::test]
async fn an_outage_is_retried_for_the_whole_window_then_dead_lettered_with_its_reason() {
    let env = env().await;
    env.fault(json!({"crm": "responsys", "mode": "unavailable", "rate": 1.0}))
        .await;
    let handler = env.handler(Crm::RESPONSYS);
    let mut batch = env.inbound(Crm::RESPONSYS, "shop-r", 3).await;
    // Many receives within the window: only ever retried, never dead-lettered.
    for receive in 1..=8 {
        for m in &mut batch {
            m.receive_count = receive;
        }
        let outcome = handler.handle(&batch).await;
        assert_eq!(outcome.redeliver.len(), 3, "{outcome:?}");
    }
    assert!(env.dlq(Crm::RESPONSYS).await.is_empty());
    // Queued 25 hours ago: past the 24 h window.
    let now = domain::Clock::now_ms(&SystemClock);
    for m in &mut batch {
        m.sent_at_ms = Some(now - 25 * 3600 * 1000);
    }
    let outcome = env.handler(Crm::RESPONSYS).handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    let dlq = env.dlq(Crm::RESPONSYS).await;
    assert_eq!(dlq.len(), 3);
    for attrs in &dlq {
        assert_eq!(
            attrs["failureReason"], "retry_window_exhausted",
            "{attrs:?}"
        );
        assert!(!attrs["failureStatus"].is_empty());
        assert!(!attrs["failureDetail"].is_empty());
    }
    assert!(
        env.alerts
            .0
            .lock()
            .expect("lock")
            .iter()
            .any(|a| a.kind == "retry_window_exhausted")
    );
}

#[tokio::test]
async fn a_long_outage_costs_a_bounded_number_of_calls() {
    let env = env().await;
    env.fault(json!({"crm": "salesforce", "mode": "unavailable", "rate": 1.0}))
        .await;
    let mut settings = DeliverSettings::for_crm(Crm::SFMC);
    settings.breaker = deliver::BreakerSettings {
        failures_to_open: 2,
        open_base: Duration::from_millis(200),
        open_max: Duration::from_millis(400),
    };
    let handler = env.handler_with(Crm::SFMC, settings);
    let batch = env.inbound(Crm::SFMC, "shop-s", 10).await;
    let before = env.calls("salesforce").await;
    let started = std::time::Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let outcome = handler.handle(&batch).await;
        assert_eq!(
            outcome.redeliver.len(),
            10,
            "nothing is lost or dead-lettered"
        );
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = env.calls("salesforce").await - before;
    // Without the breaker every round would call (token + rowset); with it, the calls
    // are the failures that open it plus one probe per open period.
    let open_periods = 3000 / 200 + 1;
    assert!(rounds > 100, "{rounds} rounds");
    assert!(
        during <= 2 * (2 + open_periods),
        "{during} calls in {rounds} rounds of a 3 s outage"
    );
    assert!(during >= 2, "the breaker still probes: {during}");
    eprintln!("simulated outage: {rounds} delivery rounds, {during} CRM calls");
    // The CRM recovers: the next probe delivers and closes the breaker.
    env.http
        .delete(format!("{}/_sandbox/faults", env.sandbox))
        .send()
        .await
        .expect("clear");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let outcome = handler.handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    assert!(env.dlq(Crm::SFMC).await.is_empty());
}

/// An RD Station client `rd-key` with an API key only (tid `GA4.1.2`, the sandbox's
/// endpoint), which creates contacts for every event.
async fn api_key_rd_client(env: &Env, target: Option<serde_json::Value>) {
    env.store
        .upsert_client(&ClientConfig {
            client_id: ClientId::parse("rd-key").expect("id"),
            crm: Crm::RDSTATION,
            active: true,
            allowed_origins: AllowedOrigins::default(),
            target,
            secret_name: None,
            rate_limit_per_second: None,
            policy: domain::ClientPolicy {
                create_contacts: domain::ContactCreation::All,
                ..Default::default()
            },
        })
        .await
        .expect("client");
    env.store
        .upsert_rdstation(&domain::RdStationConfig {
            tid: "GA4.1.2".into(),
            client_id: ClientId::parse("rd-key").expect("id"),
            endpoint: Some(format!("{}/rdstation", env.sandbox)),
            token: Some(domain::Secret::new("the-api-key".into())),
        })
        .await
        .expect("rd config");
}

#[tokio::test]
async fn api_key_rd_clients_send_every_event_as_a_conversion() {
    let env = env().await;
    api_key_rd_client(
        &env,
        Some(json!({"conversion_identifiers": {"purchase": "compra-site"}})),
    )
    .await;
    let batch = inbound_events(
        &env,
        Crm::RDSTATION,
        "rd-key",
        &[
            ("a@example.com", "purchase"),
            ("b@example.com", "cart_abandoned"),
            ("c@example.com", "lead"),
        ],
    )
    .await;
    let outcome = env.handler(Crm::RDSTATION).handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    assert_eq!(
        outcome.counts.get(&("rd-key".to_owned(), "delivered")),
        Some(&3),
        "{outcome:?}"
    );
    assert!(
        env.dlq(Crm::RDSTATION).await.is_empty(),
        "nothing is oauth_required"
    );
    let records = env.records().await;
    let identifier = |email: &str| {
        records
            .iter()
            .find(|r| r["email"] == email)
            .map(|r| {
                (
                    r["raw"]["event_type"].clone(),
                    r["raw"]["payload"]["conversion_identifier"].clone(),
                )
            })
            .expect("delivered")
    };
    assert_eq!(
        identifier("a@example.com"),
        (json!("CONVERSION"), json!("compra-site"))
    );
    assert_eq!(
        identifier("b@example.com"),
        (json!("CONVERSION"), json!("cart_abandoned"))
    );
    assert_eq!(
        identifier("c@example.com"),
        (json!("CONVERSION"), json!("lead"))
    );
}

#[tokio::test]
async fn two_processes_refreshing_rd_at_once_never_lose_the_refresh_token() {
    let env = env().await;
    let client = ClientConfig {
        client_id: ClientId::parse("shop-d").expect("id"),
        crm: Crm::RDSTATION,
        active: true,
        allowed_origins: AllowedOrigins::default(),
        target: None,
        secret_name: Some("/connect/rdstation/shop/credentials".into()),
        rate_limit_per_second: None,
        policy: domain::ClientPolicy::default(),
    };
    let http = crm::CrmHttp::new(&crm::HttpSettings::default()).expect("http");
    // Two managers = two processes (no shared single-flight), two secret-file handles.
    let manager = || {
        std::sync::Arc::new(crm::TokenManager::new(
            env.store.clone(),
            FileSecrets::open(&env._dir.path().join("secrets.json")),
            SystemClock,
            http.clone(),
        ))
    };
    let (a, b) = (manager(), manager());
    for round in 0..3 {
        let (ra, rb) = tokio::join!(
            a.refresh(&client, true, None),
            b.refresh(&client, true, None)
        );
        assert!(ra.is_ok(), "round {round}: {ra:?}");
        assert!(rb.is_ok(), "round {round}: {rb:?}");
    }
    // The refresh token saved is the live one: a third process can still refresh.
    let c = manager();
    c.refresh(&client, true, None)
        .await
        .expect("the saved refresh token still works");
}

/// The store's directory, with RD Station config reads that fail while `fail` is set.
struct FlakyTids {
    inner: SqliteStore,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl domain::ClientDirectory for FlakyTids {
    async fn client(&self, id: &ClientId) -> Result<Option<ClientConfig>, domain::StoreError> {
        self.inner.client(id).await
    }
    async fn rdstation_by_tid(
        &self,
        tid: &str,
    ) -> Result<Option<domain::RdStationConfig>, domain::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(domain::StoreError::Unavailable("throttled".into()));
        }
        self.inner.rdstation_by_tid(tid).await
    }
    async fn origins_for(&self, crm: Crm) -> Result<Vec<String>, domain::StoreError> {
        self.inner.origins_for(crm).await
    }
    async fn clients_of(&self, crm: Crm) -> Result<Vec<ClientConfig>, domain::StoreError> {
        self.inner.clients_of(crm).await
    }
}

#[tokio::test]
async fn an_api_key_client_is_retried_not_dead_lettered_when_its_config_cannot_be_read() {
    use domain::ClientDirectory as _;
    let env = env().await;
    api_key_rd_client(&env, None).await;
    assert!(
        env.store
            .rdstation_by_tid("GA4.1.2")
            .await
            .expect("read")
            .is_some()
    );
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let directory = FlakyTids {
        inner: env.store.clone(),
        fail: Arc::clone(&fail),
    };
    let http = crm::CrmHttp::new(&crm::HttpSettings::default()).expect("http");
    let handler = DeliverHandler::new(
        Crm::RDSTATION,
        directory,
        std::sync::Arc::new(crm::TokenManager::new(
            env.store.clone(),
            env.secrets.clone(),
            SystemClock,
            http.clone(),
        )),
        http,
        env.queues.clone(),
        Arc::new(DedupAlerts::new(
            Arc::clone(&env.alerts),
            SystemClock,
            300_000,
        )),
        SystemClock,
        DeliverSettings::for_crm(Crm::RDSTATION),
    );
    let batch = inbound_events(&env, Crm::RDSTATION, "rd-key", &[("a@example.com", "lead")]).await;
    let outcome = handler.handle(&batch).await;
    assert_eq!(outcome.redeliver.len(), 1, "{outcome:?}");
    assert!(
        env.dlq(Crm::RDSTATION).await.is_empty(),
        "dead-lettered on a transient read failure"
    );
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let outcome = handler.handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
}

#[tokio::test]
async fn messages_of_a_suppressed_email_already_in_flight_are_dropped() {
    use domain::privacy::{EmailKeyer, Privacy, SuppressionStore};
    let env = env().await;
    let keyer = EmailKeyer::new(b"an installation key of tests");
    let erased = domain::Email::parse("u0@example.com").expect("email");
    env.store
        .suppress("*", &keyer.key(&erased), 0)
        .await
        .expect("suppress");
    let handler = env.handler(Crm::SFMC).with_privacy(Privacy::new(
        keyer,
        Some(Arc::new(env.store.clone()) as Arc<dyn SuppressionStore>),
    ));
    let batch = env.inbound(Crm::SFMC, "shop-s", 3).await;
    let outcome = handler.handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    assert_eq!(
        outcome
            .counts
            .get(&("shop-s".to_owned(), "skipped_suppressed")),
        Some(&1)
    );
    assert_eq!(
        outcome.counts.get(&("shop-s".to_owned(), "delivered")),
        Some(&2)
    );
    let records = env.records().await;
    assert!(
        records.iter().all(|r| r["email"] != "u0@example.com"),
        "{records:?}"
    );
    assert!(env.dlq(Crm::SFMC).await.is_empty());
}

/// Two messages of `shop-w` handled with `secret` as its credentials secret.
async fn webhook_with_secret(env: &Env, secret: Value) -> deliver::DeliverOutcome {
    domain::SecretStore::put_secret(
        &env.secrets,
        "/connect/webhook/shop/credentials",
        &domain::Secret::new(secret.to_string()),
    )
    .await
    .expect("secret");
    let batch = env.inbound(Crm::WEBHOOK, "shop-w", 2).await;
    env.handler(Crm::WEBHOOK).handle(&batch).await
}

async fn webhook_calls(env: &Env) -> u64 {
    let stats: Value = env
        .http
        .get(format!("{}/_sandbox/stats", env.sandbox))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    stats["calls"]["webhook"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn the_webhook_posts_signed_batches_of_its_batch_size() {
    let env = env().await;
    let batch = env.inbound(Crm::WEBHOOK, "shop-w", 5).await;
    let outcome = env.handler(Crm::WEBHOOK).handle(&batch).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    assert_eq!(
        outcome.counts.get(&("shop-w".to_owned(), "delivered")),
        Some(&5)
    );
    // batch_size 2: 2 + 2 + 1, each call verified by the twin (it refuses bad signatures).
    assert_eq!(webhook_calls(&env).await, 3);
    let records = env.records().await;
    assert_eq!(records.len(), 5);
    for r in &records {
        assert_eq!(r["crm"], "webhook");
        assert_eq!(r["clientId"], "shop-w");
        // The delivery message as on the queue.
        assert_eq!(r["raw"]["v"], 1);
        assert!(
            r["raw"]["recordId"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        assert_eq!(r["raw"]["event"]["eventType"], "add_to_cart");
    }
}

#[tokio::test]
async fn a_webhook_refusing_the_signature_dead_letters_with_its_status() {
    let env = env().await;
    let outcome =
        webhook_with_secret(&env, json!({"signingSecret": "not-the-receivers-secret"})).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    let dlq = env.dlq(Crm::WEBHOOK).await;
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0]["failureReason"], "rejected_by_crm");
    assert_eq!(dlq[0]["failureStatus"], "http_401");
    assert!(env.records().await.is_empty());
}

#[tokio::test]
async fn an_unavailable_webhook_is_retried_after_its_retry_after_never_dead_lettered() {
    let env = env().await;
    env.fault(json!({"crm": "webhook", "mode": "unavailable", "rate": 1.0}))
        .await;
    let batch = env.inbound(Crm::WEBHOOK, "shop-w", 3).await;
    let outcome = env.handler(Crm::WEBHOOK).handle(&batch).await;
    assert_eq!(outcome.redeliver.len(), 3, "{outcome:?}");
    let hidden = env.hidden_for(Crm::WEBHOOK).await.expect("hidden");
    assert!((0..=1_000).contains(&hidden), "Retry-After: 1 → {hidden}");
    assert!(env.dlq(Crm::WEBHOOK).await.is_empty());
    // Once it is back, the same messages are delivered.
    let clear = env
        .http
        .delete(format!("{}/_sandbox/faults", env.sandbox))
        .send()
        .await
        .expect("clear");
    assert!(clear.status().is_success());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = env.receive(Crm::WEBHOOK).await;
    assert_eq!(again.len(), 3);
    let outcome = env.handler(Crm::WEBHOOK).handle(&again).await;
    assert!(outcome.redeliver.is_empty(), "{outcome:?}");
    assert_eq!(env.records().await.len(), 3);
}

#[tokio::test]
async fn an_unreachable_webhook_is_retried() {
    let env = env().await;
    // A port nothing listens on: connection refused, a transient failure.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    safe_client(&env, "shop-w", Crm::WEBHOOK, Some(json!({"url": url}))).await;
    let batch = env.inbound(Crm::WEBHOOK, "shop-w", 2).await;
    let outcome = env.handler(Crm::WEBHOOK).handle(&batch).await;
    assert_eq!(outcome.redeliver.len(), 2, "{outcome:?}");
    assert_eq!(
        outcome.counts.get(&("shop-w".to_owned(), "retried")),
        Some(&2)
    );
    assert!(env.dlq(Crm::WEBHOOK).await.is_empty());
}

#[tokio::test]
async fn an_unusable_webhook_secret_alerts_and_is_retried_not_dead_lettered() {
    let env = env().await;
    let outcome = webhook_with_secret(&env, json!({"signing_secret": "wrong key name"})).await;
    assert_eq!(outcome.redeliver.len(), 2, "{outcome:?}");
    assert!(env.dlq(Crm::WEBHOOK).await.is_empty());
    assert_eq!(webhook_calls(&env).await, 0, "nothing is sent unsigned");
    let alerts = env.alerts.0.lock().expect("lock").clone();
    let alert = alerts
        .iter()
        .find(|a| a.kind == "credentials_rejected")
        .expect("an alert");
    assert!(
        !alert.message.contains("wrong key name"),
        "the secret is not quoted"
    );
}
