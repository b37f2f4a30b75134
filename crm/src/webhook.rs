//! The signed generic webhook: a client's events POSTed as JSON to its own HTTPS URL.
//!
//! Body: `{"deliveryId", "clientId", "sentAt", "events": [<delivery message>, …]}`, one
//! to `batch_size` (1–100) events per call; each event is the delivery message as on
//! the queue (`recordId` is the receiver's idempotency key: a retried call may carry a
//! different set of events). Signed like Stripe's webhooks:
//! `Connect-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, one
//! `v1` per key while a key is being rotated.
//!
//! Answers: 2xx delivered; 408, 429 and 5xx retried (after `Retry-After` when given,
//! seconds or an HTTP date); timeouts and connection errors retried; any other status
//! (3xx included: a signed POST is never re-sent elsewhere) dead-lettered with it.

use crate::http::{AuthError, CrmHttp, base_url};
use crate::outcome::{Outcome, from_transport};
use domain::{ClientConfig, DeliveryMessage, Secret};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use std::time::{Duration, SystemTime};

/// Events per call unless the target says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 10;
/// Most events per call.
pub const MAX_BATCH_SIZE: usize = 100;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "Connect-Signature";
/// Wait after a 429 without `Retry-After`.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured (a longer one is cut to this; the message is retried
/// then, and again until the retry window closes).
pub const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// A client's webhook target.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookTarget {
    /// Where to POST: `https://…` (plain `http://` only to a loopback host).
    pub url: String,
    /// Events per call, 1–100 (default 10).
    #[serde(alias = "batchSize")]
    pub batch_size: Option<usize>,
}

impl WebhookTarget {
    /// The target of a client, checked.
    pub fn from_client(client: &ClientConfig) -> Result<Self, String> {
        let t: WebhookTarget = crate::target::parse(client)?;
        let bad = |m: String| format!("client {} has an invalid target: {m}", client.client_id);
        let url = reqwest::Url::parse(&t.url)
            .map_err(|e| bad(format!("url {:?} is not a URL ({e})", t.url)))?;
        let loopback = matches!(url.host(), Some(url::Host::Domain("localhost")))
            || matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => return Err(bad("url must be https:// (events carry emails)".into())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "url must not hold credentials (the signature authenticates the calls)".into(),
            ));
        }
        if let Some(n) = t.batch_size
            && !(1..=MAX_BATCH_SIZE).contains(&n)
        {
            return Err(bad(format!(
                "batch_size must be 1–{MAX_BATCH_SIZE}, not {n}"
            )));
        }
        Ok(t)
    }
}

/// The signing secret: `{"signingSecret": "…"}`, with `"previousSigningSecret"` while a
/// rotation is under way (both sign every call).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCredentials {
    /// The current key.
    pub signing_secret: Secret<String>,
    /// The key being retired, if any.
    #[serde(default)]
    pub previous_signing_secret: Option<Secret<String>>,
}

/// `t=<t>,v1=<hex>[,v1=<hex>]` for `body` at `t` (unix seconds).
pub fn signature(keys: &[&str], t: u64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for key in keys {
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) else {
            continue;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

/// The wait a `Retry-After` value asks for (delta seconds or an HTTP date), bounded.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(LONGEST_RETRY_AFTER))
}

/// The outcome of every event of a call answered `status`.
pub fn classify(status: u16, retry_after_header: Option<&str>, now: SystemTime) -> Outcome {
    let wait = retry_after_header.and_then(|v| retry_after(v, now));
    let code = format!("http_{status}");
    match status {
        200..=299 => Outcome::Delivered,
        429 => Outcome::throttled(wait.unwrap_or(DEFAULT_THROTTLE), code),
        408 | 500..=599 => match wait {
            Some(w) => Outcome::throttled(w, code),
            None => Outcome::retry(code, format!("the webhook answered {status}")),
        },
        300..=399 => Outcome::permanent(
            code,
            format!(
                "the webhook answered {status} (redirects are not followed: set the final URL)"
            ),
        ),
        _ => Outcome::permanent(code, format!("the webhook refused the call with {status}")),
    }
}

fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs and POSTs `events` for `client`: the answer's status and `Retry-After`.
async fn post(
    http: &CrmHttp,
    client: &ClientConfig,
    target: &WebhookTarget,
    secret: &Secret<String>,
    delivery_id: String,
    events: &[DeliveryMessage],
) -> Result<(u16, Option<String>), Outcome> {
    let creds: WebhookCredentials =
        crate::credentials::parse(domain::Crm::WEBHOOK, secret.expose())
            // Kept for redelivery: once the secret is fixed, the events flow again.
            .map_err(|e| Outcome::retry("credentials_rejected", e.to_string()))?;
    let now = SystemTime::now();
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let body = serde_json::json!({
        "deliveryId": delivery_id,
        "clientId": client.client_id,
        "sentAt": domain::delivery::rfc3339(now_ms),
        "events": events,
    });
    let body = serde_json::to_vec(&body)
        .map_err(|e| Outcome::permanent("unserializable", e.to_string()))?;
    let mut keys = vec![creds.signing_secret.expose().as_str()];
    if let Some(previous) = &creds.previous_signing_secret {
        keys.push(previous.expose().as_str());
    }
    let sig = signature(&keys, unix_seconds(now), &body);
    let res = http
        .client
        .post(base_url(&target.url))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sig)
        .body(body)
        .send()
        .await
        .map_err(|e| from_transport(&e))?;
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((res.status().as_u16(), retry_after))
}

/// POSTs one batch (≤ the target's batch size); one outcome per message.
pub async fn deliver(
    http: &CrmHttp,
    client: &ClientConfig,
    secret: Option<&Secret<String>>,
    messages: &[DeliveryMessage],
) -> Vec<Outcome> {
    let all = |o: Outcome| vec![o; messages.len()];
    let target = match WebhookTarget::from_client(client) {
        Ok(t) => t,
        Err(e) => return all(Outcome::permanent("invalid_target", e)),
    };
    let Some(secret) = secret else {
        return all(Outcome::permanent(
            "no_credentials",
            format!("no signing secret for {}", client.client_id),
        ));
    };
    // The first record and the count name the call in the receiver's logs.
    let first = messages.first().map_or("", |m| m.record_id.as_str());
    let id = format!("{first}+{}", messages.len());
    match post(http, client, &target, secret, id, messages).await {
        Ok((status, retry_after)) => {
            all(classify(status, retry_after.as_deref(), SystemTime::now()))
        }
        Err(outcome) => all(outcome),
    }
}

/// The signed generic webhook.
#[derive(Debug, Clone, Copy)]
pub struct Webhook;

#[async_trait::async_trait]
impl crate::Destination for Webhook {
    fn crm(&self) -> domain::Crm {
        domain::Crm::WEBHOOK
    }

    fn auth_policy(&self) -> crate::AuthPolicy {
        crate::AuthPolicy::SignedWithSecret
    }

    fn validate_target(&self, client: &ClientConfig) -> Result<(), String> {
        WebhookTarget::from_client(client).map(drop)
    }

    fn validate_credentials(&self, secret: &str) -> Result<(), AuthError> {
        let creds: WebhookCredentials = crate::credentials::parse(self.crm(), secret)?;
        if creds.signing_secret.expose().len() < 16 {
            return Err(AuthError::BadSecret(
                "signingSecret must be at least 16 characters".into(),
            ));
        }
        Ok(())
    }

    fn batch_limit(&self, client: &ClientConfig) -> usize {
        WebhookTarget::from_client(client)
            .ok()
            .and_then(|t| t.batch_size)
            .unwrap_or(DEFAULT_BATCH_SIZE)
    }

    async fn deliver(
        &self,
        http: &CrmHttp,
        client: &ClientConfig,
        auth: crate::Auth<'_>,
        messages: &[DeliveryMessage],
    ) -> Vec<Outcome> {
        deliver(http, client, auth.secret, messages).await
    }

    /// A signed ping (`"events": []`, `deliveryId` `ping-…`): the URL answers and takes
    /// the signature. Receivers should answer it 2xx and ignore it.
    async fn check_target(
        &self,
        http: &CrmHttp,
        client: &ClientConfig,
        auth: crate::Auth<'_>,
    ) -> Option<Result<String, String>> {
        let secret = auth.secret?;
        let target = match WebhookTarget::from_client(client) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let id = format!("ping-{}", uuid::Uuid::new_v4().simple());
        Some(match post(http, client, &target, secret, id, &[]).await {
            Ok((status, _)) if (200..300).contains(&status) => Ok(format!(
                "{} answered a signed ping with {status}",
                target.url
            )),
            Ok((status, _)) => Err(format!(
                "{} answered a signed ping with {status}: check the URL and that the receiver verifies with this signing secret",
                target.url
            )),
            Err(outcome) => Err(format!("{} could not be reached: {outcome:?}", target.url)),
        })
    }

    fn demo(&self, sandbox: &str) -> crate::Demo {
        crate::Demo {
            target: Some(serde_json::json!({"url": format!("{sandbox}/webhook/events")})),
            credentials: serde_json::json!({"signingSecret": DEMO_SIGNING_SECRET}),
        }
    }
}

/// The demo client's signing secret (the sandbox twin knows it).
pub const DEMO_SIGNING_SECRET: &str = "demo-webhook-signing-secret";

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AllowedOrigins, ClientId, ClientPolicy, Crm};

    fn client(target: serde_json::Value) -> ClientConfig {
        ClientConfig {
            client_id: ClientId::parse("shop").expect("id"),
            crm: Crm::WEBHOOK,
            active: true,
            allowed_origins: AllowedOrigins::default(),
            target: Some(target),
            secret_name: Some("/connect/webhook/shop/credentials".into()),
            rate_limit_per_second: None,
            policy: ClientPolicy::default(),
        }
    }

    #[test]
    fn signature_matches_an_independent_computation() {
        // Python: hmac.new(b"whsec_test", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest()
        let sig = signature(&["whsec_test"], 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        let two = signature(&["a", "b"], 1, b"x");
        assert_eq!(two.matches(",v1=").count(), 2);
        assert_ne!(signature(&["a"], 1, b"x"), signature(&["a"], 2, b"x"));
        assert_ne!(signature(&["a"], 1, b"x"), signature(&["b"], 1, b"x"));
    }

    #[test]
    fn answers_are_classified() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(classify(204, None, now), Outcome::Delivered);
        assert_eq!(
            classify(429, Some("7"), now),
            Outcome::throttled(Duration::from_secs(7), "http_429")
        );
        assert_eq!(
            classify(429, None, now),
            Outcome::throttled(DEFAULT_THROTTLE, "http_429")
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            classify(503, Some(&date), now),
            Outcome::throttled(Duration::from_secs(120), "http_503")
        );
        assert_eq!(
            classify(503, Some("86400"), now),
            Outcome::throttled(LONGEST_RETRY_AFTER, "http_503")
        );
        assert_eq!(classify(500, None, now).kind(), "retry_later");
        assert_eq!(classify(408, None, now).kind(), "retry_later");
        assert_eq!(classify(503, Some("soon"), now).kind(), "retry_later");
        for status in [301, 302, 400, 401, 403, 404, 410, 422] {
            match classify(status, None, now) {
                Outcome::Permanent { status: s, .. } => assert_eq!(s, format!("http_{status}")),
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn targets_are_checked() {
        assert!(
            WebhookTarget::from_client(&client(
                serde_json::json!({"url": "https://hooks.example/c"})
            ))
            .is_ok()
        );
        assert!(
            WebhookTarget::from_client(&client(serde_json::json!({"url": "http://127.0.0.1:9/x"})))
                .is_ok()
        );
        for (target, key) in [
            (
                serde_json::json!({"url": "http://hooks.example/c"}),
                "https",
            ),
            (serde_json::json!({"url": "not a url"}), "url"),
            (serde_json::json!({}), "url"),
            (
                serde_json::json!({"url": "https://u:p@hooks.example"}),
                "credentials",
            ),
            (
                serde_json::json!({"url": "https://hooks.example", "batch_size": 0}),
                "batch_size",
            ),
            (
                serde_json::json!({"url": "https://hooks.example", "batch_size": 101}),
                "batch_size",
            ),
            (
                serde_json::json!({"url": "https://hooks.example", "secret": "x"}),
                "secret",
            ),
        ] {
            let err = WebhookTarget::from_client(&client(target.clone())).expect_err("invalid");
            assert!(err.contains(key), "{target}: {err}");
        }
        let c = client(serde_json::json!({"url": "https://hooks.example", "batch_size": 1}));
        assert_eq!(crate::Destination::batch_limit(&Webhook, &c), 1);
        let c = client(serde_json::json!({"url": "https://hooks.example"}));
        assert_eq!(
            crate::Destination::batch_limit(&Webhook, &c),
            DEFAULT_BATCH_SIZE
        );
    }
}
