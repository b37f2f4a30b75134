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
    anyhow::ensure!(
        data.join(local::store::DB_FILE).exists(),
        "no store in {} (pass --data DIR)",
        data.display()
    );
    let store = local::SqliteStore::open(
        data,
        local::StoreOptions {
            tool: true,
            ..local::StoreOptions::default()
        },
    )?;
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
    for crm in Crm::ALL {
        let q = queues
            .stats(&local::queue_name(crm, domain::QueueKind::Delivery))
            .await?;
        let d = queues
            .stats(&local::queue_name(crm, domain::QueueKind::DeadLetter))
            .await?;
        depth.insert(crm, (q, d));
    }
    let mut rows = Vec::new();
    for crm in Crm::ALL {
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
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<11} {:>8} {:>7} {:>9} {:>7} {:>6} {:>7} {:>6}  ATTENTION",
        "CLIENT", "CRM", "ACCEPTED", "REFUSED", "DELIVERED", "RETRIED", "DEAD", "QUEUED", "DLQ"
    );
    for r in rows {
        println!(
            "{:<20} {:<11} {:>8} {:>7} {:>9} {:>7} {:>6} {:>7} {:>6}  {}",
            r["clientId"].as_str().unwrap_or(""),
            r["crm"].as_str().unwrap_or(""),
            r["accepted"],
            r["refused"].as_object().map_or(0, |m| m
                .values()
                .filter_map(serde_json::Value::as_u64)
                .sum::<u64>()),
            r["delivered"],
            r["retried"],
            r["deadLettered"],
            r["queueDepth"],
            r["dlqDepth"],
            r["attention"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        );
    }
    Ok(())
}
