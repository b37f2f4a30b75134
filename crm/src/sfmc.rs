//! Salesforce Marketing Cloud: client-credentials token (`/v2/token`), data extension
//! rowset upserts (≤ 50 rows per call) or Journey Builder entry events.

use crate::credentials::SfmcCredentials;
use crate::http::{Answer, AuthError, AuthToken, CrmHttp, answer, base_url};
use crate::outcome::{Outcome, from_transport};
use crate::target::{SfmcKind, SfmcTarget, field};
use domain::{ClientConfig, DeliveryMessage, StoredToken};
use serde::{Serialize, Serializer};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::time::Duration;

/// Rows per rowset call (SFMC's best practice and sync soft limit).
pub const DEFAULT_ROWS_PER_CALL: usize = 50;
/// Wait after a 429 without `Retry-After` (SFMC's usual value).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Wait after errorcode 50200 ("your requests are temporarily blocked").
pub const BLOCKED_WAIT: Duration = Duration::from_secs(15 * 60);
/// Journey events sent at once for one client.
pub const JOURNEY_CONCURRENCY: usize = 4;

/// Requests a token (no refresh token exists: a new one each time).
pub async fn authenticate(
    http: &CrmHttp,
    creds: &SfmcCredentials,
    now_ms: i64,
) -> Result<AuthToken, AuthError> {
    let mut body = json!({
        "grant_type": "client_credentials",
        "client_id": creds.client_id,
        "client_secret": creds.client_secret.expose(),
    });
    if let Some(a) = &creds.account_id {
        body["account_id"] = json!(a);
    }
    if let Some(s) = &creds.scope {
        body["scope"] = json!(s);
    }
    let res = http
        .client
        .post(format!("{}/v2/token", creds.auth_base()?))
        .json(&body)
        .send()
        .await
        .map_err(|e| AuthError::Transient(e.to_string()))?;
    let Answer { status, body, .. } = answer(res, &[]).await;
    if (200..300).contains(&status) {
        let token = body["access_token"].as_str().unwrap_or_default();
        let base = body["rest_instance_url"].as_str().unwrap_or_default();
        let expires_in = body["expires_in"].as_i64().unwrap_or(1079);
        if token.is_empty() || base.is_empty() {
            return Err(AuthError::Transient(
                "token answer without access_token/rest_instance_url".into(),
            ));
        }
        return Ok(AuthToken {
            access_token: domain::Secret::new(token.to_owned()),
            api_endpoint: base_url(base),
            issued_at: now_ms,
            expires_at: now_ms + expires_in * 1000,
            refresh_token: None,
        });
    }
    let error = body["error"].as_str().unwrap_or("");
    let description = body["error_description"].as_str().unwrap_or("");
    if status == 429 || status >= 500 {
        Err(AuthError::Transient(format!("{status} {error}")))
    } else {
        Err(AuthError::Rejected(format!(
            "{status} {error}: {description}"
        )))
    }
}

/// Classifies a non-success answer of a whole call.
pub fn classify(status: u16, retry_after: Option<&str>, body: &Value) -> Outcome {
    let code = body["errorcode"].as_i64();
    let message = body["message"].as_str().unwrap_or("").to_owned();
    match status {
        401 => Outcome::token_rejected(format!("401 errorcode {}", code.unwrap_or(0))),
        429 if code == Some(50200) => Outcome::throttled(BLOCKED_WAIT, "50200"),
        429 => {
            let secs = retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .or_else(|| body["retryAfter"].as_u64());
            Outcome::throttled(
                secs.map_or(DEFAULT_RETRY_AFTER, Duration::from_secs),
                code.map_or("429".into(), |c| c.to_string()),
            )
        }
        s if s >= 500 || s == 408 => Outcome::retry(s.to_string(), message),
        s => Outcome::permanent(code.map_or(s.to_string(), |c| format!("{s}/{c}")), message),
    }
}

/// The index of the first bad row named by a 10006 aggregate error: an
/// `additionalErrors` entry's `rowIndex`, or "row N" in its message.
fn first_bad_row(body: &Value) -> Option<usize> {
    body["additionalErrors"]
        .as_array()?
        .iter()
        .filter_map(|e| {
            e["rowIndex"].as_u64().map(|n| n as usize).or_else(|| {
                let msg = e["message"].as_str()?.to_ascii_lowercase();
                let rest = msg.split("row ").nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .min()
}

/// Per-row outcomes of a rowset answer.
pub fn rowset_outcomes(
    status: u16,
    retry_after: Option<&str>,
    body: &Value,
    rows: usize,
) -> Vec<Outcome> {
    if (200..300).contains(&status) {
        return vec![Outcome::Delivered; rows];
    }
    if status == 400 && body["errorcode"].as_i64() == Some(10006) {
        let no_details = body["additionalErrors"]
            .as_array()
            .is_none_or(Vec::is_empty);
        return match first_bad_row(body) {
            // Rows before the first bad row were saved; the bad row is refused; the rows
            // after it were not attempted.
            Some(bad) if bad < rows => (0..rows)
                .map(|i| match i.cmp(&bad) {
                    std::cmp::Ordering::Less => Outcome::Delivered,
                    std::cmp::Ordering::Equal => Outcome::permanent(
                        "10006",
                        body["additionalErrors"]
                            .as_array()
                            .and_then(|a| a.first())
                            .and_then(|e| e["message"].as_str())
                            .unwrap_or("row refused"),
                    ),
                    std::cmp::Ordering::Greater => {
                        Outcome::retry("10006", "not attempted after an earlier bad row")
                    }
                })
                .collect(),
            // "Unable to save rows" with no details is transient (as Segment treats it).
            _ if no_details => vec![Outcome::retry("10006", "unable to save rows"); rows],
            _ => vec![Outcome::retry("10006", "aggregate error without a row index"); rows],
        };
    }
    vec![classify(status, retry_after, body); rows]
}

/// Column → value pairs (in target order), serialised as a JSON object without building
/// a `serde_json::Value` tree: a rowset call's body is made for every delivered row, and
/// the tree's map and key copies were most of its cost.
struct Columns<'a, V>(Vec<(&'a str, V)>);

impl<V: Serialize> Serialize for Columns<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(column, value)| (column, value)))
    }
}

fn values<'a>(
    columns: &'a [(String, String)],
    m: &'a DeliveryMessage,
) -> Columns<'a, Cow<'a, str>> {
    Columns(
        columns
            .iter()
            .filter_map(|(c, f)| field(m, f).map(|v| (c.as_str(), v)))
            .collect(),
    )
}

/// One column → value pair, serialised as a one-entry JSON object (no vector per row).
struct Column<'a>(&'a str, &'a str);

impl Serialize for Column<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(std::iter::once((self.0, self.1)))
    }
}

/// One row of a rowset call: `{"keys": {key column: record id}, "values": {…}}`.
#[derive(Serialize)]
struct Row<'a> {
    keys: Column<'a>,
    values: Columns<'a, Cow<'a, str>>,
}

/// The rows of one rowset call.
fn rows<'a>(
    target: &'a SfmcTarget,
    columns: &'a [(String, String)],
    chunk: &'a [DeliveryMessage],
) -> Vec<Row<'a>> {
    chunk
        .iter()
        .map(|m| Row {
            keys: Column(&target.key_field, &m.record_id),
            values: values(columns, m),
        })
        .collect()
}

/// Delivers one client's messages. One outcome per message.
pub async fn deliver(
    http: &CrmHttp,
    client: &ClientConfig,
    token: &StoredToken,
    messages: &[DeliveryMessage],
) -> Vec<Outcome> {
    let target = match SfmcTarget::from_client(client) {
        Ok(t) => t,
        Err(e) => return vec![Outcome::permanent("invalid_target", e); messages.len()],
    };
    let columns = target.columns();
    match target.kind {
        SfmcKind::DataExtension => {
            let mut out = Vec::with_capacity(messages.len());
            for chunk in messages.chunks(target.batch_size) {
                out.extend(rowset(http, &target, &columns, token, chunk).await);
            }
            out
        }
        SfmcKind::Journey => {
            let key = target.event_definition_key.clone().unwrap_or_default();
            if key.is_empty() {
                return vec![
                    Outcome::permanent(
                        "invalid_target",
                        "journey target without event_definition_key"
                    );
                    messages.len()
                ];
            }
            let mut out = Vec::with_capacity(messages.len());
            for chunk in messages.chunks(JOURNEY_CONCURRENCY) {
                let calls: Vec<_> = chunk
                    .iter()
                    .map(|m| journey_event(http, &columns, &key, token, m))
                    .collect();
                out.extend(futures_util::future::join_all(calls).await);
            }
            out
        }
    }
}

async fn rowset(
    http: &CrmHttp,
    target: &SfmcTarget,
    columns: &[(String, String)],
    token: &StoredToken,
    chunk: &[DeliveryMessage],
) -> Vec<Outcome> {
    let rows = rows(target, columns, chunk);
    let res = http
        .client
        .post(format!(
            "{}/hub/v1/dataevents/key:{}/rowset",
            token.api_endpoint, target.data_extension_key
        ))
        .bearer_auth(token.access_token.expose())
        .json(&rows)
        .send()
        .await;
    let res = match res {
        Ok(r) => r,
        Err(e) => return vec![from_transport(&e); chunk.len()],
    };
    let a = answer(res, &["retry-after"]).await;
    rowset_outcomes(a.status, a.header.as_deref(), &a.body, chunk.len())
}

async fn journey_event(
    http: &CrmHttp,
    columns: &[(String, String)],
    key: &str,
    token: &StoredToken,
    m: &DeliveryMessage,
) -> Outcome {
    let body = json!({"ContactKey": m.event.email.as_str(), "EventDefinitionKey": key, "Data": values(columns, m)});
    let res = http
        .client
        .post(format!("{}/interaction/v1/events", token.api_endpoint))
        .bearer_auth(token.access_token.expose())
        .header("Content-Type", "application/json; charset=UTF-8")
        .body(body.to_string())
        .send()
        .await;
    match res {
        Err(e) => from_transport(&e),
        Ok(res) => {
            let a = answer(res, &["retry-after"]).await;
            if a.ok() {
                Outcome::Delivered
            } else {
                classify(a.status, a.header.as_deref(), &a.body)
            }
        }
    }
}

/// Salesforce Marketing Cloud (wire name `salesforce`).
#[derive(Debug, Clone, Copy)]
pub struct Sfmc;

#[async_trait::async_trait]
impl crate::Destination for Sfmc {
    fn crm(&self) -> domain::Crm {
        domain::Crm::SFMC
    }

    fn auth_policy(&self) -> crate::AuthPolicy {
        crate::AuthPolicy::Token(crate::TokenPolicy {
            rotating_refresh_token: false,
            reuse_tokens: true,
            api_key_by_tid: false,
        })
    }

    fn validate_target(&self, client: &ClientConfig) -> Result<(), String> {
        let t = SfmcTarget::from_client(client)?;
        if t.kind == SfmcKind::Journey
            && t.event_definition_key.as_deref().is_none_or(str::is_empty)
        {
            return Err(format!(
                "client {} has an invalid target: kind = \"journey\" needs event_definition_key",
                client.client_id
            ));
        }
        Ok(())
    }

    fn validate_credentials(&self, secret: &str) -> Result<(), AuthError> {
        let creds: crate::credentials::SfmcCredentials =
            crate::credentials::parse(self.crm(), secret)?;
        creds.auth_base().map(drop)
    }

    fn batch_limit(&self, client: &ClientConfig) -> usize {
        SfmcTarget::from_client(client).map_or(DEFAULT_ROWS_PER_CALL, |t| t.batch_size)
    }

    /// A journey target fires only for its `journey_event_types`.
    fn skip(&self, client: &ClientConfig, messages: &[DeliveryMessage]) -> Vec<Option<Outcome>> {
        let journey = SfmcTarget::from_client(client)
            .ok()
            .filter(|t| t.kind == SfmcKind::Journey);
        messages
            .iter()
            .map(|m| {
                journey
                    .as_ref()
                    .filter(|t| !t.journey_event_types.contains(&m.event.event_type))
                    .map(|_| Outcome::skipped("skipped_event_type"))
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
        match auth.token {
            Some(t) => deliver(http, client, t, messages).await,
            None => vec![Outcome::token_rejected("no token"); messages.len()],
        }
    }

    fn demo(&self, sandbox: &str) -> crate::Demo {
        crate::Demo {
            target: None,
            credentials: serde_json::json!({"clientId": "demo-salesforce", "clientSecret": "demo",
                "subdomain": "demo", "authUrl": format!("{sandbox}/sfmc")}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(v: Value) -> DeliveryMessage {
        serde_json::from_value(v).expect("message")
    }

    #[test]
    fn a_rowset_body_is_the_json_the_value_tree_made() {
        let chunk = [
            message(
                json!({"v": 1, "recordId": "r-1", "clientId": "shop", "crm": "salesforce",
                "receivedAt": 1_764_000_000_000_i64, "event": {"email": "ana@example.com",
                "eventType": "product_view", "productId": "SKU-1", "productName": "Tênis \"Run\"",
                "productPrice": 199.9, "productUrl": "https://shop.example/p/1",
                "properties": {"size": 42, "color": "azul"}}}),
            ),
            message(
                json!({"v": 1, "recordId": "r-2", "clientId": "shop", "crm": "salesforce",
                "receivedAt": 1_764_000_000_001_i64, "event": {"email": "bia@example.com",
                "eventType": "purchase"}}),
            ),
        ];
        let custom = SfmcTarget {
            key_field: "Id".into(),
            fields: Some(
                [
                    ("Mail", "email"),
                    ("Size", "properties.size"),
                    ("Zed", "productId"),
                ]
                .map(|(c, f)| (c.to_owned(), f.to_owned()))
                .into(),
            ),
            ..SfmcTarget::default()
        };
        for target in [SfmcTarget::default(), custom] {
            // What the rowset call sent before: a `serde_json::Value` tree per row.
            let tree: Vec<Value> = chunk
                .iter()
                .map(|m| {
                    let values: serde_json::Map<String, Value> = target
                        .columns()
                        .into_iter()
                        .filter_map(|(c, f)| {
                            field(m, &f).map(|v| (c, Value::String(v.into_owned())))
                        })
                        .collect();
                    json!({"keys": {target.key_field.clone(): m.record_id}, "values": values})
                })
                .collect();
            let columns = target.columns();
            assert_eq!(
                serde_json::to_string(&rows(&target, &columns, &chunk)).expect("rows"),
                serde_json::to_string(&tree).expect("tree"),
            );
        }
    }

    #[test]
    fn aggregate_error_splits_at_the_first_bad_row() {
        let body = json!({"message": "Aggregate Error", "errorcode": 10006,
            "additionalErrors": [{"message": "Row 2: The value for field Price is invalid", "errorcode": 10000}]});
        let o = rowset_outcomes(400, None, &body, 5);
        assert_eq!(o[0], Outcome::Delivered);
        assert_eq!(o[1], Outcome::Delivered);
        assert_eq!(o[2].kind(), "permanent");
        assert_eq!(o[3].kind(), "retry_later");
        assert_eq!(o[4].kind(), "retry_later");
        let transient =
            json!({"message": "Unable to save rows for data extension ID x", "errorcode": 10006});
        assert!(
            rowset_outcomes(400, None, &transient, 3)
                .iter()
                .all(|o| o.kind() == "retry_later")
        );
    }

    #[test]
    fn throttling_and_auth() {
        let t = classify(
            429,
            Some("7"),
            &json!({"errorcode": 50100, "retryAfter": 5}),
        );
        assert_eq!(t, Outcome::throttled(Duration::from_secs(7), "50100"));
        assert_eq!(
            classify(429, None, &json!({"errorcode": 50200})),
            Outcome::throttled(BLOCKED_WAIT, "50200")
        );
        assert_eq!(
            classify(429, None, &json!({"retryAfter": 9})),
            Outcome::throttled(Duration::from_secs(9), "429")
        );
        assert_eq!(
            classify(401, None, &json!({"errorcode": 0})).kind(),
            "token_rejected"
        );
        assert_eq!(
            classify(403, None, &json!({"errorcode": 20002})).kind(),
            "permanent"
        );
        assert_eq!(classify(500, None, &json!({})).kind(), "retry_later");
        assert_eq!(classify(404, None, &json!({})).kind(), "permanent");
    }
}
