//! `connect serve`: the whole pipeline in one process on the embedded store.

use crate::config::{self, FileConfig};
use crate::metrics::Metrics;
use crate::runtime;
use anyhow::Context;
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use domain::{NavigationRecord, PutOutcome, RecordStore, StoreError, SystemClock};
use fanout::{FanoutHandler, FanoutSettings};
use ingest::{IngestHandler, IngestRequest, IngestSettings, MAX_BODY_BYTES};
use local::queues::DEFAULT_MAX_RECEIVE_COUNT;
use local::{LocalQueues, LogAlerts, SqliteStore, StoreOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest body read off the socket before answering 413 without parsing it; bodies
/// between [`MAX_BODY_BYTES`] and this get the handler's own 413.
pub const SHELL_BODY_LIMIT: usize = MAX_BODY_BYTES * 4;
/// Bytes of an oversize body read and discarded before answering 413, so that a client
/// still writing its body can read the answer; past it the connection is closed.
pub const OVERSIZE_DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// Options of `connect serve` after CLI and file are merged.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Config file.
    pub config: Option<PathBuf>,
    /// `--data`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--demo`.
    pub demo: bool,
    /// Benchmark only: accept and validate events but store nothing (the HTTP ceiling).
    pub discard: bool,
}

/// The record store of the server: SQLite, or nothing (benchmark ceiling).
#[derive(Debug, Clone)]
enum ServeStore {
    Sqlite(SqliteStore),
    Discard,
}

#[async_trait]
impl RecordStore for ServeStore {
    async fn put_if_absent(&self, record: &NavigationRecord) -> Result<PutOutcome, StoreError> {
        match self {
            ServeStore::Sqlite(s) => s.put_if_absent(record).await,
            ServeStore::Discard => Ok(PutOutcome::Created),
        }
    }
}

type Handler = IngestHandler<ServeStore, SqliteStore, SystemClock>;

struct App {
    handler: Handler,
    store: SqliteStore,
    metrics: Arc<Metrics>,
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let file = match &opts.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let data_dir = opts
        .data_dir
        .clone()
        .or(file.store.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR));
    let listen = match opts.listen.or(file.server.listen) {
        Some(addr) => addr,
        None => config::DEFAULT_LISTEN
            .parse()
            .context("default listen address")?,
    };
    let ttl_hours = match file.store.record_ttl_hours {
        Some(h) => check_ttl_hours(h)?,
        None => domain::record::DEFAULT_RECORD_TTL_HOURS,
    };
    let sweep_every = Duration::from_secs(
        file.store
            .sweep_interval_seconds
            .unwrap_or(config::DEFAULT_SWEEP_INTERVAL_SECONDS)
            .max(1),
    );
    let mut clients = file.client_configs()?;
    let mut rdstation = file.rdstation_configs()?;
    if opts.demo {
        let (c, r) = config::demo_identities();
        clients.extend(c);
        rdstation.extend(r);
    }

    let store = SqliteStore::open(
        &data_dir,
        StoreOptions {
            synchronous: file.store.synchronous.unwrap_or_default(),
        },
    )?;
    for client in &clients {
        store
            .upsert_client(client)
            .await
            .with_context(|| format!("saving client {}", client.client_id))?;
    }
    for rd in &rdstation {
        store
            .upsert_rdstation(rd)
            .await
            .with_context(|| format!("saving RD Station config of tid {}", rd.tid))?;
    }

    let record_store = if opts.discard {
        tracing::warn!("--discard: events are validated but NOT stored (benchmark mode)");
        ServeStore::Discard
    } else {
        ServeStore::Sqlite(store.clone())
    };
    let handler = IngestHandler::new(
        record_store,
        store.clone(),
        SystemClock,
        IngestSettings {
            record_ttl_hours: ttl_hours,
            ..IngestSettings::default()
        },
    );
    let metrics = Arc::new(Metrics::default());
    let app = Arc::new(App {
        handler,
        store: store.clone(),
        metrics: Arc::clone(&metrics),
    });

    // The change-feed poller: records → the local CRM queues.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let queues = LocalQueues::new(
        store.clone(),
        Arc::new(SystemClock),
        file.queues
            .max_receive_count
            .unwrap_or(DEFAULT_MAX_RECEIVE_COUNT),
    );
    let fanout = FanoutHandler::new(
        queues.clone(),
        LogAlerts,
        SystemClock,
        FanoutSettings {
            max_batch_entries: runtime::fanout::POLL_BATCH,
            ..FanoutSettings::default()
        },
        "fanout",
    );
    let fanout_task = tokio::spawn(runtime::fanout::run(
        store.clone(),
        fanout,
        Arc::clone(&metrics),
        SystemClock,
        stop_rx,
    ));
    let router = Router::new()
        .route("/responsys", any(ingest_route))
        .route("/salesforce", any(ingest_route))
        .route("/rdstation", any(ingest_route))
        .route("/health", get(health))
        .route("/metrics", get(metrics_route))
        .fallback(any(ingest_route))
        .with_state(Arc::clone(&app));

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr()?;
    let sweeper = tokio::spawn(sweep_loop(store.clone(), sweep_every));
    tracing::info!(
        listen = %local_addr,
        data = %data_dir.display(),
        clients = clients.len(),
        demo = opts.demo,
        "connect serve started"
    );
    // One line on stdout for people and scripts (tests read the port from it).
    println!("connect listening on http://{local_addr}");

    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("HTTP server failed")?;

    tracing::info!("shutting down: in-flight requests finished; stopping the pollers");
    let _ = stop_tx.send(true);
    if let Err(e) = fanout_task.await {
        tracing::error!(error = %e, "the fanout poller failed");
    }
    tracing::info!("closing the store");
    sweeper.abort();
    store.shutdown().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn check_ttl_hours(hours: u32) -> anyhow::Result<u32> {
    use domain::record::{MAX_RECORD_TTL_HOURS, MIN_RECORD_TTL_HOURS};
    if (MIN_RECORD_TTL_HOURS..=MAX_RECORD_TTL_HOURS).contains(&hours) {
        Ok(hours)
    } else {
        anyhow::bail!(
            "store.record_ttl_hours: {hours} is outside {MIN_RECORD_TTL_HOURS}..={MAX_RECORD_TTL_HOURS}"
        )
    }
}

async fn sweep_loop(store: SqliteStore, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        match store.sweep_expired(now_s).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired records swept"),
            Err(e) => tracing::warn!(error = %e, "TTL sweep failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("signal received: no new connections; finishing in-flight requests");
}

fn json_response(status: u16, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn ingest_route(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let Some(bytes) = read_body(body).await else {
        return json_response(
            413,
            serde_json::json!({"error": "payload_too_large", "message": format!("the body is larger than {MAX_BODY_BYTES} bytes")}).to_string(),
        );
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let source_ip = peer.ip().to_string();
    let response = app
        .handler
        .handle(IngestRequest {
            method: method.as_str(),
            path: uri.path(),
            headers: &headers,
            body: &bytes,
            source_ip: Some(&source_ip),
            request_id: &request_id,
        })
        .await;
    app.metrics
        .observe(&response, started.elapsed().as_secs_f64());
    let mut out = Response::new(Body::from(response.body));
    *out.status_mut() =
        StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in response.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.headers_mut()
                .append(HeaderName::from_static(name), value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        out.headers_mut().insert("x-request-id", value);
    }
    out
}

/// Reads a body of at most [`SHELL_BODY_LIMIT`] bytes. A larger one is drained (up to
/// [`OVERSIZE_DRAIN_LIMIT`]) and `None` returned. A body that fails mid-way reads as what
/// arrived, which the handler then rejects as malformed.
async fn read_body(body: Body) -> Option<bytes::Bytes> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        total += chunk.len();
        if total > OVERSIZE_DRAIN_LIMIT {
            return None;
        }
        if total <= SHELL_BODY_LIMIT {
            buf.extend_from_slice(&chunk);
        }
    }
    (total <= SHELL_BODY_LIMIT).then(|| buf.freeze())
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.store.health().await {
        Ok(()) => json_response(200, r#"{"status":"ok"}"#.to_owned()),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            json_response(
                503,
                serde_json::json!({"status": "unavailable", "message": "the store is not writable"})
                    .to_string(),
            )
        }
    }
}

async fn metrics_route(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}
