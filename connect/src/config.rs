//! The `connect serve` configuration file (TOML). Unknown keys are errors naming the key.
//!
//! See `connect.example.toml` at the repository root for every key with its default.

use anyhow::{Context, bail};
use domain::{
    AllowedOrigins, ClientConfig, ClientId, ClientPolicy, ContactCreation, Crm, RdStationConfig,
    Secret,
};
use local::Synchronous;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default listen address of `connect serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default seconds between TTL sweeps of the navigation buffer.
pub const DEFAULT_SWEEP_INTERVAL_SECONDS: u64 = 300;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerSection,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreSection,
    /// `[queues]`.
    #[serde(default)]
    pub queues: QueuesSection,
    /// `[delivery]`.
    #[serde(default)]
    pub delivery: DeliverySection,
    /// `[secrets]`.
    #[serde(default)]
    pub secrets: SecretsSection,
    /// `[alerts]`.
    #[serde(default)]
    pub alerts: AlertsSection,
    /// `[tokens]`.
    #[serde(default)]
    pub tokens: TokensSection,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[privacy]`.
    #[serde(default)]
    pub privacy: PrivacySection,
    /// `[[clients]]`.
    #[serde(default)]
    pub clients: Vec<ClientSection>,
    /// `[[rdstation]]`.
    #[serde(default)]
    pub rdstation: Vec<RdStationSection>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Listen address (default 127.0.0.1:3000).
    pub listen: Option<SocketAddr>,
    /// Seconds a connection may take to send a request's headers (default 10); a
    /// slower one is closed (slowloris).
    pub header_read_timeout_seconds: Option<u64>,
    /// Seconds a request may take to send its body (default 10); then 408.
    pub body_read_timeout_seconds: Option<u64>,
    /// Most open connections (default 4096); more wait in the kernel's backlog.
    pub max_connections: Option<usize>,
    /// A separate listener for `/metrics` (e.g. `127.0.0.1:9464`).
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` on the main listener too. Default: only when that listener is
    /// a loopback address (never on a public one unless set).
    pub metrics_on_main: Option<bool>,
}

/// Default of `[server] header_read_timeout_seconds`.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: u64 = 10;
/// Default of `[server] body_read_timeout_seconds`.
pub const DEFAULT_BODY_READ_TIMEOUT_SECONDS: u64 = 10;
/// Default of `[server] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// `[limits]`: protections of the public listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Requests per source IP per 5 minutes (default 2000, the WAF's rate rule); 0
    /// turns the limit off.
    pub ip_requests_per_5min: Option<u32>,
    /// Loopback sources are not limited per IP (default true: local benchmarks and the
    /// README's examples keep working).
    pub loopback_exempt: Option<bool>,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed (default none: the
    /// socket's peer is the source).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Refused requests of one client within 5 minutes that raise one alert (default
    /// 500; 0: no alert).
    pub refusal_alert_threshold: Option<u64>,
}

/// `[privacy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// Bearer token of `POST /privacy/erasure` (without it the endpoint does not exist).
    /// Prefer `operator_token_file`.
    pub operator_token: Option<String>,
    /// File holding that token (first line).
    pub operator_token_file: Option<PathBuf>,
}

impl PrivacySection {
    /// The operator token, if one is configured.
    pub fn token(&self) -> anyhow::Result<Option<domain::Secret<String>>> {
        let token = match (&self.operator_token, &self.operator_token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("privacy.operator_token_file {}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        match token {
            Some(t) if t.len() < 16 => {
                bail!("privacy.operator_token: use at least 16 characters")
            }
            Some(t) => Ok(Some(domain::Secret::new(t))),
            None => Ok(None),
        }
    }
}

/// Default of `[limits] ip_requests_per_5min`.
pub const DEFAULT_IP_REQUESTS_PER_5MIN: u32 = 2000;

impl LimitsSection {
    /// The trusted proxies, parsed (`10.0.0.1` or `10.0.0.0/8`).
    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "limits.trusted_proxies[{i}]: {p:?} is not an IP address or CIDR"
                        )
                    })
            })
            .collect()
    }
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Data directory (default ./data; `--data` wins).
    pub data_dir: Option<PathBuf>,
    /// `full` (default) or `normal`.
    pub synchronous: Option<Synchronous>,
    /// Hours records are kept (default 48, 24..=336).
    pub record_ttl_hours: Option<u32>,
    /// Seconds between TTL sweeps (default 300).
    pub sweep_interval_seconds: Option<u64>,
}

/// `[queues]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesSection {
    /// Receives of a message before it moves to its DLQ (default 5).
    pub max_receive_count: Option<u32>,
}

/// `[delivery]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// Delivery workers per CRM (default 2).
    pub workers_per_crm: Option<usize>,
    /// Messages per receive, 1–100 (default 50).
    pub batch_size: Option<usize>,
    /// After a receive smaller than `batch_size`, milliseconds a worker waits for more
    /// messages before the next receive; the fanout waits as long after a partial read
    /// of the change feed (default 10; 0: take whatever is there at once). The local
    /// counterpart of SQS's `maximumBatchingWindow`: fewer, fuller batches (fewer
    /// commits and CRM calls per event) for at most this much added latency per step.
    pub batch_window_ms: Option<u64>,
    /// Seconds a received message stays hidden while a worker handles it (default 360,
    /// longer than a batch's worst case: token refresh plus CRM calls with timeouts).
    pub visibility_timeout_seconds: Option<u64>,
    /// Seconds after it was queued that a transiently failing message is dead-lettered
    /// as `retry_window_exhausted` (default 86400).
    pub retry_window_seconds: Option<u64>,
    /// First retry delay, ms (default 10000); doubles per receive.
    pub retry_base_ms: Option<u64>,
    /// Longest retry delay, ms (default 900000).
    pub retry_max_ms: Option<u64>,
    /// Longest time a failing client's circuit stays open before a probe, ms (default
    /// 300000).
    pub breaker_open_max_ms: Option<u64>,
}

/// Default of `[delivery] batch_window_ms`.
pub const DEFAULT_BATCH_WINDOW_MS: u64 = 10;
/// Largest `[delivery] batch_window_ms` honoured (a larger one is capped: the window is
/// latency added to every event under light load).
pub const MAX_BATCH_WINDOW_MS: u64 = 1000;

/// Default of `[delivery] visibility_timeout_seconds`.
pub const DEFAULT_VISIBILITY_TIMEOUT_SECONDS: u64 = 360;

impl DeliverySection {
    /// The deliver handler's settings for `crm`.
    pub fn settings(&self, crm: Crm) -> deliver::DeliverSettings {
        use std::time::Duration;
        let mut s = deliver::DeliverSettings::for_crm(crm);
        if let Some(w) = self.retry_window_seconds {
            s.retry_window = Duration::from_secs(w.max(1));
        }
        if let Some(b) = self.retry_base_ms {
            s.retry_base = Duration::from_millis(b.max(1));
        }
        if let Some(m) = self.retry_max_ms {
            s.retry_max = Duration::from_millis(m.max(1));
        }
        if let Some(m) = self.breaker_open_max_ms {
            s.breaker.open_max = Duration::from_millis(m.max(1));
            s.breaker.open_base = s.breaker.open_base.min(s.breaker.open_max);
        }
        s
    }
}

/// `[tokens]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// Seconds between token checks per CRM (default 60); a token is refreshed when less
    /// than max(25 % of its lifetime, 10 min) is left.
    pub check_interval_seconds: Option<u64>,
}

/// `[alerts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// URL that receives each alert as a JSON POST (besides the log line).
    pub webhook_url: Option<String>,
}

/// `[secrets]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// JSON file of credentials by secret name (default DATA/secrets.json).
    pub file: Option<PathBuf>,
}

/// `[[clients]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    /// The client's id.
    pub client_id: String,
    /// `responsys`, `salesforce` or `rdstation`.
    pub crm: Crm,
    /// Default true.
    #[serde(default = "yes")]
    pub active: bool,
    /// CORS origins (`https://www.shop.example`, `https://*.shop.example`, `*`).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Name of the credentials secret.
    pub secret_name: Option<String>,
    /// Events per second accepted from this client.
    pub rate_limit_per_second: Option<u32>,
    /// CRM target settings, read by delivery.
    pub target: Option<toml::Value>,
    /// Refuse requests with neither Origin nor Referer unless signed (default true).
    pub require_origin: Option<bool>,
    /// Accept signed events only (default false).
    pub require_signature: Option<bool>,
    /// Extra hosts (CDNs) `productUrl` / `productImage` may point at.
    #[serde(default)]
    pub allowed_url_hosts: Vec<String>,
    /// Events per email per minute (default 60; 0: no limit).
    pub email_events_per_minute: Option<u32>,
    /// `never`, `conversions` (default) or `all`: which events may create a contact.
    pub create_contacts: Option<ContactCreation>,
    /// Secret holding the signing key (default `/connect/signing/{client_id}`).
    pub signing_secret_name: Option<String>,
    /// Keep only events whose `consent` is granted (default false).
    pub require_consent: Option<bool>,
}

/// `[[rdstation]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdStationSection {
    /// GA4 client id.
    pub tid: String,
    /// Client it maps to.
    pub client_id: String,
    /// API base.
    pub endpoint: Option<String>,
    /// API key.
    pub token: Option<String>,
}

fn yes() -> bool {
    true
}

impl FileConfig {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        FileConfig::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
        Ok(toml::from_str(text)?)
    }

    /// The clients as domain types, validated.
    pub fn client_configs(&self) -> anyhow::Result<Vec<ClientConfig>> {
        let mut seen = std::collections::HashSet::new();
        self.clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let client_id = ClientId::parse(&c.client_id)
                    .map_err(|e| anyhow::anyhow!("clients[{i}].client_id: {e}"))?;
                if !seen.insert(client_id.clone()) {
                    bail!("clients[{i}].client_id: {client_id} is configured twice");
                }
                let target = c
                    .target
                    .as_ref()
                    .map(serde_json::to_value)
                    .transpose()
                    .with_context(|| format!("clients[{i}].target"))?;
                Ok(ClientConfig {
                    client_id,
                    crm: c.crm,
                    active: c.active,
                    allowed_origins: AllowedOrigins(c.allowed_origins.clone()),
                    target,
                    secret_name: c.secret_name.clone(),
                    rate_limit_per_second: c.rate_limit_per_second,
                    policy: ClientPolicy {
                        require_origin: c.require_origin.unwrap_or(true),
                        require_signature: c.require_signature.unwrap_or(false),
                        allowed_url_hosts: c.allowed_url_hosts.clone(),
                        email_events_per_minute: c
                            .email_events_per_minute
                            .unwrap_or(domain::client::DEFAULT_EMAIL_EVENTS_PER_MINUTE),
                        create_contacts: c.create_contacts.unwrap_or_default(),
                        require_consent: c.require_consent.unwrap_or(false),
                        signing_secret_name: c.signing_secret_name.clone(),
                    },
                })
            })
            .collect()
    }

    /// The RD Station configs as domain types, validated.
    pub fn rdstation_configs(&self) -> anyhow::Result<Vec<RdStationConfig>> {
        self.rdstation
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if r.tid.trim().is_empty() {
                    bail!("rdstation[{i}].tid: must not be empty");
                }
                Ok(RdStationConfig {
                    tid: r.tid.clone(),
                    client_id: ClientId::parse(&r.client_id)
                        .map_err(|e| anyhow::anyhow!("rdstation[{i}].client_id: {e}"))?,
                    endpoint: r.endpoint.clone(),
                    token: r.token.clone().map(Secret::new),
                })
            })
            .collect()
    }
}

/// The demo credentials, pointing at the sandbox at `sandbox`: (secret name, JSON), one
/// per destination (from its [`crm::Destination::demo`]).
pub fn demo_secrets(sandbox: &str) -> Vec<(String, serde_json::Value)> {
    let base = sandbox.trim_end_matches('/');
    Crm::all()
        .map(|crm| {
            (
                demo_secret_name(crm),
                crm::destination(crm).demo(base).credentials,
            )
        })
        .collect()
}

fn demo_secret_name(crm: Crm) -> String {
    format!("/connect/{crm}/demo-{crm}/credentials")
}

/// The demo identities of DESIGN.md: one client per destination (`demo-{name}`), every
/// origin allowed, targets from each destination's [`crm::Destination::demo`] against
/// the sandbox at `sandbox`; and the RD Station tid `GA4.100000000.200000000` →
/// `demo-rdstation`.
pub fn demo_identities(sandbox: &str) -> (Vec<ClientConfig>, Vec<RdStationConfig>) {
    let base = sandbox.trim_end_matches('/');
    let clients = Crm::all()
        .filter_map(|crm| {
            Some(ClientConfig {
                client_id: ClientId::parse(&format!("demo-{crm}")).ok()?,
                crm,
                active: true,
                allowed_origins: AllowedOrigins(vec!["*".into()]),
                target: crm::destination(crm).demo(base).target,
                secret_name: Some(demo_secret_name(crm)),
                rate_limit_per_second: None,
                // The README's curl examples send no Origin, post the same address many
                // times, and expect product views to reach the sandbox: the demo clients
                // relax those protections. Configured clients keep the safe defaults.
                policy: ClientPolicy {
                    require_origin: false,
                    email_events_per_minute: 0,
                    create_contacts: ContactCreation::All,
                    ..ClientPolicy::default()
                },
            })
        })
        .collect();
    let rd = ClientId::parse("demo-rdstation")
        .map(|client_id| RdStationConfig {
            tid: "GA4.100000000.200000000".into(),
            client_id,
            endpoint: None,
            token: None,
        })
        .into_iter()
        .collect();
    (clients, rd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = FileConfig::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n")
            .expect_err("unknown key");
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        let err = FileConfig::parse(
            "[[clients]]\nclient_id = \"a\"\ncrm = \"responsys\"\norigins = []\n",
        )
        .expect_err("unknown key");
        assert!(format!("{err:#}").contains("origins"), "{err:#}");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../connect.example.toml");
        let config = FileConfig::parse(text).expect("example parses");
        assert!(!config.client_configs().expect("clients").is_empty());
        config.rdstation_configs().expect("rdstation");
    }

    #[test]
    fn bad_client_ids_are_named() {
        let config =
            FileConfig::parse("[[clients]]\nclient_id = \"Bad Id\"\ncrm = \"salesforce\"\n")
                .expect("parses");
        let err = config.client_configs().expect_err("invalid");
        assert!(err.to_string().starts_with("clients[0].client_id"), "{err}");
        let err = FileConfig::parse("[[clients]]\nclient_id = \"a\"\ncrm = \"hubspot\"\n")
            .expect_err("unknown crm");
        assert!(format!("{err:#}").contains("hubspot"), "{err:#}");
    }

    #[test]
    fn the_webhook_demo_secret_is_the_one_the_sandbox_verifies_with() {
        assert_eq!(
            crm::webhook::DEMO_SIGNING_SECRET,
            sandbox::webhook::DEMO_SIGNING_SECRET
        );
    }

    #[test]
    fn demo_identities_match_the_design() {
        let (clients, rd) = demo_identities("http://127.0.0.1:3900");
        let ids: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "demo-responsys",
                "demo-salesforce",
                "demo-rdstation",
                "demo-webhook"
            ]
        );
        assert!(
            clients
                .iter()
                .all(|c| c.allowed_origins.allows("https://any.example"))
        );
        assert_eq!(rd[0].tid, "GA4.100000000.200000000");
        assert_eq!(rd[0].client_id.as_str(), "demo-rdstation");
    }
}
