//! API Gateway (REST, AWS_PROXY) shell around the handler.

use crate::handler::{IngestHandler, IngestRequest};
use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse};
use aws_lambda_events::encodings::Body;
use base64::Engine;
use domain::{ClientDirectory, Clock, RecordStore};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

/// Translates an API Gateway proxy event into a handler request, and the answer back.
/// A base64 body is decoded; `multiValueHeaders` win over `headers` when both are set.
pub async fn handle_apigw<S: RecordStore, D: ClientDirectory + 'static, C: Clock>(
    handler: &IngestHandler<S, D, C>,
    event: ApiGatewayProxyRequest,
    lambda_request_id: &str,
) -> ApiGatewayProxyResponse {
    let mut headers: HeaderMap = event.headers.clone();
    for (name, value) in &event.multi_value_headers {
        headers.insert(name.clone(), value.clone());
    }
    let raw = event.body.unwrap_or_default();
    let body = if event.is_base64_encoded {
        match base64::engine::general_purpose::STANDARD.decode(raw.as_bytes()) {
            Ok(bytes) => bytes,
            Err(_) => {
                return to_apigw(
                    400,
                    vec![("content-type", "application/json".to_owned())],
                    json!({"error": "malformed_body", "message": "the body is not valid base64"})
                        .to_string(),
                );
            }
        }
    } else {
        raw.into_bytes()
    };
    // `resource` is the route template (`/responsys`); `path` may carry a custom-domain
    // base path.
    let path = event
        .resource
        .as_deref()
        .filter(|r| {
            let r = r.strip_suffix("/p").unwrap_or(r);
            domain::Crm::from_route(r).is_some()
        })
        .or(event.path.as_deref())
        .unwrap_or("/");
    // The pixel's `d` (API Gateway hands the query decoded; base64url needs no escaping).
    let query = event
        .query_string_parameters
        .first("d")
        .map(|d| format!("d={d}"));
    let request_id = event
        .request_context
        .request_id
        .as_deref()
        .unwrap_or(lambda_request_id);
    let response = handler
        .handle(IngestRequest {
            method: event.http_method.as_str(),
            path,
            headers: &headers,
            body: &body,
            query: query.as_deref(),
            source_ip: event.request_context.identity.source_ip.as_deref(),
            request_id,
        })
        .await;
    emit_metrics(&response);
    if response.pixel {
        let mut out = to_apigw(response.status, response.headers, String::new());
        out.body = Some(Body::Binary(crate::PIXEL_GIF.to_vec()));
        out.is_base64_encoded = true;
        return out;
    }
    to_apigw(response.status, response.headers, response.body)
}

/// EMF lines (namespace Connect) for what the front door refused or trimmed:
/// `IngestRefused` by `reason` (origin, signature, rate limits, bots) and
/// `FieldsDropped` by `field` (URLs on a host that is not the client's). The same names
/// as the Prometheus metrics of `connect serve`.
fn emit_metrics(response: &crate::IngestResponse) {
    use crate::Outcome;
    let now = domain::Clock::now_ms(&domain::SystemClock);
    if let Outcome::Refused(reason) | Outcome::Discarded(reason) = response.outcome {
        println!(
            "{}",
            domain::emf::line(
                now,
                &[("reason", reason)],
                &[("IngestRefused", 1.0, "Count")]
            )
        );
        // Per client too, when it is known (`connect status --aws`).
        if let Some(client) = &response.client_id {
            println!(
                "{}",
                domain::emf::line(
                    now,
                    &[("clientId", client), ("reason", reason)],
                    &[("IngestRefused", 1.0, "Count")]
                )
            );
        }
    }
    if let (Outcome::Stored, Some(crm), Some(client)) =
        (response.outcome, response.crm, &response.client_id)
    {
        println!(
            "{}",
            domain::emf::line(
                now,
                &[("crm", crm.as_str()), ("clientId", client)],
                &[("Accepted", 1.0, "Count")]
            )
        );
    }
    for field in &response.dropped_fields {
        println!(
            "{}",
            domain::emf::line(
                now,
                &[("field", field), ("reason", "foreign_host")],
                &[("FieldsDropped", 1.0, "Count")]
            )
        );
    }
}

fn to_apigw(
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
) -> ApiGatewayProxyResponse {
    let mut out = ApiGatewayProxyResponse::default();
    out.status_code = i64::from(status);
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.headers.append(HeaderName::from_static(name), value);
        }
    }
    out.body = (!body.is_empty()).then_some(Body::Text(body));
    out.is_base64_encoded = false;
    out
}
