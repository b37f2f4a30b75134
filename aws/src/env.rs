//! The Lambda environment contract (DESIGN.md, "Lambda environment").

use domain::record::{DEFAULT_RECORD_TTL_HOURS, MAX_RECORD_TTL_HOURS, MIN_RECORD_TTL_HOURS};

/// Navigation table name.
pub const NAVIGATION_TABLE: &str = "NAVIGATION_TABLE";
/// Clients table name.
pub const CLIENTS_TABLE: &str = "CLIENTS_TABLE";
/// RD Station config table name.
pub const RDSTATION_CONFIG_TABLE: &str = "RDSTATION_CONFIG_TABLE";
/// Tokens table name.
pub const TOKENS_TABLE: &str = "TOKENS_TABLE";
/// Suppression table (LGPD) and audit trail.
pub const SUPPRESSION_TABLE: &str = "SUPPRESSION_TABLE";
/// Hours a navigation record is kept.
pub const RECORD_TTL_HOURS: &str = "RECORD_TTL_HOURS";
/// SNS topic for alerts.
pub const ALERT_TOPIC_ARN: &str = "ALERT_TOPIC_ARN";
/// deliver / token: which CRM this function serves.
pub const CRM: &str = "CRM";
/// deliver: its queue.
pub const QUEUE_URL: &str = "QUEUE_URL";
/// deliver: its dead-letter queue.
pub const DLQ_URL: &str = "DLQ_URL";

/// fanout: the delivery queue of a CRM (`QUEUE_URL_RESPONSYS`, …).
pub fn queue_url_var(crm: domain::Crm) -> String {
    format!("QUEUE_URL_{}", crm.as_str().to_ascii_uppercase())
}

/// fanout: the dead-letter queue of a CRM (`DLQ_URL_RESPONSYS`, …), where records too
/// large for a message are put on purpose.
pub fn dlq_url_var(crm: domain::Crm) -> String {
    format!("DLQ_URL_{}", crm.as_str().to_ascii_uppercase())
}

/// A required variable whose name is computed.
pub fn required_named(name: &str) -> Result<String, EnvError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| EnvError::MissingNamed(name.to_owned()))
}

/// A missing or invalid environment variable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// Not set.
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// Not set (computed name).
    #[error("environment variable {0} is not set")]
    MissingNamed(String),
    /// Set to something unusable.
    #[error("environment variable {name} is invalid: {message}")]
    Invalid {
        /// Variable.
        name: &'static str,
        /// Why.
        message: String,
    },
}

/// A required variable.
pub fn required(name: &'static str) -> Result<String, EnvError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or(EnvError::Missing(name))
}

/// `RECORD_TTL_HOURS`, default 48, bounded.
pub fn record_ttl_hours() -> Result<u32, EnvError> {
    match std::env::var(RECORD_TTL_HOURS) {
        Err(_) => Ok(DEFAULT_RECORD_TTL_HOURS),
        Ok(v) => parse_ttl_hours(&v).map_err(|message| EnvError::Invalid {
            name: RECORD_TTL_HOURS,
            message,
        }),
    }
}

/// Parses a record TTL in hours within its bounds.
pub fn parse_ttl_hours(v: &str) -> Result<u32, String> {
    let hours: u32 = v
        .trim()
        .parse()
        .map_err(|_| format!("'{v}' is not a whole number of hours"))?;
    if !(MIN_RECORD_TTL_HOURS..=MAX_RECORD_TTL_HOURS).contains(&hours) {
        return Err(format!(
            "{hours} is outside {MIN_RECORD_TTL_HOURS}..={MAX_RECORD_TTL_HOURS} hours"
        ));
    }
    Ok(hours)
}

/// How long one attempt of an AWS call may take before the SDK abandons it and retries
/// (standard retry mode: 3 attempts). In-region DynamoDB, SQS, SNS and Secrets Manager
/// calls take milliseconds; without it a stalled connection holds the invocation until
/// the function's own timeout (the SDK sets only a connect timeout by default).
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest a whole AWS call (its attempts and back-offs) may take.
pub const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7);

/// Env var choosing the roots the Lambdas trust for AWS endpoints: `amazon` (the
/// default: [`AMAZON_TRUST_SERVICES`] only) or `system` (the operating system's store,
/// as the SDK does by default — for an `AWS_ENDPOINT_URL` certified by another CA).
pub const AWS_TRUST_STORE: &str = "CONNECT_AWS_TRUST_STORE";

/// The roots of Amazon Trust Services, which certify every AWS endpoint Connect calls
/// (DynamoDB, SQS, SNS, Secrets Manager, STS; AWS has moved its service endpoints to
/// this CA since 2018, S3 and CloudFront last, in 2021–22): Amazon Root CA 1–4 and the
/// Starfield Services root that cross-signs them.
pub const AMAZON_TRUST_SERVICES: &str = include_str!("../certs/amazon-trust-services.pem");

/// Which roots the AWS clients trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustStore {
    /// [`AMAZON_TRUST_SERVICES`] only.
    Amazon,
    /// The operating system's roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` or the platform's).
    System,
}

impl TrustStore {
    /// Reads [`AWS_TRUST_STORE`].
    pub fn from_env() -> Result<Self, EnvError> {
        Self::parse(std::env::var(AWS_TRUST_STORE).ok().as_deref())
    }

    /// Parses a value of [`AWS_TRUST_STORE`] (`None`: unset).
    pub fn parse(value: Option<&str>) -> Result<Self, EnvError> {
        match value.map(str::trim) {
            None | Some("" | "amazon") => Ok(TrustStore::Amazon),
            Some("system") => Ok(TrustStore::System),
            Some(other) => Err(EnvError::Invalid {
                name: AWS_TRUST_STORE,
                message: format!("{other:?} is neither amazon nor system"),
            }),
        }
    }

    fn tls_context(self) -> aws_smithy_http_client::tls::TlsContext {
        use aws_smithy_http_client::tls::{TlsContext, TrustStore as Roots};
        let roots = match self {
            TrustStore::Amazon => Roots::empty()
                .with_native_roots(false)
                .with_pem_certificate(AMAZON_TRUST_SERVICES.as_bytes()),
            TrustStore::System => Roots::default(),
        };
        // `build` only stores its fields (aws-smithy-http-client 1.5); were it to fail,
        // the SDK's own default context (the system's roots) is the fallback.
        TlsContext::builder()
            .with_trust_store(roots)
            .build()
            .unwrap_or_default()
    }
}

/// One HTTPS client for every SDK client and credentials provider of a Lambda: the
/// client the SDK builds by default (rustls with aws-lc, proxies from the environment),
/// trusting `trust`'s roots, built once.
///
/// Both are cold-start costs. The SDK's default loads the system's roots (a PEM bundle
/// of ~150 certificates and a directory of them: ~2.5 ms, as long as a whole
/// hello-world Lambda's init), and each SDK client and credentials provider builds its
/// own client, TLS configuration and connection pool; here clients built from one
/// [`aws_config::SdkConfig`] with the same timeouts share one of each.
pub fn shared_https_client(trust: TrustStore) -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig, tls};
    let context = trust.tls_context();
    // `build_with_connector_fn` is how aws-smithy-runtime builds the SDK's own default
    // client (`default_https_client`); it is doc-hidden, so an upgrade of the crate
    // (pinned by Cargo.lock) may need this mirrored again.
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = ConnectorBuilder::default()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// The SDK configuration of a Lambda: the default chain (environment, container
/// credentials) with [`ATTEMPT_TIMEOUT`] and [`OPERATION_TIMEOUT`], over one
/// [`shared_https_client`] trusting the roots [`AWS_TRUST_STORE`] names.
pub async fn sdk_config() -> Result<aws_config::SdkConfig, EnvError> {
    let trust = TrustStore::from_env()?;
    Ok(aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(shared_https_client(trust))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await)
}
