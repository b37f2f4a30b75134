//! The webhook twin (`/webhook/…`): a receiver as a client would write it. Every call
//! must carry a valid `Connect-Signature: t=…,v1=…` (HMAC-SHA256 of `"{t}.{body}"` with
//! the demo signing secret or one registered through `POST /_sandbox/webhook/secrets`),
//! at most 5 minutes old; each event of the body is recorded. Faults: `unavailable`
//! (503 with `Retry-After`), `throttle` (429 with `Retry-After`), `reject` (422 for the
//! whole call), `slow`, `html_error`; `expire_tokens` changes nothing (no tokens).

use crate::{Sandbox, json_response};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

/// The demo client's signing secret (`crm::webhook::DEMO_SIGNING_SECRET`).
pub const DEMO_SIGNING_SECRET: &str = "demo-webhook-signing-secret";
/// Oldest signature timestamp accepted, in seconds either way.
pub const TOLERANCE_SECONDS: i64 = 300;
/// `Retry-After` of the fault answers, in seconds.
const RETRY_AFTER_SECONDS: u64 = 1;

/// The routes, under `/webhook`, and the secret registration.
pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/webhook/{*path}", post(receive))
        .route("/_sandbox/webhook/secrets", post(add_secret))
}

/// Whether `header` signs `body` with one of `secrets` at a time within the tolerance
/// of `now` (unix seconds). `Err` names what is wrong.
pub fn verify(header: &str, body: &[u8], secrets: &[String], now: i64) -> Result<(), &'static str> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(hex::decode(v).map_err(|_| "v1 is not hex")?),
            _ => {}
        }
    }
    let t = t.ok_or("no t= timestamp")?;
    if signatures.is_empty() {
        return Err("no v1= signature");
    }
    if (now - t).abs() > TOLERANCE_SECONDS {
        return Err("timestamp outside the tolerance");
    }
    for secret in secrets {
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        // Constant-time comparison, as a receiver should do it.
        if signatures.iter().any(|s| {
            s.len() == expected.len()
                && s.iter()
                    .zip(expected.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }) {
            return Ok(());
        }
    }
    Err("no signature matches")
}

fn retry_after(status: StatusCode, error: &str) -> Response {
    (
        status,
        [(
            axum::http::header::RETRY_AFTER,
            RETRY_AFTER_SECONDS.to_string(),
        )],
        axum::Json(json!({"error": error})),
    )
        .into_response()
}

async fn receive(
    State(s): State<Sandbox>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.maybe_slow("webhook").await;
    if s.hit("webhook", "unavailable") {
        return retry_after(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    if s.hit("webhook", "throttle") {
        return retry_after(StatusCode::TOO_MANY_REQUESTS, "slow down");
    }
    let Some(header) = headers
        .get("connect-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "Connect-Signature header missing"}),
        );
    };
    let mut secrets = vec![DEMO_SIGNING_SECRET.to_owned()];
    secrets.extend(s.with(|i| i.webhook_secrets.clone()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if let Err(why) = verify(header, &body, &secrets, now) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": format!("signature rejected: {why}")}),
        );
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(events) = parsed["events"].as_array() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "body.events must be an array"}),
        );
    };
    for (i, e) in events.iter().enumerate() {
        if e["recordId"].as_str().is_none() || e["event"]["email"].as_str().is_none() {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("events[{i}] needs recordId and event.email")}),
            );
        }
    }
    if !events.is_empty() && s.hit("webhook", "reject") {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "the receiver refused these events"}),
        );
    }
    for e in events {
        let client = e["clientId"].as_str().unwrap_or("");
        let email = e["event"]["email"].as_str().unwrap_or("");
        s.log("webhook", client, email, e.clone());
    }
    json_response(StatusCode::OK, json!({"received": events.len()}))
}

/// `POST /_sandbox/webhook/secrets` `{"secret": "…"}`: one more signing secret the twin
/// accepts.
async fn add_secret(State(s): State<Sandbox>, body: String) -> Response {
    match serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["secret"].as_str().map(str::to_owned))
    {
        Some(secret) if !secret.is_empty() => {
            s.with(|i| i.webhook_secrets.push(secret));
            StatusCode::NO_CONTENT.into_response()
        }
        _ => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "secret must be a non-empty string"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_like_a_receiver() {
        // The crm crate's test vector: t=1700000000, body {"a":1}, key whsec_test.
        let header =
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789";
        let secrets = vec!["whsec_test".to_owned()];
        assert_eq!(
            verify(header, br#"{"a":1}"#, &secrets, 1_700_000_100),
            Ok(())
        );
        assert!(verify(header, br#"{"a":2}"#, &secrets, 1_700_000_100).is_err());
        assert!(verify(header, br#"{"a":1}"#, &["other".to_owned()], 1_700_000_100).is_err());
        assert_eq!(
            verify(header, br#"{"a":1}"#, &secrets, 1_700_000_301),
            Err("timestamp outside the tolerance")
        );
        assert!(verify("t=1700000000", b"", &secrets, 1_700_000_000).is_err());
        // Rotation: one of two signatures matches.
        let two = format!("t=1700000000,v1={},v1={}", "00".repeat(32), &header[16..]);
        assert_eq!(verify(&two, br#"{"a":1}"#, &secrets, 1_700_000_000), Ok(()));
    }
}
