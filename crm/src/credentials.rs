//! Credentials as stored in each client's secret (JSON).

use crate::http::AuthError;
use domain::{Crm, Secret};
use serde::Deserialize;

/// Responsys `{username, password, loginUrl}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponsysCredentials {
    /// API user.
    pub username: String,
    /// Its password.
    pub password: Secret<String>,
    /// Login host of the pod (`https://login5.responsys.net`).
    pub login_url: String,
}

/// SFMC `{clientId, clientSecret, subdomain, accountId?, scope?, authUrl?}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SfmcCredentials {
    /// Installed package client id.
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret<String>,
    /// Tenant subdomain (`mc…`).
    #[serde(default)]
    pub subdomain: Option<String>,
    /// MID of the business unit.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: Option<String>,
    /// Auth base URL; default `https://{subdomain}.auth.marketingcloudapis.com`.
    #[serde(default)]
    pub auth_url: Option<String>,
}

impl SfmcCredentials {
    /// The auth base URL.
    pub fn auth_base(&self) -> Result<String, AuthError> {
        match (&self.auth_url, &self.subdomain) {
            (Some(url), _) => Ok(crate::http::base_url(url)),
            (None, Some(sub)) if !sub.is_empty() => {
                Ok(format!("https://{sub}.auth.marketingcloudapis.com"))
            }
            _ => Err(AuthError::BadSecret(
                "SFMC credentials need subdomain (or authUrl)".into(),
            )),
        }
    }
}

/// RD Station `{clientId, clientSecret, refreshToken, authUrl?, apiUrl?}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RdStationCredentials {
    /// OAuth app client id.
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret<String>,
    /// The current refresh token.
    pub refresh_token: Secret<String>,
    /// Token endpoint base; default `https://api.rd.services`.
    #[serde(default)]
    pub auth_url: Option<String>,
    /// API base; default `https://api.rd.services`.
    #[serde(default)]
    pub api_url: Option<String>,
}

/// RD Station's API base.
pub const RDSTATION_API: &str = "https://api.rd.services";

/// Parses a secret's JSON into `crm`'s credentials. The error never contains the secret.
pub fn parse<T: serde::de::DeserializeOwned>(crm: Crm, json: &str) -> Result<T, AuthError> {
    serde_json::from_str(json).map_err(|e| {
        AuthError::BadSecret(format!(
            "the {crm} credentials secret does not have the expected fields (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}
