//! `connect status [--client ID] [--since 1h]`: how each client's traffic is doing now —
//! events accepted, deliveries by outcome, last event, its CRM queue's depth and oldest
//! message, its token, requests refused by reason — with what needs attention flagged.
//! Reads the local store (refusals are flushed there by the server every 2 s; those
//! refused before a client is known, like the per-IP limit, are only in `/metrics`).

use domain::{ClientDirectory, Clock, Crm, SystemClock, TokenStore};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Runs `connect status` on the local store.
pub async fn run(
    data: &Path,
    client: Option<&str>,
    since_ms: i64,
    json: bool,
) -> anyhow::Result<()> {
    let store = crate::open_tool_store(data)?;
    let result = report(&store, client, since_ms, json).await;
    store.shutdown().await;
    result
}

async fn report(
    store: &local::SqliteStore,
    only: Option<&str>,
    since_ms: i64,
    json: bool,
) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    let queues = local::LocalQueues::new(store.clone(), Arc::new(SystemClock), 1000);
    let accepted: BTreeMap<String, (u64, i64)> = store
        .accepted_since(since_ms)
        .await?
        .into_iter()
        .map(|(c, n, last)| (c, (n, last)))
        .collect();
    let mut outcomes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (c, o, n) in store.outcomes_since(since_ms).await? {
        outcomes.entry(c).or_default().insert(o, n);
    }
    let mut refused: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (c, r, n) in store.refusals_since(since_ms).await? {
        refused.entry(c).or_default().insert(r, n);
    }
    let mut depth = BTreeMap::new();
    for crm in Crm::all() {
        let q = queues
            .stats(&local::queue_name(crm, domain::QueueKind::Delivery))
            .await?;
        let d = queues
            .stats(&local::queue_name(crm, domain::QueueKind::DeadLetter))
            .await?;
        depth.insert(crm, (q, d));
    }
    let mut rows = Vec::new();
    for crm in Crm::all() {
        for c in store.clients_of(crm).await? {
            if only.is_some_and(|o| o != c.client_id.as_str()) {
                continue;
            }
            let id = c.client_id.to_string();
            let (n, last) = accepted.get(&id).copied().unwrap_or((0, 0));
            let o = outcomes.get(&id).cloned().unwrap_or_default();
            let (q, d) = &depth[&crm];
            let token = store.get_token(&c.client_id, crm).await?;
            let refresh = store.refresh_status(&c.client_id, crm).await?;
            let mut attention = Vec::new();
            if c.active && n == 0 {
                attention.push("no events in the window".to_owned());
            }
            let refused_n: u64 = refused.get(&id).map_or(0, |r| r.values().sum());
            if refused_n > n {
                attention.push(format!("{refused_n} requests refused (more than accepted)"));
            }
            if o.get("dead_lettered").copied().unwrap_or(0) > 0 {
                attention.push(format!("{} dead-lettered", o["dead_lettered"]));
            }
            if refresh.as_ref().is_some_and(|s| !s.ok) {
                attention.push("token refresh failing".to_owned());
            }
            if token.as_ref().is_some_and(|t| t.expires_at < now) && c.secret_name.is_some() {
                attention.push("token expired".to_owned());
            }
            rows.push(serde_json::json!({
                "clientId": id, "crm": crm, "active": c.active,
                "accepted": n,
                "refused": refused.get(&id).cloned().unwrap_or_default(),
                "lastEventAt": (last > 0).then(|| domain::delivery::rfc3339(last)),
                "delivered": o.get("delivered").copied().unwrap_or(0),
                "retried": o.get("retried").copied().unwrap_or(0) + o.get("throttled").copied().unwrap_or(0),
                "deadLettered": o.get("dead_lettered").copied().unwrap_or(0),
                "skipped": o.iter().filter(|(k, _)| k.starts_with("skipped_")).map(|(_, v)| v).sum::<u64>(),
                "queueDepth": q.visible + q.in_flight,
                "queueOldestAgeSeconds": q.oldest_sent_at_ms.map(|t| (now - t) / 1000),
                "dlqDepth": d.visible + d.in_flight,
                "tokenExpiresInSeconds": token.as_ref().map(|t| (t.expires_at - now) / 1000),
                "attention": attention,
            }));
        }
    }
    if only.is_some() && rows.is_empty() {
        anyhow::bail!("no client {}", only.unwrap_or_default());
    }
    print(&rows, json)
}

/// Prints the rows as JSON, or as a table for people (`?` where a figure is unknown).
fn print(rows: &[serde_json::Value], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let n = |v: &serde_json::Value| {
        if v.is_null() {
            "?".to_owned()
        } else {
            v.to_string()
        }
    };
    println!(
        "{:<20} {:<11} {:>8} {:>7} {:>9} {:>7} {:>6} {:>7} {:>6}  ATTENTION",
        "CLIENT", "CRM", "ACCEPTED", "REFUSED", "DELIVERED", "RETRIED", "DEAD", "QUEUED", "DLQ"
    );
    for r in rows {
        let refused = r["refused"].as_object().map_or_else(
            || "?".to_owned(),
            |m| {
                m.values()
                    .filter_map(serde_json::Value::as_u64)
                    .sum::<u64>()
                    .to_string()
            },
        );
        let attention = r["attention"].as_array().map_or_else(String::new, |a| {
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        });
        println!(
            "{:<20} {:<11} {:>8} {:>7} {:>9} {:>7} {:>6} {:>7} {:>6}  {attention}",
            r["clientId"].as_str().unwrap_or(""),
            r["crm"].as_str().unwrap_or(""),
            n(&r["accepted"]),
            refused,
            n(&r["delivered"]),
            n(&r["retried"]),
            n(&r["deadLettered"]),
            n(&r["queueDepth"]),
            n(&r["dlqDepth"]),
        );
    }
    Ok(())
}

/// `--aws` needs the `aws` feature.
#[cfg(not(feature = "aws"))]
pub async fn run_aws(_only: Option<&str>, _since_ms: i64, _json: bool) -> anyhow::Result<()> {
    Err(crate::no_aws())
}

/// Refusal reasons (the `reason` dimension of `IngestRefused`).
#[cfg(feature = "aws")]
const REFUSAL_REASONS: [&str; 10] = [
    "origin_not_allowed",
    "origin_required",
    "signature_invalid",
    "signature_expired",
    "rate_limited",
    "email_rate_limited",
    "bot",
    "suppressed",
    "consent_missing",
    "ip_rate_limited",
];
/// Delivery metrics of the deliver Lambdas (dimensions crm + clientId).
#[cfg(feature = "aws")]
const DELIVERY_METRICS: [&str; 5] = [
    domain::metrics::ACCEPTED.name,
    domain::metrics::DELIVERED.name,
    domain::metrics::RETRIED.name,
    domain::metrics::THROTTLED.name,
    domain::metrics::DEAD_LETTERED.name,
];
/// Most queries in one GetMetricData call.
#[cfg(feature = "aws")]
const MAX_QUERIES: usize = 500;

/// `connect status --aws`: the same figures from CloudWatch (the Lambdas' EMF metrics),
/// the queues' attributes and the tokens table. Env: CLIENTS_TABLE,
/// RDSTATION_CONFIG_TABLE, and optionally TOKENS_TABLE, QUEUE_URL_{CRM}, DLQ_URL_{CRM}.
#[cfg(feature = "aws")]
pub async fn run_aws(only: Option<&str>, since_ms: i64, json: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let clients_table = std::env::var(aws::env::CLIENTS_TABLE).context("set CLIENTS_TABLE")?;
    let rd_table =
        std::env::var(aws::env::RDSTATION_CONFIG_TABLE).context("set RDSTATION_CONFIG_TABLE")?;
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let directory = aws::DynamoClientDirectory::new(dynamodb.clone(), clients_table, rd_table);
    let tokens = std::env::var(aws::env::TOKENS_TABLE)
        .ok()
        .map(|t| aws::DynamoTokens::new(dynamodb.clone(), t));
    let cw = aws_sdk_cloudwatch::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let now = SystemClock.now_ms();
    let mut clients = Vec::new();
    for crm in Crm::all() {
        clients.extend(
            directory
                .clients_of(crm)
                .await?
                .into_iter()
                .filter(|c| only.is_none_or(|o| o == c.client_id.as_str())),
        );
    }
    if only.is_some() && clients.is_empty() {
        anyhow::bail!("no client {}", only.unwrap_or_default());
    }
    // One query per (client, metric): 1-minute sums, added up here (the last non-zero
    // minute of Accepted is the last event).
    let mut queries = Vec::new();
    let mut keys = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let metric = |name: &str, dims: Vec<(&str, String)>| {
            Metric::builder()
                .namespace(domain::emf::NAMESPACE)
                .metric_name(name)
                .set_dimensions(Some(
                    dims.into_iter()
                        .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                        .collect(),
                ))
                .build()
        };
        let mut push = |j: usize, label: String, m: Metric| {
            queries.push(
                MetricDataQuery::builder()
                    .id(format!("q{i}x{j}"))
                    .metric_stat(
                        MetricStat::builder()
                            .metric(m)
                            .period(60)
                            .stat("Sum")
                            .build(),
                    )
                    .return_data(true)
                    .build(),
            );
            keys.push((c.client_id.to_string(), label));
        };
        for (j, name) in DELIVERY_METRICS.iter().enumerate() {
            push(
                j,
                (*name).to_owned(),
                metric(
                    name,
                    vec![
                        ("crm", c.crm.as_str().to_owned()),
                        ("clientId", c.client_id.to_string()),
                    ],
                ),
            );
        }
        for (j, reason) in REFUSAL_REASONS.iter().enumerate() {
            push(
                DELIVERY_METRICS.len() + j,
                format!("refused:{reason}"),
                metric(
                    domain::metrics::INGEST_REFUSED.name,
                    vec![
                        ("clientId", c.client_id.to_string()),
                        ("reason", (*reason).to_owned()),
                    ],
                ),
            );
        }
    }
    // When CloudWatch cannot be read (no permission, no network), the queues and
    // tokens are still shown, the metrics as unknown (null), and the reason flagged.
    let mut sums: BTreeMap<(String, String), (f64, i64)> = BTreeMap::new();
    let mut metrics_error = None;
    for (chunk, key_chunk) in queries.chunks(MAX_QUERIES).zip(keys.chunks(MAX_QUERIES)) {
        let out = match cw
            .get_metric_data()
            .set_metric_data_queries(Some(chunk.to_vec()))
            .start_time(DateTime::from_millis(since_ms))
            .end_time(DateTime::from_millis(now + 60_000))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = aws_sdk_cloudwatch::error::DisplayErrorContext(&e).to_string();
                eprintln!("warning: CloudWatch metrics could not be read: {e}");
                metrics_error = Some(e);
                sums.clear();
                break;
            }
        };
        for r in out.metric_data_results() {
            let Some(idx) = chunk.iter().position(|q| q.id() == r.id()) else {
                continue;
            };
            let total: f64 = r.values().iter().sum();
            let last = r
                .timestamps()
                .iter()
                .zip(r.values())
                .filter(|(_, v)| **v > 0.0)
                .map(|(t, _)| t.to_millis().unwrap_or(0))
                .max()
                .unwrap_or(0);
            sums.insert(key_chunk[idx].clone(), (total, last));
        }
    }
    let get = |id: &str, label: &str| {
        sums.get(&(id.to_owned(), label.to_owned()))
            .copied()
            .unwrap_or((0.0, 0))
    };
    let depth = |url: Option<String>| {
        let sqs = sqs.clone();
        async move {
            let url = url?;
            use aws_sdk_sqs::types::QueueAttributeName as A;
            let out = sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .ok()?;
            let n = |a: A| {
                out.attributes()
                    .and_then(|m| m.get(&a))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Some(n(A::ApproximateNumberOfMessages) + n(A::ApproximateNumberOfMessagesNotVisible))
        }
    };
    // Queues are per CRM: each is read once, whatever the number of clients.
    let mut depths = BTreeMap::new();
    for crm in Crm::all() {
        if clients.iter().any(|c| c.crm == crm) {
            let queue = depth(std::env::var(aws::env::queue_url_var(crm)).ok()).await;
            let dlq = depth(std::env::var(aws::env::dlq_url_var(crm)).ok()).await;
            depths.insert(crm, (queue, dlq));
        }
    }
    let mut rows = Vec::new();
    for c in &clients {
        let id = c.client_id.to_string();
        let (accepted, last) = get(&id, DELIVERY_METRICS[0]);
        let delivered = get(&id, DELIVERY_METRICS[1]).0;
        let retried = get(&id, DELIVERY_METRICS[2]).0 + get(&id, DELIVERY_METRICS[3]).0;
        let dead = get(&id, DELIVERY_METRICS[4]).0;
        let refused: BTreeMap<&str, u64> = REFUSAL_REASONS
            .iter()
            .map(|r| (*r, get(&id, &format!("refused:{r}")).0 as u64))
            .filter(|(_, n)| *n > 0)
            .collect();
        let token = match &tokens {
            Some(t) => t.get_token(&c.client_id, c.crm).await?,
            None => None,
        };
        let (queue, dlq) = depths.get(&c.crm).copied().unwrap_or((None, None));
        let mut attention = Vec::new();
        if let Some(e) = &metrics_error {
            attention.push(format!("CloudWatch metrics unreadable: {e}"));
        } else {
            if c.active && accepted == 0.0 {
                attention.push("no events in the window".to_owned());
            }
            if dead > 0.0 {
                attention.push(format!("{dead} dead-lettered"));
            }
            let refused_n: u64 = refused.values().sum();
            if refused_n as f64 > accepted {
                attention.push(format!("{refused_n} requests refused (more than accepted)"));
            }
        }
        if let Some(n) = dlq.filter(|n| *n > 0) {
            attention.push(format!("{n} in the {} DLQ", c.crm));
        }
        if token.as_ref().is_some_and(|t| t.expires_at < now) {
            attention.push("token expired".to_owned());
        }
        let known = |v: f64| metrics_error.is_none().then_some(v as u64);
        rows.push(serde_json::json!({
            "clientId": id, "crm": c.crm, "active": c.active,
            "accepted": known(accepted),
            "refused": metrics_error.is_none().then_some(&refused),
            "lastEventAt": (last > 0).then(|| domain::delivery::rfc3339(last)),
            "delivered": known(delivered), "retried": known(retried), "deadLettered": known(dead),
            "queueDepth": queue, "dlqDepth": dlq,
            "tokenExpiresInSeconds": token.as_ref().map(|t| (t.expires_at - now) / 1000),
            "attention": attention,
        }));
    }
    print(&rows, json)
}
