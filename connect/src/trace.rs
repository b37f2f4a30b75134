//! `connect trace RECORD_ID | --client ID --email E [--since T]`: where one event is —
//! stored, routed, each delivery attempt with its outcome, where its message is now
//! (queue or DLQ), and whether its email is suppressed. Emails are masked unless
//! `--show-pii` (which leaves an audit record).

use anyhow::{Context, bail};
use domain::privacy::SuppressionStore;
use domain::{ClientId, Clock, Email, SystemClock};
use std::path::Path;

fn time(ms: i64) -> String {
    domain::delivery::rfc3339(ms)
}

/// What to trace.
#[derive(Debug)]
pub struct Query<'a> {
    /// A record id.
    pub record_id: Option<&'a str>,
    /// A client and an email.
    pub client: Option<&'a str>,
    /// The email.
    pub email: Option<&'a str>,
    /// Records received at or after (epoch ms).
    pub since_ms: i64,
    /// Show emails in clear.
    pub show_pii: bool,
    /// JSON output.
    pub json: bool,
}

/// Runs a trace on the local store.
pub async fn run_local(data: &Path, q: Query<'_>) -> anyhow::Result<()> {
    let email_and_client = match (q.record_id, q.client, q.email) {
        (Some(_), _, _) => None,
        (None, Some(c), Some(e)) => {
            let email = Email::parse(e).map_err(|err| anyhow::anyhow!("--email: {err}"))?;
            let client = ClientId::parse(c).map_err(|err| anyhow::anyhow!("--client: {err}"))?;
            Some((email, client))
        }
        _ => bail!("trace a RECORD_ID, or --client ID --email E"),
    };
    let store = crate::open_tool_store(data)?;
    let result = trace(&store, data, &q, email_and_client.as_ref()).await;
    store.shutdown().await;
    result
}

async fn trace(
    store: &local::SqliteStore,
    data: &Path,
    q: &Query<'_>,
    by_email: Option<&(Email, ClientId)>,
) -> anyhow::Result<()> {
    let records = store
        .find_records(
            q.record_id,
            by_email.map(|(e, c)| (e.as_str(), c.as_str())),
            q.since_ms,
        )
        .await?;
    let fanout_at = store.checkpoint(crate::runtime::fanout::CONSUMER).await?;
    let keyer = crate::privacy::local_keyer(&local::FileSecrets::open(&data.join("secrets.json")))
        .await
        .context("the installation key")?;
    // A record that expired or was erased may still have attempts in the log.
    let ids: Vec<String> = if records.is_empty() {
        q.record_id.map(|r| vec![r.to_owned()]).unwrap_or_default()
    } else {
        records.iter().map(|(_, r)| r.record_id.clone()).collect()
    };
    if ids.is_empty() {
        bail!("no record of this client and email since the given time");
    }
    if q.show_pii {
        crate::privacy::audit_show_pii(Some(store), q.client, ids.len() as u64).await?;
    }
    let mut out = Vec::new();
    for id in &ids {
        let record = records.iter().find(|(_, r)| &r.record_id == id);
        let attempts = store.delivery_log_of(id).await?;
        let queued = store.queued_messages_of(id).await?;
        let mut stages = Vec::new();
        let mut suppressed = None;
        if let Some((seq, r)) = record {
            let email = if q.show_pii {
                r.email.to_string()
            } else {
                crate::dlq::mask_email(r.email.as_str())
            };
            stages.push(serde_json::json!({"stage": "stored", "at": time(r.timestamp),
                "detail": format!("{} {} for {} ({}), {email}", r.event_type, r.record_id, r.client_id, r.crm)}));
            stages.push(serde_json::json!({"stage": "routed", "at": null,
                "detail": if *seq <= fanout_at { format!("on the {} delivery queue", r.crm) } else { "not yet routed by the fanout".to_owned() }}));
            suppressed = Some(
                store
                    .is_suppressed(&r.client_id, &keyer.key(&r.email))
                    .await?,
            );
        } else {
            stages.push(serde_json::json!({"stage": "stored", "at": null,
                "detail": "not in the store any more (expired or erased)"}));
        }
        for (at, crm, outcome, detail) in attempts {
            stages.push(serde_json::json!({"stage": "delivery", "at": time(at),
                "detail": format!("{crm}: {outcome}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })}));
        }
        let now = SystemClock.now_ms();
        for (queue, receives, visible_at) in queued {
            let where_ = if queue.ends_with("-dlq") {
                "dead-lettered"
            } else {
                "waiting"
            };
            stages.push(serde_json::json!({"stage": where_, "at": null,
                "detail": format!("on {queue} after {receives} receive(s){}", if visible_at > now { format!(", next attempt in {} s", (visible_at - now) / 1000) } else { String::new() })}));
        }
        if suppressed == Some(true) {
            stages.push(serde_json::json!({"stage": "suppressed", "at": null,
                "detail": "this email is suppressed for the client: no new event of it is stored or delivered"}));
        }
        out.push(serde_json::json!({"recordId": id, "stages": stages}));
    }
    if q.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for r in &out {
            println!("{}", r["recordId"].as_str().unwrap_or(""));
            for s in r["stages"].as_array().into_iter().flatten() {
                println!(
                    "  {:<14} {:<26} {}",
                    s["stage"].as_str().unwrap_or(""),
                    s["at"].as_str().unwrap_or("-"),
                    s["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

/// `--aws` needs the `aws` feature.
#[cfg(not(feature = "aws"))]
pub async fn run_aws(_record_id: &str, _json: bool) -> anyhow::Result<()> {
    Err(crate::no_aws())
}

/// On AWS: the record from the navigation table, and the CloudWatch Logs Insights query
/// that finds its delivery attempts (deliver logs one `delivery` line per attempt).
#[cfg(feature = "aws")]
pub async fn run_aws(record_id: &str, json: bool) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let table = std::env::var(aws::env::NAVIGATION_TABLE).context("set NAVIGATION_TABLE")?;
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let out = aws_sdk_dynamodb::Client::new(&config)
        .query()
        .table_name(&table)
        .key_condition_expression("recordId = :id")
        .expression_attribute_values(":id", AttributeValue::S(record_id.to_owned()))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&e)))?;
    let records: Vec<domain::NavigationRecord> = out
        .items()
        .iter()
        .filter_map(|i| aws::dynamo::record_of_item(i).and_then(Result::ok))
        .collect();
    let insights = format!(
        "fields @timestamp, crm, outcome, detail | filter msg = \"delivery\" or message = \"delivery\" | filter recordId = \"{record_id}\" | sort @timestamp asc"
    );
    // The DLQ of the record's CRM (or of every CRM with a DLQ_URL_{CRM} when the record
    // is gone from the table).
    let crms: Vec<domain::Crm> = match records.first() {
        Some(r) => vec![r.crm],
        None => domain::Crm::all().collect::<Vec<_>>(),
    };
    let mut dead = None;
    for crm in crms {
        if std::env::var(aws::env::dlq_url_var(crm)).is_err() {
            continue;
        }
        let backend = crate::dlq::open_aws(crm, None, None).await?;
        if let Some(entry) = crate::dlq::dead_letter_of(backend.as_ref(), crm, record_id).await? {
            dead = Some(serde_json::json!({"crm": crm, "entry": entry}));
            break;
        }
    }
    if json {
        let stored: Vec<serde_json::Value> = records
            .iter()
            .map(|r| serde_json::json!({"at": time(r.timestamp), "clientId": r.client_id, "crm": r.crm, "eventType": r.event_type}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "recordId": record_id, "stored": stored, "deadLetter": dead, "logsInsightsQuery": insights
            }))?
        );
        return Ok(());
    }
    match records.first() {
        Some(r) => println!(
            "{record_id}\n  stored         {:<26} {} for {} ({})",
            time(r.timestamp),
            r.event_type,
            r.client_id,
            r.crm
        ),
        None => println!(
            "{record_id}\n  not in the navigation table (expired, erased, or never stored)"
        ),
    }
    if let Some(d) = &dead {
        println!(
            "  dead-lettered  {:<26} on the {} DLQ: {} {}",
            d["entry"]["failedAt"].as_str().unwrap_or("-"),
            d["crm"].as_str().unwrap_or(""),
            d["entry"]["failureReason"].as_str().unwrap_or(""),
            d["entry"]["failureStatus"].as_str().unwrap_or("")
        );
    }
    println!(
        "Delivery attempts: CloudWatch Logs Insights on the deliver functions' log groups:\n  {insights}"
    );
    Ok(())
}
