//! The Salesforce Marketing Cloud twin (`/sfmc/…`): client-credentials tokens, data
//! extension rowsets and Journey Builder entry events; 401s, 429 with `Retry-After`.

use crate::{Sandbox, json_response};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use std::time::Duration;

/// Token lifetime in seconds when no fault shortens it.
const SFMC_TOKEN_TTL_SECONDS: u64 = 1079;
/// SFMC's usual `Retry-After`.
const SFMC_RETRY_AFTER_SECONDS: u64 = 5;

/// The routes, under `/sfmc`.
pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/sfmc/v2/token", post(sfmc_token))
        .route("/sfmc/hub/v1/dataevents/{key}/rowset", post(sfmc_rowset))
        .route("/sfmc/interaction/v1/events", post(sfmc_journey))
}

fn sfmc_error(status: StatusCode, message: &str, code: i64) -> Response {
    json_response(
        status,
        json!({"message": message, "errorcode": code, "documentation": "https://developer.salesforce.com/docs"}),
    )
}

async fn sfmc_token(State(s): State<Sandbox>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let client = body["client_id"].as_str().unwrap_or("");
    if body["grant_type"] != "client_credentials"
        || client.is_empty()
        || body["client_secret"] == "wrong"
    {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client",
            "error_description": "Client authentication failed.", "error_uri": "https://developer.salesforce.com/docs"}),
        );
    }
    let (token, ttl) = s.issue(
        "salesforce",
        client,
        Duration::from_secs(SFMC_TOKEN_TTL_SECONDS),
    );
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "Bearer",
        "expires_in": ttl.as_secs().max(1), "scope": "data_extensions_write journeys_execute",
        "soap_instance_url": format!("{}/sfmc/", s.base()), "rest_instance_url": format!("{}/sfmc/", s.base())}),
    )
}

async fn sfmc_guard(s: &Sandbox, headers: &HeaderMap) -> Result<String, Response> {
    s.maybe_slow("salesforce").await;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let client = s.check("salesforce", token).map_err(|_| {
        sfmc_error(
            StatusCode::UNAUTHORIZED,
            "Not Authorized: The token was not found in the request, or it is invalid or expired",
            0,
        )
    })?;
    if s.hit("salesforce", "unavailable") {
        return Err(sfmc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            0,
        ));
    }
    if s.hit("salesforce", "throttle") {
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": "Rate limit exceeded",
            "errorcode": 50100, "retryAfter": SFMC_RETRY_AFTER_SECONDS, "documentation": "https://developer.salesforce.com/docs"}),
        );
        r.headers_mut()
            .insert("retry-after", SFMC_RETRY_AFTER_SECONDS.into());
        return Err(r);
    }
    Ok(client)
}

async fn sfmc_rowset(
    State(s): State<Sandbox>,
    Path(_key): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let client = match sfmc_guard(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Value::Array(rows)) = serde_json::from_str::<Value>(&body) else {
        return sfmc_error(
            StatusCode::BAD_REQUEST,
            "Request body is not a rowset array",
            10000,
        );
    };
    for (n, row) in rows.iter().enumerate() {
        let email = row["values"]["Email"].as_str().unwrap_or("");
        if email.is_empty() || s.hit("salesforce", "reject") {
            // Rows before the first bad row are saved; this one and the rest are not.
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"message": "Aggregate Error", "errorcode": 10006,
                "documentation": "", "additionalErrors": [{"message": format!("Row {n}: Unable to save row: the value for field Email is invalid"),
                "errorcode": 10000, "documentation": ""}]}),
            );
        }
        s.log("salesforce", &client, email, row.clone());
    }
    json_response(
        StatusCode::OK,
        json!({"requestId": uuid::Uuid::new_v4().to_string()}),
    )
}

async fn sfmc_journey(State(s): State<Sandbox>, headers: HeaderMap, body: String) -> Response {
    let client = match sfmc_guard(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let contact = body["ContactKey"].as_str().unwrap_or("");
    if contact.is_empty()
        || body["EventDefinitionKey"]
            .as_str()
            .is_none_or(str::is_empty)
        || s.hit("salesforce", "reject")
    {
        return sfmc_error(
            StatusCode::BAD_REQUEST,
            "Event definition not found or contact not active",
            10000,
        );
    }
    s.log("salesforce", &client, contact, body.clone());
    json_response(
        StatusCode::CREATED,
        json!({"eventInstanceId": uuid::Uuid::new_v4().to_string()}),
    )
}
