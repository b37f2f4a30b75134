//! The shared HTTP client and the token type authentication returns.

use domain::Secret;
use std::time::Duration;

/// Time to establish a connection to a CRM.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for a whole CRM call (Lambda timeouts are 30–60 s; a batch may take a few calls).
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle pooled connections kept per CRM host.
pub const DEFAULT_POOL_IDLE_PER_HOST: usize = 16;

/// Timeouts of CRM calls.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout per call.
    pub total_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
        }
    }
}

/// A pooled rustls HTTP client for the CRMs (build once per process).
#[derive(Debug, Clone)]
pub struct CrmHttp {
    pub(crate) client: reqwest::Client,
}

impl CrmHttp {
    /// Builds the client.
    pub fn new(settings: &HttpSettings) -> Result<CrmHttp, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.total_timeout)
            .pool_max_idle_per_host(DEFAULT_POOL_IDLE_PER_HOST)
            // No CRM API redirects; a followed 301/302 would turn a POST into a GET that
            // "succeeds" without delivering anything.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("connect/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(CrmHttp { client })
    }
}

/// What authenticating returns.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthToken {
    /// The access token.
    pub access_token: Secret<String>,
    /// Base URL of the data API (no trailing slash).
    pub api_endpoint: String,
    /// Issue time (epoch ms).
    pub issued_at: i64,
    /// Expiry (epoch ms).
    pub expires_at: i64,
    /// A new refresh token, when the CRM returned one (RD Station rotation).
    pub refresh_token: Option<Secret<String>>,
}

/// An authentication failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The credentials were refused (wrong, expired, locked): a human must act.
    #[error("credentials rejected: {0}")]
    Rejected(String),
    /// The token endpoint failed or throttled; retrying may work.
    #[error("authentication failed, retry later: {0}")]
    Transient(String),
    /// The secret does not hold usable credentials.
    #[error("invalid credentials secret: {0}")]
    BadSecret(String),
}

/// Trims one trailing slash; adds `https://` when there is no scheme (Responsys may
/// return a bare host as `endPoint`).
pub fn base_url(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.starts_with("http://") || s.starts_with("https://") {
        s.to_owned()
    } else {
        format!("https://{s}")
    }
}

/// A CRM's answer: its status, the first of the asked headers present, and its JSON
/// body (`Null` when there is none or it is not JSON).
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// HTTP status.
    pub(crate) status: u16,
    /// The header asked for, if present.
    pub(crate) header: Option<String>,
    /// The body.
    pub(crate) body: serde_json::Value,
}

impl Answer {
    /// Whether the status is 2xx.
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Reads an answer, keeping the first present header of `headers`.
pub(crate) async fn answer(res: reqwest::Response, headers: &[&str]) -> Answer {
    let status = res.status().as_u16();
    let header = headers
        .iter()
        .find_map(|h| res.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res.json().await.unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        header,
        body,
    }
}
