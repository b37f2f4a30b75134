//! CPU of the ingest handler per request, without the network: the work `connect serve
//! --discard` does for one POST (parse and validate the event, resolve the client through
//! its cache, the protections, the suppression check through its cache, the record and
//! its id, the answer), next to a ceiling measured in the same run — reading the same
//! body into a JSON tree and writing it back, the least any JSON endpoint does with it.
//! The client directory and the suppression list are the real SQLite store, as in
//! `connect serve`; the record store discards (the storage path is measured end to end
//! by `scripts/bench-cpu`).
//!
//! `cargo bench -p ingest --bench handler`; BENCHMARKS.md reports the ratio.

/// The allocator of `connect serve`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use domain::privacy::{EmailKeyer, Privacy};
use domain::{
    AllowedOrigins, ClientConfig, ClientId, ClientPolicy, Crm, NavigationRecord, PutOutcome,
    RecordStore, StoreError, SystemClock,
};
use ingest::{IngestHandler, IngestRequest, IngestSettings};
use std::hint::black_box;
use std::sync::Arc;

/// Accepts every record and keeps none (`connect serve --discard`).
struct Discard;

#[async_trait]
impl RecordStore for Discard {
    async fn put_if_absent(
        &self,
        _: std::sync::Arc<NavigationRecord>,
    ) -> Result<PutOutcome, StoreError> {
        Ok(PutOutcome::Created)
    }
}

/// The body `bench/ingest-post.lua` posts (wrk), for email `i % 1000` and event `i`.
fn body(i: u64) -> Vec<u8> {
    format!(
        r#"{{"clientId":"bench-shop","email":"shopper{}@example.com","eventType":"product_view","productId":"SKU-{}","productName":"Tenis Corrida","productPrice":199.9,"productUrl":"https://shop.example/p/{}","eventId":"bench-1-{i}-{}"}}"#,
        i % 1000,
        i % 500,
        i % 500,
        i.wrapping_mul(2_654_435_761) % 1_000_000_000
    )
    .into_bytes()
}

fn handler(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
) -> (
    IngestHandler<Discard, local::SqliteStore, SystemClock>,
    local::SqliteStore,
) {
    let store = local::SqliteStore::open(dir, local::StoreOptions::default()).expect("store");
    rt.block_on(store.upsert_client(&ClientConfig {
        client_id: ClientId::parse("bench-shop").expect("id"),
        crm: Crm::SFMC,
        active: true,
        allowed_origins: AllowedOrigins(vec!["https://shop.example".into()]),
        target: Some(serde_json::json!({"dataExtensionKey": "bench"})),
        secret_name: None,
        rate_limit_per_second: None,
        // As the demo clients of `connect serve --demo` (what `scripts/bench-cpu` posts
        // to): no per-email limit, which wrk's 1,000 shoppers would hit.
        policy: ClientPolicy {
            email_events_per_minute: 0,
            ..ClientPolicy::default()
        },
    }))
    .expect("client");
    let privacy = Privacy::new(
        EmailKeyer::new(&[7u8; 32]),
        Some(Arc::new(store.clone()) as Arc<dyn domain::privacy::SuppressionStore>),
    );
    let handler = IngestHandler::new(
        Discard,
        store.clone(),
        SystemClock,
        IngestSettings::default(),
    )
    .with_privacy(privacy);
    (handler, store)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let (handler, store) = handler(&rt, dir.path());
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("value"));
    headers.insert("origin", "https://shop.example".parse().expect("value"));
    headers.insert(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64)".parse().expect("value"),
    );
    let bodies: Vec<Vec<u8>> = (0..4096).map(body).collect();
    // Every email's suppression answer is cached before measuring, as in a warm process;
    // every request is accepted (twice over: nothing is refused along the way).
    for b in bodies.iter().chain(&bodies) {
        let r = rt.block_on(handler.handle(request(&headers, b)));
        assert_eq!(r.status, 202, "{}", r.body);
    }

    let mut group = c.benchmark_group("ingest");
    let mut i = 0usize;
    group.bench_function("ceiling: JSON tree in and out", |b| {
        b.iter(|| {
            i = (i + 1) % bodies.len();
            let v: serde_json::Value = serde_json::from_slice(black_box(&bodies[i])).expect("json");
            black_box(v.to_string())
        })
    });
    group.bench_function("handle (discard)", |b| {
        b.iter(|| {
            i = (i + 1) % bodies.len();
            let r = rt.block_on(handler.handle(request(&headers, black_box(&bodies[i]))));
            black_box(r.status)
        })
    });
    group.finish();
    rt.block_on(store.shutdown());
}

fn request<'a>(headers: &'a http::HeaderMap, body: &'a [u8]) -> IngestRequest<'a> {
    IngestRequest {
        method: "POST",
        path: "/salesforce",
        headers,
        body,
        query: None,
        source_ip: Some(std::net::IpAddr::from([203, 0, 113, 7])),
        request_id: "bench",
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
