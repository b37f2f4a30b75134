//! `connect serve`: the whole pipeline in one process on the embedded store. This module
//! is the wiring (configuration, store, handlers, pollers, workers, schedules, shutdown);
//! [`http`] is the HTTP side.

mod http;

use crate::config::{self, FileConfig};
use crate::metrics::Metrics;
use crate::runtime;
use anyhow::Context;
use domain::{AlertSink, SystemClock};
use fanout::{FanoutHandler, FanoutSettings};
use governor::Quota;
use http::{App, Erasure, IpLimit, ServeStore};
use ingest::{IngestHandler, IngestSettings};
use local::queues::DEFAULT_MAX_RECEIVE_COUNT;
use local::{FileSecrets, LocalQueues, SqliteStore, StoreOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Benchmark only: no fanout and no delivery workers (records stay in the feed, its
    /// checkpoint where it was: a later `serve` hands them on).
    pub no_fanout: bool,
    /// Where the in-process sandbox listens (`--demo` without `--sandbox-url`).
    pub sandbox_listen: Option<SocketAddr>,
    /// An already running sandbox for the demo clients.
    pub sandbox_url: Option<String>,
}

/// Default address of the in-process sandbox.
pub const DEFAULT_SANDBOX_LISTEN: &str = "127.0.0.1:3900";

/// Most threads of tokio's blocking pool in `serve` (SQLite reads, file I/O, DNS).
/// Tokio's default (512) lets reads that queue on the reader connection each take a
/// thread — 27 of them under `wrk -c64`, each with its own allocator heap and stack.
/// The store's reads share one connection behind a lock, so one thread reads while a
/// second can serve a DNS lookup or a file; more only wait on the lock (8 held 3–5 MB
/// more at peak for the same CPU, BENCHMARKS.md). Past this many, blocking work waits
/// its turn.
pub const MAX_BLOCKING_THREADS: usize = 2;

/// Most bytes of messages in one local queue send (one transaction) of the fanout.
pub const LOCAL_SEND_BYTES: usize = 1 << 20;

/// The runtime of `serve`: one async worker per core but one, leaving a core to the
/// SQLite writer thread (it fsyncs each group commit) and the kernel's network work —
/// measured less CPU per event and more throughput than a worker per core on 2 cores
/// (BENCHMARKS.md); at least one. `TOKIO_WORKER_THREADS` overrides it.
pub fn tune_runtime(builder: &mut tokio::runtime::Builder) {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.max_blocking_threads(MAX_BLOCKING_THREADS);
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
        // One local send is one transaction: a poll's messages for a queue go in one
        // (SQS's 10 entries a call do not apply; a message's own size limit still does,
        // so that what runs here also fits SQS), up to 1 MiB of messages, which bounds
        // the copies a send holds when events are large.
        FanoutSettings {
            max_batch_entries: runtime::fanout::POLL_BATCH,
            max_batch_bytes: LOCAL_SEND_BYTES,
            ..FanoutSettings::default()
        },
        "fanout",
    );
    let batch_window = Duration::from_millis(
        file.delivery
            .batch_window_ms
            .unwrap_or(config::DEFAULT_BATCH_WINDOW_MS)
            .min(config::MAX_BATCH_WINDOW_MS),
    );
    let fanout_task = if opts.no_fanout {
        tracing::warn!("--no-fanout: events are stored but NOT handed on (benchmark mode)");
        None
    } else {
        Some(tokio::spawn(runtime::fanout::run(
            store.clone(),
            fanout,
            Arc::clone(&metrics),
            SystemClock,
            batch_window,
            stop_rx,
        )))
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr()?;
    let router = http::router(
        &app,
        file.server
            .metrics_on_main
            .unwrap_or(local_addr.ip().is_loopback()),
    );
    let metrics_server = match file.server.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (server.metrics_listen)"))?;
            println!("connect metrics on http://{}/metrics", l.local_addr()?);
            let r = http::metrics_router(&app);
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, r).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            }))
        }
        None => None,
    };
    let (refusal_flusher, ip_retainer) = http::spawn_housekeeping(&app);

    // Delivery workers, per CRM.
    let http = crm::CrmHttp::new(&crm::HttpSettings::default()).context("CRM HTTP client")?;
    let worker_settings = runtime::deliver::WorkerSettings {
        batch_size: file
            .delivery
            .batch_size
            .unwrap_or(runtime::deliver::DEFAULT_BATCH_SIZE)
            .clamp(1, local::queues::MAX_RECEIVE_BATCH),
        visibility_timeout: Duration::from_secs(
            file.delivery
                .visibility_timeout_seconds
                .unwrap_or(config::DEFAULT_VISIBILITY_TIMEOUT_SECONDS)
                .max(1),
        ),
        batch_window,
        ..runtime::deliver::WorkerSettings::default()
    };
    let mut workers = Vec::new();
    let workers_per_crm = if opts.no_deliver || opts.no_fanout {
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
        // Destinations that sign with their secret keep no token: no schedule.
        if crm::destination(crm).auth_policy().token().is_some() {
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
        }
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
    http::flush_refusals(&app).await;
    if let Some(m) = metrics_server {
        m.abort();
    }

    tracing::info!("shutting down: in-flight requests finished; stopping the pollers");
    let _ = stop_tx.send(true);
    if let Some(task) = fanout_task
        && let Err(e) = task.await
    {
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
