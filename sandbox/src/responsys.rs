//! The Responsys twin (`/responsys/…`): password and token logins, profile lists,
//! merges into the list, a PET or a supplemental table (MERGEFAILED per record, update-only
//! merges that match only known contacts), custom events; 401 for expired or unknown
//! tokens, Responsys' own throttle codes.

use crate::{Sandbox, json_response};
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Token lifetime when no fault shortens it.
const RESPONSYS_TOKEN_TTL: Duration = Duration::from_secs(2 * 3600);

/// The routes, under `/responsys`.
pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/responsys/rest/api/v1.3/auth/token", post(responsys_login))
        .route(
            "/responsys/rest/api/v1.3/lists",
            axum::routing::get(responsys_lists),
        )
        .route(
            "/responsys/rest/api/v1.3/lists/{list}/members",
            post(responsys_merge),
        )
        .route(
            "/responsys/rest/api/v1.3/lists/{list}/listExtensions/{pet}/members",
            post(responsys_merge2),
        )
        .route(
            "/responsys/rest/api/v1.3/folders/{folder}/suppData/{table}/members",
            post(responsys_merge2),
        )
        .route(
            "/responsys/rest/api/v1.3/events/{event}",
            post(responsys_event),
        )
}

fn responsys_error(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    json_response(
        status,
        json!({"type": "", "title": title, "errorCode": code, "detail": detail, "errorDetails": []}),
    )
}

#[derive(Deserialize)]
struct ResponsysLogin {
    user_name: Option<String>,
    password: Option<String>,
    auth_type: String,
}

async fn responsys_login(
    State(s): State<Sandbox>,
    headers: HeaderMap,
    Form(f): Form<ResponsysLogin>,
) -> Response {
    let client = match f.auth_type.as_str() {
        "password" => match (f.user_name, f.password) {
            (Some(u), Some(p)) if !u.is_empty() && p != "wrong" => u,
            _ => {
                return responsys_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_USER_NAME_PASSWORD",
                    "Invalid user name or password",
                    "Login failed",
                );
            }
        },
        "token" => {
            let old = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match s.check("responsys", old) {
                Ok(c) => {
                    s.with(|i| i.tokens.remove(old));
                    c
                }
                Err(true) => {
                    return responsys_error(
                        StatusCode::UNAUTHORIZED,
                        "TOKEN_EXPIRED",
                        "Authentication token expired",
                        "Token expired",
                    );
                }
                Err(false) => {
                    return responsys_error(
                        StatusCode::UNAUTHORIZED,
                        "INVALID_TOKEN",
                        "Not a valid token",
                        "Invalid token",
                    );
                }
            }
        }
        _ => {
            return responsys_error(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                "Invalid request parameters",
                "auth_type",
            );
        }
    };
    let (token, _) = s.issue("responsys", &client, RESPONSYS_TOKEN_TTL);
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json_response(
        StatusCode::OK,
        json!({"authToken": token, "issuedAt": issued, "endPoint": format!("{}/responsys", s.base())}),
    )
}

/// Common checks of a Responsys data call; the client on success.
async fn responsys_guard(s: &Sandbox, headers: &HeaderMap) -> Result<String, Response> {
    s.maybe_slow("responsys").await;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let client = match s.check("responsys", token) {
        Ok(c) => c,
        Err(true) => {
            return Err(responsys_error(
                StatusCode::UNAUTHORIZED,
                "TOKEN_EXPIRED",
                "Authentication token expired",
                "Token expired",
            ));
        }
        Err(false) => {
            return Err(responsys_error(
                StatusCode::UNAUTHORIZED,
                "INVALID_TOKEN",
                "Not a valid token",
                "Invalid token",
            ));
        }
    };
    if s.hit("responsys", "unavailable") {
        return Err(responsys_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "Service unavailable",
            "Try again later",
        ));
    }
    if s.hit("responsys", "throttle") {
        // Documented as 400 (error table) or 401 (FAQ): the sandbox uses 400.
        return Err(responsys_error(
            StatusCode::BAD_REQUEST,
            "API_LIMIT_EXCEEDED",
            "API limit exceeded",
            "You exceeded your allowable limit to call the mergeListMembers API function. Please try again in a minute.",
        ));
    }
    Ok(client)
}

/// The sandbox account's profile lists: `CONTACTS_LIST` (the default target) and
/// `DemoProfileList`.
pub const SANDBOX_PROFILE_LISTS: [&str; 2] = ["CONTACTS_LIST", "DemoProfileList"];

async fn responsys_lists(State(s): State<Sandbox>, headers: HeaderMap) -> Response {
    if let Err(r) = responsys_guard(&s, &headers).await {
        return r;
    }
    let lists: Vec<Value> = SANDBOX_PROFILE_LISTS
        .iter()
        .map(|n| {
            json!({"name": n, "folderName": "!MageData", "fields": [
            {"fieldName": "RIID_", "fieldType": "INTEGER"},
            {"fieldName": "EMAIL_ADDRESS_", "fieldType": "STR500"}]})
        })
        .collect();
    json_response(StatusCode::OK, Value::Array(lists))
}

async fn responsys_merge(
    State(s): State<Sandbox>,
    Path(_list): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    responsys_merge_any(s, headers, body, true).await
}

async fn responsys_merge2(
    State(s): State<Sandbox>,
    Path(_p): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    responsys_merge_any(s, headers, body, false).await
}

/// A merge into the profile list (`list`: contacts are matched, and created only with
/// `insertOnNoMatch: true`), or into a PET / supplemental table (rows; the sandbox does
/// not check that a PET's recipient exists).
async fn responsys_merge_any(s: Sandbox, headers: HeaderMap, body: String, list: bool) -> Response {
    let client = match responsys_guard(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return responsys_error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST_CONTENT",
            "Invalid request content",
            "Not valid JSON",
        );
    };
    let names: Vec<String> = body["recordData"]["fieldNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let rows = body["recordData"]["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if names.is_empty() {
        return responsys_error(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            "Invalid request parameters",
            "FieldList is null OR empty",
        );
    }
    if rows.len() > 200 {
        return responsys_error(
            StatusCode::BAD_REQUEST,
            "RECIPIENT_LIMIT_EXCEEDED",
            "Recipient limit exceeded",
            "More than 200 records",
        );
    }
    let email_col = names.iter().position(|n| n.starts_with("EMAIL_ADDRESS"));
    // What the request asked for, kept with each record (tests check that nobody is
    // opted in or created without the client's say-so).
    let (request, insert) = if list {
        let rule = body["mergeRule"].clone();
        let insert = rule["insertOnNoMatch"].as_bool().unwrap_or(false);
        (rule, insert)
    } else {
        (json!({"insertOnNoMatch": body["insertOnNoMatch"]}), true)
    };
    let mut out = Vec::new();
    for (n, row) in rows.iter().enumerate() {
        let values = row.as_array().cloned().unwrap_or_default();
        let email = email_col
            .and_then(|c| values.get(c))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if email.is_empty() || s.hit("responsys", "reject") {
            out.push(json!([format!("MERGEFAILED: Record {n} = INVALID_PARAMETER: The value {email} is not a valid email address")]));
            continue;
        }
        if list {
            let known = s.with(|i| {
                let known = i.contacts.contains(&email.to_lowercase());
                if !known && insert {
                    i.contacts.insert(email.to_lowercase());
                }
                known
            });
            if !known && !insert {
                out.push(json!([format!("MERGEFAILED: Record {n} = RECORD_NOT_FOUND: No matching record found for EMAIL_ADDRESS_ and insertOnNoMatch is false")]));
                continue;
            }
        }
        let raw: serde_json::Map<String, Value> = names.iter().cloned().zip(values).collect();
        s.log_with(
            "responsys",
            &client,
            &email,
            Value::Object(raw),
            Some(&request),
        );
        out.push(json!([format!("{}", 4_094_326 + n)]));
    }
    json_response(
        StatusCode::OK,
        json!({"recordData": {"fieldNames": ["RIID_"], "records": out, "mapTemplateName": null}}),
    )
}

async fn responsys_event(
    State(s): State<Sandbox>,
    Path(_event): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = responsys_guard(&s, &headers).await {
        return r;
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return responsys_error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST_CONTENT",
            "Invalid request content",
            "Not valid JSON",
        );
    };
    let n = body["recipientData"].as_array().map_or(0, Vec::len);
    let results: Vec<Value> = (0..n)
        .map(|i| json!({"recipientId": 4_094_326 + i, "success": true, "errorMessage": null}))
        .collect();
    json_response(StatusCode::OK, Value::Array(results))
}
