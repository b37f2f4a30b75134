//! The sandbox CRMs: fake Responsys (`/responsys/…`), SFMC (`/sfmc/…`) and RD Station
//! (`/rdstation/…`) servers that accept the real auth and delivery requests and answer
//! with the real shapes — success, per-record errors (MERGEFAILED, 10006), error bodies,
//! 401s for expired or unknown tokens, each CRM's own throttle signal, 5xx — plus the
//! control API of DESIGN.md (`/_sandbox/records`, `/_sandbox/faults`).
//!
//! Any credentials are accepted except the password / client secret `wrong`; the client
//! id recorded with each record is the user name / client id that got the token.
//! RD Station refresh tokens rotate: each refresh returns a new one and retires the old.

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Token lifetimes when no fault shortens them.
const RESPONSYS_TOKEN_TTL: Duration = Duration::from_secs(2 * 3600);
const SFMC_TOKEN_TTL_SECONDS: u64 = 1079;
const RDSTATION_TOKEN_TTL_SECONDS: u64 = 86_400;
/// Default lifetime of tokens issued after `expire_tokens`.
const DEFAULT_FAULT_TOKEN_TTL_MS: u64 = 2000;
/// SFMC's usual `Retry-After`.
const SFMC_RETRY_AFTER_SECONDS: u64 = 5;
/// RD Station's `remaining_time` of a short (per-minute) throttle.
const RDSTATION_REMAINING_SECONDS: u64 = 30;

/// One CRM's fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// `responsys`, `salesforce` or `rdstation`.
    pub crm: String,
    /// `reject`, `unavailable`, `throttle`, `expire_tokens`, `slow` or `html_error` (data
    /// calls answered 400 with an HTML page, as a gateway in front of a CRM may).
    pub mode: String,
    /// Share of records (reject) or calls (unavailable, throttle) affected, 0–1.
    #[serde(default = "one")]
    pub rate: f64,
    /// Added latency (slow).
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Lifetime of tokens issued from now on (expire_tokens).
    #[serde(default)]
    pub token_ttl_ms: Option<u64>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone)]
struct Token {
    client: String,
    crm: &'static str,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    records: Vec<Value>,
    faults: HashMap<String, Fault>,
    /// Error accumulators per (crm, mode): deterministic shares.
    shares: HashMap<(String, String), f64>,
    tokens: HashMap<String, Token>,
    /// Tokens live this long once `expire_tokens` was set (per CRM).
    token_ttl: HashMap<String, Duration>,
    /// Current RD refresh token per client id.
    refresh_tokens: HashMap<String, String>,
    /// Responsys profile-list contacts (lower-case emails): a merge with
    /// `insertOnNoMatch: false` updates only these.
    contacts: std::collections::HashSet<String>,
    /// HTTP calls received per CRM (`responsys`, `salesforce`, `rdstation`).
    calls: HashMap<String, u64>,
}

/// The sandbox's state.
#[derive(Clone, Default)]
pub struct Sandbox {
    inner: Arc<Mutex<Inner>>,
    base: Arc<Mutex<String>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

impl Sandbox {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn base(&self) -> String {
        self.base.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Whether this record / call is hit by `crm`'s fault of `mode` (deterministic share).
    fn hit(&self, crm: &str, mode: &str) -> bool {
        self.with(|i| {
            let Some(rate) = i.faults.get(crm).filter(|f| f.mode == mode).map(|f| f.rate) else {
                return false;
            };
            let acc = i
                .shares
                .entry((crm.to_owned(), mode.to_owned()))
                .or_insert(0.0);
            *acc += rate.clamp(0.0, 1.0);
            if *acc >= 1.0 - 1e-9 {
                *acc -= 1.0;
                true
            } else {
                false
            }
        })
    }

    async fn maybe_slow(&self, crm: &str) {
        let latency = self.with(|i| {
            i.faults
                .get(crm)
                .filter(|f| f.mode == "slow")
                .and_then(|f| f.latency_ms)
        });
        if let Some(ms) = latency {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    fn issue(&self, crm: &'static str, client: &str, default_ttl: Duration) -> (String, Duration) {
        let token = format!("{crm}-{}", uuid::Uuid::new_v4().simple());
        self.with(|i| {
            let ttl = i.token_ttl.get(crm).copied().unwrap_or(default_ttl);
            i.tokens.insert(
                token.clone(),
                Token {
                    client: client.to_owned(),
                    crm,
                    expires: Instant::now() + ttl,
                },
            );
            (token, ttl)
        })
    }

    /// The client of a valid token; `Err(true)` expired, `Err(false)` unknown.
    fn check(&self, crm: &str, token: &str) -> Result<String, bool> {
        self.with(|i| match i.tokens.get(token) {
            Some(t) if t.crm == crm && t.expires > Instant::now() => Ok(t.client.clone()),
            Some(t) if t.crm == crm => Err(true),
            _ => Err(false),
        })
    }

    fn log(&self, crm: &str, client: &str, email: &str, raw: Value) {
        self.log_with(crm, client, email, raw, None);
    }

    /// Logs an accepted record; `request` is the call's own settings (a Responsys
    /// merge rule), when they matter.
    fn log_with(&self, crm: &str, client: &str, email: &str, raw: Value, request: Option<&Value>) {
        let received_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut record = json!({"crm": crm, "clientId": client,
            "email": email.to_lowercase(), "raw": raw, "receivedAt": received_at});
        if let Some(request) = request {
            record["request"] = request.clone();
        }
        self.with(|i| i.records.push(record));
    }

    /// Every record accepted so far.
    pub fn records(&self) -> Vec<Value> {
        self.with(|i| i.records.clone())
    }

    /// The router, for a sandbox reachable at `base` (`http://127.0.0.1:3900`).
    pub fn router(&self, base: &str) -> Router {
        if let Ok(mut b) = self.base.lock() {
            *b = base.trim_end_matches('/').to_owned();
        }
        Router::new()
            .route(
                "/_sandbox/records",
                axum::routing::get(records).delete(clear_records),
            )
            .route("/_sandbox/faults", post(set_fault).delete(clear_faults))
            .route("/_sandbox/contacts", post(add_contacts))
            .route("/_sandbox/stats", axum::routing::get(stats))
            .route("/responsys/rest/api/v1.3/auth/token", post(responsys_login))
            .route(
                "/responsys/rest/api/v1.3/lists",
                axum::routing::get(responsys_lists),
            )
            .route(
                "/responsys/rest/api/v1.3/lists/{list}/members",
                post(responsys_merge),
            )
            .route(
                "/responsys/rest/api/v1.3/lists/{list}/listExtensions/{pet}/members",
                post(responsys_merge2),
            )
            .route(
                "/responsys/rest/api/v1.3/folders/{folder}/suppData/{table}/members",
                post(responsys_merge2),
            )
            .route(
                "/responsys/rest/api/v1.3/events/{event}",
                post(responsys_event),
            )
            .route("/sfmc/v2/token", post(sfmc_token))
            .route("/sfmc/hub/v1/dataevents/{key}/rowset", post(sfmc_rowset))
            .route("/sfmc/interaction/v1/events", post(sfmc_journey))
            .route("/rdstation/auth/token", post(rd_token))
            .route("/rdstation/platform/events", post(rd_event))
            .route("/rdstation/platform/conversions", post(rd_conversion))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                count_calls,
            ))
            .with_state(self.clone())
    }
}

/// Serves the sandbox on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, sandbox: Sandbox) -> std::io::Result<()> {
    let base = format!("http://{}", listener.local_addr()?);
    axum::serve(listener, sandbox.router(&base)).await
}

async fn records(State(s): State<Sandbox>) -> Response {
    json_response(StatusCode::OK, Value::Array(s.records()))
}

/// Counts every call to a fake CRM (token and data calls alike).
async fn count_calls(
    State(s): State<Sandbox>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let crm = match req.uri().path().split('/').nth(1) {
        Some("responsys") => Some("responsys"),
        Some("sfmc") => Some("salesforce"),
        Some("rdstation") => Some("rdstation"),
        _ => None,
    };
    if let Some(crm) = crm {
        s.with(|i| *i.calls.entry(crm.to_owned()).or_default() += 1);
        // `html_error`: a proxy or gateway in front of the CRM answers a data call with
        // an HTML error page (no JSON body at all).
        let is_token_call = req.uri().path().contains("token");
        if !is_token_call && s.hit(crm, "html_error") {
            return (
                StatusCode::BAD_REQUEST,
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>400 Bad Request</h1></body></html>",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// `GET /_sandbox/stats`: `{"calls": {"responsys": n, …}}`, the calls each fake CRM
/// received (how many calls an outage cost).
async fn stats(State(s): State<Sandbox>) -> Response {
    let calls = s.with(|i| i.calls.clone());
    json_response(StatusCode::OK, json!({"calls": calls}))
}

/// `POST /_sandbox/contacts` `{"emails": [...]}`: Responsys profile-list members that
/// exist before the test (update-only merges match them).
async fn add_contacts(State(s): State<Sandbox>, body: String) -> Response {
    let emails: Vec<String> = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["emails"].as_array().cloned())
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_lowercase))
                .collect()
        })
        .unwrap_or_default();
    let n = emails.len();
    s.with(|i| i.contacts.extend(emails));
    json_response(StatusCode::OK, json!({"added": n}))
}

async fn clear_records(State(s): State<Sandbox>) -> StatusCode {
    s.with(|i| i.records.clear());
    StatusCode::NO_CONTENT
}

async fn set_fault(State(s): State<Sandbox>, body: String) -> Response {
    let fault: Fault = match serde_json::from_str(&body) {
        Ok(f) => f,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("invalid fault: {e}")}),
            );
        }
    };
    if !["responsys", "salesforce", "rdstation"].contains(&fault.crm.as_str()) {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "crm must be responsys, salesforce or rdstation"}),
        );
    }
    if ![
        "reject",
        "unavailable",
        "throttle",
        "expire_tokens",
        "slow",
        "html_error",
    ]
    .contains(&fault.mode.as_str())
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "mode must be reject, unavailable, throttle, expire_tokens, slow or html_error"}),
        );
    }
    s.with(|i| {
        if fault.mode == "expire_tokens" {
            let crm = fault.crm.clone();
            i.tokens.retain(|_, t| t.crm != crm);
            i.token_ttl.insert(
                fault.crm.clone(),
                Duration::from_millis(fault.token_ttl_ms.unwrap_or(DEFAULT_FAULT_TOKEN_TTL_MS)),
            );
        }
        i.shares.retain(|(c, _), _| *c != fault.crm);
        i.faults.insert(fault.crm.clone(), fault);
    });
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(s): State<Sandbox>) -> StatusCode {
    s.with(|i| {
        i.faults.clear();
        i.shares.clear();
        i.token_ttl.clear();
    });
    StatusCode::NO_CONTENT
}

// ---------------------------------------------------------------- Responsys

fn responsys_error(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    json_response(
        status,
        json!({"type": "", "title": title, "errorCode": code, "detail": detail, "errorDetails": []}),
    )
}

#[derive(Deserialize)]
struct ResponsysLogin {
    user_name: Option<String>,
    password: Option<String>,
    auth_type: String,
}

async fn responsys_login(
    State(s): State<Sandbox>,
    headers: HeaderMap,
    Form(f): Form<ResponsysLogin>,
) -> Response {
    let client = match f.auth_type.as_str() {
        "password" => match (f.user_name, f.password) {
            (Some(u), Some(p)) if !u.is_empty() && p != "wrong" => u,
            _ => {
                return responsys_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_USER_NAME_PASSWORD",
                    "Invalid user name or password",
                    "Login failed",
                );
            }
        },
        "token" => {
            let old = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match s.check("responsys", old) {
                Ok(c) => {
                    s.with(|i| i.tokens.remove(old));
                    c
                }
                Err(true) => {
                    return responsys_error(
                        StatusCode::UNAUTHORIZED,
                        "TOKEN_EXPIRED",
                        "Authentication token expired",
                        "Token expired",
                    );
                }
                Err(false) => {
                    return responsys_error(
                        StatusCode::UNAUTHORIZED,
                        "INVALID_TOKEN",
                        "Not a valid token",
                        "Invalid token",
                    );
                }
            }
        }
        _ => {
            return responsys_error(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                "Invalid request parameters",
                "auth_type",
            );
        }
    };
    let (token, _) = s.issue("responsys", &client, RESPONSYS_TOKEN_TTL);
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json_response(
        StatusCode::OK,
        json!({"authToken": token, "issuedAt": issued, "endPoint": format!("{}/responsys", s.base())}),
    )
}

/// Common checks of a Responsys data call; the client on success.
async fn responsys_guard(s: &Sandbox, headers: &HeaderMap) -> Result<String, Response> {
    s.maybe_slow("responsys").await;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let client = match s.check("responsys", token) {
        Ok(c) => c,
        Err(true) => {
            return Err(responsys_error(
                StatusCode::UNAUTHORIZED,
                "TOKEN_EXPIRED",
                "Authentication token expired",
                "Token expired",
            ));
        }
        Err(false) => {
            return Err(responsys_error(
                StatusCode::UNAUTHORIZED,
                "INVALID_TOKEN",
                "Not a valid token",
                "Invalid token",
            ));
        }
    };
    if s.hit("responsys", "unavailable") {
        return Err(responsys_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "Service unavailable",
            "Try again later",
        ));
    }
    if s.hit("responsys", "throttle") {
        // Documented as 400 (error table) or 401 (FAQ): the sandbox uses 400.
        return Err(responsys_error(
            StatusCode::BAD_REQUEST,
            "API_LIMIT_EXCEEDED",
            "API limit exceeded",
            "You exceeded your allowable limit to call the mergeListMembers API function. Please try again in a minute.",
        ));
    }
    Ok(client)
}

/// The sandbox account's profile lists: `CONTACTS_LIST` (the default target) and
/// `DemoProfileList`.
pub const SANDBOX_PROFILE_LISTS: [&str; 2] = ["CONTACTS_LIST", "DemoProfileList"];

async fn responsys_lists(State(s): State<Sandbox>, headers: HeaderMap) -> Response {
    if let Err(r) = responsys_guard(&s, &headers).await {
        return r;
    }
    let lists: Vec<Value> = SANDBOX_PROFILE_LISTS
        .iter()
        .map(|n| {
            json!({"name": n, "folderName": "!MageData", "fields": [
            {"fieldName": "RIID_", "fieldType": "INTEGER"},
            {"fieldName": "EMAIL_ADDRESS_", "fieldType": "STR500"}]})
        })
        .collect();
    json_response(StatusCode::OK, Value::Array(lists))
}

async fn responsys_merge(
    State(s): State<Sandbox>,
    Path(_list): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    responsys_merge_any(s, headers, body, true).await
}

async fn responsys_merge2(
    State(s): State<Sandbox>,
    Path(_p): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    responsys_merge_any(s, headers, body, false).await
}

/// A merge into the profile list (`list`: contacts are matched, and created only with
/// `insertOnNoMatch: true`), or into a PET / supplemental table (rows; the sandbox does
/// not check that a PET's recipient exists).
async fn responsys_merge_any(s: Sandbox, headers: HeaderMap, body: String, list: bool) -> Response {
    let client = match responsys_guard(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return responsys_error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST_CONTENT",
            "Invalid request content",
            "Not valid JSON",
        );
    };
    let names: Vec<String> = body["recordData"]["fieldNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let rows = body["recordData"]["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if names.is_empty() {
        return responsys_error(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            "Invalid request parameters",
            "FieldList is null OR empty",
        );
    }
    if rows.len() > 200 {
        return responsys_error(
            StatusCode::BAD_REQUEST,
            "RECIPIENT_LIMIT_EXCEEDED",
            "Recipient limit exceeded",
            "More than 200 records",
        );
    }
    let email_col = names.iter().position(|n| n.starts_with("EMAIL_ADDRESS"));
    // What the request asked for, kept with each record (tests check that nobody is
    // opted in or created without the client's say-so).
    let (request, insert) = if list {
        let rule = body["mergeRule"].clone();
        let insert = rule["insertOnNoMatch"].as_bool().unwrap_or(false);
        (rule, insert)
    } else {
        (json!({"insertOnNoMatch": body["insertOnNoMatch"]}), true)
    };
    let mut out = Vec::new();
    for (n, row) in rows.iter().enumerate() {
        let values = row.as_array().cloned().unwrap_or_default();
        let email = email_col
            .and_then(|c| values.get(c))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if email.is_empty() || s.hit("responsys", "reject") {
            out.push(json!([format!("MERGEFAILED: Record {n} = INVALID_PARAMETER: The value {email} is not a valid email address")]));
            continue;
        }
        if list {
            let known = s.with(|i| {
                let known = i.contacts.contains(&email.to_lowercase());
                if !known && insert {
                    i.contacts.insert(email.to_lowercase());
                }
                known
            });
            if !known && !insert {
                out.push(json!([format!("MERGEFAILED: Record {n} = RECORD_NOT_FOUND: No matching record found for EMAIL_ADDRESS_ and insertOnNoMatch is false")]));
                continue;
            }
        }
        let raw: serde_json::Map<String, Value> = names.iter().cloned().zip(values).collect();
        s.log_with(
            "responsys",
            &client,
            &email,
            Value::Object(raw),
            Some(&request),
        );
        out.push(json!([format!("{}", 4_094_326 + n)]));
    }
    json_response(
        StatusCode::OK,
        json!({"recordData": {"fieldNames": ["RIID_"], "records": out, "mapTemplateName": null}}),
    )
}

async fn responsys_event(
    State(s): State<Sandbox>,
    Path(_event): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = responsys_guard(&s, &headers).await {
        return r;
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return responsys_error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST_CONTENT",
            "Invalid request content",
            "Not valid JSON",
        );
    };
    let n = body["recipientData"].as_array().map_or(0, Vec::len);
    let results: Vec<Value> = (0..n)
        .map(|i| json!({"recipientId": 4_094_326 + i, "success": true, "errorMessage": null}))
        .collect();
    json_response(StatusCode::OK, Value::Array(results))
}

// ---------------------------------------------------------------- SFMC

fn sfmc_error(status: StatusCode, message: &str, code: i64) -> Response {
    json_response(
        status,
        json!({"message": message, "errorcode": code, "documentation": "https://developer.salesforce.com/docs"}),
    )
}

async fn sfmc_token(State(s): State<Sandbox>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let client = body["client_id"].as_str().unwrap_or("");
    if body["grant_type"] != "client_credentials"
        || client.is_empty()
        || body["client_secret"] == "wrong"
    {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client",
            "error_description": "Client authentication failed.", "error_uri": "https://developer.salesforce.com/docs"}),
        );
    }
    let (token, ttl) = s.issue(
        "salesforce",
        client,
        Duration::from_secs(SFMC_TOKEN_TTL_SECONDS),
    );
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "Bearer",
        "expires_in": ttl.as_secs().max(1), "scope": "data_extensions_write journeys_execute",
        "soap_instance_url": format!("{}/sfmc/", s.base()), "rest_instance_url": format!("{}/sfmc/", s.base())}),
    )
}

async fn sfmc_guard(s: &Sandbox, headers: &HeaderMap) -> Result<String, Response> {
    s.maybe_slow("salesforce").await;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let client = s.check("salesforce", token).map_err(|_| {
        sfmc_error(
            StatusCode::UNAUTHORIZED,
            "Not Authorized: The token was not found in the request, or it is invalid or expired",
            0,
        )
    })?;
    if s.hit("salesforce", "unavailable") {
        return Err(sfmc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            0,
        ));
    }
    if s.hit("salesforce", "throttle") {
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": "Rate limit exceeded",
            "errorcode": 50100, "retryAfter": SFMC_RETRY_AFTER_SECONDS, "documentation": "https://developer.salesforce.com/docs"}),
        );
        r.headers_mut()
            .insert("retry-after", SFMC_RETRY_AFTER_SECONDS.into());
        return Err(r);
    }
    Ok(client)
}

async fn sfmc_rowset(
    State(s): State<Sandbox>,
    Path(_key): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let client = match sfmc_guard(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Value::Array(rows)) = serde_json::from_str::<Value>(&body) else {
        return sfmc_error(
            StatusCode::BAD_REQUEST,
            "Request body is not a rowset array",
            10000,
        );
    };
    for (n, row) in rows.iter().enumerate() {
        let email = row["values"]["Email"].as_str().unwrap_or("");
        if email.is_empty() || s.hit("salesforce", "reject") {
            // Rows before the first bad row are saved; this one and the rest are not.
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"message": "Aggregate Error", "errorcode": 10006,
                "documentation": "", "additionalErrors": [{"message": format!("Row {n}: Unable to save row: the value for field Email is invalid"),
                "errorcode": 10000, "documentation": ""}]}),
            );
        }
        s.log("salesforce", &client, email, row.clone());
    }
    json_response(
        StatusCode::OK,
        json!({"requestId": uuid::Uuid::new_v4().to_string()}),
    )
}

async fn sfmc_journey(State(s): State<Sandbox>, headers: HeaderMap, body: String) -> Response {
    let client = match sfmc_guard(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let contact = body["ContactKey"].as_str().unwrap_or("");
    if contact.is_empty()
        || body["EventDefinitionKey"]
            .as_str()
            .is_none_or(str::is_empty)
        || s.hit("salesforce", "reject")
    {
        return sfmc_error(
            StatusCode::BAD_REQUEST,
            "Event definition not found or contact not active",
            10000,
        );
    }
    s.log("salesforce", &client, contact, body.clone());
    json_response(
        StatusCode::CREATED,
        json!({"eventInstanceId": uuid::Uuid::new_v4().to_string()}),
    )
}

// ---------------------------------------------------------------- RD Station

fn rd_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"error_type": kind, "error_message": message}),
    )
}

async fn rd_token(State(s): State<Sandbox>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (client, secret, refresh) = (
        body["client_id"].as_str().unwrap_or(""),
        body["client_secret"].as_str().unwrap_or(""),
        body["refresh_token"].as_str().unwrap_or(""),
    );
    if client.is_empty() || secret == "wrong" {
        return rd_error(
            StatusCode::UNAUTHORIZED,
            "ACCESS_DENIED",
            "Wrong credentials provided.",
        );
    }
    let valid = s.with(|i| match i.refresh_tokens.get(client) {
        Some(current) => current == refresh,
        None => !refresh.is_empty(),
    });
    if !valid {
        return rd_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_REFRESH_TOKEN",
            "The refresh token is invalid.",
        );
    }
    let rotated = format!("rt-{}", uuid::Uuid::new_v4().simple());
    s.with(|i| i.refresh_tokens.insert(client.to_owned(), rotated.clone()));
    let (token, ttl) = s.issue(
        "rdstation",
        client,
        Duration::from_secs(RDSTATION_TOKEN_TTL_SECONDS),
    );
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": ttl.as_secs().max(1), "refresh_token": rotated}),
    )
}

async fn rd_deliver(
    s: &Sandbox,
    client: String,
    query_type: Option<String>,
    body: &str,
) -> Response {
    if s.hit("rdstation", "unavailable") {
        return rd_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "Service temporarily unavailable",
        );
    }
    if s.hit("rdstation", "throttle") {
        return json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "'account_limiter' rate limit exceeded for 60 second(s) period",
            "max": 120, "usage": 121, "remaining_time": RDSTATION_REMAINING_SECONDS}),
        );
    }
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let event_type = body["event_type"].as_str().unwrap_or("");
    let known = [
        "CONVERSION",
        "ECOMMERCE_CART_ABANDONED",
        "ECOMMERCE_CHECKOUT_STARTED",
        "ECOMMERCE_ORDER_PLACED",
        "ECOMMERCE_ORDER_PAID",
        "ECOMMERCE_ORDER_FULFILLED",
        "ECOMMERCE_ORDER_REFUNDED",
        "ECOMMERCE_SHIPMENT_DELIVERED",
        "ECOMMERCE_ORDER_CANCELLED",
        "OPPORTUNITY",
        "SALE",
    ];
    if !known.contains(&event_type) || query_type.is_some_and(|q| q != event_type) {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!([{"error_type": "INVALID_OPTION",
            "error_message": "Must be one of the valid options.", "path": "$.event_type"}]),
        );
    }
    let email = body["payload"]["email"].as_str().unwrap_or("");
    if email.is_empty() || body["event_family"] != "CDP" || s.hit("rdstation", "reject") {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"errors": {"email": [{"error_type": "INVALID_FIELDS",
            "error_message": "the email is invalid"}]}}),
        );
    }
    s.log("rdstation", &client, email, body.clone());
    json_response(
        StatusCode::OK,
        json!({"event_uuid": uuid::Uuid::new_v4().to_string()}),
    )
}

async fn rd_event(
    State(s): State<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    s.maybe_slow("rdstation").await;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let client = match s.check("rdstation", token) {
        Ok(c) => c,
        Err(true) => {
            let mut r = rd_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid token.");
            r.headers_mut().insert("www-authenticate",
                axum::http::HeaderValue::from_static(r#"Bearer realm="api", error="expired_token", error_description="The access token expired""#));
            return r;
        }
        Err(false) => return rd_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid token."),
    };
    rd_deliver(&s, client, q.get("event_type").cloned(), &body).await
}

async fn rd_conversion(
    State(s): State<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    s.maybe_slow("rdstation").await;
    let key = q.get("api_key").cloned().unwrap_or_default();
    if key.is_empty() || key == "wrong" {
        return rd_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid API key.");
    }
    if serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|b| b["event_type"].as_str().map(str::to_owned))
        .as_deref()
        != Some("CONVERSION")
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!([{"error_type": "INVALID_OPTION",
            "error_message": "API keys accept CONVERSION events only.", "path": "$.event_type"}]),
        );
    }
    rd_deliver(
        &s,
        format!("api-key:{}", key.chars().take(4).collect::<String>()),
        None,
        &body,
    )
    .await
}
