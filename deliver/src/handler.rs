//! The transport-free deliver handler.

use crate::breaker::{BreakerSettings, Breakers, Gate};
use crm::rdstation::ApiKey;
use crm::{CrmHttp, Outcome, TokenError, TokenManager};
use domain::delivery::{attr, rfc3339};
use domain::{
    Alert, AlertSink, Attribute, ClientConfig, ClientDirectory, ClientId, Clock, Crm,
    DeliveryMessage, OutgoingMessage, QueueControl, QueueKind, QueueSender, SecretStore,
    TokenStore,
};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Longest message delay SQS accepts for a visibility timeout (12 h); our cap is lower.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// Longest detail kept in the `failureDetail` attribute.
pub const MAX_FAILURE_DETAIL: usize = 512;
/// Receives of a throttled message retried after just the CRM's own wait; later ones
/// wait at least the backoff.
pub const THROTTLE_RECEIVES_AT_CRM_WAIT: u32 = 3;
/// Clients delivered at once in one invocation.
pub const CLIENT_CONCURRENCY: usize = 4;

/// Settings of the handler.
#[derive(Debug, Clone)]
pub struct DeliverSettings {
    /// Hide a message this long after its first transient failure; doubles with each
    /// receive (jittered).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// A message that still fails transiently (5xx, timeouts, throttles, rejected
    /// credentials) this long after it was queued is dead-lettered as
    /// `retry_window_exhausted`; before that it is only ever retried.
    pub retry_window: Duration,
    /// The per-client circuit breaker.
    pub breaker: BreakerSettings,
    /// Name in alerts (`deliver-responsys`).
    pub source: String,
}

/// Default retry window: a CRM may be down for a day without losing an event.
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(24 * 3600);

impl DeliverSettings {
    /// Defaults for `crm`: 10 s doubling up to 15 min, for 24 h.
    pub fn for_crm(crm: Crm) -> Self {
        DeliverSettings {
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(15 * 60),
            retry_window: DEFAULT_RETRY_WINDOW,
            breaker: BreakerSettings::default(),
            source: format!("deliver-{crm}"),
        }
    }
}

/// A message as received from the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// Queue message id.
    pub message_id: String,
    /// Receipt handle of this receive.
    pub receipt_handle: String,
    /// Body.
    pub body: String,
    /// String message attributes.
    pub attributes: Vec<(String, String)>,
    /// `ApproximateReceiveCount`.
    pub receive_count: u32,
    /// When the message was queued (`SentTimestamp`), epoch ms: the retry window runs
    /// from it. Unknown: the window cannot run out.
    pub sent_at_ms: Option<i64>,
}

/// What one invocation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverOutcome {
    /// Message ids to redeliver (the partial batch failures). Every other message is
    /// done: delivered, or dead-lettered on purpose.
    pub redeliver: Vec<String>,
    /// Counts by (client, outcome kind): delivered, retried, throttled, dead_lettered.
    pub counts: BTreeMap<(String, &'static str), u64>,
    /// Receipt-to-delivery latencies (ms) of the delivered messages, by client.
    pub latencies_ms: Vec<(String, i64)>,
    /// Token refreshes forced by a rejected token.
    pub token_refreshes: u64,
    /// What happened to each message: the delivery log of `connect trace`.
    pub log: Vec<DeliveryLogEntry>,
}

/// One delivery attempt of one record (no email, no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryLogEntry {
    /// The record (`-` when the message could not be read).
    pub record_id: String,
    /// The client (`-` when unknown).
    pub client_id: String,
    /// `delivered`, `retried`, `throttled`, `dead_lettered`, `skipped_…`.
    pub outcome: &'static str,
    /// The CRM's status or reason, when there is one.
    pub detail: String,
}

/// One client's outcomes: (client, (batch position, outcome)…, forced refreshes).
type ClientResult = (ClientId, Vec<(usize, Outcome)>, u64);

/// What to do with one message.
enum Disposition {
    Done,
    /// Acknowledged without a CRM write (counted under the reason).
    Skipped(&'static str),
    Hide(Duration, &'static str),
    DeadLetter {
        reason: &'static str,
        status: String,
        detail: String,
    },
}

/// The deliver handler of one CRM.
pub struct DeliverHandler<D, T, S, Q, A, C> {
    crm: Crm,
    directory: D,
    tokens: std::sync::Arc<TokenManager<T, S, C>>,
    http: CrmHttp,
    queues: Q,
    alerts: A,
    clock: C,
    settings: DeliverSettings,
    breakers: Breakers,
    privacy: domain::privacy::Privacy,
}

impl<D, T, S, Q, A, C> std::fmt::Debug for DeliverHandler<D, T, S, Q, A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliverHandler")
            .field("crm", &self.crm)
            .finish()
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl<D, T, S, Q, A, C> DeliverHandler<D, T, S, Q, A, C>
where
    D: ClientDirectory,
    T: TokenStore,
    S: SecretStore,
    Q: QueueSender + QueueControl,
    A: AlertSink,
    C: Clock + Clone,
{
    /// A handler for `crm`'s queue.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        crm: Crm,
        directory: D,
        tokens: std::sync::Arc<TokenManager<T, S, C>>,
        http: CrmHttp,
        queues: Q,
        alerts: A,
        clock: C,
        settings: DeliverSettings,
    ) -> Self {
        DeliverHandler {
            crm,
            directory,
            tokens,
            http,
            queues,
            alerts,
            clock,
            breakers: Breakers::new(settings.breaker),
            privacy: domain::privacy::Privacy::default(),
            settings,
        }
    }

    /// Drops the messages of suppressed emails (erased people) before any CRM call
    /// (`privacy` may be shared with other handlers of the process: one cache).
    pub fn with_privacy(mut self, privacy: domain::privacy::Privacy) -> Self {
        self.privacy = privacy;
        self
    }

    /// The token manager (shared with the token schedule in `connect serve`).
    pub fn tokens(&self) -> &std::sync::Arc<TokenManager<T, S, C>> {
        &self.tokens
    }

    /// Delivers a batch; returns the messages to redeliver.
    pub async fn handle(&self, batch: &[InboundMessage]) -> DeliverOutcome {
        let mut outcome = DeliverOutcome::default();
        let mut dispositions: Vec<Option<Disposition>> = (0..batch.len()).map(|_| None).collect();
        let mut by_client: BTreeMap<ClientId, Vec<(usize, DeliveryMessage)>> = BTreeMap::new();
        let mut record_ids: Vec<Option<String>> = vec![None; batch.len()];
        for (i, m) in batch.iter().enumerate() {
            match serde_json::from_str::<DeliveryMessage>(&m.body) {
                Ok(d) if d.crm == self.crm && d.v == domain::delivery::MESSAGE_VERSION => {
                    record_ids[i] = Some(d.record_id.clone());
                    by_client
                        .entry(d.client_id.clone())
                        .or_default()
                        .push((i, d));
                }
                Ok(d) => {
                    dispositions[i] = Some(Disposition::DeadLetter {
                        reason: "malformed_message",
                        status: if d.v == domain::delivery::MESSAGE_VERSION {
                            "wrong_queue".into()
                        } else {
                            "unknown_version".into()
                        },
                        detail: format!(
                            "a v{} message for {} on the {} queue",
                            d.v, d.crm, self.crm
                        ),
                    });
                }
                Err(e) => {
                    dispositions[i] = Some(Disposition::DeadLetter {
                        reason: "malformed_message",
                        status: "invalid_body".into(),
                        detail: truncate(&e.to_string(), MAX_FAILURE_DETAIL),
                    });
                }
            }
        }
        // Receipt time of each parsed message (delivery latency), from the one parse.
        let received_at: HashMap<usize, i64> = by_client
            .values()
            .flatten()
            .map(|(i, d)| (*i, d.received_at))
            .collect();
        // Clients whose breaker is open are not called: their messages are held.
        let started = self.clock.now_ms();
        let mut results: Vec<ClientResult> = Vec::new();
        let mut held_until: HashMap<ClientId, i64> = HashMap::new();
        let mut window_alerts: BTreeMap<(String, &'static str), (u64, String)> = BTreeMap::new();
        let mut calls = Vec::new();
        for (client, messages) in by_client {
            match self.breakers.gate(&client, started) {
                Gate::Hold(until) => {
                    for (i, _) in &messages {
                        dispositions[*i] = Some(if self.window_over(&batch[*i], started) {
                            self.window_exhausted(
                                &client,
                                &mut window_alerts,
                                "circuit_open".to_owned(),
                                "the CRM kept failing for this client; the message was held by the circuit breaker".to_owned(),
                            )
                        } else {
                            let wait = Duration::from_millis(
                                u64::try_from(until - started).unwrap_or(0).max(1000),
                            );
                            Disposition::Hide(wait.min(MAX_VISIBILITY), "retried")
                        });
                    }
                    held_until.insert(client, until);
                }
                Gate::Call | Gate::Probe => calls.push((client, messages)),
            }
        }
        // The messages move into their client's call: nothing of them is copied.
        let mut calls = calls.into_iter().peekable();
        while calls.peek().is_some() {
            let futures: Vec<_> = calls
                .by_ref()
                .take(CLIENT_CONCURRENCY)
                .map(|(client, messages)| async move {
                    let result = self.deliver_client(&client, messages).await;
                    (client, result)
                })
                .collect();
            for (client, (outcomes, refreshes)) in futures_util::future::join_all(futures).await {
                let now = self.clock.now_ms();
                if let Some(until) = self.record_breaker(&client, &outcomes, now) {
                    held_until.insert(client.clone(), until);
                }
                results.push((client, outcomes, refreshes));
            }
        }

        let now = self.clock.now_ms();
        let mut alert_counts = window_alerts;
        for (client, outcomes, refreshes) in results {
            outcome.token_refreshes += refreshes;
            let breaker_wait = held_until
                .get(&client)
                .map(|until| Duration::from_millis(u64::try_from(until - now).unwrap_or(0)));
            for (i, o) in outcomes {
                let receive_count = batch[i].receive_count.max(1);
                let window_over = self.window_over(&batch[i], now);
                let d = match o {
                    Outcome::Delivered => {
                        outcome.latencies_ms.push((
                            client.to_string(),
                            now - received_at.get(&i).copied().unwrap_or(now),
                        ));
                        Disposition::Done
                    }
                    Outcome::Skipped { reason } => Disposition::Skipped(reason),
                    Outcome::RetryLater { status, reason } if window_over => {
                        self.window_exhausted(&client, &mut alert_counts, status, reason)
                    }
                    Outcome::TokenRejected { reason } if window_over => self.window_exhausted(
                        &client,
                        &mut alert_counts,
                        "token_rejected".to_owned(),
                        reason,
                    ),
                    Outcome::Throttled { status, wait } if window_over => self.window_exhausted(
                        &client,
                        &mut alert_counts,
                        status,
                        format!("throttled by the CRM (wait {} s)", wait.as_secs()),
                    ),
                    Outcome::RetryLater { .. } | Outcome::TokenRejected { .. } => {
                        let wait = self
                            .backoff(receive_count)
                            .max(breaker_wait.unwrap_or_default());
                        Disposition::Hide(wait.min(MAX_VISIBILITY), "retried")
                    }
                    Outcome::Throttled { wait, .. } => {
                        // The CRM's wait; once throttled a few times in a row, never
                        // shorter than the backoff, so a long throttle does not burn
                        // through the queue's receives.
                        let floor = if receive_count > THROTTLE_RECEIVES_AT_CRM_WAIT {
                            self.backoff(receive_count)
                        } else {
                            Duration::ZERO
                        };
                        let wait = wait.max(floor).max(breaker_wait.unwrap_or_default());
                        Disposition::Hide(wait.min(MAX_VISIBILITY), "throttled")
                    }
                    Outcome::Permanent { status, reason } => {
                        let kind = if status == "no_credentials"
                            || status == "unknown_client"
                            || status == "inactive_client"
                        {
                            "undeliverable_client"
                        } else {
                            "permanent_failure"
                        };
                        let e = alert_counts
                            .entry((client.to_string(), kind))
                            .or_insert((0, String::new()));
                        e.0 += 1;
                        if e.1.is_empty() {
                            e.1 = format!("{status}: {}", truncate(&reason, 200));
                        }
                        Disposition::DeadLetter {
                            reason: match status.as_str() {
                                "unknown_client" | "inactive_client" | "no_credentials"
                                | "invalid_target" => "client_config",
                                _ => "rejected_by_crm",
                            },
                            status,
                            detail: truncate(&reason, MAX_FAILURE_DETAIL),
                        }
                    }
                };
                dispositions[i] = Some(d);
            }
        }
        for ((client, kind), (count, example)) in alert_counts {
            self.alerts
                .alert(&Alert {
                    kind: kind.to_owned(),
                    source: self.settings.source.clone(),
                    crm: Some(self.crm),
                    client_id: ClientId::parse(&client).ok(),
                    count,
                    message: domain::redact::emails(&format!(
                        "{count} message(s) dead-lettered; first: {example}"
                    )),
                })
                .await;
        }
        self.apply(batch, dispositions, record_ids, &mut outcome)
            .await;
        outcome
    }

    /// Feeds a client's batch outcomes to its breaker; the epoch ms until which it is
    /// open, if it is.
    fn record_breaker(
        &self,
        client: &ClientId,
        outcomes: &[(usize, Outcome)],
        now: i64,
    ) -> Option<i64> {
        let delivered = outcomes.iter().any(|(_, o)| *o == Outcome::Delivered);
        let transient = |o: &Outcome| {
            matches!(
                o,
                Outcome::RetryLater { .. }
                    | Outcome::Throttled { .. }
                    | Outcome::TokenRejected { .. }
            )
        };
        if delivered {
            self.breakers.success(client);
            None
        } else if !outcomes.is_empty() && outcomes.iter().all(|(_, o)| transient(o)) {
            let throttle = outcomes
                .iter()
                .filter_map(|(_, o)| match o {
                    Outcome::Throttled { wait, .. } => Some(*wait),
                    _ => None,
                })
                .max();
            let until = self.breakers.failure(client, now, throttle);
            if let Some(until) = until {
                tracing::warn!(
                    crm = self.crm.as_str(),
                    clientId = %client,
                    openForMs = until - now,
                    "circuit open: the CRM keeps failing for this client; its messages are held"
                );
            }
            until
        } else {
            self.breakers.neutral(client);
            None
        }
    }

    /// Whether `m` was queued longer ago than the retry window.
    fn window_over(&self, m: &InboundMessage, now: i64) -> bool {
        let window = i64::try_from(self.settings.retry_window.as_millis()).unwrap_or(i64::MAX);
        m.sent_at_ms.is_some_and(|sent| now - sent >= window)
    }

    /// A transiently failing message past the retry window: to the DLQ, with an alert.
    fn window_exhausted(
        &self,
        client: &ClientId,
        alerts: &mut BTreeMap<(String, &'static str), (u64, String)>,
        status: String,
        reason: String,
    ) -> Disposition {
        let e = alerts
            .entry((client.to_string(), "retry_window_exhausted"))
            .or_insert((0, String::new()));
        e.0 += 1;
        if e.1.is_empty() {
            e.1 = format!(
                "still failing after {} h; last error {status}: {}",
                self.settings.retry_window.as_secs() / 3600,
                truncate(&reason, 200)
            );
        }
        Disposition::DeadLetter {
            reason: "retry_window_exhausted",
            status,
            detail: truncate(&reason, MAX_FAILURE_DETAIL),
        }
    }

    /// Backoff of the `n`-th receive: base × 2^(n−1), jittered ±20 %, capped.
    fn backoff(&self, receive_count: u32) -> Duration {
        let exp = receive_count.saturating_sub(1).min(16);
        let raw = self
            .settings
            .retry_base
            .saturating_mul(1u32 << exp)
            .min(self.settings.retry_max);
        let jitter = 0.8 + 0.4 * (f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0);
        raw.mul_f64(jitter)
            .min(self.settings.retry_max)
            .max(Duration::from_secs(1))
    }

    /// Delivers one client's messages, except those of suppressed emails (acknowledged
    /// as `suppressed`); one outcome per message, and the refreshes done.
    async fn deliver_client(
        &self,
        client_id: &ClientId,
        messages: Vec<(usize, DeliveryMessage)>,
    ) -> (Vec<(usize, Outcome)>, u64) {
        let mut decided = Vec::new();
        let mut positions = Vec::with_capacity(messages.len());
        let mut send = Vec::with_capacity(messages.len());
        for (i, m) in messages {
            match self.privacy.is_suppressed(client_id, &m.event.email).await {
                Ok(true) => decided.push((i, Outcome::skipped("skipped_suppressed"))),
                Ok(false) => {
                    positions.push(i);
                    send.push(m);
                }
                Err(e) => decided.push((i, Outcome::retry("suppressions", e.to_string()))),
            }
        }
        if send.is_empty() {
            return (decided, 0);
        }
        let (mut outcomes, refreshes) = self
            .deliver_unsuppressed(client_id, &positions, &send)
            .await;
        outcomes.extend(decided);
        (outcomes, refreshes)
    }

    /// Delivers `messages` (their batch positions in `positions`, in the same order).
    async fn deliver_unsuppressed(
        &self,
        client_id: &ClientId,
        positions: &[usize],
        messages: &[DeliveryMessage],
    ) -> (Vec<(usize, Outcome)>, u64) {
        let all = |o: Outcome| positions.iter().map(|i| (*i, o.clone())).collect();
        let client = match self.directory.client(client_id).await {
            Ok(Some(c)) if c.active && c.crm == self.crm => c,
            Ok(Some(c)) if !c.active => {
                return (
                    all(Outcome::permanent(
                        "inactive_client",
                        format!("client {client_id} is not active"),
                    )),
                    0,
                );
            }
            Ok(Some(c)) => {
                return (
                    all(Outcome::permanent(
                        "unknown_client",
                        format!("client {client_id} delivers to {}", c.crm),
                    )),
                    0,
                );
            }
            Ok(None) => {
                return (
                    all(Outcome::permanent(
                        "unknown_client",
                        format!("client {client_id} is not configured"),
                    )),
                    0,
                );
            }
            Err(e) => return (all(Outcome::retry("directory", e.to_string())), 0),
        };
        let policy = crm::destination(client.crm).auth_policy();
        let mut secret = None;
        if policy == crm::AuthPolicy::SignedWithSecret {
            // An unusable secret is `Rejected`: it alerts (like refused credentials) and
            // the messages are retried until it is fixed.
            match self.tokens.signing_secret(&client).await {
                Ok(s) => secret = Some(s),
                Err(e) => return (all(self.token_failure(&client, &e).await), 0),
            }
        }
        let api_key = match self.api_key(&client, policy, messages).await {
            Ok(k) => k,
            // A transient directory failure must not turn an API-key client into one
            // "without credentials" (which is permanent).
            Err(e) => return (all(Outcome::retry("directory", e.to_string())), 0),
        };
        let mut token = None;
        if policy.token().is_some() && (client.secret_name.is_some() || api_key.is_none()) {
            match self.tokens.current(&client).await {
                Ok(t) => token = Some(t),
                Err(e) => return (all(self.token_failure(&client, &e).await), 0),
            }
        }
        let auth = crm::Auth {
            token: token.as_ref(),
            api_key: api_key.as_ref(),
            secret: secret.as_ref(),
        };
        let mut outcomes = self.send(&client, auth, messages).await;
        let mut refreshes = 0;
        let rejected: Vec<usize> = (0..outcomes.len())
            .filter(|k| matches!(outcomes[*k], Outcome::TokenRejected { .. }))
            .collect();
        if !rejected.is_empty()
            && let Some(old) = &token
        {
            refreshes = 1;
            match self.tokens.after_rejection(&client, old).await {
                Ok(fresh) => {
                    let again: Vec<DeliveryMessage> =
                        rejected.iter().map(|k| messages[*k].clone()).collect();
                    let fresh_auth = crm::Auth {
                        token: Some(&fresh),
                        ..auth
                    };
                    let retried = self.send(&client, fresh_auth, &again).await;
                    for (k, o) in rejected.iter().zip(retried) {
                        outcomes[*k] = match o {
                            Outcome::TokenRejected { reason } => {
                                Outcome::retry("token_rejected_twice", reason)
                            }
                            other => other,
                        };
                    }
                }
                Err(e) => {
                    let o = self.token_failure(&client, &e).await;
                    for k in rejected {
                        outcomes[k] = o.clone();
                    }
                }
            }
        }
        (positions.iter().copied().zip(outcomes).collect(), refreshes)
    }

    async fn send(
        &self,
        client: &ClientConfig,
        auth: crm::Auth<'_>,
        messages: &[DeliveryMessage],
    ) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(crm::batch_limit(client)) {
            out.extend(crm::deliver(&self.http, client, auth, chunk).await);
        }
        out
    }

    /// The RD Station API key of a client without OAuth credentials (from the RD config
    /// of its messages' tid), for destinations whose token policy allows it.
    async fn api_key(
        &self,
        client: &ClientConfig,
        policy: crm::AuthPolicy,
        messages: &[DeliveryMessage],
    ) -> Result<Option<ApiKey>, domain::StoreError> {
        if !policy.token().is_some_and(|p| p.api_key_by_tid) || client.secret_name.is_some() {
            return Ok(None);
        }
        let Some(tid) = messages.iter().find_map(|m| m.event.tid.clone()) else {
            return Ok(None);
        };
        let Some(config) = self.directory.rdstation_by_tid(&tid).await? else {
            return Ok(None);
        };
        Ok(config.token.map(|key| ApiKey {
            key,
            base: config
                .endpoint
                .unwrap_or_else(|| crm::credentials::RDSTATION_API.to_owned()),
        }))
    }

    /// The outcome of messages whose token could not be had, with an alert.
    async fn token_failure(&self, client: &ClientConfig, e: &TokenError) -> Outcome {
        match e {
            TokenError::Transient(m) => Outcome::retry("token_unavailable", m.clone()),
            TokenError::NoCredentials(m) => {
                Outcome::permanent("no_credentials", format!("no credentials secret for {m}"))
            }
            TokenError::Rejected(m) => {
                self.alerts
                    .alert(&Alert {
                        kind: "credentials_rejected".into(),
                        source: self.settings.source.clone(),
                        crm: Some(self.crm),
                        client_id: Some(client.client_id.clone()),
                        count: 1,
                        message: format!(
                            "the CRM refused the credentials of {}: {m}",
                            client.client_id
                        ),
                    })
                    .await;
                // Kept for redelivery: once the credentials are fixed, they flow again.
                Outcome::retry("credentials_rejected", m.clone())
            }
        }
    }

    /// Carries out the dispositions: visibility changes, DLQ sends.
    async fn apply(
        &self,
        batch: &[InboundMessage],
        dispositions: Vec<Option<Disposition>>,
        mut record_ids: Vec<Option<String>>,
        outcome: &mut DeliverOutcome,
    ) {
        let now = self.clock.now_ms();
        let mut dead: Vec<(usize, OutgoingMessage)> = Vec::new();
        for (i, d) in dispositions.into_iter().enumerate() {
            let m = &batch[i];
            let client = m
                .attributes
                .iter()
                .find(|(k, _)| k == attr::CLIENT_ID)
                .map_or_else(|| "-".to_owned(), |(_, v)| v.clone());
            let record_id = record_ids
                .get_mut(i)
                .and_then(Option::take)
                .unwrap_or_else(|| "-".to_owned());
            let detail = match &d {
                Some(Disposition::DeadLetter { reason, status, .. }) => {
                    format!("{reason}: {status}")
                }
                Some(Disposition::Hide(wait, _)) => format!("next attempt in {} s", wait.as_secs()),
                _ => String::new(),
            };
            let kind: &'static str = match &d {
                Some(Disposition::Done) => "delivered",
                // No decision was made for it (a bug): never count it as delivered.
                None => "retried",
                Some(Disposition::Skipped(reason)) => reason,
                Some(Disposition::Hide(_, kind)) => kind,
                Some(Disposition::DeadLetter { .. }) => "dead_lettered",
            };
            *outcome.counts.entry((client.clone(), kind)).or_default() += 1;
            // One line per attempt: `connect trace` finds a record's attempts by recordId
            // (CloudWatch Logs Insights on AWS, the delivery log locally).
            tracing::info!(
                crm = self.crm.as_str(),
                recordId = %record_id,
                clientId = %client,
                outcome = kind,
                detail = %detail,
                "delivery"
            );
            outcome.log.push(DeliveryLogEntry {
                record_id,
                client_id: client,
                outcome: kind,
                detail,
            });
            match d {
                Some(Disposition::Done | Disposition::Skipped(_)) => {}
                None => {
                    tracing::error!(
                        crm = self.crm.as_str(),
                        "a message got no disposition; it is left for redelivery"
                    );
                    outcome.redeliver.push(m.message_id.clone());
                }
                Some(Disposition::Hide(wait, _)) => {
                    if let Err(e) = self
                        .queues
                        .change_visibility(self.crm, &m.receipt_handle, wait)
                        .await
                    {
                        tracing::warn!(error = %e, "could not change the visibility; the queue's own timeout applies");
                    }
                    outcome.redeliver.push(m.message_id.clone());
                }
                Some(Disposition::DeadLetter {
                    reason,
                    status,
                    detail,
                }) => {
                    let failure = [
                        attr::FAILURE_REASON,
                        attr::FAILURE_STATUS,
                        attr::FAILED_AT,
                        attr::ATTEMPTS,
                        "failureDetail",
                        "redrivenAt",
                        "redriveCount",
                    ];
                    let mut attributes: Vec<Attribute> = m
                        .attributes
                        .iter()
                        .filter(|(k, _)| !failure.contains(&k.as_str()) || k == "redriveCount")
                        .map(|(k, v)| (k.clone().into(), v.clone().into()))
                        .collect();
                    // SQS refuses empty attribute values: a CRM answer without a body
                    // must not make the DLQ send fail (the message would loop).
                    let non_empty = |v: String| {
                        if v.trim().is_empty() {
                            "-".to_owned()
                        } else {
                            v
                        }
                    };
                    attributes.extend([
                        (attr::FAILURE_REASON.into(), reason.to_owned().into()),
                        (attr::FAILURE_STATUS.into(), non_empty(status).into()),
                        (attr::FAILED_AT.into(), rfc3339(now).into()),
                        (attr::ATTEMPTS.into(), m.receive_count.to_string().into()),
                        ("failureDetail".into(), non_empty(detail).into()),
                    ]);
                    attributes.retain(|(_, v)| !v.is_empty());
                    dead.push((
                        i,
                        OutgoingMessage {
                            id: format!("m{i}"),
                            body: m.body.clone(),
                            attributes,
                        },
                    ));
                }
            }
        }
        for chunk in dead.chunks(10) {
            let messages: Vec<OutgoingMessage> = chunk.iter().map(|(_, m)| m.clone()).collect();
            let failed: Vec<String> = match self
                .queues
                .send_batch(self.crm, QueueKind::DeadLetter, &messages)
                .await
            {
                Ok(f) => f.into_iter().map(|f| f.id).collect(),
                Err(e) => {
                    tracing::error!(error = %e, "DLQ send failed; the messages stay for redelivery");
                    messages.iter().map(|m| m.id.clone()).collect()
                }
            };
            for (i, m) in chunk {
                if failed.contains(&m.id) {
                    outcome.redeliver.push(batch[*i].message_id.clone());
                }
            }
        }
    }
}
