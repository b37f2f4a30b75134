//! Oracle Responsys REST v1.3: password / token login, merges into a profile list, a
//! PET or a supplemental table (≤ 200 records per call), optional custom event trigger.
//! Errors are classified by `errorCode`, not by HTTP status.

use crate::credentials::ResponsysCredentials;
use crate::http::{Answer, AuthError, AuthToken, CrmHttp, answer, base_url};
use crate::outcome::{Outcome, from_transport};
use crate::target::{ResponsysKind, ResponsysTarget, field};
use domain::{ClientConfig, DeliveryMessage, StoredToken};
use serde::Serialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::time::Duration;

/// Records per merge or trigger call (documented maximum).
pub const MAX_RECORDS_PER_CALL: usize = 200;
/// Token lifetime assumed (the docs say 2 h or 3 h; the login answer has no expiry).
pub const TOKEN_LIFETIME_MS: i64 = 2 * 3600 * 1000;
/// Wait after `API_LIMIT_EXCEEDED` ("try again in a minute").
pub const API_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Wait after `INTERNAL_CAPACITY_LIMIT_EXCEEDED` (limits reset every 10 minutes).
pub const CAPACITY_LIMIT_WAIT: Duration = Duration::from_secs(600);
const AUTH_PATH: &str = "/rest/api/v1.3/auth/token";

/// The error envelope `{title, errorCode, detail}`.
fn error_code(body: &Value) -> (String, String) {
    let code = body["errorCode"].as_str().unwrap_or("").to_owned();
    let detail = [&body["detail"], &body["title"]]
        .iter()
        .find_map(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    (code, detail)
}

/// Classifies a non-success answer of a data call.
pub fn classify(status: u16, body: &Value) -> Outcome {
    let (code, detail) = error_code(body);
    match code.as_str() {
        "TOKEN_EXPIRED" | "INVALID_TOKEN" => Outcome::token_rejected(code),
        "API_LIMIT_EXCEEDED" => Outcome::throttled(API_LIMIT_WAIT, code),
        "INTERNAL_CAPACITY_LIMIT_EXCEEDED" => Outcome::throttled(CAPACITY_LIMIT_WAIT, code),
        "SERVICE_UNAVAILABLE" | "UNABLE_TO_SUBMIT_ASYNC_REQUEST" => Outcome::retry(code, detail),
        _ if status >= 500 || status == 408 => Outcome::retry(
            if code.is_empty() {
                status.to_string()
            } else {
                code
            },
            detail,
        ),
        // No errorCode (a gateway or proxy answered): classify by status.
        "" if status == 401 || status == 403 => Outcome::token_rejected(status.to_string()),
        "" if status == 429 => Outcome::throttled(API_LIMIT_WAIT, "429"),
        "" => Outcome::permanent(status.to_string(), detail),
        _ => Outcome::permanent(code, detail),
    }
}

/// Millisecond epoch of `issuedAt` (seconds are accepted too).
fn issued_at_ms(v: &Value, now_ms: i64) -> i64 {
    match v.as_i64() {
        Some(n) if n > 0 && n < 100_000_000_000 => n * 1000,
        Some(n) if n > 0 => n,
        _ => now_ms,
    }
}

/// Logs in: with `auth_type=token` while `current` is still valid (a new token is
/// returned), else — or when that is refused — with the password.
pub async fn authenticate(
    http: &CrmHttp,
    creds: &ResponsysCredentials,
    current: Option<&StoredToken>,
    now_ms: i64,
) -> Result<AuthToken, AuthError> {
    let url = format!("{}{AUTH_PATH}", base_url(&creds.login_url));
    if let Some(current) = current.filter(|t| !t.is_expired(now_ms)) {
        let res = http
            .client
            .post(&url)
            .header("Authorization", current.access_token.expose())
            .form(&[("auth_type", "token")])
            .send()
            .await;
        match login_answer(res, now_ms).await {
            Ok(t) => return Ok(t),
            Err(e) => {
                tracing::info!(error = %e, "token refresh refused; logging in with the password")
            }
        }
    }
    let res = http
        .client
        .post(&url)
        .form(&[
            ("user_name", creds.username.as_str()),
            ("password", creds.password.expose().as_str()),
            ("auth_type", "password"),
        ])
        .send()
        .await;
    login_answer(res, now_ms).await
}

async fn login_answer(
    res: Result<reqwest::Response, reqwest::Error>,
    now_ms: i64,
) -> Result<AuthToken, AuthError> {
    let res = res.map_err(|e| AuthError::Transient(e.to_string()))?;
    let Answer { status, body, .. } = answer(res, &[]).await;
    if (200..300).contains(&status) {
        let token = body["authToken"].as_str().unwrap_or_default();
        let endpoint = body["endPoint"].as_str().unwrap_or_default();
        if token.is_empty() || endpoint.is_empty() {
            return Err(AuthError::Transient(
                "login answer without authToken/endPoint".into(),
            ));
        }
        let issued_at = issued_at_ms(&body["issuedAt"], now_ms);
        return Ok(AuthToken {
            access_token: domain::Secret::new(token.to_owned()),
            api_endpoint: base_url(endpoint),
            issued_at,
            expires_at: issued_at + TOKEN_LIFETIME_MS,
            refresh_token: None,
        });
    }
    let (code, detail) = error_code(&body);
    match classify(status, &body) {
        Outcome::RetryLater { .. } | Outcome::Throttled { .. } => {
            Err(AuthError::Transient(format!("{status} {code}")))
        }
        _ => Err(AuthError::Rejected(format!("{status} {code}: {detail}"))),
    }
}

/// The names of the account's profile lists (`GET /rest/api/v1.3/lists`, "Fetch All
/// Profile Lists"): a read-only check of a target.
pub async fn list_names(http: &CrmHttp, token: &StoredToken) -> Result<Vec<String>, String> {
    let res = http
        .client
        .get(format!("{}/rest/api/v1.3/lists", token.api_endpoint))
        .header("Authorization", token.access_token.expose())
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let Answer { status, body, .. } = answer(res, &[]).await;
    if !(200..300).contains(&status) {
        let (code, detail) = error_code(&body);
        return Err(format!("{status} {code}: {detail}"));
    }
    Ok(body
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Escapes every non-ASCII character as `\uXXXX` (Responsys refuses raw accented
/// characters in custom event data).
pub fn ascii_json(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Delivers one client's messages: a merge per ≤ 200 records, then the custom event
/// for the merged recipients when configured. One outcome per message.
pub async fn deliver(
    http: &CrmHttp,
    client: &ClientConfig,
    token: &StoredToken,
    messages: &[DeliveryMessage],
) -> Vec<Outcome> {
    let target = match ResponsysTarget::from_client(client) {
        Ok(t) => t,
        Err(e) => return vec![Outcome::permanent("invalid_target", e); messages.len()],
    };
    // Events that may create a contact and update-only events go in separate merges
    // (`insertOnNoMatch` is per call).
    let policy = client.policy.create_contacts;
    let (creating, updating): (Vec<usize>, Vec<usize>) =
        (0..messages.len()).partition(|i| policy.may_create(messages[*i].event.event_type));
    let mut outcomes: Vec<Option<Outcome>> = vec![None; messages.len()];
    for (group, insert) in [(creating, true), (updating, false)] {
        let group_messages: Vec<&DeliveryMessage> = group.iter().map(|i| &messages[*i]).collect();
        let group_outcomes = deliver_group(http, &target, token, &group_messages, insert).await;
        for (i, o) in group.into_iter().zip(group_outcomes) {
            outcomes[i] = Some(o);
        }
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Outcome::retry("incomplete_answer", "no outcome for this record"))
        })
        .collect()
}

/// Merges (and triggers) a group of messages that share `insert`.
async fn deliver_group(
    http: &CrmHttp,
    target: &ResponsysTarget,
    token: &StoredToken,
    messages: &[&DeliveryMessage],
    insert: bool,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(MAX_RECORDS_PER_CALL) {
        let mut merged = merge(http, target, token, chunk, insert).await;
        if let Some(event) = &target.event_name {
            let ok: Vec<usize> = (0..chunk.len())
                .filter(|i| merged[*i] == Outcome::Delivered)
                .collect();
            if !ok.is_empty() {
                let recipients: Vec<&DeliveryMessage> = ok.iter().map(|i| chunk[*i]).collect();
                let triggered = trigger(http, target, event, token, &recipients).await;
                for (i, o) in ok.into_iter().zip(triggered) {
                    merged[i] = o;
                }
            }
        }
        outcomes.extend(merged);
    }
    outcomes
}

/// Whether a `MERGEFAILED` row says the record matched no contact (an update-only
/// merge, or a PET row for a recipient not in the profile list). Responsys documents
/// the prefix, not this text: it is matched loosely.
fn is_no_match(row: &str) -> bool {
    let upper = row.to_ascii_uppercase();
    [
        "NOT_FOUND",
        "NO_MATCH",
        "NOT FOUND",
        "NO MATCH",
        "DOES NOT EXIST",
    ]
    .iter()
    .any(|m| upper.contains(m))
}

/// `recordData` of a merge: the column names, then one row of values per message.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordData<'a> {
    field_names: Vec<&'a str>,
    records: Vec<Vec<Cow<'a, str>>>,
    /// No map template: `null`.
    map_template_name: (),
}

/// A merge call's body: `recordData`, then the kind's merge settings. Serialised as it
/// is, without first copying every record into a `serde_json::Value` tree.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MergeBody<'a> {
    record_data: RecordData<'a>,
    #[serde(flatten)]
    settings: Value,
}

/// The URL and body of the merge of `chunk` into `target`.
fn merge_request<'a>(
    target: &ResponsysTarget,
    base: &str,
    columns: &'a [(String, String)],
    chunk: &[&'a DeliveryMessage],
    insert: bool,
) -> (String, MergeBody<'a>) {
    let record_data = RecordData {
        field_names: columns.iter().map(|(c, _)| c.as_str()).collect(),
        records: chunk
            .iter()
            .map(|m| {
                columns
                    .iter()
                    .map(|(_, f)| field(m, f).unwrap_or_default())
                    .collect()
            })
            .collect(),
        map_template_name: (),
    };
    let (url, settings) = match target.kind {
        ResponsysKind::ProfileList => (
            format!("{base}/rest/api/v1.3/lists/{}/members", target.list_name),
            json!({"mergeRule": {
                "htmlValue": "H", "optinValue": "I", "textValue": "T", "optoutValue": "O",
                "insertOnNoMatch": insert, "updateOnMatch": "REPLACE_ALL",
                "matchColumnName1": "EMAIL_ADDRESS_", "matchColumnName2": null,
                "matchOperator": "NONE", "rejectRecordIfChannelEmpty": null,
                "defaultPermissionStatus": target.default_permission_status.as_str()}}),
        ),
        ResponsysKind::Pet => (
            format!(
                "{base}/rest/api/v1.3/lists/{}/listExtensions/{}/members",
                target.list_name,
                target.pet_name.as_deref().unwrap_or("CONNECT_EVENTS")
            ),
            json!({"insertOnNoMatch": true, "updateOnMatch": "REPLACE_ALL",
                   "matchColumnName1": "EMAIL_ADDRESS", "matchColumnName2": ""}),
        ),
        ResponsysKind::SupplementalTable => (
            format!(
                "{base}/rest/api/v1.3/folders/{}/suppData/{}/members",
                target.folder.as_deref().unwrap_or("Connect"),
                target.table_name.as_deref().unwrap_or("CONNECT_EVENTS")
            ),
            json!({"insertOnNoMatch": true, "updateOnMatch": "REPLACE_ALL"}),
        ),
    };
    (
        url,
        MergeBody {
            record_data,
            settings,
        },
    )
}

async fn merge(
    http: &CrmHttp,
    target: &ResponsysTarget,
    token: &StoredToken,
    chunk: &[&DeliveryMessage],
    insert: bool,
) -> Vec<Outcome> {
    let columns = target.columns();
    let (url, body) = merge_request(target, &token.api_endpoint, &columns, chunk, insert);
    let res = http
        .client
        .post(url)
        .header("Authorization", token.access_token.expose())
        .json(&body)
        .send()
        .await;
    let res = match res {
        Ok(r) => r,
        Err(e) => return vec![from_transport(&e); chunk.len()],
    };
    let Answer { status, body, .. } = answer(res, &[]).await;
    if !(200..300).contains(&status) {
        return vec![classify(status, &body); chunk.len()];
    }
    // 200 is not "all merged": each row holds the key, or a MERGEFAILED string.
    let rows = body["recordData"]["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (0..chunk.len())
        .map(
            |i| match rows.get(i).and_then(|r| r.get(0)).and_then(Value::as_str) {
                Some(s) if s.starts_with("MERGEFAILED") && is_no_match(s) => {
                    Outcome::skipped("skipped_unknown_contact")
                }
                Some(s) if s.starts_with("MERGEFAILED") => Outcome::permanent("MERGEFAILED", s),
                Some(_) => Outcome::Delivered,
                None => Outcome::retry(
                    "incomplete_answer",
                    "the merge answer has no row for this record",
                ),
            },
        )
        .collect()
}

async fn trigger(
    http: &CrmHttp,
    target: &ResponsysTarget,
    event: &str,
    token: &StoredToken,
    recipients: &[&DeliveryMessage],
) -> Vec<Outcome> {
    let data: Vec<Value> = recipients
        .iter()
        .map(|m| {
            let optional: Vec<Value> = [
                ("EVENT_TYPE", "eventType"),
                ("PRODUCT_ID", "productId"),
                ("PRODUCT_NAME", "productName"),
                ("PRODUCT_PRICE", "productPrice"),
                ("PRODUCT_URL", "productUrl"),
                ("PRODUCT_IMAGE", "productImage"),
            ]
            .iter()
            .filter_map(|(n, f)| field(m, f).map(|v| json!({"name": n, "value": v})))
            .collect();
            json!({"recipient": {"emailAddress": m.event.email.as_str(), "customerId": null,
                     "listName": {"folderName": target.list_folder, "objectName": target.list_name},
                     "recipientId": null, "mobileNumber": null, "emailFormat": "HTML_FORMAT"},
                   "optionalData": optional})
        })
        .collect();
    let body = json!({"customEvent": {"eventNumberDataMapping": null, "eventDateDataMapping": null,
                       "eventStringDataMapping": null}, "recipientData": data});
    let res = http
        .client
        .post(format!(
            "{}/rest/api/v1.3/events/{event}",
            token.api_endpoint
        ))
        .header("Authorization", token.access_token.expose())
        .header("Content-Type", "application/json")
        .body(ascii_json(&body))
        .send()
        .await;
    let res = match res {
        Ok(r) => r,
        Err(e) => return vec![from_transport(&e); recipients.len()],
    };
    let Answer { status, body, .. } = answer(res, &[]).await;
    if !(200..300).contains(&status) {
        return vec![classify(status, &body); recipients.len()];
    }
    let results = body.as_array().cloned().unwrap_or_default();
    (0..recipients.len())
        .map(|i| match results.get(i) {
            Some(r) if r["success"].as_bool() == Some(true) => Outcome::Delivered,
            Some(r) => Outcome::permanent(
                "EVENT_TRIGGER_FAILED",
                r["errorMessage"]
                    .as_str()
                    .unwrap_or("the custom event was not triggered"),
            ),
            None => Outcome::retry(
                "incomplete_answer",
                "the trigger answer has no row for this recipient",
            ),
        })
        .collect()
}

/// Oracle Responsys.
#[derive(Debug, Clone, Copy)]
pub struct Responsys;

#[async_trait::async_trait]
impl crate::Destination for Responsys {
    fn crm(&self) -> domain::Crm {
        domain::Crm::RESPONSYS
    }

    fn auth_policy(&self) -> crate::AuthPolicy {
        crate::AuthPolicy::Token(crate::TokenPolicy {
            rotating_refresh_token: false,
            reuse_tokens: false,
            api_key_by_tid: false,
        })
    }

    fn validate_target(&self, client: &ClientConfig) -> Result<(), String> {
        ResponsysTarget::from_client(client).map(drop)
    }

    fn validate_credentials(&self, secret: &str) -> Result<(), AuthError> {
        crate::credentials::parse::<crate::credentials::ResponsysCredentials>(self.crm(), secret)
            .map(drop)
    }

    fn batch_limit(&self, _client: &ClientConfig) -> usize {
        MAX_RECORDS_PER_CALL
    }

    async fn authenticate(
        &self,
        http: &CrmHttp,
        secret: &str,
        current: Option<&StoredToken>,
        now_ms: i64,
    ) -> Result<AuthToken, AuthError> {
        let creds = crate::credentials::parse(self.crm(), secret)?;
        authenticate(http, &creds, current, now_ms).await
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

    /// Fetch All Profile Lists (read-only): the target's profile list must exist.
    async fn check_target(
        &self,
        http: &CrmHttp,
        client: &ClientConfig,
        auth: crate::Auth<'_>,
    ) -> Option<Result<String, String>> {
        let token = auth.token?;
        let target = match ResponsysTarget::from_client(client) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        Some(match list_names(http, token).await {
            Ok(names) if names.iter().any(|n| n == &target.list_name) => {
                Ok(format!("profile list {} exists", target.list_name))
            }
            Ok(names) => Err(format!(
                "the profile list {} does not exist in Responsys (it has: {}); fix target.list_name with: connect clients put",
                target.list_name,
                names.join(", ")
            )),
            Err(e) => Err(format!(
                "Responsys accepted the credentials but its profile lists could not be read: {e}"
            )),
        })
    }

    fn demo(&self, sandbox: &str) -> crate::Demo {
        crate::Demo {
            // Events go to a PET, so product data shows up.
            target: Some(serde_json::json!({"kind": "pet", "pet_name": "CONNECT_EVENTS"})),
            credentials: serde_json::json!({"username": "demo-responsys", "password": "demo",
                "loginUrl": format!("{sandbox}/responsys")}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_body_is_the_documented_json_with_its_rows_in_order() {
        let chunk: Vec<DeliveryMessage> = [
            json!({"v": 1, "recordId": "r-1", "clientId": "shop", "crm": "responsys",
                "receivedAt": 1_764_000_000_000_i64, "event": {"email": "ana@example.com",
                "eventType": "product_view", "productId": "SKU-1", "productName": "Tênis \"Run\"",
                "productPrice": 199.9, "productUrl": "https://shop.example/p/1"}}),
            json!({"v": 1, "recordId": "r-2", "clientId": "shop", "crm": "responsys",
                "receivedAt": 1_764_000_000_001_i64, "event": {"email": "bia@example.com",
                "eventType": "purchase"}}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("message"))
        .collect();
        let refs: Vec<&DeliveryMessage> = chunk.iter().collect();
        let (t1, t2) = (
            domain::delivery::rfc3339(1_764_000_000_000),
            domain::delivery::rfc3339(1_764_000_000_001),
        );
        let rows = format!(
            r#"[["ana@example.com","r-1","product_view","{t1}","SKU-1","Tênis \"Run\"","199.90","https://shop.example/p/1",""],["bia@example.com","r-2","purchase","{t2}","","","","",""]]"#
        );
        let event_columns = r#""RECORD_ID","EVENT_TYPE","EVENT_TS","PRODUCT_ID","PRODUCT_NAME","PRODUCT_PRICE","PRODUCT_URL","PRODUCT_IMAGE""#;
        // Byte for byte what the `serde_json::Value` tree made before (keys in order).
        let expected = |kind, insert: bool| match kind {
            ResponsysKind::ProfileList => format!(
                r#"{{"recordData":{{"fieldNames":["EMAIL_ADDRESS_"],"records":[["ana@example.com"],["bia@example.com"]],"mapTemplateName":null}},"mergeRule":{{"htmlValue":"H","optinValue":"I","textValue":"T","optoutValue":"O","insertOnNoMatch":{insert},"updateOnMatch":"REPLACE_ALL","matchColumnName1":"EMAIL_ADDRESS_","matchColumnName2":null,"matchOperator":"NONE","rejectRecordIfChannelEmpty":null,"defaultPermissionStatus":"OPTOUT"}}}}"#
            ),
            ResponsysKind::Pet => format!(
                r#"{{"recordData":{{"fieldNames":["EMAIL_ADDRESS_",{event_columns}],"records":{rows},"mapTemplateName":null}},"insertOnNoMatch":true,"updateOnMatch":"REPLACE_ALL","matchColumnName1":"EMAIL_ADDRESS","matchColumnName2":""}}"#
            ),
            ResponsysKind::SupplementalTable => format!(
                r#"{{"recordData":{{"fieldNames":["EMAIL_ADDRESS",{event_columns}],"records":{rows},"mapTemplateName":null}},"insertOnNoMatch":true,"updateOnMatch":"REPLACE_ALL"}}"#
            ),
        };
        let kinds = [
            ResponsysKind::ProfileList,
            ResponsysKind::Pet,
            ResponsysKind::SupplementalTable,
        ];
        for (kind, insert) in kinds.into_iter().flat_map(|k| [(k, true), (k, false)]) {
            let target = ResponsysTarget {
                kind,
                list_name: "CONTACTS".into(),
                ..ResponsysTarget::default()
            };
            let columns = target.columns();
            let (url, body) = merge_request(&target, "https://api", &columns, &refs, insert);
            assert!(url.starts_with("https://api/rest/api/v1.3/"), "{url}");
            assert_eq!(
                serde_json::to_string(&body).expect("body"),
                expected(kind, insert),
                "{kind:?} insert={insert}"
            );
        }
    }

    #[test]
    fn classification_is_by_error_code() {
        let c =
            |s, code: &str| classify(s, &json!({"errorCode": code, "title": "t", "detail": "d"}));
        assert_eq!(c(401, "TOKEN_EXPIRED").kind(), "token_rejected");
        assert_eq!(c(401, "INVALID_TOKEN").kind(), "token_rejected");
        assert_eq!(
            c(400, "API_LIMIT_EXCEEDED"),
            Outcome::throttled(API_LIMIT_WAIT, "API_LIMIT_EXCEEDED")
        );
        assert_eq!(c(401, "API_LIMIT_EXCEEDED").kind(), "throttled");
        assert_eq!(
            c(400, "INTERNAL_CAPACITY_LIMIT_EXCEEDED"),
            Outcome::throttled(CAPACITY_LIMIT_WAIT, "INTERNAL_CAPACITY_LIMIT_EXCEEDED")
        );
        assert_eq!(c(503, "SERVICE_UNAVAILABLE").kind(), "retry_later");
        assert_eq!(c(502, "").kind(), "retry_later");
        assert_eq!(c(400, "INVALID_PARAMETER").kind(), "permanent");
        assert_eq!(c(404, "LIST_NOT_FOUND").kind(), "permanent");
        // Without an errorCode (a gateway's HTML page): by status, never permanent for
        // auth or throttling.
        let bare = |s| classify(s, &Value::Null);
        assert_eq!(bare(401).kind(), "token_rejected");
        assert_eq!(bare(403).kind(), "token_rejected");
        assert_eq!(bare(429), Outcome::throttled(API_LIMIT_WAIT, "429"));
        assert_eq!(bare(502).kind(), "retry_later");
        assert_eq!(bare(400).kind(), "permanent");
    }

    #[test]
    fn custom_event_data_is_ascii() {
        assert_eq!(
            ascii_json(&json!({"n": "Tênis 👟"})),
            r#"{"n":"T\u00eanis \ud83d\udc5f"}"#
        );
    }
}
