//! The control API of the sandbox (DESIGN.md): `/_sandbox/records`, `/_sandbox/faults`,
//! `/_sandbox/contacts`, `/_sandbox/stats`, and the middleware that counts every call to
//! a twin and answers `html_error` faults.

use crate::{DEFAULT_FAULT_TOKEN_TTL_MS, FAULT_MODES, Fault, Sandbox, TWINS, json_response};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::time::Duration;

/// The control routes.
pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route(
            "/_sandbox/records",
            axum::routing::get(records).delete(clear_records),
        )
        .route("/_sandbox/faults", post(set_fault).delete(clear_faults))
        .route("/_sandbox/contacts", post(add_contacts))
        .route("/_sandbox/stats", axum::routing::get(stats))
}

async fn records(State(s): State<Sandbox>) -> Response {
    json_response(StatusCode::OK, Value::Array(s.records()))
}

/// Counts every call to a fake CRM (token and data calls alike).
pub(crate) async fn count_calls(
    State(s): State<Sandbox>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let prefix = req.uri().path().split('/').nth(1).unwrap_or("");
    let crm = TWINS.iter().find(|t| t.prefix == prefix).map(|t| t.crm);
    if let Some(crm) = crm {
        s.with(|i| *i.calls.entry(crm.to_owned()).or_default() += 1);
        // `html_error`: a proxy or gateway in front of the CRM answers a data call with
        // an HTML error page (no JSON body at all).
        let is_token_call = req.uri().path().contains("token");
        if !is_token_call && s.hit(crm, "html_error") {
            return (
                StatusCode::BAD_REQUEST,
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>400 Bad Request</h1></body></html>",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// `GET /_sandbox/stats`: `{"calls": {"responsys": n, …}}`, the calls each fake CRM
/// received (how many calls an outage cost).
async fn stats(State(s): State<Sandbox>) -> Response {
    let calls = s.with(|i| i.calls.clone());
    json_response(StatusCode::OK, json!({"calls": calls}))
}

/// `POST /_sandbox/contacts` `{"emails": [...]}`: Responsys profile-list members that
/// exist before the test (update-only merges match them).
async fn add_contacts(State(s): State<Sandbox>, body: String) -> Response {
    let emails: Vec<String> = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["emails"].as_array().cloned())
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_lowercase))
                .collect()
        })
        .unwrap_or_default();
    let n = emails.len();
    s.with(|i| i.contacts.extend(emails));
    json_response(StatusCode::OK, json!({"added": n}))
}

async fn clear_records(State(s): State<Sandbox>) -> StatusCode {
    s.with(|i| i.records.clear());
    StatusCode::NO_CONTENT
}

async fn set_fault(State(s): State<Sandbox>, body: String) -> Response {
    let fault: Fault = match serde_json::from_str(&body) {
        Ok(f) => f,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("invalid fault: {e}")}),
            );
        }
    };
    if !TWINS.iter().any(|t| t.crm == fault.crm) {
        let names: Vec<&str> = TWINS.iter().map(|t| t.crm).collect();
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("crm must be one of {}", names.join(", "))}),
        );
    }
    if !FAULT_MODES.contains(&fault.mode.as_str()) {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("mode must be one of {}", FAULT_MODES.join(", "))}),
        );
    }
    s.with(|i| {
        if fault.mode == "expire_tokens" {
            let crm = fault.crm.clone();
            i.tokens.retain(|_, t| t.crm != crm);
            i.token_ttl.insert(
                fault.crm.clone(),
                Duration::from_millis(fault.token_ttl_ms.unwrap_or(DEFAULT_FAULT_TOKEN_TTL_MS)),
            );
        }
        i.shares.retain(|(c, _), _| *c != fault.crm);
        i.faults.insert(fault.crm.clone(), fault);
    });
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(s): State<Sandbox>) -> StatusCode {
    s.with(|i| {
        i.faults.clear();
        i.shares.clear();
        i.token_ttl.clear();
    });
    StatusCode::NO_CONTENT
}
