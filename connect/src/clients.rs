//! `connect clients`: onboarding and operating clients without hand-written DynamoDB
//! JSON — list, show, put (validated), enable/disable, remove, validate, the credentials
//! secret, and the RD Station `tid` mapping. The same commands locally (`--data`) and on
//! AWS (`--aws`: CLIENTS_TABLE, RDSTATION_CONFIG_TABLE, Secrets Manager).

use crate::config::FileConfig;
use anyhow::{Context, bail};
use async_trait::async_trait;
use domain::{ClientConfig, ClientDirectory, ClientId, Crm, RdStationConfig, Secret, SecretStore};
use std::path::Path;

/// Where clients live.
#[async_trait]
trait Backend: Send + Sync {
    async fn all(&self) -> anyhow::Result<Vec<ClientConfig>>;
    async fn get(&self, id: &ClientId) -> anyhow::Result<Option<ClientConfig>>;
    async fn put(&self, client: &ClientConfig) -> anyhow::Result<()>;
    async fn delete(&self, id: &ClientId) -> anyhow::Result<bool>;
    async fn map_tid(&self, config: &RdStationConfig) -> anyhow::Result<()>;
    async fn put_secret(&self, name: &str, value: &str) -> anyhow::Result<()>;
    /// Authenticates with the client's CRM (a forced token refresh: nothing is written
    /// to the CRM).
    async fn authenticate(&self, client: &ClientConfig)
    -> Result<crm::Credential, crm::TokenError>;
    async fn close(&self) {}
}

fn http() -> Result<crm::CrmHttp, crm::TokenError> {
    crm::CrmHttp::new(&crm::HttpSettings::default())
        .map_err(|e| crm::TokenError::Transient(e.to_string()))
}

async fn every_crm<D: ClientDirectory>(d: &D) -> anyhow::Result<Vec<ClientConfig>> {
    let mut all = Vec::new();
    for crm in Crm::all() {
        all.extend(d.clients_of(crm).await?);
    }
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(all)
}

struct Local {
    store: local::SqliteStore,
    secrets: local::FileSecrets,
}

#[async_trait]
impl Backend for Local {
    async fn all(&self) -> anyhow::Result<Vec<ClientConfig>> {
        every_crm(&self.store).await
    }
    async fn get(&self, id: &ClientId) -> anyhow::Result<Option<ClientConfig>> {
        Ok(self.store.client(id).await?)
    }
    async fn put(&self, client: &ClientConfig) -> anyhow::Result<()> {
        Ok(self.store.upsert_client(client).await?)
    }
    async fn delete(&self, id: &ClientId) -> anyhow::Result<bool> {
        Ok(self.store.delete_client(id).await?)
    }
    async fn map_tid(&self, config: &RdStationConfig) -> anyhow::Result<()> {
        Ok(self.store.upsert_rdstation(config).await?)
    }
    async fn put_secret(&self, name: &str, value: &str) -> anyhow::Result<()> {
        Ok(self
            .secrets
            .put_secret(name, &Secret::new(value.to_owned()))
            .await?)
    }
    async fn authenticate(
        &self,
        client: &ClientConfig,
    ) -> Result<crm::Credential, crm::TokenError> {
        crm::TokenManager::new(
            self.store.clone(),
            self.secrets.clone(),
            domain::SystemClock,
            http()?,
        )
        .authenticate_now(client)
        .await
    }
    async fn close(&self) {
        self.store.shutdown().await;
    }
}

#[cfg(feature = "aws")]
struct Aws {
    directory: aws::DynamoClientDirectory,
    secrets: aws_sdk_secretsmanager::Client,
    tokens: Option<aws::DynamoTokens>,
}

#[cfg(feature = "aws")]
#[async_trait]
impl Backend for Aws {
    async fn all(&self) -> anyhow::Result<Vec<ClientConfig>> {
        every_crm(&self.directory).await
    }
    async fn get(&self, id: &ClientId) -> anyhow::Result<Option<ClientConfig>> {
        Ok(self.directory.client(id).await?)
    }
    async fn put(&self, client: &ClientConfig) -> anyhow::Result<()> {
        Ok(self.directory.put_client(client).await?)
    }
    async fn delete(&self, id: &ClientId) -> anyhow::Result<bool> {
        Ok(self.directory.delete_client(id).await?)
    }
    async fn map_tid(&self, config: &RdStationConfig) -> anyhow::Result<()> {
        Ok(self.directory.put_rdstation(config).await?)
    }
    /// A new version of the secret, or the secret itself when it does not exist yet.
    async fn put_secret(&self, name: &str, value: &str) -> anyhow::Result<()> {
        let put = self
            .secrets
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                self.secrets
                    .create_secret()
                    .name(name)
                    .secret_string(value)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{}",
                            aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                        )
                    })
            }
            Err(e) => bail!("{}", aws_sdk_secretsmanager::error::DisplayErrorContext(&e)),
        }
    }
    async fn authenticate(
        &self,
        client: &ClientConfig,
    ) -> Result<crm::Credential, crm::TokenError> {
        let tokens = self
            .tokens
            .clone()
            .ok_or_else(|| crm::TokenError::Transient("set TOKENS_TABLE".into()))?;
        crm::TokenManager::new(
            tokens,
            aws::SecretsManager::new(self.secrets.clone()),
            domain::SystemClock,
            http()?,
        )
        .authenticate_now(client)
        .await
    }
}

/// A check that the client's target exists, where the destination has a call for it
/// that writes nothing (Responsys profile lists; a signed ping to a webhook; the others
/// are checked by the first delivery, whose refusal names the missing key or field).
async fn check_target_exists(
    client: &ClientConfig,
    credential: &crm::Credential,
) -> anyhow::Result<Option<String>> {
    let http = http()?;
    match crm::destination(client.crm)
        .check_target(&http, client, credential.auth())
        .await
    {
        None => Ok(None),
        Some(Ok(found)) => Ok(Some(found)),
        Some(Err(e)) => bail!("client {}: {e}", client.client_id),
    }
}

async fn backend(data: &Path, aws: bool) -> anyhow::Result<Box<dyn Backend>> {
    #[cfg(not(feature = "aws"))]
    if aws {
        return Err(crate::no_aws());
    }
    #[cfg(feature = "aws")]
    if aws {
        let clients = std::env::var(aws::env::CLIENTS_TABLE).context("set CLIENTS_TABLE")?;
        let rdstation = std::env::var(aws::env::RDSTATION_CONFIG_TABLE)
            .context("set RDSTATION_CONFIG_TABLE")?;
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        return Ok(Box::new(Aws {
            tokens: std::env::var(aws::env::TOKENS_TABLE)
                .ok()
                .map(|t| aws::DynamoTokens::new(dynamodb.clone(), t)),
            directory: aws::DynamoClientDirectory::new(dynamodb, clients, rdstation),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
        }));
    }
    let store = crate::open_tool_store(data)?;
    Ok(Box::new(Local {
        store,
        secrets: local::FileSecrets::open(&data.join("secrets.json")),
    }))
}

/// Every check a client must pass: its id, origins, limits and target. The error names
/// the client and the key.
pub fn validate(client: &ClientConfig) -> anyhow::Result<()> {
    let id = &client.client_id;
    client
        .allowed_origins
        .check()
        .map_err(|e| anyhow::anyhow!("client {id}: {e}"))?;
    if client.rate_limit_per_second == Some(0) {
        bail!("client {id}: rate_limit_per_second must be at least 1 (omit it for no limit)");
    }
    for (i, h) in client.policy.allowed_url_hosts.iter().enumerate() {
        let host = h.trim().strip_prefix("*.").unwrap_or(h.trim());
        if host.is_empty() || host.contains(['/', ':', '@', '*', ' ']) {
            bail!(
                "client {id}: allowed_url_hosts[{i}]: {h:?} is not a host name (cdn.shop.example, *.cdn.example)"
            );
        }
    }
    crm::target::validate(client).map_err(|e| anyhow::anyhow!("target: {e}"))?;
    Ok(())
}

fn from_file(file: &Path) -> anyhow::Result<(Vec<ClientConfig>, Vec<RdStationConfig>)> {
    let config = FileConfig::load(file)?;
    let clients = config.client_configs()?;
    let rd = config.rdstation_configs()?;
    for (i, c) in clients.iter().enumerate() {
        validate(c).with_context(|| format!("clients[{i}]"))?;
    }
    Ok((clients, rd))
}

fn row(c: &ClientConfig) -> serde_json::Value {
    serde_json::to_value(c).unwrap_or_default()
}

/// A `connect clients` command.
#[derive(Debug)]
pub enum Action<'a> {
    /// `list`.
    List,
    /// `show ID`.
    Show(&'a str),
    /// `put --file F`.
    Put(&'a Path),
    /// `enable ID` / `disable ID`.
    SetActive(&'a str, bool),
    /// `remove ID --yes`.
    Remove(&'a str, bool),
    /// `validate [--file F]`.
    Validate(Option<&'a Path>),
    /// `secret set ID --from-file F`.
    SetSecret(&'a str, &'a Path),
    /// `rdstation map TID ID`.
    MapTid(&'a str, &'a str),
    /// `test ID`.
    Test(&'a str),
}

/// Runs a `connect clients` command.
pub async fn run(data: &Path, aws: bool, json: bool, action: Action<'_>) -> anyhow::Result<()> {
    // Validating a file needs no store.
    if let Action::Validate(Some(file)) = action {
        let (clients, rd) = from_file(file)?;
        println!(
            "{}: {} clients and {} RD Station mappings are valid",
            file.display(),
            clients.len(),
            rd.len()
        );
        return Ok(());
    }
    let b = backend(data, aws).await?;
    let result = run_on(b.as_ref(), json, action).await;
    b.close().await;
    result
}

fn parse_id(id: &str) -> anyhow::Result<ClientId> {
    ClientId::parse(id).map_err(|e| anyhow::anyhow!("client id {id:?}: {e}"))
}

async fn run_on(b: &dyn Backend, json: bool, action: Action<'_>) -> anyhow::Result<()> {
    match action {
        Action::List => {
            let all = b.all().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&all.iter().map(row).collect::<Vec<_>>())?
                );
            } else {
                println!("{:<24} {:<11} {:<8} ORIGINS", "CLIENT", "CRM", "ACTIVE");
                for c in &all {
                    println!(
                        "{:<24} {:<11} {:<8} {}",
                        c.client_id,
                        c.crm,
                        c.active,
                        c.allowed_origins.0.join(" ")
                    );
                }
            }
            Ok(())
        }
        Action::Show(id) => {
            let id = parse_id(id)?;
            let Some(c) = b.get(&id).await? else {
                bail!("no client {id}")
            };
            println!("{}", serde_json::to_string_pretty(&row(&c))?);
            Ok(())
        }
        Action::Put(file) => {
            let (clients, rd) = from_file(file)?;
            for c in &clients {
                b.put(c).await?;
                println!(
                    "client {} saved ({}, {})",
                    c.client_id,
                    c.crm,
                    if c.active { "active" } else { "inactive" }
                );
            }
            for r in &rd {
                b.map_tid(r).await?;
                println!("tid {} → {}", r.tid, r.client_id);
            }
            Ok(())
        }
        Action::SetActive(id, active) => {
            let id = parse_id(id)?;
            let Some(mut c) = b.get(&id).await? else {
                bail!("no client {id}")
            };
            c.active = active;
            b.put(&c).await?;
            println!(
                "client {id} {}",
                if active {
                    "enabled"
                } else {
                    "disabled: its events get 404, its queued messages are dead-lettered as inactive_client"
                }
            );
            Ok(())
        }
        Action::Remove(id, yes) => {
            let id = parse_id(id)?;
            if !yes {
                bail!("remove deletes client {id} for good: add --yes (or disable it instead)");
            }
            if !b.delete(&id).await? {
                bail!("no client {id}");
            }
            println!("client {id} removed");
            Ok(())
        }
        Action::Validate(_) => {
            let all = b.all().await?;
            let mut bad = 0;
            for c in &all {
                if let Err(e) = validate(c) {
                    bad += 1;
                    println!("{}: {e:#}", c.client_id);
                }
            }
            if bad > 0 {
                bail!("{bad} of {} clients are invalid", all.len());
            }
            println!("{} clients are valid", all.len());
            Ok(())
        }
        Action::SetSecret(id, file) => {
            let id = parse_id(id)?;
            let Some(c) = b.get(&id).await? else {
                bail!("no client {id}: put it first")
            };
            let name = c.secret_name.clone().with_context(|| {
                format!("client {id} has no secret_name: set one with clients put")
            })?;
            let value = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            // The secret's shape is checked before it is stored (never echoed).
            crm::destination(c.crm)
                .validate_credentials(value.trim())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            b.put_secret(&name, value.trim()).await?;
            println!("secret {name} of client {id} saved");
            Ok(())
        }
        Action::Test(id) => {
            let id = parse_id(id)?;
            let Some(c) = b.get(&id).await? else {
                bail!("no client {id}")
            };
            validate(&c)?;
            if c.secret_name.is_none() {
                if c.crm == Crm::RDSTATION {
                    println!(
                        "client {id}: RD Station with an API key only; it is checked by the first conversion (nothing to authenticate)"
                    );
                    return Ok(());
                }
                bail!(
                    "client {id} has no secret_name: set one (clients put) and store its credentials (clients secret set)"
                );
            }
            match b.authenticate(&c).await {
                Ok(credential) => {
                    let found = check_target_exists(&c, &credential).await?;
                    println!(
                        "client {id}: OK — {} accepted the credentials; the target is valid{}",
                        c.crm,
                        found.map(|f| format!(" ({f})")).unwrap_or_default()
                    );
                    Ok(())
                }
                Err(crm::TokenError::Rejected(m)) => bail!(
                    "client {id}: {} refused the credentials ({m}); fix them with: connect clients secret set {id} --from-file creds.json",
                    c.crm
                ),
                Err(crm::TokenError::NoCredentials(_)) => bail!(
                    "client {id}: its secret {} does not exist; create it with: connect clients secret set {id} --from-file creds.json",
                    c.secret_name.as_deref().unwrap_or("")
                ),
                Err(e) => bail!(
                    "client {id}: {} could not be reached or answered unexpectedly: {e}; try again",
                    c.crm
                ),
            }
        }
        Action::MapTid(tid, id) => {
            let id = parse_id(id)?;
            let Some(c) = b.get(&id).await? else {
                bail!("no client {id}")
            };
            if c.crm != Crm::RDSTATION {
                bail!("client {id} delivers to {}, not RD Station", c.crm);
            }
            anyhow::ensure!(!tid.trim().is_empty(), "the tid must not be empty");
            b.map_tid(&RdStationConfig {
                tid: tid.trim().to_owned(),
                client_id: id.clone(),
                endpoint: None,
                token: None,
            })
            .await?;
            println!("tid {tid} → {id}");
            Ok(())
        }
    }
}
