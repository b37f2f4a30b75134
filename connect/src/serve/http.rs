//! The HTTP side of `connect serve`: the routes (ingest and pixel per destination,
//! `/health`, `/metrics`, `/privacy/erasure`), the per-IP limit, refusal counts, and the
//! shared [`App`] state the wiring in [`super::run`] builds.

use crate::metrics::Metrics;
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use domain::{NavigationRecord, PutOutcome, RecordStore, StoreError, SystemClock};
use governor::DefaultKeyedRateLimiter;
use ingest::{IngestHandler, IngestRequest, MAX_BODY_BYTES};
use local::SqliteStore;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest body read off the socket before answering 413 without parsing it; bodies
/// between [`MAX_BODY_BYTES`] and this get the handler's own 413.
pub const SHELL_BODY_LIMIT: usize = MAX_BODY_BYTES * 4;
/// Bytes of an oversize body read and discarded before answering 413, so that a client
/// still writing its body can read the answer; past it the connection is closed.
pub const OVERSIZE_DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// The record store of the server: SQLite, or nothing (benchmark ceiling).
#[derive(Debug, Clone)]
pub(super) enum ServeStore {
    Sqlite(SqliteStore),
    Discard,
}

#[async_trait]
impl RecordStore for ServeStore {
    async fn put_if_absent(
        &self,
        record: std::sync::Arc<NavigationRecord>,
    ) -> Result<PutOutcome, StoreError> {
        match self {
            ServeStore::Sqlite(s) => s.put_if_absent(record).await,
            ServeStore::Discard => Ok(PutOutcome::Created),
        }
    }
}

pub(super) type Handler = IngestHandler<ServeStore, SqliteStore, SystemClock>;

/// How long a `/health` answer is reused: the probe writes to the store, so it runs
/// at most this often however often `/health` is called.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the refusal counts reach the store (`connect status`).
const REFUSALS_FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Writes the refusal counts of the current minute to the store.
pub(super) async fn flush_refusals(app: &App) {
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
pub(super) struct IpLimit {
    pub(super) limiter: DefaultKeyedRateLimiter<IpAddr>,
    pub(super) per_5min: u32,
    pub(super) loopback_exempt: bool,
    pub(super) trusted_proxies: Vec<ipnet::IpNet>,
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

pub(super) struct App {
    pub(super) handler: Handler,
    /// The erasure endpoint's token and what it needs.
    pub(super) erasure: Option<Erasure>,
    pub(super) store: SqliteStore,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ip_limit: IpLimit,
    pub(super) body_timeout: Duration,
    pub(super) health: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// When an event could last not be stored (ms since `started`), or -1.
    pub(super) last_write_failure_ms: std::sync::atomic::AtomicI64,
    /// Refused requests of known clients by (client, reason), flushed to the store for
    /// `connect status`.
    pub(super) refusals: std::sync::Mutex<std::collections::HashMap<(String, &'static str), u64>>,
    pub(super) started: Instant,
}

/// `POST /privacy/erasure`.
pub(super) struct Erasure {
    pub(super) token: domain::Secret<String>,
    pub(super) keyer: domain::privacy::EmailKeyer,
    /// The process's suppression cache, forgotten after an erasure.
    pub(super) privacy: domain::privacy::Privacy,
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

fn json_response(status: u16, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn ingest_route(State(app): State<Arc<App>>, request: axum::extract::Request) -> Response {
    let started = Instant::now();
    // Taken apart, not extracted piece by piece: the `HeaderMap` and `Uri` extractors
    // copy what this request owns anyway.
    let (parts, body) = request.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    // The listener gives every request its peer; without one (a request not from the
    // listener), the unspecified address.
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
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
    let response = app
        .handler
        .handle(IngestRequest {
            method: method.as_str(),
            path: uri.path(),
            headers: &headers,
            body: &bytes,
            query: uri.query(),
            source_ip: Some(source),
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
        // Validated either way; the static values (most of them) are not copied.
        let value = match value {
            std::borrow::Cow::Borrowed(s) => {
                HeaderValue::from_maybe_shared(bytes::Bytes::from_static(s.as_bytes()))
            }
            std::borrow::Cow::Owned(s) => HeaderValue::from_maybe_shared(bytes::Bytes::from(s)),
        };
        if let Ok(value) = value {
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
    // A body that arrives in one chunk (nearly all: events are a few hundred bytes) is
    // kept as it is; only a body in several chunks is copied into one buffer.
    let mut first: Option<bytes::Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        total += chunk.len();
        if total > OVERSIZE_DRAIN_LIMIT {
            return None;
        }
        if total <= SHELL_BODY_LIMIT {
            match first.take() {
                None if buf.is_empty() => first = Some(chunk),
                Some(earlier) => {
                    buf.extend_from_slice(&earlier);
                    buf.extend_from_slice(&chunk);
                }
                None => buf.extend_from_slice(&chunk),
            }
        }
    }
    if total > SHELL_BODY_LIMIT {
        return None;
    }
    Some(first.unwrap_or_else(|| buf.freeze()))
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

/// The public router: `/health`, `/metrics` and `/privacy/erasure` where configured, and
/// everything else to the ingest handler (which knows the destinations' routes and the
/// pixel, and answers 404 for the rest).
pub(super) fn router(app: &Arc<App>, metrics_on_main: bool) -> Router {
    let mut router = Router::new().route("/health", get(health));
    if app.erasure.is_some() {
        router = router.route("/privacy/erasure", axum::routing::post(erasure_route));
    }
    if metrics_on_main {
        router = router.route("/metrics", get(metrics_route));
    }
    router
        .fallback(any(ingest_route))
        .with_state(Arc::clone(app))
}

/// `/metrics` alone, for `server.metrics_listen`.
pub(super) fn metrics_router(app: &Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_route))
        .with_state(Arc::clone(app))
}

/// The refusal-count flusher and the per-IP limiter's cleaner.
pub(super) fn spawn_housekeeping(
    app: &Arc<App>,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let flush_app = Arc::clone(app);
    let refusal_flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFUSALS_FLUSH_EVERY);
        loop {
            tick.tick().await;
            flush_refusals(&flush_app).await;
        }
    });
    let retain_app = Arc::clone(app);
    let ip_retainer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(IP_LIMITER_RETAIN_EVERY);
        loop {
            tick.tick().await;
            retain_app.ip_limit.limiter.retain_recent();
            retain_app.ip_limit.limiter.shrink_to_fit();
        }
    });
    (refusal_flusher, ip_retainer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(chunks: Vec<&'static [u8]>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from_static(c)));
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_read_whole_in_one_chunk_or_many() {
        let cases: Vec<Vec<&'static [u8]>> = vec![
            vec![],
            vec![b"{\"a\":1}"],
            vec![b"{\"a\"", b":1}"],
            vec![b"", b"{\"a\":", b"", b"1}"],
            vec![b"{", b"\"a\"", b":", b"1", b"}"],
        ];
        for chunks in cases {
            let whole: Vec<u8> = chunks.concat();
            let read = read_body(chunked(chunks.clone())).await.expect("body");
            assert_eq!(&read[..], &whole[..], "{chunks:?}");
        }
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused() {
        static BIG: [u8; SHELL_BODY_LIMIT] = [b' '; SHELL_BODY_LIMIT];
        assert!(read_body(chunked(vec![&BIG])).await.is_some());
        assert!(read_body(chunked(vec![&BIG, b"x"])).await.is_none());
        assert!(read_body(chunked(vec![b"x", &BIG])).await.is_none());
    }
}
