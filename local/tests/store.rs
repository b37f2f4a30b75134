//! The SQLite adapters on a temporary directory.

use domain::{
    AllowedOrigins, ClientConfig, ClientDirectory, ClientId, Crm, GtmEvent, NavigationRecord,
    PutOutcome, RdStationConfig, RecordStore, Secret,
};
use local::{SqliteStore, StoreOptions};
use serde_json::json;

fn cid(s: &str) -> ClientId {
    ClientId::parse(s).expect("client id")
}

fn record(client: &str, event_id: Option<&str>, now_ms: i64) -> NavigationRecord {
    let mut body = json!({"clientId": client, "email": "Ana@Example.com", "eventType": "purchase", "productPrice": "10,5", "cartId": "c-1"});
    if let Some(e) = event_id {
        body["eventId"] = json!(e);
    }
    let event = GtmEvent::parse(Crm::RESPONSYS, body).expect("valid");
    NavigationRecord::new(event, cid(client), Crm::RESPONSYS, now_ms, 48)
}

fn client(id: &str, crm: Crm, active: bool, origins: &[&str]) -> ClientConfig {
    ClientConfig {
        client_id: cid(id),
        crm,
        active,
        allowed_origins: AllowedOrigins(origins.iter().map(|s| s.to_string()).collect()),
        target: Some(json!({"profileList": "CONTACTS"})),
        secret_name: Some(format!("/connect/{crm}/{id}/credentials")),
        rate_limit_per_second: None,
        policy: Default::default(),
    }
}

#[tokio::test]
async fn put_if_absent_stores_once_and_feeds_the_change_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    let mut changes = store.watch_changes();
    assert_eq!(*changes.borrow(), 0);

    let r = record("shop-a", Some("evt-1"), 1_706_457_600_000);
    assert_eq!(
        store.put_if_absent(r.clone().into()).await,
        Ok(PutOutcome::Created)
    );
    let again = record("shop-a", Some("evt-1"), 1_706_457_601_000);
    assert_eq!(again.record_id, r.record_id);
    assert_eq!(
        store.put_if_absent(again.clone().into()).await,
        Ok(PutOutcome::Duplicate)
    );
    assert_eq!(store.record(&r.record_id).await, Ok(Some(r.clone())));
    assert_eq!(store.record_count().await, Ok(1));
    changes.changed().await.expect("change seen");
    assert_eq!(*changes.borrow(), 1);

    let feed = store.changes_after(0, 10).await.expect("feed");
    assert_eq!(feed.len(), 1, "a duplicate must not reach the change feed");
    assert_eq!(feed[0].crm, Crm::RESPONSYS);
    assert_eq!(feed[0].record_id, r.record_id);
    let image: NavigationRecord = serde_json::from_str(&feed[0].new_image).expect("image");
    assert_eq!(image, r);
    assert_eq!(store.changes_after(feed[0].seq, 10).await, Ok(vec![]));
    assert_eq!(store.checkpoint("fanout").await, Ok(0));
    store
        .commit_checkpoint("fanout", feed[0].seq)
        .await
        .expect("checkpoint");
    assert_eq!(store.checkpoint("fanout").await, Ok(feed[0].seq));
    // A checkpoint never moves back.
    store
        .commit_checkpoint("fanout", 0)
        .await
        .expect("checkpoint");
    assert_eq!(store.checkpoint("fanout").await, Ok(feed[0].seq));
    store.shutdown().await;
}

#[tokio::test]
async fn concurrent_puts_are_group_committed_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    let mut tasks = Vec::new();
    for i in 0..500 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = record("shop-a", Some(&format!("e-{i}")), 1_706_457_600_000);
            store.put_if_absent(r.clone().into()).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), Ok(PutOutcome::Created));
    }
    store.shutdown().await;
    assert!(
        store
            .put_if_absent(record("shop-a", None, 1).into())
            .await
            .is_err(),
        "a closed store refuses writes"
    );

    let reopened = SqliteStore::open(dir.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(reopened.record_count().await, Ok(500));
    assert_eq!(*reopened.watch_changes().borrow(), 500);
    // The dedup set is rebuilt from the table: every retried event is still a duplicate,
    // a new one is not.
    for i in 0..500 {
        let retry = record("shop-a", Some(&format!("e-{i}")), 1_706_457_659_000);
        assert_eq!(
            reopened.put_if_absent(retry.clone().into()).await,
            Ok(PutOutcome::Duplicate),
            "e-{i}"
        );
    }
    assert_eq!(reopened.record_count().await, Ok(500));
    let new = record("shop-a", Some("e-500"), 1_706_457_659_000);
    assert_eq!(
        reopened.put_if_absent(new.clone().into()).await,
        Ok(PutOutcome::Created)
    );
    reopened.shutdown().await;
}

#[tokio::test]
async fn client_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    store
        .upsert_client(&client(
            "shop-a",
            Crm::RESPONSYS,
            true,
            &["https://a.example"],
        ))
        .await
        .expect("upsert");
    store
        .upsert_client(&client(
            "shop-b",
            Crm::RESPONSYS,
            true,
            &["https://*.b.example", "https://a.example"],
        ))
        .await
        .expect("upsert");
    store
        .upsert_client(&client(
            "shop-c",
            Crm::RESPONSYS,
            false,
            &["https://c.example"],
        ))
        .await
        .expect("upsert");
    store
        .upsert_client(&client("shop-d", Crm::SFMC, true, &["https://d.example"]))
        .await
        .expect("upsert");
    let a = store
        .client(&cid("shop-a"))
        .await
        .expect("read")
        .expect("found");
    assert_eq!(
        a,
        client("shop-a", Crm::RESPONSYS, true, &["https://a.example"])
    );
    assert_eq!(store.client(&cid("nobody")).await, Ok(None));
    assert_eq!(
        store.origins_for(Crm::RESPONSYS).await.expect("origins"),
        vec![
            "https://*.b.example".to_string(),
            "https://a.example".to_string()
        ],
        "active clients of the CRM only, deduplicated"
    );
    // An upsert replaces.
    store
        .upsert_client(&client("shop-a", Crm::RESPONSYS, false, &[]))
        .await
        .expect("upsert");
    assert!(
        !store
            .client(&cid("shop-a"))
            .await
            .expect("read")
            .expect("found")
            .active
    );

    let rd = RdStationConfig {
        tid: "GA4.1.2".into(),
        client_id: cid("shop-rd"),
        endpoint: None,
        token: Some(Secret::new("key".into())),
    };
    store.upsert_rdstation(&rd).await.expect("upsert");
    assert_eq!(store.rdstation_by_tid("GA4.1.2").await, Ok(Some(rd)));
    assert_eq!(store.rdstation_by_tid("GA4.9.9").await, Ok(None));
    store.shutdown().await;
}

#[tokio::test]
async fn sweeper_deletes_only_expired_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    let old = record("shop-a", Some("old"), 1_000_000_000_000);
    let new = record("shop-a", Some("new"), 2_000_000_000_000);
    store.put_if_absent(old.clone().into()).await.expect("put");
    store.put_if_absent(new.clone().into()).await.expect("put");
    assert_eq!(old.ttl, 1_000_000_000 + 48 * 3600);
    assert_eq!(
        store.sweep_expired(new.ttl + 1).await,
        Ok(0),
        "records not yet handed on by the fanout are kept even when expired"
    );
    let first = store.changes_after(0, 1).await.expect("feed")[0].seq;
    store
        .commit_checkpoint("fanout", first)
        .await
        .expect("checkpoint");
    assert_eq!(store.sweep_expired(old.ttl - 1).await, Ok(0));
    assert_eq!(
        store.sweep_expired(new.ttl + 1).await,
        Ok(1),
        "only the consumed one"
    );
    assert_eq!(store.record(&old.record_id).await, Ok(None));
    assert!(store.record(&new.record_id).await.expect("read").is_some());
    // The swept record's key left the dedup set with it; the kept one's did not.
    let again = record("shop-a", Some("new"), 2_000_000_000_000);
    assert_eq!(
        store.put_if_absent(again.clone().into()).await,
        Ok(PutOutcome::Duplicate)
    );
    let old_again = record("shop-a", Some("old"), 2_000_000_000_000);
    assert_eq!(
        store.put_if_absent(old_again.clone().into()).await,
        Ok(PutOutcome::Created)
    );
    store.health().await.expect("healthy");
    store.shutdown().await;
}

#[tokio::test]
async fn duplicates_within_one_group_commit_are_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_if_absent(record("shop-a", Some("same"), 1_706_457_600_000).into())
                .await
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.expect("join") == Ok(PutOutcome::Created) {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert_eq!(store.record_count().await, Ok(1));
    store.shutdown().await;
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    let err = SqliteStore::open(dir.path(), StoreOptions::default()).expect_err("locked");
    assert!(err.to_string().contains("in use"), "{err}");
    store.shutdown().await;
}

#[test]
fn migrations_refuse_a_newer_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(local::store::DB_FILE);
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.pragma_update(None, "user_version", 99)
        .expect("pragma");
    drop(conn);
    let err = SqliteStore::open(dir.path(), StoreOptions::default()).expect_err("too new");
    assert!(err.to_string().contains("newer"), "{err}");
}

/// The writer's tail of the feed gives the fanout what the table holds, in order, and
/// never a record erased after its commit (the fanout then reads the table).
#[tokio::test]
async fn the_committed_tail_is_the_feed_and_an_erasure_empties_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    assert_eq!(store.committed_after(0, 10), Some(vec![]));
    let mut other = record("shop-b", None, 1_706_457_600_000);
    other.email = domain::Email::parse("bia@example.com").expect("email");
    let puts = [
        record("shop-a", Some("evt-1"), 1_706_457_600_000),
        other,
        record("shop-a", None, 1_706_457_600_001),
    ];
    for r in &puts {
        assert_eq!(
            store.put_if_absent(r.clone().into()).await,
            Ok(PutOutcome::Created)
        );
    }
    // A duplicate is not committed, so not in the tail either.
    assert_eq!(
        store.put_if_absent(puts[0].clone().into()).await,
        Ok(PutOutcome::Duplicate)
    );
    let table = store.changes_after(0, 10).await.expect("feed");
    let tail = store
        .committed_after(0, 10)
        .expect("the tail holds every record");
    assert_eq!(tail.len(), 3);
    for ((seq, record), change) in tail.iter().zip(&table) {
        assert_eq!(*seq, change.seq);
        let image: NavigationRecord = serde_json::from_str(&change.new_image).expect("image");
        assert_eq!(**record, image);
    }
    let seqs: Vec<i64> = table.iter().map(|c| c.seq).collect();
    let after_first = store.committed_after(seqs[0], 1).expect("tail");
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].0, seqs[1]);

    // Handed on: released, and still answered for what comes after.
    store.release_committed(seqs[0]);
    assert_eq!(store.committed_after(seqs[0], 10).map(|t| t.len()), Some(2));
    assert_eq!(
        store.committed_after(0, 10),
        None,
        "released: from the table"
    );

    // Ana's records are erased: the tail no longer answers for positions before the
    // newest, and the table no longer has them.
    let ana = domain::Email::parse("ana@example.com").expect("email");
    store.erase(&ana, None).await.expect("erase");
    assert_eq!(store.committed_after(seqs[0], 10), None);
    let left = store.changes_after(seqs[0], 10).await.expect("feed");
    assert!(
        left.iter()
            .all(|c| !c.new_image.contains("ana@example.com")),
        "{left:?}"
    );
    assert_eq!(store.committed_after(seqs[2], 10), Some(vec![]));
    let next = record("shop-a", None, 1_706_457_600_002);
    assert_eq!(
        store.put_if_absent(next.clone().into()).await,
        Ok(PutOutcome::Created)
    );
    let tail = store.committed_after(seqs[2], 10).expect("tail");
    assert_eq!(tail.len(), 1);
    assert_eq!(*tail[0].1, next);
}
