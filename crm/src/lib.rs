//! The CRM clients.
//!
//! Each CRM module ([`responsys`], [`sfmc`], [`rdstation`]) can authenticate (credentials
//! → [`AuthToken`] with expiry and API base), deliver a batch of one client's messages
//! to that client's [`target`], and classify every response into the [`Outcome`]
//! classes of DESIGN.md — per record, not per call. [`tokens::TokenManager`] is the one
//! token-refresh logic, used by the `deliver` and `token` handlers alike.

pub mod credentials;
pub mod http;
pub mod outcome;
pub mod rdstation;
pub mod responsys;
pub mod sfmc;
pub mod target;
pub mod tokens;

pub use credentials::Credentials;
pub use http::{AuthError, AuthToken, CrmHttp, HttpSettings};
pub use outcome::Outcome;
pub use tokens::{Refreshed, TokenError, TokenManager};

use domain::{ClientConfig, Crm, DeliveryMessage, StoredToken};

/// Why a message is not sent at all, decided before any call: a journey target that
/// does not take its event type, or an RD Station event that may not create a contact
/// (RD Station's events API has no update-only mode).
fn skip(
    client: &ClientConfig,
    journey_types: Option<&[domain::EventType]>,
    m: &DeliveryMessage,
) -> Option<Outcome> {
    match client.crm {
        Crm::Salesforce => journey_types
            .filter(|types| !types.contains(&m.event.event_type))
            .map(|_| Outcome::skipped("skipped_event_type")),
        Crm::RdStation => (!client.policy.create_contacts.may_create(m.event.event_type))
            .then(|| Outcome::skipped("skipped_update_only_unsupported")),
        Crm::Responsys => None,
    }
}

/// Delivers a batch of one client's messages with `token`; one outcome per message, in
/// order. `api_key` is the RD Station per-client key, when there is one.
pub async fn deliver(
    http: &CrmHttp,
    client: &ClientConfig,
    token: Option<&StoredToken>,
    api_key: Option<&rdstation::ApiKey>,
    messages: &[DeliveryMessage],
) -> Vec<Outcome> {
    let journey = (client.crm == Crm::Salesforce)
        .then(|| target::SfmcTarget::from_client(client).ok())
        .flatten()
        .filter(|t| t.kind == target::SfmcKind::Journey);
    let journey_types = journey.as_ref().map(|t| t.journey_event_types.as_slice());
    let skipped: Vec<Option<Outcome>> = messages
        .iter()
        .map(|m| skip(client, journey_types, m))
        .collect();
    if skipped.iter().all(Option::is_none) {
        return deliver_all(http, client, token, api_key, messages).await;
    }
    let send: Vec<DeliveryMessage> = messages
        .iter()
        .zip(&skipped)
        .filter(|(_, s)| s.is_none())
        .map(|(m, _)| m.clone())
        .collect();
    let mut sent = if send.is_empty() {
        Vec::new()
    } else {
        deliver_all(http, client, token, api_key, &send).await
    }
    .into_iter();
    skipped
        .into_iter()
        .map(|s| {
            s.or_else(|| sent.next()).unwrap_or_else(|| {
                Outcome::retry("incomplete_answer", "no outcome for this message")
            })
        })
        .collect()
}

async fn deliver_all(
    http: &CrmHttp,
    client: &ClientConfig,
    token: Option<&StoredToken>,
    api_key: Option<&rdstation::ApiKey>,
    messages: &[DeliveryMessage],
) -> Vec<Outcome> {
    match client.crm {
        domain::Crm::Responsys => match token {
            Some(t) => responsys::deliver(http, client, t, messages).await,
            None => vec![Outcome::token_rejected("no token"); messages.len()],
        },
        domain::Crm::Salesforce => match token {
            Some(t) => sfmc::deliver(http, client, t, messages).await,
            None => vec![Outcome::token_rejected("no token"); messages.len()],
        },
        domain::Crm::RdStation => rdstation::deliver(http, client, token, api_key, messages).await,
    }
}

/// Most messages of one client sent in one CRM call.
pub fn batch_limit(client: &ClientConfig) -> usize {
    match client.crm {
        domain::Crm::Responsys => responsys::MAX_RECORDS_PER_CALL,
        domain::Crm::Salesforce => target::SfmcTarget::from_client(client)
            .map_or(sfmc::DEFAULT_ROWS_PER_CALL, |t| t.batch_size),
        domain::Crm::RdStation => rdstation::MAX_EVENTS_PER_INVOCATION,
    }
}
