//! The RD Station twin (`/rdstation/…`): refresh tokens that rotate on every use, the
//! events API (CDP event families) and API-key conversions; 401 with `WWW-Authenticate`,
//! 429 with `remaining_time`.

use crate::{Sandbox, json_response};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Token lifetime in seconds when no fault shortens it.
const RDSTATION_TOKEN_TTL_SECONDS: u64 = 86_400;
/// RD Station's `remaining_time` of a short (per-minute) throttle.
const RDSTATION_REMAINING_SECONDS: u64 = 30;

/// The routes, under `/rdstation`.
pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/rdstation/auth/token", post(rd_token))
        .route("/rdstation/platform/events", post(rd_event))
        .route("/rdstation/platform/conversions", post(rd_conversion))
}

fn rd_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"error_type": kind, "error_message": message}),
    )
}

async fn rd_token(State(s): State<Sandbox>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (client, secret, refresh) = (
        body["client_id"].as_str().unwrap_or(""),
        body["client_secret"].as_str().unwrap_or(""),
        body["refresh_token"].as_str().unwrap_or(""),
    );
    if client.is_empty() || secret == "wrong" {
        return rd_error(
            StatusCode::UNAUTHORIZED,
            "ACCESS_DENIED",
            "Wrong credentials provided.",
        );
    }
    let valid = s.with(|i| match i.refresh_tokens.get(client) {
        Some(current) => current == refresh,
        None => !refresh.is_empty(),
    });
    if !valid {
        return rd_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_REFRESH_TOKEN",
            "The refresh token is invalid.",
        );
    }
    let rotated = format!("rt-{}", uuid::Uuid::new_v4().simple());
    s.with(|i| i.refresh_tokens.insert(client.to_owned(), rotated.clone()));
    let (token, ttl) = s.issue(
        "rdstation",
        client,
        Duration::from_secs(RDSTATION_TOKEN_TTL_SECONDS),
    );
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": ttl.as_secs().max(1), "refresh_token": rotated}),
    )
}

async fn rd_deliver(
    s: &Sandbox,
    client: String,
    query_type: Option<String>,
    body: &str,
) -> Response {
    if s.hit("rdstation", "unavailable") {
        return rd_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "Service temporarily unavailable",
        );
    }
    if s.hit("rdstation", "throttle") {
        return json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "'account_limiter' rate limit exceeded for 60 second(s) period",
            "max": 120, "usage": 121, "remaining_time": RDSTATION_REMAINING_SECONDS}),
        );
    }
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let event_type = body["event_type"].as_str().unwrap_or("");
    let known = [
        "CONVERSION",
        "ECOMMERCE_CART_ABANDONED",
        "ECOMMERCE_CHECKOUT_STARTED",
        "ECOMMERCE_ORDER_PLACED",
        "ECOMMERCE_ORDER_PAID",
        "ECOMMERCE_ORDER_FULFILLED",
        "ECOMMERCE_ORDER_REFUNDED",
        "ECOMMERCE_SHIPMENT_DELIVERED",
        "ECOMMERCE_ORDER_CANCELLED",
        "OPPORTUNITY",
        "SALE",
    ];
    if !known.contains(&event_type) || query_type.is_some_and(|q| q != event_type) {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!([{"error_type": "INVALID_OPTION",
            "error_message": "Must be one of the valid options.", "path": "$.event_type"}]),
        );
    }
    let email = body["payload"]["email"].as_str().unwrap_or("");
    if email.is_empty() || body["event_family"] != "CDP" || s.hit("rdstation", "reject") {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"errors": {"email": [{"error_type": "INVALID_FIELDS",
            "error_message": "the email is invalid"}]}}),
        );
    }
    s.log("rdstation", &client, email, body.clone());
    json_response(
        StatusCode::OK,
        json!({"event_uuid": uuid::Uuid::new_v4().to_string()}),
    )
}

async fn rd_event(
    State(s): State<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    s.maybe_slow("rdstation").await;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let client = match s.check("rdstation", token) {
        Ok(c) => c,
        Err(true) => {
            let mut r = rd_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid token.");
            r.headers_mut().insert("www-authenticate",
                axum::http::HeaderValue::from_static(r#"Bearer realm="api", error="expired_token", error_description="The access token expired""#));
            return r;
        }
        Err(false) => return rd_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid token."),
    };
    rd_deliver(&s, client, q.get("event_type").cloned(), &body).await
}

async fn rd_conversion(
    State(s): State<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    s.maybe_slow("rdstation").await;
    let key = q.get("api_key").cloned().unwrap_or_default();
    if key.is_empty() || key == "wrong" {
        return rd_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid API key.");
    }
    if serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|b| b["event_type"].as_str().map(str::to_owned))
        .as_deref()
        != Some("CONVERSION")
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!([{"error_type": "INVALID_OPTION",
            "error_message": "API keys accept CONVERSION events only.", "path": "$.event_type"}]),
        );
    }
    rd_deliver(
        &s,
        format!("api-key:{}", key.chars().take(4).collect::<String>()),
        None,
        &body,
    )
    .await
}
