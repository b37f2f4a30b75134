//! Client configuration (the clients table) and the RD Station config (by `tid`).

use crate::crm::Crm;
use crate::event::ClientId;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The browser origins a client's tags may post from: exact origins
/// (`https://www.shop.example`), subdomain wildcards (`https://*.shop.example`), or `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AllowedOrigins(pub Vec<String>);

impl AllowedOrigins {
    /// Whether `origin` (as sent in the `Origin` header) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.0.iter().any(|pattern| {
            let pattern = pattern.trim_end_matches('/').to_ascii_lowercase();
            if pattern == "*" || pattern == origin {
                return true;
            }
            match pattern.split_once("://*.") {
                Some((scheme, suffix)) => origin
                    .strip_prefix(scheme)
                    .and_then(|rest| rest.strip_prefix("://"))
                    .and_then(|host| host.strip_suffix(suffix))
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                None => false,
            }
        })
    }
}

/// One client (a web shop) and where its events go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    /// The client's id (`clientId` in events).
    pub client_id: ClientId,
    /// The CRM its events are delivered to.
    pub crm: Crm,
    /// Inactive clients are answered 404 and nothing is stored.
    pub active: bool,
    /// Origins allowed by CORS.
    #[serde(default)]
    pub allowed_origins: AllowedOrigins,
    /// CRM target settings (list/table/extension names, field mapping), read by delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Value>,
    /// Name of the secret holding the CRM credentials
    /// (e.g. `/connect/responsys/client-abc/credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Most events per second accepted from this client by one ingest process (`None`:
    /// unlimited; the WAF rate rule still applies on AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
}

/// The RD Station config of one GA4 `tid`: which client it belongs to and, optionally,
/// the client's API endpoint and API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RdStationConfig {
    /// The GA4 client id the tag sends.
    pub tid: String,
    /// The client it maps to.
    pub client_id: ClientId,
    /// RD Station API base, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Per-client API key (conversion events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_matching() {
        let o = AllowedOrigins(vec![
            "https://www.shop.example".into(),
            "https://*.loja.example".into(),
        ]);
        assert!(o.allows("https://www.shop.example"));
        assert!(o.allows("https://WWW.shop.example/"));
        assert!(!o.allows("http://www.shop.example"));
        assert!(!o.allows("https://evil.example"));
        assert!(o.allows("https://m.loja.example"));
        assert!(o.allows("https://a.b.loja.example"));
        assert!(!o.allows("https://loja.example"));
        assert!(!o.allows("https://evilloja.example"));
        assert!(AllowedOrigins(vec!["*".into()]).allows("https://any.example"));
        assert!(!AllowedOrigins::default().allows("https://any.example"));
    }
}
