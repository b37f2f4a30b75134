//! The one token-refresh logic, below the handlers: read the cached token; if it is
//! missing, due or was rejected, fetch the credentials, authenticate, and store the new
//! token with a conditional write that never replaces a newer one. Single-flight per
//! (client, CRM) within the process.

use crate::destination;
use crate::http::{AuthError, AuthToken, CrmHttp};
use domain::{
    ClientConfig, ClientId, Clock, Crm, SecretStore, StoreError, StoredToken, TokenStore,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The client has no credentials secret, or the secret does not exist.
    #[error("no credentials for client {0}")]
    NoCredentials(String),
    /// The CRM refused the credentials, or the secret is unusable: a human must act.
    #[error("{0}")]
    Rejected(String),
    /// A transient failure (CRM auth endpoint, secrets or tokens store).
    #[error("{0}")]
    Transient(String),
}

impl TokenError {
    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Transient(_))
    }
}

impl From<AuthError> for TokenError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Transient(m) => TokenError::Transient(m),
            other => TokenError::Rejected(other.to_string()),
        }
    }
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        TokenError::Transient(e.to_string())
    }
}

/// What a client authenticates with.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An access token.
    Token(StoredToken),
    /// The signing secret's JSON.
    Secret(domain::Secret<String>),
}

impl Credential {
    /// As the [`crate::Auth`] of a delivery or a check.
    pub fn auth(&self) -> crate::Auth<'_> {
        match self {
            Credential::Token(t) => crate::Auth {
                token: Some(t),
                ..crate::Auth::default()
            },
            Credential::Secret(s) => crate::Auth {
                secret: Some(s),
                ..crate::Auth::default()
            },
        }
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// A new token was obtained and stored.
    New,
    /// The stored token was still good (or another refresher just stored one).
    Kept,
}

type Flight = Arc<tokio::sync::Mutex<()>>;

/// How long a refresh lease is held at most (a crashed holder's lease expires).
pub const REFRESH_LEASE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a refresher waits for another process's refresh before giving up (the
/// messages are retried).
pub const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause between looks at another process's refresh.
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

enum Leased {
    Held(String),
    Refreshed(StoredToken),
}

/// Tokens of every client, refreshed on demand.
pub struct TokenManager<T, S, C> {
    tokens: T,
    secrets: S,
    clock: C,
    http: CrmHttp,
    flights: Mutex<HashMap<(ClientId, Crm), Flight>>,
    /// Credentials secrets of destinations that sign with them, by secret name.
    signing: moka::future::Cache<String, domain::Secret<String>>,
}

/// How long a signing secret read from the secret store is reused: a rotated secret is
/// picked up within this time (keep the previous key valid that long).
pub const SIGNING_SECRET_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl<T, S, C> std::fmt::Debug for TokenManager<T, S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager").finish_non_exhaustive()
    }
}

impl<T: TokenStore, S: SecretStore, C: Clock> TokenManager<T, S, C> {
    /// A manager over the tokens table and the secrets.
    pub fn new(tokens: T, secrets: S, clock: C, http: CrmHttp) -> Self {
        TokenManager {
            tokens,
            secrets,
            clock,
            http,
            flights: Mutex::new(HashMap::new()),
            signing: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(SIGNING_SECRET_TTL)
                .build(),
        }
    }

    /// The tokens table.
    pub fn tokens(&self) -> &T {
        &self.tokens
    }

    fn flight(&self, client: &ClientConfig) -> Flight {
        let key = (client.client_id.clone(), client.crm);
        match self.flights.lock() {
            Ok(mut map) => Arc::clone(map.entry(key).or_default()),
            Err(_) => Flight::default(),
        }
    }

    /// The credentials secret of a client whose destination signs every call with it
    /// ([`crate::AuthPolicy::SignedWithSecret`]), checked by the destination, through a
    /// short cache (an unusable secret is not cached: it is read again until fixed).
    pub async fn signing_secret(
        &self,
        client: &ClientConfig,
    ) -> Result<domain::Secret<String>, TokenError> {
        let name = client
            .secret_name
            .clone()
            .ok_or_else(|| TokenError::NoCredentials(client.client_id.to_string()))?;
        let missing = || TokenError::NoCredentials(client.client_id.to_string());
        self.signing
            .try_get_with(name.clone(), async {
                let secret = self
                    .secrets
                    .get_secret(&name)
                    .await
                    .map_err(TokenError::from)?
                    .ok_or_else(missing)?;
                destination(client.crm).validate_credentials(secret.expose())?;
                Ok(secret)
            })
            .await
            .map_err(|e: std::sync::Arc<TokenError>| (*e).clone())
    }

    /// Authenticates now, writing nothing to the destination (`connect clients test`): a
    /// forced token refresh, or the signing secret read and checked.
    pub async fn authenticate_now(&self, client: &ClientConfig) -> Result<Credential, TokenError> {
        let dest = destination(client.crm);
        match dest.auth_policy() {
            crate::AuthPolicy::Token(_) => self
                .refresh(client, true, None)
                .await
                .map(|(t, _)| Credential::Token(t)),
            crate::AuthPolicy::SignedWithSecret => {
                Ok(Credential::Secret(self.signing_secret(client).await?))
            }
        }
    }

    /// A usable token: the cached one unless it is missing or due.
    pub async fn current(&self, client: &ClientConfig) -> Result<StoredToken, TokenError> {
        let now = self.clock.now_ms();
        if let Some(t) = self.tokens.get_token(&client.client_id, client.crm).await?
            && !t.is_due(now)
        {
            return Ok(t);
        }
        self.refresh(client, false, None).await.map(|(t, _)| t)
    }

    /// A token to replace `rejected`, which the CRM refused: the stored one if another
    /// refresher already replaced it, else a new one.
    pub async fn after_rejection(
        &self,
        client: &ClientConfig,
        rejected: &StoredToken,
    ) -> Result<StoredToken, TokenError> {
        self.refresh(client, true, Some(rejected))
            .await
            .map(|(t, _)| t)
    }

    /// Refreshes when due, or always with `force`. `rejected`: a token the CRM refused.
    pub async fn refresh(
        &self,
        client: &ClientConfig,
        force: bool,
        rejected: Option<&StoredToken>,
    ) -> Result<(StoredToken, Refreshed), TokenError> {
        let flight = self.flight(client);
        let _guard = flight.lock().await;
        let now = self.clock.now_ms();
        let stored = self.tokens.get_token(&client.client_id, client.crm).await?;
        if let Some(s) = &stored {
            let replaced = rejected.is_some_and(|r| r.access_token != s.access_token);
            if (replaced && !s.is_expired(now)) || (!force && rejected.is_none() && !s.is_due(now))
            {
                return Ok((s.clone(), Refreshed::Kept));
            }
        }
        // RD Station retires a refresh token when it is used: across processes, one
        // refresher at a time (the others wait for its token).
        let rotating = destination(client.crm)
            .auth_policy()
            .token()
            .is_some_and(|p| p.rotating_refresh_token);
        let lease = if rotating {
            match self.lease(client, rejected).await? {
                Leased::Held(holder) => Some(holder),
                Leased::Refreshed(token) => return Ok((token, Refreshed::Kept)),
            }
        } else {
            None
        };
        let result = self.refresh_unleased(client, stored, rejected, now).await;
        if let Some(holder) = lease
            && let Err(e) = self
                .tokens
                .release_refresh_lease(&client.client_id, client.crm, &holder)
                .await
        {
            tracing::warn!(error = %e, "refresh lease not released; it expires by itself");
        }
        result
    }

    /// Takes the cross-process refresh lease, or waits for the holder's new token.
    async fn lease(
        &self,
        client: &ClientConfig,
        rejected: Option<&StoredToken>,
    ) -> Result<Leased, TokenError> {
        let holder = uuid::Uuid::new_v4().to_string();
        let deadline = std::time::Instant::now() + LEASE_WAIT;
        loop {
            let now = self.clock.now_ms();
            let until = now + i64::try_from(REFRESH_LEASE.as_millis()).unwrap_or(60_000);
            if self
                .tokens
                .acquire_refresh_lease(&client.client_id, client.crm, &holder, until, now)
                .await?
            {
                return Ok(Leased::Held(holder));
            }
            // Someone else refreshes: a token newer than the refused one is ours too.
            if let Some(t) = self.tokens.get_token(&client.client_id, client.crm).await?
                && !t.is_expired(now)
                && rejected.is_none_or(|r| r.access_token != t.access_token)
                && !t.is_due(now)
            {
                return Ok(Leased::Refreshed(t));
            }
            if std::time::Instant::now() >= deadline {
                return Err(TokenError::Transient(
                    "another process is refreshing this client's token".into(),
                ));
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    async fn refresh_unleased(
        &self,
        client: &ClientConfig,
        stored: Option<StoredToken>,
        rejected: Option<&StoredToken>,
        now: i64,
    ) -> Result<(StoredToken, Refreshed), TokenError> {
        let name = client
            .secret_name
            .as_deref()
            .ok_or_else(|| TokenError::NoCredentials(client.client_id.to_string()))?;
        let secret = self
            .secrets
            .get_secret(name)
            .await?
            .ok_or_else(|| TokenError::NoCredentials(client.client_id.to_string()))?;
        // A token the CRM refused cannot be used to refresh itself.
        let usable = stored.as_ref().filter(|_| rejected.is_none());
        let auth: AuthToken = destination(client.crm)
            .authenticate(&self.http, secret.expose(), usable, now)
            .await?;
        if let Some(new_refresh) = &auth.refresh_token {
            let mut json: serde_json::Value = serde_json::from_str(secret.expose())
                .map_err(|_| TokenError::Rejected("the credentials secret is not JSON".into()))?;
            if json["refreshToken"].as_str() != Some(new_refresh.expose().as_str()) {
                // Save the rotated refresh token before the access token: a crash in
                // between must not lose the only valid refresh token.
                json["refreshToken"] = serde_json::Value::String(new_refresh.expose().clone());
                self.secrets
                    .put_secret(name, &domain::Secret::new(json.to_string()))
                    .await?;
                tracing::info!(
                    clientId = client.client_id.as_str(),
                    crm = client.crm.as_str(),
                    "refresh token rotated and saved"
                );
            }
        }
        let token = StoredToken {
            client_id: client.client_id.clone(),
            crm: client.crm,
            access_token: auth.access_token,
            api_endpoint: auth.api_endpoint,
            issued_at: auth.issued_at,
            expires_at: auth.expires_at,
            updated_at: self.clock.now_ms(),
        };
        if self.tokens.put_token_if_newer(&token).await? {
            Ok((token, Refreshed::New))
        } else {
            // Another process stored a newer token meanwhile: use that one.
            let newer = self.tokens.get_token(&client.client_id, client.crm).await?;
            Ok((newer.unwrap_or(token), Refreshed::Kept))
        }
    }
}
