//! The token handler with its AWS adapters on moto server (DynamoDB, Secrets Manager,
//! SNS → SQS) and the sandbox CRMs.

use aws::provision::{TableNames, create_tables};
use aws::testing::{emulator_config, unique};
use aws::{DynamoClientDirectory, DynamoTokens, SecretsManager, SnsAlerts};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use domain::{
    AllowedOrigins, ClientConfig, ClientId, Crm, Secret, StoredToken, SystemClock, TokenStore,
};
use serde_json::{Value, json};
use std::sync::Arc;
use token::{TokenHandler, TokenSettings};

type Handler =
    TokenHandler<DynamoClientDirectory, DynamoTokens, SecretsManager, SnsAlerts, SystemClock>;

struct Env {
    config: aws_config::SdkConfig,
    sandbox: String,
    names: TableNames,
    directory: DynamoClientDirectory,
    secrets: aws_sdk_secretsmanager::Client,
    topic: String,
    alerts_queue: String,
    prefix: String,
}

async fn env() -> Option<Env> {
    let config = emulator_config().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sandbox = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(sandbox::serve(listener, sandbox::Sandbox::default()));
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let names = TableNames::with_prefix(&unique("token"));
    create_tables(&ddb, &names).await.expect("tables");
    let directory = DynamoClientDirectory::new(ddb, &names.clients, &names.rdstation);
    Some(Env {
        secrets: aws_sdk_secretsmanager::Client::new(&config),
        config,
        sandbox,
        names,
        directory,
        topic: String::new(),
        alerts_queue: String::new(),
        prefix: unique("p"),
    })
}

impl Env {
    async fn client(&self, id: &str, crm: Crm, creds: Value, active: bool) {
        let name = format!("/connect/{crm}/{}/{id}/credentials", self.prefix);
        self.secrets
            .create_secret()
            .name(&name)
            .secret_string(creds.to_string())
            .send()
            .await
            .expect("secret");
        self.directory
            .put_client(&ClientConfig {
                client_id: ClientId::parse(id).expect("id"),
                crm,
                active,
                allowed_origins: AllowedOrigins::default(),
                target: None,
                secret_name: Some(name),
                rate_limit_per_second: None,
                policy: Default::default(),
            })
            .await
            .expect("client");
    }

    fn tokens(&self) -> DynamoTokens {
        DynamoTokens::new(
            aws_sdk_dynamodb::Client::new(&self.config),
            &self.names.tokens,
        )
    }

    fn handler(&self, crm: Crm) -> Handler {
        let http = crm::CrmHttp::new(&crm::HttpSettings::default()).expect("http");
        TokenHandler::new(
            crm,
            self.directory.clone(),
            Arc::new(crm::TokenManager::new(
                self.tokens(),
                SecretsManager::new(self.secrets.clone()),
                SystemClock,
                http,
            )),
            SnsAlerts::new(aws_sdk_sns::Client::new(&self.config), &self.topic),
            SystemClock,
            TokenSettings::default(),
        )
    }

    async fn secret(&self, id: &str, crm: Crm) -> Value {
        let name = format!("/connect/{crm}/{}/{id}/credentials", self.prefix);
        let s = self
            .secrets
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .expect("get");
        serde_json::from_str(s.secret_string().expect("string")).expect("json")
    }
}

#[tokio::test]
async fn the_scheduled_fixture_refreshes_every_due_client_and_alerts_for_bad_credentials() {
    let Some(mut env) = env().await else { return };
    let (topic, alerts_queue) = aws::testing::topic_with_queue(&env.config).await;
    env.topic = topic;
    env.alerts_queue = alerts_queue;

    let login = format!("{}/responsys", env.sandbox);
    env.client(
        "client-abc",
        Crm::RESPONSYS,
        json!({"username": "client-abc", "password": "pw", "loginUrl": login}),
        true,
    )
    .await;
    env.client(
        "client-bad",
        Crm::RESPONSYS,
        json!({"username": "client-bad", "password": "wrong", "loginUrl": login}),
        true,
    )
    .await;
    env.client(
        "client-old",
        Crm::RESPONSYS,
        json!({"username": "client-old", "password": "pw", "loginUrl": login}),
        false,
    )
    .await;

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/events/scheduled-token-responsys.json"
    ))
    .expect("fixture");
    let event: EventBridgeEvent<Value> = serde_json::from_str(&text).expect("event");
    assert_eq!(
        token::client_of(&event.detail),
        None,
        "the schedule has no input: every client"
    );
    let summary = env
        .handler(Crm::RESPONSYS)
        .handle(token::client_of(&event.detail).as_ref(), false, None)
        .await;
    assert_eq!(summary.refreshed, ["client-abc"]);
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.failed[0].0, "client-bad");
    let tokens = env.tokens();
    let abc = tokens
        .get_token(&ClientId::parse("client-abc").expect("id"), Crm::RESPONSYS)
        .await
        .expect("get")
        .expect("token");
    assert!(abc.api_endpoint.ends_with("/responsys"));
    assert!(
        tokens
            .get_token(&ClientId::parse("client-old").expect("id"), Crm::RESPONSYS)
            .await
            .expect("get")
            .is_none(),
        "inactive clients are skipped"
    );
    let bad = tokens
        .refresh_status(&ClientId::parse("client-bad").expect("id"), Crm::RESPONSYS)
        .await
        .expect("get")
        .expect("status");
    assert!(!bad.ok, "the failing client is marked");
    // One alert, naming client and CRM, never the secret.
    let alerts = aws::testing::received_alerts(&env.config, &env.alerts_queue).await;
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert["kind"], "token_refresh_failed");
    assert_eq!(alert["clientId"], "client-bad");
    assert_eq!(alert["crm"], "responsys");
    assert!(!alert.to_string().contains("wrong"), "{alert}");

    // A second tick: abc's token is fresh now, nothing is asked of the CRM.
    let summary = env.handler(Crm::RESPONSYS).handle(None, false, None).await;
    assert_eq!(summary.still_valid, ["client-abc"]);
}

#[tokio::test]
async fn a_rotated_rd_refresh_token_is_written_back_to_the_secret() {
    let Some(env) = env().await else { return };
    let base = format!("{}/rdstation", env.sandbox);
    env.client("shop-rd", Crm::RDSTATION, json!({"clientId": "shop-rd", "clientSecret": "s", "refreshToken": "rt-original", "authUrl": base, "apiUrl": base}), true).await;
    let summary = env.handler(Crm::RDSTATION).handle(None, false, None).await;
    assert_eq!(summary.refreshed, ["shop-rd"]);
    let first = env.secret("shop-rd", Crm::RDSTATION).await["refreshToken"]
        .as_str()
        .expect("rt")
        .to_owned();
    assert_ne!(first, "rt-original");
    // The old one is dead at the CRM: only the saved one works for the next refresh.
    let summary = env.handler(Crm::RDSTATION).handle(None, true, None).await;
    assert_eq!(summary.refreshed, ["shop-rd"], "{summary:?}");
    assert_ne!(
        env.secret("shop-rd", Crm::RDSTATION).await["refreshToken"]
            .as_str()
            .expect("rt"),
        first
    );
}

#[tokio::test]
async fn an_expired_responsys_token_falls_back_to_a_password_login() {
    let Some(env) = env().await else { return };
    env.client("shop-r", Crm::RESPONSYS, json!({"username": "shop-r", "password": "pw", "loginUrl": format!("{}/responsys", env.sandbox)}), true).await;
    // A stored token our clock thinks is valid but due; the CRM has expired it.
    let now = domain::Clock::now_ms(&SystemClock);
    let stale = StoredToken {
        client_id: ClientId::parse("shop-r").expect("id"),
        crm: Crm::RESPONSYS,
        access_token: Secret::new("responsys-expired-at-the-crm".into()),
        api_endpoint: format!("{}/responsys", env.sandbox),
        issued_at: now - 115 * 60_000,
        expires_at: now + 5 * 60_000,
        updated_at: now - 115 * 60_000,
    };
    assert!(env.tokens().put_token_if_newer(&stale).await.expect("put"));
    let summary = env.handler(Crm::RESPONSYS).handle(None, false, None).await;
    assert_eq!(summary.refreshed, ["shop-r"], "{summary:?}");
    let fresh = env
        .tokens()
        .get_token(&stale.client_id, Crm::RESPONSYS)
        .await
        .expect("get")
        .expect("token");
    assert_ne!(fresh.access_token, stale.access_token);
    assert!(fresh.issued_at > stale.issued_at);
}

#[tokio::test]
async fn api_key_only_rd_clients_have_no_token_to_refresh() {
    let Some(env) = env().await else { return };
    env.directory
        .put_client(&ClientConfig {
            client_id: ClientId::parse("rd-key-only").expect("id"),
            crm: Crm::RDSTATION,
            active: true,
            allowed_origins: AllowedOrigins::default(),
            target: None,
            secret_name: None,
            rate_limit_per_second: None,
            policy: Default::default(),
        })
        .await
        .expect("client");
    let summary = env.handler(Crm::RDSTATION).handle(None, true, None).await;
    assert!(summary.failed.is_empty(), "{summary:?}");
    assert!(
        summary.refreshed.is_empty() && summary.still_valid.is_empty(),
        "{summary:?}"
    );
}
