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

use domain::{ClientConfig, DeliveryMessage, StoredToken};

/// Delivers a batch of one client's messages with `token`; one outcome per message, in
/// order. `api_key` is the RD Station per-client key, when there is one.
pub async fn deliver(
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
