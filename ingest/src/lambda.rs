//! The Lambda shells around the handler, one per front door (`custom.frontDoor` in
//! serverless.yml): API Gateway REST (AWS_PROXY) events, and Lambda function URL events
//! (payload 2.0) behind CloudFront.

use crate::handler::{IngestHandler, IngestRequest};
use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::lambda_function_urls::{
    LambdaFunctionUrlRequest, LambdaFunctionUrlResponse,
};
use base64::Engine;
use domain::{ClientDirectory, Clock, RecordStore};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

/// The header CloudFront sets to the viewer's address and source port
/// (`198.51.100.10:46532`, `2001:db8::1:46532`); clients cannot set it.
pub const VIEWER_ADDRESS_HEADER: &str = "cloudfront-viewer-address";

/// A request as every front door hands it over, before the handler sees it.
struct FrontDoorRequest<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
    body: Option<String>,
    is_base64_encoded: bool,
    /// The pixel's `d` (base64url needs no escaping).
    pixel_data: Option<&'a str>,
    source_ip: Option<&'a str>,
    request_id: &'a str,
}

/// What the front door sends back: status, headers, and a text or binary body.
struct FrontDoorResponse {
    status: u16,
    headers: Vec<(&'static str, std::borrow::Cow<'static, str>)>,
    body: Option<Payload>,
}

/// A response body: JSON text, or the pixel's bytes (base64 on the wire).
enum Payload {
    Text(String),
    Pixel,
}

async fn handle<S: RecordStore, D: ClientDirectory + 'static, C: Clock>(
    handler: &IngestHandler<S, D, C>,
    req: FrontDoorRequest<'_>,
) -> FrontDoorResponse {
    let raw = req.body.unwrap_or_default();
    let body = if req.is_base64_encoded {
        match base64::engine::general_purpose::STANDARD.decode(raw.as_bytes()) {
            Ok(bytes) => bytes,
            Err(_) => {
                return text_response(
                    400,
                    vec![("content-type", "application/json".into())],
                    json!({"error": "malformed_body", "message": "the body is not valid base64"})
                        .to_string(),
                );
            }
        }
    } else {
        raw.into_bytes()
    };
    let query = req.pixel_data.map(|d| format!("d={d}"));
    let response = handler
        .handle(IngestRequest {
            method: req.method,
            path: req.path,
            headers: req.headers,
            body: &body,
            query: query.as_deref(),
            // The front doors give the address as text; a malformed one is not logged.
            source_ip: req.source_ip.and_then(|ip| ip.trim().parse().ok()),
            request_id: req.request_id,
        })
        .await;
    emit_metrics(&response);
    if response.pixel {
        return FrontDoorResponse {
            status: response.status,
            headers: response.headers,
            body: Some(Payload::Pixel),
        };
    }
    text_response(response.status, response.headers, response.body)
}

fn text_response(
    status: u16,
    headers: Vec<(&'static str, std::borrow::Cow<'static, str>)>,
    body: String,
) -> FrontDoorResponse {
    FrontDoorResponse {
        status,
        headers,
        body: (!body.is_empty()).then_some(Payload::Text(body)),
    }
}

fn header_map(headers: Vec<(&'static str, std::borrow::Cow<'static, str>)>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.append(HeaderName::from_static(name), value);
        }
    }
    out
}

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
    let response = handle(
        handler,
        FrontDoorRequest {
            method: event.http_method.as_str(),
            path,
            headers: &headers,
            body: event.body,
            is_base64_encoded: event.is_base64_encoded,
            // API Gateway hands the query decoded.
            pixel_data: event.query_string_parameters.first("d"),
            source_ip: event.request_context.identity.source_ip.as_deref(),
            request_id: event
                .request_context
                .request_id
                .as_deref()
                .unwrap_or(lambda_request_id),
        },
    )
    .await;
    let mut out = ApiGatewayProxyResponse::default();
    out.status_code = i64::from(response.status);
    out.headers = header_map(response.headers);
    out.is_base64_encoded = matches!(response.body, Some(Payload::Pixel));
    out.body = response.body.map(|b| match b {
        Payload::Text(text) => Body::Text(text),
        Payload::Pixel => Body::Binary(crate::PIXEL_GIF.to_vec()),
    });
    out
}

/// Translates a Lambda function URL event (payload 2.0) — the `cloudfront` front door:
/// CloudFront + WAF → function URL (IAM auth, origin access control) — into a handler
/// request, and the answer back. The source address is CloudFront's
/// [`VIEWER_ADDRESS_HEADER`] (the URL only answers CloudFront, whose own address is the
/// connection's), else the connection's.
pub async fn handle_function_url<S: RecordStore, D: ClientDirectory + 'static, C: Clock>(
    handler: &IngestHandler<S, D, C>,
    event: LambdaFunctionUrlRequest,
    lambda_request_id: &str,
) -> LambdaFunctionUrlResponse {
    let viewer = event
        .headers
        .get(VIEWER_ADDRESS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(viewer_ip);
    let source_ip = viewer.or_else(|| event.request_context.http.source_ip.clone());
    let response = handle(
        handler,
        FrontDoorRequest {
            method: event
                .request_context
                .http
                .method
                .as_deref()
                .unwrap_or("GET"),
            path: event.raw_path.as_deref().unwrap_or("/"),
            headers: &event.headers,
            body: event.body,
            is_base64_encoded: event.is_base64_encoded,
            pixel_data: event.query_string_parameters.get("d").map(String::as_str),
            source_ip: source_ip.as_deref(),
            request_id: event
                .request_context
                .request_id
                .as_deref()
                .unwrap_or(lambda_request_id),
        },
    )
    .await;
    let mut out = LambdaFunctionUrlResponse::default();
    out.status_code = i64::from(response.status);
    out.headers = header_map(response.headers);
    out.is_base64_encoded = matches!(response.body, Some(Payload::Pixel));
    out.body = response.body.map(|b| match b {
        Payload::Text(text) => text,
        Payload::Pixel => base64::engine::general_purpose::STANDARD.encode(crate::PIXEL_GIF),
    });
    out
}

/// The IP of a `CloudFront-Viewer-Address` value (`ip:port`, IPv6 without brackets).
fn viewer_ip(value: &str) -> Option<String> {
    let (ip, port) = value.trim().rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_string())
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

#[cfg(test)]
mod tests {
    use super::viewer_ip;

    #[test]
    fn viewer_addresses_are_read_as_cloudfront_writes_them() {
        assert_eq!(
            viewer_ip("198.51.100.10:46532").as_deref(),
            Some("198.51.100.10")
        );
        assert_eq!(
            viewer_ip("2001:db8:85a3::8a2e:370:7334:46532").as_deref(),
            Some("2001:db8:85a3::8a2e:370:7334")
        );
        assert_eq!(
            viewer_ip("[2001:db8::1]:443").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            viewer_ip("198.51.100.10"),
            None,
            "no port: not CloudFront's"
        );
        assert_eq!(viewer_ip("not-an-ip:1"), None);
        assert_eq!(viewer_ip(""), None);
    }
}
