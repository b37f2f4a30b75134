//! The change-feed poller: feeds the fanout handler in feed order, with a checkpoint
//! persisted after each batch. A crash between the send and the checkpoint re-sends that
//! batch (at-least-once), never skips it. It wakes as soon as an insert commits and takes
//! whatever accumulated as one batch under load.

use super::sleep_or_stop;
use crate::metrics::Metrics;
use backon::{BackoffBuilder, ExponentialBuilder};
use domain::{AlertSink, ChangeKind, ChangeRecord, Clock, Image, NavigationRecord, QueueSender};
use fanout::FanoutHandler;
use local::{Change, SqliteStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Checkpoint name of the fanout in the store.
pub const CONSUMER: &str = "fanout";
/// Most changes handed to the handler at once. Under load the fanout lags the writer
/// now and then and reads full batches: a batch's records, decoded records and queue
/// messages are live together, so this bounds the process's peak memory. 500 (down from
/// 2,000) took 6–10 MB off `serve --demo`'s peak RSS under `scripts/bench-cpu` at the
/// same CPU per event: the per-batch costs (a read, a relaxed queue transaction, a
/// checkpoint) are small once spread over a few hundred events (BENCHMARKS.md).
pub const POLL_BATCH: usize = 500;
/// Longest pause after a failed batch (doubling from 50 ms, jittered).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Environment variable naming a failpoint (crash tests only).
pub const FAILPOINT_VAR: &str = "CONNECT_FAILPOINT";
/// Failpoint: abort the process after a batch was sent, before its checkpoint is saved.
pub const FAILPOINT_AFTER_SEND: &str = "fanout-after-send";

/// Decodes one local change as a stream record.
pub fn change_record(change: &Change) -> ChangeRecord {
    let image = if change.new_image == local::privacy::ERASED_ITEM {
        // An erased record whose row had to stay: not an event.
        Image::Marker
    } else {
        match serde_json::from_str::<NavigationRecord>(&change.new_image) {
            Ok(record) => Image::Record(std::sync::Arc::new(record)),
            Err(e) => Image::Malformed {
                crm: Some(change.crm),
                record_id: Some(change.record_id.clone()),
                error: e.to_string(),
            },
        }
    };
    ChangeRecord {
        sequence_number: change.seq.to_string(),
        kind: Some(ChangeKind::Insert),
        ttl_expiry: false,
        image,
    }
}

/// The records the store's writer committed last, as stream records, and the position
/// of the last one (see `local::feed`: what the table holds, without reading it back).
fn committed_records(committed: Vec<local::feed::Committed>) -> (Option<i64>, Vec<ChangeRecord>) {
    let last = committed.last().map(|(seq, _)| *seq);
    let records = committed
        .into_iter()
        .map(|(seq, record)| ChangeRecord {
            sequence_number: seq.to_string(),
            kind: Some(ChangeKind::Insert),
            ttl_expiry: false,
            image: Image::Record(record),
        })
        .collect();
    (last, records)
}

fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(MAX_RETRY_DELAY)
        .without_max_times()
        .build()
}

/// Runs until `stop` turns true; the batch in hand is finished (sent and checkpointed)
/// first.
/// After a read of fewer than [`POLL_BATCH`] changes, it waits `batch_window` for more
/// before the next read, so that under load a batch costs one send and one checkpoint
/// for many events.
pub async fn run<Q, A, C>(
    store: SqliteStore,
    handler: FanoutHandler<Q, A, C>,
    metrics: Arc<Metrics>,
    clock: C,
    batch_window: Duration,
    mut stop: watch::Receiver<bool>,
) where
    Q: QueueSender,
    A: AlertSink,
    C: Clock,
{
    let crash_after_send = std::env::var(FAILPOINT_VAR).is_ok_and(|v| v == FAILPOINT_AFTER_SEND);
    let mut inserts = store.watch_changes();
    let mut delays = retry_delays();
    let mut checkpoint = loop {
        match store.checkpoint(CONSUMER).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the fanout checkpoint; retrying");
                if sleep_or_stop(&mut stop, delays.next().unwrap_or(MAX_RETRY_DELAY)).await {
                    return;
                }
            }
        }
    };
    let mut last_full = false;
    while !*stop.borrow() {
        if !last_full && !batch_window.is_zero() && sleep_or_stop(&mut stop, batch_window).await {
            break;
        }
        inserts.borrow_and_update();
        let read = match store.committed_after(checkpoint, POLL_BATCH) {
            Some(committed) => Ok(committed_records(committed)),
            None => store
                .changes_after(checkpoint, POLL_BATCH)
                .await
                .map(|changes| {
                    let last = changes.last().map(|c| c.seq);
                    (last, changes.iter().map(change_record).collect())
                }),
        };
        let (last, records) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the change feed; retrying");
                if sleep_or_stop(&mut stop, delays.next().unwrap_or(MAX_RETRY_DELAY)).await {
                    return;
                }
                continue;
            }
        };
        last_full = records.len() >= POLL_BATCH;
        let Some(last) = last else {
            tokio::select! {
                _ = inserts.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let outcome = handler.handle(&records).await;
        if crash_after_send {
            tracing::error!("failpoint {FAILPOINT_AFTER_SEND}: aborting before the checkpoint");
            std::process::abort();
        }
        let now = clock.now_ms();
        metrics.observe_fanout(&outcome, &records, now);
        let done = match &outcome.first_failure {
            None => last,
            Some(seq) => seq.parse::<i64>().map_or(checkpoint, |s| s - 1),
        };
        if done > checkpoint {
            match store.commit_checkpoint(CONSUMER, done).await {
                Ok(()) => {
                    checkpoint = done;
                    store.release_committed(done);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot save the fanout checkpoint; the batch will be sent again")
                }
            }
        }
        if outcome.first_failure.is_some() {
            if sleep_or_stop(&mut stop, delays.next().unwrap_or(MAX_RETRY_DELAY)).await {
                return;
            }
        } else {
            delays = retry_delays();
        }
    }
}
