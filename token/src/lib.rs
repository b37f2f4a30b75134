//! The token handler: on a schedule tick for one CRM, refresh the token of every active
//! client of that CRM whose token is missing, due (less than max(25 % of its lifetime,
//! 10 min) left), expired, or whose last refresh failed — through the one token logic of
//! `crm::TokenManager`. One client's failure never stops the others.

use backon::{BackoffBuilder, ExponentialBuilder};
use crm::{Refreshed, TokenError, TokenManager};
use domain::token::RefreshStatus;
use domain::{
    Alert, AlertSink, ClientConfig, ClientDirectory, ClientId, Clock, Crm, SecretStore,
    StoredToken, TokenStore,
};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Settings of the handler.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Clients refreshed at once.
    pub concurrency: usize,
    /// SFMC: the schedule asks for at most one token per client per this long.
    pub sfmc_min_interval_ms: i64,
    /// Attempts per client on transient failures (within the deadline).
    pub max_attempts: usize,
    /// First retry delay (jittered, doubling).
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            concurrency: 4,
            sfmc_min_interval_ms: 20 * 60 * 1000,
            max_attempts: 4,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// What to do with a client's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No token yet.
    Missing,
    /// Past its expiry.
    Expired,
    /// Inside the refresh margin.
    Due,
    /// The last refresh failed: try again.
    Failing,
    /// Good for now.
    Fresh,
    /// Due, but SFMC was asked for a token less than 20 minutes ago.
    RateLimited,
}

impl Decision {
    /// Whether to refresh.
    pub fn refresh(self) -> bool {
        !matches!(self, Decision::Fresh | Decision::RateLimited)
    }
}

/// The margin logic.
pub fn decide(
    crm: Crm,
    token: Option<&StoredToken>,
    last: Option<&RefreshStatus>,
    now_ms: i64,
    settings: &TokenSettings,
) -> Decision {
    let Some(t) = token else {
        return Decision::Missing;
    };
    let decision = if t.is_expired(now_ms) {
        Decision::Expired
    } else if t.is_due(now_ms) {
        Decision::Due
    } else if last.is_some_and(|s| !s.ok) {
        Decision::Failing
    } else {
        Decision::Fresh
    };
    if decision.refresh()
        && crm::destination(crm)
            .auth_policy()
            .token()
            .is_some_and(|p| p.reuse_tokens)
        && now_ms - t.issued_at < settings.sfmc_min_interval_ms
    {
        return Decision::RateLimited;
    }
    decision
}

/// What a tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshSummary {
    /// Clients with a new token.
    pub refreshed: Vec<String>,
    /// Clients whose token was still good.
    pub still_valid: Vec<String>,
    /// Clients that could not be refreshed, with why (never a secret).
    pub failed: Vec<(String, String)>,
}

/// The token handler of one CRM.
pub struct TokenHandler<D, T, S, A, C> {
    crm: Crm,
    directory: D,
    manager: std::sync::Arc<TokenManager<T, S, C>>,
    alerts: A,
    clock: C,
    settings: TokenSettings,
}

impl<D, T, S, A, C> std::fmt::Debug for TokenHandler<D, T, S, A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHandler")
            .field("crm", &self.crm)
            .finish()
    }
}

enum ClientResult {
    Refreshed,
    Valid,
    Failed(String),
}

impl<D, T, S, A, C> TokenHandler<D, T, S, A, C>
where
    D: ClientDirectory,
    T: TokenStore,
    S: SecretStore,
    A: AlertSink,
    C: Clock,
{
    /// A handler for `crm`.
    pub fn new(
        crm: Crm,
        directory: D,
        manager: std::sync::Arc<TokenManager<T, S, C>>,
        alerts: A,
        clock: C,
        settings: TokenSettings,
    ) -> Self {
        TokenHandler {
            crm,
            directory,
            manager,
            alerts,
            clock,
            settings,
        }
    }

    /// Refreshes what is due (or everything, with `force`) for every active client of the
    /// CRM, or only `only`. Transient failures are retried until `deadline`.
    pub async fn handle(
        &self,
        only: Option<&ClientId>,
        force: bool,
        deadline: Option<Instant>,
    ) -> RefreshSummary {
        // A destination that signs with its secret keeps no token.
        let Some(policy) = crm::destination(self.crm).auth_policy().token() else {
            return RefreshSummary::default();
        };
        let api_key_clients = policy.api_key_by_tid;
        let clients = match self.directory.clients_of(self.crm).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(crm = self.crm.as_str(), error = %e, "cannot list the clients");
                return RefreshSummary {
                    failed: vec![("*".into(), e.to_string())],
                    ..RefreshSummary::default()
                };
            }
        };
        let clients: Vec<ClientConfig> = clients
            .into_iter()
            .filter(|c| c.active && only.is_none_or(|o| *o == c.client_id))
            // A client with only an API key (RD Station; no credentials secret) has no
            // token by design: nothing to refresh, nothing to alert about.
            .filter(|c| !(api_key_clients && c.secret_name.is_none()))
            .collect();
        let mut summary = RefreshSummary::default();
        for chunk in clients.chunks(self.settings.concurrency.max(1)) {
            let runs: Vec<_> = chunk
                .iter()
                .map(|c| self.client(c, force, deadline))
                .collect();
            for (client, result) in chunk.iter().zip(futures_util::future::join_all(runs).await) {
                let id = client.client_id.to_string();
                match result {
                    ClientResult::Refreshed => summary.refreshed.push(id),
                    ClientResult::Valid => summary.still_valid.push(id),
                    ClientResult::Failed(why) => summary.failed.push((id, why)),
                }
            }
        }
        tracing::info!(
            crm = self.crm.as_str(),
            refreshed = summary.refreshed.len(),
            stillValid = summary.still_valid.len(),
            failed = summary.failed.len(),
            "token refresh done"
        );
        summary
    }

    async fn client(
        &self,
        client: &ClientConfig,
        force: bool,
        deadline: Option<Instant>,
    ) -> ClientResult {
        let now = self.clock.now_ms();
        let token = self
            .manager
            .tokens()
            .get_token(&client.client_id, client.crm)
            .await;
        let last = self
            .manager
            .tokens()
            .refresh_status(&client.client_id, client.crm)
            .await
            .ok()
            .flatten();
        let decision = match &token {
            Ok(t) => decide(self.crm, t.as_ref(), last.as_ref(), now, &self.settings),
            Err(_) => Decision::Missing,
        };
        if !force && !decision.refresh() {
            return ClientResult::Valid;
        }
        let mut delays = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.settings.retry_min)
            .with_max_delay(self.settings.retry_max)
            .with_max_times(self.settings.max_attempts.saturating_sub(1))
            .build();
        loop {
            match self.manager.refresh(client, true, None).await {
                Ok((_, refreshed)) => {
                    self.record(client, true, "refreshed").await;
                    return match refreshed {
                        Refreshed::New => ClientResult::Refreshed,
                        Refreshed::Kept => ClientResult::Valid,
                    };
                }
                Err(TokenError::Transient(why)) => {
                    let next = delays
                        .next()
                        .filter(|d| deadline.is_none_or(|end| Instant::now() + *d < end));
                    match next {
                        Some(d) => {
                            tracing::warn!(clientId = client.client_id.as_str(), error = %why, "token refresh failed; retrying");
                            tokio::time::sleep(d).await;
                        }
                        None => {
                            self.record(client, false, &why).await;
                            return ClientResult::Failed(why);
                        }
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    self.record(client, false, &why).await;
                    self.alerts
                        .alert(&Alert {
                            kind: "token_refresh_failed".into(),
                            source: format!("token-{}", self.crm),
                            crm: Some(self.crm),
                            client_id: Some(client.client_id.clone()),
                            count: 1,
                            message: domain::redact::emails(&format!(
                                "the {} token of {} could not be refreshed: {why}; the stored token is left as it is",
                                self.crm, client.client_id
                            )),
                        })
                        .await;
                    return ClientResult::Failed(why);
                }
            }
        }
    }

    async fn record(&self, client: &ClientConfig, ok: bool, message: &str) {
        let status = RefreshStatus {
            at: self.clock.now_ms(),
            ok,
            message: message.to_owned(),
        };
        if let Err(e) = self
            .manager
            .tokens()
            .record_refresh(&client.client_id, client.crm, &status)
            .await
        {
            tracing::warn!(error = %e, "could not record the refresh result");
        }
    }
}

/// The client an EventBridge `detail` narrows the tick to (`{"clientId": "…"}`).
pub fn client_of(detail: &serde_json::Value) -> Option<ClientId> {
    detail["clientId"]
        .as_str()
        .and_then(|c| ClientId::parse(c).ok())
}

/// The `Instant` `margin` before a Lambda deadline (epoch ms).
pub fn deadline(deadline_epoch_ms: u64, margin: Duration) -> Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let left = Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms));
    Instant::now() + left.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(issued: i64, expires: i64) -> StoredToken {
        StoredToken {
            client_id: ClientId::parse("c").expect("id"),
            crm: Crm::RESPONSYS,
            access_token: domain::Secret::new("t".into()),
            api_endpoint: "https://x".into(),
            issued_at: issued,
            expires_at: expires,
            updated_at: issued,
        }
    }

    #[test]
    fn a_hand_made_envelope_narrows_the_tick() {
        let text = r#"{"detail-type":"Scheduled Event","source":"aws.events","time":"2026-01-01T00:00:00Z","detail":{"clientId":"loja-exemplo"}}"#;
        let event: aws_lambda_events::eventbridge::EventBridgeEvent<serde_json::Value> =
            serde_json::from_str(text).expect("envelope");
        assert_eq!(
            client_of(&event.detail),
            ClientId::parse("loja-exemplo").ok()
        );
    }

    #[test]
    fn margin_table() {
        let s = TokenSettings::default();
        let h = 3_600_000;
        let failed = RefreshStatus {
            at: 0,
            ok: false,
            message: "x".into(),
        };
        let ok = RefreshStatus {
            at: 0,
            ok: true,
            message: "x".into(),
        };
        let cases = [
            ("missing", Crm::RESPONSYS, None, None, 0, Decision::Missing),
            (
                "fresh",
                Crm::RESPONSYS,
                Some(token(0, 2 * h)),
                Some(&ok),
                h / 2,
                Decision::Fresh,
            ),
            (
                "due: 25 % left",
                Crm::RESPONSYS,
                Some(token(0, 2 * h)),
                None,
                2 * h - 30 * 60_000,
                Decision::Due,
            ),
            (
                "not yet due",
                Crm::RESPONSYS,
                Some(token(0, 2 * h)),
                None,
                2 * h - 31 * 60_000,
                Decision::Fresh,
            ),
            (
                "expired",
                Crm::RDSTATION,
                Some(token(0, 24 * h)),
                None,
                24 * h,
                Decision::Expired,
            ),
            (
                "due: 10 min beats 25 % of 24 h? no, 6 h",
                Crm::RDSTATION,
                Some(token(0, 24 * h)),
                None,
                18 * h,
                Decision::Due,
            ),
            (
                "failing",
                Crm::RESPONSYS,
                Some(token(0, 2 * h)),
                Some(&failed),
                h / 2,
                Decision::Failing,
            ),
            (
                "sfmc due but asked 15 min ago",
                Crm::SFMC,
                Some(token(0, 18 * 60_000)),
                None,
                15 * 60_000,
                Decision::RateLimited,
            ),
            (
                "sfmc expired 20 min after the last",
                Crm::SFMC,
                Some(token(0, 18 * 60_000)),
                None,
                20 * 60_000,
                Decision::Expired,
            ),
        ];
        for (name, crm, t, last, now, expected) in cases {
            assert_eq!(decide(crm, t.as_ref(), last, now, &s), expected, "{name}");
        }
    }
}
