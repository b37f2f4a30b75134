//! The fanout handler on stream batches, with a recording queue (the SQS round trip on
//! moto is in `sqs_roundtrip.rs`).

use async_trait::async_trait;
use aws_lambda_events::dynamodb::Event;
use domain::{
    Alert, AlertSink, ChangeKind, ChangeRecord, ClientId, Clock, Crm, DeliveryMessage, GtmEvent,
    Image, NavigationRecord, OutgoingMessage, QueueError, QueueKind, QueueSender, SendFailure,
};
use fanout::lambda::{batch_response, change_records};
use fanout::{FanoutHandler, FanoutSettings, Skip};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How a queue answers an entry: fail `times` times, transiently or as sender fault.
#[derive(Clone, Copy)]
struct Fault {
    times: usize,
    sender_fault: bool,
}

type Log = Mutex<Vec<(Crm, QueueKind, Vec<OutgoingMessage>)>>;

#[derive(Default)]
struct Queues {
    calls: Log,
    accepted_log: Mutex<Vec<(Crm, QueueKind, OutgoingMessage)>>,
    entry_faults: Mutex<HashMap<String, Fault>>,
    call_errors: Mutex<HashMap<Crm, usize>>,
    /// Entries one call takes beyond SQS's 10 (the local queues take a whole poll).
    max_entries: Option<usize>,
}

impl Queues {
    fn fail_entry(&self, id: &str, times: usize, sender_fault: bool) {
        self.entry_faults.lock().expect("lock").insert(
            id.to_owned(),
            Fault {
                times,
                sender_fault,
            },
        );
    }
    fn calls(&self, crm: Crm, kind: QueueKind) -> Vec<Vec<OutgoingMessage>> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|(c, k, _)| *c == crm && *k == kind)
            .map(|(_, _, m)| m.clone())
            .collect()
    }
    /// Messages accepted by a queue, in order.
    fn accepted(&self, crm: Crm, kind: QueueKind) -> Vec<OutgoingMessage> {
        self.accepted_log
            .lock()
            .expect("lock")
            .iter()
            .filter(|(c, k, _)| *c == crm && *k == kind)
            .map(|(_, _, m)| m.clone())
            .collect()
    }
}

#[async_trait]
impl QueueSender for Queues {
    async fn send_batch(
        &self,
        crm: Crm,
        queue: QueueKind,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<SendFailure>, QueueError> {
        let max = self.max_entries.unwrap_or(10);
        assert!(
            messages.len() <= max,
            "the queue takes at most {max} entries"
        );
        self.calls
            .lock()
            .expect("lock")
            .push((crm, queue, messages.to_vec()));
        if let Some(n) = self.call_errors.lock().expect("lock").get_mut(&crm)
            && *n > 0
        {
            *n -= 1;
            return Err(QueueError::Unavailable("503".into()));
        }
        let mut failures = Vec::new();
        let mut faults = self.entry_faults.lock().expect("lock");
        for m in messages {
            match faults.get_mut(&m.id) {
                Some(f) if f.times > 0 => {
                    f.times -= 1;
                    failures.push(SendFailure {
                        id: m.id.clone(),
                        code: if f.sender_fault {
                            "InvalidMessageContents".into()
                        } else {
                            "InternalError".into()
                        },
                        sender_fault: f.sender_fault,
                    });
                }
                _ => self
                    .accepted_log
                    .lock()
                    .expect("lock")
                    .push((crm, queue, m.clone())),
            }
        }
        Ok(failures)
    }
}

#[derive(Default)]
struct Alerts(Mutex<Vec<Alert>>);

#[async_trait]
impl AlertSink for Alerts {
    async fn alert(&self, alert: &Alert) {
        self.0.lock().expect("lock").push(alert.clone());
    }
}

struct FixedClock;
impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        1_706_457_600_000
    }
}

fn settings() -> FanoutSettings {
    FanoutSettings {
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..FanoutSettings::default()
    }
}

type Handler<'a> = FanoutHandler<&'a Queues, &'a Alerts, FixedClock>;

fn handler<'a>(queues: &'a Queues, alerts: &'a Alerts) -> Handler<'a> {
    FanoutHandler::new(queues, alerts, FixedClock, settings(), "fanout")
}

fn record(crm: Crm, client: &str, n: usize) -> NavigationRecord {
    let route_body = json!({"clientId": client, "tid": "GA4.1.2", "email": format!("u{n}@example.com"),
        "eventType": "add_to_cart", "productId": format!("SKU-{n}"), "eventId": format!("e-{n}")});
    let event = GtmEvent::parse(crm, route_body).expect("valid");
    NavigationRecord::new(
        event,
        ClientId::parse(client).expect("id"),
        crm,
        1_706_457_600_000 + n as i64,
        48,
    )
}

fn insert(seq: usize, r: NavigationRecord) -> ChangeRecord {
    ChangeRecord {
        sequence_number: format!("{:021}", 100 + seq),
        kind: Some(ChangeKind::Insert),
        ttl_expiry: false,
        image: Image::Record(std::sync::Arc::new(r)),
    }
}

#[tokio::test]
async fn the_stream_fixture_is_routed_and_the_ttl_delete_skipped() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/events/dynamodb-stream-batch.json"
    ))
    .expect("fixture");
    let event: Event = serde_json::from_str(&text).expect("event");
    let changes = change_records(&event);
    assert_eq!(changes.len(), 3);
    assert!(changes[2].ttl_expiry);
    let (queues, alerts) = (Queues::default(), Alerts::default());
    let outcome = handler(&queues, &alerts).handle(&changes).await;
    assert_eq!(outcome.first_failure, None);
    assert_eq!(outcome.routed.get(&Crm::RESPONSYS), Some(&1));
    assert_eq!(outcome.routed.get(&Crm::RDSTATION), Some(&1));
    assert_eq!(outcome.skipped.get(&Skip::TtlExpiry), Some(&1));
    assert!(
        batch_response(outcome.first_failure)
            .batch_item_failures
            .is_empty()
    );

    let sent = queues.accepted(Crm::RESPONSYS, QueueKind::Delivery);
    assert_eq!(sent.len(), 1);
    let body: DeliveryMessage = serde_json::from_str(&sent[0].body).expect("body");
    assert_eq!(body.v, 1);
    assert_eq!(body.record_id, "client-abc-20260128-0001");
    assert_eq!(body.client_id.as_str(), "client-abc");
    assert_eq!(body.received_at, 1_706_457_600_000);
    assert_eq!(body.event.email.as_str(), "user@example.com");
    assert_eq!(body.event.product_price, Some(1299.9));
    let attrs: HashMap<_, _> = sent[0].attributes.iter().cloned().collect();
    assert_eq!(attrs["clientId"], "client-abc");
    assert_eq!(attrs["crm"], "responsys");
    assert_eq!(attrs["eventType"], "product_view");
    assert_eq!(
        sent[0].id, "100000000000000000001",
        "entry ids are the sequence numbers"
    );
    let rd = queues.accepted(Crm::RDSTATION, QueueKind::Delivery);
    assert_eq!(rd.len(), 1);
    assert!(alerts.0.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn mixed_batches_skip_everything_but_inserts_with_a_record() {
    let mut batch = vec![insert(0, record(Crm::SFMC, "shop-sf", 0))];
    for (i, (kind, ttl, image)) in [
        (
            Some(ChangeKind::Modify),
            false,
            Image::Record(std::sync::Arc::new(record(Crm::SFMC, "shop-sf", 1))),
        ),
        (Some(ChangeKind::Remove), false, Image::Absent),
        (Some(ChangeKind::Remove), true, Image::Absent),
        (Some(ChangeKind::Insert), false, Image::Marker),
        (Some(ChangeKind::Insert), false, Image::Absent),
        (None, false, Image::Absent),
    ]
    .into_iter()
    .enumerate()
    {
        batch.push(ChangeRecord {
            sequence_number: format!("{}", 200 + i),
            kind,
            ttl_expiry: ttl,
            image,
        });
    }
    batch.push(insert(9, record(Crm::SFMC, "shop-sf", 9)));
    let (queues, alerts) = (Queues::default(), Alerts::default());
    let outcome = handler(&queues, &alerts).handle(&batch).await;
    assert_eq!(outcome.first_failure, None);
    assert_eq!(outcome.routed.get(&Crm::SFMC), Some(&2));
    for (skip, n) in [
        (Skip::Modify, 1),
        (Skip::Remove, 1),
        (Skip::TtlExpiry, 1),
        (Skip::Marker, 1),
        (Skip::NoImage, 1),
        (Skip::UnknownEvent, 1),
    ] {
        assert_eq!(outcome.skipped.get(&skip), Some(&n), "{skip:?}");
    }
}

#[tokio::test]
async fn twenty_five_records_take_three_calls_per_crm() {
    let mut batch = Vec::new();
    for i in 0..25 {
        batch.push(insert(batch.len(), record(Crm::RESPONSYS, "shop-a", i)));
        batch.push(insert(batch.len(), record(Crm::SFMC, "shop-sf", i)));
    }
    let (queues, alerts) = (Queues::default(), Alerts::default());
    let outcome = handler(&queues, &alerts).handle(&batch).await;
    assert_eq!(outcome.first_failure, None);
    for crm in [Crm::RESPONSYS, Crm::SFMC] {
        let calls = queues.calls(crm, QueueKind::Delivery);
        let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5], "{crm}");
        assert_eq!(outcome.routed.get(&crm), Some(&25));
    }
    assert!(queues.calls(Crm::RDSTATION, QueueKind::Delivery).is_empty());
}

/// The local queues take a whole poll in one call (one transaction): the configured
/// batch size is the one used, not SQS's 10.
#[tokio::test]
async fn the_configured_batch_size_is_the_one_used() {
    let batch: Vec<ChangeRecord> = (0..250)
        .map(|i| insert(i, record(Crm::RESPONSYS, "shop-a", i)))
        .collect();
    let queues = Queues {
        max_entries: Some(100),
        ..Queues::default()
    };
    let alerts = Alerts::default();
    let handler = FanoutHandler::new(
        &queues,
        &alerts,
        FixedClock,
        FanoutSettings {
            max_batch_entries: 100,
            max_batch_bytes: usize::MAX,
            ..settings()
        },
        "fanout",
    );
    let outcome = handler.handle(&batch).await;
    assert_eq!(outcome.first_failure, None);
    let sizes: Vec<usize> = queues
        .calls(Crm::RESPONSYS, QueueKind::Delivery)
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
}

#[tokio::test]
async fn a_persistent_entry_failure_is_reported_as_the_first_failed_sequence_number() {
    let batch: Vec<ChangeRecord> = (0..12)
        .map(|i| insert(i, record(Crm::RESPONSYS, "shop-a", i)))
        .collect();
    let (queues, alerts) = (Queues::default(), Alerts::default());
    // Entry 7 always fails (transiently); entry 3 fails twice then succeeds.
    queues.fail_entry(&batch[7].sequence_number, usize::MAX, false);
    queues.fail_entry(&batch[3].sequence_number, 2, false);
    let outcome = handler(&queues, &alerts).handle(&batch).await;
    assert_eq!(
        outcome.first_failure.as_deref(),
        Some(batch[7].sequence_number.as_str())
    );
    assert_eq!(outcome.failed.get(&Crm::RESPONSYS), Some(&1));
    assert_eq!(outcome.routed.get(&Crm::RESPONSYS), Some(&11));
    let response = batch_response(outcome.first_failure);
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        response.batch_item_failures[0].item_identifier.as_deref(),
        Some(batch[7].sequence_number.as_str())
    );
    // Only the failing entries were sent again: 4 attempts for entry 7.
    let sends_of_7 = queues
        .calls(Crm::RESPONSYS, QueueKind::Delivery)
        .iter()
        .filter(|c| c.iter().any(|m| m.id == batch[7].sequence_number))
        .count();
    assert_eq!(sends_of_7, settings().max_send_attempts);
}

#[tokio::test]
async fn a_failing_queue_fails_from_its_first_record_and_the_other_crms_proceed() {
    let batch = vec![
        insert(0, record(Crm::RESPONSYS, "shop-a", 0)),
        insert(1, record(Crm::SFMC, "shop-sf", 1)),
        insert(2, record(Crm::RESPONSYS, "shop-a", 2)),
    ];
    let (queues, alerts) = (Queues::default(), Alerts::default());
    queues
        .call_errors
        .lock()
        .expect("lock")
        .insert(Crm::SFMC, usize::MAX);
    let outcome = handler(&queues, &alerts).handle(&batch).await;
    assert_eq!(
        outcome.first_failure.as_deref(),
        Some(batch[1].sequence_number.as_str())
    );
    assert_eq!(outcome.routed.get(&Crm::RESPONSYS), Some(&2));
    // A transient call error is retried and then succeeds.
    let queues = Queues::default();
    queues
        .call_errors
        .lock()
        .expect("lock")
        .insert(Crm::SFMC, 2);
    let outcome = handler(&queues, &alerts).handle(&batch).await;
    assert_eq!(outcome.first_failure, None);
    assert_eq!(outcome.routed.get(&Crm::SFMC), Some(&1));
}

#[tokio::test]
async fn too_large_records_are_dead_lettered_truncated_with_an_alert() {
    let mut big = record(Crm::RDSTATION, "shop-rd", 1);
    for i in 0..40 {
        big.properties
            .insert(format!("k{i}"), json!("x".repeat(7000)));
    }
    let batch = vec![
        insert(0, record(Crm::RDSTATION, "shop-rd", 0)),
        insert(1, big),
        insert(2, record(Crm::RDSTATION, "shop-rd", 2)),
    ];
    let (queues, alerts) = (Queues::default(), Alerts::default());
    let outcome = handler(&queues, &alerts).handle(&batch).await;
    assert_eq!(outcome.first_failure, None);
    assert_eq!(outcome.routed.get(&Crm::RDSTATION), Some(&2));
    assert_eq!(outcome.dead_lettered.get(&Crm::RDSTATION), Some(&1));
    let dlq = queues.accepted(Crm::RDSTATION, QueueKind::DeadLetter);
    assert_eq!(dlq.len(), 1);
    let attrs: HashMap<_, _> = dlq[0].attributes.iter().cloned().collect();
    assert_eq!(attrs["failureReason"], "too_large");
    assert_eq!(attrs["failedAt"], "2024-01-28T16:00:00Z");
    assert_eq!(attrs["clientId"], "shop-rd");
    for key in ["failureStatus", "attempts", "crm", "eventType"] {
        assert!(attrs.contains_key(key), "{key}");
    }
    let body: DeliveryMessage = serde_json::from_str(&dlq[0].body).expect("body");
    assert!(body.truncated);
    assert!(body.event.properties.is_empty());
    let alerts = alerts.0.lock().expect("lock");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "too_large");
    assert!(!alerts[0].message.contains("u1@example.com"));
}

#[tokio::test]
async fn entries_the_queue_refuses_go_to_the_dlq_and_do_not_block_the_stream() {
    let batch: Vec<ChangeRecord> = (0..3)
        .map(|i| insert(i, record(Crm::RESPONSYS, "shop-a", i)))
        .collect();
    let (queues, alerts) = (Queues::default(), Alerts::default());
    queues.fail_entry(&batch[1].sequence_number, 1, true);
    let outcome = handler(&queues, &alerts).handle(&batch).await;
    assert_eq!(outcome.first_failure, None);
    let dlq = queues.accepted(Crm::RESPONSYS, QueueKind::DeadLetter);
    assert_eq!(dlq.len(), 1);
    let attrs: HashMap<_, _> = dlq[0].attributes.iter().cloned().collect();
    assert_eq!(attrs["failureReason"], "queue_rejected");
    assert_eq!(attrs["failureStatus"], "InvalidMessageContents");
}

#[tokio::test]
async fn a_malformed_image_with_a_crm_is_dead_lettered() {
    let batch = vec![
        ChangeRecord {
            sequence_number: "300".into(),
            kind: Some(ChangeKind::Insert),
            ttl_expiry: false,
            image: Image::Malformed {
                crm: Some(Crm::SFMC),
                record_id: Some("r-1".into()),
                error: "missing field `email`".into(),
            },
        },
        ChangeRecord {
            sequence_number: "301".into(),
            kind: Some(ChangeKind::Insert),
            ttl_expiry: false,
            image: Image::Malformed {
                crm: None,
                record_id: None,
                error: "garbage".into(),
            },
        },
    ];
    let (queues, alerts) = (Queues::default(), Alerts::default());
    let outcome = handler(&queues, &alerts).handle(&batch).await;
    assert_eq!(outcome.first_failure, None);
    assert_eq!(outcome.dead_lettered.get(&Crm::SFMC), Some(&1));
    assert_eq!(outcome.skipped.get(&Skip::Unroutable), Some(&1));
    assert_eq!(alerts.0.lock().expect("lock")[0].kind, "unroutable_record");
}
