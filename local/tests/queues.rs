//! SQS semantics of the local queues, with a clock the test moves.

use domain::{Clock, Crm, OutgoingMessage, QueueKind, QueueSender};
use local::{LocalQueues, SqliteStore, StoreOptions, queue_name};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

#[derive(Default)]
struct ManualClock(AtomicI64);
impl ManualClock {
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn setup(
    max_receive_count: u32,
) -> (
    tempfile::TempDir,
    SqliteStore,
    LocalQueues,
    Arc<ManualClock>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    let clock = Arc::new(ManualClock(AtomicI64::new(1_000_000)));
    let queues = LocalQueues::new(store.clone(), clock.clone(), max_receive_count);
    (dir, store, queues, clock)
}

fn message(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: id.into(),
        body: format!("{{\"n\":\"{id}\"}}"),
        attributes: vec![
            ("clientId".into(), "shop-a".into()),
            ("crm".into(), "responsys".into()),
        ],
    }
}

/// A message's attributes as a receive gives them back.
fn owned(m: &OutgoingMessage) -> Vec<(String, String)> {
    m.attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const VT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn visibility_timeout_and_receive_count() {
    let (_dir, store, queues, clock) = setup(5);
    let mut sends = queues.watch_sends();
    queues
        .send_batch(
            Crm::RESPONSYS,
            QueueKind::Delivery,
            &[message("a"), message("b")],
        )
        .await
        .expect("send");
    assert!(
        sends.has_changed().expect("watch"),
        "senders wake the workers"
    );
    sends.borrow_and_update();
    let q = queue_name(Crm::RESPONSYS, QueueKind::Delivery);
    let first = queues.receive(&q, None, 10, VT).await.expect("receive");
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].body, "{\"n\":\"a\"}");
    assert_eq!(first[0].attributes, owned(&message("a")));
    assert_eq!(first[0].receive_count, 1);
    assert!(
        queues
            .receive(&q, None, 10, VT)
            .await
            .expect("receive")
            .is_empty(),
        "hidden"
    );
    let stats = queues.stats(&q).await.expect("stats");
    assert_eq!((stats.visible, stats.in_flight), (0, 2));

    clock.advance(29_999);
    assert!(
        queues
            .receive(&q, None, 10, VT)
            .await
            .expect("receive")
            .is_empty()
    );
    clock.advance(1);
    let second = queues.receive(&q, None, 1, VT).await.expect("receive");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(second[0].receipt_handle, first[0].receipt_handle);
    // The first receipt is stale now.
    assert!(
        !queues
            .delete(&q, &first[0].receipt_handle)
            .await
            .expect("delete")
    );
    assert!(
        queues
            .delete(&q, &second[0].receipt_handle)
            .await
            .expect("delete")
    );
    // Change visibility: back at once.
    assert!(
        queues
            .change_visibility(&q, &first[1].receipt_handle, Duration::ZERO)
            .await
            .expect("cv")
    );
    let again = queues.receive(&q, None, 10, VT).await.expect("receive");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, first[1].message_id);
    assert!(
        queues
            .change_visibility(&q, &again[0].receipt_handle, Duration::from_secs(120))
            .await
            .expect("cv")
    );
    assert_eq!(
        queues.next_visible_at(&q).await.expect("next"),
        Some(clock.now_ms() + 120_000)
    );
    assert!(!queues.delete(&q, "garbage").await.expect("delete"));
    // A handle of the earlier form (`{seq}-{uuid}`, held by a worker of a process that
    // stopped before an upgrade) names no receive.
    let seq = again[0].receipt_handle.split_once('-').expect("handle").0;
    let old = format!("{seq}-0a1b2c3d4e5f60718293a4b5c6d7e8f9");
    assert!(!queues.delete(&q, &old).await.expect("delete"));
    assert!(
        !queues
            .change_visibility(&q, &old, Duration::ZERO)
            .await
            .expect("cv")
    );
    // Nor does one without the message id (`{seq}-{count}`, which could name a later
    // message at the same position).
    let mut parts = again[0].receipt_handle.splitn(3, '-');
    let without_id = format!(
        "{}-{}",
        parts.next().expect("seq"),
        parts.next().expect("count")
    );
    assert!(!queues.delete(&q, &without_id).await.expect("delete"));
    assert!(
        queues
            .delete(&q, &again[0].receipt_handle)
            .await
            .expect("delete")
    );
    store.shutdown().await;
}

/// SQLite gives a new row the position after the largest one left, so a message sent
/// once the newest one was deleted takes its position again. A handle of the deleted
/// message (held by a worker whose visibility ran out) must not delete or hide the new
/// one, even at the same receive count.
#[tokio::test]
async fn a_handle_never_names_a_later_message_at_the_same_position() {
    let (_dir, store, queues, clock) = setup(5);
    let q = queue_name(Crm::RESPONSYS, QueueKind::Delivery);
    queues
        .send_batch(Crm::RESPONSYS, QueueKind::Delivery, &[message("a")])
        .await
        .expect("send");
    let slow = queues.receive(&q, None, 10, VT).await.expect("receive");
    clock.advance(30_000);
    let fast = queues.receive(&q, None, 10, VT).await.expect("receive");
    assert!(
        queues
            .delete(&q, &fast[0].receipt_handle)
            .await
            .expect("delete")
    );

    queues
        .send_batch(Crm::RESPONSYS, QueueKind::Delivery, &[message("b")])
        .await
        .expect("send");
    let b = queues.receive(&q, None, 10, VT).await.expect("receive");
    assert_eq!(b[0].body, "{\"n\":\"b\"}");
    assert_eq!(b[0].receive_count, slow[0].receive_count);
    assert_ne!(b[0].receipt_handle, slow[0].receipt_handle);
    assert!(
        !queues
            .delete(&q, &slow[0].receipt_handle)
            .await
            .expect("delete")
    );
    assert!(
        !queues
            .change_visibility(&q, &slow[0].receipt_handle, Duration::ZERO)
            .await
            .expect("cv")
    );
    let stats = queues.stats(&q).await.expect("stats");
    assert_eq!(
        (stats.visible, stats.in_flight),
        (0, 1),
        "b is still in flight"
    );
    assert!(
        queues
            .delete(&q, &b[0].receipt_handle)
            .await
            .expect("delete")
    );
    store.shutdown().await;
}

#[tokio::test]
async fn messages_move_to_the_dlq_after_max_receive_count() {
    let (_dir, store, queues, clock) = setup(3);
    let (q, dlq) = (
        queue_name(Crm::SFMC, QueueKind::Delivery),
        queue_name(Crm::SFMC, QueueKind::DeadLetter),
    );
    assert_eq!(dlq, "salesforce-dlq");
    queues
        .send_batch(Crm::SFMC, QueueKind::Delivery, &[message("x")])
        .await
        .expect("send");
    let mut last = String::new();
    for n in 1..=3 {
        let got = queues
            .receive(&q, Some(&dlq), 10, VT)
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].receive_count, n);
        last = got[0].receipt_handle.clone();
        clock.advance(30_000);
    }
    assert!(
        queues
            .receive(&q, Some(&dlq), 10, VT)
            .await
            .expect("receive")
            .is_empty(),
        "moved"
    );
    // The receive that moved it counted: the main queue's last handle names neither the
    // message on the DLQ nor its next receive there.
    for queue in [&q, &dlq] {
        assert!(
            !queues.delete(queue, &last).await.expect("delete"),
            "{queue}"
        );
    }
    let in_dlq = queues.receive(&dlq, None, 10, VT).await.expect("receive");
    assert_eq!(in_dlq.len(), 1);
    assert_eq!(in_dlq[0].receive_count, 5);
    assert_ne!(in_dlq[0].receipt_handle, last);
    assert!(!queues.delete(&dlq, &last).await.expect("delete"));
    assert_eq!(in_dlq[0].body, "{\"n\":\"x\"}");
    assert_eq!(
        in_dlq[0].attributes,
        owned(&message("x")),
        "attributes kept"
    );
    assert_eq!(queues.stats(&q).await.expect("stats"), Default::default());
    store.shutdown().await;
}

#[tokio::test]
async fn queues_survive_a_restart() {
    let (dir, store, queues, clock) = setup(5);
    queues
        .send_batch(Crm::RDSTATION, QueueKind::Delivery, &[message("p")])
        .await
        .expect("send");
    store.shutdown().await;
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("reopen");
    let queues = LocalQueues::new(store.clone(), clock, 5);
    let got = queues
        .receive("rdstation", None, 10, VT)
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    store.shutdown().await;
}
