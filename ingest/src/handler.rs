//! The transport-free ingest handler.

use crate::bots;
use crate::cache::{CachedDirectory, DEFAULT_NEGATIVE_TTL, DEFAULT_POSITIVE_TTL};
use crate::limits::Limits;
use crate::signing::SigningKeys;
use domain::event::EventParseError;
use domain::record::DEFAULT_RECORD_TTL_HOURS;
use domain::signature::{self, SignatureError};
use domain::{
    Alert, AlertSink, AllowedOrigins, ClientConfig, ClientDirectory, ClientId, Clock, Crm,
    EventType, FieldError, GtmEvent, NavigationRecord, PutOutcome, RecordStore, StoreError,
};
use http::HeaderMap;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest request body accepted (GTM events are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Longest pixel query accepted: the event, base64url-encoded, fits well below what
/// browsers send in a URL (Chrome ~2 MB, but proxies and CDNs cut at 8–16 KB).
pub const MAX_PIXEL_QUERY_BYTES: usize = 16 * 1024;
/// The 1×1 transparent GIF the pixel route always answers (43 bytes).
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];
/// `Access-Control-Max-Age` of preflight answers, in seconds (browsers cap it at 2 h).
pub const CORS_MAX_AGE_SECONDS: u32 = 7200;
/// Seconds a client is told to wait after a store failure.
pub const RETRY_AFTER_UNAVAILABLE_SECONDS: u32 = 1;
/// Methods allowed on the ingest routes.
const ALLOWED_METHODS: &str = "POST, OPTIONS";
/// Headers a preflight is allowed when the browser asks for none in particular.
const DEFAULT_ALLOWED_HEADERS: &str = "content-type";

/// Settings of the handler.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Hours a record is kept (`RECORD_TTL_HOURS`).
    pub record_ttl_hours: u32,
    /// How long found clients are cached.
    pub client_cache_ttl: Duration,
    /// How long unknown clients are cached.
    pub negative_cache_ttl: Duration,
    /// Refused requests (origin, signature, rate, bot) of one client within
    /// [`REFUSAL_ALERT_WINDOW`] that raise one alert; 0 turns the alert off.
    pub refusal_alert_threshold: u64,
}

/// Default of [`IngestSettings::refusal_alert_threshold`].
pub const DEFAULT_REFUSAL_ALERT_THRESHOLD: u64 = 500;
/// The window refusals are counted in.
pub const REFUSAL_ALERT_WINDOW: Duration = Duration::from_secs(300);

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            record_ttl_hours: DEFAULT_RECORD_TTL_HOURS,
            client_cache_ttl: DEFAULT_POSITIVE_TTL,
            negative_cache_ttl: DEFAULT_NEGATIVE_TTL,
            refusal_alert_threshold: DEFAULT_REFUSAL_ALERT_THRESHOLD,
        }
    }
}

/// One HTTP request, as any transport delivers it.
#[derive(Debug, Clone, Copy)]
pub struct IngestRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path (`/responsys`, …).
    pub path: &'a str,
    /// Headers (case-insensitive).
    pub headers: &'a HeaderMap,
    /// Raw body bytes (already base64-decoded).
    pub body: &'a [u8],
    /// The query string, without `?` (the pixel route's `d=`). Never logged.
    pub query: Option<&'a str>,
    /// Caller's address, for logs (only its network is written: /24 or /48).
    pub source_ip: Option<std::net::IpAddr>,
    /// Request id, for logs.
    pub request_id: &'a str,
}

/// What happened to a request, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new record was stored.
    Stored,
    /// The `eventId` was seen before; nothing stored.
    Duplicate,
    /// A CORS preflight was answered.
    Preflight,
    /// Rejected; the string is the error code of the body.
    Rejected(&'static str),
    /// Refused by a protection (origin, signature, rate limit); the string is the error
    /// code of the body.
    Refused(&'static str),
    /// Answered 202 but not stored (the string says why: `bot`).
    Discarded(&'static str),
    /// The store or directory failed.
    Unavailable,
}

/// The answer.
#[derive(Debug, Clone)]
pub struct IngestResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// JSON body (empty for 204).
    pub body: String,
    /// What happened.
    pub outcome: Outcome,
    /// The route's CRM, when the path was one.
    pub crm: Option<Crm>,
    /// The resolved client, if any.
    pub client_id: Option<String>,
    /// The event type, if valid.
    pub event_type: Option<EventType>,
    /// URL fields dropped from the event because their host is not the client's.
    pub dropped_fields: Vec<&'static str>,
    /// The answer is [`PIXEL_GIF`] (the pixel route): the shell sends those bytes instead
    /// of `body`, which then only says what happened (for tests).
    pub pixel: bool,
}

impl IngestResponse {
    fn new(status: u16, body: Value, outcome: Outcome) -> Self {
        IngestResponse::with_body(status, body.to_string(), outcome)
    }

    /// An accepted (202) or duplicate (200) event: `{"recordId": …}`, written directly
    /// (the answer of nearly every request).
    fn record(record_id: &str, outcome: Outcome) -> Self {
        #[derive(serde::Serialize)]
        struct Answer<'a> {
            #[serde(rename = "recordId")]
            record_id: &'a str,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            duplicate: bool,
        }
        let duplicate = outcome == Outcome::Duplicate;
        let body = serde_json::to_string(&Answer {
            record_id,
            duplicate,
        })
        .unwrap_or_default();
        IngestResponse::with_body(if duplicate { 200 } else { 202 }, body, outcome)
    }

    fn with_body(status: u16, body: String, outcome: Outcome) -> Self {
        IngestResponse {
            status,
            headers: vec![
                ("content-type", Cow::Borrowed("application/json")),
                ("cache-control", Cow::Borrowed("no-store")),
            ],
            body,
            outcome,
            crm: None,
            client_id: None,
            event_type: None,
            dropped_fields: Vec::new(),
            pixel: false,
        }
    }

    fn refused(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        let message: String = message.into();
        IngestResponse::new(
            status,
            json!({"error": code, "message": message}),
            Outcome::Refused(code),
        )
    }

    fn rate_limited(code: &'static str, wait: Duration, message: String) -> Self {
        let mut r = IngestResponse::refused(429, code, message);
        r.headers.push((
            "retry-after",
            Cow::Owned(wait.as_secs_f64().ceil().max(1.0).to_string()),
        ));
        r
    }

    fn error(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        let message: String = message.into();
        IngestResponse::new(
            status,
            json!({"error": code, "message": message}),
            Outcome::Rejected(code),
        )
    }

    fn invalid(details: Vec<FieldError>) -> Self {
        IngestResponse::new(
            400,
            json!({"error": "invalid_event", "details": details}),
            Outcome::Rejected("invalid_event"),
        )
    }

    fn unavailable(e: &StoreError) -> Self {
        tracing::error!(error = %e, "store or directory unavailable");
        let mut r = IngestResponse::new(
            503,
            json!({"error": "unavailable", "message": "the event could not be stored; retry shortly"}),
            Outcome::Unavailable,
        );
        r.headers.push((
            "retry-after",
            Cow::Owned(RETRY_AFTER_UNAVAILABLE_SECONDS.to_string()),
        ));
        r
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Refusals of one client in the current window.
#[derive(Debug)]
struct RefusalWindow {
    started: Instant,
    count: u64,
}

/// The ingest handler. Its dependencies are ports: a record store, a client directory
/// (cached here) and a clock; optionally the secret store of the signing keys and an
/// alert sink.
pub struct IngestHandler<S, D, C> {
    privacy: domain::privacy::Privacy,
    store: S,
    directory: CachedDirectory<D>,
    clock: C,
    limits: Limits,
    signing: SigningKeys,
    alerts: Option<Arc<dyn AlertSink>>,
    refusals: moka::sync::Cache<ClientId, Arc<std::sync::Mutex<RefusalWindow>>>,
    alerts_raised: AtomicU64,
    settings: IngestSettings,
}

impl<S, D, C> std::fmt::Debug for IngestHandler<S, D, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestHandler")
            .field("settings", &self.settings)
            .finish()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The media type of a `content-type` value, lower-cased, without parameters.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The origin a request came from: its `Origin` header, else the origin of its
/// `Referer` (a GET or a `no-referrer-when-downgrade` beacon carries no `Origin`).
pub fn request_origin(headers: &HeaderMap) -> Option<String> {
    match header(headers, "origin") {
        Some(o) => Some(o.trim().to_ascii_lowercase()),
        None => header(headers, "referer").and_then(domain::client::origin_of),
    }
}

impl<S: RecordStore, D: ClientDirectory + 'static, C: Clock> IngestHandler<S, D, C> {
    /// A handler over the given ports.
    pub fn new(store: S, directory: D, clock: C, settings: IngestSettings) -> Self {
        IngestHandler {
            privacy: domain::privacy::Privacy::default(),
            store,
            directory: CachedDirectory::new(
                directory,
                settings.client_cache_ttl,
                settings.negative_cache_ttl,
            ),
            clock,
            limits: Limits::default(),
            signing: SigningKeys::default(),
            alerts: None,
            refusals: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(REFUSAL_ALERT_WINDOW * 2)
                .build(),
            alerts_raised: AtomicU64::new(0),
            settings,
        }
    }

    /// Reads the clients' signing keys from `secrets` (without it, no signed event can
    /// be verified).
    pub fn with_signing_keys(mut self, secrets: Arc<dyn domain::SecretStore>) -> Self {
        self.signing = SigningKeys::new(Some(secrets));
        self
    }

    /// Hashes emails with the installation key (logs, suppression keys) and drops
    /// events of suppressed emails.
    /// (`privacy` may be shared with other handlers of the process: one cache).
    pub fn with_privacy(mut self, privacy: domain::privacy::Privacy) -> Self {
        self.privacy = privacy;
        self
    }

    /// Raises refusal alerts on `alerts`.
    pub fn with_alerts(mut self, alerts: Arc<dyn AlertSink>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// Refusal alerts raised so far (tests, metrics).
    pub fn alerts_raised(&self) -> u64 {
        self.alerts_raised.load(Ordering::Relaxed)
    }

    /// The record store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Handles one request and logs one line about it.
    pub async fn handle(&self, req: IngestRequest<'_>) -> IngestResponse {
        // The clock is read for the log line only (a filtered line costs nothing).
        let started = tracing::enabled!(tracing::Level::INFO).then(Instant::now);
        let mut email_hash = None;
        let mut response = self.route(req, &mut email_hash).await;
        response.headers.push(("vary", Cow::Borrowed("Origin")));
        if matches!(
            response.outcome,
            Outcome::Refused(_) | Outcome::Discarded(_)
        ) {
            self.count_refusal(&response).await;
        }
        let latency_us = started.map_or(0, |t| {
            u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
        });
        tracing::info!(
            requestId = req.request_id,
            method = req.method,
            path = req.path,
            sourceNet = req.source_ip.map_or_else(|| "-".to_owned(), domain::redact::ip_network),
            crm = response.crm.map_or("-", Crm::as_str),
            clientId = response.client_id.as_deref().unwrap_or("-"),
            eventType = response.event_type.map_or("-", EventType::as_str),
            emailHash = email_hash.as_deref().unwrap_or("-"),
            droppedFields = ?response.dropped_fields,
            status = response.status,
            outcome = ?response.outcome,
            latencyUs = latency_us,
            "ingest"
        );
        response
    }

    async fn route(
        &self,
        req: IngestRequest<'_>,
        email_hash: &mut Option<String>,
    ) -> IngestResponse {
        let trimmed = req.path.strip_suffix('/').unwrap_or(req.path);
        if let Some(crm) = trimmed.strip_suffix("/p").and_then(Crm::from_route) {
            let mut r = self.pixel(crm, req, email_hash).await;
            r.crm = Some(crm);
            return r;
        }
        let Some(crm) = Crm::from_route(req.path) else {
            return IngestResponse::error(
                404,
                "not_found",
                format!(
                    "no route {}; post events to {}",
                    req.path,
                    Crm::route_list()
                ),
            );
        };
        let origin = header(req.headers, "origin");
        let mut response = match req.method {
            "OPTIONS" => self.preflight(crm, origin, req.headers).await,
            "POST" => self.post(crm, origin, req, email_hash).await,
            other => {
                let mut r = IngestResponse::error(
                    405,
                    "method_not_allowed",
                    format!("method {other} is not allowed; use POST"),
                );
                r.headers.push(("allow", Cow::Borrowed(ALLOWED_METHODS)));
                r
            }
        };
        response.crm = Some(crm);
        response
    }

    async fn preflight(
        &self,
        crm: Crm,
        origin: Option<&str>,
        headers: &HeaderMap,
    ) -> IngestResponse {
        let mut r = IngestResponse {
            status: 204,
            headers: Vec::new(),
            body: String::new(),
            outcome: Outcome::Preflight,
            crm: Some(crm),
            client_id: None,
            event_type: None,
            dropped_fields: Vec::new(),
            pixel: false,
        };
        let allowed = match origin {
            Some(origin) => self.crm_allows(crm, origin).await,
            None => false,
        };
        if let (true, Some(origin)) = (allowed, origin) {
            let requested = header(headers, "access-control-request-headers")
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .unwrap_or(DEFAULT_ALLOWED_HEADERS);
            r.headers
                .push(("access-control-allow-origin", Cow::Owned(origin.to_owned())));
            r.headers.push((
                "access-control-allow-methods",
                Cow::Borrowed(ALLOWED_METHODS),
            ));
            r.headers.push((
                "access-control-allow-headers",
                Cow::Owned(requested.to_owned()),
            ));
            r.headers.push((
                "access-control-max-age",
                Cow::Owned(CORS_MAX_AGE_SECONDS.to_string()),
            ));
        }
        r
    }

    /// `GET|HEAD /{route}/p?d=<base64url of the event JSON>`: the same validation,
    /// client resolution, origin rules (from `Referer`: an image request carries no
    /// `Origin`) and storage as the POST route, but always a 200 with a transparent GIF.
    /// Refusals are counted and logged by reason, never shown to the page.
    async fn pixel(
        &self,
        crm: Crm,
        req: IngestRequest<'_>,
        email_hash: &mut Option<String>,
    ) -> IngestResponse {
        let mut r = match req.method {
            "GET" | "HEAD" => match decode_pixel_query(req.query) {
                Ok(body) => {
                    let mut headers = req.headers.clone();
                    headers.remove("origin");
                    headers.insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    let event_req = IngestRequest {
                        method: "POST",
                        body: &body,
                        headers: &headers,
                        query: None,
                        ..req
                    };
                    self.accept(crm, event_req, email_hash).await.0
                }
                Err(r) => *r,
            },
            other => {
                let mut r = IngestResponse::error(
                    405,
                    "method_not_allowed",
                    format!("method {other} is not allowed on the pixel route; use GET"),
                );
                r.headers.push(("allow", Cow::Borrowed("GET, HEAD")));
                return r;
            }
        };
        r.status = 200;
        r.pixel = true;
        r.headers = vec![
            ("content-type", Cow::Borrowed("image/gif")),
            ("cache-control", Cow::Borrowed("no-store")),
        ];
        r
    }

    /// Whether any active client of `crm` allows `origin` (lookup failures: no).
    async fn crm_allows(&self, crm: Crm, origin: &str) -> bool {
        match self.directory.origins_for(crm).await {
            Ok(origins) => AllowedOrigins(origins).allows(origin),
            Err(e) => {
                tracing::warn!(error = %e, crm = crm.as_str(), "origin lookup failed");
                false
            }
        }
    }

    async fn post(
        &self,
        crm: Crm,
        origin: Option<&str>,
        req: IngestRequest<'_>,
        email_hash: &mut Option<String>,
    ) -> IngestResponse {
        let (mut response, client) = self.accept(crm, req, email_hash).await;
        if let Some(origin) = origin {
            let allowed = match &client {
                Some(client) => client.allowed_origins.allows(origin),
                None => self.crm_allows(crm, origin).await,
            };
            if allowed {
                response
                    .headers
                    .push(("access-control-allow-origin", Cow::Owned(origin.to_owned())));
            }
        }
        response
    }

    async fn accept(
        &self,
        crm: Crm,
        req: IngestRequest<'_>,
        email_hash: &mut Option<String>,
    ) -> (IngestResponse, Option<Arc<ClientConfig>>) {
        let content_type = header(req.headers, "content-type").map(media_type);
        match content_type.as_deref() {
            Some("application/json" | "text/plain") => {}
            Some(other) => {
                return (
                    IngestResponse::error(
                        415,
                        "unsupported_media_type",
                        format!(
                            "content-type {other} is not accepted; send application/json or text/plain"
                        ),
                    ),
                    None,
                );
            }
            None => {
                return (
                    IngestResponse::error(
                        415,
                        "unsupported_media_type",
                        "the content-type header is missing; send application/json or text/plain",
                    ),
                    None,
                );
            }
        }
        if req.body.len() > MAX_BODY_BYTES {
            return (
                IngestResponse::error(
                    413,
                    "payload_too_large",
                    format!(
                        "the body has {} bytes; at most {MAX_BODY_BYTES} are accepted",
                        req.body.len()
                    ),
                ),
                None,
            );
        }
        let body = req.body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(req.body);
        if body.iter().all(u8::is_ascii_whitespace) {
            return (
                IngestResponse::invalid(vec![FieldError::new(
                    "body",
                    "required",
                    "the body is empty; send a JSON object",
                )]),
                None,
            );
        }
        let event = match GtmEvent::parse_json(crm, body) {
            Ok(event) => event,
            Err(EventParseError::Malformed(e)) => {
                return (
                    IngestResponse::new(
                        400,
                        json!({
                            "error": "malformed_json",
                            "message": format!("the body is not valid JSON: {e}"),
                            "line": e.line(),
                            "column": e.column(),
                        }),
                        Outcome::Rejected("malformed_json"),
                    ),
                    None,
                );
            }
            Err(EventParseError::Invalid(details)) => {
                return (IngestResponse::invalid(details), None);
            }
        };
        // Only for the request's log line: not computed when that line is filtered out.
        // A Lambda's keyer may still be on its way from Secrets Manager (its cold start
        // does not wait for it): it is awaited alongside the client's lookup.
        let log_id = async {
            if tracing::enabled!(tracing::Level::INFO) {
                let keyer = self.privacy.keyer().await.ok();
                keyer.map(|k| k.log_id(&event.email))
            } else {
                None
            }
        };
        let (client, log_id) = tokio::join!(self.resolve_client(crm, &event), log_id);
        *email_hash = log_id;
        let event_type = event.event_type;

        let client = match client {
            Ok(client) => client,
            Err(response) => return (*response, None),
        };
        let annotate = |mut r: IngestResponse| {
            r.client_id = Some(client.client_id.to_string());
            r.event_type = Some(event_type);
            r
        };
        if let Err(r) = self.guard(&client, &event, req).await {
            return (annotate(*r), Some(client));
        }
        // Consent and suppression: answered like a stored event (202), not kept.
        let discard = if client.policy.require_consent && event.consent != Some(true) {
            Some("consent_missing")
        } else {
            match self
                .privacy
                .is_suppressed(&client.client_id, &event.email)
                .await
            {
                Ok(true) => Some("suppressed"),
                Ok(false) => None,
                Err(e) => return (annotate(IngestResponse::unavailable(&e)), Some(client)),
            }
        };
        if let Some(reason) = discard {
            let record_id = domain::record::record_id(
                &client.client_id,
                event.event_id.as_deref(),
                self.clock.now_ms(),
            );
            let r = IngestResponse::record(&record_id, Outcome::Discarded(reason));
            return (annotate(r), Some(client));
        }
        let mut event = event;
        let dropped = keep_own_urls(&client, &mut event);
        if bots::is_bot(header(req.headers, "user-agent").unwrap_or(""))
            && event.signature.is_none()
        {
            let record = NavigationRecord::new(
                event,
                client.client_id.clone(),
                crm,
                self.clock.now_ms(),
                self.settings.record_ttl_hours,
            );
            let r = IngestResponse::record(&record.record_id, Outcome::Discarded("bot"));
            return (annotate(r), Some(client));
        }
        let record = Arc::new(NavigationRecord::new(
            event,
            client.client_id.clone(),
            crm,
            self.clock.now_ms(),
            self.settings.record_ttl_hours,
        ));
        let response = match self.store.put_if_absent(Arc::clone(&record)).await {
            Ok(PutOutcome::Created) => IngestResponse::record(&record.record_id, Outcome::Stored),
            Ok(PutOutcome::Duplicate) => {
                IngestResponse::record(&record.record_id, Outcome::Duplicate)
            }
            Err(e) => IngestResponse::unavailable(&e),
        };
        let mut response = annotate(response);
        response.dropped_fields = dropped;
        (response, Some(client))
    }

    /// The protections, in order: origin, signature, client rate, per-email rate.
    async fn guard(
        &self,
        client: &ClientConfig,
        event: &GtmEvent,
        req: IngestRequest<'_>,
    ) -> Result<(), Box<IngestResponse>> {
        let policy = &client.policy;
        let origin = request_origin(req.headers);
        if let Some(origin) = &origin
            && !client.allowed_origins.allows(origin)
        {
            return Err(Box::new(IngestResponse::refused(
                403,
                "origin_not_allowed",
                format!(
                    "origin {origin} is not allowed for client {}",
                    client.client_id
                ),
            )));
        }
        let signed = match &event.signature {
            Some(sig) => match self.verify(client, event, sig).await {
                Ok(()) => true,
                Err(e) => {
                    return Err(Box::new(IngestResponse::refused(
                        401,
                        e.code(),
                        match e {
                            SignatureError::Expired => {
                                "the event's signature has expired (sigExp); sign it again"
                                    .to_owned()
                            }
                            SignatureError::Invalid => format!(
                                "sig is not a valid signature of this event for client {}",
                                client.client_id
                            ),
                        },
                    )));
                }
            },
            None if policy.require_signature => {
                return Err(Box::new(IngestResponse::refused(
                    401,
                    "signature_invalid",
                    format!(
                        "client {} accepts signed events only: send sig and sigExp",
                        client.client_id
                    ),
                )));
            }
            None => false,
        };
        if origin.is_none() && !signed && policy.require_origin {
            return Err(Box::new(IngestResponse::refused(
                403,
                "origin_required",
                "the request has neither Origin nor Referer; send it from the shop's pages, or sign the event",
            )));
        }
        if let Some(rate) = client.rate_limit_per_second
            && let Err(wait) = self.limits.check_client(&client.client_id, rate)
        {
            return Err(Box::new(IngestResponse::rate_limited(
                "rate_limited",
                wait,
                format!(
                    "client {} sends more than {rate} events per second; retry later",
                    client.client_id
                ),
            )));
        }
        if let Err(wait) = self.limits.check_email(
            &client.client_id,
            &event.email,
            policy.email_events_per_minute,
        ) {
            return Err(Box::new(IngestResponse::rate_limited(
                "email_rate_limited",
                wait,
                format!(
                    "more than {} events per minute for this email; retry later",
                    policy.email_events_per_minute
                ),
            )));
        }
        Ok(())
    }

    async fn verify(
        &self,
        client: &ClientConfig,
        event: &GtmEvent,
        sig: &domain::EventSignature,
    ) -> Result<(), SignatureError> {
        let keys = self.signing.keys(&client.signing_secret_name()).await;
        let now_s = self.clock.now_ms().div_euclid(1000);
        let mut result = Err(SignatureError::Invalid);
        for key in keys.iter() {
            result = signature::verify(
                key,
                client.client_id.as_str(),
                event.email.as_str(),
                sig.expires,
                &sig.sig,
                now_s,
            );
            if result != Err(SignatureError::Invalid) {
                break;
            }
        }
        result
    }

    /// Counts a refusal of a known client; past the threshold in the window, one alert.
    async fn count_refusal(&self, response: &IngestResponse) {
        let threshold = self.settings.refusal_alert_threshold;
        let (Some(alerts), Some(client)) = (&self.alerts, &response.client_id) else {
            return;
        };
        let Ok(client_id) = ClientId::parse(client) else {
            return;
        };
        if threshold == 0 {
            return;
        }
        let window = self.refusals.get_with(client_id.clone(), || {
            Arc::new(std::sync::Mutex::new(RefusalWindow {
                started: Instant::now(),
                count: 0,
            }))
        });
        let reached = match window.lock() {
            Ok(mut w) => {
                if w.started.elapsed() > REFUSAL_ALERT_WINDOW {
                    w.started = Instant::now();
                    w.count = 0;
                }
                w.count += 1;
                w.count == threshold
            }
            Err(_) => false,
        };
        if reached {
            self.alerts_raised.fetch_add(1, Ordering::Relaxed);
            alerts
                .alert(&Alert {
                    kind: "ingest_refusals".to_owned(),
                    source: "ingest".to_owned(),
                    crm: response.crm,
                    client_id: Some(client_id.clone()),
                    count: threshold,
                    message: format!(
                        "client {client_id}: {threshold} requests refused (origin, signature, rate limit or bot) within {} minutes; the latest was {:?}. Someone may be posting events in the client's name.",
                        REFUSAL_ALERT_WINDOW.as_secs() / 60,
                        response.outcome
                    ),
                })
                .await;
        }
    }

    /// Finds the client an event belongs to: by `clientId`, or on /rdstation by `tid`.
    async fn resolve_client(
        &self,
        crm: Crm,
        event: &GtmEvent,
    ) -> Result<Arc<ClientConfig>, Box<IngestResponse>> {
        let client_id = if crm.requires_client_id() {
            event.client_id.clone()
        } else {
            let tid = event.tid.as_deref().unwrap_or_default();
            match self.directory.rdstation_by_tid(tid).await {
                Ok(Some(config)) => {
                    if let Some(given) = &event.client_id
                        && *given != config.client_id
                    {
                        return Err(Box::new(IngestResponse::invalid(vec![FieldError::new(
                            "clientId",
                            "mismatch",
                            "does not match the client configured for this tid; omit clientId on /rdstation",
                        )])));
                    }
                    Some(config.client_id)
                }
                Ok(None) => {
                    return Err(Box::new(IngestResponse::error(
                        404,
                        "unknown_tid",
                        "no RD Station client is configured for this tid",
                    )));
                }
                Err(e) => return Err(Box::new(IngestResponse::unavailable(&e))),
            }
        };
        let Some(client_id) = client_id else {
            return Err(Box::new(IngestResponse::invalid(vec![FieldError::new(
                "clientId",
                "required",
                format!("is required on {}", crm.route()),
            )])));
        };
        let client = match self.directory.shared_client(&client_id).await {
            Ok(Some(client)) => client,
            Ok(None) => {
                return Err(Box::new(IngestResponse::error(
                    404,
                    "unknown_client",
                    format!("client {client_id} is not configured"),
                )));
            }
            Err(e) => return Err(Box::new(IngestResponse::unavailable(&e))),
        };
        if !client.active {
            return Err(Box::new(IngestResponse::error(
                404,
                "inactive_client",
                format!("client {client_id} is not active"),
            )));
        }
        if client.crm != crm {
            return Err(Box::new(IngestResponse::error(
                404,
                "wrong_route",
                format!(
                    "client {client_id} delivers to {}; post its events to {}",
                    client.crm,
                    client.crm.route()
                ),
            )));
        }
        Ok(client)
    }
}

/// The event JSON of a pixel query: `d` = base64url (or base64) of the JSON, bounded.
fn decode_pixel_query(query: Option<&str>) -> Result<Vec<u8>, Box<IngestResponse>> {
    use base64::Engine;
    let query = query.unwrap_or("");
    if query.len() > MAX_PIXEL_QUERY_BYTES {
        return Err(Box::new(IngestResponse::error(
            414,
            "uri_too_long",
            format!(
                "the query has {} bytes; at most {MAX_PIXEL_QUERY_BYTES} are accepted",
                query.len()
            ),
        )));
    }
    let d = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("d="))
        .ok_or_else(|| {
            Box::new(IngestResponse::invalid(vec![FieldError::new(
                "d",
                "required",
                "the pixel needs d=<base64url of the event JSON>",
            )]))
        })?;
    // Percent-encoded padding, and '+' turned into ' ' by a form decoder, are undone.
    let d = d
        .replace("%3D", "=")
        .replace("%3d", "=")
        .replace("%2B", "+")
        .replace("%2b", "+")
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace(' ', "+");
    let d = d.trim_end_matches('=');
    let engine = if d.contains(['+', '/']) {
        base64::engine::general_purpose::STANDARD_NO_PAD
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
    };
    let body = engine.decode(d).map_err(|_| {
        Box::new(IngestResponse::invalid(vec![FieldError::new(
            "d",
            "base64",
            "must be the base64url encoding of the event JSON",
        )]))
    })?;
    if body.len() > MAX_BODY_BYTES {
        return Err(Box::new(IngestResponse::error(
            413,
            "payload_too_large",
            format!(
                "the event has {} bytes; at most {MAX_BODY_BYTES} are accepted",
                body.len()
            ),
        )));
    }
    Ok(body)
}

/// Drops `productUrl` / `productImage` whose host is not the client's; returns the
/// names of the fields dropped.
fn keep_own_urls(client: &ClientConfig, event: &mut GtmEvent) -> Vec<&'static str> {
    let mut dropped = Vec::new();
    for (url, name) in [
        (&mut event.product_url, "productUrl"),
        (&mut event.product_image, "productImage"),
    ] {
        if url
            .as_ref()
            .is_some_and(|u| !client.owns_url_host(u.as_str()))
        {
            *url = None;
            dropped.push(name);
        }
    }
    dropped
}

impl IngestResponse {
    /// The `access-control-allow-origin` header, if set.
    pub fn allow_origin(&self) -> Option<&str> {
        self.header("access-control-allow-origin")
    }
}
