//! `connect dlq`: inspect and redrive the dead-letter queues, locally (`--data DIR`,
//! [`local::LocalDlq`]) or on AWS (`--aws`, [`sqs::SqsDlq`]). The commands and their
//! rendering are written once against [`DlqBackend`].

pub mod local;
#[cfg(feature = "aws")]
pub mod sqs;

use anyhow::{Context, bail};
use domain::delivery::{attr, rfc3339};
use domain::{Clock, Crm, SystemClock};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a message received for inspection is hidden before it is released again.
#[cfg(feature = "aws")]
pub const PEEK_VISIBILITY: Duration = Duration::from_secs(5);
/// How long a message being redriven (or skipped by a filter) stays hidden; skipped
/// ones are released at the end, moved ones deleted.
pub const REDRIVE_VISIBILITY: Duration = Duration::from_secs(120);
/// Most messages sampled on SQS for the reasons of `dlq list` (the depth itself comes
/// from the queue's attributes; locally everything is read).
pub const LIST_SAMPLE_LIMIT: usize = 1000;
/// Empty long-poll receives in a row that end a scan of an SQS queue.
const EMPTY_RECEIVES_TO_STOP: u32 = 2;
/// "No limit" for local reads (SQLite takes a signed 64-bit LIMIT).
pub(crate) const UNBOUNDED: usize = i64::MAX as usize;
/// Attributes a redrive removes.
const FAILURE_ATTRIBUTES: [&str; 5] = [
    attr::FAILURE_REASON,
    attr::FAILURE_STATUS,
    attr::FAILED_AT,
    attr::ATTEMPTS,
    "failureDetail",
];

/// A DLQ message.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) message_id: String,
    pub(crate) receipt: String,
    pub(crate) body: String,
    pub(crate) attributes: Vec<(String, String)>,
    pub(crate) sent_at_ms: i64,
}

impl Message {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a CRM's DLQ and delivery queue are.
#[async_trait::async_trait]
pub trait DlqBackend: Send + Sync {
    /// Fails, naming what to set, when the delivery queue of `crm` is unknown.
    fn check_delivery_queue(&self, crm: Crm) -> anyhow::Result<()>;
    /// Whether an empty receive means every visible message was received.
    fn empty_receive_is_exact(&self) -> bool;
    /// Receives up to `max` DLQ messages, hidden for `visibility`.
    async fn receive(
        &self,
        crm: Crm,
        max: usize,
        visibility: Duration,
    ) -> anyhow::Result<Vec<Message>>;
    /// Messages in the DLQ (exact locally, approximate on SQS).
    async fn depth(&self, crm: Crm) -> anyhow::Result<u64>;
    /// Makes a received message visible again.
    async fn release(&self, crm: Crm, receipt: &str) -> anyhow::Result<()>;
    /// Deletes a received message (fails on a stale receipt).
    async fn delete(&self, crm: Crm, receipt: &str) -> anyhow::Result<()>;
    /// Sends a body to the CRM's delivery queue.
    async fn send_to_delivery(
        &self,
        crm: Crm,
        body: &str,
        attributes: &[(String, String)],
    ) -> anyhow::Result<()>;
    /// The DLQ's messages without consuming them (every one locally; up to `sample` on
    /// SQS).
    async fn snapshot(&self, crm: Crm, sample: usize) -> anyhow::Result<Vec<Message>>;
    /// The length of a redrive's progress bar.
    async fn redrive_total(&self, crm: Crm, filter: &Filter) -> anyhow::Result<u64>;
    /// The store `--show-pii` audits are written to (AWS: the audit goes to the logs).
    fn audit_store(&self) -> Option<&::local::SqliteStore>;
    /// Releases the backend's resources.
    async fn close(self: Box<Self>);
}

/// A backend of either kind.
pub type Backend = Box<dyn DlqBackend>;

/// The local store in `data`.
pub fn open_local(data: &Path) -> anyhow::Result<Backend> {
    Ok(Box::new(local::LocalDlq::open(data)?))
}

/// SQS, with the queue URLs of `crm` from flags or the environment.
#[cfg(feature = "aws")]
pub async fn open_aws(
    crm: Crm,
    queue_url: Option<String>,
    dlq_url: Option<String>,
) -> anyhow::Result<Backend> {
    Ok(Box::new(sqs::SqsDlq::open(crm, queue_url, dlq_url).await?))
}

/// SQS needs the `aws` feature.
#[cfg(not(feature = "aws"))]
pub async fn open_aws(
    _crm: Crm,
    _queue_url: Option<String>,
    _dlq_url: Option<String>,
) -> anyhow::Result<Backend> {
    Err(crate::no_aws())
}

/// The next batch of DLQ messages not received before in this run (hidden for
/// [`REDRIVE_VISIBILITY`]); empty when every message was seen.
async fn receive_unseen(
    backend: &dyn DlqBackend,
    crm: Crm,
    seen: &mut std::collections::HashSet<String>,
) -> anyhow::Result<Vec<Message>> {
    let mut empty = 0;
    loop {
        let batch = backend.receive(crm, 10, REDRIVE_VISIBILITY).await?;
        let fresh: Vec<Message> = batch
            .into_iter()
            .filter(|m| seen.insert(m.message_id.clone()))
            .collect();
        if !fresh.is_empty() {
            return Ok(fresh);
        }
        empty += 1;
        if backend.empty_receive_is_exact() || empty >= EMPTY_RECEIVES_TO_STOP {
            return Ok(Vec::new());
        }
    }
}

/// `a***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => "***".into(),
    }
}

fn summary_of(m: &Message, show_pii: bool) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_str(&m.body).unwrap_or(serde_json::Value::Null);
    let email = body["event"]["email"].as_str().map(|e| {
        if show_pii {
            e.to_owned()
        } else {
            mask_email(e)
        }
    });
    serde_json::json!({
        "messageId": m.message_id,
        "recordId": body["recordId"],
        "clientId": m.attr(attr::CLIENT_ID).map(str::to_owned).or_else(|| body["clientId"].as_str().map(str::to_owned)),
        "eventType": m.attr(attr::EVENT_TYPE).map(str::to_owned).or_else(|| body["event"]["eventType"].as_str().map(str::to_owned)),
        "email": email,
        "failureReason": m.attr(attr::FAILURE_REASON),
        "failureStatus": m.attr(attr::FAILURE_STATUS),
        "failureDetail": m.attr("failureDetail").map(domain::redact::emails),
        "attempts": m.attr(attr::ATTEMPTS),
        "failedAt": m.attr(attr::FAILED_AT),
        "redriveCount": m.attr("redriveCount"),
    })
}

/// `dlq list`: one row per (CRM, backend).
pub async fn list(targets: Vec<(Crm, Backend)>, json: bool) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    let mut rows = Vec::new();
    for (crm, backend) in targets {
        let depth = backend.depth(crm).await?;
        let messages = backend.snapshot(crm, LIST_SAMPLE_LIMIT).await?;
        backend.close().await;
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for m in &messages {
            *reasons
                .entry(m.attr(attr::FAILURE_REASON).unwrap_or("(none)").to_owned())
                .or_default() += 1;
        }
        let oldest = messages
            .iter()
            .map(|m| m.sent_at_ms)
            .filter(|t| *t > 0)
            .min();
        rows.push(serde_json::json!({
            "crm": crm,
            "depth": depth.max(messages.len() as u64),
            // Reasons are counted over every message locally, a sample on SQS.
            "reasonsSampled": messages.len(),
            "oldestAgeSeconds": oldest.map(|t| (now - t) / 1000),
            "byReason": reasons,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<11} {:>6} {:>12}  REASONS", "CRM", "DEPTH", "OLDEST");
    for r in rows {
        let reasons: Vec<String> = r["byReason"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        println!(
            "{:<11} {:>6} {:>12}  {}",
            r["crm"].as_str().unwrap_or(""),
            r["depth"],
            r["oldestAgeSeconds"]
                .as_i64()
                .map_or("-".to_owned(), |s| format!("{s}s")),
            reasons.join(", ")
        );
    }
    Ok(())
}

/// The DLQ entry of a record, if it is among the messages looked at (every one locally;
/// up to [`LIST_SAMPLE_LIMIT`] on SQS): its failure attributes.
#[cfg(feature = "aws")]
pub async fn dead_letter_of(
    backend: &dyn DlqBackend,
    crm: Crm,
    record_id: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let messages = backend.snapshot(crm, LIST_SAMPLE_LIMIT).await?;
    Ok(messages
        .iter()
        .find(|m| {
            serde_json::from_str::<serde_json::Value>(&m.body)
                .is_ok_and(|v| v["recordId"].as_str() == Some(record_id))
        })
        .map(|m| {
            serde_json::json!({
                "failureReason": m.attr(attr::FAILURE_REASON),
                "failureStatus": m.attr(attr::FAILURE_STATUS),
                "failedAt": m.attr(attr::FAILED_AT),
                "attempts": m.attr(attr::ATTEMPTS),
            })
        }))
}

/// `dlq peek`.
pub async fn peek(
    backend: Backend,
    crm: Crm,
    n: usize,
    client: Option<&str>,
    show_pii: bool,
    json: bool,
) -> anyhow::Result<()> {
    let messages = backend.snapshot(crm, LIST_SAMPLE_LIMIT).await?;
    let shown: Vec<serde_json::Value> = messages
        .iter()
        .filter(|m| client.is_none_or(|c| m.attr(attr::CLIENT_ID) == Some(c)))
        .take(n)
        .map(|m| summary_of(m, show_pii))
        .collect();
    // Emails in clear leave a trace: who, when, how many (never which).
    if show_pii && !shown.is_empty() {
        let store = backend.audit_store();
        let audited = crate::privacy::audit_show_pii(store, client, shown.len() as u64).await;
        if let Err(e) = audited {
            backend.close().await;
            return Err(
                e.context("the audit record of --show-pii could not be written; nothing shown")
            );
        }
    }
    backend.close().await;
    if shown.is_empty() {
        bail!(
            "the {crm} DLQ is empty{}",
            client
                .map(|c| format!(" for client {c}"))
                .unwrap_or_default()
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        for s in shown {
            println!(
                "{}  {}  {}  {}  {}  reason={} status={} attempts={} failedAt={}",
                s["recordId"].as_str().unwrap_or("-"),
                s["clientId"].as_str().unwrap_or("-"),
                s["eventType"].as_str().unwrap_or("-"),
                s["email"].as_str().unwrap_or("-"),
                s["messageId"].as_str().unwrap_or("-"),
                s["failureReason"].as_str().unwrap_or("-"),
                s["failureStatus"].as_str().unwrap_or("-"),
                s["attempts"].as_str().unwrap_or("-"),
                s["failedAt"].as_str().unwrap_or("-"),
            );
        }
    }
    Ok(())
}

/// Filters and limits of `dlq redrive` / `dlq purge`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this client's messages.
    pub client: Option<String>,
    /// Only messages with this failureReason.
    pub reason: Option<String>,
}

impl Filter {
    pub(crate) fn matches(&self, m: &Message) -> bool {
        self.client
            .as_deref()
            .is_none_or(|c| m.attr(attr::CLIENT_ID) == Some(c))
            && self
                .reason
                .as_deref()
                .is_none_or(|r| m.attr(attr::FAILURE_REASON) == Some(r))
    }
}

/// The attributes of a redriven message: failure attributes cleared, `redrivenAt` and
/// `redriveCount` set.
pub fn redrive_attributes(attributes: &[(String, String)], now_ms: i64) -> Vec<(String, String)> {
    let count = attributes
        .iter()
        .find(|(k, _)| k == "redriveCount")
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .unwrap_or(0);
    let mut out: Vec<(String, String)> = attributes
        .iter()
        .filter(|(k, _)| {
            !FAILURE_ATTRIBUTES.contains(&k.as_str()) && k != "redrivenAt" && k != "redriveCount"
        })
        .cloned()
        .collect();
    out.push(("redrivenAt".into(), rfc3339(now_ms)));
    out.push(("redriveCount".into(), (count + 1).to_string()));
    out
}

/// Counts of a redrive or purge.
#[derive(Debug, Default)]
struct Counts {
    moved: u64,
    skipped: u64,
    failed: u64,
}

/// `dlq redrive`: each message is deleted from the DLQ only after the delivery queue
/// accepted it (an interruption loses nothing; at worst a message is duplicated).
pub async fn redrive(
    backend: Backend,
    crm: Crm,
    filter: Filter,
    max: Option<u64>,
    rate: Option<f64>,
    dry_run: bool,
) -> anyhow::Result<()> {
    backend.check_delivery_queue(crm)?;
    // Locally the matching messages are counted exactly; on SQS the filter can only be
    // applied while receiving, so the bar's length is the queue's depth and the scan
    // goes on until the queue has no unseen message.
    let total = backend.redrive_total(crm, &filter).await?;
    if total == 0 {
        backend.close().await;
        bail!("nothing to redrive: the {crm} DLQ has no matching message");
    }
    let target = max.map_or(total, |m| m.min(total));
    let bar = ProgressBar::new(target);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let pace = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut counts = Counts::default();
    let mut held: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut last_send = Instant::now() - pace.unwrap_or_default();
    'outer: while counts.moved < target {
        let fresh = receive_unseen(backend.as_ref(), crm, &mut seen).await?;
        if fresh.is_empty() {
            break;
        }
        for m in fresh {
            if counts.moved >= target || !filter.matches(&m) || dry_run {
                if filter.matches(&m) && counts.moved < target {
                    counts.moved += 1;
                    bar.inc(1);
                } else {
                    counts.skipped += 1;
                }
                held.push(m.receipt.clone());
                bar.set_message(format!(
                    "moved {} skipped {} failed {}",
                    counts.moved, counts.skipped, counts.failed
                ));
                continue;
            }
            if let Some(p) = pace {
                let wait = p.saturating_sub(last_send.elapsed());
                tokio::time::sleep(wait).await;
            }
            last_send = Instant::now();
            let attributes = redrive_attributes(&m.attributes, SystemClock.now_ms());
            match backend.send_to_delivery(crm, &m.body, &attributes).await {
                Ok(()) => {
                    match backend.delete(crm, &m.receipt).await {
                        Ok(()) => {
                            counts.moved += 1;
                            bar.inc(1);
                        }
                        Err(e) => {
                            counts.failed += 1;
                            bar.println(format!("moved but not deleted from the DLQ (it will be redriven twice): {e:#}"));
                        }
                    }
                }
                Err(e) => {
                    counts.failed += 1;
                    held.push(m.receipt.clone());
                    bar.println(format!("could not send {}: {e:#}", m.message_id));
                    if counts.failed >= 10 && counts.moved == 0 {
                        break 'outer;
                    }
                }
            }
            bar.set_message(format!(
                "moved {} skipped {} failed {}",
                counts.moved, counts.skipped, counts.failed
            ));
        }
    }
    for receipt in &held {
        let _ = backend.release(crm, receipt).await;
    }
    bar.finish_and_clear();
    backend.close().await;
    println!(
        "{}{crm}: {} moved to the delivery queue, {} skipped, {} failed",
        if dry_run {
            "dry run — nothing moved. "
        } else {
            ""
        },
        if dry_run {
            format!("{} would be", counts.moved)
        } else {
            counts.moved.to_string()
        },
        counts.skipped,
        counts.failed
    );
    anyhow::ensure!(
        counts.failed == 0,
        "{} message(s) could not be redriven",
        counts.failed
    );
    Ok(())
}

/// `dlq purge`.
pub async fn purge(
    backend: Backend,
    crm: Crm,
    client: Option<String>,
    yes: bool,
) -> anyhow::Result<()> {
    if !yes {
        backend.close().await;
        bail!("purge deletes dead-lettered messages for good: add --yes to confirm");
    }
    let filter = Filter {
        client,
        reason: None,
    };
    let mut seen = std::collections::HashSet::new();
    let (mut removed, mut held) = (0u64, Vec::new());
    loop {
        let fresh = receive_unseen(backend.as_ref(), crm, &mut seen).await?;
        if fresh.is_empty() {
            break;
        }
        for m in fresh {
            if filter.matches(&m) {
                backend.delete(crm, &m.receipt).await.context("delete")?;
                removed += 1;
            } else {
                held.push(m.receipt);
            }
        }
    }
    for r in &held {
        let _ = backend.release(crm, r).await;
    }
    backend.close().await;
    println!("{crm}: {removed} message(s) removed from the DLQ");
    Ok(())
}
