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

/// EMF lines (namespace Connect) of `domain::metrics`: `IngestRefused` by `reason`
/// (origin, signature, rate limits, bots; also per `clientId` when the client is known,
/// for `connect status --aws`), `Accepted` and `Duplicates` by `crm` and `clientId`,
/// `FieldsDropped` by `field` (URLs on a host that is not the client's).
fn emit_metrics(response: &crate::IngestResponse) {
    use crate::Outcome;
    use domain::metrics as m;
    let now = domain::Clock::now_ms(&domain::SystemClock);
    match (response.outcome, response.crm, &response.client_id) {
        (Outcome::Refused(reason) | Outcome::Discarded(reason), _, client) => {
            println!("{}", m::INGEST_REFUSED.emf_line(now, &[reason], 1.0));
            if let Some(client) = client {
                println!(
                    "{}",
                    domain::emf::line(
                        now,
                        &[("clientId", client), ("reason", reason)],
                        &[(m::INGEST_REFUSED.name, 1.0, m::INGEST_REFUSED.emf_unit())]
                    )
                );
            }
        }
        (Outcome::Stored, Some(crm), Some(client)) => {
            println!(
                "{}",
                m::ACCEPTED.emf_line(now, &[crm.as_str(), client], 1.0)
            );
        }
        (Outcome::Duplicate, Some(crm), Some(client)) => {
            println!(
                "{}",
                m::DUPLICATES.emf_line(now, &[crm.as_str(), client], 1.0)
            );
        }
        _ => {}
    }
    for field in &response.dropped_fields {
        println!(
            "{}",
            m::FIELDS_DROPPED.emf_line(now, &[field, "foreign_host"], 1.0)
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
