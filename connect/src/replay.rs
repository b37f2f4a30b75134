//! `connect replay`: re-route stored navigation records to the delivery queues — the way
//! back after the stream (or the local change feed) gave up on records, or after a bad
//! deploy. Records are read from the navigation table (local store, or DynamoDB with
//! `--aws`) and handed to the same [`fanout::FanoutHandler`] the pipeline runs, so the
//! messages are exactly what the fanout would have sent. Delivery is at least once: a
//! replayed record that was already delivered is delivered again.

#[cfg(feature = "aws")]
use anyhow::Context;
use anyhow::bail;
#[cfg(feature = "aws")]
use domain::QueueKind;
use domain::change::{ChangeKind, ChangeRecord, Image};
use domain::{ClientId, Crm, NavigationRecord, SystemClock};
use fanout::{FanoutHandler, FanoutOutcome, FanoutSettings};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Records handed to the fanout at once.
const REPLAY_BATCH: usize = 100;
/// Records read per page of the local feed.
const LOCAL_PAGE: usize = 1000;

/// What to replay.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Received at or after (epoch ms).
    pub since_ms: i64,
    /// Received before (epoch ms).
    pub until_ms: i64,
    /// Only this client.
    pub client: Option<ClientId>,
    /// Only this CRM.
    pub crm: Option<Crm>,
}

impl Selection {
    fn matches(&self, r: &NavigationRecord) -> bool {
        r.timestamp >= self.since_ms
            && r.timestamp < self.until_ms
            && self.client.as_ref().is_none_or(|c| *c == r.client_id)
            && self.crm.is_none_or(|c| c == r.crm)
    }
}

/// Parses `--since` / `--until`: an RFC 3339 UTC time (`2026-12-01T10:00:00Z`), a date
/// (`2026-12-01`), or a duration back from now (`90m`, `6h`, `2d`).
pub fn parse_time(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    let t = s.trim();
    if let Some(ms) = domain::time::parse_rfc3339_utc(t) {
        return Ok(ms);
    }
    let (n, unit) = t.split_at(t.len().saturating_sub(1));
    let scale = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match n.parse::<i64>() {
        Ok(n) if scale > 0 && n >= 0 => Ok(now_ms - n * scale),
        _ => bail!(
            "{s:?} is not a time: use 2026-12-01T10:00:00Z, 2026-12-01, or a duration back from now like 90m, 6h, 2d"
        ),
    }
}

/// Counts of a replay.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Counts {
    scanned: u64,
    matched: u64,
    routed: BTreeMap<String, u64>,
    dead_lettered: BTreeMap<String, u64>,
    failed: u64,
}

impl Counts {
    fn add(&mut self, o: &FanoutOutcome) {
        for (crm, n) in &o.routed {
            *self.routed.entry(crm.to_string()).or_default() += n;
        }
        for (crm, n) in &o.dead_lettered {
            *self.dead_lettered.entry(crm.to_string()).or_default() += n;
        }
        self.failed += o.failed.values().sum::<u64>();
    }
}

/// Where the records come from and where the messages go.
enum Source {
    Local {
        store: local::SqliteStore,
        queues: local::LocalQueues,
    },
    #[cfg(feature = "aws")]
    Aws {
        dynamodb: aws_sdk_dynamodb::Client,
        table: String,
        queues: aws::SqsQueues,
    },
}

/// Runs a replay; `--aws` reads `NAVIGATION_TABLE` and the queue URLs from the same
/// env vars as the Lambdas (`QUEUE_URL_{CRM}`, `DLQ_URL_{CRM}`).
pub async fn run(
    data: &Path,
    aws: bool,
    selection: Selection,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        selection.since_ms < selection.until_ms,
        "--since must be before --until"
    );
    #[cfg(not(feature = "aws"))]
    if aws {
        return Err(crate::no_aws());
    }
    #[cfg(feature = "aws")]
    let source = if aws {
        let table = std::env::var(aws::env::NAVIGATION_TABLE)
            .context("set NAVIGATION_TABLE to the navigation table's name")?;
        let crms: Vec<Crm> = selection
            .crm
            .map_or_else(|| Crm::all().collect::<Vec<_>>(), |c| vec![c]);
        let mut urls = Vec::new();
        for crm in crms {
            let q = std::env::var(aws::env::queue_url_var(crm))
                .with_context(|| format!("set {}", aws::env::queue_url_var(crm)))?;
            let d = std::env::var(aws::env::dlq_url_var(crm))
                .with_context(|| format!("set {}", aws::env::dlq_url_var(crm)))?;
            urls.push((crm, q, d));
        }
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let mut queues = aws::SqsQueues::new(aws_sdk_sqs::Client::new(&config));
        for (crm, q, d) in urls {
            queues = queues.with_queue(crm, QueueKind::Delivery, q).with_queue(
                crm,
                QueueKind::DeadLetter,
                d,
            );
        }
        Source::Aws {
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            table,
            queues,
        }
    } else {
        local_source(data)?
    };
    #[cfg(not(feature = "aws"))]
    let source = local_source(data)?;
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut counts = Counts::default();
    let result = match &source {
        Source::Local { store, queues } => {
            let fanout = handler(queues.clone(), crate::runtime::fanout::POLL_BATCH);
            replay_local(store, &fanout, &selection, dry_run, &mut counts, &bar).await
        }
        #[cfg(feature = "aws")]
        Source::Aws {
            dynamodb,
            table,
            queues,
        } => {
            let fanout = handler(queues.clone(), fanout::handler::MAX_BATCH_ENTRIES);
            replay_aws(
                dynamodb,
                table,
                &fanout,
                &selection,
                dry_run,
                &mut counts,
                &bar,
            )
            .await
        }
    };
    bar.finish_and_clear();
    match source {
        Source::Local { store, .. } => store.shutdown().await,
        #[cfg(feature = "aws")]
        Source::Aws { .. } => {}
    }
    result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&counts)?);
    } else if dry_run {
        println!(
            "{} records scanned, {} would be replayed",
            counts.scanned, counts.matched
        );
    } else {
        let routed: Vec<String> = counts
            .routed
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        println!(
            "{} records scanned, {} replayed ({}), {} dead-lettered, {} failed",
            counts.scanned,
            counts.matched,
            if routed.is_empty() {
                "none".to_owned()
            } else {
                routed.join(", ")
            },
            counts.dead_lettered.values().sum::<u64>(),
            counts.failed
        );
    }
    if counts.failed > 0 {
        bail!(
            "{} records could not be queued; run the same replay again (delivery is at least once)",
            counts.failed
        );
    }
    Ok(())
}

fn local_source(data: &Path) -> anyhow::Result<Source> {
    let store = crate::open_tool_store(data)?;
    let queues = local::LocalQueues::new(
        store.clone(),
        Arc::new(SystemClock),
        local::queues::DEFAULT_MAX_RECEIVE_COUNT,
    );
    Ok(Source::Local { store, queues })
}

fn handler<Q: domain::QueueSender>(
    queues: Q,
    max_batch_entries: usize,
) -> FanoutHandler<Q, local::LogAlerts, SystemClock> {
    FanoutHandler::new(
        queues,
        local::LogAlerts,
        SystemClock,
        FanoutSettings {
            max_batch_entries,
            ..FanoutSettings::default()
        },
        "replay",
    )
}

/// Hands one batch of records to the fanout (or only counts them, dry).
async fn flush<Q: domain::QueueSender>(
    fanout: &FanoutHandler<Q, local::LogAlerts, SystemClock>,
    batch: &mut Vec<NavigationRecord>,
    dry_run: bool,
    counts: &mut Counts,
) {
    if batch.is_empty() {
        return;
    }
    counts.matched += batch.len() as u64;
    if dry_run {
        batch.clear();
        return;
    }
    let changes: Vec<ChangeRecord> = batch
        .drain(..)
        .enumerate()
        .map(|(i, r)| ChangeRecord {
            sequence_number: format!("replay-{i}"),
            kind: Some(ChangeKind::Insert),
            ttl_expiry: false,
            image: Image::Record(std::sync::Arc::new(r)),
        })
        .collect();
    let outcome = fanout.handle(&changes).await;
    counts.add(&outcome);
}

fn progress(bar: &ProgressBar, counts: &Counts) {
    bar.set_message(format!(
        "scanned {} matched {} routed {}",
        counts.scanned,
        counts.matched,
        counts.routed.values().sum::<u64>()
    ));
}

async fn replay_local(
    store: &local::SqliteStore,
    fanout: &FanoutHandler<local::LocalQueues, local::LogAlerts, SystemClock>,
    selection: &Selection,
    dry_run: bool,
    counts: &mut Counts,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut after = 0;
    let mut batch = Vec::new();
    loop {
        let page = store.changes_after(after, LOCAL_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for change in page {
            counts.scanned += 1;
            match serde_json::from_str::<NavigationRecord>(&change.new_image) {
                Ok(r) if selection.matches(&r) => batch.push(r),
                Ok(_) => {}
                // Not the decoder's message: it can quote a value, and values hold emails.
                Err(e) => tracing::warn!(
                    recordId = %change.record_id,
                    line = e.line(),
                    column = e.column(),
                    "skipped an unreadable record"
                ),
            }
            if batch.len() >= REPLAY_BATCH {
                flush(fanout, &mut batch, dry_run, counts).await;
            }
        }
        progress(bar, counts);
    }
    flush(fanout, &mut batch, dry_run, counts).await;
    Ok(())
}

#[cfg(feature = "aws")]
async fn replay_aws(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    fanout: &FanoutHandler<aws::SqsQueues, local::LogAlerts, SystemClock>,
    selection: &Selection,
    dry_run: bool,
    counts: &mut Counts,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
    let mut batch = Vec::new();
    loop {
        // The time window is a filter of the scan (the table's key is the record id): the
        // receipt time is `timestamp`, or `receivedAt` for an idempotent record (keyed by
        // the start of its day; the records are checked again below). Old idempotency
        // markers (timestamp 0) fall outside every window.
        let out = dynamodb
            .scan()
            .table_name(table)
            .filter_expression(
                "#ts BETWEEN :since AND :until OR receivedAt BETWEEN :since AND :until",
            )
            .expression_attribute_names("#ts", "timestamp")
            .expression_attribute_values(
                ":since",
                AttributeValue::N(selection.since_ms.to_string()),
            )
            .expression_attribute_values(
                ":until",
                AttributeValue::N(selection.until_ms.saturating_sub(1).to_string()),
            )
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&e)))
            .with_context(|| format!("scanning {table}"))?;
        counts.scanned += u64::try_from(out.scanned_count()).unwrap_or(0);
        for item in out.items() {
            match aws::dynamo::record_of_item(item) {
                Some(Ok(r)) if selection.matches(&r) => batch.push(r),
                None | Some(Ok(_)) => {}
                // Not the decoder's message: it can quote a value, and values hold emails.
                Some(Err(_)) => tracing::warn!(
                    recordId = item
                        .get("recordId")
                        .and_then(|v| v.as_s().ok())
                        .map_or("?", String::as_str),
                    "skipped an unreadable item"
                ),
            }
            if batch.len() >= REPLAY_BATCH {
                flush(fanout, &mut batch, dry_run, counts).await;
            }
        }
        progress(bar, counts);
        match out.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    flush(fanout, &mut batch, dry_run, counts).await;
    Ok(())
}
