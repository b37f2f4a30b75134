//! The sandbox destinations: one twin per destination of the `crm` crate, mirroring it —
//! [`responsys`] (`/responsys/…`), [`sfmc`] (`/sfmc/…`), [`rdstation`]
//! (`/rdstation/…`) and [`webhook`] (`/webhook/…`) — that accept the real auth and
//! delivery requests and answer with the real shapes: success, per-record errors
//! (MERGEFAILED, 10006), error bodies, 401s for expired or unknown tokens or bad
//! signatures, each one's own throttle signal, 5xx. The [`control`] API of DESIGN.md
//! (`/_sandbox/records`, `/_sandbox/faults`, …) drives faults for any of them.
//!
//! Any credentials are accepted except the password / client secret `wrong`; the client
//! id recorded with each record is the user name / client id that got the token.
//! RD Station refresh tokens rotate: each refresh returns a new one and retires the old.
//! The webhook twin verifies every call's signature with the demo signing secret (or
//! one registered through `/_sandbox/webhook/secrets`).

mod control;
pub mod rdstation;
pub mod responsys;
pub mod sfmc;
pub mod webhook;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default lifetime of tokens issued after `expire_tokens`.
const DEFAULT_FAULT_TOKEN_TTL_MS: u64 = 2000;
/// The fault modes: `reject`, `unavailable`, `throttle`, `expire_tokens`, `slow`,
/// `html_error`.
pub const FAULT_MODES: [&str; 6] = [
    "reject",
    "unavailable",
    "throttle",
    "expire_tokens",
    "slow",
    "html_error",
];

/// One twin: the destination's wire name, its path prefix, its routes.
pub(crate) struct Twin {
    /// Wire name (`salesforce`), as in faults, records and stats.
    pub(crate) crm: &'static str,
    /// First path segment (`sfmc`).
    pub(crate) prefix: &'static str,
    /// Its routes.
    pub(crate) routes: fn() -> Router<Sandbox>,
}

/// Every twin: one line per destination.
pub(crate) static TWINS: &[Twin] = &[
    Twin {
        crm: "responsys",
        prefix: "responsys",
        routes: responsys::routes,
    },
    Twin {
        crm: "salesforce",
        prefix: "sfmc",
        routes: sfmc::routes,
    },
    Twin {
        crm: "rdstation",
        prefix: "rdstation",
        routes: rdstation::routes,
    },
    Twin {
        crm: "webhook",
        prefix: "webhook",
        routes: webhook::routes,
    },
];

/// One CRM's fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// The destination's wire name (`responsys`, `salesforce`, `rdstation`, `webhook`).
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
    /// HTTP calls received per CRM (`responsys`, `salesforce`, `rdstation`, `webhook`).
    calls: HashMap<String, u64>,
    /// Webhook signing secrets registered besides the demo's.
    webhook_secrets: Vec<String>,
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
        let mut router = control::routes();
        for twin in TWINS {
            router = router.merge((twin.routes)());
        }
        router
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                control::count_calls,
            ))
            .with_state(self.clone())
    }
}

/// Serves the sandbox on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, sandbox: Sandbox) -> std::io::Result<()> {
    let base = format!("http://{}", listener.local_addr()?);
    axum::serve(listener, sandbox.router(&base)).await
}
