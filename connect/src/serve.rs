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
use domain::{AlertSink, NavigationRecord, PutOutcome, RecordStore, StoreError, SystemClock};
use fanout::{FanoutHandler, FanoutSettings};
use governor::{DefaultKeyedRateLimiter, Quota};
use ingest::{IngestHandler, IngestRequest, IngestSettings, MAX_BODY_BYTES};
use local::queues::DEFAULT_MAX_RECEIVE_COUNT;
use local::{FileSecrets, LocalQueues, SqliteStore, StoreOptions};
use std::net::IpAddr;
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
    /// Benchmark only: no delivery workers (messages stay on the local queues).
    pub no_deliver: bool,
    /// Where the in-process sandbox listens (`--demo` without `--sandbox-url`).
    pub sandbox_listen: Option<SocketAddr>,
    /// An already running sandbox for the demo clients.
    pub sandbox_url: Option<String>,
}

/// Default address of the in-process sandbox.
pub const DEFAULT_SANDBOX_LISTEN: &str = "127.0.0.1:3900";

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

/// How long a `/health` answer is reused: the probe writes to the store, so it runs
/// at most this often however often `/health` is called.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the refusal counts reach the store (`connect status`).
const REFUSALS_FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Writes the refusal counts of the current minute to the store.
async fn flush_refusals(app: &App) {
    let counts: Vec<(String, String, u64)> = match app.refusals.lock() {
        Ok(mut m) => m.drain().map(|((c, r), n)| (c, r.to_owned(), n)).collect(),
        Err(_) => return,
    };
    let now = domain::Clock::now_ms(&domain::SystemClock);
    if let Err(e) = app
        .store
        .add_refusals(now - now.rem_euclid(60_000), counts)
        .await
    {
        tracing::warn!(error = %e, "refusal counts could not be saved");
    }
}

/// How often idle per-IP limiter state is dropped.
const IP_LIMITER_RETAIN_EVERY: Duration = Duration::from_secs(60);

/// The per-source-IP limit of the public listener (`[limits]`).
struct IpLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    per_5min: u32,
    loopback_exempt: bool,
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl IpLimit {
    /// The request's source: the peer, or — when the peer is a trusted proxy — the
    /// rightmost `X-Forwarded-For` address that is not a trusted proxy.
    fn source(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for part in forwarded.iter().rev() {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) if trusted(&ip) => continue,
                Ok(ip) => return ip,
                Err(_) => break,
            }
        }
        peer
    }

    /// `Err(wait)` when `source` is over its budget.
    fn check(&self, source: IpAddr) -> Result<(), Duration> {
        if self.per_5min == 0 || (self.loopback_exempt && source.is_loopback()) {
            return Ok(());
        }
        use governor::clock::Clock;
        self.limiter
            .check_key(&source)
            .map_err(|n| n.wait_time_from(governor::clock::DefaultClock::default().now()))
    }
}

struct App {
    handler: Handler,
    /// The erasure endpoint's token and what it needs.
    erasure: Option<Erasure>,
    store: SqliteStore,
    metrics: Arc<Metrics>,
    ip_limit: IpLimit,
    body_timeout: Duration,
    health: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// When an event could last not be stored (ms since `started`), or -1.
    last_write_failure_ms: std::sync::atomic::AtomicI64,
    /// Refused requests of known clients by (client, reason), flushed to the store for
    /// `connect status`.
    refusals: std::sync::Mutex<std::collections::HashMap<(String, &'static str), u64>>,
    started: Instant,
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
    // Every client is checked now (origins, limits, target), not at the first delivery.
    for (i, client) in clients.iter().enumerate() {
        crate::clients::validate(client)
            .map_err(|e| anyhow::anyhow!("clients[{i}] ({}): {e:#}", client.client_id))?;
    }
    let mut rdstation = file.rdstation_configs()?;

    // The demo's CRMs: an in-process sandbox, or one already running.
    let sandbox_url = match (&opts.sandbox_url, opts.demo) {
        (Some(url), _) => Some(url.trim_end_matches('/').to_owned()),
        (None, true) => {
            let addr = match opts.sandbox_listen {
                Some(a) => a,
                None => DEFAULT_SANDBOX_LISTEN
                    .parse()
                    .context("default sandbox address")?,
            };
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "cannot start the sandbox on {addr} (use --sandbox-listen or --sandbox-url)"
                )
            })?;
            let url = format!("http://{}", listener.local_addr()?);
            tokio::spawn(async move {
                if let Err(e) = sandbox::serve(listener, sandbox::Sandbox::default()).await {
                    tracing::error!(error = %e, "the sandbox stopped");
                }
            });
            println!("connect sandbox listening on {url}");
            Some(url)
        }
        (None, false) => None,
    };
    if let (true, Some(url)) = (opts.demo, &sandbox_url) {
        let (c, r) = config::demo_identities(url);
        clients.extend(c);
        rdstation.extend(r);
    }

    let store = SqliteStore::open(
        &data_dir,
        StoreOptions {
            synchronous: file.store.synchronous.unwrap_or_default(),
            tool: false,
        },
    )?;
    for client in &clients {
        store
            .upsert_client(client)
            .await
            .with_context(|| format!("saving client {}", client.client_id))?;
    }
    // With a configuration file, it is the list of clients: one removed from it is
    // deactivated (its events get 404, its queued messages are dead-lettered as
    // inactive_client), not left running.
    if opts.config.is_some() {
        let configured: std::collections::HashSet<&domain::ClientId> =
            clients.iter().map(|c| &c.client_id).collect();
        for crm in domain::Crm::all() {
            for mut stale in domain::ClientDirectory::clients_of(&store, crm).await? {
                if stale.active && !configured.contains(&stale.client_id) {
                    tracing::warn!(clientId = %stale.client_id, "client no longer in the configuration: deactivated");
                    stale.active = false;
                    store.upsert_client(&stale).await?;
                }
            }
        }
    }
    for rd in &rdstation {
        store
            .upsert_rdstation(rd)
            .await
            .with_context(|| format!("saving RD Station config of tid {}", rd.tid))?;
    }

    let secrets_path = file
        .secrets
        .file
        .clone()
        .unwrap_or_else(|| data_dir.join("secrets.json"));
    let secrets = FileSecrets::open(&secrets_path);
    if let (true, Some(url)) = (opts.demo, &sandbox_url) {
        write_demo_secrets(&secrets, url).await?;
    }

    // The demo clients allow `*` on purpose (README); configured ones are warned about.
    for client in file
        .client_configs()?
        .iter()
        .filter(|c| c.allowed_origins.has_wildcard())
    {
        tracing::warn!(
            clientId = %client.client_id,
            "allowed_origins contains \"*\": any web site may post events in this client's name; list the shop's origins"
        );
    }
    // One alert sink for every component: at most one alert per (component, client,
    // kind) per window.
    let alerts = Arc::new(domain::alerts::DedupAlerts::new(
        crate::alerts::LocalAlerts::new(file.alerts.webhook_url.clone())?,
        SystemClock,
        domain::alerts::DEFAULT_ALERT_WINDOW_MS,
    ));
    let keyer = crate::privacy::local_keyer(&secrets).await?;
    // One suppression cache for ingest and every delivery handler of the process.
    let privacy = domain::privacy::Privacy::new(
        keyer.clone(),
        Some(Arc::new(store.clone()) as Arc<dyn domain::privacy::SuppressionStore>),
    );
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
            refusal_alert_threshold: file
                .limits
                .refusal_alert_threshold
                .unwrap_or(ingest::handler::DEFAULT_REFUSAL_ALERT_THRESHOLD),
            ..IngestSettings::default()
        },
    )
    .with_signing_keys(Arc::new(secrets.clone()))
    .with_privacy(privacy.clone())
    .with_alerts(Arc::clone(&alerts) as Arc<dyn AlertSink>);
    let metrics = Arc::new(Metrics::default());
    let per_5min = file
        .limits
        .ip_requests_per_5min
        .unwrap_or(config::DEFAULT_IP_REQUESTS_PER_5MIN);
    let ip_quota = Quota::with_period(Duration::from_secs(300) / per_5min.max(1))
        .context("ip quota")?
        .allow_burst(
            std::num::NonZeroU32::new(per_5min.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
        );
    let app = Arc::new(App {
        erasure: file.privacy.token()?.map(|token| Erasure {
            token,
            keyer: keyer.clone(),
            privacy: privacy.clone(),
        }),
        handler,
        store: store.clone(),
        metrics: Arc::clone(&metrics),
        ip_limit: IpLimit {
            limiter: governor::RateLimiter::keyed(ip_quota),
            per_5min,
            loopback_exempt: file.limits.loopback_exempt.unwrap_or(true),
            trusted_proxies: file.limits.trusted_proxies()?,
        },
        body_timeout: Duration::from_secs(
            file.server
                .body_read_timeout_seconds
                .unwrap_or(config::DEFAULT_BODY_READ_TIMEOUT_SECONDS)
                .max(1),
        ),
        health: tokio::sync::Mutex::new(None),
        last_write_failure_ms: std::sync::atomic::AtomicI64::new(-1),
        refusals: std::sync::Mutex::default(),
        started: Instant::now(),
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
        Arc::clone(&alerts),
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
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr()?;
    let mut router = Router::new()
        .route("/responsys", any(ingest_route))
        .route("/salesforce", any(ingest_route))
        .route("/rdstation", any(ingest_route))
        .route("/health", get(health));
    if app.erasure.is_some() {
        router = router.route("/privacy/erasure", axum::routing::post(erasure_route));
    }
    if file
        .server
        .metrics_on_main
        .unwrap_or(local_addr.ip().is_loopback())
    {
        router = router.route("/metrics", get(metrics_route));
    }
    let router = router
        .fallback(any(ingest_route))
        .with_state(Arc::clone(&app));
    let metrics_server = match file.server.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (server.metrics_listen)"))?;
            println!("connect metrics on http://{}/metrics", l.local_addr()?);
            let r = Router::new()
                .route("/metrics", get(metrics_route))
                .with_state(Arc::clone(&app));
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, r).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            }))
        }
        None => None,
    };
    let flush_app = Arc::clone(&app);
    let refusal_flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFUSALS_FLUSH_EVERY);
        loop {
            tick.tick().await;
            flush_refusals(&flush_app).await;
        }
    });
    let retain_app = Arc::clone(&app);
    let ip_retainer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(IP_LIMITER_RETAIN_EVERY);
        loop {
            tick.tick().await;
            retain_app.ip_limit.limiter.retain_recent();
            retain_app.ip_limit.limiter.shrink_to_fit();
        }
    });

    // Delivery workers, per CRM.
    let http = crm::CrmHttp::new(&crm::HttpSettings::default()).context("CRM HTTP client")?;
    let worker_settings = runtime::deliver::WorkerSettings {
        batch_size: file.delivery.batch_size.unwrap_or(10).clamp(1, 10),
        visibility_timeout: Duration::from_secs(
            file.delivery
                .visibility_timeout_seconds
                .unwrap_or(config::DEFAULT_VISIBILITY_TIMEOUT_SECONDS)
                .max(1),
        ),
        ..runtime::deliver::WorkerSettings::default()
    };
    let mut workers = Vec::new();
    let workers_per_crm = if opts.no_deliver {
        0
    } else {
        file.delivery.workers_per_crm.unwrap_or(2)
    };
    let token_check = file
        .tokens
        .check_interval_seconds
        .map_or(runtime::tokens::DEFAULT_CHECK_INTERVAL, |s| {
            Duration::from_secs(s.max(1))
        });
    for crm in domain::Crm::all() {
        // One token manager per CRM, shared by delivery and the schedule (one
        // single-flight per client in the process).
        let manager = Arc::new(crm::TokenManager::new(
            store.clone(),
            secrets.clone(),
            SystemClock,
            http.clone(),
        ));
        workers.push(tokio::spawn(runtime::tokens::run(
            token::TokenHandler::new(
                crm,
                store.clone(),
                Arc::clone(&manager),
                Arc::clone(&alerts),
                SystemClock,
                token::TokenSettings::default(),
            ),
            token_check,
            stop_tx.subscribe(),
        )));
        let handler = Arc::new(
            deliver::DeliverHandler::new(
                crm,
                store.clone(),
                manager,
                http.clone(),
                queues.clone(),
                Arc::clone(&alerts),
                SystemClock,
                file.delivery.settings(crm),
            )
            .with_privacy(privacy.clone()),
        );
        for _ in 0..workers_per_crm {
            workers.push(tokio::spawn(runtime::deliver::run(
                crm,
                Arc::clone(&handler),
                queues.clone(),
                Arc::clone(&metrics),
                worker_settings.clone(),
                stop_tx.subscribe(),
            )));
        }
    }

    let sweeper = tokio::spawn(sweep_loop(store.clone(), sweep_every, ttl_hours));
    tracing::info!(
        listen = %local_addr,
        data = %data_dir.display(),
        clients = clients.len(),
        demo = opts.demo,
        "connect serve started"
    );
    // One line on stdout for people and scripts (tests read the port from it).
    println!("connect listening on http://{local_addr}");
    if opts.demo {
        print_demo_hints(local_addr, sandbox_url.as_deref());
    }

    crate::http_server::serve(
        listener,
        router,
        crate::http_server::Limits {
            header_read_timeout: Duration::from_secs(
                file.server
                    .header_read_timeout_seconds
                    .unwrap_or(config::DEFAULT_HEADER_READ_TIMEOUT_SECONDS)
                    .max(1),
            ),
            max_connections: file
                .server
                .max_connections
                .unwrap_or(config::DEFAULT_MAX_CONNECTIONS)
                .max(1),
        },
        shutdown_signal(),
    )
    .await;
    ip_retainer.abort();
    refusal_flusher.abort();
    flush_refusals(&app).await;
    if let Some(m) = metrics_server {
        m.abort();
    }

    tracing::info!("shutting down: in-flight requests finished; stopping the pollers");
    let _ = stop_tx.send(true);
    if let Err(e) = fanout_task.await {
        tracing::error!(error = %e, "the fanout poller failed");
    }
    for w in workers {
        if let Err(e) = w.await {
            tracing::error!(error = %e, "a delivery worker failed");
        }
    }
    tracing::info!("closing the store");
    sweeper.abort();
    store.shutdown().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `POST /privacy/erasure`.
struct Erasure {
    token: domain::Secret<String>,
    keyer: domain::privacy::EmailKeyer,
    /// The process's suppression cache, forgotten after an erasure.
    privacy: domain::privacy::Privacy,
}

/// `POST /privacy/erasure` `{"email": …, "clientId": …?}` with `Authorization: Bearer
/// TOKEN`: the same erasure as `connect privacy erase`, audited with actor `api`. 401
/// without the token; the route does not exist when no token is configured.
async fn erasure_route(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let Some(erasure) = &app.erasure else {
        return json_response(404, r#"{"error":"not_found"}"#.to_owned());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), erasure.token.expose().as_bytes()) {
        return json_response(
            401,
            serde_json::json!({"error": "unauthorized", "message": "send Authorization: Bearer <privacy.operator_token>"}).to_string(),
        );
    }
    let Some(bytes) = read_body(body).await else {
        return json_response(413, r#"{"error":"payload_too_large"}"#.to_owned());
    };
    let request: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let email = match request["email"].as_str().map(domain::Email::parse) {
        Some(Ok(e)) => e,
        _ => {
            return json_response(
                400,
                serde_json::json!({"error": "invalid_request", "details": [{"field": "email", "rule": "required", "message": "a valid email is required"}]}).to_string(),
            );
        }
    };
    let client = match request["clientId"].as_str().map(domain::ClientId::parse) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            return json_response(
                400,
                serde_json::json!({"error": "invalid_request", "details": [{"field": "clientId", "rule": e.rule, "message": e.message}]}).to_string(),
            );
        }
    };
    match crate::privacy::erase_local(&app.store, &erasure.keyer, &email, client.as_ref(), "api")
        .await
    {
        Ok(report) => {
            erasure.privacy.invalidate();
            json_response(200, serde_json::to_string(&report).unwrap_or_default())
        }
        Err(e) => {
            tracing::error!(error = %e, "erasure failed");
            let mut r = json_response(
                503,
                serde_json::json!({"error": "unavailable", "message": "the erasure could not be completed; retry"}).to_string(),
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            r
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What to try next, for someone who just ran `connect serve --demo`.
fn print_demo_hints(addr: SocketAddr, sandbox: Option<&str>) {
    println!();
    println!("Try it:");
    println!("  # post an event (202 and its record id):");
    println!(
        "  curl -X POST http://{addr}/responsys -H 'content-type: application/json' \\\n    -d '{{\"clientId\":\"demo-responsys\",\"email\":\"ana@example.com\",\"eventType\":\"lead\"}}'"
    );
    if let Some(sandbox) = sandbox {
        println!("  # what the sandbox CRMs received, within a second:");
        println!("  curl {sandbox}/_sandbox/records");
    }
    println!("  # counters and latencies:");
    println!("  curl http://{addr}/metrics");
    println!("  # per client: accepted, delivered, retried, dead-lettered (in another terminal):");
    println!("  connect status");
    println!("  # dead letters by CRM and reason:");
    println!("  connect dlq list");
    println!("Ctrl-C stops; nothing accepted is lost.");
}

/// Writes the demo credentials (pointing at the sandbox) into the secrets file, keeping
/// the RD Station refresh token already there (the sandbox rotates it).
async fn write_demo_secrets(secrets: &FileSecrets, sandbox: &str) -> anyhow::Result<()> {
    use domain::SecretStore;
    for (name, mut value) in config::demo_secrets(sandbox) {
        // A refresh token rotates on every use (RD Station): keep the current one when
        // the stored secret is otherwise this demo's.
        let stored = secrets
            .get_secret(&name)
            .await?
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s.expose()).ok());
        if let Some(mut stored) = stored
            && let Some(current) = stored["refreshToken"].as_str().map(str::to_owned)
            && value.get("refreshToken").is_some()
        {
            stored["refreshToken"] = value["refreshToken"].clone();
            if stored == value {
                value["refreshToken"] = serde_json::Value::String(current);
            }
        }
        secrets
            .put_secret(&name, &domain::Secret::new(value.to_string()))
            .await?;
    }
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

async fn sweep_loop(store: SqliteStore, every: Duration, ttl_hours: u32) {
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
        // The delivery log is kept as long as the records it traces.
        let before_ms = (now_s - i64::from(ttl_hours) * 3600) * 1000;
        if let Err(e) = store.sweep_delivery_log(before_ms).await {
            tracing::warn!(error = %e, "delivery-log sweep failed");
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
    let source = app.ip_limit.source(peer.ip(), &headers);
    if method != Method::OPTIONS
        && let Err(wait) = app.ip_limit.check(source)
    {
        app.metrics.refused("ip_rate_limited");
        let mut r = json_response(
            429,
            serde_json::json!({"error": "ip_rate_limited", "message": format!("more than {} requests in 5 minutes from this address; retry later", app.ip_limit.per_5min)}).to_string(),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs_f64().ceil().max(1.0).to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
        return r;
    }
    let bytes = match tokio::time::timeout(app.body_timeout, read_body(body)).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return json_response(
                413,
                serde_json::json!({"error": "payload_too_large", "message": format!("the body is larger than {MAX_BODY_BYTES} bytes")}).to_string(),
            );
        }
        Err(_) => {
            return json_response(
                408,
                serde_json::json!({"error": "request_timeout", "message": "the body did not arrive in time"}).to_string(),
            );
        }
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let source_ip = source.to_string();
    let response = app
        .handler
        .handle(IngestRequest {
            method: method.as_str(),
            path: uri.path(),
            headers: &headers,
            body: &bytes,
            query: uri.query(),
            source_ip: Some(&source_ip),
            request_id: &request_id,
        })
        .await;
    app.metrics
        .observe(&response, started.elapsed().as_secs_f64());
    if let (ingest::Outcome::Refused(reason) | ingest::Outcome::Discarded(reason), Some(client)) =
        (response.outcome, &response.client_id)
        && let Ok(mut counts) = app.refusals.lock()
    {
        *counts.entry((client.clone(), reason)).or_default() += 1;
    }
    if response.outcome == ingest::Outcome::Unavailable {
        let at = i64::try_from(app.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        app.last_write_failure_ms
            .store(at, std::sync::atomic::Ordering::Relaxed);
    }
    let mut out = Response::new(if response.pixel {
        Body::from(&ingest::PIXEL_GIF[..])
    } else {
        Body::from(response.body)
    });
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

/// 200 while the store takes writes: 503 when an event could not be stored within the
/// last [`HEALTH_PROBE_INTERVAL`], or when the write probe fails. The probe runs at most
/// once per interval; calls in between reuse its answer.
async fn health(State(app): State<Arc<App>>) -> Response {
    let failed_at = app
        .last_write_failure_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let now = i64::try_from(app.started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let recent_failure = failed_at >= 0
        && now - failed_at < i64::try_from(HEALTH_PROBE_INTERVAL.as_millis()).unwrap_or(2000);
    let healthy = !recent_failure && {
        let mut last = app.health.lock().await;
        match *last {
            Some((at, ok)) if at.elapsed() < HEALTH_PROBE_INTERVAL => ok,
            _ => {
                let ok = match app.store.health().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "health check failed");
                        false
                    }
                };
                *last = Some((Instant::now(), ok));
                ok
            }
        }
    };
    if healthy {
        json_response(200, r#"{"status":"ok"}"#.to_owned())
    } else {
        json_response(
            503,
            serde_json::json!({"status": "unavailable", "message": "the store is not writable"})
                .to_string(),
        )
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
