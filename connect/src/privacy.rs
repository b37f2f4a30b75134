//! `connect privacy erase|unsuppress` and `POST /privacy/erasure`: erase one person
//! (by email) from everything Connect holds — navigation records, delivery-queue and DLQ
//! messages — and keep them out (a suppression entry keyed by a keyed hash of the email,
//! per client or global). Every erasure leaves an audit record: who, when, the counts,
//! never the email.

use anyhow::{Context, bail};
use domain::privacy::{
    AuditRecord, EmailKeyer, GLOBAL_SCOPE, INSTALLATION_KEY_SECRET, SuppressionStore,
};
use domain::{ClientId, Clock, Email, SecretStore, SystemClock};
#[cfg(feature = "aws")]
use domain::{Crm, QueueKind};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What an erasure removed, by place, and where the suppression went.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Counts by place: `navigation`, `queue:{name}`.
    pub removed: BTreeMap<String, u64>,
    /// The suppression's scope: a client id, or `*`.
    pub suppressed_in: String,
}

/// The installation's keyer from the secret store, created on first use (locally).
pub async fn local_keyer(secrets: &local::FileSecrets) -> anyhow::Result<EmailKeyer> {
    if let Some(s) = secrets.get_secret(INSTALLATION_KEY_SECRET).await? {
        return EmailKeyer::from_secret(s.expose()).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let secret = EmailKeyer::generate_secret();
    secrets
        .put_secret(
            INSTALLATION_KEY_SECRET,
            &domain::Secret::new(secret.clone()),
        )
        .await
        .context("saving the installation key")?;
    tracing::info!("installation key created (keyed hashes of emails in logs and suppressions)");
    EmailKeyer::from_secret(&secret).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The installation's keyer from Secrets Manager (created by serverless.yml).
#[cfg(feature = "aws")]
pub async fn aws_keyer(sm: &aws::SecretsManager) -> anyhow::Result<EmailKeyer> {
    let name = aws::privacy::installation_key_name();
    let secret = sm
        .get_secret(&name)
        .await?
        .with_context(|| format!("secret {name} is missing (serverless.yml creates it; INSTALLATION_KEY_SECRET_NAME names it)"))?;
    EmailKeyer::from_secret(secret.expose()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn scope_of(client: Option<&ClientId>) -> String {
    client.map_or_else(|| GLOBAL_SCOPE.to_owned(), ToString::to_string)
}

/// Erases `email` (of `client`, or everywhere) from the local store and suppresses it.
pub async fn erase_local(
    store: &local::SqliteStore,
    keyer: &EmailKeyer,
    email: &Email,
    client: Option<&ClientId>,
    actor: &str,
) -> anyhow::Result<Report> {
    let scope = scope_of(client);
    // Suppress first: an event arriving during the erasure is not stored afterwards.
    let now = SystemClock.now_ms();
    store.suppress(&scope, &keyer.key(email), now).await?;
    let removed = store.erase(email, client).await?;
    audited_erasure(store, now, actor, scope, removed).await
}

/// Writes the audit record of an erasure and returns its report.
async fn audited_erasure(
    store: &impl SuppressionStore,
    at_ms: i64,
    actor: &str,
    scope: String,
    removed: BTreeMap<String, u64>,
) -> anyhow::Result<Report> {
    store
        .audit(&AuditRecord {
            at_ms,
            actor: actor.to_owned(),
            action: "erase".into(),
            scope: scope.clone(),
            counts: removed.clone(),
        })
        .await?;
    Ok(Report {
        removed,
        suppressed_in: scope,
    })
}

/// Everything the AWS erasure needs, from the same env vars as the Lambdas.
#[cfg(feature = "aws")]
pub struct AwsPrivacy {
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    navigation: String,
    suppressions: aws::DynamoSuppressions,
    queues: Vec<(String, String)>,
    keyer: EmailKeyer,
}

#[cfg(feature = "aws")]
impl AwsPrivacy {
    /// Reads `NAVIGATION_TABLE`, `SUPPRESSION_TABLE`, the queue URLs of every CRM that has
    /// them (`QUEUE_URL_{CRM}`, `DLQ_URL_{CRM}`), and the installation key.
    pub async fn from_env() -> anyhow::Result<AwsPrivacy> {
        let navigation = std::env::var(aws::env::NAVIGATION_TABLE)
            .context("set NAVIGATION_TABLE to the navigation table's name")?;
        let table = std::env::var(aws::env::SUPPRESSION_TABLE)
            .context("set SUPPRESSION_TABLE to the suppression table's name")?;
        let mut queues = Vec::new();
        for crm in Crm::all() {
            for (kind, var) in [
                (QueueKind::Delivery, aws::env::queue_url_var(crm)),
                (QueueKind::DeadLetter, aws::env::dlq_url_var(crm)),
            ] {
                if let Ok(url) = std::env::var(&var) {
                    queues.push((local::queue_name(crm, kind), url));
                }
            }
        }
        if queues.is_empty() {
            bail!(
                "no queue URL set (QUEUE_URL_{{CRM}} / DLQ_URL_{{CRM}}): the queues would keep the person's messages"
            );
        }
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let keyer = aws_keyer(&aws::SecretsManager::new(
            aws_sdk_secretsmanager::Client::new(&config),
        ))
        .await?;
        Ok(AwsPrivacy {
            suppressions: aws::DynamoSuppressions::new(dynamodb.clone(), table),
            sqs: aws_sdk_sqs::Client::new(&config),
            dynamodb,
            navigation,
            queues,
            keyer,
        })
    }

    /// The suppression list.
    pub fn suppressions(&self) -> &aws::DynamoSuppressions {
        &self.suppressions
    }

    /// The keyer.
    pub fn keyer(&self) -> &EmailKeyer {
        &self.keyer
    }

    /// Erases `email` on AWS: records from the navigation table (scan + delete), messages
    /// from every queue (receive → filter → delete; others released), then the audit.
    pub async fn erase(
        &self,
        email: &Email,
        client: Option<&ClientId>,
        actor: &str,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<Report> {
        use aws_sdk_dynamodb::types::AttributeValue;
        let scope = scope_of(client);
        let now = SystemClock.now_ms();
        self.suppressions
            .suppress(&scope, &self.keyer.key(email), now)
            .await?;
        let mut removed = BTreeMap::new();
        // Navigation records.
        let mut start = None;
        let mut deleted = 0u64;
        loop {
            let mut scan = self
                .dynamodb
                .scan()
                .table_name(&self.navigation)
                .filter_expression(if client.is_some() {
                    "email = :e AND clientId = :c"
                } else {
                    "email = :e"
                })
                .expression_attribute_values(":e", AttributeValue::S(email.as_str().to_owned()))
                .projection_expression("recordId, #ts")
                .expression_attribute_names("#ts", "timestamp")
                .set_exclusive_start_key(start.take());
            if let Some(c) = client {
                scan = scan.expression_attribute_values(":c", AttributeValue::S(c.to_string()));
            }
            let out = scan
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&e))
                })
                .context("scanning the navigation table")?;
            for item in out.items() {
                let (Some(id), Some(ts)) = (item.get("recordId"), item.get("timestamp")) else {
                    continue;
                };
                self.dynamodb
                    .delete_item()
                    .table_name(&self.navigation)
                    .key("recordId", id.clone())
                    .key("timestamp", ts.clone())
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&e))
                    })
                    .context("deleting a record")?;
                deleted += 1;
                progress.set_message(format!("navigation: {deleted} deleted"));
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        removed.insert("navigation".to_owned(), deleted);
        // Queue messages: every message is looked at once; the person's are deleted, the
        // others released at the end.
        for (name, url) in &self.queues {
            let n = self.purge_email(url, email, client, progress, name).await?;
            removed.insert(format!("queue:{name}"), n);
        }
        audited_erasure(&self.suppressions, now, actor, scope, removed).await
    }

    async fn purge_email(
        &self,
        url: &str,
        email: &Email,
        client: Option<&ClientId>,
        progress: &indicatif::ProgressBar,
        name: &str,
    ) -> anyhow::Result<u64> {
        let mut seen = std::collections::HashSet::new();
        let mut held = Vec::new();
        let mut deleted = 0;
        let mut empty = 0;
        while empty < 2 {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(ERASE_VISIBILITY_SECONDS)
                .wait_time_seconds(2)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
                .with_context(|| format!("receiving from {name}"))?;
            let fresh: Vec<_> = out
                .messages()
                .iter()
                .filter(|m| seen.insert(m.message_id().unwrap_or_default().to_owned()))
                .cloned()
                .collect();
            if fresh.is_empty() {
                empty += 1;
                continue;
            }
            empty = 0;
            for m in fresh {
                let receipt = m.receipt_handle().unwrap_or_default().to_owned();
                let body: serde_json::Value =
                    serde_json::from_str(m.body().unwrap_or_default()).unwrap_or_default();
                let matches = body["event"]["email"].as_str() == Some(email.as_str())
                    && client.is_none_or(|c| body["clientId"].as_str() == Some(c.as_str()));
                if matches {
                    self.sqs
                        .delete_message()
                        .queue_url(url)
                        .receipt_handle(&receipt)
                        .send()
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e))
                        })
                        .with_context(|| format!("deleting from {name}"))?;
                    deleted += 1;
                } else {
                    held.push(receipt);
                }
            }
            progress.set_message(format!(
                "{name}: {deleted} removed, {} looked at",
                seen.len()
            ));
        }
        for receipt in held {
            // Back to the queue at once (a failure only delays the message).
            let _ = self
                .sqs
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await;
        }
        Ok(deleted)
    }
}

/// How long messages looked at by an erasure stay hidden (released at its end).
#[cfg(feature = "aws")]
const ERASE_VISIBILITY_SECONDS: i32 = 120;

/// The operator's name for the audit trail: `--actor`, else `$USER`.
pub fn actor(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}

/// Prints a report.
pub fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for (place, n) in &report.removed {
        println!("{place:<24} {n:>6} removed");
    }
    println!(
        "suppressed in {}: later events for this email are answered 202 and dropped",
        if report.suppressed_in == GLOBAL_SCOPE {
            "every client"
        } else {
            report.suppressed_in.as_str()
        }
    );
    Ok(())
}

/// A `connect privacy` command line.
#[derive(Debug)]
pub struct Command<'a> {
    /// `--data`.
    pub data: &'a Path,
    /// `--secrets`.
    pub secrets: Option<&'a Path>,
    /// `--aws`.
    pub aws: bool,
    /// `erase` (else `unsuppress`).
    pub erase: bool,
    /// `--email`.
    pub email: &'a str,
    /// `--client`.
    pub client: Option<&'a str>,
    /// `--actor`.
    pub actor: Option<String>,
    /// `--json`.
    pub json: bool,
}

/// `connect privacy erase|unsuppress`.
pub async fn run(cmd: Command<'_>) -> anyhow::Result<()> {
    let Command {
        data,
        secrets,
        aws,
        erase,
        email,
        client,
        actor: actor_name,
        json,
    } = cmd;
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
    let client = client
        .map(ClientId::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--client: {e}"))?;
    let actor = actor(actor_name);
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    if aws {
        #[cfg(feature = "aws")]
        {
            let p = AwsPrivacy::from_env().await?;
            if erase {
                let report = p.erase(&email, client.as_ref(), &actor, &bar).await;
                bar.finish_and_clear();
                return print(&report?, json);
            }
            bar.finish_and_clear();
            return unsuppress(p.suppressions(), p.keyer(), &email, client.as_ref(), &actor).await;
        }
        #[cfg(not(feature = "aws"))]
        {
            bar.finish_and_clear();
            return Err(crate::no_aws());
        }
    }
    let store = crate::open_tool_store(data)?;
    let secrets = local::FileSecrets::open(
        &secrets.map_or_else(|| data.join("secrets.json"), Path::to_path_buf),
    );
    let keyer = local_keyer(&secrets).await?;
    let result = if erase {
        erase_local(&store, &keyer, &email, client.as_ref(), &actor)
            .await
            .and_then(|r| {
                bar.finish_and_clear();
                print(&r, json)
            })
    } else {
        unsuppress(&store, &keyer, &email, client.as_ref(), &actor).await
    };
    bar.finish_and_clear();
    store.shutdown().await;
    result
}

async fn unsuppress(
    store: &dyn SuppressionStore,
    keyer: &EmailKeyer,
    email: &Email,
    client: Option<&ClientId>,
    actor: &str,
) -> anyhow::Result<()> {
    let scope = scope_of(client);
    let lifted = store.unsuppress(&scope, &keyer.key(email)).await?;
    store
        .audit(&AuditRecord {
            at_ms: SystemClock.now_ms(),
            actor: actor.to_owned(),
            action: "unsuppress".into(),
            scope: scope.clone(),
            counts: BTreeMap::from([("suppressions".to_owned(), u64::from(lifted))]),
        })
        .await?;
    if lifted {
        println!("suppression lifted in {scope}: new events for this email are stored again");
        Ok(())
    } else {
        bail!("this email is not suppressed in {scope}")
    }
}

/// Writes the audit line of a `--show-pii` view: locally in the store's audit trail, on
/// AWS in the suppression table when `SUPPRESSION_TABLE` is set, and always as a log
/// line.
pub async fn audit_show_pii(
    store: Option<&local::SqliteStore>,
    client: Option<&str>,
    shown: u64,
) -> anyhow::Result<()> {
    let record = AuditRecord {
        at_ms: SystemClock.now_ms(),
        actor: actor(None),
        action: "show_pii".into(),
        scope: client.unwrap_or(GLOBAL_SCOPE).to_owned(),
        counts: BTreeMap::from([("messages".to_owned(), shown)]),
    };
    tracing::warn!(actor = %record.actor, scope = %record.scope, shown, "audit: emails shown in clear (--show-pii)");
    match store {
        Some(s) => s.audit(&record).await?,
        #[cfg(not(feature = "aws"))]
        None => {}
        #[cfg(feature = "aws")]
        None => {
            if let Ok(table) = std::env::var(aws::env::SUPPRESSION_TABLE) {
                let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await;
                aws::DynamoSuppressions::new(aws_sdk_dynamodb::Client::new(&config), table)
                    .audit(&record)
                    .await?;
            }
        }
    }
    Ok(())
}
