//! The destination interface, and the registry: the one place a destination is added.
//!
//! A destination is a module of this crate with a unit struct implementing
//! [`Destination`]: how a client's target is checked, how many messages go in one call,
//! what is skipped on purpose, how it authenticates ([`AuthPolicy`]), how a batch is
//! delivered and every answer classified into [`Outcome`]s, and what the demo client
//! looks like. [`REGISTRY`] lists them in `domain::crm::DESTINATIONS` order (a test
//! checks it), and everything above this crate — the deliver and token handlers, the
//! CLI, the demo — reaches a destination only through [`destination`].

use crate::http::{AuthError, AuthToken, CrmHttp};
use crate::outcome::Outcome;
use crate::rdstation::ApiKey;
use domain::{ClientConfig, Crm, DeliveryMessage, Secret, StoredToken};

/// How a destination's token is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// The refresh token in the credentials secret is retired when used (RD Station):
    /// one refresher at a time across processes (a lease in the tokens table), and the
    /// new refresh token is saved to the secret before the access token.
    pub rotating_refresh_token: bool,
    /// The CRM asks that tokens be reused rather than requested often (SFMC): the token
    /// schedule does not refresh a token younger than its minimum interval.
    pub reuse_tokens: bool,
    /// A client may have no credentials secret and deliver with the API key of its
    /// `tid`'s RD Station config instead (CONVERSION events only).
    pub api_key_by_tid: bool,
}

/// How a destination authenticates its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// An access token obtained from the credentials secret, cached in the tokens table,
    /// refreshed by the token schedule ahead of expiry and once when the CRM refuses it.
    Token(TokenPolicy),
    /// No token: every call is signed with the credentials secret itself (read through
    /// a short cache; nothing is copied into the tokens table).
    SignedWithSecret,
}

impl AuthPolicy {
    /// The token policy, for destinations that keep tokens.
    pub fn token(self) -> Option<TokenPolicy> {
        match self {
            AuthPolicy::Token(p) => Some(p),
            AuthPolicy::SignedWithSecret => None,
        }
    }
}

/// What a delivery is authenticated with; which fields are set follows the
/// destination's [`AuthPolicy`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Auth<'a> {
    /// The access token (token destinations).
    pub token: Option<&'a StoredToken>,
    /// The RD Station API key of the client's `tid` (when it has no credentials).
    pub api_key: Option<&'a ApiKey>,
    /// The credentials secret's JSON (destinations that sign with it).
    pub secret: Option<&'a Secret<String>>,
}

/// The demo client of a destination, against the sandbox at a base URL.
#[derive(Debug, Clone)]
pub struct Demo {
    /// Its `target` (None: the destination's defaults).
    pub target: Option<serde_json::Value>,
    /// Its credentials secret.
    pub credentials: serde_json::Value,
}

/// One destination. Implementations are unit structs registered in [`REGISTRY`].
#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    /// Which destination this is.
    fn crm(&self) -> Crm;

    /// How calls are authenticated.
    fn auth_policy(&self) -> AuthPolicy;

    /// Checks a client's `target`: unknown keys, wrong types, missing settings. The
    /// message names the key.
    fn validate_target(&self, client: &ClientConfig) -> Result<(), String>;

    /// Checks a credentials secret's JSON (`connect clients secret set`); the error
    /// never quotes the secret.
    fn validate_credentials(&self, secret: &str) -> Result<(), AuthError>;

    /// Most messages of one client sent in one call.
    fn batch_limit(&self, client: &ClientConfig) -> usize;

    /// Messages not sent at all, decided before any call (one entry per message; `None`:
    /// send it). Default: send everything.
    fn skip(&self, client: &ClientConfig, messages: &[DeliveryMessage]) -> Vec<Option<Outcome>> {
        let _ = client;
        vec![None; messages.len()]
    }

    /// Exchanges the credentials secret (`secret` is its JSON) for a token. `current`
    /// is the stored token when it may be used to get the next one. Only called for
    /// [`AuthPolicy::Token`] destinations.
    async fn authenticate(
        &self,
        http: &CrmHttp,
        secret: &str,
        current: Option<&StoredToken>,
        now_ms: i64,
    ) -> Result<AuthToken, AuthError> {
        let _ = (http, secret, current, now_ms);
        Err(AuthError::BadSecret(format!(
            "{} does not use tokens",
            self.crm()
        )))
    }

    /// Delivers a batch (at most [`Destination::batch_limit`]) of one client's messages:
    /// one outcome per message, in order.
    async fn deliver(
        &self,
        http: &CrmHttp,
        client: &ClientConfig,
        auth: Auth<'_>,
        messages: &[DeliveryMessage],
    ) -> Vec<Outcome>;

    /// A read-only check that the client's target exists (`connect clients test`):
    /// `None` when the destination has no such call; else what was found, or why not.
    async fn check_target(
        &self,
        http: &CrmHttp,
        client: &ClientConfig,
        auth: Auth<'_>,
    ) -> Option<Result<String, String>> {
        let _ = (http, client, auth);
        None
    }

    /// The demo client's target and credentials, for a sandbox at `sandbox`
    /// (`http://127.0.0.1:3900`, no trailing slash).
    fn demo(&self, sandbox: &str) -> Demo;
}

/// Every destination, in `domain::crm::DESTINATIONS` order. Adding a destination: its
/// module, one line here, one entry in `DESTINATIONS` (docs/adding-a-destination.md).
pub static REGISTRY: &[&dyn Destination] = &[
    &crate::responsys::Responsys,
    &crate::sfmc::Sfmc,
    &crate::rdstation::RdStation,
    &crate::webhook::Webhook,
];

/// The implementation of `crm`.
pub fn destination(crm: Crm) -> &'static dyn Destination {
    // DESTINATIONS and REGISTRY have the same length and order (tested below), and a
    // `Crm` is always an index into DESTINATIONS.
    REGISTRY[crm.index()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_follows_the_domain_list() {
        assert_eq!(
            REGISTRY.len(),
            domain::crm::DESTINATIONS.len(),
            "every destination of domain::crm::DESTINATIONS needs its line in REGISTRY"
        );
        for (i, crm) in Crm::all().enumerate() {
            assert_eq!(REGISTRY[i].crm(), crm, "REGISTRY[{i}]");
            assert_eq!(destination(crm).crm(), crm);
        }
    }

    #[test]
    fn every_demo_client_passes_its_own_validation() {
        for crm in Crm::all() {
            let d = destination(crm);
            let demo = d.demo("http://127.0.0.1:3900");
            let client = ClientConfig {
                client_id: domain::ClientId::parse("demo").expect("id"),
                crm,
                active: true,
                allowed_origins: domain::AllowedOrigins::default(),
                target: demo.target,
                secret_name: None,
                rate_limit_per_second: None,
                policy: domain::ClientPolicy::default(),
            };
            d.validate_target(&client).expect("demo target is valid");
            assert!(d.batch_limit(&client) >= 1);
        }
    }
}
