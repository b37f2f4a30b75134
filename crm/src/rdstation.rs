//! RD Station Marketing: OAuth refresh (`/auth/token`), or the per-client API key for
//! CONVERSION events; one event per `POST /platform/events` call, with bounded
//! concurrency. cart_abandoned / checkout / purchase become ECOMMERCE_* events (the
//! legacy ORDER_PLACED / CART_ABANDONED types were removed at the end of 2025), every
//! other type a CONVERSION with a `conversion_identifier`.

use crate::credentials::{RDSTATION_API, RdStationCredentials};
use crate::http::{Answer, AuthError, AuthToken, CrmHttp, answer, base_url};
use crate::outcome::{Outcome, from_transport};
use crate::target::{RdStationTarget, field};
use domain::{ClientConfig, DeliveryMessage, EventType, Secret, StoredToken};
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::time::Duration;

/// Events sent at once for one client (RD allows 120–500 requests per minute).
pub const CONCURRENCY: usize = 4;
/// Most messages of one client handled per invocation (one call each).
pub const MAX_EVENTS_PER_INVOCATION: usize = 50;
/// A 429 whose wait is longer than this is a per-lead daily limit: retrying within the
/// message's life is pointless, so the record is refused for good with that reason.
pub const LONGEST_THROTTLE: Duration = Duration::from_secs(3600);

/// A per-client API key (CONVERSION events only) and the API base it is used with.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The key.
    pub key: Secret<String>,
    /// API base URL.
    pub base: String,
}

/// Exchanges the refresh token for an access token. A refresh token in the answer is
/// returned too (rotation), so the caller can save it.
pub async fn authenticate(
    http: &CrmHttp,
    creds: &RdStationCredentials,
    now_ms: i64,
) -> Result<AuthToken, AuthError> {
    let auth = base_url(creds.auth_url.as_deref().unwrap_or(RDSTATION_API));
    let res = http
        .client
        .post(format!("{auth}/auth/token"))
        .json(&json!({
            "client_id": creds.client_id,
            "client_secret": creds.client_secret.expose(),
            "refresh_token": creds.refresh_token.expose(),
        }))
        .send()
        .await
        .map_err(|e| AuthError::Transient(e.to_string()))?;
    let Answer { status, body, .. } = answer(res, &[]).await;
    if (200..300).contains(&status) {
        let token = body["access_token"].as_str().unwrap_or_default();
        if token.is_empty() {
            return Err(AuthError::Transient(
                "token answer without access_token".into(),
            ));
        }
        let expires_in = body["expires_in"].as_i64().unwrap_or(86_400);
        return Ok(AuthToken {
            access_token: Secret::new(token.to_owned()),
            api_endpoint: base_url(creds.api_url.as_deref().unwrap_or(RDSTATION_API)),
            issued_at: now_ms,
            expires_at: now_ms + expires_in * 1000,
            refresh_token: body["refresh_token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(|t| Secret::new(t.to_owned())),
        });
    }
    let kind = body["error_type"].as_str().unwrap_or("");
    if status == 429 || status >= 500 {
        Err(AuthError::Transient(format!("{status} {kind}")))
    } else {
        Err(AuthError::Rejected(format!(
            "{status} {kind}: {}",
            body["error_message"].as_str().unwrap_or("")
        )))
    }
}

/// The event type and payload of a message.
pub fn event(target: &RdStationTarget, m: &DeliveryMessage) -> (&'static str, Value) {
    let email = m.event.email.as_str();
    let ecommerce = |kind: &'static str| {
        let identifier = field(m, "properties.cartId")
            .or_else(|| field(m, "properties.orderId"))
            .unwrap_or(Cow::Borrowed(&m.record_id));
        let mut p = Map::new();
        p.insert("email".into(), json!(email));
        p.insert("identifier".into(), json!(identifier));
        p.insert("currency".into(), json!(target.currency));
        p.insert("price".into(), json!(m.event.product_price.unwrap_or(0.0)));
        if let Some(url) = field(m, "properties.checkoutUrl").filter(|u| u.starts_with("http")) {
            p.insert("checkout_url".into(), json!(url));
        }
        if let Some(id) = &m.event.product_id {
            let mut item = Map::new();
            item.insert("product_id".into(), json!(id));
            item.insert("sku".into(), json!(id));
            item.insert(
                "product_title".into(),
                json!(m.event.product_name.clone().unwrap_or_else(|| id.clone())),
            );
            item.insert("price".into(), json!(m.event.product_price.unwrap_or(0.0)));
            item.insert("quantity".into(), json!(1));
            if let Some(u) = &m.event.product_url {
                item.insert("product_url".into(), json!(u));
            }
            if let Some(u) = &m.event.product_image {
                item.insert("image_url".into(), json!(u));
            }
            p.insert("total_items".into(), json!(1));
            p.insert("line_items".into(), json!([item]));
        }
        (kind, Value::Object(p))
    };
    match m.event.event_type {
        EventType::CartAbandoned => ecommerce("ECOMMERCE_CART_ABANDONED"),
        EventType::Checkout => ecommerce("ECOMMERCE_CHECKOUT_STARTED"),
        EventType::Purchase => ecommerce("ECOMMERCE_ORDER_PLACED"),
        _ => conversion(target, m),
    }
}

/// The `CONVERSION` event of a message: `conversion_identifier` is the event type (or
/// the target's `conversion_identifiers` entry for it), with the `cf_*` fields. It is
/// what an API key can send, so API-key clients get every event type this way.
pub fn conversion(target: &RdStationTarget, m: &DeliveryMessage) -> (&'static str, Value) {
    let kind = m.event.event_type.as_str();
    let identifier = target
        .conversion_identifiers
        .get(kind)
        .cloned()
        .unwrap_or_else(|| kind.to_owned());
    let mut p = Map::new();
    p.insert("conversion_identifier".into(), json!(identifier));
    p.insert("email".into(), json!(m.event.email.as_str()));
    for (cf, f) in target.custom_fields() {
        if let Some(v) = field(m, &f) {
            p.insert(cf, json!(v));
        }
    }
    ("CONVERSION", Value::Object(p))
}

/// Classifies a non-success answer.
pub fn classify(status: u16, www_authenticate: Option<&str>, body: &Value) -> Outcome {
    match status {
        401 => Outcome::token_rejected(
            if www_authenticate.is_some_and(|h| h.contains("expired_token")) {
                "expired_token"
            } else {
                "401"
            },
        ),
        429 => {
            let wait = Duration::from_secs(body["remaining_time"].as_u64().unwrap_or(60));
            let what = body["error"].as_str().unwrap_or("rate limit exceeded");
            if wait > LONGEST_THROTTLE {
                Outcome::permanent(
                    "429",
                    format!(
                        "RD Station limit for this lead reached ({what}); retry after {} s",
                        wait.as_secs()
                    ),
                )
            } else {
                Outcome::throttled(wait, "429")
            }
        }
        s if s >= 500 || s == 408 => Outcome::retry(s.to_string(), body.to_string()),
        s => {
            let (kind, message) = match body {
                Value::Array(a) => (
                    a.first()
                        .and_then(|e| e["error_type"].as_str())
                        .unwrap_or(""),
                    a.first()
                        .and_then(|e| e["error_message"].as_str())
                        .unwrap_or(""),
                ),
                _ => (
                    body["error_type"].as_str().unwrap_or(""),
                    body["error_message"].as_str().unwrap_or(""),
                ),
            };
            Outcome::permanent(
                if kind.is_empty() {
                    s.to_string()
                } else {
                    format!("{s}/{kind}")
                },
                message,
            )
        }
    }
}

/// Delivers one client's messages, one call each, [`CONCURRENCY`] at a time.
pub async fn deliver(
    http: &CrmHttp,
    client: &ClientConfig,
    token: Option<&StoredToken>,
    api_key: Option<&ApiKey>,
    messages: &[DeliveryMessage],
) -> Vec<Outcome> {
    let target = match RdStationTarget::from_client(client) {
        Ok(t) => t,
        Err(e) => return vec![Outcome::permanent("invalid_target", e); messages.len()],
    };
    let mut out = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(CONCURRENCY) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|m| send(http, &target, token, api_key, m))
            .collect();
        out.extend(futures_util::future::join_all(calls).await);
    }
    out
}

async fn send(
    http: &CrmHttp,
    target: &RdStationTarget,
    token: Option<&StoredToken>,
    api_key: Option<&ApiKey>,
    m: &DeliveryMessage,
) -> Outcome {
    // OAuth clients send e-commerce events as such; an API key covers conversions only,
    // so API-key clients send every event as a conversion (as the system Connect
    // replaces did).
    let (event_type, payload) = if token.is_some() {
        event(target, m)
    } else {
        conversion(target, m)
    };
    let body = json!({"event_type": event_type, "event_family": "CDP", "payload": payload});
    let request = match (token, api_key) {
        (Some(t), _) => http
            .client
            .post(format!("{}/platform/events", t.api_endpoint))
            .query(&[("event_type", event_type)])
            .bearer_auth(t.access_token.expose()),
        (None, Some(k)) => http
            .client
            .post(format!("{}/platform/conversions", base_url(&k.base)))
            .query(&[("api_key", k.key.expose().as_str())]),
        (None, None) => return Outcome::token_rejected("no token"),
    };
    match request.json(&body).send().await {
        Err(e) => from_transport(&e),
        Ok(res) => {
            let a = answer(
                res,
                &["www-authenticate", "x-amzn-remapped-www-authenticate"],
            )
            .await;
            if a.ok() {
                Outcome::Delivered
            } else {
                classify(a.status, a.header.as_deref(), &a.body)
            }
        }
    }
}

/// RD Station Marketing.
#[derive(Debug, Clone, Copy)]
pub struct RdStation;

#[async_trait::async_trait]
impl crate::Destination for RdStation {
    fn crm(&self) -> domain::Crm {
        domain::Crm::RDSTATION
    }

    fn auth_policy(&self) -> crate::AuthPolicy {
        crate::AuthPolicy::Token(crate::TokenPolicy {
            rotating_refresh_token: true,
            reuse_tokens: false,
            api_key_by_tid: true,
        })
    }

    fn validate_target(&self, client: &ClientConfig) -> Result<(), String> {
        RdStationTarget::from_client(client).map(drop)
    }

    fn validate_credentials(&self, secret: &str) -> Result<(), AuthError> {
        crate::credentials::parse::<crate::credentials::RdStationCredentials>(self.crm(), secret)
            .map(drop)
    }

    fn batch_limit(&self, _client: &ClientConfig) -> usize {
        MAX_EVENTS_PER_INVOCATION
    }

    /// RD Station's events API has no update-only mode: an event that may not create a
    /// contact is not sent.
    fn skip(&self, client: &ClientConfig, messages: &[DeliveryMessage]) -> Vec<Option<Outcome>> {
        messages
            .iter()
            .map(|m| {
                (!client.policy.create_contacts.may_create(m.event.event_type))
                    .then(|| Outcome::skipped("skipped_update_only_unsupported"))
            })
            .collect()
    }

    async fn authenticate(
        &self,
        http: &CrmHttp,
        secret: &str,
        _current: Option<&StoredToken>,
        now_ms: i64,
    ) -> Result<AuthToken, AuthError> {
        let creds = crate::credentials::parse(self.crm(), secret)?;
        authenticate(http, &creds, now_ms).await
    }

    async fn deliver(
        &self,
        http: &CrmHttp,
        client: &ClientConfig,
        auth: crate::Auth<'_>,
        messages: &[DeliveryMessage],
    ) -> Vec<Outcome> {
        deliver(http, client, auth.token, auth.api_key, messages).await
    }

    fn demo(&self, sandbox: &str) -> crate::Demo {
        crate::Demo {
            target: None,
            credentials: serde_json::json!({"clientId": "demo-rdstation", "clientSecret": "demo",
                "refreshToken": "demo-refresh-token",
                "authUrl": format!("{sandbox}/rdstation"), "apiUrl": format!("{sandbox}/rdstation")}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            classify(401, Some(r#"Bearer error="expired_token""#), &Value::Null),
            Outcome::token_rejected("expired_token")
        );
        let short =
            json!({"error": "rate limit exceeded", "max": 120, "usage": 121, "remaining_time": 20});
        assert_eq!(
            classify(429, None, &short),
            Outcome::throttled(Duration::from_secs(20), "429")
        );
        let lead = json!({"error": "'lead_limiter' rate limit exceeded for 86400 second(s) period for key 'x'", "max": 24, "usage": 25, "remaining_time": 43067});
        assert_eq!(classify(429, None, &lead).kind(), "permanent");
        let invalid = json!([{"error_type": "INVALID_OPTION", "error_message": "bad", "path": "$.event_type"}]);
        assert_eq!(
            classify(400, None, &invalid),
            Outcome::permanent("400/INVALID_OPTION", "bad")
        );
        assert_eq!(classify(503, None, &Value::Null).kind(), "retry_later");
    }
}
