//! The destinations.
//!
//! Each destination is one module ([`responsys`], [`sfmc`], [`rdstation`], [`webhook`])
//! implementing [`Destination`]: it checks a client's [`target`], authenticates
//! (credentials → [`AuthToken`] with expiry and API base, or a signing secret), delivers
//! a batch of one client's messages and classifies every response into the [`Outcome`]
//! classes — per record, not per call. [`destination::REGISTRY`] is where they are
//! registered. [`tokens::TokenManager`] is the one
//! token-refresh logic, used by the `deliver` and `token` handlers alike.

pub mod credentials;
pub mod destination;
pub mod http;
pub mod outcome;
pub mod rdstation;
pub mod responsys;
pub mod sfmc;
pub mod target;
pub mod tokens;
pub mod webhook;

pub use destination::{Auth, AuthPolicy, Demo, Destination, REGISTRY, TokenPolicy, destination};
pub use http::{AuthError, AuthToken, CrmHttp, HttpSettings};
pub use outcome::Outcome;
pub use tokens::{Credential, Refreshed, TokenError, TokenManager};

use domain::{ClientConfig, DeliveryMessage};

/// Delivers a batch of one client's messages through its destination; one outcome per
/// message, in order. Messages the destination skips on purpose are not sent.
pub async fn deliver(
    http: &CrmHttp,
    client: &ClientConfig,
    auth: Auth<'_>,
    messages: &[DeliveryMessage],
) -> Vec<Outcome> {
    let dest = destination(client.crm);
    let skipped = dest.skip(client, messages);
    if skipped.iter().all(Option::is_none) {
        return dest.deliver(http, client, auth, messages).await;
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
        dest.deliver(http, client, auth, &send).await
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

/// Most messages of one client sent in one call.
pub fn batch_limit(client: &ClientConfig) -> usize {
    destination(client.crm).batch_limit(client).max(1)
}
